"""Render an untrusted HTML mail body as plain text that staff can read comfortably.

The output is what a careful person would copy out of a browser window, with every active or
deceptive part taken away:

* block elements become line breaks or paragraphs (at most one blank line in a row);
* headings are plain paragraphs with no decoration (Japanese mail headings usually carry their
  own ■ / 【】 / ◆ markers, and adding ours would double them);
* ``ul`` items start with ``・ `` and ``ol`` items with ``1. `` (``start=`` and ``value=`` are
  honoured); nested lists and list-item continuation lines are indented two spaces per level;
  ``dl`` gives the term on its own line and the definition indented by two spaces;
* ``blockquote`` lines get the plain-text mail quote prefix ``> ``;
* table rows go on their own line with non-empty cells joined by `` | `` (visible and stable in any
  mail client and with proportional Japanese fonts, unlike a tab); empty cells and rows are
  dropped, so one-cell layout tables add nothing;
* a link is written as ``text (URL)``, or once when the text is the URL (ignoring scheme, case
  and a trailing slash); ``mailto:`` shows the address; in-page ``#fragment`` links show the text
  only; ``javascript:``/``vbscript:``/``data:`` URLs are dropped (the text stays); a link with no
  visible text (an image with no alt) is dropped like its content (counted as ``empty-link``);
* an image with alt text becomes ``[画像: alt]``; one without is dropped;
* scripts, styles, embedded objects, frames, media, comments, form controls and hidden elements are
  dropped and counted in :attr:`HtmlText.removed`; zero-width and bidi control characters
  are removed (counted as ``invisible``).

Everything is iterative (no recursion over the tree), so 10,000-deep nesting is fine, and the
function never raises on a ``str``: if rendering fails it falls back to a crude tag stripper.

Why one module of about 1,100 lines: it is one renderer. The block/inline layout, the list and
table state, link and image rules and the invisible-character accounting share the renderer's
private state on every element, and the fallback must stay next to what it stands in for; split by
line count, each half would reach into the other's internals.
"""

from __future__ import annotations

import html as html_lib
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, cast
from urllib.parse import unquote

from lxml import etree

from detox.errors import FilterTimeout

__all__ = ["HtmlText", "html_to_text", "is_script_url", "link_target", "same_target", "strip_invisible"]


@dataclass(frozen=True, slots=True)
class HtmlText:
    """The plain-text rendering of an HTML body and what was left out of it."""

    text: str
    links: int
    """Number of links whose URL was written out."""
    images: int
    """Number of images whose alt text was kept."""
    removed: Mapping[str, int]
    """What was dropped, by kind: tag names, ``comment``, ``hidden``, ``javascript-url``, ..."""


# --------------------------------------------------------------------------------------------
# Character hygiene (shared with detox.text.rtf)

# Zero-width, bidi and other format characters used to hide or reorder text in phishing mail.
_INVISIBLE_CLASS = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb"
    "\U0001d173-\U0001d17a\U000e0000-\U000e007f"
)
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE_CLASS}]")
# C0/C1 controls except TAB, LF, FF and CR, plus lone surrogates (which cannot be encoded).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def _class_chars(spec: str) -> Iterator[str]:
    """The characters of a regex character class's contents (literal characters and ranges)."""
    i = 0
    while i < len(spec):
        if i + 2 < len(spec) and spec[i + 1] == "-":
            yield from map(chr, range(ord(spec[i]), ord(spec[i + 2]) + 1))
            i += 3
        else:
            yield spec[i]
            i += 1


# Which invisible characters str.isprintable() accepts (the others are format characters, Cf, or
# unassigned): the few a printable text must still be searched for.
_PRINTABLE_INVISIBLE = tuple(c for c in _class_chars(_INVISIBLE_CLASS) if c.isprintable())
_ALLOWED_NONPRINTABLE = ("\t", "\n", "\r", "\f", "\u3000", "\xa0")  # kept, but not "printable"
_QUICK_CHECK_CHARS = 64  # shorter texts: the two regular expressions are as quick

_HTML_WS = " \t\n\r\f"
_MAX_URL = 4096


def _nothing_to_strip(text: str) -> bool:
    """True if neither _INVISIBLE_RE nor _CONTROL_RE can match: a few C-speed passes instead of
    two character-class scans (the invisible class costs ~50 ns a character on Japanese text).

    Every control character and every invisible one but _PRINTABLE_INVISIBLE is non-printable, and
    the characters taken out before isprintable() are in neither class (tests check all of Unicode).
    """
    for ch in _ALLOWED_NONPRINTABLE:
        if ch in text:
            text = text.replace(ch, "")
    return text.isprintable() and not any(ch in text for ch in _PRINTABLE_INVISIBLE)


