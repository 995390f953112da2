"""Decode mail body bytes to ``str`` the way Japanese mail needs it.

Japanese mail is routinely mislabelled: ``Shift_JIS`` really means Microsoft's CP932, ``ISO-2022-JP``
from Outlook carries the NEC/IBM extensions (①, ㈱, 髙, 﨑 ...), labels are missing or plainly wrong
(``iso-8859-1`` over CP932 bytes, ``ISO-2022-JP`` over UTF-8). :func:`decode_body` trusts a label only
when it decodes cleanly and the result is plausible, then an HTML ``<meta>`` charset, then detection
(Japanese-first, charset-normalizer as a last opinion), and never raises.

Importing this module registers the ``iso-2022-jp-ms`` codec (CP50220/CP50221 compatible ISO-2022-JP).
"""

from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import charset_normalizer

from detox.text.iso2022jp_ms import ISO2022JP_MS

_HIGH_RE: Final = re.compile(rb"[\x80-\xff]")  # bytes outside ASCII

if TYPE_CHECKING:
    pass

__all__ = [
    "ISO2022JP_MS",
    "Decoded",
    "decode_body",
    "encode_body",
    "normalize_label",
    "sniff_html_charset",
]


@dataclass(frozen=True, slots=True)
class Decoded:
    """Text decoded from a body, with the codec actually used and how it was chosen."""

    text: str
    charset: str  # normalized codec name: "utf-8", "iso-2022-jp-ms", "cp932", "euc-jp", "us-ascii", ...
    method: str  # "label" | "meta" | "detected" | "fallback"


# ============================================================================ labels

# Keys are lower-case with "_" and " " turned into "-".
_ALIASES: Final[dict[str, str]] = {
    **dict.fromkeys(
        (
            "shift-jis",
            "shiftjis",
            "sjis",
            "s-jis",
            "x-sjis",
            "csshiftjis",
            "windows-31j",
            "cswindows31j",
            "ms932",
            "cp932",
            "ms-kanji",
            "mskanji",
            "x-ms-cp932",
            "ibm-943",
            "x-sjis-open",
        ),
        "cp932",
    ),
    **dict.fromkeys(
        (
            "iso-2022-jp",
            "iso2022-jp",
            "iso2022jp",
            "csiso2022jp",
            "iso-2022-jp-1",
            "iso-2022-jp-2",
            "csiso2022jp2",
            "iso-2022-jp-3",
            "iso-2022-jp-2004",
            "iso-2022-jp-ext",
            "jis",
            "x-jis",
            "iso-2022-jp-ms",
            "cp50220",
            "cp50221",
            "cp50222",
        ),
        ISO2022JP_MS,
    ),
    **dict.fromkeys(("euc-jp", "x-euc-jp", "eucjp", "ujis", "cseucpkdfmtjapanese", "x-euc"), "euc-jp"),
    **dict.fromkeys(
        (
            "ks-c-5601-1987",
            "ks-c-5601",
            "ksc5601",
            "ksc-5601",
            "csksc56011987",
            "euc-kr",
            "cseuckr",
            "korean",
            "windows-949",
            "x-windows-949",
            "cp949",
            "uhc",
        ),
        "cp949",
    ),
    **dict.fromkeys(
        (
            "gb2312",
            "csgb2312",
            "gbk",
            "x-gbk",
            "cp936",
            "ms936",
            "windows-936",
            "euc-cn",
            "x-euc-cn",
            "chinese",
            "gb18030",
            "gb-2312",
            "gb2312-80",
        ),
        "gb18030",
    ),
    **dict.fromkeys(("utf8", "utf-8", "unicode-1-1-utf-8", "x-unicode20utf8"), "utf-8"),
    **dict.fromkeys(("us-ascii", "ascii", "ansi-x3.4-1968", "iso646-us", "csascii", "us"), "us-ascii"),
}
# Labels that name no charset at all: treat as missing.
_NOT_CHARSETS: Final = frozenset(
    {
        "unknown-8bit",
        "unknown",
        "x-unknown",
        "8bit",
        "7bit",
        "binary",
        "default",
        "none",
        "x-user-defined",
        "charset",
        "auto",
        "autodetect",
        "_autodetect_all",
    }
)
# Python codecs that are no mail charset, or would reinterpret text (escapes, IDNA).
_DENIED_CODECS: Final = frozenset(
    {"unicode-escape", "raw-unicode-escape", "undefined", "idna", "punycode", "mbcs", "oem", "charmap"}
)
_CANONICAL: Final[dict[str, str]] = {
    "utf-8": "utf-8",
    "ascii": "us-ascii",
    "cp932": "cp932",
    "shift_jis": "cp932",
    "euc_jp": "euc-jp",
    "iso2022_jp": ISO2022JP_MS,
    "iso2022_jp_1": ISO2022JP_MS,
    "iso2022_jp_2": ISO2022JP_MS,
    "iso2022_jp_3": ISO2022JP_MS,
    "iso2022_jp_2004": ISO2022JP_MS,
    "iso2022_jp_ext": ISO2022JP_MS,
    "euc_kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
}
_SINGLE_BYTE_PREFIXES: Final = ("iso8859", "cp125", "latin", "koi8", "mac-", "cp4", "cp8", "cp7", "hp-")


