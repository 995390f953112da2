"""The PDF filter and its sandboxed converter, on hostile PDFs built here and on the corpus.

Every output is judged by :func:`assert_inert`, written here independently of the converter's own
``verify_inert``: the output is re-opened with pikepdf and EVERY object (``pdf.objects`` and all they
nest, plus the trailer) is walked for keys and names that can act or carry a file, streams with an
external ``/F``, and the marker string that every hostile payload here carries (JavaScript source,
embedded file bytes, launch targets, URIs, XFA). Rasterized outputs must also carry no text at all
and as many pages as the input.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pikepdf
import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest
from pikepdf import Array, Dictionary, Name, String
from support.inert import MARK, assert_inert
from support.sandboxes import CannedSandbox, real_sandbox

from detox.config.schema import DetoxConfig, SandboxConfig
from detox.envelope import Envelope
from detox.errors import SandboxError
from detox.filters.base import FilterContext
from detox.filters.pdf import PdfFilter, PdfOptions
from detox.pipeline import runner
from detox.pipeline.model import Action, Part, Role, Verdict
from detox.pipeline.registry import build_pipeline
from detox.pipeline.runner import Pipeline, detect_type
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.inside.converters import pdf as conv

TEXT = "Hello detox"
ENV = Envelope(
    "0190000000000PDF", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx.example.jp"
)

# The independent check lives in tests/support/inert.py (the corpus tests use it too).


def page_texts(data: bytes) -> list[str]:
    doc = pdfium.PdfDocument(data)
    try:
        texts = []
        for i in range(len(doc)):
            page = doc[i]
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return texts
    finally:
        doc.close()


def assert_rasterized(data: bytes, pages: int) -> None:
    pdf = assert_inert(data)
    assert len(pdf.pages) == pages
    for page in pdf.pages:
        assert "/Annots" not in page.obj
        fonts = page.obj.Resources.get("/Font")
        assert fonts is None
        assert set(page.obj.Resources.XObject.keys()) == {"/Im0"}
    assert "/Info" not in pdf.trailer
    assert "/Metadata" not in pdf.Root
    assert all(t.strip() == "" for t in page_texts(data))


# -- building hostile PDFs -----------------------------------------------------------------------


def _js(pdf: pikepdf.Pdf, code: str = f"app.alert('{MARK}')") -> pikepdf.Object:
    return pdf.make_indirect(Dictionary(Type=Name.Action, S=Name.JavaScript, JS=String(code)))


def text_pdf(pages: int = 1, text: str = TEXT) -> pikepdf.Pdf:
    pdf = pikepdf.new()
    font = pdf.make_indirect(
        Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica, Encoding=Name.WinAnsiEncoding)
    )
    for i in range(pages):
        content = pdf.make_stream(f"BT /F1 24 Tf 72 720 Td ({text} {i + 1}) Tj ET".encode("ascii"))
        page = Dictionary(
            Type=Name.Page,
            MediaBox=Array([0, 0, 612, 792]),
            Resources=Dictionary(Font=Dictionary(F1=font)),
            Contents=content,
        )
        pdf.pages.append(pikepdf.Page(pdf.make_indirect(page)))
    return pdf


def save(pdf: pikepdf.Pdf, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pdf.save(buf, **kwargs)
    return buf.getvalue()


def _link(pdf: pikepdf.Pdf, action: pikepdf.Object, subtype: Name = Name.Link) -> pikepdf.Object:
    return pdf.make_indirect(
        Dictionary(Type=Name.Annot, Subtype=subtype, Rect=Array([72, 700, 300, 740]), A=action)
    )


def _add_annot(pdf: pikepdf.Pdf, annot: pikepdf.Object, page: int = 0) -> None:
    obj = pdf.pages[page].obj
    if "/Annots" not in obj:
        obj.Annots = Array()
    obj.Annots.append(annot)


def build_open_action_js() -> bytes:
    pdf = text_pdf()
    pdf.Root.OpenAction = _js(pdf)
    return save(pdf)


def build_names_js() -> bytes:
    pdf = text_pdf()
    stream_js = pdf.make_stream(f"this.exportDataObject('{MARK}')".encode())
    second = pdf.make_indirect(Dictionary(S=Name.JavaScript, JS=stream_js))
    # A two-level name tree: /Kids under the root, the entries in the leaf.
    leaf = pdf.make_indirect(
        Dictionary(Names=Array([String("a"), _js(pdf), String("b"), second]), Limits=Array(["a", "b"]))
    )
    pdf.Root.Names = Dictionary(JavaScript=Dictionary(Kids=Array([leaf])))
    return save(pdf)


def build_page_aa() -> bytes:
    pdf = text_pdf(2)
    pdf.pages[0].obj.AA = Dictionary(O=_js(pdf), C=Dictionary(S=Name.Launch, F=String(f"{MARK}.exe")))
    pdf.Root.AA = Dictionary(WC=_js(pdf), DP=_js(pdf))
    return save(pdf)


def build_annot_js_chain() -> bytes:
    pdf = text_pdf()
    launch = Dictionary(S=Name.Launch, Win=Dictionary(F=String("cmd.exe"), P=String(f"/c {MARK}")))
    first = Dictionary(S=Name.JavaScript, JS=String(MARK), Next=Array([_js(pdf), launch]))
    annot = _link(pdf, first)
    annot.AA = Dictionary(E=_js(pdf))  # mouse enter
    _add_annot(pdf, annot)
    # A harmless internal jump whose /Next chain is not harmless.
    goto = Dictionary(S=Name.GoTo, D=Array([pdf.pages[0].obj, Name.Fit]), Next=_js(pdf))
    _add_annot(pdf, _link(pdf, goto))
    return save(pdf)


def build_launch() -> bytes:
    pdf = text_pdf()
    _add_annot(pdf, _link(pdf, Dictionary(S=Name.Launch, F=String(f"C:\\{MARK}.exe"), NewWindow=True)))
    return save(pdf)


def build_submit_form() -> bytes:
    pdf = text_pdf()
    field = pdf.make_indirect(
        Dictionary(
            Type=Name.Annot,
            Subtype=Name.Widget,
            FT=Name.Btn,
            Ff=65536,
            T=String("send"),
            Rect=Array([72, 600, 200, 640]),
            A=Dictionary(S=Name.SubmitForm, F=Dictionary(FS=Name.URL, F=String(f"https://{MARK}.example/"))),
            AA=Dictionary(
                K=_js(pdf),
                F=_js(pdf),
                V=_js(pdf),
                C=_js(pdf),
                Fo=Dictionary(S=Name.ImportData, F=String(MARK)),
            ),
            P=pdf.pages[0].obj,
        )
    )
    _add_annot(pdf, field)
    pdf.Root.AcroForm = Dictionary(Fields=Array([field]), NeedAppearances=True)
    return save(pdf)


def build_goto_remote() -> bytes:
    pdf = text_pdf()
    _add_annot(pdf, _link(pdf, Dictionary(S=Name.GoToR, F=String(f"{MARK}.pdf"), D=Array([0, Name.Fit]))))
    goto_e = Dictionary(S=Name.GoToE, T=Dictionary(R=Name.C, N=String(MARK)), D=Array([0, Name.Fit]))
    _add_annot(pdf, _link(pdf, goto_e))
    return save(pdf)


def build_embedded_file() -> bytes:
    pdf = text_pdf()
    spec = pikepdf.AttachedFileSpec(pdf, f"MZ {MARK} payload".encode(), filename="invoice.exe")
    pdf.attachments["invoice.exe"] = spec
    filespec = Dictionary(
        Type=Name.Filespec,
        F=String("readme.txt"),
        EF=Dictionary(F=pdf.make_stream(f"second {MARK}".encode(), Type=Name.EmbeddedFile)),
    )
    annot = pdf.make_indirect(
        Dictionary(Type=Name.Annot, Subtype=Name.FileAttachment, Rect=Array([72, 500, 90, 520]), FS=filespec)
    )
    _add_annot(pdf, annot)
    # A popup whose /Parent keeps the attachment annotation reachable after it leaves /Annots.
    _add_annot(
        pdf,
        pdf.make_indirect(Dictionary(Type=Name.Annot, Subtype=Name.Popup, Parent=annot, Rect=[0, 0, 1, 1])),
    )
    return save(pdf)


def build_xfa() -> bytes:
    pdf = text_pdf()
    xfa = pdf.make_stream(f"<xdp:xdp><script>{MARK}</script></xdp:xdp>".encode())
    pdf.Root.AcroForm = Dictionary(Fields=Array(), XFA=Array([String("template"), xfa]))
    pdf.Root.NeedsRendering = True
    return save(pdf)


def build_media() -> bytes:
    pdf = text_pdf()
    sound = pdf.make_stream(MARK.encode(), Type=Name.Sound, R=8000)
    _add_annot(
        pdf,
        pdf.make_indirect(Dictionary(Type=Name.Annot, Subtype=Name.Sound, Sound=sound, Rect=[0, 0, 9, 9])),
    )
    rich = Dictionary(
        Type=Name.Annot, Subtype=Name.RichMedia, Rect=[0, 0, 9, 9], RichMediaContent=Dictionary()
    )
    _add_annot(pdf, pdf.make_indirect(rich))
    rendition = Dictionary(S=Name.Rendition, OP=0, JS=String(MARK))
    _add_annot(pdf, _link(pdf, rendition, subtype=Name.Screen))
    _add_annot(pdf, _link(pdf, Dictionary(S=Name.Movie, T=String(MARK))))
    _add_annot(
        pdf, _link(pdf, Dictionary(S=Name.RichMediaExecute, TA=Dictionary(), CMD=Dictionary(C=String(MARK))))
    )
    return save(pdf)


def build_uri_and_outline() -> bytes:
    pdf = text_pdf(2)
    _add_annot(pdf, _link(pdf, Dictionary(S=Name.URI, URI=String(f"https://{MARK}.example/login"))))
    # A clean internal link that must survive.
    _add_annot(pdf, _link(pdf, Dictionary(S=Name.GoTo, D=Array([pdf.pages[1].obj, Name.Fit]))))
    outlines = pdf.make_indirect(Dictionary(Type=Name.Outlines, Count=1))
    item = pdf.make_indirect(Dictionary(Title=String("Chapter"), Parent=outlines, A=_js(pdf)))
    outlines.First = item
    outlines.Last = item
    pdf.Root.Outlines = outlines
    return save(pdf)


def build_external_stream() -> bytes:
    pdf = text_pdf()
    page = pdf.pages[0].obj
    ext = pdf.make_stream(b"", F=String(f"{MARK}.dat"), FFilter=Name.FlateDecode)
    page.Contents = Array([page.Contents, ext])
    return save(pdf)


# Raw-bytes PDFs: names as the attacker writes them, and incremental updates.


def _stream(body: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n%s\nendstream" % (len(body), extra, body)


def raw_pdf(objects: list[bytes]) -> bytes:
    """Objects 1..n as given (1 must be the catalog), an xref table and a trailer."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def append_update(base: bytes, objects: Mapping[int, bytes], size: int) -> bytes:
    """An incremental update: new versions of some objects, a new xref section, /Prev to the old."""
    prev = int(base.rsplit(b"startxref", 1)[1].split()[0])
    out = bytearray(base)
    offsets = {}
    for num, body in objects.items():
        offsets[num] = len(out)
        out += b"%d 0 obj\n%s\nendobj\n" % (num, body)
    xref = len(out)
    out += b"xref\n"
    for num in sorted(offsets):
        out += b"%d 1\n%010d 00000 n \n" % (num, offsets[num])
    out += b"trailer\n<< /Size %d /Root 1 0 R /Prev %d >>\nstartxref\n%d\n%%%%EOF\n" % (size, prev, xref)
    return bytes(out)


