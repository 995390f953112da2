"""The spool's commit points keep their own on-disk order: hand-off and record progress, with the
steps traced on a real spool (a subclass that notes each step, then does it), and the records' JSON
unchanged by the enums."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detox.envelope import Envelope
from detox.errors import SpoolCorrupt
from detox.spool import (
    DeliveryState,
    EntryKind,
    FailReason,
    RecipientState,
    RecipientStatus,
    Spool,
)

ENV = Envelope(
    "1A2B3C4D5E6F708192A3", "a@vendor.example.com", ("taro@city.example.lg.jp",), "192.0.2.1", "mx"
)
TARO, HANAKO = "taro@city.example.lg.jp", "hanako@city.example.lg.jp"


class TracedSpool(Spool):
    """A real spool that notes the steps of a commit point in ``steps``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fsync=True)
        self.steps: list[str] = []

    def _fsync_dir(self, directory: Path) -> None:
        if directory == self.incoming:
            self.steps.append("sync incoming")
        super()._fsync_dir(directory)

    def queue_message(self, state: DeliveryState, data: bytes) -> None:
        self.steps.append(f"queue {state.kind}")
        super().queue_message(state, data)

    def write_state(self, state: DeliveryState) -> None:
        self.steps.append(f"state {state.queue_id}")
        super().write_state(state)

    def finish_outgoing(self, queue_id: str) -> None:
        self.steps.append(f"remove {queue_id}")
        super().finish_outgoing(queue_id)


def handed_off(spool: Spool, rcpts: tuple[str, ...] = (TARO,)) -> DeliveryState:
    spool.accept(ENV, b"Subject: x\r\n\r\nx\r\n")
    result = spool.write_outgoing(
        DeliveryState(ENV.queue_id, ENV.mail_from, {r: RecipientState() for r in rcpts}), b"clean"
    )
    spool.hand_off(result, lambda: None)
    return result.state


# -- hand-off --------------------------------------------------------------------------------------


def test_hand_off_records_before_the_release(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    spool.begin_attempt(ENV.queue_id)
    result = spool.write_outgoing(DeliveryState(ENV.queue_id, ENV.mail_from, {TARO: RecipientState()}), b"y")
    seen: list[bool] = []
    spool.hand_off(result, lambda: seen.append(spool.has_incoming(ENV.queue_id)))
    assert seen == [True]  # record() ran while the result was still inert
    assert list(spool.incoming.iterdir()) == [] and spool.outgoing_ids() == [ENV.queue_id]


def test_a_hand_off_whose_records_fail_releases_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    result = spool.write_outgoing(DeliveryState(ENV.queue_id, ENV.mail_from, {TARO: RecipientState()}), b"y")

    def record() -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        spool.hand_off(result, record)
    assert spool.incoming_ids() == [ENV.queue_id]
    assert spool.outgoing_ids() == [] and not spool.has_state(ENV.queue_id)  # still inert


# -- record progress -------------------------------------------------------------------------------


def test_progress_syncs_incoming_queues_the_dsn_then_writes_the_state(tmp_path: Path) -> None:
    spool = TracedSpool(tmp_path)
    state = handed_off(spool, (TARO, HANAKO))
    spool.steps.clear()
    state.recipients[HANAKO].status = RecipientStatus.FAILED
    state.recipients[HANAKO].reason = FailReason.REJECTED
    state.recipients[HANAKO].dsn = "1A0000000000000000D1"
    dsn = DeliveryState("1A0000000000000000D1", "", {ENV.mail_from: RecipientState()}, kind=EntryKind.DSN)

    def audit() -> None:
        spool.steps.append("audit")

    done = spool.record_progress(state, gave_up=True, dsn=(dsn, b"dsn"), audit=audit)
    assert not done  # TARO is still pending
    assert spool.steps == [
        "sync incoming",
        "queue dsn",
        "state 1A0000000000000000D1",
        f"state {ENV.queue_id}",
        "audit",
    ]
    assert spool.read_state(ENV.queue_id).recipients[HANAKO].dsn == "1A0000000000000000D1"
    assert spool.outgoing_ids() == ["1A0000000000000000D1", ENV.queue_id]


def test_progress_that_finishes_an_entry_audits_before_the_removal(tmp_path: Path) -> None:
    spool = TracedSpool(tmp_path)
    state = handed_off(spool)
    spool.steps.clear()
    state.recipients[TARO].status = RecipientStatus.DELIVERED
    present: list[bool] = []

    def audit() -> None:
        present.append(spool.has_state(ENV.queue_id))
        spool.steps.append("audit")

    assert spool.record_progress(state, gave_up=False, dsn=None, audit=audit)
    assert present == [True]
    assert spool.steps == ["audit", f"remove {ENV.queue_id}"]  # no sync, no state only to be removed
    assert list(spool.outgoing.iterdir()) == []


def test_progress_whose_audit_fails_leaves_the_entry(tmp_path: Path) -> None:
    spool = TracedSpool(tmp_path)
    state = handed_off(spool)
    state.recipients[TARO].status = RecipientStatus.DELIVERED

    def audit() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        spool.record_progress(state, gave_up=False, dsn=None, audit=audit)
    assert spool.read_state(ENV.queue_id).pending() == [TARO]  # delivered again: at least once


def test_a_dsn_entry_needs_no_incoming_sync(tmp_path: Path) -> None:
    spool = TracedSpool(tmp_path)
    dsn = DeliveryState("1A0000000000000000D1", "", {ENV.mail_from: RecipientState()}, kind=EntryKind.DSN)
    spool.queue_message(dsn, b"dsn")
    spool.steps.clear()
    dsn.attempts = 1
    spool.record_progress(dsn, gave_up=False, dsn=None, audit=lambda: None)
    assert spool.steps == ["state 1A0000000000000000D1"]


# -- records ---------------------------------------------------------------------------------------


def test_state_json_is_what_older_releases_wrote(tmp_path: Path) -> None:
    state = DeliveryState(
        "Q1", "a@b", {"x@c": RecipientState(status=RecipientStatus.FAILED, reason=FailReason.EXPIRED)},
        created_at=1.0, kind=EntryKind.RELEASE,
    )  # fmt: skip
    assert state.to_json() == (
        b'{"queue_id": "Q1", "mail_from": "a@b", "kind": "release", "created_at": 1.0, "received_at": 1.0, '
        b'"attempts": 0, "next_attempt": 0.0, "original_sha256": "", "held_reasons": [], "recipients": '
        b'{"x@c": {"status": "failed", "attempts": 0, "code": null, "response": "", "updated_at": 0.0, '
        b'"reason": "expired", "dsn": ""}}}'
    )
    back = DeliveryState.from_json(state.to_json())
    assert back == state and back.kind is EntryKind.RELEASE
    assert back.recipients["x@c"].status is RecipientStatus.FAILED


def test_a_state_with_an_unknown_status_or_kind_is_damaged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    good = json.loads(DeliveryState("Q1", "a@b", {"x@c": RecipientState()}).to_json())
    for key, bad in (("kind", "bogus"), ("status", "lost")):
        data = json.loads(json.dumps(good))
        if key == "kind":
            data["kind"] = bad
        else:
            data["recipients"]["x@c"]["status"] = bad
        (spool.outgoing / "Q1.json").write_text(json.dumps(data))
        with pytest.raises(SpoolCorrupt):
            spool.read_state("Q1")
