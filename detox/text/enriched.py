"""text/enriched (RFC 1896) and its ancestor text/richtext (RFC 1341) → plain text.

Both are a handful of angle-bracket formatting commands over plain text: the commands are dropped,
``<<`` (enriched) and ``<lt>`` (richtext) become ``<``, and line breaks follow each format's rules.
"""

from __future__ import annotations

import re

_ENRICHED_TOKEN = re.compile(r"<<|<(/?)([A-Za-z0-9-]{1,60})>|\n+|[^<\n]+|<", re.S)
_RICHTEXT_TOKEN = re.compile(r"<(/?)([A-Za-z0-9-]{1,60})>|[^<]+|<", re.S)
_SKIP_CONTENT = frozenset({"param", "comment"})  # their content is not text to show


def enriched_to_text(untrusted: str) -> str:
    """RFC 1896: a run of n newlines is n-1 line breaks (one alone is a space)."""
    out: list[str] = []
    skipping = 0
    for m in _ENRICHED_TOKEN.finditer(untrusted.replace("\r\n", "\n")):
        token = m.group(0)
        if m.group(2):
            name = m.group(2).lower()
            if name in _SKIP_CONTENT:
                skipping += -1 if m.group(1) else 1
                skipping = max(skipping, 0)
            continue
        if skipping:
            continue
        if token == "<<":  # noqa: S105 - an escaped "<", not a password
            out.append("<")
        elif token.startswith("\n"):
            out.append(" " if len(token) == 1 else "\n" * (len(token) - 1))
        else:
            out.append(token)
    return "".join(out)


def richtext_to_text(untrusted: str) -> str:
    """RFC 1341: line breaks are the <nl> command (and <np>); source newlines are spaces."""
    out: list[str] = []
    skipping = 0
    for m in _RICHTEXT_TOKEN.finditer(untrusted.replace("\r\n", "\n")):
        token = m.group(0)
        if m.group(2):
            name = m.group(2).lower()
            if name in _SKIP_CONTENT:
                skipping = max(skipping + (-1 if m.group(1) else 1), 0)
            elif not m.group(1) and name in ("nl", "np"):
                out.append("\n")
            elif not m.group(1) and name == "lt":
                out.append("<")
            continue
        if not skipping:
            out.append(token.replace("\n", " "))
    return "".join(out)
