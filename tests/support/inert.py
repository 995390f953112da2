"""Independent checks that an output part is inert: they share no code with the converters."""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tempfile
import unicodedata
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any

import pikepdf
from PIL import Image

with warnings.catch_warnings():  # oletools' pyparsing grammar warns about deprecated names on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools import msodde, oleobj, ooxml  # type: ignore[import-untyped]
    from oletools.olevba import VBA_Parser  # type: ignore[import-untyped]

# A marker the hostile test files put in their JavaScript and strings; it must never come out.
MARK = "DETOXMARK"

FORBIDDEN_KEYS = {
    "/JS",
    "/JavaScript",
    "/OpenAction",
    "/AA",
    "/Launch",
    "/SubmitForm",
    "/ImportData",
    "/GoToR",
    "/GoToE",
    "/RichMedia",
    "/RichMediaContent",
    "/EmbeddedFiles",
    "/EmbeddedFile",
    "/EF",
    "/XFA",
}
FORBIDDEN_NAMES = {
    "/JavaScript",
    "/Launch",
    "/SubmitForm",
    "/ImportData",
    "/GoToR",
    "/GoToE",
    "/RichMedia",
    "/RichMediaExecute",
    "/EmbeddedFile",
    "/EmbeddedFiles",
    "/FileAttachment",
    "/XFA",
    "/Movie",
    "/Sound",
    "/Rendition",
}
# Action types that must not survive sanitizing either (a GoTo inside the document may).
FORBIDDEN_ACTIONS = FORBIDDEN_NAMES | {"/URI", "/Hide", "/ResetForm", "/SetOCGState", "/GoTo3DView"}


def _everything(pdf: pikepdf.Pdf) -> Iterator[pikepdf.Object]:
    seen: set[tuple[int, int]] = set()
    stack: list[Any] = [pdf.trailer, *pdf.objects]
    while stack:
        obj = stack.pop()
        if isinstance(obj, pikepdf.Object) and obj.is_indirect:
            if obj.objgen in seen:
                continue
            seen.add(obj.objgen)
        yield obj
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            stack.extend(obj.values())
        elif isinstance(obj, pikepdf.Array):
            stack.extend(obj)


def assert_inert(data: bytes) -> pikepdf.Pdf:
    """Fail unless ``data`` is a PDF with nothing that can act or carry a file; returns it opened."""
    pdf = pikepdf.open(io.BytesIO(data))
    assert not pdf.is_encrypted
    problems: list[str] = []
    for obj in _everything(pdf):
        if isinstance(obj, pikepdf.Name):
            if str(obj) in FORBIDDEN_NAMES:
                problems.append(f"name {obj}")
        elif isinstance(obj, pikepdf.String):
            if MARK in bytes(obj).decode("latin-1"):
                problems.append("marked string")
        elif isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            keys = set(obj.keys())
            problems.extend(f"key {k}" for k in keys & FORBIDDEN_KEYS)
            if str(obj.get("/S")) in FORBIDDEN_ACTIONS:
                problems.append(f"action {obj.get('/S')}")
            if isinstance(obj, pikepdf.Stream):
                if keys & {"/F", "/FFilter", "/FDecodeParms"}:
                    problems.append("external stream")
                try:
                    content = obj.read_bytes()
                except pikepdf.PdfError:
                    content = obj.read_raw_bytes()
                if MARK.encode() in content:
                    problems.append("marked stream")
    assert not problems, problems
    return pdf


def assert_image_clean(data: bytes) -> Image.Image:
    """Pillow decodes it fully and finds no metadata; PNG/JPEG end exactly at their end marker."""
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format in ("PNG", "JPEG"), img.format
    assert not img.getexif(), "EXIF left"
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment"):
        assert key not in img.info, key
    if img.format == "PNG":
        assert data.endswith(b"IEND\xaeB`\x82"), "bytes after IEND"
    else:
        assert data.endswith(b"\xff\xd9") and data.count(b"\xff\xd8\xff") == 1, "bytes after EOI"
    return img


# -- Office (OOXML) outputs: oletools plus a look at the package ------------------------------------

_WML = "application/vnd.openxmlformats-officedocument.wordprocessingml."
_SML = "application/vnd.openxmlformats-officedocument.spreadsheetml."
_PML = "application/vnd.openxmlformats-officedocument.presentationml."
OFFICE_OUTPUT_TYPES = {
    _WML + "document": "docx",
    _WML + "template": "dotx",
    _SML + "sheet": "xlsx",
    _SML + "template": "xltx",
    _PML + "presentation": "pptx",
    _PML + "slideshow": "ppsx",
    _PML + "template": "potx",
}
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
FORBIDDEN_MEMBERS = re.compile(
    r"vbaproject|vbadata|(^|/)activex/|(^|/)embeddings/|(^|/)macrosheets/|(^|/)dialogsheets/|"
    r"(^|/)externallinks/|(^|/)customui/|(^|/)webextensions/|(^|/)connections\.xml$",
    re.IGNORECASE,
)
FORBIDDEN_TYPES = re.compile(
    r"macroenabled|vbaproject|vbadata|activex|oleobject|macrosheet|dialogsheet|externallink|"
    r"keymapcustomizations|attachedtoolbars|webextension|spreadsheetml\.connections",
    re.IGNORECASE,
)
SAFE_LINK = re.compile(r"^(https?|mailto):", re.IGNORECASE)
_PKG_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"


