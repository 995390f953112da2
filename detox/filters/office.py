"""Office attachments: OOXML rebuilt without macros, embeddings and external links, in the sandbox.

The filter claims an attachment by what libmagic found in its bytes (``part.detected_type``):

* OOXML (``application/vnd.openxmlformats-officedocument.*`` and the macro-enabled
  ``application/vnd.ms-*.macroEnabled.12`` types): rebuilt by
  :mod:`detox.sandbox.inside.converters.office` in the
  sandbox, which removes VBA projects, Excel 4 macro sheets, ActiveX, OLE embeddings, DDE, external
  relationships other than hyperlinks, ribbon customizations... (its docstring has the list) and turns
  macro-enabled types into the plain ones. The output is the new package, named with the plain
  extension (``report.docm`` → ``report.docx``).
* ``application/zip`` or ``application/octet-stream`` only when the name has an OOXML extension
  (.docx, .xlsm, .pptx...): libmagic names an OOXML package only when its first members are in the
  usual order. The bytes are not opened here to check (this process does not parse hostile files);
  the converter refuses what is not an OOXML package, and the part is held. A zip without an Office
  extension is left to the archive filter.
* Legacy Office (``application/msword``, ``application/vnd.ms-excel``,
  ``application/vnd.ms-powerpoint``; an OLE compound file, or unidentified bytes, with a
  .doc/.xls/.ppt-family or OOXML extension) and ``application/encrypted`` (libmagic's "CDFV2
  Encrypted": an Office file with a password): the sandboxed converter looks at the OLE file first
  and answers ``encrypted`` (MS-OFFCRYPTO streams, Word's fEncrypted flag, Excel's FILEPASS record,
  PowerPoint's encrypted CurrentUser token: held) or which application wrote it, with an inventory of
  what cannot survive the conversion (VBA projects, Excel 4 macro sheets, embedded OLE objects). A
  Word, Excel or PowerPoint 97-2003 file is then converted to PDF by LibreOffice, resident and
  sandboxed (:mod:`detox.sandbox.libreoffice`; only that application's import filters are allowed,
  macros never run, links are never updated), and that PDF is rasterized by the sandboxed PDF
  converter into an image-only PDF named ``<stem>.pdf`` (note ``office-rasterized``). What leaves is
  pictures of the pages and nothing the sender wrote. Another OLE file with an Office name is held as
  ``unsupported-type``; so is a file LibreOffice's type detection does not find to be of the expected
  format. ``legacy = "hold"``, or LibreOffice (soffice, or ``uno`` for the system Python) missing: held
  as ``legacy-office``.
* RTF attachments (``text/rtf``, ``application/rtf``): the same LibreOffice → PDF → pictures path, with
  the RTF import filter only; RTF objects (``\\object``/``\\objdata``) never pass, as nothing but
  page pictures does. RTF bodies are the rtf filter's.
* Not claimed: OneNote, Visio, OpenDocument and everything else (held as unsupported by the runner,
  or claimed by another filter). An Excel binary workbook (xlsb) is claimed as OOXML and answered
  ``unsupported-type`` by the converter: its parts are binary records that are not rebuilt.

Hyperlinks: with ``hyperlinks = "auto"`` (the default) they follow the mail body's URL policy: when
the body's URLs are defanged (``urls.defang``, the sender's domain not exempt), an http(s)/mailto
hyperlink loses its click (the relationship goes, the text the reader sees stays), as PDF sanitize
does with URI actions; from an exempt sender they stay clickable. ``"keep"`` and ``"unlink"`` force
either. Hyperlinks to anything but http(s)/mailto (file:, UNC paths, ms-*: handlers...) are always
removed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from detox.errors import FilterError
from detox.filters.base import FilterContext
from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.sandbox.base import Limits
from detox.sandbox.contract import MAX_RESULT_HEADER_BYTES as MAX_HEADER_BYTES
from detox.sandbox.contract import OFFICE_HELD_REASONS as HELD_REASONS
from detox.sandbox.contract import OFFICE_OUTPUT_TYPES as OUTPUT_TYPES
from detox.sandbox.contract import PDF_DEFAULTS, PDF_HELD_REASONS
from detox.sandbox.contract import RESULT_PREFIX_BYTES as PREFIX_BYTES
from detox.sandbox.libreoffice import (
    DEFAULT_PYTHON,
    FILTERS,
    OfficeSettings,
    instance_for,
    unavailable_reason,
)

log = logging.getLogger(__name__)

_MIB = 1024 * 1024

OOXML_TYPE_PREFIX = "application/vnd.openxmlformats-officedocument."
MACRO_ENABLED_TYPES = frozenset(
    {
        "application/vnd.ms-word.document.macroenabled.12",
        "application/vnd.ms-word.template.macroenabled.12",
        "application/vnd.ms-excel.sheet.macroenabled.12",
        "application/vnd.ms-excel.template.macroenabled.12",
        "application/vnd.ms-excel.addin.macroenabled.12",
        "application/vnd.ms-excel.sheet.binary.macroenabled.12",
        "application/vnd.ms-powerpoint.presentation.macroenabled.12",
        "application/vnd.ms-powerpoint.slideshow.macroenabled.12",
        "application/vnd.ms-powerpoint.template.macroenabled.12",
        "application/vnd.ms-powerpoint.addin.macroenabled.12",
    }
)
# Detected types that say "some container" without naming Office: claimed by extension only.
GENERIC_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/octet-stream"})
LEGACY_TYPES = frozenset({"application/msword", "application/vnd.ms-excel", "application/vnd.ms-powerpoint"})
OLE_TYPES = frozenset({"application/x-ole-storage", "application/cdfv2", "application/vnd.ms-office"})
ENCRYPTED_TYPES = frozenset({"application/encrypted"})
RTF_TYPES = frozenset({"text/rtf", "application/rtf"})

OOXML_EXTENSIONS = frozenset(
    {
        "docx", "docm", "dotx", "dotm",
        "xlsx", "xlsm", "xltx", "xltm", "xlam", "xlsb",
        "pptx", "pptm", "potx", "potm", "ppsx", "ppsm", "ppam",
    }
)  # fmt: skip
LEGACY_EXTENSIONS = frozenset({"doc", "dot", "xls", "xlt", "xla", "ppt", "pps", "pot"})
_OFFICE_EXTENSIONS = OOXML_EXTENSIONS | LEGACY_EXTENSIONS | {"rtf"}

_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_END_OF_DIRECTORY = b"PK\x05\x06"


class OfficeOptions(BaseModel):
    """Converter settings (``[filters.office.options]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_members: int = Field(default=5000, ge=1, le=100_000)
    max_total_bytes: int = Field(default=256 * _MIB, ge=_MIB, le=4096 * _MIB)  # decompressed
    max_xml_bytes: int = Field(default=64 * _MIB, ge=64 * 1024, le=1024 * _MIB)  # one XML part
    max_ratio: int = Field(default=200, ge=10, le=10_000)  # for members over 1 MiB
    max_output_bytes: int = Field(default=128 * _MIB, ge=64 * 1024, le=4096 * _MIB)
    # auto: follow the body's URL defanging (unlink when it defangs); keep / unlink: always.
    hyperlinks: Literal["auto", "keep", "unlink"] = "auto"
    # Legacy Word/Excel/PowerPoint 97-2003 and RTF: "convert" (LibreOffice → PDF → page pictures) or
    # "hold" them all.
    legacy: Literal["convert", "hold"] = "convert"
    soffice: str = Field(default="soffice", min_length=1, max_length=4096, pattern=r"^[^\x00-\x1f]+$")
    uno_python: str = Field(
        default=DEFAULT_PYTHON, min_length=2, max_length=4096, pattern=r"^/[^\x00-\x1f]*$"
    )
    dpi: int = Field(default=150, ge=36, le=600)  # of the page pictures
    max_pages: int = Field(default=100, ge=1, le=10_000)  # longer documents are held (limit-exceeded)
    documents_per_instance: int = Field(default=200, ge=1, le=1_000_000)  # then LibreOffice is restarted
    libreoffice_timeout_s: float = Field(default=40.0, gt=0, le=3600)  # one document, start-up excluded
    libreoffice_start_timeout_s: float = Field(default=30.0, gt=0, le=600)


def claim(part: Part) -> Literal["ooxml", "legacy", "rtf"] | None:
    """How the filter treats an attachment, from its detected type and (for generic types) its name."""
    if part.role is not Role.ATTACHMENT:
        return None
    detected = part.detected_type.lower()
    ext = part.extension
    if detected.startswith(OOXML_TYPE_PREFIX) or detected in MACRO_ENABLED_TYPES:
        return "ooxml"
    if detected in GENERIC_TYPES and ext in OOXML_EXTENSIONS:
        return "ooxml"
    if detected in LEGACY_TYPES or detected in ENCRYPTED_TYPES:
        return "legacy"
    if detected in OLE_TYPES and ext in (LEGACY_EXTENSIONS | OOXML_EXTENSIONS):
        return "legacy"
    if detected == "application/octet-stream" and ext in LEGACY_EXTENSIONS:
        return "legacy"
    if detected in RTF_TYPES:
        return "rtf"
    return None


class OfficeFilter(SandboxedFilter[OfficeOptions]):
    """Word, Excel and PowerPoint attachments: OOXML disarmed, legacy formats and RTF rasterized."""

    name: ClassVar[str] = "office"
    converter: ClassVar[str] = "office"
    converter_reasons: ClassVar[frozenset[str]] = HELD_REASONS
    opens: ClassVar[str] = "Office files"
    # The converter's, and the PDF rasterizer's for the legacy path.
    reasons: ClassVar[tuple[str, ...]] = ("encrypted", "legacy-office", "limit-exceeded", "unsupported-type")
    notes: ClassVar[tuple[str, ...]] = ("office-disarmed", "office-rasterized")
    # An OOXML file is a zip: office claims it before archive would unpack it into loose parts. And it
    # claims by the detected type, so it comes before the filters that claim by the declared one.
    runs_before: ClassVar[tuple[str, ...]] = ("archive", "html", "text-attachment")

    def applies_to(self, part: Part) -> bool:
        return claim(part) is not None

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        if claim(part) != "rtf":
            return super().process(part, ctx)  # OOXML, or a legacy file: the converter looks first
        if self.options.legacy == "hold":
            return Verdict(Action.HOLD, reason="legacy-office")  # nothing to look at first
        # Every sandboxed step (LibreOffice, the rasterizer) ends before the call's deadline, so a
        # slow file is killed with its process group before the runner's deadline gives up on it.
        return self._legacy(self.begin(part, ctx), "rtf", {})

    def precheck(self, part: Part, ctx: FilterContext) -> Verdict | None:
        if claim(part) is None:
            raise FilterError("not an Office attachment")
        return None

    def converter_args(self, call: SandboxCall) -> dict[str, Any]:
        options = self.options
        hyperlinks = options.hyperlinks
        if hyperlinks == "auto":
            hyperlinks = "unlink" if call.ctx.defang_urls else "keep"
        return {
            "max_members": options.max_members,
            "max_total_bytes": options.max_total_bytes,
            "max_xml_bytes": options.max_xml_bytes,
            "max_ratio": options.max_ratio,
            "hyperlinks": hyperlinks,
        }

    def limits(self, call: SandboxCall) -> Limits:
        return replace(
            super().limits(call),  # the time left of the call's deadline; CPU seconds to match
            max_output_bytes=self.options.max_output_bytes + MAX_HEADER_BYTES + PREFIX_BYTES,
            max_file_bytes=16 * _MIB,  # it writes no files
            max_open_files=64,
        )

    def held(self, call: SandboxCall, answer: Answer) -> Verdict:
        if answer.held == "legacy-office":  # a legacy file it looked at: on to LibreOffice
            application = str(answer.header.get("application") or "")
            return self._legacy(call, application, self.removed_counts(answer.header.get("removed")))
        return super().held(call, answer)

    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        content_type, extension = self._check_result(answer.header, answer.data)
        return Verdict(
            Action.REPLACE,
            output=Output(
                content_type, answer.data, output_filename(call.part.untrusted_filename, extension)
            ),
            removed=self.removed_counts(answer.header.get("removed")),
            notes=("office-disarmed",),
        )

    def _legacy(self, call: SandboxCall, application: str, removed: dict[str, int]) -> Verdict:
        """A legacy Office or RTF document: LibreOffice → PDF → rasterized pages, or held."""
        options, part = self.options, call.part
        if options.legacy == "hold":
            return Verdict(Action.HOLD, reason="legacy-office")
        if application not in FILTERS:
            return Verdict(Action.HOLD, reason="unsupported-type")  # an OLE file of another kind
        missing = unavailable_reason(options.soffice, options.uno_python)
        if missing is not None:
            _log_once(f"legacy Office and RTF attachments are held: LibreOffice cannot run ({missing})")
            return Verdict(Action.HOLD, reason="legacy-office")
        settings = OfficeSettings(
            soffice=options.soffice,
            python=options.uno_python,
            documents_per_instance=options.documents_per_instance,
            start_timeout_s=options.libreoffice_start_timeout_s,
        )
        # The page pictures need their share of the time: LibreOffice may use 3/4 of what is left.
        conversion = instance_for(call.sandbox, settings).convert(
            part.payload,
            extension=_extension(part, application),
            filters=FILTERS[application],
            timeout_s=min(options.libreoffice_timeout_s, call.left() * 0.75),
            deadline=call.deadline,
            max_pages=options.max_pages,
            max_output_bytes=options.max_output_bytes,
        )
        if conversion.status == "refused":
            log.info(
                "%s: LibreOffice refused part %s: %s", call.ctx.queue_id, part.part_id, conversion.detail
            )
            return Verdict(Action.HOLD, reason="unsupported-type")
        if conversion.status == "too-long":
            return Verdict(Action.HOLD, reason="limit-exceeded")
        args = {
            **PDF_DEFAULTS,
            "mode": "rasterize",
            "dpi": options.dpi,
            "max_pages": options.max_pages,
            "max_output_bytes": options.max_output_bytes,
        }
        configured = call.sandbox.default_limits
        limits = Limits(
            timeout_s=call.left(),
            cpu_s=configured.cpu_s,
            memory_bytes=configured.memory_bytes,
            max_output_bytes=options.max_output_bytes + 4 * _MIB,
        )
        answer = self.run_converter(
            call,
            conversion.pdf,
            args,
            limits,
            converter="pdf",
            reasons=PDF_HELD_REASONS,
            expect={"mode": "rasterize"},
        )
        if answer.held is not None:
            return Verdict(Action.HOLD, reason=answer.held)
        pages, pdf = answer.header.get("pages"), answer.data
        if not (isinstance(pages, int) and pages >= 1) or not pdf.startswith(b"%PDF-"):
            raise self.fault("produced no PDF", converter="pdf")
        # What the original carried (the OLE inventory), and the links LibreOffice turned into PDF
        # actions (its own open action and page jumps are not the sender's).
        for kind, count in self.removed_counts(answer.header.get("removed"), converter="pdf").items():
            if kind in _LINK_KINDS:
                removed[kind] = removed.get(kind, 0) + count
        if application == "rtf":
            objects = len(_RTF_OBJECT.findall(part.payload))
            if objects:
                removed["ole-embedding"] = removed.get("ole-embedding", 0) + objects
        return Verdict(
            Action.REPLACE,
            output=Output("application/pdf", pdf, output_filename(part.untrusted_filename, "pdf")),
            removed=removed,
            notes=("office-rasterized",),
        )

    def _check_result(self, header: dict[str, Any], data: bytes) -> tuple[str, str]:
        """Trust nothing the sandbox says without a look: the type, the extension, the zip's ends."""
        content_type = header.get("content_type")
        if not isinstance(content_type, str) or content_type not in OUTPUT_TYPES:
            raise self.fault(f"returned type {str(content_type)[:80]!r}")
        extension = header.get("extension")
        if extension != OUTPUT_TYPES[content_type]:
            raise self.fault("returned an extension that does not match the type")
        if len(data) > self.options.max_output_bytes:
            raise self.fault("output over max_output_bytes")
        # The converter writes no zip comment: the end-of-directory record is the last 22 bytes.
        if not (data.startswith(_ZIP_LOCAL_HEADER) and data[-22:-18] == _ZIP_END_OF_DIRECTORY):
            raise self.fault("output is not a zip package")
        return content_type, extension


# An RTF object group; counted for the notice only (the bytes are never parsed in this process).
_RTF_OBJECT = re.compile(rb"\\object(?![a-z])")
# The extension LibreOffice sees (never the sender's name): the file's own when it is one of the
# application's (templates stay templates), else the usual one.
_LEGACY_EXTENSIONS_OF = {
    "word": ("doc", "dot"),
    "excel": ("xls", "xlt", "xla"),
    "powerpoint": ("ppt", "pps", "pot"),
    "rtf": ("rtf",),
}
_LINK_KINDS = frozenset({"uri", "launch", "remote-goto", "embedded-goto"})
_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.error("%s", message)


def _extension(part: Part, application: str) -> str:
    known = _LEGACY_EXTENSIONS_OF[application]
    return part.extension if part.extension in known else known[0]


def output_filename(untrusted_filename: str | None, extension: str) -> str:
    """The attachment's name with the output's extension.

    ``report.docm`` -> ``report.docx``, ``表.xlsx`` stays, ``data.bin`` -> ``data.bin.docx``,
    no name -> ``document.docx``.
    """
    name = (untrusted_filename or "").strip()
    if not name:
        return f"document.{extension}"
    stem, dot, current = name.rpartition(".")
    if dot and stem.strip() and current.lower() in _OFFICE_EXTENSIONS:
        return f"{stem}.{extension}"
    return f"{name}.{extension}"
