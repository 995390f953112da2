"""Extract the readable text of an untrusted RTF document (a body or an attachment).

A small linear tokenizer of our own rather than ``striprtf``: ``striprtf`` 0.0.35 runs a
back-tracking regular expression over the whole document for HYPERLINK fields (seconds for a
few kilobytes of crafted input, growing quadratically), decodes a double-byte pair split by a
source line break (``\\'82`` CRLF ``\\'a0``) as two broken halves, leaves UTF-16 surrogate pairs
from ``\\uN`` unjoined, and does not skip ``\\bin`` data, whose raw bytes can contain braces.
Here:

* ``\\'xx`` bytes are collected and decoded together, so DBCS pairs (``\\'82\\'a0`` → あ) survive,
  with the font's code page (``\\fcharset128`` → cp932, ``\\cpgN``) or, for fonts with the ANSI,
  default or no charset, the document's ``\\ansicpgN`` (a Japanese document that labels a font as
  ANSI but writes Shift_JIS bytes still reads right);
* ``\\uN`` (negative N too) honours the ``\\ucN`` fallback skip count, and surrogate pairs are joined;
* ``\\object``, ``\\objdata``, ``\\pict`` and ``\\bin`` data are dropped and counted (the
  outermost one of a nest counts; ``\\nonshppict``, Word's duplicate of a picture, is not
  counted), hidden text (``\\v``) is dropped and counted as ``hidden``, and field instructions
  (``HYPERLINK``, ``DDEAUTO``, ...) are never shown; a hyperlink shows its text followed by
  ``(URL)`` as in :mod:`detox.text.html`;
* ``\\par``/``\\line`` become line breaks, table cells are joined with `` | `` and empty cells dropped;
* the work is one pass over at most ``max_bytes`` bytes, group nesting is capped and the
  function never raises.

Why one module of about 680 lines: it is one tokenizer and one parser state (group stack, code
pages, skip counts, destinations), read top to bottom as the format is.
"""

from __future__ import annotations

import codecs
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from detox.errors import FilterTimeout
from detox.text.html import link_target, same_target, strip_invisible

__all__ = ["RtfText", "rtf_to_text"]


@dataclass(frozen=True, slots=True)
class RtfText:
    """The text of an RTF document and what was left out of it."""

    text: str
    removed: Mapping[str, int]
    """What was dropped, by kind: ``object``, ``objdata``, ``pict``, ``bin``, ``hidden``, ..."""


_NEWLINES_RE = re.compile("\r\n|[\r\f\u2028\u2029]")
_MAX_DEPTH = 1000
_MAX_TOKENS = 4_000_000  # bounds the time on crafted input (real documents need far fewer)
_MAX_UC = 16
_CELL = "\x1f"  # stands for a cell end until the lines are assembled (controls never survive)

_TOKEN_RE = re.compile(
    rb"\\([a-zA-Z]{1,32})(-?[0-9]{1,10})? ?"  # 1, 2: control word and parameter
    rb"|((?:\\'[0-9a-fA-F]{2})+)"  # 3: a run of \'xx escapes
    rb"|\\([^a-zA-Z'])"  # 4: control symbol (\\ \{ \} \~ \- \_ \* \<newline> ...)
    rb"|(\{+|\}+)"  # 5: group starts or ends
    rb"|[\r\n]+"  # line breaks in the source mean nothing
    rb"|([^\\{}\r\n]+)"  # 6: text
    rb"|\\'?",  # a lone backslash, or \' without two hex digits
    re.S,
)

# Code pages of \fcharsetN (RTF specification); 0 (ANSI), 1 (default) and unknown values use the
# document code page, 2 (symbol fonts) is read as cp1252.
_FCHARSET = {
    2: "cp1252",
    77: "mac_roman",
    78: "shift_jis",
    128: "cp932",
    129: "cp949",
    130: "johab",
    134: "gbk",
    136: "cp950",
    161: "cp1253",
    162: "cp1254",
    163: "cp1258",
    177: "cp1255",
    178: "cp1256",
    186: "cp1257",
    204: "cp1251",
    222: "cp874",
    238: "cp1250",
    254: "cp437",
    255: "cp850",
}
_CODEPAGE_NAMES = {
    932: "cp932",
    10000: "mac_roman",
    10001: "shift_jis",
    20932: "euc_jp",
    50220: "iso2022_jp",
    50221: "iso2022_jp",
    50222: "iso2022_jp",
    51932: "euc_jp",
    65001: "utf-8",
}

