"""PDF converter: runs INSIDE the sandbox on hostile bytes (``main(data, args) -> bytes``).

Two modes, chosen by ``args["mode"]``:

``sanitize`` (pikepdf/qpdf)
    Opens the file (no password; a file that needs one is answered "held: encrypted"), removes
    everything that can act or carry another file, and writes a fresh, unencrypted, single-revision
    file (incremental updates squashed, object streams regenerated, unreachable objects gone, names
    in canonical form: qpdf decodes ``/J#61vaScript`` to ``/JavaScript`` while parsing, a fresh random
    ``/ID`` so that re-sanitizing a detox output never returns it unchanged). Removed:

    * JavaScript wherever it hides: the ``/Names/JavaScript`` tree, ``/OpenAction``, ``/AA`` on the
      catalog, pages, annotations and form fields, JavaScript actions in annotations and outline
      items, chained ``/Next`` actions, any ``/JS`` key, XFA (``/AcroForm/XFA``: its scripts run in
      the viewer too).
    * Every action but an internal ``GoTo`` and the four page-turning ``Named`` actions: Launch,
      SubmitForm, ImportData, ResetForm, GoToR, GoToE, RichMediaExecute, Sound, Movie, Rendition,
      Hide, SetOCGState, Trans, GoTo3DView, Thread, and **URI**. A link to the Internet is removed
      as an action but its annotation is kept, so the page looks the same and the address printed
      on it stays readable text; only the click that would open a browser (often to a target that
      differs from the text shown: the phishing case) is gone. This matches the body filter, which
      defangs URLs rather than deleting them.
    * Embedded files: the ``/Names/EmbeddedFiles`` tree, ``/EF`` and ``/RF`` in file specifications,
      FileAttachment annotations, and the media carriers (Sound, Movie, Screen, RichMedia and 3D
      annotations); portfolios (``/Collection``), ``/AlternatePresentations`` and ``/Renditions``.
    * External streams: ``/F``, ``/FFilter`` and ``/FDecodeParms`` on streams (data from another file).
    * Silently, as they stop meaning anything in a rewritten file: ``/Perms`` (usage-rights signatures
      that would now fail), ``/NeedsRendering`` (XFA) and ``/AF`` (associated-file lists).

    Text, fonts, images, content streams, form widgets and their appearances are copied unchanged
    (streams are not even decoded). That is the residual risk of this mode: a reader bug in a font or
    image decoder is not removed by sanitizing. The output is re-opened and checked by
    :func:`verify_inert` before it is returned; any survivor is an error (the part is held).

``rasterize`` (pypdfium2 + Pillow; pikepdf only to write the result)
    Every page is rendered at ``args["dpi"]`` (default 150) with forms and annotations drawn, encoded
    as JPEG (``image_format="jpeg"``, quality ``jpeg_quality``, default 85) or lossless
    (``image_format="png"``: the raw RGB samples deflated at level 1, what a PNG with
    ``compress_level=1`` holds, embedded as ``/FlateDecode``), and put one image per page into a
    new PDF: no text, no fonts, no actions, no annotations, no ``/Info``, no XMP. Caps: more than
    ``max_pages`` pages → held ``limit-exceeded``; a page above ``max_page_pixels`` is rendered at
    the lower resolution that fits the cap; encoded pages above ``max_output_bytes`` in total →
    held ``limit-exceeded``. The removed counts are an inventory of what the original carried (the
    same walk as sanitize, on a copy that is thrown away), best effort: a file pikepdf cannot read
    but pdfium can render still gets rasterized, with no counts.

Output format (both modes): :mod:`detox.sandbox.inside.wire`, the payload the new PDF (empty when the
header's status is "held").

Header keys: ``status`` ("ok" or "held"), ``mode``; when ok: ``pages`` (page count of
the output, equal to the input's) and ``removed`` ({kind: count}: one per action removed, by the kinds
of :data:`ACTION_KINDS`, any action carrying ``/JS`` as ``javascript``, an action named from several
places once; ``open-action`` for the catalog entry itself; ``embedded-file`` per name-tree entry,
``/EF`` and FileAttachment annotation; ``xfa``, ``external-stream``, ``screen``, ``rich-media`` ... per
occurrence); when held: ``reason`` — one of
``encrypted`` (a password is needed to open it) or ``limit-exceeded`` (page or output-size cap) — and
``detail``, a short English text. Any other failure raises, the sandbox child exits non-zero, and the
filter holds the part as a filter error. :func:`unpack_result` reads the format back.

Over 500 lines on purpose: both modes share the walk that finds every action, embedded file and
script (rasterize uses it for its inventory), and the walk and :func:`verify_inert` must be read side
by side. The rasterize path (from :func:`rasterize` down) is the seam to split along when it grows.
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from detox.sandbox.contract import PDF_DEFAULTS as DEFAULTS
from detox.sandbox.contract import PDF_HELD_REASONS as HELD_REASONS
from detox.sandbox.inside.wire import pack_result as pack_result
from detox.sandbox.inside.wire import unpack_result as unpack_result

if TYPE_CHECKING:
    import pikepdf

# Action subtype (/S) → the kind reported in ``removed``. Every action is removed except those in
# _KEPT_ACTIONS; an action dict with an /S not listed here is reported as "action".
ACTION_KINDS: Mapping[str, str] = {
    "/JavaScript": "javascript",
    "/Launch": "launch",
    "/SubmitForm": "submit-form",
    "/ImportData": "import-data",
    "/ResetForm": "reset-form",
    "/GoToR": "remote-goto",
    "/GoToE": "embedded-goto",
    "/GoToDp": "goto-dp",
    "/RichMediaExecute": "rich-media",
    "/Sound": "sound",
    "/Movie": "movie",
    "/Rendition": "rendition",
    "/Hide": "hide",
    "/URI": "uri",
    "/SetOCGState": "set-ocg-state",
    "/Trans": "transition",
    "/GoTo3DView": "3d",
    "/Thread": "thread",
    "/Named": "named-action",
    "/GoTo": "goto",  # only when removed along with something else (an /AA entry, a /Next chain)
}
_KEPT_NAMED = frozenset({"/NextPage", "/PrevPage", "/FirstPage", "/LastPage"})
# Annotations that exist to carry a file or media: removed from /Annots, their payload dropped.
DROPPED_ANNOTS: Mapping[str, str] = {
    "/FileAttachment": "embedded-file",
    "/Sound": "sound",
    "/Movie": "movie",
    "/Screen": "screen",
    "/RichMedia": "rich-media",
    "/3D": "3d",
}
_ANNOT_PAYLOAD_KEYS = ("/FS", "/Sound", "/Movie", "/RichMediaContent", "/RichMediaSettings", "/3DD", "/3DV")
_EXTERNAL_STREAM_KEYS = ("/F", "/FFilter", "/FDecodeParms")
# Keys removed from any dictionary, with the kind they count as (None: removed without a count).
_DROPPED_KEYS: Mapping[str, str | None] = {
    "/XFA": "xfa",
    "/EF": "embedded-file",
    "/RF": "embedded-file",
    "/Collection": "portfolio",
    "/AlternatePresentations": "alternate-presentation",
    "/Renditions": "rendition",
    "/AF": None,  # associated files (PDF 2.0): file specifications, their /EF removed anyway
    "/Perms": None,
    "/NeedsRendering": None,
}
# Keys that must not exist anywhere in an output (verify_inert); also the test suite's list.
FORBIDDEN_KEYS = frozenset(
    {
        "/JS",
        "/JavaScript",
        "/OpenAction",
        "/AA",
        "/EmbeddedFiles",
        "/EF",
        "/RF",
        "/XFA",
        "/RichMediaContent",
        "/Collection",
        "/AlternatePresentations",
    }
)


class HeldError(Exception):
    """The file is answered "held" with a reason the filter maps to a notice (not a failure)."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in HELD_REASONS
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class NotInertError(Exception):
    """The output still carries something active: a bug in the sanitizer; the part is held."""


