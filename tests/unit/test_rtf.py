"""detox.text.rtf: untrusted RTF to plain text."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detox.text.rtf as rtf_module
from detox.text.rtf import RtfText, rtf_to_text


def sjis(text: str) -> str:
    """RTF hex escapes of the cp932 bytes of ``text``."""
    return "".join(f"\\'{b:02x}" for b in text.encode("cp932"))


def rtf(body: str, *, header: str = "\\ansi\\ansicpg932\\deff0") -> bytes:
    """A document with a cp932 font f0 (ＭＳ 明朝) and a Western font f1; the Japanese in
    ``body`` is written as cp932 hex escapes, as Word does."""
    fonts = "{\\fonttbl{\\f0\\fnil\\fcharset128 ＭＳ 明朝;}{\\f1\\froman\\fcharset0 Times;}}"
    document = "{\\rtf1" + header + fonts + "\\f0 " + body + "}"
    return re.sub(r"[^\x00-\x7f]+", lambda m: sjis(m.group()), document).encode("ascii")


def text(data: bytes) -> str:
    return rtf_to_text(data).text


# -- code pages ---------------------------------------------------------------------------------


def test_cp932_double_byte_pairs() -> None:
    result = rtf_to_text(rtf("株式会社 髙橋 ①\\par ｶﾀｶﾅ\\par"))
    assert result.text == "株式会社 髙橋 ①\nｶﾀｶﾅ\n"
    assert result.removed == {}


def test_cp932_extension_characters_as_word_writes_them() -> None:
    # 髙 as an IBM extension (FB FC) and as an NEC-selected IBM extension (EE E0), ① (87 40).
    data = rtf("\\'8a\\'94\\'8e\\'ae\\'89\\'ef\\'8e\\'d0 \\'fb\\'fc\\'8b\\'b4 \\'ee\\'e0 \\'87\\'40")
    assert text(data) == "株式会社 髙橋 髙 ①\n"


def test_pair_split_by_a_source_line_break() -> None:
    assert text(rtf("\\'82\r\n\\'a0\\'82\n\\'a2")) == "あい\n"


def test_trail_bytes_written_as_literals() -> None:
    # ソ is 83 5C (the trail byte is a backslash, escaped as \\); ア is 83 41 ("A").
    assert text(rtf("\\'83\\\\\\'83A\\'95\\\\")) == "ソア表\n"


def test_font_charset_decides_the_code_page() -> None:
    # A Western document with one Japanese font: fcharset128 bytes are cp932, the others cp1252.
    body = "\\f1 caf\\'e9 {\\f0 日本語} \\'e9"
    assert text(rtf(body, header="\\ansi\\ansicpg1252\\deff1")) == "café 日本語 é\n"


def test_fcharset128_without_ansicpg() -> None:
    body = sjis("東京都").encode("ascii")
    data = b"{\\rtf1\\ansi{\\fonttbl{\\f0\\fcharset128 MS Gothic;}}\\f0 " + body + b"}"
    assert text(data) == "東京都\n"


def test_undecodable_bytes_become_replacement_characters() -> None:
    assert text(rtf("a\\'82\\par b")) == "a\ufffd\nb\n"


# -- unicode ------------------------------------------------------------------------------------


def test_unicode_with_uc1_fallbacks() -> None:
    assert text(rtf("\\uc1\\u26481?\\u20140?\\u-240?\\u8203?x\\par")) == "東京０x\n"


def test_unicode_skip_counts() -> None:
    # \uc2 skips a two-byte cp932 fallback, \uc0 skips nothing, a group end resets the skip.
    body = "\\uc2\\u12354\\'82\\'a0\\uc0\\u12356 x{\\uc3\\u12358}abc"
    assert text(rtf(body)) == "あいxうabc\n"


def test_unicode_surrogate_pairs_are_joined() -> None:
    assert text(rtf("\\uc1\\u-10179?\\u-8704?\\u55357?x")) == "😀\ufffdx\n"


# -- dropped content ----------------------------------------------------------------------------


def test_object_and_pictures_are_dropped_and_counted() -> None:
    body = (
        "前{\\object\\objemb{\\*\\objclass Package}{\\*\\objdata 01050000020000000b000000"
        "5061636b61676500}{\\result{\\pict\\wmetafile8 0100090000}}}後\\par"
        "{\\*\\shppict{\\pict\\pngblip 89504e470d0a1a0a}}{\\nonshppict{\\pict\\wmetafile8 0100}}"
        "{\\pict\\jpegblip\\bin6 {}}{\\}後ろ}\\par"
        "{\\*\\objdata 0102}末"
    )
    result = rtf_to_text(rtf(body))
    assert result.text == "前後\n\n末\n"
    assert dict(result.removed) == {"object": 1, "objdata": 1, "pict": 2}


def test_bin_outside_a_picture_is_skipped_and_counted() -> None:
    result = rtf_to_text(b"{\\rtf1 a\\bin3 }}{b\\bin999999 xyz}")
    assert result.text == "ab\n"
    assert result.removed == {"bin": 2}


def test_hidden_text_is_dropped() -> None:
    result = rtf_to_text(rtf("見{\\v 隠し}える\\v 隠し\\v0 文\\par"))
    assert result.text == "見える文\n"
    assert result.removed == {"hidden": 2}


def test_field_instructions_are_never_shown() -> None:
    data = (
        b"{\\rtf1\\ansi "
        b'{\\field{\\*\\fldinst{HYPERLINK "https://example.jp/a" \\\\o "tip"}}{\\fldrslt{\\ul click here}}} '
        b'{\\field{\\*\\fldinst HYPERLINK "https://example.jp/b/"}{\\fldrslt example.jp/b}} '
        b'{\\field{\\*\\fldinst HYPERLINK "javascript:alert(1)"}{\\fldrslt js}} '
        b'{\\field{\\*\\fldinst HYPERLINK \\\\l "anchor"}{\\fldrslt local}} '
        b'{\\field{\\*\\fldinst DDEAUTO c:\\\\windows\\\\system32\\\\cmd.exe "/k calc.exe"}{\\fldrslt dde}}'
        b"\\par}"
    )
    result = rtf_to_text(data)
    assert result.text == "click here (https://example.jp/a) example.jp/b js local dde\n"
    assert result.removed == {"javascript-url": 1}


def test_destinations_without_text_are_skipped() -> None:
    data = (
        b"{\\rtf1\\ansi{\\fonttbl{\\f0 Arial;}}{\\colortbl;\\red255\\green0\\blue0;}"
        b"{\\stylesheet{\\s0 Normal;}}{\\info{\\title T}{\\author A}}{\\*\\generator G;}"
        b"{\\*\\unknowndest secret}{\\*\\bkmkstart b}body{\\*\\bkmkend b}\\par}"
    )
    assert text(data) == "body\n"


def test_upr_keeps_only_the_unicode_copy() -> None:
    assert text(b"{\\rtf1\\ansi {\\upr{ANSI copy}{\\*\\ud{\\u26481?\\u20140?}}}\\par}") == "東京\n"


def test_invisible_characters_are_removed() -> None:
    result = rtf_to_text(b"{\\rtf1 pay\\u8203?pal\\u8238?gpj.exe}")
    assert result.text == "paypalgpj.exe\n"
    assert result.removed == {"invisible": 2}


# -- structure ----------------------------------------------------------------------------------


def test_paragraphs_lines_tabs_and_specials() -> None:
    data = (
        b"{\\rtf1\\ansi a\\par b\\line c\\tab d\\par\\par\\par\\par e \\emdash\\endash\\bullet"
        b"\\lquote\\rquote\\ldblquote\\rdblquote x\\~y\\-z\\_w   \\par \\sect f\\page g}"
    )
    # The space after a control word is its delimiter: "\\rdblquote x" is "”x".
    assert text(data) == "a\nb\nc\td\n\ne \u2014\u2013\u2022\u2018\u2019\u201c\u201dx yz-w\n\nf\ng\n"


def test_line_separators_in_text_are_line_breaks() -> None:
    assert text(b"{\\rtf1 a\\u8232?b\\u8233?c\x0cd\\'0d\\'0ae}") == "a\nb\nc\nd\ne\n"


def test_table_cells() -> None:
    data = (
        b"{\\rtf1\\ansi\\trowd\\cellx1000\\cellx2000\\cellx3000"
        b"\\intbl a\\cell \\cell c\\cell\\row"
        b"\\trowd\\intbl \\cell\\cell\\cell\\row"
        b"\\trowd\\intbl  d \\cell e\\cell\\row}"
    )
    assert text(data) == "a | c\nd | e\n"


def test_text_after_the_document_group_is_ignored() -> None:
    assert text(b"{\\rtf1 doc}trailing {\\rtf1 more}") == "doc\n"
    assert text(b"}}{\\rtf1 stray braces first}") == "stray braces first\n"


def test_result_is_frozen() -> None:
    result = rtf_to_text(b"{\\rtf1 x}")
    assert isinstance(result, RtfText)
    with pytest.raises(AttributeError):
        result.text = "y"  # type: ignore[misc]


def test_accepts_bytes_like_input() -> None:
    assert text(bytearray(b"{\\rtf1 x}")) == "x\n"  # type: ignore[arg-type]
    assert text(memoryview(b"{\\rtf1 y}")) == "y\n"  # type: ignore[arg-type]


# -- limits and hostile input -------------------------------------------------------------------


def test_max_bytes_truncates() -> None:
    result = rtf_to_text(b"{\\rtf1 " + b"a" * 100 + b"}", max_bytes=20)
    assert result.text == "a" * 13 + "\n"
    assert result.removed == {"truncated": 1}


def test_token_budget_bounds_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rtf_module, "_MAX_TOKENS", 10)
    result = rtf_to_text(b"{\\rtf1 a\\par b\\par c\\par d\\par e\\par f\\par g}")
    assert result.text == "a\nb\nc\nd\n"
    assert result.removed == {"truncated": 1}


def test_deep_nesting() -> None:
    data = b"{\\rtf1 " + b"{" * 200_000 + b"x" + b"}" * 200_000 + b"after}"
    started = time.monotonic()
    assert text(data) == "xafter\n"
    assert time.monotonic() - started < 10


def test_big_document_is_linear() -> None:
    data = rtf(sjis("あいうえお") * 200_000 + "\\par " + "{\\b text}\\par " * 50_000)
    assert len(data) > 4_000_000
    started = time.monotonic()
    result = rtf_to_text(data)
    assert time.monotonic() - started < 30
    assert result.text.startswith("あいうえお" * 10)
    assert result.text.count("text\n") == 50_000


def test_crafted_hyperlink_fields_are_fast() -> None:
    # striprtf's HYPERLINK regular expression takes seconds on a few kilobytes of this.
    data = b"{\\rtf1 " + b"{\\field{\\*\\fldinst{ HYPERLINK " * 20_000 + b"}"
    started = time.monotonic()
    assert text(data) == ""
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\\",
        b"\\'",
        b"\\'zz",
        b"{",
        b"}",
        b"{\\rtf1 \\u",
        b"{\\rtf1 \\u99999999999 x}",
        b"{\\rtf1 \\bin-5 x}",
        b"{\\rtf1\\ansicpg99999 \\'82}",
        b"\x00\xff\xfe",
        b"{\\rtf1{\\fonttbl{\\f0\\cpg4242;}}\\f0 \\'82}",
        b"{\\rtf1 \\uc999999999 \\u1 abc}",
    ],
)
def test_garbage_never_raises(garbage: bytes) -> None:
    assert isinstance(rtf_to_text(garbage).text, str)


_TOKENS = st.sampled_from(
    [
        b"{",
        b"}",
        b"\\par ",
        b"\\'82",
        b"\\'a0",
        b"\\'5c",
        b"\\u-10179?",
        b"\\u12354?",
        b"\\uc0 ",
        b"\\uc2 ",
        b"\\*",
        b"\\pict ",
        b"\\object ",
        b"\\bin3 ",
        b"\\v ",
        b"\\v0 ",
        b"\\cell ",
        b"\\row ",
        b"\\f0 ",
        b"\\f1 ",
        b"\\field",
        b'\\fldinst HYPERLINK "javascript:x"',
        b"\\fldrslt ",
        b"\\ansicpg932 ",
        b"\\fonttbl",
        b"\\fcharset128 ",
        b"text",
        b"\r\n",
        b"\\\\",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.lists(_TOKENS, max_size=60).map(b"".join)))
def test_property_never_raises_and_output_is_clean(data: bytes) -> None:
    out = rtf_to_text(b"{\\rtf1 " + data).text
    assert out == "" or (out.endswith("\n") and not out.endswith("\n\n"))
    assert "\n\n\n" not in out
    assert not any(0xD800 <= ord(c) <= 0xDFFF for c in out)
    assert not any(ord(c) < 0x20 and c not in "\n\t" for c in out)