_BASE_OBJECTS = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>"
    ),
    b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    _stream(b"BT /F1 24 Tf 72 720 Td (" + TEXT.encode() + b") Tj ET"),
]


def build_obfuscated_names() -> bytes:
    objects = list(_BASE_OBJECTS)
    m = MARK.encode()
    objects[0] = (
        b"<< /Type /Catalog /Pages 2 0 R /Op#65nAction 6 0 R "
        b"/Names << /J#61va#53cript << /Names [(x) 7 0 R] >> /Emb#65ddedFiles << /Names [(f) 8 0 R] >> >> >>"
    )
    objects[2] = objects[2].replace(b"/Contents", b"/#41#41 << /O 7 0 R >> /Contents")
    objects.append(b"<< /S /J#61vaScript /J#53 (app.alert\\(" + m + b"\\)) >>")
    objects.append(b"<< /#53 /#4aavaScript /#4A#53 (" + m + b") /Next << /S /L#61unch /F (" + m + b") >> >>")
    objects.append(b"<< /Type /F#69lespec /F (x.exe) /#45F << /F 9 0 R >> >>")
    objects.append(_stream(b"MZ " + m, b"/Type /Emb#65dded#46ile "))
    return raw_pdf(objects)


def build_incremental_js() -> bytes:
    base = raw_pdf(list(_BASE_OBJECTS))
    m = MARK.encode()
    update = {
        1: b"<< /Type /Catalog /Pages 2 0 R /OpenAction 6 0 R >>",
        6: b"<< /S /JavaScript /JS 7 0 R >>",
        7: _stream(b"app.alert('" + m + b"')"),
    }
    return append_update(base, update, size=8)


