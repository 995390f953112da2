"""The parts of ``detox serve`` without its listener, for the runner tests: a config file, a spool,
a store and an audit log under one tmp directory, all real.

    rig = make_rig(tmp_path, delivery={"deliver_to": f"smtp://{sink.host}:{sink.port}"})
    queue_id = rig.accept(message())               # in incoming/, as the SMTP side leaves it
    rig.records("detoxified")                      # the audit records of one event
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from detox.audit import AuditLog, now_rfc3339, read_records
from detox.config.loader import load_config
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.quarantine.store import Store
from detox.spool import Spool, new_queue_id
from support.detox_proc import write_config

CITY = "city.example.lg.jp"
TARO = f"taro@{CITY}"
HANAKO = f"hanako@{CITY}"
SENDER = "takahashi@vendor.example.com"


def message(subject: str = "配送テスト", body: str = "本文です。①㈱髙橋\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"髙橋 一郎 <{SENDER}>"
    msg["To"] = TARO
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@vendor.example.com>"
    msg.set_content(body)
    return msg.as_bytes().replace(b"\n", b"\r\n")


@dataclass
class Rig:
    path: Path
    config: DetoxConfig
    spool: Spool
    store: Store
    audit: AuditLog

    def get_config(self) -> DetoxConfig:
        return self.config

    def accept(self, raw: bytes, rcpts: tuple[str, ...] = (TARO,)) -> str:
        env = Envelope(new_queue_id(), SENDER, rcpts, "192.0.2.1", "mx.vendor.example.com", now_rfc3339())
        self.spool.accept(env, raw)
        return env.queue_id

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        if not self.audit.path.exists():
            return []
        return [r for r in read_records(self.audit.path) if event is None or r["event"] == event]

    def close(self) -> None:
        self.store.close()
        self.audit.close()


def make_rig(tmp_path: Path, **overrides: dict[str, Any]) -> Rig:
    """A config file (``overrides`` by section) and the spool, store and audit log it names."""
    sections: dict[str, dict[str, Any]] = {
        "storage": {"state_dir": str(tmp_path / "state"), "fsync": False},
        "delivery": {
            "deliver_to": f"maildir:{tmp_path / 'maildir'}",
            "retry_base_s": 0.2,
            "retry_max_s": 1.0,
        },
        "pipeline": {"workers": 1},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    path = write_config(tmp_path / "detox.toml", sections)
    config = load_config(path)
    return Rig(
        path,
        config,
        Spool(config.state_path("spool"), fsync=config.storage.fsync),
        Store(config.state_path(), fsync=config.storage.fsync),
        AuditLog.from_config(config),
    )


async def until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` on the event loop (the runners run meanwhile) until it is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
