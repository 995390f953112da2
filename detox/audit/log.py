"""The audit trail's writer: one JSON line per event, hash-chained across size-rotated files.

Each record carries ``prev``, the SHA-256 of the previous line's bytes (newline included; 64 zeros
for the very first record), so an edited, deleted, inserted or reordered line breaks the chain.

Rotation keeps one chain: when ``audit.jsonl`` reaches ``audit.rotate_bytes`` it is renamed to
``audit-000001.jsonl`` (then ``-000002`` ...), and the first record of the new ``audit.jsonl`` is a
``rotated`` record naming that file, whose ``prev`` is the hash of its last line.

Writers (``serve`` and the admin CLI) serialise on an ``flock`` of a separate lock file that is never
renamed, so rotation by one process cannot race an append by another. What a record holds is
:mod:`detox.audit.events` (one typed event per kind); which files make the chain and how a line is
hashed is :mod:`detox.audit.read`, and :mod:`detox.audit.check` verifies it: writing, reading and
verifying are three sides of one on-disk format, so a change to one has to be read against the other two.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, overload

from detox.audit.events import AuditEvent, Rotated
from detox.audit.read import GENESIS, line_hash, segment_paths

if TYPE_CHECKING:
    from detox.config.schema import DetoxConfig


def to_rfc3339(when: datetime) -> str:
    """UTC, milliseconds, ``Z``: the form of every time in the audit log and the index (sortable)."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_rfc3339() -> str:
    return to_rfc3339(datetime.now(UTC))


