"""The sandbox's contract: everything the host may know of what runs inside the sandbox.

The host side (filters, the pipeline, the sandbox providers in :mod:`detox.sandbox`) imports nothing of
:mod:`detox.sandbox.inside` but through this module: the converters' names, the reasons each may give
for holding a file, their output types and accepted formats, the framing of requests and results with
its limits, and the names of the entry points the providers start. A filter never imports a converter
(and with it Pillow, lxml or pikepdf) to learn a constant.

It is a leaf: it imports only the standard library and :mod:`detox.sandbox.inside.wire` (itself
standard library only), so the inside imports it too, and both sides read the same table. Keep it that
way: nothing of the host here, and not even ``typing`` at run time (the converter child imports this
module on every start).

Each converter's answer is a result (:func:`unpack_result`) whose header has ``status`` ``"ok"`` or
``"held"``; a held answer carries a ``reason`` that must be one of the converter's
:attr:`Converter.held_reasons`, and anything else is a sandbox fault. The filter checks the rest of the
header itself.
"""

from __future__ import annotations

import os
from types import MappingProxyType

from detox.sandbox.inside import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

# -- where the inside starts ------------------------------------------------------------------------

CHILD_MODULE = "detox.sandbox.inside.child"  # python -I -B -m CHILD_MODULE NAME: one converter run
ZYGOTE_MODULE = "detox.sandbox.inside.zygote"  # the resident converter host (forks a child per document)
# The LibreOffice host, run as a script by the system Python that has ``uno`` (no detox on its path).
OFFICE_HOST_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(wire.__file__)), "office_host.py")

# -- which converters exist ---------------------------------------------------------------------------

# Built in: modules of detox.sandbox.inside.converters. A plugin package registers more in this entry-point
# group (``name = "package.module:main"``); a built-in name cannot be taken over by a plugin.
ENTRY_POINT_GROUP = "detox.converters"
BUILTIN_CONVERTERS = ("archive", "image", "office", "pdf", "selftest")
valid_converter_name = wire.valid_module_name  # [a-z][a-z_]*, at most 64 characters
# The child runs with ``-I`` (no PYTHONPATH, no user site): the host hands it, in this variable, the
# import roots of installed plugin converters (os.pathsep-separated), which it appends to sys.path.
CONVERTER_PATH_ENV = "DETOX_CONVERTER_PATH"

# -- framing and its limits ---------------------------------------------------------------------------

ProtocolError = wire.ProtocolError
MAX_ARGS_BYTES = wire.MAX_ARGS_BYTES  # a converter's args, as JSON
RESULT_PREFIX_BYTES = wire.PREFIX_BYTES  # b"DXR1" + the header length
MAX_RESULT_HEADER_BYTES = wire.MAX_HEADER_BYTES  # the header of a result (all but the archive's)
ARCHIVE_MAX_HEADER_BYTES = 8 * 1024 * 1024  # the archive's header lists every member
ERROR_PREFIX = wire.ERROR_PREFIX  # the child's stderr line that says why it failed
encode_request = wire.encode_request
encode_frame = wire.encode_frame
decode_header = wire.decode_header
header_length = wire.header_length
read_frame = wire.read_frame
FRAME_PREFIX_BYTES = wire.LENGTH_BYTES
encode_message = wire.encode_message
decode_message = wire.decode_message
MAX_MESSAGE_BYTES = wire.MAX_MESSAGE_BYTES
FDS_PER_REQUEST = wire.FDS_PER_REQUEST


unpack_result = wire.unpack_result  # (header, payload) of a converter's answer; ValueError if not one
pack_result = wire.pack_result  # a converter's answer, as a plugin converter inside the sandbox writes it


def unpack_archive_result(raw: bytes) -> tuple[dict[str, Any], bytes]:
    """:func:`unpack_result` for the archive converter, whose header may be as long as its member list."""
    return wire.unpack_result(raw, max_header_bytes=ARCHIVE_MAX_HEADER_BYTES)


# -- what each converter may answer -------------------------------------------------------------------

