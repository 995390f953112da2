"""Mails the quarantine tests send: PPAP (a ZipCrypto-flagged zip), an exe inside a plain zip.

The encrypted zip is written byte by byte (the stdlib cannot encrypt): one entry with the
"encrypted" flag set and random bytes as its data, which is exactly what the archive filter reads
as PPAP (``encrypted-archive``) without needing ``zip -e`` on the machine.
"""

from __future__ import annotations

import email.policy
import io
import os
import struct
import zipfile
from email.message import EmailMessage

CITY = "city.example.lg.jp"
EXE = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 50 + b"PE\x00\x00" + b"\x90" * 300


def ppap_zip(name: bytes = b"secret.txt") -> bytes:
    data = os.urandom(48)
    # flag 0x1: "encrypted" (ZipCrypto); the data is random, as encrypted bytes look
    local = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x1, 0, 0, 0x21, 1234, len(data), 36, len(name), 0
    )
    central = struct.pack(
        "<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0x1, 0, 0, 0x21, 1234, len(data), 36, len(name),
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    body = local + name + data
    cd = central + name
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(cd), len(body), 0)
    return body + cd + eocd


def zip_of(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def mail(
    attachments: list[tuple[str, bytes, str]],
    *,
    sender: str = "hanako@vendor.example.com",
    sender_name: str = "佐藤 花子",
    to: str = f"taro@{CITY}",
    subject: str = "①見積書の送付（㈱髙橋商事）",
    message_id: str | None = "<ppap@vendor.example.com>",
    body: str = "山田様\n見積書をお送りします。パスワードは別のメールでお送りします。\n",
) -> bytes:
    """A Japanese mail with (filename, bytes, mime type) attachments, CRLF as clients send it."""
    msg = EmailMessage()
    msg["From"] = f"{sender_name} <{sender}>"
    msg["To"] = f"山田 太郎 <{to}>"
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    for filename, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=email.policy.SMTP)


def ppap_mail(**kwargs: object) -> tuple[bytes, bytes]:
    """(the mail, its encrypted zip)."""
    archive = ppap_zip()
    return mail([("見積書.zip", archive, "application/zip")], **kwargs), archive  # type: ignore[arg-type]
