"""Member names: decoded the way the tools that wrote them meant, judged before anything is extracted.

UTF-8 first, then CP932 when it reads as Japanese, then the format's legacy default; paths that are
absolute, climb out with ``..`` or carry control characters are refused (see the package docstring).
"""

from __future__ import annotations

import time
import unicodedata

# JIS X 0208 / NEC / IBM symbols CP932 carries.
MAX_PATH_CHARS = 1024

_JA_STRONG = ((0x3000, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF01, 0xFF60))
_JA_ALSO = (
    (0xFF61, 0xFF9F),  # half-width katakana
    (0xFFE0, 0xFFEE),
    (0x00A7, 0x00A8),
    (0x00B0, 0x00B1),
    (0x00B4, 0x00B4),
    (0x00B6, 0x00B6),
    (0x00D7, 0x00D7),
    (0x00F7, 0x00F7),
    (0x0391, 0x03C9),  # Greek
    (0x0401, 0x0451),  # Cyrillic
    (0x2010, 0x203F),  # dashes, quotes, ※, …
    (0x2100, 0x22FF),  # ℃, №, ™, Roman numerals, arrows, maths
    (0x2300, 0x23FF),
    (0x2460, 0x24FF),  # ①
    (0x2500, 0x257F),  # box drawing
    (0x25A0, 0x26FF),  # ■ ○ ★ ♪
    (0x3200, 0x33FF),  # ㈱ ㌔
)


def _in(code: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def plausibly_japanese(text: str) -> bool:
    """True when every non-ASCII character is one a Japanese name uses and one is kana or kanji."""
    strong = False
    for ch in text:
        code = ord(ch)
        if code < 0x80:
            if code < 0x20 or code == 0x7F:
                return False
        elif _in(code, _JA_STRONG):
            strong = True
        elif not _in(code, _JA_ALSO):
            return False
    return strong


def decode_name(raw: bytes, fallback: str) -> str:
    """Decode an archive's raw name bytes: UTF-8, Japanese legacy encodings, then ``fallback``."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    candidates = ("cp932", "euc_jp") if fallback == "lzh" else ("cp932",)
    for codec in candidates:
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            continue
        if plausibly_japanese(text):
            return text
    if fallback == "lzh":
        return raw.decode("cp932", "replace")
    return raw.decode(fallback, "replace")


# Controls, format characters (bidi overrides, zero-width), lone surrogates, line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def _safe_char(ch: str) -> bool:
    return unicodedata.category(ch) not in _UNSAFE_CATEGORIES


def _printable(text: str) -> str:
    return "".join(ch if _safe_char(ch) else "?" for ch in text)


def classify_path(name: str) -> tuple[str, str]:
    """(normalized path, "") for a safe relative path, or (name, why) for one that is refused."""
    if len(name) > MAX_PATH_CHARS or not name:
        return name, "bad-name"
    if not all(_safe_char(ch) for ch in name):  # NUL, controls, bidi overrides, lone surrogates
        return name, "bad-name"
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) >= 2 and unified[1] == ":" and unified[0].isalpha()):
        return name, "absolute-path"
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        return name, "parent-path"
    if not parts:
        return name, "bad-name"
    return "/".join(parts), ""


def _valid_mtime(mtime: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if mtime is None or len(mtime) < 6:
        return None
    y, mo, d, h, mi, s = (int(x) for x in mtime[:6])
    if not (
        1980 <= y <= 2107 and 1 <= mo <= 12 and 1 <= d <= 31 and 0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 62
    ):
        return None
    return (y, mo, d, h, mi, min(s, 59))


def _from_epoch(seconds: float | None) -> tuple[int, ...] | None:
    if seconds is None:
        return None
    try:
        return tuple(time.localtime(seconds)[:6])
    except (OverflowError, OSError, ValueError):
        return None
