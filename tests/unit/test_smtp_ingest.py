"""SMTP in, in-process over real loopback sockets: the DATA phase, limits, caps and draining.

The listener, handler and spool are detox's own; only the pipeline and delivery are left out (the
integration tests run the whole ``detox serve``). Replies are checked byte for byte as a client sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import ssl
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP
from support.configs import make_config
from support.smtp import QUEUED, reply_bytes

from detox.audit import AuditLog, read_records
from detox.smtp import replies
from detox.smtp import server as server_mod
from detox.smtp.handler import Backlog, Handler, RefusalLog
from detox.smtp.server import SessionGate, start_listener
from detox.spool import Spool

RCPT = b"taro@city.example.lg.jp"
_SMTP_KWARGS: dict[str, Any] = {
    "hostname": "mx.example",
    "ident": "detox",
    "data_size_limit": 1234,
    "enable_SMTPUTF8": True,
    "decode_data": False,
    "tls_context": None,
    "require_starttls": False,
    "timeout": 42.0,
}


@dataclass
class Ingest:
    spool: Spool
    audit: AuditLog
    backlog: Backlog
    refusals: RefusalLog
    gate: SessionGate
    handler: Handler
    port: int
    accepted: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def records(self, event: str) -> list[dict[str, Any]]:
        return [r for r in read_records(self.audit.path) if r["event"] == event]


@pytest.fixture
async def ingest(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Ingest]:
    settings: dict[str, dict[str, Any]] = getattr(request, "param", {})
    server_kw: dict[str, Any] = {"max_message_bytes": 4_000_000, **settings.get("server", {})}
    limits_kw: dict[str, Any] = settings.get("limits", {})
    config = make_config(tmp_path, server=server_kw, limits=limits_kw)
    spool = Spool(tmp_path / "spool", fsync=False)
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    backlog = Backlog()
    refusals = RefusalLog(audit)
    accepted: list[str] = []
    handler = Handler(lambda: config, spool, audit, backlog, refusals, accepted.append)
    gate = SessionGate(lambda: config, refusals)
    server = await start_listener(lambda: config, lambda: None, handler, gate, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield Ingest(spool, audit, backlog, refusals, gate, handler, port, accepted)
    gate.abort_all()
    server.close()
    await asyncio.sleep(0.05)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> tuple[Client, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        return client, await client.reply()

    async def reply(self) -> bytes:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines).rstrip(b"\r\n")

    async def cmd(self, line: bytes) -> bytes:
        self.writer.write(line + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def envelope(self, sender: bytes = b"sender@vendor.example.com") -> None:
        assert (await self.cmd(b"EHLO client.example.com")).startswith(b"250")
        assert await self.cmd(b"MAIL FROM:<" + sender + b">") == reply_bytes(replies.MAIL_OK)
        assert await self.cmd(b"RCPT TO:<" + RCPT + b">") == reply_bytes(replies.RCPT_OK)

    async def data(self, payload: bytes, end: bytes = b".\r\n") -> bytes:
        go = await self.cmd(b"DATA")
        assert go == reply_bytes(replies.DATA_GO_AHEAD), go
        self.writer.write(payload + end)
        await self.writer.drain()
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def send(port: int, payload: bytes, sender: bytes = b"sender@vendor.example.com") -> bytes:
    client, greeting = await Client.open(port)
    assert greeting.startswith(b"220")
    await client.envelope(sender)
    reply = await client.data(payload)
    await client.cmd(b"QUIT")
    await client.close()
    return reply


def stored(ingest: Ingest, reply: bytes) -> bytes:
    queue_id = reply.rsplit(b" ", 1)[1].decode()
    return ingest.spool.read_incoming(queue_id)[1]


def nothing_left(ingest: Ingest) -> bool:
    return not list(ingest.spool.incoming.iterdir()) and not list(ingest.spool.tmp.iterdir())


def with_settings(**settings: dict[str, Any]) -> pytest.MarkDecorator:
    """Run a test against an ingest with these ``server``/``limits`` settings."""
    return pytest.mark.parametrize("ingest", [settings], indirect=True, ids=[""])


MESSAGE = b"From: a@vendor.example.com\r\nSubject: test\r\n\r\nbody\r\n"


async def test_a_message_is_stored_as_received(ingest: Ingest) -> None:
    reply = await send(ingest.port, MESSAGE)
    assert reply.startswith(QUEUED)
    assert stored(ingest, reply) == MESSAGE
    [received] = ingest.records("received")
    assert received["size"] == len(MESSAGE) and "bare_lf" not in received
    assert len(ingest.accepted) == 1 and ingest.backlog.count == 1


async def test_null_sender_is_spooled_as_empty(ingest: Ingest) -> None:
    reply = await send(ingest.port, MESSAGE, sender=b"")
    env, _ = ingest.spool.read_incoming(reply.rsplit(b" ", 1)[1].decode())
    assert env.mail_from == ""


async def test_long_lines_are_accepted_up_to_the_limit(ingest: Ingest) -> None:
    line = b"<p>" + "長い行".encode() * 40_000 + b"</p>"  # 360 KB on one line
    payload = b"Subject: long\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + line + b"\r\n"
    reply = await send(ingest.port, payload)
    assert reply.startswith(QUEUED), reply
    assert stored(ingest, reply) == payload


@with_settings(limits={"max_line_length": 10_000})
async def test_a_line_over_the_limit_gets_500_and_nothing_is_kept(ingest: Ingest) -> None:
    client, _ = await Client.open(ingest.port)
    await client.envelope()
    reply = await client.data(b"Subject: x\r\n\r\n" + b"a" * 20_000 + b"\r\nend\r\n")
    assert reply == reply_bytes(replies.LINE_TOO_LONG, limit=10_000)
    assert nothing_left(ingest)
    # the session goes on: the next message in it is accepted
    await client.envelope()
    assert (await client.data(MESSAGE)).startswith(QUEUED)
    await client.close()
    [refused] = ingest.records("refused")
    assert refused["limit"] == "limits.max_line_length" and refused["stage"] == "data"
    assert refused["mail_from"] == "sender@vendor.example.com"


async def test_bare_lf_is_accepted_and_counted(ingest: Ingest) -> None:
    payload = b"Subject: scanner\n\nline one\nline two\n"
    reply = await send(ingest.port, payload + b"\r\n")  # a broken sender that ends DATA right
    assert reply.startswith(QUEUED)
    assert stored(ingest, reply) == payload + b"\r\n"
    assert ingest.records("received")[0]["bare_lf"] == 4


async def test_lf_dot_lf_does_not_end_data(ingest: Ingest) -> None:
    """SMTP smuggling: <LF>.<LF> and <CR><LF>.<LF> are data, so a second message cannot hide inside."""
    smuggled = (
        b"Subject: first\r\n\r\nhello\r\n"
        b"\n.\nMAIL FROM:<ceo@city.example.lg.jp>\nRCPT TO:<taro@city.example.lg.jp>\nDATA\n"
        b"Subject: forged\r\n\r\n.\n"
        b"\r\n"
    )
    reply = await send(ingest.port, smuggled)
    assert reply.startswith(QUEUED)
    assert len(ingest.accepted) == 1
    assert b"Subject: forged" in stored(ingest, reply)  # one message, the rest is its content


async def test_leading_dots_are_unstuffed_after_crlf_only(ingest: Ingest) -> None:
    reply = await send(ingest.port, b"Subject: dots\r\n\r\n..one\r\n...two\r\nx\n..three\r\n")
    assert stored(ingest, reply) == b"Subject: dots\r\n\r\n.one\r\n..two\r\nx\n..three\r\n"


@with_settings(limits={"max_header_count": 50, "max_header_bytes": 4000})
async def test_header_limits(ingest: Ingest) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(60)) + b"\r\nbody\r\n"
    assert await send(ingest.port, many) == reply_bytes(replies.TOO_MANY_HEADERS, limit=50)
    big = b"Subject: " + b"a" * 3000 + b"\r\n\tcontinued " + b"b" * 2000 + b"\r\n\r\nbody\r\n"
    assert await send(ingest.port, big) == reply_bytes(replies.HEADERS_TOO_BIG, limit=4000)
    # a body without the blank line is not mistaken for thousands of header fields
    no_separator = b"Subject: x\r\n" + b"just text\r\n" * 500
    assert (await send(ingest.port, no_separator)).startswith(QUEUED)
    # folded lines are one field
    folded = b"Subject: x\r\n" + b"".join(b" more\r\n" for _ in range(100)) + b"\r\nbody\r\n"
    assert (await send(ingest.port, folded)).startswith(QUEUED)
    assert [r["limit"] for r in ingest.records("refused")] == [
        "limits.max_header_count",
        "limits.max_header_bytes",
    ]


@with_settings(server={"max_message_bytes": 100_000})
async def test_size_limit_while_reading_data(ingest: Ingest) -> None:
    reply = await send(ingest.port, b"Subject: big\r\n\r\n" + b"0123456789" * 20_000 + b"\r\n")
    assert reply == reply_bytes(replies.MESSAGE_TOO_BIG)
    assert nothing_left(ingest)
    client, _ = await Client.open(ingest.port)
    assert (await client.cmd(b"EHLO c")).startswith(b"250")
    reply = await client.cmd(b"MAIL FROM:<a@vendor.example.com> SIZE=100001")
    assert reply == reply_bytes(replies.MESSAGE_TOO_BIG)
    assert await client.cmd(b"MAIL FROM:<a@vendor.example.com> SIZE=100000") == reply_bytes(replies.MAIL_OK)
    await client.close()
    await asyncio.to_thread(ingest.refusals.flush)
    assert [r["limit"] for r in ingest.records("refused")] == ["server.max_message_bytes"] * 2
    assert [r["stage"] for r in ingest.records("refused")] == ["data", "session"]


async def test_large_message_is_streamed_to_disk_intact(ingest: Ingest) -> None:
    body = b"".join(b"%08d " % i + b"x" * 70 + b"\r\n" for i in range(40_000))  # ~3.2 MB
    payload = b"Subject: big\r\n\r\n" + body
    reply = await send(ingest.port, payload)
    assert reply.startswith(QUEUED)
    assert stored(ingest, reply) == payload


async def test_client_gone_mid_data_leaves_nothing(ingest: Ingest) -> None:
    client, _ = await Client.open(ingest.port)
    await client.envelope()
    assert await client.cmd(b"DATA") == reply_bytes(replies.DATA_GO_AHEAD)
    client.writer.write(b"Subject: half\r\n\r\n" + b"x" * 600_000)  # past the first flush to disk
    await client.writer.drain()
    await asyncio.sleep(0.2)
    client.writer.transport.abort()
    await asyncio.sleep(0.3)
    assert nothing_left(ingest) and ingest.accepted == []


@with_settings(server={"max_sessions": 3, "max_sessions_per_client": 2})
async def test_session_caps(ingest: Ingest) -> None:
    first, g1 = await Client.open(ingest.port)
    second, g2 = await Client.open(ingest.port)
    assert g1.startswith(b"220") and g2.startswith(b"220")
    third, g3 = await Client.open(ingest.port)
    assert g3 == reply_bytes(replies.TOO_MANY_SESSIONS_CLIENT)
    assert await third.reader.read() == b""  # and closed
    await first.cmd(b"QUIT")
    await first.close()
    await asyncio.sleep(0.1)
    fourth, g4 = await Client.open(ingest.port)  # a slot is free again
    assert g4.startswith(b"220")
    await asyncio.to_thread(ingest.refusals.flush)
    [refused] = ingest.records("refused")
    assert refused["limit"] == "server.max_sessions_per_client"
    assert refused["count"] == 1 and refused["clients"] == {"127.0.0.1": 1}
    for c in (second, fourth):
        await c.close()


@with_settings(server={"max_sessions_per_client": 1})
async def test_a_client_that_hangs_up_frees_its_slot_at_once(ingest: Ingest) -> None:
    """No QUIT (a health check, a port scan): the session ends now, not at the idle timeout."""
    for read_greeting in (True, False, True, False):
        reader, writer = await asyncio.open_connection("127.0.0.1", ingest.port)
        if read_greeting:
            assert (await reader.readline()).startswith(b"220")
        writer.close()  # gone, before or after the greeting
        await asyncio.wait_for(ingest.gate.wait_empty(5), 5)
    assert ingest.gate.per_client == {}
    client, greeting = await Client.open(ingest.port)
    assert greeting.startswith(b"220")
    await client.close()


@with_settings(server={"max_sessions": 2, "max_sessions_per_client": 10})
async def test_overall_session_cap_and_refusals_summarised(ingest: Ingest) -> None:
    keep = [await Client.open(ingest.port) for _ in range(2)]
    for _ in range(5):
        client, greeting = await Client.open(ingest.port)
        assert greeting == reply_bytes(replies.TOO_MANY_SESSIONS)
        await client.close()
    await asyncio.to_thread(ingest.refusals.flush)
    await asyncio.to_thread(ingest.refusals.flush)  # within the minute: nothing new is written
    [refused] = ingest.records("refused")
    assert refused["limit"] == "server.max_sessions" and refused["count"] == 5
    for client, _ in keep:
        await client.close()


@with_settings(limits={"max_backlog_messages": 2})
async def test_back_pressure_when_the_backlog_is_full(ingest: Ingest) -> None:
    assert (await send(ingest.port, MESSAGE)).startswith(QUEUED)
    client, _ = await Client.open(ingest.port)
    await client.envelope()  # MAIL and RCPT while there is room
    assert (await send(ingest.port, MESSAGE)).startswith(QUEUED)  # now the backlog is full
    assert await client.cmd(b"DATA") == reply_bytes(replies.BUSY)
    await client.cmd(b"RSET")
    assert await client.cmd(b"MAIL FROM:<a@vendor.example.com>") == reply_bytes(replies.BUSY)
    ingest.backlog.remove(ingest.accepted[0])  # the pipeline took one
    await client.envelope()
    assert (await client.data(MESSAGE)).startswith(QUEUED)
    await client.close()


@with_settings(limits={"max_backlog_bytes": 1000})
async def test_back_pressure_by_bytes(ingest: Ingest) -> None:
    assert (await send(ingest.port, b"Subject: x\r\n\r\n" + b"y" * 2000 + b"\r\n")).startswith(QUEUED)
    client, _ = await Client.open(ingest.port)
    assert (await client.cmd(b"EHLO c")).startswith(b"250")
    assert await client.cmd(b"MAIL FROM:<a@vendor.example.com>") == reply_bytes(replies.BUSY)
    await client.close()


async def test_drain_closes_idle_sessions_and_lets_data_finish(ingest: Ingest) -> None:
    idle, _ = await Client.open(ingest.port)
    busy, _ = await Client.open(ingest.port)
    await busy.envelope()
    assert await busy.cmd(b"DATA") == reply_bytes(replies.DATA_GO_AHEAD)
    busy.writer.write(b"Subject: in flight\r\n\r\npart one\r\n")
    await busy.writer.drain()
    await asyncio.sleep(0.1)
    ingest.gate.drain()
    ingest.handler.draining = True
    assert await idle.reply() == reply_bytes(replies.SHUTTING_DOWN)
    busy.writer.write(b"part two\r\n.\r\n")
    await busy.writer.drain()
    assert (await busy.reply()).startswith(QUEUED)  # the message in DATA is accepted ...
    assert await busy.reply() == reply_bytes(replies.SHUTTING_DOWN)  # ... then bye
    assert await ingest.gate.wait_empty(5)
    assert len(ingest.accepted) == 1
    late, greeting = await Client.open(ingest.port)  # the listener is ours to close; the gate says no
    assert greeting == reply_bytes(replies.SHUTTING_DOWN)
    await late.close()
    for c in (idle, busy):
        await c.close()


def test_refusal_record_fields_are_json(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl", fsync=False)
    log = RefusalLog(audit)
    for i in range(30):
        log.record("server.max_sessions", f"192.0.2.{i}", "421 x")
    log.flush()
    [line] = (tmp_path / "a.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["count"] == 30 and len(record["clients"]) == 20  # the top 20 clients


# -- DetoxSMTP's own __init__ -----------------------------------------------------------------------


def _comparable(value: Any, owner: object) -> Any:
    """What matters of an attribute: bound methods by function and owner ("self" for the protocol
    itself), readers by their limit, weak references by what they point at."""
    if inspect.ismethod(value):
        return ("method", value.__func__, "self" if value.__self__ is owner else value.__self__)
    if isinstance(value, dict):
        return {k: _comparable(v, owner) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_comparable(v, owner) for v in value)
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, weakref.ReferenceType):
        return ("weakref", _comparable(value(), owner))
    if isinstance(value, asyncio.Future):
        return ("future", value.done())
    return value


@pytest.mark.parametrize("tls", [False, True])
async def test_lean_init_makes_what_aiosmtpd_init_makes(tmp_path: Path, tls: bool) -> None:
    """The per-connection __init__ without introspection sets every attribute as aiosmtpd's does."""
    assert server_mod.LEAN_INIT, f"aiosmtpd {aiosmtpd.__version__}: check DetoxSMTP._lean_init against it"
    config = make_config(tmp_path)
    spool = Spool(tmp_path / "spool", fsync=False)
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    refusals = RefusalLog(audit)
    handler = Handler(lambda: config, spool, audit, Backlog(), refusals, lambda _: None)
    gate = SessionGate(lambda: config, refusals)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if tls else None
    kwargs: dict[str, Any] = {
        "hostname": "mx.example",
        "ident": "detox",
        "data_size_limit": 1234,
        "enable_SMTPUTF8": True,
        "decode_data": False,
        "tls_context": context,
        "require_starttls": tls,
        "timeout": 42.0,
        "loop": asyncio.get_running_loop(),
    }
    lean = server_mod.DetoxSMTP(handler, gate, **kwargs)
    lean_again = server_mod.DetoxSMTP(handler, gate, **kwargs)  # from the cached tables this time
    try:
        server_mod.LEAN_INIT = False
        full = server_mod.DetoxSMTP(handler, gate, **kwargs)
    finally:
        server_mod.LEAN_INIT = True
    want = {k: _comparable(v, full) for k, v in vars(full).items()}
    for made in (lean, lean_again):
        assert {k: _comparable(v, made) for k, v in vars(made).items()} == want
    assert set(lean._auth_methods) == {"LOGIN", "PLAIN"}
    assert lean._smtp_methods["DATA"].__func__ is server_mod.DetoxSMTP.smtp_DATA
    assert lean._handle_hooks["RCPT"] == handler.handle_RCPT


@pytest.mark.parametrize(
    "arg",
    [
        "",
        "<a@example.com>",
        "<a@example.com> SIZE=100 BODY=8BITMIME",
        "a@example.com",
        "<>",
        " <a@b.example>",
        "<@relay.example:a@b.example>",
        '<"quoted local"@example.com>',
        "<a@example.com",
        "<a b@example.com>",
        "<太郎@例え.jp> SMTPUTF8",
        "not an address",
        "<" + "x" * 100 + "@example.com>",
    ],
)
@pytest.mark.parametrize("local_part_limit", [0, 64])
async def test_getaddr_parses_as_aiosmtpd_does(tmp_path: Path, arg: str, local_part_limit: int) -> None:
    config = make_config(tmp_path)
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    refusals = RefusalLog(audit)
    handler = Handler(lambda: config, Spool(tmp_path / "spool"), audit, Backlog(), refusals, lambda _: None)
    loop = asyncio.get_running_loop()
    session = server_mod.DetoxSMTP(handler, SessionGate(lambda: config, refusals), **_SMTP_KWARGS, loop=loop)
    session.local_part_limit = local_part_limit
    assert session._getaddr(arg) == SMTP._getaddr(session, arg)
