"""Running the converter child process, shared by both providers; and the unsandboxed provider.

:class:`ChildProcessSandbox` does everything that is the same with and without bubblewrap: it checks the
module name, frames the request (see :mod:`detox.sandbox.child`), starts the command in a new session
(its own process group) with resource limits applied between fork and exec, feeds stdin and drains
stdout/stderr in one ``select`` loop (no deadlock whatever the sizes), stops reading and kills at
``max_output_bytes``, kills the whole process group at the wall-clock deadline, and maps every failure
to :class:`~detox.errors.SandboxError` / :class:`~detox.errors.SandboxTimeout`. The process group is
killed *before* the child is reaped, so its id cannot have been reused by then.

:class:`SubprocessSandbox` runs the same child with no isolation besides those limits and a private
working directory: for development only, and it refuses to exist unless explicitly allowed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.child import ERROR_PREFIX, HEADER_BYTES, MAX_ARGS_BYTES, valid_module_name

if TYPE_CHECKING:
    from detox.sandbox.resident import Zygote

log = logging.getLogger(__name__)

CHILD_MODULE = "detox.sandbox.child"
# PATH inside the sandbox (and for the unsandboxed child): system directories only.
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_CHUNK = 1024 * 1024
_PIPE_SIZE = 1024 * 1024  # asked of F_SETPIPE_SZ; the kernel caps it at /proc/sys/fs/pipe-max-size
_STDERR_KEEP = 16 * 1024  # the tail of stderr kept for the error message and the debug log
_POLL_S = 0.05  # how often exit is polled when pidfd_open is unavailable (Linux < 5.3)


@dataclass(frozen=True, slots=True)
class Launch:
    """How a provider starts the child for one run."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...] = field(default=())


def child_env(home: str) -> dict[str, str]:
    """The whole environment the child gets: nothing is inherited from the server."""
    return {
        "PATH": SAFE_PATH,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        # The child runs with -I, which ignores PYTHON* variables; this one is for Python processes a
        # converter may start itself. PYTHONHASHSEED is deliberately not pinned (see the report/README).
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def child_command(python: str, module: str) -> list[str]:
    return [python, "-I", "-B", "-m", CHILD_MODULE, module]


def python_executable() -> str:
    if not sys.executable:
        raise SandboxError("sys.executable is empty: cannot find the Python interpreter to run converters")
    return sys.executable


# --- resource limits ---------------------------------------------------------------------------


def _tasks_of_uid(uid: int) -> int:
    """Processes plus threads whose owner is ``uid`` (what RLIMIT_NPROC counts), from /proc."""
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                if entry.stat().st_uid == uid:
                    count += max(os.stat(f"{entry.path}/task").st_nlink - 2, 1)
            except OSError:
                continue
    return count


def rlimits_for(limits: Limits) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for one run, computed in the parent (nothing heavy runs after fork).

    Hard limits equal soft limits, so the child cannot raise them back, except RLIMIT_CPU: at the soft
    limit the kernel sends SIGXCPU, one second later SIGKILL. Values above the server's own hard limit
    are clamped to it (an unprivileged process cannot raise a hard limit).

    RLIMIT_NPROC counts every task of the *real* uid, and the kernel does not apply it to uid 0 at all
    (nor to a user namespace whose ids map to uid 0, which is what bubblewrap does when started by root).
    So for root it is not set (cgroups must do it: ``docker run --pids-limit``); otherwise it is set to
    the uid's current task count plus ``max_processes``, since a lower value would stop the child (and
    bwrap itself) from starting at all.
    """
    wanted = [
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.max_file_bytes),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if os.getuid() != 0:
        wanted.append((resource.RLIMIT_NPROC, _tasks_of_uid(os.getuid()) + limits.max_processes))
    result: list[tuple[int, int, int]] = []
    for res, value in [*wanted, (resource.RLIMIT_CPU, limits.cpu_s)]:
        _, current_hard = resource.getrlimit(res)
        soft = value if current_hard == resource.RLIM_INFINITY else min(value, current_hard)
        hard = soft
        if res == resource.RLIMIT_CPU:
            hard = soft + 1 if current_hard == resource.RLIM_INFINITY else min(soft + 1, current_hard)
        result.append((res, soft, hard))
    return result


def preexec_rlimits(rlimits: list[tuple[int, int, int]]) -> Callable[[], None]:
    setrlimit = resource.setrlimit

    def apply() -> None:  # runs between fork and exec: no imports, no allocation worth the name
        for res, soft, hard in rlimits:
            setrlimit(res, (soft, hard))

    return apply


# --- one run -------------------------------------------------------------------------------------


def encode_header(module: str, args: Mapping[str, Any]) -> bytes:
    try:
        body = json.dumps(dict(args), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SandboxError(f"converter {module!r}: args are not JSON-serializable: {exc}") from exc
    if len(body) > MAX_ARGS_BYTES:
        raise SandboxError(f"converter {module!r}: args are {len(body)} bytes, more than {MAX_ARGS_BYTES}")
    return len(body).to_bytes(HEADER_BYTES, "big") + body


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (its pgid is its pid: it was started with setsid)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # the group does not exist (yet): setsid has not run in the child


def has_exited(pid: int) -> bool:
    """Exited (a zombie), without reaping it: the pid and the process group id stay reserved."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _grow_pipe(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def describe_status(returncode: int, signal_offset: int | None) -> str:
    """A readable exit status; ``signal_offset`` (128 for bwrap) maps exit codes to signals."""
    signum = -returncode if returncode < 0 else 0
    if signal_offset is not None and signal_offset < returncode < signal_offset + 65:
        signum = returncode - signal_offset
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = {
            "SIGXCPU": " (CPU time limit)",
            "SIGKILL": " (CPU hard limit, or killed by the kernel)",
            "SIGSEGV": " (crashed)",
        }
        return f"killed by {name}{hint.get(name, '')}"
    return f"exit status {returncode}"


