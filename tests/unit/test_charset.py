"""detox.text.charset and its iso2022jp_ms codec: the codec, decode_body, encode_body, meta sniffing."""

from __future__ import annotations

import codecs
import email
import email.policy
import re
import time
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detox.text import iso2022jp_ms as codec_module
from detox.text.charset import Decoded, decode_body, encode_body, normalize_label, sniff_html_charset

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mail"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "mail"

NEC_IBM = "①②⑳ⅠⅩ㈱㈲㍉№℡∵≒髙﨑德纊ⅰ～－￢"
LETTER = "お世話になっております。①㈱髙﨑の件でご連絡いたします。"


# ============================================================================ iso-2022-jp-ms codec


@pytest.mark.parametrize("name", ["iso-2022-jp-ms", "ISO-2022-JP-MS", "iso_2022_jp_ms", "iso2022jpms"])
def test_codec_is_registered_under_its_spellings(name: str) -> None:
    assert codecs.lookup(name).name == "iso-2022-jp-ms"


def test_stdlib_iso2022jp_cannot_do_what_we_need() -> None:
    # The reason the codec exists: Outlook's ① (NEC row 13) is an error for Python's codec.
    with pytest.raises(UnicodeDecodeError):
        b"\x1b$B-!\x1b(B".decode("iso2022_jp")
    assert b"\x1b$B!A\x1b(B".decode("iso2022_jp") == "\u301c"  # JIS mapping, Windows says U+FF5E


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'\x1b$B-!-"-4\x1b(B', "①②⑳"),  # NEC row 13
        (b"\x1b$B-5->-j-k-@-b-d\x1b(B", "ⅠⅩ㈱㈲㍉№℡"),
        (b"\x1b$B|byuy~y!\x1b(B", "髙﨑德纊"),  # NEC-selected IBM extensions
        (b"\x1b$B|q\x1b(B", "ⅰ"),
        (b'\x1b$B!A!]"L!B\x1b(B', "～－￢∥"),  # cp932 mapping, as Windows does
        (b"\x1b$B$3$s$K$A$O\x1b(B", "こんにちは"),
        (b"\x1b$@$3$s\x1b(B", "こん"),  # JIS C 6226-1978 designation
        (b"\x1b$(Q$3$s\x1b(B", "こん"),  # JIS X 0213 plane 1 designation, mapped like JIS X 0208
        (b"\x1b&@\x1b$B$3\x1b(B", "こ"),  # JIS X 0208-1990 announcer
        (b"\x1b(Jyen\\ tilde~\x1b(B", "yen\\ tilde~"),  # JIS Roman read as ASCII, as Windows does
        (b"\x1b(IC=D\x1b(B", "ﾃｽﾄ"),  # half-width katakana by ESC ( I
        (b"a\x0eC=D\x0fb", "aﾃｽﾄb"),  # ... and by SO/SI
        (b"\x1b$B$3\r\n$s\x1b(B", "こ\r\nん"),  # line break inside double-byte mode survives
        (b"plain ascii\r\n", "plain ascii\r\n"),
        (b"", ""),
    ],
)
def test_codec_decodes_microsoft_iso2022jp(raw: bytes, text: str) -> None:
    assert raw.decode("iso-2022-jp-ms") == text


@pytest.mark.parametrize(
    ("raw", "replaced", "ignored"),
    [
        (b"ab\x82c", "ab\ufffdc", "abc"),  # 8-bit byte
        (b"\x1b$B$3$\x1b(Bx", "こ\ufffdx", "こx"),  # half a pair
        (b"\x1b$Bxx$3\x1b(B", "\ufffdこ", "こ"),  # undefined JIS code
        (b"\x1b$(D$3\x1b(B", "\ufffd", ""),  # JIS X 0212 is not in CP932
        (b"a\x1b%Gb", "a\ufffd%Gb", "a%Gb"),  # unknown escape: only ESC is bad
        (b"\x1b(I\x7e\x1b(B", "\ufffd", ""),  # outside the katakana range
    ],
)
def test_codec_error_handlers(raw: bytes, replaced: str, ignored: str) -> None:
    with pytest.raises(UnicodeDecodeError):
        raw.decode("iso-2022-jp-ms")
    assert raw.decode("iso-2022-jp-ms", "replace") == replaced
    assert raw.decode("iso-2022-jp-ms", "ignore") == ignored


