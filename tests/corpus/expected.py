"""Loaders for the expected decoded texts that ship with the third-party corpus, and the token logic
used to compare them with detox's output.

Three oracles are used, all written by other projects for their own parsers:

* **stalwart** — ``stalwart-mail-parser/<set>/<n>.json`` next to ``<n>.eml`` and
  ``zbateson-mmp/stalwart-json/<m>.txt.json`` for the Hunny samples: a full parse whose
  ``text_body`` / ``html_body`` list the parts a reader shows; each such part's body is
  ``{"Text": str}`` or ``{"Html": str}`` (already decoded to Unicode).
* **mime4j** — ``<name>_decoded.xml`` lists each part's header fields and names the file holding
  its body, ``<name>_decoded_<path>.txt``. Those files are transfer-decoded *bytes*; the charset
  comes from the part's ``Content-Type`` field in the XML.
* **zbateson** — ``zbateson-mmp/expected-files/*.txt`` are the expected body (and some attachment)
  texts; which mail expects which file is written in zbateson's EmailFunctionalTest.php (not in the
  corpus), so that mapping is restated below. The files are ISO-8859-1 (the test converts them with
  ``mb_convert_encoding(..., 'ISO-8859-1')``) and compared ignoring whitespace.

Texts are compared by *tokens*: runs of 4+ CJK/kana characters and words of 6+ letters of any
other script, after NFKC. See :func:`tokens`.
"""

from __future__ import annotations

import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from html.parser import HTMLParser
from pathlib import Path

# -- tokens -------------------------------------------------------------------------------------

# Han (incl. ext. A and compatibility ideographs), hiragana, katakana (incl. ー and the phonetic
# extensions), 々〆〇 and Hangul syllables. Halfwidth katakana become fullwidth under NFKC first.
_CJK_CLASS = (
    "\u3005-\u3007\u3041-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
)
CJK_RUN = re.compile(f"[{_CJK_CLASS}]{{4,}}")
# A "word": letters and combining marks only (no digits, no underscore), not CJK.
WORD = re.compile(rf"(?:(?![{_CJK_CLASS}])[^\W\d_])+")
MIN_WORD = 6


