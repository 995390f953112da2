"""``detox audit report``: what an auditor asks for, computed from the audit log alone.

The index (``detox.db``) forgets what retention purges; the audit log does not, so the report reads
only the log: messages by outcome, attachments by action and reason, every exception (release) with
its approvers and reason, approvals, exports, deletions and purges, top senders and domains — and
whether the hash chain itself is intact.
"""

from __future__ import annotations

import csv
import html
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detox.audit import Entry, VerifyResult, to_rfc3339
from detox.quarantine.holds import local_time
from detox.table import render

OUTCOMES = ("delivered", "partly-failed", "failed", "pending")
CSV_HEADER = ("section", "key", "count", "time", "id", "approved_by", "second_approver", "reason", "detail")
RELEASE_FIELDS = (
    "release_id",
    "queue_id",
    "hold_ids",
    "approved_by",
    "second_approver",
    "reason",
    "recipients",
)


@dataclass(slots=True)
class Report:
    start: datetime
    end: datetime
    chain: VerifyResult
    records: int = 0
    events: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    with_held: int = 0
    attachments: Counter[tuple[str, str]] = field(default_factory=Counter)
    releases: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[dict[str, Any]] = field(default_factory=list)
    purges: list[dict[str, Any]] = field(default_factory=list)
    senders: Counter[str] = field(default_factory=Counter)
    domains: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Message:
    recipients: set[str] = field(default_factory=set)
    delivered: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    aside: bool = False

    def outcome(self) -> str:
        if self.aside or (self.failed and not self.delivered and self.failed >= self.recipients):
            return "failed"
        if self.recipients and self.delivered >= self.recipients:
            return "delivered"
        if self.failed and self.delivered and (self.failed | self.delivered) >= self.recipients:
            return "partly-failed"
        return "pending"


def build(entries: Iterable[Entry], start: datetime, end: datetime, chain: VerifyResult) -> Report:
    """Aggregate the records whose time is in [start, end)."""
    report = Report(start, end, chain)
    low, high = to_rfc3339(start), to_rfc3339(end)
    messages: dict[str, _Message] = {}
    releases: dict[str, dict[str, Any]] = {}
    for entry in entries:
        rec = entry.record
        ts = rec.get("ts")
        if not isinstance(ts, str) or not low <= ts < high:
            continue
        report.records += 1
        event = str(rec.get("event"))
        report.events[event] += 1
        queue_id = rec.get("queue_id")
        if event == "received" and isinstance(queue_id, str):
            msg = messages.setdefault(queue_id, _Message())
            msg.recipients.update(str(r) for r in rec.get("rcpt_tos") or ())
            sender = str(rec.get("mail_from") or "") or "<>"
            report.senders[sender] += 1
            report.domains[sender.rpartition("@")[2].lower() if "@" in sender else sender] += 1
        elif event == "detoxified":
            parts = [p for p in rec.get("parts") or () if isinstance(p, dict)]
            if any(p.get("action") == "hold" for p in parts):
                report.with_held += 1
            for part in parts:
                if part.get("role") == "attachment":
                    report.attachments[(str(part.get("action")), str(part.get("reason") or "-"))] += 1
        elif event in ("delivered", "failed") and isinstance(queue_id, str):
            if rec.get("kind") == "dsn":  # our own DSN to a sender: not a message that came in
                continue
            if queue_id in releases:
                releases[queue_id]["status"] = event
                continue
            msg = messages.setdefault(queue_id, _Message())
            if "stage" in rec:  # moved aside (pipeline or spool), not a recipient's outcome
                msg.aside = True
            target = msg.delivered if event == "delivered" else msg.failed
            target.update(str(r) for r in (rec.get("recipients") or {}))
        elif event == "released":
            item = {k: rec.get(k) for k in RELEASE_FIELDS}
            item |= {
                "ts": ts,
                "parts": rec.get("parts") or [],
                "os_user": rec.get("os_user"),
                "status": "queued",
            }
            report.releases.append(item)
            releases[str(rec.get("release_id"))] = item
        elif event == "approved":
            report.approvals.append(rec)
        elif event == "exported":
            report.exports.append(rec)
        elif event == "deleted":
            report.deletions.append(rec)
        elif event == "purged":
            report.purges.append(rec)
    report.messages = len(messages)
    report.outcomes = Counter(m.outcome() for m in messages.values())
    return report


