"""DMARC: the From domain, policy discovery and organizational domains by the DMARCbis DNS tree walk,
and alignment of the SPF and DKIM results with the From domain.

Where we follow DMARCbis (draft-ietf-dmarc-dmarcbis) rather than RFC 7489:

* No Public Suffix List. The policy record is found by the **DNS tree walk**: ``_dmarc.<From domain>``,
  then each parent name up to the top-level domain; a name of more than eight labels jumps to its last
  seven after the first query (at most 8 queries per walk).
* The **organizational domain** (for relaxed alignment) comes from the same walk: the name whose
  record says ``psd=n``; or one label below a record saying ``psd=y``; else the name with the fewest
  labels that has a DMARC record; else the domain itself.
* ``np=`` (policy for a From domain that does not exist) and ``t=y`` (test mode: reject is applied as
  quarantine, quarantine as none) are honoured; ``pct=`` (removed by DMARCbis) is read as ``t=y`` when
  below 100. A record without a valid ``p=`` is treated as ``p=none``.
* Several DMARC records at one name count as none there (the walk goes on).

A DNS failure anywhere in a walk makes the result ``temperror``.
"""

from __future__ import annotations

from dataclasses import dataclass

from detox.inbound.dns import Answer, DnsDataError, DnsTempError, Resolver
from detox.inbound.results import DkimResult, DmarcResult, SpfResult

MAX_WALK_QUERIES = 8
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True, slots=True)
class Record:
    p: str
    sp: str
    np: str
    adkim: str
    aspf: str
    psd: str  # "y" | "n" | "u"
    testing: bool


def parse_record(txt: bytes) -> Record | None:
    """A DMARC record, or None when ``txt`` is not one (v=DMARC1 must be the first tag)."""
    try:
        text = txt.decode("ascii")
    except UnicodeDecodeError:
        return None
    tags: dict[str, str] = {}
    for i, item in enumerate(text.split(";")[:32]):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if i == 0:
            if not sep or key != "v" or value != "DMARC1":
                return None
            continue
        if sep and key not in tags:
            tags[key] = value.lower()
    p = tags.get("p", "none")
    if p not in _POLICIES:
        p = "none"
    sp = tags.get("sp", p) if tags.get("sp", p) in _POLICIES else p
    np = tags.get("np", sp) if tags.get("np", sp) in _POLICIES else sp
    testing = tags.get("t", "n") == "y"
    pct = tags.get("pct", "100")
    if pct.isdigit() and int(pct) < 100:
        testing = True
    return Record(
        p=p,
        sp=sp,
        np=np,
        adkim="s" if tags.get("adkim") == "s" else "r",
        aspf="s" if tags.get("aspf") == "s" else "r",
        psd=tags.get("psd", "u") if tags.get("psd") in ("y", "n") else "u",
        testing=testing,
    )


def walk_names(domain: str) -> list[str]:
    """The names the tree walk queries, in order (DMARCbis §4.10.1)."""
    labels = domain.split(".")
    names = [domain]
    if len(labels) > 8:
        labels = labels[-7:]
        names.append(".".join(labels))
    names.extend(".".join(labels[i:]) for i in range(1, len(labels)))
    return names[:MAX_WALK_QUERIES]


class Dmarc:
    """DMARC evaluation over one resolver (its cache shared with SPF and DKIM)."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def _record_at(self, name: str) -> Record | None:
        try:
            answer: Answer = await self._resolver.lookup(f"_dmarc.{name}", "TXT")
        except DnsDataError:
            return None
        found = [r for r in (parse_record(t) for t in answer.records if isinstance(t, bytes)) if r]
        return found[0] if len(found) == 1 else None

    async def _walk(self, domain: str, *, stop_at_first: bool) -> list[tuple[str, Record]]:
        found: list[tuple[str, Record]] = []
        for name in walk_names(domain):
            record = await self._record_at(name)
            if record is not None:
                found.append((name, record))
                if stop_at_first or record.psd in ("y", "n"):
                    break
        return found

    async def org_domain(self, domain: str) -> str:
        """The organizational domain of ``domain`` (DMARCbis §4.10.2). Raises DnsTempError."""
        found = await self._walk(domain, stop_at_first=False)
        if not found:
            return domain
        name, record = found[-1]
        if record.psd == "n":
            return name
        if record.psd == "y":
            labels = domain.split(".")
            depth = name.count(".") + 2
            return ".".join(labels[-depth:]) if len(labels) >= depth else domain
        return min((n for n, _ in found), key=lambda n: n.count("."))

    async def _aligned(self, author: str, other: str, mode: str, author_org: str) -> bool:
        other = other.lower().rstrip(".")
        if not other:
            return False
        if other == author:
            return True
        if mode == "s":
            return False
        return await self.org_domain(other) == author_org

    async def _exists(self, domain: str) -> bool:
        for qtype in ("A", "AAAA", "MX"):
            answer = await self._resolver.lookup(domain, qtype)
            if not answer.exists:
                return False
            if answer.records:
                return True
        return False

    async def evaluate(self, from_domain: str, spf: SpfResult, dkim: tuple[DkimResult, ...]) -> DmarcResult:
        try:
            return await self._evaluate(from_domain, spf, dkim)
        except DnsTempError as exc:
            return DmarcResult(result="temperror", from_domain=from_domain, reason=str(exc)[:120])

    async def _evaluate(self, author: str, spf: SpfResult, dkim: tuple[DkimResult, ...]) -> DmarcResult:
        found = await self._walk(author, stop_at_first=True)
        author_org = await self.org_domain(author)
        dkim_aligned = False
        for d in dkim:
            if d.result == "pass" and await self._aligned(
                author, d.domain, found[0][1].adkim if found else "r", author_org
            ):
                dkim_aligned = True
                break
        spf_aligned = spf.result == "pass" and await self._aligned(
            author, spf.domain, found[0][1].aspf if found else "r", author_org
        )
        if not found:
            return DmarcResult(
                result="none",
                from_domain=author,
                org_domain=author_org,
                spf_aligned=spf_aligned,
                dkim_aligned=dkim_aligned,
                reason="no DMARC record",
            )
        policy_domain, record = found[0]
        if policy_domain == author:
            policy = record.p
        elif not await self._exists(author):
            policy = record.np
        else:
            policy = record.sp
        if record.testing:
            policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, "none")
        passed = spf_aligned or dkim_aligned
        return DmarcResult(
            result="pass" if passed else "fail",
            from_domain=author,
            policy_domain=policy_domain,
            org_domain=author_org,
            policy=policy,
            spf_aligned=spf_aligned,
            dkim_aligned=dkim_aligned,
            reason="" if passed else "no aligned SPF or DKIM pass",
        )