def build_js_hidden_in_old_revision() -> bytes:
    """JavaScript in the first revision, 'removed' by an update: the old objects must not survive."""
    objects = list(_BASE_OBJECTS)
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R /OpenAction 6 0 R >>"
    objects.append(b"<< /S /JavaScript /JS (" + MARK.encode() + b") >>")
    base = raw_pdf(objects)
    return append_update(base, {1: b"<< /Type /Catalog /Pages 2 0 R >>"}, size=7)


HOSTILE: dict[str, tuple[Callable[[], bytes], set[str]]] = {
    # name: (builder, kinds that must appear in the sanitize counts)
    "open-action-js": (build_open_action_js, {"open-action", "javascript"}),
    "names-js-tree": (build_names_js, {"javascript"}),
    "page-and-catalog-aa": (build_page_aa, {"javascript", "launch"}),
    "annotation-js-chain": (build_annot_js_chain, {"javascript", "launch"}),
    "launch": (build_launch, {"launch"}),
    "submit-form-field-aa": (build_submit_form, {"submit-form", "javascript", "import-data"}),
    "goto-remote-embedded": (build_goto_remote, {"remote-goto", "embedded-goto"}),
    "embedded-file": (build_embedded_file, {"embedded-file"}),
    "xfa": (build_xfa, {"xfa"}),
    "media": (build_media, {"sound", "rich-media", "screen", "movie"}),
    "uri-and-outline-js": (build_uri_and_outline, {"uri", "javascript"}),
    "external-stream": (build_external_stream, {"external-stream"}),
    "obfuscated-names": (build_obfuscated_names, {"open-action", "javascript", "launch", "embedded-file"}),
    "incremental-update-js": (build_incremental_js, {"open-action", "javascript"}),
    "js-in-old-revision": (build_js_hidden_in_old_revision, set()),
}


def convert(data: bytes, **args: Any) -> tuple[dict[str, Any], bytes]:
    return conv.unpack_result(conv.main(data, args))