def test_codec_decode_error_positions_and_custom_handler() -> None:
    with pytest.raises(UnicodeDecodeError) as info:
        b"abc\x82def".decode("iso-2022-jp-ms")
    assert (info.value.start, info.value.end) == (3, 4)
    assert b"ab\x82c".decode("iso-2022-jp-ms", "backslashreplace") == "ab\\x82c"
    assert b"ab\x82c".decode("iso-2022-jp-ms", "surrogateescape") == "ab\udc82c"


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("①㈱髙﨑～", b"\x1b$B-!-j|byu!A\x1b(B"),
        ("abc", b"abc"),
        ("A あ B", b'A \x1b$B$"\x1b(B B'),
        ("ﾃｽﾄｶﾞ", b"\x1b$B%F%9%H%,\x1b(B"),  # CP50220: half-width kana go out full-width, voiced
        ("ﾞ", b"\x1b$B!+\x1b(B"),  # a lone sound mark becomes the spacing one
        ("〜−", b"\x1b$B!A!]\x1b(B"),  # JIS-style code points accepted like Windows' best fit
        ("", b""),
    ],
)
def test_codec_encodes_like_cp50220(text: str, raw: bytes) -> None:
    assert text.encode("iso-2022-jp-ms") == raw


@pytest.mark.parametrize(("text", "start", "end"), [("あ😀😀い", 1, 3), ("a\x1bb", 1, 2), ("x\ue000", 1, 2)])
def test_codec_refuses_what_iso2022jp_cannot_carry(text: str, start: int, end: int) -> None:
    # Emoji, a raw ESC (would forge a shift) and user-defined (PUA) characters.
    with pytest.raises(UnicodeEncodeError) as info:
        text.encode("iso-2022-jp-ms")
    assert (info.value.start, info.value.end) == (start, end)


def test_codec_encode_error_handlers() -> None:
    assert "a😀あ".encode("iso-2022-jp-ms", "replace") == b'a?\x1b$B$"\x1b(B'
    assert "a😀あ".encode("iso-2022-jp-ms", "ignore") == b'a\x1b$B$"\x1b(B'
    assert "あ😀".encode("iso-2022-jp-ms", "xmlcharrefreplace") == b'\x1b$B$"\x1b(B&#128512;'


def test_codec_incremental_interfaces() -> None:
    encoder = codecs.getincrementalencoder("iso-2022-jp-ms")()
    data = encoder.encode("①あ") + encoder.encode("b", final=True)
    assert data == b'\x1b$B-!$"\x1b(Bb'
    decoder = codecs.getincrementaldecoder("iso-2022-jp-ms")()
    chunks = [data[i : i + 1] for i in range(len(data))]
    out = "".join(decoder.decode(chunk) for chunk in chunks) + decoder.decode(b"", final=True)
    assert out == "①あb"


def test_codec_is_linear_on_large_and_hostile_input() -> None:
    good = ("お世話になっております①髙\r\n" * 50_000).encode("iso-2022-jp-ms")
    hostile = [b"\x1b$B" + b"\x7f\x7f" * 200_000, b"\x80" * 400_000, b"\x1b$B" + b"\x22\x2f" * 200_000]
    started = time.perf_counter()
    assert good.decode("iso-2022-jp-ms").count("髙") == 50_000
    for raw in hostile:
        assert "\ufffd" in raw.decode("iso-2022-jp-ms", "replace")
    assert time.perf_counter() - started < 20  # quadratic behaviour would take minutes


def _cp932_roundtrip_alphabet() -> list[str]:
    """Characters CP932 round-trips as double bytes in JIS rows (plus 7-bit ASCII minus SO/SI/ESC)."""
    chars = [chr(c) for c in range(0x80) if c not in (0x0E, 0x0F, 0x1B)]
    for cp in range(0x80, 0x10000):
        ch = chr(cp)
        if 0xD800 <= cp < 0xE000:
            continue
        try:
            sjis = ch.encode("cp932")
        except UnicodeEncodeError:
            continue
        jis_row = 0x81 <= sjis[0] <= 0x9F or 0xE0 <= sjis[0] <= 0xEF
        if len(sjis) == 2 and jis_row and sjis.decode("cp932") == ch:
            chars.append(ch)
    return chars


