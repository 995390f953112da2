"""Extra CPU per message for sender authentication (detox.inbound) with a warm DNS cache.

    .venv/bin/python bench/inbound.py [--messages 300] [--size 5000]

A real DNS server (the tests' dnslib server, tests/support/dns_server.py) on loopback holds the
partner's SPF, DKIM keys and DMARC record. After one warm-up message per kind (the cache then holds
every answer), each message is authenticated the way ``detox serve`` does at the end of DATA
(``Authenticator.authenticate``: SPF via pyspf and DKIM/ARC via dkimpy in worker threads, the DMARC
tree walk on the loop). CPU is ``time.process_time`` (all threads) around each message; printed as
median / p90 per message, next to the same run's pipeline CPU for the same message *without*
authentication (``Pipeline.run``), which is what detox spent per message before. Goal (product
brief): ≤ 2 ms median extra. Results are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests")]

from support.dkimkeys import ed25519_key, mail, rsa_key, sign  # noqa: E402
from support.dns_server import DnsServer  # noqa: E402

from detox.config.schema import DetoxConfig, InboundConfig  # noqa: E402
from detox.envelope import Envelope  # noqa: E402
from detox.inbound.check import Authenticator  # noqa: E402


def stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1] if ordered else 0.0
    return f"median {statistics.median(ordered) * 1000:6.2f} ms   p90 {p90 * 1000:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=5000, help="body bytes (default 5 KB)")
    args = parser.parse_args()
    rsa, ed = rsa_key(2048), ed25519_key()
    body = ("お世話になっております。見積書の件でご連絡いたします。\r\n" * (args.size // 80 + 1))[: args.size]
    plain = mail(body=body)
    kinds = {
        "unsigned (SPF pass, DMARC via SPF)": plain,
        "DKIM rsa-sha256 2048": sign(plain, rsa, "partner.example", "rsa"),
        "DKIM ed25519-sha256": sign(plain, ed, "partner.example", "ed"),
    }
    with tempfile.TemporaryDirectory() as tmp, DnsServer(Path(tmp)) as dns:
        dns.set(
            {
                "partner.example": [["TXT", "v=spf1 ip4:192.0.2.0/24 include:_spf.partner.example -all"]],
                "_spf.partner.example": [["TXT", "v=spf1 ip4:198.51.100.0/24 -all"]],
                "_dmarc.partner.example": [["TXT", "v=DMARC1; p=reject"]],
                "rsa._domainkey.partner.example": [["TXT", rsa.record]],
                "ed._domainkey.partner.example": [["TXT", ed.record]],
            }
        )
        config = DetoxConfig(inbound=InboundConfig(enabled=True, nameservers=(dns.address,)))
        from detox.pipeline import Pipeline

        pipeline = Pipeline(config)
        envelope = Envelope("BENCH", "taro@partner.example", ("soumu@city.example.lg.jp",))
        base: list[float] = []
        for _ in range(min(args.messages, 100)):
            t = time.process_time()
            pipeline.run(plain, envelope)
            base.append(time.process_time() - t)
        print(f"messages: {args.messages} per kind, body {args.size} bytes; warm DNS cache ({dns.address})")
        print(f"  {'pipeline without authentication':40s} {stats(base)}")

        async def run() -> None:
            auth = Authenticator(config.inbound, accepted_domains=config.server.accepted_domains)
            for name, message in kinds.items():
                await auth.authenticate(
                    message, client_ip="192.0.2.10", helo="mx", mail_from="t@partner.example"
                )
                samples: list[float] = []
                for _ in range(args.messages):
                    t = time.process_time()
                    out = await auth.authenticate(
                        message,
                        client_ip="192.0.2.10",
                        helo="mx.partner.example",
                        mail_from="t@partner.example",
                    )
                    samples.append(time.process_time() - t)
                assert out.results.dmarc.result == "pass", out.results
                print(f"  {'+ authentication, ' + name:40s} {stats(samples)}")
            print(f"  DNS queries sent: {auth.resolver.queries}, answered from cache: {auth.resolver.hits}")

        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