_SPECIAL_WORDS = {
    "par": "\n",
    "line": "\n",
    "sect": "\n",
    "page": "\n",
    "row": "\n",
    "nestrow": "\n",
    "cell": _CELL,
    "nestcell": _CELL,
    "tab": "\t",
    "emdash": "\u2014",
    "endash": "\u2013",
    "emspace": " ",
    "enspace": " ",
    "qmspace": " ",
    "bullet": "\u2022",
    "lquote": "\u2018",
    "rquote": "\u2019",
    "ldblquote": "\u201c",
    "rdblquote": "\u201d",
}
_SPECIAL_SYMBOLS = {b"~": " ", b"_": "-", b"\n": "\n", b"\r": "\n", b"\t": "\t"}
_LITERAL_SYMBOLS = frozenset({b"\\", b"{", b"}"})

_COUNTED_DESTINATIONS = frozenset({"pict", "object", "objdata"})
# Destinations without text for a reader (those written with \* are skipped anyway when unknown).
_SKIPPED_DESTINATIONS = frozenset(
    {
        "colortbl",
        "stylesheet",
        "info",
        "filetbl",
        "listtable",
        "listoverridetable",
        "revtbl",
        "rsidtbl",
        "generator",
        "xmlnstbl",
        "themedata",
        "colorschememapping",
        "datastore",
        "latentstyles",
        "pgptbl",
        "pn",
        "pntxta",
        "pntxtb",
        "annotation",
        "atnid",
        "atnauthor",
        "atndate",
        "atnref",
        "atnparent",
        "atntime",
        "atnicn",
        "atrfstart",
        "atrfend",
        "bkmkstart",
        "bkmkend",
        "template",
        "tc",
        "tcn",
        "xe",
        "txe",
        "rxe",
        "private",
        "panose",
        "falt",
        "fname",
        "fontemb",
        "fontfile",
        "userprops",
        "docvar",
        "comment",
        "author",
        "operator",
        "title",
        "subject",
        "keywords",
        "company",
        "category",
        "manager",
        "doccomm",
        "hlinkbase",
        "buptim",
        "creatim",
        "printim",
        "revtim",
        "shpinst",
        "sp",
        "sn",
        "sv",
        "blipuid",
        "picprop",
        "listpicture",
        "htmltag",
        "mhtmltag",
        "fldtype",
        "formfield",
        "datafield",
        "ffname",
        "ffdeftext",
        "ffformat",
        "ffhelptext",
        "ffstattext",
        "ffentrymcr",
        "ffexitmcr",
        "ffl",
        "mmathPr",
        "wgrffmtfilter",
        "xmlopen",
        "xmlclose",
        "xmlattrname",
        "xmlattrvalue",
        "nesttableprops",
        "oldcprops",
        "oldpprops",
        "oldsprops",
        "oldtprops",
        "protusertbl",
        "passwordhash",
        "password",
        "writereservation",
        "writereservhash",
        "ebcstart",
        "ebcend",
    }
)

_HANDLED_WORDS = frozenset(
    w.encode("ascii")
    for w in (
        *_SPECIAL_WORDS,
        *_COUNTED_DESTINATIONS,
        *_SKIPPED_DESTINATIONS,
        "u",
        "uc",
        "f",
        "fcharset",
        "cpg",
        "ansicpg",
        "mac",
        "pc",
        "pca",
        "deff",
        "plain",
        "v",
        "nonshppict",
        "fonttbl",
        "field",
        "fldinst",
        "fldrslt",
        "upr",
        "ud",
        "bin",
    )
)

_TEXT, _SKIP, _FONTTBL, _FLDINST, _UPR = range(5)


class _Field:
    __slots__ = ("instruction", "result_start")

    def __init__(self) -> None:
        self.instruction: list[str] = []
        self.result_start: int | None = None


class _State:
    __slots__ = ("counted", "dest", "field", "field_owner", "font", "hidden", "star", "uc")

    def __init__(self) -> None:
        self.uc = 1
        self.dest = _TEXT
        self.font: int | None = None
        self.hidden = False
        self.counted = False  # inside a dropped object/picture: nested ones are not counted again
        self.field: _Field | None = None
        self.field_owner = False
        self.star = False

    def child(self) -> _State:
        new = _State()
        new.uc = self.uc
        new.dest = self.dest
        new.font = self.font
        new.hidden = self.hidden
        new.counted = self.counted
        new.field = self.field
        return new