CP932_CHARS = _cp932_roundtrip_alphabet()


def test_roundtrip_alphabet_is_the_expected_size() -> None:
    # 6879 JIS X 0208 + 83 NEC row 13 + 374 NEC-selected IBM, minus duplicates, plus ASCII.
    assert 7400 < len(CP932_CHARS) < 7600
    assert {"①", "㈱", "髙", "﨑", "～", "ⅰ"} <= set(CP932_CHARS)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(CP932_CHARS), max_size=200))
def test_iso2022jp_ms_roundtrips_cp932_text(text: str) -> None:
    raw = text.encode("iso-2022-jp-ms")
    assert raw.isascii()
    assert raw.decode("iso-2022-jp-ms") == text


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["strict", "replace", "ignore", "backslashreplace"]))
def test_iso2022jp_ms_decode_only_raises_unicode_errors(raw: bytes, errors: str) -> None:
    try:
        raw.decode("iso-2022-jp-ms", errors)
    except UnicodeDecodeError:
        assert errors == "strict"


def _state_machine(raw: bytes, errors: str = "strict") -> str:
    """The codec's byte-by-byte state machine alone, without the well-formed fast path."""
    decoder = codec_module._Decoder(raw, errors)
    saved = codec_module._decode_clean
    codec_module._decode_clean = lambda data: None
    try:
        return decoder.run()
    finally:
        codec_module._decode_clean = saved


def test_fast_path_gives_the_state_machines_text_for_every_jis_pair() -> None:
    for j1 in range(0x21, 0x7F):
        raw = b"a\x1b$B" + b"".join(bytes((j1, j2)) for j2 in range(0x21, 0x7F)) + b"\x1b(Bz"
        fast = codec_module._decode_clean(raw)
        slow = _state_machine(raw, "replace")
        if fast is None:  # an undefined code in the row: left to the state machine
            assert "\ufffd" in slow
        else:
            assert fast == slow
            assert "\ufffd" not in fast


