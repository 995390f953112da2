"""Decode mail body bytes to ``str`` the way Japanese mail needs it.

Japanese mail is routinely mislabelled: ``Shift_JIS`` really means Microsoft's CP932, ``ISO-2022-JP``
from Outlook carries the NEC/IBM extensions (①, ㈱, 髙, 﨑 ...), labels are missing or plainly wrong
(``iso-8859-1`` over CP932 bytes, ``ISO-2022-JP`` over UTF-8). :func:`decode_body` trusts a label only
when it decodes cleanly and the result is plausible, then an HTML ``<meta>`` charset, then detection
(Japanese-first, charset-normalizer as a last opinion), and never raises.

Importing this module registers the ``iso-2022-jp-ms`` codec (CP50220/CP50221 compatible ISO-2022-JP).
"""

from __future__ import annotations

import array
import codecs
import functools
import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import charset_normalizer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "ISO2022JP_MS",
    "Decoded",
    "decode_body",
    "encode_body",
    "normalize_label",
    "sniff_html_charset",
]

ISO2022JP_MS: Final = "iso-2022-jp-ms"


@dataclass(frozen=True, slots=True)
class Decoded:
    """Text decoded from a body, with the codec actually used and how it was chosen."""

    text: str
    charset: str  # normalized codec name: "utf-8", "iso-2022-jp-ms", "cp932", "euc-jp", "us-ascii", ...
    method: str  # "label" | "meta" | "detected" | "fallback"


# ============================================================================ iso-2022-jp-ms codec
#
# Python's iso2022_jp codecs implement plain JIS X 0208, so the NEC row 13 and NEC-selected IBM
# characters Outlook writes come out as errors, and 0x2141 becomes U+301C instead of Windows' U+FF5E.
# Windows (CP50220/CP50221) treats ISO-2022-JP as a 7-bit transport of CP932, so we do the same:
# every JIS pair goes through the arithmetic JIS -> Shift_JIS transform and Python's cp932 table.


def _jis_to_sjis(j1: int, j2: int) -> tuple[int, int]:
    s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
    if j1 & 1:
        s2 = j2 + 0x1F
        if s2 >= 0x7F:
            s2 += 1
    else:
        s2 = j2 + 0x7E
    return s1, s2


def _sjis_to_jis(s1: int, s2: int) -> tuple[int, int]:
    row = (s1 - (0x70 if s1 <= 0x9F else 0xB0)) << 1
    if s2 >= 0x9F:
        return row, s2 - 0x7E
    return row - 1, s2 - (0x20 if s2 >= 0x80 else 0x1F)


def _build_decode_table() -> list[str]:
    """Indexed by a JIS pair read as a native-order uint16; "" marks an undefined code."""
    table = [""] * 0x10000
    for j1 in range(0x21, 0x7F):
        for j2 in range(0x21, 0x7F):
            try:
                ch = bytes(_jis_to_sjis(j1, j2)).decode("cp932")
            except UnicodeDecodeError:
                continue
            table[int.from_bytes(bytes((j1, j2)), sys.byteorder)] = ch
    return table


class _EncodeTable(dict[str, bytes]):
    """Character -> JIS pair, filled on demand from Python's cp932 encoder; b"" = not encodable.

    cp932's encoder picks Windows' preferred code among duplicates (JIS X 0208 over NEC row 13,
    NEC-selected IBM over IBM extensions), which is what CP50221 emits, and it also accepts the six
    JIS-style code points (U+301C WAVE DASH, U+2212 MINUS ...) the way Windows' best fit does.
    Only encodable characters are cached, so the cache stays small whatever the input.
    """

    def __missing__(self, ch: str) -> bytes:
        try:
            sjis = ch.encode("cp932")
        except UnicodeEncodeError:
            return b""
        # Single bytes (half-width kana, U+0080) and lead bytes >= 0xF0 (user-defined area, PUA)
        # have no 7-bit JIS form.
        if len(sjis) != 2 or not (0x81 <= sjis[0] <= 0x9F or 0xE0 <= sjis[0] <= 0xEF):
            return b""
        code = bytes(_sjis_to_jis(sjis[0], sjis[1]))
        self[ch] = code
        return code


