"""DKIM (RFC 6376): every signature verified, rsa-sha256 and ed25519 (RFC 8463); rsa keys under 1024
bits fail (RFC 8301). ARC (RFC 8617): the chain verified, and whether a trusted sealer saw a pass.

dkimpy does the cryptography and canonicalisation (the maintained Python implementation, also the
engine of dkimpy-milter; it signs too, which the tests use to make real signatures). It is synchronous
and gets our DNS through its ``dnsfunc`` hook; a DNS failure surfaces as
:class:`~detox.inbound.dns.DnsTempError`, which we turn into ``temperror`` (dkimpy itself would call
a timeout a plain failure). Blocking: run in a worker thread.
"""

from __future__ import annotations

import logging
import re

import dkim as dkimpy
import dkim.crypto as dkim_crypto

from detox.inbound.dns import DnsDataError, DnsTempError, SyncLookup
from detox.inbound.results import ArcResult, DkimResult

# Signatures looked at per message; more are reported as policy (an attacker's 500 signatures must
# not cost 500 RSA verifications and DNS lookups).
MAX_SIGNATURES = 8
MAX_ARC_INSTANCES = 10  # RFC 8617 §4.2.1: i= is 1..50; real chains are a few hops long
MIN_KEY_BITS = 1024


# dkimpy converts RSA integers to and from bytes one byte at a time in Python (about half of its
# 1.2 ms per rsa-sha256 2048 signature here). The same functions with int.to_bytes/from_bytes; exact
# same results (tests/unit/test_inbound.py checks them against dkimpy's own).
def _int2str(n: int, length: int = -1) -> bytes:
    assert n >= 0
    if length < 0:
        return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return (n & ((1 << (8 * length)) - 1)).to_bytes(length, "big")


def _str2int(s: bytes) -> int:
    return int.from_bytes(bytes(s), "big")


_ORIGINAL_INT2STR, _ORIGINAL_STR2INT = dkim_crypto.int2str, dkim_crypto.str2int
dkim_crypto.int2str, dkim_crypto.str2int = _int2str, _str2int

_quiet = logging.getLogger("detox.inbound.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def _tags(value: bytes) -> dict[bytes, bytes]:
    """A lenient tag=value parse, only to name a signature (d=, s=, a=) in results."""
    out: dict[bytes, bytes] = {}
    for item in value.split(b";")[:64]:
        k, sep, v = item.partition(b"=")
        if sep:
            out.setdefault(k.strip().lower(), re.sub(rb"\s+", b"", v))
    return out


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")[:253]


def verify_dkim(message: bytes, lookup: SyncLookup) -> tuple[DkimResult, ...]:
    """One result per DKIM-Signature header (top first), at most MAX_SIGNATURES verified."""
    try:
        d = dkimpy.DKIM(message, logger=_quiet, minkey=MIN_KEY_BITS)
    except Exception as exc:  # noqa: BLE001 - dkimpy's parse of a hostile header section
        return (DkimResult(result="permerror", reason=f"unparsable message: {type(exc).__name__}"),)
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    results: list[DkimResult] = []
    for idx, raw in enumerate(sigs):
        tags = _tags(raw)
        name = {
            "domain": _text(tags.get(b"d", b"")).lower(),
            "selector": _text(tags.get(b"s", b"")),
            "algorithm": _text(tags.get(b"a", b"")).lower(),
        }
        if idx >= MAX_SIGNATURES:
            results.append(DkimResult(result="policy", reason="too many signatures", **name))
            continue
        results.append(_verify_one(d, idx, lookup, name))
    return tuple(results)


def _verify_one(d: dkimpy.DKIM, idx: int, lookup: SyncLookup, name: dict[str, str]) -> DkimResult:
    try:
        ok = d.verify(idx=idx, dnsfunc=lookup.txt)
    except DnsTempError as exc:
        return DkimResult(result="temperror", reason=str(exc)[:120], **name)
    except DnsDataError as exc:
        return DkimResult(result="permerror", reason=str(exc)[:120], **name)
    except dkimpy.KeyFormatError as exc:
        # Too small a key (RFC 8301), a malformed key record.
        return DkimResult(result="fail", reason=str(exc)[:120], **name)
    except dkimpy.ValidationError as exc:
        if "body hash mismatch" in str(exc):  # a real signature over other bytes: the mail was changed
            return DkimResult(result="fail", reason="body hash mismatch", **name)
        return DkimResult(result="permerror", reason=str(exc)[:120], **name)
    except dkimpy.DKIMException as exc:
        # Malformed signature tags, unknown algorithm, expired (x=), ...: the signature is unusable.
        return DkimResult(result="permerror", reason=str(exc)[:120], **name)
    except Exception as exc:  # noqa: BLE001 - dkimpy on hostile input (bad base64, odd keys): never a pass
        return DkimResult(result="permerror", reason=f"{type(exc).__name__}"[:120], **name)
    if ok:
        algorithm = name["algorithm"]
        if algorithm not in ("rsa-sha256", "ed25519-sha256"):
            # rsa-sha1 is historic (RFC 8301): verified, but not a pass.
            return DkimResult(result="fail", reason=f"algorithm {algorithm} not accepted", **name)
        return DkimResult(result="pass", **name)
    reason = "signature did not verify"
    if getattr(d, "pk", None) is None:
        reason = "no usable key (missing, revoked or malformed)"
    return DkimResult(result="fail", reason=reason, **name)


def verify_arc(message: bytes, lookup: SyncLookup) -> ArcResult:
    """The ARC chain as a whole (dkimpy's arc_verify), plus who sealed each instance."""
    try:
        a = dkimpy.ARC(message, logger=_quiet, minkey=MIN_KEY_BITS)
    except Exception as exc:  # noqa: BLE001 - hostile input: never a pass
        return ArcResult(result="fail", reason=f"unparsable message: {type(exc).__name__}")
    seals = [v for k, v in a.headers if k.lower() == b"arc-seal"]
    if not seals:
        return ArcResult(result="none")
    by_instance: dict[int, str] = {}
    for raw in seals:
        tags = _tags(raw)
        try:
            instance = int(tags.get(b"i", b"0"))
        except ValueError:
            return ArcResult(result="fail", reason="ARC-Seal with a bad i= tag")
        by_instance[instance] = _text(tags.get(b"d", b"")).lower()
    if len(seals) > MAX_ARC_INSTANCES or max(by_instance) > MAX_ARC_INSTANCES:
        return ArcResult(result="fail", instances=len(seals), reason="too many ARC sets")
    sealers = tuple(by_instance.get(i, "") for i in range(1, max(by_instance) + 1))
    try:
        cv, _data, reason = a.verify(dnsfunc=lookup.txt)
    except DnsTempError as exc:
        return ArcResult(result="fail", instances=len(sealers), sealers=sealers, reason=f"temperror: {exc}")
    except Exception as exc:  # noqa: BLE001 - hostile input: never a pass
        return ArcResult(result="fail", instances=len(sealers), sealers=sealers, reason=type(exc).__name__)
    word = {dkimpy.CV_Pass: "pass", dkimpy.CV_Fail: "fail", dkimpy.CV_None: "none"}.get(cv, "fail")
    return ArcResult(result=word, instances=len(sealers), sealers=sealers, reason=str(reason)[:120])