_ISO2022_PIECES = [
    b"\x1b$B", b"\x1b$@", b"\x1b(B", b"\x1b(J", b"\x1b(H", b"\x1b(I", b"\x1b$(D", b"\x1b&@",
    b"\x0e", b"\x0f", b"\x1b", b"$B", b"ab", b"\r\n", b" ", b"\x7f", b"\x00", b"\x80", b"\xa4",
    b"0!", b"-!", b"-~", b"|{", b"y!", b"~~", b")!", b"__", b"!",
]  # fmt: skip


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_ISO2022_PIECES), max_size=16))
def test_fast_path_is_the_state_machine_or_declines(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    fast = codec_module._decode_clean(raw)
    if fast is not None:
        assert fast == _state_machine(raw)
    assert raw.decode("iso-2022-jp-ms", "replace") == _state_machine(raw, "replace")


def test_fast_path_takes_outlook_mail() -> None:
    raw = LETTER.encode("iso-2022-jp-ms") + b"\r\n" + NEC_IBM.encode("iso-2022-jp-ms")
    assert codec_module._decode_clean(raw) == LETTER + "\r\n" + NEC_IBM


# ============================================================================ labels


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("Shift_JIS", "cp932"),
        ("shift-jis", "cp932"),
        ("SJIS", "cp932"),
        ("x-sjis", "cp932"),
        ("Windows-31J", "cp932"),
        ("MS932", "cp932"),
        ('"iso-2022-jp"', "iso-2022-jp-ms"),
        ("ISO-2022-JP-2", "iso-2022-jp-ms"),
        ("csISO2022JP", "iso-2022-jp-ms"),
        ("EUC-JP", "euc-jp"),
        ("x-euc-jp", "euc-jp"),
        ("ks_c_5601-1987", "cp949"),
        ("GB2312", "gb18030"),
        ("utf8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("utf-8*ja", "utf-8"),
        ("US-ASCII", "us-ascii"),
        ("iso-8859-1", "iso8859-1"),
        ("windows-1252", "cp1252"),
        ("unknown-8bit", None),
        ("x-no-such-charset", None),
        ("base64", None),  # a Python codec, but no text encoding
        ("unicode_escape", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_label(label: str | None, codec: str | None) -> None:
    assert normalize_label(label) == codec


# ============================================================================ decode_body


@pytest.mark.parametrize(
    ("raw", "label", "expected"),
    [
        (LETTER.encode("iso-2022-jp-ms"), "ISO-2022-JP", Decoded(LETTER, "iso-2022-jp-ms", "label")),
        (LETTER.encode("cp932"), "Shift_JIS", Decoded(LETTER, "cp932", "label")),
        (LETTER.encode("utf-8"), "utf-8", Decoded(LETTER, "utf-8", "label")),
        ("住民票の写しの交付".encode("euc_jp"), "EUC-JP", Decoded("住民票の写しの交付", "euc-jp", "label")),
        ("①の件です".encode("euc_jis_2004"), "euc-jp", Decoded("①の件です", "euc_jis_2004", "label")),
        ("“quoted”".encode("cp1252"), "iso-8859-1", Decoded("“quoted”", "cp1252", "label")),
        ("Café crème".encode("latin-1"), "ISO-8859-1", Decoded("Café crème", "iso8859-1", "label")),
        (b"plain", "us-ascii", Decoded("plain", "us-ascii", "label")),
        # missing or unknown labels
        (LETTER.encode("cp932"), None, Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "x-bogus", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "unknown-8bit", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("utf-8"), None, Decoded(LETTER, "utf-8", "detected")),
        (LETTER.encode("iso-2022-jp-ms"), None, Decoded(LETTER, "iso-2022-jp-ms", "detected")),
        ("お世話になります".encode("euc_jp"), None, Decoded("お世話になります", "euc-jp", "detected")),
        (b"\xef\xbb\xbf" + LETTER.encode("utf-8"), None, Decoded(LETTER, "utf-8", "detected")),
        (b"", None, Decoded("", "us-ascii", "detected")),
        # wrong labels
        (LETTER.encode("cp932"), "iso-8859-1", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "us-ascii", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "utf-8", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "euc-jp", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("cp932"), "ISO-2022-JP", Decoded(LETTER, "cp932", "detected")),
        (LETTER.encode("utf-8"), "ISO-2022-JP", Decoded(LETTER, "utf-8", "detected")),
        (LETTER.encode("utf-8"), "Shift_JIS", Decoded(LETTER, "utf-8", "detected")),
        (LETTER.encode("utf-8"), "windows-1252", Decoded(LETTER, "utf-8", "detected")),
        ("お世話になります".encode("euc_jp"), "Shift_JIS", Decoded("お世話になります", "euc-jp", "detected")),
        (LETTER.encode("iso-2022-jp-ms"), "us-ascii", Decoded(LETTER, "iso-2022-jp-ms", "detected")),
        # half-width katakana only (bank transfer names): CP932, never EUC-JP or Latin noise
        ("ｶﾌﾞｼｷｶﾞｲｼﾔ ﾃｽﾄ ｺﾝﾆﾁﾊ".encode("cp932"), "Shift_JIS", Decoded("ｶﾌﾞｼｷｶﾞｲｼﾔ ﾃｽﾄ ｺﾝﾆﾁﾊ", "cp932", "label")),
        ("ﾃｽ".encode("cp932"), "Shift_JIS", Decoded("ﾃｽ", "cp932", "label")),  # also valid UTF-8 "ý"
        ("ｶﾌﾞｼｷｶﾞｲｼﾔ ﾃｽﾄ ｺﾝﾆﾁﾊ".encode("cp932"), None, Decoded("ｶﾌﾞｼｷｶﾞｲｼﾔ ﾃｽﾄ ｺﾝﾆﾁﾊ", "cp932", "detected")),
        # UTF-8 without kana under a Shift_JIS label
        (
            "氏名,所属\r\n髙橋 一郎,情報政策課".encode(),
            "shift_jis",
            Decoded("氏名,所属\r\n髙橋 一郎,情報政策課", "utf-8", "detected"),
        ),
        # plain ASCII labelled UTF-16 would otherwise come out as CJK nonsense
        (b"hello world", "utf-16", Decoded("hello world", "us-ascii", "detected")),
        ("hello".encode("utf-16-le"), "utf-16-le", Decoded("hello", "utf-16-le", "label")),
        # kana-less CP932 (a CSV of names) is still recognised
        (
            "氏名,所属\r\n髙橋 一郎,㈱髙﨑商事\r\n﨑山 花子,情報政策課\r\n".encode("cp932"),
            None,
            Decoded("氏名,所属\r\n髙橋 一郎,㈱髙﨑商事\r\n﨑山 花子,情報政策課\r\n", "cp932", "detected"),
        ),
    ],
)
def test_decode_body(raw: bytes, label: str | None, expected: Decoded) -> None:
    assert decode_body(raw, label) == expected


def test_decode_body_truncated_text_keeps_the_declared_charset() -> None:
    assert decode_body(LETTER.encode("cp932")[:-1], "Shift_JIS") == Decoded(
        LETTER[:-1] + "\ufffd", "cp932", "fallback"
    )
    assert decode_body(LETTER.encode("utf-8")[:-1], "utf-8") == Decoded(
        LETTER[:-1] + "\ufffd", "utf-8", "fallback"
    )


def test_decode_body_broken_iso2022jp_falls_back_to_the_codec() -> None:
    assert decode_body(b"\x1b$B$3$s$K\x7f\x7f\x1b(B", None) == Decoded(
        "こんに\ufffd\ufffd", "iso-2022-jp-ms", "fallback"
    )


def test_decode_body_never_uses_ebcdic_or_noise_guesses_on_short_input() -> None:
    # charset-normalizer calls these five bytes cp037 (EBCDIC); a near-miss UTF-8 is more useful.
    assert decode_body(b"\xe3\x81\x82\xe3\x81", None) == Decoded("あ\ufffd", "utf-8", "fallback")


def test_decode_body_other_cjk_without_label() -> None:
    korean = "안녕하세요 반갑습니다 오늘 날씨가 좋네요 감사합니다"
    chinese = "你好，今天天气很好，我们去公园散步吧。谢谢你的帮助。"
    assert decode_body(korean.encode("euc-kr"), None).text == korean
    assert decode_body(chinese.encode("gb2312"), None).text == chinese


def test_decode_body_html_meta_charset() -> None:
    html = '<html><head><meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS"></head>'
    raw = (html + "<body>①㈱髙のお知らせ</body></html>").encode("cp932")
    assert decode_body(raw, None, html=True) == Decoded(raw.decode("cp932"), "cp932", "meta")
    # Without html=True the meta tag is not consulted; detection still gets it right.
    assert decode_body(raw, None) == Decoded(raw.decode("cp932"), "cp932", "detected")
    # A plausible MIME label wins over the meta tag.
    utf8 = ('<meta charset="shift_jis"><p>' + LETTER).encode("utf-8")
    assert decode_body(utf8, "utf-8", html=True).method == "label"
    # A wrong meta tag is ignored like a wrong label.
    assert decode_body(utf8, None, html=True) == Decoded(utf8.decode("utf-8"), "utf-8", "detected")


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        (b'<meta charset="Shift_JIS">', "shift_jis"),
        (b"<META CHARSET=euc-jp>", "euc-jp"),
        (b'<meta http-equiv="Content-Type" content="text/html; charset=iso-2022-jp">', "iso-2022-jp"),
        (b"<meta content='text/html;charset=UTF-8' http-equiv='content-type'>", "utf-8"),
        (b'<?xml version="1.0" encoding="Shift_JIS"?><html>', "shift_jis"),
        (b"<html><body>no meta</body></html>", None),
        (b" " * 5000 + b'<meta charset="utf-8">', None),  # only the first 4 KB count
    ],
)
def test_sniff_html_charset(raw: bytes, label: str | None) -> None:
    assert sniff_html_charset(raw) == label


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=400),
    st.one_of(
        st.none(),
        st.sampled_from(
            [
                "utf-8",
                "iso-2022-jp",
                "shift_jis",
                "euc-jp",
                "us-ascii",
                "iso-8859-1",
                "utf-16",
                "gb2312",
                "unknown-8bit",
                "base64",
                "rot13",
                "idna",
                "utf-7",
                "x-bogus",
                "",
            ]
        ),
        st.text(max_size=20),
    ),
    st.booleans(),
)
def test_decode_body_never_raises(raw: bytes, label: str | None, html: bool) -> None:
    decoded = decode_body(raw, label, html=html)
    assert isinstance(decoded.text, str)
    assert decoded.method in ("label", "meta", "detected", "fallback")
    codecs.lookup(decoded.charset)  # always a usable codec name


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(CP932_CHARS), min_size=1, max_size=100))
def test_decode_body_reads_unlabelled_iso2022jp_and_utf8(text: str) -> None:
    assert decode_body(text.encode("iso-2022-jp-ms"), None).text == text
    assert decode_body(text.encode("utf-8"), None).text == text


