"""A converter for the sandbox's own tests and benchmark: each ``op`` probes one property of the sandbox.

Never used on mail. ``args["op"]``:

* ``echo``: return the input (``print``: also print that text to stdout, which must not reach the output);
* ``sleep``: sleep ``seconds``; with ``spawn`` (a string), first start ``sleep <spawn>`` as a grandchild;
* ``raise``: raise ValueError(``message``);
* ``net``: connect to ``host``:``port``; ``connected`` or ``blocked: <errno name>``;
* ``write_file``: write ``content`` to ``path``; JSON ``{"ok": bool, "error": errno name}``;
* ``read_file``: JSON ``{"ok", "error", "content"}`` for ``path``; ``listdir``: JSON list of ``path``;
* ``args``: the args back as JSON; ``env``: JSON of ``os.environ``;
* ``modules``: JSON list of the modules loaded in this process (the boundary test reads it);
* ``whoami``: JSON ids, user name, cwd, temp dir, hostname;
* ``limits``: JSON ``{resource name: [soft, hard]}``;
* ``big_output``: ``size`` bytes of output; ``memory``: allocate ``size`` bytes;
* ``cpu``: burn CPU for up to ``seconds``;
* ``fork_bomb_guard``: fork up to ``count`` children that wait to be killed; JSON ``{"started": n,
  "error": errno name or null}`` (children are killed and reaped before returning).

Misbehaviour a resident sandbox must contain (:mod:`detox.sandbox.inside.zygote`):

* ``spill``: return the input, leaving a grandchild (own session) that writes ``extra`` to every pipe
  it inherited for ``seconds``;
* ``daemon``: return the input, leaving a grandchild (own session, every inherited descriptor closed)
  that runs ``sleep MARKER`` (MARKER: seconds, a unique number so a test can find it);
* ``crash``: ``how`` = ``segv`` (a real SIGSEGV in C code) or ``exit`` (``os._exit(code)`` right after
  writing ``data`` to every inherited pipe);
* ``probe_parent``: try to read the parent's ``/proc/PID/{mem,environ,maps}`` and to ptrace it; JSON
  ``{what: "ok" or errno name}``;
* ``leave_files``: create ``count`` files in the working directory, ``$HOME/..`` and /dev/shm (when
  writable); return the input;
* ``sysv_shm``: create a System V shared memory segment and leave it; return the input.
"""

from __future__ import annotations

import json
import os

# Only what every op needs is imported up front, so ``echo`` measures the sandbox, not this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _errno_name(exc: OSError) -> str:
    import errno

    if isinstance(exc, TimeoutError) and exc.errno is None:
        return "timeout"
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode("utf-8")


def _net(args: dict[str, Any]) -> bytes:
    import socket

    try:
        with socket.create_connection((args["host"], int(args["port"])), timeout=args.get("timeout", 3)):
            return b"connected"
    except OSError as exc:
        return f"blocked: {_errno_name(exc)}".encode()


def _write_file(args: dict[str, Any]) -> bytes:
    try:
        with open(args["path"], "wb") as fh:
            fh.write(str(args.get("content", "x")).encode("utf-8"))
    except OSError as exc:
        return _json({"ok": False, "error": _errno_name(exc)})
    return _json({"ok": True, "error": None})


def _read_file(args: dict[str, Any]) -> bytes:
    try:
        with open(args["path"], "rb") as fh:
            content = fh.read(65536).decode("utf-8", "replace")
    except OSError as exc:
        return _json({"ok": False, "error": _errno_name(exc), "content": None})
    return _json({"ok": True, "error": None, "content": content})


def _whoami() -> bytes:
    import pwd
    import socket
    import tempfile

    try:
        user: str | None = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = None
    return _json(
        {
            "uid": os.getuid(),
            "euid": os.geteuid(),
            "gid": os.getgid(),
            "egid": os.getegid(),
            "groups": os.getgroups(),
            "user": user,
            "cwd": os.getcwd(),
            "tmpdir": tempfile.gettempdir(),
            "hostname": socket.gethostname(),
        }
    )


def _limits() -> bytes:
    import resource

    names = ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE")
    return _json({name: list(resource.getrlimit(getattr(resource, name))) for name in names})


def _sleep(args: dict[str, Any]) -> bytes:
    import subprocess
    import time

    seconds = float(args.get("seconds", 1))
    if args.get("spawn"):
        subprocess.Popen(["sleep", str(args["spawn"])])  # left running on purpose: the sandbox kills it
    time.sleep(seconds)
    return b"slept"


def _cpu(args: dict[str, Any]) -> bytes:
    import time

    end = time.monotonic() + float(args.get("seconds", 10))
    n = 0
    while time.monotonic() < end:
        n += 1
    return str(n).encode()


