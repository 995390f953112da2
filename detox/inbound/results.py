"""Typed results of sender authentication, their JSON form, and the Authentication-Results header.

Every value that came from the sender (domains, selectors, reasons from DNS) is attacker-controlled:
:func:`render_header` writes each as an RFC 8601 token when it is one, else as a quoted-string with
``"`` and ``\\`` escaped and every control or non-ASCII character replaced, so no value can end the
header, start another one, or add a result of its own.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Result = Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"]
Policy = Literal["none", "quarantine", "reject"]


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str
    domain: str = ""
    identity: str = "mailfrom"  # or "helo" (null MAIL FROM)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DkimResult:
    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    result: str = "none"  # pass | fail | none (RFC 8617 cv of the chain as we verified it)
    instances: int = 0
    sealers: tuple[str, ...] = ()  # d= of each ARC-Seal, instance 1 first
    # The newest sealer in inbound.trusted_arc_sealers whose ARC-Authentication-Results said dmarc=pass
    # (or an aligned spf/dkim pass) upstream; "" when none.
    trusted_pass_by: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str = "none"  # pass | fail | none | temperror | permerror
    from_domain: str = ""
    policy_domain: str = ""  # where the record was found by the tree walk ("" = none found)
    org_domain: str = ""
    policy: str = "none"  # what the record asks for this From domain (p, sp or np, after t=y)
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AuthResults:
    """Everything authentication found for one message, as carried with it through the spool."""

    spf: SpfResult
    dkim: tuple[DkimResult, ...]
    arc: ArcResult
    dmarc: DmarcResult
    client_ip: str = ""
    helo: str = ""
    mail_from: str = ""
    # "smtp": judged from our own SMTP session; "received": from the first untrusted hop of the
    # Received chain behind a trusted relay; "relay-ar": the trusted relay's Authentication-Results.
    source: str = "smtp"
    trusted_hops: int = 0
    from_addresses: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()
    reply_to_domains: tuple[str, ...] = ()

    @property
    def dkim_summary(self) -> str:
        """One word for the index and filters: pass if any signature passed, else the best failure."""
        if not self.dkim:
            return "none"
        for word in ("pass", "temperror", "fail", "permerror", "neutral", "policy"):
            if any(d.result == word for d in self.dkim):
                return word
        return self.dkim[0].result

    def summary(self) -> dict[str, str]:
        """{method: result}, what the index stores and ``--auth`` filters on."""
        return {
            "spf": self.spf.result,
            "dkim": self.dkim_summary,
            "dmarc": self.dmarc.result,
            "arc": self.arc.result,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuthResults:
        arc = dict(data.get("arc") or {})
        arc["sealers"] = tuple(arc.get("sealers") or ())
        return cls(
            spf=SpfResult(**_known(SpfResult, data.get("spf") or {"result": "none"})),
            dkim=tuple(DkimResult(**_known(DkimResult, d)) for d in data.get("dkim") or ()),
            arc=ArcResult(**_known(ArcResult, arc)),
            dmarc=DmarcResult(**_known(DmarcResult, data.get("dmarc") or {})),
            client_ip=str(data.get("client_ip", "")),
            helo=str(data.get("helo", "")),
            mail_from=str(data.get("mail_from", "")),
            source=str(data.get("source", "smtp")),
            trusted_hops=int(data.get("trusted_hops", 0)),
            from_addresses=tuple(data.get("from_addresses") or ()),
            display_names=tuple(data.get("display_names") or ()),
            reply_to_domains=tuple(data.get("reply_to_domains") or ()),
        )


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy made of the results (see :mod:`detox.inbound.decide`)."""

    action: Literal["accept", "mark", "hold", "reject"] = "accept"
    reason: str = ""  # e.g. "dmarc-reject", "dmarc-quarantine", "spoofed-protected-domain"
    detail: str = ""  # a sentence for the audit record (ASCII; values passed through for_log)
    verified_domain: str = ""  # the aligned-authenticated From domain ("" = not verified)
    # Notice lines: (template key, {placeholder: value}); rendered with the [inbound] templates.
    warnings: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "detail": self.detail,
            "verified_domain": self.verified_domain,
            "warnings": [{"key": k, **dict(v)} for k, v in self.warnings],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Decision:
        warnings = tuple(
            (str(w["key"]), tuple((str(k), str(v)) for k, v in w.items() if k != "key"))
            for w in data.get("warnings") or ()
        )
        return cls(
            action=data.get("action", "accept"),
            reason=str(data.get("reason", "")),
            detail=str(data.get("detail", "")),
            verified_domain=str(data.get("verified_domain", "")),
            warnings=warnings,
        )


# RFC 8601 §2.2: a pvalue is a token or quoted-string, or [local-part "@"] domain. We accept a strict
# subset as a bare value and quote everything else.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=/\-]{0,252}(@[A-Za-z0-9._\-]{1,253})?")
_MAX_VALUE = 200


def quote_value(untrusted: str) -> str:
    """An RFC 8601 pvalue that cannot break out of its place, whatever ``untrusted`` holds."""
    if _TOKEN.fullmatch(untrusted):
        return untrusted
    out: list[str] = []
    for ch in untrusted[:_MAX_VALUE]:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return '"' + "".join(out) + '"'


def _comment(untrusted: str) -> str:
    """A reason as ``reason="..."`` (RFC 8601 §2.7 ptype reason), quoted like any value."""
    return f" reason={quote_value(untrusted[:120])}" if untrusted else ""


def render_header(authserv_id: str, results: AuthResults) -> str:
    """The value of our ``Authentication-Results`` header (one line; the composer folds it)."""
    parts: list[str] = [quote_value(authserv_id)]
    spf = results.spf
    prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
    spf_value = results.mail_from if spf.identity == "mailfrom" and results.mail_from else spf.domain
    text = f"spf={spf.result}"
    if spf_value:
        text += f" {prop}={quote_value(spf_value)}"
    parts.append(text)
    if not results.dkim:
        parts.append("dkim=none")
    for d in results.dkim:
        text = f"dkim={d.result}{_comment(d.reason) if d.result != 'pass' else ''}"
        if d.domain:
            text += f" header.d={quote_value(d.domain)}"
        if d.selector:
            text += f" header.s={quote_value(d.selector)}"
        if d.algorithm:
            text += f" header.a={quote_value(d.algorithm)}"
        parts.append(text)
    dm = results.dmarc
    text = f"dmarc={dm.result}"
    if dm.result not in ("pass", "none"):
        text += _comment(dm.reason)
    if dm.policy_domain:
        text += f" policy.dmarc={quote_value(dm.policy)}"
    if dm.from_domain:
        text += f" header.from={quote_value(dm.from_domain)}"
    parts.append(text)
    arc = results.arc
    text = f"arc={arc.result}"
    if arc.result != "none" and arc.instances:
        text += f" smtp.remote-ip={quote_value(results.client_ip)}" if results.client_ip else ""
    parts.append(text)
    return "; ".join(parts)
