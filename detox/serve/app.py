"""The composition root of ``detox serve``: what it is made of, and its start, run and stop.

Everything is built here and handed to the parts that use it; no part builds another. The runners
share the configuration through ``live`` (a reload replaces it), the spool (the only truth about an
entry) and the audit log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

from detox.audit import AuditLog
from detox.config.loader import DeliverTo
from detox.config.schema import DetoxConfig
from detox.quarantine.store import Store
from detox.serve.control import ControlRunner, Live, Reloader
from detox.serve.delivery import DeliveryRunner
from detox.serve.detoxify import DetoxRunner
from detox.serve.housekeeping import Housekeeping
from detox.serve.ingest import Ingest
from detox.smtp.handler import Backlog, RefusalLog
from detox.smtp.server import tls_context
from detox.spool import ServeLock, Spool

log = logging.getLogger(__name__)


class Service:
    def __init__(
        self,
        config: DetoxConfig,
        listen: tuple[str, int],
        deliver_to: DeliverTo,
        *,
        config_path: str | None = None,
        deliver_to_fixed: bool = False,
    ) -> None:
        self.live = Live(config, None)
        self.listen = listen
        self.spool = Spool(config.state_path("spool"), fsync=config.storage.fsync)
        self.store = Store(config.state_path(), fsync=config.storage.fsync)
        self.audit = AuditLog.from_config(config)
        self.backlog = Backlog()
        self.refusals = RefusalLog(self.audit)
        self.workers = config.pipeline.workers or os.cpu_count() or 1
        self.live.tls = tls_context(config)
        self.delivery = DeliveryRunner(self._config, self.spool, self.store, self.audit, deliver_to)
        self.detox = DetoxRunner(
            self._config,
            self.spool,
            self.store,
            self.audit,
            self.backlog,
            self.workers,
            on_handed_off=self.delivery.handed_off,
        )
        self.reloader = Reloader(
            self.live,
            config_path,
            deliver_to_fixed=deliver_to_fixed,
            audit=self.audit,
            detox=self.detox,
            delivery=self.delivery,
        )
        self.control = ControlRunner(self.spool, self.audit, self.detox, self.delivery, self.reloader)
        self.housekeeping = Housekeeping(self.spool, self.store, self.audit, self.refusals)
        self.ingest: Ingest | None = None
        self._background: list[asyncio.Task[None]] = []  # cancelled on stop, never waited for
        self._lock: ServeLock | None = None

    def _config(self) -> DetoxConfig:
        return self.live.config

    @property
    def config(self) -> DetoxConfig:
        return self.live.config

    async def reload(self, source: str) -> tuple[bool, str]:
        """Re-read the config file; apply what can be applied live, keep the running one if invalid."""
        return await self.reloader.reload(source)

    async def start(self) -> None:
        self._lock = self.spool.lock_for_serve()
        self.detox.start_pools()
        self.ingest = Ingest(
            self._config,
            lambda: self.live.tls,
            self.spool,
            self.audit,
            self.backlog,
            self.refusals,
            self.detox.submit,
        )
        await asyncio.to_thread(self.spool.adopt_released)
        resumed = await self.detox.recover() + await self.delivery.recover()
        if resumed:
            log.info("resuming %d spooled messages", resumed)
        self.detox.start()
        self.delivery.start()
        self._background += [
            asyncio.create_task(self.housekeeping.purge_loop()),
            asyncio.create_task(self.control.run()),
            asyncio.create_task(self.housekeeping.refusal_loop()),
        ]
        host, port = self.listen
        await self.ingest.start(host, port)
        log.info("detox listening on %s:%d, %d pipeline workers", host, port, self.workers)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Drain: stop accepting, let work under way finish within the grace time, hand back the rest."""
        self.detox.stopping = self.delivery.stopping = True
        grace = self.config.server.shutdown_timeout_s
        deadline = time.monotonic() + grace
        work: list[asyncio.Task[None]] = [*self.detox.tasks, *self.delivery.tasks]
        waits: list[asyncio.Task[Any]] = list(work)
        if self.ingest is not None:
            waits.append(self.ingest.drain(grace))
        self.detox.stop()
        self.delivery.stop()
        unfinished: set[asyncio.Task[Any]] = set()
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=max(deadline - time.monotonic(), 0.1))
        if self.ingest is not None:
            self.ingest.abort(grace)
        interrupted = [t for t in unfinished if t in work]
        if interrupted:
            log.warning(
                "handing back %d unfinished detoxification/delivery task(s) to the spool", len(interrupted)
            )
        for task in [*unfinished, *self._background]:
            task.cancel()
        await asyncio.gather(*unfinished, *self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.refusals.flush, force=True)
        await self.delivery.aclose()
        await self.detox.pools.shutdown(interrupted=bool(interrupted))
        self.store.close()
        self.audit.close()
        if self._lock is not None:
            self._lock.release()
        log.info("detox stopped")
