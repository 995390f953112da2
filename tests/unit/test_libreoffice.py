"""Legacy Office and RTF through a resident, sandboxed LibreOffice: converted, rasterized, or held.

The inputs are written here as flat ODF (Japanese text with NEC/IBM extensions: ①㈱髙) and turned into
.doc, .xls, .ppt and .rtf by LibreOffice itself (a cold ``soffice --convert-to``, unsandboxed: our own
files); nothing binary is kept in the repository. Every output is judged by ``support.inert`` (no code
shared with the converters) and must be pictures only: one image per page, no fonts, no text. That the
Japanese text is legible is checked on LibreOffice's own PDF (its text layer, before rasterizing) and on
the picture (ink where the line is).

The lifecycle is tested on the real instance: a timeout or a crash (LibreOffice killed from outside in
the middle of a document) holds that document and the next one converts on a fresh instance; the
instance is recycled after N documents and stopped when its process exits, even by SIGKILL. The
instance's network namespace has nothing but a loopback interface, and its profile is the hardened
one. A document with a macro bound to its load event is converted without the macro running, while a
permissive LibreOffice run by the test itself shows the macro is live.

Needs soffice, ``uno`` for /usr/bin/python3 and bubblewrap; skipped where they are missing, except
under CI=true, where that fails (scripts/install-system-deps.sh installs them).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import io
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pikepdf
import pypdfium2 as pdfium  # type: ignore[import-untyped]
import pytest
from pydantic import ValidationError
from support.inert import MARK, assert_inert
from support.sandboxes import require_libreoffice

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import SandboxError, SandboxTimeout
from detox.filters.base import FilterContext
from detox.filters.office import OfficeFilter, OfficeOptions
from detox.pipeline.model import Action, Part, Role
from detox.pipeline.registry import build_pipeline
from detox.pipeline.runner import Pipeline, detect_type
from detox.sandbox import libreoffice, make_sandbox
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.bwrap import BwrapSandbox
from detox.sandbox.contract import ProtocolError, encode_frame, read_frame
from detox.sandbox.inside.office_host import profile_xcu
from detox.sandbox.libreoffice import FILTERS, LibreOffice, OfficeSettings, instance_for, stop_all
from detox.sandbox.resident import ResidentProcess
from detox.sandbox.spawn import Launch

# LibreOffice's tests: most start soffice; the rest (frames, options, the resident process) are the host
# side of the same converter and go with them. Out of `make test-fast`.
pytestmark = pytest.mark.libreoffice

CONFIG = DetoxConfig.model_validate({"sandbox": {"provider": "bwrap"}})
ENV = Envelope("0190000000000LO1", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx")
JAPANESE = "①㈱髙橋の見積書"
CORPUS_DOCS = (
    Path(os.environ.get("DETOX_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus")) / "docs"
)
APPLICATION = {"doc": "word", "xls": "excel", "ppt": "powerpoint", "rtf": "rtf"}
FILTER = OfficeFilter(OfficeOptions())
MiB = 1024 * 1024

# -- requirements -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    require_libreoffice()
    return make_sandbox(CONFIG)


@pytest.fixture
def ctx(sandbox: Sandbox) -> FilterContext:
    return FilterContext("0190000000000LO1", "example.jp", CONFIG, sandbox=sandbox)


@pytest.fixture(autouse=True, scope="module")
def _stop_instances() -> Iterator[None]:
    yield
    stop_all()  # no LibreOffice outlives this module


# -- documents, made by LibreOffice from flat ODF written here -----------------------------------

_NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0" '
    'xmlns:script="urn:oasis:names:tc:opendocument:xmlns:script:1.0" '
    'xmlns:ooo="http://openoffice.org/2004/office" '
    'xmlns:xlink="http://www.w3.org/1999/xlink" '
    'xmlns:dom="http://www.w3.org/2001/xml-events" '
    'xmlns:style="urn:oasis:names:tc:opendocument:xmlns:style:1.0"'
)


def flat_odf(mimetype: str, body: str, scripts: str = "", styles: str = "") -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document {_NS} office:version="1.3" '
        f'office:mimetype="application/vnd.oasis.opendocument.{mimetype}">{scripts}'
        f"<office:automatic-styles>{styles}</office:automatic-styles>"
        f"<office:body>{body}</office:body></office:document>\n"
    )


TEXT = flat_odf(
    "text",
    f"<office:text><text:p>{JAPANESE}</text:p><text:p>DETOX-LEGACY "
    '<text:a xlink:type="simple" xlink:href="https://evil.example/phish">リンク</text:a></text:p></office:text>',
)
SHEET = flat_odf(
    "spreadsheet",
    '<office:spreadsheet><table:table table:name="見積"><table:table-column table:style-name="wide"/>'
    "<table:table-row>"
    f'<table:table-cell office:value-type="string"><text:p>{JAPANESE}</text:p></table:table-cell>'
    '<table:table-cell office:value-type="float" office:value="42"><text:p>42</text:p></table:table-cell>'
    "</table:table-row></table:table></office:spreadsheet>",
    styles=(
        '<style:style style:name="wide" style:family="table-column">'
        '<style:table-column-properties style:column-width="9cm"/></style:style>'
    ),
)
SLIDES = flat_odf(
    "presentation",
    '<office:presentation><draw:page draw:name="p1"><draw:frame svg:x="2cm" svg:y="3cm" svg:width="22cm" '
    f'svg:height="5cm"><draw:text-box><text:p>{JAPANESE}</text:p></draw:text-box></draw:frame></draw:page>'
    "</office:presentation>",
)
LONG = flat_odf(
    "text",
    "<office:text>"
    + "".join(f"<text:p>第{i}段 {JAPANESE} {'あいうえおかきくけこ' * 8}</text:p>" for i in range(1500))
    + "</office:text>",
)
# A Basic macro bound to the document's load event that would replace the whole text.
MACRO = flat_odf(
    "text",
    "<office:text><text:p>ORIGINAL-TEXT</text:p></office:text>",
    scripts=(
        '<office:scripts><office:script script:language="ooo:Basic"><ooo:libraries>'
        '<ooo:library-embedded ooo:name="Standard"><ooo:module ooo:name="Module1"><ooo:source-code>'
        'Sub OnLoad\nThisComponent.getText().setString("MACRO-RAN")\nEnd Sub\n'
        "</ooo:source-code></ooo:module></ooo:library-embedded></ooo:libraries></office:script>"
        '<office:event-listeners><script:event-listener script:language="ooo:script" '
        'script:event-name="dom:load" xlink:type="simple" '
        'xlink:href="vnd.sun.star.script:Standard.Module1.OnLoad?language=Basic&amp;location=document"/>'
        "</office:event-listeners></office:scripts>"
    ),
)
# (source, target format) for each generated document.
SOURCES = {
    "doc": ("text.fodt", TEXT, "doc"),
    "rtf": ("text.fodt", TEXT, "rtf"),
    "xls": ("sheet.fods", SHEET, "xls"),
    "ppt": ("slides.fodp", SLIDES, "ppt"),
    "long.doc": ("long.fodt", LONG, "doc"),
}


def _run_cold_soffice(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """An unsandboxed soffice on our own files; its whole group is killed on timeout."""
    proc = subprocess.Popen(
        ["soffice", "--headless", "--norestore", "--nolockcheck", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox) -> dict[str, bytes]:
    """.doc, .xls, .ppt, .rtf (and a 87-page .doc) made by LibreOffice, converted in parallel."""
    base = tmp_path_factory.mktemp("legacy")
    for source, content, _ in SOURCES.values():
        (base / source).write_text(content, encoding="utf-8")
    results: dict[str, subprocess.CompletedProcess[bytes]] = {}

    def make(key: str) -> None:
        source, _, target = SOURCES[key]
        out = base / key.replace(".", "-")
        results[key] = _run_cold_soffice(
            [
                f"-env:UserInstallation=file://{base}/profile-{key}",
                "--convert-to",
                target,
                "--outdir",
                str(out),
                str(base / source),
            ],
            timeout=180,
        )

    threads = [threading.Thread(target=make, args=(key,)) for key in SOURCES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    made: dict[str, bytes] = {}
    for key, (source, _, target) in SOURCES.items():
        path = base / key.replace(".", "-") / f"{Path(source).stem}.{target}"
        assert path.is_file(), results[key].stderr.decode(errors="replace")
        made[key] = path.read_bytes()
    return made


def make_part(data: bytes, filename: str | None, detected: str | None = None) -> Part:
    return Part(
        part_id="2",
        role=Role.ATTACHMENT,
        declared_type="application/octet-stream",
        detected_type=detected or detect_type(data),
        charset_label=None,
        untrusted_filename=filename,
        payload=data,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# -- how outputs are judged ---------------------------------------------------------------------


def page_texts(data: bytes) -> list[str]:
    doc = pdfium.PdfDocument(data)
    try:
        texts = []
        for page in doc:
            textpage = page.get_textpage()
            texts.append(textpage.get_text_range())
            textpage.close()
            page.close()
        return texts
    finally:
        doc.close()


def assert_pictures_only(data: bytes) -> pikepdf.Pdf:
    """Inert (support.inert), and every page one image and nothing else: no fonts, no text, no links."""
    pdf = assert_inert(data)
    assert len(pdf.pages) >= 1
    for page in pdf.pages:
        assert "/Annots" not in page.obj
        assert page.obj.Resources.get("/Font") is None
        assert set(page.obj.Resources.XObject.keys()) == {"/Im0"}
    assert "/Info" not in pdf.trailer and "/Metadata" not in pdf.Root
    assert all(text.strip() == "" for text in page_texts(data))
    return pdf


def ink(pdf: pikepdf.Pdf, page: int = 0) -> int:
    """Dark pixels on a page picture: a blank page has none."""
    stream = pdf.pages[page].obj.Resources.XObject.Im0
    image = pikepdf.PdfImage(stream).as_pil_image().convert("L")
    return sum(image.histogram()[:128])


def office(sandbox: Sandbox, **settings: object) -> LibreOffice:
    return instance_for(sandbox, OfficeSettings(**settings))  # type: ignore[arg-type]


def to_pdf(instance: LibreOffice, data: bytes, kind: str, **kwargs: object) -> libreoffice.Conversion:
    args: dict[str, object] = {
        "extension": kind if kind in APPLICATION else "doc",
        "filters": FILTERS[APPLICATION.get(kind, "word")],
        "timeout_s": 60.0,
        "max_pages": 100,
        "max_output_bytes": 64 * MiB,
    }
    args.update(kwargs)
    return instance.convert(data, **args)  # type: ignore[arg-type]


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def soffice_bin(instance: LibreOffice) -> int:
    assert instance.process is not None and instance.process.alive
    for pid in descendants(instance.process.pid):
        try:
            if Path(f"/proc/{pid}/exe").resolve().name == "soffice.bin":
                return pid
        except OSError:
            continue
    raise AssertionError("no soffice.bin under the instance")


def gone(pid: int, within_s: float = 10.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


# -- conversion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["doc", "xls", "ppt", "rtf"])
def test_legacy_documents_become_legible_page_pictures(
    kind: str, documents: dict[str, bytes], ctx: FilterContext, sandbox: Sandbox
) -> None:
    data = documents[kind]
    part = make_part(data, f"見積書.{kind}")
    assert FILTER.applies_to(part), part.detected_type
    # LibreOffice's own PDF (before the pictures) carries the Japanese text: the fonts are there.
    conversion = to_pdf(office(sandbox), data, kind)
    assert conversion.status == "ok" and conversion.import_filter in FILTERS[APPLICATION[kind]]
    assert JAPANESE in "".join(page_texts(conversion.pdf))

    verdict = FILTER.process(part, ctx)
    assert verdict.action is Action.REPLACE, verdict
    assert verdict.output is not None
    assert (verdict.output.content_type, verdict.output.filename) == ("application/pdf", "見積書.pdf")
    assert verdict.notes == ("office-rasterized",)
    pdf = assert_pictures_only(verdict.output.data)
    assert ink(pdf) > 500, "the page picture is blank"
    if kind == "doc":
        assert verdict.removed.get("uri") == 1  # the hyperlink is now only the picture of its text


def test_japanese_line_is_drawn_where_it_stands(documents: dict[str, bytes], ctx: FilterContext) -> None:
    verdict = FILTER.process(make_part(documents["doc"], "見積書.doc"), ctx)
    assert verdict.output is not None
    pdf = assert_pictures_only(verdict.output.data)
    image = pikepdf.PdfImage(pdf.pages[0].obj.Resources.XObject.Im0).as_pil_image().convert("L")
    top = image.crop((0, 0, image.width, image.height // 6))  # the first lines of an A4/Letter page
    assert sum(top.histogram()[:128]) > 1000


def _ole1_package(payload: bytes) -> bytes:
    """An OLE 1.0 embedded "Package" object (what \\objdata holds) carrying ``payload``."""

    def lstr(text: bytes) -> bytes:
        return len(text + b"\0").to_bytes(4, "little") + text + b"\0"

    # Packager's native data: a label, the source path, then the temp path and the file's bytes.
    path = b"C:\\a.txt\0"
    native = (
        b"\x02\x00"
        b"a.txt\0"
        + path
        + b"\x00\x00\x03\x00"
        + len(path).to_bytes(4, "little")
        + path
        + len(payload).to_bytes(4, "little")
        + payload
    )
    return (
        (0x0501).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + lstr(b"Package")
        + (0).to_bytes(4, "little")
        + (0).to_bytes(4, "little")
        + len(native).to_bytes(4, "little")
        + native
    )


def test_rtf_embedded_object_never_passes(ctx: FilterContext, sandbox: Sandbox) -> None:
    objdata = _ole1_package(f"{MARK} calc.exe".encode()).hex().encode()
    rtf = (
        rb"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}\f0 before the object\par "
        rb"{\object\objemb\objw1000\objh500{\*\objclass Package}{\*\objdata " + objdata + rb"}"
        rb"{\result {\pict\wmetafile8\picw100\pich100 0100090000030e00000000000000000000000000}}}"
        rb"\par after the object\par}"
    )
    part = make_part(rtf, "手紙.rtf")
    assert part.detected_type == "text/rtf"
    intermediate = to_pdf(office(sandbox), rtf, "rtf")
    assert intermediate.status == "ok"
    with pikepdf.open(io.BytesIO(intermediate.pdf)) as lo_pdf:
        names: set[str] = set()
        for obj in lo_pdf.objects:
            if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
                names.update(map(str, obj.keys()))
        assert not names & {"/EmbeddedFiles", "/EF", "/EmbeddedFile"}
    verdict = FILTER.process(part, ctx)
    assert verdict.action is Action.REPLACE and verdict.output is not None
    assert verdict.output.filename == "手紙.pdf"
    assert verdict.removed.get("ole-embedding") == 1
    data = verdict.output.data
    assert MARK.encode() not in data
    assert_pictures_only(data)


_CONTROL = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import office_host as h
import uno
if sys.argv[4] == "permissive":  # low macro security instead of ours
    h.PROFILE_SETTINGS = tuple(s for s in h.PROFILE_SETTINGS if not s[0].endswith("/Scripting")) + (
        ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "int", "0"),
    )
office = h.Office("/usr/bin/soffice", sys.argv[2], "detox-test-control-" + sys.argv[4])
try:
    # A visible document, macros allowed by the load arguments: only the profile is left to say no.
    doc = office.desktop.loadComponentFromURL(
        uno.systemPathToFileUrl(sys.argv[3]), "_blank", 0,
        (office._prop("Hidden", False), office._prop("MacroExecutionMode", 4)),
    )
    end = time.monotonic() + (20 if sys.argv[4] == "permissive" else 3)
    while doc.getText().getString() != "MACRO-RAN" and time.monotonic() < end:
        time.sleep(0.1)
    print(doc.getText().getString())
    doc.close(True)
finally:
    office.stop()
"""