# -- the result format ------------------------------------------------------------------------


# -- entry point ------------------------------------------------------------------------------


def main(data: bytes, args: dict[str, Any]) -> bytes:
    opts = {**DEFAULTS, **args}
    mode = opts["mode"]
    try:
        if mode == "sanitize":
            pdf, pages, removed = sanitize(data)
        elif mode == "rasterize":
            pdf, pages, removed = rasterize(
                data,
                dpi=_int(opts, "dpi", 36, 600),
                max_pages=_int(opts, "max_pages", 1, 100_000),
                max_page_pixels=_int(opts, "max_page_pixels", 10_000, 500_000_000),
                max_output_bytes=_int(opts, "max_output_bytes", 1024, 2**40),
                image_format=_choice(opts, "image_format", ("jpeg", "png")),
                jpeg_quality=_int(opts, "jpeg_quality", 10, 95),
            )
        else:
            raise ValueError(f"unknown mode {mode!r}")
    except HeldError as held:
        return pack_result({"status": "held", "mode": mode, "reason": held.reason, "detail": held.detail})
    header = {"status": "ok", "mode": mode, "pages": pages, "removed": dict(sorted(removed.items()))}
    return pack_result(header, pdf)


def _int(opts: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = opts[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be an integer in [{low}, {high}]")
    return value


def _choice(opts: Mapping[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = opts[key]
    if value not in allowed:
        raise ValueError(f"{key} must be one of {allowed}")
    return str(value)


# -- sanitize ---------------------------------------------------------------------------------


def _open(data: bytes) -> pikepdf.Pdf:
    import pikepdf

    try:
        return pikepdf.open(io.BytesIO(data))
    except pikepdf.PasswordError:
        raise HeldError("encrypted", "a password is needed to open the PDF") from None


def sanitize(data: bytes) -> tuple[bytes, int, Counter[str]]:
    """Return (new PDF, page count, removed counts)."""
    import pikepdf

    with _open(data) as pdf:
        pages = len(pdf.pages)
        if pages < 1:
            raise ValueError("the PDF has no pages")
        removed = Disarmer(pdf).run()
        # A fresh /ID each time (qpdf keeps the input's): sanitizing is otherwise idempotent, and the
        # runner refuses an output equal to its input, so a detox-sanitized PDF coming back in a
        # reply would be held.
        pdf.trailer.ID = _fresh_id()
        out = io.BytesIO()
        pdf.save(
            out,
            encryption=False,
            object_stream_mode=pikepdf.ObjectStreamMode.generate,
            compress_streams=True,
            stream_decode_level=pikepdf.StreamDecodeLevel.none,
            fix_metadata_version=False,
        )
    result = out.getvalue()
    with pikepdf.open(io.BytesIO(result)) as check:
        problems = verify_inert(check)
        if problems:
            raise NotInertError("; ".join(problems[:5]))
        if len(check.pages) != pages:
            raise NotInertError(f"page count changed from {pages} to {len(check.pages)}")
    return result, pages, removed


def _fresh_id() -> pikepdf.Array:
    import pikepdf

    return pikepdf.Array([pikepdf.String(os.urandom(16)), pikepdf.String(os.urandom(16))])


class Disarmer:
    """One pass over everything reachable from the trailer, removing what can act or carry a file.

    Keys are removed before their values would be visited, so removed subtrees are never walked;
    an object reached again by another path is processed once (indirect objects are keyed by
    object number). Iterative: hostile nesting cannot exhaust the Python stack.
    """

    def __init__(self, pdf: pikepdf.Pdf) -> None:
        self.pdf = pdf
        self.removed: Counter[str] = Counter()
        self._counted: set[tuple[int, int]] = set()

    def run(self) -> Counter[str]:
        import pikepdf

        seen: set[tuple[int, int]] = set()
        stack: list[pikepdf.Object] = [self.pdf.trailer]
        while stack:
            obj = stack.pop()
            if obj.is_indirect:
                if obj.objgen in seen:
                    continue
                seen.add(obj.objgen)
            if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
                self._dictionary(obj)
                stack.extend(v for v in obj.values() if _container(v))
            elif isinstance(obj, pikepdf.Array):
                self._array(obj)
                stack.extend(v for v in obj if _container(v))
        return self.removed

    # Counting -----------------------------------------------------------------------------

    def _count_action(self, action: pikepdf.Object) -> None:
        """Count an action being removed, and every action chained to it by /Next."""
        import pikepdf

        todo = [action]
        guard = 0
        while todo and guard < 10_000:
            guard += 1
            item = todo.pop()
            if isinstance(item, pikepdf.Array):
                todo.extend(item)
                continue
            if not isinstance(item, pikepdf.Dictionary):
                continue
            if item.is_indirect:
                if item.objgen in self._counted:
                    continue
                self._counted.add(item.objgen)
            # Script is script whatever /S claims (Acrobat runs /JS under a blank /S too).
            kind = "javascript" if "/JS" in item else ACTION_KINDS.get(str(item.get("/S")), "action")
            self.removed[kind] += 1
            nxt = item.get("/Next")
            if nxt is not None:
                todo.append(nxt)

    def _count_name_tree(self, tree: pikepdf.Object, kind: str) -> None:
        """Count a removed name tree: its actions by kind (JavaScript), or its entries."""
        import pikepdf

        try:
            values = list(pikepdf.NameTree(tree).values())
        except Exception:  # noqa: BLE001 - a broken tree is still removed; it counts once
            self.removed[kind] += 1
            return
        for value in values:
            if kind != "javascript":
                self.removed[kind] += 1
            elif _is_action(value):
                self._count_action(value)  # once per action, however many places name it

    # Rules ----------------------------------------------------------------------------------

    def _dictionary(self, d: pikepdf.Object) -> None:
        import pikepdf

        for key in list(d.keys()):
            value = d[key]
            if self._drop(d, key, value):  # counted while the value is still attached to the file
                del d[key]
        if isinstance(d, pikepdf.Stream) and any(k in d for k in _EXTERNAL_STREAM_KEYS):
            for k in _EXTERNAL_STREAM_KEYS:
                if k in d:
                    del d[k]
            self.removed["external-stream"] += 1
        if _is_dropped_annot(d):
            # Reachable some other way than /Annots (a popup's /Parent, a form field): keep the
            # dictionary but drop what it carries.
            for k in _ANNOT_PAYLOAD_KEYS:
                if k in d:
                    del d[k]
        if d.get("/Type") == "/EmbeddedFile" and isinstance(d, pikepdf.Stream):
            # Reached despite /EF removal (referenced from elsewhere): empty it.
            d.write(b"")
            for k in list(d.keys()):
                if k not in ("/Length",):
                    del d[k]
            self.removed["embedded-file"] += 1

    def _drop(self, d: pikepdf.Object, key: str, value: pikepdf.Object) -> bool:
        """Count what ``d[key]`` removes and say whether it goes (or rewrite it in place)."""
        import pikepdf

        if key == "/OpenAction":
            self.removed["open-action"] += 1
            if _is_action(value):
                self._count_action(value)
        elif key == "/AA":
            if isinstance(value, pikepdf.Dictionary):
                for trigger in value.values():
                    self._count_action(trigger)
        elif key == "/JavaScript":
            self._count_name_tree(value, "javascript")
        elif key == "/EmbeddedFiles":
            self._count_name_tree(value, "embedded-file")
        elif key == "/JS":
            if not (d.is_indirect and d.objgen in self._counted):  # else counted with its action
                self.removed["javascript"] += 1
        elif key == "/Next" and _is_action(d):
            self._count_action(value)
        elif key in _DROPPED_KEYS:
            kind = _DROPPED_KEYS[key]
            if kind is not None:
                self.removed[kind] += 1
        elif _is_action(value) and not _kept_action(value):
            self._count_action(value)
        elif _is_dropped_annot(value):
            pass  # a popup's /Parent, an /IRT reply: the annotation must become unreachable
        else:
            if key == "/Annots" and isinstance(value, pikepdf.Array):
                kept = self._annots(value)
                if kept is not None:
                    d[key] = kept
            return False
        return True

    def _annots(self, annots: pikepdf.Object) -> pikepdf.Array | None:
        """The annotations without those that carry files or media; None when nothing goes."""
        import pikepdf

        keep = []
        for annot in annots:
            subtype = annot.get("/Subtype") if isinstance(annot, pikepdf.Dictionary) else None
            if subtype is not None and str(subtype) in DROPPED_ANNOTS:
                self.removed[DROPPED_ANNOTS[str(subtype)]] += 1
                continue
            keep.append(annot)
        return pikepdf.Array(keep) if len(keep) != len(annots) else None

    def _array(self, arr: pikepdf.Object) -> None:
        for i, item in enumerate(arr):
            if _is_action(item) and not _kept_action(item):
                self._count_action(item)
                arr[i] = None
            elif _is_dropped_annot(item):
                arr[i] = None


def _container(obj: pikepdf.Object) -> bool:
    import pikepdf

    return isinstance(obj, pikepdf.Dictionary | pikepdf.Array | pikepdf.Stream)


def _is_action(obj: object) -> bool:
    import pikepdf

    if not isinstance(obj, pikepdf.Dictionary):
        return False
    if obj.get("/Type") == "/Action" or "/JS" in obj:
        return True
    subtype = obj.get("/S")
    return isinstance(subtype, pikepdf.Name) and str(subtype) in ACTION_KINDS


def _is_dropped_annot(obj: object) -> bool:
    import pikepdf

    return isinstance(obj, pikepdf.Dictionary) and str(obj.get("/Subtype")) in DROPPED_ANNOTS


def _kept_action(action: pikepdf.Object) -> bool:
    """An internal jump is kept (its /Next chain is removed separately); nothing else is."""
    subtype = action.get("/S")
    if subtype == "/GoTo":
        return "/JS" not in action
    if subtype == "/Named":
        return str(action.get("/N")) in _KEPT_NAMED and "/JS" not in action
    return False


def _walk_all(pdf: pikepdf.Pdf) -> Iterator[pikepdf.Object]:
    """Every dictionary, stream and array in the file: all indirect objects and what they nest."""
    import pikepdf

    seen: set[tuple[int, int]] = set()
    # pdf.objects hands indirect scalars back as Python values: only containers matter here.
    stack: list[pikepdf.Object] = [pdf.trailer, *(o for o in pdf.objects if _container(o))]
    while stack:
        obj = stack.pop()
        if obj.is_indirect:
            if obj.objgen in seen:
                continue
            seen.add(obj.objgen)
        if isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
            yield obj
            stack.extend(v for v in obj.values() if _container(v))
        elif isinstance(obj, pikepdf.Array):
            yield obj
            stack.extend(v for v in obj if _container(v))


def verify_inert(pdf: pikepdf.Pdf) -> list[str]:
    """What in ``pdf`` is still active (empty when nothing): the converter's own last check."""
    import pikepdf

    problems: list[str] = []
    for obj in _walk_all(pdf):
        if isinstance(obj, pikepdf.Array):
            continue
        keys = set(obj.keys())
        problems.extend(f"key {k}" for k in keys & FORBIDDEN_KEYS)
        if _is_action(obj) and not _kept_action(obj):
            problems.append(f"action {obj.get('/S')}")
        if "/Next" in keys and _is_action(obj):
            problems.append("chained action")
        if _is_dropped_annot(obj):
            problems.append(f"annotation {obj.get('/Subtype')}")
        if obj.get("/Type") == "/EmbeddedFile":
            problems.append("embedded file stream")
        if isinstance(obj, pikepdf.Stream) and keys & set(_EXTERNAL_STREAM_KEYS):
            problems.append("external stream")
    return problems


# -- rasterize --------------------------------------------------------------------------------


def rasterize(
    data: bytes,
    *,
    dpi: int,
    max_pages: int,
    max_page_pixels: int,
    max_output_bytes: int,
    image_format: str,
    jpeg_quality: int,
) -> tuple[bytes, int, Counter[str]]:
    """Return (image-only PDF, page count, inventory of the original's active content)."""
    import pypdfium2 as pdfium  # type: ignore[import-untyped]
    import pypdfium2.raw as pdfium_c  # type: ignore[import-untyped]

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code == pdfium_c.FPDF_ERR_PASSWORD:
            raise HeldError("encrypted", "a password is needed to open the PDF") from None
        raise
    try:
        count = len(doc)
        if count < 1:
            raise ValueError("the PDF has no pages")
        if count > max_pages:
            raise HeldError("limit-exceeded", f"{count} pages, more than the cap of {max_pages}")
        if not {"V8", "XFA"} & set(pdfium.PDFIUM_INFO.flags):
            # Draw form fields as they look; never with a pdfium build that could run their scripts.
            doc.init_forms()
        images: list[tuple[bytes, int, int, float]] = []
        total = 0
        for index in range(count):
            page = doc[index]
            try:
                width, height = page.get_width(), page.get_height()
                if not (math.isfinite(width) and math.isfinite(height)) or width <= 0 or height <= 0:
                    raise ValueError(f"page {index + 1} has no usable size")
                scale = dpi / 72 * (1 - 1e-9)  # 792 pt × 150/72 is 1650 px, not ceil(1650.0000000002)
                pixels = width * scale * height * scale
                if pixels > max_page_pixels:
                    scale *= math.sqrt(max_page_pixels / pixels) * 0.999
                scale = max(scale, 1 / min(width, height))  # at least one pixel each way
                if width * scale * height * scale > max_page_pixels * 1.01:
                    raise HeldError("limit-exceeded", f"page {index + 1} is too large to render")
                # RGBx: Pillow wraps it without a copy, and its JPEG encoder takes it as is.
                bitmap = page.render(scale=scale, rev_byteorder=True, prefer_bgrx=True, draw_annots=True)
                try:
                    encoded, w_px, h_px = _encode(bitmap, image_format, jpeg_quality)
                finally:
                    bitmap.close()
            finally:
                page.close()
            total += len(encoded)
            if total > max_output_bytes:
                raise HeldError(
                    "limit-exceeded", f"rasterized pages pass the output cap of {max_output_bytes} bytes"
                )
            images.append((encoded, w_px, h_px, scale * 72))
    finally:
        doc.close()
    return _image_pdf(images, image_format), count, _inventory(data)


def _encode(bitmap: Any, image_format: str, jpeg_quality: int) -> tuple[bytes, int, int]:
    image = bitmap.to_pil()
    if image.mode not in ("RGB", "RGBX"):
        image = image.convert("RGB")
    if image_format == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=jpeg_quality)
        return buf.getvalue(), image.width, image.height
    return zlib.compress(image.tobytes("raw", "RGB"), 1), image.width, image.height


def _image_pdf(images: list[tuple[bytes, int, int, float]], image_format: str) -> bytes:
    """A new PDF, one full-page image per page: nothing else (no /Info, no XMP, no text)."""
    import pikepdf

    out = pikepdf.new()
    for encoded, w_px, h_px, effective_dpi in images:
        w_pt, h_pt = w_px * 72 / effective_dpi, h_px * 72 / effective_dpi
        image = pikepdf.Stream(out, encoded)
        image.Type = pikepdf.Name.XObject
        image.Subtype = pikepdf.Name.Image
        image.Width = w_px
        image.Height = h_px
        image.ColorSpace = pikepdf.Name.DeviceRGB
        image.BitsPerComponent = 8
        image.Filter = pikepdf.Name.DCTDecode if image_format == "jpeg" else pikepdf.Name.FlateDecode
        content = pikepdf.Stream(out, f"q {w_pt:.4f} 0 0 {h_pt:.4f} 0 0 cm /Im0 Do Q".encode("ascii"))
        page = pikepdf.Dictionary(
            Type=pikepdf.Name.Page,
            MediaBox=pikepdf.Array([0, 0, round(w_pt, 4), round(h_pt, 4)]),
            Resources=pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=image)),
            Contents=content,
        )
        out.pages.append(pikepdf.Page(out.make_indirect(page)))
    if "/Info" in out.trailer:
        del out.trailer["/Info"]
    out.trailer.ID = _fresh_id()
    buf = io.BytesIO()
    out.save(
        buf,
        compress_streams=True,
        stream_decode_level=pikepdf.StreamDecodeLevel.none,
        object_stream_mode=pikepdf.ObjectStreamMode.generate,
        fix_metadata_version=False,
    )
    return buf.getvalue()


def _inventory(data: bytes) -> Counter[str]:
    """What the original carried that the rasterized copy no longer has (best effort)."""
    try:
        with _open(data) as pdf:
            return Disarmer(pdf).run()
    except Exception:  # noqa: BLE001 - the inventory is informative; pdfium already rendered the file
        return Counter()
