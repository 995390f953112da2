"""Tests of the test infrastructure itself: the private Postfix fixture and the SMTP sink."""

from __future__ import annotations

import smtplib
import socket
import uuid
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from support import free_port
from support.postfix import PostfixInstance, require_postfix
from support.sink import SmtpSink

DOMAIN = "city.example.lg.jp"


def _message(to: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@src.example.jp"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("テスト本文です。①㈱髙\n", charset="utf-8")
    return msg


@pytest.mark.postfix
def test_postfix_delivers_to_maildir(postfix: PostfixInstance) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    rcpt = f"{user}@{DOMAIN}"
    subject = f"fixture check {user}"
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        refused = client.send_message(_message(rcpt, subject), "sender@src.example.jp", [rcpt])
    assert refused == {}

    (raw,) = postfix.wait_for(1, timeout=10, user=rcpt)
    parsed = BytesParser(policy=default_policy).parsebytes(raw)
    assert parsed["Delivered-To"] == rcpt
    assert parsed["Subject"] == subject
    body = parsed.get_body()
    assert body is not None
    assert "①㈱髙" in body.get_content()
    assert postfix.maildir().is_dir()
    assert postfix.messages(user) == [raw]  # a bare local part matches too
    assert postfix.messages(contains=subject) == [raw]
    assert postfix.wait_for(1, timeout=1, contains=subject.encode()) == [raw]


@pytest.mark.postfix
def test_postfix_refuses_relay_and_test_users(postfix: PostfixInstance) -> None:
    cases = {
        "someone@elsewhere.example": 554,  # not a test domain: no open relay
        f"reject-x@{DOMAIN}": 550,
        f"defer-x@{DOMAIN}": 450,
    }
    with smtplib.SMTP(postfix.host, postfix.port, timeout=10) as client:
        for rcpt, code in cases.items():
            with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
                client.sendmail("sender@src.example.jp", [rcpt], b"Subject: x\r\n\r\nx\r\n")
            assert info.value.recipients[rcpt][0] == code


@pytest.mark.postfix
def test_postfix_instance_lifecycle() -> None:
    """Start/stop a second, independent instance: ports, cleanup, idempotent stop."""
    require_postfix()
    instance = PostfixInstance()
    with instance:
        assert instance.running
        assert instance.start_seconds is not None
        with smtplib.SMTP(instance.host, instance.port, timeout=10) as client:
            client.sendmail("a@src.example.jp", [f"a@{DOMAIN}", f"b@{DOMAIN}"], b"Subject: two\r\n\r\nhi\r\n")
        assert len(instance.wait_for(2, timeout=10)) == 2
        assert len(instance.messages("b")) == 1
        instance.clear()
        assert instance.messages() == []
        # Downstream outage and recovery: same port, same Maildir.
        port = instance.port
        instance.stop(remove=False)
        assert instance.master_pid() is None
        with pytest.raises(OSError):
            socket.create_connection(instance.address, timeout=2).close()
        instance.start()
        assert instance.port == port
        with smtplib.SMTP(instance.host, instance.port, timeout=10) as client:
            client.sendmail("a@src.example.jp", [f"c@{DOMAIN}"], b"Subject: again\r\n\r\nhi\r\n")
        assert len(instance.wait_for(1, timeout=10, user=f"C@{DOMAIN.upper()}")) == 1
    assert instance.master_pid() is None
    assert not instance.root.exists()
    instance.stop()  # idempotent


def test_sink_records_envelope_and_data(smtp_sink: SmtpSink) -> None:
    rcpts = [f"a@{DOMAIN}", f"b@{DOMAIN}"]
    data = b"Subject: sink\r\n\r\nline 1\r\n.dot-stuffed\r\n"
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        assert client.sendmail("from@src.example.jp", rcpts, data) == {}
    (msg,) = smtp_sink.wait_for(1, timeout=5)
    assert msg.mail_from == "from@src.example.jp"
    assert msg.rcpt_tos == tuple(rcpts)
    assert msg.data == data
    assert smtp_sink.url == f"smtp://127.0.0.1:{smtp_sink.port}"


def test_sink_refuses_recipient(smtp_sink: SmtpSink) -> None:
    bad, good = f"bad@{DOMAIN}", f"good@{DOMAIN}"
    smtp_sink.fail_rcpt[bad] = "550 5.1.1 no such user"
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        refused = client.sendmail("from@src.example.jp", [bad, good], b"Subject: r\r\n\r\nx\r\n")
    assert refused == {bad: (550, b"5.1.1 no such user")}
    (msg,) = smtp_sink.wait_for(1, timeout=5)
    assert msg.rcpt_tos == (good,)
    assert [(r.stage, r.address) for r in smtp_sink.refusals] == [("RCPT", bad)]


def test_sink_fails_data_once(smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next_data("451 4.3.0 try later")
    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("f@src.example.jp", [f"x@{DOMAIN}"], b"Subject: 1\r\n\r\nx\r\n")
        assert info.value.smtp_code == 451
        client.sendmail("f@src.example.jp", [f"x@{DOMAIN}"], b"Subject: 2\r\n\r\nx\r\n")
    (msg,) = smtp_sink.wait_for(1, timeout=5)
    assert b"Subject: 2" in msg.data
    assert smtp_sink.fail_data is None


def test_sink_fails_data_always() -> None:
    with SmtpSink() as sink:
        sink.fail_data = "554 5.6.0 rejected"
        for _ in range(2):
            with (
                smtplib.SMTP(sink.host, sink.port, timeout=10) as client,
                pytest.raises(smtplib.SMTPDataError),
            ):
                client.sendmail("f@src.example.jp", [f"x@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n")
        assert sink.messages == []
        assert len(sink.refusals) == 2
        with pytest.raises(TimeoutError):
            sink.wait_for(1, timeout=0.1)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
