"""Sender authentication (detox.inbound) against a real DNS server on loopback (dnslib, tests/support).

Keys and signatures are made at test time; nothing is mocked: SPF goes through pyspf, DKIM/ARC through
dkimpy, all of them asking our resolver, which asks the server over UDP/TCP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import authres
import dkim
import pytest
from support.dkimkeys import Key, ed25519_key, mail, rsa_key, sign
from support.dns_server import DnsServer

from detox.config.schema import InboundConfig
from detox.inbound.check import Authenticator, Outcome
from detox.inbound.decide import render_warnings
from detox.inbound.results import render_header

OURS = ("city.example.lg.jp",)
PARTNER_IP = "192.0.2.10"
EVIL_IP = "198.51.100.66"


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "rsa1024": rsa_key(1024),
        "rsa2048": rsa_key(2048),
        "ed": ed25519_key(),
        "short": rsa_key(512),
        "list": rsa_key(1024),
    }


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Key]) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path_factory.mktemp("dns"))
    server.set(
        {
            # a partner with SPF, DKIM (three keys) and DMARC p=reject
            "partner.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"], ["A", "192.0.2.1"]],
            "_dmarc.partner.example": [["TXT", "v=DMARC1; p=reject"]],
            "rsa1024._domainkey.partner.example": [["TXT", keys["rsa1024"].record]],
            "rsa2048._domainkey.partner.example": [["TXT", keys["rsa2048"].record]],
            "ed._domainkey.partner.example": [["TXT", keys["ed"].record]],
            "short._domainkey.partner.example": [["TXT", keys["short"].record]],
            "revoked._domainkey.partner.example": [["TXT", "v=DKIM1; k=rsa; p="]],
            "slow._domainkey.partner.example": "TIMEOUT",
            "mail.partner.example": [["A", "192.0.2.11"]],
            # subdomain policy and the tree walk
            "news.partner.example": [["TXT", "v=spf1 ip4:192.0.2.20 -all"], ["A", "192.0.2.20"]],
            "quar.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
            "_dmarc.quar.example": [["TXT", "v=DMARC1; p=quarantine; sp=reject"]],
            "sub.quar.example": [["A", "192.0.2.30"]],
            "none.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 ~all"]],
            "_dmarc.none.example": [["TXT", "v=DMARC1; p=none"]],
            "test.example": [["TXT", "v=spf1 -all"]],
            "_dmarc.test.example": [["TXT", "v=DMARC1; p=reject; t=y"]],
            "strict.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
            "_dmarc.strict.example": [["TXT", "v=DMARC1; p=reject; aspf=s; adkim=s"]],
            "mail.strict.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
            "nodmarc.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
            # SPF edge cases
            "soft.example": [["TXT", "v=spf1 ~all"]],
            "neutral.example": [["TXT", "v=spf1 ?all"]],
            "loop.example": [["TXT", "v=spf1 include:loop2.example -all"]],
            "loop2.example": [["TXT", "v=spf1 include:loop.example -all"]],
            "many.example": [
                ["TXT", "v=spf1 " + " ".join(f"a:h{i}.many.example" for i in range(12)) + " -all"]
            ],
            **{f"h{i}.many.example": [["A", "203.0.113.1"]] for i in range(12)},
            "void.example": [["TXT", "v=spf1 a:v1.void.example a:v2.void.example a:v3.void.example -all"]],
            "huge.example": [["TXT", "v=spf1 " + "ip4:10.0.0.1 " * 900 + "-all"]],
            "spftimeout.example": "TIMEOUT",
            "helo.partner.example": [["TXT", "v=spf1 ip4:192.0.2.10 -all"], ["A", "192.0.2.10"]],
            # our own domain: SPF/DMARC published, as a city would (or not)
            "city.example.lg.jp": [["TXT", "v=spf1 ip4:203.0.113.0/24 -all"]],
            # a mailing list that ARC-seals
            "lists.example": [["TXT", "v=spf1 ip4:192.0.2.200 -all"]],
            "list._domainkey.lists.example": [["TXT", keys["list"].record]],
            # DMARCbis psd=y at a public suffix: org domain is one label below
            "_dmarc.lg.jp": [["TXT", "v=DMARC1; p=none; psd=y"]],
        }
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def run(
    dns: DnsServer,
    message: bytes,
    *,
    ip: str = PARTNER_IP,
    helo: str = "mail.partner.example",
    mail_from: str = "taro@partner.example",
    **config: object,
) -> Outcome:
    cfg = InboundConfig(enabled=True, nameservers=(dns.address,), dns_timeout_s=1.0, timeout_s=5.0, **config)  # type: ignore[arg-type]

    async def go() -> Outcome:
        return await Authenticator(cfg, accepted_domains=OURS).authenticate(
            message, client_ip=ip, helo=helo, mail_from=mail_from
        )

    return asyncio.run(go())


# ---- SPF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mail_from", "ip", "expected"),
    [
        ("taro@partner.example", PARTNER_IP, "pass"),
        ("taro@partner.example", EVIL_IP, "fail"),
        ("x@soft.example", EVIL_IP, "softfail"),
        ("x@neutral.example", EVIL_IP, "neutral"),
        ("x@nodmarc-nospf.example", EVIL_IP, "none"),
        ("x@loop.example", EVIL_IP, "permerror"),
        ("x@many.example", EVIL_IP, "permerror"),
        ("x@void.example", EVIL_IP, "permerror"),
        ("x@huge.example", EVIL_IP, "permerror"),
        ("x@spftimeout.example", EVIL_IP, "temperror"),
    ],
)
def test_spf(dns: DnsServer, mail_from: str, ip: str, expected: str) -> None:
    out = run(dns, mail("a <a@partner.example>"), ip=ip, mail_from=mail_from)
    assert out.results.spf.result == expected, out.results.spf


def test_spf_null_sender_checks_helo(dns: DnsServer) -> None:
    out = run(dns, mail(), mail_from="", helo="helo.partner.example")
    assert (out.results.spf.result, out.results.spf.identity) == ("pass", "helo")
    assert "smtp.helo=helo.partner.example" in render_header("detox.test", out.results)


# ---- DKIM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", ["rsa1024", "rsa2048", "ed"])
def test_dkim_pass_and_dmarc_pass(dns: DnsServer, keys: dict[str, Key], selector: str) -> None:
    msg = sign(mail(), keys[selector], "partner.example", selector)
    out = run(dns, msg, ip=EVIL_IP)  # SPF fails: DMARC passes on the aligned DKIM signature alone
    (d,) = out.results.dkim
    assert (d.result, d.domain, d.selector) == ("pass", "partner.example", selector)
    assert out.results.dmarc.result == "pass" and out.results.dmarc.dkim_aligned
    assert out.decision.action == "accept" and out.decision.verified_domain == "partner.example"
    lines = render_warnings(out.decision, InboundConfig())
    assert any("partner.example" in line and "成功" in line for line in lines)


def test_dkim_failures(dns: DnsServer, keys: dict[str, Key]) -> None:
    short = sign(mail(), keys["short"], "partner.example", "short")
    assert run(dns, short).results.dkim[0].result == "fail"  # 512-bit key (RFC 8301)
    revoked = sign(mail(), keys["rsa1024"], "partner.example", "revoked")
    assert run(dns, revoked).results.dkim[0].result == "fail"
    altered = sign(mail(), keys["rsa1024"], "partner.example", "rsa1024").replace(b"hello", b"HELLO")
    assert run(dns, altered).results.dkim[0].result == "fail"
    missing = sign(mail(), keys["rsa1024"], "partner.example", "nokey")
    assert run(dns, missing).results.dkim[0].result == "fail"
    slow = sign(mail(), keys["rsa1024"], "partner.example", "slow")
    assert run(dns, slow).results.dkim[0].result == "temperror"


def test_every_signature_is_verified(dns: DnsServer, keys: dict[str, Key]) -> None:
    msg = sign(sign(mail(), keys["ed"], "partner.example", "ed"), keys["short"], "partner.example", "short")
    results = [d.result for d in run(dns, msg, ip=EVIL_IP).results.dkim]
    assert results == ["fail", "pass"]
    assert run(dns, msg, ip=EVIL_IP).results.dmarc.result == "pass"


@pytest.mark.parametrize(
    "header",
    [
        "DKIM-Signature: v=1; a=rsa-sha256; d=partner.example; s=rsa1024; h=from; bh=; b=\r\n",
        "DKIM-Signature: v=1; a=rsa-sha256; d=partner.example; s=rsa1024; h=from; bh=AA; b=!!!notb64\r\n",
        "DKIM-Signature: garbage without tags\r\n",
        "DKIM-Signature: v=1; a=rsa-md5; d=partner.example; s=rsa1024; h=from; bh=AAAA; b=AAAA\r\n",
        "DKIM-Signature: v=1; a=rsa-sha256; d=partner.example; s=rsa1024; s=again; h=from; bh=AA; b=AA\r\n",
    ],
)
def test_malformed_dkim_signature_is_never_a_pass(dns: DnsServer, header: str) -> None:
    out = run(dns, mail(extra=header), ip=EVIL_IP)
    assert out.results.dkim[0].result in ("permerror", "fail")
    assert out.decision.action == "reject"  # partner.example publishes p=reject


# ---- DMARC ---------------------------------------------------------------------------------------


def test_dmarc_reject_quarantine_none(dns: DnsServer) -> None:
    assert run(dns, mail(), ip=EVIL_IP).decision.action == "reject"
    assert run(dns, mail(), ip=EVIL_IP, dmarc_reject="hold").decision.action == "hold"
    marked = run(dns, mail(), ip=EVIL_IP, dmarc_reject="mark")
    assert marked.decision.action == "mark"
    assert any("DMARC" in line for line in render_warnings(marked.decision, InboundConfig()))
    q = run(dns, mail("x@quar.example"), ip=EVIL_IP, mail_from="x@quar.example")
    assert (q.results.dmarc.policy, q.decision.action) == ("quarantine", "hold")
    n = run(dns, mail("x@none.example"), ip=EVIL_IP, mail_from="x@none.example")
    assert (n.results.dmarc.result, n.decision.action) == ("fail", "accept")
    lines = render_warnings(n.decision, InboundConfig())
    assert any("送信元を確認できませんでした" in line for line in lines)


def test_subdomain_policy_np_and_org_domain_walk(dns: DnsServer) -> None:
    sub = run(dns, mail("x@sub.quar.example"), ip=EVIL_IP, mail_from="x@sub.quar.example")
    assert (sub.results.dmarc.policy_domain, sub.results.dmarc.policy) == ("quar.example", "reject")
    # np: a From subdomain that does not exist falls back to sp (none given → sp=reject here)
    ghost = run(dns, mail("x@ghost.quar.example"), ip=EVIL_IP, mail_from="x@ghost.quar.example")
    assert ghost.results.dmarc.policy == "reject"
    # relaxed alignment via the organizational domain: MAIL FROM news.partner.example, From partner.example
    rel = run(dns, mail(), ip="192.0.2.20", mail_from="bounce@news.partner.example")
    assert rel.results.spf.result == "pass" and rel.results.dmarc.result == "pass"
    # strict alignment: mail.strict.example is not strict.example
    st = run(dns, mail("x@strict.example"), mail_from="b@mail.strict.example")
    assert st.results.spf.result == "pass" and st.results.dmarc.result == "fail"
    # psd=y at lg.jp: the organizational domain of a city subdomain is the city's domain
    assert run(dns, mail("x@nodmarc.example"), mail_from="x@nodmarc.example").results.dmarc.result == "none"


def test_testing_mode_downgrades(dns: DnsServer) -> None:
    out = run(dns, mail("x@test.example"), ip=EVIL_IP, mail_from="x@test.example")
    assert (out.results.dmarc.policy, out.decision.action) == ("quarantine", "hold")


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ("", "no From header"),
        ("From: a@partner.example\r\nFrom: b@partner.example\r\n", "several From headers"),
        ("From: undisclosed\r\n", "From without a domain"),
    ],
)
def test_from_problems_are_dmarc_fail(dns: DnsServer, headers: str, problem: str) -> None:
    msg = (headers + "To: soumu@city.example.lg.jp\r\nSubject: x\r\n\r\nbody\r\n").encode()
    out = run(dns, msg)
    assert out.results.dmarc.result == "fail" and out.results.dmarc.reason == problem
    assert (out.decision.action, out.decision.reason) == ("reject", "from-invalid")


def test_non_ascii_from_domain(dns: DnsServer) -> None:
    out = run(dns, mail("太郎 <taro@例え.テスト>"), ip=EVIL_IP, mail_from="")
    assert out.results.dmarc.from_domain == "xn--r8jz45g.xn--zckzah"
    assert out.decision.action == "accept"


def test_dns_timeout_is_temperror_and_never_rejects(dns: DnsServer) -> None:
    dns.set({"_dmarc.slowdmarc.example": "TIMEOUT", "slowdmarc.example": [["TXT", "v=spf1 -all"]]})
    out = run(dns, mail("x@slowdmarc.example"), ip=EVIL_IP, mail_from="x@slowdmarc.example")
    assert out.results.dmarc.result == "temperror"
    assert out.decision.action == "accept"
    # our own domain with DNS down: held (not aligned-authenticated), not rejected even with spoof=reject
    dns.set({"_dmarc.city.example.lg.jp": "TIMEOUT"})
    try:
        own = run(
            dns,
            mail("soumu@city.example.lg.jp"),
            ip=EVIL_IP,
            mail_from="x@city.example.lg.jp",
            spoof="reject",
        )
    finally:
        dns.set({"_dmarc.city.example.lg.jp": []})
    assert own.decision.action == "hold"


def test_no_nameserver_answering_is_temperror(tmp_path: Path) -> None:
    cfg = InboundConfig(enabled=True, nameservers=("127.0.0.1:9",), dns_timeout_s=0.3, timeout_s=3)

    async def go() -> Outcome:
        return await Authenticator(cfg, accepted_domains=OURS).authenticate(
            mail(), client_ip=EVIL_IP, helo="x", mail_from="taro@partner.example"
        )

    out = asyncio.run(go())
    assert out.results.spf.result == "temperror" and out.results.dmarc.result == "temperror"
    assert out.decision.action == "accept"


# ---- our own and protected domains, lookalikes -----------------------------------------------------


def test_forged_own_domain_is_held(dns: DnsServer) -> None:
    out = run(
        dns, mail("総務課 <soumu@city.example.lg.jp>"), ip=EVIL_IP, mail_from="soumu@city.example.lg.jp"
    )
    assert out.results.spf.result == "fail"
    assert (out.decision.action, out.decision.reason) == ("hold", "spoofed-protected-domain")
    assert run(
        dns, mail("soumu@city.example.lg.jp"), ip=EVIL_IP, mail_from="", spoof="reject"
    ).decision.action == ("reject")
    # a partner without DMARC but listed as protected
    p = run(dns, mail("x@nodmarc.example"), ip=EVIL_IP, mail_from="x@nodmarc.example",
            protected_domains=("nodmarc.example",))  # fmt: skip
    assert p.decision.reason == "spoofed-protected-domain"


@pytest.mark.parametrize(
    ("from_", "kind"),
    [
        ("x@city.exarnple.lg.jp", "edit-distance"),
        ("x@clty.example.lg.jp", "edit-distance"),
        ("x@xn--ity-3ed.example.lg.jp", "homograph"),  # Cyrillic с
        ('"soumu@city.example.lg.jp" <x@evil.example>', "display-name"),
    ],
)
def test_lookalikes_warn(dns: DnsServer, from_: str, kind: str) -> None:
    out = run(dns, mail(from_), ip=EVIL_IP, mail_from="x@evil.example")
    assert out.decision.action == "accept"
    assert kind in [k for k, _ in out.decision.warnings]
    assert any("なりすまし" in line for line in render_warnings(out.decision, InboundConfig()))


def test_reply_to_elsewhere_than_unauthenticated_from(dns: DnsServer) -> None:
    msg = mail("x@nodmarc.example", extra="Reply-To: pay@evil.example\r\n")
    out = run(dns, msg, ip=EVIL_IP, mail_from="x@nodmarc.example")
    assert "reply-to" in [k for k, _ in out.decision.warnings]
    ok = run(dns, msg, mail_from="x@nodmarc.example")  # SPF passes: From authenticated, no warning
    assert "reply-to" not in [k for k, _ in ok.decision.warnings]


# ---- ARC -----------------------------------------------------------------------------------------


def _through_list(keys: dict[str, Key]) -> bytes:
    """A partner's signed mail through a mailing list that rewrites the subject and ARC-seals."""
    original = sign(mail(subject="議事録"), keys["rsa1024"], "partner.example", "rsa1024")
    received = (
        b"Authentication-Results: lists.example; spf=pass smtp.mailfrom=partner.example; "
        b"dkim=pass header.d=partner.example; dmarc=pass header.from=partner.example\r\n" + original
    )
    modified = received.replace(b"Subject: ", b"Subject: [list] ", 1)
    seal = dkim.arc_sign(modified, b"list", b"lists.example", keys["list"].private, b"lists.example")
    return b"".join(seal) + modified


