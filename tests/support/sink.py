"""An SMTP sink for tests: an aiosmtpd server in a thread that records what it receives.

    sink = SmtpSink()            # or the ``smtp_sink`` fixture, which starts and stops it
    sink.start()
    sink.fail_rcpt["bad@city.example.lg.jp"] = "550 5.1.1 no such user"   # refuse one recipient (always)
    sink.fail_data = "451 4.3.0 try later"                                  # refuse every DATA ...
    sink.fail_data_times = 1                                                # ... but only once
    ... deliver to sink.host:sink.port ...
    msgs = sink.wait_for(1, timeout=5)      # -> [SinkMessage(mail_from, rcpt_tos, data), ...]
    sink.stop()

Only messages whose DATA was answered 250 are in ``messages``; every refusal is in ``refusals``.
Message data is the raw bytes as received (CRLF line endings, dot-unstuffed, no headers added).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import free_port

__all__ = ["Refusal", "SinkMessage", "SmtpSink"]


@dataclass(frozen=True)
class SinkMessage:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    mail_options: tuple[str, ...] = ()
    peer: Any = None
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Refusal:
    stage: str  # "MAIL", "RCPT" or "DATA"
    address: str | None
    reply: str


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        reply = self.sink._lookup(self.sink.fail_mail, address)
        if reply is not None:
            self.sink._refused("MAIL", address, reply)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.sink._lookup(self.sink.fail_rcpt, address)
        if reply is not None:
            self.sink._refused("RCPT", address, reply)
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        sink = self.sink
        if sink.data_delay:
            await asyncio.sleep(sink.data_delay)
        reply = sink._take_data_failure()
        if reply is not None:
            sink._refused("DATA", None, reply)
            return reply
        content = envelope.original_content if envelope.original_content is not None else envelope.content
        data = content if isinstance(content, bytes) else str(content).encode("utf-8", "surrogateescape")
        sink._record(
            SinkMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=data,
                mail_options=tuple(envelope.mail_options),
                peer=session.peer,
            )
        )
        return "250 2.0.0 OK: queued"


class SmtpSink:
    """Records every message; can refuse chosen senders/recipients/DATA with the replies you give it.

    Attributes you may set at any time (read by the server thread for each command):

    * ``fail_mail`` / ``fail_rcpt``: address (case-insensitive) -> full reply,
      e.g. ``"550 5.1.1 no such user"``.
    * ``fail_data``: reply for DATA; with ``fail_data_times = N`` only the next N DATA commands fail
      (``None`` = every one), after which ``fail_data`` is cleared.
    * ``data_delay``: seconds to wait before answering DATA (to test client timeouts).
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, hostname: str = "sink.test") -> None:
        self.host = host
        self.port = port if port is not None else 0
        self.hostname = hostname
        self.fail_mail: dict[str, str] = {}
        self.fail_rcpt: dict[str, str] = {}
        self.fail_data: str | None = None
        self.fail_data_times: int | None = None
        self.data_delay: float = 0.0
        self.messages: list[SinkMessage] = []
        self.refusals: list[Refusal] = []
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    # ----------------------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> SmtpSink:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        """``smtp://HOST:PORT``, the form ``detox serve --deliver-to`` takes."""
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> None:
        if self._controller is not None:
            return
        if self.port == 0:
            self.port = free_port(self.host)
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname=self.hostname,  # avoids socket.getfqdn(), slow without DNS
            ready_timeout=10.0,
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=256 * 1024 * 1024,
        )
        controller.start()
        self._controller = controller

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()

    # ---------------------------------------------------------------------------------------- results
    def fail_next_data(self, reply: str, times: int = 1) -> None:
        """Answer the next ``times`` DATA commands with ``reply`` (then accept again)."""
        with self._cond:
            self.fail_data = reply
            self.fail_data_times = times

    def wait_for(self, n: int, timeout: float = 10.0) -> list[SinkMessage]:
        """Block until at least ``n`` messages were accepted; return a snapshot of all of them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"smtp sink: {len(self.messages)} of {n} message(s) after {timeout:.1f}s; "
                        f"refusals: {self.refusals!r}"
                    )
                self._cond.wait(remaining)
            return list(self.messages)

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()
            self.refusals.clear()

    # ------------------------------------------------------------------------- called from the server thread
    @staticmethod
    def _lookup(table: dict[str, str], address: str) -> str | None:
        if not table:
            return None
        wanted = address.lower()
        for key, reply in list(table.items()):
            if key.lower() == wanted:
                return reply
        return None

    def _take_data_failure(self) -> str | None:
        with self._cond:
            reply = self.fail_data
            if reply is None:
                return None
            if self.fail_data_times is not None:
                self.fail_data_times -= 1
                if self.fail_data_times <= 0:
                    self.fail_data = None
                    self.fail_data_times = None
            return reply

    def _refused(self, stage: str, address: str | None, reply: str) -> None:
        with self._cond:
            self.refusals.append(Refusal(stage, address, reply))
            self._cond.notify_all()

    def _record(self, message: SinkMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()