def _error_detail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX) :]
    return lines[-1][:500] if lines else "(no message on stderr)"


def pump(
    module: str,
    stdin: IO[bytes],
    stdout: IO[bytes],
    stderr: IO[bytes],
    payload: list[bytes],
    limits: Limits,
    deadline: float,
    *,
    exit_fd: int | None,
    ended: Callable[[bool], bool],
) -> tuple[bytes, bytes]:
    """Feed ``payload`` to one run's stdin and drain its stdout and stderr in one ``select`` loop.

    Returns (stdout, the tail of stderr) once the run has ended and both are at EOF. ``ended(readable)``
    says whether the run has ended; it is asked after ``exit_fd`` (a pidfd, the zygote's socket)
    became readable, or every few milliseconds when there is no such descriptor, and may raise. The
    streams are closed as they finish; the caller kills what it started when this raises (deadline:
    SandboxTimeout; output beyond ``limits.max_output_bytes``: SandboxError).
    """
    pending = [memoryview(part) for part in payload]
    out: list[bytes] = []
    out_size = 0
    err = bytearray()
    finished = False
    with selectors.DefaultSelector() as selector:
        for stream in (stdin, stdout, stderr):
            os.set_blocking(stream.fileno(), False)
        selector.register(stdin, selectors.EVENT_WRITE)
        selector.register(stdout, selectors.EVENT_READ)
        selector.register(stderr, selectors.EVENT_READ)
        if exit_fd is not None:
            selector.register(exit_fd, selectors.EVENT_READ)
        while True:
            if not finished and exit_fd is None and ended(False):
                finished = True
            if finished and stdout.closed and stderr.closed:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxTimeout(
                    f"converter {module!r} ran past {limits.timeout_s:g} s and was killed "
                    "with its process group"
                )
            wait = remaining if exit_fd is not None or finished else min(remaining, _POLL_S)
            for key, _ in selector.select(wait):
                obj = key.fileobj
                if isinstance(obj, int):  # exit_fd
                    if ended(True):
                        selector.unregister(obj)
                        finished = True
                elif obj is stdin:
                    try:
                        while pending:
                            written = os.write(stdin.fileno(), pending[0][:_CHUNK])
                            pending[0] = pending[0][written:]
                            if not pending[0]:
                                pending.pop(0)
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending.clear()  # the child stopped reading; its exit status says why
                    selector.unregister(stdin)
                    stdin.close()
                elif obj is stdout:
                    chunk = os.read(stdout.fileno(), _CHUNK)
                    if not chunk:
                        selector.unregister(stdout)
                        stdout.close()
                        continue
                    out_size += len(chunk)
                    if out_size > limits.max_output_bytes:
                        raise SandboxError(
                            f"converter {module!r} wrote more than {limits.max_output_bytes} bytes "
                            "of output and was killed"
                        )
                    out.append(chunk)
                elif obj is stderr:
                    chunk = os.read(stderr.fileno(), _CHUNK)
                    if not chunk:
                        selector.unregister(stderr)
                        stderr.close()
                        continue
                    err += chunk
                    if len(err) > 2 * _STDERR_KEEP:
                        del err[:-_STDERR_KEEP]
    return b"".join(out), bytes(err[-_STDERR_KEEP:])


