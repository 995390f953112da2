"""The detox runner: incoming entries through the pipeline workers and handed off to delivery.

Per entry: count the attempt (so one that takes serve down counts too), run it in a worker under
``limits.message_timeout_s``, then the hand-off (``Spool.hand_off``: index, ``detoxified`` record,
release of ``incoming/ID.msg``). What a failure means is decided here:

* our disk (full, read-only): the attempt does not count, tried again later (``deferred``,
  ``counted: false``);
* a damaged entry: moved aside at once;
* a crash of the worker or a timeout: counted, and the next attempt runs in a worker of its own
  (``pool.py``), so a bystander is not blamed for a crasher;
* any other failure: counted; after ``pipeline.max_attempts`` the entry is moved aside (poison).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool

from detox.audit import AuditLog
from detox.audit.events import Detoxified, PipelineDeferred
from detox.config.schema import DetoxConfig
from detox.delivery.retry import backoff
from detox.errors import SpoolCorrupt, SpoolError, StoreError
from detox.pipeline.report import MessageReport
from detox.quarantine.store import Store
from detox.serve.pool import MessageTimeout, WorkerPools
from detox.serve.stage import Stage, move_aside
from detox.smtp.handler import Backlog
from detox.spool import DeliveryState, PipelineTries, Spool, WorkerResult

log = logging.getLogger(__name__)

# Failures that may not be the message's own fault: the pool broke or was killed under it.
_ISOLATE = ("worker crashed", "message timeout")
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
FRESH_MESSAGE_BYTES = 1024 * 1024  # a handed-off message up to this size goes to delivery in memory

# Called on the event loop after each hand-off: the first delivery state, and the message if small.
HandedOff = Callable[[DeliveryState, bytes | None], None]


class DetoxRunner:
    def __init__(
        self,
        get_config: Callable[[], DetoxConfig],
        spool: Spool,
        store: Store,
        audit: AuditLog,
        backlog: Backlog,
        workers: int,
        on_handed_off: HandedOff,
    ) -> None:
        self.get_config = get_config
        self.spool = spool
        self.store = store
        self.audit = audit
        self.backlog = backlog
        self.workers = workers
        self.on_handed_off = on_handed_off
        self.pools = WorkerPools(get_config, workers)
        self.stage = Stage()
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False

    @property
    def consumers(self) -> int:
        return self.workers * 2

    def start_pools(self) -> None:
        self.pools.start()

    def start(self) -> None:
        """The loops that take entries off the stage (after ``recover``)."""
        for _ in range(self.consumers):
            self.tasks.append(asyncio.create_task(self._loop()))

    def submit(self, queue_id: str) -> None:
        """An entry to detoxify now (a message just accepted, a retry)."""
        self.stage.now(queue_id)

    async def recover(self) -> int:
        """Resume the incoming entries from the spool; how many."""
        sizes = await asyncio.to_thread(self.spool.incoming_sizes)
        for queue_id in sorted(sizes):
            # (a state next to it is a worker's result not yet handed off: it stays inert, see
            # Spool.outgoing_ids, and the message is detoxified again)
            self.backlog.add(queue_id, sizes[queue_id])
            tries = await asyncio.to_thread(self.spool.read_tries, queue_id)
            if tries.in_flight:
                # serve went down during this attempt (crash, kill -9, power loss): it counts,
                # so a message that takes serve down is not retried for ever; try again at once.
                await self._failed(
                    queue_id, "detox serve stopped during detoxification", retry_at=time.time()
                )
            else:
                self.stage.at(queue_id, tries.next_attempt)
        return len(sizes)

    def stop(self) -> None:
        self.stopping = True
        self.stage.stop(self.consumers)

    # -- one entry ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            queue_id = await self.stage.take()
            if queue_id is None:
                return
            retry = False
            try:
                if self.stopping:
                    return
                await self.detoxify(queue_id)
            except Exception:  # a bug of ours must not stop this loop; the entry stays in the spool
                log.exception("%s: detoxification step failed; will retry", queue_id)
                retry = True
            finally:
                self.stage.done(queue_id)
            if retry:
                self.stage.at(queue_id, time.time() + self.get_config().delivery.retry_base_s)

    async def detoxify(self, queue_id: str) -> None:
        """One attempt for one incoming entry, to its hand-off or its recorded failure."""
        config = self.get_config()
        try:
            tries = await asyncio.to_thread(self._begin_attempt, queue_id)
        except SpoolError as exc:  # e.g. the disk is full: try later, the entry itself is safe
            log.error("%s: cannot record the attempt (%s); retrying later", queue_id, exc)
            self.stage.at(queue_id, time.time() + config.delivery.retry_base_s)
            return
        if tries is None:
            self.backlog.remove(queue_id)  # done already (a retry asked while it was under way)
            return
        if tries.attempts > config.pipeline.max_attempts:  # the limit was lowered by a reload
            await self._failed(queue_id, tries.last_error or "too many attempts")
            return
        isolate = tries.last_error.startswith(_ISOLATE)
        handed_off = False
        try:
            if isolate:
                # It may have been the one that broke the pool, or an innocent bystander: one
                # worker of its own decides, and its failure then is its own.
                async with self.pools.solo_lock:
                    report, result = await self.pools.run(queue_id, solo=True)
            else:
                report, result = await self.pools.run(queue_id, solo=False)
            handed_off = True  # from here a cancellation leaves the hand-off to finish in its thread
            data = await asyncio.shield(asyncio.to_thread(self._hand_off, result, report))
        except asyncio.CancelledError:
            if not handed_off:
                with contextlib.suppress(OSError, SpoolError):
                    self.spool.hand_back(queue_id)  # our shutdown: the attempt does not count
            raise
        except SpoolCorrupt as exc:
            # The worker could not read the entry (damaged, not ours): aside at once, never retried.
            await asyncio.to_thread(move_aside, self.spool, self.audit, queue_id, str(exc), "spool")
            self.backlog.remove(queue_id)
            return
        except (SpoolError, StoreError) as exc:
            # Our disk, not the message (e.g. full): the attempt does not count; try again later.
            await self._deferred_by_us(queue_id, str(exc))
            return
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:  # e.g. the audit log's disk is full
                await self._deferred_by_us(queue_id, f"{type(exc).__name__}: {exc}")
            else:
                log.exception("%s: pipeline failed", queue_id)
                await self._failed(queue_id, f"{type(exc).__name__}: {exc}")
            return
        except BrokenProcessPool:
            log.error("%s: pipeline worker died", queue_id)
            await self._failed(queue_id, "worker crashed")
            return
        except MessageTimeout:
            log.error("%s: pipeline exceeded %ss", queue_id, config.limits.message_timeout_s)
            await self._failed(queue_id, "message timeout")
            return
        except Exception as exc:
            log.exception("%s: pipeline failed", queue_id)
            await self._failed(queue_id, f"{type(exc).__name__}: {exc}")
            return
        self.backlog.remove(queue_id)
        self.on_handed_off(result.state, data)

    def _begin_attempt(self, queue_id: str) -> PipelineTries | None:
        """Blocking: count the attempt, or None when the entry is gone (one thread hop for both)."""
        if not self.spool.has_incoming(queue_id):
            return None
        return self.spool.begin_attempt(queue_id)

    def _hand_off(self, result: WorkerResult, report: MessageReport) -> bytes | None:
        """Blocking: the hand-off (``Spool.hand_off``: index and audit, then the release); the
        message if small.

        A crash before the release detoxifies the message again (a second ``detoxified`` record,
        one delivery); see ``Spool.hand_off`` for the rest of the rule.
        """
        queue_id = result.queue_id

        def record() -> None:
            self.store.index(report, self.get_config().storage.retention_days)
            self.audit.write(Detoxified.of(queue_id, report))

        self.spool.hand_off(result, record)
        # The message goes to delivery next: read it now, in this thread, while it is in the page
        # cache, so that the first attempt needs no thread hop of its own (large ones are read then).
        data = None
        with contextlib.suppress(SpoolError):
            data = self.spool.read_output_if_small(queue_id, FRESH_MESSAGE_BYTES)
        return data

    # -- failures -----------------------------------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        delivery = self.get_config().delivery
        return backoff(attempts, delivery.retry_base_s, delivery.retry_max_s)

    async def _deferred_by_us(self, queue_id: str, why: str) -> None:
        log.error("%s: cannot store the result (%s); retrying later", queue_id, why)
        when = time.time() + self.get_config().delivery.retry_base_s
        with contextlib.suppress(OSError, SpoolError):
            await asyncio.to_thread(self.spool.hand_back, queue_id)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                self.audit.write,
                PipelineDeferred(queue_id=queue_id, reason=why, counted=False, next_attempt=when),
            )
        self.stage.at(queue_id, when)

    async def _failed(self, queue_id: str, why: str, *, retry_at: float | None = None) -> None:
        config = self.get_config()
        tries = await asyncio.to_thread(self.spool.read_tries, queue_id)
        count = max(tries.attempts, 1)
        if count >= config.pipeline.max_attempts:
            reason = f"detoxification failed {count} times, last: {why}"
            await asyncio.to_thread(move_aside, self.spool, self.audit, queue_id, reason, "pipeline")
            self.backlog.remove(queue_id)
            return
        when = retry_at if retry_at is not None else time.time() + self._backoff(count)
        try:
            await asyncio.to_thread(self.spool.end_attempt, queue_id, why, when)
        except SpoolError as exc:
            log.error("%s: cannot record the failed attempt: %s", queue_id, exc)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                self.audit.write,
                PipelineDeferred(
                    queue_id=queue_id,
                    reason=why,
                    attempt=count,
                    max_attempts=config.pipeline.max_attempts,
                    next_attempt=when,
                ),
            )
        self.stage.at(queue_id, when)
