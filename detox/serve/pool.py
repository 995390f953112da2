"""The detox runner's worker processes: the pool, and the one-worker pool that isolates suspects.

A message whose attempt broke the pool (a worker crashed) or timed out may have been the cause or an
innocent bystander; its next attempt runs alone in the ``solo`` pool, so that a failure there is its
own. A pool that broke, or holds a worker stuck past the message's time limit, is killed and a
fresh one takes its place. Workers are started (and wait for their ``init_worker``) before any job
goes in, so a message's time limit never includes a worker's start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from detox.config.schema import DetoxConfig
from detox.pipeline.report import MessageReport
from detox.serve.worker import detoxify_spooled, init_worker
from detox.serve.worker import ready as worker_ready
from detox.spool import WorkerResult

log = logging.getLogger(__name__)

WORKER_START_S = 120.0  # at most this long for a fresh pool's workers to start before jobs go in
WORKER_EXIT_S = 10.0  # idle workers asked to exit on stop; killed after this


class MessageTimeout(Exception):
    """The message's attempt outlived ``limits.message_timeout_s``; its worker was killed."""


class WorkerPools:
    """The pool of ``workers`` processes and, when needed, the one-worker ``solo`` pool."""

    def __init__(self, get_config: Callable[[], DetoxConfig], workers: int) -> None:
        self.get_config = get_config
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._solo: ProcessPoolExecutor | None = None  # one worker: retries of suspected crashers
        self.solo_lock = asyncio.Lock()
        self._ready: dict[int, asyncio.Future[list[Any]]] = {}  # per pool (by id()): workers started

    def _new_executor(self, workers: int | None = None) -> ProcessPoolExecutor:
        count = workers or self.workers
        executor = ProcessPoolExecutor(
            max_workers=count,
            # spawn: workers are children of serve itself, so PDEATHSIG reaps them on kill -9
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.get_config(),),
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

    def start(self) -> None:
        self._executor = self._new_executor()

    def renew(self) -> None:
        """Fresh workers (with the config as it is now); jobs under way finish in the old ones."""
        for executor in (self._executor, self._solo):
            if executor is not None:
                self._ready.pop(id(executor), None)
                executor.shutdown(wait=False)
        self._executor = self._new_executor()
        self._solo = None

    async def run(self, queue_id: str, *, solo: bool) -> tuple[MessageReport, WorkerResult]:
        """One message through a worker: its report and result. BrokenProcessPool when the pool
        broke under it, MessageTimeout when it ran past ``limits.message_timeout_s``."""
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
        done, _ = await asyncio.wait({future}, timeout=self.get_config().limits.message_timeout_s)
        if not done:
            future.cancel()
            # The worker is stuck in this message: only killing it frees the slot.
            self._replace_broken(executor)
            raise MessageTimeout
        try:
            result: tuple[MessageReport, WorkerResult] = future.result()
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

    async def shutdown(self, *, interrupted: bool) -> None:
        """Stop the workers: at once if work was ``interrupted`` (or they are still starting), else
        idle ones are asked to exit and killed after ``WORKER_EXIT_S``."""
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
