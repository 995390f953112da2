"""[antivirus] end to end: real SMTP into ``detox serve``, a real clamd, the real Postfix downstream.

* an EICAR attachment never reaches the mailbox; the notice names the signature; the audit record and
  the index carry it; ``quarantine release`` refuses it alone, and takes ``--force`` plus a second
  admin's approval even with the two-person rule off;
* clamd absent when the message arrives: it is accepted (250: it is on disk), waits in the spool —
  ``queue list`` says "waiting for antivirus", the wait is audited and not counted as an attempt —
  and is delivered, scanned, once clamd is back.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.clamd import EICAR, EICAR_SIGNATURE, ClamdInstance
from support.detox_proc import DetoxProcess
from support.postfix import PostfixInstance
from support.smtp import send

RCPT = "taro@city.example.lg.jp"


def eicar_mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "髙橋 <sender@vendor.example.com>"
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg.set_content("請求書を添付します。\n")
    msg.add_attachment(EICAR, maintype="text", subtype="plain", filename="請求書.txt")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def clean_mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@vendor.example.com"
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg.set_content("ふつうの本文です。\n")
    return msg.as_bytes().replace(b"\n", b"\r\n")


def body_of(raw: bytes) -> str:
    out = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    part = out.get_body(("plain",))
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text


@pytest.mark.postfix
def test_eicar_never_reaches_the_mailbox_and_is_not_released_by_one_admin(
    tmp_path: Path, postfix: PostfixInstance
) -> None:
    host, port = postfix.address
    with ClamdInstance(tmp_path / "clam") as clamd:
        proc = DetoxProcess(
            tmp_path,
            f"smtp://{host}:{port}",
            {"delivery": {"starttls": "off"}, "antivirus": {"clamd": clamd.unix_address}},
        ).start()
        try:
            queue_id = send(proc.port, eicar_mail("ウイルス付き"), [RCPT])
            [raw] = postfix.wait_for(1, timeout=60, contains=queue_id)
            assert EICAR not in raw and EICAR not in email.message_from_bytes(raw).as_bytes()
            for part in email.message_from_bytes(raw).walk():
                payload = part.get_payload(decode=True)
                assert not isinstance(payload, bytes) or EICAR not in payload
            text = body_of(raw)
            assert f"ウイルス（{EICAR_SIGNATURE}）が検出されたため" in text
            assert "請求書.txt" in text and f"{queue_id}/2" in text
            assert "請求書を添付します。" in text  # the rest of the mail arrives

            [record] = [r for r in proc.audit_records() if r["event"] == "detoxified"]
            held = next(p for p in record["parts"] if p["part_id"] == "2")
            assert (held["reason"], held["virus"]) == ("virus", EICAR_SIGNATURE)
            assert record["antivirus"]["found"] == [{"part_id": "2", "signature": EICAR_SIGNATURE}]

            shown = proc.cli("quarantine", "show", queue_id, "--json")
            assert shown.returncode == 0, shown.stderr
            parts = {p["part_id"]: p for p in json.loads(shown.stdout)["parts"]}
            assert parts["2"]["virus"] == EICAR_SIGNATURE

            # one admin alone: refused, with or without --force
            for extra in ([], ["--force"]):
                refused = proc.cli(
                    "quarantine",
                    "release",
                    f"{queue_id}/2",
                    "--reason",
                    "業務上必要",
                    "--approved-by",
                    "佐藤",
                    *extra,
                )
                assert refused.returncode == 2, refused.stdout + refused.stderr
                assert "virus" in refused.stderr or "clamd found" in refused.stderr
            # the whole message and the queue id cover the part too
            for ref in (queue_id, f"{queue_id}/0"):
                refused = proc.cli("quarantine", "release", ref, "--reason", "x", "--approved-by", "佐藤")
                assert refused.returncode == 2 and EICAR_SIGNATURE in refused.stderr
            # approved by the same person: still refused
            assert proc.cli("quarantine", "approve", f"{queue_id}/2", "--by", "佐藤").returncode == 0
            same = proc.cli(
                "quarantine", "release", f"{queue_id}/2", "--reason", "x", "--approved-by", "佐藤", "--force"
            )
            assert same.returncode == 2 and "someone other than" in same.stderr
            # a second admin approves; the first releases with --force
            assert proc.cli("quarantine", "approve", f"{queue_id}/2", "--by", "鈴木").returncode == 0
            released = proc.cli(
                "quarantine",
                "release",
                f"{queue_id}/2",
                "--reason",
                "検体として提出",
                "--approved-by",
                "佐藤",
                "--force",
            )
            assert released.returncode == 0, released.stderr
            [rel] = [r for r in proc.audit_records() if r["event"] == "released"]
            assert rel["viruses"] == [EICAR_SIGNATURE] and rel["forced"] is True
            assert rel["second_approver"] == "鈴木" and rel["two_person_rule"] is False
        finally:
            proc.stop()


@pytest.mark.postfix
def test_clamd_absent_at_start_the_message_waits_and_is_delivered_when_clamd_is_back(
    tmp_path: Path, postfix: PostfixInstance
) -> None:
    host, port = postfix.address
    clamd = ClamdInstance(tmp_path / "clam")  # configured, not started
    proc = DetoxProcess(
        tmp_path,
        f"smtp://{host}:{port}",
        {
            "delivery": {"starttls": "off", "retry_base_s": 0.5},
            "antivirus": {"clamd": clamd.unix_address, "retry_max_s": 1.0, "timeout_s": 5.0},
            "pipeline": {"max_attempts": 2},
        },
    ).start()
    try:
        queue_id = send(proc.port, clean_mail("clamd 待ち"), [RCPT])  # 250: it is on disk
        deadline = time.monotonic() + 30
        waiting = None
        while time.monotonic() < deadline:
            listed = proc.cli("queue", "list", "--json")
            entries = [e for e in json.loads(listed.stdout) if e["id"] == queue_id]
            if entries and entries[0].get("waiting_for") == "antivirus":
                waiting = entries[0]
                break
            time.sleep(0.2)
        assert waiting is not None, proc.log.read_text(errors="replace")[-3000:]
        assert waiting["stage"] == "detoxify" and "antivirus unavailable" in waiting["last_response"]
        text = proc.cli("queue", "list")
        assert "waiting for antivirus" in text.stdout
        # several waits, more than max_attempts: never moved aside, never delivered unscanned
        time.sleep(4)
        assert postfix.messages(contains=queue_id) == []
        waits = [r for r in proc.audit_records() if r["event"] == "deferred" and r.get("waiting_for")]
        assert len(waits) > 2 and all(r["counted"] is False for r in waits)
        assert not [r for r in proc.audit_records() if r["event"] == "failed"]

        clamd.start()
        try:
            [raw] = postfix.wait_for(1, timeout=60, contains=queue_id)
        finally:
            clamd.stop()
        assert "ふつうの本文です。" in body_of(raw)
        [record] = [r for r in proc.audit_records() if r["event"] == "detoxified"]
        assert record["antivirus"]["streams"] >= 2 and record["antivirus"]["found"] == []
    finally:
        proc.stop()
