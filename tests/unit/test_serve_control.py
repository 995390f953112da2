"""Control requests, the reload and housekeeping of ``detox serve``, without a listener or workers:
requests are left in a real spool as the CLI leaves them, and the runners' queues are looked at."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.detox_proc import write_config
from support.serve_rig import SENDER, TARO, Rig, make_rig, message

from detox.audit import AuditLog
from detox.config.loader import parse_deliver_to
from detox.serve.control import ControlRunner, Live, Reloader, changed_keys
from detox.serve.delivery import DeliveryRunner
from detox.serve.detoxify import DetoxRunner
from detox.serve.housekeeping import STALE_TMP_S, Housekeeping
from detox.smtp.handler import Backlog, RefusalLog
from detox.spool import DeliveryState, EntryKind, RecipientState


@dataclass
class Serve:
    rig: Rig
    live: Live
    detox: DetoxRunner
    delivery: DeliveryRunner
    reloader: Reloader
    control: ControlRunner


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    rig = make_rig(tmp_path)
    live = Live(rig.config, None)

    delivery = DeliveryRunner(
        lambda: live.config, rig.spool, rig.store, rig.audit, parse_deliver_to(rig.config.delivery.deliver_to)
    )
    detox = DetoxRunner(
        lambda: live.config, rig.spool, rig.store, rig.audit, Backlog(), 1, delivery.handed_off
    )
    reloader = Reloader(
        live, str(rig.path), deliver_to_fixed=False, audit=rig.audit, detox=detox, delivery=delivery
    )
    yield Serve(
        rig, live, detox, delivery, reloader, ControlRunner(rig.spool, rig.audit, detox, delivery, reloader)
    )
    await delivery.aclose()
    rig.close()


async def test_a_release_goes_to_delivery_marked_as_such(serve: Serve) -> None:
    spool = serve.rig.spool
    spool.stage_release("1A0000000000000000R1", message())
    spool.commit_release(DeliveryState("1A0000000000000000R1", SENDER, {TARO: RecipientState()}))
    await serve.control.once()
    assert serve.delivery.stage.queued == {"1A0000000000000000R1"}
    assert spool.read_state("1A0000000000000000R1").kind is EntryKind.RELEASE


async def test_retry_puts_an_entry_back_from_aside_into_the_pipeline(serve: Serve) -> None:
    spool = serve.rig.spool
    queue_id = serve.rig.accept(message())
    spool.move_aside(queue_id, "detoxification failed 5 times, last: message timeout")
    spool.request(f"retry.{queue_id}")
    spool.request("retry.1A0000000000000000FF")  # not in the spool: only logged
    await serve.control.once()
    assert spool.incoming_ids() == [queue_id] and serve.detox.stage.queued == {queue_id}
    assert serve.detox.backlog.count == 1
    (requeued,) = serve.rig.records("requeued")
    assert requeued["queue_id"] == queue_id and requeued["stage"] == "incoming"


async def test_flush_brings_every_waiting_entry_forward(serve: Serve) -> None:
    serve.detox.stage.at("1A0000000000000000A1", time.time() + 3600)
    serve.delivery.stage.at("1A0000000000000000B1", time.time() + 3600)
    serve.rig.spool.request("flush")
    await serve.control.once()
    assert serve.detox.stage.queued == {"1A0000000000000000A1"}
    assert serve.delivery.stage.queued == {"1A0000000000000000B1"} and not serve.delivery.stage.timers


async def test_reload_applies_a_valid_config_and_keeps_the_running_one_otherwise(serve: Serve) -> None:
    rig = serve.rig
    old_deliverer = serve.delivery.deliverer
    sections = {
        "storage": {"state_dir": str(rig.path.parent / "state"), "fsync": False},
        "delivery": {"deliver_to": "smtp://127.0.0.1:2526", "retry_base_s": 5.0},
        "pipeline": {"workers": 3},
    }
    write_config(rig.path, sections)
    rig.spool.request("reload")
    await serve.control.once()
    result = rig.spool.read_result("reload")
    assert result is not None and result["ok"] is True
    assert "needs a restart to take effect: pipeline.workers" in result["message"]
    assert serve.live.config.delivery.retry_base_s == 5.0
    assert serve.live.config.pipeline.workers == 1  # kept until the next start
    assert serve.delivery.deliver_to == parse_deliver_to("smtp://127.0.0.1:2526")
    assert serve.delivery.deliverer is not old_deliverer
    (reloaded,) = rig.records("reloaded")
    assert reloaded["source"] == "detox reload" and reloaded["restart_needed"] == ["pipeline.workers"]
    assert "delivery.retry_base_s" in reloaded["changed"]

    rig.path.write_text("[delivery]\nretry_base_s = -1\n")
    ok, text = await serve.reloader.reload("SIGHUP")
    assert not ok and text.startswith("configuration not reloaded (the running one stays)")
    assert serve.live.config.delivery.retry_base_s == 5.0
    assert rig.records("reloaded")[-1]["ok"] is False


def test_changed_keys_are_dotted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = make_rig(tmp_path / "a").config
    b = make_rig(tmp_path / "b", delivery={"retry_base_s": 9.0}).config
    assert changed_keys(a, b) == ["delivery.deliver_to", "delivery.retry_base_s", "storage.state_dir"]


async def test_housekeeping_removes_stale_tmp_files_only(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    stale, fresh = rig.spool.tmp / "old.msg.1234", rig.spool.tmp / "new.msg.5678"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (time.time() - STALE_TMP_S - 60,) * 2)
    await Housekeeping(rig.spool, rig.store, rig.audit, RefusalLog(rig.audit)).purge_once()
    assert list(rig.spool.tmp.iterdir()) == [fresh]
    assert rig.records("purged") == []  # nothing past retention
    rig.close()


def test_refusals_are_flushed_as_one_record(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    refusals = RefusalLog(audit)
    for client in ("192.0.2.1", "192.0.2.1", "192.0.2.2"):
        refusals.record("server.max_sessions", client, "421 4.7.0 busy")
    refusals.flush(force=True)
    (line,) = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert json.loads(line)["count"] == 3
    audit.close()
