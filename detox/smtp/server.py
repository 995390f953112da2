"""The listener: aiosmtpd's protocol with detox's session caps and its own DATA phase.

Why DATA is ours and not aiosmtpd's:

* aiosmtpd keeps the whole message in memory and answers 500 to any line over 1000 bytes. Senders
  do write longer lines (single-line HTML, broken generators), and hostile input must get a defined
  answer: lines up to ``limits.max_line_length`` are accepted and left to the pipeline; a longer one
  gets ``500 5.6.0`` after the end of DATA. Header fields are counted and sized the same way.
* The message is streamed to the spool as it arrives (``STREAM_CHUNK`` in memory per session), so
  many large messages at once do not balloon memory.
* Bare LF: a line ending in LF without CR (common from scripts and scanners) is accepted as part
  of the message, counted in the ``received`` audit record (``bare_lf``), and the message is
  rebuilt with CRLF by the pipeline anyway. Only ``<CRLF>.<CRLF>`` ends DATA and only a dot after
  CRLF is unstuffed: treating ``<LF>.<LF>`` as the end would let a message smuggle a second one
  past an upstream MTA that reads it differently (SMTP smuggling, CVE-2023-51764/51765/51766).
  A client that ends DATA with a bare ``.<LF>`` is therefore never answered and times out.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, cast

import aiosmtpd
from aiosmtpd import smtp as aiosmtpd_smtp
from aiosmtpd.smtp import SMTP

from detox.config.schema import DetoxConfig
from detox.smtp import replies
from detox.smtp.handler import Handler, RefusalLog
from detox.spool import IncomingWriter

log = logging.getLogger(__name__)

# End-of-DATA work that outlives a cancelled session (strong references: the loop keeps weak ones).
_FINISHING: set[asyncio.Task[str]] = set()

READ_LIMIT = 64 * 1024  # the stream reader's line buffer; longer lines are read in pieces
# A header field line as Python's email parser recognises one (feedparser.headerRE).
_HEADER_LINE = re.compile(rb"(From |[\041-\071\073-\176]*:|[\t ])")
_SIZE = re.compile(r"\bSIZE=(\d{1,20})\b", re.IGNORECASE)
# aiosmtpd releases whose SMTP.__init__ and _getaddr DetoxSMTP reproduces (tests/unit/test_smtp_ingest.py
# compares them attribute by attribute and result by result); any other release gets aiosmtpd's own.
LEAN_INIT_VERSIONS = ("1.4.",)
LEAN_INIT = str(aiosmtpd.__version__).startswith(LEAN_INIT_VERSIONS)


def tls_context(config: DetoxConfig) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


class SessionGate:
    """Open sessions, in all and per client address (``server.max_sessions*``); drains on SIGTERM."""

    def __init__(self, get_config: Callable[[], DetoxConfig], refusals: RefusalLog) -> None:
        self.get_config = get_config
        self.refusals = refusals
        self.sessions: set[DetoxSMTP] = set()
        self.per_client: Counter[str] = Counter()
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()

    def admit(self, session: DetoxSMTP, client: str) -> str | None:
        """Count a new session in, or return the reply refusing it."""
        server = self.get_config().server
        if self.draining:
            return replies.SHUTTING_DOWN
        if len(self.sessions) >= server.max_sessions:
            self.refusals.record("server.max_sessions", client, replies.TOO_MANY_SESSIONS)
            return replies.TOO_MANY_SESSIONS
        if self.per_client[client] >= server.max_sessions_per_client:
            log.info("refused a session from %s: %d open from it", client, self.per_client[client])
            self.refusals.record("server.max_sessions_per_client", client, replies.TOO_MANY_SESSIONS_CLIENT)
            return replies.TOO_MANY_SESSIONS_CLIENT
        self.sessions.add(session)
        self.per_client[client] += 1
        self._empty.clear()
        return None

    def leave(self, session: DetoxSMTP, client: str) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.per_client[client] -= 1
            if self.per_client[client] <= 0:
                del self.per_client[client]
        if not self.sessions:
            self._empty.set()

    def drain(self) -> None:
        """Stop: idle sessions get 421 now, a session in DATA after its reply."""
        self.draining = True
        for session in list(self.sessions):
            session.shut_down()

    async def wait_empty(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> None:
        for session in list(self.sessions):
            session.abort()


@dataclass(frozen=True, slots=True)
class _Tables:
    """What aiosmtpd's SMTP.__init__ finds by introspection, by attribute name: the same for every
    session of one (protocol class, handler class), so it is looked up once, not per connection."""

    auth: tuple[tuple[str, str, bool], ...]  # (mechanism, attribute, built in, i.e. on the protocol)
    hooks: tuple[tuple[str, str], ...]  # (command, handler attribute)
    commands: tuple[tuple[str, str], ...]  # (command, protocol attribute)
    ehlo_hook_ver: str | None


_TABLES: dict[tuple[type, type], _Tables] = {}


def _tables(protocol: SMTP, handler: Any) -> _Tables:
    key = (type(protocol), type(handler))
    tables = _TABLES.get(key)
    if tables is None:
        auth = tuple(
            (
                getattr(member, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-")),
                name,
                obj is protocol,
            )
            for obj in (protocol, handler)
            for name, member in inspect.getmembers(obj)
            if name.startswith("auth_")
        )
        hooks = tuple((m.replace("handle_", ""), m) for m in dir(handler) if m.startswith("handle_"))
        ehlo = getattr(handler, "handle_EHLO", None)
        ehlo_ver = None
        if ehlo is not None:
            count = len(inspect.signature(ehlo).parameters)
            if count not in (4, 5):
                raise RuntimeError("Unsupported EHLO Hook")
            ehlo_ver = "new" if count == 5 else "old"
        commands = tuple((m.replace("smtp_", ""), m) for m in dir(protocol) if m.startswith("smtp_"))
        tables = _TABLES[key] = _Tables(auth, hooks, commands, ehlo_ver)
    return tables


class DetoxSMTP(SMTP):
    line_length_limit = READ_LIMIT  # aiosmtpd sizes its StreamReader with this

    def __init__(self, handler: Handler, gate: SessionGate, **kwargs: Any) -> None:
        if LEAN_INIT:
            self._lean_init(handler, **kwargs)
        else:
            super().__init__(handler, **kwargs)
        self.detox_handler = handler
        self.gate = gate
        self._client = ""
        self._admitted = False
        self._refused = False
        self._in_data = False
        self._close_after_data = False

    def _lean_init(
        self,
        handler: Handler,
        *,
        data_size_limit: int | None,
        enable_SMTPUTF8: bool,
        decode_data: bool,
        hostname: str | None,
        ident: str | None,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """aiosmtpd's SMTP.__init__ for the arguments detox passes (no AUTH, no call limit, no PROXY).

        aiosmtpd's own builds its AUTH, hook and command tables with ``inspect.getmembers`` and
        ``dir`` for every connection, about a fifth of the event loop's time per message; here they
        come from ``_tables``, computed once per class. The attributes are the same (a unit test
        compares them with what aiosmtpd's __init__ makes).
        """
        self.__ident__ = ident or aiosmtpd_smtp.__ident__
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname or socket.getfqdn()
        self.tls_context = tls_context
        if tls_context and tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            log.warning("tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}")
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = aiosmtpd_smtp.login_always_fail
        self._auth_required = False
        tables = _tables(self, handler)
        self._auth_methods = {
            mech: aiosmtpd_smtp._AuthMechAttr(getattr(self if builtin else handler, name), builtin)
            for mech, name, builtin in tables.auth
        }
        self._handle_hooks = {command: getattr(handler, name) for command, name in tables.hooks}
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {command: getattr(self, name) for command, name in tables.commands}
        self._enforce_call_limit = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's _getaddr (MAIL and RCPT) without the typing.Protocol class it defines on every
        call, only for its type checker: a class creation (ABCMeta, Protocol.__init_subclass__) per
        command. Same parsing, same results (a unit test compares them)."""
        if not LEAN_INIT:  # a release this copy was not checked against: its own parser
            result: tuple[str | None, str | None] = super()._getaddr(arg)
            return result
        if not arg:
            return "", ""
        address: Any
        try:
            if arg.lstrip().startswith("<"):
                address, rest = get_angle_addr(arg)
            else:
                address, rest = get_addr_spec(arg)
        except HeaderParseError:
            return None, None
        addr: str = address.addr_spec
        localpart = addr.rpartition("@")[0]
        if self.local_part_limit and len(localpart) > self.local_part_limit:
            return None, None
        return addr, rest

    # -- sessions ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._admitted:  # STARTTLS: the same session on its TLS transport
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        refusal = self.gate.admit(self, self._client)
        if refusal is not None:
            self._refused = True
            cast(asyncio.Transport, transport).write(refusal.encode("ascii") + b"\r\n")
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted:
            self._admitted = False
            self.gate.leave(self, self._client)
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        # aiosmtpd keeps a half-closed connection open until its idle timeout; a client that hung
        # up (a health check, a scanner, a client gone mid-DATA) would hold a session slot that long.
        if not self._refused:
            super().eof_received()
        return False

    def shut_down(self) -> None:
        if self._in_data:
            self._close_after_data = True
        else:
            self._goodbye()

    def _goodbye(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            cast(asyncio.Transport, transport).write(replies.SHUTTING_DOWN.encode("ascii") + b"\r\n")
            transport.close()

    def abort(self) -> None:
        transport = self.transport
        if transport is not None:
            cast(asyncio.Transport, transport).abort()  # uvloop's transports are not subclasses

    async def smtp_MAIL(self, arg: str | None) -> None:
        # aiosmtpd would refuse a declared SIZE over the limit before any hook runs: do it here, recorded.
        declared = _SIZE.search(arg or "")
        if declared and self.data_size_limit and int(declared.group(1)) > self.data_size_limit:
            if await self.check_helo_needed():
                return
            self.gate.refusals.record("server.max_message_bytes", self._client, replies.MESSAGE_TOO_BIG)
            await self.push(replies.MESSAGE_TOO_BIG)
            return
        await super().smtp_MAIL(arg)

    # -- DATA -------------------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.envelope = self._create_envelope()

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(replies.NO_RECIPIENTS)
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        refusal = self.detox_handler.data_refusal(self.session)
        if refusal is not None:
            self._reset_transaction()
            await self.push(refusal)
            return
        writer = self.detox_handler.begin(self.session, self.envelope)
        self._in_data = True
        finishing: asyncio.Task[str] | None = None
        try:
            await self.push(replies.DATA_GO_AHEAD)
            limit, bare_lf = await self._receive(writer)
            # The whole message is here: commit, audit and schedule it even if the session is
            # cancelled now (a client hanging up right after ".", a stop). Cut halfway, a committed
            # message would wait in incoming/ unscheduled until the next start.
            finishing = asyncio.ensure_future(self.detox_handler.finish(writer, limit, bare_lf))
            _FINISHING.add(finishing)
            finishing.add_done_callback(_FINISHING.discard)
            reply = await asyncio.shield(finishing)
        except BaseException:
            if finishing is None:
                writer.abort()  # the client went away (or we stop) during DATA: nothing was accepted
            raise
        finally:
            self._in_data = False
        self._reset_transaction()
        await self.push(reply)
        if self._close_after_data or self.gate.draining:
            self._goodbye()

    async def _receive(self, writer: IncomingWriter) -> tuple[tuple[str, str] | None, int]:
        """Read DATA to its end into ``writer``; the (limit key, reply) hit, if any, and bare LFs."""
        config = self.detox_handler.get_config()
        max_bytes = self.data_size_limit or 0
        max_line = config.limits.max_line_length
        max_headers = config.limits.max_header_count
        max_header_bytes = config.limits.max_header_bytes
        reader = self._reader
        limit: tuple[str, str] | None = None
        after_crlf = True  # the previous line ended in CRLF (the DATA command did)
        line_len = 0
        in_headers = True
        header_count = header_bytes = bare_lf = 0
        stored = 0
        piece_ends_cr = False  # a long line is read in pieces: its CR may end one, its LF start the next
        while True:
            try:
                chunk = await reader.readuntil(b"\n")
                complete = True
            except asyncio.LimitOverrunError as exc:
                chunk = await reader.read(exc.consumed)
                complete = False
            except asyncio.IncompleteReadError as exc:
                raise ConnectionResetError("connection closed during DATA") from exc
            at_start = line_len == 0
            if at_start and after_crlf:
                if complete and chunk == b".\r\n":
                    break
                if chunk.startswith(b"."):
                    chunk = chunk[1:]  # RFC 5321 §4.5.2 transparency
            line_len += len(chunk)
            if limit is None and in_headers:
                if at_start:
                    if chunk in (b"\r\n", b"\n") or not _HEADER_LINE.match(chunk):
                        in_headers = False  # the blank line, or a body without one
                    elif chunk[:1] not in (b" ", b"\t"):
                        header_count += 1
                if in_headers:
                    header_bytes += len(chunk)
                    if header_count > max_headers:
                        limit = (
                            "limits.max_header_count",
                            replies.TOO_MANY_HEADERS.format(limit=max_headers),
                        )
                    elif header_bytes > max_header_bytes:
                        limit = (
                            "limits.max_header_bytes",
                            replies.HEADERS_TOO_BIG.format(limit=max_header_bytes),
                        )
            if limit is None:
                if max_bytes and stored + len(chunk) > max_bytes:
                    limit = ("server.max_message_bytes", replies.MESSAGE_TOO_BIG)
                elif line_len > max_line:
                    limit = ("limits.max_line_length", replies.LINE_TOO_LONG.format(limit=max_line))
            if limit is None:
                stored += len(chunk)
                if writer.feed(chunk):
                    await asyncio.to_thread(writer.flush)
            elif stored:
                writer.abort()  # drop what was buffered or written; keep reading to the end
                stored = 0
            if complete:
                after_crlf = chunk.endswith(b"\r\n") or (chunk == b"\n" and piece_ends_cr)
                if not after_crlf:
                    bare_lf += 1
                line_len = 0
            piece_ends_cr = chunk.endswith(b"\r")
        return limit, bare_lf


async def start_listener(
    get_config: Callable[[], DetoxConfig],
    get_tls: Callable[[], ssl.SSLContext | None],
    handler: Handler,
    gate: SessionGate,
    host: str,
    port: int,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        # Read per connection: a reload (SIGHUP) applies to every session opened after it.
        config = get_config()
        context = get_tls()
        return DetoxSMTP(
            handler,
            gate,
            hostname=config.server.hostname,
            ident="detox",
            data_size_limit=config.server.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=context,
            require_starttls=config.server.require_tls and context is not None,
            timeout=config.server.timeout_s,
            loop=loop,
        )

    return await loop.create_server(factory, host=host, port=port, backlog=1024, reuse_address=True)
