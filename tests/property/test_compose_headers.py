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


# -- the parser-free paths give the parser's bytes ---------------------------------------------------

_SMTP = email.policy.SMTP
PLAIN_NAMES = (
    "Date",
    "Message-ID",
    "Subject",
    "X-Detox-Id",
    "X-Detox-Actions",
    "In-Reply-To",
    "References",
    "Received",
)
ASCII_PIECES = st.sampled_from(
    [
        " ", "  ", "\t", "<", ">", "@", ".", "..", "(", ")", '"', ",", ";", ":", "\\", "=?", "?=", "[", "]",
        "=?utf-8?q?a?=", "<a@b>", "<a.b@c.d>", "<.a@b>", "<a..b@c>", "<a@[1.2.3.4]>", "<a@b", "a@b>",
        "Thu, 26 Nov 2026 01:02:03 +0000", "Thu, 26 Nov 2026 01:02:03 -0000", "26 Nov 2026 01:02 +0900",
        "Thu, 26 Nov 2026 01:02:03 +0000 (UTC)", "Thu, 26 Nov 26 01:02:03 GMT",
        "Mon, 31 Feb 2026 25:61:61 +9999",
        "Thu, 26 Nov 2026 01:02:03 JST", "0", "-", "あ", "\x7f", "\x00",
    ]
)  # fmt: skip
ASCII_WORDS = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
ASCII_VALUES = st.lists(st.one_of(ASCII_PIECES, ASCII_WORDS), min_size=1, max_size=6).map("".join)


def _parser_path(name: str, value: str) -> bytes | None:
    """The header line as set_header wrote it before the parser-free path (None: it raised)."""
    from detox.pipeline.compose import _COMPOSE_POLICY, _check_folds

    out = EmailMessage(policy=_COMPOSE_POLICY)
    try:
        out[name] = value
        _check_folds(out, name)
    except Exception:  # set_header then takes its RFC 2047 way, not compared here
        return None
    key, stored = list(out.raw_items())[-1]
    return _SMTP.fold_binary(key, stored)


@profile(1500)
@given(name=st.sampled_from(PLAIN_NAMES), value=ASCII_VALUES)
def test_plain_header_path_writes_what_the_parser_path_writes(name: str, value: str) -> None:
    _check_plain_path(name, value)


def _check_plain_path(name: str, value: str) -> EmailMessage | None:
    """Where compose takes a value without the header parser, it stores what the parser would;
    the message it was set in, or None when the value takes the parser."""
    from detox.pipeline.compose import _COMPOSE_POLICY, _plain_value

    plain = _plain_value(name, value)
    if plain is None:
        return None
    out = EmailMessage(policy=_COMPOSE_POLICY)
    set_header(out, name, value)
    key, stored = list(out.raw_items())[-1]
    assert isinstance(stored, str) and stored == plain
    assert _SMTP.fold_binary(key, stored) == _parser_path(name, value)
    assert str(out[name]) == _reparsed(name, value)  # read back, it is the header the parser made
    return out


def _reparsed(name: str, value: str) -> str:
    from detox.pipeline.compose import _COMPOSE_POLICY

    ref = EmailMessage(policy=_COMPOSE_POLICY)
    ref[name] = value
    return str(ref[name])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Date", "Thu, 26 Nov 2026 01:02:03 +0000 (UTC)"),
        ("Date", "26 Nov 2026 01:02:03 +0900"),
        ("Date", "Thu, 26 Nov 2026 01:02:03 +0000 =?utf-8?q?x?="),  # DateHeader reads the date only
        ("Message-ID", "<19.0003.0019@vm>"),
        ("Message-ID", "<CAB1234=abc+def@mail.gmail.com>"),
        ("Subject", "Re: meeting"),
        ("X-Detox-Id", "019ABCDEF0123456789A"),
        ("X-Detox-Actions", "text-converted; html-converted=1; urls-defanged=3"),
    ],
)
def test_common_headers_take_the_plain_path(name: str, value: str) -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY, _plain_value

    assert _plain_value(name, value) is not None
    out = EmailMessage(policy=_COMPOSE_POLICY)
    set_header(out, name, value)
    assert _SMTP.fold_binary(*list(out.raw_items())[-1]) == _parser_path(name, value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Date", "not a date"),
        ("Subject", "=?utf-8?q?=E3=81=82?="),
        ("Subject", "件名"),
        ("Subject", "x" * 80),
        ("Message-ID", "<a b@c>"),
        ("Message-ID", "no-brackets@host"),
        ("From", "a@src.test"),
        ("Received", "from " + "x" * 78 + " by y; Thu, 26 Nov 2026 01:02:03 +0000"),  # an encoded word
        ("X-Detox-Actions", "x" * 40 + " " + "y" * 30),  # after a bare "X-Detox-Actions:" line
        ("X-Detox-Actions", "x" * 62 + " " + "y" * 30),  # the first word moves to the second line
    ],
)
def test_other_values_take_the_parser(name: str, value: str) -> None:
    from detox.pipeline.compose import _plain_value

    assert _plain_value(name, value) is None


