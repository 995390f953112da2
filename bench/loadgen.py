"""Benchmark mails and the SMTP load client shared by latency.py, attachments.py and memory.py.

The client runs in its own process (``python bench/loadgen.py --port P --kind K --n N ...``), so that it
does not share a GIL with the orchestrating script; it writes one JSON document to ``--out``. Two modes:

* closed loop (``--sessions S``): S concurrent sessions, each sending the next message until N are sent;
* open loop (``--rate R``): message i starts at ``t0 + i / R`` whatever happened to the ones before
  (at most ``--max-inflight`` at once; starts that had to wait are counted as ``late``).

Every message goes on its own connection (connect, EHLO, MAIL, RCPT, DATA, QUIT), like smtp-source. Per
message the client records when it started connecting and when the 250 to DATA arrived (unix time, so the
stamps of bench/stampsink.py in another process can be subtracted). Every message carries
``Message-ID: <bench.SEQ.KIND@src.test>``, unique per run through ``--seq-base``.

Kinds (the builders are importable):

* ``text5k``: ~5 KB ISO-2022-JP text/plain (CP50221, RFC 2047 subject), unique body;
* ``pdf`` / ``docx`` / ``jpeg``: a short Japanese text body and one attachment: a 5-page A4 PDF whose pages
  are Pillow pictures of Japanese text (as a scanner or "print to PDF" makes them), a minimal OOXML
  .docx with Japanese paragraphs, a 1600×1200 JPEG; each made unique per message;
* ``mix``: pdf, docx, jpeg in turn (seq % 3);
* ``pdfonly-base``: the pdf kind's mail without the attachment (the same text body), for subtraction;
* ``big``: ``--size`` bytes (default 25,000,000): a text body and a base64 application/octet-stream
  attachment of random bytes (held by detox's policy: the original is stored, nothing is converted).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import random
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import iso2022jp  # noqa: E402  (CP50221 encoder of the throughput bench)

HOST = "127.0.0.1"
MAIL_FROM = "bench@src.test"
RCPT_TO = "taro@city.example.lg.jp"
FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/fonts-japanese-gothic.ttf",
)
PDF_PAGES = 5

_LINES = [
    "令和7年度 第3回 情報セキュリティ委員会 議事録",
    "日時：令和7年11月25日（火）14時00分〜15時30分",
    "場所：本庁舎 第3会議室 ／ 出席者：情報政策課 髙橋、総務課 齋藤、㈱髙﨑商事 德永",
    "1. 無害化通信の運用状況について、事務局から報告があった。",
    "2. 添付ファイルの画像化（PDF）について、処理時間の目標を確認した。",
    "3. LGWAN接続系への持ち込み手順を改定し、例外措置の記録を徹底する。",
    "①メール本文はテキスト化し、URLは無効化して表示する。",
    "②Office文書はマクロ・外部リンクを除去し、原本は保管する。",
    "③パスワード付きZIPは保留とし、送信者に別の方法を依頼する。",
]


def _encoded_subject(text: str) -> str:
    words = []
    for i in range(0, len(text), 10):
        words.append(f"=?ISO-2022-JP?B?{base64.b64encode(iso2022jp(text[i : i + 10])).decode()}?=")
    return "\r\n ".join(words)


def _headers(seq: int, kind: str, subject: str, content_type: str, extra: str = "") -> bytes:
    return (
        f"From: bench <{MAIL_FROM}>\r\n"
        f"To: {RCPT_TO}\r\n"
        f"Subject: {_encoded_subject(subject)} No.{seq}\r\n"
        "Date: Tue, 25 Nov 2025 10:11:00 +0900\r\n"
        f"Message-ID: <bench.{seq}.{kind}@src.test>\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        f"{extra}"
        "\r\n"
    ).encode("ascii")


def _jp_text(seq: int, target: int) -> bytes:
    """ISO-2022-JP CRLF text of about ``target`` bytes (a unique first line)."""
    lines = [f"受付番号 {seq:08d}", "情報政策課 ご担当者様", ""]
    out = b"\r\n".join(iso2022jp(x) for x in lines)
    i = 0
    while len(out) < target:
        out += b"\r\n" + iso2022jp(_LINES[i % len(_LINES)])
        i += 1
    return out + b"\r\n"


# ---------------------------------------------------------------------------------------------- kinds


def text5k(seq: int, size: int = 5120) -> bytes:
    head = _headers(
        seq,
        "text5k",
        "【ご案内】①㈱髙﨑 定例会議",
        'text/plain; charset="ISO-2022-JP"',
        "Content-Transfer-Encoding: 7bit\r\n",
    )
    return head + _jp_text(seq, max(100, size - len(head)))


@functools.cache
def _font_path() -> str | None:
    return next((p for p in FONT_CANDIDATES if os.path.exists(p)), None)


@functools.cache
def make_pdf(pages: int = PDF_PAGES) -> bytes:
    """A4 pages at 100 dpi (827×1169), each a Pillow picture of Japanese text with a table; Pillow
    writes each page as a JPEG image (DCTDecode)."""
    from PIL import Image, ImageDraw, ImageFont

    path = _font_path()
    font: Any = ImageFont.truetype(path, 18) if path else ImageFont.load_default()
    big: Any = ImageFont.truetype(path, 28) if path else font
    images = []
    for page in range(pages):
        img = Image.new("RGB", (827, 1169), "white")
        draw = ImageDraw.Draw(img)
        draw.rectangle((60, 50, 767, 110), fill=(220, 230, 245))
        draw.text((70, 60), f"議事録（{page + 1}/{pages}ページ）", fill="black", font=big)
        y = 140
        for i in range(34):
            draw.text((70, y), _LINES[(i + page) % len(_LINES)], fill=(20, 20, 20), font=font)
            y += 26
        for r in range(5):  # a table of rules
            draw.line((70, 1040 + r * 20, 757, 1040 + r * 20), fill="black", width=1)
        for c in range(5):
            draw.line((70 + c * 171, 1040, 70 + c * 171, 1120), fill="black", width=1)
        images.append(img)
    out = io.BytesIO()
    images[0].save(out, "PDF", resolution=100.0, save_all=True, append_images=images[1:], quality=85)
    return out.getvalue()


@functools.cache
def make_jpeg() -> bytes:
    """1600×1200, a gradient, shapes, noise and Japanese text: a photo-like JPEG at quality 85."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(7)
    img = Image.linear_gradient("L").resize((1600, 1200)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(80):
        x, y = rng.randint(0, 1500), rng.randint(0, 1100)
        draw.ellipse(
            (x, y, x + rng.randint(20, 200), y + rng.randint(20, 200)),
            fill=(rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)),
        )
    noise = Image.effect_noise((1600, 1200), 40).convert("RGB")
    img = Image.blend(img, noise, 0.25)
    path = _font_path()
    if path:
        ImageDraw.Draw(img).text(
            (80, 80), "市民広場 防災訓練 ㈱髙﨑", fill="white", font=ImageFont.truetype(path, 64)
        )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()


