"""DNS for sender authentication: an async resolver with timeouts, a TTL cache and per-message caps.

Why its own layer: SPF, DKIM, ARC and DMARC all ask DNS, often the same names for many messages
(the partner's SPF record, its DKIM key, ``_dmarc``). One cache shared by all of them keeps the
extra CPU per message small, and one place decides what a failure means: **any DNS failure
(timeout, SERVFAIL, refused, an oversized answer) raises** :class:`DnsTempError`, which every
caller turns into ``temperror`` — never into ``pass``.

The libraries we use (pyspf, dkimpy) are synchronous and CPU-bound (RSA/ed25519). They run in a
worker thread; :class:`SyncLookup` lets them call back into this resolver on the event loop, and
carries the per-message budget (number of queries, wall-clock deadline).

``inbound.nameservers``: ``IP`` or ``IP:PORT`` (``[v6]:PORT`` for IPv6 with a port); empty = the
system resolver (/etc/resolv.conf).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver

from detox.config.schema import parse_nameserver

# An answer's TTL is capped here (a hostile zone could pin a record for years) and floored (a TTL
# of 0 would defeat the cache under load).
MAX_TTL_S = 3600
MIN_TTL_S = 5
# NXDOMAIN / no data: cached this long (RFC 2308 would use the SOA minimum; short is safer here).
NEGATIVE_TTL_S = 60
# A failure (timeout, SERVFAIL) is remembered this long (RFC 2308 §7 allows up to 5 minutes): during a
# DNS outage each message gets its temperror at once instead of waiting out the timeouts again.
FAILURE_TTL_S = 15
# A TXT RRset larger than this (all strings of all records) is refused: SPF, DKIM and DMARC records
# are far smaller; an attacker's huge record should cost neither memory nor CPU.
MAX_TXT_BYTES = 8192
# Records of one RRset (MX, A, TXT) looked at.
MAX_RECORDS = 64
SUPPORTED = ("A", "AAAA", "MX", "PTR", "TXT")


class DnsTempError(Exception):
    """DNS could not answer (timeout, SERVFAIL, budget spent): the caller's result is temperror."""


class DnsDataError(Exception):
    """DNS answered with something we refuse to use (e.g. a TXT record over the size cap)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup's result. ``exists`` is false for NXDOMAIN (the name does not exist at all)."""

    qtype: str
    records: tuple[str | bytes | tuple[int, str], ...]
    exists: bool = True


