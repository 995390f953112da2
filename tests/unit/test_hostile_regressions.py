"""Regressions for the bugs the fuzz target and the property tests found (issue 5, hostile input).

Each has a fixture under fixtures/mail/ (see its README) and a minimal case here:

1. A non-ASCII Message-ID made Pipeline.run raise at serialisation (the relay retried the mail five
   times, then moved it aside: never delivered).
2. The stdlib's header folder started a continuation line without whitespace after a comma in an
   address list; with a To value like ``<long>,Content-Type:text/html €x <a@b>`` the output got a
   second, sender-written Content-Type header that readers take as the message's type.
3. RFC 2231 continuations cut inside a ``%XX`` escape decoded to mojibake.
4. Control characters (ESC, BEL) crossed in re-encoded text attachments.
5. A Content-Type with control characters (raw ISO-2022-JP) was shown as it is in the notice.
6. Control characters in an iCalendar's texts crossed in the calendar's text attachment.
"""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.invariants import parse_output as parse
from support.pipelines import pipeline_runner

from detox.envelope import Envelope
from detox.pipeline.compose import serialize, set_header
from detox.pipeline.parse import parse_message
from detox.text.headers import decode_filename

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mail"
ENV = Envelope("019ABCDEF0123456789A", "somebody@example.jp", ("taro@city.example.lg.jp",))
CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
run = pipeline_runner(ENV, shared=True)


def head_lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


# -- 1. non-ASCII Message-ID --------------------------------------------------------------------------


def test_a_non_ascii_message_id_no_longer_stops_the_mail() -> None:
    result = run((FIXTURES / "message-id-8bit-hostname.eml").read_bytes())
    lines = head_lines(result.output)
    assert all(line.isascii() for line in lines)
    [message_id] = [line for line in lines if line.lower().startswith(b"message-id:")]
    assert message_id.startswith(b"Message-ID: =?utf-8?")  # kept, as RFC 2047 text
    out = parse(result.output)
    assert out["Message-ID"] == "<20251125104100.4141@髙橋のＰＣ>"
    body = out.get_body(("plain",))
    assert body is not None and "①会議は１２月３日（水）です。" in body.get_content()


@pytest.mark.parametrize("value", ["<a@髙橋のＰＣ>", "€ <a@b>", "<\udc82\udca0@x>"])
def test_set_header_message_id_always_serializes(value: str) -> None:
    out = EmailMessage()
    set_header(out, "Message-ID", value)
    out.set_content("x")
    assert serialize(out).isascii()


# -- 2. header injection through folding ----------------------------------------------------------------

LONG_WORD = b"=?ISO-2022-JP?B?GyRCPnBKc0AvOnYyXRsoQiAbJEI7M0VEQkBPOhsoQg==?"


@pytest.mark.parametrize(
    "to",
    [
        LONG_WORD + b",Content-Type:text/html \xe2\x82\xacx <taro@city.example.lg.jp>",
        b"a" * 70 + b",Content-Type:text/html,\xe2\x82\xac <taro@city.example.lg.jp>",
        LONG_WORD + b",\x80= <taro@city.example.lg.jp>",
    ],
)
def test_a_folded_address_cannot_start_a_header_of_its_own(to: bytes) -> None:
    raw = b"From: somebody@example.jp\r\nTo: " + to + b"\r\nSubject: x\r\n\r\n<script>alert(1)</script>\r\n"
    result = run(raw)
    lines = head_lines(result.output)
    continuation_or_field = re.compile(rb"^([ \t]|[!-9;-~]+:)")
    assert all(continuation_or_field.match(line) for line in lines), lines
    assert [line for line in lines if line.lower().startswith(b"content-type:")] == [
        b'Content-Type: text/plain; charset="utf-8"'
    ]
    out = parse(result.output)
    assert not out.defects
    assert out.get_content_type() == "text/plain"
    assert out["X-Detox-Id"] == ENV.queue_id


# -- 3. RFC 2231 cut inside an escape ---------------------------------------------------------------------


def test_rfc2231_continuation_cut_inside_a_percent_escape() -> None:
    msg = parse_message((FIXTURES / "attachment-rfc2231-split-escape.eml").read_bytes())
    names = [decode_filename(part) for part in msg.walk() if not part.is_multipart()]
    assert names == [None, "議事録（髙橋）.txt"]


@pytest.mark.parametrize("cut", range(1, 27))
def test_rfc2231_any_cut_of_the_encoded_value_decodes_the_same(cut: int) -> None:
    encoded = "%E9%AB%99%E6%A9%8B%EF%BC%91.txt"  # 髙橋１.txt
    header = (
        f"Content-Disposition: attachment; filename*0*=UTF-8''{encoded[:cut]};"
        f" filename*1*={encoded[cut:]}\r\n\r\nx"
    )
    assert decode_filename(parse_message(header.encode())) == "髙橋１.txt"


# -- 4. control characters in text attachments ------------------------------------------------------------


def test_text_attachment_crosses_without_control_characters() -> None:
    result = run((FIXTURES / "attachment-rfc2231-split-escape.eml").read_bytes())
    [attachment] = list(parse(result.output).iter_attachments())
    text = attachment.get_content()
    assert "【重要】" in text and "出席者：情報政策課、総務課、㈱髙﨑商事" in text
    assert not CONTROL.search(text)
    [record] = [r for r in result.records if r.filter == "text-attachment"]
    assert record.removed == {"control": 3}


def test_text_attachment_crosses_without_bidi_or_zero_width_characters() -> None:
    text = "支払先：㈱髙橋\u202eXYZ\u200b口座①\r\n"
    raw = (
        "From: a@example.jp\r\nTo: b@city.example.lg.jp\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n本文\r\n"
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
        'Content-Disposition: attachment; filename="memo.txt"\r\n\r\n' + text + "--b--\r\n"
    ).encode("utf-8")
    result = run(raw)
    [attachment] = list(parse(result.output).iter_attachments())
    assert attachment.get_content().rstrip("\r\n") == "支払先：㈱髙橋XYZ口座①"
    [record] = [r for r in result.records if r.filter == "text-attachment"]
    assert record.removed == {"invisible": 2}


# -- 5. control characters in a declared type --------------------------------------------------------------


def test_declared_type_is_shown_without_control_characters() -> None:
    result = run((FIXTURES / "content-type-raw-iso2022jp.eml").read_bytes())
    [held] = result.held
    assert held.declared_type == "application/x-$b%u%!%$%k(b"
    body = parse(result.output).get_body(("plain",))
    assert body is not None
    notice = body.get_content()
    assert "名前のない添付ファイル（application/x-$b%u%!%$%k(b）" in notice
    assert not CONTROL.search(notice)


# -- 6. control characters in a calendar ---------------------------------------------------------------------


def test_calendar_text_crosses_without_control_characters() -> None:
    result = run((FIXTURES / "calendar-control-chars.eml").read_bytes())
    [attachment] = list(parse(result.output).iter_attachments())
    assert attachment.get_filename() == "meeting.ics.txt"
    text = attachment.get_content()
    assert "件名: ①定例会議 （髙﨑）" in text
    assert "場所: [1m本庁舎 第３会議室[0m" in text
    assert "  資料は当日配布します。" in text
    assert not CONTROL.search(text)
    [record] = [r for r in result.records if r.filter == "calendar"]
    assert record.removed == {"control": 3}