# -- rendering ------------------------------------------------------------------------------------


def _period(report: Report) -> str:
    fmt = "%Y-%m-%d %H:%M"
    return f"{report.start.astimezone().strftime(fmt)} – {report.end.astimezone().strftime(fmt)}"


def _chain_line(chain: VerifyResult) -> str:
    if chain.ok:
        return f"intact — {chain.records} records in {len(chain.files)} file(s); head {chain.head}"
    return f"BROKEN — {chain.message}"


def _names(parts: Sequence[Any]) -> str:
    return ", ".join(str(p.get("filename") or p.get("part_id")) for p in parts if isinstance(p, dict))


def _joined(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value or "-")


def _top(counter: Counter[str], n: int) -> list[tuple[str, int]]:
    return counter.most_common(n)


def render_text(report: Report, top: int = 10) -> str:
    out = [
        f"detox audit report (監査レポート)  {_period(report)} (local time)",
        f"Audit chain (改ざん検知): {_chain_line(report.chain)}",
        f"Records in the period: {report.records}",
        "",
        (
            f"Messages by outcome (受信メールの結果): {report.messages} received, "
            f"{report.with_held} with held parts"
        ),
        render(["outcome", "messages"], [(o, report.outcomes[o]) for o in OUTCOMES]),
        "",
        "Attachments by action and reason (添付ファイルの処理):",
        render(
            ["action", "reason", "count"],
            [(a, r, n) for (a, r), n in sorted(report.attachments.items(), key=lambda kv: (-kv[1], kv[0]))],
        ),
        "",
        f"Releases as approved exceptions (例外措置による解除): {len(report.releases)}",
    ]
    if report.releases:
        out.append(
            render(
                ["time", "hold ids", "files", "approved by", "second", "reason", "to", "status"],
                [
                    (
                        local_time(r["ts"]),
                        _joined(r["hold_ids"]),
                        _names(r["parts"]),
                        r["approved_by"],
                        r["second_approver"],
                        r["reason"],
                        _joined(r["recipients"]),
                        r["status"],
                    )
                    for r in report.releases
                ],
                max_widths=[None, 30, 30, 16, 16, 40, 30, None],
            )
        )
    for title, items, fields in (
        ("Approvals (二人目の承認)", report.approvals, ("hold_id", "approved_by", "os_user")),
        (
            "Exports of originals (原本の書き出し)",
            report.exports,
            ("queue_id", "hold_id", "output", "os_user"),
        ),
        ("Deletions (削除)", report.deletions, ("queue_id", "reason", "os_user")),
        ("Purges (保存期間による削除)", report.purges, ("messages", "older_than_days", "os_user")),
    ):
        out += ["", f"{title}: {len(items)}"]
        if items:
            out.append(
                render(
                    ["time", *fields], [(local_time(i.get("ts")), *(i.get(f) for f in fields)) for i in items]
                )
            )
    out += [
        "",
        "Top senders (送信者):",
        render(["sender", "messages"], _top(report.senders, top), max_widths=[60, None]),
        "",
        "Top sender domains (送信ドメイン):",
        render(["domain", "messages"], _top(report.domains, top), max_widths=[60, None]),
        "",
    ]
    return "\n".join(out)