# -- the converter, in-process -------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_sanitize_removes_everything_active_and_keeps_text(case: str) -> None:
    builder, kinds = HOSTILE[case]
    data = builder()
    with pytest.raises(AssertionError):
        assert_inert(data)  # the fixture is hostile by the same measure that judges the output
    header, out = convert(data, mode="sanitize")
    assert header["status"] == "ok" and header["mode"] == "sanitize"
    assert kinds <= set(header["removed"]), header["removed"]
    pdf = assert_inert(out)
    assert header["pages"] == len(pdf.pages) == len(pikepdf.open(io.BytesIO(data)).pages)
    assert TEXT in page_texts(out)[0]
    # One revision, written afresh.
    assert out.count(b"%%EOF") == 1


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_rasterize_leaves_only_pictures(case: str) -> None:
    builder, _kinds = HOSTILE[case]
    data = builder()
    header, out = convert(data, mode="rasterize", dpi=50)
    assert header["status"] == "ok" and header["mode"] == "rasterize"
    pages = len(pdfium.PdfDocument(data))
    assert header["pages"] == pages
    assert_rasterized(out, pages)


def test_pikepdf_decodes_name_escapes() -> None:
    """The premise of the obfuscated-names case: qpdf normalises /J#61vaScript while parsing."""
    pdf = pikepdf.open(io.BytesIO(build_obfuscated_names()))
    action = pdf.Root.OpenAction
    assert str(action.S) == "/JavaScript"
    assert "/JS" in action
    assert "/AA" in pdf.pages[0].obj


def test_sanitize_counts() -> None:
    header, _ = convert(build_page_aa(), mode="sanitize")
    assert header["removed"] == {"javascript": 3, "launch": 1}
    header, _ = convert(build_obfuscated_names(), mode="sanitize")
    assert header["removed"] == {"open-action": 1, "javascript": 2, "launch": 1, "embedded-file": 1}
    header, _ = convert(build_open_action_js(), mode="sanitize")
    assert header["removed"] == {"open-action": 1, "javascript": 1}


def test_sanitize_keeps_internal_links_and_link_annotations() -> None:
    header, out = convert(build_uri_and_outline(), mode="sanitize")
    assert header["removed"] == {"uri": 1, "javascript": 1}
    pdf = pikepdf.open(io.BytesIO(out))
    annots = pdf.pages[0].obj.Annots
    assert len(annots) == 2  # the URI link keeps its place (no action), the internal jump keeps it all
    assert "/A" not in annots[0]
    assert str(annots[1].A.S) == "/GoTo"
    assert pdf.Root.Outlines.First.Title == "Chapter"
    assert "/A" not in pdf.Root.Outlines.First


def test_sanitize_form_field_survives_without_actions() -> None:
    _, out = convert(build_submit_form(), mode="sanitize")
    pdf = pikepdf.open(io.BytesIO(out))
    (field,) = pdf.Root.AcroForm.Fields
    assert field.T == "send" and "/A" not in field and "/AA" not in field


def test_embedded_file_annotation_leaves_annots() -> None:
    _, out = convert(build_embedded_file(), mode="sanitize")
    pdf = pikepdf.open(io.BytesIO(out))
    subtypes = [str(a.Subtype) for a in pdf.pages[0].obj.Annots]
    assert subtypes == ["/Popup"]
    assert len(pdf.attachments) == 0


@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
def test_converting_an_output_again_never_returns_it_unchanged(mode: str) -> None:
    """A detox output that comes back (a reply, a forward) must not trip the runner's unchanged check."""
    _, once = convert(build_launch(), mode=mode, dpi=50)
    _, twice = convert(once, mode=mode, dpi=50)
    assert twice != once
    assert_inert(twice)


def test_js_in_old_revision_does_not_survive() -> None:
    data = build_js_hidden_in_old_revision()
    assert MARK.encode() in data
    _, out = convert(data, mode="sanitize")
    assert MARK.encode() not in out
    assert_inert(out)


def japanese_pdf(text: str) -> bytes:
    """Japanese text in a Type0 font with a ToUnicode map, without embedding a font.

    No CJK font is installed on this machine (``fc-list :lang=ja`` is empty), and the check does not
    need one: the Unicode of each glyph comes from the ToUnicode CMap, which is what text extraction
    reads, so what is tested is that sanitizing keeps fonts, maps and content streams intact. (How a
    rasterized page *looks* does depend on fonts in the sandbox: fonts-noto-cjk in production.)
    """
    chars = list(dict.fromkeys(text))
    cid = {ch: i + 1 for i, ch in enumerate(chars)}
    bfchar = "\n".join(f"<{cid[ch]:04X}> <{ord(ch):04X}>" for ch in chars)
    cmap = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /Adobe-Identity-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        f"{len(chars)} beginbfchar\n{bfchar}\nendbfchar\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end\n"
    )
    pdf = pikepdf.new()
    descriptor = Dictionary(
        Type=Name.FontDescriptor,
        FontName=Name("/IPAexGothic"),
        Flags=4,
        FontBBox=Array([0, -140, 1000, 880]),
        ItalicAngle=0,
        Ascent=880,
        Descent=-120,
        CapHeight=700,
        StemV=80,
    )
    descendant = Dictionary(
        Type=Name.Font,
        Subtype=Name.CIDFontType2,
        BaseFont=Name("/IPAexGothic"),
        CIDSystemInfo=Dictionary(Registry=String("Adobe"), Ordering=String("Identity"), Supplement=0),
        FontDescriptor=pdf.make_indirect(descriptor),
        DW=1000,
    )
    font = pdf.make_indirect(
        Dictionary(
            Type=Name.Font,
            Subtype=Name.Type0,
            BaseFont=Name("/IPAexGothic"),
            Encoding=Name("/Identity-H"),
            DescendantFonts=Array([pdf.make_indirect(descendant)]),
            ToUnicode=pdf.make_stream(cmap.encode("ascii")),
        )
    )
    codes = "".join(f"{cid[ch]:04X}" for ch in text)
    content = pdf.make_stream(f"BT /F1 20 Tf 72 700 Td <{codes}> Tj ET".encode("ascii"))
    page = Dictionary(
        Type=Name.Page,
        MediaBox=Array([0, 0, 595, 842]),
        Resources=Dictionary(Font=Dictionary(F1=font)),
        Contents=content,
    )
    pdf.pages.append(pikepdf.Page(pdf.make_indirect(page)))
    pdf.Root.OpenAction = _js(pdf)
    return save(pdf)


