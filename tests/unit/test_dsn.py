"""DSNs (RFC 3464): structure as the stdlib parses it, both languages, and who never gets one."""

from __future__ import annotations

import time
from email.message import Message

import pytest
from support.configs import make_config
from support.invariants import parse_output as parse

from detox.config.loader import check_bounce_text
from detox.config.schema import DeliveryConfig, DetoxConfig
from detox.delivery.dsn import (
    FailedRecipient,
    bounce_block,
    build_dsn,
    enhanced_status,
    header_section,
)
from detox.spool import KIND_DSN, KIND_RELEASE, DeliveryState, RecipientState

ORIGINAL = (
    b"From: =?UTF-8?B?6auZ5qmL?= <takahashi@vendor.example.com>\r\n"
    b"To: taro@city.example.lg.jp\r\n"
    b"Subject: =?ISO-2022-JP?B?GyRCOCtAURsoQg==?=\r\n"
    b"Message-ID: <orig-1@vendor.example.com>\r\n"
    b"\r\n"
    b"SECRET BODY that must never go back\r\n"
)


def config(**delivery: object) -> DetoxConfig:
    return make_config(delivery={"bounce_via": "smtp://127.0.0.1:25", **delivery})


def state(mail_from: str = "takahashi@vendor.example.com", **kw: object) -> DeliveryState:
    return DeliveryState(
        queue_id="1A2B3C4D5E6F708192A3",
        mail_from=mail_from,
        recipients={
            "taro@city.example.lg.jp": RecipientState(),
            "hanako@city.example.lg.jp": RecipientState(),
        },
        received_at=time.time() - 3600,
        **kw,  # type: ignore[arg-type]
    )


def test_dsn_is_a_delivery_status_report_with_japanese_and_english() -> None:
    failed = [
        FailedRecipient("taro@city.example.lg.jp", "5.1.1", 550, "5.1.1 no such user", time.time(), False),
        FailedRecipient("hanako@city.example.lg.jp", "4.4.7", 451, "4.3.0 try later", time.time(), True),
    ]
    data = build_dsn(config(), state(), failed, header_section(ORIGINAL), dsn_id="1A2B3C4D5E6F708192FF")
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout
    msg = parse(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "takahashi@vendor.example.com"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<orig-1@vendor.example.com>"
    assert "配信不能" in str(msg["Subject"]) and "Undelivered" in str(msg["Subject"])
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    human = parts[0].get_content()
    assert "お届けできませんでした" in human and "could not be delivered" in human
    assert "件名 / Subject:        見積" in human  # the original subject, decoded
    assert "550 5.1.1 no such user" in human
    assert "日間配送を試みましたが" in human

    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 3  # per-message + one per recipient
    per_message: Message = blocks[0]
    assert per_message["Reporting-MTA"] == "dns; detox.city.example.lg.jp"
    assert per_message["Arrival-Date"]
    first, second = blocks[1], blocks[2]
    assert first["Final-Recipient"] == "rfc822; taro@city.example.lg.jp"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert second["Status"] == "4.4.7" and second["Action"] == "failed"
    assert "Remote-MTA" not in first  # the LGWAN server's name is not told to the Internet

    returned = parts[2].get_content()
    assert "Message-ID: <orig-1@vendor.example.com>" in returned
    assert b"SECRET BODY" not in data  # headers only, never the body


def test_dsn_without_smtp_reply_has_no_diagnostic_code() -> None:
    failed = [
        FailedRecipient("taro@city.example.lg.jp", "4.4.7", None, "ConnectionRefusedError 10.0.0.5", 0, True)
    ]
    data = build_dsn(config(), state(), failed, header_section(ORIGINAL), dsn_id="X" * 20)
    assert b"Diagnostic-Code" not in data
    assert b"10.0.0.5" not in data  # our own connection errors name internal hosts


def test_non_ascii_original_headers_are_returned_base64() -> None:
    raw = "Subject: 生の8bit件名\r\nFrom: a@b.example\r\n\r\nbody".encode()
    data = build_dsn(
        config(),
        state(),
        [FailedRecipient("taro@city.example.lg.jp", "5.0.0", 550, "no", 0, False)],
        header_section(raw),
        dsn_id="Y" * 20,
    )
    part = list(parse(data).iter_parts())[2]
    assert part["Content-Transfer-Encoding"] == "base64"
    assert "生の8bit件名" in part.get_payload(decode=True).decode()
    assert "件名 / Subject:        生の8bit件名" in next(iter(parse(data).iter_parts())).get_content()


def test_header_section_is_cut_at_a_line_boundary() -> None:
    raw = b"".join(b"X-Long-%d: %s\r\n" % (i, b"a" * 100) for i in range(2000)) + b"\r\nbody"
    head = header_section(raw, limit=10_000)
    assert len(head) <= 10_000
    assert head.endswith(b"\r\n") and head.count(b"\r\n") == len(head.split(b"\r\n")) - 1
    assert b"body" not in head
    assert header_section(b"A: 1\nB: 2\n\nbody") == b"A: 1\r\nB: 2\r\n"


@pytest.mark.parametrize(
    ("code", "response", "expired", "wanted"),
    [
        (550, "5.1.1 no such user", False, "5.1.1"),
        (554, "no enhanced code", False, "5.0.0"),
        (550, "4.2.0 mismatched class", False, "5.0.0"),
        (None, "address not usable", False, "5.0.0"),
        (451, "4.3.0 try later", True, "4.4.7"),
        (None, "ConnectionRefused", True, "4.4.7"),
    ],
)
def test_enhanced_status(code: int | None, response: str, expired: bool, wanted: str) -> None:
    assert enhanced_status(code, response, expired=expired) == wanted


@pytest.mark.parametrize(
    ("mail_from", "extra", "blocked"),
    [
        ("takahashi@vendor.example.com", {}, None),
        ("", {}, "null-sender"),
        ("<>", {}, "null-sender"),
        ("no-at-sign", {}, "invalid-sender"),
        ("a b@vendor.example.com", {}, "invalid-sender"),
        ("田中@vendor.example.com", {}, "invalid-sender"),
        ("MAILER-DAEMON@vendor.example.com", {}, "mailer-daemon-sender"),
        ("mayor@city.example.lg.jp", {}, "own-domain-sender"),
        ("x@mail.city.example.lg.jp", {}, "own-domain-sender"),
        ("x@vendor.example.com", {"held_reasons": ("executable",)}, "held:executable"),
        ("x@vendor.example.com", {"held_reasons": ("encrypted-archive",)}, "held:encrypted-archive"),
        ("x@vendor.example.com", {"held_reasons": ("unsupported-type",)}, None),
        ("x@vendor.example.com", {"kind": KIND_RELEASE}, "release"),
        ("", {"kind": KIND_DSN}, "dsn"),
    ],
)
def test_who_never_gets_a_dsn(mail_from: str, extra: dict[str, object], blocked: str | None) -> None:
    assert bounce_block(state(mail_from, **extra), config()) == blocked


def test_bounces_off_means_recorded_only() -> None:
    assert bounce_block(state(), DetoxConfig()) == "disabled"


def test_bounce_text_placeholders_are_checked() -> None:
    assert check_bounce_text(DeliveryConfig().bounce_text) is None
    assert "unknown placeholder $sender" in (check_bounce_text("to $sender") or "")
    assert "lone $" in (check_bounce_text("costs $ 5") or "")
    assert check_bounce_text("costs $$5 for $queue_id") is None
