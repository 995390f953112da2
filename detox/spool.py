"""The durable queue. A message is ours only once it is here, fsync'd; only then do we say 250.

Layout under ``<state_dir>/spool``::

    tmp/                 files being written (same file system, so rename is atomic)
    incoming/ID.msg      accepted, not yet detoxified: a header line, the envelope (JSON), the raw bytes
    incoming/ID.tries    its detoxification attempts (absent until the first one starts)
    outgoing/ID.eml      the detoxified message (CRLF)
    outgoing/ID.json     its delivery state, per recipient (both inert while incoming/ID.msg exists)
    failed/              entries moved aside (unreadable, or failing the pipeline again and again),
                         each with ID.why.json; `detox queue retry ID` puts one back
    released/ID.eml      a release (``detox quarantine release``) written by the CLI; with its
    released/ID.json     delivery state written last, ``serve`` moves both to outgoing/ and delivers
    control/             requests from the CLI to a running serve (retry.ID, flush, reload)
    serve.pid            locked by the running serve (one serve per spool)

Every write is temp file → fsync → rename → fsync of the directory, so after a crash a file is either
complete or absent. Recovery is a directory listing: ``incoming`` still to detoxify, ``outgoing``
still to deliver.

The worker writes ``outgoing/ID.eml`` and its first ``ID.json`` while ``incoming/ID.msg`` is still
there; serve then indexes, audits and removes ``incoming/ID.msg`` (the hand-off's commit). So an
outgoing entry is live only once its incoming entry is gone (``outgoing_ids``): a crash before the
commit detoxifies the message again, and it is never delivered without its ``detoxified`` record.
The removals that finish a stage (incoming at the hand-off, outgoing after delivery) are not
fsync'd: one lost to a power failure makes a duplicate (at least once), never a loss; a delivery
attempt that records progress first makes the incoming removal durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from detox.envelope import Envelope
from detox.errors import SpoolCorrupt, SpoolError

MAGIC = b"DETOX-SPOOL 1\n"
ATTEMPT_MARK = "user.detox.attempt"  # on incoming/ID.msg: its first detoxification attempt has begun
# A message being received is kept in memory up to this size, then written out as it arrives.
STREAM_CHUNK = 256 * 1024

# Delivery state kinds: what a failure may lead to.
KIND_MESSAGE = "message"  # a detoxified message: a failed recipient may get its sender a DSN
KIND_DSN = "dsn"  # a DSN we wrote, delivered through delivery.bounce_via; never bounced itself
KIND_RELEASE = "release"  # an admin's release (例外措置): failures are recorded, never bounced


def new_queue_id() -> str:
    """20 hex digits: milliseconds (so ids sort by arrival) and 36 random bits (no clash at 1000/ms)."""
    return f"{int(time.time() * 1000):011X}{secrets.randbits(36):09X}"


def valid_queue_id(value: str) -> bool:
    return len(value) == 20 and all(c in "0123456789ABCDEF" for c in value)


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the disk or the quota is full."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


@dataclass(slots=True)
class RecipientState:
    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    code: int | None = None
    response: str = ""
    updated_at: float = 0.0
    reason: str = ""  # for failed: "rejected" (5xx) or "expired" (delivery.max_age_days)
    dsn: str = ""  # for failed: the queue id of the DSN sent, or "suppressed: WHY"


@dataclass(slots=True)
class DeliveryState:
    queue_id: str
    mail_from: str
    recipients: dict[str, RecipientState]
    created_at: float = field(default_factory=time.time)
    attempts: int = 0
    next_attempt: float = 0.0
    kind: str = KIND_MESSAGE
    received_at: float = 0.0  # when we said 250; the maximum age counts from here
    original_sha256: str = ""  # the original in the store (its headers go into a DSN)
    held_reasons: tuple[str, ...] = ()  # reasons of held parts: some forbid a DSN

    def __post_init__(self) -> None:
        if not self.received_at:
            self.received_at = self.created_at

    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "pending"]

    def to_json(self) -> bytes:
        data = {
            "queue_id": self.queue_id,
            "mail_from": self.mail_from,
            "kind": self.kind,
            "created_at": self.created_at,
            "received_at": self.received_at,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "original_sha256": self.original_sha256,
            "held_reasons": list(self.held_reasons),
            "recipients": {
                r: {
                    "status": s.status,
                    "attempts": s.attempts,
                    "code": s.code,
                    "response": s.response,
                    "updated_at": s.updated_at,
                    "reason": s.reason,
                    "dsn": s.dsn,
                }
                for r, s in self.recipients.items()
            },
        }
        return json.dumps(data, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> DeliveryState:
        """Read a state file; keys added since older releases are optional."""
        data = json.loads(raw)
        return cls(
            queue_id=str(data["queue_id"]),
            mail_from=str(data["mail_from"]),
            created_at=float(data["created_at"]),
            received_at=float(data.get("received_at") or data["created_at"]),
            attempts=int(data["attempts"]),
            next_attempt=float(data["next_attempt"]),
            kind=str(data.get("kind") or KIND_MESSAGE),
            original_sha256=str(data.get("original_sha256") or ""),
            held_reasons=tuple(str(r) for r in data.get("held_reasons") or ()),
            recipients={r: RecipientState(**s) for r, s in data["recipients"].items()},
        )


@dataclass(slots=True)
class PipelineTries:
    """Detoxification attempts of one incoming entry, kept next to it so they survive restarts."""

    attempts: int = 0  # started, including one under way
    in_flight: bool = False  # an attempt started and has not ended: serve stopped during it
    last_error: str = ""
    next_attempt: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "attempts": self.attempts,
                "in_flight": self.in_flight,
                "last_error": self.last_error,
                "next_attempt": self.next_attempt,
                "updated_at": self.updated_at,
            },
            ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> PipelineTries:
        data = json.loads(raw)
        return cls(
            attempts=int(data["attempts"]),
            in_flight=bool(data["in_flight"]),
            last_error=str(data.get("last_error", "")),
            next_attempt=float(data.get("next_attempt", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
        )


def _read_envelope(fh: IO[bytes], name: str, limit: int = -1) -> Envelope:
    try:
        if fh.readline() != MAGIC:
            raise SpoolCorrupt(f"{name}: not a detox spool file")
        return Envelope.from_dict(json.loads(fh.readline(limit)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpoolCorrupt(f"{name}: damaged envelope: {exc}") from exc


class IncomingWriter:
    """One message as it arrives over SMTP: streamed to ``tmp/``, renamed into ``incoming/`` on commit.

    ``feed`` runs on the event loop and only buffers; ``flush`` and ``commit`` do the file I/O and are
    meant for a thread. After the first write error the rest of the data is only counted (the client
    must still be read to the end of DATA before it can be answered) and ``commit`` raises.
    """

    def __init__(self, spool: Spool, envelope: Envelope) -> None:
        self.spool = spool
        self.envelope = envelope
        self.target = spool.incoming / f"{envelope.queue_id}.msg"
        self.tmp = spool.tmp / f"{self.target.name}.{secrets.token_hex(4)}"
        self.size = 0
        self.error: SpoolError | None = None
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._fh: IO[bytes] | None = None
        # flush/commit run in a thread while abort may come from the event loop (the client hung
        # up): one at a time, and nothing is written or committed after an abort.
        self._io = threading.RLock()
        self._aborted = False

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def feed(self, data: bytes) -> bool:
        """Take the next bytes; True when enough is buffered that ``flush`` should run."""
        self._digest.update(data)
        self.size += len(data)
        if self.error is None:
            self._buffer += data
        return len(self._buffer) >= STREAM_CHUNK

    def flush(self) -> None:
        with self._io:
            self._flush()

    def _flush(self) -> None:
        if self._aborted:
            self._buffer.clear()
            return
        if self.error is None:
            try:
                if self._fh is None:
                    self._fh = open(self.tmp, "xb")  # noqa: SIM115 - open across calls, closed in commit/abort
                    header = json.dumps(self.envelope.as_dict(), ensure_ascii=False).encode("utf-8")
                    self._fh.write(MAGIC + header + b"\n")
                self._fh.write(self._buffer)
            except OSError as exc:
                self._failed(exc)
        self._buffer.clear()

    def commit(self) -> None:
        """Make the message durable and visible in ``incoming/``; raises SpoolError (nothing is left)."""
        with self._io:
            self._commit()

    def _commit(self) -> None:
        if self.error is not None:  # a write failed (and aborted the file): say why
            raise self.error
        if self._aborted:
            raise SpoolError(f"{self.target.name}: aborted")
        self._flush()
        if self.error is None:
            assert self._fh is not None
            try:
                self._fh.flush()
                if self.spool.fsync:
                    os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
                os.replace(self.tmp, self.target)
                self.spool._fsync_dir(self.spool.incoming)
            except OSError as exc:
                self._failed(exc)
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Forget the message (client gone, a limit hit, a write failed): nothing stays on disk."""
        with self._io:
            self._aborted = True
            self._buffer.clear()
            if self._fh is not None:
                with contextlib.suppress(OSError):
                    self._fh.close()
                self._fh = None
            with contextlib.suppress(OSError):
                self.tmp.unlink(missing_ok=True)

    def _failed(self, exc: OSError) -> None:
        error = SpoolError(f"cannot write {self.target.name}: {exc.strerror or exc}")
        error.__cause__ = exc
        self.error = error
        self.abort()  # free the space at once: the disk may be full


