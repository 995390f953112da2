"""LibreOffice per document: detox's resident, sandboxed instance against a cold ``soffice --convert-to``.

    .venv/bin/python bench/libreoffice.py                  # our documents + the corpus's, median of 3
    .venv/bin/python bench/libreoffice.py --rounds 5 --no-corpus

Documents: a .doc, .xls, .ppt and .rtf with Japanese text, made here by LibreOffice from flat ODF (as
tests/unit/test_libreoffice.py does), a 30-page .doc, and, when ``../shared/corpus/docs`` (or
``$DETOX_CORPUS/docs``) is there, its legacy Word/Excel/PowerPoint and RTF files that LibreOffice
converts. Every document goes through both paths in the same run, alternating:

* ``resident``: :meth:`detox.sandbox.libreoffice.LibreOffice.convert` — the document over the pipe into
  the bubblewrap sandbox, LibreOffice's load and PDF export, the PDF back. The instance is started (and
  timed: ``start-up``) before the first document and not counted per document;
* ``cold``: ``soffice --headless --convert-to pdf`` as one process per document, unsandboxed, with one
  user profile made beforehand (a fresh profile per document would add ~1 s more);
* ``filter``: for scale, the whole office filter on the same file — the sandboxed look at the OLE
  file, LibreOffice, then the sandboxed rasterizer at 150 dpi.

Printed: seconds per document (median of ``--rounds``), and cold ÷ resident. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from detox.config.schema import DetoxConfig
from detox.errors import SandboxError
from detox.filters.base import FilterContext
from detox.filters.office import OfficeFilter, OfficeOptions
from detox.pipeline.model import Part, Role
from detox.pipeline.runner import detect_type
from detox.sandbox import libreoffice, make_sandbox
from detox.sandbox.libreoffice import FILTERS, OfficeSettings, instance_for, stop_all

JAPANESE = "①㈱髙橋の見積書"
NS = (
    'xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" '
    'xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" '
    'xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" '
    'xmlns:draw="urn:oasis:names:tc:opendocument:xmlns:drawing:1.0" '
    'xmlns:svg="urn:oasis:names:tc:opendocument:xmlns:svg-compatible:1.0"'
)
APPLICATION = {"doc": "word", "xls": "excel", "ppt": "powerpoint", "rtf": "rtf"}


@dataclasses.dataclass
class Row:
    document: str
    size: int
    resident_s: float
    cold_s: float
    filter_s: float


def flat_odf(kind: str, body: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<office:document {NS} office:version="1.3" '
        f'office:mimetype="application/vnd.oasis.opendocument.{kind}"><office:body>{body}</office:body>'
        "</office:document>\n"
    )


def sources() -> dict[str, tuple[str, str, str]]:
    """name → (flat ODF file, its content, target format)."""
    para = f"<text:p>{JAPANESE} 見積明細のご案内です。" + "あいうえおかきくけこ" * 6 + "</text:p>"
    text = flat_odf("text", f"<office:text>{para * 12}</office:text>")
    long_text = flat_odf("text", f"<office:text>{para * 500}</office:text>")
    rows = "".join(
        f'<table:table-row><table:table-cell office:value-type="string"><text:p>{JAPANESE}{i}</text:p>'
        f'</table:table-cell><table:table-cell office:value-type="float" office:value="{i}">'
        f"<text:p>{i}</text:p></table:table-cell></table:table-row>"
        for i in range(200)
    )
    sheet = flat_odf(
        "spreadsheet",
        f'<office:spreadsheet><table:table table:name="明細">{rows}</table:table></office:spreadsheet>',
    )
    pages = "".join(
        f'<draw:page draw:name="p{i}"><draw:frame svg:x="2cm" svg:y="3cm" svg:width="22cm" svg:height="5cm">'
        f"<draw:text-box><text:p>{JAPANESE} {i}</text:p></draw:text-box></draw:frame></draw:page>"
        for i in range(5)
    )
    slides = flat_odf("presentation", f"<office:presentation>{pages}</office:presentation>")
    return {
        "見積書.doc": ("text.fodt", text, "doc"),
        "見積書.rtf": ("text.fodt", text, "rtf"),
        "明細.xls": ("sheet.fods", sheet, "xls"),
        "説明.ppt": ("slides.fodp", slides, "ppt"),
        "長文30頁.doc": ("long.fodt", long_text, "doc"),
    }


def cold_convert(path: Path, outdir: Path, profile: Path, timeout: float = 120) -> float:
    """One ``soffice --convert-to pdf`` process; its wall time (its group is killed on a timeout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            "soffice",
            "--headless",
            "--norestore",
            "--nolockcheck",
            f"-env:UserInstallation=file://{profile}",
            "--convert-to",
            "pdf",
            "--outdir",
            str(outdir),
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    elapsed = time.perf_counter() - started
    if not (outdir / f"{path.stem}.pdf").is_file():
        raise RuntimeError(f"soffice made no PDF of {path.name}")
    return elapsed


def make_documents(work: Path, profile: Path) -> dict[str, bytes]:
    made: dict[str, bytes] = {}
    for name, (source, content, target) in sources().items():
        src = work / "src" / source
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(content, encoding="utf-8")
        out = work / "made" / target
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "soffice",
                "--headless",
                "--norestore",
                f"-env:UserInstallation=file://{profile}",
                "--convert-to",
                target,
                "--outdir",
                str(out),
                str(src),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=180,
            check=True,
        )
        made[name] = (out / f"{src.stem}.{target}").read_bytes()
    return made


