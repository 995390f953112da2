"""The Japanese notice put at the top of every detoxified body (templates come from config)."""

from __future__ import annotations

from collections.abc import Sequence
from string import Template

from detox.config.schema import NoticeConfig
from detox.pipeline.model import PartRecord


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
    if record.filename:
        return record.filename
    if record.role == "body":
        return f"本文（{record.declared_type}）"
    return f"名前のない添付ファイル（{record.declared_type}）"


def render_notice(
    config: NoticeConfig,
    *,
    queue_id: str,
    conversions: Sequence[str],
    held: Sequence[PartRecord],
) -> str:
    """Fill the templates. ``safe_substitute`` so a stray ``$`` in an admin's template never crashes."""
    items = [
        Template(config.held_item).safe_substitute(
            name=display_name(rec),
            size=human_size(rec.size),
            reason=config.reasons.get(rec.reason, rec.reason),
            hold_id=hold_id(queue_id, rec.part_id),
            type=rec.detected_type,
        )
        for rec in held
    ]
    held_section = Template(config.held_section).safe_substitute(held_items="\n".join(items)) if items else ""
    text = Template(config.template).safe_substitute(
        queue_id=queue_id,
        conversions="\n".join(conversions),
        held_section=held_section,
    )
    # Templates may leave empty lines where a section was empty; keep at most one in a row.
    lines: list[str] = []
    for line in text.splitlines():
        if not line.strip() and (not lines or not lines[-1].strip()):
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).strip("\n") + "\n"
