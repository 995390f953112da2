"""The process a sandbox provider starts: ``python -I -B -m detox.sandbox.child MODULE``.

Protocol (one run per process):

* argv: the converter's module name, ``[a-z][a-z_]*`` (at most 64 characters); anything else is refused
  before anything is imported. The module is ``detox.converters.<MODULE>``.
* stdin: a 4-byte big-endian length, that many bytes of UTF-8 JSON (the args object, at most
  :data:`MAX_ARGS_BYTES`), then the input bytes up to EOF. Args travel on stdin rather than argv so their
  size is not bounded by the kernel's per-argument limit (128 KiB) and they never show in ``ps``.
* stdout: the converter's output, and nothing else. File descriptor 1 is pointed at stderr before the
  converter is imported, so a stray ``print()`` or a C library writing to fd 1 cannot corrupt the output.
* stderr: anything the converter or its libraries print; on failure the last line is
  ``detox-child: error: <Type>: <message>`` (one line, truncated).
* exit status: 0 success, 1 the converter raised (or returned something other than bytes), 2 the request
  itself was malformed (bad module name, bad header).

Resource limits are applied by the parent before exec (see :mod:`detox.sandbox.process`): this module
trusts nothing it reads and enforces nothing itself. It imports only the standard library so the
interpreter starts fast; the converter pays for its own imports.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys

TYPE_CHECKING = False  # not importing typing saves the child a few milliseconds of start-up
if TYPE_CHECKING:
    from typing import Any, BinaryIO

MODULE_RE = re.compile(r"[a-z][a-z_]*")
MAX_MODULE_CHARS = 64
MAX_ARGS_BYTES = 1024 * 1024
HEADER_BYTES = 4
ERROR_PREFIX = "detox-child: error: "
_MAX_ERROR_CHARS = 500

EXIT_OK = 0
EXIT_CONVERTER_FAILED = 1
EXIT_BAD_REQUEST = 2


def valid_module_name(name: str) -> bool:
    """True for a plain converter name (``fullmatch``: a trailing newline does not slip through ``$``)."""
    return len(name) <= MAX_MODULE_CHARS and MODULE_RE.fullmatch(name) is not None


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, truncated to a few hundred characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return text


class BadRequest(Exception):
    """The parent sent something this protocol does not allow."""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise BadRequest(f"stdin ended {remaining} bytes short of the {size}-byte header")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_request(stream: BinaryIO) -> tuple[dict[str, Any], bytes]:
    """Read ``<u32 length><args JSON><data>`` from ``stream`` (to EOF)."""
    size = int.from_bytes(_read_exact(stream, HEADER_BYTES), "big")
    if size > MAX_ARGS_BYTES:
        raise BadRequest(f"args are {size} bytes, more than {MAX_ARGS_BYTES}")
    try:
        args = json.loads(_read_exact(stream, size).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"args are not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise BadRequest(f"args must be a JSON object, not {type(args).__name__}")
    return args, stream.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fail(code: int, message: str) -> int:
    sys.stderr.write(ERROR_PREFIX + message + "\n")
    return code


def run(argv: list[str]) -> int:
    if len(argv) != 1 or not valid_module_name(argv[0]):
        return _fail(EXIT_BAD_REQUEST, f"refused converter name {argv[:1]!r}"[:_MAX_ERROR_CHARS])
    name = argv[0]

    # The output goes to a private duplicate of fd 1; fd 1 itself now leads to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        args, data = read_request(sys.stdin.buffer)
    except (BadRequest, OSError) as exc:
        return _fail(EXIT_BAD_REQUEST, one_line(exc))
    # Nothing more comes on stdin; don't leave the pipe for a converter to block on.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    try:
        module = importlib.import_module(f"detox.converters.{name}")
        main = getattr(module, "main", None)
        if not callable(main):
            raise TypeError(f"detox.converters.{name} has no main(data, args)")
        result = main(data, args)
        if not isinstance(result, bytes | bytearray):
            raise TypeError(f"main() returned {type(result).__name__}, not bytes")
    except BaseException as exc:  # noqa: BLE001 - everything a converter raises is reported, fail closed
        return _fail(EXIT_CONVERTER_FAILED, one_line(exc))
    try:
        _write_all(out_fd, bytes(result))
        os.close(out_fd)
    except OSError as exc:
        return _fail(EXIT_CONVERTER_FAILED, f"writing the output: {one_line(exc)}")
    return EXIT_OK


def _exit(code: int) -> None:
    """Flush and leave at once: no waiting for threads or atexit hooks a converter left behind."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(run(sys.argv[1:]))