# Long values of printable ASCII words: the parser-free path folds them (Received always).
FOLD_WORDS = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12),
    st.integers(min_value=60, max_value=80).map(lambda n: "w" * n),
    st.sampled_from(["(detox)", "([192.0.2.1])", "<b@city.example.lg.jp>;", "+0900", "id", "=?", "?="]),
)
LONG_VALUES = st.lists(FOLD_WORDS, min_size=2, max_size=40).map(" ".join)


@profile(1500)
@given(name=st.sampled_from(PLAIN_NAMES), value=LONG_VALUES)
def test_folded_plain_path_writes_what_the_parser_path_writes(name: str, value: str) -> None:
    out = _check_plain_path(name, value)
    if out is not None:
        assert str(out[name]) == _reparsed(name, value) == value


@pytest.mark.parametrize("helo", ["mx.example.jp", "a" * 60, "[192.0.2.1]"])
@pytest.mark.parametrize("rcpts", [("taro@city.example.lg.jp",), ("a@x.jp", "b@x.jp")])
def test_received_takes_the_plain_path_with_the_parsers_bytes(helo: str, rcpts: tuple[str, ...]) -> None:
    from detox.envelope import Envelope
    from detox.pipeline.compose import _COMPOSE_POLICY, _plain_value, _received

    envelope = Envelope("019ABCDEF0123456789A", "a@src.test", rcpts, "192.0.2.1", helo)
    value = _received(envelope, CONFIG.server.hostname)
    assert len(value) > 78 and _plain_value("Received", value) is not None
    out = EmailMessage(policy=_COMPOSE_POLICY)
    set_header(out, "Received", value)
    assert _SMTP.fold_binary(*list(out.raw_items())[-1]) == _parser_path("Received", value)


def test_a_second_single_header_is_still_refused_like_the_parser_does() -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY

    fast, slow = EmailMessage(policy=_COMPOSE_POLICY), EmailMessage(policy=_COMPOSE_POLICY)
    for out in (fast, slow):
        set_header(out, "Subject", "one")
    set_header(fast, "Subject", "two")  # plain value
    set_header(slow, "Subject", "件名")  # parser path
    assert list(fast) == list(slow)


BODY_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["\n", "\r", "\r\n", "\x0b", "\x85", "\u2028", "①㈱髙", " ", "x" * 57, "あ" * 19]),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
    ),
    max_size=40,
).map("".join)


@profile(500)
@given(text=BODY_TEXT)
def test_base64_body_is_what_set_content_makes(text: str) -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY, _base64_body

    ref = EmailMessage(policy=_COMPOSE_POLICY)
    ref.set_content(text, subtype="plain", charset="utf-8", cte="base64")
    assert _base64_body(text) == ref.get_payload()