# ============================================================================ encode_body


def test_encode_body_iso2022jp_roundtrip() -> None:
    text = "山田様\r\n①㈱髙﨑～の件です。\r\n"
    raw, label = encode_body(text, "iso-2022-jp")
    assert label == "iso-2022-jp"
    assert raw == text.encode("iso-2022-jp-ms")
    assert raw.isascii()
    assert decode_body(raw, label) == Decoded(text, "iso-2022-jp-ms", "label")


@pytest.mark.parametrize("text", ["絵文字😀です", "𠮷野家", "한국어", "ｶﾞ and é"])
def test_encode_body_falls_back_to_utf8(text: str) -> None:
    raw, label = encode_body(text, "ISO-2022-JP")  # é is not in CP932 either
    assert label == "utf-8"
    assert raw == text.encode("utf-8")


@pytest.mark.parametrize(
    ("text", "charset", "raw", "label"),
    [
        ("①髙", "utf-8", "①髙".encode(), "utf-8"),
        ("①髙", "UTF8", "①髙".encode(), "utf-8"),
        ("①髙", "Shift_JIS", "①髙".encode("cp932"), "shift_jis"),
        ("あ", "EUC-JP", "あ".encode("euc_jp"), "euc-jp"),
        ("abc", "us-ascii", b"abc", "us-ascii"),
        ("あ", "us-ascii", "あ".encode(), "utf-8"),
        ("あ", "x-no-such", "あ".encode(), "utf-8"),
        ("\udc82", "utf-8", b"?", "utf-8"),  # a lone surrogate never makes encode_body raise
    ],
)
def test_encode_body_other_charsets(text: str, charset: str, raw: bytes, label: str) -> None:
    assert encode_body(text, charset) == (raw, label)


