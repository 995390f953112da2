"""The resident converter host: runs INSIDE the sandbox, forks one fresh child per document.

Started like the one-shot child (same bubblewrap argv and isolation, same environment and rlimits) as
``python -I -B -m detox.sandbox.inside.zygote [--own-namespaces] BASE [WIPE...]``, it imports the
converters and their libraries once (:data:`PRELOAD`), makes itself non-dumpable and then serves
requests on its stdin, a Unix SOCK_SEQPACKET socket whose other end the worker holds. It never sees
document bytes.

Protocol (one JSON object per message: :func:`~detox.sandbox.inside.wire.encode_message`):

* At start-up the zygote sends ``{"ready": true, "preloaded": [...]}``.
* Request: ``{"module": NAME, "rlimits": [[resource, soft, hard], ...]}`` with exactly three file
  descriptors attached (SCM_RIGHTS): the read end of a fresh stdin pipe and the write ends of fresh
  stdout and stderr pipes, made by the worker for this document only.
* The zygote forks. The child applies the rlimits, moves the three pipes to 0/1/2, closes every other
  descriptor (the control socket first), enters an empty working directory of its own and runs
  :func:`detox.sandbox.inside.child.run` — the very code of the one-shot child: the request framing, fd 1
  pointed at stderr, the output on a private duplicate. The zygote closes its copies of the pipes.
* Once the child has exited the zygote reaps it, looks for anything the document left behind and
  answers ``{"status": N, "left": [...], "dirty": null | reason}``: ``status`` as
  :attr:`subprocess.Popen.returncode` (negative: killed by that signal); ``left`` the processes still
  running (killed, as far as the zygote can); ``dirty`` why the sandbox's state cannot be trusted for
  the next document (System V IPC objects left, too many files to wipe). The worker fails the document
  and starts a fresh sandbox for either.
* Socket at EOF: the zygote exits.

Between documents: nothing of a document survives it. Every process it started must be gone (the
zygote is a child subreaper, so orphans come back to it; with ``--own-namespaces``, bubblewrap's PID
and IPC namespaces, every process of the namespace besides the zygote and its ancestors counts too, and
no System V IPC object may exist); BASE and the WIPE directories (the sandbox's private /tmp and
/dev/shm) are emptied. Residue the zygote cannot see: POSIX message queues and keys in the user
keyring a child may create. Nothing of detox uses either, and the worker replaces the sandbox every
:data:`~detox.sandbox.zygote.ZYGOTE_DOCUMENTS` documents.

The zygote trusts its worker (the requests) and nothing else. It enforces no time limit: the worker
kills the whole sandbox at the deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import resource
import signal
import socket
import stat
import sys
import tempfile

from detox.sandbox.inside import child, wire
from detox.sandbox.inside.wire import FDS_PER_REQUEST, MAX_MESSAGE_BYTES, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The converters (and the libraries they import lazily) loaded once, before any document. A module
# that fails to import is skipped: the child then fails on it exactly as the one-shot child would.
PRELOAD = (
    "detox.sandbox.inside.converters",
    "detox.sandbox.inside.converters.pdf",
    "pikepdf",
    "pypdfium2",
    "pypdfium2.raw",
    "detox.sandbox.inside.converters.image",
    "detox.sandbox.inside.converters.office",
    "olefile",
    "detox.sandbox.inside.converters.archive",
    "detox.sandbox.inside.converters.selftest",
)
MAX_WIPE_ENTRIES = 10_000  # files and directories one document may leave in BASE/WIPE
MAX_REAP_ROUNDS = 64  # kill-and-reap passes over leftover processes before giving up
EXIT_PROTOCOL = 3

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)
_SYSV_IPC = ("/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg")


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def preload() -> list[str]:
    loaded = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - the child reports it when a document needs the module
            continue
        loaded.append(name)
    return loaded


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


# --- what a document leaves behind --------------------------------------------------------------


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = text.rsplit(")", 1)[-1].split()
    return fields[0], int(fields[1])


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read(200).replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid} {cmd}"[:120]


def _other_processes(own_namespaces: bool) -> dict[int, int]:
    """{pid: ppid} of the live processes besides the zygote and its ancestors: its children (orphans
    come back to it, a subreaper) and, in namespaces of our own, every other process in the PID one."""
    me = os.getpid()
    ancestors = {me}
    pid = os.getppid()
    for _ in range(64):
        ancestors.add(pid)
        fields = _stat_fields(pid)
        if fields is None or fields[1] in (0, pid):
            break
        pid = fields[1]
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in ancestors:
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if own_namespaces or fields[1] == me:
            found[int(entry)] = fields[1]
    return found


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop_leftovers(own_namespaces: bool) -> list[str]:
    """Kill whatever the document left running; describe it. Bounded: a process that keeps forking
    faster than this kills is left to the worker, which then kills the whole sandbox."""
    _reap()
    me = os.getpid()
    left: dict[int, str] = {}
    for _ in range(MAX_REAP_ROUNDS):
        found = _other_processes(own_namespaces)
        if not found:
            return list(left.values())
        for pid in found:
            if pid not in left and len(left) < 20:
                left[pid] = _describe(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid, ppid in found.items():
            if ppid == me:  # SIGKILLed: it ends at once; reaped so the next pass does not see it
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
        _reap()  # their orphans come to us next pass
    return [*left.values(), "(processes the zygote could not stop)"]


def _sysv_ipc_objects() -> bool:
    for path in _SYSV_IPC:
        try:
            with open(path, "rb") as fh:
                if len(fh.read(4096).splitlines()) > 1:  # a header line, then one line per object
                    return True
        except FileNotFoundError:
            continue
    return False


def wipe(directory: str) -> int:
    """Remove everything in ``directory`` except other mounts (read-only binds bubblewrap made under
    /tmp) and the directories leading to them; at most MAX_WIPE_ENTRIES entries. Returns the count."""
    root_dev = os.stat(directory).st_dev
    seen = 0
    stack: list[tuple[str, bool]] = [(directory, False)]
    while stack:
        path, listed = stack.pop()
        if listed:
            if path != directory:
                with contextlib.suppress(OSError):  # not empty: it holds a mount point
                    os.rmdir(path)
            continue
        stack.append((path, True))
        with os.scandir(path) as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_WIPE_ENTRIES:
                    return seen
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != root_dev:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(entry.path, 0o700)  # a directory the child made unwritable
                    stack.append((entry.path, False))
                else:
                    os.unlink(entry.path)
    return seen


# --- one document ------------------------------------------------------------------------------


def _child(
    module: str, rlimits: list[tuple[int, int, int]], fds: list[int], workdir: str, ctl: socket.socket
) -> int:
    """In the forked child: limits first, then the pipes, then the one-shot child's own code."""
    for res, soft, hard in rlimits:
        current_hard = resource.getrlimit(res)[1]
        if current_hard != resource.RLIM_INFINITY:  # never above what the zygote itself may use
            hard = min(hard, current_hard)
            soft = min(soft, hard)
        resource.setrlimit(res, (soft, hard))
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    ctl.detach()  # its descriptor is closed below; the object must never close a reused number
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(FDS_PER_REQUEST, os.sysconf("SC_OPEN_MAX"))
    os.chdir(workdir)
    os.environ["HOME"] = os.environ["TMPDIR"] = workdir
    tempfile.tempdir = None
    sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    return child.run([module])


