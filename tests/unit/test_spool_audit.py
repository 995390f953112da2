"""The spool (durable, atomic) and the hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detox.audit import GENESIS, AuditLog, verify
from detox.envelope import Envelope
from detox.errors import SpoolError
from detox.spool import DeliveryState, RecipientState, Spool, new_queue_id, valid_queue_id


def test_queue_ids_are_unique_and_sortable() -> None:
    ids = [new_queue_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(valid_queue_id(i) for i in ids)


def test_accept_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    env = Envelope("0000000000000ABCD", "a@example.jp", ("taro@city.example.lg.jp",), "127.0.0.1", "mx")
    raw = b"Subject: x\r\n\r\n\xe6\x97\xa5\xe6\x9c\xac\r\n.\r\n"
    spool.accept(env, raw)
    assert spool.incoming_ids() == [env.queue_id]
    env2, raw2 = spool.read_incoming(env.queue_id)
    assert env2 == env
    assert raw2 == raw
    assert list((tmp_path / "tmp").iterdir()) == []


def test_unreadable_spool_entry_raises(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (tmp_path / "incoming" / "X.msg").write_bytes(b"garbage\n")
    with pytest.raises(SpoolError):
        spool.read_incoming("X")


def test_write_failure_is_a_spool_error_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.tmp.rmdir()
    spool.tmp.write_bytes(b"")  # the temp directory is gone: every write must fail cleanly
    with pytest.raises(SpoolError):
        spool.accept(Envelope("Q1", "a@b", ("c@d",)), b"x")
    assert spool.incoming_ids() == []


def test_delivery_state_round_trip(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    state = DeliveryState("Q1", "a@b", {"x@c": RecipientState(), "y@c": RecipientState(status="delivered")})
    spool.write_state(state)
    back = spool.read_state("Q1")
    assert back.pending() == ["x@c"]
    assert back.recipients["y@c"].status == "delivered"


def test_move_aside_keeps_everything(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.accept(Envelope("Q2", "a@b", ("c@d",)), b"data")
    spool.move_aside("Q2", "test")
    assert spool.incoming_ids() == []
    assert (tmp_path / "failed" / "Q2.msg").read_bytes().endswith(b"data")
    assert json.loads((tmp_path / "failed" / "Q2.why.json").read_text())["why"] == "test"


def test_audit_chain_verifies_and_detects_edits(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    for i in range(5):
        log.write("received", f"Q{i}", size=i, subject="髙橋①㈱")
    ok, _ = verify(path)
    assert ok
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["prev"] == GENESIS
    assert first["subject"] == "髙橋①㈱"

    lines = path.read_bytes().splitlines(keepends=True)
    edited = [*lines[:2], lines[2].replace(b'"size":2', b'"size":9'), *lines[3:]]
    path.write_bytes(b"".join(edited))
    ok, message = verify(path)
    assert not ok and "line 4" in message

    path.write_bytes(b"".join(lines[:2] + lines[3:]))  # a deleted line
    ok, message = verify(path)
    assert not ok and "line 3" in message


def test_audit_two_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    a = AuditLog(path, fsync=False)
    b = AuditLog(path, fsync=False)
    for i in range(10):
        (a if i % 2 else b).write("event", f"Q{i}")
    assert verify(path)[0]