def make_docx(seq: int) -> bytes:
    """A minimal valid WordprocessingML package with Japanese paragraphs (and the seq, so it is unique)."""
    paras = [f"見積書送付のご案内（No.{seq}）", *_LINES, "以上、よろしくお願いいたします。"]
    body = "".join(
        '<w:p><w:r><w:rPr><w:rFonts w:eastAsia="ＭＳ 明朝"/></w:rPr>'
        f'<w:t xml:space="preserve">{p}</w:t></w:r></w:p>'
        for p in paras * 3
    )
    files = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.wordprocessingml.document.main+xml"/>'
            '<Override PartName="/docProps/core.xml" ContentType="application/vnd.openxmlformats-'
            'package.core-properties+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
            'relationships/officeDocument" Target="word/document.xml"/>'
            '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/package/2006/relationships/'
            'metadata/core-properties" Target="docProps/core.xml"/></Relationships>'
        ),
        "docProps/core.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/metadata/core-'
            'properties" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f"<dc:title>見積書 {seq}</dc:title><dc:creator>髙﨑 德太郎</dc:creator></cp:coreProperties>"
        ),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{body}<w:sectPr/></w:body></w:document>"
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(
                zipfile.ZipInfo(name, (2025, 11, 25, 10, 0, 0)),
                text.encode("utf-8"),
                compress_type=zipfile.ZIP_DEFLATED,
            )
    return out.getvalue()


def _unique_pdf(seq: int) -> bytes:
    return make_pdf() + f"%bench {seq}\n".encode()  # a comment after %%EOF: readers ignore it


def _unique_jpeg(seq: int) -> bytes:
    jpeg = make_jpeg()
    note = f"bench {seq}".encode()
    com = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note  # a COM segment right after SOI
    return jpeg[:2] + com + jpeg[2:]


_BOUNDARY = "----=_Part_bench_0123456789"


def _with_attachment(seq: int, kind: str, ctype: str, filename: str, data: bytes | None) -> bytes:
    text = _jp_text(seq, 1200)
    if data is None:
        head = _headers(
            seq,
            kind,
            "【資料送付】議事録",
            'text/plain; charset="ISO-2022-JP"',
            "Content-Transfer-Encoding: 7bit\r\n",
        )
        return head + text
    head = _headers(seq, kind, "【資料送付】議事録", f'multipart/mixed; boundary="{_BOUNDARY}"')
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    quoted = "UTF-8''" + "".join(f"%{b:02X}" for b in filename.encode("utf-8"))
    return b"".join(
        [
            head,
            f'--{_BOUNDARY}\r\nContent-Type: text/plain; charset="ISO-2022-JP"\r\n'
            "Content-Transfer-Encoding: 7bit\r\n\r\n".encode("ascii"),
            text,
            f"--{_BOUNDARY}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename*={quoted}\r\n\r\n".encode("ascii"),
            b64,
            f"--{_BOUNDARY}--\r\n".encode("ascii"),
        ]
    )


