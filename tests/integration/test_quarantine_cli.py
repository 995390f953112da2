"""The admin's flows through the real ``detox`` command, against a running ``detox serve`` and an SMTP sink.

A PPAP mail is sent, held (``encrypted-archive``), found with ``quarantine list``, shown, exported and
released while serve runs; the released original reaches the sink through the normal delivery path and
the audit log records the exception and still verifies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.detox_proc import REPO, DetoxProcess, ok
from support.invariants import parse_output as parsed
from support.mails import CITY, ppap_mail
from support.sink import SmtpSink
from support.smtp import send

TARO = f"taro@{CITY}"


def detox(proc: DetoxProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m detox ARGS --config <the serve's config>``, run where serve runs (relative state dir)."""
    return proc.cli(*args, timeout=120)


audit_records = DetoxProcess.audit_records


def wait_delivered(proc: DetoxProcess, queue_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["event"] == "delivered" and r.get("queue_id") == queue_id for r in audit_records(proc)):
        assert time.monotonic() < deadline, f"no delivered record for {queue_id}"
        time.sleep(0.1)


def serve(tmp_path: Path, sink: SmtpSink, **sections: dict[str, Any]) -> DetoxProcess:
    overrides: dict[str, dict[str, Any]] = {"delivery": {"starttls": "off"}, **sections}
    return DetoxProcess(tmp_path, sink.url, overrides).start()


@pytest.fixture
def running(tmp_path: Path, smtp_sink: SmtpSink) -> Iterator[DetoxProcess]:
    proc = serve(tmp_path, smtp_sink, audit={"rotate_bytes": 3000})
    yield proc
    proc.stop()


def held_mail(proc: DetoxProcess, sink: SmtpSink, n: int = 1) -> tuple[str, bytes]:
    """Send a PPAP mail, wait for its detoxified copy; return (queue id, the encrypted zip)."""
    raw, archive = ppap_mail()
    queue_id = send(proc.port, raw)
    sink.wait_for(n, timeout=30)
    return queue_id, archive


