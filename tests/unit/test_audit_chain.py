"""The audit chain across size-rotated files: every kind of tampering is named, an untouched log passes."""

from __future__ import annotations

import errno
import itertools
import json
import threading
import time
from pathlib import Path

import pytest

import detox.audit.log as audit_mod
from detox.audit import (
    GENESIS,
    ROTATED,
    AuditLog,
    chain_files,
    follow,
    line_hash,
    read_records,
    tail,
    verify,
    verify_files,
)


def write_log(path: Path, n: int, rotate_bytes: int = 0) -> AuditLog:
    log = AuditLog(path, fsync=False, rotate_bytes=rotate_bytes)
    for i in range(n):
        log.write("received", f"Q{i:04d}", subject="①見積書（㈱髙橋）", size=i)
    return log


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
def rotated(tmp_path: Path) -> Path:
    """About 40 records in several files (each record is ~190 bytes; rotate at 1 KB)."""
    path = tmp_path / "audit" / "audit.jsonl"
    write_log(path, 40, rotate_bytes=1024)
    return path


def test_rotation_keeps_one_chain(rotated: Path) -> None:
    files = chain_files(rotated)
    assert len(files) >= 4
    assert [f.name for f in files[:2]] == ["audit-000001.jsonl", "audit-000002.jsonl"]
    assert files[-1] == rotated
    first = json.loads(lines_of(files[0])[0])
    assert first["prev"] == GENESIS
    for before, after in itertools.pairwise(files):
        link = json.loads(lines_of(after)[0])
        assert link["event"] == ROTATED and link["previous_file"] == before.name
        assert link["prev"] == line_hash(lines_of(before)[-1])
    ok, message = verify(rotated)
    assert ok, message
    assert "intact" in message and f"{len(files)} file(s)" in message
    records = [r for r in read_records(rotated) if r["event"] == "received"]
    assert [r["queue_id"] for r in records] == [f"Q{i:04d}" for i in range(40)]


def test_untouched_single_file_passes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    result = verify_files([path])
    assert result.ok and result.records == 5 and result.head == line_hash(lines_of(path)[-1])


def _tamper(path: Path, change: str, index: int) -> None:
    lines = lines_of(path)
    if change == "edit":
        lines[index] = lines[index].replace(b'"size":', b'"size":1')
    elif change == "delete":
        del lines[index]
    elif change == "insert":
        forged = {"ts": "2026-11-25T00:00:00.000Z", "event": "released", "prev": line_hash(lines[index - 1])}
        lines.insert(index, json.dumps(forged).encode() + b"\n")
    elif change == "insert-garbage-prev":
        lines.insert(index, b'{"event":"released","prev":"' + b"1" * 64 + b'"}\n')
    elif change == "reorder":
        lines[index], lines[index + 1] = lines[index + 1], lines[index]
    elif change == "not-json":
        lines[index] = b"hello\n"
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("edit", "audit.jsonl line 4: chain broken: audit.jsonl line 3 was edited"),
        ("delete", "audit.jsonl line 3: chain broken: audit.jsonl line 2 was edited, or lines were deleted"),
        ("insert", ("audit.jsonl line 4: chain broken: the line(s) after audit.jsonl line 2 up to "
                   "audit.jsonl line 3 were inserted")),
        ("insert-garbage-prev", "audit.jsonl line 3: chain broken: this line was inserted"),
        ("reorder", ("audit.jsonl line 3: chain broken: the line is out of order, it belongs right after "
                    "audit.jsonl line 4")),
        ("not-json", "audit.jsonl line 3: not a complete JSON record"),
    ],
)  # fmt: skip
def test_each_kind_of_tampering_is_named(tmp_path: Path, change: str, expected: str) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 6)
    _tamper(path, change, 2)  # the third line (line 3)
    ok, message = verify(path)
    assert not ok
    assert message.startswith(expected), message


@pytest.mark.parametrize("change", ["edit", "delete", "insert", "reorder"])
def test_tampering_in_a_rotated_file_is_found(rotated: Path, change: str) -> None:
    target = chain_files(rotated)[1]
    _tamper(target, change, 2)
    ok, message = verify(rotated)
    assert not ok
    assert "audit-000002.jsonl line" in message, message


def test_last_line_of_a_rotated_file_edited_breaks_the_link_to_the_next(rotated: Path) -> None:
    files = chain_files(rotated)
    lines = lines_of(files[0])
    lines[-1] = lines[-1].replace(b"Q", b"X", 1)
    files[0].write_bytes(b"".join(lines))
    ok, message = verify(rotated)
    assert not ok
    expected = "audit-000002.jsonl line 1: chain broken: it does not continue audit-000001.jsonl"
    assert message.startswith(expected), message


def test_a_missing_rotated_file_is_named(rotated: Path) -> None:
    files = chain_files(rotated)
    files[1].unlink()
    ok, message = verify(rotated)
    assert not ok and "audit-000003.jsonl line 1" in message and "missing" in message
    files[0].unlink()  # now the oldest file present continues one that is gone
    ok, message = verify(rotated)
    assert not ok and "continues audit-000002.jsonl, which is missing" in message


def test_an_anchor_catches_records_cut_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    head = verify_files([path]).head
    assert verify_files([path], anchor=head).ok
    path.write_bytes(b"".join(lines_of(path)[:-1]))  # the chain itself is still consistent
    assert verify_files([path]).ok
    result = verify_files([path], anchor=head)
    assert not result.ok and "no longer in the chain" in result.message


