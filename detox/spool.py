"""The durable queue. A message is ours only once it is here, fsync'd; only then do we say 250.

Layout under ``<state_dir>/spool``::

    tmp/                 files being written (same file system, so rename is atomic)
    incoming/ID.msg      accepted, not yet detoxified: a header line, the envelope (JSON), the raw bytes
    outgoing/ID.eml      the detoxified message (CRLF)
    outgoing/ID.json     its delivery state, per recipient
    failed/              entries moved aside (unreadable, or failing the pipeline again and again)
    released/ID.eml      a release (``detox quarantine release``) written by the CLI; with its
    released/ID.json     delivery state written last, ``serve`` moves both to outgoing/ and delivers

Every write is temp file → fsync → rename → fsync of the directory, so after a crash a file is either
complete or absent. Recovery is a directory listing: ``incoming`` still to detoxify, ``outgoing``
still to deliver.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detox.envelope import Envelope
from detox.errors import SpoolError

MAGIC = b"DETOX-SPOOL 1\n"


def new_queue_id() -> str:
    """20 hex digits: milliseconds (so ids sort by arrival) and 36 random bits (no clash at 1000/ms)."""
    return f"{int(time.time() * 1000):011X}{secrets.randbits(36):09X}"


def valid_queue_id(value: str) -> bool:
    return len(value) == 20 and all(c in "0123456789ABCDEF" for c in value)


@dataclass(slots=True)
class RecipientState:
    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    code: int | None = None
    response: str = ""
    updated_at: float = 0.0


@dataclass(slots=True)
class DeliveryState:
    queue_id: str
    mail_from: str
    recipients: dict[str, RecipientState]
    created_at: float = field(default_factory=time.time)
    attempts: int = 0
    next_attempt: float = 0.0

    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "pending"]

    def to_json(self) -> bytes:
        data = {
            "queue_id": self.queue_id,
            "mail_from": self.mail_from,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "recipients": {
                r: {
                    "status": s.status,
                    "attempts": s.attempts,
                    "code": s.code,
                    "response": s.response,
                    "updated_at": s.updated_at,
                }
                for r, s in self.recipients.items()
            },
        }
        return json.dumps(data, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> DeliveryState:
        data = json.loads(raw)
        return cls(
            queue_id=data["queue_id"],
            mail_from=data["mail_from"],
            created_at=float(data["created_at"]),
            attempts=int(data["attempts"]),
            next_attempt=float(data["next_attempt"]),
            recipients={r: RecipientState(**s) for r, s in data["recipients"].items()},
        )


class Spool:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.outgoing = root / "outgoing"
        self.failed = root / "failed"
        self.released = root / "released"
        for d in (self.tmp, self.incoming, self.outgoing, self.failed, self.released):
            d.mkdir(parents=True, exist_ok=True)

    # -- low level ----------------------------------------------------------------------------

    def _fsync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_atomic(self, target: Path, chunks: list[bytes]) -> None:
        """Write ``chunks`` to ``target`` so that a crash leaves either all of it or nothing."""
        tmp = self.tmp / f"{target.name}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "xb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            self._fsync_dir(target.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write {target.name}: {exc.strerror}") from exc

    # -- incoming -----------------------------------------------------------------------------

    def accept(self, envelope: Envelope, raw: bytes) -> None:
        """Durably store an accepted message. Raises SpoolError; the caller answers 4xx."""
        header = json.dumps(envelope.as_dict(), ensure_ascii=False).encode("utf-8")
        self.write_atomic(self.incoming / f"{envelope.queue_id}.msg", [MAGIC, header, b"\n", raw])

    def read_incoming(self, queue_id: str) -> tuple[Envelope, bytes]:
        path = self.incoming / f"{queue_id}.msg"
        try:
            with open(path, "rb") as fh:
                if fh.readline() != MAGIC:
                    raise SpoolError(f"{path.name}: not a detox spool file")
                envelope = Envelope.from_dict(json.loads(fh.readline()))
                return envelope, fh.read()
        except (OSError, ValueError, KeyError) as exc:
            raise SpoolError(f"{path.name}: unreadable: {exc}") from exc

    def incoming_ids(self) -> list[str]:
        return sorted(p.stem for p in self.incoming.glob("*.msg"))

    def finish_incoming(self, queue_id: str) -> None:
        (self.incoming / f"{queue_id}.msg").unlink(missing_ok=True)
        self._fsync_dir(self.incoming)

    # -- outgoing -----------------------------------------------------------------------------

    def write_output(self, queue_id: str, output: bytes) -> None:
        self.write_atomic(self.outgoing / f"{queue_id}.eml", [output])

    def read_output(self, queue_id: str) -> bytes:
        try:
            return (self.outgoing / f"{queue_id}.eml").read_bytes()
        except OSError as exc:
            raise SpoolError(f"{queue_id}.eml: unreadable: {exc.strerror}") from exc

    def write_state(self, state: DeliveryState) -> None:
        self.write_atomic(self.outgoing / f"{state.queue_id}.json", [state.to_json()])

    def read_state(self, queue_id: str) -> DeliveryState:
        try:
            return DeliveryState.from_json((self.outgoing / f"{queue_id}.json").read_bytes())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpoolError(f"{queue_id}.json: unreadable: {exc}") from exc

    def has_state(self, queue_id: str) -> bool:
        return (self.outgoing / f"{queue_id}.json").exists()

    def outgoing_ids(self) -> list[str]:
        return sorted(p.stem for p in self.outgoing.glob("*.json"))

    def finish_outgoing(self, queue_id: str) -> None:
        (self.outgoing / f"{queue_id}.json").unlink(missing_ok=True)
        (self.outgoing / f"{queue_id}.eml").unlink(missing_ok=True)
        self._fsync_dir(self.outgoing)

    # -- releases from the admin CLI -------------------------------------------------------------

    def stage_release(self, queue_id: str, data: bytes) -> None:
        """First half of a release: the message, inert until its state file exists."""
        self.write_atomic(self.released / f"{queue_id}.eml", [data])

    def commit_release(self, state: DeliveryState) -> None:
        """Second half: the state file makes the release visible to ``serve``."""
        self.write_atomic(self.released / f"{state.queue_id}.json", [state.to_json()])

    def discard_release(self, queue_id: str) -> None:
        (self.released / f"{queue_id}.eml").unlink(missing_ok=True)
        (self.released / f"{queue_id}.json").unlink(missing_ok=True)

    def adopt_released(self) -> list[str]:
        """Move complete releases into outgoing/ (message first, state last); return their ids.

        Run by ``serve`` (at start and then every second), so a release made while it runs is
        delivered within a second, and one made while it is stopped at its next start.
        """
        adopted = []
        for state_file in sorted(self.released.glob("*.json")):
            queue_id = state_file.stem
            message = self.released / f"{queue_id}.eml"
            if message.exists():
                os.replace(message, self.outgoing / message.name)
            elif not (self.outgoing / message.name).exists():
                self.move_aside(queue_id, "release without its message")
                continue
            self._fsync_dir(self.outgoing)  # the message is in place before its state appears
            os.replace(state_file, self.outgoing / state_file.name)
            self._fsync_dir(self.outgoing)
            self._fsync_dir(self.released)
            adopted.append(queue_id)
        return adopted

    # -- aside ----------------------------------------------------------------------------------

    def move_aside(self, queue_id: str, why: str) -> None:
        """Never drop: move every file of the entry to ``failed/`` with a note of why."""
        for directory in (self.incoming, self.outgoing, self.released):
            for path in directory.glob(f"{queue_id}.*"):
                os.replace(path, self.failed / path.name)
        note: dict[str, Any] = {"queue_id": queue_id, "why": why, "at": time.time()}
        self.write_atomic(self.failed / f"{queue_id}.why.json", [json.dumps(note).encode()])
