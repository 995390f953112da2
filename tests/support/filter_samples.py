"""Representative inputs for every installed filter, made here: one that it converts, one that makes
it fail (where any input can), and a heavy one for the deadline."""

from __future__ import annotations

import functools
import hashlib
import io
import random
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage

from PIL import Image

from detox.pipeline.model import Part, Role

WML = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


@dataclass(frozen=True)
class Sample:
    role: Role
    declared: str
    detected: str
    filename: str | None
    make: Callable[[], bytes]  # a representative input the filter converts
    broken: Callable[[], bytes] | None = None  # one that makes it raise (filter-error)
    heavy: Callable[[], bytes] | None = None  # one that takes it well over DEADLINE_S

    def part(self, data: bytes, part_id: str = "2") -> Part:
        return Part(
            part_id=part_id,
            role=self.role,
            declared_type=self.declared,
            detected_type=self.detected,
            charset_label="utf-8" if self.declared.startswith("text/") else None,
            untrusted_filename=self.filename,
            payload=data,
            sha256=hashlib.sha256(data).hexdigest(),
        )

    def mail(self, data: bytes) -> bytes:
        """A mail carrying ``data`` as this sample's part (the body, or an attachment after one)."""
        msg = EmailMessage()
        msg["From"] = "山田 <yamada@example.jp>"
        msg["To"] = "taro@city.example.lg.jp"
        msg["Subject"] = "契約テスト"
        maintype, _, subtype = self.declared.partition("/")
        if self.role is Role.BODY:
            msg.set_content(data, maintype=maintype, subtype=subtype, cte="base64")
            if self.declared.startswith("text/"):
                msg.set_param("charset", "utf-8")
            return msg.as_bytes()
        msg.set_content("本文")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=self.filename)
        return msg.as_bytes()


@functools.cache
def png(width: int = 64, height: int = 48, *, noise: bool = False) -> bytes:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    if noise:
        image = Image.frombytes("RGB", (width, height), random.Random(1).randbytes(width * height * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def pdf(pages: int = 1) -> bytes:
    frames = [Image.new("RGB", (600, 800), (255, 255, 255)) for _ in range(pages)]
    buf = io.BytesIO()
    frames[0].save(buf, "PDF", save_all=True, append_images=frames[1:], resolution=72.0)
    return buf.getvalue()


@functools.cache
def docx(paragraphs: int = 1) -> bytes:
    body = "".join(f"<w:p><w:r><w:t>本文 {i}</w:t></w:r></w:p>" for i in range(paragraphs))
    members = {
        "[Content_Types].xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" '
            'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/word/document.xml" ContentType="{WML}.main+xml"/></Types>'
        ),
        "_rels/.rels": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            '<Relationship Id="rId1" Target="word/document.xml" Type="http://schemas.openxmlformats.org/'
            'officeDocument/2006/relationships/officeDocument"/></Relationships>'
        ),
        "word/document.xml": (
            '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            f"<w:body>{body}</w:body></w:document>"
        ),
    }
    return zip_of(members)


def zip_of(members: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def calendar(events: int = 1) -> bytes:
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//detox tests//JA", "METHOD:REQUEST"]
    for i in range(events):
        lines += [
            "BEGIN:VEVENT",
            f"UID:{i}@example.jp",
            "DTSTART:20261201T010000Z",
            "DTEND:20261201T020000Z",
            f"SUMMARY:打合せ {i}",
            "DESCRIPTION:資料は https://example.jp/a を参照",
            "END:VEVENT",
        ]
    lines.append("END:VCALENDAR")
    return ("\r\n".join(lines) + "\r\n").encode()


def text(n: int) -> bytes:
    return ("本文です。https://example.jp/x を参照。\n" * n).encode()


def html(n: int) -> bytes:
    return (
        "<html><body>" + "<p>本文 <a href='https://example.jp/'>リンク</a></p>" * n + "</body></html>"
    ).encode()


SAMPLES: dict[str, Sample] = {
    "image": Sample(
        Role.ATTACHMENT, "image/png", "image/png", "photo.png", png,
        broken=lambda: png()[:60], heavy=lambda: png(6000, 6000),
    ),
    "pdf": Sample(
        Role.ATTACHMENT, "application/pdf", "application/pdf", "見積書.pdf", pdf,
        broken=lambda: b"%PDF-1.4\n" + bytes(range(256)) * 4, heavy=lambda: pdf(60),
    ),
    "office": Sample(
        Role.ATTACHMENT, "application/octet-stream", WML, "報告.docx", docx,
        broken=lambda: zip_of({"a.txt": b"x"}), heavy=lambda: docx(200_000),
    ),
    "archive": Sample(
        Role.ATTACHMENT, "application/zip", "application/zip", "資料.zip",
        lambda: zip_of({"資料/a.txt": "テキスト\n".encode(), "b.csv": b"a,b\n1,2\n"}),
        heavy=lambda: zip_of({f"d/{i}.txt": f"{i}\n".encode() for i in range(900)}),
    ),
    "calendar": Sample(
        Role.ATTACHMENT, "text/calendar", "text/calendar", "invite.ics", calendar,
        broken=lambda: b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:notadate\r\n\x00\xff:::\r\n",
        heavy=lambda: calendar(450),
    ),
    "plain": Sample(Role.BODY, "text/plain", "text/plain", None, lambda: text(3), heavy=lambda: text(60_000)),
    "html": Sample(Role.BODY, "text/html", "text/html", None, lambda: html(3), heavy=lambda: html(40_000)),
    "rtf": Sample(
        Role.BODY, "text/rtf", "text/rtf", None, lambda: rb"{\rtf1\ansi {\b bold} text\par}",
        heavy=lambda: b"{\\rtf1\\ansi " + b"{\\b word} text\\par " * 100_000 + b"}",
    ),
    "enriched": Sample(
        Role.BODY, "text/enriched", "text/plain", None, lambda: b"<bold>Hello</bold> world",
        heavy=lambda: b"<bold>Hello</bold> world <italic>x</italic>\n" * 60_000,
    ),
    "text-attachment": Sample(
        Role.ATTACHMENT, "text/csv", "text/plain", "data.csv", lambda: "名前,値\n1,2\n".encode("cp932"),
        heavy=lambda: "名前,値\n1,2\n".encode() * 300_000,
    ),
    "signature": Sample(
        Role.ATTACHMENT, "application/pkcs7-signature", "application/octet-stream", "smime.p7s",
        lambda: b"\x30\x82\x01\x00" + bytes(200),
    ),
}  # fmt: skip
