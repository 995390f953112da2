"""PDF attachments: rasterized to an image-only PDF (default) or sanitized in place, in the sandbox.

The work is done by :mod:`detox.sandbox.inside.converters.pdf` in a sandboxed child; this filter only
builds the
arguments, reads the answer back and turns it into a verdict. A file that needs a password is held
(reason ``encrypted``), one over the page or size caps is held (``limit-exceeded``), anything else
that goes wrong raises and the runner holds the part.

Why ``rasterize`` is the default: it is the only mode whose output is proven inert by construction.
A rasterized PDF holds one image per page that detox itself encoded; nothing the sender wrote —
scripts, actions, embedded files, but also fonts, images and content streams, where most PDF reader
exploits live — reaches LGWAN. ``sanitize`` removes every active key we know of and keeps the text
selectable and searchable, the file small and forms fillable, but copies fonts and images unchanged,
so a memory-safety bug in the recipient's reader is still reachable. Turning attachments into
pictures (画像化) is one of the two forms 無害化通信 allows, the stricter one, and it is cheap
here: 0.017 s a page for text and
0.054 s for scanned pages at 150 dpi in-process, 0.036 / 0.083 s through bubblewrap (the child's
start and imports, ~0.3 s a document, included), against 0.042 / 0.057 s for ``pdftoppm -jpeg``
(``bench/pdf_raster.py``). Sanitize is the choice for partners whose PDFs must stay text (a policy
exception, per sender domain or hash, once the policy rules exist) or for forms.

JPEG (quality 85) is the default page encoding: it is about twice as fast as lossless pages (0.017
vs 0.036 s a text page, 0.054 vs 0.085 s a scanned one) and four times smaller on scans (160 KB vs
700 KB a page); 150 dpi text stays legible. On dense text pages the two are about the same size
(~400 KB a Letter page). ``image_format = "png"`` gives lossless pages for drawings where JPEG's
ringing matters.

Rasterizing draws text with the fonts the PDF embeds or, for the many Japanese PDFs that embed none
(MS-Mincho and friends), with a Japanese font installed on the host (fonts-ipaexfont or
fonts-noto-cjk; bubblewrap shows /usr read-only inside). Without one such text is not drawn at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.sandbox.base import Limits
from detox.sandbox.contract import PDF_HELD_REASONS as HELD_REASONS

PDF_TYPES = frozenset({"application/pdf"})
_MIB = 1024 * 1024


class PdfOptions(BaseModel):
    """Converter settings (``[filters.pdf.options]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["sanitize", "rasterize"] = "rasterize"
    dpi: int = Field(default=150, ge=36, le=600)
    max_pages: int = Field(default=100, ge=1, le=100_000)
    max_page_pixels: int = Field(default=36_000_000, ge=10_000, le=500_000_000)
    max_output_bytes: int = Field(default=64 * _MIB, ge=1024)
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(default=85, ge=10, le=95)


def _pdf_name(untrusted_filename: str | None) -> str:
    base = untrusted_filename or "attachment.pdf"
    return base if base.lower().endswith(".pdf") else base + ".pdf"


class PdfFilter(SandboxedFilter[PdfOptions]):
    """Attachments whose bytes are a PDF (libmagic), whatever they were declared as."""

    name: ClassVar[str] = "pdf"
    converter: ClassVar[str] = "pdf"
    converter_reasons: ClassVar[frozenset[str]] = HELD_REASONS
    opens: ClassVar[str] = "PDF attachments"
    reasons: ClassVar[tuple[str, ...]] = ("encrypted", "limit-exceeded")
    notes: ClassVar[tuple[str, ...]] = ("pdf-rasterized", "pdf-sanitized")
    # It claims by the detected type: a PDF declared as text/plain or text/html is still a PDF.
    runs_before: ClassVar[tuple[str, ...]] = ("html", "text-attachment")

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.detected_type in PDF_TYPES

    def sandbox_timeout(self, timeout_s: float) -> float:
        return max(1.0, timeout_s * 0.9)

    def limits(self, call: SandboxCall) -> Limits:
        # The sandbox kills the child before the runner's own deadline fires, so a slow file ends
        # as a SandboxTimeout with its process group gone.
        sandbox = call.ctx.config.sandbox
        return Limits(
            timeout_s=self.sandbox_timeout(call.timeout_s),
            cpu_s=sandbox.cpu_s,
            memory_bytes=sandbox.memory_mb * _MIB,
            max_output_bytes=self.options.max_output_bytes + 4 * _MIB,
        )

    def expected_header(self, call: SandboxCall) -> Mapping[str, object]:
        return {"mode": self.options.mode}

    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        pages, pdf = answer.header.get("pages"), answer.data
        if not (isinstance(pages, int) and pages >= 1) or not pdf.startswith(b"%PDF-"):
            raise self.fault("produced no PDF")
        removed = self.removed_counts(answer.header.get("removed"))
        note = "pdf-sanitized" if self.options.mode == "sanitize" else "pdf-rasterized"
        return Verdict(
            Action.REPLACE,
            output=Output("application/pdf", pdf, _pdf_name(call.part.untrusted_filename)),
            removed=removed,
            notes=(note,),
        )