IMAGE_HELD_REASONS = frozenset({"limit-exceeded"})
# Pillow's name of the output format -> the MIME type of the output.
IMAGE_OUTPUT_TYPES: Mapping[str, str] = MappingProxyType({"PNG": "image/png", "JPEG": "image/jpeg"})
# Where rsvg-convert may be; PATH inside the sandbox is not trusted to be set.
RSVG_PATH = "/usr/bin:/bin:/usr/local/bin"

PDF_HELD_REASONS = frozenset({"encrypted", "limit-exceeded"})
# The pdf converter's args when the caller gives none (rasterize mode).
PDF_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "mode": "rasterize",
        "dpi": 150,
        "max_pages": 100,
        "max_page_pixels": 36_000_000,  # A0 at 150 dpi is 35 Mpx
        "max_output_bytes": 64 * 1024 * 1024,
        "image_format": "jpeg",
        "jpeg_quality": 85,
    }
)

OFFICE_HELD_REASONS = frozenset({"encrypted", "legacy-office", "limit-exceeded", "unsupported-type"})
_WML = "application/vnd.openxmlformats-officedocument.wordprocessingml."
_SML = "application/vnd.openxmlformats-officedocument.spreadsheetml."
_PML = "application/vnd.openxmlformats-officedocument.presentationml."
# The output MIME types the office converter produces, with their extensions (the filter checks both).
OFFICE_OUTPUT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        _WML + "document": "docx",
        _WML + "template": "dotx",
        _SML + "sheet": "xlsx",
        _SML + "template": "xltx",
        _PML + "presentation": "pptx",
        _PML + "slideshow": "ppsx",
        _PML + "template": "potx",
    }
)

ARCHIVE_FORMATS = ("zip", "tar", "gzip", "bzip2", "xz", "7z", "lzh")
ARCHIVE_HELD_REASONS = frozenset(
    {
        "encrypted-archive",  # ZipCrypto, AES, 7z encryption: PPAP
        "limit-exceeded",  # too many entries, too many bytes, a member too large
        "archive-bomb",  # compression ratio over max_ratio
        "archive-corrupt",  # unreadable, truncated, CRC or size mismatch, local/central names differ
        "archive-unsupported",  # a variant the libraries cannot read (LZH method, 7z codec...)
        "archive-is-document",  # a zip that is an OOXML/ODF/EPUB document (not claimed as one)
        "executable",  # a zip that is a Java or Android program
    }
)
# Why an archive member was refused (not extracted) while the rest of the archive was.
ARCHIVE_REFUSED_KINDS = frozenset(
    {
        "symlink",
        "hardlink",
        "device",
        "special",
        "absolute-path",
        "parent-path",
        "bad-name",
        "unsupported-method",
    }
)


class Converter:
    """One built-in converter as the host sees it: its name, its held reasons, how to read its answer."""

    __slots__ = ("held_reasons", "max_header_bytes", "name")

    def __init__(
        self, name: str, held_reasons: frozenset[str], max_header_bytes: int = MAX_RESULT_HEADER_BYTES
    ):
        self.name = name
        self.held_reasons = held_reasons
        self.max_header_bytes = max_header_bytes

    def __repr__(self) -> str:
        return f"Converter({self.name!r})"

    def unpack(self, raw: bytes) -> tuple[dict[str, Any], bytes]:
        """(header, payload) of this converter's answer; ValueError when it is not one."""
        return wire.unpack_result(raw, max_header_bytes=self.max_header_bytes)


IMAGE = Converter("image", IMAGE_HELD_REASONS)
PDF = Converter("pdf", PDF_HELD_REASONS)
OFFICE = Converter("office", OFFICE_HELD_REASONS)
ARCHIVE = Converter("archive", ARCHIVE_HELD_REASONS, ARCHIVE_MAX_HEADER_BYTES)
SELFTEST = Converter("selftest", frozenset())
CONVERTERS: Mapping[str, Converter] = MappingProxyType(
    {c.name: c for c in (ARCHIVE, IMAGE, OFFICE, PDF, SELFTEST)}
)