def _unsandboxed_control(tmp_path: Path, source: Path, mode: str) -> str:
    """LibreOffice driven by the host's own Office class, unsandboxed, on our own macro document."""
    script = tmp_path / "control.py"
    script.write_text(_CONTROL, encoding="utf-8")
    host_dir = os.path.dirname(libreoffice.HOST_SCRIPT)
    proc = subprocess.Popen(
        [libreoffice.DEFAULT_PYTHON, "-I", str(script), host_dir, str(tmp_path / mode), str(source), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return out.decode().strip().splitlines()[-1]


@pytest.mark.slow
def test_macros_never_run(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "macro.fodt"
    source.write_text(MACRO, encoding="utf-8")
    # The control: with low macro security the macro is live and replaces the text on load.
    assert _unsandboxed_control(tmp_path, source, "permissive") == "MACRO-RAN"
    # Our profile alone stops it, even for a visible document whose load arguments allow macros.
    assert _unsandboxed_control(tmp_path, source, "hardened") == "ORIGINAL-TEXT"
    # The resident instance (hidden, NEVER_EXECUTE, the same profile), asked to allow this flat ODF
    # format for the test: the macro stays code.
    conversion = to_pdf(
        office(sandbox),
        MACRO.encode(),
        "fodt",
        extension="fodt",
        filters=frozenset({"OpenDocument Text Flat XML"}),
    )
    assert conversion.status == "ok"
    text = "".join(page_texts(conversion.pdf))
    assert "ORIGINAL-TEXT" in text and "MACRO-RAN" not in text


# -- held -------------------------------------------------------------------------------------


def test_garbage_with_an_office_name_is_held(
    ctx: FilterContext, documents: dict[str, bytes], sandbox: Sandbox
) -> None:
    # Not OLE, not OOXML: the converter refuses it (the runner holds the part as a filter error).
    with pytest.raises(SandboxError):
        FILTER.process(make_part(b"\x00garbage" * 50, "見積書.doc", "application/octet-stream"), ctx)
    # An OLE file olefile cannot read, with a .doc name: not Word, Excel or PowerPoint.
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 600
    verdict = FILTER.process(make_part(ole, "見積書.doc"), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "unsupported-type")
    # A spreadsheet offered as a Word document: type detection finds Excel, not an allowed Word filter.
    refused = to_pdf(office(sandbox), documents["xls"], "doc")
    assert refused.status == "refused" and "Excel" in refused.detail


def test_too_many_pages_are_held(documents: dict[str, bytes], ctx: FilterContext) -> None:
    flt = OfficeFilter(OfficeOptions(max_pages=10))
    verdict = flt.process(make_part(documents["long.doc"], "長い.doc"), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "limit-exceeded")


def test_legacy_hold_option(ctx: FilterContext, documents: dict[str, bytes]) -> None:
    hold = OfficeFilter(OfficeOptions(legacy="hold"))
    assert hold.process(make_part(documents["doc"], "a.doc"), ctx).reason == "legacy-office"
    no_sandbox = FilterContext("Q", "example.jp", CONFIG, sandbox=None)
    assert hold.process(make_part(documents["rtf"], "a.rtf"), no_sandbox).reason == "legacy-office"
    with pytest.raises(SandboxError, match="no sandbox"):
        FILTER.process(make_part(documents["rtf"], "a.rtf"), no_sandbox)


def test_libreoffice_absent_holds_with_one_log_line(
    ctx: FilterContext, documents: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    absent = OfficeFilter(OfficeOptions(soffice="/nonexistent/soffice"))
    with caplog.at_level(logging.ERROR, logger="detox.filters.office"):
        for kind in ("doc", "rtf", "doc"):
            verdict = absent.process(make_part(documents[kind], f"a.{kind}"), ctx)
            assert (verdict.action, verdict.reason) == (Action.HOLD, "legacy-office")
    lines = [r.getMessage() for r in caplog.records if "LibreOffice cannot run" in r.getMessage()]
    assert len(lines) == 1 and "/nonexistent/soffice" in lines[0]
    no_uno = OfficeFilter(OfficeOptions(uno_python=sys.executable))  # the venv's Python has no uno
    assert no_uno.process(make_part(documents["rtf"], "a.rtf"), ctx).reason == "legacy-office"


# -- the instance's lifecycle -------------------------------------------------------------------


def test_timeout_kills_the_instance_and_the_next_document_converts(
    sandbox: Sandbox, documents: dict[str, bytes]
) -> None:
    instance = office(sandbox, documents_per_instance=1000)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"
    assert instance.process is not None
    old, old_bin = instance.process.pid, soffice_bin(instance)
    started = time.monotonic()
    with pytest.raises(SandboxTimeout):
        to_pdf(instance, documents["long.doc"], "doc", timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert instance.process is None and gone(old) and gone(old_bin)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"
    assert instance.process is not None and instance.process.pid != old


def test_filter_timeout_is_held_and_the_next_document_converts(
    sandbox: Sandbox, ctx: FilterContext, documents: dict[str, bytes]
) -> None:
    impatient = OfficeFilter(OfficeOptions(libreoffice_timeout_s=0.5))
    with pytest.raises(SandboxTimeout):  # the runner holds the part as filter-timeout
        impatient.process(make_part(documents["long.doc"], "長い.doc"), ctx)
    # The same instance settings: the next document (with time enough) gets a fresh instance.
    assert FILTER.process(make_part(documents["doc"], "a.doc"), ctx).action is Action.REPLACE


def test_killed_mid_document_is_an_error_and_the_next_converts(
    sandbox: Sandbox, documents: dict[str, bytes]
) -> None:
    instance = office(sandbox, documents_per_instance=1000)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"
    victim = soffice_bin(instance)
    killer = threading.Timer(0.5, os.kill, args=(victim, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(SandboxError) as failure:
            to_pdf(instance, documents["long.doc"], "doc", max_pages=1000)
    finally:
        killer.cancel()
    assert not isinstance(failure.value, SandboxTimeout)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"


def test_instance_killed_between_documents_is_replaced(sandbox: Sandbox, documents: dict[str, bytes]) -> None:
    instance = office(sandbox, documents_per_instance=1000)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"
    assert instance.process is not None
    old = instance.process.pid
    os.killpg(old, signal.SIGKILL)  # the whole sandbox, from outside
    assert gone(old)
    assert to_pdf(instance, documents["xls"], "xls").status == "ok"
    assert instance.process is not None and instance.process.pid != old


def test_recycled_after_n_documents(sandbox: Sandbox, documents: dict[str, bytes]) -> None:
    instance = office(sandbox, documents_per_instance=2)
    stop_before = instance.starts
    pids = []
    for kind in ("doc", "xls", "ppt"):
        assert to_pdf(instance, documents[kind], kind).status == "ok"
        assert instance.process is not None
        pids.append(instance.process.pid)
    assert pids[0] == pids[1] != pids[2]
    assert instance.starts - stop_before in (1, 2)  # 2 when this is the instance's first use


_CHILD = """
import os, sys, time
from detox.sandbox.bwrap import BwrapSandbox
from detox.sandbox.libreoffice import FILTERS, OfficeSettings, instance_for
office = instance_for(BwrapSandbox(), OfficeSettings())
data = open(sys.argv[1], "rb").read()
result = office.convert(data, extension="doc", filters=FILTERS["word"], timeout_s=60, max_pages=10,
                        max_output_bytes=1 << 26)
print(result.status, office.process.pid, flush=True)
if sys.argv[2] == "sleep":
    time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_instance_ends_with_its_process(
    ending: str, sandbox: Sandbox, documents: dict[str, bytes], tmp_path: Path
) -> None:
    doc = tmp_path / "a.doc"
    doc.write_bytes(documents["doc"])
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(doc), "sleep" if ending == "sigkill" else "exit"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        status, pid = child.stdout.readline().decode().split()
        assert status == "ok"
        bwrap = int(pid)
        inside = descendants(bwrap)
        assert inside
        if ending == "sigkill":
            child.kill()
        assert child.wait(timeout=30) in (0, -signal.SIGKILL)
        assert all(gone(p) for p in [bwrap, *inside])  # atexit, or --die-with-parent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


# -- isolation of the instance --------------------------------------------------------------------


def test_instance_has_no_network_and_the_hardened_profile(
    sandbox: Sandbox, documents: dict[str, bytes]
) -> None:
    instance = office(sandbox, documents_per_instance=1000)
    assert to_pdf(instance, documents["doc"], "doc").status == "ok"
    pid = soffice_bin(instance)
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    interfaces = [
        line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    ]
    assert interfaces == ["lo"]
    assert Path(f"/proc/{pid}/root/etc/passwd").read_text().count("\n") == 2  # the synthesized one
    status = dict(
        line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    assert status["NoNewPrivs"].strip() == "1" and status["CapEff"].strip() == "0000000000000000"
    profile = Path(f"/proc/{pid}/root/tmp/profile/user/registrymodifications.xcu").read_text()
    for setting in ("MacroSecurityLevel", "DisableMacrosExecution"):
        assert f'oor:name="{setting}"' in profile


def test_no_connection_leaves_the_resident_sandbox(sandbox: Sandbox) -> None:
    """The same bwrap command line as the instance, with a probe in place of the LibreOffice host."""
    assert isinstance(sandbox, BwrapSandbox)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe = (
            "import errno, socket, sys\n"
            "for host in ('127.0.0.1', '192.0.2.1'):\n"
            "    s = socket.socket(); s.settimeout(5)\n"
            "    try: s.connect((host, int(sys.argv[1]))); print('connected')\n"
            "    except OSError as e: print(errno.errorcode.get(e.errno, e))\n"
        )
        instance = LibreOffice(sandbox, OfficeSettings())
        with sandbox.launch_command(
            [libreoffice.DEFAULT_PYTHON, "-I", "-c", probe, str(port)], instance.limits
        ) as launch:
            result = subprocess.run(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                pass_fds=launch.pass_fds,
                capture_output=True,
                timeout=30,
                check=True,
            )
    assert result.stdout.decode().split() == ["ECONNREFUSED", "ENETUNREACH"]


def test_profile_disables_macros_and_link_updates() -> None:
    root = ET.fromstring(profile_xcu())
    values = {}
    for item in root:
        prop = item[0]
        values[
            (
                item.get("{http://openoffice.org/2001/registry}path"),
                prop.get("{http://openoffice.org/2001/registry}name"),
            )
        ] = prop[0].text
    scripting = "/org.openoffice.Office.Common/Security/Scripting"
    assert values[(scripting, "MacroSecurityLevel")] == "3"
    assert values[(scripting, "DisableMacrosExecution")] == "true"
    assert values[("/org.openoffice.Office.Writer/Content/Update", "Link")] == "0"  # never
    assert values[("/org.openoffice.Office.Calc/Content/Update", "Link")] == "1"  # never
    assert values[("/org.openoffice.Office.Java/VirtualMachine", "Enable")] == "false"


# -- the resident process and its frames, on small stand-in programs -------------------------------


def _resident(script: str) -> ResidentProcess:
    launch = Launch(argv=[sys.executable, "-I", "-c", script], env={"PATH": "/usr/bin:/bin"}, cwd="/")
    return ResidentProcess("stand-in", launch, Limits(cpu_s=30, memory_bytes=1024 * MiB))


_ANSWER = (
    "import os, sys, json, struct\n"
    "def encode(h, p=b''):\n"
    "    b = json.dumps(dict(h, size=len(p))).encode()\n"
    "    return struct.pack('>I', len(b)) + b + p\n"
    "def frame(h, p=b''):\n"
    "    os.write(1, encode(h, p))\n"
)


def test_frames_round_trip_and_reject_garbage() -> None:
    frame = encode_frame({"status": "ok"}, b"%PDF-1.7 data")
    assert read_frame(io.BytesIO(frame)) == ({"status": "ok", "size": 13}, b"%PDF-1.7 data")
    assert read_frame(io.BytesIO(b"")) is None
    for bad in (frame[:-1], b"\0\0\0\x02[]", b"\0\0\0\x02{}", b"\xff\xff\xff\xff{}", b"\0\0\0\x05nope!"):
        with pytest.raises(ProtocolError):
            read_frame(io.BytesIO(bad))


@pytest.mark.parametrize(
    ("name", "body", "error"),
    [
        (
            "oversized",
            "frame({'status': 'ready'}, b'x' * 10)\nimport time; time.sleep(60)",
            "more than the cap",
        ),
        ("not-json", "os.write(1, struct.pack('>I', 5) + b'nope!')\nimport time; time.sleep(60)", "protocol"),
        (
            "two-frames",
            (
                "frame({'status': 'ready'})\nn = struct.unpack('>I', sys.stdin.buffer.read(4))[0]\n"
                "sys.stdin.buffer.read(n)\nos.write(1, encode({'a': 1}) + encode({'b': 2}))\n"
                "import time; time.sleep(60)"
            ),
            "",
        ),
        ("exits", "sys.stderr.write('boom\\n'); sys.exit(3)", "exit status 3"),
        ("silent", "import time; time.sleep(60)", "no answer"),
    ],
)
def test_resident_process_dies_on_any_misbehaviour(name: str, body: str, error: str) -> None:
    process = _resident(_ANSWER + body)
    pid = process.pid
    try:
        if name == "two-frames":
            assert process.wait_ready(10)["status"] == "ready"
            with pytest.raises(SandboxError, match="more output than one frame"):
                process.request({"op": "x"}, b"", 5, max_payload=0)
        else:
            with pytest.raises(SandboxError, match=error):
                process.wait_ready(1 if name == "silent" else 10)
        assert not process.alive and gone(pid)
    finally:
        process.kill()


def test_resident_timeout_kills_the_whole_group() -> None:
    # The stand-in starts a grandchild that would outlive it: the group kill takes it too.
    process = _resident(
        _ANSWER + "import subprocess, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "frame({'status': 'ready', 'child': child.pid})\n"
        "sys.stdin.buffer.read(4)\ntime.sleep(120)\n"
    )
    try:
        child = process.wait_ready(10)["child"]
        with pytest.raises(SandboxTimeout):
            process.request({"op": "convert"}, b"doc", 0.5, max_payload=10)
        assert gone(process.pid) and gone(child)
    finally:
        process.kill()


# -- options ------------------------------------------------------------------------------------


def test_options_are_strict() -> None:
    for bad in (
        {"legacy": "maybe"},
        {"soffice": "soff\nice"},
        {"soffice": ""},
        {"uno_python": "python3"},
        {"dpi": 10},
        {"max_pages": 0},
        {"documents_per_instance": 0},
        {"libreoffice_timeout_s": 0},
        {"libreoffice": "yes"},
    ):
        with pytest.raises(ValidationError):
            OfficeOptions.model_validate(bad)
    assert OfficeOptions().legacy == "convert" and OfficeOptions().documents_per_instance == 200


# -- the corpus (skipped when ../shared/corpus is absent) --------------------------------------


def _corpus(relative: str) -> bytes:
    path = CORPUS_DOCS / relative
    if not path.is_file():
        pytest.skip(f"the corpus is not in {CORPUS_DOCS}")
    return path.read_bytes()


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("relative", "removed"),
    [
        ("oletools/olevba/sample_with_vba.ppt", {}),  # VBA project (in the PowerPoint stream: not counted)
        ("oletools/excel4-macros/excel4_sample_macro.xls", {"xlm-macrosheet": 1}),  # auto_open XLM macro
        ("oletools/oleobj/sample_with_calc_embedded.doc", {"ole-embedding": 1}),  # an embedded calc.exe
        ("oletools/oleobj/embedded-simple-2007.xls", {"ole-embedding": 1}),
        ("dangerzone/sample-doc.doc", {}),
        ("dangerzone/sample-xls.xls", {}),
        ("dangerzone/sample-ppt.ppt", {}),
        ("pycirclean/normal/rich_text.rtf", {}),
    ],
)
def test_corpus_legacy_documents_are_rasterized(
    relative: str, removed: dict[str, int], ctx: FilterContext
) -> None:
    data = _corpus(relative)
    verdict = FILTER.process(make_part(data, Path(relative).name), ctx)
    assert verdict.action is Action.REPLACE and verdict.output is not None, verdict
    assert verdict.output.filename == Path(relative).stem + ".pdf"
    assert dict(verdict.removed) == removed
    assert ink(assert_pictures_only(verdict.output.data)) > 0


@pytest.mark.corpus
def test_corpus_dde_document_is_rasterized_without_updating_links(ctx: FilterContext) -> None:
    archive = _corpus("oletools/msodde/dde-test-from-office2003.doc.zip")
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        name = z.namelist()[0]
        data = z.read(name, pwd=b"infected-test")  # the corpus README's password; kept in memory only
    verdict = FILTER.process(make_part(data, "dde.doc"), ctx)
    assert verdict.action is Action.REPLACE and verdict.output is not None
    assert_pictures_only(verdict.output.data)


@pytest.mark.corpus
@pytest.mark.parametrize("relative", ["oletools/encrypted/encrypted.doc", "oletools/encrypted/encrypted.xls"])
def test_corpus_encrypted_legacy_files_are_held(relative: str, ctx: FilterContext) -> None:
    verdict = FILTER.process(make_part(_corpus(relative), Path(relative).name), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "encrypted")


# -- through the pipeline -----------------------------------------------------------------------


def test_a_mail_with_a_doc_attachment_arrives_with_its_pdf(
    documents: dict[str, bytes], sandbox: Sandbox
) -> None:
    msg = EmailMessage()
    msg["From"] = "sender@example.jp"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "見積書の送付"
    msg.set_content("見積書を送ります。\n")
    msg.add_attachment(documents["doc"], maintype="application", subtype="msword", filename="見積書.doc")
    msg.add_attachment(documents["xls"], maintype="application", subtype="vnd.ms-excel", filename="明細.xls")
    pipeline = Pipeline(CONFIG, filters=[OfficeFilter(OfficeOptions()), *build_pipeline(CONFIG)])
    result = pipeline.run(msg.as_bytes(), ENV)
    records = {r.filename: r for r in result.records}
    assert (records["見積書.doc"].filter, records["見積書.doc"].action) == ("office", "replace")
    assert records["明細.xls"].action == "replace"
    assert "office-rasterized=2" in result.actions
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    attachments = {a.get_filename(): a for a in out.iter_attachments()}
    assert set(attachments) == {"見積書.pdf", "明細.pdf"}
    for name, attachment in attachments.items():
        assert attachment.get_content_type() == "application/pdf"
        payload = attachment.get_content()
        assert isinstance(payload, bytes)
        assert_pictures_only(payload)
        source = "見積書.doc" if name == "見積書.pdf" else "明細.xls"
        assert records[source].output_sha256 == hashlib.sha256(payload).hexdigest()


def test_a_fork_of_the_worker_leaves_the_instance_alone(documents: dict[str, bytes]) -> None:
    """Development provider: a forked child (Popen with preexec_fn runs the at-fork handlers) drops
    its copy of the instance without removing the parent's private directory."""
    dev = make_sandbox(
        DetoxConfig.model_validate({"sandbox": {"provider": "subprocess", "allow_unsandboxed": True}})
    )
    instance = office(dev)
    try:
        assert page_texts(to_pdf(instance, documents["doc"], "doc").pdf)
        assert instance._workdir is not None
        workdir = Path(instance._workdir.name)
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # after the at-fork handlers ran in this child
        os.waitpid(pid, 0)
        assert workdir.is_dir()
        assert instance.process is not None and instance.process.alive
        assert page_texts(to_pdf(instance, documents["doc"], "doc").pdf)
    finally:
        stop_all()
