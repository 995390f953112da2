"""Maildir delivery: one file per recipient, written tmp/ → fsync → new/ (the Maildir protocol)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from detox.delivery.base import Deliverer, Outcome, Status


class MaildirDeliverer(Deliverer):
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    async def deliver(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Outcome]:
        return await asyncio.to_thread(self._deliver, mail_from, list(recipients), data)

    def _deliver(self, mail_from: str, recipients: list[str], data: bytes) -> dict[str, Outcome]:
        body = data.replace(b"\r\n", b"\n")
        outcomes: dict[str, Outcome] = {}
        for rcpt in recipients:
            name = f"{time.time():.6f}.{os.getpid()}_{secrets.token_hex(4)}.{self.host}"
            tmp = self.path / "tmp" / name
            header = f"Return-Path: <{mail_from}>\nDelivered-To: {rcpt}\n".encode("utf-8", "replace")
            try:
                with open(tmp, "xb") as fh:
                    fh.write(header)
                    fh.write(body)
                    fh.flush()
                    if self.fsync:
                        os.fsync(fh.fileno())
                os.rename(tmp, self.path / "new" / name)
                if self.fsync:
                    fd = os.open(self.path / "new", os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                outcomes[rcpt] = Outcome(Status.DELIVERED, 250, f"maildir {name}")
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                outcomes[rcpt] = Outcome(Status.DEFERRED, None, f"maildir write failed: {exc.strerror}")
        return outcomes
