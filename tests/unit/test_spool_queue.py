"""The queue's durable bookkeeping: backoff, attempts that survive restarts, streaming writes,
moving aside and back, requests from the CLI, one serve per spool."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detox.delivery.retry import backoff, next_attempt
from detox.envelope import Envelope
from detox.errors import SpoolCorrupt, SpoolError
from detox.spool import KIND_RELEASE, DeliveryState, RecipientState, Spool, is_disk_full

ENV = Envelope(
    "1A2B3C4D5E6F708192A3", "a@vendor.example.com", ("taro@city.example.lg.jp",), "192.0.2.1", "mx"
)


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_with_jitter_and_never_passes_the_cap() -> None:
    rng = random.Random(5)
    for attempts in range(1, 40):
        nominal = min(30 * 2 ** (attempts - 1), 3600)
        samples = [backoff(attempts, 30, 3600, rng) for _ in range(300)]
        assert min(samples) >= nominal * 0.8 - 1e-9
        assert max(samples) <= min(nominal * 1.2, 3600) + 1e-9
        if nominal < 3000:
            assert max(samples) - min(samples) > nominal * 0.2  # really jittered, not a constant
    assert backoff(0, 30, 3600, rng) <= 36  # a bogus count is treated as the first


def test_next_attempt_is_brought_forward_to_the_deadline() -> None:
    assert next_attempt(100.0, 50.0, 1000.0) == 150.0
    assert next_attempt(100.0, 5000.0, 1000.0) == 1000.0  # one last try when it expires
    assert next_attempt(2000.0, 50.0, 1000.0) == 2050.0  # past the deadline: no clamping back


# -- attempts ------------------------------------------------------------------------------------


def test_attempts_are_counted_before_they_start_and_survive_a_new_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"Subject: x\r\n\r\nx\r\n")
    assert spool.read_tries(ENV.queue_id).attempts == 0
    spool.begin_attempt(ENV.queue_id)
    # serve dies here: a fresh Spool (a restart) sees one attempt, still in flight
    tries = Spool(tmp_path).read_tries(ENV.queue_id)
    assert (tries.attempts, tries.in_flight) == (1, True)
    spool.end_attempt(ENV.queue_id, "worker crashed", 1234.0)
    spool.begin_attempt(ENV.queue_id)
    spool.hand_back(ENV.queue_id)  # our own shutdown interrupted it: does not count
    tries = Spool(tmp_path).read_tries(ENV.queue_id)
    assert (tries.attempts, tries.in_flight, tries.last_error, tries.next_attempt) == (
        1,
        False,
        "worker crashed",
        1234.0,
    )
    assert spool.incoming_ids() == [ENV.queue_id]  # the .tries file is not an entry
    result = spool.write_outgoing(DeliveryState(ENV.queue_id, ENV.mail_from, {"x@c": RecipientState()}), b"x")
    spool.hand_off(result, lambda: None)
    assert list(spool.incoming.iterdir()) == []


def test_first_attempt_is_a_mark_on_the_entry_not_a_new_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    assert spool.begin_attempt(ENV.queue_id).attempts == 1
    if not spool._attempt_marks:
        pytest.skip("no user xattrs on this file system: .tries files are used")
    assert sorted(p.name for p in spool.incoming.iterdir()) == [f"{ENV.queue_id}.msg"]
    tries = Spool(tmp_path).read_tries(ENV.queue_id)
    assert (tries.attempts, tries.in_flight) == (1, True)
    # neither ended nor handed back (a bug of ours, then a retry): the next one is the second
    assert spool.begin_attempt(ENV.queue_id).attempts == 2
    assert Spool(tmp_path).read_tries(ENV.queue_id).attempts == 2
    spool.retry_now(ENV.queue_id)
    assert Spool(tmp_path).read_tries(ENV.queue_id).attempts == 0
    spool.begin_attempt(ENV.queue_id)
    spool.hand_back(ENV.queue_id)
    assert Spool(tmp_path).read_tries(ENV.queue_id).attempts == 0
    spool.begin_attempt(ENV.queue_id)
    tries = spool.end_attempt(ENV.queue_id, "worker crashed", 99.0)
    assert (tries.attempts, tries.in_flight) == (1, False)
    assert spool.begin_attempt(ENV.queue_id).attempts == 2


def test_without_xattrs_the_first_attempt_gets_a_tries_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    assert spool.begin_attempt(ENV.queue_id).attempts == 1
    assert (spool.incoming / f"{ENV.queue_id}.tries").exists()
    assert spool._attempt_marks is False
    tries = Spool(tmp_path).read_tries(ENV.queue_id)
    assert (tries.attempts, tries.in_flight) == (1, True)


def test_damaged_tries_file_counts_as_none(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    (spool.incoming / f"{ENV.queue_id}.tries").write_bytes(b"\x00garbage")
    assert spool.read_tries(ENV.queue_id).attempts == 0


# -- streaming writes ------------------------------------------------------------------------------


def test_incoming_writer_streams_and_commits(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    writer = spool.open_incoming(ENV)
    chunk = b"line of text\r\n" * 10_000
    for _ in range(5):
        if writer.feed(chunk):
            writer.flush()
    assert list(spool.incoming.iterdir()) == []  # not visible before commit
    assert len(list(spool.tmp.iterdir())) == 1
    writer.commit()
    env, raw = spool.read_incoming(ENV.queue_id)
    assert env == ENV and raw == chunk * 5
    assert writer.size == len(chunk) * 5
    assert list(spool.tmp.iterdir()) == []


def test_incoming_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    writer = spool.open_incoming(ENV)
    writer.feed(b"x" * 300_000)
    writer.flush()
    writer.abort()
    writer.abort()  # idempotent
    assert list(spool.tmp.iterdir()) == [] and list(spool.incoming.iterdir()) == []


def test_incoming_writer_failure_is_reported_at_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.tmp.rmdir()
    spool.tmp.write_bytes(b"")  # the temp directory is gone: every write fails
    writer = spool.open_incoming(ENV)
    writer.feed(b"x" * 300_000)
    writer.flush()  # fails quietly; the rest of DATA is still read
    writer.feed(b"y")
    with pytest.raises(SpoolError):
        writer.commit()
    assert writer.error is not None and not is_disk_full(writer.error)
    assert spool.incoming_ids() == []


# -- delivery state ------------------------------------------------------------------------------


def test_state_files_of_older_releases_still_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    old = {
        "queue_id": "Q1",
        "mail_from": "a@b",
        "created_at": 100.0,
        "attempts": 2,
        "next_attempt": 0,
        "recipients": {
            "x@c": {"status": "pending", "attempts": 2, "code": None, "response": "", "updated_at": 0}
        },
    }
    (spool.outgoing / "Q1.json").write_text(json.dumps(old))
    state = spool.read_state("Q1")
    assert state.received_at == 100.0 and state.kind == "message" and state.held_reasons == ()
    assert state.recipients["x@c"].dsn == ""


def test_adopted_release_is_marked_as_such(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.stage_release("R1", b"Subject: r\r\n\r\nr\r\n")
    spool.commit_release(
        DeliveryState("R1", "a@vendor.example.com", {"taro@city.example.lg.jp": RecipientState()})
    )
    assert spool.adopt_released() == ["R1"]
    assert spool.read_state("R1").kind == KIND_RELEASE
    assert list(spool.released.iterdir()) == []


def test_worker_output_is_inert_until_the_incoming_entry_is_released(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    spool.accept(ENV, b"Subject: x\r\n\r\nx\r\n")
    state = DeliveryState(ENV.queue_id, ENV.mail_from, {r: RecipientState() for r in ENV.rcpt_tos})
    result = spool.write_outgoing(state, b"Subject: x\r\n\r\nclean\r\n")
    # not handed off yet (no index row, no `detoxified` record): recovery and the CLI must not see it
    assert spool.outgoing_ids() == []
    assert not spool.has_state(ENV.queue_id)  # nor delivery, asked for it by id
    assert spool.incoming_ids() == [ENV.queue_id]
    spool.hand_off(result, lambda: None)  # the hand-off's commit
    assert spool.outgoing_ids() == [ENV.queue_id]
    assert spool.has_state(ENV.queue_id)
    assert spool.read_state(ENV.queue_id).pending() == list(ENV.rcpt_tos)
    assert spool.read_output(ENV.queue_id) == b"Subject: x\r\n\r\nclean\r\n"
    spool.finish_outgoing(ENV.queue_id)
    assert list(spool.outgoing.iterdir()) == []


def test_an_entry_put_back_from_aside_drops_a_result_never_handed_off(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    spool.write_outgoing(DeliveryState(ENV.queue_id, ENV.mail_from, {"x@c": RecipientState()}), b"old")
    spool.move_aside(ENV.queue_id, "detoxification failed 5 times")  # all of its files go along
    assert spool.restore_aside(ENV.queue_id) == "incoming"
    assert list(spool.failed.iterdir()) == []  # no stale result left behind
    assert spool.outgoing_ids() == []


# -- aside and back ------------------------------------------------------------------------------


def test_moved_aside_entry_can_be_put_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    spool.begin_attempt(ENV.queue_id)
    spool.move_aside(ENV.queue_id, "detoxification failed 5 times")
    assert spool.aside_ids() == [ENV.queue_id]
    assert spool.aside_note(ENV.queue_id)["why"] == "detoxification failed 5 times"
    assert spool.read_envelope(ENV.queue_id, aside=True) == ENV
    assert spool.restore_aside(ENV.queue_id) == "incoming"
    assert spool.incoming_ids() == [ENV.queue_id]
    assert spool.read_tries(ENV.queue_id).attempts == 0  # a fresh start
    assert list(spool.failed.iterdir()) == []
    assert spool.restore_aside(ENV.queue_id) is None

    state = DeliveryState("Q2", "a@b", {"x@c": RecipientState()})
    spool.queue_message(state, b"Subject: y\r\n\r\ny\r\n")
    spool.move_aside("Q2", "unreadable")
    assert spool.restore_aside("Q2") == "outgoing"
    assert spool.read_state("Q2").pending() == ["x@c"]


# -- requests and the serve lock -------------------------------------------------------------------


def test_requests_are_taken_once_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.request("retry.A")
    time.sleep(0.01)
    spool.request("flush")
    spool.write_result("reload", {"ok": True})
    assert spool.take_requests() == ["retry.A", "flush"]
    assert spool.take_requests() == []
    assert spool.read_result("reload") == {"ok": True}


def test_one_serve_per_spool_and_the_cli_sees_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    assert spool.serve_pid() is None
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pathlib import Path; from detox.spool import Spool;"
                "lock = Spool(Path(sys.argv[1])).lock_for_serve(); print('locked', flush=True);"
                " time.sleep(60)"
            ),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        assert spool.serve_pid() == holder.pid
        with pytest.raises(SpoolError, match="another detox serve"):
            spool.lock_for_serve()
    finally:
        holder.kill()
        holder.wait(10)
    assert spool.serve_pid() is None  # released by the kernel when the holder died
    lock = spool.lock_for_serve()
    lock.release()


def test_damage_and_passing_io_problems_are_told_apart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    (spool.incoming / "BAD.msg").write_bytes(b"not ours\n")
    with pytest.raises(SpoolCorrupt):
        spool.read_incoming("BAD")
    (spool.incoming / "BAD2.msg").write_bytes(b"DETOX-SPOOL 1\n[1, 2]\nbody")
    with pytest.raises(SpoolCorrupt):
        spool.read_incoming("BAD2")
    (spool.outgoing / "S.json").write_bytes(b'{"queue_id": ')
    with pytest.raises(SpoolCorrupt):
        spool.read_state("S")
    with pytest.raises(SpoolCorrupt):
        spool.read_output("S")  # a state without its message
    (spool.incoming / "DIR.msg").mkdir()  # reading fails with an OSError: not the entry's fault
    with pytest.raises(SpoolError) as info:
        spool.read_incoming("DIR")
    assert not isinstance(info.value, SpoolCorrupt)


# -- a writer aborted from the event loop while its thread works; leftovers in tmp/ -----------------


def test_nothing_is_written_or_committed_after_an_abort(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    writer = spool.open_incoming(ENV)
    writer.feed(b"Subject: x\r\n\r\n" + b"a" * 300_000)
    writer.flush()
    writer.abort()  # the client hung up while a flush was due
    writer.feed(b"more")
    writer.flush()  # a flush that ran late must not create the temp file again
    assert list(spool.tmp.iterdir()) == []
    with pytest.raises(SpoolError):
        writer.commit()
    assert list(spool.incoming.iterdir()) == []


def test_stale_tmp_files_are_removed_and_fresh_ones_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    stale = spool.tmp / "1A2B3C4D5E6F708192A3.msg.dead"
    fresh = spool.tmp / "state.json.live"
    stale.write_bytes(b"half a message")
    fresh.write_bytes(b"being written by a CLI")
    hours_ago = time.time() - 7 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    assert spool.remove_stale_tmp(6 * 3600) == 1
    assert not stale.exists() and fresh.exists()