def child_result(
    module: str, returncode: int, stdout: bytes, stderr_tail: bytes, signal_offset: int | None
) -> bytes:
    """The output of a run that ended with ``returncode``, or the SandboxError saying why it failed."""
    if returncode != 0:
        log.debug("converter %s stderr:\n%s", module, stderr_tail.decode("utf-8", "replace"))
        status = describe_status(returncode, signal_offset)
        raise SandboxError(f"converter {module!r} failed ({status}): {_error_detail(stderr_tail)}")
    if stderr_tail:
        log.debug("converter %s stderr:\n%s", module, stderr_tail.decode("utf-8", "replace"))
    return stdout


def run_child(
    launch: Launch,
    module: str,
    header: bytes,
    data: bytes,
    limits: Limits,
    *,
    signal_offset: int | None = None,
) -> bytes:
    """Start ``launch``, send ``header + data``, return stdout; kill the process group on any failure."""
    rlimits = rlimits_for(limits)
    deadline = time.monotonic() + limits.timeout_s
    try:
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=launch.env,
            cwd=launch.cwd,
            pass_fds=launch.pass_fds,
            start_new_session=True,
            preexec_fn=preexec_rlimits(rlimits),  # setrlimit only, see preexec_rlimits
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"converter {module!r}: could not start {launch.argv[0]}: {exc}") from exc

    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    reaped = False
    pidfd: int | None = None
    group_killed = False

    def ended(readable: bool) -> bool:
        nonlocal group_killed
        if not readable and not has_exited(proc.pid):
            return False
        # The child is gone: kill anything it left running in its group (a stray grandchild
        # holding the pipes open would otherwise keep us waiting until the deadline).
        if not group_killed:
            kill_group(proc)
            group_killed = True
        return True

    try:
        with contextlib.suppress(AttributeError, OSError):
            pidfd = os.pidfd_open(proc.pid)
        _grow_pipe(proc.stdin)
        _grow_pipe(proc.stdout)
        out, stderr_tail = pump(
            module,
            proc.stdin,
            proc.stdout,
            proc.stderr,
            [header, data],
            limits,
            deadline,
            exit_fd=pidfd,
            ended=ended,
        )
        returncode = proc.wait()
        reaped = True
    finally:
        if not reaped:
            kill_group(proc)
            proc.wait()
        if pidfd is not None:
            os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    return child_result(module, returncode, out, stderr_tail, signal_offset)


# --- the providers' common base ------------------------------------------------------------------


