"""The Japanese notice put at the top of every detoxified body (templates come from config)."""

from __future__ import annotations

from collections.abc import Sequence
from string import Template

from detox.config.schema import NoticeConfig
from detox.pipeline.model import PartRecord, Role

WHOLE_MESSAGE_NAME = "メール全体（本文と添付ファイルすべて）"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} バイト"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def hold_id(queue_id: str, part_id: str) -> str:
    """The id staff quote when asking for a held part: the queue id plus the part's place."""
    return f"{queue_id}/{part_id}"


def display_name(record: PartRecord) -> str:
    if record.part_id == "0" and record.filter == "antivirus":
        return WHOLE_MESSAGE_NAME  # [antivirus] held the original as a whole
    if record.filename:
        return record.filename
    if record.role == "message":  # held whole by sender authentication ([inbound])
        return "メール全体"
    if record.role == Role.BODY:
        return f"本文（{record.declared_type}）"
    return f"名前のない添付ファイル（{record.declared_type}）"


def render_notice(
    config: NoticeConfig,
    *,
    queue_id: str,
    conversions: Sequence[str],
    held: Sequence[PartRecord],
    delivered: Sequence[PartRecord] = (),
) -> str:
    """Fill the templates. ``safe_substitute`` so a stray ``$`` in an admin's template never crashes."""
    held_items = _listed(config, [_item(config, config.held_item, queue_id, rec) for rec in held])
    delivered_items = _listed(
        config, [_item(config, config.delivered_item, queue_id, rec) for rec in delivered]
    )
    held_section = (
        Template(config.held_section).safe_substitute(held_items="\n".join(held_items)) if held_items else ""
    )
    delivered_section = (
        Template(config.delivered_section).safe_substitute(delivered_items="\n".join(delivered_items))
        if delivered_items and config.delivered_section
        else ""
    )
    text = Template(config.template).safe_substitute(
        queue_id=queue_id,
        conversions="\n".join(conversions),
        held_section=held_section,
        delivered_section=delivered_section,
    )
    if delivered_section and "$delivered_section" not in config.template:
        # Templates written before the section existed still list what was converted: after the
        # conversions, before the held parts (where the default template puts it).
        text = _insert_before(text, held_section, delivered_section)
    # Templates may leave empty lines where a section was empty; keep at most one in a row.
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip() and (not lines or not lines[-1].strip()):
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def _item(config: NoticeConfig, template: str, queue_id: str, rec: PartRecord) -> str:
    removed = " ".join(f"{k}={v}" for k, v in sorted(rec.removed.items()) if v)
    reason = config.reasons.get(rec.reason, rec.reason)
    if rec.virus is not None:  # the virus reason names what clamd found: $signature
        reason = Template(reason).safe_substitute(signature=rec.virus)
    return Template(template).safe_substitute(
        name=display_name(rec),
        size=human_size(rec.size),
        reason=reason,
        signature=rec.virus or "",
        hold_id=hold_id(queue_id, rec.part_id),
        type=rec.detected_type,
        declared_type=rec.declared_type,
        sha256=rec.sha256,
        filter=rec.filter,
        action=rec.action,
        conversion=config.conversions.get(rec.conversion, rec.conversion or rec.filter),
        removed=f" 除去: {removed}" if removed else "",
        output_name=rec.output_filename or display_name(rec),
        output_type=rec.output_type or "",
        output_sha256=rec.output_sha256 or "",
    )


def _listed(config: NoticeConfig, items: list[str]) -> list[str]:
    if len(items) <= config.max_listed:
        return items
    rest = len(items) - config.max_listed
    return [*items[: config.max_listed], f"  ……ほか {rest} 件（受付番号で監査ログを参照してください）"]


def _insert_before(text: str, anchor: str, section: str) -> str:
    if anchor and anchor in text:
        return text.replace(anchor, section + "\n" + anchor, 1)
    return text.rstrip("\n") + "\n" + section + "\n"