def test_arc_chain_from_a_mailing_list(dns: DnsServer, keys: dict[str, Key]) -> None:
    msg = _through_list(keys)
    out = run(dns, msg, ip="192.0.2.200", helo="lists.example", mail_from="bounce@lists.example")
    assert out.results.arc.result == "pass" and out.results.arc.sealers == ("lists.example",)
    assert out.results.dmarc.result == "fail"  # the subject change broke the partner's signature
    assert out.decision.action == "reject"
    trusted = run(dns, msg, ip="192.0.2.200", helo="lists.example", mail_from="bounce@lists.example",
                  trusted_arc_sealers=("lists.example",))  # fmt: skip
    assert trusted.results.arc.trusted_pass_by == "lists.example"
    assert trusted.decision.action == "accept"
    broken = msg.replace(b"[list]", b"[LIST]")
    assert (
        run(dns, broken, ip="192.0.2.200", trusted_arc_sealers=("lists.example",)).results.arc.result
        == "fail"
    )


# ---- trusted relays ------------------------------------------------------------------------------


def test_trusted_relay_judges_first_untrusted_hop(dns: DnsServer) -> None:
    received = (
        "Received: from mail.partner.example (mail.partner.example [192.0.2.10])\r\n"
        "\tby relay.pref.example (Postfix) with ESMTP id ABC; Mon, 7 Dec 2026 10:00:00 +0900\r\n"
    )
    msg = mail(extra=received)
    out = run(dns, msg, ip="10.1.2.3", helo="relay.pref.example", trusted_relays=("10.0.0.0/8",))
    assert (out.results.client_ip, out.results.source, out.results.spf.result) == (
        "192.0.2.10",
        "received",
        "pass",
    )
    forged = mail(extra=received.replace("192.0.2.10", EVIL_IP))
    assert run(dns, forged, ip="10.1.2.3", trusted_relays=("10.0.0.0/8",)).decision.action == "reject"
    # not from a trusted relay: the Received header is the attacker's word and is ignored
    assert run(dns, msg, ip=EVIL_IP, trusted_relays=("10.0.0.0/8",)).results.spf.result == "fail"