def normalise(text: str) -> str:
    """NFKC, and every run of whitespace as one space."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def tokens(text: str) -> list[str]:
    """The comparison tokens of ``text`` (duplicates kept, in order)."""
    flat = normalise(text)
    found = CJK_RUN.findall(flat)
    found += [w for w in WORD.findall(flat) if len(w) >= MIN_WORD]
    return found


def is_cjk_token(token: str) -> bool:
    return CJK_RUN.fullmatch(token) is not None


@dataclass(frozen=True)
class Survival:
    """How many of the expected tokens were found in the haystack."""

    expected: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def total(self) -> int:
        return len(self.expected)

    @property
    def fraction(self) -> float:
        return 1.0 - len(self.missing) / len(self.expected) if self.expected else 1.0

    def describe(self, limit: int = 15) -> str:
        shown = ", ".join(repr(t) for t in self.missing[:limit])
        more = f" (+{len(self.missing) - limit} more)" if len(self.missing) > limit else ""
        return f"{self.total - len(self.missing)}/{self.total} tokens found; missing: {shown}{more}"


def survival(expected_tokens: Iterable[str], haystack: str) -> Survival:
    """Which expected tokens occur in ``haystack`` (normalised like the tokens).

    CJK runs are also looked for with the haystack's whitespace removed: a converter may wrap a
    long Japanese line (Japanese has no spaces, so a line break inside a run is layout, not text).
    """
    expected = tuple(dict.fromkeys(expected_tokens))  # unique, in order
    flat = normalise(haystack)
    solid = "".join(flat.split())
    missing = tuple(t for t in expected if t not in flat and not (is_cjk_token(t) and t in solid))
    return Survival(expected, missing)


# -- HTML → text chunks (independent of detox's converter) -----------------------------------------


class _Chunks(HTMLParser):
    SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.chunks.append(data)


def html_chunks(markup: str) -> list[str]:
    """The visible text of ``markup`` as separate chunks (one per run of text between tags).

    Tokens are taken per chunk, so a token never spans a tag boundary that a converter might turn
    into a line break.
    """
    parser = _Chunks()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # malformed markup: whatever was collected so far
        pass
    return parser.chunks


def html_tokens(markup: str) -> list[str]:
    return [t for chunk in html_chunks(markup) for t in tokens(chunk)]


# -- stalwart ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedBody:
    """One reader-visible body of a message, as an alternative set: ``text`` and/or ``html``.

    detox keeps one alternative of a multipart/alternative (the plain one if it carries the HTML's
    content, else the HTML converted), so a body passes when *either* alternative's tokens survive.
    """

    source: str  # which oracle file
    text_tokens: tuple[str, ...]
    html_tokens: tuple[str, ...]


def stalwart_json_for(mail: Path) -> Path | None:
    """The Stalwart parse of ``mail``, if the corpus has one."""
    if mail.parent.parent.name == "stalwart-mail-parser":
        candidate = mail.with_suffix(".json")
    elif mail.parent.name == "zbateson-mmp":
        candidate = mail.parent / "stalwart-json" / (mail.name + ".json")
    else:
        return None
    return candidate if candidate.is_file() else None


def _stalwart_part_tokens(part: dict[str, object]) -> tuple[list[str], bool]:
    """(tokens, is_html) of one Stalwart part; no tokens for binary/multipart/message bodies."""
    body = part.get("body")
    if isinstance(body, dict):
        if isinstance(body.get("Text"), str):
            return tokens(body["Text"]), False
        if isinstance(body.get("Html"), str):
            return html_tokens(body["Html"]), True
    return [], False


def load_stalwart(json_path: Path) -> ExpectedBody:
    """The top-level message's text_body and html_body (nested messages are left out)."""
    data = json.loads(json_path.read_text(encoding="utf-8"))
    parts = data["parts"]

    def collect(indexes: list[int] | None) -> tuple[str, ...]:
        out: list[str] = []
        for index in indexes or ():
            found, _ = _stalwart_part_tokens(parts[index])
            out.extend(found)
        return tuple(out)

    return ExpectedBody(str(json_path), collect(data.get("text_body")), collect(data.get("html_body")))


# -- mime4j ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mime4jText:
    """One text body mime4j decoded, with the header fields of its part."""

    file: Path
    content_type: str
    charset: str | None
    filename: str | None
    disposition: str
    in_forwarded: bool  # inside a message/rfc822 (or a digest entry)
    raw: bytes

    @property
    def text(self) -> str:
        """Decoded with the declared charset (US-ASCII if none); undecodable bytes become U+FFFD,
        which no token can contain, so a wrong label only removes tokens, never invents them."""
        codec = (self.charset or "us-ascii").strip().lower()
        try:
            return self.raw.decode(codec, "replace")
        except LookupError:
            return self.raw.decode("us-ascii", "replace")

    @property
    def expected_tokens(self) -> list[str]:
        if self.content_type == "text/html":
            return html_tokens(self.text)
        return tokens(self.text)


def mime4j_xml_for(mail: Path) -> Path | None:
    if mail.parent.parent.name != "mime4j":
        return None
    candidate = mail.with_name(mail.stem + "_decoded.xml")
    return candidate if candidate.is_file() else None


def _fields(header: ET.Element | None) -> Message:
    raw = (
        "".join((f.text or "").strip("\n") + "\n" for f in header.iter("field")) if header is not None else ""
    )
    return HeaderParser().parsestr(raw + "\n")


def load_mime4j(xml_path: Path) -> list[Mime4jText]:
    root = ET.parse(xml_path).getroot()
    out: list[Mime4jText] = []

    def walk(node: ET.Element, messages: int) -> None:
        header = node.find("header")
        for child in node:
            if child.tag == "text-body":
                fields = _fields(header)
                declared = fields.get("content-type") is not None
                name = child.get("name") or ""
                out.append(
                    Mime4jText(
                        file=xml_path.parent / name,
                        content_type=fields.get_content_type() if declared else "text/plain",
                        charset=fields.get_param("charset") if declared else None,  # type: ignore[arg-type]
                        filename=fields.get_filename(),
                        disposition=(fields.get("content-disposition") or "").split(";")[0].strip().lower(),
                        in_forwarded=messages > 1,
                        raw=(xml_path.parent / name).read_bytes(),
                    )
                )
            elif child.tag == "message":
                walk(child, messages + 1)
            elif child.tag in ("multipart", "body-part"):
                walk(child, messages)

    walk(root, 1)
    return out