def assert_office_clean(
    data: bytes, content_type: str, tmp_dir: Path | None = None, *, hyperlinks: bool = False
) -> dict[str, bytes]:
    """olevba finds no VBA/XLM macros, oleobj no OLE object, external link (but http(s)/mailto
    hyperlinks when ``hyperlinks``) or customUI, msodde no DDE; no active member or content type;
    every XML member well formed without a DTD. Returns the members."""
    assert content_type in OFFICE_OUTPUT_TYPES, content_type
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    assert "[Content_Types].xml" in members
    with tempfile.TemporaryDirectory(dir=tmp_dir) as scratch:
        path = str(Path(scratch) / f"out.{OFFICE_OUTPUT_TYPES[content_type]}")
        Path(path).write_bytes(data)
        vba = VBA_Parser(path, data=data)
        try:
            assert not vba.detect_vba_macros(), "olevba found VBA macros"
            assert not vba.detect_xlm_macros(), "olevba found XLM macros"
        finally:
            vba.close()
        found_ole = [ole for ole in oleobj.find_ole(path, data) if ole is not None]
        for ole in found_ole:
            ole.close()
        assert not found_ole, "oleobj found an embedded OLE file"
        external = list(oleobj.find_external_relationships(ooxml.XmlParser(path)))
        assert all(kind == "hyperlink" and SAFE_LINK.match(target) for kind, target in external), external
        assert hyperlinks or not external, external
        assert not list(oleobj.find_customUI(ooxml.XmlParser(path)))
        assert msodde.process_file(path, msodde.FIELD_FILTER_DDE).strip() == "", "msodde found DDE"

    for name, blob in members.items():
        assert not FORBIDDEN_MEMBERS.search(name), name
        assert not blob.startswith((OLE_MAGIC, b"PK\x03\x04")), f"{name} is an embedded file"
        if name.endswith((".xml", ".rels", ".vml")):
            assert b"<!DOCTYPE" not in blob and b"<!ENTITY" not in blob, name
            root = ET.fromstring(blob)
            if name.endswith(".rels"):
                for rel in root.iter(_PKG_RELS + "Relationship"):
                    if rel.get("TargetMode") == "External":
                        assert hyperlinks, (name, rel.attrib)
                        assert rel.get("Type", "").endswith("/hyperlink"), (name, rel.attrib)
                        assert SAFE_LINK.match(rel.get("Target", "")), (name, rel.attrib)
    types = members["[Content_Types].xml"].decode("utf-8")
    assert not FORBIDDEN_TYPES.search(types), types
    return members


# -- repacked archives: clean names, every member one of the allowed kinds and itself inert ---------

BINARY_MAGIC = (
    b"MZ", b"\x7fELF", b"PK", b"%PDF", b"\xd0\xcf\x11\xe0", b"\x89PNG", b"GIF8", b"\xff\xd8\xff",
    b"Rar!", b"7z\xbc\xaf", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"#!",
)  # fmt: skip
_OOXML_EXTENSIONS = {ext: ctype for ctype, ext in OFFICE_OUTPUT_TYPES.items()}


def assert_zip_clean(data: bytes, withheld: Set[str] = frozenset(), *, level: int = 0) -> dict[str, bytes]:
    """zipfile reopens it (every CRC right); every name a clean relative path with the UTF-8 flag when
    not ASCII; every member a plain file that is not one of the ``withheld`` SHA-256s and is an inert
    image, PDF, Office file, nested zip or UTF-8 text. Returns the members."""
    assert level < 5
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        for info in zf.infolist():
            name = info.filename
            assert not info.flag_bits & 0x41, "encrypted member"
            assert name and not name.startswith(("/", "\\")) and "\\" not in name and ":" not in name, name
            parts = name.split("/")
            assert all(p not in ("", ".", "..") for p in parts), name
            assert all(unicodedata.category(ch)[0] != "C" for ch in name), name
            if not name.isascii():
                assert info.flag_bits & 0x800, f"non-ASCII name without the UTF-8 flag: {name}"
            mode = info.external_attr >> 16
            assert mode == 0 or stat.S_ISREG(mode), f"{name} is not a plain file"
            body = zf.read(info)
            assert hashlib.sha256(body).hexdigest() not in withheld, f"{name} has held bytes"
            _check_member(name, body, withheld, level)
            found[name] = body
    return found


def _check_member(name: str, body: bytes, withheld: Set[str], level: int) -> None:
    extension = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if body.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        assert_image_clean(body)
    elif body.startswith(b"%PDF"):
        assert_inert(body)
    elif body.startswith(b"PK") and extension in _OOXML_EXTENSIONS:
        assert_office_clean(body, _OOXML_EXTENSIONS[extension])
    elif body.startswith(b"PK"):
        assert_zip_clean(body, withheld, level=level + 1)
    else:  # text: UTF-8, no NUL, no container signature
        assert not body.startswith(BINARY_MAGIC), body[:16]
        assert b"\x00" not in body
        body.decode("utf-8")
