"""What latency.py, attachments.py and memory.py share: servers, the stamping sink, the client, stats.

Processes are started and stopped with bench/throughput.py's helpers (``Processes``: own session, SIGTERM
by PID, then SIGKILL of whatever is left of the tree, by PID; every server under ``timeout -k 10
--max-runtime``). Only 127.0.0.1 is used, on free ports.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402

HOST = "127.0.0.1"


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """Options every one of these benchmarks takes (names as bench/throughput.py's Bench expects)."""
    ap.add_argument("--relay", help="path to relay.py (default: $DETOX_SHARED/peers or ../shared/peers)")
    ap.add_argument("--no-relay", action="store_true", help="measure detox only")
    ap.add_argument("--detox", default=str(REPO / ".venv" / "bin" / "detox"), help="the detox executable")
    ap.add_argument("--workers", type=int, help="pipeline.workers for detox (default: the shipped default)")
    ap.add_argument("--tmpdir", help="where the temporary state_dir goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state_dir)")
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("--load-timeout", type=int, default=600, help="timeout for one client run, seconds")
    ap.add_argument("--drain-timeout", type=float, default=600, help="max wait for deliveries, seconds")
    ap.add_argument(
        "--max-runtime",
        type=int,
        default=3600,
        help="servers are started under timeout(1) with this many seconds",
    )
    ap.add_argument("--settle", type=float, default=1.0, help="pause between runs, seconds")
    ap.add_argument("--poll-interval", type=float, default=0.02, help="polling interval, seconds")


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def raise_interrupt(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def machine_line(name: str, workdir: Path) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{name}: workdir {workdir}; {os.cpu_count()} CPUs, load average {load}; "
        f"python {sys.version.split()[0]}; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )


@dataclass
class Sent:
    seq: int
    start: float  # client began connecting (unix time)
    t250: float  # client got the 250 to DATA
    error: str | None
    arrived: float | None = None  # the sink's stamp


class Harness:
    """One run: a workdir, the processes, the servers (via throughput.Bench) and the stamping sink."""

    def __init__(self, args: argparse.Namespace, prefix: str) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=args.tmpdir))
        self.procs = throughput.Processes(self.workdir)
        self.bench = throughput.Bench(args, self.procs, self.workdir)
        self.stamps = self.workdir / "stamps.txt"
        self.stamp_offset = 0
        self.arrivals: dict[int, float] = {}
        self.duplicates = 0
        self.seq = 0
        self.relay_path: Path | None = None if args.no_relay else throughput.locate_relay(args)

    # -- processes ------------------------------------------------------------------------------------

    def start_stampsink(self) -> int:
        port = throughput.free_port()
        log = self.workdir / "stampsink.log"
        cmd = [
            sys.executable,
            str(HERE / "stampsink.py"),
            "--listen",
            f"{HOST}:{port}",
            "--out",
            str(self.stamps),
        ]
        proc = self.procs.popen("stampsink", self.bench.wrap(cmd), log)
        throughput.wait_port(port, proc, 30, "stampsink", log)
        self.stampsink_proc = proc
        return port

    def start_servers(self, sink_port: int) -> list[str]:
        names = []
        if self.relay_path is not None:
            self.bench.start_relay(self.relay_path, sink_port)
            names.append("relay")
        elif not self.args.no_relay:
            print(
                "NOTE: relay.py not found (looked in $DETOX_SHARED/peers or ../shared/peers; --relay PATH); "
                "skipping the baseline, detox's figures only.",
                flush=True,
            )
        self.bench.start_detox("detox", sink_port, fsync=True)
        names.append("detox")
        return names

    def port(self, name: str) -> int:
        return self.bench.servers[name].port

    def stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.bench.stop_servers()
        self.procs.stop_all()
        self.bench.sampler.halt.set()

    def cleanup(self) -> None:
        if self.args.keep:
            print(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- load -----------------------------------------------------------------------------------------

    def client(
        self,
        port: int,
        kind: str,
        n: int,
        *,
        sessions: int = 10,
        rate: float = 0.0,
        size: int = 0,
        max_inflight: int = 200,
    ) -> tuple[list[Sent], dict[str, Any]]:
        """Run bench/loadgen.py once (bounded by --load-timeout); the messages get fresh seq numbers."""
        out = self.workdir / "client.json"
        out.unlink(missing_ok=True)
        cmd = [
            "timeout",
            str(self.args.load_timeout),
            sys.executable,
            str(HERE / "loadgen.py"),
            "--port",
            str(port),
            "--kind",
            kind,
            "--n",
            str(n),
            "--seq-base",
            str(self.seq),
            "--out",
            str(out),
            "--max-inflight",
            str(max_inflight),
        ]
        cmd += ["--rate", str(rate)] if rate else ["--sessions", str(sessions)]
        if size:
            cmd += ["--size", str(size)]
        self.seq += n
        log = self.workdir / "client.log"
        proc = self.procs.popen("loadgen", cmd, log)
        rc = proc.wait()
        if rc != 0 or not out.exists():
            raise RuntimeError(f"load client failed (rc={rc}): {log.read_text(errors='replace')[-1500:]}")
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        sent = [Sent(int(s), float(a), float(b), e) for s, a, b, e in result["records"]]
        return sent, result

    def collect(self) -> None:
        """Read the stamps written since the last call."""
        try:
            with open(self.stamps, "rb") as fh:
                fh.seek(self.stamp_offset)
                data = fh.read()
        except FileNotFoundError:
            return
        cut = data.rfind(b"\n") + 1  # a half-written line waits for the next call
        self.stamp_offset += cut
        for line in data[:cut].decode("ascii", "replace").splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue
            seq, when = int(parts[0]), float(parts[1])
            if seq in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[seq] = when

    def wait_arrivals(self, sent: list[Sent], server: str) -> float | None:
        """Wait until every message that got a 250 has reached the sink; fill in ``arrived``.
        Returns the last arrival time, or None when some did not arrive within --drain-timeout."""
        want = {s.seq for s in sent if s.error is None}
        deadline = time.monotonic() + self.args.drain_timeout
        srv = self.bench.servers[server]
        while True:
            self.collect()
            if want <= self.arrivals.keys():
                break
            gone = srv.exited()
            if time.monotonic() > deadline or gone:
                missing = len(want - self.arrivals.keys())
                print(
                    f"  WARNING: {missing} of {len(want)} accepted messages not at the sink "
                    f"(server {gone or 'still busy'}); see {srv.log}"
                )
                break
            time.sleep(self.args.poll_interval)
        last = None
        for s in sent:
            s.arrived = self.arrivals.get(s.seq)
            if s.arrived is not None:
                last = s.arrived if last is None else max(last, s.arrived)
        return last if want <= self.arrivals.keys() else None

    def audit_summary(self) -> dict[str, int]:
        srv = self.bench.servers.get("detox")
        return self.bench.audit_events(srv) if srv is not None else {}