def normalize_label(label: str | None) -> str | None:
    """The codec name for a MIME/HTML charset label, or None when missing, unknown or not a charset."""
    if not label:
        return None
    key = label.strip().strip("\"'").strip().lower().replace("_", "-").replace(" ", "-")
    key = key.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*ja
    if not key or len(key) > 64 or key in _NOT_CHARSETS:
        return None
    alias = _ALIASES.get(key)
    if alias is not None:
        return alias
    try:
        info = codecs.lookup(key)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("_", "-") in _DENIED_CODECS:
        return None
    return _CANONICAL.get(info.name, info.name)


def _is_single_byte(charset: str) -> bool:
    return charset == "us-ascii" or charset.startswith(_SINGLE_BYTE_PREFIXES)


# ============================================================================ plausibility

_STATS_SAMPLE: Final = 256 * 1024  # characters; costs are ratios, a prefix is representative
_NONASCII_RE: Final = re.compile(r"[^\x00-\x7f]")
_JUNK_RE: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffd]")
_ODD_RE: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\ufffd\uff61-\uff9f]")
_JAPANESE_RE: Final = re.compile(
    r"[\u3000-\u30ff\u31f0-\u31ff\u3200-\u33ff\u4e00-\u9fff\uf900-\ufaff\uff01-\uff60\uffe0-\uffee"
    r"\u2010-\u2312\u2460-\u24ff\u2500-\u257f\u25a0-\u266f\u00a7\u00a8\u00b0\u00b1\u00b4\u00b6\u00d7\u00f7]"
)
_KANA_RE: Final = re.compile(r"[\u3041-\u3096\u30a1-\u30fa]")
_C0_RE: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_ISO2022_ESC_RE: Final = re.compile(rb"\x1b(?:\$[@B]|\$\([@BQO]|\([BJI])")


@dataclass(frozen=True, slots=True)
class _Candidate:
    text: str
    charset: str
    nonascii: int
    odd: int
    japanese: int
    kana: int
    junk: int  # the odd characters that are no half-width katakana
    replaced: int  # U+FFFD

    @property
    def cost(self) -> float:
        """0 = every unusual char is ordinary Japanese; odd chars (PUA, controls, U+FFFD, half-width
        kana) cost 1, other scripts 0.5."""
        other = max(0, self.nonascii - self.japanese - self.odd)
        return (self.odd + 0.5 * other) / max(1, self.nonascii)

    @property
    def clearly_japanese(self) -> bool:
        return self.kana > 0 and self.odd == 0 and self.japanese >= 0.9 * self.nonascii


