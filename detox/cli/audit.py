"""``detox audit …``: verify the hash chain, follow the log, and the auditor's report over a period.

The work is done in :mod:`detox.audit` and :mod:`detox.cli.audit_report`; this module parses arguments
and prints. A broken chain is exit 1 (``audit verify``), a missing log exit 3 (NotFoundError).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from detox.cli.common import ExitCode, _day_end_or_time, _day_or_time
from detox.config.schema import DetoxConfig
from detox.errors import NotFoundError, RefusedError
from detox.untrusted import for_log


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``audit`` to the ``detox`` parser."""
    a = sub.add_parser("audit", help="verify, follow and summarise the audit log")
    asub = a.add_subparsers(dest="acommand", required=True, metavar="COMMAND")

    p = asub.add_parser(
        "verify", parents=[common], help="check the hash chain; exit 1 at the first broken link"
    )
    p.add_argument(
        "file", nargs="?", help="the log (default: the configured one); rotated files beside it count"
    )
    p.add_argument("--anchor", metavar="SHA256", help="a head hash noted earlier: must still be in the chain")
    p.set_defaults(func=cmd_verify)

    p = asub.add_parser("tail", parents=[common], help="the last records (-f: follow)")
    p.add_argument("-n", "--lines", type=int, default=10, metavar="N")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--json", action="store_true", help="the raw JSON lines")
    p.set_defaults(func=cmd_tail)

    p = asub.add_parser("report", parents=[common], help="summary for an auditor over a period")
    p.add_argument(
        "--from", dest="start", type=_day_or_time, help="YYYY-MM-DD or ISO date-time (default: start)"
    )
    p.add_argument(
        "--to",
        dest="end",
        type=_day_end_or_time,
        metavar="DATE",
        help="YYYY-MM-DD (inclusive) or ISO date-time",
    )
    p.add_argument("--format", choices=("text", "csv", "html"), default="text")
    p.add_argument("--output", "-o", help="write to FILE instead of standard output")
    p.add_argument("--top", type=int, default=10, help="how many top senders and domains")
    p.set_defaults(func=cmd_report)


# -- commands -------------------------------------------------------------------------------------


def _audit_path(args: argparse.Namespace) -> Path:
    config: DetoxConfig = args.load_config(args.config)
    return config.state_path("audit", "audit.jsonl")


def cmd_verify(args: argparse.Namespace) -> int:
    from detox.audit import chain_files, verify_files

    path = Path(args.file) if args.file else _audit_path(args)
    files = chain_files(path)
    if not files:
        raise NotFoundError(f"no audit log at {path}")
    result = verify_files(files, anchor=args.anchor.lower() if args.anchor else None)
    if result.ok:
        print(result.message)
        return ExitCode.OK
    print(f"detox audit verify: FAILED: {result.message}", file=sys.stderr)
    return ExitCode.INTERNAL  # the chain is broken


_SUMMARY_SKIP = frozenset({"ts", "event", "queue_id", "prev", "parts", "defects"})


def format_record(record: dict[str, Any]) -> str:
    """One record on one line for people: time, event, queue id, then the fields that say most."""
    from detox.quarantine.holds import local_time

    fields = []
    if record.get("event") == "detoxified":
        held = [
            p.get("filename") or p.get("part_id")
            for p in record.get("parts") or ()
            if p.get("action") == "hold"
        ]
        if held:
            fields.append("held=" + ",".join(str(h) for h in held))
    for key, value in record.items():
        if key in _SUMMARY_SKIP or value in (None, "", [], {}):
            continue
        text = (
            value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        )
        fields.append(f"{key}={text}")
    queue_id = record.get("queue_id") or "-"
    line = f"{local_time(record.get('ts'))}  {record.get('event', '?'):<11} {queue_id:<20}  "
    return for_log(line + " ".join(fields), 400)


def _print_line(raw: bytes, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(raw.decode("utf-8", "replace"))
    else:
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        print(format_record(record) if isinstance(record, dict) else f"(not a record) {for_log(raw)}")
    sys.stdout.flush()


def cmd_tail(args: argparse.Namespace) -> int:
    from detox.audit import follow, tail

    path = _audit_path(args)
    for raw in tail(path, max(args.lines, 0)):
        _print_line(raw, args.json)
    if args.follow:
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops following
            follow(path, lambda raw: _print_line(raw, args.json))
    return ExitCode.OK


def _first_record_time(files: list[Path]) -> datetime | None:
    from detox.audit import iter_entries

    for entry in iter_entries(files):
        ts = entry.record.get("ts")
        if isinstance(ts, str):
            try:
                return datetime.fromisoformat(ts)
            except ValueError:
                continue
    return None


def cmd_report(args: argparse.Namespace) -> int:
    from detox.audit import chain_files, iter_entries, verify_files
    from detox.cli import audit_report as report

    path = _audit_path(args)
    files = chain_files(path)
    if not files:
        raise NotFoundError(f"no audit log at {path}")
    start = args.start or _first_record_time(files) or datetime.now().astimezone()
    end = args.end or datetime.now().astimezone() + timedelta(seconds=1)
    if start >= end:
        raise RefusedError("--from must be before --to")
    built = report.build(iter_entries(files), start, end, verify_files(files))
    renderers: dict[str, Callable[[report.Report, int], str]] = {
        "text": report.render_text,
        "csv": report.render_csv,
        "html": report.render_html,
    }
    text = renderers[args.format](built, args.top)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.write(text)
    return ExitCode.OK
