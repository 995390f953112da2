"""The ingest side of serve: the SMTP listener, its session caps and the handler that spools.

It reaches the rest of serve only through what it is given: the spool (whose accept commit point,
``IncomingWriter.commit``, precedes every 250), the audit log, the back-pressure ``Backlog`` and an
``on_accepted`` callback. It imports none of the runners; see the package docstring for what
running several of these processes on one spool would change.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from detox.audit import AuditLog
from detox.config.schema import DetoxConfig
from detox.smtp.handler import Backlog, Handler, RefusalLog
from detox.smtp.server import SessionGate, start_listener
from detox.spool import Spool

log = logging.getLogger(__name__)


class Ingest:
    def __init__(
        self,
        get_config: Callable[[], DetoxConfig],
        get_tls: Callable[[], ssl.SSLContext | None],
        spool: Spool,
        audit: AuditLog,
        backlog: Backlog,
        refusals: RefusalLog,
        on_accepted: Callable[[str], None],
    ) -> None:
        self.get_config = get_config
        self.get_tls = get_tls
        self.gate = SessionGate(get_config, refusals)
        self.handler = Handler(get_config, spool, audit, backlog, refusals, on_accepted)
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        self.server = await start_listener(self.get_config, self.get_tls, self.handler, self.gate, host, port)

    def drain(self, grace: float) -> asyncio.Task[bool]:
        """Stop accepting: no new connections, no new transactions, idle sessions told 421; the task
        ends when the last session has gone (or after ``grace`` seconds)."""
        if self.server is not None:
            self.server.close()
        self.handler.draining = True
        self.gate.drain()
        return asyncio.create_task(self.gate.wait_empty(grace))

    def abort(self, grace: float) -> None:
        """Close the sessions still open after the grace time."""
        if self.gate.sessions:
            log.warning("closing %d SMTP session(s) still open after %gs", len(self.gate.sessions), grace)
            self.gate.abort_all()
