"""The host half of the resident converter sandbox: one zygote per sandbox, one forked child per document.

With ``sandbox.resident_converters`` (the default) a provider does not start a sandbox and a Python per
file: it keeps one sandbox running whose process, :mod:`detox.sandbox.inside.zygote`, has imported the
converters once and forks a fresh child for each document. :class:`Zygote` is the worker's side of
that: it starts the sandbox (a :class:`~detox.sandbox.resident.ResidentProcess` whose stdin is a
SOCK_SEQPACKET socket), hands each document's fresh pipes over that socket with its rlimits, pumps the
document through them like a one-shot run (:func:`~detox.sandbox.spawn.pump`), reads the zygote's
answer (exit status, processes or state the document left behind) and kills the whole sandbox on any
doubt. The messages are :func:`~detox.sandbox.inside.wire.encode_message` objects, through
:mod:`detox.sandbox.contract`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import select
import socket
import time
import weakref
from collections.abc import Callable
from typing import IO, Any

from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox import contract
from detox.sandbox.base import Limits
from detox.sandbox.resident import ResidentProcess
from detox.sandbox.spawn import Launch, child_result, describe_status, pump, rlimits_for

# The name these log lines carried before this module was split out of detox.sandbox.resident.
log = logging.getLogger("detox.sandbox.resident")

ZYGOTE_MODULE = contract.ZYGOTE_MODULE
# A zygote serves this many documents, then the next run starts a fresh one: a bound on how long one
# address-space layout (forked children share the zygote's ASLR and stack canary) faces documents.
ZYGOTE_DOCUMENTS = 200
# RLIMIT_CPU counts per process and the zygote's own work is small (it never converts anything), but
# its hard limit is the ceiling of every child's: it gets this many times sandbox.cpu_s.
ZYGOTE_CPU_FACTOR = 10
ZYGOTE_OPEN_FILES = 1024
_ZYGOTE_STOP_GRACE_S = 2.0
_PIPE_SIZE = 1024 * 1024


def zygote_command(python: str, zygote_args: list[str]) -> list[str]:
    return [python, "-I", "-B", "-m", ZYGOTE_MODULE, *zygote_args]


def zygote_limits(configured: Limits) -> Limits:
    """The zygote's own rlimits: the configured memory (children lower it per run), a CPU ceiling."""
    return Limits(
        timeout_s=configured.timeout_s,
        cpu_s=configured.cpu_s * ZYGOTE_CPU_FACTOR,
        memory_bytes=configured.memory_bytes,
        max_open_files=ZYGOTE_OPEN_FILES,
    )


