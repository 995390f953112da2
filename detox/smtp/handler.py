"""The aiosmtpd handler: envelope policy (no open relay, recipient caps, back-pressure) and spooling.

It never parses MIME: the message is stored as received, fsync'd, and only then acknowledged.
The DATA phase itself (streaming to the spool, line and header limits) is in
:class:`detox.smtp.server.DetoxSMTP`, which calls :meth:`Handler.begin` and :meth:`Handler.finish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from detox.audit import AuditLog, now_rfc3339
from detox.audit.events import DataRefused, Received, SessionRefused
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import SpoolError
from detox.inbound.check import Authenticator, Outcome, failed_outcome
from detox.smtp import replies
from detox.spool import IncomingWriter, Spool, is_disk_full, new_queue_id
from detox.spool.incoming import AUTH_RESERVE
from detox.untrusted import for_log

log = logging.getLogger(__name__)

REFUSAL_SUMMARY_S = 60.0  # repeated refusals of one kind: at most one audit record per minute


class Backlog:
    """Accepted messages not yet through the pipeline: what back-pressure is measured on."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self.bytes = 0

    @property
    def count(self) -> int:
        return len(self._sizes)

    def add(self, queue_id: str, size: int) -> None:
        if queue_id not in self._sizes:
            self._sizes[queue_id] = size
            self.bytes += size

    def remove(self, queue_id: str) -> None:
        self.bytes -= self._sizes.pop(queue_id, 0)

    def over(self, config: DetoxConfig) -> str | None:
        """The limit the backlog is at, or None."""
        if self.count >= config.limits.max_backlog_messages:
            return "limits.max_backlog_messages"
        if self.bytes >= config.limits.max_backlog_bytes:
            return "limits.max_backlog_bytes"
        return None


@dataclass
class _Pending:
    reply: str
    count: int = 0
    clients: Counter[str] = field(default_factory=Counter)
    last_written: float = 0.0


class RefusalLog:
    """``refused`` audit records for connection-level refusals, summarised under a flood.

    The first refusal for a limit is written at the next flush (within a second); after that at
    most one record per limit and minute, with the count and the clients refused. A flood of
    connections thus costs a few audit lines, not one fsync per connection.
    """

    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit
        self._pending: dict[str, _Pending] = {}

    def record(self, limit: str, client: str, reply: str) -> None:
        pending = self._pending.setdefault(limit, _Pending(reply))
        pending.reply = reply
        pending.count += 1
        pending.clients[client] += 1

    def flush(self, *, force: bool = False) -> None:
        """Write what is due (everything with ``force``). Blocking: call it in a thread."""
        now = time.monotonic()
        for limit, pending in self._pending.items():
            if not pending.count or (not force and now - pending.last_written < REFUSAL_SUMMARY_S):
                continue
            count, clients = pending.count, pending.clients
            pending.count, pending.clients, pending.last_written = 0, Counter(), now
            try:
                self.audit.write(
                    SessionRefused(
                        limit=limit, reply=pending.reply, count=count, clients=dict(clients.most_common(20))
                    )
                )
            except OSError:
                log.exception("audit write failed for refusals (%s)", limit)


