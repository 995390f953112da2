"""Office converter: rebuilds an OOXML package without anything that can run, fetch or embed.

Runs INSIDE the sandbox (``detox.sandbox``): ``main(data, args)`` gets the attachment's bytes and
returns a result in the wire format below. Anything it cannot do safely raises; the sandbox turns
that into a SandboxError and the runner holds the part.

Inputs
    * An OOXML package (docx/xlsx/pptx, the macro-enabled docm/xlsm/pptm/ppsm/xlam/ppam, the templates
      dotx/dotm/xltx/xltm/potx/potm): rebuilt, see below.
    * An OLE compound file: never converted here. An Office file encrypted with a password (an OOXML
      package wrapped in an OLE container with ``EncryptionInfo``/``EncryptedPackage`` streams, or a
      .doc/.xls/.ppt with its encryption flag or record) is answered "held: encrypted"; any other
      OLE file "held: legacy-office", with ``application`` naming what it is ("word", "excel",
      "powerpoint", or "" for an OLE file that is none of them or cannot be read): the office filter
      converts the first three with LibreOffice (:mod:`detox.sandbox.libreoffice`), restricted to
      that application's import filters.
    * An Excel binary workbook (xlsb) or any other OPC package whose main part is not one of the types
      above: "held: unsupported-type" (their parts are binary records this converter cannot rebuild).
    * Anything else raises (not an Office file).

How the package is read
    Zip caps before and while decompressing: ``max_members`` entries, ``max_total_bytes`` of
    decompressed data (counted on the bytes actually inflated, not the sizes the directory claims),
    ``max_ratio`` for members over 1 MiB, ``max_xml_bytes`` for one XML part; over a cap → "held:
    limit-exceeded". Refused outright: overlapping members (the "better zip bomb"), duplicate part
    names (OPC names are case-insensitive: two members differing only in case are two readings of one
    part), names that are absolute, contain ``..``, backslashes or control characters, encrypted
    members, compression methods other than stored/deflate.

    Every XML part is parsed with lxml (libxml2) configured for hostile input: no DTD loading, no
    entity substitution, no network, libxml2's default limits on depth and text size (no
    ``huge_tree``), comments and processing instructions dropped. A part that declares a DTD or an
    entity, uses an encoding other than UTF-8/UTF-16 (ECMA-376 allows only those), or contains an
    entity reference is refused: OOXML never has them, so there is nothing to keep. lxml rather than
    defusedxml because it is already a dependency, the parse happens inside the sandbox (no network,
    rlimits) and the DTD refusal above makes entity handling moot; defusedxml's lxml support is
    deprecated anyway. Every XML part is re-serialized from the tree as UTF-8: what leaves is what
    the parser understood, not the sender's bytes.

What is removed (the ``removed`` counts name the kinds)
    * ``vba-project``: vbaProject.bin (by relationship type, content type, name, wherever it is), its
      signature, Word's vbaData.xml, and their relationships and content-type entries.
      ``macro-customization``: Word's keyMapCustomizations and attachedToolbars (macro bindings).
    * ``xlm-macrosheet`` / ``dialog-sheet``: Excel 4 macro sheets (xl/macrosheets/*, international
      ones too) and Excel 5 dialog sheets, with their ``<sheet>`` entries in workbook.xml, defined
      names that point into them and ``localSheetId``/``activeTab`` indices renumbered.
      ``auto-macro``: defined names that make Excel run a macro on open/close (``Auto_Open``...).
      ``very-hidden-sheet``: sheets marked ``veryHidden`` (visible only to macros) are kept but made
      ordinary hidden sheets, so the reader can unhide and see them.
    * ``activex``: ActiveX controls (*/activeX/*: the XML and the binary persistence), with the
      ``w:control``, ``<controls>`` and ``p:controls`` elements that place them.
    * ``ole-embedding`` / ``embedded-package``: every part under */embeddings/* or reached by an
      oleObject/package relationship, and any other part whose bytes are an OLE file or a zip. In the
      documents the object is replaced by its preview picture where the format has one in place: Word's
      ``w:object`` becomes a ``w:pict`` (its VML shape and preview image stay) or its ``w:drawing``;
      PowerPoint's OLE ``p:graphicFrame`` becomes the ``p:pic`` its fallback carries, placed where
      the frame was. Otherwise the element is removed: Excel's ``<oleObjects>`` (the VML shape with
      the preview stays in the legacy drawing), PowerPoint 2007 frames without a fallback picture.
      A chart's embedded workbook goes too (``c:externalData``: the chart keeps its cached values).
    * ``dde``: Word fields DDE/DDEAUTO (complex fields, also when the keyword is split over several
      ``w:instrText`` runs or produced by a nested ``QUOTE`` field; ``w:fldSimple``) and Excel
      externalLink parts holding a ``ddeLink``. A removed field loses its code and keeps its result,
      so the text the reader saw stays. Formulas that point into a removed external workbook lose
      their formula and keep their cached value.
    * ``external-link``: every relationship with ``TargetMode="External"`` other than a hyperlink:
      attachedTemplate (template injection), oleObject links, frames (webSettings), subDocument,
      images/media linked by ``r:link``, externalLink parts of workbooks (linked workbooks), a
      hyperlink whose target is not http(s)/mailto (file:, UNC, ms-*:, relative paths...); Word
      fields that fetch content (INCLUDETEXT, INCLUDEPICTURE, LINK, IMPORT, RD, DATABASE); VML
      ``src``/``href`` attributes that name a URL.
    * ``hyperlink``: http(s)/mailto hyperlinks when ``args["hyperlinks"] == "unlink"`` (the filter's
      default follows the URL defanging of the mail body): the relationship and the click go, the
      text the reader sees stays. With ``"keep"`` they stay clickable.
    * ``custom-ui``: ribbon customizations (customUI/customUI14, their images): their callbacks
      name macros and ``onLoad`` handlers.
    * ``action``: PowerPoint click/hover actions that run a program, a macro or an OLE verb
      (``ppaction://program``, ``macro``, ``ole``). ``macro-binding``: macros assigned to shapes,
      form controls and form fields (``macro``, ``fmlaMacro``, ``x:FmlaMacro``, ``w:entryMacro``,
      ``w:exitMacro``, MACROBUTTON fields). ``obfuscated-field``: a Word field whose keyword is
      computed by a nested field. ``mail-merge``: Word mail-merge settings (data source queries).
    * ``web-extension``: Office web add-ins (webextensions/*, loaded from a store or URL).
      ``data-connection``: Excel data connections and query tables (connection strings, web queries).
      ``alt-chunk``: Word altChunk parts (foreign HTML/RTF/MHT imported on open).
    * ``svg-image``: SVG pictures (Office keeps a PNG fallback, which stays). ``printer-settings``:
      binary printer DEVMODE blobs. ``signature``: digital signatures (a rebuilt package would not
      verify). ``vml-drawing``: VML drawings that are not well-formed XML. ``unknown-part``: parts
      with no content type, or binary parts that are not images, fonts, audio or video.
    * Not counted: parts no relationship reaches any more, Word's ``w:updateFields``, comments and
      processing instructions in XML.

    Content types are rebuilt from the parts that remain; the macro-enabled main types become the
    plain ones (``application/vnd.ms-word.document.macroEnabled.main+xml`` →
    ``...wordprocessingml.document.main+xml``, xlsm → xlsx, pptm → pptx, dotm → dotx, xltm → xltx,
    potm → potx, ppsm → ppsx, xlam → xlsx, ppam → pptx). The output is checked once more
    (:func:`verify`) before it is returned; anything left over is an error.

    Kept as they are: text, styles, images (other than SVG), fonts, audio/video, charts, custom XML
    data, document properties. Images and fonts are copied unchanged: a memory-safety bug in the
    recipient's image or font decoder is the residual risk of this conversion (as in PDF sanitize).

Wire format of the result: :mod:`detox.converters.wire`, the payload the new package (empty when the
status is "held").

Header keys: ``status`` ("ok" or "held"); when ok: ``content_type`` (the output's
MIME type, one of :data:`OUTPUT_TYPES`), ``extension`` (``docx``...), ``kind`` (word/excel/
powerpoint), ``source_type`` (the input's main content type), ``parts`` (members written) and
``removed`` ({kind: count}); when held: ``reason`` (one of :data:`HELD_REASONS`) and ``detail``, and for
an OLE file ``application`` and ``removed`` (:func:`probe_ole`).
"""

