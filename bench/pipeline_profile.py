"""CPU per message of ``Pipeline.run``, in-process, against the floor any MIME rewrite pays.

    .venv/bin/python bench/pipeline_profile.py                        # every load, 300 messages x 3 rounds
    .venv/bin/python bench/pipeline_profile.py --load jp-html --top 25  # one load, more of the profile
    .venv/bin/python bench/pipeline_profile.py --against /tmp/old       # this tree against another checkout

``--against DIR`` runs both trees in alternating child processes (DIR's ``detox/`` is imported from
there), one figure per round each, and prints the ratio. Make DIR with e.g.
``mkdir -p /tmp/old && git archive HEAD detox | tar -x -C /tmp/old``.

Loads (every message is run once, with its own sequence number as in bench/throughput.py, so no
per-process cache answers what real traffic would not repeat):

* ``smtp-source``: what Postfix's ``smtp-source -l 5120`` sends: four headers, 5 KB of ASCII, no MIME;
  its Message-Id and Date change per message, the body does not (smtp-source's does not either, so
  libmagic's answer for it comes from detect_type's cache after the first message, as in the
  throughput bench);
* ``smtp-source-unique``: the same with a sequence number in the body's first line: what a new ASCII
  body costs (libmagic's text tests alone take 1-3 ms);
* ``jp-html``: bench/throughput.py's Japanese multipart/alternative mails, both variants in turn;
* ``fixtures``: every ``fixtures/mail/*.eml`` in turn (attachments go to the sandbox: that CPU is in
  ``children``, not in ``ms/msg``).

For each load, in interleaved rounds:

* ``floor``: ``email.message_from_bytes(raw, policy=default).as_bytes()`` of the same message, what
  any gateway that re-writes MIME with the stdlib pays at least;
* ``pipeline``: ``Pipeline.run(raw, envelope)`` with the shipped default config, each message with a
  queue id of its own (as in real traffic);

then, in separate passes (instrumentation costs CPU itself, so these are shares, not the figure above):
the time in each stage (parse, libmagic, charset decoding, HTML, URLs, notice, compose, serialize), and
the top functions of a cProfile run by own time, in ms per message.

CPU is ``time.process_time()`` of this process. This is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import email
import email.policy
import functools
import itertools
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOADS = ("smtp-source", "smtp-source-unique", "jp-html", "fixtures")


def smtp_source_mail(seq: int) -> bytes:
    """Byte for byte what ``smtp-source -l 5120 -f a@src.test -t b@city.example.lg.jp`` sends (one of)."""
    head = (
        "From: <a@src.test>\r\nTo: <b@city.example.lg.jp>\r\n"
        f"Date: Thu, 26 Nov 2026 01:{seq // 60 % 60:02d}:{seq % 60:02d} +0000 (UTC)\r\n"
        f"Message-Id: <{seq:x}.0003.{seq % 10000:04d}@vm>\r\n\r\n"
    )
    lines = [f"{(i + 1) % 10}" + "X" * 77 for i in range(63)] + ["X" * 80]
    return head.encode("ascii") + "\r\n".join(lines).encode("ascii") + b"\r\n"


def messages(load: str, n: int, size: int, first: int = 0) -> list[bytes]:
    """``n`` messages numbered from ``first``: each pass gets its own, as each bench run does."""
    seqs = range(first, first + n)
    if load == "smtp-source":
        return [smtp_source_mail(i) for i in seqs]
    if load == "smtp-source-unique":  # the body's first line numbered: libmagic runs for every message
        return [smtp_source_mail(i).replace(b"\r\n1XXXXXXX", b"\r\n1%07d" % i, 1) for i in seqs]
    if load == "jp-html":
        sys.path.insert(0, str(HERE))
        from throughput import jp_templates  # the generator the throughput bench sends

        templates = jp_templates(size)
        return [templates[i % 2].replace(b"@@SEQ@@", f"{i % 1_000_000:06d}".encode()) for i in seqs]
    fixtures = sorted((REPO / "fixtures" / "mail").glob("*.eml"))
    return [fixtures[i % len(fixtures)].read_bytes() for i in seqs]


# -- the stages ---------------------------------------------------------------------------------

# (module, attribute, stage): what the runner and the body filters call, patched in their own namespace.
# A tree from before the runner was split calls everything through detox.pipeline.runner; a later one
# through walk, detect and report as well (each call site goes through one of them: nothing counts twice).
STAGES = (
    ("detox.pipeline.runner", "parse_message", "parse (compat32 read)"),
    ("detox.pipeline.runner", "detect_type", "libmagic (detect_type)"),
    ("detox.pipeline.detect", "detect_type", "libmagic (detect_type)"),
    ("detox.pipeline.walk", "detect_type", "libmagic (detect_type)"),
    ("detox.filters.text", "decode_body", "charset (decode_body)"),
    ("detox.filters.text", "html_to_text", "html_to_text"),
    ("detox.pipeline.runner", "strip_invisible", "strip_invisible"),
    ("detox.pipeline.walk", "strip_invisible", "strip_invisible"),
    ("detox.pipeline.runner", "defang_urls", "defang_urls"),
    ("detox.pipeline.walk", "defang_urls", "defang_urls"),
    ("detox.pipeline.runner", "render_notice", "notice"),
    ("detox.pipeline.runner", "compose_message", "compose_message"),
    ("detox.pipeline.runner", "serialize", "serialize"),
    ("detox.pipeline.runner", "sha256", "sha256"),
    ("detox.pipeline.walk", "sha256", "sha256"),
    ("detox.pipeline.report", "sha256", "sha256"),
)


def instrument(spent: dict[str, float]) -> Callable[[], None]:
    """Wrap each stage function to add its CPU time to ``spent``; returns the undo."""
    import importlib

    undo: list[tuple[Any, str, Any]] = []
    for module_name, attr, stage in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a module this tree does not have
            continue
        original = getattr(module, attr, None)
        if original is None:  # a stage this tree does not have
            continue

        def timed(*args: Any, __f: Any = original, __s: str = stage, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return __f(*args, **kwargs)
            finally:
                spent[__s] = spent.get(__s, 0.0) + time.process_time() - t0

        setattr(module, attr, functools.wraps(original)(timed))
        undo.append((module, attr, original))

    def restore() -> None:
        for module, attr, original in undo:
            setattr(module, attr, original)

    return restore


# -- one tree, in this process --------------------------------------------------------------------


def _pipeline() -> tuple[Any, Any]:
    from detox.config.loader import load_config
    from detox.envelope import Envelope
    from detox.pipeline.runner import Pipeline

    envelope = Envelope("019ABCDEF0123456789A", "a@src.test", ("b@city.example.lg.jp",), "127.0.0.1", "bench")
    return Pipeline(load_config(None)), envelope


def _cpu(fn: Callable[[bytes], Any], batch: list[bytes]) -> tuple[float, float]:
    """(own CPU ms per message, reaped children's CPU ms per message)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.process_time()
    for raw in batch:
        fn(raw)
    own = time.process_time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return own * 1000 / len(batch), children * 1000 / len(batch)


def _floor(raw: bytes) -> bytes:
    try:
        return email.message_from_bytes(raw, policy=email.policy.default).as_bytes()
    except Exception:  # raw 8-bit headers (a fixture has them) make policy=default raise
        return b""


def measure(load: str, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds of floor and pipeline; then the stage and cProfile passes."""
    pipeline, envelope = _pipeline()
    n = args.messages
    step = max(n, args.warmup)
    passes = iter(range(1, 1000))  # pass k has sequence numbers from k * step: no message runs twice
    batch = messages(load, args.warmup, args.size, 0)

    ids = itertools.count()

    def run(raw: bytes) -> Any:
        # a queue id of its own per message, as in real traffic (our Received header names it, so a
        # fixed id would let per-value caches answer what real mail never repeats)
        return pipeline.run(raw, dataclasses.replace(envelope, queue_id=f"019ABCDEF{next(ids):011d}"))

    for raw in batch:  # first-use costs (imports, libmagic's database, codec tables)
        run(raw)
        _floor(raw)
    floor: list[float] = []
    own: list[float] = []
    children: list[float] = []
    for rnd in range(args.rounds):
        batch = messages(load, n, args.size, next(passes) * step)
        order = (("floor", _floor), ("pipeline", run))
        for name, fn in order if rnd % 2 == 0 else reversed(order):
            ms, child_ms = _cpu(fn, batch)
            if name == "floor":
                floor.append(ms)
            else:
                own.append(ms)
                children.append(child_ms)
    result: dict[str, Any] = {
        "load": load,
        "messages": len(batch),
        "bytes": round(statistics.mean(len(m) for m in batch)),
        "floor_ms": floor,
        "pipeline_ms": own,
        "children_ms": children,
    }
    if args.stages:
        batch = messages(load, n, args.size, next(passes) * step)
        spent: dict[str, float] = {}
        restore = instrument(spent)
        try:
            t0 = time.process_time()
            for raw in batch:
                run(raw)
            total = time.process_time() - t0
        finally:
            restore()
        stages = {k: v * 1000 / len(batch) for k, v in spent.items()}
        stages["(rest of Pipeline.run)"] = max(0.0, total * 1000 / len(batch) - sum(stages.values()))
        result["stages_ms"] = stages
    if args.top:
        batch = messages(load, n, args.size, next(passes) * step)
        profiler = cProfile.Profile()
        profiler.enable()
        for raw in batch:
            run(raw)
        profiler.disable()
        result["top"] = top_functions(profiler, len(batch), args.top)
    return result


def top_functions(profiler: cProfile.Profile, n_msgs: int, top: int) -> list[tuple[str, float, float, int]]:
    """(function, own ms/msg, cumulative ms/msg, calls/msg) by own time, profiler overhead included."""
    stats = pstats.Stats(profiler)
    rows = []
    for (path, line, func), (_cc, calls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = _short(path)
        label = f"{where}:{line}({func})" if line else func
        rows.append((label, tottime * 1000 / n_msgs, cumtime * 1000 / n_msgs, round(calls / n_msgs)))
    rows.sort(key=lambda r: r[1], reverse=True)
    return rows[:top]


def _short(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(REPO) + "/"):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3" else tail
    return path


# -- reporting -------------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_result(res: dict[str, Any], label: str = "") -> None:
    floor, own = _med(res["floor_ms"]), _med(res["pipeline_ms"])
    print(f"\n== {res['load']}{label}: {res['messages']} messages of ~{res['bytes']} bytes")
    print(
        f"  floor (parse + as_bytes, policy=default)  {floor:7.3f} ms/msg   rounds "
        + " ".join(f"{x:.3f}" for x in res["floor_ms"])
    )
    print(
        f"  Pipeline.run                              {own:7.3f} ms/msg   rounds "
        + " ".join(f"{x:.3f}" for x in res["pipeline_ms"])
        + f"   ({own / floor:.1f}x floor; sandbox children {_med(res['children_ms']):.3f} ms/msg)"
    )
    if "stages_ms" in res:
        total = sum(res["stages_ms"].values())
        print("  stages (instrumented pass, ms/msg and share):")
        for stage, ms in sorted(res["stages_ms"].items(), key=lambda kv: -kv[1]):
            print(f"    {stage:32} {ms:7.3f}  {ms / total:6.1%}")
    if res.get("top"):
        print("  top functions by own time (cProfile pass; ms/msg own / cumulative, calls/msg):")
        for label_, tot, cum, calls in res["top"]:
            print(f"    {tot:7.3f} {cum:8.3f} {calls:7d}  {label_}")


def child_main(args: argparse.Namespace) -> int:
    print(json.dumps(measure(args.load[0], args)))
    return 0


def against_main(args: argparse.Namespace) -> int:
    """This tree and ``--against`` in alternating child processes, one figure per round each."""
    trees = {"this tree": REPO, "against": Path(args.against).resolve()}
    for load in args.load:
        got: dict[str, list[float]] = {k: [] for k in trees}
        floors: dict[str, list[float]] = {k: [] for k in trees}
        for rnd in range(args.rounds):
            names = list(trees) if rnd % 2 == 0 else list(reversed(trees))
            for name in names:
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    "--root",
                    str(trees[name]),
                    "--load",
                    load,
                    "--messages",
                    str(args.messages),
                    "--rounds",
                    "1",
                    "--top",
                    "0",
                    "--no-stages",
                    "--warmup",
                    str(args.warmup),
                    "--size",
                    str(args.size),
                ]
                out = subprocess.run(
                    cmd, check=True, capture_output=True, text=True, cwd=trees[name], timeout=args.timeout
                )
                res = json.loads(out.stdout.strip().splitlines()[-1])
                got[name] += res["pipeline_ms"]
                floors[name] += res["floor_ms"]
        a, b = _med(got["this tree"]), _med(got["against"])
        print(
            f"{load:12} this tree {a:7.3f} ms/msg  against {b:7.3f} ms/msg  ratio {a / b:5.2f}   "
            f"(rounds: {' '.join(f'{x:.2f}' for x in got['this tree'])} | "
            f"{' '.join(f'{x:.2f}' for x in got['against'])}; floor {_med(floors['this tree']):.3f})",
            flush=True,
        )
    return 0


def main(argv: Iterator[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", action="append", choices=LOADS, help="a load (repeatable; default: all)")
    ap.add_argument("--messages", type=int, default=300, help="messages per load and round (default 300)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=30, help="messages run first and not counted")
    ap.add_argument("--size", type=int, default=5120, help="jp-html message size, bytes (approximate)")
    ap.add_argument("--top", type=int, default=15, help="cProfile rows to print (0: no cProfile pass)")
    ap.add_argument("--no-stages", dest="stages", action="store_false", help="skip the stage pass")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--against", help="another checkout (its detox/ is imported from there) to compare with")
    ap.add_argument("--timeout", type=int, default=900, help="per child process, seconds (--against)")
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(list(argv) if argv is not None else None)
    if not args.load:
        # Sandboxed converters always run the installed detox: with --against, attachments (the
        # fixtures load) would be measured with the wrong converters, so that load is opt-in there.
        args.load = [x for x in LOADS if x != "fixtures"] if args.against else list(LOADS)
    if args.root:
        sys.path.insert(0, args.root)
    if args.child:
        return child_main(args)
    if args.against:
        return against_main(args)
    import detox

    print(
        f"pipeline profile: detox from {Path(detox.__file__).parent}; python {sys.version.split()[0]}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    results = []
    for load in args.load:
        res = measure(load, args)
        print_result(res)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