def _codec(name: str, default: str) -> str:
    try:
        return codecs.lookup(name).name
    except LookupError:
        return default


class _Parser:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.removed: Counter[str] = Counter()
        self.out: list[str] = []
        self.st = _State()
        self.owned = True  # False while a new group still shares its parent's state object
        self.stack: list[tuple[_State, bool]] = []
        self.overflow = 0
        self.doc_codec = "cp1252"
        self.have_ansicpg = False
        self.fonts: dict[int, str] = {}
        self.deff: int | None = None
        self.font_def: int | None = None
        self.pending = bytearray()
        self.pending_codec = "cp1252"
        self.skip = 0  # \uN fallback characters still to skip
        self.hi_surrogate = 0  # a \uN high surrogate waiting for its low half
        self.truncated = False
        self.hidden_run = False
        self.invisible = 0
        self.control = 0

    # -- output -----------------------------------------------------------------------------

    def codec(self) -> str:
        font = self.st.font if self.st.font is not None else self.deff
        if font is not None:
            return self.fonts.get(font, self.doc_codec)
        return self.doc_codec

    def add_bytes(self, raw: bytes) -> None:
        if self.st.dest not in (_TEXT, _FLDINST):
            return
        codec = self.codec()
        if self.pending and codec != self.pending_codec:
            self.flush()
        self.pending_codec = codec
        self.pending += raw

    def flush(self) -> None:
        if self.pending:
            text = bytes(self.pending).decode(self.pending_codec, errors="replace")
            self.pending.clear()
            self.emit(text)

    def emit(self, text: str, *, trusted: bool = False) -> None:
        """Send decoded text to the current destination; ``trusted`` text is our own."""
        if self.hi_surrogate:  # a high surrogate not followed by its low half
            self.hi_surrogate = 0
            self.emit("\ufffd")
        st = self.st
        if st.dest == _FLDINST:
            if st.field is not None and len(st.field.instruction) < 256:
                st.field.instruction.append(text)
            return
        if st.dest != _TEXT:
            return
        if st.hidden:
            if not self.hidden_run:
                self.removed["hidden"] += 1
                self.hidden_run = True
            return
        self.hidden_run = False
        if trusted:
            self.out.append(text)
            return
        text, inv, ctl = strip_invisible(_NEWLINES_RE.sub("\n", text))
        self.invisible += inv
        self.control += ctl
        if text:
            self.out.append(text)

    # -- groups ----------------------------------------------------------------------------

    def open_groups(self, count: int) -> None:
        self.flush()
        self.skip = 0
        self.hi_surrogate = 0
        while count and len(self.stack) < _MAX_DEPTH:
            self.stack.append((self.st, self.owned))
            self.owned = False  # copied on first change (most groups change nothing we track)
            count -= 1
        self.overflow += count  # deeper groups share their parent's state

    def close_groups(self, count: int) -> bool:
        """Returns False when the document group closed."""
        self.flush()
        self.skip = 0
        self.hi_surrogate = 0
        shared = min(count, self.overflow)
        self.overflow -= shared
        count -= shared
        for _ in range(count):
            if not self.stack:
                return True  # a stray "}" before the document group: ignore it
            closing, closing_owned = self.st, self.owned
            self.st, self.owned = self.stack.pop()
            if closing_owned and closing.field_owner and closing.field is not None:
                self.finish_field(closing.field)
            if not self.stack:
                return False
        return True

    def finish_field(self, field: _Field) -> None:
        if field.result_start is None:
            return
        url = _hyperlink("".join(field.instruction))
        if url is None:
            return
        shown = link_target(url)
        if shown is None:
            self.removed["javascript-url"] += 1
            return
        if not shown:
            return
        result = self.out[field.result_start :]
        text = "".join(result[:64]).strip() if len(result) <= 64 else "\x00"
        if text and not same_target(text, shown) and self.st.dest == _TEXT and not self.st.hidden:
            self.out.append(f" ({shown})")

    # -- control words ------------------------------------------------------------------------

    def own(self) -> _State:
        """The current group's state, copied from the parent's before its first change."""
        if not self.owned:
            self.st = self.st.child()
            self.owned = True
        return self.st

    def control_word(self, word: str, param: int | None) -> None:
        star = self.st.star
        if star:
            self.st.star = False  # set by \\*, so this state is already the group's own
        if self.skip:
            self.skip -= 1
            return
        if word in _SPECIAL_WORDS:
            self.emit(_SPECIAL_WORDS[word], trusted=True)
            return
        if word == "u":
            if param is not None:
                self.unicode(param + 0x10000 if param < 0 else param)
                self.skip = self.st.uc
            return
        st = self.own()
        if word == "uc":
            st.uc = max(0, min(param if param is not None else 1, _MAX_UC))
        elif word == "f":
            if st.dest == _FONTTBL:
                self.font_def = param
            else:
                st.font = param
        elif word == "fcharset":
            if st.dest == _FONTTBL and self.font_def is not None and param is not None:
                if param in _FCHARSET:
                    self.fonts[self.font_def] = _FCHARSET[param]
                else:
                    self.fonts.pop(self.font_def, None)
        elif word == "cpg":
            if st.dest == _FONTTBL and self.font_def is not None and param is not None:
                cp = _CODEPAGE_NAMES.get(param, f"cp{param}")
                self.fonts[self.font_def] = _codec(cp, self.doc_codec)
        elif word == "ansicpg":
            if param is not None:
                cp = _CODEPAGE_NAMES.get(param, f"cp{param}")
                self.doc_codec = _codec(cp, self.doc_codec)
                self.have_ansicpg = True
        elif word in ("mac", "pc", "pca"):
            if not self.have_ansicpg:
                self.doc_codec = {"mac": "mac_roman", "pc": "cp437", "pca": "cp850"}[word]
        elif word == "deff":
            self.deff = param
        elif word == "plain":
            st.font = None
            st.hidden = False
        elif word == "v":
            st.hidden = param != 0
            if not st.hidden:
                self.hidden_run = False
        elif word in _COUNTED_DESTINATIONS:
            if not st.counted:
                self.removed[word] += 1
            st.counted = True
            st.dest = _SKIP
        elif word == "nonshppict":
            st.counted = True  # Word's second copy of a picture: drop, count once (as pict)
            st.dest = _SKIP
        elif word == "fonttbl":
            st.dest = _FONTTBL
        elif word == "field":
            st.field = _Field()
            st.field_owner = True
        elif word == "fldinst":
            st.dest = _FLDINST if st.dest == _TEXT and st.field is not None else _SKIP
        elif word == "fldrslt":
            if st.field is not None and st.dest == _TEXT:
                st.field.result_start = len(self.out)
        elif word == "upr":
            if st.dest == _TEXT:
                st.dest = _UPR  # {\upr{ANSI text}{\*\ud{Unicode text}}}: keep only the \ud copy
        elif word == "ud":
            if st.dest == _UPR:
                st.dest = _TEXT
        elif word in _SKIPPED_DESTINATIONS or star:
            st.dest = _SKIP

    def unicode(self, code: int) -> None:
        """One UTF-16 code unit from \\uN; a surrogate pair arrives as two of them."""
        high, self.hi_surrogate = self.hi_surrogate, 0
        if 0xD800 <= code <= 0xDBFF:
            if high:
                self.emit("\ufffd")
            self.hi_surrogate = code
        elif 0xDC00 <= code <= 0xDFFF:
            self.emit(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)) if high else "\ufffd")
        elif 0 <= code <= 0xFFFF:
            if high:
                self.emit("\ufffd")
            self.emit(chr(code))

    def control_symbol(self, sym: bytes) -> None:
        if sym == b"*":
            self.own().star = True
            return
        if self.skip:
            self.skip -= 1
            return
        if sym in _LITERAL_SYMBOLS:
            self.add_bytes(sym)  # may be the trail byte of a double-byte character
            return
        self.flush()
        special = _SPECIAL_SYMBOLS.get(sym)
        if special is not None:
            self.emit(special, trusted=True)

    # -- main loop ----------------------------------------------------------------------------

    def run(self) -> None:
        data = self.data
        size = len(data)
        pos = 0
        match = _TOKEN_RE.match
        handled = _HANDLED_WORDS
        budget = _MAX_TOKENS
        while pos < size:
            budget -= 1
            if budget < 0:
                self.truncated = True
                break
            m = match(data, pos)
            if m is None:  # cannot happen: the last alternative matches any backslash
                pos += 1
                continue
            pos = m.end()
            kind = m.lastindex
            if kind is None:  # a source line break, or a stray backslash
                continue
            if kind <= 2:  # control word
                word = m.group(1)
                if word not in handled:  # formatting (\b, \fs24, ...): nothing to do
                    if self.skip:
                        self.skip -= 1
                    elif self.st.star:
                        self.st.star = False
                        self.flush()
                        self.st.dest = _SKIP  # an unknown \* destination
                    continue
                self.flush()
                param = m.group(2)
                value = int(param) if param is not None else None
                if word == b"bin":
                    length = max(0, min(value or 0, size - pos))
                    pos += length
                    if not self.st.counted:
                        self.removed["bin"] += 1
                    continue
                self.control_word(word.decode("ascii"), value)
            elif kind == 6:  # text
                text = m.group(6)
                if self.skip:
                    n = min(self.skip, len(text))
                    self.skip -= n
                    text = text[n:]
                if text:
                    self.add_bytes(text)
            elif kind == 3:  # \'xx run
                raw = bytes.fromhex(m.group(3).replace(b"\\'", b"").decode("ascii"))
                if self.skip:
                    n = min(self.skip, len(raw))
                    self.skip -= n
                    raw = raw[n:]
                if raw:
                    self.add_bytes(raw)
            elif kind == 5:  # braces
                brace = m.group(5)
                if brace[:1] == b"{":
                    self.open_groups(len(brace))
                elif not self.close_groups(len(brace)):
                    break  # the document group closed: the rest is not part of it
            else:
                self.control_symbol(m.group(4))
        self.flush()


