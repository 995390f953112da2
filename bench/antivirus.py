"""What ``[antivirus]`` costs per message: ``Pipeline.run`` with clamd on against off, same run.

    .venv/bin/python bench/antivirus.py                 # 5 KB text and PDF mail, 200 messages x 3 rounds
    .venv/bin/python bench/antivirus.py --messages 50 --rounds 2

A private clamd is started for the run (tests/support/clamd.py: a small signature database made
here — EICAR, one hash and one body signature; the official databases are ~350 MB of RAM and their
matching cost grows with them: rerun against a production clamd with ``--clamd unix:/run/clamav/clamd.ctl``
for the figure that counts). Loads, each message with a sequence number of its own so no cache
answers what traffic would not repeat:

* ``5k-text``: a 5 KB ASCII body (the throughput bench's smtp-source shape, as MIME);
* ``pdf``: a short Japanese body plus a one-page PDF attachment (rasterized in the sandbox).

Per load and round, interleaved (off, on, off, on ...): wall ms per message, detox's own CPU ms per
message (``process_time`` of this process plus its sandbox children), clamd's CPU ms per message
(``/proc/PID/stat`` utime+stime delta of the private clamd; ``n/a`` for an external one), and the
ratios on/off. This is a benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from detox.config.loader import load_config  # noqa: E402
from detox.envelope import Envelope  # noqa: E402
from detox.pipeline.runner import Pipeline  # noqa: E402


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _clamd_cpu(pid: int | None) -> float | None:
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pdf() -> bytes:
    from support.filter_samples import pdf

    return pdf()


def mails(load: str, n: int) -> list[bytes]:
    out = []
    pdf_bytes = _pdf() if load == "pdf" else b""
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = "sender@vendor.example.com"
        msg["To"] = "taro@city.example.lg.jp"
        msg["Subject"] = f"bench {load} {i}"
        msg["Message-ID"] = f"<bench-{load}-{i}@vendor.example.com>"
        if load == "5k-text":
            line = "The quick brown fox jumps over the lazy dog 0123456789.\n"
            msg.set_content(f"message {i}\n" + line * (5120 // len(line)))
        else:
            msg.set_content(f"見積書をお送りします（{i}）。\n")
            msg.add_attachment(pdf_bytes, maintype="application", subtype="pdf", filename=f"見積書{i}.pdf")
        out.append(msg.as_bytes())
    return out


def run_pass(
    pipeline: Pipeline, raws: list[bytes], clamd_pid: int | None
) -> tuple[float, float, float | None]:
    """(wall ms/msg, detox CPU ms/msg, clamd CPU ms/msg)."""
    wall0, cpu0, kids0, clam0 = (
        time.perf_counter(),
        time.process_time(),
        _children_cpu(),
        _clamd_cpu(clamd_pid),
    )
    for i, raw in enumerate(raws):
        pipeline.run(raw, Envelope(f"1B{i:018X}", "sender@vendor.example.com", ("taro@city.example.lg.jp",)))
    n = len(raws)
    wall = (time.perf_counter() - wall0) * 1000 / n
    cpu = (time.process_time() - cpu0 + _children_cpu() - kids0) * 1000 / n
    clam1 = _clamd_cpu(clamd_pid)
    clam = (clam1 - clam0) * 1000 / n if clam0 is not None and clam1 is not None else None
    return wall, cpu, clam


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", choices=["5k-text", "pdf"], action="append")
    ap.add_argument("--clamd", help="an existing clamd (unix:PATH or tcp:HOST:PORT) instead of a private one")
    args = ap.parse_args()
    loads = args.load or ["5k-text", "pdf"]

    instance = None
    if args.clamd:
        address, pid = args.clamd, None
    else:
        from support.clamd import ClamdInstance

        instance = ClamdInstance(Path(tempfile.mkdtemp(prefix="dtx-bench-clam-")))
        instance.start()
        assert instance.proc is not None
        address, pid = instance.unix_address, instance.proc.pid
    try:
        with tempfile.TemporaryDirectory(prefix="dtx-bench-av-") as state:
            off_cfg = Path(state) / "off.toml"
            on_cfg = Path(state) / "on.toml"
            off_cfg.write_text(f'[storage]\nstate_dir = "{state}"\n')
            on_cfg.write_text(f'[storage]\nstate_dir = "{state}"\n[antivirus]\nclamd = "{address}"\n')
            off, on = Pipeline(load_config(off_cfg)), Pipeline(load_config(on_cfg))
            print(f"clamd: {address}; {args.messages} messages x {args.rounds} rounds per load, interleaved")
            print(f"{'load':8} {'':4} {'wall ms/msg':>12} {'detox CPU ms/msg':>17} {'clamd CPU ms/msg':>17}")
            for load in loads:
                raws = mails(load, args.messages)
                run_pass(off, raws[:5], None)  # warm both (sandbox children, libmagic, imports)
                run_pass(on, raws[:5], pid)
                results: dict[str, list[tuple[float, float, float | None]]] = {"off": [], "on": []}
                for _ in range(args.rounds):
                    results["off"].append(run_pass(off, raws, None))
                    results["on"].append(run_pass(on, raws, pid))
                med = {
                    k: (
                        statistics.median(r[0] for r in v),
                        statistics.median(r[1] for r in v),
                        statistics.median(r[2] for r in v) if v[0][2] is not None else None,
                    )
                    for k, v in results.items()
                }
                for k in ("off", "on"):
                    wall, cpu, clam = med[k]
                    clam_s = f"{clam:17.2f}" if clam is not None else f"{'n/a':>17}"
                    print(f"{load:8} {k:4} {wall:12.2f} {cpu:17.2f} {clam_s}")
                (w0, c0, _), (w1, c1, k1) = med["off"], med["on"]
                total = c1 + (k1 or 0.0)
                print(
                    f"{load:8} on/off: wall x{w1 / w0:.2f} (+{w1 - w0:.2f} ms), detox CPU x{c1 / c0:.2f} "
                    f"(+{c1 - c0:.2f} ms), detox+clamd CPU x{total / c0:.2f} (+{total - c0:.2f} ms)"
                )
    finally:
        if instance is not None:
            instance.stop()
            import shutil

            shutil.rmtree(instance.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