class Zygote:
    """A resident sandbox whose zygote (:mod:`detox.sandbox.inside.zygote`) forks a fresh child per document.

    Started on the first run; replaced (the whole process group killed) after any timeout, protocol
    error, oversized output, zygote death, exception while a document is in flight, a child killed by
    a signal, a document that left processes or state behind, and after :data:`ZYGOTE_DOCUMENTS`
    documents. One document at a time: the owner serializes.
    """

    def __init__(
        self,
        launch: Callable[[Limits], contextlib.AbstractContextManager[Launch]],
        limits: Limits,
        *,
        signal_offset: int | None = None,
    ) -> None:
        self._launch = launch
        self.limits = limits
        self.signal_offset = signal_offset
        self.process: ResidentProcess | None = None
        self._ctl: socket.socket | None = None
        self._resources: contextlib.ExitStack | None = None
        self.documents = 0
        self.starts = 0
        _zygotes.add(self)

    # -- one document ---------------------------------------------------------------------------

    def run(self, module: str, header: bytes, data: bytes, limits: Limits) -> bytes:
        """Like :func:`~detox.sandbox.process.run_child`, in a child forked by the zygote."""
        deadline = time.monotonic() + limits.timeout_s
        streams: list[IO[bytes]] = []
        result: dict[str, Any] = {}
        try:
            ctl = self._ready(module, limits, deadline)
            child_ends: list[int] = []  # the zygote gets these; we keep the other ends as streams
            try:
                for child_reads in (True, False, False):  # stdin, stdout, stderr: fresh per document
                    read_end, write_end = os.pipe()
                    if child_reads:
                        child_ends.append(read_end)
                        streams.append(open(write_end, "wb", buffering=0))  # noqa: SIM115 - closed below
                    else:
                        child_ends.append(write_end)
                        streams.append(open(read_end, "rb", buffering=0))  # noqa: SIM115 - closed below
                for stream in streams[:2]:
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
                request = {"module": module, "rlimits": rlimits_for(limits)}
                socket.send_fds(ctl, [contract.encode_message(request)], child_ends)
            finally:
                for fd in child_ends:
                    os.close(fd)  # only the child holds them now: no stream outlives this document

            def ended(readable: bool) -> bool:
                if readable:
                    result.update(self._answer(ctl, module))
                return readable

            stdin, stdout, stderr = streams
            out, stderr_tail = pump(
                module,
                stdin,
                stdout,
                stderr,
                [header, data],
                limits,
                deadline,
                exit_fd=ctl.fileno(),
                ended=ended,
            )
        except BaseException:
            # Whatever interrupted the document (our deadline, the runner's SIGALRM, a bad answer),
            # the sandbox may be mid-document: it is killed with everything in it, never reused.
            self.stop(kill=True)
            raise
        finally:
            for stream in streams:
                stream.close()
        self.documents += 1
        returncode: int = result["status"]
        if returncode < 0 or self.documents >= ZYGOTE_DOCUMENTS:
            # A crash by signal may be one probe of an address-space layout all children share: the
            # next document meets a fresh one.
            self.stop(kill=returncode < 0)
        return child_result(module, returncode, out, stderr_tail, None)

    def _answer(self, ctl: socket.socket, module: str) -> dict[str, Any]:
        message = ctl.recv(contract.MAX_MESSAGE_BYTES)
        if not message:
            raise self._died(f"converter {module!r}")
        try:
            answer = contract.decode_message(message)
            status, left, dirty = answer["status"], answer["left"], answer["dirty"]
            if (
                not isinstance(status, int)
                or not isinstance(left, list)
                or not (dirty is None or isinstance(dirty, str))
            ):
                raise TypeError("wrong types")
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(f"converter zygote answered something else than a result: {exc}") from None
        if left:
            detail = _printable("; ".join(str(x)[:120] for x in left[:5]))
            raise SandboxError(
                f"converter {module!r} left {len(left)} process(es) running in the sandbox ({detail}): "
                "the sandbox was killed"
            )
        if dirty:
            dirty = _printable(dirty)
            raise SandboxError(
                f"converter {module!r} left the sandbox unclean ({dirty[:200]}): the sandbox was killed"
            )
        return {"status": status}

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _ready(self, module: str, limits: Limits, deadline: float) -> socket.socket:
        if self.process is not None and self._ctl is not None:
            if self.process.alive:
                return self._ctl
            log.warning("converter zygote (pid %d) is gone; starting a new one", self.process.pid)
            self.stop(kill=True)
        return self._start(module, limits, deadline)

    def _start(self, module: str, limits: Limits, deadline: float) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        resources = contextlib.ExitStack()
        try:
            launch = resources.enter_context(self._launch(self.limits))
            try:
                process = ResidentProcess(
                    "converter zygote",
                    launch,
                    self.limits,
                    signal_offset=self.signal_offset,
                    control=theirs.fileno(),
                )
            finally:
                theirs.close()
        except BaseException:
            ours.close()
            resources.close()
            raise
        self.process, self._ctl, self._resources = process, ours, resources
        self.documents = 0
        self.starts += 1
        started = time.monotonic()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxTimeout(
                        f"converter {module!r} ran past {limits.timeout_s:g} s (the converter zygote "
                        "was still starting) and was killed with its process group"
                    )
                readable, _, _ = select.select([ours], [], [], remaining)
                if readable:
                    break
            message = ours.recv(contract.MAX_MESSAGE_BYTES)
            if not message:
                raise self._died("the converter zygote's start")
            if not contract.decode_message(message).get("ready"):
                raise SandboxError("the converter zygote did not announce itself")
        except BaseException:
            self.stop(kill=True)
            raise
        log.debug("converter zygote started (pid %d) in %.2f s", process.pid, time.monotonic() - started)
        return ours

    def _died(self, what: str) -> SandboxError:
        process = self.process
        tail = process.stderr_tail().strip().splitlines() if process is not None else []
        if process is not None:
            process.kill()
        code = None if process is None else process.proc.returncode
        status = "did not exit" if code is None else describe_status(code, self.signal_offset)
        detail = tail[-1][:300] if tail else "(nothing on stderr)"
        return SandboxError(f"{what}: the converter zygote ended ({status}): {detail}")

    def stop(self, *, kill: bool = False) -> None:
        """End the zygote (socket at EOF: it exits) and its sandbox; ``kill``: at once, whole group."""
        process, ctl, resources = self.process, self._ctl, self._resources
        self.process = self._ctl = self._resources = None
        if ctl is not None:
            ctl.close()
        if process is not None:
            if kill:
                process.kill()
            else:
                process.close(_ZYGOTE_STOP_GRACE_S)
        if resources is not None:
            resources.close()

    def abandon(self) -> None:
        """In a forked child: the zygote belongs to the parent; drop our copies of its descriptors."""
        if self.process is not None:
            self.process.abandon()
        if self._ctl is not None:
            self._ctl.close()
        if self._resources is not None:
            # Kept, never finalized here: closing it (or collecting the suspended context manager)
            # would remove the parent's zygote directory from this child.
            _abandoned.append(self._resources)
        self.process = self._ctl = self._resources = None


def _printable(text: str) -> str:
    """Command lines and file names a document chose, made safe for one line of a report or log."""
    return "".join(c if c.isprintable() else "?" for c in text)


_zygotes: weakref.WeakSet[Zygote] = weakref.WeakSet()
_abandoned: list[contextlib.ExitStack] = []


def stop_zygotes() -> None:
    """Stop every zygote this process started (atexit, and tests)."""
    for zygote in list(_zygotes):
        zygote.stop()


def _forget_zygotes_in_child() -> None:
    for zygote in list(_zygotes):
        zygote.abandon()


atexit.register(stop_zygotes)
os.register_at_fork(after_in_child=_forget_zygotes_in_child)
