"""Peak memory of ``detox serve`` receiving 20 concurrent 25 MB messages, against its bound and the relay.

    .venv/bin/python bench/memory.py                        # 20 x 25,000,000 B, 20 sessions, 1 round
    .venv/bin/python bench/memory.py --messages 10 --size 5000000 --rounds 2

What runs (127.0.0.1 only; every process started here is stopped by PID at the end): Postfix's
``smtp-sink`` as the downstream (it keeps nothing), ``../shared/peers/relay.py --loop uvloop --client
aiosmtplib-pool`` as the baseline, and ``.venv/bin/detox serve`` with the shipped defaults (max message
25 MiB, fsync on, one worker per CPU) except a temporary state_dir and STARTTLS off.

The load is bench/loadgen.py's ``big`` kind, made in the client process: ``--size`` bytes, a short Japanese
text body and a base64 application/octet-stream attachment of random bytes (detox holds it by policy: the
original is stored, the recipient gets the text and a notice). ``--messages`` of them are sent at once,
one per session (``--sessions``, default = ``--messages``), one per connection.

Memory is sampled every ``--interval`` (0.05 s) from ``/proc/<pid>/smaps_rollup`` of every process of the
server's tree (detox: the server, its pipeline workers and any sandboxed converter; the relay: one
process), summed: RSS counts pages shared between forked workers once per process, PSS splits them.

1. Idle base: after a one-message warm-up, ``--idle-seconds`` of samples with nothing to do (the peak of
   them is the base).
2. Each round (servers alternating): the messages are sent; the window ends when the client has its 250s
   and (detox) its spool is empty again, so it covers receiving, spooling, detoxifying and delivering.

The bound printed beside detox's peak is (a) 2 × the data in flight (messages × size) + detox's idle base,
both measured in this run, and (b) the relay's peak in this run. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import throughput  # noqa: E402
from harness import Harness  # noqa: E402

MB = 1_000_000


class TreeSampler(threading.Thread):
    """Every ``interval``: RSS and PSS (MB, summed over the tree) of each watched server; peak per window."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True, name="tree-sampler")
        self.interval = interval
        self.roots: dict[str, int] = {}
        self.peaks: dict[str, tuple[float, float]] = {}
        self.samples: dict[str, int] = {}
        self.max_procs: dict[str, int] = {}
        self.at_peak: dict[str, list[tuple[int, str, float, float]]] = {}  # per process at the PSS peak
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        with self.lock:
            self.roots[name] = pid
        self.window(name)

    def window(self, name: str) -> None:
        with self.lock:
            self.peaks[name] = (0.0, 0.0)
            self.samples[name] = 0
            self.max_procs[name] = 0
            self.at_peak[name] = []

    def peak(self, name: str) -> tuple[float, float, int, int]:
        self.sample()
        with self.lock:
            rss, pss = self.peaks[name]
            return rss, pss, self.samples[name], self.max_procs[name]

    def sample(self) -> None:
        with self.lock:
            roots = dict(self.roots)
        for name, root in roots.items():
            each = [proc_memory(pid) for pid in throughput.process_tree(root)]
            rss = sum(e[2] for e in each)
            pss = sum(e[3] for e in each)
            with self.lock:
                old = self.peaks[name]
                if pss > old[1]:
                    self.at_peak[name] = each
                self.peaks[name] = (max(old[0], rss), max(old[1], pss))
                self.samples[name] += 1
                self.max_procs[name] = max(self.max_procs[name], len(each))

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()


