"""Tests for detox.text.headers: RFC 2047 repair, raw 8-bit headers, attachment file names."""

from __future__ import annotations

import base64
import email
import email.policy
import itertools
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import detox.text.charset  # noqa: F401  (registers iso-2022-jp-ms for the helpers below)
from detox.text.headers import decode_8bit_header_bytes, decode_filename, decode_header_value

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "mail"
CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "mail"
JIS = "iso-2022-jp-ms"


def b_word(data: bytes, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(data).decode()}?="


def split_words(data: bytes, charset: str, *cuts: int, sep: str = "\r\n ") -> str:
    """Encoded-words cut at byte offsets, as broken MUAs do (mid-character, mid-escape state)."""
    bounds = [0, *cuts, len(data)]
    return sep.join(b_word(data[a:b], charset) for a, b in itertools.pairwise(bounds))


def raw_header(data: bytes) -> str:
    """A header value the way email stores it after parsing bytes (8-bit as surrogate escapes)."""
    return data.decode("ascii", "surrogateescape")


# ============================================================================ decode_header_value

SUBJECT = "【ご案内】①②㈱髙﨑～説明会の件"
SUBJECT_JIS = SUBJECT.encode(JIS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # ISO-2022-JP split inside a JIS pair, and a word that continues the double-byte state
        (split_words(SUBJECT_JIS, "ISO-2022-JP", 10, 21), SUBJECT),
        (split_words(SUBJECT_JIS, "iso-2022-jp", 3, 4, 5), SUBJECT),  # ESC $ B itself split
        # UTF-8 split inside 3-byte characters
        (split_words(SUBJECT.encode(), "UTF-8", 4, 17), SUBJECT),
        (split_words(SUBJECT.encode(), "utf-8", 1, 2, sep=" "), SUBJECT),
        # Shift_JIS (CP932) Q-words split between lead and trail byte
        ("=?SHIFT_JIS?Q?=91?= =?SHIFT_JIS?Q?=8D=96=B1=89=DB_=FB=FC=FA=B1?=", "総務課 髙﨑"),
        # Microsoft extensions through every Japanese label
        (b_word("①㈱髙﨑".encode(JIS), "ISO-2022-JP"), "①㈱髙﨑"),
        (b_word("①㈱髙﨑".encode("cp932"), "Shift_JIS"), "①㈱髙﨑"),
        (b_word("①㈱髙﨑".encode("cp932"), "Windows-31J"), "①㈱髙﨑"),
        (b_word("住民票".encode("euc_jp"), "EUC-JP"), "住民票"),
        # whitespace: dropped between encoded-words (also across charsets), kept next to text
        ("=?utf-8?B?44GC?= \t =?ISO-2022-JP?B?GyRCJCQbKEI=?=", "あい"),
        ("=?utf-8?B?44GC?= abc =?utf-8?B?44GE?=", "あ abc い"),
        ("abc=?utf-8?B?44GC?=def", "abcあdef"),
        ("Re:=?utf-8?Q?=E3=81=82_=E3=81=84?=", "Re:あ い"),
        (
            '"=?ISO-2022-JP?B?GyRCOzNFRBsoQiAbJEJCQE86GyhC?=" <taro@example.jp>',
            '"山田 太郎" <taro@example.jp>',
        ),
        # sloppy encoders
        ("=?UTF-8?B?44GCYQ?=", "あa"),  # missing padding
        ("=?UTF-8?B?44GCYQ====?=", "あa"),  # too much padding
        ("=?UTF-8?B?44GC YQ==?=", "あa"),  # space inside the encoded text
        ("=?UTF-8?B?5pel5pys6K?= =?UTF-8?B?qe44Gu5Lu25ZCN44Gn44GZ?=", "日本語の件名です"),  # split base64
        ("=?utf-8*ja?B?44GC44GE?=", "あい"),  # RFC 2231 language tag
        ("=?UTF-8*JA-JP?Q?=E3=81=82?=", "あ"),
        (b_word("テスト①".encode("cp932"), "x-unknown"), "テスト①"),  # unknown charset: detection
        (b_word("テストです".encode("cp932"), "iso-8859-1"), "テストです"),  # wrong label
        (b_word("テストです".encode(), "ISO-2022-JP"), "テストです"),  # wrong label
        ("=?utf-8?Q?a=0D=0Ab=00c=09d?=", "abc\td"),  # decoded controls removed, tab kept
        ("=?utf-8?B?not closed", "=?utf-8?B?not closed"),
        ("=?bad charset?Q?x?=", "=?bad charset?Q?x?="),
        ("plain ASCII subject", "plain ASCII subject"),
        ("", ""),
        # folding and controls
        ("first line\r\n second line\r\n\tthird", "first line second line third"),
        ("a\x00b\x1bc\x7fd\te\u2028f", "abcd\te f"),
        (split_words(SUBJECT_JIS, "ISO-2022-JP", 10, sep="\r\n\t") + "\r\n (No.12)", SUBJECT + " (No.12)"),
    ],
)
def test_decode_header_value(value: str, expected: str) -> None:
    assert decode_header_value(value) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ソフト表①のテスト".encode("cp932"), "ソフト表①のテスト"),
        ("議事録のテスト".encode("euc_jp"), "議事録のテスト"),
        ("議事録のテスト😀".encode(), "議事録のテスト😀"),
        ("①㈱髙﨑のテスト".encode(JIS), "①㈱髙﨑のテスト"),  # raw ISO-2022-JP, no encoded-word
        (b"Re: " + "件名".encode("cp932") + b" =?utf-8?B?44GC?=", "Re: 件名 あ"),
    ],
)
def test_decode_header_value_raw_8bit(raw: bytes, expected: str) -> None:
    assert decode_header_value(raw_header(raw)) == expected


