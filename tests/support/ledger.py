"""Accounting for "nothing is lost": what was accepted, what the downstream got, what the audit log says.

    ledger = Ledger()
    ledger.accepted("0190ABC...", ["a@city.example.lg.jp", "b@city.example.lg.jp"])  # the 250 we got
    ledger.delivered("0190ABC...", ["a@city.example.lg.jp"])                        # one downstream copy
    ledger.read_audit(state_dir)                                                     # failed / bounced
    report = ledger.settle()
    report.lost        -> [(queue_id, rcpt), ...] accepted, never delivered, no failure/bounce recorded
    report.duplicates  -> {(queue_id, rcpt): copies beyond the first}
    print(report.summary())

The promise (README, "Delivery and reliability") is at-least-once: every accepted recipient is delivered,
or recorded as permanently failed (5xx, ``failed``) or bounced (``bounced``, when DSNs exist); a crash
between the downstream's 250 and detox's state write may deliver a recipient twice. So ``lost`` must be
empty and duplicates are counted and reported, not forbidden. Deliveries of messages never acknowledged
to the sender (the sender saw no 250, e.g. detox was killed after spooling) are counted as ``unacked``.

Used by tests/integration/test_faults.py, tests/corpus/test_corpus_relay.py and bench/soak.py.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FINAL_FAILURE_EVENTS", "Ledger", "Settlement", "read_audit_events"]

# Audit events that settle a recipient without a delivery: a permanent refusal today; a bounce (DSN)
# or an expiry once the queue has a maximum age. Any of them counts as "bounced as promised".
FINAL_FAILURE_EVENTS = frozenset({"failed", "bounced", "expired"})


def read_audit_events(state_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Every record of ``state_dir/audit`` (rotated files first), and the number of unreadable lines
    (a ``kill -9`` can cut the last line short; the chain check is ``detox audit verify``'s job)."""
    audit = state_dir / "audit"
    files = [*sorted(audit.glob("audit-*.jsonl")), audit / "audit.jsonl"]
    events: list[dict[str, Any]] = []
    broken = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except ValueError:
                broken += 1
    return events, broken


@dataclass
class Settlement:
    accepted: int  # (message, recipient) pairs the sender got a 250 for
    delivered: int  # of those, delivered at least once
    bounced: int  # of those, not delivered, with a failed/bounced/expired record
    lost: list[tuple[str, str]]
    duplicates: dict[tuple[str, str], int]  # extra copies beyond the first
    unacked: int  # deliveries of messages the sender never got a 250 for
    unknown: int  # downstream copies that carry no queue id we can read
    messages: int  # accepted messages
    failed_reasons: Counter[str] = field(default_factory=Counter)

    @property
    def duplicate_copies(self) -> int:
        return sum(self.duplicates.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in self.failed_reasons.most_common(5))
        return (
            f"accepted {self.messages} messages / {self.accepted} recipients; delivered {self.delivered}; "
            f"bounced {self.bounced}{f' ({reasons})' if reasons else ''}; lost {len(self.lost)}; "
            f"duplicates {self.duplicate_copies} extra copies of {len(self.duplicates)} recipients; "
            f"unacknowledged but delivered {self.unacked}; unidentified {self.unknown}"
        )


class Ledger:
    def __init__(self) -> None:
        self._accepted: dict[str, tuple[str, ...]] = {}
        self._copies: Counter[tuple[str, str]] = Counter()
        self._final: dict[tuple[str, str], str] = {}
        self._unknown = 0

    def accepted(self, queue_id: str, rcpts: list[str] | tuple[str, ...]) -> None:
        self._accepted[queue_id] = tuple(r.lower() for r in rcpts)

    def delivered(self, queue_id: str | None, rcpts: list[str] | tuple[str, ...]) -> None:
        if not queue_id:
            self._unknown += 1
            return
        for rcpt in rcpts:
            self._copies[(queue_id, rcpt.lower())] += 1

    def final_failure(self, queue_id: str, rcpt: str, why: str) -> None:
        self._final[(queue_id, rcpt.lower())] = why

    def read_audit(self, state_dir: Path) -> int:
        """Record every failed/bounced recipient from the audit log; returns the unreadable lines."""
        events, broken = read_audit_events(state_dir)
        for event in events:
            if event.get("event") not in FINAL_FAILURE_EVENTS or "queue_id" not in event:
                continue
            queue_id = str(event["queue_id"])
            recipients = event.get("recipients")
            if isinstance(recipients, dict):
                for rcpt, detail in recipients.items():
                    code = detail.get("code") if isinstance(detail, dict) else None
                    self.final_failure(queue_id, rcpt, f"{event['event']} {code}")
            elif queue_id in self._accepted:
                # A whole message moved aside (spool/failed) or bounced without a per-recipient list.
                for rcpt in self._accepted[queue_id]:
                    self.final_failure(queue_id, rcpt, f"{event['event']} {event.get('stage', '')}".strip())
        return broken

    @property
    def accepted_ids(self) -> set[str]:
        return set(self._accepted)

    def settle(self) -> Settlement:
        lost: list[tuple[str, str]] = []
        delivered = bounced = 0
        reasons: Counter[str] = Counter()
        for queue_id, rcpts in self._accepted.items():
            for rcpt in rcpts:
                key = (queue_id, rcpt)
                if self._copies[key] > 0:
                    delivered += 1
                elif key in self._final:
                    bounced += 1
                    reasons[self._final[key]] += 1
                else:
                    lost.append(key)
        duplicates = {k: n - 1 for k, n in self._copies.items() if n > 1 and k[0] in self._accepted}
        unacked = sum(n for k, n in self._copies.items() if k[0] not in self._accepted)
        return Settlement(
            accepted=sum(len(r) for r in self._accepted.values()),
            delivered=delivered,
            bounced=bounced,
            lost=sorted(lost),
            duplicates=duplicates,
            unacked=unacked,
            unknown=self._unknown,
            messages=len(self._accepted),
            failed_reasons=reasons,
        )