def corpus_documents(corpus: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for path in sorted(corpus.rglob("*")):
        if path.is_file() and path.suffix.lower().lstrip(".") in APPLICATION and "encrypted" not in path.name:
            found[path.relative_to(corpus).as_posix()] = path.read_bytes()
    return found


def median_time(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-corpus", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    missing = libreoffice.unavailable_reason("soffice", libreoffice.DEFAULT_PYTHON)
    if missing is not None:
        print(f"bench: LibreOffice cannot run here: {missing}", file=sys.stderr)
        return 2
    config = DetoxConfig.model_validate({"sandbox": {"provider": "bwrap"}})
    try:
        sandbox = make_sandbox(config)
    except SandboxError as exc:
        print(f"bench: no sandbox: {exc}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="detox-bench-lo-") as tmp:
        work = Path(tmp)
        profile = work / "profile"
        documents = make_documents(work, profile)  # also makes the cold runs' profile
        if not args.no_corpus:
            default = Path(__file__).resolve().parents[2] / "shared" / "corpus"
            corpus = Path(os.environ.get("DETOX_CORPUS", default)) / "docs"
            if corpus.is_dir():
                documents.update(corpus_documents(corpus))
            else:
                print(f"(no corpus at {corpus}: only the generated documents)")
        office = instance_for(sandbox, OfficeSettings(documents_per_instance=100_000))
        ctx = FilterContext("BENCH", "example.jp", config, sandbox=sandbox)
        flt = OfficeFilter(OfficeOptions(documents_per_instance=100_000))
        try:
            started = time.perf_counter()
            first = next(iter(documents.values()))
            office.convert(
                first,
                extension="doc",
                filters=FILTERS["word"],
                timeout_s=60,
                max_pages=1000,
                max_output_bytes=1 << 28,
            )
            print(f"resident start-up + first document: {time.perf_counter() - started:.2f} s")
            for name, data in documents.items():
                kind = name.rsplit(".", 1)[1].lower()
                path = work / "cold" / hashlib.sha256(data).hexdigest()[:12] / f"doc.{kind}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

                def resident(data: bytes = data, kind: str = kind) -> None:
                    result = office.convert(
                        data,
                        extension=kind,
                        filters=FILTERS[APPLICATION[kind]],
                        timeout_s=120,
                        max_pages=1000,
                        max_output_bytes=1 << 28,
                    )
                    if result.status != "ok":
                        raise RuntimeError(result.status)

                try:
                    resident()
                except (RuntimeError, SandboxError) as exc:
                    print(f"  skipped {name}: LibreOffice does not convert it ({exc})")
                    continue
                part = Part(
                    "2",
                    Role.ATTACHMENT,
                    "application/octet-stream",
                    detect_type(data),
                    None,
                    Path(name).name,
                    data,
                    "",
                )
                cold_s: list[float] = []
                resident_s: list[float] = []
                for _ in range(args.rounds):  # alternating, so drift hits both alike
                    resident_s.append(median_time(resident, 1))
                    cold_s.append(cold_convert(path, path.parent, profile))
                try:
                    filter_s = median_time(lambda part=part: flt.process(part, ctx), args.rounds)
                except SandboxError:
                    filter_s = float("nan")  # held by the runner as a filter error
                rows.append(
                    Row(name, len(data), statistics.median(resident_s), statistics.median(cold_s), filter_s)
                )
        finally:
            stop_all()
    width = max((len(r.document) for r in rows), default=10)
    print(f"\n{'document':<{width}}  {'bytes':>9}  {'resident s':>10}  {'cold s':>8}  ", end="")
    print(f"{'cold/res':>8}  {'filter s':>8}")
    for r in rows:
        print(
            f"{r.document:<{width}}  {r.size:>9}  {r.resident_s:>10.3f}  {r.cold_s:>8.3f}  "
            f"{r.cold_s / r.resident_s:>8.1f}  {r.filter_s:>8.3f}"
        )
    if rows:
        res = statistics.median(r.resident_s for r in rows)
        cold = statistics.median(r.cold_s for r in rows)
        filt = statistics.median(r.filter_s for r in rows)
        print(
            f"\nmedian over {len(rows)} documents: resident {res:.3f} s, cold {cold:.3f} s "
            f"({cold / res:.1f}x), whole filter {filt:.3f} s"
        )
    if args.json:
        args.json.write_text(
            json.dumps([dataclasses.asdict(r) for r in rows], ensure_ascii=False, indent=1), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    if shutil.which("soffice") is None:
        print(
            "bench: soffice not found (scripts/install-system-deps.sh installs LibreOffice)", file=sys.stderr
        )
        sys.exit(2)
    sys.exit(main())