class Resolver:
    """An async resolver with a TTL-respecting, size-capped LRU cache. Safe on one event loop."""

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        *,
        timeout_s: float = 2.0,
        cache_size: int = 10_000,
    ) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            parsed = [parse_nameserver(n) for n in nameservers]
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in parsed]
        else:
            try:
                resolver = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                # No /etc/resolv.conf (a bare container): every lookup is then a temperror.
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = []
        resolver.timeout = timeout_s
        resolver.lifetime = timeout_s
        resolver.cache = None  # ours below: it caps size and NXDOMAIN handling is ours
        self._resolver = resolver
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer | DnsTempError]] = OrderedDict()
        self._cache_size = cache_size
        self.queries = 0  # sent to the network (not answered from the cache)
        self.hits = 0

    async def lookup(self, name: str, qtype: str) -> Answer:
        """Records of ``qtype`` at ``name``. Empty when there are none. Raises DnsTempError/DnsDataError."""
        if qtype not in SUPPORTED:
            raise ValueError(qtype)
        key = (_normalise(name), qtype)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            self._cache.move_to_end(key)
            self.hits += 1
            if isinstance(cached[1], DnsTempError):
                raise DnsTempError(str(cached[1]))
            return cached[1]
        try:
            answer, ttl = await self._query(key[0], qtype)
        except DnsTempError as exc:
            self._remember(key, now + FAILURE_TTL_S, exc)
            raise
        self._remember(key, now + ttl, answer)
        return answer

    def _remember(self, key: tuple[str, str], until: float, value: Answer | DnsTempError) -> None:
        self._cache[key] = (until, value)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def cached(self, name: str, qtype: str) -> Answer | None:
        """A fresh cached answer, or None; callable from any thread (a dict read under the GIL; the
        LRU order is left to the loop). A cached failure raises DnsTempError."""
        entry = self._cache.get((_normalise(name), qtype))
        if entry is None or entry[0] <= time.monotonic():
            return None
        self.hits += 1
        if isinstance(entry[1], DnsTempError):
            raise DnsTempError(str(entry[1]))
        return entry[1]

    async def _query(self, name: str, qtype: str) -> tuple[Answer, float]:
        if not name or len(name) > 253 or any(not 0 < len(label) < 64 for label in name.split(".")):
            return Answer(qtype, (), exists=False), NEGATIVE_TTL_S
        try:
            dns.name.from_text(name)
        except dns.exception.DNSException:
            return Answer(qtype, (), exists=False), NEGATIVE_TTL_S
        if not self._resolver.nameservers:
            raise DnsTempError("no nameserver configured")
        self.queries += 1
        try:
            result = await self._resolver.resolve(name, qtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Answer(qtype, (), exists=False), NEGATIVE_TTL_S
        except dns.resolver.YXDOMAIN as exc:
            raise DnsDataError(f"{qtype} {name}: {exc}") from exc
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as exc:
            raise DnsTempError(f"{qtype} {name}: {type(exc).__name__}") from exc
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{qtype} {name}: {type(exc).__name__}") from exc
        except OSError as exc:
            raise DnsTempError(f"{qtype} {name}: {exc}") from exc
        rrset = result.rrset
        if rrset is None:
            return Answer(qtype, ()), NEGATIVE_TTL_S
        ttl = float(min(max(rrset.ttl, MIN_TTL_S), MAX_TTL_S))
        records: list[str | bytes | tuple[int, str]] = []
        total = 0
        for rdata in list(rrset)[:MAX_RECORDS]:
            if qtype == "TXT":
                data = b"".join(rdata.strings)
                total += len(data)
                if total > MAX_TXT_BYTES:
                    raise DnsDataError(f"TXT {name}: over {MAX_TXT_BYTES} bytes")
                records.append(data)
            elif qtype in ("A", "AAAA"):
                records.append(str(rdata.address))
            elif qtype == "MX":
                records.append((int(rdata.preference), rdata.exchange.to_text(omit_final_dot=True)))
            else:  # PTR
                records.append(rdata.target.to_text(omit_final_dot=True))
        return Answer(qtype, tuple(records)), ttl


def _normalise(name: str) -> str:
    """The cache key: lower case, no final dot (the name is checked when it is first asked)."""
    return name.strip().rstrip(".").lower()


class SyncLookup:
    """A blocking view of :class:`Resolver` for pyspf/dkimpy running in a worker thread.

    Each message gets its own: ``max_queries`` lookups (cache hits included: they are what an
    attacker's record can multiply) and a wall-clock ``deadline`` for all of them. Past either,
    every lookup raises DnsTempError.
    """

    def __init__(
        self, resolver: Resolver, loop: asyncio.AbstractEventLoop, *, max_queries: int, deadline_s: float
    ) -> None:
        self._resolver = resolver
        self._loop = loop
        self._left = max_queries
        self._deadline = time.monotonic() + deadline_s

    def lookup(self, name: str, qtype: str) -> Answer:
        if self._left <= 0:
            raise DnsTempError("DNS lookup budget for this message spent")
        self._left -= 1
        cached = self._resolver.cached(name, qtype)  # no hop to the event loop for a cache hit
        if cached is not None:
            return cached
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DnsTempError("DNS deadline for this message passed")
        future = asyncio.run_coroutine_threadsafe(self._resolver.lookup(name, qtype), self._loop)
        try:
            return future.result(timeout=remaining)
        except TimeoutError as exc:
            future.cancel()
            raise DnsTempError(f"{qtype} {name}: deadline") from exc

    def txt(self, name: str | bytes, timeout: float = 5.0) -> bytes | None:
        """dkimpy's ``dnsfunc`` (it passes the name as bytes): the first TXT record; None when none."""
        del timeout  # ours is the message's deadline
        if isinstance(name, bytes):
            try:
                name = name.decode("ascii")
            except UnicodeDecodeError:
                return None
        answer = self.lookup(name, "TXT")
        for record in answer.records:
            if isinstance(record, bytes):
                return record
        return None
