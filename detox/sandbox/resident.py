"""A resident sandboxed process: started once, then asked one framed request after another.

The one-shot converters (:mod:`detox.sandbox.process`) pay a process start per file; a program that
takes seconds to start (LibreOffice: ~1.6 s) is kept running instead. :class:`ResidentProcess` starts
a command the way :func:`~detox.sandbox.process.run_child` does — in its own session and process group,
rlimits applied between fork and exec, under bubblewrap when the provider gives that launch — and talks
to it with the frames of :mod:`detox.sandbox.office_host` over its stdin and stdout.

Failure handling is all-or-nothing, because a process that missed a deadline or broke the protocol
cannot be trusted with the next document: any timeout, protocol error, oversized reply, early exit or
exception while a request is in flight (the runner's own SIGALRM deadline included) kills the whole
process group — bwrap, its PID 1 and with it every process of the sandbox — and the caller gets
:class:`~detox.errors.SandboxTimeout` or :class:`~detox.errors.SandboxError`. Whoever owns the instance
starts a fresh one for the next request.

stderr is drained by a daemon thread into a bounded tail (an idle program that logs must never block
on a full pipe); the tail goes into error messages and the debug log.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import fcntl
import json
import logging
import os
import select
import selectors
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO, Any

from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox.base import Limits
from detox.sandbox.office_host import ProtocolError, decode_header, encode_frame, header_length
from detox.sandbox.process import (
    Launch,
    child_result,
    describe_status,
    has_exited,
    kill_group,
    preexec_rlimits,
    pump,
    rlimits_for,
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_STDERR_KEEP = 16 * 1024
_PREFIX_BYTES = 4


class ResidentProcess:
    """One long-lived process behind pipes; one request at a time (the owner serializes)."""

    def __init__(
        self,
        name: str,
        launch: Launch,
        limits: Limits,
        *,
        signal_offset: int | None = None,
        control: int | None = None,
    ) -> None:
        """``control``: a socket to be the process's stdin instead of the framed pipes (the zygote);
        its stdout then goes to /dev/null and :meth:`exchange` is not used."""
        self.name = name
        self.limits = limits
        self.signal_offset = signal_offset
        self._stderr: collections.deque[bytes] = collections.deque()
        self._stderr_size = 0
        self._dead = False
        try:
            self.proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE if control is None else control,
                stdout=subprocess.PIPE if control is None else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=launch.env,
                cwd=launch.cwd,
                pass_fds=launch.pass_fds,
                start_new_session=True,  # its own process group: one killpg takes everything down
                preexec_fn=preexec_rlimits(rlimits_for(limits)),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"{name}: could not start {launch.argv[0]}: {exc}") from exc
        assert self.proc.stderr is not None
        # None with a control socket: no framed pipes then.
        self._stdin: IO[bytes] | None = self.proc.stdin
        self._stdout: IO[bytes] | None = self.proc.stdout
        for stream in (self._stdin, self._stdout):
            if stream is not None:
                os.set_blocking(stream.fileno(), False)
        self._drain = threading.Thread(
            target=self._drain_stderr, args=(self.proc.stderr,), name=f"{name}-stderr", daemon=True
        )
        self._drain.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        # has_exited does not reap: the process group id stays ours until kill() has used it.
        return not self._dead and not has_exited(self.proc.pid)

    def _drain_stderr(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: os.read(fd, _CHUNK), b""):
                self._stderr.append(chunk)
                self._stderr_size += len(chunk)
                while self._stderr_size > 2 * _STDERR_KEEP and len(self._stderr) > 1:
                    self._stderr_size -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        tail = b"".join(list(self._stderr))[-_STDERR_KEEP:]
        return tail.decode("utf-8", "replace")

    # -- requests -----------------------------------------------------------------------------

    def wait_ready(self, timeout_s: float) -> dict[str, Any]:
        """The first frame the process writes (its "ready" announcement), within ``timeout_s``."""
        header, _ = self.exchange(b"", timeout_s, max_payload=0, what="start-up")
        return header

    def request(
        self, header: dict[str, Any], payload: bytes, timeout_s: float, *, max_payload: int
    ) -> tuple[dict[str, Any], bytes]:
        """Send one frame and read one back within ``timeout_s``; the instance dies on any failure."""
        return self.exchange(
            encode_frame(header, payload), timeout_s, max_payload=max_payload, what="request"
        )

    def exchange(
        self, outgoing: bytes, timeout_s: float, *, max_payload: int, what: str
    ) -> tuple[dict[str, Any], bytes]:
        if not self.alive:
            raise SandboxError(f"{self.name} is not running")
        try:
            return self._exchange(outgoing, time.monotonic() + timeout_s, timeout_s, max_payload, what)
        except ProtocolError as exc:
            self.kill()
            raise SandboxError(f"{self.name} broke the protocol during the {what}: {exc}") from None
        except BaseException:
            # Whatever interrupted the exchange (our deadline, the runner's SIGALRM, a bad frame), the
            # process may be mid-document: it is killed, never reused.
            self.kill()
            raise

    def _exchange(
        self, outgoing: bytes, deadline: float, timeout_s: float, max_payload: int, what: str
    ) -> tuple[dict[str, Any], bytes]:
        assert self._stdin is not None and self._stdout is not None, "no framed pipes (a control socket)"
        stdin, stdout = self._stdin, self._stdout
        pending = memoryview(outgoing)
        reply = _Reply(max_payload, self.name)
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if pending:
                selector.register(stdin, selectors.EVENT_WRITE)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxTimeout(
                        f"{self.name}: no answer to the {what} within {timeout_s:g} s; "
                        "killed with its process group"
                    )
                for key, _ in selector.select(remaining):
                    if key.fileobj is stdin:
                        try:
                            while pending:
                                pending = pending[os.write(stdin.fileno(), pending[:_CHUNK]) :]
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            raise self._died(what) from None
                        selector.unregister(stdin)
                        continue
                    chunk = os.read(stdout.fileno(), _CHUNK)
                    if not chunk:
                        raise self._died(what)
                    done = reply.feed(chunk)
                    if done is not None:
                        if pending:
                            raise ProtocolError("an answer before the whole request was read")
                        return done

    def _died(self, what: str) -> SandboxError:
        """The process closed its end: kill what is left, reap it and say how it ended."""
        self.kill()
        code = self.proc.returncode
        status = "did not exit" if code is None else describe_status(code, self.signal_offset)
        tail = self.stderr_tail().strip().splitlines()
        detail = tail[-1][:300] if tail else "(nothing on stderr)"
        log.debug("%s stderr:\n%s", self.name, self.stderr_tail())
        return SandboxError(f"{self.name} ended during the {what} ({status}): {detail}")

    # -- the end ------------------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader (idempotent)."""
        if self._dead:
            return
        self._dead = True
        kill_group(self.proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._close_pipes()

    def close(self, grace_s: float = 5.0) -> None:
        """Ask politely (stdin at EOF: the host stops LibreOffice and exits), then kill what is left."""
        if self._dead:
            return
        with contextlib.suppress(OSError):
            if self._stdin is not None:
                self._stdin.close()
        deadline = time.monotonic() + grace_s
        while not has_exited(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.kill()  # the group is killed before the leader is reaped: its id cannot be reused yet

    def abandon(self) -> None:
        """Forget the process without touching it (a forked child: it belongs to the parent)."""
        self._dead = True
        for stream in (self._stdin, self._stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _close_pipes(self) -> None:
        for stream in (self._stdin, self._stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._drain.join(timeout=1)
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                self.proc.stderr.close()


class _Reply:
    """Assembles one frame from the chunks read: prefix, header, then exactly ``size`` payload bytes."""

    def __init__(self, max_payload: int, name: str) -> None:
        self.max_payload = max_payload
        self.name = name
        self.buf = bytearray()
        self.header: dict[str, Any] | None = None
        self.header_end = 0  # prefix + header length, once the prefix is in

    def feed(self, chunk: bytes) -> tuple[dict[str, Any], bytes] | None:
        self.buf += chunk
        if not self.header_end and len(self.buf) >= _PREFIX_BYTES:
            self.header_end = _PREFIX_BYTES + header_length(bytes(self.buf[:_PREFIX_BYTES]))
        if self.header is None and self.header_end and len(self.buf) >= self.header_end:
            self.header = decode_header(bytes(self.buf[_PREFIX_BYTES : self.header_end]))
            if self.header["size"] > self.max_payload:
                raise SandboxError(
                    f"{self.name} announced {self.header['size']} bytes, more than the cap of "
                    f"{self.max_payload}"
                )
            del self.buf[: self.header_end]
        if self.header is None:
            return None
        size: int = self.header["size"]
        if len(self.buf) > size:
            raise ProtocolError("more output than one frame")
        if len(self.buf) < size:
            return None
        return self.header, bytes(self.buf)


# -- the converter zygote ---------------------------------------------------------------------------

ZYGOTE_MODULE = "detox.sandbox.zygote"
# A zygote serves this many documents, then the next run starts a fresh one: a bound on how long one
# address-space layout (forked children share the zygote's ASLR and stack canary) faces documents.
ZYGOTE_DOCUMENTS = 200
# RLIMIT_CPU counts per process and the zygote's own work is small (it never converts anything), but
# its hard limit is the ceiling of every child's: it gets this many times sandbox.cpu_s.
ZYGOTE_CPU_FACTOR = 10
ZYGOTE_OPEN_FILES = 1024
_MESSAGE_BYTES = 64 * 1024
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
    """A resident sandbox that forks one fresh converter child per document (:mod:`detox.sandbox.zygote`).

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
                socket.send_fds(ctl, [json.dumps(request).encode("utf-8")], child_ends)
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
        message = ctl.recv(_MESSAGE_BYTES)
        if not message:
            raise self._died(f"converter {module!r}")
        try:
            answer = json.loads(message)
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
            message = ours.recv(_MESSAGE_BYTES)
            if not message:
                raise self._died("the converter zygote's start")
            if not json.loads(message).get("ready"):
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