def _candidate(text: str, charset: str) -> _Candidate:
    sample = text[:_STATS_SAMPLE]
    return _Candidate(
        text=text,
        charset=charset,
        # C0 controls are odd too, so they count in the denominator as well.
        nonascii=len(_NONASCII_RE.findall(sample)) + len(_C0_RE.findall(sample)),
        odd=len(_ODD_RE.findall(sample)),
        japanese=len(_JAPANESE_RE.findall(sample)),
        kana=len(_KANA_RE.findall(sample)),
        junk=len(_JUNK_RE.findall(sample)),
        replaced=sample.count("\ufffd"),
    )


def _strict(raw: bytes, charset: str) -> str | None:
    try:
        text = raw.decode(charset)
    except (UnicodeError, LookupError, ValueError):
        return None
    return text[1:] if charset == "utf-8" and text.startswith("\ufeff") else text


def _japanese(raw: bytes) -> list[_Candidate]:
    """Strict CP932 and EUC-JP readings of 8-bit bytes, best first."""
    found: list[_Candidate] = []
    for charset in ("cp932", "euc-jp", "euc_jis_2004"):
        if charset == "euc_jis_2004" and any(c.charset == "euc-jp" for c in found):
            continue  # only when plain EUC-JP failed
        text = _strict(raw, charset)
        if text is not None:
            found.append(_candidate(text, charset))
    found.sort(key=lambda c: c.cost)  # stable: CP932 wins ties, it is the common one
    return found


def _mislabelled_japanese(raw: bytes) -> bool:
    """8-bit bytes under a single-byte label that are really UTF-8 or Japanese."""
    if _strict(raw, "utf-8") is not None:
        return True
    return any(c.clearly_japanese for c in _japanese(raw))


def _better_reading(raw: bytes, label: _Candidate) -> bool:
    """True when another Japanese reading is clearly better than the labelled one.

    The alternative must look like real Japanese, not merely cost less: genuine half-width katakana
    text (bank transfer names, old systems) is odd by our measure, yet reads as clean kanji noise
    in EUC-JP and sometimes as Latin letters in UTF-8.
    """
    if label.cost <= 0.1:
        return False
    utf8 = _strict(raw, "utf-8")
    if utf8 is not None:
        alt = _candidate(utf8, "utf-8")
        # Valid UTF-8 made only of Japanese characters is strong evidence even without kana.
        if alt.odd == 0 and alt.japanese >= 0.9 * alt.nonascii and alt.cost + 0.2 < label.cost:
            return True
    return any(
        c.clearly_japanese and c.kana >= 0.2 * c.nonascii and c.cost + 0.2 < label.cost
        for c in _japanese(raw)
        if c.charset != label.charset
    )


def _try_label(raw: bytes, charset: str) -> tuple[str, str] | None:
    """(text, charset) when ``charset`` decodes ``raw`` cleanly and plausibly, else None."""
    if charset == "iso8859-1" and re.search(rb"[\x80-\x9f]", raw):
        # As browsers do: "iso-8859-1" mail with C1 bytes is really windows-1252.
        text = _strict(raw, "cp1252")
        if text is not None:
            charset = "cp1252"
    else:
        text = _strict(raw, charset)
    if text is None and charset == "euc-jp":
        charset = "euc_jis_2004"
        text = _strict(raw, charset)
    if text is None:
        return None
    if raw.isascii():
        if charset != ISO2022JP_MS and _ISO2022_ESC_RE.search(raw) and _strict(raw, ISO2022JP_MS) is not None:
            return None  # ISO-2022-JP under an ASCII-compatible label
        if b"\x00" not in raw and not _ascii_compatible(charset):
            return None  # plain ASCII labelled UTF-16/32 or EBCDIC would come out as nonsense
        return text, charset
    if charset.startswith("utf-"):
        return text, charset
    if _is_single_byte(charset):
        return None if _mislabelled_japanese(raw) else (text, charset)
    if charset in ("cp932", "euc-jp", "euc_jis_2004") and _better_reading(raw, _candidate(text, charset)):
        return None
    return text, charset


# ============================================================================ detection

_NORMALIZER_SAMPLE: Final = 64 * 1024
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


