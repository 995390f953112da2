"""End to end: SMTP client → detox serve → a downstream (aiosmtpd sink or a real Postfix)."""

from __future__ import annotations

import email
import email.policy
import functools
import json
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support import free_port, smtp
from support.detox_proc import DetoxProcess
from support.postfix import PostfixInstance
from support.sink import SmtpSink

RCPT = "taro@city.example.lg.jp"

JAPANESE_HTML = """<html><head><meta charset="utf-8"><style>p{color:red}</style></head><body>
<h1>市民課からのお知らせ</h1>
<p>いつもお世話になっております。①㈱髙橋です。</p>
<table><tr><td>日時</td><td>12月1日</td></tr><tr><td>場所</td><td>本庁舎 3階</td></tr></table>
<p>詳細は<a href="https://evil.example/login">こちら</a></p>
<script>document.location='https://evil.example'</script>
</body></html>"""


def japanese_html_mail(subject: str = "【重要】①㈱髙橋 のお知らせ") -> bytes:
    msg = EmailMessage()
    msg["From"] = "髙橋 一郎 <takahashi@example.jp>"
    msg["To"] = f"市民課 <{RCPT}>"
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.jp>"
    msg["DKIM-Signature"] = "v=1; d=example.jp; b=abc"
    msg.set_content("HTMLメールを表示できません。")
    msg.add_alternative(JAPANESE_HTML, subtype="html")
    msg.add_attachment(b"%PDF-1.4\n%fake\n", maintype="application", subtype="pdf", filename="請求書①.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as real clients send


send = functools.partial(smtp.send, sender="takahashi@example.jp", helo="mx.example.jp")


def audit_events(proc: DetoxProcess) -> list[dict[str, object]]:
    path = proc.state / "audit" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_event(proc: DetoxProcess, event: str, n: int = 1, timeout: float = 30) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in audit_events(proc) if e["event"] == event]
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {n}x {event} in audit log\n{proc.log_text()}")


@pytest.fixture
def sink(smtp_sink: SmtpSink) -> SmtpSink:
    return smtp_sink


@pytest.fixture
def detox_to_sink(tmp_path: Path, sink: SmtpSink) -> Iterator[DetoxProcess]:
    proc = DetoxProcess(tmp_path, sink.url, {"delivery": {"starttls": "off"}}).start()
    yield proc
    proc.stop()


