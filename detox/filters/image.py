"""Image attachments: decoded and re-encoded in the sandbox, with nothing but the pixels kept.

The filter claims an attachment by what libmagic found in its bytes (``part.detected_type``), never
by the declared type or the file name. A part declared ``image/*`` whose bytes are something else is
not claimed: no filter takes it and the runner holds it as ``unsupported-type``. The conversion
itself (caps, first frame, sRGB, PNG/JPEG, no metadata) happens in
:mod:`detox.sandbox.inside.converters.image`, inside the sandbox; this side only checks and packages
its result.

SVG is never passed as SVG. It is rasterized to PNG by librsvg's ``rsvg-convert`` inside the
sandbox (no script runs, no external reference is loaded); where rsvg-convert is not installed, or
with ``svg = "hold"``, the part is held with reason ``svg``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from detox.filters.base import FilterContext
from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.sandbox.base import Limits
from detox.sandbox.contract import MAX_RESULT_HEADER_BYTES as MAX_HEADER_BYTES
from detox.sandbox.contract import RESULT_PREFIX_BYTES as PREFIX_BYTES
from detox.sandbox.contract import RSVG_PATH

SVG_TYPE = "image/svg+xml"
RASTER_TYPES = frozenset(
    {"image/jpeg", "image/png", "image/gif", "image/bmp", "image/x-ms-bmp", "image/tiff", "image/webp"}
)
IMAGE_TYPES = RASTER_TYPES | {SVG_TYPE}

OUTPUT_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg"}
# Extensions that already name the output's format: kept as the sender wrote them.
_KEEP_EXTENSIONS = {"image/png": {"png"}, "image/jpeg": {"jpg", "jpeg", "jpe", "jfif"}}
# Extensions of the input formats: replaced by the output's (photo.bmp -> photo.png).
_IMAGE_EXTENSIONS = {
    "jpg", "jpeg", "jpe", "jfif", "png", "apng", "gif", "bmp", "dib", "tif", "tiff", "webp", "svg", "svgz",
}  # fmt: skip

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class ImageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Caps checked on the declared dimensions before any pixel is decoded.
    max_pixels: int = Field(default=40_000_000, gt=0, le=500_000_000)
    max_width: int = Field(default=30_000, gt=0, le=65_535)
    max_height: int = Field(default=30_000, gt=0, le=65_535)
    jpeg_quality: int = Field(default=90, ge=50, le=95)
    # "rasterize": SVG to PNG with rsvg-convert in the sandbox (held when it is not installed).
    svg: Literal["rasterize", "hold"] = "rasterize"
    svg_max_side: int = Field(default=2048, ge=16, le=8192)  # the SVG is fitted into this square
    max_output_bytes: int = Field(default=100 * 1024 * 1024, gt=0)


class ImageFilter(SandboxedFilter[ImageOptions]):
    """JPEG, PNG, GIF, BMP, TIFF, WebP and SVG attachments, re-encoded as PNG or JPEG."""

    name: ClassVar[str] = "image"
    converter: ClassVar[str] = "image"
    converter_reasons: ClassVar[frozenset[str]] = frozenset({"limit-exceeded"})
    opens: ClassVar[str] = "images"
    reasons: ClassVar[tuple[str, ...]] = ("limit-exceeded", "svg")
    notes: ClassVar[tuple[str, ...]] = ("image-reencoded", "svg-rasterized")
    # It claims by the detected type: an image declared as text/html must reach it, not the HTML
    # converter.
    runs_before: ClassVar[tuple[str, ...]] = ("html", "text-attachment")

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.detected_type in IMAGE_TYPES

    def precheck(self, part: Part, ctx: FilterContext) -> Verdict | None:
        if part.detected_type == SVG_TYPE and (self.options.svg == "hold" or rsvg_convert() is None):
            return Verdict(Action.HOLD, reason="svg")
        return None

    def converter_args(self, call: SandboxCall) -> dict[str, Any]:
        options = self.options
        args: dict[str, Any] = {
            "max_pixels": options.max_pixels,
            "max_width": options.max_width,
            "max_height": options.max_height,
            "jpeg_quality": options.jpeg_quality,
        }
        if call.part.detected_type == SVG_TYPE:
            sandbox_timeout = self.sandbox_timeout(call.timeout_s)
            args.update(svg=True, svg_max_side=options.svg_max_side, svg_timeout_s=sandbox_timeout * 0.8)
        return args

    def limits(self, call: SandboxCall) -> Limits:
        # The sandbox's own clock fires first, so the converter is killed with its process group
        # before the runner's deadline gives up on it.
        configured = call.sandbox.default_limits  # sandbox.memory_mb / cpu_s
        return replace(
            configured,
            timeout_s=self.sandbox_timeout(call.timeout_s),
            cpu_s=max(1, min(configured.cpu_s, math.ceil(call.timeout_s))),
            max_output_bytes=self.options.max_output_bytes + MAX_HEADER_BYTES + PREFIX_BYTES,
            max_file_bytes=64 * 1024 * 1024,
            max_open_files=64,
        )

    def answer_status(self, header: Mapping[str, Any]) -> object:
        # The image converter names its status only when it holds the image.
        return "held" if header.get("status") == "held" else "ok"

    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        content_type, removed = self._check_result(answer.header, answer.data)
        notes = ["image-reencoded"]
        if call.part.detected_type == SVG_TYPE:
            notes.append("svg-rasterized")
        return Verdict(
            Action.REPLACE,
            output=Output(
                content_type, answer.data, output_filename(call.part.untrusted_filename, content_type)
            ),
            removed=removed,
            notes=tuple(notes),
        )

    def _check_result(self, meta: dict[str, Any], data: bytes) -> tuple[str, dict[str, int]]:
        """Trust nothing the sandbox says without a look: type, size, end of data, the counts."""
        options = self.options
        content_type = meta.get("content_type")
        if content_type not in OUTPUT_EXTENSIONS:
            raise self.fault(f"returned type {content_type!r}")
        width, height = meta.get("width"), meta.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise self.fault("returned no dimensions")
        if width > options.max_width or height > options.max_height or width * height > options.max_pixels:
            raise self.fault(f"returned {width}x{height}, over the caps")
        if len(data) > options.max_output_bytes:
            raise self.fault("output over max_output_bytes")
        if content_type == "image/png":
            if not (data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_IEND)):
                raise self.fault("output is not one PNG ending at IEND")
        elif not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
            raise self.fault("output is not one JPEG ending at EOI")
        removed = self.removed_counts(meta.get("removed", {}))  # none found: the key may be left out
        frames = meta.get("frames_dropped", 0)
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
            raise self.fault("returned a malformed frame count")
        if frames:
            removed["frames-dropped"] = frames
        return str(content_type), removed


def rsvg_convert() -> str | None:
    """The rsvg-convert the sandboxed converter will find (the sandbox sees the system's /usr)."""
    return shutil.which("rsvg-convert", path=RSVG_PATH)


def output_filename(untrusted_filename: str | None, content_type: str) -> str:
    """The attachment's name with its extension made to match the new format.

    ``photo.bmp`` -> ``photo.png``, ``scan.jpeg`` stays, ``logo.svg`` -> ``logo.png``; a name without
    an image extension keeps it and gets the right one appended (``invoice.exe`` -> ``invoice.exe.png``).
    """
    ext = OUTPUT_EXTENSIONS[content_type]
    name = (untrusted_filename or "").strip()
    if not name:
        return f"image.{ext}"
    stem, dot, current = name.rpartition(".")
    current = current.lower() if dot else ""
    if current in _KEEP_EXTENSIONS[content_type]:
        return name
    if current in _IMAGE_EXTENSIONS and stem.strip():
        return f"{stem}.{ext}"
    return f"{name}.{ext}"