def test_sanitize_keeps_japanese_text_extractable() -> None:
    text = "無害化通知 髙橋様 ①㈱ 請求書"
    data = japanese_pdf(text)
    assert text in page_texts(data)[0]  # the fixture itself reads back
    header, out = convert(data, mode="sanitize")
    assert header["removed"] == {"open-action": 1, "javascript": 1}
    assert_inert(out)
    assert text in page_texts(out)[0]


def unijis_pdf(text: str) -> bytes:
    """Japanese the way office software writes it without embedding: MS-Mincho, UniJIS-UCS2-H.

    Text extraction needs no font (pdfium's built-in Adobe-Japan1 CMaps give the Unicode); drawing
    needs a Japanese font in the sandbox (fonts-ipaexfont or fonts-noto-cjk) for pdfium to fall back on.
    """
    pdf = pikepdf.new()
    descriptor = Dictionary(
        Type=Name.FontDescriptor,
        FontName=Name("/MS-Mincho"),
        Flags=6,
        FontBBox=Array([0, -141, 1000, 859]),
        ItalicAngle=0,
        Ascent=859,
        Descent=-141,
        CapHeight=700,
        StemV=80,
    )
    descendant = Dictionary(
        Type=Name.Font,
        Subtype=Name.CIDFontType0,
        BaseFont=Name("/MS-Mincho"),
        CIDSystemInfo=Dictionary(Registry=String("Adobe"), Ordering=String("Japan1"), Supplement=6),
        FontDescriptor=pdf.make_indirect(descriptor),
        DW=1000,
    )
    font = pdf.make_indirect(
        Dictionary(
            Type=Name.Font,
            Subtype=Name.Type0,
            BaseFont=Name("/MS-Mincho"),
            Encoding=Name("/UniJIS-UCS2-H"),
            DescendantFonts=Array([pdf.make_indirect(descendant)]),
        )
    )
    codes = text.encode("utf-16-be").hex().upper()
    page = Dictionary(
        Type=Name.Page,
        MediaBox=Array([0, 0, 595, 842]),
        Resources=Dictionary(Font=Dictionary(F1=font)),
        Contents=pdf.make_stream(f"BT /F1 28 Tf 72 700 Td <{codes}> Tj ET".encode("ascii")),
    )
    pdf.pages.append(pikepdf.Page(pdf.make_indirect(page)))
    pdf.Root.OpenAction = _js(pdf)
    return save(pdf)


JAPANESE = "無害化通知 髙橋様 ①㈱ 請求書"


def _japanese_fonts() -> list[str]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return []
    listing = subprocess.run([fc_list, ":lang=ja", "family"], capture_output=True, text=True, check=False)
    return [line for line in listing.stdout.splitlines() if line.strip()]


def test_sanitize_keeps_japanese_in_a_non_embedded_font() -> None:
    data = unijis_pdf(JAPANESE)
    assert JAPANESE in page_texts(data)[0]
    _, out = convert(data, mode="sanitize")
    assert_inert(out)
    assert JAPANESE in page_texts(out)[0]


@pytest.mark.skipif(
    not _japanese_fonts(),
    reason="no Japanese font installed (fc-list :lang=ja is empty): install fonts-ipaexfont or "
    "fonts-noto-cjk, which production needs for rasterized Japanese to be drawn at all",
)
def test_rasterized_japanese_is_drawn(sandbox: Sandbox) -> None:
    """Through the sandbox: the fonts must be visible inside it too."""
    verdict = _filter(mode="rasterize", dpi=150).process(_part(unijis_pdf(JAPANESE)), _ctx(sandbox))
    assert verdict.output is not None
    pdf = assert_inert(verdict.output.data)
    stream = pdf.pages[0].obj.Resources.XObject.Im0
    assert isinstance(stream, pikepdf.Stream)
    image = pikepdf.PdfImage(stream).as_pil_image().convert("L")
    # The line's band: baseline 700 pt up on an 842 pt page, 28 pt text, from x = 72 pt.
    band = image.crop((150, 230, 1100, 315))
    ink = sum(band.histogram()[:128])
    assert ink > 3000, f"only {ink} dark pixels where the Japanese line should be"