def test_decode_header_value_accepts_real_unicode_and_stray_surrogates() -> None:
    assert decode_header_value("テスト =?utf-8?B?44GC?=") == "テスト あ"
    assert decode_header_value("\ud800x") == "\ufffdx"


def test_decode_header_value_from_a_parsed_message() -> None:
    subject = split_words(SUBJECT_JIS, "ISO-2022-JP", 10, 21)
    raw = (
        (
            f"From: {b_word('髙﨑 德太郎'.encode(JIS), 'ISO-2022-JP')} <somebody@example.jp>\r\n"
            f"Subject: {subject}\r\n"
            "X-Raw: "
        ).encode()
        + "表示①".encode("cp932")
        + b"\r\n\r\nbody\r\n"
    )
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    decoded = {name: decode_header_value(value) for name, value in msg.raw_items()}
    assert decoded == {"From": "髙﨑 德太郎 <somebody@example.jp>", "Subject": SUBJECT, "X-Raw": "表示①"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"plain", "plain"),
        ("表示".encode("cp932"), "表示"),
        ("ｶﾀｶﾅのテスト".encode("cp932"), "ｶﾀｶﾅのテスト"),
        ("表示".encode(JIS), "表示"),
        ("表示".encode(), "表示"),
        (b"", ""),
    ],
)
def test_decode_8bit_header_bytes(raw: bytes, expected: str) -> None:
    assert decode_8bit_header_bytes(raw) == expected


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(raw_header)))
def test_decode_header_value_never_raises_and_is_clean(value: str) -> None:
    out = decode_header_value(value)
    assert not any(ord(ch) < 0x20 and ch != "\t" for ch in out)
    assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in out)


@settings(max_examples=200, deadline=None)
@given(
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
        min_size=1,
        max_size=40,
    ),
    st.integers(min_value=1, max_value=200),
)
def test_utf8_encoded_words_split_anywhere_rejoin(text: str, cut: int) -> None:
    data = text.encode()
    cut = cut % len(data) or 1
    value = split_words(data, "UTF-8", cut) if len(data) > 1 else b_word(data, "UTF-8")
    assert decode_header_value(value) == text.strip()


# ============================================================================ decode_filename


def part_with(*headers: bytes) -> Message:
    raw = b"\r\n".join(headers) + b"\r\n\r\nbody\r\n"
    return email.message_from_bytes(raw, policy=email.policy.default)


