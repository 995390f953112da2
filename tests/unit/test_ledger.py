"""tests/support/ledger.py keeps the books of the fault tests and the soak bench: check its arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

from support.ledger import Ledger

A, B, C, D = (f"{n:020X}" for n in range(4))
TARO, HANAKO = "taro@city.example.lg.jp", "Hanako@City.Example.LG.JP"


def test_lost_duplicates_bounced_and_unacked(tmp_path: Path) -> None:
    audit = tmp_path / "audit"
    audit.mkdir()
    records = [
        {"event": "failed", "queue_id": C, "recipients": {HANAKO: {"code": 550, "response": "no"}}},
        {"event": "failed", "queue_id": D, "stage": "pipeline", "reason": "worker crashed 5 times"},
        {"event": "deferred", "queue_id": A, "recipients": {TARO: {"code": 451}}},
    ]
    lines = [json.dumps(r) for r in records]
    (audit / "audit.jsonl").write_text("\n".join(lines) + '\n{"event": "deliv', encoding="utf-8")  # cut short
    ledger = Ledger()
    ledger.accepted(A, [TARO])
    ledger.accepted(B, [TARO, HANAKO])
    ledger.accepted(C, [TARO, HANAKO])
    ledger.accepted(D, [TARO])
    ledger.delivered(A, [TARO])
    ledger.delivered(A, [TARO])  # a duplicate
    ledger.delivered(B, [TARO])  # hanako of B: lost
    ledger.delivered(C, [TARO])  # hanako of C: failed 550
    ledger.delivered("F" * 20, [TARO])  # never acknowledged to the sender
    ledger.delivered(None, [TARO])
    assert ledger.read_audit(tmp_path) == 1
    result = ledger.settle()
    assert result.messages == 4 and result.accepted == 6
    assert result.delivered == 3
    assert result.bounced == 2  # C/hanako (550) and D (moved aside by the pipeline)
    assert result.lost == [(B, HANAKO.lower())]
    assert result.duplicates == {(A, TARO): 1} and result.duplicate_copies == 1
    assert result.unacked == 1 and result.unknown == 1
    assert "lost 1" in result.summary()
