"""``detox quarantine …``: find, show, export, approve, release and delete held originals.

The work is done in :mod:`detox.quarantine`; this module parses arguments and prints. Errors are raised
as DetoxError subclasses and turned into exit codes by :func:`detox.cli.main` (NotFoundError → 3,
RefusedError → 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detox.cli.common import ExitCode, _day_or_time, _non_negative, write_json
from detox.errors import NotFoundError, RefusedError
from detox.table import cell, render
from detox.untrusted import for_log

if TYPE_CHECKING:  # imported when used: `detox --help` need not load the pipeline
    from detox.quarantine.admin import Quarantine
    from detox.quarantine.holds import MessageView


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``quarantine`` to the ``detox`` parser."""
    q = sub.add_parser("quarantine", help="find, show, export, release and delete held originals")
    qsub = q.add_subparsers(dest="qcommand", required=True, metavar="COMMAND")

    p = qsub.add_parser("list", parents=[common], help="messages with held parts, newest first")
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    p.add_argument(
        "--since", type=_day_or_time, metavar="DATE", help="received at or after: YYYY-MM-DD or ISO date-time"
    )
    p.add_argument("--from", dest="sender", metavar="ADDR", help="envelope or header sender contains ADDR")
    p.add_argument("--to", dest="recipient", metavar="ADDR", help="a recipient contains ADDR")
    p.add_argument("--reason", help="a held part's reason code contains TEXT (e.g. encrypted-archive)")
    p.add_argument("--all", action="store_true", help="every kept original, not only those with held parts")
    p.add_argument("--limit", type=int, default=0, help="at most N messages (default: all)")
    p.add_argument(
        "--auth",
        action="append",
        default=[],
        type=_auth_filter,
        metavar="METHOD=RESULT",
        help="sender authentication, e.g. dmarc=fail, spf=softfail, action=hold (repeatable; all must hold)",
    )
    p.set_defaults(func=cmd_list)

    p = qsub.add_parser("show", parents=[common], help="envelope, decoded headers, every part's decision")
    p.add_argument("id", help="queue id or hold id (QUEUE_ID/PART)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = qsub.add_parser("export", parents=[common], help="write the original .eml (or one held part)")
    p.add_argument("id", help="queue id: the original .eml; hold id: that part's bytes")
    p.add_argument("--output", "-o", required=True, help="file to create (- = standard output)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_export)

    p = qsub.add_parser("approve", parents=[common], help="second approval of a release (two-person rule)")
    p.add_argument("id", help="queue id (every held part) or hold id")
    p.add_argument("--by", required=True, metavar="NAME", help="the approving admin")
    p.set_defaults(func=cmd_approve)

    p = qsub.add_parser("release", parents=[common], help="deliver held original(s) as an approved exception")
    p.add_argument("id", help="queue id (every held part), hold id QUEUE_ID/PART, or QUEUE_ID/0 (whole mail)")
    p.add_argument("--reason", required=True, help="why this exception is made (recorded)")
    p.add_argument("--approved-by", required=True, metavar="NAME", help="the admin who approves it")
    p.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="ADDR",
        help="recipient (repeatable; default: the original's)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="release even what clamd found a virus in (also needs a second admin's approval)",
    )
    p.set_defaults(func=cmd_release)

    p = qsub.add_parser("delete", parents=[common], help="delete one original and its index rows")
    p.add_argument("id", help="queue id")
    p.add_argument("--reason", help="recorded in the audit log")
    p.set_defaults(func=cmd_delete)

    p = qsub.add_parser("purge", parents=[common], help="delete originals received more than DAYS ago")
    p.add_argument("--older-than", required=True, type=_non_negative, metavar="DAYS")
    p.set_defaults(func=cmd_purge)


# -- helpers ------------------------------------------------------------------------------------


def _auth_filter(text: str) -> tuple[str, str]:
    from detox.quarantine.store import AUTH_KEYS

    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if not sep or key not in AUTH_KEYS or not value.strip():
        raise argparse.ArgumentTypeError(f"expected METHOD=RESULT with METHOD one of {', '.join(AUTH_KEYS)}")
    return key, value.strip().lower()


def _quarantine(args: argparse.Namespace) -> Quarantine:
    from detox.quarantine.admin import Quarantine

    return Quarantine(args.load_config(args.config))


def _terminal_width() -> int | None:
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _held_summary(view: MessageView) -> str:
    held = view.held
    if not held:
        return "-"
    first = held[0]
    reason = f"virus: {first['virus']}" if first["virus"] else first["reason"]
    text = f"{first['part_id']}: {first['filename'] or first['detected_type']} [{reason}]"
    return text + (f" +{len(held) - 1}" if len(held) > 1 else "")


# -- commands ------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from detox.audit import to_rfc3339
    from detox.quarantine.holds import local_time

    quarantine = _quarantine(args)
    try:
        views = quarantine.find(
            since=to_rfc3339(args.since) if args.since else None,
            sender=args.sender,
            recipient=args.recipient,
            reason=args.reason,
            held_only=not args.all,
            limit=args.limit,
            auth=args.auth,
        )
    finally:
        quarantine.close()
    if args.json:
        write_json([v.as_json() for v in views])
        return ExitCode.OK
    rows = []
    for view in views:
        rcpts = view.recipients
        to = (rcpts[0] if rcpts else "-") + (f" +{len(rcpts) - 1}" if len(rcpts) > 1 else "")
        rows.append(
            (
                view.queue_id,
                local_time(view.row["received_at"]),
                view.row["mail_from"] or "<>",
                to,
                view.row["subject"] or "",
                _held_summary(view),
            )
        )
    print(
        render(
            ["ID", "RECEIVED", "FROM", "TO", "SUBJECT", "HELD"],
            rows,
            max_widths=[None, None, 40, 32, 60, 50],
            total_width=_terminal_width(),
            shrink=4,
        )
    )
    print(f"{len(rows)} message(s)" + ("" if args.all else " with held parts"))
    return ExitCode.OK


def cmd_show(args: argparse.Namespace) -> int:
    from detox.quarantine.holds import WHOLE_MESSAGE, local_time, parse_ref

    ref = parse_ref(args.id)
    quarantine = _quarantine(args)
    try:
        view = quarantine.get(ref)
        try:
            headers = quarantine.headers(view)
        except NotFoundError as exc:
            headers = [("(original)", str(exc))]
        original = quarantine.store.path_for(view.row["sha256"])
    finally:
        quarantine.close()
    if args.json:
        data = view.as_json(history=True)
        data["headers"] = [{"name": k, "value": v} for k, v in headers]
        data["original_path"] = str(original)
        write_json(data)
        return ExitCode.OK
    row = view.row
    lines = [
        f"Queue ID (受付番号): {view.queue_id}",
        f"Received:    {local_time(row['received_at'])} ({row['received_at']})",
        f"Client:      [{cell(row['client_address'])}] HELO {cell(row['helo'])}",
        f"MAIL FROM:   {cell(row['mail_from'] or '<>')}",
        f"RCPT TO:     {cell(', '.join(view.recipients))}",
        f"Original:    {original} ({row['size']} bytes, sha256 {row['sha256']})",
        f"Kept until:  {view.as_json()['expires_at']}",
        f"Actions:     {cell(row['actions'])}",
        "",
        "Headers (decoded):",
    ]
    lines += [f"  {name}: {value}" for name, value in headers]
    lines += ["", "Parts:"]
    table_rows = []
    for p in view.parts:
        marker = "*" if ref.part_id in (p["part_id"], None) and p["action"] == "hold" else " "
        table_rows.append(
            (
                f"{marker}{p['part_id']}",
                p["role"],
                p["filename"] or "",
                p["detected_type"],
                p["size"],
                p["filter"],
                p["action"],
                f"virus: {p['virus']}" if p["virus"] else (p["reason"] or "-"),
            )
        )
    lines.append(
        render(
            ["PART", "ROLE", "NAME", "TYPE", "SIZE", "DECIDED BY", "ACTION", "REASON"],
            table_rows,
            max_widths=[40, None, 40, 40, None, 30, None, None],
        )
    )
    held = view.held
    if held:
        lines += ["", "Hold ids (保管番号):"]
        lines += [f"  {view.queue_id}/{p['part_id']}  sha256 {p['sha256']}" for p in held]
        lines.append(f"  {view.queue_id}/{WHOLE_MESSAGE}  (the whole original message)")
    if view.approvals:
        lines += ["", "Approvals:"]
        lines += [
            f"  {local_time(a['approved_at'])}  {view.queue_id}{'/' + a['part_id'] if a['part_id'] else ''}  "
            f"by {cell(a['approved_by'])} ({a['os_user']})"
            + (f"  used by release {a['release_id']}" if a["release_id"] else "  unused")
            for a in view.approvals
        ]
    if view.releases:
        lines += ["", "Releases (例外措置):"]
        for r in view.releases:
            second = f", second approver {cell(r['second_approver'])}" if r["second_approver"] else ""
            part_ids = ", ".join(json.loads(r["part_ids"]))
            lines.append(
                f"  {local_time(r['released_at'])}  {r['release_id']}  parts {part_ids}"
                f"  approved by {cell(r['approved_by'])}{second}  to {', '.join(json.loads(r['recipients']))}"
                f"  reason: {cell(r['reason'])}"
            )
    print("\n".join(lines))
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    from detox.quarantine.holds import parse_ref

    ref = parse_ref(args.id)
    to_stdout = args.output == "-"
    target = Path(args.output)
    if not to_stdout and target.exists() and not args.force:
        raise RefusedError(f"{args.output} exists (use --force to overwrite)")
    quarantine = _quarantine(args)
    try:
        item = quarantine.export(ref, "-" if to_stdout else str(target.resolve()))
    finally:
        quarantine.close()
    if to_stdout:
        sys.stdout.buffer.write(item.data)
        sys.stdout.buffer.flush()
        return ExitCode.OK
    # Owner-only: an original may carry exactly what the filters kept away from LGWAN.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if args.force else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(item.data)
    print(f"wrote {target} ({len(item.data)} bytes, sha256 {item.sha256})", file=sys.stderr)
    return ExitCode.OK


def cmd_approve(args: argparse.Namespace) -> int:
    from detox.quarantine.holds import parse_ref

    ref = parse_ref(args.id)
    quarantine = _quarantine(args)
    try:
        quarantine.approve(ref, args.by)
        rule = quarantine.config.quarantine.two_person_rule
    finally:
        quarantine.close()
    print(f"approved {ref} by {for_log(args.by)}" + ("" if rule else " (note: the two-person rule is off)"))
    return ExitCode.OK


def cmd_release(args: argparse.Namespace) -> int:
    from detox.quarantine.holds import parse_ref

    ref = parse_ref(args.id)
    quarantine = _quarantine(args)
    try:
        result = quarantine.release(
            ref, reason=args.reason, approved_by=args.approved_by, to=args.to, force=args.force
        )
    finally:
        quarantine.close()
    second = f" and {for_log(result.second_approver)}" if result.second_approver else ""
    print(
        f"released {ref} as {result.release_id} (例外措置), approved by {for_log(result.approved_by)}{second}"
    )
    for part in result.parts:
        name = for_log(part.filename)
        print(f"  {result.queue_id}/{part.part_id}  {name}  {len(part.data)} bytes  sha256 {part.sha256}")
    print(f"  to: {', '.join(result.recipients)}")
    if result.earlier_releases:
        print(f"  note: released before as {', '.join(result.earlier_releases)}")
    print(
        "queued in the spool; `detox serve` delivers it (within a second while running, else when it starts)"
    )
    return ExitCode.OK


def cmd_delete(args: argparse.Namespace) -> int:
    from detox.quarantine.holds import parse_ref

    ref = parse_ref(args.id)
    quarantine = _quarantine(args)
    try:
        quarantine.delete(ref, args.reason)
    finally:
        quarantine.close()
    print(f"deleted {ref.queue_id}")
    return ExitCode.OK


def cmd_purge(args: argparse.Namespace) -> int:
    quarantine = _quarantine(args)
    try:
        purged = quarantine.purge(args.older_than)
    finally:
        quarantine.close()
    print(f"purged {len(purged)} message(s) received more than {args.older_than:g} day(s) ago")
    return ExitCode.OK