def _csv_safe(value: object) -> object:
    """Senders and subjects come from the Internet: never let a spreadsheet read them as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_csv(report: Report, top: int = 10) -> str:
    """One table (section, key, count, then release details), UTF-8 with BOM so Excel reads it."""
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")

    def row(values: Sequence[object]) -> None:  # every row as wide as the header, for spreadsheets
        out.writerow([_csv_safe(v) for v in values] + [""] * (len(CSV_HEADER) - len(values)))

    row(CSV_HEADER)
    row(["period", _period(report)])
    row(
        [
            "chain",
            "ok" if report.chain.ok else "broken",
            report.chain.records,
            "",
            "",
            "",
            "",
            "",
            report.chain.message,
        ]
    )
    row(["messages", "received", report.messages])
    row(["messages", "with-held-parts", report.with_held])
    for outcome in OUTCOMES:
        row(["outcome", outcome, report.outcomes[outcome]])
    for (action, reason), n in sorted(report.attachments.items()):
        row(["attachments", f"{action}/{reason}", n])
    for r in report.releases:
        row(
            [
                "release",
                _joined(r["hold_ids"]),
                1,
                r["ts"],
                r["release_id"],
                r["approved_by"],
                r["second_approver"] or "",
                r["reason"],
                f"files: {_names(r['parts'])}; to: {_joined(r['recipients'])}; status: {r['status']}",
            ]
        )
    for section, items in (
        ("approval", report.approvals),
        ("export", report.exports),
        ("deletion", report.deletions),
        ("purge", report.purges),
    ):
        for i in items:
            row(
                [
                    section,
                    i.get("hold_id") or i.get("queue_id") or "",
                    i.get("messages") or 1,
                    i.get("ts"),
                    i.get("queue_id") or "",
                    i.get("approved_by") or "",
                    "",
                    i.get("reason") or "",
                    f"os_user: {i.get('os_user')}",
                ]
            )
    for sender, n in _top(report.senders, top):
        row(["top-sender", sender, n])
    for domain, n in _top(report.domains, top):
        row(["top-domain", domain, n])
    return "\ufeff" + buf.getvalue()


def _html_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: Report, top: int = 10) -> str:
    """A self-contained page (no scripts, no external resources); every value escaped."""
    chain_class = "ok" if report.chain.ok else "broken"
    sections = [
        f"<h1>detox 監査レポート <small>{html.escape(_period(report))}</small></h1>",
        (
            f'<p class="{chain_class}">監査ログの改ざん検知 (hash chain): '
            f"{html.escape(_chain_line(report.chain))}</p>"
        ),
        (
            f"<h2>受信メールの結果 (messages by outcome)</h2><p>{report.messages} 通受信、"
            f"うち保管（添付の取り除き）あり {report.with_held} 通</p>"
        ),
        _html_table(["outcome", "messages"], [(o, report.outcomes[o]) for o in OUTCOMES]),
        "<h2>添付ファイルの処理 (attachments by action and reason)</h2>",
        _html_table(
            ["action", "reason", "count"], [(a, r, n) for (a, r), n in sorted(report.attachments.items())]
        ),
        f"<h2>例外措置による解除 (releases): {len(report.releases)}</h2>",
        _html_table(
            ["time", "hold ids", "files", "approved by", "second approver", "reason", "to", "status"],
            [
                (
                    local_time(r["ts"]),
                    _joined(r["hold_ids"]),
                    _names(r["parts"]),
                    r["approved_by"],
                    r["second_approver"] or "",
                    r["reason"],
                    _joined(r["recipients"]),
                    r["status"],
                )
                for r in report.releases
            ],
        ),
    ]
    for title, items, fields in (
        ("二人目の承認 (approvals)", report.approvals, ("hold_id", "approved_by", "os_user")),
        ("原本の書き出し (exports)", report.exports, ("queue_id", "hold_id", "output", "os_user")),
        ("削除 (deletions)", report.deletions, ("queue_id", "reason", "os_user")),
        ("保存期間による削除 (purges)", report.purges, ("messages", "older_than_days", "os_user")),
    ):
        sections.append(f"<h2>{html.escape(title)}: {len(items)}</h2>")
        sections.append(
            _html_table(
                ["time", *fields], [(local_time(i.get("ts")), *(i.get(f) for f in fields)) for i in items]
            )
        )
    sections += [
        "<h2>送信者 (top senders)</h2>",
        _html_table(["sender", "messages"], _top(report.senders, top)),
        "<h2>送信ドメイン (top sender domains)</h2>",
        _html_table(["domain", "messages"], _top(report.domains, top)),
    ]
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #999;padding:.2em .6em;text-align:left}.ok{color:#060}.broken{color:#b00;"
        "font-weight:bold}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="ja"><head><meta charset="utf-8"><title>detox 監査レポート</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
