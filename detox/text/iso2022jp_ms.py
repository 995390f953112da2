"""The ``iso-2022-jp-ms`` codec: ISO-2022-JP as Windows and Outlook write it (CP50220/CP50221).

Python's iso2022_jp codecs implement plain JIS X 0208, so the NEC row 13 and NEC-selected IBM
characters Outlook writes come out as errors, and 0x2141 becomes U+301C instead of Windows' U+FF5E.
Windows (CP50220/CP50221) treats ISO-2022-JP as a 7-bit transport of CP932, so we do the same:
every JIS pair goes through the arithmetic JIS -> Shift_JIS transform and Python's cp932 table.

Importing this module registers the codec with :mod:`codecs` (``"iso-2022-jp-ms"``, also found as
``iso2022jpms``); :mod:`detox.text.charset` imports it, so decoding a body always has it. It is a
module of its own because it is a complete codec (tables, decoder, encoder, incremental forms) with
nothing of the label and detection logic that uses it.
"""

from __future__ import annotations

import array
import codecs
import re
import sys
import unicodedata
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ISO2022JP_MS: Final = "iso-2022-jp-ms"


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
