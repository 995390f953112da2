"""Listener wiring: aiosmtpd's protocol on our event loop, with TLS and size limits from config."""

from __future__ import annotations

import asyncio
import ssl

from aiosmtpd.smtp import SMTP

from detox.config.schema import DetoxConfig
from detox.smtp.handler import Handler


def tls_context(config: DetoxConfig) -> ssl.SSLContext | None:
    if not config.server.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.server.tls_cert, config.server.tls_key)
    return context


async def start_listener(config: DetoxConfig, handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    context = tls_context(config)

    def factory() -> SMTP:
        return SMTP(
            handler,
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
