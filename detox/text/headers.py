"""Decode header values and attachment file names from Japanese mail.

The stdlib ``email`` package decodes RFC 2047 word by word, so a character (or an ISO-2022-JP escape
state) split across two encoded-words by Outlook and older Japanese MUAs turns into mojibake, and its
ISO-2022-JP lacks the Microsoft extensions (①, ㈱, 髙). Here the decoded *bytes* of adjacent
encoded-words in one charset are joined before being turned into text, every charset goes through
:func:`detox.text.charset.decode_body` (CP932 for Shift_JIS, ``iso-2022-jp-ms`` for ISO-2022-JP,
detection for unknown or wrong labels), and raw 8-bit header bytes are detected the same way.

Input values are raw header values as ``email`` stores them when parsing bytes: non-ASCII bytes
arrive as surrogate escapes (``msg.raw_items()`` on a ``message_from_bytes`` result).
"""

from __future__ import annotations

import binascii
import functools
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from detox.text.charset import decode_body, normalize_label

if TYPE_CHECKING:
    import email.message

__all__ = ["decode_8bit_header_bytes", "decode_filename", "decode_header_value"]

_FOLD_RE: Final = re.compile(r"(?:\r\n|\r|\n)[ \t]*")
_FOLD_BYTES_RE: Final = re.compile(rb"(?:\r\n|\r|\n)[ \t]*")
# Lenient on purpose: spaces inside the encoded text (broken folding) and any charset token,
# including an RFC 2231 language suffix (utf-8*ja).
_WORD_RE: Final = re.compile(r"=\?([^?\s]{1,80})\?([bBqQ])\?([^?]*)\?=")
_B64_JUNK_RE: Final = re.compile(r"[^A-Za-z0-9+/]")
_QHEX_RE: Final = re.compile(rb"=([0-9A-Fa-f]{2})")
_BAD_SURROGATE_RE: Final = re.compile(r"[\ud800-\udc7f\udd00-\udfff]")
# Controls (tab kept), lone surrogates, line/paragraph separators.
_HEADER_JUNK_RE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_SEP_RE: Final = re.compile(r"[\u2028\u2029]")
_PARAM_NAME_RE: Final = re.compile(r"(?P<base>[^*]+)(?:\*(?P<section>\d{1,4}))?(?P<ext>\*)?")
_PCT_RE: Final = re.compile(r"%([0-9A-Fa-f]{2})|([^%]+)|%")
_MAX_SECTIONS: Final = 1000  # RFC 2231 continuations honoured per parameter


def _to_bytes(untrusted: str) -> bytes:
    """Raw header str (surrogate-escaped 8-bit bytes, or real Unicode) back to bytes."""
    try:
        return untrusted.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that are no escaped byte
        return _BAD_SURROGATE_RE.sub("\ufffd", untrusted).encode("utf-8", "surrogateescape")


def decode_8bit_header_bytes(raw: bytes) -> str:
    """Decode raw header bytes: ASCII, ISO-2022-JP (escapes), UTF-8, else CP932 vs EUC-JP detection.

    Encoded-words are left alone (they are ASCII); control characters are not removed here.
    """
    raw = bytes(raw)
    if raw.isascii() and b"\x1b" not in raw:
        return raw.decode("ascii")
    return decode_body(raw, None).text


def _clean(text: str) -> str:
    return _HEADER_JUNK_RE.sub("", _LINE_SEP_RE.sub(" ", text)).strip()


def _b64decode(text: str) -> bytes:
    """Base64 without trusting the padding: junk dropped, missing '=' added, a dangling char cut."""
    text = _B64_JUNK_RE.sub("", text)
    if len(text) % 4 == 1:
        text = text[:-1]
    text += "=" * (-len(text) % 4)
    try:
        return binascii.a2b_base64(text)
    except binascii.Error:  # cannot happen after the clean-up; stay total anyway
        return b""


def _encode_literal(text: str, charset: str | None) -> bytes:
    """Text that should have been bytes (raw 8-bit inside an encoded or percent-encoded value)."""
    if text.isascii():
        return text.encode("ascii")
    for codec in (charset, "utf-8"):
        if codec:
            try:
                return text.encode(codec)
            except (UnicodeError, LookupError):
                continue
    return text.encode("utf-8", "replace")