def test_two_writers_rotating_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path, fsync=False, rotate_bytes=2048) for _ in range(3)]

    def work(log: AuditLog, name: str) -> None:
        for i in range(60):
            log.write("event", f"{name}{i}")

    threads = [threading.Thread(target=work, args=(log, f"T{n}-")) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok, message = verify(path)
    assert ok, message
    events = [r for r in read_records(path) if r["event"] == "event"]
    assert len(events) == 180 and len(chain_files(path)) > 3


def test_tail_reads_across_rotation(rotated: Path) -> None:
    last = [json.loads(line) for line in tail(rotated, 12)]
    ids = [r["queue_id"] for r in last if r["event"] == "received"]
    assert ids[-1] == "Q0039" and len(last) == 12
    assert tail(rotated, 0) == []


def test_follow_sees_new_records_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = write_log(path, 3, rotate_bytes=600)
    seen: list[bytes] = []
    done = threading.Event()
    follower = threading.Thread(
        target=follow, args=(path, seen.append), kwargs={"interval": 0.02, "stop": done.is_set}
    )
    follower.start()
    try:
        time.sleep(0.2)  # follow starts at the end: the first three records are not emitted
        for i in range(8):
            log.write("later", f"L{i}")
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while sum(b'"later"' in line for line in seen) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        follower.join(5)
    events = [json.loads(line)["event"] for line in seen]
    assert events.count("later") == 8 and "received" not in events
    assert len(chain_files(path)) > 2  # it really crossed rotations


def hold_first_sync(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], threading.Event]:
    """Record every audit sync; the first one waits for the event (writers queue up behind it)."""
    syncs: list[int] = []
    first_sync_may_end = threading.Event()
    real_sync = audit_mod._sync

    def sync(fd: int) -> None:
        syncs.append(fd)
        if len(syncs) == 1:
            first_sync_may_end.wait(30)
        real_sync(fd)

    monkeypatch.setattr(audit_mod, "_sync", sync)
    return syncs, first_sync_may_end


def test_threads_sharing_one_log_are_group_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers arriving while a group is being synced go out together, with one sync; each call
    returns only after its own sync, and the chain (with another writer and rotation) stays whole."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True, rotate_bytes=4096)
    other = AuditLog(path, fsync=False, rotate_bytes=4096)  # as another process would
    syncs, first_sync_may_end = hold_first_sync(monkeypatch)
    returned: list[str] = []

    def work(name: str) -> None:
        log.write("event", name)
        returned.append(name)

    first = threading.Thread(target=work, args=("first",))
    first.start()
    while not syncs:  # the first writer is in its sync
        time.sleep(0.01)
    rest = [threading.Thread(target=work, args=(f"T{n}",)) for n in range(7)]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 30
    while len(log._waiting) < 7 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert returned == []  # nobody returns before the sync of their record
    first_sync_may_end.set()
    for t in [first, *rest]:
        t.join()
    assert len(syncs) == 2  # the first record, then the 7 that queued behind it
    assert sorted(returned) == sorted(["first", *(f"T{n}" for n in range(7))])
    for i in range(40):
        (log if i % 2 else other).write("more", f"M{i}", subject="①見積書（㈱髙橋）")
    log.close()
    ok, message = verify(path)
    assert ok, message
    records = read_records(path)
    assert len([r for r in records if r["event"] == "event"]) == 8
    assert [r["queue_id"] for r in records if r["event"] == "more"] == [f"M{i}" for i in range(40)]
    assert len(chain_files(path)) > 2


def test_a_failed_group_raises_for_each_writer_and_the_chain_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True)
    log.write("before")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audit_mod, "_sync", full)
    with pytest.raises(OSError) as caught:
        log.append([log.record("a"), log.record("b")])
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    log.write("after")
    ok, message = verify(path)
    assert ok, message
    assert [r["event"] for r in read_records(path)][-1] == "after"


def test_a_record_that_cannot_be_encoded_fails_only_its_own_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers queue behind a group being synced; one record that is not JSON must not take the
    others of its group down with it (they would answer 451 for mail that did nothing wrong)."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=True)
    syncs, first_sync_may_end = hold_first_sync(monkeypatch)
    outcome: dict[str, str] = {}

    def work(name: str, value: object) -> None:
        try:
            log.write("received", name, subject=value)
            outcome[name] = "written"
        except Exception as exc:  # the outcome is what the test looks at
            outcome[name] = type(exc).__name__

    first = threading.Thread(target=work, args=("first", "①㈱髙"))
    first.start()
    while not syncs:  # the first writer is in its sync: the next ones group behind it
        time.sleep(0.01)
    bad = threading.Thread(target=work, args=("bad", object()))
    good = threading.Thread(target=work, args=("good", "見積書"))
    bad.start()
    good.start()
    deadline = time.monotonic() + 30
    while len(log._waiting) + ("bad" in outcome) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    first_sync_may_end.set()
    for t in (first, bad, good):
        t.join()
    assert outcome == {"first": "written", "bad": "TypeError", "good": "written"}
    log.close()
    ok, message = verify(path)
    assert ok, message
    assert [r["queue_id"] for r in read_records(path)] == ["first", "good"]


def test_records_are_written_as_json_dumps_writes_them(tmp_path: Path) -> None:
    """The encoded-early form with prev added last is the same line as dumping the chained record."""
    path = tmp_path / "audit.jsonl"
    log = write_log(path, 3)
    log.close()
    for line, record in zip(lines_of(path), read_records(path), strict=True):
        assert line == AuditLog._line(record)
