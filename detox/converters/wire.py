"""The answer every sandboxed converter writes on stdout and its filter reads back.

    b"DXR1" | uint32 big-endian N | N bytes of a UTF-8 JSON object | payload bytes

The JSON object is the converter's header (``status``, counts, what it removed...); the payload is
the converted file, or for an archive its members back to back. The filter checks the header
itself: nothing here trusts what a converter of hostile bytes says.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

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
