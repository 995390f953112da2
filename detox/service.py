"""``detox serve``: the listener, the pipeline workers and the delivery queue, wired together.

Flow (each arrow is a durable hand-off on disk)::

    SMTP DATA → spool/incoming (fsync, then 250) → worker process: pipeline → spool/outgoing (inert)
              → index + audit → incoming released (the commit) → delivery (per recipient, retried
              with backoff) → done
                                          └→ given up (5xx, or delivery.max_age_days) → DSN → bounce_via

On start every spooled entry is picked up again, so ``kill -9`` loses nothing that was acknowledged.
SIGTERM drains: no new sessions, sessions in DATA and work under way get ``server.shutdown_timeout_s``
to finish, the rest is handed back to the spool. SIGHUP (or ``detox reload``) reloads the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import ssl
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from detox.audit import AuditLog
from detox.config.loader import DeliverTo, load_config, parse_deliver_to
from detox.config.schema import DetoxConfig
from detox.delivery import Deliverer, make_deliverer
from detox.delivery.base import Outcome, Status
from detox.delivery.retry import backoff, next_attempt
from detox.dsn import FailedRecipient, bounce_block, build_dsn, enhanced_status, header_section
from detox.errors import ConfigError, SpoolCorrupt, SpoolError, StoreError
from detox.pipeline.report import MessageReport
from detox.smtp.handler import Backlog, Handler, RefusalLog
from detox.smtp.server import SessionGate, start_listener, tls_context
from detox.spool import (
    KIND_DSN,
    KIND_MESSAGE,
    DeliveryState,
    PipelineTries,
    RecipientState,
    ServeLock,
    Spool,
    new_queue_id,
)
from detox.store import Store
from detox.worker import detoxify_spooled, init_worker
from detox.worker import ready as worker_ready

log = logging.getLogger(__name__)

PURGE_INTERVAL_S = 3600.0
STALE_TMP_S = 6 * 3600.0  # spool/tmp files older than this are leftovers of a killed process
CONTROL_POLL_S = 1.0  # how soon a release, `detox queue retry|flush` or `detox reload` is picked up
REFUSAL_FLUSH_S = 1.0
DAY_S = 86400.0
# Kept from the running configuration on reload: they take effect at the next start.
RESTART_KEYS = ("server.listen", "pipeline.workers", "delivery.connections", "storage")
# Sections the worker processes read: a change starts fresh workers (running jobs finish first).
PIPELINE_SECTIONS = ("limits", "pipeline", "filters", "body", "urls", "notice", "sandbox", "policy")
# Failures that may not be the message's own fault: the pool broke or was killed under it.
_ISOLATE = ("worker crashed", "message timeout")
WORKER_START_S = 120.0  # at most this long for a fresh pool's workers to start before jobs go in
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
WORKER_EXIT_S = 10.0  # idle workers asked to exit on stop; killed after this
FRESH_STATES = 10_000  # at most this many handed-off states kept in memory for their first delivery
FRESH_BYTES = 32 * 1024 * 1024  # and their messages while the total is under this
FRESH_MESSAGE_BYTES = 1024 * 1024  # each message up to this size (larger ones are read when delivered)


class _Stage:
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


class _MessageTimeout(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Bounce:
    """What became of the failed recipients of one delivery attempt."""

    recipients: tuple[str, ...]
    dsn_id: str | None  # queued DSN, or None
    blocked: str | None  # why none was sent


def _changed_keys(old: DetoxConfig, new: DetoxConfig) -> list[str]:
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
        self.config = config
        self.config_path = config_path
        self.listen = listen
        self.deliver_to = deliver_to
        self._deliver_to_fixed = deliver_to_fixed  # --deliver-to given: a reload keeps it
        self.spool = Spool(config.state_path("spool"), fsync=config.storage.fsync)
        self.store = Store(config.state_path(), fsync=config.storage.fsync)
        self.audit = AuditLog.from_config(config)
        self.backlog = Backlog()
        self.refusals = RefusalLog(self.audit)
        self.deliverer: Deliverer = make_deliverer(deliver_to, config)
        self.bounce_deliverer: Deliverer | None = self._make_bounce_deliverer(config)
        self.workers = config.pipeline.workers or os.cpu_count() or 1
        self._tls = tls_context(config)
        self._executor: ProcessPoolExecutor | None = None
        self._solo: ProcessPoolExecutor | None = None  # one worker: retries of suspected crashers
        self._solo_lock = asyncio.Lock()
        self._reload_lock = asyncio.Lock()
        self._ready: dict[int, asyncio.Future[list[Any]]] = {}  # per pool (by id()): workers started
        self._pipeline = _Stage()
        self._delivery = _Stage()
        self._work: list[asyncio.Task[None]] = []  # loops that do work: drained on SIGTERM
        self._housekeeping: list[asyncio.Task[None]] = []
        # States just written by the hand-off (and their messages, when small), so that the first
        # delivery attempt need not read them back (serve is the only writer of outgoing/ while it
        # runs). Touched on the event loop only.
        self._fresh: dict[str, tuple[DeliveryState, bytes | None]] = {}  # (state, message if small)
        self._fresh_bytes = 0
        self._in_use: Counter[int] = Counter()  # deliveries under way per deliverer (by id())
        self._retiring: list[Deliverer] = []  # replaced by a reload: closed once unused
        self._stopping = False
        self._lock: ServeLock | None = None
        self.gate: SessionGate | None = None
        self.handler: Handler | None = None
        self.server: asyncio.Server | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _new_executor(self, workers: int | None = None) -> ProcessPoolExecutor:
        count = workers or self.workers
        executor = ProcessPoolExecutor(
            max_workers=count,
            # spawn: workers are children of serve itself, so PDEATHSIG reaps them on kill -9
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.config,),
        )
        # Start every worker now, so that a message's time limit does not include a worker's start
        # (a second or more under load: an innocent message would time out on a fresh pool).
        loop = asyncio.get_running_loop()
        started = [loop.run_in_executor(executor, worker_ready) for _ in range(count)]
        self._ready[id(executor)] = asyncio.gather(*started, return_exceptions=True)
        return executor

    async def _wait_ready(self, executor: ProcessPoolExecutor) -> None:
        ready = self._ready.get(id(executor))
        if ready is not None and not ready.done():
            await asyncio.wait({ready}, timeout=WORKER_START_S)

    def _make_bounce_deliverer(self, config: DetoxConfig) -> Deliverer | None:
        if not config.delivery.bounce_via:
            return None
        return make_deliverer(parse_deliver_to(config.delivery.bounce_via, key="delivery.bounce_via"), config)

    async def start(self) -> None:
        self._lock = self.spool.lock_for_serve()
        self._executor = self._new_executor()
        self.gate = SessionGate(lambda: self.config, self.refusals)
        self.handler = Handler(
            lambda: self.config, self.spool, self.audit, self.backlog, self.refusals, self._pipeline.now
        )
        await asyncio.to_thread(self.spool.adopt_released)
        await self._recover()
        for _ in range(self.workers * 2):
            self._work.append(asyncio.create_task(self._pipeline_loop()))
        for _ in range(self.config.delivery.connections):
            self._work.append(asyncio.create_task(self._delivery_loop()))
        self._housekeeping += [
            asyncio.create_task(self._purge_loop()),
            asyncio.create_task(self._control_loop()),
            asyncio.create_task(self._refusal_loop()),
        ]
        host, port = self.listen
        self.server = await start_listener(
            lambda: self.config, lambda: self._tls, self.handler, self.gate, host, port
        )
        log.info("detox listening on %s:%d, %d pipeline workers", host, port, self.workers)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Drain: stop accepting, let work under way finish within the grace time, hand back the rest."""
        self._stopping = True
        grace = self.config.server.shutdown_timeout_s
        deadline = time.monotonic() + grace
        if self.server is not None:
            self.server.close()
        if self.handler is not None:
            self.handler.draining = True
        waits: list[asyncio.Task[Any]] = list(self._work)
        if self.gate is not None:
            self.gate.drain()
            waits.append(asyncio.create_task(self.gate.wait_empty(grace)))
        self._pipeline.stop(self.workers * 2)
        self._delivery.stop(self.config.delivery.connections)
        unfinished: set[asyncio.Task[Any]] = set()
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=max(deadline - time.monotonic(), 0.1))
        if self.gate is not None and self.gate.sessions:
            log.warning("closing %d SMTP session(s) still open after %gs", len(self.gate.sessions), grace)
            self.gate.abort_all()
        interrupted = [t for t in unfinished if t in self._work]
        if interrupted:
            log.warning(
                "handing back %d unfinished detoxification/delivery task(s) to the spool", len(interrupted)
            )
        for task in [*unfinished, *self._housekeeping]:
            task.cancel()
        await asyncio.gather(*unfinished, *self._housekeeping, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.refusals.flush, force=True)
        for deliverer in [self.deliverer, self.bounce_deliverer, *self._retiring]:
            if deliverer is not None:
                with contextlib.suppress(Exception):
                    await deliverer.aclose()
        for executor in (self._executor, self._solo):
            if executor is not None:
                ready = self._ready.get(id(executor))
                # Workers still starting have had no job yet: no need to wait for their start.
                if interrupted or (ready is not None and not ready.done()):
                    self._kill(executor)
                down = asyncio.ensure_future(
                    asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
                )
                if not (await asyncio.wait({down}, timeout=WORKER_EXIT_S))[0]:
                    log.warning("pipeline workers did not exit within %gs; killing them", WORKER_EXIT_S)
                    self._kill(executor)
                    await down
        self.store.close()
        self.audit.close()
        if self._lock is not None:
            self._lock.release()
        log.info("detox stopped")

    async def _recover(self) -> None:
        """Resume from the spool: undetoxified entries to the pipeline, the rest to delivery."""
        sizes = await asyncio.to_thread(self.spool.incoming_sizes)
        resumed = 0
        for queue_id in sorted(sizes):
            # (a state next to it is a worker's result not yet handed off: it stays inert, see
            # Spool.outgoing_ids, and the message is detoxified again)
            self.backlog.add(queue_id, sizes[queue_id])
            tries = await asyncio.to_thread(self.spool.read_tries, queue_id)
            if tries.in_flight:
                # serve went down during this attempt (crash, kill -9, power loss): it counts,
                # so a message that takes serve down is not retried for ever; try again at once.
                await self._pipeline_failed(
                    queue_id, "detox serve stopped during detoxification", retry_at=time.time()
                )
            else:
                self._pipeline.at(queue_id, tries.next_attempt)
            resumed += 1
        for queue_id in await asyncio.to_thread(self.spool.outgoing_ids):
            try:
                state = await asyncio.to_thread(self.spool.read_state, queue_id)
            except SpoolCorrupt as exc:
                await asyncio.to_thread(self._move_aside, queue_id, str(exc), "spool")
                continue
            except SpoolError as exc:
                log.error("%s: %s; trying again later", queue_id, exc)
                self._delivery.at(queue_id, time.time() + self.config.delivery.retry_base_s)
                continue
            self._delivery.at(queue_id, state.next_attempt)
            resumed += 1
        if resumed:
            log.info("resuming %d spooled messages", resumed)

    def _move_aside(self, queue_id: str, why: str, stage: str) -> None:
        """Blocking (call in a thread): the entry to spool/failed/, with a `failed` audit record."""
        log.error("%s moved aside (%s): %s", queue_id, stage, why)
        try:
            self.spool.move_aside(queue_id, why)
        except (OSError, SpoolError):
            log.exception("%s: could not move it aside; it stays where it is", queue_id)
        with contextlib.suppress(OSError):
            self.audit.write("failed", queue_id, stage=stage, reason=why, moved_to="spool/failed")

    # -- the pipeline -------------------------------------------------------------------------

    async def _pipeline_loop(self) -> None:
        while True:
            queue_id = await self._pipeline.take()
            if queue_id is None:
                return
            retry = False
            try:
                if self._stopping:
                    return
                await self._detoxify(queue_id)
            except Exception:  # a bug of ours must not stop this loop; the entry stays in the spool
                log.exception("%s: detoxification step failed; will retry", queue_id)
                retry = True
            finally:
                self._pipeline.done(queue_id)
            if retry:
                self._pipeline.at(queue_id, time.time() + self.config.delivery.retry_base_s)

    async def _detoxify(self, queue_id: str) -> None:
        config = self.config
        try:
            tries = await asyncio.to_thread(self._begin_attempt, queue_id)
        except SpoolError as exc:  # e.g. the disk is full: try later, the entry itself is safe
            log.error("%s: cannot record the attempt (%s); retrying later", queue_id, exc)
            self._pipeline.at(queue_id, time.time() + config.delivery.retry_base_s)
            return
        if tries is None:
            self.backlog.remove(queue_id)  # done already (a retry asked while it was under way)
            return
        if tries.attempts > config.pipeline.max_attempts:  # the limit was lowered by a reload
            await self._pipeline_failed(queue_id, tries.last_error or "too many attempts")
            return
        isolate = tries.last_error.startswith(_ISOLATE)
        handed_off = False
        try:
            if isolate:
                # It may have been the one that broke the pool, or an innocent bystander: one
                # worker of its own decides, and its failure then is its own.
                async with self._solo_lock:
                    report, state = await self._run_job(queue_id, solo=True)
            else:
                report, state = await self._run_job(queue_id, solo=False)
            handed_off = True  # from here a cancellation leaves the hand-off to finish in its thread
            data = await asyncio.shield(asyncio.to_thread(self._handoff, queue_id, report))
        except asyncio.CancelledError:
            if not handed_off:
                with contextlib.suppress(OSError, SpoolError):
                    self.spool.hand_back(queue_id)  # our shutdown: the attempt does not count
            raise
        except SpoolCorrupt as exc:
            # The worker could not read the entry (damaged, not ours): aside at once, never retried.
            await asyncio.to_thread(self._move_aside, queue_id, str(exc), "spool")
            self.backlog.remove(queue_id)
            return
        except (SpoolError, StoreError) as exc:
            # Our disk, not the message (e.g. full): the attempt does not count; try again later.
            await self._pipeline_deferred_by_us(queue_id, str(exc))
            return
        except OSError as exc:
            if exc.errno in _DISK_ERRNOS:  # e.g. the audit log's disk is full
                await self._pipeline_deferred_by_us(queue_id, f"{type(exc).__name__}: {exc}")
            else:
                log.exception("%s: pipeline failed", queue_id)
                await self._pipeline_failed(queue_id, f"{type(exc).__name__}: {exc}")
            return
        except BrokenProcessPool:
            log.error("%s: pipeline worker died", queue_id)
            await self._pipeline_failed(queue_id, "worker crashed")
            return
        except _MessageTimeout:
            log.error("%s: pipeline exceeded %ss", queue_id, config.limits.message_timeout_s)
            await self._pipeline_failed(queue_id, "message timeout")
            return
        except Exception as exc:
            log.exception("%s: pipeline failed", queue_id)
            await self._pipeline_failed(queue_id, f"{type(exc).__name__}: {exc}")
            return
        self.backlog.remove(queue_id)
        if len(self._fresh) < FRESH_STATES:
            if data is not None and self._fresh_bytes + len(data) > FRESH_BYTES:
                data = None
            self._fresh_bytes += len(data) if data is not None else 0
            self._fresh[queue_id] = (state, data)
        self._delivery.now(state.queue_id)

    def _begin_attempt(self, queue_id: str) -> PipelineTries | None:
        """Blocking: count the attempt, or None when the entry is gone (one thread hop for both)."""
        if not self.spool.has_incoming(queue_id):
            return None
        return self.spool.begin_attempt(queue_id)

    async def _run_job(self, queue_id: str, *, solo: bool) -> tuple[MessageReport, DeliveryState]:
        loop = asyncio.get_running_loop()
        if solo:
            if self._solo is None:
                self._solo = self._new_executor(1)
            executor = self._solo
        else:
            assert self._executor is not None
            executor = self._executor
        await self._wait_ready(executor)
        try:
            future = loop.run_in_executor(executor, detoxify_spooled, queue_id)
        except BrokenProcessPool:  # broken by another message a moment ago
            self._replace_broken(executor)
            raise
        done, _ = await asyncio.wait({future}, timeout=self.config.limits.message_timeout_s)
        if not done:
            future.cancel()
            # The worker is stuck in this message: only killing it frees the slot.
            self._replace_broken(executor)
            raise _MessageTimeout
        try:
            result: tuple[MessageReport, DeliveryState] = future.result()
        except BrokenProcessPool:
            self._replace_broken(executor)
            raise
        return result

    def _replace_broken(self, executor: ProcessPoolExecutor) -> None:
        """Kill a broken or stuck pool; a fresh one takes its place if it was in use."""
        if executor is self._executor:
            self._executor = self._new_executor()
        elif executor is self._solo:
            self._solo = None
        self._ready.pop(id(executor), None)
        self._kill(executor)
        executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _kill(executor: ProcessPoolExecutor) -> None:
        processes: dict[int, Any] = getattr(executor, "_processes", None) or {}
        for proc in list(processes.values()):
            with contextlib.suppress(Exception):
                proc.kill()

    async def _pipeline_deferred_by_us(self, queue_id: str, why: str) -> None:
        log.error("%s: cannot store the result (%s); retrying later", queue_id, why)
        when = time.time() + self.config.delivery.retry_base_s
        with contextlib.suppress(OSError, SpoolError):
            await asyncio.to_thread(self.spool.hand_back, queue_id)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                self.audit.write,
                "deferred",
                queue_id,
                stage="pipeline",
                reason=why,
                counted=False,
                next_attempt=when,
            )
        self._pipeline.at(queue_id, when)

    async def _pipeline_failed(self, queue_id: str, why: str, *, retry_at: float | None = None) -> None:
        config = self.config
        tries = await asyncio.to_thread(self.spool.read_tries, queue_id)
        count = max(tries.attempts, 1)
        if count >= config.pipeline.max_attempts:
            reason = f"detoxification failed {count} times, last: {why}"
            await asyncio.to_thread(self._move_aside, queue_id, reason, "pipeline")
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
                "deferred",
                queue_id,
                stage="pipeline",
                reason=why,
                attempt=count,
                max_attempts=config.pipeline.max_attempts,
                next_attempt=when,
            )
        self._pipeline.at(queue_id, when)

    def _handoff(self, queue_id: str, report: MessageReport) -> bytes | None:
        """Index, audit, then release the incoming entry (in that order); the message if small.

        The worker wrote the message and its delivery state already (fsync'd); they become live
        when the incoming entry goes, so the ``detoxified`` record is on disk before. A crash before
        that detoxifies the message again (a second ``detoxified`` record, one delivery). The
        removal is not fsync'd: a power failure that undoes it detoxifies and delivers the message
        again (a duplicate); ``_record_attempt`` makes it durable before it records any progress.
        """
        self.store.index(report, self.config.storage.retention_days)
        self.audit.write(
            "detoxified",
            queue_id,
            original_sha256=report.message.sha256,
            size=report.message.size,
            header_from=report.message.header_from,
            subject=report.message.subject,
            message_id=report.message.message_id,
            defects=list(report.message.defects),
            parts=report.parts_json(),
            actions=report.actions,
            urls_defanged=report.urls_defanged,
            output_sha256=report.output_sha256,
        )
        self.spool.finish_incoming(queue_id)
        # The message goes to delivery next: read it now, in this thread, while it is in the page
        # cache, so that the first attempt needs no thread hop of its own (large ones are read then).
        data = None
        with contextlib.suppress(SpoolError):
            data = self.spool.read_output_if_small(queue_id, FRESH_MESSAGE_BYTES)
        return data

    def _backoff(self, attempts: int) -> float:
        return backoff(attempts, self.config.delivery.retry_base_s, self.config.delivery.retry_max_s)

    # -- delivery -----------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        while True:
            queue_id = await self._delivery.take()
            if queue_id is None:
                return
            when: float | None = None
            try:
                if self._stopping:
                    return
                when = await self._deliver_one(queue_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: delivery step failed; will retry", queue_id)
                when = time.time() + self.config.delivery.retry_base_s
            finally:
                self._delivery.done(queue_id)
            if when is not None:
                self._delivery.at(queue_id, when)

    async def _deliver_one(self, queue_id: str) -> float | None:
        """One attempt for the pending recipients; the time of the next one, or None when done."""
        try:
            fresh = self._fresh.pop(queue_id, None)
            if fresh is None:
                entry = await asyncio.to_thread(self._read_entry, queue_id)
            elif fresh[1] is not None:  # just handed off, with its message: no thread hop
                self._fresh_bytes -= len(fresh[1])
                entry = (fresh[0], fresh[1])
            else:  # the state on disk is this one; the message was too large to keep
                entry = (fresh[0], await asyncio.to_thread(self.spool.read_output, queue_id))
        except SpoolCorrupt as exc:
            await asyncio.to_thread(self._move_aside, queue_id, str(exc), "delivery")
            return None
        # (any other SpoolError: an I/O problem of ours; the delivery loop tries again later)
        if entry is None:
            return None  # finished while it waited (e.g. a retry asked for a done one)
        state, data = entry
        pending = state.pending()
        if pending:
            config = self.config
            outcomes = await self._send(state, pending, data)
            now = time.time()
            deadline = state.received_at + config.delivery.max_age_days * DAY_S
            state.attempts += 1
            by_status: dict[str, list[str]] = {}
            failed: list[str] = []
            for rcpt in pending:
                outcome = outcomes.get(rcpt)
                status = outcome.status if outcome else Status.DEFERRED
                rstate = state.recipients[rcpt]
                rstate.attempts += 1
                rstate.updated_at = now
                rstate.code = outcome.code if outcome else None
                rstate.response = (outcome.response if outcome else "no outcome")[:500]
                if status is Status.FAILED:
                    rstate.reason = "rejected"
                    failed.append(rcpt)
                if status is not Status.DEFERRED:
                    rstate.status = status.value
                by_status.setdefault(status.value, []).append(rcpt)
            if state.pending() and now >= deadline:
                expired = state.pending()
                for rcpt in expired:
                    state.recipients[rcpt].status = Status.FAILED.value
                    state.recipients[rcpt].reason = "expired"
                failed += expired
                by_status["expired"] = expired
                by_status[Status.DEFERRED.value] = [
                    r for r in by_status.get(Status.DEFERRED.value, []) if r not in expired
                ]
            if state.pending():
                state.next_attempt = next_attempt(now, self._backoff(state.attempts), deadline)
            bounce = await asyncio.to_thread(self._record_attempt, state, failed, data, by_status)
            if bounce is not None and bounce.dsn_id is not None:
                self._delivery.now(bounce.dsn_id)
            if not state.pending():
                return None  # _record_attempt removed the entry
        if state.pending():
            return state.next_attempt
        await asyncio.to_thread(self.spool.finish_outgoing, queue_id)
        return None

    def _record_attempt(
        self, state: DeliveryState, failed: list[str], data: bytes, by_status: dict[str, list[str]]
    ) -> _Bounce | None:
        """Blocking, one thread hop for what follows an attempt: the DSN for ``failed`` recipients,
        the new state, the audit records, and the entry's removal once no recipient is pending.

        When every recipient is delivered now, the state is not written only to be removed: the
        audit record (fsync'd) comes first, then the removal. A crash between the two delivers the
        message again (at least once), never loses it.
        """
        done = not state.pending()
        if state.kind == KIND_MESSAGE and (not done or failed):
            # The hand-off's removal of incoming/ID.msg is not fsync'd: make it durable before
            # progress is recorded, or a power failure could bring the entry back to be detoxified
            # again, with a fresh state (every recipient pending, another DSN).
            self.spool.sync_incoming()
        bounce = self._bounce(state, failed, data) if failed else None
        if not done or failed:
            self.spool.write_state(state)  # failures: which DSN went out must survive a crash
        self._audit_delivery(state, by_status, bounce)
        if done:
            self.spool.finish_outgoing(state.queue_id)
        return bounce

    def _read_entry(self, queue_id: str) -> tuple[DeliveryState, bytes] | None:
        """Blocking: an outgoing entry's state and message, or None when it is gone."""
        if not self.spool.has_state(queue_id):
            return None
        return self.spool.read_state(queue_id), self.spool.read_output(queue_id)

    async def _send(self, state: DeliveryState, recipients: list[str], data: bytes) -> dict[str, Outcome]:
        deliverer = self.bounce_deliverer if state.kind == KIND_DSN else self.deliverer
        if deliverer is None:  # DSNs were turned off (reload) while this one waited
            return {r: Outcome(Status.DEFERRED, None, "delivery.bounce_via is not set") for r in recipients}
        key = id(deliverer)
        self._in_use[key] += 1
        try:
            return await deliverer.deliver(state.mail_from, recipients, data)
        finally:
            self._in_use[key] -= 1
            await self._close_retired()

    async def _close_retired(self) -> None:
        for deliverer in list(self._retiring):
            if self._in_use[id(deliverer)] <= 0:
                self._retiring.remove(deliverer)
                self._in_use.pop(id(deliverer), None)
                with contextlib.suppress(Exception):
                    await deliverer.aclose()

    def _bounce(self, state: DeliveryState, failed: list[str], data: bytes) -> _Bounce:
        """Blocking: a DSN for ``failed`` recipients, queued in the spool, or the reason why not."""
        config = self.config
        blocked = bounce_block(state, config)
        if blocked is not None:
            for rcpt in failed:
                state.recipients[rcpt].dsn = f"suppressed: {blocked}"
            return _Bounce(tuple(failed), None, blocked)
        items = []
        for rcpt in failed:
            r = state.recipients[rcpt]
            expired = r.reason == "expired"
            items.append(
                FailedRecipient(
                    address=rcpt,
                    status=enhanced_status(r.code, r.response, expired=expired),
                    code=r.code,
                    response=r.response,
                    last_attempt=r.updated_at or time.time(),
                    expired=expired,
                )
            )
        headers = self._original_headers(state, data)
        dsn_id = new_queue_id()
        dsn = build_dsn(config, state, items, headers, dsn_id=dsn_id)
        dsn_state = DeliveryState(
            queue_id=dsn_id,
            mail_from="",  # RFC 5321 §4.5.5: a DSN has the null sender, so it is never bounced
            recipients={state.mail_from: RecipientState()},
            kind=KIND_DSN,
        )
        self.spool.queue_message(dsn_state, dsn)
        for rcpt in failed:
            state.recipients[rcpt].dsn = dsn_id
        return _Bounce(tuple(failed), dsn_id, None)

    def _original_headers(self, state: DeliveryState, data: bytes) -> bytes:
        """The original's header section (from the store); the detoxified copy's if it is gone."""
        if state.original_sha256:
            try:
                with open(self.store.path_for(state.original_sha256), "rb") as fh:
                    return header_section(fh.read(256 * 1024))
            except OSError:
                log.warning("%s: original gone; the DSN returns the detoxified headers", state.queue_id)
        return header_section(data)

    def _audit_delivery(
        self, state: DeliveryState, by_status: dict[str, list[str]], bounce: _Bounce | None
    ) -> None:
        queue_id = state.queue_id
        records: list[dict[str, Any]] = []
        for status, rcpts in by_status.items():
            if not rcpts:
                continue
            details = {
                r: {"code": state.recipients[r].code, "response": state.recipients[r].response} for r in rcpts
            }
            extra: dict[str, Any] = {}
            event = status
            if status == Status.DEFERRED.value:
                extra["next_attempt"] = state.next_attempt
                extra["attempt"] = state.attempts
            elif status == Status.FAILED.value:
                extra["reason"] = "rejected"
            elif status == "expired":
                event = Status.FAILED.value
                extra["reason"] = "expired"
                extra["max_age_days"] = self.config.delivery.max_age_days
            if state.kind != KIND_MESSAGE:
                extra["kind"] = state.kind
            records.append(self.audit.record(event, queue_id, recipients=details, **extra))
        if bounce is not None and bounce.dsn_id is not None:
            records.append(
                self.audit.record(
                    "bounced",
                    queue_id,
                    dsn_id=bounce.dsn_id,
                    to=state.mail_from,
                    recipients=list(bounce.recipients),
                    via=self.config.delivery.bounce_via,
                )
            )
        elif bounce is not None:
            records.append(
                self.audit.record(
                    "bounce_suppressed",
                    queue_id,
                    reason=bounce.blocked,
                    mail_from=state.mail_from,
                    recipients=list(bounce.recipients),
                )
            )
        self.audit.append(records)  # one group: one fsync

    # -- requests from the CLI: releases, queue retry/flush, reload -----------------------------

    async def _control_loop(self) -> None:
        while True:
            try:
                await self._control_once()
            except Exception:
                log.exception("handling spool requests failed; will retry")
            await asyncio.sleep(CONTROL_POLL_S)

    async def _control_once(self) -> None:
        for queue_id in await asyncio.to_thread(self.spool.adopt_released):
            log.info("%s: release queued for delivery", queue_id)
            self._delivery.now(queue_id)
        for name in await asyncio.to_thread(self.spool.take_requests):
            if name == "flush":
                count = self._pipeline.flush() + self._delivery.flush()
                log.info("queue flush: %d waiting message(s) to be tried now", count)
            elif name.startswith("retry."):
                await self._retry(name.removeprefix("retry."))
            elif name == "reload":
                ok, message = await self.reload("detox reload")
                await asyncio.to_thread(
                    self.spool.write_result, "reload", {"ok": ok, "message": message, "at": time.time()}
                )
            else:
                log.warning("unknown request %r in spool/control/ ignored", name)

    async def _retry(self, queue_id: str) -> None:
        where = await asyncio.to_thread(self.spool.restore_aside, queue_id)
        if where is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.audit.write, "requeued", queue_id, stage=where)
        if where == "incoming" or (
            where is None and await asyncio.to_thread(self.spool.has_incoming, queue_id)
        ):
            if where == "incoming":
                self.backlog.add(queue_id, await asyncio.to_thread(self.spool.incoming_size, queue_id))
            self._pipeline.now(queue_id)
        elif where == "outgoing" or await asyncio.to_thread(self.spool.has_state, queue_id):
            self._delivery.now(queue_id)
        else:
            log.warning("queue retry: %s is not in the spool", queue_id)
            return
        log.info("queue retry: %s to be tried now", queue_id)

    async def reload(self, source: str) -> tuple[bool, str]:
        """Re-read the config file; apply what can be applied live, keep the running one if invalid."""
        async with self._reload_lock:  # a SIGHUP and a `detox reload` at once: one after the other
            return await self._reload(source)

    async def _reload(self, source: str) -> tuple[bool, str]:
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
            tls = await asyncio.to_thread(tls_context, new)  # reads the certificate and key files
            deliver_to = (
                self.deliver_to if self._deliver_to_fixed else parse_deliver_to(new.delivery.deliver_to)
            )
        except (ConfigError, ssl.SSLError, OSError) as exc:
            message = f"configuration not reloaded (the running one stays): {exc}"
            log.error("%s (%s)", message, source)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(
                    self.audit.write, "reloaded", None, ok=False, source=source, error=str(exc)
                )
            return False, message
        old = self.config
        changed = _changed_keys(old, new)
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
        self.config = new
        self._tls = tls
        self.audit.rotate_bytes = new.audit.rotate_bytes
        logging.getLogger().setLevel(new.logging.level)
        if any(k.split(".")[0] in PIPELINE_SECTIONS for k in changed if k not in restart):
            # Fresh workers with the new config; jobs under way finish in the old ones.
            for executor in (self._executor, self._solo):
                if executor is not None:
                    self._ready.pop(id(executor), None)
                    executor.shutdown(wait=False)
            self._executor = self._new_executor()
            self._solo = None
        if (
            old.delivery != new.delivery
            or deliver_to != self.deliver_to
            or old.server.hostname != new.server.hostname
        ):
            self._retiring += [d for d in (self.deliverer, self.bounce_deliverer) if d is not None]
            self.deliver_to = deliver_to
            self.deliverer = make_deliverer(deliver_to, new)
            self.bounce_deliverer = self._make_bounce_deliverer(new)
            await self._close_retired()
        message = "configuration reloaded" + (
            f"; changed: {', '.join(changed)}" if changed else "; no change"
        )
        if restart:
            message += f"; needs a restart to take effect: {', '.join(restart)}"
        log.info("%s (%s)", message, source)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(
                self.audit.write,
                "reloaded",
                None,
                ok=True,
                source=source,
                changed=changed,
                restart_needed=restart,
            )
        return True, message

    # -- housekeeping -------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                stale = await asyncio.to_thread(self.spool.remove_stale_tmp, STALE_TMP_S)
                if stale:
                    log.info("removed %d stale file(s) from spool/tmp", stale)
            except OSError:
                log.exception("cleaning spool/tmp failed")
            try:
                purged = await asyncio.to_thread(self.store.purge_expired)
                if purged:
                    await asyncio.to_thread(self.audit.write, "purged", None, messages=purged)
            except Exception:
                log.exception("retention purge failed")
            await asyncio.sleep(PURGE_INTERVAL_S)

    async def _refusal_loop(self) -> None:
        while True:
            await asyncio.sleep(REFUSAL_FLUSH_S)
            try:
                await asyncio.to_thread(self.refusals.flush)
            except Exception:
                log.exception("writing refusal records failed")
