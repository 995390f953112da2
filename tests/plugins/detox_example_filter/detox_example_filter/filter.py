"""The host half: claim Netpbm attachments, run the converter in the sandbox, check what it says.

Built on detox's SandboxedFilter template: it does the steps every sandboxed filter needs (the
sandbox or an error, the limits, the run, the answer's framing and status, held or ok) and calls
:meth:`NetpbmFilter.converted` with an answer whose status is "ok". This side never parses the
image: it checks the converter's header and the PNG's ends, and raises for anything else.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.sandbox.base import Limits

# libmagic's names (it spells the grey map both ways) for PGM and PPM.
NETPBM_TYPES = frozenset({"image/x-portable-greymap", "image/x-portable-graymap", "image/x-portable-pixmap"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class NetpbmOptions(BaseModel):
    """``[filters.netpbm.options]``: unknown keys are errors, like every detox option."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(default=20_000_000, gt=0, le=500_000_000)
    max_output_bytes: int = Field(default=64 * 1024 * 1024, gt=0)


class NetpbmFilter(SandboxedFilter[NetpbmOptions]):
    """Netpbm images (PGM, PPM): re-encoded as PNG in the sandbox (example plugin)."""

    name: ClassVar[str] = "netpbm"
    converter: ClassVar[str] = "example_netpbm"  # its entry point in "detox.converters"
    converter_reasons: ClassVar[frozenset[str]] = frozenset({"limit-exceeded"})
    opens: ClassVar[str] = "Netpbm images"
    reasons: ClassVar[tuple[str, ...]] = ("limit-exceeded",)
    notes: ClassVar[tuple[str, ...]] = ("netpbm-reencoded",)
    # A plain PGM (P2) is ASCII: declared text/plain it would be re-encoded as text. It is claimed
    # by its detected type here first.
    runs_before: ClassVar[tuple[str, ...]] = ("text-attachment",)

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.detected_type in NETPBM_TYPES

    def converter_args(self, call: SandboxCall) -> dict[str, Any]:
        return {"max_pixels": self.options.max_pixels}

    def limits(self, call: SandboxCall) -> Limits:
        limits = super().limits(call)  # [sandbox]'s memory and CPU, the time left of the deadline
        return Limits(
            timeout_s=limits.timeout_s,
            cpu_s=limits.cpu_s,
            memory_bytes=limits.memory_bytes,
            max_output_bytes=self.options.max_output_bytes + 64 * 1024,  # the PNG and its header
            max_file_bytes=1024 * 1024,  # it writes no files
            max_open_files=32,
        )

    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        header, png = answer.header, answer.data
        width, height = header.get("width"), header.get("height")
        if header.get("content_type") != "image/png":
            raise self.fault("returned another type")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise self.fault("returned no dimensions")
        if width * height > self.options.max_pixels or len(png) > self.options.max_output_bytes:
            raise self.fault("returned an image over the caps")
        if not (png.startswith(_PNG_SIGNATURE) and png.endswith(_PNG_IEND)):
            raise self.fault("returned something that is not one PNG")
        stem = (call.part.untrusted_filename or "image").rsplit(".", 1)[0] or "image"
        return Verdict(
            Action.REPLACE,
            output=Output("image/png", png, f"{stem}.png"),
            removed=self.removed_counts(header.get("removed")),
            notes=("netpbm-reencoded",),
        )