def pdf_mail(seq: int, size: int = 0) -> bytes:
    return _with_attachment(seq, "pdf", "application/pdf", "議事録.pdf", _unique_pdf(seq))


def pdf_base_mail(seq: int, size: int = 0) -> bytes:
    return _with_attachment(seq, "pdfbase", "", "", None)


def docx_mail(seq: int, size: int = 0) -> bytes:
    ctype = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    return _with_attachment(seq, "docx", ctype, "見積書.docx", make_docx(seq))


def jpeg_mail(seq: int, size: int = 0) -> bytes:
    return _with_attachment(seq, "jpeg", "image/jpeg", "現場写真.jpg", _unique_jpeg(seq))


def mix_mail(seq: int, size: int = 0) -> bytes:
    return (pdf_mail, docx_mail, jpeg_mail)[seq % 3](seq)


@functools.cache
def _random_b64(nbytes: int) -> bytes:
    raw = random.Random(25).randbytes(nbytes)
    return base64.encodebytes(raw).replace(b"\n", b"\r\n")


def big_mail(seq: int, size: int = 25_000_000) -> bytes:
    """``size`` bytes: a text body and a base64 application/octet-stream attachment (random bytes)."""
    head = _headers(seq, "big", "【大容量】データ送付", f'multipart/mixed; boundary="{_BOUNDARY}"')
    text = _jp_text(seq, 1000)
    part1 = (
        f'--{_BOUNDARY}\r\nContent-Type: text/plain; charset="ISO-2022-JP"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode("ascii") + text
    part2 = (
        f"--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64"
        '\r\nContent-Disposition: attachment; filename="data.bin"\r\n\r\n'
    ).encode("ascii")
    tail = f"--{_BOUNDARY}--\r\n".encode("ascii")
    room = size - len(head) - len(part1) - len(part2) - len(tail)
    line = 78  # 76 base64 characters + CRLF
    b64 = _random_b64(max(1, room // line) * 57)
    return head + part1 + part2 + b64 + tail


KINDS: dict[str, Callable[[int, int], bytes]] = {
    "text5k": text5k,
    "pdf": pdf_mail,
    "pdfbase": pdf_base_mail,
    "docx": docx_mail,
    "jpeg": jpeg_mail,
    "mix": mix_mail,
    "big": big_mail,
}


# --------------------------------------------------------------------------------------------- client


async def _send_one(port: int, data: bytes, timeout: float) -> tuple[float, float, str | None]:
    import aiosmtplib

    t0 = time.time()
    client = aiosmtplib.SMTP(
        hostname=HOST,
        port=port,
        local_hostname="bench.src.test",
        start_tls=False,
        use_tls=False,
        timeout=timeout,
    )
    try:
        await client.connect()
        await client.sendmail(MAIL_FROM, [RCPT_TO], data)
        t250 = time.time()
        try:
            await client.quit()
        except Exception:
            client.close()
        return t0, t250, None
    except Exception as exc:
        client.close()
        return t0, time.time(), f"{type(exc).__name__}: {str(exc)[:100]}"


async def run_load(args: argparse.Namespace) -> dict[str, Any]:
    build = KINDS[args.kind]
    size = args.size
    records: list[list[Any]] = []
    late = 0
    start = time.time()
    if args.rate:
        sem = asyncio.Semaphore(args.max_inflight)
        bodies = [build(args.seq_base + i, size) for i in range(args.n)]  # outside the paced window
        tasks = []

        async def one(i: int) -> None:
            try:
                t0, t250, err = await _send_one(args.port, bodies[i], args.timeout)
                records.append([args.seq_base + i, t0, t250, err])
            finally:
                sem.release()

        start = time.time()
        t_begin = time.monotonic()
        for i in range(args.n):
            delay = t_begin + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if sem.locked():
                late += 1
            await sem.acquire()
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    else:
        todo = iter(range(args.n))

        async def session() -> None:
            for i in todo:
                data = build(args.seq_base + i, size)
                t0, t250, err = await _send_one(args.port, data, args.timeout)
                del data
                records.append([args.seq_base + i, t0, t250, err])

        start = time.time()
        await asyncio.gather(*(session() for _ in range(args.sessions)))
    end = time.time()
    cpu = os.times()
    return {
        "start": start,
        "end": end,
        "late": late,
        "records": records,
        "client_cpu_s": cpu.user + cpu.system,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kind", choices=sorted(KINDS), required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--seq-base", type=int, default=0)
    ap.add_argument("--size", type=int, default=0, help="text5k: bytes (5120); big: bytes (25,000,000)")
    ap.add_argument("--sessions", type=int, default=10, help="closed loop: concurrent sessions")
    ap.add_argument("--rate", type=float, default=0.0, help="open loop: messages per second")
    ap.add_argument("--max-inflight", type=int, default=200, help="open loop: cap on concurrent sends")
    ap.add_argument("--timeout", type=float, default=120.0, help="per SMTP command, seconds")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not args.size:
        args.size = {"text5k": 5120, "big": 25_000_000}.get(args.kind, 0)
    import uvloop

    result = uvloop.run(run_load(args))
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