# ============================================================================ fixtures


def _leaf_parts(name: str) -> list[Message]:
    msg = email.message_from_bytes((FIXTURES / name).read_bytes(), policy=email.policy.default)
    return [p for p in msg.walk() if not p.is_multipart() and p.get_content_type() != "message/rfc822"]


def _decode_part(part: Message) -> Decoded:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return decode_body(payload, part.get_content_charset(), html=part.get_content_type() == "text/html")


# fixture -> [(content type, charset, method, exact text or list of required substrings)]
FIXTURE_BODIES: dict[str, list[tuple[str, str, str, str | list[str]]]] = {
    "iso2022jp-outlook-nec.eml": [
        (
            "text/plain",
            "iso-2022-jp-ms",
            "label",
            [
                "㈱髙﨑商事の髙﨑です。",
                "①日時：12月1日（月）10:00～12:00",
                "②場所：本庁舎 第３会議室",
                "③持ち物：№付き受付票、筆記用具",
                "機種依存文字：ⅰⅱⅲ ⅠⅡⅢ ㍉㌔㌢ ㈱㈲ ℡ 纊德 ∵≒≡∫ ￢ －",
                "半角カナ：ﾃｽﾄ (ｶﾀｶﾅ)",
                "髙﨑 德太郎",
            ],
        )
    ],
    "shiftjis-cp932-nec-ibm.eml": [
        (
            "text/plain",
            "cp932",
            "label",
            (
                "山田様\r\n\r\nお世話になっております。㈱髙橋工務店の髙橋です。\r\n"
                "①見積書（表計算ソフト形式）を送付いたします。\r\n②工期：令和７年１２月～令和８年３月\r\n"
                "③金額：￥1,234,000－（税込）\r\nご確認のほど、よろしくお願い申し上げます。\r\n"
            ),
        )
    ],
    "eucjp-8bit.eml": [
        (
            "text/plain",
            "euc-jp",
            "label",
            (
                "市民課 御中\r\n\r\n住民票の写しの交付をお願いします。\r\n半角カナ：ｼﾞｭｳﾐﾝﾋｮｳ\r\n"
                "補助漢字：丂（JIS X 0212）\r\nよろしくお願いします。\r\n"
            ),
        )
    ],
    "utf8-8bit.eml": [
        (
            "text/plain",
            "utf-8",
            "label",
            ["①停止日時：2025年12月6日（土）22:00～24:00", "㈱髙﨑システム", "絵文字😀と𠮷野家"],
        )
    ],
    "utf8-base64.eml": [
        (
            "text/plain",
            "utf-8",
            "label",
            "ご担当者様\r\n\r\n納品書を送付いたします。①～③の３点です。\r\n㈱髙﨑商事\r\n",
        )
    ],
    "no-charset-cp932.eml": [
        (
            "text/plain",
            "cp932",
            "detected",
            "お疲れ様です。\r\n会議資料①～③を共有フォルダに格納しました。\r\n髙橋\r\n",
        )
    ],
    "wrong-label-latin1-cp932.eml": [
        (
            "text/plain",
            "cp932",
            "detected",
            "市民の皆様へ\r\nアンケートにご協力ください。回答期限は①12月10日です。\r\n㈱髙﨑リサーチ\r\n",
        )
    ],
    "wrong-label-usascii-cp932.eml": [
        (
            "text/plain",
            "cp932",
            "detected",
            "経理ご担当者様\r\n請求書を送付します。お支払期限：令和７年１２月２５日\r\n①請求書 ②納品書\r\n",
        )
    ],
    "wrong-label-iso2022jp-utf8.eml": [
        (
            "text/plain",
            "utf-8",
            "detected",
            "関係各位\r\n防災訓練を実施します。①集合：午前９時 ②場所：市民広場\r\n髙﨑\r\n",
        )
    ],
    "html-sjis-meta-only.eml": [
        (
            "text/html",
            "cp932",
            "meta",
            [
                "<title>イベント開催のお知らせ</title>",
                "①市民まつりを開催します。",
                "主催：㈱髙﨑企画",
                "表彰式・ソフトボール大会",
            ],
        )
    ],
    "multipart-alternative-iso2022jp-utf8html.eml": [
        (
            "text/plain",
            "iso-2022-jp-ms",
            "label",
            (
                "市報12月号のご案内です。\r\n①特集：冬の防災\r\n②お知らせ：㈱髙﨑建設による道路工事\r\n"
                "詳細は https://www.city.example.lg.jp/ をご覧ください。"
            ),
        ),
        (
            "text/html",
            "utf-8",
            "label",
            [
                '"ＭＳ Ｐゴシック"',
                "スクリプトは実行されてはいけません",
                "<!-- コメント：表示されない -->",
                "<li>①避難所の確認</li>",
                "<td>㈱髙﨑建設 道路工事説明会</td>",
                '<a href="https://www.city.example.lg.jp/kouhou/">市報のページ</a>',
                'alt="市章の画像"',
                'value="職員番号"',
            ],
        ),
    ],
    "html-only-stub-plain.eml": [
        (
            "text/plain",
            "iso-2022-jp-ms",
            "label",
            "HTMLメールを表示できません。HTML対応のメールソフトでご覧ください。",
        ),
        (
            "text/html",
            "utf-8",
            "label",
            ["本文はHTMLパートにのみあります。", "①応募締切：12月15日", "㈱髙﨑マーケティング"],
        ),
    ],
    "attachment-csv-cp932.eml": [
        # The CRLF before a boundary belongs to the boundary, so multipart texts lose their last one.
        ("text/plain", "iso-2022-jp-ms", "label", "名簿を送付します。"),
        (
            "text/csv",
            "cp932",
            "detected",
            (
                "氏名,所属,電話番号,備考\r\n髙橋 一郎,㈱髙﨑商事,03-1234-5678,①担当\r\n"
                "﨑山 花子,情報政策課,内線1234,②副担当～\r\n"
            ),
        ),
    ],
    "forwarded-rfc822-iso2022jp.eml": [
        ("text/plain", "iso-2022-jp-ms", "label", "転送します。ご確認ください。"),
        (
            "text/plain",
            "iso-2022-jp-ms",
            "label",
            "道路占用許可申請書を提出します。\r\n①申請者：㈱髙﨑建設\r\n②期間：12月1日～12月26日",
        ),
    ],
    "subject-split-broken-mua.eml": [
        ("text/plain", "utf-8", "label", "来庁者駐車場の利用を制限します。\r\n"),
    ],
    "message-id-8bit-hostname.eml": [
        (
            "text/plain",
            "iso-2022-jp-ms",
            "label",
            "髙橋のパソコンから送信しています。\r\n①会議は１２月３日（水）です。\r\n㈱髙﨑商事 髙橋\r\n",
        ),
    ],
    "attachment-rfc2231-split-escape.eml": [
        ("text/plain", "iso-2022-jp-ms", "label", "議事録をお送りします。"),
        (
            "text/plain",
            "cp932",
            "label",
            ["\x1b[31m【重要】\x1b[0m", "出席者：情報政策課、総務課、㈱髙﨑商事"],
        ),
    ],
}