def test_trusted_relay_authentication_results(dns: DnsServer) -> None:
    ar = (
        "Authentication-Results: relay.pref.example; spf=pass smtp.mailfrom=x;"
        " dmarc=pass header.from=partner.example\r\n"
    )
    rcv = (
        "Received: from evil (evil [198.51.100.66]) by relay.pref.example; Mon, 7 Dec 2026 10:00:00 +0900\r\n"
    )
    older = "Received: from a (a [198.51.100.1]) by evil; Mon, 7 Dec 2026 09:00:00 +0900\r\n"
    cfg = {"trusted_relays": ("10.0.0.0/8",), "trusted_authserv_ids": ("relay.pref.example",)}
    out = run(dns, mail(extra=rcv + ar + older), ip="10.1.2.3", **cfg)
    assert (out.results.source, out.results.dmarc.result, out.decision.action) == (
        "relay-ar",
        "pass",
        "accept",
    )
    # the same header placed below the untrusted hop's own Received was written by the attacker
    forged = run(dns, mail(extra=rcv + older + ar), ip="10.1.2.3", **cfg)
    assert forged.results.source == "received" and forged.decision.action == "reject"


# ---- the header ----------------------------------------------------------------------------------


def test_header_cannot_be_injected(dns: DnsServer) -> None:
    hostile = 'x@"a;dkim=pass\r\nX-Evil: 1".example'
    msg = mail(extra='DKIM-Signature: v=1; a=rsa-sha256; d=ev"il;\\ dmarc=pass; s=s; h=from; bh=AA; b=AA\r\n')
    out = run(dns, msg, ip=EVIL_IP, mail_from=hostile)
    value = render_header("detox.test", out.results)
    assert "\r" not in value and "\n" not in value
    parsed = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + value)
    methods = {r.method: r.result for r in parsed.results}
    assert methods["dmarc"] == "fail" and methods["dkim"] in ("permerror", "fail")
    assert [r.method for r in parsed.results].count("dmarc") == 1


