"""Fault injection around the real ``detox serve``: a misbehaving LGWAN server, and detox killed.

The downstream is support.faulty_smtp.FaultySmtp. Each test sends Japanese mails, injects one fault,
lets detox drain its spool, and then settles the books (support.ledger): every (message, recipient)
that got a 250 from detox is delivered, or recorded as permanently failed/bounced in the audit log, and
none is lost. The promise is at-least-once, so duplicates are counted and printed; where a fault gives a
duplicate no chance (the downstream never committed the message), the test asserts exactly once, and
where it does (detox killed while the downstream had the message but had not answered), the test asserts
that only those messages were duplicated.

Faults: connections refused; a DATA reply that never comes (past delivery.timeout_s); the connection
dropped in the middle of DATA; 451 then 250; 550 for one recipient of three; ``kill -9`` of detox right
after the 250s, in the middle of the pipeline (a slow HTML body), and in the middle of a delivery the
downstream had already queued.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support import smtp
from support.detox_proc import DetoxProcess
from support.faulty_smtp import FaultySmtp
from support.ledger import Ledger, Settlement, read_audit_events
from support.mails import mail

CITY = "city.example.lg.jp"
TARO, HANAKO, NOBODY = f"taro@{CITY}", f"hanako@{CITY}", f"nobody@{CITY}"
DELIVERY_TIMEOUT_S = 3.0
DRAIN_TIMEOUT_S = 90.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240, method="thread")]


# -- helpers ------------------------------------------------------------------------------------------


def start_detox(workdir: Path, server: FaultySmtp, port: int | None = None) -> DetoxProcess:
    return DetoxProcess(
        workdir,
        server.url,
        {
            "delivery": {
                "starttls": "off",
                "timeout_s": DELIVERY_TIMEOUT_S,
                "retry_base_s": 0.5,
                "retry_max_s": 2.0,
                "connections": 2,
            },
        },
        port=port,
    ).start()


def japanese_mail(i: int) -> bytes:
    return mail(
        [],
        subject=f"①障害試験 {i} 号（㈱髙橋）",
        message_id=f"<fault-{i}-{time.time_ns()}@vendor.example.com>",
    )


def slow_mail() -> bytes:
    """A mail whose HTML body keeps a pipeline worker busy for a few seconds (about 300 KB of markup)."""
    msg = EmailMessage()
    msg["From"] = "髙橋 一郎 <hanako@vendor.example.com>"
    msg["To"] = TARO
    msg["Subject"] = "重いHTML"
    msg["Message-ID"] = f"<slow-{time.time_ns()}@vendor.example.com>"
    row = "<tr><td>①項目</td><td><b>㈱髙橋</b></td><td><a href='https://example.jp/x'>リンク</a></td></tr>\n"
    msg.set_content("<html><body><table>" + row * 4000 + "</table></body></html>", subtype="html")
    return msg.as_bytes()


send = functools.partial(smtp.send, timeout=60)


def send_many(port: int, n: int, ledger: Ledger, rcpts: list[str] | None = None) -> list[str]:
    ids = []
    for i in range(n):
        queue_id = send(port, japanese_mail(i), rcpts or [TARO])
        ledger.accepted(queue_id, rcpts or [TARO])
        ids.append(queue_id)
    return ids


def spool_busy(proc: DetoxProcess) -> list[Path]:
    spool = proc.state / "spool"
    return [*(spool / "incoming").glob("*.msg"), *(spool / "outgoing").glob("*.json")]


def drain(proc: DetoxProcess, timeout: float = DRAIN_TIMEOUT_S) -> None:
    """Wait until detox has nothing left to detoxify or deliver (or fail on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not spool_busy(proc):
            return
        assert proc.proc is not None and proc.proc.poll() is None, "detox exited\n" + proc.log_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(
        f"spool not drained after {timeout:.0f}s: {spool_busy(proc)}\n{proc.log_text()[-3000:]}"
    )


def wait_audit(proc: DetoxProcess, event: str, n: int = 1, timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in read_audit_events(proc.state)[0] if e.get("event") == event]
        if len(found) >= n:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {n}x {event!r} in the audit log\n{proc.log_text()[-3000:]}")


def settle(proc: DetoxProcess, server: FaultySmtp, ledger: Ledger, label: str) -> Settlement:
    """Count what the downstream got and what the audit log says; fail on any loss; print the books."""
    for item in server.delivered:
        ledger.delivered(item.queue_id, list(item.rcpts))
    broken = ledger.read_audit(proc.state)
    result = ledger.settle()
    print(f"\n[{label}] {result.summary()}; unreadable audit lines {broken}")
    print(f"  downstream events: {server.events[-6:]}")
    assert not result.lost, f"accepted but neither delivered nor recorded as failed: {result.lost}"
    assert result.unknown == 0, "a delivered message without an X-Detox-Id"
    return result


class Rig:
    """The faulty downstream and every detox a test starts (all stopped by PID at the end)."""

    def __init__(self, workdir: Path, server: FaultySmtp) -> None:
        self.workdir = workdir
        self.server = server
        self.started: list[DetoxProcess] = []
        self.ledger = Ledger()

    def detox(self, port: int | None = None) -> DetoxProcess:
        proc = start_detox(self.workdir, self.server, port)
        self.started.append(proc)
        return proc

    def settle(self, proc: DetoxProcess, label: str) -> Settlement:
        return settle(proc, self.server, self.ledger, label)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with FaultySmtp() as server:
        setup = Rig(tmp_path, server)
        try:
            yield setup
        finally:
            for proc in setup.started:
                proc.stop()


# -- downstream faults ----------------------------------------------------------------------------------


def test_refused_connections_then_recovery(rig: Rig) -> None:
    rig.server.refuse()
    proc = rig.detox()
    send_many(proc.port, 8, rig.ledger)
    wait_audit(proc, "deferred")
    rig.server.accept()
    drain(proc)
    result = rig.settle(proc, "refused")
    assert result.delivered == 8 and not result.duplicates  # nothing was committed while refusing


def test_downstream_that_never_answers_data(rig: Rig) -> None:
    """No reply after the dot for longer than delivery.timeout_s, message not queued: retried, once."""
    rig.server.stall_s, rig.server.stall_times = DELIVERY_TIMEOUT_S * 3, 2
    proc = rig.detox()
    send_many(proc.port, 6, rig.ledger)
    rig.server.wait_event("stalling", 2, timeout=30)
    drain(proc)
    result = rig.settle(proc, "stall")
    assert result.delivered == 6 and not result.duplicates
    assert any(e.get("event") == "deferred" for e in read_audit_events(proc.state)[0])


def test_connection_dropped_mid_data(rig: Rig) -> None:
    rig.server.drop_mid_data = 3
    proc = rig.detox()
    send_many(proc.port, 6, rig.ledger)
    drain(proc)
    result = rig.settle(proc, "drop mid-DATA")
    assert sum(1 for e in rig.server.events if e.startswith("dropped connection")) == 3
    assert result.delivered == 6 and not result.duplicates


def test_451_then_250(rig: Rig) -> None:
    rig.server.data_replies = ["451 4.3.0 try again later"] * 3
    proc = rig.detox()
    send_many(proc.port, 4, rig.ledger)
    drain(proc)
    result = rig.settle(proc, "451 then 250")
    assert result.delivered == 4 and not result.duplicates
    deferred = [e for e in read_audit_events(proc.state)[0] if e.get("event") == "deferred"]
    assert len(deferred) >= 3


def test_550_for_one_recipient_of_three(rig: Rig) -> None:
    rig.server.rcpt_replies[NOBODY] = "550 5.1.1 <nobody@city.example.lg.jp>: no such user"
    proc = rig.detox()
    send_many(proc.port, 3, rig.ledger, [TARO, NOBODY, HANAKO])
    drain(proc)
    result = rig.settle(proc, "550 for one of three")
    assert result.delivered == 6 and result.bounced == 3 and not result.duplicates
    for item in rig.server.delivered:
        assert item.rcpts == (TARO, HANAKO)  # one transaction for the two good ones, never retried for nobody


# -- detox killed -----------------------------------------------------------------------------------------


def test_killed_right_after_250(rig: Rig) -> None:
    proc = rig.detox()
    send_many(proc.port, 20, rig.ledger)
    proc.kill9()  # at once: most are still in incoming/ or in a worker
    at_kill = {d.queue_id for d in rig.server.delivered}
    waiting = len(spool_busy(proc))
    again = rig.detox(port=proc.port)
    drain(again)
    result = rig.settle(again, f"kill after 250: {len(at_kill)} delivered, {waiting} spooled at the kill")
    assert result.delivered == 20
    assert {q for q, _ in result.duplicates} <= at_kill, "a duplicate of a message undelivered at the kill"


def test_killed_mid_pipeline(rig: Rig) -> None:
    proc = rig.detox()
    slow = send(proc.port, slow_mail(), [TARO])
    rig.ledger.accepted(slow, [TARO])
    send_many(proc.port, 3, rig.ledger)
    time.sleep(1.0)  # the slow body keeps a worker busy for several seconds
    events, _ = read_audit_events(proc.state)
    detoxified = {e.get("queue_id") for e in events if e.get("event") == "detoxified"}
    in_pipeline = (proc.state / "spool" / "incoming" / f"{slow}.msg").exists() and slow not in detoxified
    proc.kill9()
    at_kill = {d.queue_id for d in rig.server.delivered}
    again = rig.detox(port=proc.port)
    drain(again)
    result = rig.settle(again, f"kill mid-pipeline: slow mail in the pipeline at the kill: {in_pipeline}")
    assert result.delivered == 4
    assert {q for q, _ in result.duplicates} <= at_kill


def test_killed_mid_delivery_with_the_message_already_queued_downstream(rig: Rig) -> None:
    """The downstream queues the message, then hangs before its 250; detox is killed meanwhile. After the
    restart the message is delivered again: the duplicate at-least-once allows, and the only kind there is."""
    rig.server.stall_s, rig.server.commit_before_stall = 60.0, True
    proc = rig.detox()
    send_many(proc.port, 6, rig.ledger)
    rig.server.wait_event("committed then stalling", 1, timeout=30)
    proc.kill9()
    in_flight = {d.queue_id for d in rig.server.delivered}
    rig.server.stall_s = 0.0  # the downstream recovers
    again = rig.detox(port=proc.port)
    drain(again)
    result = rig.settle(again, f"kill mid-delivery: {len(in_flight)} queued downstream, unanswered")
    assert result.delivered == 6
    assert {q for q, _ in result.duplicates} <= in_flight, "only the messages in flight may be duplicated"