class ChildProcessSandbox(Sandbox):
    """A provider that runs :mod:`detox.sandbox.child` as a process; subclasses say how it is launched.

    ``default_limits`` carries the operator's configuration (``sandbox.memory_mb`` / ``sandbox.cpu_s``):
    filters start from it (``dataclasses.replace(sandbox.default_limits, timeout_s=...)``) and ``run``
    never grants more memory or CPU time than it, whatever ``limits`` asks.
    """

    # How the launcher reports "killed by signal N" as an exit code (bwrap: 128 + N), if it does.
    signal_exit_offset: int | None = None

    def __init__(self, *, default_limits: Limits | None = None, resident: bool = False) -> None:
        """``resident``: runs go to a zygote kept in one sandbox (see :mod:`detox.sandbox.zygote`)."""
        self.default_limits = default_limits or Limits()
        self.resident = resident
        self._zygote: Zygote | None = None
        self._zygote_lock = threading.Lock()

    def effective_limits(self, limits: Limits) -> Limits:
        cap = self.default_limits
        return replace(
            limits,
            memory_bytes=min(limits.memory_bytes, cap.memory_bytes),
            cpu_s=min(limits.cpu_s, cap.cpu_s),
        )

    def run(self, module: str, data: bytes, args: Mapping[str, Any], limits: Limits) -> bytes:
        if not isinstance(module, str) or not valid_module_name(module):
            raise SandboxError(f"refused converter name {module!r}: must match [a-z][a-z_]* (64 chars max)")
        header = encode_header(module, args)
        limits = self.effective_limits(limits)
        # The zygote is started and used from the main thread only: bwrap's --die-with-parent (and the
        # zygote's own death signal) fire when the *thread* that started it ends. Runs from other
        # threads, or while the zygote is busy, take the one-shot path, which isolates just as well.
        if (
            self.resident
            and threading.current_thread() is threading.main_thread()
            and self._zygote_lock.acquire(blocking=False)
        ):
            try:
                return self.zygote().run(module, header, data, limits)
            finally:
                self._zygote_lock.release()
        with self.launch(module, limits) as launch:
            return run_child(launch, module, header, data, limits, signal_offset=self.signal_exit_offset)

    def zygote(self) -> Zygote:
        """This sandbox's resident zygote (created on first use, started on its first run)."""
        if self._zygote is None:
            from detox.sandbox.resident import Zygote, zygote_limits

            # The zygote holds this sandbox only weakly, so a sandbox nobody uses any more (a test's,
            # a reloaded pipeline's) is collected, and its zygote killed with it.
            launcher = weakref.WeakMethod(self.zygote_launch)

            def launch(limits: Limits) -> contextlib.AbstractContextManager[Launch]:
                method = launcher()
                if method is None:
                    raise SandboxError("the sandbox of this converter zygote is gone")
                return method(limits)

            zygote = Zygote(launch, zygote_limits(self.default_limits), signal_offset=self.signal_exit_offset)
            weakref.finalize(self, zygote.stop, kill=True)
            self._zygote = zygote
        return self._zygote

    def close(self) -> None:
        """Stop the resident zygote, if any (the next resident run starts a new one)."""
        if self._zygote is not None:
            self._zygote.stop()

    @abstractmethod
    def launch(self, module: str, limits: Limits) -> contextlib.AbstractContextManager[Launch]:
        """The command for one run; resources it needs (temp dirs, fds) live as long as the context."""

    @abstractmethod
    def zygote_launch(self, limits: Limits) -> contextlib.AbstractContextManager[Launch]:
        """The zygote's command, started like a one-shot child; the context lives as long as it."""


class SubprocessSandbox(ChildProcessSandbox):
    """The child as a plain process: rlimits, timeout and output cap, but NO isolation.

    The converter can read every file the server can, write wherever the server can and use the
    network. Development only: it refuses to be created unless ``allowed`` is true
    (``sandbox.allow_unsandboxed = true``).
    """

    name = "subprocess"

    def __init__(
        self, *, allowed: bool = False, default_limits: Limits | None = None, resident: bool = False
    ) -> None:
        if not allowed:
            raise SandboxError(
                "the subprocess sandbox runs converters of hostile files unsandboxed (no isolation "
                "from the server's files or network); for development only: set "
                'sandbox.allow_unsandboxed = true, or use sandbox.provider = "bwrap"'
            )
        super().__init__(default_limits=default_limits, resident=resident)

    @contextlib.contextmanager
    def launch(self, module: str, limits: Limits) -> Iterator[Launch]:
        with tempfile.TemporaryDirectory(prefix="detox-sandbox-", ignore_cleanup_errors=True) as workdir:
            yield Launch(
                argv=child_command(python_executable(), module),
                env=child_env(workdir),
                cwd=workdir,
            )

    @contextlib.contextmanager
    def zygote_launch(self, limits: Limits) -> Iterator[Launch]:
        from detox.sandbox.resident import zygote_command

        # No PID namespace and the host's /tmp and /dev/shm: the zygote empties only its own directory.
        with tempfile.TemporaryDirectory(prefix="detox-zygote-", ignore_cleanup_errors=True) as workdir:
            yield Launch(
                argv=zygote_command(python_executable(), [workdir]),
                env=child_env(workdir),
                cwd=workdir,
            )
