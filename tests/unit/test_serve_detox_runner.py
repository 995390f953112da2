"""The detox runner without a listener: real worker processes, a real spool, store and audit log.

An entry is put in ``incoming/`` as the SMTP side leaves it and handed to the runner; what comes
out is the hand-off (the first delivery state, the ``detoxified`` record, incoming released) or a
recorded failure: deferred, retried alone after a timeout, moved aside as poison.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from support.serve_rig import TARO, Rig, make_rig, message, until

from detox.serve.detoxify import DetoxRunner
from detox.smtp.handler import Backlog
from detox.spool import DeliveryState

pytestmark = pytest.mark.slow  # starts worker processes (spawn)


def slow_mail() -> bytes:
    """A mail whose HTML body keeps a pipeline worker busy for a few seconds (about 1.2 MB of markup)."""
    msg = EmailMessage()
    msg["From"] = "髙橋 一郎 <hanako@vendor.example.com>"
    msg["To"] = TARO
    msg["Subject"] = "重いHTML"
    row = "<tr><td>①項目</td><td><b>㈱髙橋</b></td><td><a href='https://example.jp/x'>リンク</a></td></tr>\n"
    msg.set_content("<html><body><table>" + row * 16000 + "</table></body></html>", subtype="html")
    return msg.as_bytes()


class Running:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.handed: list[tuple[DeliveryState, bytes | None]] = []
        self.backlog = Backlog()
        self.runner = DetoxRunner(
            rig.get_config,
            rig.spool,
            rig.store,
            rig.audit,
            self.backlog,
            1,
            lambda state, data: self.handed.append((state, data)),
        )

    async def start(self) -> None:
        self.runner.start_pools()
        await self.runner.recover()
        self.runner.start()

    async def stop(self) -> None:
        self.runner.stop()
        await asyncio.gather(*self.runner.tasks)
        await self.runner.pools.shutdown(interrupted=False)
        self.rig.close()

    def submit(self, queue_id: str) -> None:
        self.backlog.add(queue_id, self.rig.spool.incoming_size(queue_id))
        self.runner.submit(queue_id)


@pytest.fixture
async def running(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    overrides = getattr(request, "param", {})
    run = Running(make_rig(tmp_path, **overrides))
    yield run
    await run.stop()


async def test_a_message_is_detoxified_and_handed_off(running: Running) -> None:
    await running.start()
    spool = running.rig.spool
    queue_id = running.rig.accept(message(subject="受付"))
    running.submit(queue_id)
    await until("the hand-off", lambda: running.handed)
    state, data = running.handed[0]
    assert state.queue_id == queue_id and state.pending() == [TARO]
    assert data is not None and data == spool.read_output(queue_id)  # small: kept for delivery
    assert not spool.has_incoming(queue_id) and spool.has_state(queue_id)  # live now
    (record,) = running.rig.records("detoxified")
    assert record["queue_id"] == queue_id and record["subject"] == "受付"
    assert record["original_sha256"] == state.original_sha256
    assert running.rig.store.message(queue_id) is not None  # indexed before the release
    assert running.backlog.count == 0


async def test_a_damaged_entry_is_moved_aside_at_once(running: Running) -> None:
    await running.start()
    spool = running.rig.spool
    queue_id = running.rig.accept(message())
    (spool.incoming / f"{queue_id}.msg").write_bytes(b"not a spool file\n")
    running.submit(queue_id)
    (failed,) = await until("the failed record", lambda: running.rig.records("failed"))
    assert failed["stage"] == "spool" and failed["moved_to"] == "spool/failed"
    assert spool.aside_ids() == [queue_id] and not running.handed


async def test_an_attempt_cut_short_by_a_crash_of_serve_counts_and_is_retried(running: Running) -> None:
    spool = running.rig.spool
    queue_id = running.rig.accept(message())
    spool.begin_attempt(queue_id)  # serve died during this attempt
    await running.start()  # recovery counts it and tries again at once
    await until("the hand-off", lambda: running.handed)
    (deferred,) = running.rig.records("deferred")
    assert deferred["reason"] == "detox serve stopped during detoxification" and deferred["attempt"] == 1


@pytest.mark.parametrize(
    "running",
    [{"limits": {"message_timeout_s": 1.0}, "pipeline": {"max_attempts": 2}}],
    indirect=True,
)
async def test_a_message_that_times_out_is_retried_alone_then_moved_aside(running: Running) -> None:
    await running.start()
    spool = running.rig.spool
    queue_id = running.rig.accept(slow_mail())
    running.submit(queue_id)
    started = time.monotonic()
    (failed,) = await until("the failed record", lambda: running.rig.records("failed"))
    assert time.monotonic() - started < 60
    (deferred,) = running.rig.records("deferred")
    assert deferred["reason"] == "message timeout" and deferred["attempt"] == 1
    assert failed["reason"] == "detoxification failed 2 times, last: message timeout"
    assert failed["stage"] == "pipeline" and spool.aside_ids() == [queue_id]
    assert running.runner.pools._solo is None  # the second (solo) pool was killed with its worker
    assert not running.handed and running.backlog.count == 0
    # the pool that timed out was replaced: an innocent message goes through
    second = running.rig.accept(message())
    running.submit(second)
    await until("the hand-off", lambda: running.handed)
