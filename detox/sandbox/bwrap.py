"""The production provider: the converter child under bubblewrap.

What the child sees (everything else of the host does not exist for it):

* read-only: ``/usr`` (with ``/bin``, ``/sbin``, ``/lib*`` as the same symlinks or binds as on the host),
  a few ``/etc`` entries that libraries read (:data:`ETC_PATHS`: the dynamic linker cache, fontconfig,
  Debian alternatives — the Japanese font aliases live there —, LibreOffice's configuration, libmagic,
  the local time), fontconfig's cache, and the Python installation this server runs on: the prefixes
  (``sys.prefix``, ``sys.base_prefix``, ``sys.exec_prefix``...), site-packages and the detox package
  directory, each bound at its own path so the interpreter and an editable install work unchanged;
* a synthesized ``/etc/passwd`` and ``/etc/group`` naming only ``nobody`` (65534) and ``root``;
* a fresh ``/proc`` (its own PID namespace) and a minimal ``/dev`` (null, zero, random, urandom, tty...);
* writable: only a private tmpfs on ``/tmp`` (the working directory, ``HOME`` and ``TMPDIR``; capped at
  :func:`tmpfs_bytes`) and one on ``/dev/shm`` (:data:`SHM_BYTES`); the root bwrap builds and ``/dev``
  are remounted read-only;
* its own network namespace with only a loopback interface: no route anywhere, not even to the host's
  127.0.0.1; its own IPC, UTS (hostname ``detox-sandbox``), cgroup and user namespaces;
* uid/gid 65534 (nobody) inside, no capabilities, ``no_new_privs``, no further user namespaces
  (``--disable-userns`` where bwrap supports it), a new session (no terminal to inject into).

bwrap runs with ``--die-with-parent`` and is started by :func:`detox.sandbox.process.run_child` in its
own process group: killing that group kills bwrap and its PID 1, which takes the whole PID namespace
(every process the converter started, whatever session or group it moved to) down with it.

Started by root, bwrap maps the sandbox's uid 65534 to uid 0 outside: the converter has no capabilities
and sees only the mounts above, but to the kernel it is still uid 0, so RLIMIT_NPROC does not apply (see
:func:`detox.sandbox.spawn.rlimits_for`) and a mount-namespace escape would meet root-owned files as
their owner. Running the server as an unprivileged user (bwrap then needs unprivileged user namespaces)
removes both; under Docker, ``--pids-limit`` caps processes either way.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points

import detox
from detox.errors import SandboxError
from detox.sandbox import contract
from detox.sandbox.base import Limits
from detox.sandbox.process import ChildProcessSandbox, child_command
from detox.sandbox.spawn import Launch, child_env, plugin_converter_roots, python_executable
from detox.sandbox.zygote import zygote_command

SANDBOX_UID = 65534  # nobody
SANDBOX_GID = 65534  # nogroup
SANDBOX_HOSTNAME = "detox-sandbox"
SANDBOX_HOME = "/tmp"  # noqa: S108 - the private tmpfs inside the sandbox, not the host's /tmp

# /usr is bound whole; these top-level entries are merged-/usr symlinks on current distributions
# (recreated as symlinks) or real directories on older ones (bound read-only).
TOP_LEVEL_SYSTEM = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The only /etc entries visible, read-only, when they exist on the host.
ETC_PATHS = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/fonts",
    "/etc/alternatives",
    "/etc/libreoffice",
    "/etc/magic",
    "/etc/magic.mime",
    "/etc/mime.types",
    f"/etc/python{sys.version_info.major}.{sys.version_info.minor}",  # Debian's sitecustomize
)
OTHER_SYSTEM_PATHS = ("/var/cache/fontconfig",)

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"nobody:x:{SANDBOX_UID}:{SANDBOX_GID}:nobody:{SANDBOX_HOME}:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnogroup:x:{SANDBOX_GID}:\n"

_MIN_TMPFS_BYTES = 64 * 1024 * 1024
SHM_BYTES = 64 * 1024 * 1024


def tmpfs_bytes(limits: Limits) -> int:
    """Size of the private /tmp: room for two files of the largest size allowed (input copy + output)."""
    return max(2 * limits.max_file_bytes, _MIN_TMPFS_BYTES)


@functools.lru_cache(maxsize=8)
def bwrap_features(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows, from its ``--help`` (older releases lack the newer hardening)."""
    try:
        result = subprocess.run(
            [bwrap, "--help"], capture_output=True, timeout=10, check=False, env={"PATH": "/usr/bin:/bin"}
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxError(f"bubblewrap at {bwrap} does not run: {exc}") from exc
    text = (result.stdout + result.stderr).decode("utf-8", "replace")
    wanted = ("--disable-userns", "--size", "--clearenv", "--ro-bind-data", "--die-with-parent")
    return frozenset(flag for flag in wanted if f"{flag} " in text or f"{flag}\n" in text)


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def python_paths() -> list[str]:
    """The directories the child's interpreter needs, outside the system directories bound anyway.

    Derived at run time from this very interpreter, so a pyenv build with a venv and an editable
    install, a venv in /opt/detox and Debian's /usr/bin/python3 all work: the prefixes, the stdlib and
    site-packages directories, the interpreter binary's directory and the ``detox`` package directory,
    each both as named and with symlinks resolved; and the packages of plugin converters and the import
    roots that hold their metadata (:func:`plugin_converter_paths`,
    :func:`~detox.sandbox.spawn.plugin_converter_roots`). Directories inside another one are dropped.
    """
    candidates: list[str] = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(python_executable()),
        os.path.dirname(os.path.realpath(python_executable())),
        os.path.dirname(os.path.abspath(detox.__file__)),
    ]
    paths = sysconfig.get_paths()
    candidates += [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths]
    with contextlib.suppress(AttributeError):  # old virtualenv's site.py lacks it
        candidates += site.getsitepackages()
    candidates += plugin_converter_paths() + plugin_converter_roots()
    expanded: set[str] = set()
    for path in candidates:
        if path:
            expanded.add(os.path.abspath(path))
            expanded.add(os.path.realpath(path))
    if "/" in expanded:
        raise SandboxError("the Python installation's prefix is /: refusing to bind the whole filesystem")
    system = ["/usr", *TOP_LEVEL_SYSTEM]
    kept: list[str] = []
    for path in sorted(expanded, key=lambda p: (p.count("/"), p)):
        if not os.path.isdir(path):
            continue
        if any(_is_within(path, outer) for outer in [*system, *kept]):
            continue
        kept.append(path)
    return kept


