"""The parts of the message authentication looks at: the header fields, the From, Reply-To.

Read straight from the bytes as received (DKIM signs those, not a re-serialisation), with caps: at
most MAX_HEADERS fields, each value decoded as latin-1 (lossless) so any byte is kept as it came.
"""

from __future__ import annotations

import email.header
import email.utils
from dataclasses import dataclass

MAX_HEADERS = 1000
MAX_ADDRESSES = 20


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of each header field, top first."""
    end = message.find(b"\r\n\r\n")
    end2 = message.find(b"\n\n")
    cut = min(e for e in (end, end2, len(message)) if e >= 0)
    fields: list[tuple[str, str]] = []
    for raw in message[:cut].decode("latin-1").replace("\r\n", "\n").split("\n"):
        if raw[:1] in (" ", "\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + " " + raw.strip())
            continue
        name, sep, value = raw.partition(":")
        if not sep or not name.strip() or " " in name.strip():
            continue
        if len(fields) >= MAX_HEADERS:
            break
        fields.append((name.strip().lower(), value.strip()))
    return fields


def _decode(value: str) -> str:
    """RFC 2047 words decoded; the raw bytes (as latin-1) reinterpreted as UTF-8 when they are."""
    try:
        raw = value.encode("latin-1")
        value = raw.decode("utf-8")
    except UnicodeError:
        pass
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # noqa: BLE001 - hostile input: never a pass
        return value


def to_ascii_domain(domain: str) -> str:
    """The A-label form of a domain ("" if it is not a usable domain name)."""
    domain = domain.strip().rstrip(".").lower()
    if not domain or len(domain) > 253 or any(c in domain for c in ' \t"\\<>[]()@,;:'):
        return ""
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return ""
    labels = ascii_domain.split(".")
    if len(labels) < 2 or any(not 0 < len(lb) < 64 for lb in labels):
        return ""
    return ascii_domain


@dataclass(frozen=True, slots=True)
class Author:
    addresses: tuple[str, ...]
    display_names: tuple[str, ...]
    domain: str  # A-label form; "" when there is not exactly one From address with a domain
    problem: str  # "" | "no From header" | "several From headers" | "From without a domain" | ...
    reply_to_domains: tuple[str, ...]


def author(fields: list[tuple[str, str]]) -> Author:
    froms = [v for n, v in fields if n == "from"]
    addresses: list[str] = []
    names: list[str] = []
    for value in froms[:MAX_ADDRESSES]:
        for name, addr in email.utils.getaddresses([_decode(value)])[:MAX_ADDRESSES]:
            if addr or name:
                addresses.append(addr)
                names.append(name)
    reply_domains: list[str] = []
    for value in [v for n, v in fields if n == "reply-to"][:MAX_ADDRESSES]:
        for _name, addr in email.utils.getaddresses([_decode(value)])[:MAX_ADDRESSES]:
            d = to_ascii_domain(addr.rpartition("@")[2]) if "@" in addr else ""
            if d:
                reply_domains.append(d)
    problem = ""
    domain = ""
    if not froms:
        problem = "no From header"
    elif len(froms) > 1:
        problem = "several From headers"
    elif len(addresses) != 1:
        problem = "From with several or no addresses"
    elif "@" not in addresses[0]:
        problem = "From without a domain"
    else:
        domain = to_ascii_domain(addresses[0].rpartition("@")[2])
        if not domain:
            problem = "From with an invalid domain"
    return Author(tuple(addresses), tuple(names), domain, problem, tuple(reply_domains))
