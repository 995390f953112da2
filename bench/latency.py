"""Delivery latency of ``detox serve`` against the bare aiosmtpd relay, at half of the peak rate, one run.

    .venv/bin/python bench/latency.py                       # peak, then 2 rounds x 2000 msgs per server
    .venv/bin/python bench/latency.py --rate 100 --messages 1000 --rounds 1

What runs (127.0.0.1 only; every process started here is stopped by PID at the end):

* downstream: bench/stampsink.py, an aiosmtpd sink that writes down when each message arrived (keyed by
  the ``Message-ID: <bench.SEQ.…>`` detox keeps);
* baseline: ``../shared/peers/relay.py --loop uvloop --client aiosmtplib-pool`` (forwards inside DATA);
* detox: ``.venv/bin/detox serve``, shipped defaults except a temporary state_dir and STARTTLS off.

The load is bench/loadgen.py's ``text5k`` kind: ~5 KB ISO-2022-JP text/plain, one message per connection.

1. Warm-up (``--warmup`` messages, 10 sessions) to each server.
2. Peak: ``--peak-messages`` with ``--sessions`` concurrent sessions (closed loop) to each server; the
   peak is messages / (client start → last arrival at the sink).
3. The offered rate is ``--fraction`` (0.5) × the lower of the two peaks (the same rate for both, so they
   carry the same load), or ``--rate``.
4. ``--rounds`` rounds, in alternating order: ``--messages`` messages at that rate (open loop: message i
   starts at t0 + i/rate whatever happened to the earlier ones) to each server.

Per message: ``250→sink`` is from the client reading the 250 to DATA to the sink's stamp (detox answers 250
once the message is on disk and delivers afterwards; the relay answers only after the sink did, so its
figure is ≤ 0); ``start→sink`` is from the client starting to connect, which compares the two servers
end to end; ``start→250`` is what a sending MTA waits for. p50 / p99 / max in milliseconds, over all
measured rounds (and p99 per round). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
import throughput  # noqa: E402
from harness import Harness, pct  # noqa: E402


def _ms(values: list[float]) -> str:
    return (
        f"{1000 * pct(values, 50):7.1f} / {1000 * pct(values, 99):7.1f} / {1000 * max(values):7.1f}"
        if values
        else "n/a"
    )


def peak(h: Harness, name: str, n: int, sessions: int) -> dict[str, Any]:
    sent, result = h.client(h.port(name), "text5k", n, sessions=sessions)
    last = h.wait_arrivals(sent, name)
    errors = sum(1 for s in sent if s.error)
    end = last if last is not None else time.time()
    rate = (n - errors) / (end - result["start"])
    accepted = (n - errors) / (result["end"] - result["start"])
    print(
        f"  peak     {name:6} {n:5} msgs, {sessions} sessions: delivered {rate:7.1f} msg/s "
        f"(accepted {accepted:7.1f} msg/s), errors {errors}",
        flush=True,
    )
    return {"server": name, "n": n, "delivered_rate": rate, "accepted_rate": accepted, "errors": errors}


def paced(h: Harness, name: str, n: int, rate: float, rnd: int, max_inflight: int) -> dict[str, Any]:
    sent, result = h.client(h.port(name), "text5k", n, rate=rate, max_inflight=max_inflight)
    h.wait_arrivals(sent, name)
    ok = [s for s in sent if s.error is None and s.arrived is not None]
    lat = [s.arrived - s.t250 for s in ok if s.arrived is not None]
    e2e = [s.arrived - s.start for s in ok if s.arrived is not None]
    sub = [s.t250 - s.start for s in sent if s.error is None]
    achieved = n / (result["end"] - result["start"])
    errors = [s.error for s in sent if s.error]
    missing = sum(1 for s in sent if s.error is None and s.arrived is None)
    print(
        f"  round {rnd}  {name:6} {n:5} msgs at {rate:6.1f}/s (offered; client took {achieved:6.1f}/s, "
        f"late starts {result['late']}): 250→sink p50/p99/max {_ms(lat)} ms; "
        f"start→sink {_ms(e2e)} ms; errors {len(errors)}, missing {missing}",
        flush=True,
    )
    return {
        "server": name,
        "round": rnd,
        "n": n,
        "rate": rate,
        "late": result["late"],
        "errors": errors,
        "missing": missing,
        "lat": lat,
        "e2e": e2e,
        "submit": sub,
        "client_cpu_s": result["client_cpu_s"],
    }


def report(runs: list[dict[str, Any]], peaks: list[dict[str, Any]], rate: float, names: list[str]) -> None:
    print("\n### peak (closed loop; messages / client start → last arrival at the sink)\n")
    for p in peaks:
        print(
            f"- {p['server']}: {p['delivered_rate']:.1f} msg/s delivered "
            f"({p['accepted_rate']:.1f} accepted), "
            f"errors {p['errors']}"
        )
    rows = []
    pooled: dict[str, dict[str, list[float]]] = {}
    for name in names:
        mine = [r for r in runs if r["server"] == name]
        if not mine:
            continue
        agg = {k: [x for r in mine for x in r[k]] for k in ("lat", "e2e", "submit")}
        pooled[name] = agg
        rows.append(
            [
                name,
                f"{rate:.1f}",
                str(sum(r["n"] for r in mine)),
                _ms(agg["lat"]),
                _ms(agg["e2e"]),
                _ms(agg["submit"]),
                ", ".join(f"{1000 * pct(r['lat'], 99):.1f}" for r in mine),
                str(sum(len(r["errors"]) for r in mine)),
                str(sum(r["missing"] for r in mine)),
                str(sum(r["late"] for r in mine)),
            ]
        )
    print(f"\n### latency at {rate:.1f} msg/s offered, 5 KB ISO-2022-JP text/plain, 1 msg per connection\n")
    head = [
        "server",
        "msg/s",
        "msgs",
        "250→sink p50/p99/max ms",
        "start→sink p50/p99/max ms",
        "start→250 p50/p99/max ms",
        "250→sink p99 per round",
        "errors",
        "missing",
        "late starts",
    ]
    for line in throughput._table(head, rows):
        print(line)
    if "relay" in pooled and "detox" in pooled:
        d, r = pooled["detox"]["e2e"], pooled["relay"]["e2e"]
        print(
            f"\nratio detox/relay, start→sink: p50 {pct(d, 50) / pct(r, 50):.2f}, "
            f"p99 {pct(d, 99) / pct(r, 99):.2f}"
            f"; detox's 250→sink p50 {1000 * pct(pooled['detox']['lat'], 50):.1f} ms is the time a message "
            "spends in detox after its 250 (the relay has none: it says 250 after the sink)"
        )
    print(
        "\nNoisy shared 2-vCPU VM: the client, the servers, detox's workers and the sink share the cores. "
        "Compare only within this run."
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000, help="messages per paced run (default 2000)")
    ap.add_argument("--rounds", type=int, default=2, help="paced rounds per server, alternating (default 2)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up messages per server")
    ap.add_argument("--peak-messages", type=int, default=1000, help="messages of the peak run")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent sessions of the peak run")
    ap.add_argument("--fraction", type=float, default=0.5, help="offered rate = this × the lower peak")
    ap.add_argument("--rate", type=float, help="offered rate in msg/s (skips the peak runs)")
    ap.add_argument("--max-inflight", type=int, default=200, help="cap on concurrent client connections")
    harness.add_common_args(ap)
    args = ap.parse_args()

    import signal

    signal.signal(signal.SIGTERM, harness.raise_interrupt)
    signal.signal(signal.SIGINT, harness.raise_interrupt)
    h = Harness(args, "detox-latency-")
    print(harness.machine_line("detox latency bench", h.workdir), flush=True)
    runs: list[dict[str, Any]] = []
    peaks: list[dict[str, Any]] = []
    rate = args.rate or 0.0
    names: list[str] = []
    ok = False
    try:
        sink = h.start_stampsink()
        names = h.start_servers(sink)
        print("  " + ", ".join(f"{n} on :{h.port(n)}" for n in names) + f", stampsink on :{sink}", flush=True)
        for name in names:
            sent, _ = h.client(h.port(name), "text5k", args.warmup, sessions=args.sessions)
            h.wait_arrivals(sent, name)
            print(f"  warm-up  {name:6} {args.warmup} msgs", flush=True)
        if not args.rate:
            for name in names:
                peaks.append(peak(h, name, args.peak_messages, args.sessions))
                time.sleep(args.settle)
            rate = args.fraction * min(p["delivered_rate"] for p in peaks)
        print(
            f"  offered rate: {rate:.1f} msg/s"
            + ("" if args.rate else f" = {args.fraction} × the lower peak"),
            flush=True,
        )
        for rnd in range(1, args.rounds + 1):
            for name in names if rnd % 2 else list(reversed(names)):
                runs.append(paced(h, name, args.messages, rate, rnd, args.max_inflight))
                time.sleep(args.settle)
        audit = h.audit_summary()
        unexpected = {k: v for k, v in audit.items() if k not in ("received", "detoxified", "delivered")}
        if unexpected:
            print(f"  detox audit (whole run): {audit}")
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    finally:
        h.stop()
    try:
        if runs or peaks:
            print(f"\n## detox vs bare relay, delivery latency — {time.strftime('%Y-%m-%d %H:%M')}")
            print(f"command: {sys.executable} {' '.join(sys.argv)}")
            if h.duplicates:
                print(f"duplicate arrivals at the sink: {h.duplicates}")
            report(runs, peaks, rate, names)
        if args.json:
            Path(args.json).write_text(
                json.dumps({"peaks": peaks, "rate": rate, "runs": runs}), encoding="utf-8"
            )
    finally:
        h.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
