"""How a part's type is decided: plainly-text bodies by their bytes, everything else by libmagic.

Nothing is mocked: the report's ``detected_by`` says which way the type was decided, and where it
matters the real libmagic answer for the same bytes is asked alongside.
"""

from __future__ import annotations

import base64
import email
import email.policy
import io
import json
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline import DetoxResult, Pipeline
from detox.pipeline.detect import detect_type, plainly_text
from detox.pipeline.model import DETECTED_BY_LIBMAGIC, DETECTED_BY_TEXT_BYTES, PartRecord
from detox.pipeline.parse import parse_message
from detox.text import charset as _charset  # registers the iso-2022-jp-ms codec

assert _charset
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mail"
ENV = Envelope(
    "0190000000000ABD", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx.example.jp"
)
PIPELINE = Pipeline(DetoxConfig())

OUTLOOK = "①㈱髙橋商事 御中\r\n請求書を送付します。～㈲﨑\r\n"
EUC = "高橋商事 御中\r\n請求書を送付します。\r\n"  # EUC-JP has neither NEC row 13 (①㈱) nor 髙
PE = (
    b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00"
    + b"\x00" * 44
    + b"\x80\x00\x00\x00"
    + b"\x00" * 64
    + b"PE\x00\x00L\x01\x03\x00"
    + b"\x00" * 200
)
PDF_BINARY = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Length 4 >>\nstream\n\x78\x9c\x00\x01\nendstream\n"
    b"endobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
)
PDF_ASCII = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("見積書.txt", "金額")
    return buf.getvalue()


def mail(body: bytes, content_type: str, *, extra: str = "", cte: str = "8bit") -> bytes:
    """A single-part mail with the body's bytes exactly as given (base64 when ``cte`` says so)."""
    encoded = base64.encodebytes(body) if cte == "base64" else body
    head = (
        "From: sender@example.jp\r\nTo: taro@city.example.lg.jp\r\nSubject: test\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n{extra}\r\n"
    )
    return head.encode("ascii") + encoded


def _body(result: DetoxResult) -> str:
    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    part = out.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def only_part(raw: bytes) -> tuple[DetoxResult, PartRecord]:
    result = PIPELINE.run(raw, ENV)
    assert len(result.records) == 1
    return result, result.records[0]


@pytest.mark.parametrize("subtype", ["plain", "html"])
@pytest.mark.parametrize(
    ("label", "codec", "text"),
    [
        ("ISO-2022-JP", "iso-2022-jp-ms", OUTLOOK),
        ("Shift_JIS", "cp932", OUTLOOK),
        ("EUC-JP", "euc_jp", EUC),
        ("UTF-8", "utf-8", OUTLOOK),
        (None, "cp932", OUTLOOK),  # no label: detection decides the charset, the bytes the type
    ],
)
def test_plainly_text_body_is_typed_as_declared_without_libmagic(
    subtype: str, label: str | None, codec: str, text: str
) -> None:
    payload = (f"<p>{text}</p>" if subtype == "html" else text).encode(codec)
    ctype = f"text/{subtype}" + (f"; charset={label}" if label else "")
    result, record = only_part(mail(payload, ctype))
    assert record.detected_by == DETECTED_BY_TEXT_BYTES
    assert record.detected_type == f"text/{subtype}"
    assert record.action == "text" and record.role == "body"
    assert record.charset == codec.replace("_", "-")
    part = json.loads(result.report.to_json())["parts"][0]
    assert part["detected_by"] == "text-bytes" and part["detected_type"] == f"text/{subtype}"
    assert "".join(text.split()) in "".join(_body(result).split())  # HTML joins the lines


def test_cp932_body_libmagic_calls_an_executable_is_text() -> None:
    """Short CP932 text with a wrong label: libmagic says "DOS executable (COM)" for these bytes,
    the record says text/plain, so libmagic was not what decided it."""
    raw = (FIXTURES / "wrong-label-usascii-cp932.eml").read_bytes()
    result, record = only_part(raw)
    assert record.detected_by == DETECTED_BY_TEXT_BYTES
    assert record.detected_type == "text/plain"
    assert (record.charset, record.action) == ("cp932", "text")
    decoded = parse_message(raw).get_payload(decode=True)
    assert isinstance(decoded, bytes)
    assert detect_type(decoded) == "application/x-dosexec"  # the same bytes, through libmagic itself
    assert "請求書" in _body(result)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (PE, "application/vnd.microsoft.portable-executable"),
        (_zip(), "application/zip"),
        (PDF_BINARY, "application/pdf"),
        (PDF_ASCII, "application/pdf"),  # no NUL, but a binary container's signature up front
    ],
)
@pytest.mark.parametrize("subtype", ["plain", "html"])
def test_binary_file_declared_as_body_text_still_goes_to_libmagic(
    payload: bytes, expected: str, subtype: str
) -> None:
    _result, record = only_part(mail(payload, f"text/{subtype}; charset=us-ascii", cte="base64"))
    assert record.detected_by == DETECTED_BY_LIBMAGIC
    assert record.detected_type == expected == detect_type(payload)
    if subtype == "plain":  # held as not-text, as before
        assert (record.action, record.reason) == ("hold", "not-text")


@pytest.mark.parametrize("control", [0x00, 0x01, 0x07, 0x08, 0x0B, 0x0E, 0x1A, 0x1C, 0x1F])
def test_body_with_a_control_byte_goes_to_libmagic(control: int) -> None:
    payload = "請求書".encode("cp932") + bytes([control]) + b" text\r\n"
    _result, record = only_part(mail(payload, "text/plain; charset=shift_jis", cte="base64"))
    assert record.detected_by == DETECTED_BY_LIBMAGIC
    assert record.detected_type == detect_type(payload)


@pytest.mark.parametrize(
    "extra",
    [
        'Content-Disposition: attachment; filename="memo.txt"\r\n',
        "Content-Disposition: attachment\r\n",
        'Content-Disposition: inline; filename="memo.txt"\r\n',
    ],
)
def test_text_attachment_still_goes_to_libmagic(extra: str) -> None:
    payload = OUTLOOK.encode("cp932")
    _result, record = only_part(mail(payload, "text/plain; charset=shift_jis", extra=extra))
    assert record.role == "attachment"
    assert record.detected_by == DETECTED_BY_LIBMAGIC
    assert record.detected_type == detect_type(payload)


def test_other_body_types_still_go_to_libmagic() -> None:
    payload = b"{\\rtf1\\ansi Hello}\r\n"
    _result, record = only_part(mail(payload, "text/rtf"))
    assert record.role == "body"
    assert record.detected_by == DETECTED_BY_LIBMAGIC
    assert record.detected_type == detect_type(payload)


def test_empty_body_keeps_the_empty_type() -> None:
    _result, record = only_part(mail(b"", "text/plain; charset=us-ascii"))
    assert (record.detected_type, record.detected_by) == ("inode/x-empty", DETECTED_BY_LIBMAGIC)


def test_plainly_text_allows_exactly_tab_lf_cr_ff_esc_among_c0() -> None:
    allowed = {0x09, 0x0A, 0x0C, 0x0D, 0x1B}
    for byte in range(0x20):
        assert plainly_text(b"abc" + bytes([byte]) + b"def") is (byte in allowed), hex(byte)
    assert plainly_text(bytes(range(0x20, 0x100)))  # DEL and every 8-bit byte: charsets decide
    assert not plainly_text(b"")
    assert not plainly_text(b"MZ plain words")  # a signature up front goes to libmagic
