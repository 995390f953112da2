"""The delivery runner: live outgoing entries to LGWAN (or a DSN to ``delivery.bounce_via``).

Per attempt: the pending recipients are sent at once; each recipient's outcome updates its own state
(delivered, failed for good on a 5xx, or still pending with the next attempt after an exponential
backoff); a recipient still pending after ``delivery.max_age_days`` fails as expired. Recipients
given up on get their sender a DSN (``detox.delivery.dsn``) unless
:func:`detox.delivery.dsn.bounce_block` forbids one. Then ``Spool.record_progress`` writes it all in
its order, with the attempt's audit records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from detox.audit import AuditLog
from detox.audit.events import (
    AuditEvent,
    Bounced,
    BounceSuppressed,
    Delivered,
    DeliveryDeferred,
    DeliveryFailed,
    RecipientReply,
)
from detox.config.loader import DeliverTo, parse_deliver_to
from detox.config.schema import DetoxConfig
from detox.delivery import Deliverer, make_deliverer
from detox.delivery.base import Outcome, Status
from detox.delivery.dsn import FailedRecipient, bounce_block, build_dsn, enhanced_status, header_section
from detox.delivery.retry import backoff, next_attempt
from detox.errors import SpoolCorrupt, SpoolError
from detox.quarantine.store import Store
from detox.serve.stage import Stage, move_aside
from detox.spool import (
    DeliveryState,
    EntryKind,
    FailReason,
    RecipientState,
    RecipientStatus,
    Spool,
    new_queue_id,
)

log = logging.getLogger(__name__)

DAY_S = 86400.0
FRESH_STATES = 10_000  # at most this many handed-off states kept in memory for their first delivery
FRESH_BYTES = 32 * 1024 * 1024  # and their messages while the total is under this
EXPIRED = "expired"  # the audit's name for the recipients that failed by age in an attempt


@dataclass(frozen=True, slots=True)
class Bounce:
    """What became of the failed recipients of one delivery attempt."""

    recipients: tuple[str, ...]
    dsn_id: str | None  # queued DSN, or None
    blocked: str | None  # why none was sent


@dataclass(slots=True)
class AttemptOutcome:
    """The recipients of one attempt by what became of them (the audit's grouping) and those given up on."""

    by_status: dict[str, list[str]]  # "delivered", "deferred", "failed", "expired": in first-seen order
    failed: list[str]


def apply_outcomes(
    state: DeliveryState, pending: list[str], outcomes: dict[str, Outcome], now: float, deadline: float
) -> AttemptOutcome:
    """Update ``state`` in memory with one attempt's per-recipient ``outcomes`` (a recipient without
    one is deferred); recipients still pending at ``deadline`` (the maximum age) fail as expired."""
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
            rstate.reason = FailReason.REJECTED
            failed.append(rcpt)
        if status is not Status.DEFERRED:
            rstate.status = RecipientStatus(status.value)
        by_status.setdefault(status.value, []).append(rcpt)
    if state.pending() and now >= deadline:
        expired = state.pending()
        for rcpt in expired:
            state.recipients[rcpt].status = RecipientStatus.FAILED
            state.recipients[rcpt].reason = FailReason.EXPIRED
        failed += expired
        by_status[EXPIRED] = expired
        by_status[Status.DEFERRED.value] = [
            r for r in by_status.get(Status.DEFERRED.value, []) if r not in expired
        ]
    return AttemptOutcome(by_status, failed)


class DeliveryRunner:
    def __init__(
        self,
        get_config: Callable[[], DetoxConfig],
        spool: Spool,
        store: Store,
        audit: AuditLog,
        deliver_to: DeliverTo,
    ) -> None:
        self.get_config = get_config
        self.spool = spool
        self.store = store
        self.audit = audit
        config = get_config()
        self.deliver_to = deliver_to
        self.deliverer: Deliverer = make_deliverer(deliver_to, config)
        self.bounce_deliverer: Deliverer | None = _make_bounce_deliverer(config)
        self.stage = Stage()
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        # States just written by the hand-off (and their messages, when small), so that the first
        # delivery attempt need not read them back (serve is the only writer of outgoing/ while it
        # runs). Touched on the event loop only.
        self._fresh: dict[str, tuple[DeliveryState, bytes | None]] = {}  # (state, message if small)
        self._fresh_bytes = 0
        self._in_use: Counter[int] = Counter()  # deliveries under way per deliverer (by id())
        self._retiring: list[Deliverer] = []  # replaced by a reload: closed once unused
        self._consumers = 0

    def start(self) -> None:
        """The loops that take entries off the stage, one per ``delivery.connections``."""
        self._consumers = self.get_config().delivery.connections
        for _ in range(self._consumers):
            self.tasks.append(asyncio.create_task(self._loop()))

    def submit(self, queue_id: str) -> None:
        """An entry to try now (a release, a DSN, a retry)."""
        self.stage.now(queue_id)

    def handed_off(self, state: DeliveryState, data: bytes | None) -> None:
        """A message the detox runner just handed off: kept in memory for its first attempt."""
        queue_id = state.queue_id
        if len(self._fresh) < FRESH_STATES:
            if data is not None and self._fresh_bytes + len(data) > FRESH_BYTES:
                data = None
            self._fresh_bytes += len(data) if data is not None else 0
            self._fresh[queue_id] = (state, data)
        self.stage.now(queue_id)

    async def recover(self) -> int:
        """Resume the live outgoing entries from the spool; how many."""
        resumed = 0
        for queue_id in await asyncio.to_thread(self.spool.outgoing_ids):
            try:
                state = await asyncio.to_thread(self.spool.read_state, queue_id)
            except SpoolCorrupt as exc:
                await asyncio.to_thread(move_aside, self.spool, self.audit, queue_id, str(exc), "spool")
                continue
            except SpoolError as exc:
                log.error("%s: %s; trying again later", queue_id, exc)
                self.stage.at(queue_id, time.time() + self.get_config().delivery.retry_base_s)
                continue
            self.stage.at(queue_id, state.next_attempt)
            resumed += 1
        return resumed

    def stop(self) -> None:
        self.stopping = True
        self.stage.stop(self._consumers)

    async def aclose(self) -> None:
        """Close every deliverer (their pooled connections)."""
        for deliverer in [self.deliverer, self.bounce_deliverer, *self._retiring]:
            if deliverer is not None:
                with contextlib.suppress(Exception):
                    await deliverer.aclose()

    async def retarget(self, deliver_to: DeliverTo, config: DetoxConfig) -> None:
        """New deliverers (after a reload); the old ones are closed once no delivery uses them."""
        self._retiring += [d for d in (self.deliverer, self.bounce_deliverer) if d is not None]
        self.deliver_to = deliver_to
        self.deliverer = make_deliverer(deliver_to, config)
        self.bounce_deliverer = _make_bounce_deliverer(config)
        await self._close_retired()

    # -- one entry ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            queue_id = await self.stage.take()
            if queue_id is None:
                return
            when: float | None = None
            try:
                if self.stopping:
                    return
                when = await self.deliver_one(queue_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: delivery step failed; will retry", queue_id)
                when = time.time() + self.get_config().delivery.retry_base_s
            finally:
                self.stage.done(queue_id)
            if when is not None:
                self.stage.at(queue_id, when)

    async def deliver_one(self, queue_id: str) -> float | None:
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
            await asyncio.to_thread(move_aside, self.spool, self.audit, queue_id, str(exc), "delivery")
            return None
        # (any other SpoolError: an I/O problem of ours; the delivery loop tries again later)
        if entry is None:
            return None  # finished while it waited (e.g. a retry asked for a done one)
        state, data = entry
        pending = state.pending()
        if pending:
            config = self.get_config()
            outcomes = await self._send(state, pending, data)
            now = time.time()
            deadline = state.received_at + config.delivery.max_age_days * DAY_S
            attempt = apply_outcomes(state, pending, outcomes, now, deadline)
            if state.pending():
                state.next_attempt = next_attempt(now, self._backoff(state.attempts), deadline)
            bounce = await asyncio.to_thread(self._record_attempt, state, attempt, data)
            if bounce is not None and bounce.dsn_id is not None:
                self.stage.now(bounce.dsn_id)
            if not state.pending():
                return None  # record_progress removed the entry
        if state.pending():
            return state.next_attempt
        await asyncio.to_thread(self.spool.finish_outgoing, queue_id)
        return None

    def _backoff(self, attempts: int) -> float:
        delivery = self.get_config().delivery
        return backoff(attempts, delivery.retry_base_s, delivery.retry_max_s)

    def _record_attempt(self, state: DeliveryState, attempt: AttemptOutcome, data: bytes) -> Bounce | None:
        """Blocking, one thread hop for what follows an attempt: the DSN for the recipients given up
        on, then ``Spool.record_progress`` (state, audit records, removal once none is pending)."""
        bounce, dsn = self._bounce(state, attempt.failed, data) if attempt.failed else (None, None)
        self.spool.record_progress(
            state,
            gave_up=bool(attempt.failed),
            dsn=dsn,
            audit=lambda: self._audit_delivery(state, attempt.by_status, bounce),
        )
        return bounce

    def _read_entry(self, queue_id: str) -> tuple[DeliveryState, bytes] | None:
        """Blocking: an outgoing entry's state and message, or None when it is gone."""
        if not self.spool.has_state(queue_id):
            return None
        return self.spool.read_state(queue_id), self.spool.read_output(queue_id)

    async def _send(self, state: DeliveryState, recipients: list[str], data: bytes) -> dict[str, Outcome]:
        deliverer = self.bounce_deliverer if state.kind == EntryKind.DSN else self.deliverer
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

    # -- DSN ------------------------------------------------------------------------------------

    def _bounce(
        self, state: DeliveryState, failed: list[str], data: bytes
    ) -> tuple[Bounce, tuple[DeliveryState, bytes] | None]:
        """Blocking: the DSN for ``failed`` recipients (its state and message, for the spool to
        queue), or the reason why none may go; the recipients' ``dsn`` fields say which."""
        config = self.get_config()
        blocked = bounce_block(state, config)
        if blocked is not None:
            for rcpt in failed:
                state.recipients[rcpt].dsn = f"suppressed: {blocked}"
            return Bounce(tuple(failed), None, blocked), None
        items = []
        for rcpt in failed:
            r = state.recipients[rcpt]
            expired = r.reason == FailReason.EXPIRED
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
            kind=EntryKind.DSN,
        )
        for rcpt in failed:
            state.recipients[rcpt].dsn = dsn_id
        return Bounce(tuple(failed), dsn_id, None), (dsn_state, dsn)

    def _original_headers(self, state: DeliveryState, data: bytes) -> bytes:
        """The original's header section (from the store); the detoxified copy's if it is gone."""
        if state.original_sha256:
            try:
                with open(self.store.path_for(state.original_sha256), "rb") as fh:
                    return header_section(fh.read(256 * 1024))
            except OSError:
                log.warning("%s: original gone; the DSN returns the detoxified headers", state.queue_id)
        return header_section(data)

    # -- audit ----------------------------------------------------------------------------------

    def _audit_delivery(
        self, state: DeliveryState, by_status: dict[str, list[str]], bounce: Bounce | None
    ) -> None:
        """The attempt's audit records, one group (one fsync): per outcome, then the DSN's fate."""
        config = self.get_config()
        queue_id = state.queue_id
        kind = None if state.kind == EntryKind.MESSAGE else str(state.kind)
        records: list[AuditEvent] = []
        for status, rcpts in by_status.items():
            if not rcpts:
                continue
            replies = {
                r: RecipientReply(state.recipients[r].code, state.recipients[r].response) for r in rcpts
            }
            if status == Status.DELIVERED.value:
                records.append(Delivered(queue_id=queue_id, recipients=replies, kind=kind))
            elif status == Status.DEFERRED.value:
                records.append(
                    DeliveryDeferred(
                        queue_id=queue_id,
                        recipients=replies,
                        next_attempt=state.next_attempt,
                        attempt=state.attempts,
                        kind=kind,
                    )
                )
            elif status == Status.FAILED.value:
                records.append(
                    DeliveryFailed(
                        queue_id=queue_id, recipients=replies, reason=FailReason.REJECTED.value, kind=kind
                    )
                )
            elif status == EXPIRED:
                records.append(
                    DeliveryFailed(
                        queue_id=queue_id,
                        recipients=replies,
                        reason=FailReason.EXPIRED.value,
                        max_age_days=config.delivery.max_age_days,
                        kind=kind,
                    )
                )
        if bounce is not None and bounce.dsn_id is not None:
            records.append(
                Bounced(
                    queue_id=queue_id,
                    dsn_id=bounce.dsn_id,
                    to=state.mail_from,
                    recipients=tuple(bounce.recipients),
                    via=config.delivery.bounce_via,
                )
            )
        elif bounce is not None and bounce.blocked is not None:
            records.append(
                BounceSuppressed(
                    queue_id=queue_id,
                    reason=bounce.blocked,
                    mail_from=state.mail_from,
                    recipients=tuple(bounce.recipients),
                )
            )
        self.audit.append(records)  # one group: one fsync


def _make_bounce_deliverer(config: DetoxConfig) -> Deliverer | None:
    if not config.delivery.bounce_via:
        return None
    return make_deliverer(parse_deliver_to(config.delivery.bounce_via, key="delivery.bounce_via"), config)
