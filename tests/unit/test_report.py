"""``detox audit report``: outcomes, attachments, releases, top senders — from the audit log alone."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detox.audit import AuditLog, chain_files, iter_entries, verify_files
from detox.audit import log as audit_log
from detox.cli import audit_report as report

START = datetime(2026, 11, 1, tzinfo=UTC)
END = datetime(2026, 12, 1, tzinfo=UTC)


def write(log: AuditLog, ts: str, event: str, queue_id: str | None = None, **fields: object) -> None:
    """An audit record stamped with a chosen time."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit_log, "now_rfc3339", lambda: ts)
        log.write(event, queue_id, **fields)


def part(name: str | None, action: str, reason: str = "", role: str = "attachment") -> dict[str, object]:
    return {"part_id": "2", "role": role, "filename": name, "action": action, "reason": reason}


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    t = "2026-11-10T0{}:00:00.000Z"
    city = "city.example.lg.jp"
    write(
        log, t.format(1), "received", "Q1", mail_from="hanako@vendor.example.com", rcpt_tos=[f"taro@{city}"]
    )
    write(
        log,
        t.format(1),
        "detoxified",
        "Q1",
        parts=[
            part(None, "text", role="body"),
            part("見積書.zip", "hold", "encrypted-archive"),
        ],
    )
    write(log, t.format(1), "delivered", "Q1", recipients={f"taro@{city}": {"code": 250}})
    write(
        log,
        t.format(2),
        "received",
        "Q2",
        mail_from="a@partner.example.jp",
        rcpt_tos=[f"a@{city}", f"b@{city}"],
    )
    write(log, t.format(2), "detoxified", "Q2", parts=[part("<b>x</b>.pdf", "replace")])
    write(log, t.format(2), "delivered", "Q2", recipients={f"a@{city}": {"code": 250}})
    write(log, t.format(2), "failed", "Q2", recipients={f"b@{city}": {"code": 550}})
    write(log, t.format(3), "received", "Q3", mail_from="b@partner.example.jp", rcpt_tos=[f"a@{city}"])
    write(log, t.format(3), "failed", "Q3", stage="pipeline", reason="worker crashed")
    write(log, t.format(4), "received", "Q4", mail_from="", rcpt_tos=[f"a@{city}"])
    write(log, t.format(4), "received", "Q5", mail_from="=HYPERLINK(1)@evil.example", rcpt_tos=[f"a@{city}"])
    write(log, t.format(5), "approved", "Q1", hold_id="Q1/2", approved_by="佐藤", os_user="sato")
    write(log, t.format(5), "released", "Q1", release_id="R1", hold_ids=["Q1/2"],
          parts=[{"part_id": "2", "filename": "見積書.zip", "sha256": "ab" * 32}],
          recipients=[f"taro@{city}"], approved_by="山田", second_approver="佐藤", reason="電話で確認済み",
          os_user="yamada")  # fmt: skip
    write(log, t.format(5), "delivered", "R1", recipients={f"taro@{city}": {"code": 250}})
    write(log, t.format(6), "exported", "Q1", hold_id="Q1/2", output="/tmp/x.zip", os_user="yamada")
    write(log, t.format(7), "deleted", "Q2", reason="誤送信", os_user="yamada")
    write(log, t.format(8), "purged", None, messages=3, older_than_days=90, os_user="root")
    write(log, "2026-12-05T00:00:00.000Z", "received", "LATE", mail_from="late@example.jp", rcpt_tos=["x@y"])
    return log.path


def built(path: Path, start: datetime = START, end: datetime = END) -> report.Report:
    files = chain_files(path)
    return report.build(iter_entries(files), start, end, verify_files(files))


def test_summary_counts(log_path: Path) -> None:
    r = built(log_path)
    assert r.chain.ok, r.chain.message
    assert r.messages == 5  # LATE is outside the period; the release R1 is not a received message
    assert r.outcomes == {"delivered": 1, "partly-failed": 1, "failed": 1, "pending": 2}
    assert r.with_held == 1
    assert r.attachments == {("hold", "encrypted-archive"): 1, ("replace", "-"): 1}
    [release] = r.releases
    assert release["approved_by"] == "山田" and release["second_approver"] == "佐藤"
    assert release["reason"] == "電話で確認済み" and release["status"] == "delivered"
    assert len(r.approvals) == len(r.exports) == len(r.deletions) == len(r.purges) == 1
    assert r.senders["<>"] == 1 and r.domains["partner.example.jp"] == 2


def test_period_bounds(log_path: Path) -> None:
    r = built(log_path, datetime(2026, 11, 10, 2, tzinfo=UTC), datetime(2026, 11, 10, 3, tzinfo=UTC))
    assert r.messages == 1 and r.releases == []


def test_text_csv_html(log_path: Path) -> None:
    r = built(log_path)
    text = report.render_text(r)
    assert "intact" in text and "山田" in text and "電話で確認済み" in text and "encrypted-archive" in text
    data = report.render_csv(r)
    assert data.startswith("\ufeff")  # Excel reads UTF-8 only with a BOM
    rows = list(csv.reader(io.StringIO(data.lstrip("\ufeff"))))
    release_rows = [row for row in rows if row[0] == "release"]
    assert release_rows[0][5:8] == ["山田", "佐藤", "電話で確認済み"]
    assert {len(row) for row in rows} == {9}
    formula = next(row for row in rows if "HYPERLINK" in row[1])
    assert formula[:3] == ["top-sender", "'=HYPERLINK(1)@evil.example", "1"]  # no formula for Excel
    page = report.render_html(r)
    assert "<b>x</b>" not in page and "見積書.zip" in page  # values are escaped
    assert "<script" not in page


def test_a_broken_chain_shows_in_the_report(log_path: Path) -> None:
    lines = log_path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"partner", b"partnar")
    log_path.write_bytes(b"".join(lines))
    r = built(log_path)
    assert not r.chain.ok
    assert "BROKEN" in report.render_text(r)
