"""Image converter: decode an untrusted raster (or SVG) image and re-encode its pixels only.

Runs INSIDE the sandbox (:mod:`detox.sandbox.inside`): ``main(data, args)`` gets the attachment's bytes and
returns a result in the wire format below. Anything it cannot do safely raises; the sandbox turns
that into a SandboxError and the runner holds the part.

What it does
    * Opens the bytes with Pillow restricted to JPEG, PNG, GIF, BMP, TIFF and WebP
      (``Image.open(formats=...)``); every other Pillow plugin is out of reach.
    * Checks the declared dimensions against ``max_width``/``max_height``/``max_pixels`` BEFORE any
      pixel is decoded (Pillow's DecompressionBombWarning is an error here, not a warning).
    * Decodes the first frame only (animated GIF/WebP/PNG, multi-page TIFF, MPO): the count of
      frames left out is reported.
    * Applies the EXIF orientation to the pixels (the tag itself is dropped, so without this a phone
      photo would arrive on its side), converts the colours to sRGB through the embedded ICC profile
      if there is one, then copies the pixels into a brand-new image that carries no ``info`` at
      all: no EXIF, XMP, ICC profile, comment, text chunk, thumbnail or application segment can
      reach the encoder.
    * Encodes PNG (lossless sources and anything with transparency) or JPEG (JPEG and lossy WebP
      sources; quality from ``jpeg_quality``, the source's chroma subsampling kept). Pillow writes
      nothing after IEND / EOI.
    * SVG (``args["svg"] = true``): rasterized by ``rsvg-convert`` (librsvg, Debian's librsvg2-bin)
      reading from stdin, so it has no base URL and resolves no external reference (files,
      XInclude, network); it executes no script. The PNG it writes then goes through the raster
      path above like any other input.

ICC profiles are dropped, not kept: a profile is a small program of curves and tables that every
client would parse again (ICC parsers have had their share of memory-safety bugs), while converting
to sRGB here, inside the sandbox, keeps the colours right for the images mail carries (phone photos
in Display P3, CMYK scans). A profile the colour engine rejects is ignored and the pixels are
converted without it.

Wire format of the result: :mod:`detox.sandbox.inside.wire`, the payload the image bytes.

An image over a cap (pixels, sides, a decompression bomb) is not an error but an answer: the JSON
object is then ``{"status": "held", "reason": "limit-exceeded", "detail": ...}`` with no image bytes,
so the part is held as limit-exceeded, like an over-cap PDF or archive.

Otherwise the JSON object has ``content_type`` ("image/png" or "image/jpeg"), ``width``, ``height`` (of the
output), ``source_format`` (Pillow's name, or "SVG"), ``frames_dropped`` (int),
``orientation_applied`` (EXIF orientation 1-8 applied to the pixels, 1 = none), ``icc_converted``
(bool) and ``removed`` (name -> count: exif, gps, xmp, icc-profile, comment, text, photoshop, thumbnail,
app-segment, timestamp, unknown-chunk, app-extension, trailing-data, script, event-handler, ...).

Over 500 lines on purpose: the decode/re-encode path and the inventory of what the source carried read
the same bytes and are reviewed together. The inventory (:func:`metadata_found` and the per-format
readers below it) is the seam to split along when either grows.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any, NamedTuple

from PIL import Image, ImageCms, JpegImagePlugin

from detox.sandbox.contract import IMAGE_OUTPUT_TYPES as OUTPUT_TYPES
from detox.sandbox.contract import RSVG_PATH as RSVG_PATH
from detox.sandbox.inside import wire
from detox.sandbox.inside.wire import unpack_result as unpack_result

ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_SIDE = 30_000
DEFAULT_JPEG_QUALITY = 90
DEFAULT_SVG_SIDE = 2048
_FAST_PNG_PIXELS = 8_000_000

# Pillow's names for the EXIF orientation fixes (the same table as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageRejected(ValueError):
    """The image is over a cap, of a kind not handled, or not decodable: the part is held."""


# -- the wire format ---------------------------------------------------------------------------


def pack_result(meta: Mapping[str, Any], image: bytes) -> bytes:
    try:
        return wire.pack_result(meta, image)
    except ValueError as exc:
        raise ImageRejected(str(exc)) from None


# -- entry point -------------------------------------------------------------------------------


class ImageTooLarge(Exception):
    """Over a cap: answered as "held" (limit-exceeded), not raised out of the sandbox."""


class Caps(NamedTuple):
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_width: int = DEFAULT_MAX_SIDE
    max_height: int = DEFAULT_MAX_SIDE
    jpeg_quality: int = DEFAULT_JPEG_QUALITY

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Caps:
        def positive(key: str, default: int) -> int:
            value = args.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ImageRejected(f"bad argument {key}")
            return value

        quality = positive("jpeg_quality", DEFAULT_JPEG_QUALITY)
        if quality > 95:
            raise ImageRejected("bad argument jpeg_quality")
        return cls(
            max_pixels=positive("max_pixels", DEFAULT_MAX_PIXELS),
            max_width=positive("max_width", DEFAULT_MAX_SIDE),
            max_height=positive("max_height", DEFAULT_MAX_SIDE),
            jpeg_quality=quality,
        )


def main(data: bytes, args: dict[str, Any]) -> bytes:
    try:
        return _main(data, args)
    except ImageTooLarge as exc:
        return pack_result({"status": "held", "reason": "limit-exceeded", "detail": str(exc)[:300]}, b"")


def _main(data: bytes, args: dict[str, Any]) -> bytes:
    caps = Caps.from_args(args)
    if args.get("svg"):
        side = args.get("svg_max_side", DEFAULT_SVG_SIDE)
        timeout = args.get("svg_timeout_s", 20)
        if not isinstance(side, int) or not 0 < side <= min(caps.max_width, caps.max_height):
            raise ImageRejected("bad argument svg_max_side")
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ImageRejected("bad argument svg_timeout_s")
        png = rasterize_svg(data, side, float(timeout))
        meta, image = convert(png, caps, formats=("PNG",))
        # What the SVG carried that a raster cannot (counted for the report; nothing of it survives).
        meta["source_format"] = "SVG"
        meta["removed"] = dict(Counter(meta["removed"]) + svg_active_content(data))
        return pack_result(meta, image)
    meta, image = convert(data, caps)
    return pack_result(meta, image)


# -- raster path -------------------------------------------------------------------------------


def convert(
    data: bytes, caps: Caps, formats: tuple[str, ...] = ALLOWED_FORMATS
) -> tuple[dict[str, Any], bytes]:
    """Decode the first frame of ``data`` under ``caps`` and re-encode it without metadata."""
    Image.MAX_IMAGE_PIXELS = caps.max_pixels
    with warnings.catch_warnings():
        # Over MAX_IMAGE_PIXELS Pillow only warns (up to twice that it raises): both are errors here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=list(formats))
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(f"decompression bomb: {exc}") from None
        except Image.DecompressionBombWarning as exc:
            raise ImageTooLarge(f"decompression bomb: {exc}") from None
        with im:
            _check_size(im.size, caps)
            source_format = str(im.format)
            frames = _frame_count(im)
            if frames > 1:
                im.seek(0)
            im.load()  # decodes frame 0 only
            _check_size(im.size, caps)
            removed = metadata_found(data, im)
            sampling = JpegImagePlugin.get_sampling(im) if source_format in ("JPEG", "MPO") else -1
            orientation = _orientation(im)
            lossy = source_format in ("JPEG", "MPO") or (source_format == "WEBP" and _webp_is_lossy(data))
            icc = im.info.get("icc_profile")
            pixels, icc_converted = _to_output_mode(im, icc if isinstance(icc, bytes) else None)
            if orientation in _ORIENTATION:
                pixels = pixels.transpose(_ORIENTATION[orientation])
            # A new image holding only the pixels: Pillow's encoders copy things like info["comment"]
            # and info["icc_profile"] from the image they save, so none of the source's may be there.
            clean = Image.new(pixels.mode, pixels.size)
            clean.paste(pixels)
            del pixels
    assert not clean.info
    out_format = "JPEG" if lossy and clean.mode in ("L", "RGB") else "PNG"
    encoded = _encode(clean, out_format, caps, sampling, alternate=False)
    if encoded == data:
        # The input was already exactly what this encoder writes (a flat image, or one saved by
        # Pillow with the same settings). The runner refuses an output equal to the input, so encode
        # the same pixels once more with other, equally clean, settings.
        encoded = _encode(clean, out_format, caps, sampling, alternate=True)
    meta: dict[str, Any] = {
        "content_type": OUTPUT_TYPES[out_format],
        "width": clean.width,
        "height": clean.height,
        "source_format": source_format,
        "mode": clean.mode,
        "frames_dropped": max(frames - 1, 0),
        "orientation_applied": orientation if orientation in _ORIENTATION else 1,
        "icc_converted": icc_converted,
        "removed": {k: v for k, v in sorted(removed.items()) if v},
    }
    return meta, encoded


def _encode(clean: Image.Image, out_format: str, caps: Caps, sampling: int, *, alternate: bool) -> bytes:
    out = io.BytesIO()
    if out_format == "JPEG":
        kwargs: dict[str, Any] = {"quality": caps.jpeg_quality, "optimize": not alternate}
        if sampling in (0, 1, 2):
            kwargs["subsampling"] = sampling
        clean.save(out, "JPEG", **kwargs)
    else:
        # Level 5, not Pillow's default 6, so that PNGs Pillow wrote with defaults rarely come out
        # byte-identical (which costs a second encode). Large images get level 1: on noisy pixels
        # higher levels take many times longer (seconds per 10 Mpx) for little gain.
        level = 1 if clean.width * clean.height > _FAST_PNG_PIXELS else 5
        clean.save(out, "PNG", compress_level=level + 1 if alternate else level)
    return out.getvalue()


def _check_size(size: tuple[int, int], caps: Caps) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageRejected("empty image")
    if width > caps.max_width or height > caps.max_height:
        raise ImageTooLarge(f"image {width}x{height} exceeds {caps.max_width}x{caps.max_height}")
    if width * height > caps.max_pixels:
        raise ImageTooLarge(f"image {width}x{height} exceeds {caps.max_pixels} pixels")


def _frame_count(im: Image.Image) -> int:
    n = getattr(im, "n_frames", 1)
    return n if isinstance(n, int) and n > 0 else 1


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block means: no orientation
        return 1
    return value if isinstance(value, int) else 1


def _to_output_mode(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bool]:
    """The pixels in one of 1, L, I;16, RGB, RGBA (sRGB); and whether an ICC profile was applied."""
    mode = im.mode
    if mode in ("1", "L"):
        return im, False
    if mode.startswith("I;16"):
        return (im if mode == "I;16" else im.convert("I;16")), False
    if mode == "I":
        return im.convert("I;16"), False  # 32-bit integer TIFFs: clipped to 16 bits
    if mode == "P":
        has_alpha = "transparency" in im.info or (im.palette is not None and im.palette.mode == "RGBA")
        im = im.convert("RGBA" if has_alpha else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "RGBX":
        im = im.convert("RGB")
    elif mode not in ("RGB", "RGBA", "CMYK", "YCbCr"):
        raise ImageRejected(f"unsupported pixel mode {mode}")
    if icc is not None:
        converted = _icc_to_srgb(im, icc)
        if converted is not None:
            return converted, True
    if im.mode in ("CMYK", "YCbCr"):
        im = im.convert("RGB")
    return im, False


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image | None:
    """Convert RGB/RGBA/CMYK pixels to sRGB through their embedded profile; None if it cannot."""
    alpha = im.getchannel("A") if im.mode == "RGBA" else None
    colour = im.convert("RGB") if im.mode in ("RGBA", "YCbCr") else im
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        result = ImageCms.profileToProfile(
            colour, source, srgb, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    if result is None:
        return None
    if alpha is not None:
        result.putalpha(alpha)
    return result


def _webp_is_lossy(data: bytes) -> bool:
    """True for VP8 (lossy) WebP without alpha; lossless (VP8L) or alpha WebPs go to PNG."""
    chunks = {fourcc for fourcc, _, _ in _riff_chunks(data)}
    return b"VP8 " in chunks and b"VP8L" not in chunks and b"ALPH" not in chunks


# -- what the source carried besides pixels (for the report) -----------------------------------


_PILLOW_INFO_KINDS = (
    ("exif", "exif"),
    ("xmp", "xmp"),
    ("icc_profile", "icc-profile"),
    ("comment", "comment"),
)


def metadata_found(data: bytes, im: Image.Image) -> Counter[str]:
    """Count the non-pixel content of the source: nothing of it reaches the output."""
    fmt = im.format
    if fmt in ("JPEG", "MPO"):
        found = _jpeg_metadata(data)
    elif fmt == "PNG":
        found = _png_metadata(data)
    elif fmt == "GIF":
        found = _gif_metadata(data)
    elif fmt == "WEBP":
        found = _webp_metadata(data)
    elif fmt == "TIFF":
        found = _tiff_metadata(im)
    elif fmt == "BMP":
        found = _bmp_metadata(data)
    else:
        found = Counter()
    if found["exif"] and _has_gps(im):
        found["gps"] = 1  # the EXIF block carried a location (counted inside "exif" too)
    # Whatever Pillow itself saw, in case a walker above missed it.
    for key, name in _PILLOW_INFO_KINDS:
        if im.info.get(key) and not found[name]:
            found[name] = 1
    return found


def _has_gps(im: Image.Image) -> bool:
    try:
        return bool(im.getexif().get_ifd(0x8825))
    except Exception:  # noqa: BLE001 - unreadable EXIF: nothing to say about it
        return False


_JPEG_APP_KINDS = (
    (0xE1, b"Exif\x00", "exif"),
    (0xE1, b"http://ns.adobe.com/xap/1.0/\x00", "xmp"),
    (0xE1, b"http://ns.adobe.com/xmp/extension/\x00", "xmp"),
    (0xE2, b"ICC_PROFILE\x00", "icc-profile"),
    (0xE2, b"MPF\x00", "multi-picture"),
    (0xED, b"Photoshop 3.0\x00", "photoshop"),
    (0xE0, b"JFXX\x00", "thumbnail"),
)


def _jpeg_metadata(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    end = None
    pos, n = 2, len(data)
    icc_seen = False
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return found  # not where a marker should be: stop counting (Pillow decided on the pixels)
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            end = pos + 2
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xFE:
            found["comment"] += 1
        elif 0xE0 <= marker <= 0xEF:
            kind = _jpeg_app_kind(marker, body)
            if kind == "icc-profile":
                if not icc_seen:  # one profile may span several APP2 segments
                    found[kind] += 1
                icc_seen = True
            elif kind:
                found[kind] += 1
        pos += 2 + length
        if marker == 0xDA:
            pos = _skip_entropy_coded(data, pos)
    if end is not None and end < n:
        found["trailing-data"] += 1
    return found


def _jpeg_app_kind(marker: int, body: bytes) -> str | None:
    for app, prefix, kind in _JPEG_APP_KINDS:
        if marker == app and body.startswith(prefix):
            return kind
    if marker == 0xE0 and body.startswith(b"JFIF\x00"):
        return None  # the JFIF header is structure, and the encoder writes its own
    if marker == 0xEE and body.startswith(b"Adobe"):
        return None  # colour transform flag; structure
    return "app-segment"


def _skip_entropy_coded(data: bytes, pos: int) -> int:
    """Position of the first marker after entropy-coded data (FF00 stuffing and RSTn skipped)."""
    n = len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            return n
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            pos += 1 if following == 0xFF else 2
            continue
        return pos


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KINDS = {
    b"tEXt": "text",
    b"zTXt": "text",
    b"iTXt": "text",
    b"eXIf": "exif",
    b"iCCP": "icc-profile",
    b"tIME": "timestamp",
}
# Structure or rendering hints (nothing of them is copied, but they are not "metadata" to report).
_PNG_STRUCTURE = {
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs",
    b"bKGD", b"hIST", b"sPLT", b"acTL", b"fcTL", b"fdAT", b"cICP", b"mDCV", b"cLLI",
}  # fmt: skip


def _png_metadata(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    if not data.startswith(_PNG_SIGNATURE):
        return found
    pos, n = len(_PNG_SIGNATURE), len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > n:
            return found
        if ctype == b"iTXt" and data[pos + 8 : end - 4].startswith(b"XML:com.adobe.xmp\x00"):
            found["xmp"] += 1
        elif ctype in _PNG_KINDS:
            found[_PNG_KINDS[ctype]] += 1
        elif ctype not in _PNG_STRUCTURE:
            found["unknown-chunk"] += 1
        pos = end
        if ctype == b"IEND":
            if pos < n:
                found["trailing-data"] += 1
            break
    return found


def _gif_metadata(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    n = len(data)
    if n < 13:
        return found
    pos = 13
    flags = data[10]
    if flags & 0x80:
        pos += 3 * (2 << (flags & 7))

    def skip_blocks(p: int) -> int:
        while p < n:
            size = data[p]
            p += 1 + size
            if size == 0:
                return p
        return n + 1

    while pos < n:
        introducer = data[pos]
        if introducer == 0x3B:  # trailer
            if pos + 1 < n:
                found["trailing-data"] += 1
            break
        if introducer == 0x21 and pos + 1 < n:
            label = data[pos + 1]
            if label == 0xFE:
                found["comment"] += 1
            elif label == 0x01:
                found["text"] += 1  # plain text extension
            elif label == 0xFF:
                ident = data[pos + 3 : pos + 14]
                if ident == b"XMP DataXMP":
                    found["xmp"] += 1
                elif ident not in (b"NETSCAPE2.0", b"ANIMEXTS1.0"):
                    found["app-extension"] += 1
            pos = skip_blocks(pos + 2)
        elif introducer == 0x2C and pos + 10 <= n:
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 * (2 << (local & 7))
            pos = skip_blocks(pos + 1)  # LZW minimum code size, then the data sub-blocks
        else:
            break  # malformed: stop counting
    return found


def _riff_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(fourcc, offset, size) of the chunks of a RIFF/WEBP file, as far as they are well formed."""
    chunks: list[tuple[bytes, int, int]] = []
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return chunks
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    pos = 12
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        chunks.append((fourcc, pos, size))
        pos += 8 + size + (size & 1)
    return chunks