@pytest.mark.parametrize("name", sorted(FIXTURE_BODIES))
def test_fixture_bodies(name: str) -> None:
    parts = [p for p in _leaf_parts(name) if p.get_content_maintype() == "text"]
    expected = FIXTURE_BODIES[name]
    assert len(parts) == len(expected)
    for part, (ctype, charset, method, text) in zip(parts, expected, strict=True):
        decoded = _decode_part(part)
        assert part.get_content_type() == ctype
        assert (decoded.charset, decoded.method) == (charset, method)
        if isinstance(text, str):
            assert decoded.text == text
        else:
            for piece in text:
                assert piece in decoded.text


def _rtf_text(rtf: str) -> str:
    """Just enough RTF to check the fixture: \\'xx runs are CP932 bytes, \\uN? is one character."""
    out: list[str] = []
    pending = bytearray()
    for m in re.finditer(r"\\'([0-9a-f]{2})|\\u(-?\d+)\?|\\par\b|(\\[a-z]+-?\d* ?|[{}\r\n])|(.)", rtf):
        if m.group(1):
            pending.append(int(m.group(1), 16))
            continue
        if pending:
            out.append(pending.decode("cp932"))
            pending.clear()
        if m.group(2):
            out.append(chr(int(m.group(2)) % 65536))
        elif m.group(0) == "\\par":
            out.append("\n")
        elif m.group(4):
            out.append(m.group(4))
    return "".join(out)


