"""Mails with attachments through ``detox serve`` against the bare relay, and seconds per PDF page, one run.

    .venv/bin/python bench/attachments.py                   # 300 mails x 2 rounds per server, 10 per page run
    .venv/bin/python bench/attachments.py --messages 60 --rounds 1 --page-runs 5

What runs (127.0.0.1 only; every process started here is stopped by PID at the end): bench/stampsink.py as
the downstream (it stamps each arrival), ``../shared/peers/relay.py --loop uvloop --client aiosmtplib-pool``
as the baseline, ``.venv/bin/detox serve`` with the shipped defaults (PDF rasterized at 150 dpi, JPEG pages;
Office rebuilt; images re-encoded; all converters in the sandbox) except a temporary state_dir and STARTTLS
off. The mails are bench/loadgen.py's, made in the client process, each unique:

* ``pdf``:  a Japanese text body + 議事録.pdf, 5 A4 pages, each a Pillow picture of Japanese text (~1.2 MB);
* ``docx``: a Japanese text body + 見積書.docx, a minimal OOXML package with Japanese paragraphs (~4 KB);
* ``jpeg``: a Japanese text body + 現場写真.jpg, 1600×1200 at quality 85 (~0.8 MB).

Part 1, throughput: ``--messages`` mails of the three kinds in turn, ``--sessions`` concurrent sessions,
one per connection, to each server in alternating order for ``--rounds`` rounds. ``delivered msg/s`` is
messages / (client start → last arrival at the sink); ``CPU ms/msg`` is utime+stime of the server's whole
process tree (detox: its workers and sandboxed converters too) over that window.

Part 2, seconds per rasterized page of the same PDF, in the same run:

* ``detox service``: one mail at a time through the running detox, alternating the pdf mail with the same
  mail without the attachment; (median 250→sink of the pdf mail − median of the plain one) / pages. This is
  what the PDF path costs inside the service: the sandboxed child's start, pypdfium2 at 150 dpi, JPEG
  pages, the image-only PDF, and its share of composing and delivering a larger message. The whole mail
  ÷ pages is printed too;
* ``detox converter in-process`` / ``in sandbox``: ``detox.converters.pdf`` as bench/pdf_raster.py calls it;
  in the sandbox both ways: resident (``sandbox.resident_converters = true``, the default: a child forked
  by the zygote per run, after one untimed run that starts it) and one-shot (bwrap and Python per run);
* ``pdftoppm -r 150 -png`` / ``-jpeg``: one poppler process per run writing into a temporary directory.

Medians of ``--page-runs``. Nothing is asserted; the goal (≤ 0.05 s/page at 150 dpi) is printed beside.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import loadgen  # noqa: E402
import throughput  # noqa: E402
from harness import Harness  # noqa: E402

GOAL_S_PER_PAGE = 0.05


def throughput_run(h: Harness, name: str, n: int, sessions: int, rnd: int) -> dict[str, Any]:
    server = h.bench.servers[name]
    main = server.main_pid()
    cpu0, own0 = throughput.tree_cpu_seconds(server.pid, main)
    h.bench.sampler.reset(name)
    sent, result = h.client(server.port, "mix", n, sessions=sessions)
    last = h.wait_arrivals(sent, name)
    cpu1, own1 = throughput.tree_cpu_seconds(server.pid, main)
    rss, pss = h.bench.sampler.peak(name)
    errors = [s.error for s in sent if s.error]
    ok = n - len(errors)
    end = last if last is not None else time.time()
    run = {
        "server": name,
        "round": rnd,
        "n": n,
        "errors": errors,
        "delivered_rate": ok / (end - result["start"]),
        "accepted_rate": ok / (result["end"] - result["start"]),
        "cpu_ms": 1000 * (cpu1 - cpu0) / n,
        "cpu_main_ms": 1000 * (own1 - own0) / n,
        "rss_mb": rss,
        "pss_mb": pss,
        "missing": sum(1 for s in sent if s.error is None and s.arrived is None),
        "audit": h.audit_summary() if name == "detox" else {},
    }
    print(
        f"  round {rnd}  {name:6} {n:4} mails: delivered {run['delivered_rate']:6.1f} msg/s, accepted "
        f"{run['accepted_rate']:6.1f} msg/s, CPU {run['cpu_ms']:7.1f} ms/msg, errors {len(errors)}, "
        f"missing {run['missing']}",
        flush=True,
    )
    return run


def one_mail(h: Harness, kind: str) -> float:
    """One mail through detox on its own; seconds from its 250 to its arrival at the sink."""
    sent, _ = h.client(h.port("detox"), kind, 1, sessions=1)
    h.wait_arrivals(sent, "detox")
    s = sent[0]
    if s.error or s.arrived is None:
        raise RuntimeError(f"{kind} mail: {s.error or 'did not arrive'}")
    return s.arrived - s.t250


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pdftoppm(path: Path, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(["pdftoppm", "-r", "150", f"-{fmt}", str(path), f"{out}/p"], check=True, timeout=300)


def per_page(h: Harness, runs: int, workdir: Path) -> list[tuple[str, float, str]]:
    """Rows (label, seconds per page, note)."""
    pdf = loadgen.make_pdf()
    pages = loadgen.PDF_PAGES
    path = workdir / "bench.pdf"
    path.write_bytes(pdf)
    rows: list[tuple[str, float, str]] = []
    with_pdf: list[float] = []
    without: list[float] = []
    for _ in range(runs):
        with_pdf.append(one_mail(h, "pdf"))
        without.append(one_mail(h, "pdfbase"))
    med_pdf, med_base = statistics.median(with_pdf), statistics.median(without)
    rows.append(
        (
            "detox service: (pdf mail − same mail without it) / pages",
            (med_pdf - med_base) / pages,
            f"250→sink medians {med_pdf:.3f} s − {med_base:.3f} s",
        )
    )
    rows.append(("detox service: whole pdf mail / pages", med_pdf / pages, "250→sink median ÷ pages"))
    try:
        import pdf_raster

        args: dict[str, object] = {"mode": "rasterize", "dpi": 150, "image_format": "jpeg"}
        conv = pdf_raster.converter(pdf, args)
        rows.append(
            (
                "detox converter in-process (jpeg q85)",
                statistics.median(timed(conv) for _ in range(runs)) / pages,
                "detox.converters.pdf.main",
            )
        )
        for resident, what in (
            (True, "resident zygote: one fork per run"),
            (False, "one-shot: sandbox start included"),
        ):
            sandbox, note = pdf_raster.find_sandbox(resident)
            if sandbox is not None:
                run = pdf_raster.through_sandbox(sandbox, pdf, args)
                run()  # the zygote starts on its first run: not a per-document cost
                rows.append(
                    (
                        f"detox converter in sandbox ({note}, {'resident' if resident else 'one-shot'})",
                        statistics.median(timed(run) for _ in range(runs)) / pages,
                        what,
                    )
                )
    except Exception as exc:  # the service figure above stands on its own
        rows.append(("detox converter", float("nan"), f"skipped: {type(exc).__name__}: {exc}"))
    if shutil.which("pdftoppm"):
        for fmt in ("png", "jpeg"):
            secs = statistics.median(timed(functools.partial(pdftoppm, path, fmt)) for _ in range(runs))
            rows.append((f"pdftoppm -r 150 -{fmt}", secs / pages, "one process per run"))
    else:
        rows.append(("pdftoppm", float("nan"), "poppler-utils not installed"))
    return rows


def report(
    runs: list[dict[str, Any]],
    names: list[str],
    args: argparse.Namespace,
    pages: list[tuple[str, float, str]],
) -> None:
    print(
        f"\n### throughput: pdf/docx/jpeg mails in turn, {args.sessions} sessions, 1 per connection, "
        f"{args.messages} mails x {args.rounds} rounds\n"
    )
    head = [
        "server",
        *(f"r{i} msg/s" for i in range(1, args.rounds + 1)),
        "median msg/s",
        "accepted msg/s (median)",
        "CPU ms/msg (median)",
        "peak RSS MB",
        "peak PSS MB",
        "errors",
        "missing",
    ]
    rows = []
    med: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}
    for name in names:
        mine = sorted((r for r in runs if r["server"] == name), key=lambda r: r["round"])
        if not mine:
            continue
        rates = [r["delivered_rate"] for r in mine]
        per_round[name] = rates
        med[name] = statistics.median(rates)
        rows.append(
            [
                name,
                *(f"{x:.1f}" for x in rates),
                f"{med[name]:.1f}",
                f"{statistics.median(r['accepted_rate'] for r in mine):.1f}",
                f"{statistics.median(r['cpu_ms'] for r in mine):.1f}",
                f"{max(r['rss_mb'] for r in mine):.0f}",
                f"{max(r['pss_mb'] for r in mine):.0f}",
                str(sum(len(r["errors"]) for r in mine)),
                str(sum(r["missing"] for r in mine)),
            ]
        )
    for line in throughput._table(head, rows):
        print(line)
    if "relay" in med and "detox" in med:
        paired = [d / r for d, r in zip(per_round["detox"], per_round["relay"], strict=False) if r]
        print(
            f"\nratio detox/relay delivered msg/s: {med['detox'] / med['relay']:.2f} (of the medians); "
            f"paired per round {', '.join(f'{p:.2f}' for p in paired)}"
        )
    for r in runs:
        extra = {k: v for k, v in r["audit"].items() if k not in ("received", "detoxified", "delivered")}
        if extra or r["errors"]:
            print(f"note: round {r['round']} {r['server']}: audit {r['audit']} errors {r['errors'][:3]}")
    if pages:
        print(
            f"\n### seconds per page, the same {loadgen.PDF_PAGES}-page PDF at 150 dpi "
            f"(median of {args.page_runs}; goal ≤ {GOAL_S_PER_PAGE} s/page)\n"
        )
        for line in throughput._table(
            ["path", "s/page", "note"], [[label, f"{v:.4f}", note] for label, v, note in pages]
        ):
            print(line)
    print(
        "\nNoisy shared 2-vCPU VM: the client, the servers, detox's workers and converters and the sink "
        "share the cores. Compare only within this run."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=300, help="mails per throughput run (default 300)")
    ap.add_argument("--rounds", type=int, default=2, help="throughput rounds per server, alternating")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent client sessions")
    ap.add_argument("--warmup", type=int, default=15, help="warm-up mails per server")
    ap.add_argument("--page-runs", type=int, default=10, help="runs of each seconds-per-page measurement")
    ap.add_argument("--skip-pages", action="store_true", help="throughput only")
    harness.add_common_args(ap)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, harness.raise_interrupt)
    signal.signal(signal.SIGINT, harness.raise_interrupt)
    h = Harness(args, "detox-attach-")
    print(harness.machine_line("detox attachments bench", h.workdir), flush=True)
    runs: list[dict[str, Any]] = []
    pages: list[tuple[str, float, str]] = []
    names: list[str] = []
    ok = False
    try:
        sink = h.start_stampsink()
        names = h.start_servers(sink)
        print("  " + ", ".join(f"{n} on :{h.port(n)}" for n in names) + f", stampsink on :{sink}", flush=True)
        for name in names:
            h.bench.sampler.watch(name, h.bench.servers[name].pid)
        h.bench.sampler.start()
        for name in names:
            sent, _ = h.client(h.port(name), "mix", args.warmup, sessions=args.sessions)
            h.wait_arrivals(sent, name)
            print(f"  warm-up  {name:6} {args.warmup} mails", flush=True)
        h.audit_summary()  # forget the warm-up's events
        for rnd in range(1, args.rounds + 1):
            for name in names if rnd % 2 else list(reversed(names)):
                runs.append(throughput_run(h, name, args.messages, args.sessions, rnd))
                time.sleep(args.settle)
        if not args.skip_pages:
            pages = per_page(h, args.page_runs, h.workdir)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    finally:
        h.stop()
    try:
        if runs or pages:
            print(f"\n## detox vs bare relay, mails with attachments — {time.strftime('%Y-%m-%d %H:%M')}")
            print(f"command: {sys.executable} {' '.join(sys.argv)}")
            report(runs, names, args, pages)
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": runs, "pages": pages}), encoding="utf-8")
    finally:
        h.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
