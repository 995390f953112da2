"""Requests from the CLI to a running serve (``spool/control/``), and one serve per spool (``serve.pid``).

A request is an empty file named for what it asks (``retry.ID``, ``flush``, ``reload``), left by
``detox queue`` or ``detox reload`` and taken by serve within a second, or at its next start; an
answer, where the CLI waits for one, is ``NAME.result``. ``serve.pid`` is flock'ed by the running
serve for its whole life, so the kernel releases it when serve dies however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from detox.errors import SpoolError
from detox.spool.files import SpoolDir


class ControlRequests(SpoolDir):
    """The ``control/`` directory and ``serve.pid`` of a spool (a base of :class:`~detox.spool.Spool`)."""

    def request(self, name: str) -> None:
        """Leave a request (``retry.ID``, ``flush``, ``reload``) for serve: now, or at its next start."""
        self.write_atomic(self.control / name, [b""])

    def take_requests(self) -> list[str]:
        """The pending requests, oldest first; each is removed as it is returned."""
        found = []
        with os.scandir(self.control) as entries:
            for entry in entries:
                if entry.is_file() and not entry.name.endswith(".result"):
                    with contextlib.suppress(OSError):
                        found.append((entry.stat().st_mtime, entry.name))
        names = []
        for _, name in sorted(found):
            with contextlib.suppress(FileNotFoundError):
                (self.control / name).unlink()
                names.append(name)
        return names

    def write_result(self, name: str, result: dict[str, Any]) -> None:
        self.write_atomic(self.control / f"{name}.result", [json.dumps(result, ensure_ascii=False).encode()])

    def read_result(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.control / f"{name}.result").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def clear_result(self, name: str) -> None:
        (self.control / f"{name}.result").unlink(missing_ok=True)

    # -- one serve per spool ---------------------------------------------------------------------

    @property
    def pid_path(self) -> Path:
        return self.root / "serve.pid"

    def lock_for_serve(self) -> ServeLock:
        """Take the spool for this process; SpoolError if another serve has it."""
        lock = ServeLock(self.pid_path)
        lock.acquire()
        return lock

    def serve_pid(self) -> int | None:
        """The pid of the serve using this spool, or None when none runs."""
        return ServeLock.holder(self.pid_path)


class ServeLock:
    """An flock on ``serve.pid``, held for the life of serve; released by the kernel if it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, attempts: int = 20) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A CLI may be probing the lock for a moment; a serve holds it for good.
                if attempt == attempts - 1:
                    os.close(fd)
                    pid = ServeLock.holder(self.path)
                    raise SpoolError(
                        f"another detox serve (pid {pid or '?'}) uses {self.path.parent}; "
                        "one spool takes one serve"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> int | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode("ascii", "replace").strip()
                return int(text) if text.isdigit() else 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
