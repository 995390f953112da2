"""Accepting a message: the first commit point. A message is ours only once it is here, fsync'd.

``incoming/ID.msg`` is a header line (:data:`MAGIC`), the envelope as one line of JSON, then the raw
bytes as received. :class:`IncomingWriter` streams a message there as it arrives over SMTP;
:meth:`IncomingWriter.commit` is the commit point that may precede a 250.

This module needs nothing of the rest of serve: an ingest process (the SMTP listener) needs only
this and the audit log, never the runners that work the queue afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import threading
from typing import IO

from detox.envelope import Envelope
from detox.errors import SpoolCorrupt, SpoolError
from detox.spool.files import SpoolDir

MAGIC = b"DETOX-SPOOL 1\n"
# A message being received is kept in memory up to this size, then written out as it arrives.
STREAM_CHUNK = 256 * 1024


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the disk or the quota is full."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    return isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)


# With sender authentication on, the envelope line is written padded to this many bytes when the
# message starts streaming to disk, and rewritten in place (with the result) before the commit.
AUTH_RESERVE = 16 * 1024


def entry_header(envelope: Envelope, pad_to: int = 0) -> bytes:
    """What precedes the raw message in ``incoming/ID.msg``. ``pad_to``: the JSON line padded with
    spaces to that length (JSON ignores them), so that it can be rewritten in place later."""
    line = json.dumps(envelope.as_dict(), ensure_ascii=False).encode("utf-8")
    if pad_to and len(line) < pad_to:
        line += b" " * (pad_to - len(line))
    return MAGIC + line + b"\n"


def read_envelope(fh: IO[bytes], name: str, limit: int = -1) -> Envelope:
    """The envelope at the start of an incoming entry; SpoolCorrupt if it is not one."""
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

    def __init__(self, spool: SpoolDir, envelope: Envelope, *, reserve: int = 0) -> None:
        self.spool = spool
        self.envelope = envelope
        # >0: room kept in the envelope line for set_envelope (the sender authentication result)
        self.reserve = reserve
        self._header_len = 0
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
                    header = entry_header(self.envelope, self.reserve)
                    self._header_len = len(header)
                    self._fh.write(header)
                self._fh.write(self._buffer)
            except OSError as exc:
                self._failed(exc)
        self._buffer.clear()

    def message_bytes(self) -> bytes:
        """Blocking: the message as received so far (what was streamed to disk and the buffer)."""
        with self._io:
            if self.error is not None:
                raise self.error
            if self._fh is None:
                return bytes(self._buffer)
            self._fh.flush()
            with open(self.tmp, "rb") as fh:
                fh.seek(self._header_len)
                return fh.read() + bytes(self._buffer)

    def set_envelope(self, envelope: Envelope) -> None:
        """Blocking: replace the envelope (before the commit), in place when already on disk.

        An envelope line that no longer fits the room reserved for it loses its ``auth`` details
        (the decision and the summary are kept); SpoolError if even that does not fit."""
        with self._io:
            self.envelope = envelope
            if self._fh is None or self.error is not None:
                self.reserve = 0  # not on disk yet: the commit writes the final line, no room needed
                return
            header = entry_header(envelope, self._header_len - len(MAGIC) - 1)
            if len(header) != self._header_len and envelope.auth is not None:
                compact = {"decision": envelope.auth.get("decision"), "summary": envelope.auth.get("summary")}
                envelope = Envelope.from_dict({**envelope.as_dict(), "auth": compact})
                self.envelope = envelope
                header = entry_header(envelope, self._header_len - len(MAGIC) - 1)
            if len(header) != self._header_len:
                raise SpoolError(f"{self.target.name}: the envelope no longer fits its line")
            try:
                self._fh.flush()
                os.pwrite(self._fh.fileno(), header, 0)
            except OSError as exc:
                self._failed(exc)
                raise self.error from exc  # type: ignore[misc]

    def commit(self) -> None:
        """The accept commit point: the message durable and visible in ``incoming/``, or SpoolError
        and nothing left behind.

        Rule: the caller may answer 250 only after this returns. The order here is what makes a 250
        a promise: the rest of the data written, the file fsync'd, renamed out of ``tmp/`` into
        ``incoming/`` (atomic: a crash leaves all of it or none), and ``incoming/`` fsync'd so that
        the rename itself survives a power failure. Nothing in ``tmp/`` was ever accepted.
        """
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
