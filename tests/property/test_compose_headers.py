"""Property tests for the header block detox writes (detox.pipeline.compose).

Every header value detox copies (From, To, Cc, Subject, Message-ID, References ...) and every attachment
file name is sender-controlled. Whatever the value, the serialized message must have a well-formed header
block: ASCII, no line over 998 bytes, every continuation line starting with whitespace, and re-parsing it
must give back exactly the header fields we wrote (no field injected, none lost, no defect). The stdlib's
folder breaks the third rule for an encoded word after a comma in an address list, which let a To value
like ``<long token>,Content-Type:text/html €x <a@b>`` become a Content-Type header of its own; see
compose._check_folds.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest
from hypothesis import given
from hypothesis import strategies as st
from profiles import profile

from detox.config.schema import DetoxConfig
from detox.pipeline.compose import KEPT_HEADERS, Attachment, serialize, set_header
from detox.pipeline.compose import _fill as fill
from detox.pipeline.model import Output

pytestmark = [pytest.mark.property, pytest.mark.timeout(300, method="thread")]
CONFIG = DetoxConfig()

PIECES = st.sampled_from(
    [
        ",", ";", ":", "<", ">", "@", '"', "(", ")", "=", "?", "=?", "?=", " ", "\t", ".", "\\",
        "Content-Type:text/html", "Content-Type: text/html", "X-Evil: 1", "a@b", "<taro@city.example.lg.jp>",
        "=?ISO-2022-JP?B?GyRCPnBKc0AvOnYyXRsoQiAbJEI7M0VEQkBPOhsoQg==?", "=?utf-8?q?=E3=81=82?=",
        "€", "é", "あ", "髙﨑", "①㈱", "😀", "𠮷", "ｶﾀｶﾅ", "\u202e", "\u200b",
    ]
)  # fmt: skip
WORDS = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=90)
VALUES = st.lists(st.one_of(PIECES, WORDS), min_size=1, max_size=30).map("".join)


def header_block_problems(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    problems = []
    if not head.isascii():
        problems.append("non-ASCII header bytes")
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        if len(line) > 998:
            problems.append(f"line {i} is {len(line)} bytes")
        if i and line[:1] not in (b" ", b"\t") and b":" not in line:
            problems.append(f"line {i} is neither a field nor a continuation: {line[:80]!r}")
    return problems


def field_names(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0]
    return [
        line.split(b":", 1)[0].decode("ascii", "replace").lower()
        for line in head.split(b"\r\n")
        if line and line[:1] not in (b" ", b"\t")
    ]


@profile(300)
@given(name=st.sampled_from(KEPT_HEADERS), value=VALUES)
def test_any_header_value_serializes_to_a_well_formed_block(name: str, value: str) -> None:
    out = EmailMessage()
    set_header(out, name, value)
    out["X-Detox-Id"] = "019ABCDEF0123456789A"
    out.set_content("本文", charset="utf-8", cte="base64")
    data = serialize(out)
    assert not header_block_problems(data), (header_block_problems(data), data[:600])
    written = [k.lower() for k in out]
    assert field_names(data) == written, "a field was injected or lost"
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert not parsed.defects, parsed.defects
    assert parsed.get_content_type() == "text/plain"
    assert parsed["X-Detox-Id"] == "019ABCDEF0123456789A"


@profile(200)
@given(filename=VALUES, text=st.booleans())
def test_any_attachment_name_serializes_to_a_well_formed_block(filename: str, text: bool) -> None:
    out = EmailMessage()
    out["Subject"] = "添付"
    ctype, data = ("text/plain", "中身".encode()) if text else ("image/png", b"\x89PNG\r\n\x1a\n")
    output = Output(ctype, data, filename, "utf-8" if text else None)
    fill(out, "本文\n", [Attachment(output, "2")], CONFIG)
    serialized = serialize(out)
    parsed = email.message_from_bytes(serialized, policy=email.policy.default)
    for part in parsed.walk():
        assert not part.defects, part.defects
        block = part.as_bytes(policy=email.policy.SMTP) if part is not parsed else serialized
        assert not header_block_problems(block), header_block_problems(block)
    [attachment] = list(parsed.iter_attachments())
    assert attachment.get_content_type() == ctype
