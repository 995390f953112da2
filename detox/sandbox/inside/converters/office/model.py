"""What the office converter works with: its caps, the main content types, what must not survive, its errors.

Shared by the modules of this package (names with a leading underscore are private to the package, not
to one module). The held reasons and output types are the contract's (:mod:`detox.sandbox.contract`):
the office filter reads the same table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from detox.sandbox.contract import OFFICE_HELD_REASONS as HELD_REASONS
from detox.sandbox.inside.wire import positive_int_arg

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ZIP_MAGIC = b"PK\x03\x04"

DEFAULT_MAX_MEMBERS = 5000
DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_XML_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RATIO = 200
_RATIO_FLOOR = 1024 * 1024  # members smaller than this are not ratio-checked (tiny XML compresses well)
_CHUNK = 1024 * 1024

_WML = "application/vnd.openxmlformats-officedocument.wordprocessingml."
_SML = "application/vnd.openxmlformats-officedocument.spreadsheetml."
_PML = "application/vnd.openxmlformats-officedocument.presentationml."

# The main part's content type (lower case) -> (kind, the output's MIME type, its extension).
MAIN_TYPES: Mapping[str, tuple[str, str, str]] = {
    _WML + "document.main+xml": ("word", _WML + "document", "docx"),
    _WML + "template.main+xml": ("word", _WML + "template", "dotx"),
    _SML + "sheet.main+xml": ("excel", _SML + "sheet", "xlsx"),
    _SML + "template.main+xml": ("excel", _SML + "template", "xltx"),
    _PML + "presentation.main+xml": ("powerpoint", _PML + "presentation", "pptx"),
    _PML + "slideshow.main+xml": ("powerpoint", _PML + "slideshow", "ppsx"),
    _PML + "template.main+xml": ("powerpoint", _PML + "template", "potx"),
}
# Macro-enabled main content types (lower case) -> the plain type that replaces them.
MACRO_MAIN_TYPES: Mapping[str, str] = {
    "application/vnd.ms-word.document.macroenabled.main+xml": _WML + "document.main+xml",
    "application/vnd.ms-word.template.macroenabledtemplate.main+xml": _WML + "template.main+xml",
    "application/vnd.ms-excel.sheet.macroenabled.main+xml": _SML + "sheet.main+xml",
    "application/vnd.ms-excel.template.macroenabled.main+xml": _SML + "template.main+xml",
    "application/vnd.ms-excel.addin.macroenabled.main+xml": _SML + "sheet.main+xml",
    "application/vnd.ms-powerpoint.presentation.macroenabled.main+xml": _PML + "presentation.main+xml",
    "application/vnd.ms-powerpoint.slideshow.macroenabled.main+xml": _PML + "slideshow.main+xml",
    "application/vnd.ms-powerpoint.template.macroenabled.main+xml": _PML + "template.main+xml",
    "application/vnd.ms-powerpoint.addin.macroenabled.main+xml": _PML + "presentation.main+xml",
}

# Content-type fragments that must not survive anywhere in [Content_Types].xml (verify()).
FORBIDDEN_TYPE_FRAGMENTS = (
    "macroenabled",
    "vbaproject",
    "vbadata",
    "activex",
    "oleobject",
    "macrosheet",
    "dialogsheet",
    "externallink",
    "keymapcustomizations",
    "attachedtoolbars",
    "webextension",
    "connections+xml",
    "printersettings",
    "image/svg",
)
# Member-name fragments (lower case) that must not survive (verify()).
FORBIDDEN_NAME_FRAGMENTS = (
    "vbaproject",
    "vbadata",
    "/activex/",
    "/embeddings/",
    "/macrosheets/",
    "/dialogsheets/",
    "/externallinks/",
    "customui/",
    "/webextensions/",
    "_xmlsignatures/",
)

# Binary content types kept as they are (lower case); image/*, audio/*, video/* are kept too.
_KEPT_BINARY_TYPES = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.obfuscatedfont",
        "application/x-fontdata",
        "application/x-font-ttf",
        "application/x-font-otf",
        "application/x-font",
        "application/font-sfnt",
        "application/vnd.ms-opentype",
        "application/vnd.ms-package.obfuscated-opentype",
        "application/vnd.ms-fontobject",
    }
)
_VML_TYPE = "application/vnd.openxmlformats-officedocument.vmldrawing"


class Caps(NamedTuple):
    max_members: int = DEFAULT_MAX_MEMBERS
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES
    max_xml_bytes: int = DEFAULT_MAX_XML_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Caps:
        return cls(
            max_members=positive_int_arg(args, "max_members", DEFAULT_MAX_MEMBERS),
            max_total_bytes=positive_int_arg(args, "max_total_bytes", DEFAULT_MAX_TOTAL_BYTES),
            max_xml_bytes=positive_int_arg(args, "max_xml_bytes", DEFAULT_MAX_XML_BYTES),
            max_ratio=positive_int_arg(args, "max_ratio", DEFAULT_MAX_RATIO),
        )


class HeldError(Exception):
    """The file is answered "held" with a reason the filter maps to a notice (not a failure)."""

    def __init__(
        self,
        reason: str,
        detail: str,
        application: str | None = None,
        removed: Mapping[str, int] | None = None,
    ) -> None:
        assert reason in HELD_REASONS
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.application = application  # set for OLE files only
        self.removed = dict(removed or {})


class PackageRejected(ValueError):
    """Not a package this converter will rebuild (malformed, ambiguous or hostile): the part is held."""


class NotInertError(Exception):
    """The output still carries something active: a bug in the converter; the part is held."""


@dataclass
class Result:
    data: bytes
    content_type: str
    extension: str
    kind: str
    source_type: str
    parts: int
    removed: Counter[str]
