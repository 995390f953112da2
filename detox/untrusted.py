"""Helpers for strings that come from the Internet (names prefixed ``untrusted_``).

Anything an attacker controls passes through :func:`for_log` before it reaches a log line or a
terminal, so control characters cannot forge log records or drive a terminal.
"""

from __future__ import annotations

import unicodedata

_MAX_LOG = 300


def for_log(untrusted: object, limit: int = _MAX_LOG) -> str:
    """Render an untrusted value safely for logs: no control characters, bounded length."""
    text = str(untrusted)
    out = []
    for ch in text[: limit + 1]:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    rendered = "".join(out)
    return rendered[:limit] + "…" if len(text) > limit else rendered
