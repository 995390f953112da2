"""End to end: sender authentication in ``detox serve`` with a real DNS server and a real Postfix.

SMTP client → detox serve (``[inbound]`` on, DNS from the dnslib server on loopback) → Postfix. A
forged own-domain mail never reaches the mailbox as ordinary mail (held: the recipient gets only the
notice, the original waits in the quarantine; or refused 550 with ``spoof = "reject"``); a partner's
DKIM-signed mail arrives with ``dkim=pass`` in our Authentication-Results; a p=reject failure is
refused at the end of DATA and never spooled. Results show in the audit log, the index and
``detox quarantine list --auth``.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.detox_proc import DetoxProcess
from support.dkimkeys import Key, mail, rsa_key, sign
from support.dns_server import DnsServer
from support.postfix import PostfixInstance

RCPT = "taro@city.example.lg.jp"


@pytest.fixture(scope="module")
def key() -> Key:
    return rsa_key(2048)


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory, key: Key) -> Iterator[DnsServer]:
    with DnsServer(tmp_path_factory.mktemp("e2edns")) as server:
        server.set(
            {
                # the SMTP client is 127.0.0.1: the partner's SPF does not list it (DKIM must carry it)
                "partner.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
                "_dmarc.partner.example": [["TXT", "v=DMARC1; p=reject"]],
                "sel._domainkey.partner.example": [["TXT", key.record]],
                "city.example.lg.jp": [["TXT", "v=spf1 ip4:203.0.113.0/24 -all"]],
            }
        )
        yield server


def serve(tmp_path: Path, postfix: PostfixInstance, dns: DnsServer, **inbound: object) -> DetoxProcess:
    host, port = postfix.address
    return DetoxProcess(
        tmp_path,
        f"smtp://{host}:{port}",
        {
            "delivery": {"starttls": "off"},
            "inbound": {"enabled": True, "nameservers": [dns.address], "dns_timeout_s": 1.0, **inbound},
        },
    ).start()


def transaction(port: int, data: bytes, sender: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="mx.sender.example", timeout=30) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt(RCPT)
        try:
            code, text = client.data(data)
        except smtplib.SMTPDataError as exc:
            code, text = exc.smtp_code, exc.smtp_error
    return code, text.decode()


def parse(raw: bytes) -> EmailMessage:
    out = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(out, EmailMessage)
    return out


@pytest.mark.postfix
def test_signed_partner_mail_arrives_with_dkim_pass(
    tmp_path: Path, postfix: PostfixInstance, dns: DnsServer, key: Key
) -> None:
    proc = serve(tmp_path, postfix, dns)
    try:
        msg = sign(mail(subject="e2e-dkim-pass"), key, "partner.example", "sel")
        code, text = transaction(proc.port, msg, "taro@partner.example")
        assert code == 250, text
        queue_id = text.rsplit(" ", 1)[-1]
        [raw] = postfix.wait_for(1, timeout=60, contains=queue_id)
        out = parse(raw)
        ar = str(out["Authentication-Results"])
        assert ar.startswith("detox.city.example.lg.jp;")
        assert "dkim=pass header.d=partner.example" in ar and "dmarc=pass" in ar and "spf=fail" in ar
        body = out.get_body(("plain",))
        assert body is not None and "partner.example は送信元の認証" in body.get_content()
        [record] = [r for r in proc.audit_records() if r["event"] == "detoxified"]
        assert record["authentication"]["dkim"] == "pass" and record["authentication"]["action"] == "accept"
    finally:
        proc.stop()


@pytest.mark.postfix
def test_forged_own_domain_is_held_not_delivered(
    tmp_path: Path, postfix: PostfixInstance, dns: DnsServer
) -> None:
    proc = serve(tmp_path, postfix, dns)
    try:
        forged = mail("総務課 <soumu@city.example.lg.jp>", subject="e2e-forged 振込先変更のお願い",
                      body="口座を変更しました。至急お振込みください。\r\n")  # fmt: skip
        code, text = transaction(proc.port, forged, "soumu@city.example.lg.jp")
        assert code == 250, text
        queue_id = text.rsplit(" ", 1)[-1]
        [raw] = postfix.wait_for(1, timeout=60, contains=queue_id)
        out = parse(raw)
        assert str(out["Subject"]).startswith("【隔離】")
        body = out.get_body(("plain",))
        assert body is not None
        text_body = body.get_content()
        assert "至急お振込み" not in text_body  # the forged content never crosses
        assert f"{queue_id}/0" in text_body and "なりすまし" in text_body
        assert "spf=fail" in str(out["Authentication-Results"])
        listed = proc.cli("quarantine", "list", "--json", "--auth", "action=hold", "--auth", "spf=fail")
        assert listed.returncode == 0, listed.stderr
        [entry] = json.loads(listed.stdout)
        assert entry["id"] == queue_id and entry["authentication"]["reason"] == "spoofed-protected-domain"
        assert json.loads(proc.cli("quarantine", "list", "--json", "--auth", "dmarc=pass").stdout) == []
        # the held original is released like any held part, as a recorded exception
        before = len(postfix.messages())
        released = proc.cli(
            "quarantine", "release", f"{queue_id}/0", "--reason", "本人確認済み", "--approved-by", "山田"
        )
        assert released.returncode == 0, released.stderr
        delivered = postfix.wait_for(before + 1, timeout=60)
        assert any(str(parse(m)["Subject"]).startswith("【例外措置】") for m in delivered[before:])
    finally:
        proc.stop()


@pytest.mark.postfix
def test_dmarc_reject_and_spoof_reject_are_refused_at_data(
    tmp_path: Path, postfix: PostfixInstance, dns: DnsServer
) -> None:
    proc = serve(tmp_path, postfix, dns, spoof="reject")
    try:
        code, text = transaction(proc.port, mail(subject="e2e-unsigned-partner"), "taro@partner.example")
        assert code == 550 and text.startswith("5.7.1"), text
        code, text = transaction(proc.port, mail("soumu@city.example.lg.jp"), "soumu@city.example.lg.jp")
        assert code == 550, text
        refused = [r for r in proc.audit_records() if r["event"] == "refused"]
        assert [r["limit"] for r in refused] == ["inbound.dmarc_reject", "inbound.spoof"]
        assert refused[0]["authentication"]["dmarc"] == "fail"
        assert not list((proc.state / "spool" / "incoming").glob("*.msg"))
        assert postfix.messages(contains="e2e-unsigned-partner") == []
    finally:
        proc.stop()
