"""Every read of the per-message report in serve, in one place.

The pipeline's report (:class:`~detox.pipeline.report.MessageReport`, typed) is read here and nowhere
else in the package: for the first delivery state of a detoxified message (its envelope, the
original's hash, the held parts). The ``detoxified`` audit record is made from it by
:meth:`detox.audit.events.Detoxified.of`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

from detox.envelope import Envelope
from detox.pipeline.report import MessageReport, PartReport
from detox.spool import DeliveryState, RecipientState

# Detected types that make a held part count as "executable" whatever rule (or none) held it, so a
# message carrying one never gets a DSN even with a policy that does not name executables.
EXECUTABLE_TYPES = frozenset(
    {
        "application/x-dosexec",
        "application/vnd.microsoft.portable-executable",
        "application/x-executable",
        "application/x-sharedlib",
        "application/x-pie-executable",
        "application/x-mach-binary",
        "application/x-msi",
        "application/x-ms-shortcut",
        "application/java-archive",
    }
)


def held_reasons(parts: Sequence[PartReport]) -> set[str]:
    """Reasons of the held parts (archive members included), for the DSN decision."""
    reasons = set()
    for part in parts:
        if part.action != "hold":
            continue
        reasons.add(part.reason)
        if part.detected_type in EXECUTABLE_TYPES:
            reasons.add("executable")
    return reasons


def _received_at(envelope: Envelope) -> float:
    try:
        return datetime.fromisoformat(envelope.received_at).timestamp()
    except ValueError:
        return time.time()


def original_sha256(report: MessageReport) -> str:
    """The hash under which the original is kept in the store."""
    return report.message.sha256


def initial_state(queue_id: str, report: MessageReport) -> DeliveryState:
    """The delivery state of a freshly detoxified message: every recipient pending."""
    env = report.envelope
    return DeliveryState(
        queue_id=queue_id,
        mail_from=env.mail_from,
        recipients={r: RecipientState() for r in env.rcpt_tos},
        received_at=_received_at(env),
        original_sha256=report.message.sha256,
        held_reasons=tuple(sorted(held_reasons(report.parts))),
    )