def strip_invisible(text: str) -> tuple[str, int, int]:
    """Remove invisible format characters and control characters.

    Returns the cleaned text, the number of invisible (zero-width/bidi/...) characters removed
    and the number of control characters removed.
    """
    if text.isascii():
        # Every invisible character is non-ASCII, and printable ASCII has no controls either.
        if text.isprintable():
            return text, 0, 0
        text, control = _CONTROL_RE.subn("", text)
        return text, 0, control
    if text.isprintable():
        # A word of Japanese text (the HTML renderer asks for each): no control character and only
        # _PRINTABLE_INVISIBLE of the invisible ones are printable, so a few substring tests
        # answer for the two character-class scans (~1 us on even a short word).
        for ch in _PRINTABLE_INVISIBLE:
            if ch in text:
                break
        else:
            return text, 0, 0
    elif len(text) > _QUICK_CHECK_CHARS and _nothing_to_strip(text):
        return text, 0, 0
    text, invisible = _INVISIBLE_RE.subn("", text)
    text, control = _CONTROL_RE.subn("", text)
    return text, invisible, control


_SCRIPT_SCHEMES = frozenset({"javascript", "vbscript", "data", "livescript", "mocha"})
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_URL_JUNK_RE = re.compile(r"[\x00-\x20\x7f]+")


def is_script_url(url: str) -> bool:
    """True for URLs a browser would execute or render inline (``javascript:``, ``data:``, ...).

    Browsers ignore ASCII whitespace and controls inside a scheme (``java\\tscript:``), so they
    are removed before the scheme is read.
    """
    compact = _URL_JUNK_RE.sub("", _INVISIBLE_RE.sub("", url[:256]))
    m = _SCHEME_RE.match(compact)
    return m is not None and m.group(1).lower() in _SCRIPT_SCHEMES


def link_target(href: str) -> str | None:
    """What to show for a link target: the URL as written (cleaned), the bare address for
    ``mailto:``, ``""`` when there is nothing worth showing (empty, ``#fragment``), or None for a
    script URL that must be dropped. Shared with :mod:`detox.text.rtf`."""
    href, _, _ = strip_invisible(href)
    href = href.replace("\t", "").replace("\n", "").replace("\r", "").strip(_HTML_WS + "\xa0")
    if not href or href.startswith("#"):
        return ""
    if is_script_url(href):
        return None
    if href[:7].lower() == "mailto:":
        href, _, _ = strip_invisible(unquote(href[7:].split("?", 1)[0]))
    href = " ".join(href.split())  # no line breaks of any kind inside a shown URL
    return href[:_MAX_URL] + "…" if len(href) > _MAX_URL else href


_SCHEME_PREFIX_RE = re.compile(r"^[a-z][a-z0-9+.\-]*:(//)?")


def _url_key(s: str) -> str:
    return _SCHEME_PREFIX_RE.sub("", s.strip().lower(), count=1).rstrip("/")


def same_target(text: str, url: str) -> bool:
    """True when link text is its URL, ignoring case, the scheme and a trailing slash."""
    return _url_key(text) == _url_key(url)


# --------------------------------------------------------------------------------------------
# Element classes

