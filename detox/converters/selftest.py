"""A converter for the sandbox's own tests and benchmark: each ``op`` probes one property of the sandbox.

Never used on mail. ``args["op"]``:

* ``echo``: return the input (``print``: also print that text to stdout, which must not reach the output);
* ``sleep``: sleep ``seconds``; with ``spawn`` (a string), first start ``sleep <spawn>`` as a grandchild;
* ``raise``: raise ValueError(``message``);
* ``net``: connect to ``host``:``port``; ``connected`` or ``blocked: <errno name>``;
* ``write_file``: write ``content`` to ``path``; JSON ``{"ok": bool, "error": errno name}``;
* ``read_file``: JSON ``{"ok", "error", "content"}`` for ``path``; ``listdir``: JSON list of ``path``;
* ``args``: the args back as JSON; ``env``: JSON of ``os.environ``;
* ``whoami``: JSON ids, user name, cwd, temp dir, hostname;
* ``limits``: JSON ``{resource name: [soft, hard]}``;
* ``big_output``: ``size`` bytes of output; ``memory``: allocate ``size`` bytes;
* ``cpu``: burn CPU for up to ``seconds``;
* ``fork_bomb_guard``: fork up to ``count`` children that wait to be killed; JSON ``{"started": n,
  "error": errno name or null}`` (children are killed and reaped before returning).
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
    raise ValueError(f"unknown op {op!r}")
