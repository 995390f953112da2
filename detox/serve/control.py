"""Requests from the CLI to a running serve (releases, ``detox queue retry|flush``, ``detox reload``)
and the reload itself (also on SIGHUP).

The CLI never talks to serve directly: it leaves a file in the spool (``released/``,
``control/``) and this runner picks it up within ``CONTROL_POLL_S``. A reload applies what can be
applied live and keeps the running configuration when the new one is invalid; the keys in
``RESTART_KEYS`` are kept from the running one and take effect at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

from detox.audit import AuditLog
from detox.audit.events import Reloaded, Requeued
from detox.config.loader import DeliverTo, parse_deliver_to
from detox.config.schema import DetoxConfig
from detox.errors import ConfigError
from detox.pipeline.registry import load_validated_config
from detox.serve.delivery import DeliveryRunner
from detox.serve.detoxify import DetoxRunner
from detox.smtp.server import tls_context
from detox.spool import Spool

log = logging.getLogger(__name__)

CONTROL_POLL_S = 1.0  # how soon a release, `detox queue retry|flush` or `detox reload` is picked up
# Kept from the running configuration on reload: they take effect at the next start.
RESTART_KEYS = ("server.listen", "pipeline.workers", "delivery.connections", "storage")
# Sections the worker processes read: a change starts fresh workers (running jobs finish first).
PIPELINE_SECTIONS = ("limits", "pipeline", "filters", "body", "urls", "notice", "sandbox", "policy")


@dataclass(slots=True)
class Live:
    """What a reload replaces; everything else reads it through ``config`` and ``tls`` each time."""

    config: DetoxConfig
    tls: ssl.SSLContext | None


def changed_keys(old: DetoxConfig, new: DetoxConfig) -> list[str]:
    """Dotted keys (section.key) whose values differ; whole sections for dict-like ones."""
    a, b = old.model_dump(exclude={"base_dir"}), new.model_dump(exclude={"base_dir"})
    changed = []
    for section in sorted(set(a) | set(b)):
        va, vb = a.get(section), b.get(section)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict) and section not in ("filters",):
            changed += [f"{section}.{k}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
        else:
            changed.append(section)
    return changed


class Reloader:
    """Re-reads the config file and applies it to the runners; one reload at a time."""

    def __init__(
        self,
        live: Live,
        config_path: str | None,
        *,
        deliver_to_fixed: bool,
        audit: AuditLog,
        detox: DetoxRunner,
        delivery: DeliveryRunner,
    ) -> None:
        self.live = live
        self.config_path = config_path
        self._deliver_to_fixed = deliver_to_fixed  # --deliver-to given: a reload keeps it
        self.audit = audit
        self.detox = detox
        self.delivery = delivery
        self._lock = asyncio.Lock()

    async def reload(self, source: str) -> tuple[bool, str]:
        """Re-read the config file; apply what can be applied live, keep the running one if invalid."""
        async with self._lock:  # a SIGHUP and a `detox reload` at once: one after the other
            return await self._reload(source)

    async def _reload(self, source: str) -> tuple[bool, str]:
        try:
            new = await asyncio.to_thread(load_validated_config, self.config_path)
            tls = await asyncio.to_thread(tls_context, new)  # reads the certificate and key files
            deliver_to: DeliverTo = (
                self.delivery.deliver_to
                if self._deliver_to_fixed
                else parse_deliver_to(new.delivery.deliver_to)
            )
        except (ConfigError, ssl.SSLError, OSError) as exc:
            message = f"configuration not reloaded (the running one stays): {exc}"
            log.error("%s (%s)", message, source)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.audit.write, Reloaded(ok=False, source=source, error=str(exc)))
            return False, message
        old = self.live.config
        changed = changed_keys(old, new)
        restart = [k for k in changed if k.startswith(RESTART_KEYS)]
        new = new.model_copy(
            update={
                "base_dir": old.base_dir,
                "storage": old.storage,
                "server": new.server.model_copy(update={"listen": old.server.listen}),
                "pipeline": new.pipeline.model_copy(update={"workers": old.pipeline.workers}),
                "delivery": new.delivery.model_copy(update={"connections": old.delivery.connections}),
            }
        )
        self.live.config = new
        self.live.tls = tls
        self.audit.rotate_bytes = new.audit.rotate_bytes
        logging.getLogger().setLevel(new.logging.level)
        if any(k.split(".")[0] in PIPELINE_SECTIONS for k in changed if k not in restart):
            self.detox.pools.renew()  # fresh workers with the new config
        if (
            old.delivery != new.delivery
            or deliver_to != self.delivery.deliver_to
            or old.server.hostname != new.server.hostname
        ):
            await self.delivery.retarget(deliver_to, new)
        message = "configuration reloaded" + (
            f"; changed: {', '.join(changed)}" if changed else "; no change"
        )
        if restart:
            message += f"; needs a restart to take effect: {', '.join(restart)}"
        log.info("%s (%s)", message, source)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                self.audit.write,
                Reloaded(ok=True, source=source, changed=tuple(changed), restart_needed=tuple(restart)),
            )
        return True, message


class ControlRunner:
    """Polls the spool for releases and CLI requests and hands them to the runners."""

    def __init__(
        self,
        spool: Spool,
        audit: AuditLog,
        detox: DetoxRunner,
        delivery: DeliveryRunner,
        reloader: Reloader,
    ) -> None:
        self.spool = spool
        self.audit = audit
        self.detox = detox
        self.delivery = delivery
        self.reloader = reloader

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("handling spool requests failed; will retry")
            await asyncio.sleep(CONTROL_POLL_S)

    async def once(self) -> None:
        """Everything waiting in ``released/`` and ``control/`` now."""
        for queue_id in await asyncio.to_thread(self.spool.adopt_released):
            log.info("%s: release queued for delivery", queue_id)
            self.delivery.submit(queue_id)
        for name in await asyncio.to_thread(self.spool.take_requests):
            if name == "flush":
                count = self.detox.stage.flush() + self.delivery.stage.flush()
                log.info("queue flush: %d waiting message(s) to be tried now", count)
            elif name.startswith("retry."):
                await self._retry(name.removeprefix("retry."))
            elif name == "reload":
                ok, message = await self.reloader.reload("detox reload")
                await asyncio.to_thread(
                    self.spool.write_result, "reload", {"ok": ok, "message": message, "at": time.time()}
                )
            else:
                log.warning("unknown request %r in spool/control/ ignored", name)

    async def _retry(self, queue_id: str) -> None:
        where = await asyncio.to_thread(self.spool.restore_aside, queue_id)
        if where is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.audit.write, Requeued(queue_id=queue_id, stage=where))
        if where == "incoming" or (
            where is None and await asyncio.to_thread(self.spool.has_incoming, queue_id)
        ):
            if where == "incoming":
                self.detox.backlog.add(queue_id, await asyncio.to_thread(self.spool.incoming_size, queue_id))
            self.detox.submit(queue_id)
        elif where == "outgoing" or await asyncio.to_thread(self.spool.has_state, queue_id):
            self.delivery.submit(queue_id)
        else:
            log.warning("queue retry: %s is not in the spool", queue_id)
            return
        log.info("queue retry: %s to be tried now", queue_id)