def _last_line_hash(path: Path) -> str:
    """SHA-256 of the file's last complete line, or GENESIS for an empty or missing file."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            if end == 0:
                return GENESIS
            block = 64 * 1024
            pos = end
            data = b""
            while pos > 0:
                step = min(block, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
                # need the newline that ends the previous-to-last line (or the start of the file)
                if data.count(b"\n") >= 2 or pos == 0:
                    break
            lines = data.rstrip(b"\n").split(b"\n")
            return line_hash(lines[-1] + b"\n")
    except FileNotFoundError:
        return GENESIS


@dataclass(slots=True)
class _Batch:
    """Records of one ``append`` call waiting for the group commit, with their JSON encoded already
    (by the caller: a record that cannot be encoded fails its own append, not the whole group)."""

    records: list[dict[str, Any]]
    encoded: list[bytes]
    done: bool = False
    error: Exception | None = None


_sync = getattr(os, "fdatasync", os.fsync)  # an append's new size is data to fdatasync: enough


class AuditLog:
    """Appends records to the chain; safe to share between threads (``serve``'s ``to_thread`` pool).

    Group commit: records appended by several threads at once are written together under one
    ``flock`` and made durable by one ``fdatasync``; every ``append``/``write`` still returns only
    once its own records are on disk. The lock file and the current log file stay open between
    writes (the log is opened again when another process rotated it).
    """

    def __init__(self, path: Path, *, fsync: bool = True, rotate_bytes: int = 0) -> None:
        self.path = path
        self.fsync = fsync
        self.rotate_bytes = rotate_bytes
        self.lock_path = path.parent / f".{path.name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        # (inode, size, hash of the last line) of the current file after our last append: another
        # writer or a rotation changes inode or size, and then the tail is read again.
        self._tail: tuple[int, int, str] | None = None
        self._lock_fd: int | None = None
        self._fh: BinaryIO | None = None  # the current file, opened for appending
        self._fh_ino = -1
        self._cond = threading.Condition()
        self._waiting: list[_Batch] = []
        self._writing = False  # a thread is writing a group now (the leader)

    @classmethod
    def from_config(cls, config: DetoxConfig) -> AuditLog:
        return cls(
            config.state_path("audit", "audit.jsonl"),
            fsync=config.storage.fsync,
            rotate_bytes=config.audit.rotate_bytes,
        )

    def close(self) -> None:
        with self._cond:
            self._close_file()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _close_file(self) -> None:
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The flock that serialises writers across processes (threads are serialised before)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fd = self._lock_fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _fsync_dir(self) -> None:
        if self.fsync:
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _current(self) -> tuple[BinaryIO, int, int]:
        """Under the lock: the current file (rotated first if due), its inode and size."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and self.rotate_bytes and st.st_size >= self.rotate_bytes:
            segments = segment_paths(self.path)
            number = int(segments[-1].stem.rpartition("-")[2]) + 1 if segments else 1
            target = self.path.with_name(f"{self.path.stem}-{number:06d}{self.path.suffix}")
            os.rename(self.path, target)
            self._fsync_dir()
            self._tail = None
            st = None
        fh = self._fh
        if fh is None or st is None or self._fh_ino != st.st_ino:
            # first write, or the file was rotated or removed (by us or another process): open it
            self._close_file()
            fh = self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
            st = os.fstat(fh.fileno())
            self._fh_ino = st.st_ino
        return fh, st.st_ino, st.st_size

    @staticmethod
    def _line(record: dict[str, Any]) -> bytes:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    @staticmethod
    def _encode(record: dict[str, Any]) -> bytes:
        """The record's JSON without ``prev``; :meth:`_chained` adds it as the last key, which is
        what ``record["prev"] = prev`` then ``_line`` writes for a record without one."""
        fields = {k: v for k, v in record.items() if k != "prev"}
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @staticmethod
    def _chained(encoded: bytes, prev: str) -> bytes:
        return b'%s,"prev":"%s"}\n' % (encoded[:-1], prev.encode("ascii"))

    def _write_group(self, batches: list[_Batch]) -> None:
        """Under the lock: chain and write every record of ``batches``, then one fdatasync."""
        fh, ino, size = self._current()
        lines: list[bytes] = []
        if size == 0:
            segments = segment_paths(self.path)
            prev = _last_line_hash(segments[-1]) if segments else GENESIS
            if segments:
                # The link to the previous file, written by whoever writes first after rotation.
                first = batches[0].records[0]
                link = Rotated(previous_file=segments[-1].name).record(first["ts"])
                link["prev"] = prev
                line = self._line(link)
                lines.append(line)
                prev = line_hash(line)
        elif self._tail is not None and self._tail[:2] == (ino, size):
            prev = self._tail[2]
        else:
            prev = _last_line_hash(self.path)
        for batch in batches:
            for record, encoded in zip(batch.records, batch.encoded, strict=True):
                record["prev"] = prev
                line = self._chained(encoded, prev)
                lines.append(line)
                prev = line_hash(line)
        data = b"".join(lines)
        self._tail = None  # until the write is known to be complete
        try:
            fh.write(data)
            fh.flush()
            if self.fsync:
                _sync(fh.fileno())
        except BaseException:
            self._close_file()  # a partial write: the next one starts from what is on disk
            raise
        self._tail = (ino, size + len(data), prev)

    def append(self, records: Sequence[AuditEvent | dict[str, Any]]) -> None:
        """Append ``records`` in order, chained, fsync'd: events (written now), or records made by
        :meth:`record` (each with ``ts`` and ``event``; ``prev`` is set in each).

        Returns once they are durable; raises OSError if they could not be written, TypeError or
        ValueError (before anything is written) if one is not JSON-serializable.
        """
        if not records:
            return
        ts = now_rfc3339()
        dicts = [r.record(ts) if isinstance(r, AuditEvent) else r for r in records]
        batch = _Batch(dicts, [self._encode(record) for record in dicts])
        with self._cond:
            self._waiting.append(batch)
            while self._writing and not batch.done:
                self._cond.wait()
            if batch.done:  # a leader wrote it while this thread waited
                if batch.error is not None:
                    raise copy.copy(batch.error) from batch.error  # (the same errno for the caller)
                return
            self._writing = True
            group, self._waiting = self._waiting, []
        ok = False
        error: Exception | None = None
        try:
            with self._locked():
                self._write_group(group)
            ok = True
        except Exception as exc:
            error = exc
            raise
        finally:
            with self._cond:
                for item in group:
                    item.done = True
                    if not ok:
                        item.error = error or OSError("audit write interrupted")
                self._writing = False
                self._cond.notify_all()

    @overload
    def write(self, event: AuditEvent, /) -> dict[str, Any]: ...
    @overload
    def write(self, event: str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]: ...
    def write(self, event: AuditEvent | str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one record (fsync'd) and return it. Raises OSError: callers decide whether that
        is fatal.

        Deprecated: ``write(name, queue_id, **fields)``, untyped, is kept for callers not yet
        converted to events (serve, the queue CLI, tests); new code passes an event.
        """
        record = _make_record(event, queue_id, fields)
        self.append([record])
        return record

    @overload
    @staticmethod
    def record(event: AuditEvent, /) -> dict[str, Any]: ...
    @overload
    @staticmethod
    def record(event: str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]: ...
    @staticmethod
    def record(event: AuditEvent | str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """A record for ``append``: its time now, the event, the queue id (if any), the fields.

        Deprecated with a name and fields (see :meth:`write`); with an event, its own fields.
        """
        return _make_record(event, queue_id, fields)


def _make_record(event: AuditEvent | str, queue_id: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    if isinstance(event, AuditEvent):
        if queue_id is not None or fields:
            raise TypeError("an audit event carries its own fields")
        return event.record(now_rfc3339())
    record: dict[str, Any] = {"ts": now_rfc3339(), "event": event}
    if queue_id is not None:
        record["queue_id"] = queue_id
    record.update(fields)
    return record
