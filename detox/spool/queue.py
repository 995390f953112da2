"""The queue itself: where an entry is (incoming, outgoing, released, failed) and the commit points
that move it on, each one function that keeps its own on-disk ordering rule.

The commit points (every rule is written in the function's docstring):

* accept — :meth:`IncomingWriter.commit <detox.spool.incoming.IncomingWriter.commit>` (streamed
  over SMTP) or :meth:`Spool.accept` (whole): fsync'd into ``incoming/`` before the 250;
* hand-off — :meth:`Spool.write_outgoing` (in the worker: the result, durable and inert) and then
  :meth:`Spool.hand_off` (in serve: the records first, then the release of ``incoming/ID.msg``);
* record progress — :meth:`Spool.record_progress` after each delivery attempt: incoming synced,
  the DSN queued, the state written, audited, then removed once nothing is pending.

Everything else here reads, counts attempts, or moves an entry aside and back.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detox.envelope import Envelope
from detox.errors import SpoolCorrupt, SpoolError
from detox.spool.control import ControlRequests
from detox.spool.incoming import IncomingWriter, entry_header, read_envelope
from detox.spool.records import DeliveryState, EntryKind, PipelineTries

ATTEMPT_MARK = "user.detox.attempt"  # on incoming/ID.msg: its first detoxification attempt has begun


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """A worker's result, durable in ``outgoing/`` and inert: made only by :meth:`Spool.write_outgoing`,
    taken by :meth:`Spool.hand_off` (so no hand-off can happen without it)."""

    state: DeliveryState

    @property
    def queue_id(self) -> str:
        return self.state.queue_id


class Spool(ControlRequests):
    """The durable queue under ``<state_dir>/spool`` (see the package docstring for the layout)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        super().__init__(root, fsync=fsync)
        self._attempt_marks = hasattr(os, "setxattr")  # see _mark_first_attempt

    # -- incoming -----------------------------------------------------------------------------

    def accept(self, envelope: Envelope, raw: bytes) -> None:
        """The accept commit point for a whole message: durable in ``incoming/`` when this returns
        (fsync'd, renamed, directory fsync'd), so the caller may say 250; SpoolError otherwise
        (the caller answers 4xx) and nothing is left."""
        self.write_atomic(self.incoming / f"{envelope.queue_id}.msg", [entry_header(envelope), raw])

    def open_incoming(self, envelope: Envelope, *, reserve: int = 0) -> IncomingWriter:
        """Start receiving a message (see IncomingWriter); nothing touches the disk yet."""
        return IncomingWriter(self, envelope, reserve=reserve)

    def read_incoming(self, queue_id: str) -> tuple[Envelope, bytes]:
        """SpoolCorrupt for a damaged entry; SpoolError for an I/O problem that may pass."""
        path = self.incoming / f"{queue_id}.msg"
        try:
            with open(path, "rb") as fh:
                envelope = read_envelope(fh, path.name)
                return envelope, fh.read()
        except OSError as exc:
            raise SpoolError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc

    def read_envelope(self, queue_id: str, *, aside: bool = False) -> Envelope:
        """Only the envelope of an incoming entry, or one moved aside (for ``detox queue list``)."""
        path = (self.failed if aside else self.incoming) / f"{queue_id}.msg"
        try:
            with open(path, "rb") as fh:
                return read_envelope(fh, path.name, 4 * 1024 * 1024)
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
        tries.waiting_for = ""
        self._write_tries(queue_id, tries, durable=True)
        return tries

    def end_wait(self, queue_id: str, waiting_for: str, error: str, next_attempt: float) -> PipelineTries:
        """An attempt that could not run for want of a service (clamd): it does not count as an
        attempt; the wait is recorded durably, with why and when the next try is due."""
        tries = self.read_tries(queue_id)
        tries.attempts = max(tries.attempts - 1, 0)
        tries.in_flight = False
        tries.waiting_for = waiting_for
        tries.waits += 1
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

    # -- the hand-off: incoming → outgoing ----------------------------------------------------

    def write_outgoing(self, state: DeliveryState, output: bytes) -> WorkerResult:
        """The hand-off's first half, in the worker: the detoxified message, then its first state,
        one directory fsync for both.

        Rule: a result is inert while ``incoming/ID.msg`` exists (``outgoing_ids``, ``has_state``):
        nothing delivers it, and a crash before the hand-off detoxifies the message again, over it.
        Both files are durable when this returns, before :meth:`hand_off` can release the incoming
        entry, so a state never outlives its message.
        """
        self.write_atomic(self.outgoing / f"{state.queue_id}.eml", [output], sync_dir=False)
        self.write_atomic(self.outgoing / f"{state.queue_id}.json", [state.to_json()], sync_dir=False)
        try:
            self._fsync_dir(self.outgoing)
        except OSError as exc:
            raise SpoolError(f"cannot sync {state.queue_id}: {exc.strerror or exc}") from exc
        return WorkerResult(state)

    def hand_off(self, result: WorkerResult, record: Callable[[], object]) -> None:
        """The hand-off's commit point, in serve: ``record()``, then the release of the incoming entry.

        Rules:

        * ``record`` (the store's index and the ``detoxified`` audit record) runs first and must
          return before anything is released: if it raises, ``incoming/ID.msg`` stays, the result
          stays inert and the message is detoxified again later, so a message is never delivered
          without its ``detoxified`` record. A crash after ``record`` and before the release does
          the same (a second ``detoxified`` record, one delivery).
        * The release (``incoming/ID.msg`` and ``ID.tries`` removed) is what makes the result live.
          It is not fsync'd (it is on the path of every message): a power failure that undoes it
          brings the entry back next to its state, which is then inert again, so the message is
          detoxified and delivered again (a duplicate), never lost nor unaudited.
          :meth:`record_progress` makes it durable before any progress of the delivery is written.
        """
        record()
        queue_id = result.queue_id
        (self.incoming / f"{queue_id}.msg").unlink(missing_ok=True)
        (self.incoming / f"{queue_id}.tries").unlink(missing_ok=True)

    # -- outgoing -----------------------------------------------------------------------------

    def write_output(self, queue_id: str, output: bytes) -> None:
        self.write_atomic(self.outgoing / f"{queue_id}.eml", [output])

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

    def record_progress(
        self,
        state: DeliveryState,
        *,
        gave_up: bool,
        dsn: tuple[DeliveryState, bytes] | None,
        audit: Callable[[], object],
    ) -> bool:
        """The delivery's commit point, after each attempt: ``state`` as the attempt left it (its
        recipients updated), whether it ``gave_up`` on any of them, the ``dsn`` to queue for those
        (its state and message) and ``audit``, which writes the attempt's audit records. True when
        no recipient is pending any more and the entry is gone.

        Rules, in this order:

        1. Sync ``incoming/`` first (a message's entry with progress to record): the hand-off's
           release of ``incoming/ID.msg`` was not fsync'd, and a power failure that undid it after
           this progress is written would bring the entry back to be detoxified again, with a fresh
           state (every recipient pending, another DSN).
        2. Queue the DSN (:meth:`queue_message`: its message, then its state) before the state that
           names it: a crash in between sends a DSN again (a duplicate), never loses one.
        3. Write the state (fsync'd) while a recipient is pending, or when one was given up on
           (which DSN went out must survive a crash); then the audit records.
        4. Once no recipient is pending, the entry is removed only after ``audit`` returned (the
           audit log fsyncs): a crash between the two delivers it again (at least once), never loses
           it. A state that would only be removed is not written first.

        If ``audit`` raises, the entry stays as the state on disk says, to be tried again.
        """
        done = not state.pending()
        if state.kind == EntryKind.MESSAGE and (not done or gave_up):
            self._fsync_dir(self.incoming)
        if dsn is not None:
            self.queue_message(*dsn)
        if not done or gave_up:
            self.write_state(state)
        audit()
        if done:
            self.finish_outgoing(state.queue_id)
        return done

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
            state.kind = EntryKind.RELEASE
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
