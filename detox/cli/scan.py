"""``detox scan``: detoxify one message offline, or (``--summary``) dry-run the policy over many.

The envelope an offline scan assumes and the dry-run itself are in :mod:`detox.scan`; this module reads
the input, runs the same Pipeline as the relay, and writes the message, the JSON report or the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detox.cli.common import ExitCode, config_path, setup_logging
from detox.config.schema import DetoxConfig
from detox.pipeline.registry import load_validated_config
from detox.scan import is_multi, scan_envelope


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``scan`` (its own ``--config``) to the ``detox`` parser."""
    scan = sub.add_parser(
        "scan", help="detoxify one message offline, or (--summary) dry-run a directory, mbox or Maildir"
    )
    scan.add_argument(
        "input", help="message file or - (stdin); with --summary also a directory, mbox, Maildir"
    )
    scan.add_argument("--config")
    scan.add_argument("--output", help="where to write the detoxified message (default: stdout)")
    scan.add_argument("--report", help="write the JSON report of every decision here (- = stderr)")
    scan.add_argument("--mail-from", help="envelope sender (default: from the headers)")
    scan.add_argument("--rcpt", action="append", help="envelope recipient (repeatable)")
    scan.add_argument(
        "--client-ip",
        help="with [inbound] on: the SMTP client to authenticate (default: from the top Received header)",
    )
    scan.add_argument("--helo", help="with [inbound] on: the client's HELO name (default: from that header)")
    scan.add_argument(
        "--summary",
        action="store_true",
        help="print what the policy would do to each message (delivers nothing)",
    )
    scan.add_argument("--jobs", type=int, default=1, help="with --summary: processes to use (default 1)")
    scan.set_defaults(func=cmd_scan)


def cmd_scan(args: argparse.Namespace) -> int:
    config = load_validated_config(config_path(args.config))
    setup_logging(config)
    source = Path(args.input)
    if args.input != "-" and not source.exists():
        print(f"detox scan: {args.input}: no such file or directory", file=sys.stderr)
        return ExitCode.USAGE
    if args.summary:
        if args.input == "-":
            print("detox scan: --summary needs a file, directory, mbox or Maildir", file=sys.stderr)
            return ExitCode.USAGE
        return scan_summary(config, source, args.jobs, args.report)
    if is_multi(source):
        print(f"detox scan: {args.input} holds many messages: add --summary", file=sys.stderr)
        return ExitCode.USAGE
    try:
        raw = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as exc:
        print(f"detox scan: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return ExitCode.USAGE
    from detox.pipeline import Pipeline

    envelope = scan_envelope(raw, args.mail_from, args.rcpt or ())
    if config.inbound.enabled:
        from detox.inbound.offline import authenticate_offline

        envelope, outcome = authenticate_offline(config, raw, envelope, args.client_ip, args.helo)
        if outcome.decision.action == "reject":
            print(
                f"detox scan: the relay would refuse this message (550 {config.inbound.reject_message});"
                " shown as held",
                file=sys.stderr,
            )
    result = Pipeline(config).run(raw, envelope)
    # The relay writes Maildir files with LF line endings; scan prints the same form.
    output = result.output.replace(b"\r\n", b"\n")
    if args.output and args.output != "-":
        Path(args.output).write_bytes(output)
    else:
        sys.stdout.buffer.write(output)
        sys.stdout.buffer.flush()
    if args.report:
        report = result.report.to_json() + "\n"
        if args.report == "-":
            sys.stderr.write(report)
        else:
            Path(args.report).write_text(report, encoding="utf-8")
    return ExitCode.OK


def scan_summary(config: DetoxConfig, path: Path, jobs: int, report_file: str | None) -> int:
    """``detox scan --summary``: the policy dry-run over every message under ``path``."""
    from detox.scan import render_summary, summarize

    summary = summarize(config, path, jobs)
    sys.stdout.write(render_summary(summary))
    if report_file:
        text = json.dumps(summary.as_json(), ensure_ascii=False, indent=2) + "\n"
        if report_file == "-":
            sys.stderr.write(text)
        else:
            Path(report_file).write_text(text, encoding="utf-8")
    return ExitCode.OK