class Spool:
    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.outgoing = root / "outgoing"
        self.failed = root / "failed"
        self.released = root / "released"
        self.control = root / "control"
        self._attempt_marks = hasattr(os, "setxattr")  # see _mark_first_attempt
        for d in (self.tmp, self.incoming, self.outgoing, self.failed, self.released, self.control):
            d.mkdir(parents=True, exist_ok=True)

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

    # -- low level ----------------------------------------------------------------------------

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

    # -- incoming -----------------------------------------------------------------------------

    def accept(self, envelope: Envelope, raw: bytes) -> None:
        """Durably store an accepted message. Raises SpoolError; the caller answers 4xx."""
        header = json.dumps(envelope.as_dict(), ensure_ascii=False).encode("utf-8")
        self.write_atomic(self.incoming / f"{envelope.queue_id}.msg", [MAGIC, header, b"\n", raw])

    def open_incoming(self, envelope: Envelope) -> IncomingWriter:
        """Start receiving a message (see IncomingWriter); nothing touches the disk yet."""
        return IncomingWriter(self, envelope)

    def read_incoming(self, queue_id: str) -> tuple[Envelope, bytes]:
        """SpoolCorrupt for a damaged entry; SpoolError for an I/O problem that may pass."""
        path = self.incoming / f"{queue_id}.msg"
        try:
            with open(path, "rb") as fh:
                envelope = _read_envelope(fh, path.name)
                return envelope, fh.read()
        except OSError as exc:
            raise SpoolError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc

    def read_envelope(self, queue_id: str, *, aside: bool = False) -> Envelope:
        """Only the envelope of an incoming entry, or one moved aside (for ``detox queue list``)."""
        path = (self.failed if aside else self.incoming) / f"{queue_id}.msg"
        try:
            with open(path, "rb") as fh:
                return _read_envelope(fh, path.name, 4 * 1024 * 1024)
        except OSError as exc:
            raise SpoolError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc

    def incoming_ids(self) -> list[str]:
        return sorted(p.stem for p in self.incoming.glob("*.msg"))

    def incoming_sizes(self) -> dict[str, int]:
        """Size of every incoming entry by id (the back-pressure backlog at start)."""
        sizes: dict[str, int] = {}
        with os.scandir(self.incoming) as entries:
            for entry in entries:
                if entry.name.endswith(".msg"):
                    with contextlib.suppress(OSError):
                        sizes[entry.name[:-4]] = entry.stat().st_size
        return sizes

    def incoming_size(self, queue_id: str) -> int:
        """Size of one incoming entry (0 if it is gone)."""
        try:
            return (self.incoming / f"{queue_id}.msg").stat().st_size
        except OSError:
            return 0

    def has_incoming(self, queue_id: str) -> bool:
        return (self.incoming / f"{queue_id}.msg").exists()

    def finish_incoming(self, queue_id: str) -> None:
        """Release the incoming entry (the hand-off's commit point); not fsync'd.

        Its outgoing entry and ``detoxified`` record are durable already. If a power failure undoes
        the removal, the entry is back next to its state, which then stays inert (``outgoing_ids``):
        the message is detoxified and delivered again (a duplicate), never lost nor unaudited.
        ``sync_incoming`` makes removals durable where progress would otherwise be undone.
        """
        (self.incoming / f"{queue_id}.msg").unlink(missing_ok=True)
        (self.incoming / f"{queue_id}.tries").unlink(missing_ok=True)

    def sync_incoming(self) -> None:
        """Make the removals from ``incoming/`` so far durable."""
        self._fsync_dir(self.incoming)

    # -- detoxification attempts --------------------------------------------------------------

    def read_tries(self, queue_id: str) -> PipelineTries:
        """The attempts so far; a missing or damaged record counts as none (the entry itself is fine)."""
        try:
            return PipelineTries.from_json((self.incoming / f"{queue_id}.tries").read_bytes())
        except FileNotFoundError:
            if self._has_attempt_mark(self.incoming / f"{queue_id}.msg"):
                return PipelineTries(attempts=1, in_flight=True)
            return PipelineTries()
        except (OSError, ValueError, KeyError, TypeError):
            return PipelineTries()

    def _write_tries(self, queue_id: str, tries: PipelineTries, *, durable: bool) -> None:
        tries.updated_at = time.time()
        self.write_atomic(self.incoming / f"{queue_id}.tries", [tries.to_json()], durable=durable)

    # The first attempt of an entry without a .tries file is marked by an extended attribute on its
    # .msg instead of a new .tries file: the same promise (it survives a crash of serve, not of the
    # machine) for a few microseconds instead of a file creation (0.04-0.7 ms of system CPU on ext4
    # here) on every message. File systems without user xattrs get the .tries file, as before.

    def _has_attempt_mark(self, path: Path) -> bool:
        if not self._attempt_marks:
            return False
        try:
            os.getxattr(path, ATTEMPT_MARK)
        except OSError:
            return False
        return True

    def _clear_attempt_mark(self, path: Path) -> None:
        if self._attempt_marks:
            with contextlib.suppress(OSError):  # ENODATA (none), ENOENT, ENOTSUP
                os.removexattr(path, ATTEMPT_MARK)

    def _mark_first_attempt(self, queue_id: str) -> bool:
        """Mark the first attempt on the .msg itself; False when the .tries file must be used."""
        if not self._attempt_marks or (self.incoming / f"{queue_id}.tries").exists():
            return False
        try:
            # XATTR_CREATE: a mark already there (an attempt that neither ended nor was handed
            # back) makes this the second attempt, counted in a .tries file
            os.setxattr(self.incoming / f"{queue_id}.msg", ATTEMPT_MARK, b"1", os.XATTR_CREATE)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                self._attempt_marks = False  # this file system has none: .tries files from now on
            return False
        return True

    def begin_attempt(self, queue_id: str) -> PipelineTries:
        """Count an attempt before it starts, so one that takes serve down is counted too.

        Not fsync'd: what it guards against is a crash of serve, not of the machine, and it is on
        the path of every message.
        """
        if self._mark_first_attempt(queue_id):
            return PipelineTries(attempts=1, in_flight=True, updated_at=time.time())
        tries = self.read_tries(queue_id)
        tries.attempts += 1
        tries.in_flight = True
        self._write_tries(queue_id, tries, durable=False)
        return tries

    def end_attempt(self, queue_id: str, error: str, next_attempt: float) -> PipelineTries:
        """A failed attempt: recorded durably with why and when the next one is due."""
        tries = self.read_tries(queue_id)
        tries.in_flight = False
        tries.last_error = error[:500]
        tries.next_attempt = next_attempt
        self._write_tries(queue_id, tries, durable=True)
        return tries

    def hand_back(self, queue_id: str) -> None:
        """An attempt interrupted by our own shutdown: it does not count."""
        if not self.has_incoming(queue_id):
            return
        if not (self.incoming / f"{queue_id}.tries").exists():
            self._clear_attempt_mark(self.incoming / f"{queue_id}.msg")  # back to no attempt at all
            return
        tries = self.read_tries(queue_id)
        tries.attempts = max(tries.attempts - 1, 0)
        tries.in_flight = False
        self._write_tries(queue_id, tries, durable=True)

    def retry_now(self, queue_id: str) -> None:
        """The admin asked for a new attempt now: forget the attempts so far."""
        (self.incoming / f"{queue_id}.tries").unlink(missing_ok=True)
        self._clear_attempt_mark(self.incoming / f"{queue_id}.msg")

    # -- outgoing -----------------------------------------------------------------------------

    def write_output(self, queue_id: str, output: bytes) -> None:
        self.write_atomic(self.outgoing / f"{queue_id}.eml", [output])

    def write_outgoing(self, state: DeliveryState, output: bytes) -> None:
        """A worker's result: the message, then its first state, one directory fsync for both.

        Inert while ``incoming/ID.msg`` exists (see ``outgoing_ids``); both are durable before the
        hand-off can remove it, so a state never outlives its message.
        """
        self.write_atomic(self.outgoing / f"{state.queue_id}.eml", [output], sync_dir=False)
        self.write_atomic(self.outgoing / f"{state.queue_id}.json", [state.to_json()], sync_dir=False)
        try:
            self._fsync_dir(self.outgoing)
        except OSError as exc:
            raise SpoolError(f"cannot sync {state.queue_id}: {exc.strerror or exc}") from exc

    def read_output(self, queue_id: str) -> bytes:
        try:
            return (self.outgoing / f"{queue_id}.eml").read_bytes()
        except FileNotFoundError as exc:
            raise SpoolCorrupt(f"{queue_id}.eml: missing (a delivery state without its message)") from exc
        except OSError as exc:
            raise SpoolError(f"{queue_id}.eml: cannot read: {exc.strerror}") from exc

    def read_output_if_small(self, queue_id: str, max_size: int) -> bytes | None:
        """The detoxified message if it is at most ``max_size`` bytes, else None."""
        try:
            with open(self.outgoing / f"{queue_id}.eml", "rb") as fh:
                if os.fstat(fh.fileno()).st_size > max_size:
                    return None
                return fh.read()
        except FileNotFoundError as exc:
            raise SpoolCorrupt(f"{queue_id}.eml: missing (a delivery state without its message)") from exc
        except OSError as exc:
            raise SpoolError(f"{queue_id}.eml: cannot read: {exc.strerror}") from exc

    def write_state(self, state: DeliveryState) -> None:
        self.write_atomic(self.outgoing / f"{state.queue_id}.json", [state.to_json()])

    def read_state(self, queue_id: str) -> DeliveryState:
        try:
            raw = (self.outgoing / f"{queue_id}.json").read_bytes()
        except OSError as exc:
            raise SpoolError(f"{queue_id}.json: cannot read: {exc.strerror}") from exc
        try:
            return DeliveryState.from_json(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SpoolCorrupt(f"{queue_id}.json: damaged: {exc}") from exc

    def has_state(self, queue_id: str) -> bool:
        """A live outgoing entry: its state exists and its incoming entry is gone (a worker's result
        not yet handed off is inert, so nothing delivers it however it is asked for)."""
        return (self.outgoing / f"{queue_id}.json").exists() and not self.has_incoming(queue_id)

    def outgoing_ids(self) -> list[str]:
        """The live outgoing entries (``has_state``)."""
        return sorted(p.stem for p in self.outgoing.glob("*.json") if not self.has_incoming(p.stem))

    def finish_outgoing(self, queue_id: str) -> None:
        """Remove a finished entry; not fsync'd: it is done and audited, a power failure before the
        next journal commit can only bring it back to be delivered again (state first, so a lone
        message is left rather than a state without its message)."""
        (self.outgoing / f"{queue_id}.json").unlink(missing_ok=True)
        (self.outgoing / f"{queue_id}.eml").unlink(missing_ok=True)

    def queue_message(self, state: DeliveryState, data: bytes) -> None:
        """A new outgoing entry made by serve itself (a DSN): the message first, its state last."""
        self.write_output(state.queue_id, data)
        self.write_state(state)

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
        delivered within a second, and one made while it is stopped at its next start. The state
        is marked as a release on the way: a release that fails is recorded, never bounced to the
        original's sender.
        """
        adopted = []
        for state_file in sorted(self.released.glob("*.json")):
            queue_id = state_file.stem
            message = self.released / f"{queue_id}.eml"
            try:
                state = DeliveryState.from_json(state_file.read_bytes())
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self.move_aside(queue_id, f"release state unreadable: {exc}")
                continue
            if message.exists():
                os.replace(message, self.outgoing / message.name)
            elif not (self.outgoing / message.name).exists():
                self.move_aside(queue_id, "release without its message")
                continue
            self._fsync_dir(self.outgoing)  # the message is in place before its state appears
            state.kind = KIND_RELEASE
            self.write_state(state)
            state_file.unlink(missing_ok=True)
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

    def aside_ids(self) -> list[str]:
        return sorted(p.name.removesuffix(".why.json") for p in self.failed.glob("*.why.json"))

    def aside_note(self, queue_id: str) -> dict[str, Any]:
        try:
            note = json.loads((self.failed / f"{queue_id}.why.json").read_bytes())
        except (OSError, ValueError):
            return {"queue_id": queue_id, "why": "(note unreadable)", "at": 0.0}
        return note if isinstance(note, dict) else {"queue_id": queue_id, "why": str(note), "at": 0.0}

    def restore_aside(self, queue_id: str) -> str | None:
        """Put an entry from ``failed/`` back: "incoming" or "outgoing", None when not there.

        The attempts of a restored incoming entry start again from zero; the note stays in
        ``failed/`` as ID.why.json only until the entry is back.
        """
        message = self.failed / f"{queue_id}.msg"
        output = self.failed / f"{queue_id}.eml"
        state = self.failed / f"{queue_id}.json"
        where: str | None = None
        if message.exists():
            (self.failed / f"{queue_id}.tries").unlink(missing_ok=True)
            # a worker's result never handed off (inert): the message is detoxified again
            state.unlink(missing_ok=True)
            output.unlink(missing_ok=True)
            self._clear_attempt_mark(message)
            os.replace(message, self.incoming / message.name)
            self._fsync_dir(self.incoming)
            where = "incoming"
        elif state.exists() and output.exists():
            os.replace(output, self.outgoing / output.name)
            self._fsync_dir(self.outgoing)
            os.replace(state, self.outgoing / state.name)
            self._fsync_dir(self.outgoing)
            where = "outgoing"
        if where is not None:
            (self.failed / f"{queue_id}.why.json").unlink(missing_ok=True)
            self._fsync_dir(self.failed)
        return where

    # -- requests from the CLI to a running serve ------------------------------------------------

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