# -- zbateson ------------------------------------------------------------------------------------

# From zbateson/mail-mime-parser tests/MailMimeParser/IntegrationTests/EmailFunctionalTest.php
# (runEmailTest props 'text' / 'html'): mail stem -> (expected text body file, expected html body file).
# Mails whose test has neither (m0012, m0013, m0022, m0024, m1013, m2008, m3001, m3003, m3004,
# m4006-m4009, invalid-charset) are absent; m1011 (UTF-7) is commented out upstream, so absent too.
# m1010 is declared with the wrong charset upstream (the test forces ISO-8859-1): kept, because
# detox's charset detection is supposed to cope with exactly that.
_H, _T = "HasenundFrosche.txt", "hareandtortoise.txt"
ZBATESON_BODIES: dict[str, tuple[str | None, str | None]] = {
    **{f"m00{n:02d}": (_H, None) for n in range(1, 11)},
    "m0011": (_T, None),
    **{f"m00{n}": (_T, _T) for n in (14, 15, 16, 17, 19, 20)},
    "m0018": (_T, None),
    "m0021": (_T, None),
    "m0023": (_H, None),
    "m1001": (_H, None),
    "m1002": (_H, _H),
    "m1003": (_H, None),
    "m1004": (_H, _H),
    "m1005": (None, _H),
    "m1006": (None, _H),
    "m1007": (_T, None),
    "m1008": (_T, None),
    "m1009": (_T, None),
    "m1010": (_H, None),
    "m1012": (_H, None),
    "m1014": (_T, None),
    "m1015": (_T, None),
    "m1016": (_T, None),
    "m2001": (_H, None),
    "m2002": (_H, _H),
    **{f"m20{n:02d}": (None, _H) for n in (3, 4, 5, 6, 7, 9)},
    "m2010": (_T, None),
    "m2011": (_H, None),
    "m2012": (_H, None),
    "m2013": (_H, None),
    "m2014": (_H, None),
    "m2015": (_H, None),
    "m2016": (_T, None),
    "m3002": (_H, None),
    "m3006": (_T, None),
    "m3007": (_T, None),
    "m4001": (_H, None),
    "m4002": (_T, None),
    "m4003": (_T, _T),
    "m4004": (None, _H),
    "m4005": (_T, None),
    "github-102-01": (_H, None),
    "github-102-02": (_H, None),
    "github-115": (_T, None),
}
# Second text streams and text attachments that the upstream test compares with a file.
ZBATESON_ATTACHMENTS: dict[str, tuple[str, ...]] = {
    "m1015": (_H,),
    "m1016": ("farmerandstork.txt",),
    "m2013": ("farmerandstork.txt",),
    "m0022": ("aaa.txt",),
    "m3006": ("abc.txt",),
}


def zbateson_file_tokens(corpus_mail_dir: Path, name: str) -> list[str]:
    data = (corpus_mail_dir / "zbateson-mmp" / "expected-files" / name).read_bytes()
    return tokens(data.decode("iso-8859-1"))


def load_zbateson(mail: Path) -> ExpectedBody | None:
    if mail.parent.name != "zbateson-mmp" or mail.stem not in ZBATESON_BODIES:
        return None
    text_file, html_file = ZBATESON_BODIES[mail.stem]
    root = mail.parent.parent
    # The upstream "html" check strips the tags and compares with the same plain file.
    text = tuple(zbateson_file_tokens(root, text_file)) if text_file else ()
    html = tuple(zbateson_file_tokens(root, html_file)) if html_file else ()
    return ExpectedBody(f"zbateson expected-files ({text_file or html_file})", text, html)
