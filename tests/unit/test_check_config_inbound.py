"""`detox check-config` says what sender authentication will do and whether its resolver answers.

A resolver that does not answer makes every result temperror: mail still flows (marked), so it is a
warning on stderr with exit 0, never a failure; a resolver that answers is OK. Both with a real DNS
server on loopback (and a port where none listens), through the real command.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port
from support.dns_server import DnsServer


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    server = DnsServer(tmp_path_factory.mktemp("dns"))
    server.set({"_dmarc.city.example.lg.jp": [["TXT", "v=DMARC1; p=reject"]]})
    server.start()
    yield server
    server.stop()


def check_config(tmp_path: Path, inbound: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "detox.toml"
    path.write_text(f'[server]\naccepted_domains = ["city.example.lg.jp"]\n{inbound}', encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "detox", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_off_says_so(tmp_path: Path) -> None:
    result = check_config(tmp_path, "")
    assert result.returncode == 0, result.stderr
    assert "inbound: off" in result.stdout


def test_a_resolver_that_answers_is_ok(tmp_path: Path, dns: DnsServer) -> None:
    result = check_config(tmp_path, f'[inbound]\nenabled = true\nnameservers = ["{dns.address}"]\n')
    assert result.returncode == 0, result.stderr
    assert f"DNS: {dns.address}; protected: city.example.lg.jp" in result.stdout
    assert "inbound (DNS): OK (the resolver answers: _dmarc.city.example.lg.jp TXT)" in result.stdout


def test_a_silent_resolver_warns_and_does_not_fail(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    result = check_config(
        tmp_path, f'[inbound]\nenabled = true\nnameservers = ["{dead}"]\ndns_timeout_s = 0.5\n'
    )
    assert result.returncode == 0, result.stderr
    assert "inbound: on" in result.stdout
    assert "inbound (DNS): WARNING: no answer for _dmarc.city.example.lg.jp TXT" in result.stderr
    assert "would be temperror" in result.stderr
