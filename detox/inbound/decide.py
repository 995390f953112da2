"""The policy: what detox does with a message given its authentication results.

In order (the first that applies sets the action; warnings accumulate):

1. From unusable (none, several, no domain) → ``inbound.dmarc_reject`` (reason ``from-invalid``):
   RFC 5322 wants exactly one, and several From fields are a known way around DMARC.
2. DMARC fail, policy reject → ``inbound.dmarc_reject`` [reject → 550 5.7.1 at the end of DATA].
3. DMARC fail, policy quarantine → ``inbound.dmarc_quarantine`` [hold: the whole message].
4. From in a protected domain (``server.accepted_domains`` + ``inbound.protected_domains``, and their
   subdomains) without an aligned SPF or DKIM pass or a trusted ARC pass → ``inbound.spoof`` [hold],
   whatever the domain publishes.
   A trusted ARC sealer's pass (``inbound.trusted_arc_sealers``) lifts 2–4 (mailing lists, forwarders).
   A reject that rests on a DNS temperror becomes a hold: we never refuse mail on a DNS outage.
5. Otherwise the message is delivered; the notice says who was verified, or that the sender could
   not be verified, and names lookalikes (edit distance, IDN homograph, display name holding a
   protected address, Reply-To elsewhere than an unauthenticated From) with 「なりすまし」.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from detox.config.schema import InboundConfig
from detox.inbound.results import AuthResults, Decision

# Letters that look like Latin ones (Cyrillic, Greek, Armenian, ...): the usual homograph material.
# NFKC already folds full-width forms (ｃｉｔｙ → city).
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ɡ": "g", "ο": "o", "α": "a", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "τ": "t", "υ": "u",
        "χ": "x", "օ": "o", "ս": "u", "ı": "i", "ℓ": "l", "０": "0", "１": "l",
    }
)  # fmt: skip


def skeleton(domain: str) -> str:
    """A crude UTS #39 skeleton: Unicode form, NFKC, confusable letters mapped, 1/l and 0/o folded."""
    try:
        text = domain.encode("ascii").decode("idna") if "xn--" in domain else domain
    except UnicodeError:
        text = domain
    text = unicodedata.normalize("NFKC", text).lower().translate(_CONFUSABLES)
    return text.replace("1", "l").replace("0", "o").replace("rn", "m")


def distance(a: str, b: str, cap: int = 3) -> int:
    """Levenshtein distance, stopped early past ``cap`` (domains are short; the cap bounds the work)."""
    if abs(len(a) - len(b)) > cap:
        return cap + 1
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        if min(cur) > cap:
            return cap + 1
        prev = cur
    return prev[-1]


def _in(domain: str, protected: Iterable[str]) -> str:
    for p in protected:
        if domain == p or domain.endswith("." + p):
            return p
    return ""