from __future__ import annotations

import copy
import io
import itertools
import posixpath
import re
import struct
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote

from lxml import etree

from detox.converters.wire import pack_result as pack_result
from detox.converters.wire import unpack_result as unpack_result

HELD_REASONS = frozenset({"encrypted", "legacy-office", "limit-exceeded", "unsupported-type"})

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
# The output MIME types this converter produces, with their extensions (the filter checks both).
OUTPUT_TYPES: Mapping[str, str] = {mime: ext for _, mime, ext in MAIN_TYPES.values()}

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

# -- namespaces --------------------------------------------------------------------------------

_CT_NS = "http://schemas.openxmlformats.org/package/2006/content-types"
_RELS_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_RELS_CT = "application/vnd.openxmlformats-package.relationships+xml"


def _both(transitional: str, strict: str) -> frozenset[str]:
    return frozenset({transitional, strict})


_W = _both(
    "http://schemas.openxmlformats.org/wordprocessingml/2006/main",
    "http://purl.oclc.org/ooxml/wordprocessingml/main",
)
_S = _both(
    "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
    "http://purl.oclc.org/ooxml/spreadsheetml/main",
)
_P = _both(
    "http://schemas.openxmlformats.org/presentationml/2006/main",
    "http://purl.oclc.org/ooxml/presentationml/main",
)
_A = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/main", "http://purl.oclc.org/ooxml/drawingml/main"
)
_R = _both(
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    "http://purl.oclc.org/ooxml/officeDocument/relationships",
)
_C = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/chart", "http://purl.oclc.org/ooxml/drawingml/chart"
)
_XDR = _both(
    "http://schemas.openxmlformats.org/drawingml/2006/spreadsheetDrawing",
    "http://purl.oclc.org/ooxml/drawingml/spreadsheetDrawing",
)
_V = "urn:schemas-microsoft-com:vml"
_O = "urn:schemas-microsoft-com:office:office"
_X = "urn:schemas-microsoft-com:office:excel"
_X14 = "http://schemas.microsoft.com/office/spreadsheetml/2009/9/main"
_ASVG = "http://schemas.microsoft.com/office/drawing/2016/SVG/main"
_OLE_GRAPHIC_URIS = frozenset(
    {
        "http://schemas.openxmlformats.org/presentationml/2006/ole",
        "http://purl.oclc.org/ooxml/presentationml/ole",
    }
)

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SAFE_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_DDE = re.compile(r"(?<![A-Za-z0-9_])DDE(?:AUTO)?(?![A-Za-z0-9_])", re.IGNORECASE)
_EXTERNAL_FIELDS = frozenset({"INCLUDETEXT", "INCLUDE", "INCLUDEPICTURE", "IMPORT", "LINK", "RD", "DATABASE"})
_AUTO_NAME = re.compile(r"^(?:_xlnm\.)?auto_(?:open|close|activate|deactivate)", re.IGNORECASE)
_EXTERNAL_BOOK_REF = re.compile(r"\[\d+\]")
_STRING_LITERAL = re.compile(r'"(?:[^"]|"")*"')
_DANGEROUS_ACTIONS = ("ppaction://program", "ppaction://macro", "ppaction://ole")
_XML_DECL_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_PART_NAME_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")

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
        def positive(key: str, default: int) -> int:
            value = args.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"bad argument {key}")
            return value

        return cls(
            max_members=positive("max_members", DEFAULT_MAX_MEMBERS),
            max_total_bytes=positive("max_total_bytes", DEFAULT_MAX_TOTAL_BYTES),
            max_xml_bytes=positive("max_xml_bytes", DEFAULT_MAX_XML_BYTES),
            max_ratio=positive("max_ratio", DEFAULT_MAX_RATIO),
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


# -- the wire format ---------------------------------------------------------------------------


# -- entry point -------------------------------------------------------------------------------


def main(data: bytes, args: dict[str, Any]) -> bytes:
    caps = Caps.from_args(args)
    hyperlinks = args.get("hyperlinks", "unlink")
    if hyperlinks not in ("keep", "unlink"):
        raise ValueError("bad argument hyperlinks")
    try:
        if data.startswith(OLE_MAGIC):
            probe = probe_ole(data)
            raise HeldError(probe.reason, probe.detail, probe.application, probe.removed)
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise PackageRejected("neither an OOXML package nor an OLE file")
        result = Disarm(data, caps, keep_hyperlinks=hyperlinks == "keep").run()
    except HeldError as held:
        held_header: dict[str, Any] = {"status": "held", "reason": held.reason, "detail": held.detail[:500]}
        if held.application is not None:
            held_header["application"] = held.application
            held_header["removed"] = held.removed
        return pack_result(held_header)
    header = {
        "status": "ok",
        "content_type": result.content_type,
        "extension": result.extension,
        "kind": result.kind,
        "source_type": result.source_type,
        "parts": result.parts,
        "removed": dict(sorted((k, v) for k, v in result.removed.items() if v)),
    }
    return pack_result(header, result.data)


# -- OLE files: held, with the right reason ----------------------------------------------------


class OleProbe(NamedTuple):
    """What the sandbox tells about an OLE file (it is never converted here)."""

    reason: str  # "encrypted" | "legacy-office"
    detail: str
    application: str  # "word" | "excel" | "powerpoint" | "" (another OLE file, or unreadable)
    removed: dict[str, int]  # what a conversion to pictures leaves behind: VBA projects, macro sheets...


def probe_ole(data: bytes) -> OleProbe:
    import olefile  # type: ignore[import-untyped]  # comes with oletools; no type information

    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            return _ole_probe(ole)
    except Exception as exc:  # noqa: BLE001 - unreadable is still a legacy file to hold, never a pass
        return OleProbe("legacy-office", f"OLE file not readable ({type(exc).__name__})", "", {})


def _ole_probe(ole: Any) -> OleProbe:
    if ole.exists("EncryptionInfo") or ole.exists("EncryptedPackage"):
        return OleProbe("encrypted", "an Office package encrypted with a password (MS-OFFCRYPTO)", "", {})
    removed = _ole_inventory(ole)
    if ole.exists("WordDocument"):
        fib = _read_stream(ole, "WordDocument", 12)
        if len(fib) >= 12 and struct.unpack_from("<H", fib, 10)[0] & 0x0100:  # FibBase.fEncrypted
            return OleProbe("encrypted", "a Word 97-2003 document encrypted with a password", "word", {})
        return OleProbe("legacy-office", "a Word 97-2003 document", "word", removed)
    for stream in ("Workbook", "Book"):
        if ole.exists(stream):
            records = _biff_globals(_read_stream(ole, stream, 256 * 1024))
            if any(rtype == 0x002F for rtype, _ in records):  # FILEPASS
                return OleProbe(
                    "encrypted", "an Excel 97-2003 workbook encrypted with a password", "excel", {}
                )
            # BOUNDSHEET: lbPlyPos (4), hsState (1), dt (1): 1 is an Excel 4 macro sheet.
            sheets = sum(1 for rtype, body in records if rtype == 0x0085 and len(body) > 5 and body[5] == 1)
            if sheets:
                removed["xlm-macrosheet"] = sheets
            return OleProbe("legacy-office", "an Excel 97-2003 workbook", "excel", removed)
    if ole.exists("PowerPoint Document"):
        user = _read_stream(ole, "Current User", 64) if ole.exists("Current User") else b""
        # CurrentUserAtom.headerToken: 0xF3D1C4DF when the presentation is encrypted.
        token = struct.unpack_from("<I", user, 12)[0] if len(user) >= 16 else 0
        if ole.exists("EncryptedSummary") or token == 0xF3D1C4DF:
            detail = "a PowerPoint 97-2003 presentation encrypted with a password"
            return OleProbe("encrypted", detail, "powerpoint", {})
        return OleProbe("legacy-office", "a PowerPoint 97-2003 presentation", "powerpoint", removed)
    return OleProbe("legacy-office", "an OLE compound file (not Word, Excel or PowerPoint)", "", {})


def _ole_inventory(ole: Any) -> dict[str, int]:
    """VBA projects (a storage holding ``VBA/dir``) and embedded OLE objects (Word's ObjectPool
    entries, Excel's MBD storages), by the storage names alone. PowerPoint 97 keeps both inside its
    main stream: not counted."""
    paths = [tuple(p) for p in ole.listdir(streams=True, storages=True)]
    projects = {p[:-2] for p in paths if len(p) >= 2 and p[-1].lower() == "dir" and p[-2].upper() == "VBA"}
    objects = {p[:2] for p in paths if len(p) >= 2 and p[0] == "ObjectPool"}
    objects |= {p[:1] for p in paths if p[0].upper().startswith("MBD") and len(p) >= 2}
    counts = {"vba-project": len(projects), "ole-embedding": len(objects)}
    return {kind: n for kind, n in counts.items() if n}


def _read_stream(ole: Any, name: str, size: int) -> bytes:
    with ole.openstream(name) as stream:
        data = stream.read(size)
    return bytes(data)


def _biff_globals(data: bytes) -> list[tuple[int, bytes]]:
    """The records of a BIFF stream's workbook globals substream (up to its EOF record)."""
    records: list[tuple[int, bytes]] = []
    pos = 0
    for _ in range(10_000):
        if pos + 4 > len(data):
            break
        rtype, length = struct.unpack_from("<HH", data, pos)
        records.append((rtype, data[pos + 4 : pos + 4 + length]))
        if rtype == 0x000A and pos:  # EOF of the globals substream
            break
        pos += 4 + length
    return records


# -- XML ---------------------------------------------------------------------------------------


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def parse_xml(data: bytes, name: str) -> etree._Element:
    """Parse one hostile XML part; raise PackageRejected for anything OOXML does not allow."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff", b"<\x00", b"\x00<")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise PackageRejected(f"{name}: undecodable UTF-16") from None
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise PackageRejected(f"{name}: XML with a DTD")
    else:
        if b"\x00" in data:
            raise PackageRejected(f"{name}: NUL bytes in UTF-8 XML")
        if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
            raise PackageRejected(f"{name}: XML with a DTD")
        declared = _XML_DECL_ENCODING.match(data.removeprefix(b"\xef\xbb\xbf"))
        if declared and declared.group(1).lower() not in (b"utf-8", b"utf8", b"utf-16", b"utf16"):
            raise PackageRejected(f"{name}: XML encoding {declared.group(1).decode('ascii')!r}")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise PackageRejected(f"{name}: not well-formed XML ({exc})") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise PackageRejected(f"{name}: XML with a DTD")
    if next(root.iter(etree.Entity), None) is not None:
        raise PackageRejected(f"{name}: XML with entity references")
    return root


def serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True, standalone=True)


def _ns(el: etree._Element) -> str:
    tag = el.tag
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _local(el: etree._Element) -> str:
    tag = el.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _is(el: etree._Element, namespaces: frozenset[str] | str, *names: str) -> bool:
    ns = _ns(el)
    in_ns = ns in namespaces if isinstance(namespaces, frozenset) else ns == namespaces
    return in_ns and _local(el) in names


def _attr(el: etree._Element, name: str) -> str | None:
    """An attribute in the element's own namespace (w:val on a w: element...)."""
    return el.get(f"{{{_ns(el)}}}{name}")


def _split(attr: str) -> tuple[str, str]:
    if attr.startswith("{"):
        ns, local = attr[1:].split("}", 1)
        return ns, local
    return "", attr


def _drop(el: etree._Element) -> None:
    """Remove an element, keeping any text that followed it."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail and el.tail.strip():
        previous = el.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _tags(namespaces: frozenset[str] | str, *names: str) -> tuple[str, ...]:
    """Clark names for ``root.iter(*tags)``: lxml then filters in C, not element by element in Python."""
    spaces = sorted(namespaces) if isinstance(namespaces, frozenset) else [namespaces]
    return tuple(f"{{{ns}}}{name}" for ns in spaces for name in names)


def _find(root: etree._Element, tags: tuple[str, ...]) -> list[etree._Element]:
    return list(root.iter(*tags))


def _any(root: etree._Element, tags: tuple[str, ...]) -> bool:
    return next(root.iter(*tags), None) is not None


_W_OBJECT = _tags(_W, "object")
_P_GRAPHIC_FRAME = _tags(_P, "graphicFrame")
_OBJECT_MARKUP = (
    *_tags(_O, "OLEObject"),
    *_tags(_W, "control", "objectEmbed", "objectLink"),
    *_tags(_P, "controls", "control", "oleObj"),
    *_tags(_S, "oleObjects", "controls"),
)
_VML_ANY = (f"{{{_V}}}*", f"{{{_O}}}*", f"{{{_X}}}*")
_O_OLE = f"{{{_O}}}ole"
_W_FIELD_EVENTS = _tags(_W, "fldChar", "instrText", "delInstrText", "fldSimple")
_W_ANY = tuple(f"{{{ns}}}*" for ns in sorted(_W))
_W_RUN = frozenset(_tags(_W, "r"))
_W_FLDCHAR = frozenset(_tags(_W, "fldChar"))
_W_INSTR = frozenset(_tags(_W, "instrText", "delInstrText"))
_W_FLDSIMPLE = frozenset(_tags(_W, "fldSimple"))
_W_TEXT = frozenset(_tags(_W, "t", "delText"))
_W_RPR = frozenset(_tags(_W, "rPr"))
_W_FLDDATA = frozenset(_tags(_W, "fldData"))
_W_MAIL_MERGE = _tags(_W, "mailMerge")
_W_UPDATE_FIELDS = _tags(_W, "updateFields")
_W_FORM_MACROS = _tags(_W, "entryMacro", "exitMacro")
_S_FORMULA = _tags(_S, "f")
_S_DEFINED_NAME = _tags(_S, "definedName")
_S_WORKBOOK_VIEW = _tags(_S, "workbookView")
_XDR_ANY = tuple(f"{{{ns}}}*" for ns in sorted(_XDR))
_X14_FORM_CONTROL = (f"{{{_X14}}}formControlPr",)
_X_FMLA_MACRO = (f"{{{_X}}}FmlaMacro",)
_ASVG_BLIP = (f"{{{_ASVG}}}svgBlip",)
_A_LINKS = _tags(_A, "hlinkClick", "hlinkHover", "hlinkMouseOver")
# Elements with an attribute that names a relationship: r:* in either namespace, or VML's o:relid.
_REFERENCING = etree.XPath(
    "//*[@*[namespace-uri() = $r1 or namespace-uri() = $r2"
    " or (namespace-uri() = $o and local-name() = 'relid')]]"
)


def _scheme(url: str) -> str | None:
    match = _URL_SCHEME.match(url.strip())
    return match.group(0)[:-1].lower() if match else None


# -- the package -------------------------------------------------------------------------------


@dataclass
class _Rel:
    rid: str
    type: str
    target: str
    external: bool

    @property
    def kind(self) -> str:
        """The last segment of the type URI ("hyperlink", "oleObject"...): the same in strict OOXML."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class Result:
    data: bytes
    content_type: str
    extension: str
    kind: str
    source_type: str
    parts: int
    removed: Counter[str]


def _key(name: str) -> str:
    """OPC part names compare case-insensitively, percent-encoding aside."""
    return unquote(name).casefold()


def _rels_name(source: str) -> str:
    if not source:
        return "_rels/.rels"
    directory, _, base = source.rpartition("/")
    return f"{directory}/_rels/{base}.rels" if directory else f"_rels/{base}.rels"


_RELS_PATH = re.compile(r"^(?:(.*)/)?_rels/([^/]*)\.rels$", re.IGNORECASE)


def _source_of_rels(name: str) -> str | None:
    """The part a .rels part describes ("" for the package), None if the name is not a rels part."""
    match = _RELS_PATH.match(name)
    if match is None:
        return None
    directory, base = match.group(1) or "", match.group(2)
    if not base:
        return "" if not directory else None
    return f"{directory}/{base}" if directory else base


def _check_part_name(name: str) -> None:
    if not name or len(name) > 1024 or name.startswith("/") or _PART_NAME_FORBIDDEN.search(name):
        raise PackageRejected(f"part name refused: {name[:80]!r}")
    decoded = unquote(name)
    if _PART_NAME_FORBIDDEN.search(decoded) or decoded.count("/") != name.count("/"):
        raise PackageRejected(f"part name with an encoded separator or control character: {name[:80]!r}")
    for segment in name.split("/"):
        if not segment or segment in (".", "..") or segment.endswith("."):
            raise PackageRejected(f"part name refused: {name[:80]!r}")


def read_members(data: bytes, caps: Caps) -> list[tuple[str, bytes]]:
    """The members of the zip, in order, with every cap enforced on the bytes actually inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise PackageRejected(f"not a readable zip ({exc})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > caps.max_members:
            raise HeldError("limit-exceeded", f"{len(infos)} zip members, more than {caps.max_members}")
        ordered = sorted(infos, key=lambda i: i.header_offset)
        for first, second in itertools.pairwise(ordered):
            if first.header_offset + 30 + first.compress_size > second.header_offset:
                raise PackageRejected("overlapping zip members")
        declared = sum(i.file_size for i in infos)
        if declared > caps.max_total_bytes:
            raise HeldError("limit-exceeded", f"{declared} bytes uncompressed, over {caps.max_total_bytes}")
        members: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            if name.endswith("/"):
                if info.file_size:
                    raise PackageRejected("a directory entry with data")
                continue
            _check_part_name(name)
            key = _key(name)
            if key in seen:
                raise PackageRejected(f"duplicate part name {name[:80]!r}")
            seen.add(key)
            if info.flag_bits & 0x1:
                raise PackageRejected("an encrypted zip member")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise PackageRejected(f"zip compression method {info.compress_type}")
            chunks: list[bytes] = []
            size = 0
            try:
                with archive.open(info) as handle:
                    while chunk := handle.read(_CHUNK):
                        size += len(chunk)
                        if total + size > caps.max_total_bytes:
                            raise HeldError("limit-exceeded", f"over {caps.max_total_bytes} bytes inflated")
                        chunks.append(chunk)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise PackageRejected(f"zip member {name[:80]!r} unreadable ({exc})") from None
            if size > _RATIO_FLOOR and size > caps.max_ratio * max(info.compress_size, 1):
                raise HeldError("limit-exceeded", f"compression ratio over {caps.max_ratio} ({name[:80]!r})")
            total += size
            members.append((name, b"".join(chunks)))
    return members


# Kinds of removed parts counted only when something referred to them; the others always are.
_COUNTED_IF_REFERENCED = frozenset(
    {"unknown-part", "printer-settings", "svg-image", "signature", "vml-drawing"}
)
_HYPERLINK_ELEMENTS = frozenset({"hyperlink", "hlinkClick", "hlinkHover", "hlinkMouseOver"})

# Elements that stay when the relationship they name is removed (the reference alone goes);
# media elements whose r:link is removed go whole (the attribute is required there).
_KEEP_WITHOUT_REFERENCE = frozenset(
    {"hyperlink", "hlinkClick", "hlinkHover", "hlinkMouseOver", "blip", "imagedata", "fill", "stroke"}
)
_LINKED_MEDIA = frozenset({"videoFile", "audioFile", "quickTimeFile", "wavAudioFile", "media"})


class Disarm:
    """One package, rebuilt. ``run()`` returns the new package or raises."""

    def __init__(self, data: bytes, caps: Caps, *, keep_hyperlinks: bool) -> None:
        self.data = data
        self.caps = caps
        self.keep_hyperlinks = keep_hyperlinks
        self.parts: dict[str, bytes] = {}  # name -> bytes, in the zip's order (rels parts excluded)
        self.by_key: dict[str, str] = {}  # _key(name) -> name
        self.defaults: dict[str, str] = {}  # extension (casefolded) -> content type
        self.overrides: dict[str, str] = {}  # _key(part name) -> content type
        self.rels: dict[str, list[_Rel]] = {}  # source part ("" = package) -> relationships
        self.rels_order: dict[str, int] = {}
        self.removed: dict[str, str] = {}  # part name -> kind ("" = not counted)
        self.removed_ids: dict[str, set[str]] = {}  # source part -> relationship ids removed
        self.kept_rels: dict[str, list[tuple[_Rel, str | None]]] = {}
        self.external_removed: dict[str, list[str]] = {}  # source part -> kinds of external rels removed
        self.counts: Counter[str] = Counter()
        self.main = ""

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> Result:
        members = read_members(self.data, self.caps)
        self._load(members)
        source_type, plain_type = self._main_type()
        kind, mime, extension = MAIN_TYPES[plain_type]
        self._classify()
        self._check_vml()
        self._prune_relationships()
        self._collect_garbage()
        self._count_removed_parts()
        written: list[tuple[str, bytes]] = []
        for name, data in self.parts.items():
            if name in self.removed:
                continue
            ctype = self.content_type(name)
            if ctype is not None and _is_xml_type(ctype):
                root = parse_xml(self._xml_bytes(name, data), name)
                self._transform(name, root, is_main=name == self.main and kind == "excel")
                data = serialize(root)
            written.append((name, data))
        for source in self._rels_sources():
            rels = self.kept_rels.get(source, [])
            if rels:
                written.append((_rels_name(source), self._serialize_rels(rels)))
        content_types = self._serialize_content_types([n for n, _ in written if n in self.parts], plain_type)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
            out.writestr(_zip_info("[Content_Types].xml"), content_types)
            for name, data in sorted(written, key=lambda item: self._order(item[0])):
                out.writestr(_zip_info(name), data)
        package = buffer.getvalue()
        verify(package, keep_hyperlinks=self.keep_hyperlinks)
        return Result(package, mime, extension, kind, source_type, len(written) + 1, self.counts)

    def _order(self, name: str) -> tuple[int, int]:
        """Root relationships first, then the parts in their original order, each followed by its rels."""
        if name == "_rels/.rels":
            return (0, 0)
        return (1, self.rels_order.get(name, 0))

    def _load(self, members: list[tuple[str, bytes]]) -> None:
        content_types: bytes | None = None
        rels_parts: list[tuple[str, bytes]] = []
        for position, (name, data) in enumerate(members):
            self.rels_order[name] = position * 2
            if name == "[Content_Types].xml":
                content_types = data
            elif _source_of_rels(name) is not None:
                rels_parts.append((name, data))
            elif _key(name) == _key("[Content_Types].xml"):
                raise PackageRejected("a second [Content_Types].xml")
            else:
                self.parts[name] = data
                self.by_key[_key(name)] = name
        if content_types is None:
            raise PackageRejected("no [Content_Types].xml: not an OOXML package")
        self._load_content_types(content_types)
        for name, data in rels_parts:
            source = _source_of_rels(name)
            assert source is not None
            if source and _key(source) not in self.by_key:
                continue  # relationships of a part that does not exist: dropped
            source = self.by_key.get(_key(source), source)
            if source in self.rels:
                raise PackageRejected(f"two relationship parts for {source[:80]!r}")
            self.rels[source] = self._parse_rels(name, data)
            self.rels_order[_rels_name(source)] = self.rels_order.get(source, -1) + 1

    def _load_content_types(self, data: bytes) -> None:
        root = parse_xml(data, "[Content_Types].xml")
        if root.tag != f"{{{_CT_NS}}}Types":
            raise PackageRejected("[Content_Types].xml is not a Types element")
        for el in root:
            if el.tag == f"{{{_CT_NS}}}Default":
                ext, ctype = el.get("Extension"), el.get("ContentType")
                if ext and ctype:
                    self.defaults[ext.casefold()] = ctype.strip()
            elif el.tag == f"{{{_CT_NS}}}Override":
                part, ctype = el.get("PartName"), el.get("ContentType")
                if part and ctype:
                    self.overrides[_key(part.lstrip("/"))] = ctype.strip()

    def _parse_rels(self, name: str, data: bytes) -> list[_Rel]:
        root = parse_xml(data, name)
        if root.tag != f"{{{_RELS_NS}}}Relationships":
            raise PackageRejected(f"{name}: not a Relationships element")
        rels: list[_Rel] = []
        ids: set[str] = set()
        for el in root:
            if el.tag != f"{{{_RELS_NS}}}Relationship":
                continue
            rid, rtype, target = el.get("Id"), el.get("Type"), el.get("Target")
            if not rid or rtype is None or target is None:
                raise PackageRejected(f"{name}: a relationship without Id, Type or Target")
            if rid in ids:
                raise PackageRejected(f"{name}: duplicate relationship id {rid[:40]!r}")
            ids.add(rid)
            external = (el.get("TargetMode") or "Internal").strip().casefold() == "external"
            rels.append(_Rel(rid, rtype.strip(), target, external))
        return rels

    def content_type(self, name: str) -> str | None:
        ctype = self.overrides.get(_key(name))
        if ctype is None:
            base = name.rsplit("/", 1)[-1]
            if "." in base:
                ctype = self.defaults.get(base.rsplit(".", 1)[1].casefold())
        return ctype

    def resolve(self, source: str, rel: _Rel) -> str | None:
        """The part an internal relationship points at, None when there is no such part."""
        target = rel.target.strip()
        if not target or "\\" in target or _URL_SCHEME.match(target) or "#" in target:
            return None
        path = unquote(target)
        joined = path.lstrip("/") if path.startswith("/") else posixpath.join(posixpath.dirname(source), path)
        normal = posixpath.normpath(joined)
        if normal in (".", "..") or normal.startswith("../"):
            return None
        return self.by_key.get(_key(normal))

    def _main_type(self) -> tuple[str, str]:
        mains = [r for r in self.rels.get("", []) if r.kind == "officeDocument" and not r.external]
        if len(mains) != 1:
            raise PackageRejected("not exactly one main document relationship")
        main = self.resolve("", mains[0])
        if main is None:
            raise PackageRejected("the main document part is missing")
        self.main = main
        source_type = (self.content_type(main) or "").lower()
        plain = MACRO_MAIN_TYPES.get(source_type, source_type)
        if plain not in MAIN_TYPES:
            if "binary" in source_type:
                raise HeldError("unsupported-type", "an Excel binary workbook (xlsb)")
            raise HeldError("unsupported-type", f"an OPC package of type {source_type[:100]!r}")
        return source_type, plain

    def _incoming(self) -> dict[str, set[str]]:
        """Part name -> the kinds of the relationships pointing at it (from any source)."""
        incoming: dict[str, set[str]] = {}
        for source, rels in self.rels.items():
            for rel in rels:
                if not rel.external:
                    target = self.resolve(source, rel)
                    if target is not None:
                        incoming.setdefault(target, set()).add(rel.kind.casefold())
        return incoming

    def _classify(self) -> None:
        incoming = self._incoming()
        for name, data in self.parts.items():
            kind = _classify_part(name, self.content_type(name), incoming.get(name, set()), data)
            if kind is not None:
                self.removed[name] = kind

    def _check_vml(self) -> None:
        """VML drawings that are not well-formed XML are dropped (Office writes some that are not)."""
        for name, data in self.parts.items():
            if name in self.removed or (self.content_type(name) or "").lower() != _VML_TYPE:
                continue
            try:
                parse_xml(self._xml_bytes(name, data), name)
            except PackageRejected:
                self.removed[name] = "vml-drawing"

    def _prune_relationships(self) -> None:
        for source, rels in self.rels.items():
            if source and source in self.removed:
                continue
            kept: list[tuple[_Rel, str | None]] = []
            gone = self.removed_ids.setdefault(source, set())
            for rel in rels:
                if rel.external:
                    verdict = self._external_verdict(rel)
                    if verdict is None:
                        kept.append((rel, None))
                    else:
                        self.external_removed.setdefault(source, []).append(verdict)
                        gone.add(rel.rid)
                    continue
                target = self.resolve(source, rel)
                if target is None or target in self.removed or rel.kind.casefold() == "attachedtemplate":
                    gone.add(rel.rid)
                    continue
                kept.append((rel, target))
            self.kept_rels[source] = kept

    def _external_verdict(self, rel: _Rel) -> str | None:
        """None to keep an external relationship, else the kind it is counted as."""
        if rel.kind.casefold() != "hyperlink":
            return "external-link"
        return self._link_verdict(rel.target)

    def _link_verdict(self, url: str) -> str | None:
        if _scheme(url) not in _SAFE_LINK_SCHEMES:
            return "external-link"
        return None if self.keep_hyperlinks else "hyperlink"

    def _collect_garbage(self) -> None:
        """Remove the parts no kept relationship reaches from the package root."""
        reached: set[str] = set()
        todo = [""]
        while todo:
            source = todo.pop()
            for _, target in self.kept_rels.get(source, []):
                if target is not None and target not in reached and target not in self.removed:
                    reached.add(target)
                    todo.append(target)
        for name in self.parts:
            if name not in reached and name not in self.removed:
                self.removed[name] = ""
        # Relationships whose target was only now found unreachable cannot exist: a kept source's
        # kept targets are reached by construction. Sources removed here lose their rels with them.
        for source in list(self.kept_rels):
            if source and source in self.removed:
                del self.kept_rels[source]
        if self.main in self.removed:
            raise PackageRejected(f"the main part {self.main[:80]!r} is itself something to remove")

    def _count_removed_parts(self) -> None:
        """The counts for the report: removed parts by kind, and the external relationships removed."""
        # Leftovers nothing points at (Office's [trash]/ folder...) are not worth a line in the notice.
        referenced = self._incoming()
        for name, kind in self.removed.items():
            if kind in _COUNTED_IF_REFERENCED and name not in referenced:
                self.removed[name] = ""
        for source, verdicts in self.external_removed.items():
            if source in self.kept_rels:  # the source part stays: its external links were real
                self.counts.update(verdicts)
        kinds = Counter(self.removed.values())
        for kind, count in kinds.items():
            if kind and kind != "activex-binary":
                self.counts[kind] += count
        if not kinds["activex"] and kinds["activex-binary"]:
            self.counts["activex"] += kinds["activex-binary"]
        for name, kind in self.removed.items():
            if kind == "external-link" and _has_dde_link(self.parts[name], name):
                self.counts["external-link"] -= 1
                self.counts["dde"] += 1

    def _rels_sources(self) -> list[str]:
        return [s for s in self.kept_rels if s == "" or (s in self.parts and s not in self.removed)]

    def _xml_bytes(self, name: str, data: bytes) -> bytes:
        if len(data) > self.caps.max_xml_bytes:
            raise HeldError("limit-exceeded", f"{name[:80]!r}: XML over {self.caps.max_xml_bytes} bytes")
        return data

    # -- writing -----------------------------------------------------------------------------

    def _serialize_rels(self, rels: list[tuple[_Rel, str | None]]) -> bytes:
        root = etree.Element(f"{{{_RELS_NS}}}Relationships", nsmap={None: _RELS_NS})
        for rel, _ in rels:
            attrs = {"Id": rel.rid, "Type": rel.type, "Target": rel.target}
            if rel.external:
                attrs["TargetMode"] = "External"
            etree.SubElement(root, f"{{{_RELS_NS}}}Relationship", attrs)
        return serialize(root)

    def _serialize_content_types(self, names: list[str], plain_main: str) -> bytes:
        root = etree.Element(f"{{{_CT_NS}}}Types", nsmap={None: _CT_NS})
        defaults = {"rels": _RELS_CT, "xml": "application/xml"}
        overrides: list[tuple[str, str]] = []
        for name in names:
            ctype = self.content_type(name)
            if ctype is None:
                raise PackageRejected(f"{name[:80]!r} has no content type")
            if name == self.main:
                ctype = plain_main
            base = name.rsplit("/", 1)[-1]
            ext = base.rsplit(".", 1)[1].casefold() if "." in base else ""
            from_default = bool(ext) and _key(name) not in self.overrides and self.defaults.get(ext) == ctype
            if from_default and defaults.get(ext, ctype) == ctype:
                defaults[ext] = ctype
            else:
                overrides.append(("/" + name, ctype))
        for ext, ctype in defaults.items():
            etree.SubElement(root, f"{{{_CT_NS}}}Default", {"Extension": ext, "ContentType": ctype})
        for part, ctype in overrides:
            etree.SubElement(root, f"{{{_CT_NS}}}Override", {"PartName": part, "ContentType": ctype})
        return serialize(root)

    # -- the XML transforms ------------------------------------------------------------------

    def _transform(self, name: str, root: etree._Element, *, is_main: bool) -> None:
        self._objects(root)
        if _any(root, _W_FIELD_EVENTS):
            self._word_fields(root)
        self._word_settings(root)
        if is_main:
            self._workbook(root, self.removed_ids.get(name, set()))
        if _is(root, _S, "worksheet"):
            self.counts["dde"] += _external_formulas(root)
        self._drawing_and_vml(root)
        self._dangling_references(root, self.removed_ids.get(name, set()))
        self._misused_hyperlinks(root, name)
        _empty_containers(root)

    def _objects(self, root: etree._Element) -> None:
        """OLE objects and ActiveX controls out of the markup, their preview pictures kept."""
        for el in _find(root, _W_OBJECT):
            _word_object_to_picture(el)
        for el in _find(root, _P_GRAPHIC_FRAME):
            _ppt_ole_frame_to_picture(el)
        for el in _find(root, _OBJECT_MARKUP):
            _drop(el)
        for el in root.iter(f"{{{_V}}}*"):
            if _O_OLE in el.attrib:
                del el.attrib[_O_OLE]

    def _word_fields(self, root: etree._Element) -> None:
        fields, simple = _collect_fields(root)
        removed: set[int] = set()
        for fld in fields:
            if any(id(a) in removed and inside for a, inside in fld.ancestors()):
                removed.add(id(fld))  # went with an enclosing field's instruction
                continue
            kind = self._field_kind(fld.instruction(), "".join(fld.text) + fld.decoded, fld.starts_nested)
            if kind is None:
                continue
            self.counts[kind] += 1
            removed.add(id(fld))
            for el in (fld.begin, *fld.zone, fld.separate, fld.end):
                if el is not None:
                    _drop(el)
        for el in simple:
            parent = el.getparent()
            if parent is None:
                continue
            instr = _attr(el, "instr") or ""
            kind = self._field_kind(instr, instr, starts_nested=False)
            if kind is None:
                continue
            self.counts[kind] += 1
            position = parent.index(el)
            for child in list(el):
                if child.tag in _W_FLDDATA:
                    continue
                parent.insert(position, child)
                position += 1
            _drop(el)

    def _field_kind(self, instruction: str, everything: str, starts_nested: bool) -> str | None:
        if _DDE.search(everything):
            return "dde"
        if starts_nested:
            return "obfuscated-field"
        keyword, args = _field_keyword(instruction)
        if keyword in ("DDE", "DDEAUTO"):
            return "dde"
        if keyword in _EXTERNAL_FIELDS:
            return "external-link"
        if keyword == "MACROBUTTON":
            return "macro-binding"
        if keyword == "HYPERLINK":
            target = _hyperlink_field_target(args)
            return None if target is None else self._link_verdict(target)
        return None

    def _word_settings(self, root: etree._Element) -> None:
        for el in _find(root, _W_MAIL_MERGE):
            self.counts["mail-merge"] += 1
            _drop(el)
        for el in _find(root, _W_UPDATE_FIELDS):
            _drop(el)
        for el in _find(root, _W_FORM_MACROS):
            if (_attr(el, "val") or "").strip():
                self.counts["macro-binding"] += 1
            _drop(el)

    def _workbook(self, root: etree._Element, gone: set[str]) -> None:
        """Sheets whose part was removed go, with the names and indices that refer to them."""
        if not _is(root, _S, "workbook"):
            return
        sheets_el = next((c for c in root if _is(c, _S, "sheets")), None)
        sheets = [c for c in sheets_el if _is(c, _S, "sheet")] if sheets_el is not None else []
        removed_positions: set[int] = set()
        removed_names: set[str] = set()
        for position, sheet in enumerate(sheets):
            if any(_split(k)[0] in _R and v in gone for k, v in sheet.attrib.items()):
                removed_positions.add(position)
                removed_names.add((sheet.get("name") or "").casefold())
                _drop(sheet)
        kept = [s for i, s in enumerate(sheets) if i not in removed_positions]
        if sheets and not kept:
            raise PackageRejected("no worksheet left in the workbook")
        survivors = [i for i in range(len(sheets)) if i not in removed_positions]
        renumber = {old: new for new, old in enumerate(survivors)}
        for sheet in kept:
            if sheet.get("state") == "veryHidden":
                sheet.set("state", "hidden")
                self.counts["very-hidden-sheet"] += 1
        if kept and all(s.get("state") in ("hidden", "veryHidden") for s in kept):
            del kept[0].attrib["state"]
        for el in _find(root, _S_DEFINED_NAME):
            self._defined_name(el, removed_names, renumber)
        for el in _find(root, _S_WORKBOOK_VIEW):
            for attr in ("activeTab", "firstSheet"):
                value = el.get(attr)
                if value is not None and value.isdigit():
                    el.set(attr, str(renumber.get(int(value), 0)))

    def _defined_name(self, el: etree._Element, removed_sheets: set[str], renumber: dict[int, int]) -> None:
        name = el.get("name") or ""
        if _AUTO_NAME.match(name):
            self.counts["auto-macro"] += 1
            _drop(el)
            return
        local = el.get("localSheetId")
        if local is not None:
            if not local.isdigit() or int(local) not in renumber:
                _drop(el)
                return
            el.set("localSheetId", str(renumber[int(local)]))
        formula = _STRING_LITERAL.sub("", el.text or "").casefold()
        quoted = {"'" + sheet.replace("'", "''") + "'!" for sheet in removed_sheets if sheet}
        plain = {sheet + "!" for sheet in removed_sheets if sheet}
        if "|" in formula:
            self.counts["dde"] += 1
            _drop(el)
        elif _EXTERNAL_BOOK_REF.search(formula) or any(ref in formula for ref in quoted | plain):
            _drop(el)

    def _drawing_and_vml(self, root: etree._Element) -> None:
        for el in root.iter(*_XDR_ANY):
            if "macro" in el.attrib:
                if el.attrib["macro"].strip():
                    self.counts["macro-binding"] += 1
                del el.attrib["macro"]
        for el in root.iter(*_X14_FORM_CONTROL):
            if "fmlaMacro" in el.attrib:
                if el.attrib["fmlaMacro"].strip():
                    self.counts["macro-binding"] += 1
                del el.attrib["fmlaMacro"]
        for el in _find(root, _X_FMLA_MACRO):
            if (el.text or "").strip():
                self.counts["macro-binding"] += 1
            _drop(el)
        for el in _find(root, _ASVG_BLIP):
            parent = el.getparent()
            _drop(parent if parent is not None and _local(parent) == "ext" else el)
        for el in _find(root, _A_LINKS):
            if (el.get("action") or "").strip().lower().startswith(_DANGEROUS_ACTIONS):
                self.counts["action"] += 1
                _drop(el)
        for el in root.iter(*_VML_ANY):
            for attr in list(el.attrib):
                if _split(attr)[1] not in ("src", "href"):
                    continue
                value = el.attrib[attr].strip()
                if not (_URL_SCHEME.match(value) or value.startswith(("\\\\", "//"))):
                    continue
                # A plain href is a shape's hyperlink; src and o:href name a picture to fetch.
                verdict = self._link_verdict(value) if attr == "href" else "external-link"
                if verdict is not None:
                    self.counts[verdict] += 1
                    del el.attrib[attr]

    def _misused_hyperlinks(self, root: etree._Element, name: str) -> None:
        """A kept web link is for hyperlink elements only: anything else naming it (an attachedTemplate,
        a picture, a subdocument pointing at a relationship typed "hyperlink") goes."""
        links = {rel.rid for rel, _ in self.kept_rels.get(name, []) if rel.external}
        if not links:
            return
        r1, r2 = sorted(_R)
        found = _REFERENCING(root, r1=r1, r2=r2, o=_O)
        assert isinstance(found, list)
        for el in found:
            if not isinstance(el, etree._Element) or _local(el) in _HYPERLINK_ELEMENTS:
                continue
            if any(value in links for attr, value in el.attrib.items() if _split(attr)[0] in _R):
                self.counts["external-link"] += 1
                _drop(el)

    def _dangling_references(self, root: etree._Element, gone: set[str]) -> None:
        """Elements that refer to a removed relationship lose the reference, or go."""
        if not gone:
            return
        r1, r2 = sorted(_R)
        found = _REFERENCING(root, r1=r1, r2=r2, o=_O)
        assert isinstance(found, list)
        for el in found:
            if not isinstance(el, etree._Element):
                continue
            for attr, value in list(el.attrib.items()):
                ns, local = _split(attr)
                if not ((ns in _R) or (ns == _O and local == "relid")) or value not in gone:
                    continue
                el_local = _local(el)
                if local == "link" and el_local not in _LINKED_MEDIA:
                    del el.attrib[attr]
                elif el_local in _KEEP_WITHOUT_REFERENCE:
                    del el.attrib[attr]
                    if _is(el, _S, "hyperlink") and el.get("location") is None:
                        _drop(el)
                        break
                else:
                    _drop(el)
                    break


# -- classification of parts -------------------------------------------------------------------


def _classify_part(name: str, ctype: str | None, incoming: set[str], data: bytes) -> str | None:
    """The kind a part is removed as ("" = removed, not counted), None to keep it."""
    low = name.lower()
    base = low.rsplit("/", 1)[-1]
    ct = (ctype or "").lower()
    if "vbaprojectsignature" in f"{ct} {base}" or any(k.startswith("vbaprojectsignature") for k in incoming):
        return ""
    if ct == "application/vnd.ms-office.vbaproject" or "vbaproject" in incoming or "vbaproject" in base:
        return "vba-project"
    if "vbadata" in ct or "wordvbadata" in incoming or "vbadata" in base:
        return ""
    customizations = {"keymapcustomizations", "attachedtoolbars"}
    if any(c in ct for c in customizations) or incoming & customizations:
        return "macro-customization"
    if "macrosheet" in ct or incoming & {"xlmacrosheet", "xlintlmacrosheet"} or "/macrosheets/" in f"/{low}":
        return "xlm-macrosheet"
    if "dialogsheet" in ct or "dialogsheet" in incoming or "/dialogsheets/" in f"/{low}":
        return "dialog-sheet"
    if ct == "application/vnd.ms-office.activex+xml":
        return "activex"
    if "activex" in ct or "/activex/" in f"/{low}" or incoming & {"control", "activexcontrolbinary"}:
        return "activex-binary"
    if "/embeddings/" in f"/{low}" or "oleobject" in ct or incoming & {"oleobject", "package"}:
        return "ole-embedding" if data.startswith(OLE_MAGIC) or "oleobject" in ct else "embedded-package"
    if "extensibility" in incoming:
        return "custom-ui"
    if low.startswith("customui/"):
        return ""
    if "externallink" in ct or "externallink" in incoming or "/externallinks/" in f"/{low}":
        return "external-link"
    if ct.endswith("spreadsheetml.connections+xml") or "connections" in incoming:
        return "data-connection"
    if "querytable" in ct or "querytable" in incoming:
        return ""
    if ct == "application/vnd.ms-office.webextension+xml" or "webextension" in incoming:
        return "web-extension"
    if "webextension" in ct or "webextensiontaskpanes" in incoming or "/webextensions/" in f"/{low}":
        return ""
    if "afchunk" in incoming:
        return "alt-chunk"
    if "printersettings" in ct or "printersettings" in incoming:
        return "printer-settings"
    if "digital-signature" in ct or "_xmlsignatures/" in low:
        return "signature" if "xmlsignature+xml" in ct else ""
    if ct == "image/svg+xml" or base.endswith((".svg", ".svgz")):
        return "svg-image"
    if data.startswith(OLE_MAGIC):
        return "ole-embedding"
    if data.startswith(ZIP_MAGIC):
        return "embedded-package"
    if not ct:
        return "unknown-part"
    if _is_xml_type(ct) or ct == _VML_TYPE:
        return None
    if ct.startswith(("image/", "audio/", "video/")) or ct in _KEPT_BINARY_TYPES:
        return None
    return "unknown-part"


def _is_xml_type(ctype: str) -> bool:
    ct = ctype.lower()
    return ct.endswith("+xml") or ct in ("application/xml", "text/xml", _VML_TYPE)


def _has_dde_link(data: bytes, name: str) -> bool:
    try:
        root = parse_xml(data, name)
    except PackageRejected:
        return False
    return _any(root, _tags(_S, "ddeLink"))


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


# -- Word fields -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Field:
    """One complex field (w:fldChar begin ... separate ... end)."""

    begin: etree._Element
    parent: _Field | None
    in_parent_instruction: bool
    own: list[str] = field(default_factory=list)  # its own w:instrText
    text: list[str] = field(default_factory=list)  # all text in its instruction, nested fields' included
    zone: list[etree._Element] = field(default_factory=list)  # everything in its instruction
    starts_nested: bool = False
    decoded: str = ""  # what nested QUOTE fields spell out
    separate: etree._Element | None = None
    end: etree._Element | None = None
    in_instruction: bool = True

    def instruction(self) -> str:
        return "".join(self.own)

    def ancestors(self) -> Iterator[tuple[_Field, bool]]:
        """(ancestor, whether this field lies in the ancestor's instruction)."""
        node: _Field = self
        while node.parent is not None:
            # Inside the ancestor's instruction exactly when the chain's child of it is.
            yield node.parent, node.in_parent_instruction
            node = node.parent


def _collect_fields(root: etree._Element) -> tuple[list[_Field], list[etree._Element]]:
    fields: list[_Field] = []
    simple: list[etree._Element] = []
    stack: list[_Field] = []
    for el in root.iter(*_W_ANY):
        tag = el.tag
        open_instructions = [f for f in stack if f.in_instruction]
        if tag in _W_FLDCHAR:
            kind = _attr(el, "fldCharType")
            if kind == "begin":
                if stack and stack[-1].in_instruction and not "".join(stack[-1].own).strip():
                    stack[-1].starts_nested = True
                for f in open_instructions:
                    f.zone.append(el)
                new = _Field(el, stack[-1] if stack else None, bool(stack) and stack[-1].in_instruction)
                stack.append(new)
                fields.append(new)
            elif kind == "separate" and stack:
                top = stack[-1]
                for f in open_instructions:
                    if f is not top:
                        f.zone.append(el)
                if top.in_instruction:
                    top.separate = el
                    top.in_instruction = False
            elif kind == "end" and stack:
                top = stack.pop()
                top.end = el
                for f in stack:
                    if f.in_instruction:
                        f.zone.append(el)
        elif tag in _W_INSTR:
            text = el.text or ""
            if stack and stack[-1].in_instruction:
                stack[-1].own.append(text)
            for f in open_instructions:
                f.text.append(text)
                f.zone.append(el)
        elif tag in _W_FLDSIMPLE:
            simple.append(el)
            for f in open_instructions:
                f.text.append(_attr(el, "instr") or "")
                f.zone.append(el)
        elif open_instructions and tag not in _W_RPR:
            parent = el.getparent()
            if parent is not None and parent.tag in _W_RUN:
                for f in open_instructions:
                    f.zone.append(el)
                    if tag in _W_TEXT:
                        f.text.append(el.text or "")
    for fld in fields:
        keyword, args = _field_keyword(fld.instruction())
        if keyword == "QUOTE" and args and all(a.isdigit() for a in args):
            spelled = "".join(chr(int(a)) for a in args if int(a) < 0x110000)
            node = fld.parent
            while node is not None:
                node.decoded += spelled
                node = node.parent
    return fields, simple


_FIELD_TOKEN = re.compile(r'"([^"]*)"|(\S+)')


def _hyperlink_field_target(args: list[str]) -> str | None:
    """The address of a HYPERLINK field (None for a jump to a bookmark only: ``\\l "name"``)."""
    expects_value = False
    for arg in args:
        if expects_value:
            expects_value = False
            continue
        if arg.startswith("\\"):
            expects_value = arg.lower() in ("\\l", "\\o", "\\t")
            continue
        return arg
    return None


def _field_keyword(instruction: str) -> tuple[str, list[str]]:
    tokens = [bare or quoted for quoted, bare in _FIELD_TOKEN.findall(instruction)]
    if not tokens:
        return "", []
    return tokens[0].upper(), tokens[1:]


# -- the other element transforms --------------------------------------------------------------


def _word_object_to_picture(obj: etree._Element) -> None:
    """w:object (an OLE object or ActiveX control in Word) -> its preview picture, or nothing."""
    parent = obj.getparent()
    if parent is None:
        return
    for child in list(obj):
        if _is(child, _O, "OLEObject") or _is(child, _W, "control", "objectEmbed", "objectLink", "movie"):
            obj.remove(child)
    drawing = next((c for c in obj if _is(c, _W, "drawing")), None)
    if drawing is not None:
        parent.replace(obj, drawing)
    elif any(_ns(c) == _V for c in obj):
        obj.tag = f"{{{_ns(obj)}}}pict"
        obj.attrib.clear()
    else:
        _drop(obj)


def _ppt_ole_frame_to_picture(frame: etree._Element) -> None:
    """An OLE p:graphicFrame -> the p:pic its fallback holds, where the frame was; else removed."""
    data = next((e for e in frame.iter() if _is(e, _A, "graphicData")), None)
    if data is None or data.get("uri") not in _OLE_GRAPHIC_URIS:
        return
    parent = frame.getparent()
    if parent is None:
        return
    picture = next((e for e in data.iter() if _is(e, _P, "pic")), None)
    if picture is None:
        _drop(frame)
        return
    pic = copy.deepcopy(picture)
    ns = _ns(frame)
    frame_props = next((e for e in frame.iter() if _is(e, _P, "cNvPr")), None)
    pic_props = next((e for e in pic.iter() if _is(e, _P, "cNvPr")), None)
    if frame_props is not None and pic_props is not None:
        for attr in ("id", "name"):
            value = frame_props.get(attr)
            if value is not None:
                pic_props.set(attr, value)
        for child in list(pic_props):
            pic_props.remove(child)  # hlinkClick and friends of the OLE frame: not carried over
    xfrm = next((c for c in frame if _is(c, _P, "xfrm")), None)
    sp_pr = next((c for c in pic if _is(c, _P, "spPr")), None)
    if sp_pr is None:
        sp_pr = etree.SubElement(pic, f"{{{ns}}}spPr")
    if xfrm is not None:
        a_ns = _ns(xfrm[0]) if len(xfrm) else "http://schemas.openxmlformats.org/drawingml/2006/main"
        for child in list(sp_pr):
            if _is(child, _A, "xfrm"):
                sp_pr.remove(child)
        new_xfrm = etree.Element(f"{{{a_ns}}}xfrm")
        for child in xfrm:
            new_xfrm.append(copy.deepcopy(child))
        sp_pr.insert(0, new_xfrm)
    parent.replace(frame, pic)


def _external_formulas(root: etree._Element) -> int:
    """Formulas that refer to an external workbook (``[1]Sheet!A1``: all external links are removed)
    or are DDE calls (``cmd|'/c calc'!A0``: ``|`` is no operator in Excel formulas otherwise) lose the
    formula and keep the cached value. Returns how many were DDE calls."""
    shared: set[str] = set()
    dde = 0
    for el in _find(root, _S_FORMULA):
        text = el.text or ""
        if "[" not in text and "|" not in text:
            continue
        code = _STRING_LITERAL.sub("", text)
        if "|" in code or _EXTERNAL_BOOK_REF.search(code):
            dde += "|" in code
            if el.get("t") == "shared" and el.get("si") is not None:
                shared.add(el.get("si") or "")
            _drop(el)
    if shared:
        for el in _find(root, _S_FORMULA):
            if el.get("t") == "shared" and el.get("si") in shared:
                _drop(el)
    return dde


# Containers the schemas require to have children: removed once their last child is gone.
_CONTAINER_TAGS = tuple(
    "{*}" + name
    for name in ("externalReferences", "oleObjects", "controls", "customProperties", "definedNames", "extLst")
)


def _empty_containers(root: etree._Element) -> None:
    candidates = [el for el in root.iter(*_CONTAINER_TAGS) if el is not root]
    for el in reversed(candidates):  # innermost first: an emptied parent is seen after its children
        if len(el) == 0 and not (el.text or "").strip():
            _drop(el)


# -- the last look -----------------------------------------------------------------------------


def verify(package: bytes, *, keep_hyperlinks: bool) -> None:
    """Re-open the output and check that nothing this converter removes is in it."""
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for info in archive.infolist():
            name = info.filename
            low = f"/{name.lower()}"
            if any(fragment in low for fragment in FORBIDDEN_NAME_FRAGMENTS):
                raise NotInertError(f"a forbidden part survived: {name[:80]!r}")
            data = archive.read(info)
            if data.startswith((OLE_MAGIC, ZIP_MAGIC)):
                raise NotInertError(f"an embedded file survived: {name[:80]!r}")
            if name == "[Content_Types].xml":
                text = data.decode("utf-8").lower()
                for fragment in FORBIDDEN_TYPE_FRAGMENTS:
                    if fragment in text:
                        raise NotInertError(f"content type {fragment!r} survived")
            elif name.endswith(".rels"):
                for el in parse_xml(data, name):
                    if el.get("TargetMode") == "External":
                        kind = (el.get("Type") or "").rsplit("/", 1)[-1]
                        target = el.get("Target") or ""
                        safe = kind == "hyperlink" and _scheme(target) in _SAFE_LINK_SCHEMES
                        if not (safe and keep_hyperlinks):
                            raise NotInertError(f"an external {kind} relationship survived")
            elif name.endswith(".xml") and (b"instrText" in data or b"fldSimple" in data):
                root = parse_xml(data, name)
                instructions = "".join(
                    (_attr(el, "instr") or "") if el.tag in _W_FLDSIMPLE else (el.text or "")
                    for el in root.iter(*_tags(_W, "instrText", "delInstrText", "fldSimple"))
                )
                if _DDE.search(instructions):
                    raise NotInertError(f"a DDE field survived in {name[:80]!r}")
