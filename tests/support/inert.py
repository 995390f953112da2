"""Independent checks that an output part is inert: they share no code with the converters."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pikepdf
from PIL import Image

# A marker the hostile test files put in their JavaScript and strings; it must never come out.
MARK = "DETOXMARK"

FORBIDDEN_KEYS = {
    "/JS",
    "/JavaScript",
    "/OpenAction",
    "/AA",
    "/Launch",
    "/SubmitForm",
    "/ImportData",
    "/GoToR",
    "/GoToE",
    "/RichMedia",
    "/RichMediaContent",
    "/EmbeddedFiles",
    "/EmbeddedFile",
    "/EF",
    "/XFA",
}
FORBIDDEN_NAMES = {
    "/JavaScript",
    "/Launch",
    "/SubmitForm",
    "/ImportData",
    "/GoToR",
    "/GoToE",
    "/RichMedia",
    "/RichMediaExecute",
    "/EmbeddedFile",
    "/EmbeddedFiles",
    "/FileAttachment",
    "/XFA",
    "/Movie",
    "/Sound",
    "/Rendition",
}
# Action types that must not survive sanitizing either (a GoTo inside the document may).
FORBIDDEN_ACTIONS = FORBIDDEN_NAMES | {"/URI", "/Hide", "/ResetForm", "/SetOCGState", "/GoTo3DView"}


def _everything(pdf: pikepdf.Pdf) -> Iterator[pikepdf.Object]:
    seen: set[tuple[int, int]] = set()
    stack: list[Any] = [pdf.trailer, *pdf.objects]
    while stack:
        obj = stack.pop()
        if isinstance(obj, pikepdf.Object) and obj.is_indirect:
            if obj.objgen in seen:
                continue
            seen.add(obj.objgen)
        yield obj
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            stack.extend(obj.values())
        elif isinstance(obj, pikepdf.Array):
            stack.extend(obj)


def assert_inert(data: bytes) -> pikepdf.Pdf:
    """Fail unless ``data`` is a PDF with nothing that can act or carry a file; returns it opened."""
    pdf = pikepdf.open(io.BytesIO(data))
    assert not pdf.is_encrypted
    problems: list[str] = []
    for obj in _everything(pdf):
        if isinstance(obj, pikepdf.Name):
            if str(obj) in FORBIDDEN_NAMES:
                problems.append(f"name {obj}")
        elif isinstance(obj, pikepdf.String):
            if MARK in bytes(obj).decode("latin-1"):
                problems.append("marked string")
        elif isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            keys = set(obj.keys())
            problems.extend(f"key {k}" for k in keys & FORBIDDEN_KEYS)
            if str(obj.get("/S")) in FORBIDDEN_ACTIONS:
                problems.append(f"action {obj.get('/S')}")
            if isinstance(obj, pikepdf.Stream):
                if keys & {"/F", "/FFilter", "/FDecodeParms"}:
                    problems.append("external stream")
                try:
                    content = obj.read_bytes()
                except pikepdf.PdfError:
                    content = obj.read_raw_bytes()
                if MARK.encode() in content:
                    problems.append("marked stream")
    assert not problems, problems
    return pdf



def assert_image_clean(data: bytes) -> Image.Image:
    """Pillow decodes it fully and finds no metadata; PNG/JPEG end exactly at their end marker."""
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format in ("PNG", "JPEG"), img.format
    assert not img.getexif(), "EXIF left"
    for key in ("exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment"):
        assert key not in img.info, key
    if img.format == "PNG":
        assert data.endswith(b"IEND\xaeB`\x82"), "bytes after IEND"
    else:
        assert data.endswith(b"\xff\xd9") and data.count(b"\xff\xd8\xff") == 1, "bytes after EOI"
    return img
