"""The delivery runner without a listener or workers: real outgoing entries in a real spool, delivered
to a real aiosmtpd sink (or a Maildir); per-recipient state, backoff, expiry, DSNs and their audit.
"""

from __future__ import annotations

import email
import email.policy
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.serve_rig import HANAKO, SENDER, TARO, Rig, make_rig, message, until
from support.sink import SmtpSink

from detox.config.loader import parse_deliver_to
from detox.serve.delivery import DeliveryRunner
from detox.spool import DeliveryState, EntryKind, RecipientState, RecipientStatus

DAY = 86400.0


def runner_for(rig: Rig) -> DeliveryRunner:
    config = rig.config
    return DeliveryRunner(
        rig.get_config, rig.spool, rig.store, rig.audit, parse_deliver_to(config.delivery.deliver_to)
    )


def queue(rig: Rig, rcpts: tuple[str, ...] = (TARO,), **state: object) -> DeliveryState:
    """A live outgoing entry, as a hand-off leaves one."""
    entry = DeliveryState("1A0000000000000000B1", SENDER, {r: RecipientState() for r in rcpts}, **state)  # type: ignore[arg-type]
    rig.spool.queue_message(entry, message(subject="配送"))
    return entry


@pytest.fixture
async def rig(tmp_path: Path, smtp_sink: SmtpSink) -> AsyncIterator[Rig]:
    made = make_rig(tmp_path, delivery={"deliver_to": smtp_sink.url, "bounce_via": smtp_sink.url})
    yield made
    made.close()


async def test_a_message_is_delivered_audited_and_removed(rig: Rig, smtp_sink: SmtpSink) -> None:
    entry = queue(rig, (TARO, HANAKO))
    runner = runner_for(rig)
    assert await runner.deliver_one(entry.queue_id) is None
    (got,) = smtp_sink.wait_for(1)
    assert got.mail_from == SENDER and sorted(got.rcpt_tos) == sorted([TARO, HANAKO])
    (delivered,) = rig.records("delivered")
    assert set(delivered["recipients"]) == {TARO, HANAKO} and "kind" not in delivered
    assert rig.spool.outgoing_ids() == [] and list(rig.spool.outgoing.iterdir()) == []
    await runner.aclose()


async def test_a_deferral_keeps_the_recipient_pending_with_a_backoff(rig: Rig, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_next_data("451 4.3.0 try later")
    entry = queue(rig)
    runner = runner_for(rig)
    before = time.time()
    when = await runner.deliver_one(entry.queue_id)
    assert when is not None and before + 0.2 * 0.8 <= when <= time.time() + 0.2 * 1.2
    state = rig.spool.read_state(entry.queue_id)  # written: the attempt survives a restart
    assert state.attempts == 1 and state.next_attempt == when
    assert state.recipients[TARO].status is RecipientStatus.PENDING and state.recipients[TARO].code == 451
    (deferred,) = rig.records("deferred")
    assert deferred["attempt"] == 1 and deferred["next_attempt"] == when
    assert await runner.deliver_one(entry.queue_id) is None  # the next attempt gets through
    assert [r["event"] for r in rig.records()] == ["deferred", "delivered"]
    await runner.aclose()


async def test_a_rejected_recipient_fails_and_its_sender_gets_a_dsn(rig: Rig, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_rcpt[HANAKO] = "550 5.1.1 no such user"
    entry = queue(rig, (TARO, HANAKO))
    runner = runner_for(rig)
    runner.start()
    runner.submit(entry.queue_id)
    await until("the DSN's delivery", lambda: len(rig.records("delivered")) == 2)
    failed, bounced = rig.records("failed"), rig.records("bounced")
    assert failed[0]["reason"] == "rejected" and list(failed[0]["recipients"]) == [HANAKO]
    assert bounced[0]["to"] == SENDER and bounced[0]["recipients"] == [HANAKO]
    dsn_id = bounced[0]["dsn_id"]
    original, dsn = rig.records("delivered")
    assert original["queue_id"] == entry.queue_id and dsn == {**dsn, "queue_id": dsn_id, "kind": "dsn"}
    sent = smtp_sink.wait_for(2)[1]
    assert sent.mail_from == "<>" and sent.rcpt_tos == (SENDER,)  # the null sender, to the sender
    report = email.message_from_bytes(sent.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert f"X-Detox-Queue-ID: {entry.queue_id}".encode() in sent.data
    assert rig.spool.outgoing_ids() == []  # both done and removed
    runner.stop()
    await runner.aclose()


@pytest.mark.parametrize("bounce_via", ["", "smtp"])
async def test_a_recipient_pending_past_the_maximum_age_expires(
    tmp_path: Path, smtp_sink: SmtpSink, bounce_via: str
) -> None:
    url = smtp_sink.url
    rig = make_rig(
        tmp_path, delivery={"deliver_to": url, "bounce_via": url if bounce_via else "", "max_age_days": 1.0}
    )
    smtp_sink.fail_next_data("451 4.3.0 try later")
    entry = queue(rig, received_at=time.time() - 2 * DAY)
    runner = runner_for(rig)
    assert await runner.deliver_one(entry.queue_id) is None  # given up: nothing pending
    (failed,) = rig.records("failed")
    assert failed["reason"] == "expired" and failed["max_age_days"] == 1.0 and rig.records("deferred") == []
    if bounce_via:
        (bounced,) = rig.records("bounced")
        dsn = rig.spool.read_state(bounced["dsn_id"])  # queued, to be delivered through bounce_via
        assert dsn.kind is EntryKind.DSN and dsn.mail_from == "" and list(dsn.recipients) == [SENDER]
    else:
        (suppressed,) = rig.records("bounce_suppressed")
        assert suppressed["reason"] == "disabled" and rig.spool.outgoing_ids() == []
    rig.close()
    await runner.aclose()


async def test_a_maildir_delivery(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)  # deliver_to = maildir:TMP/maildir
    entry = queue(rig)
    runner = runner_for(rig)
    runner.start()
    runner.handed_off(entry, None)  # as the detox runner hands one over: the message read from the spool
    await until("the delivered record", lambda: rig.records("delivered"))
    (written,) = list((tmp_path / "maildir" / "new").iterdir())
    assert written.read_bytes().startswith(f"Return-Path: <{SENDER}>\nDelivered-To: {TARO}\n".encode())
    assert rig.spool.outgoing_ids() == []
    runner.stop()
    await runner.aclose()
    rig.close()
