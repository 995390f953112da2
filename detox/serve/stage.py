"""What the runners share: a timed queue of work (:class:`Stage`) and moving a broken entry aside.

The spool is the truth; a stage only says which of its entries to work on next, so it is rebuilt
from a directory listing at every start and may be dropped at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Literal

from detox.audit import AuditLog
from detox.audit.events import MovedAside
from detox.errors import SpoolError
from detox.spool import Spool

log = logging.getLogger(__name__)


class Stage:
    """One queue of work (detoxification or delivery): ids due now, timers for later, no id twice."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.queued: set[str] = set()
        self.busy: set[str] = set()
        self.timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    def now(self, queue_id: str) -> None:
        timer = self.timers.pop(queue_id, None)
        if timer is not None:
            timer[1].cancel()
        if queue_id in self.queued or queue_id in self.busy:
            return
        self.queued.add(queue_id)
        self.queue.put_nowait(queue_id)

    def at(self, queue_id: str, when: float) -> None:
        delay = when - time.time()
        if delay <= 0:
            self.now(queue_id)
            return
        old = self.timers.pop(queue_id, None)
        if old is not None:
            old[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, queue_id)
        self.timers[queue_id] = (when, handle)

    def _fire(self, queue_id: str) -> None:
        self.timers.pop(queue_id, None)
        self.now(queue_id)

    def flush(self) -> int:
        waiting = list(self.timers)
        for queue_id in waiting:
            self.now(queue_id)
        return len(waiting)

    async def take(self) -> str | None:
        queue_id = await self.queue.get()
        if queue_id is None:
            return None
        self.queued.discard(queue_id)
        self.busy.add(queue_id)
        return queue_id

    def done(self, queue_id: str) -> None:
        self.busy.discard(queue_id)

    def stop(self, consumers: int) -> None:
        for _, handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        for _ in range(consumers):
            self.queue.put_nowait(None)


def move_aside(
    spool: Spool, audit: AuditLog, queue_id: str, why: str, stage: Literal["pipeline", "spool", "delivery"]
) -> None:
    """Blocking (call in a thread): the entry to spool/failed/, with a `failed` audit record."""
    log.error("%s moved aside (%s): %s", queue_id, stage, why)
    try:
        spool.move_aside(queue_id, why)
    except (OSError, SpoolError):
        log.exception("%s: could not move it aside; it stays where it is", queue_id)
    with contextlib.suppress(OSError):
        audit.write(MovedAside(queue_id=queue_id, stage=stage, reason=why))