_DECODE_TABLE: Final = _build_decode_table()
_ENCODE_TABLE: Final = _EncodeTable()

_ASCII, _KANA, _KANJI, _UNSUPPORTED, _KEEP = range(5)
_ESCAPES: Final[dict[bytes, int]] = {
    b"\x1b(B": _ASCII,
    b"\x1b(J": _ASCII,  # JIS X 0201 Roman: Windows maps 0x5C/0x7E to ASCII, so it *is* ASCII
    b"\x1b(H": _ASCII,  # historical mistake for ESC ( J, still seen in old mail
    b"\x1b(I": _KANA,
    b"\x1b$@": _KANJI,
    b"\x1b$B": _KANJI,
    b"\x1b$(@": _KANJI,
    b"\x1b$(B": _KANJI,
    b"\x1b$(Q": _KANJI,  # JIS X 0213 plane 1: its JIS X 0208 subset is what appears in practice
    b"\x1b$(O": _KANJI,
    b"\x1b$A": _UNSUPPORTED,  # GB 2312 (ISO-2022-JP-2)
    b"\x1b$(C": _UNSUPPORTED,  # KS C 5601 (ISO-2022-JP-2)
    b"\x1b$(D": _UNSUPPORTED,  # JIS X 0212: not in CP932
    b"\x1b&@": _KEEP,  # JIS X 0208-1990 announcer, always followed by ESC $ B
}
_ESCAPE_RE: Final = re.compile(b"|".join(re.escape(k) for k in sorted(_ESCAPES, key=len, reverse=True)))
_SPECIAL_RE: Final = re.compile(rb"[\x0e\x0f\x1b]")  # SO, SI, ESC
_HIGH_RE: Final = re.compile(rb"[\x80-\xff]")
_NOT_KANA_RE: Final = re.compile(rb"[\x60-\xff]")
_PAIRS_RE: Final = re.compile(rb"(?:[\x21-\x7e]{2})+")
_NEWLINES_RE: Final = re.compile(rb"[\r\n]+")
_KANA_MAP: Final = {b: 0xFF40 + b for b in range(0x21, 0x60)}  # 0x21 -> U+FF61 ... 0x5F -> U+FF9F


def _resume(pos: int, start: int, end: int, size: int) -> int:
    """Where to continue after an error handler; always past ``start`` so every loop terminates."""
    if pos < 0:
        pos += size
    return pos if pos > start else end


