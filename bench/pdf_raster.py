"""PDF rasterization: seconds per page through detox's converter against ``pdftoppm``, in one run.

    .venv/bin/python bench/pdf_raster.py                 # 150 dpi, best of 3
    .venv/bin/python bench/pdf_raster.py --dpi 100 --rounds 5

Inputs are generated here (nothing is read from the corpus):

* ``sample``: 20 Letter pages of text (Helvetica, ~45 lines each), a table of rules and, on every third
  page, a 800×500 RGB picture — like the LibreOffice export of ``shared/peers/pdf/mkdocx.py``;
* ``scan``: 10 A4 pages, each one 1654×2339 JPEG (200 dpi, blurred text and noise) — the idea of
  ``shared/peers/pdf/mkscan.py``.

Rows (each the best of ``--rounds``; wall clock, divided by the page count):

* ``detox rasterize jpeg (in-process)``: :func:`detox.converters.pdf.main` as the sandbox child calls it —
  render (pypdfium2), JPEG q85, the image-only PDF written with pikepdf, and the inventory walk;
* ``detox rasterize png (in-process)``: the same with lossless pages (deflate level 1);
* ``detox rasterize jpeg (sandbox: NAME)``: the same through ``make_sandbox`` (process start, imports,
  bubblewrap when available) — skipped with a note when detox.sandbox has no provider yet;
* ``detox sanitize (in-process)``: for scale, the other mode;
* ``pdftoppm -png`` / ``-jpeg``: poppler 22.12, one process per document writing into a temporary
  directory (the baseline in shared/design/baselines.md §5). When poppler-utils is absent this says so.

A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pikepdf
from pikepdf import Array, Dictionary, Name
from PIL import Image, ImageDraw, ImageFilter

from detox.config.schema import DetoxConfig, SandboxConfig
from detox.errors import SandboxError
from detox.sandbox import make_sandbox
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.inside.converters import pdf as conv

WORDS = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "invoice",
    "payment",
    "account",
    "transfer",
]


def _picture(rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (800, 500), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x0, y0 = rng.randint(0, 700), rng.randint(0, 400)
        shade = rng.randint(0, 255)
        draw.rectangle(
            [x0, y0, x0 + rng.randint(10, 100), y0 + rng.randint(10, 100)],
            outline=(shade, shade, shade),
            width=3,
        )
    return img


def make_sample(pages: int = 20) -> bytes:
    rng = random.Random(1)
    pdf = pikepdf.new()
    font = pdf.make_indirect(
        Dictionary(Type=Name.Font, Subtype=Name.Type1, BaseFont=Name.Helvetica, Encoding=Name.WinAnsiEncoding)
    )
    picture = _picture(rng)
    image = pdf.make_stream(
        picture.tobytes(),
        Type=Name.XObject,
        Subtype=Name.Image,
        Width=picture.width,
        Height=picture.height,
        ColorSpace=Name.DeviceRGB,
        BitsPerComponent=8,
    )
    for p in range(pages):
        ops = [f"BT /F1 16 Tf 72 740 Td (Section {p + 1}: quarterly report) Tj ET"]
        y = 715
        lines = 45 if p % 3 else 25
        for _ in range(lines):
            line = " ".join(rng.choice(WORDS) for _ in range(14))
            ops.append(f"BT /F1 10 Tf 72 {y} Td ({line}) Tj ET")
            y -= 14
        if p % 3 == 0:
            ops.append("q 360 0 0 225 126 60 cm /Im0 Do Q")
        else:
            ops.append("0.5 w")
            for row in range(7):
                ops.append(f"72 {60 + row * 12} m 540 {60 + row * 12} l S")
        page = Dictionary(
            Type=Name.Page,
            MediaBox=Array([0, 0, 612, 792]),
            Resources=Dictionary(Font=Dictionary(F1=font), XObject=Dictionary(Im0=image)),
            Contents=pdf.make_stream("\n".join(ops).encode("latin-1")),
        )
        pdf.pages.append(pikepdf.Page(pdf.make_indirect(page)))
    buf = io.BytesIO()
    pdf.save(buf, compress_streams=True)
    return buf.getvalue()


def make_scan(pages: int = 10) -> bytes:
    rng = random.Random(2)
    pdf = pikepdf.new()
    for _ in range(pages):
        im = Image.new("RGB", (1654, 2339), (250, 248, 240))
        draw = ImageDraw.Draw(im)
        for y in range(150, 2200, 38):
            words = (
                "".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(14)
            )
            draw.text((120, y), " ".join(words), fill=(20, 20, 20))
        for _ in range(4000):
            shade = rng.randint(120, 200)
            draw.point((rng.randint(0, 1653), rng.randint(0, 2338)), fill=(shade, shade, shade))
        im = im.filter(ImageFilter.GaussianBlur(0.6))
        jpeg = io.BytesIO()
        im.save(jpeg, "JPEG", quality=80)
        image = pdf.make_stream(
            jpeg.getvalue(),
            Type=Name.XObject,
            Subtype=Name.Image,
            Width=1654,
            Height=2339,
            ColorSpace=Name.DeviceRGB,
            BitsPerComponent=8,
            Filter=Name.DCTDecode,
        )
        page = Dictionary(
            Type=Name.Page,
            MediaBox=Array([0, 0, 595.28, 841.89]),
            Resources=Dictionary(XObject=Dictionary(Im0=image)),
            Contents=pdf.make_stream(b"q 595.28 0 0 841.89 0 0 cm /Im0 Do Q"),
        )
        pdf.pages.append(pikepdf.Page(pdf.make_indirect(page)))
    buf = io.BytesIO()
    pdf.save(buf)
    return buf.getvalue()


def best_of(rounds: int, fn: Callable[[], int]) -> tuple[float, int]:
    """(best wall-clock seconds, output bytes of the last run)."""
    best, size = float("inf"), 0
    for _ in range(rounds):
        start = time.perf_counter()
        size = fn()
        best = min(best, time.perf_counter() - start)
    return best, size


def converter(data: bytes, args: dict[str, object]) -> Callable[[], int]:
    def run() -> int:
        header, out = conv.unpack_result(conv.main(data, dict(args)))
        assert header["status"] == "ok", header
        return len(out)

    return run


def through_sandbox(sandbox: Sandbox, data: bytes, args: dict[str, object]) -> Callable[[], int]:
    def run() -> int:
        header, out = conv.unpack_result(sandbox.run("pdf", data, args, Limits(timeout_s=300, cpu_s=300)))
        assert header["status"] == "ok", header
        return len(out)

    return run


def pdftoppm(path: Path, dpi: int, fmt: str) -> Callable[[], int]:
    def run() -> int:
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(["pdftoppm", "-r", str(dpi), f"-{fmt}", str(path), f"{out}/p"], check=True)
            return sum(f.stat().st_size for f in Path(out).iterdir())

    return run


def find_sandbox(resident: bool = True) -> tuple[Sandbox | None, str]:
    """bwrap, else the unsandboxed provider; ``resident``: sandbox.resident_converters (the zygote)."""
    errors = []
    for cfg in (
        SandboxConfig(provider="bwrap", resident_converters=resident),
        SandboxConfig(provider="subprocess", allow_unsandboxed=True, resident_converters=resident),
    ):
        try:
            return make_sandbox(DetoxConfig(sandbox=cfg)), cfg.provider
        except SandboxError as exc:
            errors.append(f"{cfg.provider}: {exc}")
    return None, "; ".join(errors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()

    docs = {"sample": make_sample(), "scan": make_scan()}
    pages = {name: len(pikepdf.open(io.BytesIO(data)).pages) for name, data in docs.items()}
    sandbox, sandbox_note = find_sandbox()
    have_poppler = shutil.which("pdftoppm") is not None
    jpeg_args: dict[str, object] = {"mode": "rasterize", "dpi": opts.dpi, "image_format": "jpeg"}
    png_args: dict[str, object] = {"mode": "rasterize", "dpi": opts.dpi, "image_format": "png"}

    print(
        f"{opts.dpi} dpi, best of {opts.rounds}; "
        + ", ".join(f"{n}: {pages[n]} pages, {len(d) // 1024} KB" for n, d in docs.items())
    )
    print(f"{'tool / output':44s} " + " ".join(f"{n + ' s/page':>14s} {n + ' out':>10s}" for n in docs))
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, data in docs.items():
            paths[name] = Path(tmp) / f"{name}.pdf"
            paths[name].write_bytes(data)
        rows: list[tuple[str, Callable[[str], Callable[[], int]] | None, str]] = [
            ("detox rasterize jpeg q85 (in-process)", lambda n: converter(docs[n], jpeg_args), ""),
            ("detox rasterize png/deflate-1 (in-process)", lambda n: converter(docs[n], png_args), ""),
            (
                f"detox rasterize jpeg (sandbox: {sandbox_note if sandbox else 'none'})",
                (lambda n: through_sandbox(sandbox, docs[n], jpeg_args)) if sandbox else None,
                sandbox_note,
            ),
            ("detox sanitize (in-process)", lambda n: converter(docs[n], {"mode": "sanitize"}), ""),
            (
                "pdftoppm -png",
                (lambda n: pdftoppm(paths[n], opts.dpi, "png")) if have_poppler else None,
                "poppler-utils not installed (apt-get install -y poppler-utils)",
            ),
            (
                "pdftoppm -jpeg",
                (lambda n: pdftoppm(paths[n], opts.dpi, "jpeg")) if have_poppler else None,
                "poppler-utils not installed (apt-get install -y poppler-utils)",
            ),
        ]
        for label, make, note in rows:
            if make is None:
                print(f"{label:44s} skipped: {note}")
                continue
            cells = []
            for name in docs:
                seconds, size = best_of(opts.rounds, make(name))
                cells.append(f"{seconds / pages[name]:14.4f} {size // 1024:>8d}KB")
            print(f"{label:44s} " + " ".join(cells))


if __name__ == "__main__":
    main()