@profile(200)
@given(text=BODY_TEXT, names=st.lists(st.sampled_from(["a.txt", "b.pdf", "報告書.txt"]), max_size=3))
def test_serialize_is_as_bytes(text: str, names: list[str]) -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY

    out = EmailMessage(policy=_COMPOSE_POLICY)
    set_header(out, "Subject", "test")
    attachments = [
        Attachment(Output("text/plain", text.encode("utf-8"), n, "utf-8"), str(i))
        for i, n in enumerate(names)
    ]
    fill(out, text + "\n", attachments, CONFIG)
    if out.is_multipart():
        out.set_boundary("==detox-test-boundary==")  # as_bytes would draw another one
    assert serialize(out) == out.as_bytes(policy=_SMTP)


@profile(200)
@given(text=BODY_TEXT, forwarded=st.booleans())
def test_body_part_is_what_set_content_makes(text: str, forwarded: bool) -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY, _body_part

    ours, ref = EmailMessage(policy=_COMPOSE_POLICY), EmailMessage(policy=_COMPOSE_POLICY)
    for out in (ours, ref):
        set_header(out, "Subject", "test")
        if not forwarded:  # a forwarded message's part has no MIME-Version of its own yet
            out["MIME-Version"] = "1.0"
    _body_part(ours, text, "utf-8")
    ref.set_content(text, subtype="plain", charset="utf-8", cte="base64")
    assert list(ours.items()) == list(ref.items())
    assert serialize(ours) == serialize(ref) == ref.as_bytes(policy=_SMTP)


@profile(300)
@given(data=st.binary(max_size=3000))
def test_base64_lines_is_what_the_content_manager_makes(data: bytes) -> None:
    import email.contentmanager

    from detox.pipeline.compose import _COMPOSE_POLICY, _base64_lines

    expected = email.contentmanager._encode_base64(data, max_line_length=_COMPOSE_POLICY.max_line_length)  # type: ignore[attr-defined]
    assert _base64_lines(data) == expected


@profile(100)
@given(
    data=st.binary(max_size=2000),
    kind=st.sampled_from(
        [("application", "pdf", "報告書.pdf"), ("image", "png", "a.png"), ("image", "jpeg", None)]
    ),
)
def test_binary_attachment_is_what_add_attachment_makes(
    data: bytes, kind: tuple[str, str, str | None]
) -> None:
    from detox.pipeline.compose import _COMPOSE_POLICY

    maintype, subtype, name = kind
    ours, ref = EmailMessage(policy=_COMPOSE_POLICY), EmailMessage(policy=_COMPOSE_POLICY)
    fill(ours, "本文\n", [Attachment(Output(f"{maintype}/{subtype}", data, name), "0")], CONFIG)
    fill(ref, "本文\n", [], CONFIG)
    ref.add_attachment(data, maintype=maintype, subtype=subtype, filename=name or "attachment")
    for out in (ours, ref):
        out.set_boundary("==detox-test-boundary==")
    assert serialize(ours) == serialize(ref) == ref.as_bytes(policy=_SMTP)


@pytest.mark.parametrize("where", ["absent", "crlf-line", "lf-line", "closing-line", "inside-a-line", "two"])
def test_boundary_never_occurs_in_the_text(where: str) -> None:
    """The stock generator's random draw; another one whenever "--" + it occurs in the parts' text
    (the stock regex misses a boundary line ending in CRLF, our check does not)."""
    import random
    from email.generator import BytesGenerator

    from detox.pipeline.compose import _Generator

    random.seed(7)
    drawn = BytesGenerator._make_boundary(None)  # type: ignore[attr-defined]
    mark = b"--" + drawn.encode()
    text = {
        "absent": b"body\r\n--other\r\n",
        "crlf-line": b"body\r\n" + mark + b"\r\nmore",
        "lf-line": b"body\n" + mark + b"\nmore",
        "closing-line": b"body\r\n" + mark + b"--\r\n",
        "inside-a-line": b"x" + mark + b" y\r\n",
        "two": mark + b"\r\n" + mark + b".0\r\n",
    }[where]
    random.seed(7)
    ours = _Generator._make_boundary(text)
    assert b"--" + ours.encode() not in text
    assert ours.startswith(drawn)
    assert (ours == drawn) == (where == "absent")
    if where == "two":
        assert ours == drawn + ".1"