NAME_A = "①会議資料（髙﨑）.txt"
NAME_B = "令和７年度_予算要求書_最終版①㈱.xlsx"


def pct(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # RFC 2231
        (
            (f"Content-Disposition: attachment; filename*=ISO-2022-JP''{pct(NAME_A.encode(JIS))}".encode(),),
            NAME_A,
        ),
        ((f"Content-Disposition: attachment; filename*=UTF-8''{pct(NAME_B.encode())}".encode(),), NAME_B),
        (
            (
                b"Content-Disposition: attachment; filename*=Shift_JIS''"
                + pct(NAME_A.encode("cp932")).encode(),
            ),
            NAME_A,
        ),
        (
            (f"Content-Disposition: attachment; filename*=utf-8'ja'{pct('テスト.txt'.encode())}".encode(),),
            "テスト.txt",
        ),
        ((b"Content-Disposition: attachment; filename*=''%E3%83%86%E3%82%B9%E3%83%88.txt",), "テスト.txt"),
        (
            (
                (
                    b"Content-Disposition: attachment;\r\n filename*0*=UTF-8''%E3%83;\r\n"
                    b" filename*1*=%86%E3%82%B9%E3%83%88;\r\n filename*2=.txt"
                ),
            ),
            "テスト.txt",
        ),
        (
            (b"Content-Disposition: attachment; filename*1*=%86%E3%82%B9.txt; filename*0*=UTF-8''%E3%83",),
            "テス.txt",
        ),
        (
            (  # RFC 2047 spread over plain RFC 2231 sections (seen from older MUAs)
                (
                    b'Content-Disposition: attachment; filename*0="=?ISO-2022-JP?B?GyRCJUYlORsoQg==?=";'
                    b' filename*1="=?ISO-2022-JP?B?GyRCJUgbKEI=?=.txt"'
                ),
            ),
            "テスト.txt",
        ),
        (
            (
                (
                    b'Content-Disposition: attachment; filename="fallback.txt";'
                    b" filename*=UTF-8''%E3%83%86%E3%82%B9%E3%83%88.txt"
                ),
            ),
            "テスト.txt",
        ),
        # RFC 2047 inside quotes, Content-Type name= fallback
        (
            (
                b'Content-Type: application/pdf;\r\n\tname="'
                + split_words("提出書類①㈱髙﨑.pdf".encode(JIS), "ISO-2022-JP", 11).encode()
                + b'"',
                b"Content-Disposition: attachment",
            ),
            "提出書類①㈱髙﨑.pdf",
        ),
        (
            (
                b'Content-Disposition: attachment; filename="'
                + b_word("見積書（表計算）.xls".encode("cp932"), "Shift_JIS").encode()
                + b'"',
            ),
            "見積書（表計算）.xls",
        ),
        (
            (f"Content-Type: text/csv; name={b_word('名簿.csv'.encode(JIS), 'iso-2022-jp')}".encode(),),
            "名簿.csv",
        ),
        # raw 8-bit names
        (
            (
                b'Content-Type: text/plain; name="' + "ソフト表①.txt".encode("cp932") + b'"',
                b'Content-Disposition: attachment; filename="' + "ソフト表①.txt".encode("cp932") + b'"',
            ),
            "ソフト表①.txt",
        ),
        (
            (b'Content-Disposition: attachment; filename="' + "※重要※議事録.txt".encode(JIS) + b'"; size=3',),
            "※重要※議事録.txt",
        ),
        (
            (b'Content-Disposition: attachment; filename="' + "議事録（案）.txt".encode("euc_jp") + b'"',),
            "議事録（案）.txt",
        ),
        ((b'Content-Disposition: attachment; filename="' + "テスト😀.txt".encode() + b'"',), "テスト😀.txt"),
        (
            (
                b"Content-Disposition: attachment; filename="
                + "テスト 資料.txt".encode("cp932")
                + b"; size=3",
            ),
            "テスト 資料.txt",
        ),
        # hostile names
        ((b'Content-Disposition: attachment; filename="..\\..\\evil.exe"',), "evil.exe"),
        (
            (
                b'Content-Disposition: attachment; filename="C:\\\\Users\\\\x\\\\'
                + "評価.exe".encode("cp932")
                + b'"',
            ),
            "評価.exe",
        ),
        ((b'Content-Disposition: attachment; filename="/etc/passwd"',), "passwd"),
        ((b"Content-Disposition: attachment; filename*=UTF-8''%2E%2E%2F%2E%2E%2Fevil.exe",), "evil.exe"),
        ((b"Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe",), "invoicefdp.exe"),
        ((b'Content-Disposition: attachment; filename="=?utf-8?Q?a=01b=0D=0A=09.txt?="',), "ab.txt"),
        ((b"Content-Disposition: attachment; filename*=UTF-8''%E3%83%86%E3%82%99.txt",), "デ.txt"),  # NFC
        # quoting and other parameters
        ((b'Content-Disposition: attachment; filename="a\\"b.txt"; size=10',), 'a"b.txt'),
        ((b'Content-Disposition: attachment; size=10; filename = "spaced.txt" ; x=y',), "spaced.txt"),
        ((b'Content-Disposition: attachment; FILENAME="UPPER.TXT"',), "UPPER.TXT"),
        (
            (b'Content-Disposition: attachment; filename=""', b'Content-Type: text/plain; name="x.txt"'),
            "x.txt",
        ),
        (
            (
                b'Content-Disposition: attachment; filename="..\\\\"',
                b'Content-Type: text/plain; name="y.txt"',
            ),
            "y.txt",
        ),
        ((b'Content-Disposition: attachment; filename="unterminated.txt',), "unterminated.txt"),
    ],
)
def test_decode_filename(headers: tuple[bytes, ...], expected: str) -> None:
    assert decode_filename(part_with(*headers)) == expected


