"""SPF (RFC 7208) for MAIL FROM, and for the HELO name when MAIL FROM is null.

pyspf does the evaluation: it implements RFC 7208 with its processing limits (10 DNS-querying
terms, 10 MX/PTR names, 2 void lookups), macros and ``exp=``, and ships the RFC 7208 YAML test suite,
which tests/unit/test_inbound_spf_suite.py runs through *our* DNS layer and a real DNS server. Writing
our own evaluator would mean re-deriving all of that; pyspf's only gap is its DNS: it calls a
module-level ``spf.DNSLookup`` and has no TTL cache. We install one dispatcher that sends each
lookup to the :class:`~detox.inbound.dns.SyncLookup` of the message being checked in *this* thread
(pyspf runs in a worker thread; several messages may be checked at once in different threads).
A thread with no lookup installed gets a TempError: fail closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import spf as pyspf

from detox.inbound.dns import DnsDataError, DnsTempError, SyncLookup
from detox.inbound.results import SpfResult

_local = threading.local()


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> Iterator[Any]:
    """pyspf's DNSLookup contract: ((name, type), value) pairs; TXT values are tuples of bytes."""
    del strict, timeout
    lookup: SyncLookup | None = getattr(_local, "lookup", None)
    if lookup is None:
        raise pyspf.TempError("DNS: no resolver for this thread")
    if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
        return iter(())  # type 99 (SPF) records are obsolete (RFC 7208 §3.1): never asked
    try:
        answer = lookup.lookup(name, qtype)
    except DnsTempError as exc:
        raise pyspf.TempError(f"DNS {exc}") from exc
    except DnsDataError as exc:
        raise pyspf.PermError(f"DNS {exc}") from exc
    out: list[Any] = [((name, qtype), (record,) if qtype == "TXT" else record) for record in answer.records]
    return iter(out)


pyspf.DNSLookup = _dispatch


def check_spf(lookup: SyncLookup, *, client_ip: str, mail_from: str, helo: str) -> SpfResult:
    """Blocking: run in a worker thread. ``mail_from`` "" means the null sender (the HELO is checked)."""
    _local.lookup = lookup
    try:
        query = pyspf.query(i=client_ip, s=mail_from, h=helo, timeout=20, querytime=0)
        result, _code, explanation = query.check()
        identity = query.ident  # "mailfrom" or "helo"
        domain = query.d if identity == "mailfrom" else helo
    except Exception as exc:  # noqa: BLE001 - pyspf raises odd things on odd input (bad IPs, ...): permerror
        return SpfResult(
            result="permerror",
            domain=(mail_from.rpartition("@")[2] or helo).lower(),
            identity="helo" if not mail_from else "mailfrom",
            reason=f"{type(exc).__name__}: {exc}"[:200],
        )
    finally:
        _local.lookup = None
    return SpfResult(
        result=result if result in _RESULTS else "permerror",
        domain=str(domain or "").lower().rstrip("."),
        identity=identity,
        reason=str(explanation)[:200],
    )


_RESULTS = frozenset({"pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"})
