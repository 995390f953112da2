"""The chain on disk, read: which files make it, their lines and records, and ``tail -F`` of it.

The chain ending in ``audit.jsonl`` is its rotated files ``audit-000001.jsonl``, ``-000002`` ...
(oldest first) and then ``audit.jsonl`` itself. A line's link is the SHA-256 of its bytes, newline
included (:func:`line_hash`); the very first record's ``prev`` is :data:`GENESIS`, and the first
record of every file after rotation is a ``rotated`` record (:data:`ROTATED`) naming the file before.
The writer (:mod:`detox.audit.log`) and the check (:mod:`detox.audit.check`) use these definitions;
the CLI's ``audit tail``, ``audit report`` and the tests read records through the functions here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detox.audit.events import Rotated

GENESIS = "0" * 64
ROTATED = Rotated.event


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def segment_paths(path: Path) -> list[Path]:
    """The rotated files of ``path`` (``audit-000001.jsonl`` ...), oldest first."""
    pattern = re.compile(rf"{re.escape(path.stem)}-(\d+){re.escape(path.suffix)}")
    found: list[tuple[int, Path]] = []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            match = pattern.fullmatch(candidate.name)
            if match:
                found.append((int(match.group(1)), candidate))
    return [p for _, p in sorted(found)]


def chain_files(path: Path) -> list[Path]:
    """Every file of the chain that ends in ``path``, oldest first."""
    files = segment_paths(path)
    if path.exists():
        files.append(path)
    return files


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the chain: where it is, its bytes' hash and the parsed record."""

    file: Path
    line_no: int
    digest: str
    record: dict[str, Any]


def iter_entries(files: Sequence[Path]) -> Iterator[Entry]:
    """Records of the given files in order; lines that are not JSON objects are skipped."""
    for path in files:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield Entry(path, number, line_hash(line), record)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of the chain ending in ``path`` (rotated files included), oldest first."""
    return [e.record for e in iter_entries(chain_files(path))]


def tail(path: Path, count: int) -> list[bytes]:
    """The last ``count`` lines of the chain (reading rotated files only when needed)."""
    lines: list[bytes] = []
    for file in reversed(chain_files(path)):
        with open(file, "rb") as fh:
            lines = fh.read().splitlines(keepends=True) + lines
        if len(lines) >= count:
            break
    return lines[-count:] if count else []


def follow(
    path: Path,
    emit: Callable[[bytes], None],
    *,
    interval: float = 0.5,
    stop: Callable[[], bool] | None = None,
) -> None:
    """Emit lines appended to ``path`` from now on, following rotation (``tail -F``)."""
    fh = None
    inode = -1
    skip_existing = path.exists()  # what is there now was shown already (tail); a new file is read whole
    try:
        while stop is None or not stop():
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino != inode:
                if fh is not None:
                    for line in fh:  # what the old file got after our last read
                        emit(line)
                    fh.close()
                fh = open(path, "rb")  # noqa: SIM115 - kept open across polls
                if skip_existing:
                    fh.seek(0, os.SEEK_END)
                    skip_existing = False
                inode = os.fstat(fh.fileno()).st_ino  # the file opened, even if rotated meanwhile
            if fh is not None:
                pending = b""
                for line in fh:
                    if not line.endswith(b"\n"):  # a write in progress: read it whole next time
                        pending = line
                        break
                    emit(line)
                if pending:
                    fh.seek(-len(pending), os.SEEK_CUR)
            time.sleep(interval)
    finally:
        if fh is not None:
            fh.close()