@pytest.mark.parametrize(
    "headers",
    [
        (b"Content-Type: text/plain; charset=utf-8",),
        (b"Content-Disposition: inline",),
        (b"Content-Disposition: attachment; filename=",),
        (b'Content-Disposition: attachment; filename="../../"',),
        (b"X-Other: filename=x.txt",),
    ],
)
def test_decode_filename_none(headers: tuple[bytes, ...]) -> None:
    assert decode_filename(part_with(*headers)) is None


def test_decode_filename_compat32_and_built_messages() -> None:
    raw = b'Content-Disposition: attachment; filename="' + "ソフト表.txt".encode("cp932") + b'"\r\n\r\nx'
    assert decode_filename(email.message_from_bytes(raw)) == "ソフト表.txt"  # compat32 policy
    built = EmailMessage()
    built.set_content("本文")
    built.add_attachment(b"data", maintype="application", subtype="octet-stream", filename="①資料.bin")
    attachment = next(built.iter_attachments())
    assert decode_filename(attachment) == "①資料.bin"


def test_decode_filename_rfc2231_iso2022jp_in_content_type_with_compat32() -> None:
    # policy.default raises UnicodeDecodeError while *parsing* such a Content-Type (Python 3.11:
    # RFC 2231 values go through the stdlib iso2022_jp codec); compat32 parses it, and we decode it.
    raw = b"Content-Type: text/plain; name*=ISO-2022-JP''%1B%24B-%21%1B%28B.txt\r\n\r\nx"
    assert decode_filename(email.message_from_bytes(raw, policy=email.policy.compat32)) == "①.txt"


def test_stdlib_get_filename_is_not_enough() -> None:
    # Why decode_filename exists: the stdlib returns mojibake (or raises) for these.
    cp932 = part_with(b'Content-Disposition: attachment; filename="' + "ソフト表①.txt".encode("cp932") + b'"')
    assert cp932.get_filename() != "ソフト表①.txt"
    assert decode_filename(cp932) == "ソフト表①.txt"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"filename", b"filename*", b"filename*0*", b"name"]))