_NORMALIZER_MIN: Final = 32  # 8-bit bytes; below this charset-normalizer's guesses are noise
_ASCII_PROBE: Final = b"Az09 <>=@;:\r\n"
_JAPANESE_GUESSES: Final = frozenset(
    {"cp932", "euc-jp", "shift_jis_2004", "shift_jisx0213", "euc_jis_2004", "euc_jisx0213", ISO2022JP_MS}
)
_LOSSY_MAX: Final = 0.02  # a hinted codec that fails on at most 2% of characters is still the one


@functools.lru_cache(maxsize=256)
def _ascii_compatible(charset: str) -> bool:
    try:
        return _ASCII_PROBE.decode(charset) == _ASCII_PROBE.decode("ascii")
    except (UnicodeError, LookupError, ValueError):
        return False


def _detect_japanese(raw: bytes) -> Decoded | None:
    """Confident readings only: BOM, ASCII, ISO-2022-JP, UTF-8, then CP932 / EUC-JP with kana."""
    if not raw:
        return Decoded("", "us-ascii", "detected")
    for bom, charset in _BOMS:
        if raw.startswith(bom):
            text = _strict(raw, charset)
            if text is not None:
                return Decoded(text, charset, "detected")
    if raw.isascii():
        if _ISO2022_ESC_RE.search(raw):
            text = _strict(raw, ISO2022JP_MS)
            return Decoded(text, ISO2022JP_MS, "detected") if text is not None else None
        return Decoded(raw.decode("ascii"), "us-ascii", "detected")
    text = _strict(raw, "utf-8")
    if text is not None:
        return Decoded(text, "utf-8", "detected")
    readings = _japanese(raw)
    if readings and _confident(readings[0]):
        return Decoded(readings[0].text, readings[0].charset, "detected")
    return None


def _confident(reading: _Candidate) -> bool:
    if reading.cost > 0.5:
        return False
    # Japanese prose always has kana; a few kanji alone (a name, a place) are too short to doubt.
    if reading.kana > 0 or reading.nonascii < 16:
        return True
    # Kana-less lists (CSV of names, addresses): a clean CP932 reading is still safe, because
    # GB 2312, EUC-KR, Big5 and EUC-JP bytes read as CP932 turn into half-width katakana.
    # A kana-less EUC-JP reading may be Chinese or Korean: let charset-normalizer decide.
    return reading.charset == "cp932" and reading.cost <= 0.2


def _detect_other(raw: bytes) -> Decoded | None:
    """charset-normalizer's opinion (long enough input only), else any clean Japanese reading."""
    if raw.isascii():
        return None  # 7-bit input that _detect_japanese refused is broken ISO-2022-JP
    readings = _japanese(raw)
    sample = raw[:_NORMALIZER_SAMPLE]
    if len(_HIGH_RE.findall(sample)) >= _NORMALIZER_MIN:
        best = charset_normalizer.from_bytes(sample).best()
        guess = normalize_label(best.encoding) if best is not None else None
        if guess in _JAPANESE_GUESSES:
            if readings:  # its Japanese codecs lack the Microsoft mappings (①, 髙, ～): use ours
                return Decoded(readings[0].text, readings[0].charset, "detected")
        elif guess is not None and _ascii_compatible(guess):  # EBCDIC/UTF-16 guesses are always wrong
            text = _strict(raw, guess)
            if text is not None:
                return Decoded(text, guess, "detected")
    # For a Japanese gateway, 8-bit text that CP932 or EUC-JP decodes cleanly (half-width katakana
    # only, a short kana-less line) is best read that way, unless the reading is mostly junk.
    for reading in readings:
        if reading.junk <= 0.1 * reading.nonascii:
            return Decoded(reading.text, reading.charset, "detected")
    return None