_WEBP_KINDS = {b"EXIF": "exif", b"XMP ": "xmp", b"ICCP": "icc-profile"}
_WEBP_STRUCTURE = {b"VP8 ", b"VP8L", b"VP8X", b"ALPH", b"ANIM", b"ANMF"}


def _webp_metadata(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    for fourcc, _, _ in _riff_chunks(data):
        if fourcc in _WEBP_KINDS:
            found[_WEBP_KINDS[fourcc]] += 1
        elif fourcc not in _WEBP_STRUCTURE:
            found["unknown-chunk"] += 1
    if len(data) >= 8:
        riff_end = 8 + int.from_bytes(data[4:8], "little")
        if len(data) > riff_end + (riff_end & 1):
            found["trailing-data"] += 1
    return found


_TIFF_TAGS = {
    700: "xmp",
    33723: "iptc",
    34377: "photoshop",
    34665: "exif",
    34853: "exif",  # GPS IFD
    34675: "icc-profile",
    37724: "photoshop",  # ImageSourceData (Photoshop layers)
}
_TIFF_TEXT_TAGS = {269, 270, 271, 272, 285, 305, 306, 315, 316, 33432}


def _tiff_metadata(im: Image.Image) -> Counter[str]:
    found: Counter[str] = Counter()
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return found
    for tag in list(tags.keys()):
        if tag in _TIFF_TAGS:
            found[_TIFF_TAGS[tag]] += 1
        elif tag in _TIFF_TEXT_TAGS:
            found["text"] += 1
    return found


def _bmp_metadata(data: bytes) -> Counter[str]:
    found: Counter[str] = Counter()
    if len(data) >= 74 and int.from_bytes(data[14:18], "little") >= 124:  # BITMAPV5HEADER
        colour_space = data[70:74]
        if colour_space in (b"KNIL", b"DEBM"):  # 'LINK' (a path to a profile) or 'MBED'
            found["icc-profile"] += 1
    declared = int.from_bytes(data[2:6], "little") if len(data) >= 6 else 0
    if 54 <= declared < len(data):
        found["trailing-data"] += 1
    return found


# -- SVG ---------------------------------------------------------------------------------------

_SVG_ACTIVE = (
    ("script", re.compile(rb"<(?:[\w.-]+:)?script\b", re.IGNORECASE)),
    ("event-handler", re.compile(rb"\son[a-z]+\s*=", re.IGNORECASE)),
    ("foreign-object", re.compile(rb"<(?:[\w.-]+:)?foreignObject\b", re.IGNORECASE)),
    ("external-reference", re.compile(rb"href\s*=\s*[\"']\s*(?:https?|file|ftp|smb)\s*:", re.IGNORECASE)),
)


def svg_active_content(data: bytes) -> Counter[str]:
    """A rough count of what made the SVG active (for the report only; the raster has none of it)."""
    return Counter({name: len(pattern.findall(data)) for name, pattern in _SVG_ACTIVE})


def rasterize_svg(data: bytes, side: int, timeout_s: float) -> bytes:
    """Render an SVG to PNG, fitted into ``side`` x ``side`` pixels, with librsvg's rsvg-convert.

    The SVG is fed on stdin: with no base URL librsvg loads no external resource at all (no file,
    no XInclude, no network); it runs no script. Its own XML limits stay on (no ``--unlimited``).
    """
    # Imported here: only SVG needs them, and every raster conversion pays for the child's imports.
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("rsvg-convert", path=RSVG_PATH)
    if exe is None:
        raise ImageRejected("rsvg-convert is not installed: SVG cannot be rasterized")
    with tempfile.TemporaryDirectory() as home:
        try:
            proc = subprocess.run(
                [exe, "--format=png", f"--width={side}", f"--height={side}", "--keep-aspect-ratio"],
                input=data,
                capture_output=True,
                timeout=timeout_s,
                env={"PATH": RSVG_PATH, "HOME": home, "LC_ALL": "C.UTF-8"},
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ImageRejected("rsvg-convert timed out") from None
    if proc.returncode != 0 or not proc.stdout.startswith(_PNG_SIGNATURE):
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        raise ImageRejected(f"rsvg-convert failed ({proc.returncode}): {detail[0] if detail else ''}")
    return proc.stdout
