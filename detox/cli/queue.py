"""``detox queue list|retry|flush``: what waits in the spool, and nudging serve.

The CLI never changes an entry a running serve may be working on: it leaves a request in
``spool/control/`` (``retry.ID``, ``flush``; ``reload`` is :mod:`detox.cli.reload`), which serve picks
up within a second, or at its next start when it is stopped.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detox.cli.common import ExitCode
from detox.errors import NotFoundError, RefusedError, SpoolError
from detox.spool import KIND_MESSAGE, DeliveryState, Spool
from detox.table import render

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``queue`` to the ``detox`` parser."""
    q = sub.add_parser("queue", help="messages waiting in the spool: list, retry one, flush all")
    qsub = q.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")

    p = qsub.add_parser(
        "list", parents=[common], help="every message waiting: to detoxify, to deliver, or held aside"
    )
    p.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = qsub.add_parser(
        "retry", parents=[common], help="try one message now (one held in spool/failed/ is put back)"
    )
    p.add_argument("id", help="queue id as `detox queue list` shows it")
    p.set_defaults(func=cmd_retry)

    p = qsub.add_parser("flush", parents=[common], help="try every waiting message now")
    p.set_defaults(func=cmd_flush)


# -- gathering --------------------------------------------------------------------------------------


@dataclass
class Entry:
    queue_id: str
    stage: str  # detoxify | deliver | release | held
    kind: str = KIND_MESSAGE
    received_at: float = 0.0
    mail_from: str = ""
    recipients: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    next_attempt: float | None = None
    last_response: str = ""
    why: str = ""

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "id": self.queue_id,
            "stage": self.stage,
            "kind": self.kind,
            "received_at": _iso(self.received_at),
            "age_s": round(now - self.received_at, 1) if self.received_at else None,
            "mail_from": self.mail_from,
            "recipients": self.recipients,
            "attempts": self.attempts,
            "next_attempt": _iso(self.next_attempt) if self.next_attempt is not None else None,
            "last_response": self.last_response,
            "why": self.why or None,
        }


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _received(value: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def _from_state(state: DeliveryState, stage: str) -> Entry:
    rcpts = []
    last = ""
    last_at = -1.0
    for address, r in state.recipients.items():
        rcpts.append(
            {
                "address": address,
                "status": r.status,
                "attempts": r.attempts,
                "code": r.code,
                "response": r.response,
                "reason": r.reason or None,
                "dsn": r.dsn or None,
            }
        )
        if r.response and r.updated_at >= last_at:
            last, last_at = (f"{r.code} {r.response}" if r.code else r.response), r.updated_at
    pending = bool(state.pending())
    return Entry(
        queue_id=state.queue_id,
        stage=stage,
        kind=state.kind,
        received_at=state.received_at,
        mail_from=state.mail_from,
        recipients=rcpts,
        attempts=state.attempts,
        next_attempt=(state.next_attempt or state.created_at) if pending and stage == "deliver" else None,
        last_response=last,
    )


def _incoming(spool: Spool, queue_id: str, stage: str) -> Entry:
    try:
        env = spool.read_envelope(queue_id, aside=stage == "held")
    except SpoolError as exc:
        return Entry(queue_id, stage, last_response=str(exc))
    tries = spool.read_tries(queue_id)
    return Entry(
        queue_id=queue_id,
        stage=stage,
        received_at=_received(env.received_at),
        mail_from=env.mail_from,
        recipients=[{"address": r, "status": "pending"} for r in env.rcpt_tos],
        attempts=tries.attempts,
        next_attempt=(tries.next_attempt or None) if stage == "detoxify" else None,
        last_response=tries.last_error,
    )


def gather(spool: Spool) -> list[Entry]:
    entries = [_incoming(spool, q, "detoxify") for q in spool.incoming_ids()]
    for queue_id in spool.outgoing_ids():
        try:
            entries.append(_from_state(spool.read_state(queue_id), "deliver"))
        except SpoolError as exc:
            entries.append(Entry(queue_id, "deliver", last_response=str(exc)))
    for path in sorted(spool.released.glob("*.json")):
        try:
            entries.append(_from_state(DeliveryState.from_json(path.read_bytes()), "release"))
        except (OSError, ValueError, KeyError, TypeError):
            entries.append(Entry(path.stem, "release", last_response="state unreadable"))
    for queue_id in spool.aside_ids():
        note = spool.aside_note(queue_id)
        if (spool.failed / f"{queue_id}.msg").exists():
            entry = _incoming(spool, queue_id, "held")
        else:
            try:
                state = DeliveryState.from_json((spool.failed / f"{queue_id}.json").read_bytes())
                entry = _from_state(state, "held")
            except (OSError, ValueError, KeyError, TypeError):
                entry = Entry(queue_id, "held")
        entry.why = str(note.get("why", ""))
        entries.append(entry)
    return sorted(entries, key=lambda e: e.queue_id)  # ids begin with the time: oldest first


# -- output -------------------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    if ts < now + 1:
        return "now"
    return "in " + _age(ts - now)


def _serve_line(spool: Spool) -> str:
    pid = spool.serve_pid()
    return f"detox serve: running (pid {pid})" if pid is not None else "detox serve: not running"


def open_spool(args: argparse.Namespace) -> Spool:
    """The spool of the configuration ``--config`` names (shared with ``detox reload``)."""
    config = args.load_config(args.config)
    return Spool(config.state_path("spool"), fsync=config.storage.fsync)


def cmd_list(args: argparse.Namespace) -> int:
    spool = open_spool(args)
    entries = gather(spool)
    now = time.time()
    if args.json:
        sys.stdout.write(json.dumps([e.as_json(now) for e in entries], ensure_ascii=False, indent=2) + "\n")
        return ExitCode.OK
    rows = []
    for e in entries:
        rcpts = ", ".join(f"{r['address']} ({r['status']})" for r in e.recipients) or "-"
        stage = e.stage if e.kind == KIND_MESSAGE else f"{e.stage} ({e.kind})"
        rows.append(
            (
                e.queue_id,
                stage,
                _age(now - e.received_at) if e.received_at else "-",
                e.mail_from or "<>",
                rcpts,
                e.attempts,
                _when(e.next_attempt, now),
                e.why or e.last_response or "-",
            )
        )
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    if rows:
        print(
            render(
                [
                    "ID",
                    "STAGE",
                    "AGE",
                    "FROM",
                    "RECIPIENTS (STATUS)",
                    "TRIES",
                    "NEXT",
                    "LAST RESPONSE / WHY HELD",
                ],
                rows,
                max_widths=[None, None, None, 36, 60, None, None, 80],
                total_width=width,
                shrink=7,
            )
        )
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.stage] = counts.get(e.stage, 0) + 1
    summary = ", ".join(f"{n} {stage}" for stage, n in counts.items()) or "the queue is empty"
    print(f"{len(entries)} message(s): {summary}" if entries else summary)
    print(_serve_line(spool))
    return ExitCode.OK