def test_encrypted_with_password_is_held_in_both_modes() -> None:
    data = save(text_pdf(), encryption=pikepdf.Encryption(user="secret", owner="owner"))
    for mode in ("sanitize", "rasterize"):
        header, out = convert(data, mode=mode)
        assert header["status"] == "held" and header["reason"] == "encrypted", header
        assert out == b""


def test_encrypted_with_empty_user_password_is_converted_unencrypted() -> None:
    pdf = text_pdf()
    pdf.Root.OpenAction = _js(pdf)
    data = save(pdf, encryption=pikepdf.Encryption(user="", owner="owner", R=6))
    assert pikepdf.open(io.BytesIO(data)).is_encrypted
    header, out = convert(data, mode="sanitize")
    assert header["status"] == "ok" and header["removed"]["javascript"] == 1
    assert_inert(out)  # also asserts not encrypted
    assert TEXT in page_texts(out)[0]
    header, out = convert(data, mode="rasterize", dpi=50)
    assert header["status"] == "ok"
    assert_rasterized(out, 1)


def test_rasterize_page_cap_holds() -> None:
    data = save(text_pdf(200))
    header, out = convert(data, mode="rasterize")
    assert header == {
        "status": "held",
        "mode": "rasterize",
        "reason": "limit-exceeded",
        "detail": "200 pages, more than the cap of 100",
    }
    assert out == b""
    # Sanitizing has no page cap of its own (the sandbox's time and memory bound it).
    header, out = convert(data, mode="sanitize")
    assert header["pages"] == 200
    assert_inert(out)


def test_rasterize_pixel_cap_scales_the_page_down() -> None:
    data = save(text_pdf())
    header, out = convert(data, mode="rasterize", dpi=150, max_page_pixels=500_000)
    assert header["status"] == "ok"
    pdf = assert_inert(out)
    image = pdf.pages[0].obj.Resources.XObject.Im0
    assert int(image.Width) * int(image.Height) <= 500_000
    # The page keeps its size in points: only the resolution went down.
    box = [float(v) for v in pdf.pages[0].obj.MediaBox]
    assert box[2] == pytest.approx(612, abs=0.5) and box[3] == pytest.approx(792, abs=0.5)


def test_rasterize_output_cap_holds() -> None:
    header, _ = convert(save(text_pdf(3)), mode="rasterize", max_output_bytes=2048)
    assert header["status"] == "held" and header["reason"] == "limit-exceeded"


def test_rasterize_resolution_and_formats() -> None:
    data = save(text_pdf(2))
    _, out = convert(data, mode="rasterize", dpi=150)
    result = pikepdf.open(io.BytesIO(out))
    image = result.pages[0].obj.Resources.XObject.Im0
    assert (int(image.Width), int(image.Height)) == (1275, 1650)  # Letter at 150 dpi
    assert image.Filter == Name.DCTDecode
    _, lossless = convert(data, mode="rasterize", dpi=72, image_format="png")
    result = pikepdf.open(io.BytesIO(lossless))
    image = result.pages[0].obj.Resources.XObject.Im0
    assert image.Filter == Name.FlateDecode and (int(image.Width), int(image.Height)) == (612, 792)
    assert_rasterized(lossless, 2)