def _lossy(raw: bytes, charset: str, *, declared: bool) -> Decoded | None:
    """``charset`` with replacements, when it fails on only a few bytes (a cut, a stray byte)."""
    try:
        text = raw.decode(charset, "replace")
    except (UnicodeError, LookupError, ValueError):
        return None
    sample = text[:_STATS_SAMPLE]
    replaced = sample.count("\ufffd")
    if declared:
        ok = replaced <= max(1, int(len(sample) * _LOSSY_MAX))
    else:  # only a guess: it must also have read some non-ASCII text correctly
        nonascii = len(_NONASCII_RE.findall(sample))
        ok = nonascii > replaced and replaced <= max(1, int(nonascii * _LOSSY_MAX))
    return Decoded(text, charset, "fallback") if ok else None


def _fallback(raw: bytes) -> Decoded:
    """Lossy decoding with the reading that needs the fewest replacements and oddities."""
    if raw.isascii():
        charset = ISO2022JP_MS if _ISO2022_ESC_RE.search(raw) else "us-ascii"
        return Decoded(raw.decode(charset, "replace"), charset, "fallback")
    readings = [_candidate(raw.decode(cs, "replace"), cs) for cs in ("utf-8", "cp932", "euc-jp", "cp1252")]
    # Replacements are lost data: weigh them well above merely odd characters.
    best = min(readings, key=lambda c: c.cost + 3 * c.replaced / max(1, c.nonascii))
    return Decoded(best.text, best.charset, "fallback")  # min() keeps the first on ties: UTF-8


# ============================================================================ public API

_META_RE: Final = re.compile(
    rb"<meta\b[^>]*?\bcharset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]{1,40})", re.IGNORECASE
)
_XML_DECL_RE: Final = re.compile(rb"<\?xml\b[^>]*?\bencoding\s*=\s*[\"']([A-Za-z0-9_.:\-]{1,40})")
_SNIFF_BYTES: Final = 4096


def sniff_html_charset(raw: bytes) -> str | None:
    """The charset named by a ``<meta>`` (or XML declaration) in the first 4 KB, lower-cased."""
    head = bytes(raw[:_SNIFF_BYTES])
    found = _META_RE.search(head) or _XML_DECL_RE.search(head)
    return found.group(1).decode("ascii").lower() if found else None


def decode_body(raw: bytes, label: str | None, *, html: bool = False) -> Decoded:
    """Decode a (transfer-decoded) body: MIME label, then HTML meta, then detection. Never raises."""
    raw = bytes(raw)
    hints: list[str] = []
    charset = normalize_label(label)
    if charset is not None:
        got = _try_label(raw, charset)
        if got is not None:
            return Decoded(got[0], got[1], "label")
        hints.append(charset)
    if html:
        meta = normalize_label(sniff_html_charset(raw))
        if meta is not None and meta != charset:
            got = _try_label(raw, meta)
            if got is not None:
                return Decoded(got[0], got[1], "meta")
            hints.append(meta)
    found = _detect_japanese(raw)
    # A declared multi-byte charset that fails on a byte or two (truncation) is still the charset;
    # single-byte labels never fail, so failing them means nothing here.
    for hint in hints:
        if found is None and not _is_single_byte(hint):
            found = _lossy(raw, hint, declared=True)
    if found is None and not raw.isascii():
        found = _lossy(raw, "utf-8", declared=False)
    return found or _detect_other(raw) or _fallback(raw)


def encode_body(text: str, charset: str) -> tuple[bytes, str]:
    """Encode ``text`` for a new body; returns (bytes, MIME charset label to declare).

    ISO-2022-JP is written CP50220-style; anything the requested charset cannot represent
    (emoji, characters outside CP932) makes the whole body UTF-8 instead.
    """
    codec = normalize_label(charset)
    if codec == ISO2022JP_MS:
        try:
            return text.encode(ISO2022JP_MS), "iso-2022-jp"
        except UnicodeEncodeError:
            pass
    elif codec is not None and codec != "utf-8":
        try:
            encoded = text.encode(codec)
        except (UnicodeError, LookupError):
            pass
        else:
            declared = {"cp932": "shift_jis", "euc-jp": "euc-jp", "us-ascii": "us-ascii"}.get(codec)
            return encoded, declared or charset.strip().lower()
    return text.encode("utf-8", "replace"), "utf-8"