class Handler:
    def __init__(
        self,
        get_config: Callable[[], DetoxConfig],
        spool: Spool,
        audit: AuditLog,
        backlog: Backlog,
        refusals: RefusalLog,
        on_accepted: Callable[[str], None],
    ) -> None:
        self.get_config = get_config
        self.spool = spool
        self.audit = audit
        self.backlog = backlog
        self.refusals = refusals
        self.on_accepted = on_accepted
        self.draining = False  # SIGTERM: no new transactions
        # Sender authentication ([inbound]): one Authenticator (its DNS cache) per config it was made for.
        self._auth: tuple[object, Authenticator] | None = None

    def authenticator(self, config: DetoxConfig) -> Authenticator | None:
        if not config.inbound.enabled:
            return None
        key = (config.inbound, config.server.accepted_domains)
        if self._auth is None or self._auth[0] != key:
            self._auth = (key, Authenticator(config.inbound, accepted_domains=config.server.accepted_domains))
        return self._auth[1]

    def _client(self, session: Any) -> str:
        return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)

    def _busy(self, session: Any) -> str | None:
        """The reply refusing a new transaction now (shutting down, back-pressure), or None."""
        if self.draining:
            return replies.SHUTTING_DOWN
        limit = self.backlog.over(self.get_config())
        if limit is not None:
            self.refusals.record(limit, self._client(session), replies.BUSY)
            return replies.BUSY
        return None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one by one from a buffered stream, so pipelined clients work;
        # say so. We offer no AUTH: an MX takes mail for its own domains only.
        kept = [r for r in responses if not r[4:].startswith("AUTH")]
        kept.insert(len(kept) - 1, "250-PIPELINING")
        return kept

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        busy = self._busy(session)
        if busy is not None:
            return busy
        # aiosmtpd keeps the null sender as "<>" (so RCPT sees a MAIL was given); Envelope gets "".
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return replies.MAIL_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        config = self.get_config()
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain not in config.server.accepted_domains:
            log.info("relay denied for %s from %s", for_log(address), session.peer)
            return replies.RELAY_DENIED
        if len(envelope.rcpt_tos) >= config.server.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        busy = self._busy(session)
        if busy is not None:
            return busy
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    # -- DATA (called by DetoxSMTP) ---------------------------------------------------------------

    def data_refusal(self, session: Any) -> str | None:
        """Checked before 354: a transaction begun before the backlog filled up is refused here."""
        return self._busy(session)

    def begin(self, session: Any, envelope: Any) -> IncomingWriter:
        mail_from = envelope.mail_from or ""
        env = Envelope(
            queue_id=new_queue_id(),
            mail_from="" if mail_from == "<>" else mail_from,
            rcpt_tos=tuple(envelope.rcpt_tos),
            client_address=self._client(session),
            helo=session.host_name or "",
            received_at=now_rfc3339(),
        )
        reserve = AUTH_RESERVE if self.get_config().inbound.enabled else 0
        return self.spool.open_incoming(env, reserve=reserve)

    async def finish(self, writer: IncomingWriter, limit: tuple[str, str] | None, bare_lf: int) -> str:
        """End of DATA: commit the message (or refuse it) and return the reply."""
        env = writer.envelope
        if limit is not None:
            writer.abort()
            key, reply = limit
            log.info("%s refused from %s: %s", env.queue_id, env.client_address, reply)
            await asyncio.to_thread(self._audit_refused, env, key, reply, writer.size)
            return reply
        authenticator = self.authenticator(self.get_config())
        if authenticator is not None:
            refusal = await self._authenticate(authenticator, writer)
            if refusal is not None:
                return refusal
        try:
            await asyncio.to_thread(self._commit, writer, bare_lf)
        except SpoolError as exc:
            log.error("spool write failed for %s: %s", env.queue_id, exc)
            reply = replies.SPOOL_FULL if is_disk_full(exc) else replies.LOCAL_ERROR
            # On a full disk the audit log (same disk) will likely fail as well: the log has it.
            await asyncio.to_thread(self._audit_refused, env, "spool", reply, writer.size, str(exc))
            return reply
        self.backlog.add(env.queue_id, writer.size)
        self.on_accepted(env.queue_id)
        return replies.QUEUED.format(queue_id=env.queue_id)

    async def _authenticate(self, authenticator: Authenticator, writer: IncomingWriter) -> str | None:
        """SPF, DKIM, DMARC, ARC on the message as received, before the 250 (detox.inbound). The
        reply refusing it (550 5.7.1, nothing kept), or None with the result in the envelope."""
        env = writer.envelope
        try:
            message = await asyncio.to_thread(writer.message_bytes)
        except SpoolError:
            return None  # the commit reports the write failure
        try:
            outcome = await authenticator.authenticate(
                message, client_ip=env.client_address, helo=env.helo, mail_from=env.mail_from
            )
        except Exception as exc:  # a bug of ours: results temperror, decided as such (never a pass)
            log.exception("%s: sender authentication failed", env.queue_id)
            outcome = failed_outcome(authenticator, message, env, f"{type(exc).__name__}")
        if outcome.decision.action == "reject":
            writer.abort()
            reply = f"550 {authenticator.config.reject_message}"
            log.info(
                "%s refused from %s: %s", env.queue_id, env.client_address, for_log(outcome.decision.detail)
            )
            limit = (
                "inbound.spoof"
                if outcome.decision.reason == "spoofed-protected-domain"
                else "inbound.dmarc_reject"
            )
            await asyncio.to_thread(self._audit_refused, env, limit, reply, len(message), None, outcome)
            return reply
        with contextlib.suppress(SpoolError):  # the commit reports it
            await asyncio.to_thread(writer.set_envelope, replace(env, auth=outcome.to_json()))
        return None

    def _commit(self, writer: IncomingWriter, bare_lf: int) -> None:
        """Blocking: the message durably in the spool (raises SpoolError), then its audit record."""
        writer.commit()
        env = writer.envelope
        # The message is safe on disk; an audit failure must not make the sender send it twice.
        try:
            self.audit.write(
                Received(
                    queue_id=env.queue_id,
                    client_address=env.client_address,
                    helo=for_log(env.helo),
                    mail_from=env.mail_from,
                    rcpt_tos=env.rcpt_tos,
                    size=writer.size,
                    sha256=writer.sha256,
                    bare_lf=bare_lf,
                )
            )
        except OSError:
            log.exception("audit write failed for %s", env.queue_id)

    def _audit_refused(
        self,
        env: Envelope,
        limit: str,
        reply: str,
        size: int,
        error: str | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        try:
            self.audit.write(
                DataRefused(
                    limit=limit,
                    reply=reply,
                    client_address=env.client_address,
                    helo=for_log(env.helo),
                    mail_from=env.mail_from,
                    rcpt_tos=env.rcpt_tos,
                    size=size,
                    error=error or None,
                    authentication=outcome.audit_summary() if outcome is not None else None,
                )
            )
        except OSError:
            log.exception("audit write failed for a refused message from %s", env.client_address)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s", for_log(repr(error)), exc_info=error)
        return replies.LOCAL_ERROR