def test_ppap_is_found_shown_exported_and_released_while_serving(
    running: DetoxProcess, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    queue_id, archive = held_mail(running, smtp_sink)
    notice = parsed(smtp_sink.messages[0].data).get_body(("plain",))
    assert notice is not None and f"{queue_id}/2" in notice.get_content()  # the hold id staff quote

    listed = json.loads(ok(detox(running, "quarantine", "list", "--json", "--from", "vendor.example.com")))
    [entry] = listed
    assert entry["id"] == queue_id and entry["to"] == [TARO]
    zip_part = next(p for p in entry["parts"] if p["action"] == "hold")
    assert (zip_part["name"], zip_part["reason"], zip_part["size"]) == (
        "見積書.zip",
        "encrypted-archive",
        len(archive),
    )
    table = ok(detox(running, "quarantine", "list", "--reason", "encrypted"))
    assert queue_id in table and "①見積書の送付（㈱髙橋商事）" in table

    hold_id = f"{queue_id}/{zip_part['part_id']}"
    shown = ok(detox(running, "quarantine", "show", hold_id))
    for text in (
        "MAIL FROM:   hanako@vendor.example.com",
        "Subject: ①見積書の送付（㈱髙橋商事）",
        "encrypted-archive",
    ):
        assert text in shown

    out = tmp_path / "exported.zip"
    ok(detox(running, "quarantine", "export", hold_id, "--output", str(out)))
    assert out.read_bytes() == archive and (out.stat().st_mode & 0o777) == 0o600
    eml = tmp_path / "original.eml"
    ok(detox(running, "quarantine", "export", queue_id, "--output", str(eml)))
    assert parsed(eml.read_bytes())["Message-ID"] == "<ppap@vendor.example.com>"
    refused = detox(running, "quarantine", "export", queue_id, "--output", str(eml))
    assert refused.returncode == 2 and "exists" in refused.stderr

    released = ok(
        detox(
            running,
            "quarantine",
            "release",
            hold_id,
            "--reason",
            "送信者に電話で確認済み",
            "--approved-by",
            "山田",
        )
    )
    release_id = released.split(" as ", 1)[1].split()[0]
    messages = smtp_sink.wait_for(2, timeout=30)
    delivered = messages[1]
    assert delivered.rcpt_tos == (TARO,) and delivered.mail_from == "hanako@vendor.example.com"
    msg = parsed(delivered.data)
    assert msg["X-Detox-Id"] == release_id and msg["X-Detox-Release"] == hold_id
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_content() == archive
    note = msg.get_body(("plain",))
    assert (
        note is not None and "山田" in note.get_content() and "送信者に電話で確認済み" in note.get_content()
    )

    wait_delivered(running, release_id)
    [record] = [r for r in audit_records(running) if r["event"] == "released"]
    assert (
        record["approved_by"] == "山田" and record["hold_ids"] == [hold_id] and record["recipients"] == [TARO]
    )

    assert "intact" in ok(detox(running, "audit", "verify"))
    report = ok(detox(running, "audit", "report", "--from", "2000-01-01", "--to", "2100-01-01"))
    assert "山田" in report and "送信者に電話で確認済み" in report and "delivered" in report
    assert "released" in ok(detox(running, "audit", "tail", "-n", "5"))
    history = json.loads(ok(detox(running, "quarantine", "show", queue_id, "--json")))
    assert [r["release_id"] for r in history["releases"]] == [release_id]


def test_two_person_rule_is_enforced(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    proc = serve(tmp_path, smtp_sink, quarantine={"two_person_rule": True})
    try:
        queue_id, archive = held_mail(proc, smtp_sink)
        release = ("quarantine", "release", queue_id, "--reason", "業務上必要", "--approved-by", "山田")
        refused = detox(proc, *release)
        assert refused.returncode == 2 and "approve" in refused.stderr
        ok(detox(proc, "quarantine", "approve", queue_id, "--by", "山田"))
        refused = detox(proc, *release)
        assert refused.returncode == 2 and "someone other than" in refused.stderr
        ok(detox(proc, "quarantine", "approve", queue_id, "--by", "佐藤"))
        ok(detox(proc, *release))
        [_, delivered] = smtp_sink.wait_for(2, timeout=30)
        assert [a.get_content() for a in parsed(delivered.data).iter_attachments()] == [archive]
        [record] = [r for r in audit_records(proc) if r["event"] == "released"]
        assert record["second_approver"] == "佐藤" and record["two_person_rule"] is True
        assert detox(proc, *release).returncode == 2  # the approval was used up
    finally:
        proc.stop()


def test_a_release_made_while_stopped_is_delivered_at_the_next_start(
    running: DetoxProcess, smtp_sink: SmtpSink
) -> None:
    queue_id, archive = held_mail(running, smtp_sink)
    wait_delivered(running, queue_id)  # else a stop right now may deliver it again (at-least-once)
    running.stop()
    ok(detox(running, "quarantine", "release", queue_id, "--reason", "r", "--approved-by", "山田"))
    time.sleep(1.5)
    assert len(smtp_sink.messages) == 1
    running.start()
    [_, delivered] = smtp_sink.wait_for(2, timeout=30)
    assert parsed(delivered.data)["X-Detox-Release"] == f"{queue_id}/2"
    assert [a.get_content() for a in parsed(delivered.data).iter_attachments()] == [archive]


def test_verify_catches_tampering_across_rotation(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    proc = serve(tmp_path, smtp_sink, audit={"rotate_bytes": 1000})
    try:
        for n in range(1, 4):
            held_mail(proc, smtp_sink, n)
        rotated = sorted((proc.state / "audit").glob("audit-*.jsonl"))
        assert len(rotated) >= 2, "expected rotated audit files"
        assert "intact" in ok(detox(proc, "audit", "verify"))
    finally:
        proc.stop()

    original = rotated[0].read_bytes()
    lines = original.splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"received"', b'"receivex"')
    rotated[0].write_bytes(b"".join(lines))
    broken = detox(proc, "audit", "verify")
    assert broken.returncode == 1
    assert f"{rotated[0].name} line 2: chain broken: {rotated[0].name} line 1 was edited" in broken.stderr

    rotated[0].write_bytes(original)
    assert detox(proc, "audit", "verify").returncode == 0
    rotated[1].unlink()
    broken = detox(proc, "audit", "verify")
    assert broken.returncode == 1 and "missing" in broken.stderr


def test_delete_purge_and_exit_codes(running: DetoxProcess, smtp_sink: SmtpSink) -> None:
    first, _ = held_mail(running, smtp_sink, 1)
    second, _ = held_mail(running, smtp_sink, 2)
    originals = running.state / "originals"
    count = lambda: len(list(originals.glob("??/*.eml")))  # noqa: E731
    assert count() == 2

    ok(detox(running, "quarantine", "delete", first, "--reason", "誤送信の申し出"))
    assert count() == 1
    missing = detox(running, "quarantine", "show", first)
    assert missing.returncode == 3 and "no such message" in missing.stderr
    assert detox(running, "quarantine", "show", "not-an-id").returncode == 2
    assert (
        detox(running, "quarantine", "release", second, "--approved-by", "x").returncode == 2
    )  # no --reason

    ok(detox(running, "quarantine", "purge", "--older-than", "0"))
    assert count() == 0
    assert json.loads(ok(detox(running, "quarantine", "list", "--json", "--all"))) == []
    events = [r["event"] for r in audit_records(running)]
    assert "deleted" in events and "purged" in events


def test_scan_wants_summary_for_many_messages(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(ppap_mail()[0])
    command = [sys.executable, "-m", "detox", "scan", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "--summary" in result.stderr
    result = subprocess.run([*command, "--summary"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "encrypted-archive" in result.stdout and "Messages: 1" in result.stdout


def _corpus_mail_dir() -> Path | None:
    configured = os.environ.get("DETOX_CORPUS")
    corpus = Path(configured) if configured else REPO.parent / "shared" / "corpus"
    return corpus / "mail" if (corpus / "mail").is_dir() else None


@pytest.mark.corpus
@pytest.mark.slow
def test_policy_dry_run_over_the_shared_corpus(tmp_path: Path) -> None:
    mail_dir = _corpus_mail_dir()
    if mail_dir is None:
        pytest.skip("the shared corpus (../shared/corpus/mail) is absent")
    report = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "detox", "scan", str(mail_dir), "--summary", "--jobs", "2",
         "--report", str(report), "--config", str(REPO / "config" / "detox.toml")],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["messages"] >= 400  # 531 mails in MANIFEST.tsv, a few mboxes among them
    assert summary["skipped_files"] > 0  # the expected-output files next to the mails
    assert summary["attachments"] and all(a["examples"] for a in summary["attachments"])
    assert "Attachments by action and reason" in result.stdout
    assert not (tmp_path / "var").exists()  # a dry-run writes nothing
