"""SMTP delivery with aiosmtplib: reused connections, STARTTLS policy, a per-recipient outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import aiosmtplib

from detox.config.schema import DeliveryConfig, StartTLS
from detox.delivery.base import Deliverer, Outcome, Status
from detox.untrusted import for_log

log = logging.getLogger(__name__)

# A pooled connection idle longer than this is checked with NOOP before it carries a message. One
# used a moment ago is not: a NOOP is one more round trip per message, and a connection the server
# did close meanwhile fails at MAIL just as it would at NOOP, which _deliver retries once on a fresh one.
NOOP_AFTER_IDLE_S = 2.0


def _status(code: int) -> Status:
    if 200 <= code < 300:
        return Status.DELIVERED
    return Status.FAILED if code >= 500 else Status.DEFERRED


class _ConnectionLost(Exception):
    """The connection went away under us; worth one retry on a fresh one."""


class SmtpDeliverer(Deliverer):
    """A small pool of persistent connections: one per concurrent delivery, opened on demand."""

    def __init__(self, host: str, port: int, config: DeliveryConfig, *, helo: str) -> None:
        self.host = host
        self.port = port
        self.config = config
        self.helo = config.helo_name or helo
        self._idle: asyncio.LifoQueue[tuple[aiosmtplib.SMTP, float]] = (
            asyncio.LifoQueue()
        )  # (client, last used)

    def _new_client(self) -> aiosmtplib.SMTP:
        start_tls: bool | None = {
            StartTLS.OFF: False,
            StartTLS.OPPORTUNISTIC: None,  # aiosmtplib: STARTTLS when the server offers it
            StartTLS.REQUIRED: True,
        }[self.config.starttls]
        return aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.helo,
            timeout=self.config.timeout_s,
            start_tls=start_tls,
            # Opportunistic TLS is unauthenticated by definition; "required" checks the certificate
            # unless the admin turned verification off for an internal CA-less server.
            validate_certs=self.config.starttls is StartTLS.REQUIRED and self.config.tls_verify,
        )

    @asynccontextmanager
    async def _lease(self) -> AsyncIterator[aiosmtplib.SMTP]:
        if self._idle.empty():
            client, last_used = self._new_client(), 0.0
        else:
            client, last_used = self._idle.get_nowait()
        healthy = False
        try:
            if not client.is_connected:
                await client.connect()
            elif time.monotonic() - last_used > NOOP_AFTER_IDLE_S:
                await client.noop()  # a connection idle for a while may have been closed by the server
            yield client
            healthy = True
        finally:
            if healthy and client.is_connected:
                self._idle.put_nowait((client, time.monotonic()))
            else:
                client.close()

    async def deliver(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Outcome]:
        try:
            return await self._deliver(mail_from, recipients, data)
        except _ConnectionLost:
            # A pooled connection the server had closed (or closed with 421): one fresh retry.
            try:
                return await self._deliver(mail_from, recipients, data)
            except _ConnectionLost as exc:
                return {r: Outcome(Status.DEFERRED, None, str(exc)) for r in recipients}

    async def _deliver(self, mail_from: str, recipients: Sequence[str], data: bytes) -> dict[str, Outcome]:
        rcpts = list(recipients)
        if mail_from == "<>":  # the null sender as older spool entries store it; aiosmtplib wants ""
            mail_from = ""
        try:
            async with self._lease() as client:
                errors, response = await client.sendmail(mail_from, rcpts, data)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            # Every recipient refused; each refusal carries its own code.
            outcomes = {r: Outcome(Status.DEFERRED, None, "no answer") for r in rcpts}
            for refused in exc.recipients:
                outcomes[refused.recipient] = Outcome(_status(refused.code), refused.code, refused.message)
            return outcomes
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise _ConnectionLost(f"{type(exc).__name__}: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code == 421:
                raise _ConnectionLost(f"{exc.code} {exc.message}") from exc
            return {r: Outcome(_status(exc.code), exc.code, exc.message) for r in rcpts}
        except ValueError as exc:
            # aiosmtplib refuses to put this address in a command (e.g. a space in it): no retry helps.
            return {r: Outcome(Status.FAILED, None, f"address not usable in SMTP: {exc}") for r in rcpts}
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            log.warning("delivery to %s:%s failed: %s", self.host, self.port, for_log(repr(exc)))
            return {r: Outcome(Status.DEFERRED, None, f"{type(exc).__name__}: {exc}") for r in rcpts}
        outcomes = {r: Outcome(Status.DELIVERED, 250, response) for r in rcpts}
        for rcpt, reply in errors.items():
            outcomes[rcpt] = Outcome(_status(reply.code), reply.code, reply.message)
        return outcomes

    async def aclose(self) -> None:
        while not self._idle.empty():
            client, _ = self._idle.get_nowait()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