def test_fast_integer_conversions_match_dkimpy() -> None:
    from detox.inbound import dkim as ours

    for n in (0, 1, 255, 256, 2**2047 + 12345, 2**4096 - 1):
        for length in (-1, 1, 4, 256, 512):
            assert ours._int2str(n, length) == ours._ORIGINAL_INT2STR(n, length)
        data = ours._int2str(n)
        assert ours._str2int(data) == ours._ORIGINAL_STR2INT(data) == n


# ---- what the pipeline makes of it ---------------------------------------------------------------


def test_pipeline_adds_our_header_alone_and_the_notice_lines(dns: DnsServer, keys: dict[str, Key]) -> None:
    import email
    import email.policy

    from detox.config.schema import DetoxConfig
    from detox.envelope import Envelope
    from detox.pipeline import Pipeline

    forged_ar = "Authentication-Results: detox.city.example.lg.jp; dkim=pass; dmarc=pass\r\n"
    msg = forged_ar + sign(mail(), keys["ed"], "partner.example", "ed").decode()
    out = run(dns, msg.encode(), ip=EVIL_IP)
    env = Envelope("1A2B3C4D5E6F70819203", "taro@partner.example", ("soumu@city.example.lg.jp",))
    result = Pipeline(DetoxConfig()).run(msg.encode(), Envelope(**{**env.as_dict(), "rcpt_tos": env.rcpt_tos,
                                                                   "auth": out.to_json()}))  # fmt: skip
    parsed = email.message_from_bytes(result.output, policy=email.policy.default)
    [header] = parsed.get_all("Authentication-Results")
    assert str(header).startswith("detox.city.example.lg.jp; spf=fail")
    assert "dkim=pass header.d=partner.example" in str(header)
    body = parsed.get_body(("plain",))
    assert body is not None and "partner.example は送信元の認証" in body.get_content()
    assert result.report.as_dict()["authentication"]["decision"]["action"] == "accept"
    assert "auth" not in result.report.as_dict()["envelope"]


def test_dns_cache_is_capped_and_remembers_failures(dns: DnsServer) -> None:
    from detox.inbound.dns import DnsTempError, Resolver

    async def go() -> None:
        r = Resolver((dns.address,), timeout_s=0.5, cache_size=2)
        for name in ("partner.example", "soft.example", "neutral.example", "partner.example"):
            await r.lookup(name, "TXT")
        assert r.queries == 4 and len(r._cache) == 2  # the first was evicted, asked again
        await r.lookup("partner.example", "TXT")
        assert r.queries == 4 and r.hits == 1
        for _ in range(2):
            with pytest.raises(DnsTempError):
                await r.lookup("spftimeout.example", "TXT")
        assert r.queries == 5  # the timeout is remembered: the second failed at once

    asyncio.run(go())
