"""Image attachments: decoded and re-encoded in the sandbox, with nothing but the pixels kept.

The filter claims an attachment by what libmagic found in its bytes (``part.detected_type``), never
by the declared type or the file name. A part declared ``image/*`` whose bytes are something else is
not claimed: no filter takes it and the runner holds it as ``unsupported-type``. The conversion
itself (caps, first frame, sRGB, PNG/JPEG, no metadata) happens in
:mod:`detox.converters.image`, inside the sandbox; this side only checks and packages its result.

SVG is never passed as SVG. It is rasterized to PNG by librsvg's ``rsvg-convert`` inside the
sandbox (no script runs, no external reference is loaded); where rsvg-convert is not installed, or
with ``svg = "hold"``, the part is held with reason ``svg``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from detox.errors import FilterError, SandboxError
from detox.filters.base import Filter, FilterContext
from detox.pipeline.model import Action, Output, Part, Role, Verdict
from detox.sandbox.contract import MAX_RESULT_HEADER_BYTES as MAX_HEADER_BYTES
from detox.sandbox.contract import RESULT_PREFIX_BYTES as PREFIX_BYTES
from detox.sandbox.contract import RSVG_PATH, unpack_result

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


class ImageFilter(Filter):
    """JPEG, PNG, GIF, BMP, TIFF, WebP and SVG attachments, re-encoded as PNG or JPEG."""

    name: ClassVar[str] = "image"
    Options: ClassVar[type[BaseModel]] = ImageOptions

    def applies_to(self, part: Part) -> bool:
        return part.role is Role.ATTACHMENT and part.detected_type in IMAGE_TYPES

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        options = self.options
        assert isinstance(options, ImageOptions)
        is_svg = part.detected_type == SVG_TYPE
        if is_svg and (options.svg == "hold" or rsvg_convert() is None):
            return Verdict(Action.HOLD, reason="svg")
        if ctx.sandbox is None:
            raise SandboxError("no sandbox is configured: images are only decoded inside one")

        # The sandbox's own clock fires first, so the converter is killed with its process group
        # before the runner's deadline gives up on it.
        timeout = ctx.config.filter_settings(self.name).timeout_s
        sandbox_timeout = max(timeout * 0.9, min(timeout, 1.0))
        args: dict[str, Any] = {
            "max_pixels": options.max_pixels,
            "max_width": options.max_width,
            "max_height": options.max_height,
            "jpeg_quality": options.jpeg_quality,
        }
        if is_svg:
            args.update(svg=True, svg_max_side=options.svg_max_side, svg_timeout_s=sandbox_timeout * 0.8)
        configured = ctx.sandbox.default_limits  # sandbox.memory_mb / cpu_s
        limits = replace(
            configured,
            timeout_s=sandbox_timeout,
            cpu_s=max(1, min(configured.cpu_s, math.ceil(timeout))),
            max_output_bytes=options.max_output_bytes + MAX_HEADER_BYTES + PREFIX_BYTES,
            max_file_bytes=64 * 1024 * 1024,
            max_open_files=64,
        )
        raw = ctx.sandbox.run("image", part.payload, args, limits)
        try:
            meta, data = unpack_result(raw)
        except ValueError as exc:
            raise FilterError(f"image converter: {exc}") from None
        if meta.get("status") == "held":
            if meta.get("reason") != "limit-exceeded" or data:
                raise FilterError("image converter held the image for an unknown reason")
            return Verdict(Action.HOLD, reason="limit-exceeded")
        content_type, removed = self._check_result(meta, data)
        notes = ["image-reencoded"]
        if is_svg:
            notes.append("svg-rasterized")
        return Verdict(
            Action.REPLACE,
            output=Output(content_type, data, output_filename(part.untrusted_filename, content_type)),
            removed=removed,
            notes=tuple(notes),
        )

    def _check_result(self, meta: dict[str, Any], data: bytes) -> tuple[str, dict[str, int]]:
        """Trust nothing the sandbox says without a look: type, size, end of data, the counts."""
        options = self.options
        assert isinstance(options, ImageOptions)
        content_type = meta.get("content_type")
        if content_type not in OUTPUT_EXTENSIONS:
            raise FilterError(f"image converter returned type {content_type!r}")
        width, height = meta.get("width"), meta.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise FilterError("image converter returned no dimensions")
        if width > options.max_width or height > options.max_height or width * height > options.max_pixels:
            raise FilterError(f"image converter returned {width}x{height}, over the caps")
        if len(data) > options.max_output_bytes:
            raise FilterError("image converter output over max_output_bytes")
        if content_type == "image/png":
            if not (data.startswith(_PNG_SIGNATURE) and data.endswith(_PNG_IEND)):
                raise FilterError("image converter output is not one PNG ending at IEND")
        elif not (data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9")):
            raise FilterError("image converter output is not one JPEG ending at EOI")
        removed: dict[str, int] = {}
        raw_removed = meta.get("removed", {})
        if not isinstance(raw_removed, dict):
            raise FilterError("image converter returned a malformed removed list")
        for key, count in raw_removed.items():
            if not (isinstance(key, str) and isinstance(count, int) and count >= 0 and len(key) <= 40):
                raise FilterError("image converter returned a malformed removed list")
            if count:
                removed[key] = count
        frames = meta.get("frames_dropped", 0)
        if not isinstance(frames, int) or frames < 0:
            raise FilterError("image converter returned a malformed frame count")
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