def test_decode_filename_never_raises(value: bytes, param: bytes) -> None:
    value = value.replace(b"\r", b"").replace(b"\n", b"")
    part = part_with(b"Content-Disposition: attachment; " + param + b"=" + value, b"Content-Type: text/plain")
    name = decode_filename(part)
    assert name is None or (name and "/" not in name and "\\" not in name)


# ============================================================================ fixtures

# fixture -> (Subject, From) and the file name of every part that has one, in order
FIXTURE_HEADERS: dict[str, tuple[str, str, list[str]]] = {
    "iso2022jp-outlook-nec.eml": ("【ご案内】①②㈱髙﨑～説明会の件", "髙﨑 德太郎 <somebody@example.jp>", []),
    "shiftjis-cp932-nec-ibm.eml": (
        "①㈱髙橋工務店より見積書送付のご連絡",
        "㈱髙橋工務店 髙橋 <somebody@example.jp>",
        [],
    ),
    "eucjp-8bit.eml": ("住民票の写しの交付について", "鈴木 一郎 <somebody@example.jp>", []),
    "utf8-8bit.eml": ("【重要】システム停止のお知らせ①😀", "髙﨑システム サポート <somebody@example.jp>", []),
    "utf8-base64.eml": ("納品書の送付（第２回）", "髙﨑商事 <somebody@example.jp>", []),
    "no-charset-cp932.eml": ("会議資料の件", "somebody@example.jp", []),
    "wrong-label-latin1-cp932.eml": ("アンケートご協力のお願い", "somebody@example.jp", []),
    "wrong-label-usascii-cp932.eml": ("請求書送付のお知らせ", "somebody@example.jp", []),
    "wrong-label-iso2022jp-utf8.eml": ("防災訓練の実施について", "somebody@example.jp", []),
    "html-sjis-meta-only.eml": ("イベント開催のお知らせ", "somebody@example.jp", []),
    "multipart-alternative-iso2022jp-utf8html.eml": (
        "【市報】12月号のご案内",
        "広報課 <somebody@example.jp>",
        [],
    ),
    "html-only-stub-plain.eml": ("キャンペーンのお知らせ", "キャンペーン事務局 <somebody@example.jp>", []),
    "attachment-rfc2231-filename.eml": ("添付資料の送付", "somebody@example.jp", [NAME_A, NAME_B]),
    "attachment-rfc2047-in-name.eml": (
        "書類提出",
        "髙﨑 德太郎 <somebody@example.jp>",
        ["提出書類①㈱髙﨑.pdf", "見積書（表計算）.xls"],
    ),
    "attachment-raw-8bit-cp932-name.eml": (
        "ファイル送付",
        "somebody@example.jp",
        ["ソフト表①.txt", "※重要※議事録.txt"],
    ),
    "attachment-csv-cp932.eml": ("名簿の送付", "somebody@example.jp", ["名簿.csv"]),
    "forwarded-rfc822-iso2022jp.eml": (
        "Fwd: ①道路占用許可申請について（㈱髙﨑建設）",
        "somebody@example.jp",
        [],
    ),
    "rtf-body-cp932.eml": ("見積書送付", "somebody@example.jp", []),
    "outlook-invite-iso2022jp.eml": ("①住民説明会のご案内", "広報課 <kouhou@example.jp>", ["invite.ics"]),
    "subject-split-broken-mua.eml": (
        "【至急】来庁者駐車場の利用制限について",
        "総務課 髙﨑 <somebody@example.jp>",
        [],
    ),
    "message-id-8bit-hostname.eml": ("【連絡】会議日程の件", "somebody@example.jp", []),
    "attachment-rfc2231-split-escape.eml": ("議事録の送付", "somebody@example.jp", ["議事録（髙橋）.txt"]),
    "content-type-raw-iso2022jp.eml": ("ファイル送付（種類不明）", "somebody@example.jp", []),
    "calendar-control-chars.eml": ("①定例会議のご案内", "somebody@example.jp", ["meeting.ics"]),
}


def _fixture(name: str) -> Message:
    return email.message_from_bytes((FIXTURES / name).read_bytes(), policy=email.policy.default)


