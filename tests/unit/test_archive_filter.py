"""The archive filter: archives made here (and the shared corpus), opened in the real sandbox.

Most tests run whole mails through :class:`~detox.pipeline.runner.Pipeline` with the archive filter in
front of the default filters, so every member meets the real image, PDF and text filters. Every
repacked zip is judged by :func:`check_output_zip`, which shares no code with the filter: zipfile
reopens it and checks every CRC, every name is a clean relative path, and every member is one of the
allowed kinds, each checked on its own (Pillow for images via ``assert_image_clean``, pikepdf for
PDFs via ``assert_inert``, UTF-8 without binary signatures for text, the same check again for a
nested zip); no member has the bytes of anything the pipeline held or dropped.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
import hashlib
import io
import os
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pikepdf
import pytest
from PIL import Image, PngImagePlugin
from support.inert import OFFICE_OUTPUT_TYPES, assert_office_clean, assert_zip_clean
from support.sandboxes import CannedSandbox, skip_or_fail

from detox.config.schema import DetoxConfig, NoticeConfig
from detox.envelope import Envelope
from detox.errors import FilterError, FilterTimeout
from detox.filters.archive import (
    ArchiveFilter,
    ArchiveOptions,
    guess_type,
    repacked_name,
    safe_segments,
)
from detox.filters.base import FilterContext
from detox.pipeline.model import Action, Part, PartRecord, Role, Verdict
from detox.pipeline.registry import build_pipeline
from detox.pipeline.runner import DetoxResult, Pipeline, detect_type
from detox.sandbox.base import Limits
from detox.sandbox.inside.converters import archive as converter

# The reason texts proposed for notice.reasons (config/detox.toml); rendered here to see them work.
ARCHIVE_REASONS = {
    "encrypted-archive": (
        "パスワード付き（暗号化された）圧縮ファイルは中身を確認できないため。パスワード付き ZIP と"
        "パスワードを別々に送る方式（いわゆる PPAP）は受け付けていません。送信者に、パスワード付き ZIP "
        "以外の方法（暗号化しない添付や、組織が認めるファイル共有サービスなど）で送り直すよう依頼してください"
    ),
    "archive-bomb": "展開すると異常に大きくなる圧縮ファイル（圧縮爆弾の疑い）のため",
    "archive-corrupt": "圧縮ファイルが壊れているか、正しく読み取れないため",
    "archive-unsupported": (
        "この圧縮形式（LZH など）は安全に展開できないため。送信者に ZIP 形式で送り直すよう依頼してください"
    ),
    "archive-is-document": "ZIP 形式の文書ですが、文書の種類を確認できなかったため",
    "archive-empty": "圧縮ファイルの中にファイルが入っていないため",
    "archive-empty-after-detox": (
        "圧縮ファイルの中身がすべて取り除かれたため（中のファイルを個別に記載しています）"
    ),
    "archive-member-unsafe": "圧縮ファイルの中のリンクや、展開先の外を指す危険なファイルのため",
    "archive-os-metadata": "Mac や Windows が自動で作る管理用のファイルのため",
}
CONFIG = DetoxConfig.model_validate(
    {
        "sandbox": {"provider": "bwrap"},
        "filters": {"archive": {"timeout_s": 120}},
        "notice": {"reasons": {**NoticeConfig().reasons, **ARCHIVE_REASONS}},
    }
)
ENV = Envelope("0190000000000ARC", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx")
CORPUS_ENV = "DETOX_CORPUS"
DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
MIB = 1024 * 1024


def make_pipeline(**options: Any) -> Pipeline:
    pipeline = Pipeline(CONFIG, filters=[ArchiveFilter(ArchiveOptions(**options)), *build_pipeline(CONFIG)])
    if pipeline.sandbox is None:
        skip_or_fail("no bubblewrap sandbox here: archives are only opened inside one")
    return pipeline


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return make_pipeline()


# -- running a mail ---------------------------------------------------------------------------------


@dataclass
class Run:
    result: DetoxResult
    records: dict[str, PartRecord]  # by part id
    attachments: dict[str, bytes]  # by file name
    body: str

    @property
    def archive(self) -> PartRecord:
        return self.records["2"]

    def members(self) -> dict[str, PartRecord]:
        return {k: v for k, v in self.records.items() if k.startswith("2:")}

    def output_zip(self) -> bytes:
        assert self.archive.action == "replace", (self.archive.action, self.archive.reason)
        (data,) = self.attachments.values()
        return data


def run_mail(pipeline: Pipeline, data: bytes, filename: str) -> Run:
    msg = EmailMessage()
    msg["From"] = "sender@example.jp"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "資料の送付"
    msg.set_content("資料をお送りします。\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=filename)
    result = pipeline.run(msg.as_bytes(), ENV)
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    attachments: dict[str, bytes] = {}
    for att in out.iter_attachments():
        content = att.get_content()
        assert isinstance(content, bytes)
        attachments[str(att.get_filename())] = content
    body_part = out.get_body(("plain",))
    assert body_part is not None
    records = {r.part_id: r for r in result.records}
    assert len(records) == len(result.records), "part ids must be unique (the store keys on them)"
    return Run(result, records, attachments, str(body_part.get_content()))


def withheld_hashes(run: Run) -> set[str]:
    return {r.sha256 for r in run.result.records if r.action in ("hold", "drop") and r.sha256}


# -- the independent check: support.inert.assert_zip_clean (shares no code with the filter) ----------

check_output_zip = assert_zip_clean
OFFICE_TYPES_BY_EXTENSION = {ext: ctype for ctype, ext in OFFICE_OUTPUT_TYPES.items()}


# -- making archives -----------------------------------------------------------------------------


def make_zip(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


@dataclass
class RawEntry:
    """A zip entry written byte by byte: any name bytes, flags, method, sizes, extra field."""

    name: bytes
    data: bytes  # as stored (compressed / encrypted)
    method: int = 0
    flags: int = 0
    crc: int = 0
    size: int | None = None  # the declared uncompressed size (default: len(data))
    csize: int | None = None  # the declared compressed size (default: len(data))
    extra: bytes = b""
    external_attr: int = 0
    made_by_system: int = 0  # 0 MS-DOS, 3 Unix
    offset: int | None = None  # point the central entry at an earlier local header


def raw_zip(entries: list[RawEntry]) -> bytes:
    out = bytearray()
    central = bytearray()
    for e in entries:
        size = len(e.data) if e.size is None else e.size
        csize = len(e.data) if e.csize is None else e.csize
        offset = e.offset
        if offset is None:
            offset = len(out)
            out += struct.pack(
                "<4sHHHHHIIIHH", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21, e.crc, csize, size,
                len(e.name), len(e.extra),
            )  # fmt: skip
            out += e.name + e.extra + e.data
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", (e.made_by_system << 8) | 20, 20, e.flags, e.method, 0,
            0x21, e.crc, csize, size, len(e.name), len(e.extra), 0, 0, 0, e.external_attr, offset,
        )  # fmt: skip
        central += e.name + e.extra
    n = len(entries)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(out), 0)
    return bytes(out + central + eocd)


def stored(name: str | bytes, data: bytes, **kwargs: Any) -> RawEntry:
    raw = name.encode("utf-8") if isinstance(name, str) else name
    return RawEntry(raw, data, crc=zlib.crc32(data), **kwargs)


def deflate_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, made in milliseconds: one fully flushed block
    (byte-aligned, no reference to earlier data) repeated, then an empty final block."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(MIB)) + comp.flush(zlib.Z_FULL_FLUSH)
    return block * mib + b"\x03\x00"


def gzip_zeros(mib: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + deflate_zeros(mib) + struct.pack("<II", 0, mib * MIB)


def png(size: tuple[int, int] = (24, 16), text: str | None = "SECRET-TEXT") -> bytes:
    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Comment", text)
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def exe_blob() -> bytes:
    return b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 50 + b"PE\x00\x00" + b"\x90" * 300


def js_pdf() -> bytes:
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(200, 200))
    pdf.Root.OpenAction = pdf.make_indirect(
        pikepdf.Dictionary(
            Type=pikepdf.Name.Action, S=pikepdf.Name.JavaScript, JS=pikepdf.String("app.alert('DETOXMARK')")
        )
    )
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def make_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1_700_000_000
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def tar_special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def make_7z(
    entries: list[tuple[str, bytes]], password: str | None = None, encrypt_headers: bool = False
) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password=password, header_encryption=encrypt_headers) as archive:
        for name, data in entries:
            archive.writestr(data, name)
    return buf.getvalue()


# -- the main path: a mixed zip through the whole pipeline -----------------------------------------


def test_zip_members_are_detoxified_repacked_and_the_exe_is_held(pipeline: Pipeline) -> None:
    text = "見積書の内容です。\r\n金額: 1,000円\r\n".encode("cp932")
    photo = png()
    exe = exe_blob()
    data = make_zip([("docs/見積.txt", text), ("img/photo.png", photo), ("path/a.exe", exe)])
    run = run_mail(pipeline, data, "資料.zip")

    assert (run.archive.filter, run.archive.action) == ("archive", "replace")
    members = run.members()
    assert set(members) == {"2:docs/見積.txt", "2:img/photo.png", "2:path/a.exe"}
    assert (members["2:docs/見積.txt"].filter, members["2:docs/見積.txt"].action) == (
        "text-attachment",
        "replace",
    )
    assert (members["2:img/photo.png"].filter, members["2:img/photo.png"].action) == ("image", "replace")
    held = members["2:path/a.exe"]
    assert (held.action, held.filename) == ("hold", "a.exe")
    assert held.sha256 == hashlib.sha256(exe).hexdigest()
    assert run.archive.removed == {"member-held": 1}

    # The notice names the held member with its own hold id; the mail carries the repacked zip.
    assert "a.exe" in run.body and "0190000000000ARC/2:path/a.exe" in run.body
    assert set(run.attachments) == {"資料.zip"}
    out = check_output_zip(run.output_zip(), withheld_hashes(run))
    assert set(out) == {"docs/見積.txt", "img/photo.png"}
    assert out["docs/見積.txt"].decode("utf-8") == "見積書の内容です。\r\n金額: 1,000円\r\n"
    assert b"SECRET-TEXT" not in out["img/photo.png"]
    assert run.archive.output_sha256 == hashlib.sha256(run.output_zip()).hexdigest()
    assert "archive-repacked=1" in run.result.actions
    assert "image-reencoded=1" in run.result.actions


def test_pdf_member_goes_through_the_pdf_filter(pipeline: Pipeline) -> None:
    run = run_mail(pipeline, make_zip([("報告書.pdf", js_pdf()), ("readme.txt", b"see the pdf\n")]), "r.zip")
    assert run.records["2:報告書.pdf"].filter == "pdf"
    assert run.records["2:報告書.pdf"].action == "replace"
    out = check_output_zip(run.output_zip(), withheld_hashes(run))
    assert set(out) == {"報告書.pdf", "readme.txt"}
    assert b"DETOXMARK" not in out["報告書.pdf"]


def test_detox_output_sent_back_in_is_repacked_again(pipeline: Pipeline) -> None:
    first = run_mail(pipeline, make_zip([("a.txt", "テキスト\n".encode()), ("p.png", png())]), "a.zip")
    again = run_mail(pipeline, first.output_zip(), "a.zip")
    assert again.archive.action == "replace"  # not "returned its input unchanged"
    check_output_zip(again.output_zip(), withheld_hashes(again))


# -- nesting --------------------------------------------------------------------------------------


def test_nested_archives_stop_at_max_depth(pipeline: Pipeline) -> None:
    deepest = make_zip([("deep.txt", b"four levels down\n")])
    level3 = make_zip([("l3.zip", deepest), ("note3.txt", b"level three\n")])
    level2 = make_zip([("l2.zip", level3), ("note2.txt", b"level two\n")])
    level1 = make_zip([("l1.zip", level2), ("note1.txt", b"level one\n")])
    run = run_mail(pipeline, level1, "nested.zip")

    inner = "2:l1.zip:l2.zip:l3.zip"
    assert run.records["2:l1.zip"].action == "replace"
    assert run.records["2:l1.zip:l2.zip"].action == "replace"
    assert (run.records[inner].action, run.records[inner].reason) == ("hold", "limit-exceeded")
    assert not any(pid.startswith(inner + ":") for pid in run.records)  # never opened
    assert run.records["2:l1.zip:l2.zip:note3.txt"].action == "replace"
    out = check_output_zip(run.output_zip(), withheld_hashes(run))
    l1 = check_output_zip(out["l1.zip"], set())
    l2 = check_output_zip(l1["l2.zip"], set())
    assert set(l2) == {"note3.txt"}
    assert "l3.zip" in run.body and f"0190000000000ARC/{inner}" in run.body


def test_archive_in_a_gzip_in_a_tar(pipeline: Pipeline) -> None:
    inner = make_zip([("memo.txt", b"memo\n")])
    tgz = make_tar([("files/inner.zip", inner), ("files/readme.txt", b"readme\n")], mode="w:gz")
    run = run_mail(pipeline, tgz, "bundle.tar.gz")
    assert run.records["2:files/inner.zip"].action == "replace"
    assert run.records["2:files/inner.zip:memo.txt"].action == "replace"
    out = check_output_zip(run.output_zip(), set())
    assert set(out) == {"files/inner.zip", "files/readme.txt"}
    assert set(run.attachments) == {"bundle.zip"}


# -- bombs and caps --------------------------------------------------------------------------------


def test_one_gigabyte_of_zeros_is_held_at_once(pipeline: Pipeline) -> None:
    bomb = raw_zip([RawEntry(b"zeros.bin", deflate_zeros(1024), method=8, size=1024 * MIB)])
    assert len(bomb) < 2 * MIB
    started = time.monotonic()
    run = run_mail(pipeline, bomb, "bomb.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "limit-exceeded")
    assert time.monotonic() - started < 10
    assert not run.attachments


def test_ratio_bomb_under_the_size_caps_is_held(pipeline: Pipeline) -> None:
    bomb = raw_zip([RawEntry(b"zeros.bin", deflate_zeros(50), method=8, size=50 * MIB)])
    run = run_mail(pipeline, bomb, "bomb.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-bomb")


def test_lying_sizes_do_not_get_past_the_read_loop(pipeline: Pipeline) -> None:
    # 60 MiB of zeros in a 60 KiB file, declared as compressed to 60 MiB: the declared ratio is 1:1,
    # so only the bytes counted in the read loop can tell (the overall ratio trips at 100 x 60 KiB).
    lying = raw_zip([RawEntry(b"zeros.bin", deflate_zeros(60), method=8, size=60 * MIB, csize=60 * MIB)])
    run = run_mail(pipeline, lying, "lying.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-bomb")


def test_overlapping_entries_count_every_time(pipeline: Pipeline) -> None:
    kernel = RawEntry(b"k", deflate_zeros(10), method=8, size=10 * MIB)
    entries = [kernel] + [RawEntry(b"k", kernel.data, method=8, size=10 * MIB, offset=0) for _ in range(29)]
    run = run_mail(pipeline, raw_zip(entries), "overlap.zip")
    assert run.archive.action == "hold"
    assert run.archive.reason in ("limit-exceeded", "archive-bomb")


def test_gzip_bomb_stops_early_in_little_memory(pipeline: Pipeline) -> None:
    sandbox = pipeline.sandbox
    assert sandbox is not None
    bomb = gzip_zeros(1024)
    limits = Limits(timeout_s=20, cpu_s=20, memory_bytes=512 * MIB, max_output_bytes=64 * MIB)
    started = time.monotonic()
    meta, data = converter.unpack_result(sandbox.run("archive", bomb, {"format": "gzip"}, limits))
    assert (meta["status"], meta["reason"], data) == ("held", "archive-bomb", b"")
    assert time.monotonic() - started < 10


def test_nested_bombs_42_style(pipeline: Pipeline) -> None:
    inner = raw_zip(
        [RawEntry(f"{i}.bin".encode(), deflate_zeros(64), method=8, size=64 * MIB) for i in range(8)]
    )
    # Stored, as in 42.zip: an inner zip does not compress again, so the outer one is no ratio bomb.
    outer = make_zip(
        [*((f"lib{i}.zip", inner) for i in range(4)), ("readme.txt", b"42\n")], zipfile.ZIP_STORED
    )
    run = run_mail(pipeline, outer, "42.zip")
    for i in range(4):
        assert run.records[f"2:lib{i}.zip"].action == "hold"
        assert run.records[f"2:lib{i}.zip"].reason in ("limit-exceeded", "archive-bomb")
    assert set(check_output_zip(run.output_zip(), withheld_hashes(run))) == {"readme.txt"}


def test_too_many_members(pipeline: Pipeline) -> None:
    many = make_zip([(f"f{i}.txt", b"x") for i in range(1001)], method=zipfile.ZIP_STORED)
    run = run_mail(pipeline, many, "many.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "limit-exceeded")
    small = make_pipeline(max_members=5)
    run = run_mail(small, make_zip([(f"f{i}.txt", b"x") for i in range(6)]), "six.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "limit-exceeded")
    run = run_mail(small, make_zip([(f"f{i}.txt", b"x") for i in range(5)]), "five.zip")
    assert run.archive.action == "replace"


# -- encryption (PPAP) -----------------------------------------------------------------------------


def _assert_encrypted(run: Run) -> None:
    assert (run.archive.action, run.archive.reason) == ("hold", "encrypted-archive")
    assert not run.attachments
    assert "PPAP" in run.body  # the Japanese reason, from notice.reasons


def test_zipcrypto_is_held(pipeline: Pipeline) -> None:
    data = raw_zip([RawEntry(b"secret.txt", os.urandom(40), flags=0x1, crc=1234, size=28)])
    _assert_encrypted(run_mail(pipeline, data, "secret.zip"))


def test_winzip_aes_is_held(pipeline: Pipeline) -> None:
    aes_extra = struct.pack("<HHH2sBH", 0x9901, 7, 2, b"AE", 3, 8)
    data = raw_zip([RawEntry(b"secret.txt", os.urandom(60), method=99, flags=0x1, size=28, extra=aes_extra)])
    _assert_encrypted(run_mail(pipeline, data, "secret.zip"))


def test_one_encrypted_member_holds_the_whole_archive(pipeline: Pipeline) -> None:
    data = raw_zip(
        [stored("decoy.txt", b"nothing here\n"), RawEntry(b"payload.exe", os.urandom(64), flags=0x1)]
    )
    run = run_mail(pipeline, data, "mixed.zip")
    _assert_encrypted(run)
    assert not run.members()


@pytest.mark.parametrize("encrypt_headers", [False, True])
def test_encrypted_7z_is_held(pipeline: Pipeline, encrypt_headers: bool) -> None:
    data = make_7z([("secret.txt", b"secret\n")], password="password", encrypt_headers=encrypt_headers)
    _assert_encrypted(run_mail(pipeline, data, "secret.7z"))


# -- names -------------------------------------------------------------------------------------------


def test_cp932_names_without_the_utf8_flag(pipeline: Pipeline) -> None:
    # "ソ" and "表" end in 0x5C, the backslash: decoding comes before any splitting.
    names = ["資料\\ソフト表.txt", "資料\\予定.txt", "報告.txt"]
    data = raw_zip([stored(n.encode("cp932"), f"{i}\n".encode()) for i, n in enumerate(names)])
    run = run_mail(pipeline, data, "資料.zip")
    assert set(run.members()) == {"2:資料/ソフト表.txt", "2:資料/予定.txt", "2:報告.txt"}
    assert run.records["2:資料/ソフト表.txt"].filename == "ソフト表.txt"
    out = check_output_zip(run.output_zip(), set())
    assert set(out) == {"資料/ソフト表.txt", "資料/予定.txt", "報告.txt"}


@pytest.mark.parametrize(
    ("raw", "fallback", "expected"),
    [
        ("見積書.xlsx".encode("cp932"), "cp437", "見積書.xlsx"),
        ("ｶﾀｶﾅと漢字.txt".encode("cp932"), "cp437", "ｶﾀｶﾅと漢字.txt"),
        ("①議事録.docx".encode("cp932"), "cp437", "①議事録.docx"),
        ("Résumé.doc".encode("cp437"), "cp437", "Résumé.doc"),  # 0x82 's' would be a CP932 pair
        ("日本語.txt".encode(), "cp437", "日本語.txt"),  # UTF-8 without the flag (macOS, Linux)
        ("café.txt".encode("latin-1"), "latin-1", "café.txt"),
        ("テスト.lzh".encode("euc_jp"), "lzh", "テスト.lzh"),
        (b"plain.txt", "cp437", "plain.txt"),
    ],
)
def test_decode_name(raw: bytes, fallback: str, expected: str) -> None:
    assert converter.decode_name(raw, fallback) == expected


def test_unicode_path_extra_field_wins_when_its_crc_matches() -> None:
    raw = b"?.txt"
    good = struct.pack("<HHBI", 0x7075, 5 + len("表.txt".encode()), 1, zlib.crc32(raw)) + "表.txt".encode()
    bad = struct.pack("<HHBI", 0x7075, 5 + len("表.txt".encode()), 1, 0) + "表.txt".encode()
    for extra, expected in ((good, "表.txt"), (bad, "?.txt")):
        zf = zipfile.ZipFile(io.BytesIO(raw_zip([stored(raw, b"x", extra=extra)])))
        assert converter.zip_name(zf.infolist()[0]) == expected


def test_duplicate_names_get_unique_ids_and_file_names(pipeline: Pipeline) -> None:
    data = raw_zip(
        [stored("World.txt", b"first\n"), stored("World.txt", b"second\n"), stored("world.TXT", b"3\n")]
    )
    run = run_mail(pipeline, data, "dual.zip")
    assert {"2:World.txt", "2:World.txt#2", "2:world.TXT"} <= set(run.members())
    out = check_output_zip(run.output_zip(), set())
    assert out == {"World.txt": b"first\n", "World (2).txt": b"second\n", "world (3).TXT": b"3\n"}


# -- unsafe members ---------------------------------------------------------------------------------


TRAVERSAL_NAMES = [
    "../../evil.txt",
    "/etc/cron.d/evil.txt",
    "C:\\Windows\\evil.txt",
    "ok/../../evil.txt",
    "..\\..\\evil.txt",
    "evil\x07bell.txt",
    "invoice\u202etxt.exe",
]


def test_zip_traversal_names_are_refused_and_never_written(pipeline: Pipeline) -> None:
    data = raw_zip([stored("good/keep.txt", b"keep\n"), *(stored(n, b"EVIL\n") for n in TRAVERSAL_NAMES)])
    run = run_mail(pipeline, data, "t.zip")
    refused = [r for r in run.members().values() if r.reason == "archive-member-unsafe"]
    assert len(refused) == len(TRAVERSAL_NAMES)
    assert {r.error for r in refused} == {"parent-path", "absolute-path", "bad-name"}
    assert all(r.action == "hold" and ".." not in r.part_id for r in refused)
    out = check_output_zip(run.output_zip(), set())
    assert out == {"good/keep.txt": b"keep\n"}


def test_tar_links_devices_and_traversal_are_refused(pipeline: Pipeline) -> None:
    data = make_tar(
        [
            ("docs/ok.txt", b"fine\n"),
            tar_special("docs/passwd", tarfile.SYMTYPE, "/etc/passwd"),
            tar_special("docs/hard", tarfile.LNKTYPE, "docs/ok.txt"),
            tar_special("dev/null", tarfile.CHRTYPE),
            tar_special("fifo", tarfile.FIFOTYPE),
            ("../escape.txt", b"EVIL\n"),
            ("/abs.txt", b"EVIL\n"),
        ]
    )
    run = run_mail(pipeline, data, "t.tar")
    why = {pid: r.error for pid, r in run.members().items() if r.reason == "archive-member-unsafe"}
    assert sorted(why.values()) == ["absolute-path", "device", "device", "hardlink", "parent-path", "symlink"]
    assert check_output_zip(run.output_zip(), set()) == {"docs/ok.txt": b"fine\n"}


def test_zip_symlink_entry_is_refused(pipeline: Pipeline) -> None:
    link = stored("link", b"/etc/passwd", made_by_system=3, external_attr=(stat.S_IFLNK | 0o777) << 16)
    run = run_mail(pipeline, raw_zip([link, stored("a.txt", b"a\n")]), "l.zip")
    assert run.records["2:link"].error == "symlink"
    assert check_output_zip(run.output_zip(), set()) == {"a.txt": b"a\n"}


# -- single-file compressors and other formats -----------------------------------------------------


def test_gzip_single_file_named_from_its_header(pipeline: Pipeline) -> None:
    content = "市,人口\n横浜,3770000\n".encode("cp932")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = comp.compress(content) + comp.flush()
    header = b"\x1f\x8b\x08\x08\x00\x00\x00\x00\x00\x0b" + "集計.csv".encode("cp932") + b"\x00"  # FNAME set
    data = header + deflated + struct.pack("<II", zlib.crc32(content), len(content))
    assert gzip.decompress(data) == content
    run = run_mail(pipeline, data, "download.gz")
    assert run.records["2:集計.csv"].filter == "text-attachment"
    out = check_output_zip(run.output_zip(), set())
    assert out == {"集計.csv": "市,人口\n横浜,3770000\n".encode()}
    assert set(run.attachments) == {"download.zip"}


def test_gzip_without_a_name_is_named_after_the_attachment(pipeline: Pipeline) -> None:
    run = run_mail(pipeline, gzip.compress(b"log line\n", mtime=0), "server.log.txt.gz")
    assert set(check_output_zip(run.output_zip(), set())) == {"server.log.txt"}
    assert set(run.attachments) == {"server.log.txt.zip"}


@pytest.mark.parametrize(("mode", "name"), [("w:bz2", "x.tar.bz2"), ("w:xz", "x.txz"), ("w", "x.tar")])
def test_tars(pipeline: Pipeline, mode: str, name: str) -> None:
    run = run_mail(pipeline, make_tar([("a/b.txt", b"b\n"), ("c.png", png())], mode=mode), name)
    assert set(check_output_zip(run.output_zip(), withheld_hashes(run))) == {"a/b.txt", "c.png"}
    assert set(run.attachments) == {"x.zip"}


def test_7z_is_repacked_as_zip(pipeline: Pipeline) -> None:
    data = make_7z([("フォルダ/説明.txt", "説明\n".encode()), ("写真.png", png()), ("tool.exe", exe_blob())])
    run = run_mail(pipeline, data, "資料.7z")
    assert run.records["2:tool.exe"].action == "hold"
    out = check_output_zip(run.output_zip(), withheld_hashes(run))
    assert set(out) == {"フォルダ/説明.txt", "写真.png"}
    assert set(run.attachments) == {"資料.zip"}


def test_zip_that_is_an_office_document_or_a_program_is_held(pipeline: Pipeline) -> None:
    docx = make_zip(
        [("customXml/item1.xml", b"<x/>"), ("word/document.xml", b"<w/>"), ("[Content_Types].xml", b"<T/>")]
    )
    assert detect_type(docx) == "application/zip"  # libmagic looks for [Content_Types].xml up front
    run = run_mail(pipeline, docx, "report.docx")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-is-document")
    jar = make_zip([("com/x/Main.class", b"\xca\xfe\xba\xbe"), ("META-INF/MANIFEST.MF", b"Main-Class: x\n")])
    run = run_mail(pipeline, jar, "tool.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "executable")


def test_os_metadata_is_dropped_quietly(pipeline: Pipeline) -> None:
    data = make_zip(
        [("a.txt", b"a\n"), ("__MACOSX/._a.txt", b"\x00\x05\x16\x07junk"), (".DS_Store", b"\x00\x00")]
    )
    run = run_mail(pipeline, data, "mac.zip")
    assert run.records["2:__MACOSX/._a.txt"].action == "drop"
    assert run.records["2:.DS_Store"].reason == "archive-os-metadata"
    assert "._a.txt" not in run.body
    assert check_output_zip(run.output_zip(), withheld_hashes(run)) == {"a.txt": b"a\n"}


def test_empty_archive_and_nothing_left(pipeline: Pipeline) -> None:
    run = run_mail(pipeline, make_zip([]), "empty.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-empty")
    run = run_mail(pipeline, make_zip([("a.exe", exe_blob()), ("b.exe", exe_blob() + b"2")]), "tools.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-empty-after-detox")
    assert {r.action for r in run.members().values()} == {"hold"}
    assert "a.exe" in run.body and "b.exe" in run.body and "tools.zip" in run.body
    assert not run.attachments


def test_garbage_that_looks_like_a_zip_is_held_as_corrupt(pipeline: Pipeline) -> None:
    garbage = make_zip([("a.txt", b"hello world" * 10)])[:60] + os.urandom(2000)
    assert detect_type(garbage) == "application/zip"
    run = run_mail(pipeline, garbage, "broken.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-corrupt")


def test_local_and_central_names_that_differ_are_corrupt(pipeline: Pipeline) -> None:
    data = raw_zip([stored("invoice.pdf", b"hello")]).replace(b"invoice.pdf", b"invoice.exe", 1)
    run = run_mail(pipeline, data, "x.zip")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-corrupt")


# -- LZH --------------------------------------------------------------------------------------------

# Made with LHa (jlha-utils) here: level-2 header, -lh5-, "sub/b.txt" = b"hello lzh " * 1000.
LZH_LH5 = base64.b64decode(
    "LgAtbGg1LSwAAAAQJwAAT0cHayACzJMABQAA3bIIAAFiLnR4dAcAAnN1Yv8AAAAyOmiCL/IMkYQWDws8nSXLwJlybU7KERERERERERERER"
    "ERERERERERER8gAA=="
)


def lha_crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def lzh_lh0(entries: list[tuple[bytes, bytes]], crc_fix: Callable[[int], int] = lambda c: c) -> bytes:
    """A level-0 LZH archive of stored (-lh0-) members with raw name bytes."""
    out = bytearray()
    for name, data in entries:
        body = b"-lh0-" + struct.pack("<IIIBBB", len(data), len(data), 0x5B2B0000, 0x20, 0, len(name))
        body += name + struct.pack("<H", crc_fix(lha_crc16(data)))
        out += bytes([len(body), sum(body) & 0xFF]) + body + data
    return bytes(out + b"\x00")


def test_lzh_is_held_by_default(pipeline: Pipeline) -> None:
    run = run_mail(pipeline, LZH_LH5, "古い資料.lzh")
    assert run.archive.detected_type == "application/x-lzh-compressed"
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-unsupported")
    assert "ZIP 形式で送り直す" in run.body


@pytest.fixture(scope="module")
def lzh_pipeline() -> Pipeline:
    pytest.importorskip("lhafile", reason="lhafile (the opt-in LZH reader) is not installed")
    return make_pipeline(hold_formats=())


def test_lzh_opt_in_reads_lh5_and_cp932_names(lzh_pipeline: Pipeline) -> None:
    run = run_mail(lzh_pipeline, LZH_LH5, "a.lzh")
    assert check_output_zip(run.output_zip(), set()) == {"sub/b.txt": b"hello lzh " * 1000}
    names = [("資料\\ソフト表.txt".encode("cp932"), "表\n".encode("cp932")), (b"readme.txt", b"r\n")]
    run = run_mail(lzh_pipeline, lzh_lh0(names), "古い資料.lzh")
    assert set(run.members()) == {"2:資料/ソフト表.txt", "2:readme.txt"}
    out = check_output_zip(run.output_zip(), set())
    assert out == {"資料/ソフト表.txt": "表\n".encode(), "readme.txt": b"r\n"}
    assert set(run.attachments) == {"古い資料.zip"}


def test_lzh_opt_in_refuses_bad_crc_and_traversal(lzh_pipeline: Pipeline) -> None:
    run = run_mail(lzh_pipeline, lzh_lh0([(b"a.txt", b"abc")], crc_fix=lambda c: c ^ 1), "bad.lzh")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-corrupt")
    run = run_mail(lzh_pipeline, lzh_lh0([(b"..\\evil.txt", b"EVIL"), (b"ok.txt", b"ok\n")]), "t.lzh")
    assert run.records["2:evil.txt"].error == "parent-path"
    assert check_output_zip(run.output_zip(), set()) == {"ok.txt": b"ok\n"}


# Made with LHa here: level-2 header, -lh5-, "z.bin" = 50,000,000 zero bytes in 1,077 bytes.
LZH_BOMB = base64.b64decode(
    "JwAtbGg1LTUEAACA8PoCW0YHayACAAAABQAA0B4IAAF6LmJpbgAAFHsgBD/r0QB/////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "4o9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+g"
    "Ao9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+g"
    "Ao9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+gAo9AAAP6ACj0AAA/oAKPQAAD+g"
    "AKnkAIf8tEbIB///////////////////////////////////////////////////////////////////////////////////////////"
    "////////////////////////////////////////////////////////////////////////////////////////////////////////"
    "///////////////////////////////gAA=="
)


def test_lzh_opt_in_stops_a_bomb_or_crashes_contained(lzh_pipeline: Pipeline) -> None:
    run = run_mail(lzh_pipeline, LZH_BOMB, "z.lzh")
    assert (run.archive.action, run.archive.reason) == ("hold", "archive-bomb")  # the declared ratio
    # The same, declaring 10,000 bytes: lzhlib writes past its buffer and the sandbox child dies of
    # SIGSEGV (one reason LZH is held by default). Contained: the archive is held all the same.
    assert LZH_BOMB[11:15] == struct.pack("<I", 50_000_000)
    lying = LZH_BOMB[:11] + struct.pack("<I", 10_000) + LZH_BOMB[15:]
    started = time.monotonic()
    run = run_mail(lzh_pipeline, lying, "z.lzh")
    assert run.archive.action == "hold"
    assert run.archive.reason in ("archive-bomb", "filter-error")
    assert time.monotonic() - started < 20


# -- the filter's own checks on the converter's answer (no sandbox needed) --------------------------


def pass_member(part: Part) -> tuple[Verdict, PartRecord]:
    record = PartRecord(part.part_id, "attachment", part.declared_type, part.detected_type,
                        part.untrusted_filename, part.size, part.sha256, "x", "pass")  # fmt: skip
    return Verdict(Action.PASS), record


def fake_ctx(
    answer: bytes,
    decide: Callable[[Part], tuple[Verdict, PartRecord]] = pass_member,
    config: DetoxConfig = CONFIG,
) -> FilterContext:
    sandbox = CannedSandbox(answer, "archive")
    return FilterContext("Q", "example.jp", config, sandbox=sandbox, decide_member=decide)


def zip_part(part_id: str = "2") -> Part:
    data = make_zip([("a.txt", b"a")])
    return Part(part_id, Role.ATTACHMENT, "application/zip", "application/zip", None, "a.zip", data,
                hashlib.sha256(data).hexdigest())  # fmt: skip


def answer(members: list[dict[str, Any]], data: bytes, **meta: Any) -> bytes:
    return converter.pack_result({"status": "ok", "members": members, "refused": [], **meta}, [data])


@pytest.mark.parametrize(
    "bad",
    [
        answer([{"path": "a.txt", "offset": 0, "size": 5}], b"abc"),  # past the end
        answer([{"path": "a.txt", "offset": 0, "size": 1}], b"abc"),  # bytes nobody owns
        answer([{"path": "a.txt", "offset": 1, "size": 2}], b"abc"),  # out of order
        answer([{"path": "", "offset": 0, "size": 3}], b"abc"),
        answer([], b"", refused=[{"path": "x", "why": "because", "size": 1}]),
        converter.pack_result({"status": "held", "reason": "i-said-so"}),
        converter.pack_result({"status": "maybe"}),
        b"DXA1\xff\xff\xff\xff",
        b"not a result",
    ],
)
def test_malformed_converter_answers_are_errors(bad: bytes) -> None:
    with pytest.raises(FilterError):
        ArchiveFilter(ArchiveOptions()).process(zip_part(), fake_ctx(bad))


def test_members_beyond_the_time_budget_raise_a_timeout() -> None:
    config = DetoxConfig.model_validate({"filters": {"archive": {"timeout_s": 0.05}}})
    members = [{"path": f"{i}.txt", "offset": i, "size": 1} for i in range(3)]

    def slow(part: Part) -> tuple[Verdict, PartRecord]:
        time.sleep(0.06)
        return pass_member(part)

    ctx = fake_ctx(answer(members, b"abc"), slow, config)
    with pytest.raises(FilterTimeout):
        ArchiveFilter(ArchiveOptions()).process(zip_part(), ctx)


def test_depth_is_counted_in_the_part_id_not_the_mime_tree() -> None:
    flt = ArchiveFilter(ArchiveOptions(max_depth=2))
    ctx = fake_ctx(answer([{"path": "a.txt", "offset": 0, "size": 1}], b"a"))
    deep_mime = zip_part("1.2.3.4.5")
    assert flt.process(deep_mime, ctx).action is Action.REPLACE
    assert flt.process(zip_part("2:x.zip"), ctx).action is Action.REPLACE
    verdict = flt.process(zip_part("2:x.zip:y.zip"), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "limit-exceeded")


def test_helpers() -> None:
    assert repacked_name("資料.7z") == "資料.zip"
    assert repacked_name("data.tar.gz") == "data.zip"
    assert repacked_name("DATA.TGZ") == "DATA.zip"
    assert repacked_name("memo.txt.gz") == "memo.txt.zip"
    assert repacked_name(None) == "archive.zip"
    assert repacked_name(".zip") == ".zip.zip"
    assert safe_segments("a/./b//c.txt") == ["a", "b", "c.txt"]
    assert safe_segments("a\\b.txt") == ["a", "b.txt"]
    assert safe_segments("../x") is None and safe_segments("/x") is None and safe_segments("C:x") is None
    assert safe_segments("../x", strict=False) == ["x"]
    assert safe_segments('con.txt/a<b>:c"d|e?f*.txt. ') == ["_con.txt", "a_b__c_d_e_f_.txt"]
    assert safe_segments("テ\u3099スト.txt") == ["デスト.txt"]  # NFC
    assert guess_type("a.TXT") == "text/plain" and guess_type("noext") == "application/octet-stream"


# -- the shared corpus ----------------------------------------------------------------------------

ARCHIVE_SUFFIXES = (".zip", ".7z", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".lzh", ".lha")
# What must happen to these (the rest: repacked with checked members, or held for a known reason).
CORPUS_EXPECTED = {
    "deco-mail-filter/test-encrypted.zip": ("hold", "encrypted-archive"),
    "deco-mail-filter/test-1-encrypted.zip": ("hold", "encrypted-archive"),
    "corkami-pocs/zip/zipcrypto.zip": ("hold", "encrypted-archive"),
    "corkami-pocs/zip/aes.zip": ("hold", "encrypted-archive"),
    "deco-mail-filter/test.zip": ("replace", ""),
    "corkami-pocs/mini/7-Zip.7z": ("replace", ""),
    "corkami-pocs/mini/tar.tar": ("replace", ""),
    "dangerzone/sample-mime-application-zip.xls": ("hold", "archive-is-document"),
}
KNOWN_REASONS = set(converter.HELD_REASONS) | {
    "archive-empty",
    "archive-empty-after-detox",
    "limit-exceeded",
}


def corpus_root() -> Path:
    return Path(os.environ.get(CORPUS_ENV) or DEFAULT_CORPUS)


def corpus_archives() -> list[Path]:
    docs = corpus_root() / "docs"
    if not docs.is_dir():
        return []
    found = [p for p in sorted(docs.rglob("*")) if p.is_file() and p.name.lower().endswith(ARCHIVE_SUFFIXES)]
    return found + [p for p in sorted(docs.rglob("*.xls")) if p.read_bytes()[:2] == b"PK"]


def _corpus_params() -> Iterator[object]:
    archives = corpus_archives()
    if not archives:
        yield pytest.param(None, marks=pytest.mark.skip(reason="no archives in ../shared/corpus/docs"))
    for path in archives:
        yield pytest.param(path, id=str(path.relative_to(corpus_root() / "docs")))


@pytest.mark.corpus
@pytest.mark.parametrize("path", list(_corpus_params()))
def test_corpus_archive_is_repacked_checked_or_held(pipeline: Pipeline, path: Path) -> None:
    key = str(path.relative_to(corpus_root() / "docs"))
    started = time.monotonic()
    run = run_mail(pipeline, path.read_bytes(), path.name)  # read in place, never copied
    elapsed = time.monotonic() - started
    record = run.archive
    print(
        f"\n{key}: {record.detected_type} -> {record.filter} {record.action} {record.reason} ({elapsed:.2f}s)"
    )
    for member in run.members().values():
        print(f"    {member.part_id}: {member.filter} {member.action} {member.reason} {member.error or ''}")
    if key in CORPUS_EXPECTED:
        assert (record.action, record.reason) == CORPUS_EXPECTED[key]
    if record.filter == "office":  # an OOXML workbook behind a zip-like name: the office filter's
        assert record.action in ("replace", "hold")
        if record.action == "replace":
            ((name, data),) = run.attachments.items()
            assert_office_clean(data, OFFICE_TYPES_BY_EXTENSION[name.rsplit(".", 1)[-1]])
        return
    if record.filter != "archive":  # not claimed (libmagic says something else): held, never passed
        assert record.action == "hold"
        return
    assert record.action in ("replace", "hold")
    if record.action == "hold":
        assert record.reason in KNOWN_REASONS, record.reason
        assert not run.attachments
    else:
        check_output_zip(run.output_zip(), withheld_hashes(run))