class _Decoder:
    """One decoding run; the state machine is over escape sequences and SO/SI."""

    def __init__(self, data: bytes, errors: str) -> None:
        self.data = data
        self.errors = errors
        self.out: list[str] = []

    def error(self, start: int, end: int, reason: str) -> int:
        if self.errors == "replace":
            self.out.append("\ufffd")
            return end
        if self.errors == "ignore":
            return end
        exc = UnicodeDecodeError(ISO2022JP_MS, self.data, start, end, reason)
        if self.errors == "strict":
            raise exc
        replacement, pos = codecs.lookup_error(self.errors)(exc)
        self.out.append(replacement if isinstance(replacement, str) else replacement.decode("latin-1"))
        return _resume(pos, start, end, len(self.data))

    def run(self) -> str:
        clean = _decode_clean(self.data)
        if clean is not None:
            return clean
        data = self.data
        size = len(data)
        pos = 0
        mode = _ASCII
        shifted = False  # SO ... SI: half-width katakana (CP50221)
        special = -1  # position of the next SO/SI/ESC at or after pos, cached to stay linear
        while pos < size:  # every branch advances pos
            if special < pos:
                found = _SPECIAL_RE.search(data, pos)
                special = found.start() if found else size
            if pos < special:
                pos = self.chunk(pos, special, _KANA if shifted else mode)
                continue
            byte = data[pos]
            if byte == 0x0E:
                shifted = True
                pos += 1
            elif byte == 0x0F:
                shifted = False
                pos += 1
            else:
                esc = _ESCAPE_RE.match(data, pos)
                if esc is None:
                    pos = self.error(pos, pos + 1, "unknown escape sequence")
                    continue
                new_mode = _ESCAPES[esc.group()]
                if new_mode != _KEEP:
                    mode = new_mode
                    shifted = False
                pos = esc.end()
        return "".join(self.out)

    def chunk(self, pos: int, stop: int, mode: int) -> int:
        if mode == _ASCII:
            return self.single(pos, stop, _HIGH_RE, None, "8-bit byte in ISO-2022-JP")
        if mode == _KANA:
            return self.single(pos, stop, _NOT_KANA_RE, _KANA_MAP, "invalid JIS X 0201 katakana")
        return self.double(pos, stop, supported=mode == _KANJI)

    def single(
        self, pos: int, stop: int, bad_re: re.Pattern[bytes], table: dict[int, int] | None, reason: str
    ) -> int:
        data = self.data
        while pos < stop:
            bad = bad_re.search(data, pos, stop)
            end = bad.start() if bad else stop
            if end > pos:
                text = data[pos:end].decode("latin-1")  # only 7-bit bytes here
                self.out.append(text.translate(table) if table else text)
            if bad is None:
                return stop
            pos = self.error(end, end + 1, reason)
        return pos

    def double(self, pos: int, stop: int, *, supported: bool) -> int:
        data = self.data
        while pos < stop:
            pairs = _PAIRS_RE.match(data, pos, stop)
            if pairs is not None:
                pos = self.pairs(pos, pairs.end()) if supported else self.unsupported(pos, pairs.end())
                continue
            newlines = _NEWLINES_RE.match(data, pos, stop)
            if newlines is not None:
                # Broken writers end lines without returning to ASCII; keep the line break.
                self.out.append(newlines.group().decode("ascii"))
                pos = newlines.end()
                continue
            pos = self.error(pos, pos + 1, "invalid byte in double-byte mode")
        return pos

    def pairs(self, start: int, end: int) -> int:
        codes = array.array("H")
        codes.frombytes(self.data[start:end])
        chars = list(map(_DECODE_TABLE.__getitem__, codes))
        count = len(chars)
        i = 0
        while i < count:
            try:
                bad = chars.index("", i)
            except ValueError:
                bad = count
            self.out.append("".join(chars[i:bad]))
            if bad == count:
                break
            err = start + 2 * bad
            resume = self.error(err, err + 2, "undefined JIS X 0208 code")
            if resume != err + 2:
                return resume
            i = bad + 1
        return end

    def unsupported(self, start: int, end: int) -> int:
        pos = start
        while pos < end:
            resume = self.error(pos, pos + 2, "unsupported ISO-2022 character set")
            if resume != pos + 2:
                return resume
            pos = resume
        return end


_ENC_TOKEN_RE: Final = re.compile(
    r"(?P<a>[\x00-\x0d\x10-\x1a\x1c-\x7f]+)"  # ASCII except SO, SI, ESC (they would forge shifts)
    r"|(?P<k>[\uff61-\uff9f]+)"
    r"|(?P<o>[^\x00-\x0d\x10-\x1a\x1c-\x7f\uff61-\uff9f]+)"
)
# NFKC leaves lone sound marks combining and composes a few kana JIS X 0208 lacks.
_KANA_FIXUP: Final = str.maketrans(
    {"\u3099": "\u309b", "\u309a": "\u309c", "ヷ": "ワ゛", "ヸ": "ヰ゛", "ヹ": "ヱ゛", "ヺ": "ヲ゛"}
)


def _fullwidth_kana(run: str) -> str:
    return unicodedata.normalize("NFKC", run).translate(_KANA_FIXUP)