def proc_memory(pid: int) -> tuple[int, str, float, float]:
    """(pid, short command, RSS MB, PSS MB) of one process; zeros when it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return pid, "?", 0.0, 0.0
    words = [a.decode(errors="replace").rsplit("/", 1)[-1] for a in argv if a][:4]
    return pid, " ".join(words)[:60], rss / 1024, pss / 1024


def describe_peak(each: list[tuple[int, str, float, float]], main: int) -> str:
    """RSS/PSS MB of the server process itself and of its other processes at the sample with the peak PSS."""
    own = [e for e in each if e[0] == main]
    rest = [e for e in each if e[0] != main and e[2] > 5]  # leaves out the timeout(1) wrapper
    parts = [f"server process {own[0][2]:.0f}/{own[0][3]:.0f}"] if own else []
    if rest:
        parts.append(
            f"{len(rest)} other process(es) {sum(e[2] for e in rest):.0f}/{sum(e[3] for e in rest):.0f} ["
            + ", ".join(f"{e[1][:40]}: {e[2]:.0f}/{e[3]:.0f}" for e in rest)
            + "]"
        )
    return "; ".join(parts) + " MB RSS/PSS"


def measure(
    h: Harness, sampler: TreeSampler, name: str, args: argparse.Namespace, rnd: int
) -> dict[str, Any]:
    server = h.bench.servers[name]
    sink0 = h.bench.sink_count()
    sampler.window(name)
    start = time.time()
    sent, result = h.client(
        server.port, "big", args.messages, sessions=args.sessions or args.messages, size=args.size
    )
    drained = h.bench.wait_drained(server) if server.spool is not None else None
    end = drained if drained is not None else time.time()
    rss, pss, samples, procs = sampler.peak(name)
    with sampler.lock:
        breakdown = describe_peak(sampler.at_peak.get(name, []), server.main_pid())
    errors = [s.error for s in sent if s.error]
    run = {
        "server": name,
        "round": rnd,
        "n": args.messages,
        "size": args.size,
        "rss_mb": rss,
        "pss_mb": pss,
        "samples": samples,
        "max_procs": procs,
        "errors": errors,
        "seconds": end - start,
        "accepted_s": result["end"] - result["start"],
        "sink_received": h.bench.sink_count() - sink0,
        "at_peak": breakdown,
    }
    print(
        f"  round {rnd}  {name:6} {args.messages} x {args.size / MB:.1f} MB: peak RSS {rss:7.0f} MB, "
        f"PSS {pss:7.0f} MB ({samples} samples, up to {procs} processes), all 250s after "
        f"{run['accepted_s']:.1f} s, done after {run['seconds']:.1f} s, sink +{run['sink_received']}, "
        f"errors {len(errors)}\n           at the PSS peak: {breakdown}",
        flush=True,
    )
    return run


def idle_base(sampler: TreeSampler, name: str, seconds: float) -> tuple[float, float]:
    sampler.window(name)
    time.sleep(seconds)
    rss, pss, _, _ = sampler.peak(name)
    return rss, pss


def report(
    runs: list[dict[str, Any]], base: dict[str, tuple[float, float]], args: argparse.Namespace
) -> None:
    in_flight = args.messages * args.size / MB
    print(
        f"\n### {args.messages} concurrent messages of {args.size / MB:.1f} MB "
        f"({in_flight:.0f} MB in flight), "
        f"sampled every {args.interval * 1000:.0f} ms\n"
    )
    head = [
        "server",
        "idle RSS MB",
        "idle PSS MB",
        "peak RSS MB (per round)",
        "peak PSS MB (per round)",
        "peak RSS − idle",
        "peak PSS − idle",
        "done after s",
        "errors",
    ]
    rows = []
    peaks: dict[str, tuple[float, float]] = {}
    for name in ("relay", "detox"):
        mine = [r for r in runs if r["server"] == name]
        if not mine:
            continue
        rss, pss = max(r["rss_mb"] for r in mine), max(r["pss_mb"] for r in mine)
        peaks[name] = (rss, pss)
        b = base.get(name, (0.0, 0.0))
        rows.append(
            [
                name,
                f"{b[0]:.0f}",
                f"{b[1]:.0f}",
                ", ".join(f"{r['rss_mb']:.0f}" for r in mine),
                ", ".join(f"{r['pss_mb']:.0f}" for r in mine),
                f"{rss - b[0]:.0f}",
                f"{pss - b[1]:.0f}",
                ", ".join(f"{r['seconds']:.1f}" for r in mine),
                str(sum(len(r["errors"]) for r in mine)),
            ]
        )
    for line in throughput._table(head, rows):
        print(line)
    if "detox" in peaks:
        rss, pss = peaks["detox"]
        brss, bpss = base["detox"]
        bound_rss, bound_pss = 2 * in_flight + brss, 2 * in_flight + bpss
        print(
            f"\n(a) bound = 2 × {in_flight:.0f} MB in flight + detox's idle base: RSS {bound_rss:.0f} MB, "
            f"PSS {bound_pss:.0f} MB -> detox's peak is {rss / bound_rss:.2f} (RSS) / "
            f"{pss / bound_pss:.2f} (PSS) of it; above the idle base detox used "
            f"{(rss - brss) / in_flight:.2f} (RSS) / {(pss - bpss) / in_flight:.2f} (PSS) "
            "× the data in flight"
        )
        largest = args.size / MB
        print(
            f"(c) product.md's wording, 2 × the largest message ({largest:.1f} MB) + the idle base: RSS "
            f"{2 * largest + brss:.0f} MB, PSS {2 * largest + bpss:.0f} MB -> detox's peak is "
            f"{rss / (2 * largest + brss):.2f} (RSS) / {pss / (2 * largest + bpss):.2f} (PSS) of it"
        )
        if "relay" in peaks:
            r_rss, r_pss = peaks["relay"]
            print(
                f"(b) detox/relay peak: RSS {rss / r_rss:.2f}, PSS {pss / r_pss:.2f} "
                f"(relay above its idle base: {(r_rss - base['relay'][0]) / in_flight:.2f} "
                "× the data in flight)"
            )
    for r in runs:
        print(f"at the PSS peak, round {r['round']} {r['server']}: {r['at_peak']}")
    print(
        "\nRSS double-counts pages the forked workers share; PSS splits them (the fairer sum). Noisy shared "
        "2-vCPU VM: compare only within this run."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20, help="messages sent at once (default 20)")
    ap.add_argument("--size", type=int, default=25_000_000, help="bytes per message (default 25,000,000)")
    ap.add_argument("--sessions", type=int, default=0, help="concurrent sessions (default: --messages)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds per server, alternating (default 1)")
    ap.add_argument("--interval", type=float, default=0.05, help="sampling interval, seconds")
    ap.add_argument("--idle-seconds", type=float, default=3.0, help="how long the idle base is sampled")
    harness.add_common_args(ap)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, harness.raise_interrupt)
    signal.signal(signal.SIGINT, harness.raise_interrupt)
    h = Harness(args, "detox-memory-")
    print(harness.machine_line("detox memory bench", h.workdir), flush=True)
    sampler = TreeSampler(args.interval)
    runs: list[dict[str, Any]] = []
    base: dict[str, tuple[float, float]] = {}
    ok = False
    try:
        sink = h.bench.start_sink()
        names = h.start_servers(sink)
        print("  " + ", ".join(f"{n} on :{h.port(n)}" for n in names) + f", smtp-sink on :{sink}", flush=True)
        for name in names:
            sampler.watch(name, h.bench.servers[name].pid)
        sampler.start()
        for name in names:
            server = h.bench.servers[name]
            h.client(server.port, "text5k", 1, sessions=1)
            if server.spool is not None:
                h.bench.wait_drained(server)
            time.sleep(args.settle)
            base[name] = idle_base(sampler, name, args.idle_seconds)
            print(f"  idle     {name:6} RSS {base[name][0]:.0f} MB, PSS {base[name][1]:.0f} MB", flush=True)
        for rnd in range(1, args.rounds + 1):
            for name in names if rnd % 2 else list(reversed(names)):
                runs.append(measure(h, sampler, name, args, rnd))
                time.sleep(args.settle)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    finally:
        sampler.halt.set()
        h.stop()
    try:
        if runs:
            print(f"\n## detox vs bare relay, peak memory — {time.strftime('%Y-%m-%d %H:%M')}")
            print(f"command: {sys.executable} {' '.join(sys.argv)}")
            report(runs, base, args)
        if args.json:
            Path(args.json).write_text(json.dumps({"base": base, "runs": runs}), encoding="utf-8")
    finally:
        h.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
