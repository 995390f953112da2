"""One message's authentication, start to end: :class:`Authenticator`.

``await Authenticator.authenticate(message, client_ip=..., helo=..., mail_from=...)`` returns the
typed :class:`~detox.inbound.results.AuthResults` and the :class:`~detox.inbound.results.Decision`.
The DNS work is async on the caller's loop; the CPU work (SPF evaluation, RSA/ed25519 verification,
body hashes) runs in worker threads so the SMTP sessions keep being served. One deadline
(``inbound.timeout_s``) bounds the whole; past it every result is ``temperror``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from detox.config.schema import InboundConfig
from detox.inbound.decide import decide
from detox.inbound.dkim import verify_arc, verify_dkim
from detox.inbound.dmarc import Dmarc
from detox.inbound.dns import Resolver, SyncLookup
from detox.inbound.message import Author, author, header_fields
from detox.inbound.relays import judge, parse_networks
from detox.inbound.results import ArcResult, AuthResults, Decision, DkimResult, DmarcResult, SpfResult
from detox.inbound.spf import check_spf


@dataclass(frozen=True, slots=True)
class Outcome:
    results: AuthResults
    decision: Decision

    def to_json(self) -> dict[str, Any]:
        return {
            "results": self.results.to_json(),
            "decision": self.decision.to_json(),
            "summary": self.results.summary(),
        }

    def audit_summary(self) -> dict[str, object]:
        """What the audit record carries: each method's result, the decision and why."""
        r, d = self.results, self.decision
        return {
            **r.summary(),
            "from_domain": r.dmarc.from_domain,
            "policy": r.dmarc.policy if r.dmarc.policy_domain else "",
            "client_ip": r.client_ip,
            "source": r.source,
            "action": d.action,
            "reason": d.reason,
            "detail": d.detail,
            "verified_domain": d.verified_domain,
            "warnings": [k for k, _ in d.warnings],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(
            results=AuthResults.from_json(data.get("results") or {}),
            decision=Decision.from_json(data.get("decision") or {}),
        )


_RESULT_WORD = re.compile(r"(?:^|;)\s*(spf|dkim|dmarc|arc)\s*=\s*([a-z]+)", re.I)
_COMMENT = re.compile(r"\([^()]*\)")


def _methods(value: str) -> dict[str, str]:
    """{method: result} of an (ARC-)Authentication-Results value, first result of each method."""
    out: dict[str, str] = {}
    for method, result in _RESULT_WORD.findall(_COMMENT.sub("", value)[:4096]):
        out.setdefault(method.lower(), result.lower())
    return out


def _authserv_id(value: str) -> str:
    value = _COMMENT.sub("", value).strip()
    if value.lower().startswith("i="):
        value = value.partition(";")[2].strip()
    return value.split(";", 1)[0].split()[0].strip().lower() if value.strip() else ""


class Authenticator:
    def __init__(self, config: InboundConfig, *, accepted_domains: tuple[str, ...]) -> None:
        self.config = config
        self.accepted_domains = accepted_domains
        self.resolver = Resolver(
            config.nameservers, timeout_s=config.dns_timeout_s, cache_size=config.dns_cache_size
        )
        self._dmarc = Dmarc(self.resolver)
        self._relays = parse_networks(config.trusted_relays)

    async def authenticate(self, message: bytes, *, client_ip: str, helo: str, mail_from: str) -> Outcome:
        fields = header_fields(message)
        who = author(fields)
        base = AuthResults(
            spf=SpfResult("none"),
            dkim=(),
            arc=ArcResult(),
            dmarc=DmarcResult(from_domain=who.domain),
            client_ip=client_ip,
            helo=helo,
            mail_from=mail_from,
            from_addresses=who.addresses,
            display_names=who.display_names,
            reply_to_domains=who.reply_to_domains,
        )
        try:
            results = await asyncio.wait_for(
                self._evaluate(message, fields, who, base), timeout=self.config.timeout_s
            )
        except TimeoutError:
            results = replace(
                base,
                spf=SpfResult("temperror", reason="authentication deadline"),
                dmarc=DmarcResult(result="temperror", from_domain=who.domain, reason="deadline"),
            )
        return Outcome(results, decide(results, self.config, self.accepted_domains))

    async def _evaluate(
        self, message: bytes, fields: list[tuple[str, str]], who: Author, base: AuthResults
    ) -> AuthResults:
        hop = judge(base.client_ip, base.helo, fields, self._relays)
        base = replace(
            base,
            client_ip=hop.ip,
            helo=hop.helo,
            source="smtp" if hop.trusted_hops == 0 else "received",
            trusted_hops=hop.trusted_hops,
        )
        if who.problem:
            base = replace(base, dmarc=DmarcResult(result="fail", from_domain=who.domain, reason=who.problem))
        relay = self._relay_verdict(fields[: hop.believed]) if hop.believed else None
        if relay is not None:
            return self._from_relay(base, relay, who.problem)
        loop = asyncio.get_running_loop()

        def budget() -> SyncLookup:
            return SyncLookup(
                self.resolver, loop, max_queries=self.config.max_dns_lookups, deadline_s=self.config.timeout_s
            )

        spf_lookup, sig_lookup = budget(), budget()
        names = {name for name, _ in fields}
        signed, sealed = "dkim-signature" in names, "arc-seal" in names

        def blocking() -> tuple[SpfResult, tuple[DkimResult, ...], ArcResult]:
            # One worker thread for all three (fewer thread hops; cache hits need none at all).
            if hop.ip:
                spf = check_spf(spf_lookup, client_ip=hop.ip, mail_from=base.mail_from, helo=hop.helo)
            else:
                spf = SpfResult("none", reason="no untrusted hop found in Received")
            dkim = verify_dkim(message, sig_lookup) if signed else ()
            arc = verify_arc(message, sig_lookup) if sealed else ArcResult()
            return spf, dkim, arc

        spf, dkim, arc = await asyncio.to_thread(blocking)
        arc = self._trusted_arc(arc, fields)
        base = replace(base, spf=spf, dkim=dkim, arc=arc)
        if who.problem:
            return base
        dmarc = await self._dmarc.evaluate(who.domain, spf, dkim)
        return replace(base, dmarc=dmarc)

    def _relay_verdict(self, believed: list[tuple[str, str]]) -> dict[str, str] | None:
        if not self.config.trusted_authserv_ids:
            return None
        for name, value in believed:
            if name == "authentication-results" and _authserv_id(value) in self.config.trusted_authserv_ids:
                methods = _methods(value)
                if "dmarc" in methods or "spf" in methods or "dkim" in methods:
                    return methods
        return None

    def _from_relay(self, base: AuthResults, methods: dict[str, str], problem: str) -> AuthResults:
        dmarc_word = methods.get("dmarc", "none")
        dmarc = base.dmarc
        if not problem:
            dmarc = DmarcResult(
                result=dmarc_word,
                from_domain=base.dmarc.from_domain,
                spf_aligned=dmarc_word == "pass",
                reason="" if dmarc_word == "pass" else "as reported by the trusted relay",
            )
        return replace(
            base,
            source="relay-ar",
            spf=SpfResult(methods.get("spf", "none"), reason="as reported by the trusted relay"),
            dkim=(DkimResult(methods["dkim"], reason="as reported by the trusted relay"),)
            if "dkim" in methods
            else (),
            arc=ArcResult(result=methods.get("arc", "none")),
            dmarc=dmarc,
        )

    def _trusted_arc(self, arc: ArcResult, fields: list[tuple[str, str]]) -> ArcResult:
        if arc.result != "pass" or not self.config.trusted_arc_sealers:
            return arc
        aars: dict[int, str] = {}
        for name, value in fields:
            if name == "arc-authentication-results":
                m = re.match(r"\s*i\s*=\s*(\d{1,2})\s*;", value)
                if m:
                    aars.setdefault(int(m.group(1)), value)
        for instance in range(len(arc.sealers), 0, -1):
            sealer = arc.sealers[instance - 1]
            if (
                sealer in self.config.trusted_arc_sealers
                and _methods(aars.get(instance, "")).get("dmarc") == "pass"
            ):
                return replace(arc, trusted_pass_by=sealer)
        return arc


def failed_outcome(authenticator: Authenticator, message: bytes, envelope: Any, why: str) -> Outcome:
    """The outcome when authentication itself broke: every result temperror, decided as such."""
    who = author(header_fields(message))
    results = AuthResults(
        spf=SpfResult("temperror", reason=why),
        dkim=(),
        arc=ArcResult(),
        dmarc=DmarcResult(result="temperror", from_domain=who.domain, reason=why),
        client_ip=envelope.client_address,
        helo=envelope.helo,
        mail_from=envelope.mail_from,
        from_addresses=who.addresses,
        display_names=who.display_names,
        reply_to_domains=who.reply_to_domains,
    )
    return Outcome(results, decide(results, authenticator.config, authenticator.accepted_domains))
