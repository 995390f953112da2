"""Checking the chain: every line links to the one before, across rotated files, and the first
broken link is named with what most likely happened there (edited, inserted, reordered, cut).

``detox audit verify`` runs :func:`verify_files`; an admin who noted the ``head`` of an earlier run
passes it as ``--anchor``, so records removed from the end (which leave a shorter, intact chain) are
found too. The diagnosis is a second pass, made only when the chain is broken.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from detox.audit.read import GENESIS, ROTATED, chain_files, line_hash
from detox.errors import AuditError


@dataclass(slots=True)
class VerifyResult:
    ok: bool
    message: str
    files: list[Path] = field(default_factory=list)
    records: int = 0
    head: str = GENESIS  # hash of the last line: note it, and pass it as --anchor next time
    last_ts: str | None = None


def _where(position: tuple[Path, int]) -> str:
    return f"{position[0].name} line {position[1]}"


def _find_line(files: Sequence[Path], digest: str) -> tuple[int, Path, int] | None:
    """(global index, file, line number) of the line whose hash is ``digest``."""
    index = 0
    for path in files:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if line_hash(line) == digest:
                    return index, path, number
                index += 1
    return None


def _lines(files: Sequence[Path]) -> Iterator[tuple[Path, int, bytes]]:
    for path in files:
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                yield path, number, line


def _prev_of(line: bytes) -> object:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("prev") if isinstance(record, dict) else None


def _diagnose(
    files: Sequence[Path],
    index: int,
    here: tuple[Path, int],
    before: tuple[Path, int, str] | None,
    wanted: object,
    following: tuple[Path, int, bytes] | None,
) -> str:
    """Say what most likely happened at the first broken link (a second pass, only on failure)."""
    where = _where(here)
    if not isinstance(wanted, str) or len(wanted) != 64:
        return f"{where}: chain broken: its prev field is missing or damaged (the line was edited)"
    if wanted == GENESIS:
        return f"{where}: chain broken: a new chain starts here (lines before it were replaced or spliced in)"
    found = _find_line(files, wanted)
    if found is not None and found[0] > index:
        return (
            f"{where}: chain broken: the line is out of order, it belongs right after "
            f"{_where(found[1:])} (lines were reordered)"
        )
    if before is not None and following is not None and _prev_of(following[2]) == before[2]:
        return f"{where}: chain broken: this line was inserted (the next line follows {_where(before[:2])})"
    if found is not None:
        _, path, number = found
        if before is not None:
            return (
                f"{where}: chain broken: the line(s) after {_where((path, number))} up to "
                f"{_where(before[:2])} were inserted (or this line was moved)"
            )
    if before is None:
        return f"{where}: chain broken: the lines before it are missing (the log was cut at its start)"
    if here[1] == 1:
        return (
            f"{where}: chain broken: it does not continue {before[0].name} — its last line was "
            "edited or removed, or a rotated file between them is missing"
        )
    return (
        f"{where}: chain broken: {_where(before[:2])} was edited, or lines were deleted between "
        f"{_where(before[:2])} and {where}"
    )


def verify_files(files: Sequence[Path], *, anchor: str | None = None) -> VerifyResult:
    """Check one chain made of ``files`` (oldest first); name the first broken link."""
    started = time.monotonic()
    result = VerifyResult(ok=False, message="", files=list(files))
    if not files:
        result.message = "no audit log found"
        return result
    prev = GENESIS
    before: tuple[Path, int, str] | None = None
    anchor_seen = anchor is None
    index = 0
    try:
        lines = _lines(files)
        for path, number, line in lines:
            here = (path, number)
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not line.endswith(b"\n"):
                result.message = f"{_where(here)}: not a complete JSON record (edited or damaged line)"
                return result
            wanted = record.get("prev")
            if index == 0 and record.get("event") == ROTATED and wanted != GENESIS:
                missing = record.get("previous_file", "the previous file")
                result.message = (
                    f"{_where(here)}: the chain continues {missing}, which is missing "
                    "(keep rotated files next to the log to verify it)"
                )
                return result
            if wanted != prev:
                following = next(lines, None)
                result.message = _diagnose(files, index, here, before, wanted, following)
                return result
            prev = line_hash(line)
            anchor_seen = anchor_seen or prev == anchor
            ts = record.get("ts")
            result.last_ts = ts if isinstance(ts, str) else result.last_ts
            before = (path, number, prev)
            index += 1
    except OSError as exc:
        raise AuditError(f"cannot read the audit log: {exc}") from exc
    result.records = index
    result.head = prev
    if not anchor_seen:
        result.message = (
            f"the record {anchor} noted earlier is no longer in the chain: "
            "records at the end were removed, or the log was rewritten"
        )
        return result
    result.ok = True
    result.message = (
        f"ok: {index} records in {len(files)} file(s) intact ({time.monotonic() - started:.2f}s); "
        f"last record {result.last_ts or '-'}; head {prev}"
    )
    return result


def verify(path: Path, *, anchor: str | None = None) -> tuple[bool, str]:
    """Check the whole chain ending in ``path`` (rotated files included); (ok, message)."""
    result = verify_files(chain_files(path), anchor=anchor)
    return result.ok, result.message