def test_japanese_html_mail_is_detoxified_and_relayed(detox_to_sink: DetoxProcess, sink: SmtpSink) -> None:
    queue_id = send(detox_to_sink.port, japanese_html_mail())
    [delivered] = sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == (RCPT,)
    assert delivered.mail_from == "takahashi@example.jp"
    out = email.message_from_bytes(delivered.data, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    assert out["Subject"] == "【重要】①㈱髙橋 のお知らせ"
    assert out["X-Detox-Id"] == queue_id
    assert "DKIM-Signature" not in out
    assert all(p.get_content_type() in ("text/plain", "multipart/mixed") for p in out.walk())
    body = out.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "市民課からのお知らせ" in text
    assert "①㈱髙橋です" in text
    assert "日時 | 12月1日" in text or ("日時" in text and "12月1日" in text)
    assert "hxxps://evil[.]example/login" in text
    assert "document.location" not in text and "color:red" not in text
    assert "請求書①.pdf" in text and f"{queue_id}/" in text
    assert "attachments-held=1" in out["X-Detox-Actions"]
    assert "urls-defanged=1" in out["X-Detox-Actions"]

    events = wait_event(detox_to_sink, "delivered")
    assert events[0]["queue_id"] == queue_id
    kinds = [e["event"] for e in audit_events(detox_to_sink) if e.get("queue_id") == queue_id]
    assert kinds == ["received", "detoxified", "delivered"]
    detoxified = next(e for e in audit_events(detox_to_sink) if e["event"] == "detoxified")
    parts = detoxified["parts"]
    assert isinstance(parts, list)
    held = [p for p in parts if p["action"] == "hold"]
    assert held[0]["filename"] == "請求書①.pdf" and len(held[0]["sha256"]) == 64
    # the original is kept, content-addressed
    sha = detoxified["original_sha256"]
    assert isinstance(sha, str)
    assert (detox_to_sink.state / "originals" / sha[:2] / f"{sha}.eml").exists()
    # spool is empty once delivered
    spool = detox_to_sink.state / "spool"
    assert not list((spool / "incoming").iterdir())
    deadline = time.monotonic() + 10
    while list((spool / "outgoing").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list((spool / "outgoing").iterdir())


def test_partial_5xx_delivers_the_others_and_records_the_failure(
    detox_to_sink: DetoxProcess, sink: SmtpSink
) -> None:
    bad = "nobody@city.example.lg.jp"
    sink.fail_rcpt[bad] = "550 5.1.1 no such user"
    queue_id = send(detox_to_sink.port, japanese_html_mail(), [RCPT, bad, "hanako@city.example.lg.jp"])
    [delivered] = sink.wait_for(1, timeout=30)
    assert delivered.rcpt_tos == (RCPT, "hanako@city.example.lg.jp")
    failed = wait_event(detox_to_sink, "failed")
    assert failed[0]["queue_id"] == queue_id
    recipients = failed[0]["recipients"]
    assert isinstance(recipients, dict)
    assert recipients[bad]["code"] == 550
    time.sleep(1.5)  # no retry of a permanent failure
    assert len(sink.messages) == 1


def test_4xx_is_retried_from_disk(detox_to_sink: DetoxProcess, sink: SmtpSink) -> None:
    sink.fail_next_data("451 4.3.0 try later", times=2)
    queue_id = send(detox_to_sink.port, japanese_html_mail())
    [delivered] = sink.wait_for(1, timeout=30)
    assert b"X-Detox-Id: " + queue_id.encode() in delivered.data
    deferred = wait_event(detox_to_sink, "deferred", 2)
    assert all(e["queue_id"] == queue_id for e in deferred)
    wait_event(detox_to_sink, "delivered")


def test_connection_reuse_many_messages(detox_to_sink: DetoxProcess, sink: SmtpSink) -> None:
    for i in range(20):
        send(detox_to_sink.port, japanese_html_mail(f"件名 {i}"))
    delivered = sink.wait_for(20, timeout=60)
    subjects = sorted(
        str(email.message_from_bytes(m.data, policy=email.policy.default)["Subject"]) for m in delivered
    )
    assert subjects == sorted(f"件名 {i}" for i in range(20))
    peers = {m.peer for m in delivered}
    assert len(peers) <= 4  # delivery.connections: connections are reused, not one per message


def test_kill9_with_downstream_down_then_restart_delivers_all_once(tmp_path: Path) -> None:
    n = 30
    port = free_port()  # nothing listens here yet: the downstream is "down"
    proc = DetoxProcess(tmp_path, f"smtp://127.0.0.1:{port}", {"delivery": {"starttls": "off"}}).start()
    try:
        ids = [
            send(proc.port, japanese_html_mail(f"再送 {i}"), [RCPT, "hanako@city.example.lg.jp"])
            for i in range(n)
        ]
        wait_event(proc, "deferred", 1)
    finally:
        proc.kill9()
    with SmtpSink(port=port) as sink:
        proc2 = DetoxProcess(
            tmp_path, f"smtp://127.0.0.1:{port}", {"delivery": {"starttls": "off"}}, port=proc.port
        ).start()
        try:
            sink.wait_for(n, timeout=90)
            time.sleep(2)  # anything extra would show up now
            got = [
                email.message_from_bytes(m.data, policy=email.policy.default)["X-Detox-Id"]
                for m in sink.messages
            ]
            assert sorted(got) == sorted(ids), "every accepted message exactly once"
            for m in sink.messages:
                assert m.rcpt_tos == (RCPT, "hanako@city.example.lg.jp")
        finally:
            proc2.stop()


@pytest.mark.postfix
def test_relay_into_real_postfix(tmp_path: Path, postfix: PostfixInstance) -> None:
    host, port = postfix.address
    proc = DetoxProcess(tmp_path, f"smtp://{host}:{port}", {"delivery": {"starttls": "off"}}).start()
    try:
        queue_id = send(proc.port, japanese_html_mail(), [RCPT])
        # the Postfix instance is shared by the session: wait for this message, not any message
        [raw] = postfix.wait_for(1, timeout=60, contains=queue_id)
        out = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(out, EmailMessage)
        assert out["Subject"] == "【重要】①㈱髙橋 のお知らせ"
        assert out["X-Detox-Id"] == queue_id
        body = out.get_body(("plain",))
        assert body is not None
        assert "①㈱髙橋です" in body.get_content()
        assert all(p.get_content_type() != "text/html" for p in out.walk())
    finally:
        proc.stop()