def test_fixture_rtf_body() -> None:
    (part,) = _leaf_parts("rtf-body-cp932.eml")
    decoded = _decode_part(part)
    assert part.get_content_type() == "text/rtf"
    assert (decoded.charset, decoded.method) == ("us-ascii", "detected")  # RTF is 7-bit
    text = _rtf_text(decoded.text)
    assert "お世話になっております。\n①見積書を添付します。\n㈱髙﨑商事\n" in text
    assert "ＭＳ ゴシック" in text


def test_every_fixture_is_crlf_and_parses() -> None:
    names = sorted(p.name for p in FIXTURES.glob("*.eml"))
    assert len(names) == 24
    for name in names:
        raw = (FIXTURES / name).read_bytes()
        assert b"\n" not in raw.replace(b"\r\n", b""), name
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert not msg.defects, (name, msg.defects)
        assert msg["Message-ID"] and msg["Date"]


# ============================================================================ corpus


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus/mail is not present")
def test_corpus_text_bodies_decode() -> None:
    count = 0
    for path in sorted(CORPUS.rglob("*")):
        if not path.is_file() or path.suffix in (".json", ".xml", ".csv", ".out", ".bin", ".txt"):
            continue
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.compat32)
        for part in msg.walk():
            if part.is_multipart() or part.get_content_maintype() != "text":
                continue
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                html = part.get_content_subtype() == "html"
                decode_body(payload, part.get_content_charset(), html=html)
                count += 1
    assert count > 500


@pytest.mark.corpus
@pytest.mark.skipif(not (CORPUS / "sisimai").is_dir(), reason="../shared/corpus/mail/sisimai is not present")
def test_corpus_ezweb_bounce_labelled_iso2022jp_is_really_euc_jp() -> None:
    msg = email.message_from_bytes((CORPUS / "sisimai/bsd/lhost-ezweb-03.eml").read_bytes())
    part = next(p for p in msg.walk() if p.get_content_type() == "text/plain")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    decoded = decode_body(payload, part.get_content_charset())
    assert (decoded.charset, decoded.method) == ("euc-jp", "detected")
    assert decoded.text.startswith("次のあて先へのメッセージはエラーのため送信できませんでした。")


def test_fixture_readme_lists_every_fixture() -> None:
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for path in FIXTURES.glob("*.eml"):
        assert f"`{path.name}`" in readme