class _Encoder:
    """One encoding run: ASCII stays ASCII, everything else goes out as JIS pairs under ESC $ B."""

    def __init__(self, text: str, errors: str) -> None:
        self.text = text
        self.errors = errors
        self.out = bytearray()
        self.kanji = False

    def to_ascii(self) -> None:
        if self.kanji:
            self.out += b"\x1b(B"
            self.kanji = False

    def to_kanji(self) -> None:
        if not self.kanji:
            self.out += b"\x1b$B"
            self.kanji = True

    def run(self) -> bytes:
        text = self.text
        pos = 0
        while pos < len(text):  # every branch advances pos
            token = _ENC_TOKEN_RE.match(text, pos)
            if token is None:  # unreachable: the three classes cover every code point
                break
            if token.lastgroup == "a":
                self.to_ascii()
                self.out += token.group().encode("ascii")
                pos = token.end()
            elif token.lastgroup == "k":
                # CP50220: half-width katakana go out as their full-width forms.
                codes = list(map(_ENCODE_TABLE.__getitem__, _fullwidth_kana(token.group())))
                if b"" in codes:  # cannot happen after the fix-ups; be safe anyway
                    pos = self.error(token.start(), token.end())
                    continue
                self.to_kanji()
                self.out += b"".join(codes)
                pos = token.end()
            else:
                pos = self.double(token.start(), token.end())
        self.to_ascii()
        return bytes(self.out)

    def double(self, start: int, end: int) -> int:
        codes = list(map(_ENCODE_TABLE.__getitem__, self.text[start:end]))
        i = 0
        while i < len(codes):
            try:
                bad = codes.index(b"", i)
            except ValueError:
                bad = len(codes)
            if bad > i:
                self.to_kanji()
                self.out += b"".join(codes[i:bad])
            if bad == len(codes):
                break
            stop = bad + 1  # report the whole run of unencodable characters, as Python's codecs do
            while stop < len(codes) and codes[stop] == b"":
                stop += 1
            resume = self.error(start + bad, start + stop)
            if resume != start + stop:
                return resume
            i = stop
        return end

    def error(self, start: int, end: int) -> int:
        if self.errors == "ignore":
            return end
        if self.errors == "replace":
            self.to_ascii()
            self.out += b"?" * (end - start)
            return end
        exc = UnicodeEncodeError(ISO2022JP_MS, self.text, start, end, "not representable in ISO-2022-JP")
        if self.errors == "strict":
            raise exc
        replacement, pos = codecs.lookup_error(self.errors)(exc)
        self.to_ascii()
        self.out += replacement if isinstance(replacement, bytes) else _Encoder(replacement, "strict").run()
        return _resume(pos, start, end, len(self.text))


# ESC $ @ / ESC $ B (JIS X 0208) and ESC ( B / ESC ( J / ESC ( H (ASCII): what mail almost always uses.
_COMMON_ESCAPE_RE: Final = re.compile(rb"(\x1b(?:\$[@B]|\([BJH]))")
_PAIR_BYTES: Final = bytes(range(0x21, 0x7F))  # the bytes of a JIS X 0208 pair


def _sjis_lead_table() -> bytes:
    """JIS first byte -> Shift_JIS lead byte (as _jis_to_sjis); 0 outside 0x21..0x7E."""
    return bytes(_jis_to_sjis(j, 0x21)[0] if 0x21 <= j <= 0x7E else 0 for j in range(256))


def _sjis_trail_table() -> bytes:
    """(0x80 if the JIS first byte is even) | JIS second byte -> Shift_JIS trail byte."""
    table = bytearray(256)
    for j2 in range(0x21, 0x7F):
        table[j2] = _jis_to_sjis(0x21, j2)[1]  # odd row
        table[0x80 | j2] = _jis_to_sjis(0x22, j2)[1]  # even row
    return bytes(table)


_SJIS_LEAD: Final = _sjis_lead_table()
_SJIS_TRAIL: Final = _sjis_trail_table()
_EVEN_ROW: Final = bytes(0 if j & 1 else 0x80 for j in range(256))


def _pairs_to_sjis(pairs: bytes) -> bytes:
    """JIS X 0208 pairs (bytes 0x21..0x7E, even length) -> the same characters' Shift_JIS pairs.

    _jis_to_sjis for every pair at once: the lead byte depends on the first byte alone, the trail
    byte on the second byte and the first byte's parity, which is ORed into the second's top bit
    (free: it is 7-bit) through one big integer, so every step is a C-level pass over the bytes.
    """
    firsts, seconds = pairs[0::2], pairs[1::2]
    keyed = int.from_bytes(seconds, "big") | int.from_bytes(firsts.translate(_EVEN_ROW), "big")
    out = bytearray(len(pairs))
    out[0::2] = firsts.translate(_SJIS_LEAD)
    out[1::2] = keyed.to_bytes(len(seconds), "big").translate(_SJIS_TRAIL)
    return bytes(out)