def test_rasterize_respects_page_rotation() -> None:
    pdf = text_pdf()
    pdf.pages[0].obj.Rotate = 90
    _, out = convert(save(pdf), mode="rasterize", dpi=72)
    result = pikepdf.open(io.BytesIO(out))
    box = [float(v) for v in result.pages[0].obj.MediaBox]
    assert box[2:] == [pytest.approx(792, abs=0.5), pytest.approx(612, abs=0.5)]


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.7\n" + os.urandom(2000), b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", b""],
    ids=["random", "no-pages", "empty"],
)
@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
def test_garbage_raises(data: bytes, mode: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - any error: the child exits non-zero, the part is held
        conv.main(data, {"mode": mode})


def test_bad_arguments_raise() -> None:
    data = save(text_pdf())
    for args in ({"mode": "print"}, {"mode": "rasterize", "dpi": 5000}, {"mode": "rasterize", "dpi": "150"}):
        with pytest.raises(ValueError):
            conv.main(data, args)


def test_result_format_round_trip_and_rejects() -> None:
    blob = conv.pack_result({"status": "ok", "mode": "sanitize", "pages": 1, "removed": {}}, b"%PDF-1.7")
    header, pdf = conv.unpack_result(blob)
    assert header["pages"] == 1 and pdf == b"%PDF-1.7"
    for bad in (b"", b"\x00\x00", b"\xff\xff\xff\xff{}", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x02{}"):
        with pytest.raises(ValueError):
            conv.unpack_result(bad)


# -- the filter, through a sandbox -----------------------------------------------------------------


class InProcessSandbox(Sandbox):
    """The converter called directly: for tests about the filter's own logic only."""

    name = "in-process"

    def run(self, module: str, data: bytes, args: Mapping[str, Any], limits: Limits) -> bytes:
        assert module == "pdf"
        try:
            return conv.main(data, dict(args))
        except Exception as exc:
            raise SandboxError(f"{type(exc).__name__}: {exc}") from exc


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return real_sandbox()


def _ctx(sandbox: Sandbox | None) -> FilterContext:
    return FilterContext("0190000000000PDF", "example.jp", DetoxConfig(), sandbox=sandbox)


def _part(data: bytes, declared: str = "application/pdf", filename: str | None = "見積書.pdf") -> Part:
    return Part(
        part_id="2",
        role=Role.ATTACHMENT,
        declared_type=declared,
        detected_type=detect_type(data),
        charset_label=None,
        untrusted_filename=filename,
        payload=data,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _filter(**options: Any) -> PdfFilter:
    return PdfFilter(PdfOptions(**options))


def test_options_default_and_validation() -> None:
    options = PdfOptions()
    assert options.mode == "rasterize" and options.dpi == 150 and options.max_pages == 100
    assert options.image_format == "jpeg" and options.jpeg_quality == 85
    with pytest.raises(ValueError):
        PdfOptions.model_validate({"mode": "rasterize", "sender_domains": ["x"]})
    with pytest.raises(ValueError):
        PdfOptions(dpi=10)


def test_applies_to_detected_pdf_attachments_only() -> None:
    flt = _filter()
    data = save(text_pdf())
    assert flt.applies_to(_part(data))
    assert flt.applies_to(_part(data, declared="application/octet-stream", filename="scan.bin"))
    assert not flt.applies_to(_part(b"this is not a pdf at all, just words", filename="fake.pdf"))
    body = Part("1", Role.BODY, "text/plain", detect_type(data), None, None, data, "0" * 64)
    assert not flt.applies_to(body)


def test_no_sandbox_raises() -> None:
    with pytest.raises(SandboxError):
        _filter().process(_part(save(text_pdf())), _ctx(None))


@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
def test_filter_replaces_through_the_sandbox(sandbox: Sandbox, mode: str) -> None:
    data = build_submit_form()
    verdict = _filter(mode=mode, dpi=72).process(_part(data), _ctx(sandbox))
    assert verdict.action is Action.REPLACE and verdict.output is not None
    assert verdict.output.content_type == "application/pdf"
    assert verdict.output.filename == "見積書.pdf"
    assert verdict.notes == (f"pdf-{mode}d",)
    assert {"submit-form", "javascript", "import-data"} <= set(verdict.removed)
    assert verdict.output.data != data
    if mode == "sanitize":
        assert_inert(verdict.output.data)
    else:
        assert_rasterized(verdict.output.data, 1)


def test_filter_names_output_pdf() -> None:
    verdict = _filter(mode="sanitize").process(
        _part(save(text_pdf()), filename="scan"), _ctx(InProcessSandbox())
    )
    assert verdict.output is not None and verdict.output.filename == "scan.pdf"


@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
def test_filter_holds_encrypted(sandbox: Sandbox, mode: str) -> None:
    data = save(text_pdf(), encryption=pikepdf.Encryption(user="pw", owner="pw2"))
    verdict = _filter(mode=mode).process(_part(data), _ctx(sandbox))
    assert verdict == Verdict(Action.HOLD, reason="encrypted")


def test_filter_holds_too_many_pages(sandbox: Sandbox) -> None:
    verdict = _filter(mode="rasterize").process(_part(save(text_pdf(200))), _ctx(sandbox))
    assert verdict == Verdict(Action.HOLD, reason="limit-exceeded")


def test_filter_raises_on_garbage_that_looks_like_pdf(sandbox: Sandbox) -> None:
    data = b"%PDF-1.7\n" + b"\x00garbage" * 300
    assert detect_type(data) == "application/pdf"
    with pytest.raises(SandboxError):
        _filter(mode="sanitize").process(_part(data), _ctx(sandbox))


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"%PDF-1.7 no header",
        conv.pack_result({"status": "ok", "mode": "rasterize", "pages": 1, "removed": {}}, b"not a pdf"),
        conv.pack_result({"status": "ok", "mode": "sanitize", "pages": 1, "removed": {}}, b"%PDF-1.7"),
        conv.pack_result({"status": "ok", "mode": "rasterize", "pages": 0, "removed": {}}, b"%PDF-1.7"),
        conv.pack_result(
            {"status": "ok", "mode": "rasterize", "pages": 1, "removed": {"a b": 1}}, b"%PDF-1.7"
        ),
        conv.pack_result(
            {"status": "ok", "mode": "rasterize", "pages": 1, "removed": {"x": -1}}, b"%PDF-1.7"
        ),
        conv.pack_result({"status": "held", "mode": "rasterize", "reason": "because"}),
        conv.pack_result({"status": "maybe", "mode": "rasterize"}),
    ],
    ids=[
        "empty",
        "no-header",
        "not-pdf",
        "other-mode",
        "no-pages",
        "bad-kind",
        "bad-count",
        "bad-reason",
        "bad-status",
    ],
)
def test_filter_rejects_malformed_converter_answers(answer: bytes) -> None:
    data = save(text_pdf())
    with pytest.raises(SandboxError):
        _filter().process(_part(data), _ctx(CannedSandbox(answer)))


def test_limits_follow_the_config() -> None:
    config = DetoxConfig.model_validate(
        {"filters": {"pdf": {"timeout_s": 20}}, "sandbox": {"memory_mb": 1024, "cpu_s": 15}}
    )
    ctx = FilterContext("q", "example.jp", config, sandbox=CannedSandbox(b""))
    flt = _filter(max_output_bytes=10 * 1024 * 1024)
    limits = flt.limits(flt.begin(_part(b"%PDF-1.7"), ctx))
    assert limits.timeout_s == pytest.approx(18.0)
    assert limits.cpu_s == 15 and limits.memory_bytes == 1024 * 1024 * 1024
    assert limits.max_output_bytes > 10 * 1024 * 1024


# -- through the pipeline ------------------------------------------------------------------------


def _mail(attachments: list[tuple[bytes, str, str]]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "山田 <yamada@example.jp>"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "資料送付"
    msg["Message-ID"] = "<pdf@example.jp>"
    msg.set_content("資料を添付します。\n")
    for data, ctype, name in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes()


def _run_pipeline(raw: bytes, options: PdfOptions) -> runner.DetoxResult:
    """The PDF filter first, then the configured ones, with the sandbox the Pipeline makes itself
    (bubblewrap; the plain-subprocess provider where bwrap cannot run here)."""
    config = DetoxConfig()
    pipeline = Pipeline(config, [PdfFilter(options), *build_pipeline(config)])
    if pipeline.sandbox is None:
        config = DetoxConfig(sandbox=SandboxConfig(provider="subprocess", allow_unsandboxed=True))
        pipeline = Pipeline(config, [PdfFilter(options), *build_pipeline(config)])
    assert pipeline.sandbox is not None
    return pipeline.run(raw, ENV)


@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
def test_pipeline_replaces_pdf_attachment(mode: str) -> None:
    hostile = build_annot_js_chain()
    encrypted = save(text_pdf(), encryption=pikepdf.Encryption(user="pw", owner="pw2"))
    raw = _mail(
        [
            (hostile, "application/pdf", "請求書.pdf"),
            (b"not a pdf, only declared as one", "application/pdf", "fake.pdf"),
            (encrypted, "application/pdf", "locked.pdf"),
            (b"%PDF-1.7\n" + b"\x00junk" * 200, "application/pdf", "broken.pdf"),
        ]
    )
    result = _run_pipeline(raw, PdfOptions.model_validate({"mode": mode, "dpi": 72}))
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    pdf_parts = [p for p in out.walk() if p.get_content_type() == "application/pdf"]
    assert len(pdf_parts) == 1
    payload = pdf_parts[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert pdf_parts[0].get_filename() == "請求書.pdf"
    if mode == "sanitize":
        assert_inert(payload)
        assert TEXT in page_texts(payload)[0]
    else:
        assert_rasterized(payload, 1)

    by_name = {r.filename: r for r in result.records}
    rec = by_name["請求書.pdf"]
    assert rec.filter == "pdf" and rec.action == "replace"
    assert rec.removed["javascript"] >= 3 and rec.removed["launch"] == 1
    assert rec.output_sha256 == hashlib.sha256(payload).hexdigest()
    assert rec.sha256 == hashlib.sha256(hostile).hexdigest()
    assert (by_name["fake.pdf"].action, by_name["fake.pdf"].reason) == ("hold", "unsupported-type")
    assert (by_name["locked.pdf"].action, by_name["locked.pdf"].reason) == ("hold", "encrypted")
    assert (by_name["broken.pdf"].action, by_name["broken.pdf"].reason) == ("hold", "filter-error")
    report = {p["filename"]: p for p in result.report.parts_json()}
    assert report["請求書.pdf"]["removed"] == dict(rec.removed)
    assert f"pdf-{mode}d=1" in result.actions


# -- the corpus ----------------------------------------------------------------------------------

_DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
CORPUS_DOCS = Path(os.environ.get("DETOX_CORPUS", _DEFAULT_CORPUS)) / "docs"


def _corpus_pdfs() -> list[Path]:
    if not CORPUS_DOCS.is_dir():
        return []
    found = []
    for path in sorted(CORPUS_DOCS.rglob("*")):
        if path.is_file() and path.stat().st_size < 20 * 1024 * 1024:
            head = path.read_bytes()[:1024]
            if path.suffix.lower() == ".pdf" or b"%PDF-" in head:
                found.append(path)
    return found


CORPUS_PDFS = _corpus_pdfs()


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS_PDFS, reason=f"no PDFs under {CORPUS_DOCS} (third-party corpus absent)")
@pytest.mark.parametrize("mode", ["sanitize", "rasterize"])
@pytest.mark.parametrize(
    "path", CORPUS_PDFS, ids=[str(p.relative_to(CORPUS_DOCS)) for p in CORPUS_PDFS] or None
)
def test_corpus_pdf_is_disarmed_or_held(path: Path, mode: str, sandbox: Sandbox) -> None:
    data = path.read_bytes()
    part = _part(data, filename=path.name)
    flt = _filter(mode=mode, dpi=72)
    if not flt.applies_to(part):
        pytest.skip(f"libmagic reads it as {part.detected_type}: not claimed, held as unsupported-type")
    try:
        verdict = flt.process(part, _ctx(sandbox))
    except SandboxError:
        return  # held as filter-error by the runner: a correct, fail-closed outcome
    if verdict.action is Action.HOLD:
        assert verdict.reason in ("encrypted", "limit-exceeded")
        return
    assert verdict.action is Action.REPLACE and verdict.output is not None
    assert verdict.output.data != data
    if mode == "sanitize":
        assert_inert(verdict.output.data)
    else:
        assert_rasterized(verdict.output.data, len(pdfium.PdfDocument(data)))
