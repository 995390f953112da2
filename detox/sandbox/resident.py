"""A resident sandboxed process: started once, then asked one framed request after another.

The one-shot converters (:mod:`detox.sandbox.process`) pay a process start per file; a program that
takes seconds to start (LibreOffice: ~1.6 s) is kept running instead. :class:`ResidentProcess` starts
a command the way :func:`~detox.sandbox.process.run_child` does — in its own session and process group,
rlimits applied between fork and exec, under bubblewrap when the provider gives that launch — and talks
to it with the frames of :mod:`detox.sandbox.inside.wire` over its stdin and stdout.

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

import collections
import contextlib
import logging
import os
import selectors
import subprocess
import threading
import time
from typing import IO, Any

from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox import contract
from detox.sandbox.base import Limits
from detox.sandbox.contract import ProtocolError
from detox.sandbox.spawn import Launch, describe_status, has_exited, kill_group, preexec_rlimits, rlimits_for

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_STDERR_KEEP = 16 * 1024
_PREFIX_BYTES = contract.FRAME_PREFIX_BYTES


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
            contract.encode_frame(header, payload), timeout_s, max_payload=max_payload, what="request"
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
            self.header_end = _PREFIX_BYTES + contract.header_length(bytes(self.buf[:_PREFIX_BYTES]))
        if self.header is None and self.header_end and len(self.buf) >= self.header_end:
            self.header = contract.decode_header(bytes(self.buf[_PREFIX_BYTES : self.header_end]))
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