def _request(ctl: socket.socket) -> tuple[str, list[tuple[int, int, int]], list[int]] | None:
    message, fds, flags, _ = socket.recv_fds(ctl, MAX_MESSAGE_BYTES, FDS_PER_REQUEST + 1)
    if not message and not fds:
        return None
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != FDS_PER_REQUEST:
            raise ProtocolError(f"a request with {len(fds)} descriptors (flags {flags})")
        request = wire.decode_message(message)
        module = request["module"]
        if not isinstance(module, str) or not wire.valid_module_name(module):
            raise ProtocolError("refused converter name")
        rlimits = [(int(r), int(s), int(h)) for r, s, h in request["rlimits"]]
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return module, rlimits, fds


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    ctl.sendall(wire.encode_message(message))


def serve(ctl: socket.socket, base: str, wipe_dirs: list[str], own_namespaces: bool) -> int:
    number = 0
    while True:
        try:
            request = _request(ctl)
        except (ProtocolError, ValueError, KeyError, TypeError) as exc:
            sys.stderr.write(f"detox-zygote: bad request: {child.one_line(exc)}\n")
            return EXIT_PROTOCOL
        if request is None:
            return 0
        module, rlimits, fds = request
        number += 1
        workdir = os.path.join(base, f"doc-{number}")
        os.mkdir(workdir, 0o700)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = _child(module, rlimits, fds, workdir, ctl)
            finally:
                child._exit(code)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(pid, 0)
        left = stop_leftovers(own_namespaces)
        dirty = None
        if own_namespaces and _sysv_ipc_objects():  # elsewhere /proc/sysvipc shows the host's
            dirty = "System V IPC objects left in the sandbox"
        for directory in (base, *wipe_dirs):
            try:
                if wipe(directory) > MAX_WIPE_ENTRIES:
                    dirty = f"more than {MAX_WIPE_ENTRIES} files left in {directory}"
            except OSError as exc:
                dirty = f"could not empty {directory}: {child.one_line(exc)}"
        _send(ctl, {"status": os.waitstatus_to_exitcode(status), "left": left, "dirty": dirty})


def main(argv: list[str]) -> int:
    own_namespaces = bool(argv) and argv[0] == "--own-namespaces"
    if own_namespaces:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m detox.sandbox.inside.zygote [--own-namespaces] BASE [WIPE...]\n")
        return 2
    base, wipe_dirs = argv[0], argv[1:]
    # The control socket moves off fd 0, which then reads nothing.
    ctl = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # Orphans of a document come back to us to be found; if the worker goes, we go; no document's
    # process may read our memory or ptrace us (children inherit it: nor each other).
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_DUMPABLE, 0)
    loaded = preload()
    if _threads() != 1:  # fork() copies only the calling thread: a preloaded library must not start any
        sys.stderr.write("detox-zygote: a preloaded module started a thread; refusing to fork\n")
        return 2
    _send(ctl, {"ready": True, "preloaded": loaded})
    return serve(ctl, base, wipe_dirs, own_namespaces)


if __name__ == "__main__":
    child._exit(main(sys.argv[1:]))
