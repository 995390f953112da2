"""Body and text filters: text/plain, text/html, RTF bodies, and text/csv attachments.

Every output is freshly decoded text: the bytes the sender wrote never reach LGWAN as-is.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from detox.filters.base import Filter, FilterContext, NoOptions
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.text.charset import Decoded, decode_body
from detox.text.enriched import enriched_to_text, richtext_to_text
from detox.text.html import html_to_text, strip_invisible
from detox.text.rtf import rtf_to_text
from detox.text.urls import defang_urls

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
RTF_TYPES = frozenset({"text/rtf", "application/rtf"})
ENRICHED_TYPES = frozenset({"text/enriched", "text/richtext"})
TEXT_ATTACHMENT_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "text/comma-separated-values",
        # Bounce and receipt reports: text by construction.
        "message/delivery-status",
        "message/global-delivery-status",
        "message/disposition-notification",
        "text/rfc822-headers",
    }
)
# Signatures of binary containers that are never text, whatever charset guessing says.
BINARY_SIGNATURES = (
    b"MZ",
    b"\x7fELF",
    b"PK\x03\x04",
    b"%PDF-",
    b"\xd0\xcf\x11\xe0",
    b"\x89PNG",
    b"GIF8",
    b"\xff\xd8\xff",
    b"Rar!",
    b"7z\xbc\xaf",
    b"\x1f\x8b",
)
# Names a text attachment may keep: nothing Windows or a browser executes or renders.
_TEXT_EXTENSIONS = frozenset({"txt", "text", "csv", "tsv", "log", "md", "dat", "prn"})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CONTROL_BYTES = bytes(b for b in range(0x80) if _CONTROL.match(chr(b)))  # the same, for ASCII text


def _looks_textual(part: Part, decoded: Decoded) -> bool:
    """Text, not a binary file: no NULs (UTF-16/32 aside), no container signature, hardly any
    control characters. libmagic is not asked: it calls CP932 text a "DOS executable (COM)".
    """
    payload, text = part.payload, decoded.text
    wide = decoded.charset.replace("_", "-").startswith(("utf-16", "utf-32"))
    if (b"\x00" in payload and not wide) or payload.startswith(BINARY_SIGNATURES):
        return False
    sample = text[:65536]
    if sample.isascii():  # counted by deleting them from the bytes: no list of matches to build
        ascii_bytes = sample.encode("ascii")
        controls = len(ascii_bytes) - len(ascii_bytes.translate(None, _CONTROL_BYTES))
    else:
        controls = len(_CONTROL.findall(sample))
    return controls <= len(sample) // 50


def _text_name(untrusted_filename: str | None, suffix: str) -> str:
    base = untrusted_filename or "attachment"
    return base if base.lower().endswith(suffix) else base + suffix


class PlainFilter(Filter[NoOptions]):
    """text/plain body parts: decoded to Unicode (label, then detection)."""

    name: ClassVar[str] = "plain"
    reasons: ClassVar[tuple[str, ...]] = ("not-text",)

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.BODY and part.declared_type == "text/plain"

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        decoded = decode_body(part.payload, part.charset_label)
        if not _looks_textual(part, decoded):
            # e.g. an Outlook .msg pasted in as the body: a binary file is not text to show.
            return Verdict(Action.HOLD, reason="not-text")
        return Verdict(Action.TEXT, text=decoded.text, charset=decoded.charset)


class EnrichedFilter(Filter[NoOptions]):
    """text/enriched and text/richtext bodies: formatting commands dropped, the text kept."""

    name: ClassVar[str] = "enriched"
    notes: ClassVar[tuple[str, ...]] = ("enriched-converted",)

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.BODY and part.declared_type in ENRICHED_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        decoded = decode_body(part.payload, part.charset_label)
        convert = richtext_to_text if part.declared_type == "text/richtext" else enriched_to_text
        return Verdict(
            Action.TEXT, text=convert(decoded.text), notes=("enriched-converted",), charset=decoded.charset
        )


class HtmlFilter(Filter[NoOptions]):
    """text/html: converted to readable text. Body parts join the body; attachments become .txt."""

    name: ClassVar[str] = "html"
    notes: ClassVar[tuple[str, ...]] = ("html-attachment-converted", "html-converted", "urls-defanged")

    def applies_to(self, part: Part) -> bool:
        return part.declared_type in HTML_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        decoded = decode_body(part.payload, part.charset_label, html=True)
        converted = html_to_text(decoded.text, max_chars=ctx.config.limits.max_text_chars)
        removed = {k: v for k, v in converted.removed.items() if v}
        if part.role is Role.BODY:
            return Verdict(
                Action.TEXT,
                text=converted.text,
                removed=removed,
                notes=("html-converted",),
                charset=decoded.charset,
            )
        # A converted attachment is read like the body, so its links are made safe the same way.
        text, notes = converted.text, ["html-attachment-converted"]
        if ctx.defang_urls:
            defanged = defang_urls(text)
            text = defanged.text
            notes.extend(["urls-defanged"] * defanged.count)
        data = text.encode("utf-8")
        return Verdict(
            Action.REPLACE,
            output=Output("text/plain", data, _text_name(part.untrusted_filename, ".txt"), "utf-8"),
            removed=removed,
            notes=tuple(notes),
            charset=decoded.charset,
        )


class RtfFilter(Filter[NoOptions]):
    """RTF bodies (text/rtf): the text only; objects and pictures never pass."""

    name: ClassVar[str] = "rtf"
    notes: ClassVar[tuple[str, ...]] = ("rtf-converted",)

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.BODY and part.declared_type in RTF_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        converted = rtf_to_text(part.payload)
        removed = {k: v for k, v in converted.removed.items() if v}
        return Verdict(Action.TEXT, text=converted.text, removed=removed, notes=("rtf-converted",))


class TextAttachmentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)


class TextAttachmentFilter(Filter[TextAttachmentOptions]):
    """text/plain and text/csv attachments: re-encoded as UTF-8 when the bytes really are text."""

    name: ClassVar[str] = "text-attachment"
    reasons: ClassVar[tuple[str, ...]] = ("limit-exceeded", "not-text")
    notes: ClassVar[tuple[str, ...]] = ("text-reencoded",)
    # Text is inert: already-UTF-8 input re-encodes to the same bytes, and that is fine.
    may_pass_unchanged: ClassVar[bool] = True

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.declared_type in TEXT_ATTACHMENT_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        if part.size > self.options.max_bytes:
            return Verdict(Action.HOLD, reason="limit-exceeded")
        decoded = decode_body(part.payload, part.charset_label)
        if not _looks_textual(part, decoded):
            return Verdict(Action.HOLD, reason="not-text")
        # Up to 2 % control characters pass _looks_textual; like the body's, they are removed, and so
        # are zero-width and bidi characters (a U+202E makes the reader see text other than what is there).
        text, invisible, control = strip_invisible(decoded.text)
        data = text.encode("utf-8")
        is_csv = part.declared_type in ("text/csv", "text/comma-separated-values")
        ctype = "text/csv" if is_csv else "text/plain"
        suffix = ".csv" if is_csv else ".txt"
        name = part.untrusted_filename or f"attachment{suffix}"
        if part.extension not in _TEXT_EXTENSIONS:
            # A script declared as text/plain (run.vbs, setup.bat, a.hta) is text, but Windows runs it
            # by its name on a double click: it crosses as run.vbs.txt.
            name += suffix
        return Verdict(
            Action.REPLACE,
            output=Output(ctype, data, name, "utf-8"),
            removed={k: v for k, v in (("invisible", invisible), ("control", control)) if v},
            notes=("text-reencoded",),
            charset=decoded.charset,
        )
