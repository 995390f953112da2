"""A downstream SMTP server that misbehaves on request: the LGWAN side for fault-injection tests.

A small hand-written SMTP server (asyncio, in its own thread), because the faults happen where a
library server gives no hook: in the middle of DATA, after the final dot, at connect time.

    server = FaultySmtp().start()
    server.refuse()                      # stop listening: connections are refused (existing ones dropped)
    server.accept()                      # listen again on the same port
    server.rcpt_replies["bad@city.example.lg.jp"] = "550 5.1.1 no such user"   # for every transaction
    server.data_replies = ["451 4.3.0 try later", "451 4.3.0 try later"]     # the next DATAs, then 250
    server.drop_mid_data = 2             # the next 2 transactions: connection closed half-way through DATA
    server.stall_s, server.stall_times = 30.0, 1   # the next DATA: no reply for 30 s after the dot ...
    server.commit_before_stall = True    # ... but the message counts as delivered (a real MTA that
                                         # queued it and then hung): the at-least-once duplicate case
    server.wait_for(5, timeout=30)       # -> [Delivered(mail_from, rcpts, data), ...]
    server.stop()

Only committed messages are in ``delivered`` (one entry per transaction, with the recipients accepted in
it); ``events`` logs every fault as it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from . import free_port

__all__ = ["Delivered", "FaultySmtp"]

_ADDRESS = re.compile(r"<([^>]*)>")


@dataclass(frozen=True)
class Delivered:
    mail_from: str
    rcpts: tuple[str, ...]
    data: bytes
    at: float = field(default_factory=time.time)

    @property
    def queue_id(self) -> str | None:
        """The X-Detox-Id of the delivered message."""
        found = re.search(rb"^X-Detox-Id: *([0-9A-F]{20})\r?$", self.data, re.M)
        return found.group(1).decode() if found else None


class FaultySmtp:
    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, hostname: str = "lgwan.test"
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.hostname = hostname
        # fault knobs, read for every command (set them from the test thread at any time)
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.drop_mid_data = 0
        self.drop_after_bytes = 512
        self.stall_s = 0.0
        self.stall_times: int | None = None
        self.commit_before_stall = False
        # results
        self.delivered: list[Delivered] = []
        self.events: list[str] = []
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> FaultySmtp:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def start(self) -> FaultySmtp:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="faulty-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("faulty smtp: event loop did not start")
        self.accept()
        return self

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def accept(self) -> None:
        """Listen (again) on ``port``."""

        async def listen() -> None:
            if self._server is None:
                self._server = await asyncio.start_server(
                    self._session, self.host, self.port, reuse_address=True, limit=1 << 20
                )

        self._call(listen())
        self._event("listening")

    def refuse(self) -> None:
        """Stop listening and drop every open connection: new connections are refused."""

        async def close() -> None:
            server, self._server = self._server, None
            if server is not None:
                server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)

        self._call(close())
        self._event("refusing connections")

    def stop(self) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            self.refuse()

        async def cancel_sessions() -> None:  # e.g. one still stalling before its DATA reply
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(cancel_sessions())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    # -- results ---------------------------------------------------------------------------------
    def wait_for(self, n: int, timeout: float = 30.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.delivered) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"faulty smtp: {len(self.delivered)} of {n} delivered; events: {self.events[-20:]}"
                    )
                self._cond.wait(remaining)
            return list(self.delivered)

    def wait_event(self, prefix: str, n: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for e in self.events if e.startswith(prefix)) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"faulty smtp: no {n}x {prefix!r}; events: {self.events[-20:]}")
                self._cond.wait(remaining)

    def _event(self, text: str) -> None:
        with self._cond:
            self.events.append(text)
            self._cond.notify_all()

    def _commit(self, mail_from: str, rcpts: list[str], data: bytes) -> Delivered:
        item = Delivered(mail_from, tuple(rcpts), data)
        with self._cond:
            self.delivered.append(item)
            self._cond.notify_all()
        return item

    def _take(self, attr: str) -> bool:
        """Consume one occurrence of a counted fault (``drop_mid_data``)."""
        with self._cond:
            left = getattr(self, attr)
            if left > 0:
                setattr(self, attr, left - 1)
                return True
            return False

    def _take_stall(self) -> float:
        with self._cond:
            if self.stall_s <= 0 or self.stall_times == 0:
                return 0.0
            if self.stall_times is not None:
                self.stall_times -= 1
            return self.stall_s

    def _take_data_reply(self) -> str | None:
        with self._cond:
            return self.data_replies.pop(0) if self.data_replies else None

    # -- the protocol ----------------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        mail_from: str | None = None
        rcpts: list[str] = []

        async def reply(text: str) -> None:
            writer.write(text.encode("ascii") + b"\r\n")
            await writer.drain()

        try:
            await reply(f"220 {self.hostname} ESMTP faulty test server")
            while True:
                line = await reader.readline()
                if not line:
                    return
                command = line.decode("utf-8", "replace").strip()
                verb = command[:4].upper()
                if verb == "EHLO":
                    await reply(f"250-{self.hostname}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 268435456")
                elif verb == "HELO":
                    await reply(f"250 {self.hostname}")
                elif verb == "MAIL":
                    found = _ADDRESS.search(command)
                    mail_from, rcpts = (found.group(1) if found else ""), []
                    await reply("250 2.1.0 OK")
                elif verb == "RCPT":
                    found = _ADDRESS.search(command)
                    address = found.group(1) if found else ""
                    refused = self.rcpt_replies.get(address.lower())
                    if refused:
                        self._event(f"rcpt refused {address}: {refused}")
                        await reply(refused)
                    else:
                        rcpts.append(address)
                        await reply("250 2.1.5 OK")
                elif verb == "DATA":
                    if mail_from is None or not rcpts:
                        await reply("554 5.5.1 no valid recipients")
                        continue
                    await reply("354 end with <CRLF>.<CRLF>")
                    data = await self._read_data(reader, writer)
                    if data is None:
                        return  # the connection was dropped on purpose
                    await self._finish(data, mail_from, rcpts, reply)
                    mail_from, rcpts = None, []
                elif verb == "RSET":
                    mail_from, rcpts = None, []
                    await reply("250 2.0.0 OK")
                elif verb == "NOOP":
                    await reply("250 2.0.0 OK")
                elif verb == "QUIT":
                    await reply("221 2.0.0 bye")
                    return
                else:
                    await reply("502 5.5.2 command not implemented")
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _read_data(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        drop = self._take("drop_mid_data")
        lines: list[bytes] = []
        size = 0
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("client went away during DATA")
            if line == b".\r\n":
                break
            size += len(line)
            if drop and size >= self.drop_after_bytes:
                self._event(f"dropped connection mid-DATA after {size} bytes")
                writer.transport.abort()
                return None
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)

    async def _finish(
        self, data: bytes, mail_from: str, rcpts: list[str], send: Callable[[str], Awaitable[None]]
    ) -> None:
        answer = self._take_data_reply()
        if answer is not None and not answer.startswith("2"):
            self._event(f"data refused: {answer}")
            await send(answer)
            return
        stall = self._take_stall()
        if stall:
            if self.commit_before_stall:
                item = self._commit(mail_from, rcpts, data)
                self._event(f"committed then stalling {stall:g}s: {item.queue_id}")
            else:
                self._event(f"stalling {stall:g}s before the DATA reply (not committed)")
            await asyncio.sleep(stall)
            if self.commit_before_stall:
                await send("250 2.0.0 OK queued (late)")
                return
        self._commit(mail_from, rcpts, data)
        await send(answer or "250 2.0.0 OK queued")