def plugin_converter_paths() -> list[str]:
    """Where the packages of plugin converters live (``detox.converters`` entry points), so that the child
    can import them when they are installed outside site-packages (an editable install).

    Found without importing anything: the top-level package's location, from the import system's
    finders. Built-in names and entry points into detox itself add nothing (detox is bound anyway).
    """
    found: list[str] = []
    for entry in entry_points(group=contract.ENTRY_POINT_GROUP):
        top = entry.value.partition(":")[0].strip().split(".", 1)[0]
        if entry.name in contract.BUILTIN_CONVERTERS or not top or top == "detox":
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue  # the child fails on it the same way, and the part is held
        if spec is None:
            continue
        if spec.submodule_search_locations:
            found += list(spec.submodule_search_locations)
        elif spec.origin and os.path.isabs(spec.origin):
            found.append(os.path.dirname(spec.origin))
    return found


def _system_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in TOP_LEVEL_SYSTEM:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in (*ETC_PATHS, *OTHER_SYSTEM_PATHS):
        args += ["--ro-bind-try", path, path]
    return args


def _env_args(env: dict[str, str]) -> list[str]:
    args = ["--clearenv"]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return args


def _data_fd(text: str) -> int:
    """A pipe's read end already holding ``text`` (small: fits the pipe buffer) for ``--ro-bind-data``."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, text.encode("utf-8"))
    except OSError:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return read_fd


class BwrapSandbox(ChildProcessSandbox):
    """Runs converters under bubblewrap: no network, read-only system, private /tmp, nobody, rlimits."""

    name = "bwrap"
    signal_exit_offset = 128  # bwrap's PID 1 exits with 128 + N when the child dies of signal N

    def __init__(
        self, *, default_limits: Limits | None = None, bwrap: str | None = None, resident: bool = False
    ) -> None:
        super().__init__(default_limits=default_limits, resident=resident)
        found = bwrap or shutil.which("bwrap")
        if found is None:
            raise SandboxError(
                "bubblewrap (bwrap) is not installed or not on PATH: converters of hostile files cannot "
                "run. Install it (Debian/Ubuntu: apt-get install bubblewrap; RHEL: dnf install "
                'bubblewrap). For development only: sandbox.provider = "subprocess" with '
                "sandbox.allow_unsandboxed = true"
            )
        self.bwrap = found
        self.features = bwrap_features(found)
        self.python = python_executable()
        self.bind_paths = python_paths()
        self.env = child_env(SANDBOX_HOME)
        self._fixed_args = self._build_fixed_args()

    def _build_fixed_args(self) -> list[str]:
        args = ["--unshare-all", "--unshare-user", "--new-session", "--cap-drop", "ALL"]
        if "--die-with-parent" in self.features:
            args.append("--die-with-parent")
        if "--disable-userns" in self.features:
            args.append("--disable-userns")
        args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--hostname", SANDBOX_HOSTNAME]
        args += _system_args()
        args += ["--proc", "/proc", "--dev", "/dev"]
        if "--size" in self.features:
            args += ["--size", str(SHM_BYTES)]
        # /dev/shm (POSIX shared memory, semaphores) gets its own small tmpfs; /dev itself is then made
        # read-only, like the root tmpfs bwrap builds (see bwrap_argv), so the only writable places
        # are /tmp and /dev/shm, both size-capped.
        args += ["--tmpfs", "/dev/shm", "--remount-ro", "/dev"]  # noqa: S108 - inside the sandbox
        return args

    def bwrap_argv(self, module: str, limits: Limits, data_fds: Iterable[tuple[int, str]] = ()) -> list[str]:
        """The full command line for one run (``data_fds``: (fd, path) pairs for ``--ro-bind-data``)."""
        return self.command_argv(child_command(self.python, module), limits, data_fds)

    def command_argv(
        self,
        command: list[str],
        limits: Limits,
        data_fds: Iterable[tuple[int, str]] = (),
        extra_ro_binds: Iterable[str] = (),
    ) -> list[str]:
        """``command`` under the same isolation as a converter run (also used by the resident sandbox).

        ``extra_ro_binds``: more host directories shown read-only at their own path (a program installed
        outside /usr, such as a LibreOffice under /opt).
        """
        args = [self.bwrap, *self._fixed_args]
        if "--size" in self.features:
            args += ["--size", str(tmpfs_bytes(limits))]
        args += ["--tmpfs", SANDBOX_HOME]
        # After the tmpfs, so a Python or detox that lives under /tmp (a CI checkout) shows through it.
        for path in (*self.bind_paths, *extra_ro_binds):
            args += ["--ro-bind", path, path]
        for fd, path in data_fds:
            args += ["--ro-bind-data", str(fd), path]
        if "--clearenv" in self.features:
            args += _env_args(self.env)
        args += ["--remount-ro", "/", "--chdir", SANDBOX_HOME, "--", *command]
        return args

    @contextlib.contextmanager
    def launch(self, module: str, limits: Limits) -> Iterator[Launch]:
        with self.launch_command(child_command(self.python, module), limits) as launch:
            yield launch

    @contextlib.contextmanager
    def zygote_launch(self, limits: Limits) -> Iterator[Launch]:
        # Its own PID namespace: any process but the zygote and bwrap's init is a document's leftover.
        command = zygote_command(self.python, ["--own-namespaces", SANDBOX_HOME, "/dev/shm"])  # noqa: S108
        with self.launch_command(command, limits) as launch:
            yield launch

    @contextlib.contextmanager
    def launch_command(
        self, command: list[str], limits: Limits, extra_ro_binds: Iterable[str] = ()
    ) -> Iterator[Launch]:
        """How to start ``command`` sandboxed; the passwd/group pipes live as long as the context."""
        fds: list[tuple[int, str]] = []
        try:
            if "--ro-bind-data" in self.features:
                fds.append((_data_fd(PASSWD), "/etc/passwd"))
                fds.append((_data_fd(GROUP), "/etc/group"))
            yield Launch(
                argv=self.command_argv(command, limits, fds, extra_ro_binds),
                # bwrap itself gets the same minimal environment (no LD_PRELOAD & co. from the server).
                env=dict(self.env),
                cwd="/",
                pass_fds=tuple(fd for fd, _ in fds),
            )
        finally:
            for fd, _ in fds:
                os.close(fd)
