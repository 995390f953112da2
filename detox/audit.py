"""The audit trail: one JSON line per stage of every message, hash-chained.

Each record carries ``prev``, the SHA-256 of the previous line's bytes, so an edited, deleted,
inserted or reordered line breaks the chain. Appends take an exclusive ``flock`` so the server and
the CLI can both write; the writer re-reads the tail when another process appended meanwhile.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
            return hashlib.sha256(lines[-1] + b"\n").hexdigest()
    except FileNotFoundError:
        return GENESIS


class AuditLog:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = GENESIS
        self._known_size = -1

    def write(self, event: str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]:
        record: dict[str, Any] = {"ts": now_rfc3339(), "event": event}
        if queue_id is not None:
            record["queue_id"] = queue_id
        record.update(fields)
        with open(self.path, "ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                size = os.fstat(fh.fileno()).st_size
                if size != self._known_size:
                    self._prev = _last_line_hash(self.path)
                record["prev"] = self._prev
                line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
                fh.write(line)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                self._prev = hashlib.sha256(line).hexdigest()
                self._known_size = size + len(line)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return record


def read_records(path: Path) -> list[dict[str, Any]]:
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def verify(path: Path) -> tuple[bool, str]:
    """Check the chain; return (ok, message naming the first broken line)."""
    prev = GENESIS
    started = time.monotonic()
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                record = json.loads(line)
            except ValueError:
                return False, f"line {number}: not a JSON record"
            if record.get("prev") != prev:
                return False, f"line {number}: chain broken (edited, deleted, inserted or reordered line)"
            prev = hashlib.sha256(line).hexdigest()
    return True, f"ok: {path} intact ({time.monotonic() - started:.2f}s)"
