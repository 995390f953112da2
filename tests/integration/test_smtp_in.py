"""SMTP in, over real loopback sockets to the real `detox serve`: policy, limits, durability."""

from __future__ import annotations

import email.policy
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.detox_proc import DetoxProcess
from support.smtp import QUEUED, expected, line

from detox.smtp import replies

RCPT = "taro@city.example.lg.jp"


def simple_message(subject: str = "テスト", body: str = "本文です①㈱髙") -> bytes:
    msg = EmailMessage()
    msg["From"] = "sender@example.jp"
    msg["To"] = RCPT
    msg["Subject"] = subject
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)  # CRLF, as real clients send


@pytest.fixture
def detox(tmp_path: Path) -> Iterator[DetoxProcess]:
    proc = DetoxProcess(
        tmp_path, "maildir:var/maildir", {"server": {"max_message_bytes": 200_000, "max_recipients": 3}}
    ).start()
    yield proc
    proc.stop()


def connect(proc: DetoxProcess) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", proc.port, local_hostname="client.example.jp", timeout=30)


def maildir_files(proc: DetoxProcess) -> list[Path]:
    new = proc.state / "maildir" / "new"
    return sorted(new.iterdir()) if new.exists() else []


def wait_maildir(proc: DetoxProcess, n: int, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = maildir_files(proc)
        if len(files) >= n:
            return files
        time.sleep(0.05)
    raise AssertionError(f"{len(maildir_files(proc))} of {n} delivered\n{proc.log_text()}")


def test_ehlo_advertises_extensions(detox: DetoxProcess) -> None:
    with connect(detox) as client:
        code, _ = client.ehlo()
        assert code == 250
        for ext in ("size", "8bitmime", "smtputf8", "pipelining"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == "200000"
        assert not client.has_extn("starttls")  # no certificate configured
        assert not client.has_extn("auth")


def test_accepts_and_delivers_with_queue_id_in_250(detox: DetoxProcess) -> None:
    with connect(detox) as client:
        client.ehlo()
        client.mail("sender@example.jp")
        client.rcpt(RCPT)
        code, text = client.data(simple_message())
    assert line(code, text).startswith(QUEUED)
    queue_id = text.decode().rsplit(" ", 1)[1]
    files = wait_maildir(detox, 1)
    content = files[0].read_bytes()
    assert f"X-Detox-Id: {queue_id}".encode() in content
    assert b"Delivered-To: " + RCPT.encode() in content


def test_open_relay_refused(detox: DetoxProcess) -> None:
    with connect(detox) as client:
        client.ehlo()
        client.mail("sender@example.jp")
        assert client.rcpt("victim@elsewhere.example.com") == expected(replies.RELAY_DENIED)
        # subdomains are not ours either
        assert client.rcpt("x@sub.city.example.lg.jp") == expected(replies.RELAY_DENIED)
        client.rset()


def test_size_limit(detox: DetoxProcess) -> None:
    big = simple_message(body=("あ" * 50 + "\n") * 3000)
    with connect(detox) as client:
        client.ehlo()
        code, _ = client.mail("sender@example.jp", [f"SIZE={len(big)}"])
        assert code == 552
    with connect(detox) as client:  # no SIZE declared: the limit is enforced while reading DATA
        client.ehlo()
        client.mail("sender@example.jp")
        client.rcpt(RCPT)
        code, _ = client.data(big)
        assert code == 552
    assert maildir_files(detox) == []


def test_recipient_limit(detox: DetoxProcess) -> None:
    with connect(detox) as client:
        client.ehlo()
        client.mail("sender@example.jp")
        codes = [client.rcpt(f"user{i}@city.example.lg.jp")[0] for i in range(5)]
    assert codes == [250, 250, 250, 452, 452]


def test_garbage_commands_get_errors_and_server_keeps_serving(detox: DetoxProcess) -> None:
    with socket.create_connection(("127.0.0.1", detox.port), timeout=10) as sock:
        f = sock.makefile("rwb")
        assert f.readline().startswith(b"220")
        for junk in (
            b"FOO bar",
            b"\x00\xff\xfe garbage",
            b"MAIL FROM:<<<>>>",
            b"RCPT TO:<x@city.example.lg.jp>",
            b"DATA",
            b"A" * 5000,
        ):
            f.write(junk + b"\r\n")
            f.flush()
            reply = f.readline()
            assert reply[:1] in (b"5", b"4"), (junk[:20], reply)
    # ... and the next client is served normally
    with connect(detox) as client:
        client.sendmail("sender@example.jp", [RCPT], simple_message())
    wait_maildir(detox, 1)


def test_client_disconnect_mid_data_accepts_nothing(detox: DetoxProcess) -> None:
    with socket.create_connection(("127.0.0.1", detox.port), timeout=10) as sock:
        f = sock.makefile("rwb")
        f.readline()
        for line in (b"EHLO x", b"MAIL FROM:<a@example.jp>", f"RCPT TO:<{RCPT}>".encode(), b"DATA"):
            f.write(line + b"\r\n")
            f.flush()
            while True:
                reply = f.readline()
                if reply[3:4] != b"-":
                    break
        assert reply.startswith(b"354")
        f.write(b"Subject: half\r\n\r\nhalf a message")
        f.flush()
    time.sleep(1.0)
    assert list((detox.state / "spool" / "incoming").iterdir()) == []
    assert maildir_files(detox) == []
    with connect(detox) as client:  # still serving
        assert client.noop()[0] == 250


def test_spooled_before_250(detox: DetoxProcess) -> None:
    """The raw message and its envelope are on disk when the client hears 250."""
    audit = detox.state / "audit" / "audit.jsonl"
    with connect(detox) as client:
        client.sendmail("sender@example.jp", [RCPT], simple_message())
    text = audit.read_text(encoding="utf-8")
    assert '"event":"received"' in text
    assert '"client_address":"127.0.0.1"' in text
    assert '"helo":"client.example.jp"' in text


@pytest.fixture
def tls_detox(tmp_path: Path) -> Iterator[DetoxProcess]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=detox.city.example.lg.jp",
            "-days",
            "1",
        ],
        check=True,
        capture_output=True,
    )
    proc = DetoxProcess(
        tmp_path, "maildir:var/maildir", {"server": {"tls_cert": str(cert), "tls_key": str(key)}}
    ).start()
    yield proc
    proc.stop()


def test_starttls_offered_with_certificate(tls_detox: DetoxProcess) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with connect(tls_detox) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo()
        client.sendmail("sender@example.jp", [RCPT], simple_message())
    wait_maildir(tls_detox, 1)


def test_spool_failure_answers_451_and_keeps_details_in_our_log(detox: DetoxProcess) -> None:
    tmp = detox.state / "spool" / "tmp"
    tmp.rmdir()
    tmp.write_bytes(b"")  # the spool can no longer write anything
    try:
        with connect(detox) as client:
            client.ehlo()
            client.mail("sender@example.jp")
            client.rcpt(RCPT)
            code, text = client.data(simple_message())
        assert (code, text) == expected(replies.LOCAL_ERROR)
        assert "spool write failed" in detox.log_text()
        assert list((detox.state / "spool" / "incoming").iterdir()) == []
    finally:
        tmp.unlink()
        tmp.mkdir()
    with connect(detox) as client:  # recovered: the same client retries and is accepted
        client.sendmail("sender@example.jp", [RCPT], simple_message())
    wait_maildir(detox, 1)
