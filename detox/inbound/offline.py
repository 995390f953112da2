"""Sender authentication for ``detox scan`` (offline): which client to judge, and running it.

The relay knows the client's IP and HELO from its SMTP session; a saved message does not. ``detox scan``
takes them from ``--client-ip``/``--helo`` when given (source ``scan-option``); else from the top
``Received:`` header, the hop that handed the message to the last MTA — which the admin who saved the
mail trusts as its source (``scan-received``); with neither, SPF is ``none`` (``scan-none``). Behind
``inbound.trusted_relays`` the walk then goes on down the Received chain as in the relay. The report's
``authentication.results.source`` and ``client_ip`` say what was chosen.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.inbound.check import Authenticator, Outcome
from detox.inbound.message import header_fields
from detox.inbound.relays import parse_received


def choose_client(raw: bytes, client_ip: str | None, helo: str | None) -> tuple[str, str, str]:
    """(ip, helo, source) for an offline run."""
    if client_ip:
        return client_ip, helo or "", "scan-option"
    for name, value in header_fields(raw):
        if name == "received":
            parsed = parse_received(value)
            if parsed is not None:
                return parsed[0], helo or parsed[1], "scan-received"
            break
    return "", helo or "", "scan-none"


def authenticate_offline(
    config: DetoxConfig, raw: bytes, envelope: Envelope, client_ip: str | None, helo: str | None
) -> tuple[Envelope, Outcome]:
    ip, hello, source = choose_client(raw, client_ip, helo)
    authenticator = Authenticator(config.inbound, accepted_domains=config.server.accepted_domains)

    async def run() -> Outcome:
        return await authenticator.authenticate(raw, client_ip=ip, helo=hello, mail_from=envelope.mail_from)

    outcome = asyncio.run(run())
    if outcome.results.source == "smtp":
        outcome = replace(outcome, results=replace(outcome.results, source=source))
    return replace(envelope, auth=outcome.to_json()), outcome
