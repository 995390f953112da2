"""``detox serve``: the listener, the pipeline workers and the delivery queue, wired together.

Flow (each arrow is a durable hand-off on disk)::

    SMTP DATA → spool/incoming (fsync, then 250) → worker process: pipeline → spool/outgoing
              → index + audit → delivery (per recipient, retried with backoff) → done

On start every spooled entry is picked up again, so ``kill -9`` loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from detox.audit import AuditLog
from detox.config.loader import DeliverTo
from detox.config.schema import DetoxConfig
from detox.delivery import Deliverer, make_deliverer
from detox.delivery.base import Status
from detox.errors import DetoxError, SpoolError
from detox.smtp.handler import Handler
from detox.smtp.server import start_listener
from detox.spool import DeliveryState, RecipientState, Spool
from detox.store import Store
from detox.worker import detoxify_spooled, init_worker

log = logging.getLogger(__name__)

MAX_PIPELINE_ATTEMPTS = 5
PURGE_INTERVAL_S = 3600.0
RELEASE_POLL_S = 1.0  # how soon a `detox quarantine release` made while serving is picked up


class Service:
    def __init__(self, config: DetoxConfig, listen: tuple[str, int], deliver_to: DeliverTo) -> None:
        self.config = config
        self.listen = listen
        self.spool = Spool(config.state_path("spool"), fsync=config.storage.fsync)
        self.store = Store(config.state_path(), fsync=config.storage.fsync)
        self.audit = AuditLog.from_config(config)
        self.deliverer: Deliverer = make_deliverer(deliver_to, config)
        self.workers = config.pipeline.workers or os.cpu_count() or 1
        self._executor: ProcessPoolExecutor | None = None
        self._pipeline_q: asyncio.Queue[str] = asyncio.Queue()
        self._delivery_q: asyncio.Queue[str] = asyncio.Queue()
        self._pipeline_failures: dict[str, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            # spawn: workers are children of serve itself, so PDEATHSIG reaps them on kill -9
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.config,),
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._executor = self._new_executor()
        handler = Handler(self.config, self.spool, self.audit, self._pipeline_q.put_nowait)
        self._recover()
        for _ in range(self.workers * 2):
            self._tasks.append(asyncio.create_task(self._pipeline_loop()))
        for _ in range(self.config.delivery.connections):
            self._tasks.append(asyncio.create_task(self._delivery_loop()))
        self._tasks.append(asyncio.create_task(self._purge_loop()))
        self._tasks.append(asyncio.create_task(self._release_loop()))
        host, port = self.listen
        self.server = await start_listener(self.config, handler, host, port)
        log.info("detox listening on %s:%d, %d pipeline workers", host, port, self.workers)

    async def stop(self) -> None:
        """Stop accepting, then stop the loops; whatever is unfinished stays in the spool."""
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.deliverer.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    def _recover(self) -> None:
        """Resume from the spool: undetoxified entries to the pipeline, the rest to delivery."""
        resumed = 0
        self.spool.adopt_released()  # releases made while we were stopped: now ordinary outgoing
        for queue_id in self.spool.incoming_ids():
            if self.spool.has_state(queue_id):  # crashed after hand-off, before clean-up
                self.spool.finish_incoming(queue_id)
            else:
                self._pipeline_q.put_nowait(queue_id)
                resumed += 1
        for queue_id in self.spool.outgoing_ids():
            try:
                state = self.spool.read_state(queue_id)
            except SpoolError as exc:
                self._move_aside(queue_id, str(exc), stage="spool")
                continue
            self._schedule_delivery(queue_id, state.next_attempt)
            resumed += 1
        if resumed:
            log.info("resuming %d spooled messages", resumed)

    def _later(self, delay: float, queue: asyncio.Queue[str], queue_id: str) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            queue.put_nowait(queue_id)

        handle = loop.call_later(max(delay, 0.0), fire)
        self._timers.add(handle)

    def _schedule_delivery(self, queue_id: str, at: float) -> None:
        delay = at - time.time()
        if delay <= 0:
            self._delivery_q.put_nowait(queue_id)
        else:
            self._later(delay, self._delivery_q, queue_id)

    def _backoff(self, attempts: int) -> float:
        base = self.config.delivery.retry_base_s * (2 ** min(attempts - 1, 20))
        return float(min(base, self.config.delivery.retry_max_s) * random.uniform(0.8, 1.2))

    def _move_aside(self, queue_id: str, why: str, *, stage: str) -> None:
        log.error("%s moved aside (%s): %s", queue_id, stage, why)
        with contextlib.suppress(OSError):
            self.spool.move_aside(queue_id, why)
        with contextlib.suppress(OSError):
            self.audit.write("failed", queue_id, stage=stage, reason=why)

    # -- the pipeline -------------------------------------------------------------------------

    async def _pipeline_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            queue_id = await self._pipeline_q.get()
            assert self._executor is not None
            try:
                future = loop.run_in_executor(self._executor, detoxify_spooled, queue_id)
                report = await asyncio.wait_for(future, self.config.limits.message_timeout_s)
                await asyncio.to_thread(self._handoff, queue_id, report)
            except asyncio.CancelledError:
                raise
            except BrokenProcessPool:
                log.error("%s: pipeline worker died; restarting the worker pool", queue_id)
                self._restart_executor()
                self._pipeline_failed(queue_id, "worker crashed")
            except TimeoutError:
                log.error(
                    "%s: pipeline exceeded %ss; restarting the worker pool",
                    queue_id,
                    self.config.limits.message_timeout_s,
                )
                self._restart_executor()
                self._pipeline_failed(queue_id, "message timeout")
            except Exception as exc:
                log.exception("%s: pipeline failed", queue_id)
                self._pipeline_failed(queue_id, f"{type(exc).__name__}: {exc}")

    def _restart_executor(self) -> None:
        old = self._executor
        self._executor = self._new_executor()
        if old is not None:
            for proc in list(getattr(old, "_processes", {}).values()):
                with contextlib.suppress(Exception):
                    proc.kill()
            old.shutdown(wait=False, cancel_futures=True)

    def _pipeline_failed(self, queue_id: str, why: str) -> None:
        count = self._pipeline_failures.get(queue_id, 0) + 1
        self._pipeline_failures[queue_id] = count
        if count >= MAX_PIPELINE_ATTEMPTS:
            self._pipeline_failures.pop(queue_id, None)
            self._move_aside(queue_id, f"pipeline failed {count} times: {why}", stage="pipeline")
            return
        with contextlib.suppress(OSError):
            self.audit.write("deferred", queue_id, stage="pipeline", reason=why, attempt=count)
        self._later(self._backoff(count), self._pipeline_q, queue_id)

    def _handoff(self, queue_id: str, report: dict[str, Any]) -> None:
        """Index, audit, create the delivery state, then release the incoming entry (in that order)."""
        self.store.index(report, self.config.storage.retention_days)
        self.audit.write(
            "detoxified",
            queue_id,
            original_sha256=report["message"]["sha256"],
            size=report["message"]["size"],
            header_from=report["message"]["from"],
            subject=report["message"]["subject"],
            message_id=report["message"]["message_id"],
            defects=report["message"]["defects"],
            parts=report["parts"],
            actions=report["actions"],
            urls_defanged=report["urls_defanged"],
            output_sha256=report["output_sha256"],
        )
        env = report["envelope"]
        state = DeliveryState(
            queue_id=queue_id,
            mail_from=env["mail_from"],
            recipients={r: RecipientState() for r in env["rcpt_tos"]},
        )
        self.spool.write_state(state)
        self.spool.finish_incoming(queue_id)
        self._pipeline_failures.pop(queue_id, None)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._delivery_q.put_nowait, queue_id)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- delivery -----------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        while True:
            queue_id = await self._delivery_q.get()
            try:
                await self._deliver_one(queue_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: delivery step failed; will retry", queue_id)
                self._later(self.config.delivery.retry_base_s, self._delivery_q, queue_id)

    async def _deliver_one(self, queue_id: str) -> None:
        try:
            state = await asyncio.to_thread(self.spool.read_state, queue_id)
            data = await asyncio.to_thread(self.spool.read_output, queue_id)
        except DetoxError as exc:
            self._move_aside(queue_id, str(exc), stage="delivery")
            return
        pending = state.pending()
        if pending:
            outcomes = await self.deliverer.deliver(state.mail_from, pending, data)
            now = time.time()
            state.attempts += 1
            by_status: dict[Status, list[str]] = {}
            for rcpt in pending:
                outcome = outcomes.get(rcpt)
                status = outcome.status if outcome else Status.DEFERRED
                rstate = state.recipients[rcpt]
                rstate.attempts += 1
                rstate.updated_at = now
                rstate.code = outcome.code if outcome else None
                rstate.response = (outcome.response if outcome else "no outcome")[:500]
                if status is not Status.DEFERRED:
                    rstate.status = status.value
                by_status.setdefault(status, []).append(rcpt)
            if state.pending():
                state.next_attempt = now + self._backoff(state.attempts)
            await asyncio.to_thread(self.spool.write_state, state)
            await asyncio.to_thread(self._audit_delivery, queue_id, state, by_status)
        if state.pending():
            self._schedule_delivery(queue_id, state.next_attempt)
        else:
            await asyncio.to_thread(self.spool.finish_outgoing, queue_id)

    def _audit_delivery(
        self, queue_id: str, state: DeliveryState, by_status: dict[Status, list[str]]
    ) -> None:
        for status, rcpts in by_status.items():
            details = {
                r: {"code": state.recipients[r].code, "response": state.recipients[r].response} for r in rcpts
            }
            extra: dict[str, Any] = {}
            if status is Status.DEFERRED:
                extra["next_attempt"] = state.next_attempt
                extra["attempt"] = state.attempts
            self.audit.write(status.value, queue_id, recipients=details, **extra)

    # -- releases from the admin CLI -------------------------------------------------------------

    async def _release_loop(self) -> None:
        """Adopt releases the CLI wrote to spool/released/; from then on they are ordinary deliveries."""
        while True:
            await asyncio.sleep(RELEASE_POLL_S)
            try:
                for queue_id in await asyncio.to_thread(self.spool.adopt_released):
                    log.info("%s: release queued for delivery", queue_id)
                    self._delivery_q.put_nowait(queue_id)
            except Exception:
                log.exception("picking up releases failed; will retry")

    # -- housekeeping -------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                purged = await asyncio.to_thread(self.store.purge_expired)
                if purged:
                    await asyncio.to_thread(self.audit.write, "purged", None, messages=purged)
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(PURGE_INTERVAL_S)
