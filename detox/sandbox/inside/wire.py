"""The one message framing between the host and the sandbox, used on both sides of the wall.

Everything that crosses the wall on a stream is one shape: a length-prefixed JSON object (the header),
then payload bytes::

    [magic] | uint32 big-endian N | N bytes of a UTF-8 JSON object | payload

It is used three ways:

* **Request** to a converter child (host → child, on stdin): no magic; the header is the converter's
  args (at most :data:`MAX_ARGS_BYTES`), the payload the input bytes up to EOF. Args travel on stdin
  rather than argv so their size is not bounded by the kernel's per-argument limit (128 KiB) and they
  never show in ``ps``. :func:`encode_request` / :func:`read_request`.
* **Result** of a converter (child → host, on stdout): magic ``b"DXR1"``; the header is the
  converter's answer (``status``, counts, what it removed...), the payload the converted file, or for
  an archive its members back to back. :func:`pack_result` / :func:`unpack_result`. The filter checks
  the header itself: nothing here trusts what a converter of hostile bytes says.
* **Frames** of a resident process (both directions: the LibreOffice host): no magic; the header
  carries ``size``, the payload's length, so frames follow one another on one stream.
  :func:`encode_frame` / :func:`read_frame`, and :func:`header_length` / :func:`decode_header` for a
  reader that assembles frames from non-blocking reads.

The zygote's control messages are datagrams (SOCK_SEQPACKET, descriptors attached), so they need no
length: one JSON object each (:func:`encode_message` / :func:`decode_message`).

The converter child's own conventions live here too, as both sides read them: the converter name
(:func:`valid_module_name`), its exit codes and the error line it leaves on stderr.

This module imports only the standard library: the converter child, the zygote and the LibreOffice
host use it inside the sandbox (the host runs under a Python that has no detox on its path and loads
this file by its path), and the host side reaches it through :mod:`detox.sandbox.contract`.
"""

from __future__ import annotations

import json
import re
import struct

TYPE_CHECKING = False  # not importing typing saves the child a few milliseconds of start-up
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, BinaryIO

_LEN = struct.Struct(">I")
LENGTH_BYTES = _LEN.size  # the uint32 before every header

# -- the converter child's conventions -------------------------------------------------------------

MODULE_RE = re.compile(r"[a-z][a-z_]*")
MAX_MODULE_CHARS = 64
ERROR_PREFIX = "detox-child: error: "  # the child's last stderr line on failure: ERROR_PREFIX + one line
EXIT_OK = 0
EXIT_CONVERTER_FAILED = 1  # the converter raised, or returned something other than bytes
EXIT_BAD_REQUEST = 2  # the request itself was malformed (bad converter name, bad header)


def valid_module_name(name: str) -> bool:
    """True for a plain converter name (``fullmatch``: a trailing newline does not slip through ``$``)."""
    return len(name) <= MAX_MODULE_CHARS and MODULE_RE.fullmatch(name) is not None


class ProtocolError(Exception):
    """A message that breaks the framing, or a stream that ended inside one."""


class BadRequest(ProtocolError):
    """The parent sent a converter child something this protocol does not allow."""


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """``size`` bytes from a blocking stream; fewer only when the stream ends first."""
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


# -- request: host -> converter child --------------------------------------------------------------

MAX_ARGS_BYTES = 1024 * 1024


def encode_request(args: Mapping[str, Any]) -> bytes:
    """The length-prefixed args that go before the input; ValueError when they cannot travel."""
    try:
        body = json.dumps(dict(args), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"args are not JSON-serializable: {exc}") from exc
    if len(body) > MAX_ARGS_BYTES:
        raise ValueError(f"args are {len(body)} bytes, more than {MAX_ARGS_BYTES}")
    return _LEN.pack(len(body)) + body


def positive_int_arg(args: Mapping[str, Any], key: str, default: int) -> int:
    """A converter's integer argument (a cap): ``default`` when absent, ValueError unless a positive
    int (a bool is not one). The host sends valid caps; the inside checks them anyway."""
    value = args.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"bad argument {key}")
    return value