def _audit(args: argparse.Namespace, event: str, **fields: Any) -> None:
    from detox.audit import AuditLog
    from detox.quarantine.holds import actor

    AuditLog.from_config(args.load_config(args.config)).write(event, None, **fields, **actor())


def _picked_up(spool: Spool) -> str:
    if spool.serve_pid() is not None:
        return "the running serve picks it up within a second"
    return "detox serve is not running: it is done when serve starts"


def cmd_retry(args: argparse.Namespace) -> int:
    queue_id = args.id.strip()
    if not _NAME.fullmatch(queue_id):
        raise NotFoundError(f"{args.id!r} is not a queue id")
    spool = open_spool(args)
    places = {
        "detoxify": spool.incoming / f"{queue_id}.msg",
        "deliver": spool.outgoing / f"{queue_id}.json",
        "held": spool.failed / f"{queue_id}.why.json",
    }
    stage = next((s for s, path in places.items() if path.exists()), None)
    if stage is None:
        if (spool.released / f"{queue_id}.json").exists():
            raise RefusedError(f"{queue_id} is a release not yet picked up by serve; it is tried then")
        raise NotFoundError(f"{queue_id} is not in the spool (delivered, or never accepted)")
    spool.request(f"retry.{queue_id}")
    _audit(args, "queue_retry", target=queue_id, stage=stage)
    what = "put back into the queue and tried" if stage == "held" else "tried"
    print(f"{queue_id} ({stage}) will be {what} now; {_picked_up(spool)}")
    return ExitCode.OK


def cmd_flush(args: argparse.Namespace) -> int:
    spool = open_spool(args)
    spool.request("flush")
    _audit(args, "queue_flush")
    print(f"every waiting message will be tried now (held ones stay held); {_picked_up(spool)}")
    return ExitCode.OK
