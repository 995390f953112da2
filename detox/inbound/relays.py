"""Trusted upstream relays: who really handed us the message, and which headers we may believe.

When the connecting client is in ``inbound.trusted_relays`` (the prefecture's security cloud, our
own Internet-side MTA), SPF must be judged on the host that handed the message to *that* relay. We
walk the ``Received:`` headers from the top (each prepended by the hop that received the message):
the top one was written by the connecting relay and names the host it received from; as long as that
host is trusted too, we go one header down. The first untrusted host's IP and HELO are the ones
authenticated (rspamd's external_relay, m-FILTER's 中継MTA list work the same way).

Only headers added by trusted hops are believed: those above the ``Received:`` header that the first
untrusted hop wrote itself. A trusted relay must remove incoming Authentication-Results carrying its
own authserv-id (RFC 8601 §5); given that, an ``Authentication-Results`` header in that region with
an id in ``inbound.trusted_authserv_ids`` is the relay's own verdict and may be taken instead of
re-checking.

A Received header we cannot read ends the walk: the hop is then unknown and SPF is ``none`` (never a
pass on a guess).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_RECEIVED = 30

_FROM_CLAUSE = re.compile(r"^\s*from\s+(?P<helo>[^\s()]+)?\s*(?P<rest>.*?)(?:\s+by\s|;|$)", re.I | re.S)
_BRACKET_IP = re.compile(r"\[(?:IPv6:)?(?P<ip>[0-9A-Fa-f:.]{2,45})\]")
_HELO_EQ = re.compile(r"\bhelo=(?P<helo>[^\s()\]]+)", re.I)


def parse_networks(cidrs: Sequence[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def is_trusted(ip: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def parse_received(value: str) -> tuple[str, str] | None:
    """(ip, helo) of the host a Received header says the message came from; None if unreadable."""
    m = _FROM_CLAUSE.match(value)
    if m is None:
        return None
    clause = m.group(0)
    ipm = _BRACKET_IP.search(clause)
    if ipm is None:
        return None
    try:
        ip = str(ipaddress.ip_address(ipm.group("ip")))
    except ValueError:
        return None
    helo = m.group("helo") or ""
    eq = _HELO_EQ.search(clause)
    if eq is not None:
        helo = eq.group("helo")
    return ip, helo.strip("[]")


@dataclass(frozen=True, slots=True)
class Hop:
    ip: str  # "" = unknown (a Received header we could not read, or every hop trusted)
    helo: str
    trusted_hops: int  # how many Received headers were written by trusted hops
    believed: int  # headers[:believed] were added by trusted hops (0 = none)


def judge(
    client_ip: str, helo: str, headers: Sequence[tuple[str, str]], networks: Sequence[IPNetwork]
) -> Hop:
    """The host to authenticate. ``headers``: (lower-case name, value) top first, as received."""
    if not is_trusted(client_ip, networks):
        return Hop(ip=client_ip, helo=helo, trusted_hops=0, believed=0)
    received = [i for i, (name, _) in enumerate(headers) if name == "received"][:MAX_RECEIVED]
    for n, index in enumerate(received):
        parsed = parse_received(headers[index][1])
        if parsed is None:
            return Hop(ip="", helo="", trusted_hops=n + 1, believed=0)
        ip, hop_helo = parsed
        if not is_trusted(ip, networks):
            below = received[n + 1] if n + 1 < len(received) else len(headers)
            return Hop(ip=ip, helo=hop_helo, trusted_hops=n + 1, believed=below)
    return Hop(ip="", helo="", trusted_hops=len(received), believed=0)