def test_fixture_table_covers_every_fixture() -> None:
    assert sorted(FIXTURE_HEADERS) == sorted(p.name for p in FIXTURES.glob("*.eml"))


@pytest.mark.parametrize("name", sorted(FIXTURE_HEADERS))
def test_fixture_headers_and_filenames(name: str) -> None:
    subject, sender, filenames = FIXTURE_HEADERS[name]
    msg = _fixture(name)
    headers = {key.lower(): decode_header_value(value) for key, value in msg.raw_items()}
    assert headers["subject"] == subject
    assert headers["from"] == sender
    assert headers["to"] == "情報政策課 山田太郎 <taro@city.example.lg.jp>"
    found = [n for n in (decode_filename(p) for p in msg.walk()) if n is not None]
    assert found == filenames


def test_fixture_forwarded_inner_headers() -> None:
    msg = _fixture("forwarded-rfc822-iso2022jp.eml")
    inner = next(p for p in msg.walk() if p.get_content_type() == "message/rfc822").get_payload(0)
    assert isinstance(inner, Message)
    headers = {key.lower(): decode_header_value(value) for key, value in inner.raw_items()}
    assert headers["subject"] == "①道路占用許可申請について（㈱髙﨑建設）"
    assert headers["from"] == "㈱髙﨑建設 德永 <tokunaga@example.co.jp>"


# ============================================================================ corpus


def _corpus_messages() -> list[tuple[Path, Message]]:
    out: list[tuple[Path, Message]] = []
    for path in sorted(CORPUS.rglob("*")):
        if path.is_file() and path.suffix not in (".json", ".xml", ".csv", ".out", ".bin", ".txt"):
            out.append((path, email.message_from_bytes(path.read_bytes(), policy=email.policy.default)))
    return out


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus/mail is not present")
def test_corpus_every_header_and_filename_decodes() -> None:
    headers = names = 0
    for _path, msg in _corpus_messages():
        for part in msg.walk():
            for _key, value in part.raw_items():
                out = decode_header_value(value)
                assert not any(ord(ch) < 0x20 and ch != "\t" for ch in out)
                headers += 1
            if decode_filename(part) is not None:
                names += 1
    assert headers > 10_000
    assert names > 100


@pytest.mark.corpus
@pytest.mark.skipif(not (CORPUS / "deco-mail-filter").is_dir(), reason="deco-mail-filter corpus absent")
@pytest.mark.parametrize(
    ("relpath", "header", "expected"),
    [
        ("deco-mail-filter/3-1-01.eml", "from", "でこ笑むエフ <dummysender@example.com>"),
        ("mikel-mail/multi_charset/japanese_iso_2022.eml", "subject", "まみむめも"),
        ("mikel-mail/rfc2822/example14.eml", "subject", "Re: TEST  テストテスト"),
        ("sisimai/bsd/lhost-exchange2007-04.eml", "subject", "Undeliverable: キジトラ・フラッシュ/ニャーン"),
    ],
)
def test_corpus_known_japanese_headers(relpath: str, header: str, expected: str) -> None:
    msg = email.message_from_bytes((CORPUS / relpath).read_bytes(), policy=email.policy.default)
    values = [decode_header_value(v) for k, v in msg.raw_items() if k.lower() == header]
    assert values[0] == expected


@pytest.mark.corpus
@pytest.mark.skipif(not (CORPUS / "deco-mail-filter").is_dir(), reason="deco-mail-filter corpus absent")
@pytest.mark.parametrize(
    ("name", "filenames"),
    [
        ("2-1-10.eml", ["テスト.zip"]),  # Outlook, RFC 2047 in the name
        ("2-1-17.eml", ["テスト-ja-sjis.txt"]),
        ("3-1-13.eml", ["テスト.txt", "テスト.zip"]),  # Joruri Mail
    ],
)
def test_corpus_deco_japanese_filenames(name: str, filenames: list[str]) -> None:
    msg = email.message_from_bytes(
        (CORPUS / "deco-mail-filter" / name).read_bytes(), policy=email.policy.default
    )
    assert [n for n in (decode_filename(p) for p in msg.walk()) if n is not None] == filenames
