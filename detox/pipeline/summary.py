"""What a message's records add up to: the X-Detox-Actions value and the notice's lines."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from detox.config.schema import DetoxConfig
from detox.pipeline.model import Action, PartRecord, Role
from detox.pipeline.vocabulary import (
    ALTERNATIVE_UNUSED,
    ARCHIVE_REPACKED,
    ATTACHMENTS_CONVERTED,
    ATTACHMENTS_HELD,
    ATTACHMENTS_PASSED,
    CALENDAR_CONVERTED,
    ENRICHED_CONVERTED,
    HTML_CONVERTED,
    IMAGE_REENCODED,
    OFFICE_DISARMED,
    OFFICE_RASTERIZED,
    PARTS_DROPPED,
    PDF_RASTERIZED,
    PDF_SANITIZED,
    RTF_CONVERTED,
    SIGNATURE_REMOVED,
    TEXT_CONVERTED,
    URLS_DEFANGED,
)

# Filters' notes counted in the notice's attachments_converted line.
_REBUILT = (IMAGE_REENCODED, PDF_SANITIZED, PDF_RASTERIZED, OFFICE_DISARMED, OFFICE_RASTERIZED)


def actions_summary(notes: Counter[str], defanged: int, records: Sequence[PartRecord]) -> str:
    """A machine-readable summary, e.g. ``text-converted; urls-defanged=2; attachments-held=1``."""
    items = [TEXT_CONVERTED, *(f"{note}={notes[note]}" for note in sorted(notes))]
    if defanged:
        items.append(f"{URLS_DEFANGED}={defanged}")
    attachment_actions = Counter(r.action for r in records if r.role == Role.ATTACHMENT)
    for action, label in ((Action.REPLACE, ATTACHMENTS_CONVERTED), (Action.PASS, ATTACHMENTS_PASSED)):
        if attachment_actions[action]:
            items.append(f"{label}={attachment_actions[action]}")
    held = sum(1 for r in records if r.action == Action.HOLD)
    if held:
        items.append(f"{ATTACHMENTS_HELD}={held}")
    dropped = sum(1 for r in records if r.action == Action.DROP and r.reason != ALTERNATIVE_UNUSED)
    if dropped:
        items.append(f"{PARTS_DROPPED}={dropped}")
    return "; ".join(items)


def delivered_attachments(records: Sequence[PartRecord]) -> list[PartRecord]:
    """Attachments that reach LGWAN in a converted form. Members of an archive that was held in
    the end (e.g. its repacked zip was over a cap) did not, whatever their own verdict said."""
    held = [r.part_id + ":" for r in records if r.action == Action.HOLD]
    return [
        r
        for r in records
        if r.role == Role.ATTACHMENT.value
        and r.action in (Action.REPLACE, Action.PASS)
        and not r.part_id.startswith(tuple(held))
    ]


def conversion_lines(config: DetoxConfig, notes: Counter[str], defanged: int) -> list[str]:
    """The notice's lines on what was converted, in the order the README gives."""
    lines = []
    if notes[HTML_CONVERTED]:
        lines.append(config.notice.converted_html)
    if notes[RTF_CONVERTED] or notes[ENRICHED_CONVERTED]:
        lines.append(config.notice.converted_rtf)
    if defanged:
        lines.append(config.notice.urls_defanged.replace("$count", str(defanged)))
    if notes[SIGNATURE_REMOVED]:
        lines.append(config.notice.signature_removed)
    rebuilt = sum(notes[note] for note in _REBUILT)
    if rebuilt:
        lines.append(config.notice.attachments_converted.replace("$count", str(rebuilt)))
    if notes[CALENDAR_CONVERTED]:
        lines.append(config.notice.calendar_converted.replace("$count", str(notes[CALENDAR_CONVERTED])))
    if notes[ARCHIVE_REPACKED]:
        lines.append(config.notice.archives_repacked.replace("$count", str(notes[ARCHIVE_REPACKED])))
    return lines