def read_request(stream: BinaryIO) -> tuple[dict[str, Any], bytes]:
    """Read ``<u32 length><args JSON><data>`` from ``stream`` (to EOF); BadRequest when malformed."""
    prefix = _read_exact(stream, LENGTH_BYTES)
    if len(prefix) < LENGTH_BYTES:
        raise BadRequest(
            f"stdin ended {LENGTH_BYTES - len(prefix)} bytes short of the {LENGTH_BYTES}-byte header"
        )
    (size,) = _LEN.unpack(prefix)
    if size > MAX_ARGS_BYTES:
        raise BadRequest(f"args are {size} bytes, more than {MAX_ARGS_BYTES}")
    body = _read_exact(stream, size)
    if len(body) < size:
        raise BadRequest(f"stdin ended {size - len(body)} bytes short of the {size}-byte header")
    try:
        args = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"args are not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise BadRequest(f"args must be a JSON object, not {type(args).__name__}")
    return args, stream.read()


# -- result: converter child -> host ---------------------------------------------------------------

MAGIC = b"DXR1"
_PREFIX = struct.Struct(">4sI")
PREFIX_BYTES = _PREFIX.size
MAX_HEADER_BYTES = 64 * 1024  # a converter with a longer header (an archive's member list) says so


def pack_result(
    header: Mapping[str, Any], *payload: bytes, max_header_bytes: int = MAX_HEADER_BYTES
) -> bytes:
    """Raises ValueError when the header is over ``max_header_bytes`` (the converter decides what
    that means: an error, or a part held as over the limit)."""
    blob = json.dumps(dict(header), ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(blob) > max_header_bytes:
        raise ValueError("converter result header too large")
    return b"".join([_PREFIX.pack(MAGIC, len(blob)), blob, *payload])


def unpack_result(raw: bytes, *, max_header_bytes: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], bytes]:
    """Split a converter answer into (header, payload); ValueError when it is not one."""
    if len(raw) < _PREFIX.size:
        raise ValueError("converter result too short")
    magic, size = _PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise ValueError("converter result has no DXR1 prefix")
    if size > max_header_bytes or _PREFIX.size + size > len(raw):
        raise ValueError("converter result header length out of range")
    try:
        header = json.loads(raw[_PREFIX.size : _PREFIX.size + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"converter result header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError("converter result header is not an object")
    return header, raw[_PREFIX.size + size :]


# -- frames: a resident process and its owner, both ways -------------------------------------------

MAX_FRAME_HEADER_BYTES = 64 * 1024


def encode_frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    blob = json.dumps({**header, "size": len(payload)}, separators=(",", ":")).encode("utf-8")
    if len(blob) > MAX_FRAME_HEADER_BYTES:
        raise ProtocolError("frame header too large")
    return _LEN.pack(len(blob)) + blob + payload


def header_length(prefix: bytes) -> int:
    """The header length a frame's 4-byte prefix announces; ProtocolError when over the cap."""
    (length,) = _LEN.unpack(prefix)
    if length > MAX_FRAME_HEADER_BYTES:
        raise ProtocolError(f"frame header of {length} bytes")
    return int(length)


def decode_header(blob: bytes) -> dict[str, Any]:
    """The JSON header of a frame; ProtocolError unless it is an object with a sane ``size``."""
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    size = header.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError("frame header has no valid size")
    return header


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """The next frame from a blocking stream, None at a clean end of stream."""
    prefix = _read_exact(stream, LENGTH_BYTES)
    if not prefix:
        return None
    if len(prefix) < LENGTH_BYTES:
        raise ProtocolError("stream ended inside a frame")
    length = header_length(prefix)
    blob = _read_exact(stream, length)
    if len(blob) < length:
        raise ProtocolError("stream ended inside a frame")
    header = decode_header(blob)
    payload = _read_exact(stream, header["size"])
    if len(payload) < header["size"]:
        raise ProtocolError("stream ended before the payload")
    return header, payload


# -- control messages: the zygote and its worker ---------------------------------------------------

MAX_MESSAGE_BYTES = 64 * 1024  # one datagram
FDS_PER_REQUEST = 3  # a document's stdin, stdout and stderr, attached to its request


def encode_message(message: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(message), separators=(",", ":")).encode("utf-8")


def decode_message(data: bytes) -> dict[str, Any]:
    """One control message; ValueError unless it is a JSON object."""
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a control message that is not a JSON object")
    return message
