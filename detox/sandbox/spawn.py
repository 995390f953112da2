"""Starting and watching a sandboxed process: the pieces every provider and resident process shares.

A process that runs hostile bytes is started the same way whatever it is (a one-shot converter child,
the resident zygote, the LibreOffice host): from a :class:`Launch` (argv, the whole environment, working
directory, descriptors to pass) built by the provider, in a new session (its own process group), with
resource limits (:func:`rlimits_for`) applied between fork and exec (:func:`preexec_rlimits`). It is
ended by killing its whole process group (:func:`kill_group`) *before* it is reaped (:func:`has_exited`
does not reap), so the group id cannot have been reused by then. :func:`pump` feeds a run's stdin and
drains its stdout and stderr in one ``select`` loop; :func:`child_result` turns how a converter run
ended into its output or the :class:`~detox.errors.SandboxError` that says why.

This module is the bottom of the host side of :mod:`detox.sandbox`: it imports nothing of the
providers, so :mod:`~detox.sandbox.process`, :mod:`~detox.sandbox.resident`,
:mod:`~detox.sandbox.zygote` and :mod:`~detox.sandbox.bwrap` import it and not each other in a circle.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import resource
import selectors
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import IO, Any

from detox.errors import SandboxError, SandboxTimeout
from detox.sandbox import contract
from detox.sandbox.base import Limits

# The name these log lines carried before this module was split out of detox.sandbox.process.
log = logging.getLogger("detox.sandbox.process")

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
    env = {
        "PATH": SAFE_PATH,
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        # The child runs with -I, which ignores PYTHON* variables; this one is for Python processes a
        # converter may start itself. PYTHONHASHSEED is deliberately not pinned (see the report/README).
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    roots = plugin_converter_roots()
    if roots:
        env[contract.CONVERTER_PATH_ENV] = os.pathsep.join(roots)
    return env


def plugin_converter_roots() -> list[str]:
    """The import roots (sys.path entries holding the distribution) of plugin converters registered in
    the ``detox.converters`` entry points and installed outside this interpreter's own paths (e.g. with
    ``pip install --target`` on PYTHONPATH), which the child, run with ``-I``, would not see."""
    own = {os.path.realpath(p) for p in sysconfig.get_paths().values()}
    with contextlib.suppress(AttributeError):  # old virtualenv's site.py lacks it
        own.update(os.path.realpath(p) for p in site.getsitepackages())
    roots: list[str] = []
    for entry in entry_points(group=contract.ENTRY_POINT_GROUP):
        if entry.name in contract.BUILTIN_CONVERTERS or entry.dist is None:
            continue
        root = os.path.abspath(str(entry.dist.locate_file("")))
        if os.path.isdir(root) and os.path.realpath(root) not in own and root not in roots:
            roots.append(root)
    return roots


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
    """The request framing that goes before the input (:func:`detox.sandbox.inside.wire.encode_request`)."""
    try:
        return contract.encode_request(args)
    except ValueError as exc:
        raise SandboxError(f"converter {module!r}: {exc}") from exc


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


def grow_pipe(stream: IO[bytes] | None) -> None:
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
        if line.startswith(contract.ERROR_PREFIX):
            return line[len(contract.ERROR_PREFIX) :]
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
