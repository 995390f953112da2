"""Caps and the collector: every member byte counted against the caps as it is produced.

The extractors of every format feed members through one :class:`Collector`, which holds the caps
(:class:`Caps`, from the args), counts entries, bytes and ratios and stops the run with :class:`Held`
at the first chunk past one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from detox.sandbox import contract
from detox.sandbox.contract import ARCHIVE_REFUSED_KINDS as REFUSED_KINDS
from detox.sandbox.inside.converters.archive.names import MAX_PATH_CHARS, _printable, _valid_mtime
from detox.sandbox.inside.wire import positive_int_arg

HELD_REASONS = contract.ARCHIVE_HELD_REASONS  # what Held may carry (the filter checks it)

CHUNK = 64 * 1024

DEFAULT_MAX_MEMBERS = 1000
DEFAULT_MAX_TOTAL_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_MEMBER_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_RATIO = 100
DEFAULT_RATIO_GRACE_BYTES = 1024 * 1024


class Held(Exception):
    """The archive is held as a whole: ``reason`` is one of HELD_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


@dataclass(frozen=True, slots=True)
class Caps:
    max_members: int = DEFAULT_MAX_MEMBERS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO
    ratio_grace_bytes: int = DEFAULT_RATIO_GRACE_BYTES

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Caps:
        return cls(
            max_members=positive_int_arg(args, "max_members", DEFAULT_MAX_MEMBERS),
            max_total_bytes=positive_int_arg(args, "max_total_bytes", DEFAULT_MAX_TOTAL_BYTES),
            max_member_bytes=positive_int_arg(args, "max_member_bytes", DEFAULT_MAX_MEMBER_BYTES),
            max_ratio=positive_int_arg(args, "max_ratio", DEFAULT_MAX_RATIO),
            ratio_grace_bytes=positive_int_arg(args, "ratio_grace_bytes", DEFAULT_RATIO_GRACE_BYTES),
        )


@dataclass(slots=True)
class _Member:
    path: str
    data: bytes
    stored: int | None
    mtime: tuple[int, ...] | None


@dataclass
class Collector:
    """Counts entries and bytes against the caps and keeps what was extracted."""

    caps: Caps
    input_size: int
    entries: int = 0
    total: int = 0
    members: list[_Member] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.caps.max_members:
            raise Held("limit-exceeded", f"more than {self.caps.max_members} entries")

    def check_declared(self, sizes: list[tuple[int, int | None]]) -> None:
        """A quick answer from the sizes the archive declares (uncompressed, compressed)."""
        caps = self.caps
        total = 0
        for size, stored in sizes:
            if size > caps.max_member_bytes:
                raise Held("limit-exceeded", f"a member declares {size} bytes")
            if (
                stored is not None
                and size > caps.ratio_grace_bytes
                and size > caps.max_ratio * max(stored, 1)
            ):
                raise Held("archive-bomb", f"a member declares ratio {size}:{stored}")
            total += size
        if total > caps.max_total_bytes:
            raise Held("limit-exceeded", f"members declare {total} bytes in all")
        self._check_overall(total)

    def _check_overall(self, total: int) -> None:
        caps = self.caps
        if total > caps.ratio_grace_bytes and total > caps.max_ratio * max(self.input_size, 1):
            raise Held("archive-bomb", f"{total} bytes out of {self.input_size}")

    def count(self, produced: int, member_size: int, stored: int | None) -> None:
        """Account for ``produced`` new bytes of a member now ``member_size`` long."""
        caps = self.caps
        self.total += produced
        if member_size > caps.max_member_bytes:
            raise Held("limit-exceeded", f"a member is larger than {caps.max_member_bytes} bytes")
        if self.total > caps.max_total_bytes:
            raise Held("limit-exceeded", f"members are larger than {caps.max_total_bytes} bytes in all")
        if (
            stored is not None
            and member_size > caps.ratio_grace_bytes
            and member_size > caps.max_ratio * max(stored, 1)
        ):
            raise Held("archive-bomb", f"a member expands beyond {caps.max_ratio}:1")
        self._check_overall(self.total)

    def read(self, reader: Callable[[int], bytes], stored: int | None) -> bytes:
        """Read one member with a bounded loop: never more than one chunk past a cap."""
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = reader(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            self.count(len(chunk), size, stored)
            chunks.append(chunk)
        return b"".join(chunks)

    def add(self, path: str, data: bytes, stored: int | None, mtime: tuple[int, ...] | None) -> None:
        self.members.append(_Member(path, data, stored, _valid_mtime(mtime)))

    def refuse(self, path: str, why: str, size: int) -> None:
        assert why in REFUSED_KINDS
        self.refused.append({"path": _printable(path)[:MAX_PATH_CHARS], "why": why, "size": max(size, 0)})


class _CountingWriter:
    """A write-only sink for decoders that push their output (py7zr, lzhlib)."""

    def __init__(self, collector: Collector, stored: int | None) -> None:
        self.collector = collector
        self.stored = stored
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes | bytearray) -> int:
        n = len(data)
        if n:
            self.size += n
            self.collector.count(n, self.size, self.stored)
            self.chunks.append(bytes(data))
        return n

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)
