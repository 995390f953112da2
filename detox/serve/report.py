"""Every read of the per-message report in serve, in one place.

The pipeline's report (``PipelineResult.report``) is read by key here and nowhere else in the
package: for the first delivery state of a detoxified message (its envelope, the original's hash,
the held parts) and for the ``detoxified`` audit record. A typed report changes these functions only.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

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


def held_reasons(parts: list[dict[str, Any]]) -> set[str]:
    """Reasons of the held parts (archive members included), for the DSN decision."""
    reasons = set()
    for part in parts:
        if part.get("action") != "hold":
            continue
        reasons.add(str(part.get("reason")))
        if part.get("detected_type") in EXECUTABLE_TYPES:
            reasons.add("executable")
    return reasons


def _received_at(envelope: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(envelope.get("received_at"))).timestamp()
    except ValueError:
        return time.time()


def original_sha256(report: dict[str, Any]) -> str:
    """The hash under which the original is kept in the store."""
    return str(report["message"]["sha256"])


def initial_state(queue_id: str, report: dict[str, Any]) -> DeliveryState:
    """The delivery state of a freshly detoxified message: every recipient pending."""
    env = report["envelope"]
    return DeliveryState(
        queue_id=queue_id,
        mail_from=env["mail_from"],
        recipients={r: RecipientState() for r in env["rcpt_tos"]},
        received_at=_received_at(env),
        original_sha256=report["message"]["sha256"],
        held_reasons=tuple(sorted(held_reasons(report["parts"]))),
    )


def detoxified_fields(report: dict[str, Any]) -> dict[str, Any]:
    """The fields of the ``detoxified`` audit record, in their order."""
    message = report["message"]
    return {
        "original_sha256": message["sha256"],
        "size": message["size"],
        "header_from": message["from"],
        "subject": message["subject"],
        "message_id": message["message_id"],
        "defects": message["defects"],
        "parts": report["parts"],
        "actions": report["actions"],
        "urls_defanged": report["urls_defanged"],
        "output_sha256": report["output_sha256"],
    }