def _decode_clean(data: bytes) -> str | None:
    """The decoding of well-formed ISO-2022-JP, or None to leave it to the state machine.

    Well-formed: only the common escapes, no SO/SI, 7-bit ASCII between them, whole defined JIS pairs
    in double-byte mode. The state machine gives the same text for such input (there is no error to
    handle). Here the double-byte runs become their Shift_JIS pairs all at once (_DECODE_TABLE is
    cp932 of exactly those pairs, and cp932 reads 7-bit bytes as ASCII), and the whole message is
    decoded by one cp932 call; an undefined pair makes it raise, and the state machine takes over.
    """
    if not data.isascii() or b"\x0e" in data or b"\x0f" in data:
        return None
    pieces = _COMMON_ESCAPE_RE.split(data)
    if data.count(b"\x1b") != len(pieces) >> 1:  # another escape: the state machine's business
        return None
    runs = pieces[0::2]
    double = [False]  # the first run is in ASCII mode; after "ESC $ ..." a run is double-byte
    double += [escape[1] == 0x24 for escape in pieces[1::2]]
    pairs = [run for run, is_double in zip(runs, double, strict=True) if is_double]
    if not pairs:
        return b"".join(runs).decode("ascii")
    if any(len(run) & 1 for run in pairs):  # half a pair
        return None
    joined = b"".join(pairs)
    if joined.translate(None, _PAIR_BYTES):  # a control, space or DEL in double-byte mode
        return None
    sjis = _pairs_to_sjis(joined)
    out: list[bytes] = []
    pos = 0
    for run, is_double in zip(runs, double, strict=True):
        if is_double:
            out.append(sjis[pos : pos + len(run)])
            pos += len(run)
        else:
            out.append(run)
    try:
        return b"".join(out).decode("cp932")
    except UnicodeDecodeError:  # an undefined code
        return None


def _codec_encode(text: str, errors: str = "strict") -> tuple[bytes, int]:
    return _Encoder(text, errors).run(), len(text)


def _codec_decode(data: ReadableBuffer, errors: str = "strict") -> tuple[str, int]:
    raw = bytes(data)
    return _Decoder(raw, errors).run(), len(raw)


class _IncrementalEncoder(codecs.IncrementalEncoder):
    # Each chunk is self-contained (ends in ASCII mode), which is valid ISO-2022-JP.
    def encode(self, input: str, final: bool = False) -> bytes:
        return _Encoder(input, self.errors).run()


class _IncrementalDecoder(codecs.IncrementalDecoder):
    # Escape state spans the whole stream, so decode once at the end (O(n) total).
    def __init__(self, errors: str = "strict") -> None:
        super().__init__(errors)
        self._parts: list[bytes] = []

    def decode(self, input: ReadableBuffer, final: bool = False) -> str:
        self._parts.append(bytes(input))
        if not final:
            return ""
        data = b"".join(self._parts)
        self._parts = []
        return _Decoder(data, self.errors).run()

    def reset(self) -> None:
        self._parts = []

    def getstate(self) -> tuple[bytes, int]:
        return b"".join(self._parts), 0

    def setstate(self, state: tuple[bytes, int]) -> None:
        self._parts = [state[0]]


_CODEC_INFO: Final = codecs.CodecInfo(
    _codec_encode,
    _codec_decode,
    incrementalencoder=_IncrementalEncoder,
    incrementaldecoder=_IncrementalDecoder,
    name=ISO2022JP_MS,
)


def _search(name: str) -> codecs.CodecInfo | None:
    return _CODEC_INFO if name.replace("-", "").replace("_", "").lower() == "iso2022jpms" else None


codecs.register(_search)


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