def _w(key: str, **values: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return key, tuple(sorted(values.items()))


def lookalikes(
    results: AuthResults, protected: tuple[str, ...], config: InboundConfig, verified: bool
) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    found: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    domain = results.dmarc.from_domain
    address = results.from_addresses[0] if results.from_addresses else ""
    if domain and not _in(domain, protected):
        shape = skeleton(domain)
        for p in protected[:200]:
            d = distance(domain, p, config.lookalike_distance)
            if 1 <= d <= config.lookalike_distance:
                found.append(_w("edit-distance", domain=domain, protected=p))
                break
            if domain != p and (shape == skeleton(p) or ("xn--" in domain and distance(shape, p, 1) <= 1)):
                found.append(_w("homograph", domain=domain, unicode=_unicode(domain), protected=p))
                break
    for name in results.display_names[:5]:
        lowered = unicodedata.normalize("NFKC", name).lower()
        for p in protected[:200]:
            if "@" + p in lowered and not _in(domain, (p,)):
                at = lowered.index("@" + p)
                start = max(lowered.rfind(" ", 0, at), lowered.rfind("<", 0, at), lowered.rfind("(", 0, at))
                found.append(
                    _w("display-name", address=lowered[start + 1 : at] + "@" + p, **{"from": address})
                )
                break
    if not verified and domain:
        for rd in results.reply_to_domains[:5]:
            if rd != domain and not rd.endswith("." + domain) and not domain.endswith("." + rd):
                found.append(_w("reply-to", reply_domain=rd, **{"from": address}))
                break
    return found


def _unicode(domain: str) -> str:
    try:
        return domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain


def decide(results: AuthResults, config: InboundConfig, accepted_domains: tuple[str, ...]) -> Decision:
    protected = tuple(dict.fromkeys((*accepted_domains, *config.protected_domains)))
    dm = results.dmarc
    arc_ok = bool(results.arc.trusted_pass_by)
    aligned = dm.spf_aligned or dm.dkim_aligned or dm.result == "pass"
    verified_domain = dm.from_domain if aligned and dm.from_domain else ""
    temperror = "temperror" in (dm.result, results.spf.result, results.dkim_summary)
    action, reason, detail, problem = "accept", "", "", ""
    if dm.reason.startswith(("no From", "several From", "From ")) and dm.result == "fail":
        action, reason, problem = config.dmarc_reject, "from-invalid", dm.reason
        detail = dm.reason
    elif dm.result == "fail" and dm.policy == "reject" and not arc_ok:
        action, reason = config.dmarc_reject, "dmarc-reject"
        detail = f"DMARC fail, p=reject at {dm.policy_domain}"
    elif dm.result == "fail" and dm.policy == "quarantine" and not arc_ok:
        action, reason = config.dmarc_quarantine, "dmarc-quarantine"
        detail = f"DMARC fail, p=quarantine at {dm.policy_domain}"
    elif dm.from_domain and _in(dm.from_domain, protected) and not aligned and not arc_ok:
        action, reason = config.spoof, "spoofed-protected-domain"
        detail = f"From {dm.from_domain} (protected) not aligned-authenticated"
    if action == "reject" and temperror:
        action = "hold"
        detail += " (DNS temperror: held, not rejected)"
    warnings: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    if action == "mark":
        warnings.append(_w("policy", reason=reason, domain=dm.from_domain, problem=problem))
    if verified_domain:
        warnings.append(_w("verified", domain=verified_domain))
    elif arc_ok:
        warnings.append(_w("verified", domain=f"{dm.from_domain}（{results.arc.trusted_pass_by} 経由）"))
    else:
        address = results.from_addresses[0] if results.from_addresses else "（なし）"
        summary = ", ".join(f"{k}={v}" for k, v in results.summary().items() if k != "arc" or v != "none")
        warnings.append(_w("unverified", address=address, domain=dm.from_domain, results=summary))
    if config.lookalike == "warn":
        warnings.extend(lookalikes(results, protected, config, bool(verified_domain) or arc_ok))
    return Decision(
        action=action,  # type: ignore[arg-type]
        reason=reason,
        detail=detail,
        verified_domain=verified_domain,
        warnings=tuple(warnings),
    )


def render_warnings(decision: Decision, config: InboundConfig) -> list[str]:
    """The notice lines for a decision, from the [inbound] templates (safe_substitute)."""
    from string import Template

    lines: list[str] = []
    for key, items in decision.warnings:
        values = dict(items)
        if key == "verified":
            lines.append(Template(config.notice_verified).safe_substitute(values))
        elif key == "unverified":
            lines.append(Template(config.notice_unverified).safe_substitute(values))
        elif key == "policy":
            what = Template(config.texts.get(values.get("reason", ""), "")).safe_substitute(values)
            lines.append(Template(config.notice_policy).safe_substitute(what=what))
        else:
            what = Template(config.texts.get(key, key)).safe_substitute(values)
            lines.append(Template(config.notice_lookalike).safe_substitute(what=what))
    return lines
