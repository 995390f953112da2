"""Running the converter child process, shared by both providers; and the unsandboxed provider.

:class:`ChildProcessSandbox` does everything that is the same with and without bubblewrap: it checks the
converter name, frames the request (see :mod:`detox.sandbox.inside.child`), starts the command in a new
session (its own process group) with resource limits applied between fork and exec, feeds stdin and
drains stdout/stderr in one ``select`` loop (no deadlock whatever the sizes), stops reading and kills at
``max_output_bytes``, kills the whole process group at the wall-clock deadline, and maps every failure
to :class:`~detox.errors.SandboxError` / :class:`~detox.errors.SandboxTimeout` (the pieces are in
:mod:`detox.sandbox.spawn`). The process group is killed *before* the child is reaped, so its id cannot
have been reused by then. With ``resident``, runs go to a :class:`~detox.sandbox.zygote.Zygote` instead.

:class:`SubprocessSandbox` runs the same child with no isolation besides those limits and a private
working directory: for development only, and it refuses to exist unless explicitly allowed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
import weakref
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from detox.errors import SandboxError
from detox.sandbox import contract
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.spawn import (
    Launch,
    child_env,
    child_result,
    encode_header,
    grow_pipe,
    has_exited,
    kill_group,
    preexec_rlimits,
    pump,
    python_executable,
    rlimits_for,
)
from detox.sandbox.zygote import Zygote, zygote_command, zygote_limits


def child_command(python: str, module: str) -> list[str]:
    return [python, "-I", "-B", "-m", contract.CHILD_MODULE, module]


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
        grow_pipe(proc.stdin)
        grow_pipe(proc.stdout)
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
    """A provider that runs :mod:`detox.sandbox.inside.child` as a process; subclasses say how it is launched.

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
        if not isinstance(module, str) or not contract.valid_converter_name(module):
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
        # No PID namespace and the host's /tmp and /dev/shm: the zygote empties only its own directory.
        with tempfile.TemporaryDirectory(prefix="detox-zygote-", ignore_cleanup_errors=True) as workdir:
            yield Launch(
                argv=zygote_command(python_executable(), [workdir]),
                env=child_env(workdir),
                cwd=workdir,
            )
