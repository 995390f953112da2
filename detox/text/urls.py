"""Make URLs in plain text non-clickable ("defang") the way threat-intelligence reports do.

* ``https://evil.example/login`` → ``hxxps://evil[.]example/login``; ``http`` → ``hxxp``,
  ``ftp`` → ``fxp`` (``ftps`` → ``fxps``); the separator is written ``://``;
* only the dots of the authority (``user@host:port``) are bracketed, path and query are kept,
  ports too; a scheme that appears again inside the URL (``?url=https://...``) is defanged as well,
  so no ``http://``, ``https://`` or ``ftp://`` is left anywhere in the output;
* bare ``www.example.com/path`` (and ``ftp.example.com``), which mail clients also turn into
  links, → ``www[.]example[.]com/path``;
* full-width tricks (``ｈｔｔｐｓ：／／``, ``．`` and ``｡`` as dots, ``／`` as slash) and IDN or
  punycode hosts (``例え.jp``, ``xn--r8jz45g.jp``) are handled the same way;
* e-mail addresses are left alone (staff need them to reply), and so is ``mailto:``; the URL
  stops at whitespace and at Japanese brackets and 、。 so that the sentence around it is kept;
* text that is already defanged (``hxxp://``, ``hxxps[:]//``, ``fxp://``) is left as it is,
  so defanging twice changes nothing.

One regular expression without nested quantifiers does the scanning: time is linear in the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DefangResult", "defang_urls"]


@dataclass(frozen=True, slots=True)
class DefangResult:
    text: str
    count: int
    """Number of URLs that were changed."""


def _letter(c: str) -> str:
    """A character class for an ASCII letter and its full-width forms (ａ U+FF41, Ａ U+FF21)."""
    offset = ord(c) - ord("a")
    return f"[{c}{c.upper()}{chr(0xFF41 + offset)}{chr(0xFF21 + offset)}]"


_H, _T, _P, _S, _F, _W = (_letter(c) for c in "htpsfw")
_SCHEME = f"(?:{_H}{_T}{_T}{_P}|{_F}{_T}{_P}){_S}?"
_SEPARATOR = r"[:：][/\\／＼]{1,3}"
_DEFANGED = r"(?:[hH][xX]{2}[pP]|[fF][xX][pP])[sS]?(?::|\[:\])//"
# What can follow a scheme: anything up to whitespace, quotes, angle brackets, controls, and the
# Japanese brackets and punctuation that end a URL written in a sentence.
_REST = "[^\\s<>\"'`\x00-\x1f\x7f「」『』（）【】〈〉《》〔〕、。，]*"
# A bare www. or ftp. host that is not part of a longer name or an e-mail address.
_BARE = f"(?<![A-Za-z0-9@._\\-])(?:{_W}{{3}}[0-9]{{0,3}}|{_F}{_T}{_P})[.．｡](?=\\w)"

_URL_RE = re.compile(
    f"(?P<defanged>{_DEFANGED})(?P<drest>{_REST})"
    f"|(?P<scheme>{_SCHEME}){_SEPARATOR}(?P<rest>{_REST})"
    f"|(?P<bare>{_BARE})(?P<brest>{_REST})"
)
_INNER_SCHEME_RE = re.compile(f"(?P<scheme>{_SCHEME}){_SEPARATOR}")
_AUTHORITY_END_RE = re.compile(r"[/\\?#／＼？＃]")
_HOST_DOT_RE = re.compile(r"(?<!\[)[.．｡](?!\])")
# The characters an e-mail local part may continue with after "www." (all allowed in _REST).
_LOCAL_RUN_RE = re.compile(r"[\w.%+\-．｡]*")
_TRAILING = frozenset(".,;:!?'\"…．，；：！？")
_CLOSERS = {")": "(", "]": "[", "}": "{", "）": "（", "］": "［", "｝": "｛"}


_FULLWIDTH_LOWER = str.maketrans({chr(0xFF41 + i): chr(ord("a") + i) for i in range(26)})


def _defang_scheme(scheme: str) -> str:
    """http → hxxp, https → hxxps, ftp → fxp, ftps → fxps (full-width letters made ASCII)."""
    s = scheme.lower().translate(_FULLWIDTH_LOWER)
    return s.replace("tt", "xx", 1) if s.startswith("h") else s.replace("t", "x", 1)


def _split_trailing(rest: str) -> tuple[str, str]:
    """Leave sentence punctuation after a URL outside it (unbalanced closing brackets too)."""
    end = len(rest)
    counts: dict[str, int] = {}  # counted once per bracket kind: linear however long the tail
    while end:
        ch = rest[end - 1]
        if ch in _TRAILING:
            end -= 1
            continue
        opener = _CLOSERS.get(ch)
        if opener is None:
            break
        if ch not in counts:
            counts[ch] = rest.count(ch, 0, end)
            counts[opener] = rest.count(opener, 0, end)
        if counts[ch] <= counts[opener]:
            break
        counts[ch] -= 1
        end -= 1
    return rest[:end], rest[end:]


def _inner(m: re.Match[str]) -> str:
    return _defang_scheme(m.group("scheme")) + "://"


def _defang_rest(rest: str) -> str:
    """Bracket the dots of the authority and defang schemes repeated inside the URL."""
    rest = _INNER_SCHEME_RE.sub(_inner, rest)
    m = _AUTHORITY_END_RE.search(rest)
    cut = m.start() if m else len(rest)
    return _HOST_DOT_RE.sub("[.]", rest[:cut]) + rest[cut:]


def defang_urls(text: str) -> DefangResult:
    """Return ``text`` with every URL made non-clickable, and how many URLs were changed."""
    out: list[str] = []
    count = 0
    last = pos = 0
    while (m := _URL_RE.search(text, pos)) is not None:
        pos = m.end()
        if m.group("defanged") is not None:
            rest, tail = _split_trailing(m.group("drest"))
            original = m.group("defanged") + rest
            new = m.group("defanged") + _INNER_SCHEME_RE.sub(_inner, rest)
        elif m.group("scheme") is not None:
            rest, tail = _split_trailing(m.group("rest"))
            original = text[m.start() : m.end() - len(tail)]
            new = _defang_scheme(m.group("scheme")) + "://" + _defang_rest(rest)
        else:
            local_end = _LOCAL_RUN_RE.match(text, m.end("bare")).end()  # type: ignore[union-attr]
            if text.startswith("@", local_end):
                pos = local_end + 1  # www.taro@example.jp is an e-mail address: leave it
                continue
            rest, tail = _split_trailing(m.group("brest"))
            original = m.group("bare") + rest
            new = _defang_rest(original)
        if new != original:
            out.append(text[last : m.start()])
            out.append(new)
            last = m.start() + len(original)
            count += 1
    if not count:
        return DefangResult(text=text, count=0)
    out.append(text[last:])
    return DefangResult(text="".join(out), count=count)