def _fork_bomb_guard(args: dict[str, Any]) -> bytes:
    import signal

    count = int(args.get("count", 100))
    children: list[int] = []
    error: str | None = None
    try:
        for _ in range(count):
            try:
                pid = os.fork()
            except OSError as exc:
                error = _errno_name(exc)
                break
            if pid == 0:  # child: wait to be killed, never return into the converter
                try:
                    signal.pause()
                finally:
                    os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)
    return _json({"started": len(children), "error": error})


def _pipes() -> list[int]:
    import stat

    found = []
    for fd in range(1, 32):
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            continue
    return found


def _spill(data: bytes, args: dict[str, Any]) -> bytes:
    import time

    if os.fork() == 0:  # the grandchild: keep writing into whatever pipes it has
        os.setsid()
        end = time.monotonic() + float(args.get("seconds", 5))
        extra = str(args.get("extra", "SPOOF")).encode()
        fds = _pipes()
        while time.monotonic() < end:
            for fd in fds:
                try:
                    os.write(fd, extra)
                except OSError:
                    continue
            time.sleep(0.01)
        os._exit(0)
    return data


def _daemon(data: bytes, args: dict[str, Any]) -> bytes:
    if os.fork() == 0:  # a well-behaved daemon: nothing inherited holds the run open
        os.setsid()
        os.closerange(0, 1024)
        os.execvp("sleep", ["sleep", str(args.get("marker", 30))])  # noqa: S606
    return data


def _crash(data: bytes, args: dict[str, Any]) -> bytes:
    if args.get("how") == "segv":
        import ctypes

        ctypes.string_at(0)
    for fd in _pipes():
        try:
            os.write(fd, data)
        except OSError:
            continue
    os._exit(int(args.get("code", 0)))


def _probe_parent() -> bytes:
    import ctypes

    parent = os.getppid()
    got: dict[str, str] = {}
    for name in ("mem", "environ", "maps"):
        try:
            with open(f"/proc/{parent}/{name}", "rb") as fh:
                fh.read(1)
            got[name] = "ok"
        except OSError as exc:
            got[name] = _errno_name(exc)
    libc = ctypes.CDLL(None, use_errno=True)
    ptrace_attach, ptrace_detach = 16, 17
    if libc.ptrace(ptrace_attach, parent, 0, 0) == 0:
        got["ptrace"] = "ok"
        libc.ptrace(ptrace_detach, parent, 0, 0)
    else:
        got["ptrace"] = _errno_name(OSError(ctypes.get_errno(), ""))
    return _json(got)


def _leave_files(data: bytes, args: dict[str, Any]) -> bytes:
    count = int(args.get("count", 3))
    home = os.environ.get("HOME", ".")
    for directory in (".", os.path.join(home, ".."), "/dev/shm"):  # noqa: S108 - the sandbox's own
        for i in range(count):
            try:
                with open(os.path.join(directory, f"left-{i}"), "wb") as fh:
                    fh.write(data)
            except OSError:
                break
    return data


def _sysv_shm(data: bytes) -> bytes:
    import ctypes

    ipc_private, ipc_creat = 0, 0o1000
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.shmget(ipc_private, 4096, ipc_creat | 0o600) < 0:
        raise OSError(ctypes.get_errno(), "shmget")
    return data


def main(data: bytes, args: dict[str, Any]) -> bytes:
    op = args.get("op", "echo")
    if op == "echo":
        if "print" in args:
            print(args["print"])
        return data
    if op == "sleep":
        return _sleep(args)
    if op == "raise":
        raise ValueError(args.get("message", "selftest raised on purpose"))
    if op == "net":
        return _net(args)
    if op == "write_file":
        return _write_file(args)
    if op == "read_file":
        return _read_file(args)
    if op == "listdir":
        return _json(sorted(os.listdir(args["path"])))
    if op == "args":
        return _json(args)
    if op == "env":
        return _json(dict(os.environ))
    if op == "modules":
        import sys

        return _json(sorted(sys.modules))
    if op == "whoami":
        return _whoami()
    if op == "limits":
        return _limits()
    if op == "big_output":
        return b"x" * int(args["size"])
    if op == "memory":
        block = bytearray(int(args["size"]))
        return f"allocated {len(block)}".encode()
    if op == "cpu":
        return _cpu(args)
    if op == "fork_bomb_guard":
        return _fork_bomb_guard(args)
    if op == "spill":
        return _spill(data, args)
    if op == "daemon":
        return _daemon(data, args)
    if op == "crash":
        return _crash(data, args)
    if op == "probe_parent":
        return _probe_parent()
    if op == "leave_files":
        return _leave_files(data, args)
    if op == "sysv_shm":
        return _sysv_shm(data)
    raise ValueError(f"unknown op {op!r}")
