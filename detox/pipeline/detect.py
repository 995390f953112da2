"""What a part's bytes are: libmagic (cached by content), or plainly text for a declared text body."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import magic

from detox.filters.text import BINARY_SIGNATURES
from detox.pipeline.model import DETECTED_BY_LIBMAGIC, DETECTED_BY_TEXT_BYTES

_SNIFF_BYTES = 64 * 1024

_magic: magic.Magic | None = None
# libmagic spends 0.5-3 ms on any text, whatever its size (its text tests), and its answer depends on
# the bytes alone: the same bytes (one newsletter to many recipients, a logo in every mail of a
# sender) are looked up once per process. Keyed by a digest of the bytes libmagic reads.
_TYPE_CACHE_SIZE = 512
_type_cache: OrderedDict[bytes, str] = OrderedDict()
_type_lock = threading.Lock()


def detect_type(data: bytes, *, digest: bytes | None = None) -> str:
    """The true type of the bytes according to libmagic (one handle per process).

    ``digest``: the SHA-256 of ``data`` if the caller has it (a part's is computed anyway); it is
    the cache key when ``data`` is no longer than what libmagic reads.
    """
    global _magic
    if not data:
        return "inode/x-empty"
    sniff = data[:_SNIFF_BYTES]
    key = digest if digest is not None and len(data) <= _SNIFF_BYTES else hashlib.sha256(sniff).digest()
    with _type_lock:
        found = _type_cache.get(key)
        if found is not None:
            _type_cache.move_to_end(key)
            return found
    if _magic is None:
        _magic = magic.Magic(mime=True)
    try:
        found = str(_magic.from_buffer(sniff))
    except magic.MagicException:
        return "application/octet-stream"
    with _type_lock:
        _type_cache[key] = found
        if len(_type_cache) > _TYPE_CACHE_SIZE:
            _type_cache.popitem(last=False)
    return found


# A body part is only ever converted to text, never forwarded; for one declared text/plain or
# text/html whose bytes are plainly text, libmagic (1-3 ms on any new text) could only name a text
# type, so the declared one is taken. ESC stays allowed for ISO-2022-JP, bytes >= 0x80 for CP932,
# EUC-JP and UTF-8. Executables, archives and documents carry NULs or other control bytes, and an
# all-ASCII PDF opens with its signature: those still go to libmagic, so a body held as not-text is
# named by what it is.
TEXT_BODY_TYPES = frozenset({"text/plain", "text/html"})
_NON_TEXT_CONTROLS = bytes([*range(0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def plainly_text(payload: bytes) -> bool:
    # Deleting the bytes in C is several times faster than a regex search for them.
    return (
        bool(payload)
        and len(payload.translate(None, _NON_TEXT_CONTROLS)) == len(payload)
        and not payload.startswith(BINARY_SIGNATURES)
    )


def detect_part_type(payload: bytes, digest: bytes, *, declared: str, body: bool) -> tuple[str, str]:
    """(detected type, how it was detected) of a leaf part; ``digest`` is the payload's SHA-256."""
    if body and declared in TEXT_BODY_TYPES and plainly_text(payload):
        return declared, DETECTED_BY_TEXT_BYTES
    return detect_type(payload, digest=digest), DETECTED_BY_LIBMAGIC
