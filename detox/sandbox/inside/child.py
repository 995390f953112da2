"""The process a sandbox provider starts: ``python -I -B -m detox.sandbox.inside.child NAME``.

Protocol (one run per process):

* argv: the converter's name, ``[a-z][a-z_]*`` (at most 64 characters); anything else is refused
  before anything is imported. The converter is found by
  :func:`detox.sandbox.inside.converters.load`: a built-in one, or one a plugin registered.
* stdin: a request in the framing of :mod:`detox.sandbox.inside.wire`: a 4-byte big-endian length,
  that many bytes of UTF-8 JSON (the args object, at most :data:`~detox.sandbox.inside.wire.MAX_ARGS_BYTES`),
  then the input bytes up to EOF.
* stdout: the converter's output, and nothing else. File descriptor 1 is pointed at stderr before the
  converter is imported, so a stray ``print()`` or a C library writing to fd 1 cannot corrupt the output.
* stderr: anything the converter or its libraries print; on failure the last line is
  ``detox-child: error: <Type>: <message>`` (one line, truncated).
* exit status: 0 success, 1 the converter raised (or returned something other than bytes), 2 the request
  itself was malformed (bad converter name, bad header).

Resource limits are applied by the parent before exec (see :mod:`detox.sandbox.spawn`): this module
trusts nothing it reads and enforces nothing itself. It imports only the standard library and the
framing so the interpreter starts fast; the converter pays for its own imports.
"""

from __future__ import annotations

import contextlib
import os
import sys

from detox.sandbox.inside import wire
from detox.sandbox.inside.wire import EXIT_BAD_REQUEST, EXIT_CONVERTER_FAILED, EXIT_OK, BadRequest

_MAX_ERROR_CHARS = 500


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, truncated to a few hundred characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 1] + "…"
    return text


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fail(code: int, message: str) -> int:
    sys.stderr.write(wire.ERROR_PREFIX + message + "\n")
    return code


def run(argv: list[str]) -> int:
    if len(argv) != 1 or not wire.valid_module_name(argv[0]):
        return _fail(EXIT_BAD_REQUEST, f"refused converter name {argv[:1]!r}"[:_MAX_ERROR_CHARS])
    name = argv[0]

    # The output goes to a private duplicate of fd 1; fd 1 itself now leads to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        args, data = wire.read_request(sys.stdin.buffer)
    except (BadRequest, OSError) as exc:
        return _fail(EXIT_BAD_REQUEST, one_line(exc))
    # Nothing more comes on stdin; don't leave the pipe for a converter to block on.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    try:
        from detox.sandbox.inside import converters

        main = converters.load(name)
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
