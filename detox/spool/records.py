"""What the spool keeps about an entry besides its message: the delivery state and the attempts.

These are the spool's records apart from the files that hold them (``queue.py``): a delivery state
(``outgoing/ID.json``, ``released/ID.json``) per recipient, and the detoxification attempts of an
incoming entry (``incoming/ID.tries``). Their JSON is the on-disk format: the enums below are
``StrEnum`` so that it stays byte for byte what older releases wrote and read; keys added since
older releases are optional when read.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum


class EntryKind(StrEnum):
    """What an outgoing entry is: what a failure of one of its recipients may lead to."""

    MESSAGE = "message"  # a detoxified message: a failed recipient may get its sender a DSN
    DSN = "dsn"  # a DSN we wrote, delivered through delivery.bounce_via; never bounced itself
    RELEASE = "release"  # an admin's release (例外措置): failures are recorded, never bounced


# The names older code imports.
KIND_MESSAGE = EntryKind.MESSAGE
KIND_DSN = EntryKind.DSN
KIND_RELEASE = EntryKind.RELEASE


class RecipientStatus(StrEnum):
    """Where one recipient of an outgoing entry stands (a deferral leaves it pending)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class FailReason(StrEnum):
    """Why a recipient failed for good."""

    REJECTED = "rejected"  # the downstream server answered 5xx
    EXPIRED = "expired"  # still not delivered after delivery.max_age_days


def new_queue_id() -> str:
    """20 hex digits: milliseconds (so ids sort by arrival) and 36 random bits (no clash at 1000/ms)."""
    return f"{int(time.time() * 1000):011X}{secrets.randbits(36):09X}"


def valid_queue_id(value: str) -> bool:
    return len(value) == 20 and all(c in "0123456789ABCDEF" for c in value)


@dataclass(slots=True)
class RecipientState:
    status: RecipientStatus = RecipientStatus.PENDING
    attempts: int = 0
    code: int | None = None
    response: str = ""
    updated_at: float = 0.0
    reason: str = ""  # for failed: a FailReason ("rejected" or "expired")
    dsn: str = ""  # for failed: the queue id of the DSN sent, or "suppressed: WHY"

    def __post_init__(self) -> None:
        # A plain string from a caller or a state file: ValueError for one no release wrote.
        self.status = RecipientStatus(self.status)

    def to_dict(self) -> dict[str, object]:
        return {
            "status": str(self.status),
            "attempts": self.attempts,
            "code": self.code,
            "response": self.response,
            "updated_at": self.updated_at,
            "reason": self.reason,
            "dsn": self.dsn,
        }


@dataclass(slots=True)
class DeliveryState:
    queue_id: str
    mail_from: str
    recipients: dict[str, RecipientState]
    created_at: float = field(default_factory=time.time)
    attempts: int = 0
    next_attempt: float = 0.0
    kind: EntryKind = EntryKind.MESSAGE
    received_at: float = 0.0  # when we said 250; the maximum age counts from here
    original_sha256: str = ""  # the original in the store (its headers go into a DSN)
    held_reasons: tuple[str, ...] = ()  # reasons of held parts: some forbid a DSN

    def __post_init__(self) -> None:
        if not self.received_at:
            self.received_at = self.created_at
        self.kind = EntryKind(self.kind)  # ValueError for a kind no release wrote

    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == RecipientStatus.PENDING]

    def to_json(self) -> bytes:
        data = {
            "queue_id": self.queue_id,
            "mail_from": self.mail_from,
            "kind": str(self.kind),
            "created_at": self.created_at,
            "received_at": self.received_at,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "original_sha256": self.original_sha256,
            "held_reasons": list(self.held_reasons),
            "recipients": {r: s.to_dict() for r, s in self.recipients.items()},
        }
        return json.dumps(data, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> DeliveryState:
        """Read a state file; keys added since older releases are optional. ValueError, KeyError or
        TypeError for a damaged one (an unknown kind or recipient status included)."""
        data = json.loads(raw)
        return cls(
            queue_id=str(data["queue_id"]),
            mail_from=str(data["mail_from"]),
            created_at=float(data["created_at"]),
            received_at=float(data.get("received_at") or data["created_at"]),
            attempts=int(data["attempts"]),
            next_attempt=float(data["next_attempt"]),
            kind=EntryKind(str(data.get("kind") or EntryKind.MESSAGE)),
            original_sha256=str(data.get("original_sha256") or ""),
            held_reasons=tuple(str(r) for r in data.get("held_reasons") or ()),
            recipients={r: RecipientState(**s) for r, s in data["recipients"].items()},
        )


@dataclass(slots=True)
class PipelineTries:
    """Detoxification attempts of one incoming entry, kept next to it so they survive restarts."""

    attempts: int = 0  # started, including one under way
    in_flight: bool = False  # an attempt started and has not ended: serve stopped during it
    last_error: str = ""
    next_attempt: float = 0.0
    updated_at: float = 0.0
    # Waiting for a service, not failing: "antivirus" while clamd cannot be reached. Such waits are
    # counted apart (``waits``, for the backoff) and never against pipeline.max_attempts.
    waiting_for: str = ""
    waits: int = 0

    def to_json(self) -> bytes:
        extra = {"waiting_for": self.waiting_for, "waits": self.waits} if self.waiting_for else {}
        return json.dumps(
            {
                "attempts": self.attempts,
                "in_flight": self.in_flight,
                "last_error": self.last_error,
                "next_attempt": self.next_attempt,
                "updated_at": self.updated_at,
                **extra,
            },
            ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> PipelineTries:
        data = json.loads(raw)
        return cls(
            attempts=int(data["attempts"]),
            in_flight=bool(data["in_flight"]),
            last_error=str(data.get("last_error", "")),
            next_attempt=float(data.get("next_attempt", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            waiting_for=str(data.get("waiting_for", "")),
            waits=int(data.get("waits", 0)),
        )
