"""The spool's directories and its one way of writing a file: temp file → fsync → rename → fsync dir.

Every module of the package writes through :meth:`SpoolDir.write_atomic`, so after a crash a file is
either complete or absent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from detox.errors import SpoolError


class SpoolDir:
    """The directories under ``<state_dir>/spool`` (created if missing) and the atomic write."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.outgoing = root / "outgoing"
        self.failed = root / "failed"
        self.released = root / "released"
        self.control = root / "control"
        for d in (self.tmp, self.incoming, self.outgoing, self.failed, self.released, self.control):
            d.mkdir(parents=True, exist_ok=True)

    def _fsync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_atomic(
        self, target: Path, chunks: Iterable[bytes], *, durable: bool = True, sync_dir: bool = True
    ) -> None:
        """Write ``chunks`` to ``target`` so that a crash leaves either all of it or nothing.

        ``durable=False`` skips the fsyncs: the file survives a crash of serve, not of the machine.
        ``sync_dir=False`` leaves the directory's fsync to the caller (one for several renames).
        """
        tmp = self.tmp / f"{target.name}.{secrets.token_hex(4)}"
        sync = self.fsync and durable
        try:
            with open(tmp, "xb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            if sync and sync_dir:
                self._fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write {target.name}: {exc.strerror or exc}") from exc

    def remove_stale_tmp(self, older_than_s: float) -> int:
        """Remove what a killed serve or CLI left in ``tmp/`` (half-received messages, temp files).

        Only files older than ``older_than_s``: a CLI writing through ``write_atomic`` right now keeps
        its temp file. Nothing in ``tmp/`` was ever accepted (a 250 follows the rename out of it).
        """
        cutoff = time.time() - older_than_s
        removed = 0
        for path in self.tmp.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed
