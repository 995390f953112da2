"""CPU per message of the ``detox serve`` MAIN process: this tree against another checkout, interleaved.

    .venv/bin/python bench/main_profile.py --against /tmp/old              # 3 x 500 jp-html msgs each
    .venv/bin/python bench/main_profile.py --against /tmp/old --tmpdir /var/tmp --rounds 4

The main process does SMTP in, spooling, hand-off, index, audit and delivery; the pipeline runs in its
worker processes. ``throughput.py`` gives its CPU as one figure (``main proc``); this script puts two
detox servers side by side on one smtp-sink (this tree, and ``--against DIR``, whose ``detox/`` is
imported from DIR with the same venv) and alternates rounds between them (ABBA), so both see the same
host. Per run it splits the main process's utime+stime into the event-loop thread and the other
threads (``asyncio.to_thread`` pool, the process pool's manager threads), from ``/proc/PID/stat`` and
``/proc/PID/task/PID/stat``.

``--tmpdir``: where the state_dirs go. On the development VM, creating a file anywhere under ``/tmp``
costs ~0.65 ms of system CPU (against ~0.04 ms under ``/var/tmp`` on the same ext4 disk), so the
state_dir's place moves the figures; compare only runs with the same ``--tmpdir``.

Without ``--against`` only this tree runs. A benchmark, not a test: it never asserts timings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput as tp  # bench/throughput.py: servers, loads, /proc helpers


def thread_split(pid: int) -> tuple[float, float, float, float]:
    """(loop user, loop sys, other threads user, other threads sys) in seconds, so far."""
    whole = tp._stat(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
        loop = raw[raw.rfind(")") + 2 :].split()
    except OSError:
        loop = None
    if whole is None or loop is None:
        return 0.0, 0.0, 0.0, 0.0
    lu, ls = int(loop[11]), int(loop[12])
    wu, ws = int(whole[11]), int(whole[12])
    return lu / tp.CLK_TCK, ls / tp.CLK_TCK, (wu - lu) / tp.CLK_TCK, (ws - ls) / tp.CLK_TCK


def wrapper(workdir: Path, name: str, tree: Path) -> Path:
    """A `detox` executable that imports ``tree``'s detox/ (workers inherit PYTHONPATH)."""
    path = workdir / f"detox-{name}"
    path.write_text(f'#!/bin/sh\nPYTHONPATH="{tree}" exec "{sys.executable}" -m detox "$@"\n')
    path.chmod(0o755)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", help="another checkout to compare with (its detox/ is imported from there)")
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--load", choices=["jp-html", "smtp-source"], default="jp-html")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--tmpdir", help="where the state_dirs go (default: $TMPDIR or /tmp; see above)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    # what throughput.Bench reads
    args.max_runtime, args.load_timeout, args.drain_timeout = 3600, 600, 600
    args.poll_interval, args.settle = 0.02, 1.0

    trees = {"this": tp.REPO}
    if args.against:
        trees["against"] = Path(args.against).resolve()
        if not (trees["against"] / "detox" / "__init__.py").exists():
            ap.error(f"{args.against}: no detox/ there")
    signal.signal(signal.SIGTERM, tp._raise_interrupt)
    signal.signal(signal.SIGINT, tp._raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="detox-mainprof-", dir=args.tmpdir))
    procs = tp.Processes(workdir)
    bench = tp.Bench(args, procs, workdir)
    print(
        f"main-process profile: workdir {workdir}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.load}, {args.messages} msgs x {args.rounds}",
        flush=True,
    )
    rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in trees}
    ok = False
    try:
        bench.sampler.start()
        sink_port = bench.start_sink()
        for name, tree in trees.items():
            args.detox = wrapper(workdir, name, tree)
            bench.start_detox(name, sink_port, fsync=True)
        for name in trees:
            bench.measure(args.load, name, args.warmup, 0)
        for rnd in range(1, args.rounds + 1):
            order = list(trees) if rnd % 2 else list(reversed(trees))
            for name in order:
                server = bench.servers[name]
                pid = server.main_pid()
                before = thread_split(pid)
                run = bench.measure(args.load, name, args.messages, rnd)
                after = thread_split(pid)
                split = [1000 * (b - a) / run.n for a, b in zip(before, after, strict=True)]
                rows[name].append((1000 * run.cpu_main_s / run.n, *split, 1000 * run.cpu_s / run.n))
                print(
                    f"           main {rows[name][-1][0]:6.2f} ms/msg = loop {split[0]:.2f}u+{split[1]:.2f}s"
                    f" + threads {split[2]:.2f}u+{split[3]:.2f}s",
                    flush=True,
                )
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_servers()
        procs.stop_all()
        bench.sampler.halt.set()
    try:
        head = ["tree", "main ms/msg (median, min-max)", "loop user", "loop sys", "threads user"]
        head += ["threads sys", "tree ms/msg"]
        print("\n| " + " | ".join(head) + " |")
        print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
        for name, got in rows.items():
            if not got:
                continue
            med = [statistics.median(col) for col in zip(*got, strict=True)]
            mains = [g[0] for g in got]
            cells = [name, f"{med[0]:.2f} ({min(mains):.2f}-{max(mains):.2f})"]
            cells += [f"{x:.2f}" for x in med[1:]]
            print("| " + " | ".join(c.ljust(len(h)) for c, h in zip(cells, head, strict=True)) + " |")
        if all(rows.values()) and len(rows) == 2:
            pairs = [a[0] / b[0] for a, b in zip(rows["this"], rows["against"], strict=False) if b[0]]
            if pairs:
                print(
                    f"\nmain ms/msg this/against, paired per round: {' '.join(f'{p:.2f}' for p in pairs)}"
                    f" -> median {statistics.median(pairs):.2f}"
                )
        for run in bench.runs:
            if run.client_errors:
                print(f"errors: {run.config} round {run.round}: {run.client_errors}")
            odd = {k: v for k, v in run.audit.items() if k not in ("received", "detoxified", "delivered")}
            if odd:
                print(f"audit: {run.config} round {run.round}: {odd}")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
