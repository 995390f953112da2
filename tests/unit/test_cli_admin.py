"""The admin commands' argument handling, output formats and exit codes (in-process, no serve)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.configs import config_file

from detox.audit import AuditLog
from detox.cli import ExitCode, main
from detox.cli.audit import format_record
from detox.cli.common import parse_when


def test_dates_and_datetimes() -> None:
    day = parse_when("2026-11-25")
    assert day.tzinfo is not None and (day.hour, day.minute) == (0, 0) and day.day == 25
    assert parse_when("2026-11-25", end_of_day=True) - day == timedelta(days=1)
    assert parse_when("2026-11-25T09:30:00+09:00") == datetime(2026, 11, 25, 0, 30, tzinfo=UTC)
    assert parse_when("2026-11-25T09:30").tzinfo is not None  # naive = local time
    with pytest.raises(argparse.ArgumentTypeError):
        parse_when("25/11/2026")


def test_a_record_on_one_line() -> None:
    line = format_record(
        {
            "ts": "2026-11-25T10:00:00.000Z",
            "event": "detoxified",
            "queue_id": "Q1",
            "subject": "件名\x1b[31m",
            "parts": [{"part_id": "2", "filename": "見積書.zip", "action": "hold"}],
            "prev": "0" * 64,
        }
    )
    assert "detoxified" in line and "held=見積書.zip" in line and "件名" in line
    assert "\x1b" not in line and "prev" not in line


def test_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(tmp_path))
    assert main(["quarantine", "list", "--config", config]) == ExitCode.NOT_FOUND  # no index yet
    assert "no detox index" in capsys.readouterr().err
    assert main(["audit", "verify", "--config", config]) == ExitCode.NOT_FOUND
    with pytest.raises(SystemExit) as exc:
        main(["quarantine", "list", "--since", "yesterday", "--config", config])
    assert exc.value.code == ExitCode.USAGE
    assert main(["quarantine", "show", "../../etc/passwd", "--config", config]) == ExitCode.USAGE


def test_verify_and_tail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(config_file(tmp_path))
    log = AuditLog(tmp_path / "var" / "audit" / "audit.jsonl", fsync=False)
    for i in range(3):
        log.write("received", f"Q{i}", mail_from="a@example.jp")
    assert main(["audit", "verify", "--config", config]) == 0
    out = capsys.readouterr().out
    assert "intact" in out
    head = out.rsplit("head ", 1)[1].strip()
    assert main(["audit", "verify", "--anchor", head, "--config", config]) == 0
    capsys.readouterr()
    assert main(["audit", "tail", "-n", "2", "--config", config]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "Q2" in lines[-1]
    copy = tmp_path / "elsewhere" / "audit.jsonl"  # e.g. an auditor's copy: verify FILE
    copy.parent.mkdir()
    copy.write_bytes(log.path.read_bytes())
    assert main(["audit", "verify", str(copy), "--config", config]) == 0
    log.path.write_bytes(log.path.read_bytes().replace(b'"Q1"', b'"Q9"'))
    assert main(["audit", "verify", "--config", config]) == 1
    assert "line 3" in capsys.readouterr().err