def _qdecode(text: str, charset: str | None) -> bytes:
    data = _encode_literal(text, charset).replace(b"_", b" ")
    return _QHEX_RE.sub(lambda m: bytes((int(m.group(1), 16),)), data)


@dataclass(slots=True)
class _Run:
    """Adjacent encoded-words in one charset, decoded together."""

    label: str
    codec: str | None
    words: list[tuple[str, str]] = field(default_factory=list)  # (encoding "b"/"q", encoded text)

    def _bytes(self, *, join_base64: bool) -> bytes:
        out = bytearray()
        b64 = ""  # consecutive B-words, joined when repairing quanta split across words
        for enc, text in self.words:
            if enc == "b" and join_base64:
                b64 += _B64_JUNK_RE.sub("", text)
                continue
            if b64:
                out += _b64decode(b64)
                b64 = ""
            out += _b64decode(text) if enc == "b" else _qdecode(text, self.codec)
        if b64:
            out += _b64decode(b64)
        return bytes(out)

    def text(self) -> str:
        data = self._bytes(join_base64=False)
        decoded = decode_body(data, self.label)
        misaligned = any(enc == "b" and len(_B64_JUNK_RE.sub("", t)) % 4 for enc, t in self.words)
        if decoded.method == "fallback" and misaligned:
            # Some MUAs split the base64 stream itself, not just the bytes, across words.
            joined = decode_body(self._bytes(join_base64=True), self.label)
            if joined.method != "fallback":
                return joined.text
        return decoded.text


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words anywhere in ``text`` (also inside quotes, without spaces)."""
    out: list[str] = []
    run: _Run | None = None
    pos = 0
    for word in _WORD_RE.finditer(text):  # linear: one pass, each word handled once
        between = text[pos : word.start()]
        if run is None or (between and not between.isspace()):
            if run is not None:
                out.append(run.text())
                run = None
            out.append(between)
        # else: whitespace between adjacent encoded-words is dropped (RFC 2047 section 6.2)
        label = word.group(1).split("*", 1)[0]
        codec = normalize_label(label)
        key = codec or label.lower()
        if run is not None and (run.codec or run.label.lower()) != key:
            out.append(run.text())
            run = None
        if run is None:
            run = _Run(label, codec)
        run.words.append((word.group(2).lower(), word.group(3)))
        pos = word.end()
    if run is not None:
        out.append(run.text())
    out.append(text[pos:])
    return "".join(out)


def _unfolded_text(untrusted_raw: str) -> str:
    raw = _FOLD_BYTES_RE.sub(b" ", _to_bytes(untrusted_raw))
    return decode_8bit_header_bytes(raw)


def decode_header_value(untrusted_raw: str) -> str:
    """A raw header value as clean Unicode: unfolded, RFC 2047 decoded and repaired, no controls."""
    if len(untrusted_raw) <= _CACHED_HEADER_CHARS:
        return _decode_header_cached(untrusted_raw)
    return _decode_header(untrusted_raw)


def _decode_header(untrusted_raw: str) -> str:
    return _clean(_decode_words(_unfolded_text(untrusted_raw)))


# The same values are decoded again and again: From, To, Subject and Message-ID once for the output
# and once for the report, a sender's From and the recipients' To in mail after mail. Decoding is a
# pure function of the raw value; short values are remembered (bounded: count and length).
_CACHED_HEADER_CHARS: Final = 1024
_decode_header_cached = functools.lru_cache(maxsize=256)(_decode_header)


# ============================================================================ file names


def _raw_header(part: email.message.Message, name: str) -> str | None:
    for key, value in part.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _parse_params(text: str) -> Iterable[tuple[str, str]]:
    """(lower-case name, value) for each ``; name=value`` after the header's main value.

    Quoted strings honour only ``\\"`` and ``\\\\`` escapes: senders put raw Windows paths in
    quotes, and their backslashes must survive so the directory part can be stripped.
    """
    size = len(text)
    pos = text.find(";")
    if pos < 0:
        return
    while pos < size:  # every iteration consumes at least the ';' or one character
        if text[pos] in "; \t":
            pos += 1
            continue
        eq = text.find("=", pos)
        semi = text.find(";", pos)
        if eq < 0 or (0 <= semi < eq):
            pos = semi if semi >= 0 else size  # a name without a value: skip it
            continue
        name = text[pos:eq].strip().lower()
        pos = eq + 1
        while pos < size and text[pos] in " \t":
            pos += 1
        if pos < size and text[pos] == '"':
            chars: list[str] = []
            pos += 1
            while pos < size and text[pos] != '"':
                if text[pos] == "\\" and pos + 1 < size and text[pos + 1] in '"\\':
                    pos += 1
                chars.append(text[pos])
                pos += 1
            pos += 1  # closing quote (or end of an unterminated value)
            value = "".join(chars)
        else:
            semi = text.find(";", pos)
            end = semi if semi >= 0 else size
            value = text[pos:end].strip()
            pos = end
        yield name, value


def _pct_decode(text: str, charset: str | None) -> bytes:
    out = bytearray()
    for piece in _PCT_RE.finditer(text):
        if piece.group(1):
            out.append(int(piece.group(1), 16))
        elif piece.group(2):
            out += _encode_literal(piece.group(2), charset)
        else:
            out += b"%"
    return bytes(out)


def _rfc2231(sections: dict[int, tuple[bool, str]]) -> str:
    """Join RFC 2231 sections (``name*``, ``name*0*``, ``name*1``, ...) and decode them."""
    ordered = [sections[k] for k in sorted(sections)]
    if not any(extended for extended, _ in ordered):
        return _decode_words("".join(value for _, value in ordered))
    label: str | None = None
    first_extended, first = ordered[0]
    if first_extended and first.count("'") >= 2:
        label, _lang, rest = first.split("'", 2)
        ordered[0] = (True, rest)
    codec = normalize_label(label)
    # Consecutive extended sections are joined before percent-decoding: some senders cut the value
    # inside a %XX escape ("...%E" / "8%B0..."), which decoded section by section leaves a literal "%".
    chunks: list[bytes] = []
    pending: list[str] = []
    for extended, value in ordered:
        if extended:
            pending.append(value)
            continue
        if pending:
            chunks.append(_pct_decode("".join(pending), codec))
            pending = []
        chunks.append(_encode_literal(value, codec))
    if pending:
        chunks.append(_pct_decode("".join(pending), codec))
    return decode_body(b"".join(chunks), label).text


def _param(raw: str, wanted: str) -> str | None:
    """The decoded value of parameter ``wanted`` in a raw Content-Disposition/Content-Type value."""
    # Decode raw 8-bit/JIS bytes first: their ", ; and \ bytes (CP932 trail bytes, JIS pairs)
    # would otherwise break the parameter syntax.
    text = _unfolded_text(raw)
    plain: str | None = None
    sections: dict[int, tuple[bool, str]] = {}
    for name, value in _parse_params(text):
        parsed = _PARAM_NAME_RE.fullmatch(name)
        if parsed is None or parsed.group("base").strip() != wanted:
            continue
        if parsed.group("section") is None and parsed.group("ext") is None:
            if plain is None:
                plain = value
            continue
        section = int(parsed.group("section") or 0)
        if len(sections) < _MAX_SECTIONS:
            sections.setdefault(section, (parsed.group("ext") is not None, value))
    if sections:
        return _rfc2231(sections)
    if plain is not None:
        return _decode_words(plain)
    return None


def _clean_filename(name: str) -> str | None:
    name = re.split(r"[\\/]", name)[-1]  # no directory parts: ..\..\evil.exe -> evil.exe
    name = unicodedata.normalize("NFC", name)  # macOS sends decomposed kana (テ + U+3099)
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"))
    name = name.strip()
    return None if name in ("", ".", "..") else name


def decode_filename(part: email.message.Message) -> str | None:
    """The attachment's file name (Content-Disposition filename, else Content-Type name), or None.

    Handles RFC 2231 (continuations, any charset), RFC 2047 inside the quoted value and raw 8-bit
    names in any Japanese charset; directory parts and control/format characters are removed.
    """
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        raw = _raw_header(part, header)
        if raw is None:
            continue
        value = _param(raw, param)
        if value is not None:
            cleaned = _clean_filename(value)
            if cleaned is not None:
                return cleaned
    return None
