"""Housekeeping while serve runs: the retention purge, stale ``spool/tmp`` files, refusal summaries."""

from __future__ import annotations

import asyncio
import logging

from detox.audit import AuditLog
from detox.audit.events import Purged
from detox.quarantine.store import Store
from detox.smtp.handler import RefusalLog
from detox.spool import Spool

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
STALE_TMP_S = 6 * 3600.0  # spool/tmp files older than this are leftovers of a killed process
REFUSAL_FLUSH_S = 1.0


class Housekeeping:
    def __init__(self, spool: Spool, store: Store, audit: AuditLog, refusals: RefusalLog) -> None:
        self.spool = spool
        self.store = store
        self.audit = audit
        self.refusals = refusals

    async def purge_once(self) -> None:
        """Stale ``tmp/`` files and messages past ``storage.retention_days`` (with a ``purged`` record)."""
        try:
            stale = await asyncio.to_thread(self.spool.remove_stale_tmp, STALE_TMP_S)
            if stale:
                log.info("removed %d stale file(s) from spool/tmp", stale)
        except OSError:
            log.exception("cleaning spool/tmp failed")
        try:
            purged = await asyncio.to_thread(self.store.purge_expired)
            if purged:
                await asyncio.to_thread(self.audit.write, Purged(messages=purged))
        except Exception:
            log.exception("retention purge failed")

    async def purge_loop(self) -> None:
        while True:
            await self.purge_once()
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def refusal_loop(self) -> None:
        while True:
            await asyncio.sleep(REFUSAL_FLUSH_S)
            try:
                await asyncio.to_thread(self.refusals.flush)
            except Exception:
                log.exception("writing refusal records failed")
