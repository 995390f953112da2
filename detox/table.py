"""Plain-text tables for the admin CLI, aligned by terminal columns rather than by characters.

Japanese text is East Asian Wide or Fullwidth: two columns per character in a terminal. Column
widths are therefore measured with ``unicodedata.east_asian_width``; combining marks take none.
Ambiguous characters (①, ○, Greek, Cyrillic …) take one column, as in most terminals; set
``DETOX_AMBIGUOUS_WIDTH=2`` for terminals configured to draw them wide (some Japanese setups).
Every cell is passed through :func:`detox.untrusted.for_log` first: subjects and names come from the
Internet and must not move the cursor or recolour the terminal.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Sequence

from detox.untrusted import for_log

ELLIPSIS = "…"


def _ambiguous_width() -> int:
    return 2 if os.environ.get("DETOX_AMBIGUOUS_WIDTH") == "2" else 1


def char_width(ch: str, ambiguous: int = 1) -> int:
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    eaw = unicodedata.east_asian_width(ch)
    if eaw in ("W", "F"):
        return 2
    if eaw == "A":
        return ambiguous
    return 1


def text_width(text: str, ambiguous: int | None = None) -> int:
    amb = _ambiguous_width() if ambiguous is None else ambiguous
    return sum(char_width(ch, amb) for ch in text)


def truncate(text: str, width: int, ambiguous: int | None = None) -> str:
    """Cut ``text`` to at most ``width`` columns, marking the cut with an ellipsis."""
    amb = _ambiguous_width() if ambiguous is None else ambiguous
    if text_width(text, amb) <= width:
        return text
    if width <= 0:
        return ""
    room = width - text_width(ELLIPSIS, amb)
    out: list[str] = []
    used = 0
    for ch in text:
        w = char_width(ch, amb)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + ELLIPSIS


def pad(text: str, width: int, ambiguous: int | None = None) -> str:
    return text + " " * max(width - text_width(text, ambiguous), 0)


def cell(value: object, limit: int = 300) -> str:
    """A value as one safe table cell: control characters escaped, one line."""
    if value is None:
        return "-"
    return for_log(str(value), limit).replace("\t", " ")


def render(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    max_widths: Sequence[int | None] | None = None,
    total_width: int | None = None,
    shrink: int | None = None,
) -> str:
    """Columns separated by two spaces; ``shrink`` names the column cut to fit ``total_width``."""
    amb = _ambiguous_width()
    cells = [[cell(v) for v in row] for row in rows]
    heads = [cell(h) for h in headers]
    widths = [text_width(h, amb) for h in heads]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], text_width(value, amb))
    if max_widths:
        widths = [min(w, m) if m else w for w, m in zip(widths, max_widths, strict=True)]
    if total_width and shrink is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - total_width
        if excess > 0:
            widths[shrink] = max(widths[shrink] - excess, text_width(heads[shrink], amb), 8)
    lines = []
    for row in [heads, *cells]:
        parts = [pad(truncate(v, w, amb), w, amb) for v, w in zip(row, widths, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