# Dropped with everything inside them, counted under the tag name.
_DROP_COUNTED = frozenset(
    {
        "script",
        "style",
        "noscript",
        "template",
        "object",
        "embed",
        "applet",
        "iframe",
        "frame",
        "frameset",
        "svg",
        "math",
        "canvas",
        "audio",
        "video",
        "input",
        "button",
        "select",
        "textarea",
        "option",
        "optgroup",
        "datalist",
        "keygen",
        "output",
        "map",
        "area",
        "param",
        "source",
        "track",
        "portal",
        "xml",
    }
)
# Dropped silently: metadata that is never shown, or shown elsewhere (title = Subject).
_DROP_SILENT = frozenset(
    {
        "title",
        "meta",
        "link",
        "base",
        "basefont",
        "bgsound",
        "rp",
        "wbr",
        "col",
        "colgroup",
    }
)
_VOID = frozenset(
    {
        "area",
        "base",
        "basefont",
        "bgsound",
        "br",
        "col",
        "embed",
        "frame",
        "hr",
        "img",
        "input",
        "keygen",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)
_PRE = frozenset({"pre", "listing", "xmp", "plaintext"})
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_PARAGRAPH = frozenset({"figure", "dl"}) | _HEADINGS | _PRE
_LINE = frozenset(
    {
        "div",
        "section",
        "article",
        "header",
        "footer",
        "nav",
        "aside",
        "main",
        "center",
        "address",
        "details",
        "summary",
        "dialog",
        "figcaption",
        "fieldset",
        "legend",
        "hgroup",
        "caption",
        "body",
        "noframes",
        "search",
        "form",
    }
)
_LISTS = frozenset({"ul", "ol", "menu", "dir"})
_CELLS = frozenset({"td", "th"})

# U+2028/U+2029 are not HTML whitespace, but a line separator inside a "word" would break lines
# behind our back, so they are treated as whitespace.
_WS_SPLIT_RE = re.compile("([ \t\n\r\f\u2028\u2029]+)|([^ \t\n\r\f\u2028\u2029]+)")
_WS_RE = re.compile("[ \t\n\r\f\u2028\u2029]")
_PRE_SPLIT_RE = re.compile("(\r\n|[\r\n\u2028\u2029])|([ \t\f]+)|([^ \t\f\r\n\u2028\u2029]+)")

_HR = "-" * 40
_BULLET = "・ "
_IMAGE = "[画像: {}]"
_MAX_CAPTURE_PIECES = 512
_MAX_OPEN_CAPTURES = 4
_MAX_INDENT = 40
_MAX_STYLE = 4096


# --------------------------------------------------------------------------------------------
# The tree
#
# libxml2's HTML parser (through lxml, in recover mode) reads the markup; its events build a small
# tree of _Node and leaves. The tree is the one BeautifulSoup's "lxml" builder made from the same
# events, as far as the renderer reads it: text runs between two other events are joined, a run of
# ASCII whitespace only is collapsed to "\n" or " " outside <pre>/<textarea>, an end tag closes up
# to the most recent open element of its name, and comments, processing instructions and doctypes
# are leaves. Building it directly costs a fraction of bs4's general-purpose tree.


class _Node:
    """An element: its name as libxml2 gives it (lower case), attributes, children, parent's name.

    Only the parent's name is kept: no reference cycles, so a tree is freed as soon as it is rendered.
    """

    __slots__ = ("attrs", "contents", "name", "parent_name")

    def __init__(self, name: str, attrs: dict[str, str], parent_name: str) -> None:
        self.name = name
        self.attrs = attrs
        self.contents: list[_Node | str | _Leaf] = []
        self.parent_name = parent_name


class _Leaf:
    """A comment, processing instruction or doctype: never shown; ``kind`` is counted if set."""

    __slots__ = ("kind",)

    def __init__(self, kind: str | None) -> None:
        self.kind = kind


_ROOT: Final = "[document]"
_ASCII_SPACES: Final = " \n\t\f\r"
_PRESERVE_WHITESPACE: Final = frozenset({"pre", "textarea"})
_DOCTYPE: Final = _Leaf(None)
_PI: Final = _Leaf("processing-instruction")
_CDATA: Final = _Leaf("cdata")
_COMMENT: Final = _Leaf("comment")


def _local(name: str) -> str:
    """``{namespace}name`` -> ``name`` (lxml's spelling of a namespaced name)."""
    return name.split("}", 1)[1] if name[:1] == "{" and "}" in name else name


class _TreeBuilder:
    """An lxml parser target (start/end/data/comment/pi/doctype/close events) making the tree."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new tree (one builder serves every document its parser reads)."""
        self.root = _Node(_ROOT, {}, "")
        self.stack = [self.root]
        self.open: dict[str, int] = {}  # open elements by name (a count; 0 once all are closed)
        self.preserve: list[_Node] = []  # open <pre>/<textarea>: whitespace kept as it is
        self.pending: list[str] = []  # text not yet added (adjacent data events are joined)

    def flush(self) -> str | None:
        if not self.pending:
            return None
        text = "".join(self.pending)
        self.pending = []
        if not self.preserve and not text.strip(_ASCII_SPACES):
            text = "\n" if "\n" in text else " "
        return text

    def flush_text(self) -> None:
        text = self.flush()
        if text is not None:
            self.stack[-1].contents.append(text)

    def leaf(self, leaf: _Leaf) -> None:
        # Comments, PIs and doctypes are dropped (counted by kind); their text is never kept.
        self.flush_text()
        self.stack[-1].contents.append(leaf)

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        if self.pending:
            self.flush_text()
        parent = self.stack[-1]
        attrs: dict[str, str] = {}
        if attrib:  # lxml passes an empty mapping that is no dict, slow to copy
            attrs = dict(attrib)
            if "{" in "".join(attrs):  # libxml2 passes "{x}hidden" through as a name
                attrs = {_local(k): v for k, v in attrs.items()}
        name = _local(tag) if tag[:1] == "{" else tag
        node = _Node(name, attrs, parent.name)
        parent.contents.append(node)
        self.stack.append(node)
        if name != _ROOT:
            self.open[name] = self.open.get(name, 0) + 1
        if name in _PRESERVE_WHITESPACE:
            self.preserve.append(node)

    def end(self, tag: str) -> None:
        if self.pending:
            self.flush_text()
        name = _local(tag) if tag[:1] == "{" else tag
        if name == _ROOT:
            return
        # Close up to and including the most recent open element of that name, if there is one.
        while len(self.stack) > 1 and self.open.get(name):
            node = self.stack.pop()
            self.open[node.name] -= 1
            if self.preserve and node is self.preserve[-1]:
                self.preserve.pop()
            if node.name == name:
                break

    def data(self, text: str) -> None:
        self.pending.append(text)

    def comment(self, text: str) -> None:
        # lxml reports <![CDATA[...]]> and <?...?> in HTML as comments.
        if text.startswith("[CDATA["):
            self.leaf(_CDATA)
        elif text.startswith("?"):
            self.leaf(_PI)
        else:
            self.leaf(_COMMENT)

    def pi(self, target: str, data: str) -> None:
        self.leaf(_PI)

    def doctype(self, name: str | None, pubid: str | None, system: str | None) -> None:
        self.leaf(_DOCTYPE)

    def close(self) -> None:
        return None


def _parse_tree(markup: str) -> _Node:
    """The tree of ``markup``; raises when libxml2 rejects it (the caller falls back)."""
    if markup[:1] == "\ufeff":
        markup = markup[1:]
    try:
        return _parse_with(markup, None)
    except (UnicodeDecodeError, LookupError, etree.ParserError):
        # Rejected as a str: parse it again from its UTF-8 bytes.
        return _parse_with(markup.encode("utf-8"), "utf8")


# One parser per thread and encoding, kept: lxml sets up a parser's target on its first feed
# (Python-level introspection of the target's methods, ~250 us, more than parsing a 5 KB mail's
# HTML), and a parser is reusable once close() has ended a document. A parser whose document
# ended in an exception (including a deadline's FilterTimeout inside a target call) is dropped.
_parsers = threading.local()


def _parse_with(markup: str | bytes, encoding: str | None) -> _Node:
    kept: dict[str | None, tuple[Any, _TreeBuilder]] | None = getattr(_parsers, "kept", None)
    if kept is None:
        kept = _parsers.kept = {}
    found = kept.pop(encoding, None)  # taken out while in use: a re-entrant call gets its own
    if found is None:
        builder = _TreeBuilder()
        # cast: the stubs' ParserTarget protocol also wants start_ns/end_ns, which lxml only calls if present.
        target = cast(Any, builder)
        found = etree.HTMLParser(target=target, recover=True, huge_tree=False, encoding=encoding), builder
    parser, builder = found
    parser.feed(markup)
    parser.close()
    builder.flush_text()  # text after the last event
    root = builder.root
    builder.reset()  # the builder keeps nothing of this document
    kept[encoding] = (parser, builder)
    return root


def _attr(tag: _Node, name: str) -> str:
    return tag.attrs.get(name, "")


# --------------------------------------------------------------------------------------------
# CSS checks on the style attribute

_CSS_COMMENT_RE = re.compile(r"/\*.*?\*/", re.S)
_ZERO_LENGTH_RE = re.compile(r"^[+-]?0*\.?0*(px|pt|pc|em|rem|ex|ch|vw|vh|vmin|vmax|mm|cm|in|q|%)?$")
_FONT_ZERO_RE = re.compile(r"(^|\s)[+-]?0*\.?0+(px|pt|pc|em|rem|ex|ch|mm|cm|in|%)?(\s*/|\s|$)")


def _style_decls(style: str) -> dict[str, str]:
    style = _CSS_COMMENT_RE.sub("", style[:_MAX_STYLE].lower())
    decls: dict[str, str] = {}
    for part in style.split(";"):
        name, sep, value = part.partition(":")
        if sep:
            decls[name.strip()] = value.replace("!important", "").strip()
    return decls


def _is_zero(value: str) -> bool:
    return bool(value) and _ZERO_LENGTH_RE.match(value) is not None


def _is_hidden(tag: _Node) -> bool:
    if "hidden" in tag.attrs:
        return True
    style = _attr(tag, "style")
    if not style:
        return False
    d = _style_decls(style)
    if d.get("display") == "none" or d.get("visibility") in ("hidden", "collapse"):
        return True
    if d.get("mso-hide") == "all" or _is_zero(d.get("font-size", "")) or _is_zero(d.get("opacity", "")):
        return True
    if "font" in d and _FONT_ZERO_RE.search(d["font"]):
        return True
    if d.get("overflow") == "hidden" or d.get("overflow-y") == "hidden" or d.get("overflow-x") == "hidden":
        return any(_is_zero(d.get(k, "")) for k in ("height", "max-height", "width", "max-width"))
    return False


def _tight_paragraph(tag: _Node) -> bool:
    """Outlook writes every line as ``<p class=MsoNormal>`` with zero margins: treat as a line."""
    if any(c.lower().startswith("mso") for c in _attr(tag, "class").split()):
        return True
    style = _attr(tag, "style")
    if not style or "margin" not in style.lower():
        return False
    d = _style_decls(style)
    if "margin" in d and all(_is_zero(v) for v in d["margin"].split()):
        return True
    return _is_zero(d.get("margin-top", "")) and _is_zero(d.get("margin-bottom", ""))


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    if 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F or 0xAC00 <= o <= 0xD7AF:
        return False  # Hangul is written with spaces
    return unicodedata.east_asian_width(ch) in ("W", "F")


# --------------------------------------------------------------------------------------------
# The line builder


class _Out:
    """Accumulates lines; every vertical break, space and cell separator is decided lazily,
    when the next visible text arrives, so that empty elements leave no trace."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cur: list[str] = []
        self.cur_prefix = ""
        self.cur_content = False
        self.started = False
        self.emitted = 0  # count of text emissions; containers compare it to see if they got any
        self.pending_nl = 0  # newlines before the next text: 1 = new line, 2 = blank line, ...
        self.pending_space = False
        self.pending_space_nl = False
        self.pending_hard = ""  # non-collapsible spaces (&nbsp;, <pre>) waiting for text
        self.pending_sep = False
        self.last_char = ""
        self.indent: list[str] = []  # full line prefix at each level (bounded length)
        self.marker: str | None = None  # prefix for the first line of a list item
        self.fresh_mark: int | None = None  # `emitted` when the innermost cell/item began
        self.captures: list[list[str]] = []  # text of the open links
        self.invisible = 0
        self.control = 0

    def prefix(self) -> str:
        return self.indent[-1] if self.indent else ""

    def push_indent(self, more: str) -> None:
        """Indent further; past _MAX_INDENT characters deeper levels share the last prefix."""
        current = self.prefix()
        self.indent.append(current + more if len(current) < _MAX_INDENT else current)

    def pop_indent(self) -> None:
        if self.indent:
            self.indent.pop()

    def _fresh(self) -> bool:
        return self.fresh_mark is not None and self.fresh_mark == self.emitted

    def block(self, n: int) -> None:
        """Request a line break (1) or a blank line (2) before the next text.

        Block boundaries merge (the largest wins). Ignored at the very start of a table cell or
        list item, so that ``<td><p>x</p></td>`` stays on the row's line and
        ``<li><p>x</p></li>`` on the bullet's line.
        """
        self.pending_hard = ""
        if not self._fresh() and n > self.pending_nl:
            self.pending_nl = n

    def br(self) -> None:
        """``<br>`` ends the line; at the start of a line it makes an empty line, as browsers do
        (``<div><br></div>`` is a blank line, ``<div>a<br></div>`` is not)."""
        self.pending_hard = ""
        if not self._fresh():
            self.pending_nl += 1

    def space(self, newline: bool = False) -> None:
        """Collapsible whitespace; ``newline`` if it contained a segment break."""
        self.pending_space_nl = (self.pending_space_nl or not self.pending_space) and newline
        self.pending_space = True

    def hard(self, spaces: str) -> None:
        """Non-collapsible spaces (``&nbsp;``, ``<pre>``), kept only if text follows on the line."""
        if self.pending_space and self.cur_content and not self.pending_nl:
            spaces = " " + spaces
        self.pending_space = False
        self.pending_hard += spaces

    def _capture(self, piece: str) -> None:
        for cap in self.captures[-_MAX_OPEN_CAPTURES:]:
            if len(cap) < _MAX_CAPTURE_PIECES:
                cap.append(piece)

    def _end_line(self, n: int) -> None:
        prev_prefix = self.cur_prefix
        self.lines.append(self.cur_prefix + "".join(self.cur))
        if n >= 2:
            # A blank line inside a quote keeps the quote marks both lines share.
            next_prefix = self.prefix()
            i = 0
            while i < min(len(prev_prefix), len(next_prefix)) and prev_prefix[i] == next_prefix[i]:
                i += 1
            self.lines.append(prev_prefix[:i].rstrip())
        self.cur = []
        self.cur_prefix = ""
        self.cur_content = False

    def text(self, word: str) -> None:
        """Emit a run of visible text (no collapsible whitespace inside)."""
        word, inv, ctl = strip_invisible(word)
        if inv or ctl:
            self.invisible += inv
            self.control += ctl
        if not word:
            return
        if self.pending_nl:
            if self.started:
                self._end_line(self.pending_nl)
        elif self.pending_sep and self.cur_content:
            self.cur.append(" | ")
            self.pending_hard = ""
        elif (
            self.pending_space
            and self.cur_content
            # CSS Text: a segment break between two East Asian wide characters is removed.
            and not (self.pending_space_nl and _is_cjk(self.last_char) and _is_cjk(word[0]))
        ):
            self.cur.append(" ")
            if self.captures:
                self._capture(" ")
        self.pending_nl = 0
        self.pending_space = self.pending_sep = False
        if not self.cur_content:
            if self.marker is not None:
                self.cur_prefix, self.marker = self.marker, None
            else:
                self.cur_prefix = self.prefix()
        if self.pending_hard:
            self.cur.append(self.pending_hard)
            if self.captures:
                self._capture(self.pending_hard)
            self.pending_hard = ""
        self.cur.append(word)
        if self.captures:  # only inside a link
            self._capture(word)
        self.cur_content = True
        self.started = True
        self.last_char = word[-1]
        self.emitted += 1

    def finish(self) -> str:
        if self.cur_content:
            self._end_line(1)
        out: list[str] = []
        for raw in self.lines:
            line = raw.rstrip()
            if not line.strip(" >"):  # blank, or a blank line inside a quote
                if not out:
                    continue
                if not out[-1].strip(" >"):
                    if len(line) < len(out[-1]):
                        out[-1] = line  # keep the shorter blank line, e.g. "" over ">"
                    continue
            out.append(line)
        while out and not out[-1].strip(" >"):
            out.pop()
        return "\n".join(out) + "\n" if out else ""


# --------------------------------------------------------------------------------------------
# The renderer

_Action = Callable[[], None]


def _skip() -> None:
    """Sentinel action: leave the element and its children out."""


class _Exit:
    __slots__ = ("action",)

    def __init__(self, action: _Action) -> None:
        self.action = action


class _Renderer:
    def __init__(self) -> None:
        self.out = _Out()
        self.removed: Counter[str] = Counter()
        self.links = 0
        self.images = 0
        self.suppress = 0  # inside <head>: walk (to count what is dropped) but show nothing
        self.pre = 0
        self.list_level = 0
        self.ol_counters: list[int | None] = []  # next number of each open list; None for ul
        self.row_marks: list[int] = []  # `emitted` when each open table row began

    # -- text ---------------------------------------------------------------------------------

    def inline_text(self, text: str) -> None:
        out = self.out
        if self.pre:
            for m in _PRE_SPLIT_RE.finditer(text):
                if m.group(1):
                    out.br()
                elif m.group(2):
                    out.hard(m.group(2).replace("\t", "    ").replace("\f", ""))
                else:
                    self._words(m.group(3))
            return
        if _WS_RE.search(text) is None:  # one word (a table cell, a line of Japanese): no split
            if "\xa0" not in text:
                if text:
                    out.text(text)
            else:
                self._words(text)
            return
        for m in _WS_SPLIT_RE.finditer(text):
            ws = m.group(1)
            if ws is not None:
                out.space("\n" in ws or "\r" in ws)
            else:
                self._words(m.group(2))

    def _words(self, word: str) -> None:
        if "\xa0" not in word:
            self.out.text(word)
            return
        for i, chunk in enumerate(word.split("\xa0")):
            if i:
                self.out.hard(" ")
            if chunk:
                self.out.text(chunk)

    # -- elements -----------------------------------------------------------------------------

    def enter(self, tag: _Node) -> _Action | None:
        """Handle an opening tag.

        Returns the action to run after the children, None to walk the children with no such
        action, or :func:`_skip` to leave the element and its children out.
        """
        name = (tag.name or "").lower()
        action = self._enter(tag, name)
        if action is _skip and name in _VOID and tag.contents:
            # libxml2 does not know that <embed>, <source>, <track>, <wbr>, ... are void and
            # nests what follows inside them: those children are really siblings.
            return None
        return action

    def _enter(self, tag: _Node, name: str) -> _Action | None:
        out = self.out
        if name in _DROP_COUNTED:
            self.removed[name] += 1
            return _skip
        if name in _DROP_SILENT:
            return _skip
        if tag.attrs and _is_hidden(tag):  # hidden by an attribute: most elements have none
            self.removed["hidden"] += 1
            return _skip
        if name == "head":
            self.suppress += 1

            def leave_head() -> None:
                self.suppress -= 1

            return leave_head
        if self.suppress:
            return None
        if name == "br":
            out.br()
            return _skip
        if name == "img":
            self.image(tag)
            return _skip
        if name == "hr":
            out.block(1)
            out.text(_HR)
            out.block(1)
            return _skip
        if name == "a":
            return self.link(tag)
        if name == "form":
            self.removed["form"] += 1
        if name == "p":
            return self.blockish(1 if _tight_paragraph(tag) else 2)
        if name in _PRE:
            return self.preformatted()
        if name in _PARAGRAPH:
            return self.blockish(2)
        if name == "blockquote":
            return self.blockquote()
        if name in _LISTS:
            return self.list_(tag, ordered=name == "ol")
        if name == "li":
            return self.list_item(tag)
        if name in ("dt", "dd"):
            return self.definition(dd=name == "dd")
        if name == "table":
            return self.blockish(1)
        if name == "tr":
            return self.row()
        if name in _CELLS:
            return self.cell()
        if name in _LINE:
            return self.blockish(1)
        if name == "rt":
            out.text("(")
            return lambda: out.text(")")
        return None

    def blockish(self, n: int) -> _Action:
        out = self.out
        out.block(n)
        return lambda: out.block(n)

    def preformatted(self) -> _Action:
        out = self.out
        out.block(2)
        self.pre += 1

        def leave() -> None:
            self.pre -= 1
            out.block(2)

        return leave

    def blockquote(self) -> _Action:
        out = self.out
        out.block(2)
        out.push_indent("> ")

        def leave() -> None:
            out.pop_indent()
            out.block(2)

        return leave

    def open_container(self) -> _Action:
        """Start a table cell or list item: breaks before its first text are ignored, and
        breaks after its last text are dropped when it ends (the parent decides those)."""
        out = self.out
        saved = out.fresh_mark
        start = out.fresh_mark = out.emitted

        def close() -> None:
            if out.emitted != start:
                out.pending_nl = 0
                out.pending_space = False
                out.pending_hard = ""
            out.fresh_mark = saved

        return close

    def list_(self, tag: _Node, *, ordered: bool) -> _Action:
        out = self.out
        nested = self.list_level > 0
        out.block(1 if nested else 2)
        # <ul><ul><li> (a list directly inside a list) is indented like a nested list.
        indented = tag.parent_name.lower() in _LISTS
        if indented:
            out.push_indent("  ")
        self.ol_counters.append(_parse_int(_attr(tag, "start"), 1) if ordered else None)
        self.list_level += 1

        def leave() -> None:
            self.list_level -= 1
            self.ol_counters.pop()
            if indented:
                out.pop_indent()
            out.block(1 if nested else 2)

        return leave

    def list_item(self, tag: _Node) -> _Action:
        out = self.out
        out.block(1)
        number = self.ol_counters[-1] if self.ol_counters else None
        if number is not None:
            value = _attr(tag, "value")
            if value:
                number = _parse_int(value, number)
            marker = f"{number}. "
            self.ol_counters[-1] = number + 1
        else:
            marker = _BULLET
        out.marker = out.prefix() + marker
        out.push_indent("  ")
        close = self.open_container()

        def leave() -> None:
            close()
            out.pop_indent()
            out.marker = None  # an item with no text shows no bullet
            out.block(1)

        return leave

    def definition(self, *, dd: bool) -> _Action:
        out = self.out
        out.block(1)
        if dd:
            out.push_indent("  ")
        close = self.open_container()

        def leave() -> None:
            close()
            if dd:
                out.pop_indent()
            out.block(1)

        return leave

    def row(self) -> _Action:
        out = self.out
        out.block(1)
        self.row_marks.append(out.emitted)

        def leave() -> None:
            self.row_marks.pop()
            out.block(1)

        return leave

    def cell(self) -> _Action:
        out = self.out
        if self.row_marks and self.row_marks[-1] != out.emitted:
            out.pending_sep = True  # an earlier cell of this row showed text
        out.pending_hard = ""
        return self.open_container()

    def image(self, tag: _Node) -> None:
        alt, _, _ = strip_invisible(_attr(tag, "alt").replace("\xa0", " "))
        alt = " ".join(m.group(2) for m in _WS_SPLIT_RE.finditer(alt) if m.group(2))
        if not alt:
            self.removed["img"] += 1
            return
        self.images += 1
        self.out.text(_IMAGE.format(alt[:500]))

    def link(self, tag: _Node) -> _Action | None:
        out = self.out
        shown = link_target(_attr(tag, "href"))
        if shown is None:
            self.removed["javascript-url"] += 1
            return None
        if not shown:
            return None
        capture: list[str] = []
        out.captures.append(capture)

        def leave() -> None:
            for i in range(len(out.captures) - 1, -1, -1):
                if out.captures[i] is capture:
                    del out.captures[i]
                    break
            text = "".join(capture).strip()
            if not text:
                # Invisible in a browser (e.g. an image with no alt): a reader would not see it.
                self.removed["empty-link"] += 1
                return
            self.links += 1
            if not same_target(text, shown):
                out.space()
                out.text(f"({shown})")

        return leave


_INT_RE = re.compile(r"\s*([+-]?\d{1,9})")


def _parse_int(value: str, default: int) -> int:
    m = _INT_RE.match(value)
    return int(m.group(1)) if m else default


def _render(root: _Node, r: _Renderer) -> None:
    """Walk the tree with an explicit stack (no recursion, so any depth is fine)."""
    stack: list[_Node | str | _Leaf | _Exit] = [root]
    # Bound once: the loop runs for every element and text run of the document.
    pop, push, extend, inline_text, enter = stack.pop, stack.append, stack.extend, r.inline_text, r.enter
    while stack:
        obj = pop()
        if isinstance(obj, str):
            if not r.suppress:
                inline_text(obj)
        elif isinstance(obj, _Node):
            result = None if obj is root else enter(obj)
            if result is _skip:
                continue
            if result is not None:
                push(_Exit(result))
            extend(reversed(obj.contents))
        elif isinstance(obj, _Exit):
            obj.action()
        elif obj.kind is not None:  # comments and processing instructions; doctypes are not counted
            r.removed[obj.kind] += 1


_TAG_RE = re.compile(r"<[^<>]*>")


def _fallback(text: str) -> str:
    """Last resort when the parser or renderer failed: strip tags and entities, keep lines."""
    stripped = html_lib.unescape(_TAG_RE.sub(" ", text)).replace("\xa0", " ")
    stripped, _, _ = strip_invisible(stripped)
    out: list[str] = []
    for raw in stripped.splitlines():
        line = " ".join(raw.split())
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def html_to_text(untrusted_html: str, *, max_chars: int = 2_000_000) -> HtmlText:
    """Convert an untrusted, already-decoded HTML body to readable plain text. Never raises, but for
    the filter's deadline (:class:`~detox.errors.FilterTimeout`), which must reach the runner.

    Input longer than ``max_chars`` is cut first (counted as ``removed["truncated"]``).
    """
    removed: Counter[str] = Counter()
    try:
        source = untrusted_html if isinstance(untrusted_html, str) else str(untrusted_html)
        if len(source) > max_chars:
            source = source[: max(max_chars, 0)]
            removed["truncated"] += 1
        source, invisible, control = strip_invisible(source)
    except FilterTimeout:  # the filter's deadline: the runner applies on_error, no fallback
        raise
    except Exception:  # noqa: BLE001 - never raise on hostile input
        return HtmlText(text="", links=0, images=0, removed=MappingProxyType({"parse-error": 1}))
    r = _Renderer()
    try:
        _render(_parse_tree(source), r)
        text = r.out.finish()
    except FilterTimeout:
        raise
    except Exception:  # noqa: BLE001 - a parser or renderer bug must not lose the mail
        removed["parse-error"] += 1
        try:
            text = _fallback(source)
        except Exception:  # noqa: BLE001
            text = ""
        return HtmlText(text=text, links=0, images=0, removed=MappingProxyType(dict(removed)))
    removed.update(r.removed)
    invisible += r.out.invisible
    control += r.out.control
    if invisible:
        removed["invisible"] += invisible
    if control:
        removed["control"] += control
    return HtmlText(text=text, links=r.links, images=r.images, removed=MappingProxyType(dict(removed)))
