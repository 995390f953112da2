"""The aiosmtpd handler: envelope policy (no open relay, recipient caps) and durable spooling.

It never parses MIME: the message is stored as received, fsync'd, and only then acknowledged.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from detox.audit import AuditLog, now_rfc3339
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import SpoolError
from detox.smtp import replies
from detox.spool import Spool, new_queue_id
from detox.untrusted import for_log

log = logging.getLogger(__name__)


class Handler:
    def __init__(
        self,
        config: DetoxConfig,
        spool: Spool,
        audit: AuditLog,
        on_accepted: Callable[[str], None],
    ) -> None:
        self.config = config
        self.spool = spool
        self.audit = audit
        self.on_accepted = on_accepted
        self.accepted_domains = frozenset(config.server.accepted_domains)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads commands one by one from a buffered stream, so pipelined clients work;
        # say so. We offer no AUTH: an MX takes mail for its own domains only.
        kept = [r for r in responses if not r[4:].startswith("AUTH")]
        kept.insert(len(kept) - 1, "250-PIPELINING")
        return kept

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if domain not in self.accepted_domains:
            log.info("relay denied for %s from %s", for_log(address), session.peer)
            return replies.RELAY_DENIED
        if len(envelope.rcpt_tos) >= self.config.server.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return replies.RCPT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not envelope.rcpt_tos:
            return replies.NO_RECIPIENTS
        raw = envelope.original_content
        if not isinstance(raw, bytes):
            raw = str(envelope.content).encode("utf-8", "surrogateescape")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        env = Envelope(
            queue_id=new_queue_id(),
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            client_address=peer,
            helo=session.host_name or "",
            received_at=now_rfc3339(),
        )
        try:
            await asyncio.to_thread(self._accept, env, raw)
        except SpoolError as exc:
            log.error("spool write failed for %s: %s", env.queue_id, exc)
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
                return replies.SPOOL_FULL
            return replies.LOCAL_ERROR
        self.on_accepted(env.queue_id)
        return replies.QUEUED.format(queue_id=env.queue_id)

    def _accept(self, env: Envelope, raw: bytes) -> None:
        self.spool.accept(env, raw)
        # The message is safe on disk; an audit failure must not make the sender send it twice.
        try:
            self.audit.write(
                "received",
                env.queue_id,
                client_address=env.client_address,
                helo=for_log(env.helo),
                mail_from=env.mail_from,
                rcpt_tos=list(env.rcpt_tos),
                size=len(raw),
                sha256=hashlib.sha256(raw).hexdigest(),
            )
        except OSError:
            log.exception("audit write failed for %s", env.queue_id)

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s", for_log(repr(error)), exc_info=error)
        return replies.LOCAL_ERROR