_HYPERLINK_RE = re.compile(r"\s*HYPERLINK\b(.*)", re.S | re.I)
_FIELD_ARG_RE = re.compile(r'"([^"]*)"|(\S+)')


def _hyperlink(instruction: str) -> str | None:
    """The target of a ``HYPERLINK "url" \\o "tip"`` field instruction, or None."""
    m = _HYPERLINK_RE.match(instruction[:8192])
    if m is None:
        return None
    skip_next = False
    for arg in _FIELD_ARG_RE.finditer(m.group(1)):
        quoted, bare = arg.group(1), arg.group(2) or ""
        if skip_next:
            skip_next = False
            continue
        if quoted is None and bare.startswith("\\"):
            # \l "bookmark" (a place in this document), \o "tooltip", \t "frame", \m, \n, \h
            if bare[1:2].lower() == "l":
                return None
            skip_next = bare[1:2].lower() in ("o", "t")
            continue
        return quoted if quoted is not None else bare
    return None


def _assemble(pieces: list[str]) -> str:
    text = "".join(pieces)
    lines: list[str] = []
    for raw in text.split("\n"):
        if _CELL in raw:
            cells = [cell.strip() for cell in raw.split(_CELL)]
            line = " | ".join(cell for cell in cells if cell)
            if not line:
                continue  # an empty table row
        else:
            line = raw.rstrip()
        if not line.strip():
            if lines and lines[-1]:
                lines.append("")
            continue
        lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def rtf_to_text(untrusted_rtf: bytes, *, max_bytes: int = 20_000_000) -> RtfText:
    """Convert an untrusted RTF document to plain text. Never raises, but for the filter's deadline
    (:class:`~detox.errors.FilterTimeout`), which must reach the runner."""
    removed: Counter[str] = Counter()
    try:
        data = bytes(untrusted_rtf)
        if len(data) > max_bytes:
            data = data[: max(max_bytes, 0)]
            removed["truncated"] += 1
        parser = _Parser(data)
        try:
            parser.run()
        except FilterTimeout:  # the filter's deadline: the runner applies on_error
            raise
        except Exception:  # noqa: BLE001 - keep what was read before the failure
            removed["parse-error"] += 1
        removed.update(parser.removed)
        if parser.truncated:
            removed["truncated"] = 1
        if parser.invisible:
            removed["invisible"] += parser.invisible
        if parser.control:
            removed["control"] += parser.control
        text = _assemble(parser.out)
    except FilterTimeout:
        raise
    except Exception:  # noqa: BLE001 - hostile input must not stop the mail
        removed["parse-error"] += 1
        text = ""
    return RtfText(text=text, removed=MappingProxyType(dict(removed)))
