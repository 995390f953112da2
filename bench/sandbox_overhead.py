"""Per-call cost of running a converter in the sandbox, against calling it in-process.

    .venv/bin/python bench/sandbox_overhead.py                 # 50 calls of each, 1 KiB input
    .venv/bin/python bench/sandbox_overhead.py --runs 100 --size 1048576

What is timed (the ``selftest`` converter's ``echo`` op, which returns its input):

* ``plain call``:   ``detox.converters.selftest.main(data, args)`` in this process;
* ``python -I``:    ``python -I -c pass`` through subprocess.run, the floor any out-of-process design pays;
* ``subprocess``:   :class:`~detox.sandbox.process.SubprocessSandbox` (rlimits, no isolation);
* ``bwrap``:        :class:`~detox.sandbox.bwrap.BwrapSandbox` (skipped when bwrap is missing);
* ``... resident``: the same provider with ``resident=True``: a child forked by the zygote per call
  (the zygote starts in the warm-up round).

The variants run interleaved (one call of each per round, after a warm-up round) so a noisy host slows
them alike. Every process started here is waited for by the sandbox or subprocess.run. This is a
benchmark, not a test: it prints milliseconds per call and asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.bwrap import BwrapSandbox
from detox.sandbox.inside.converters import selftest
from detox.sandbox.process import SubprocessSandbox

ARGS = {"op": "echo"}
LIMITS = Limits(timeout_s=60)


def _sandboxed(sandbox: Sandbox, data: bytes) -> Callable[[], None]:
    def call() -> None:
        if sandbox.run("selftest", data, ARGS, LIMITS) != data:
            raise RuntimeError(f"{sandbox.name}: echo returned something else")

    return call


def _plain(data: bytes) -> Callable[[], None]:
    def call() -> None:
        if selftest.main(data, dict(ARGS)) != data:
            raise RuntimeError("plain call: echo returned something else")

    return call


def _bare_interpreter() -> None:
    subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024, help="input bytes (default 1 KiB)")
    options = parser.parse_args()
    data = bytes(range(256)) * (options.size // 256) + bytes(options.size % 256)

    variants: dict[str, Callable[[], None]] = {
        "plain call": _plain(data),
        "python -I": _bare_interpreter,
        "subprocess": _sandboxed(SubprocessSandbox(allowed=True), data),
        "subprocess resident": _sandboxed(SubprocessSandbox(allowed=True, resident=True), data),
    }
    if shutil.which("bwrap"):
        variants["bwrap"] = _sandboxed(BwrapSandbox(), data)
        variants["bwrap resident"] = _sandboxed(BwrapSandbox(resident=True), data)
    else:
        print("bwrap: not installed, skipped")

    timings: dict[str, list[float]] = {name: [] for name in variants}
    for call in variants.values():  # warm-up: page cache, bytecode, bwrap --help probe, zygote start
        call()
    for _ in range(options.runs):
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            timings[name].append((time.perf_counter() - started) * 1000)

    print(f"{options.runs} calls each, {options.size} bytes in and out, {sys.executable}")
    print(f"{'variant':<20} {'mean ms':>9} {'median':>9} {'p90':>9} {'min':>9}")
    for name, values in timings.items():
        p90 = statistics.quantiles(values, n=10)[-1] if len(values) > 1 else values[0]
        print(
            f"{name:<20} {statistics.fmean(values):9.2f} {statistics.median(values):9.2f} "
            f"{p90:9.2f} {min(values):9.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
