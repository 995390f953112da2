"""A real DNS server for tests: dnslib serving a JSON zone over UDP and TCP on loopback, in a subprocess.

    with DnsServer(tmp_path) as dns:          # or the ``dns_server`` fixture
        dns.set({"example.org": [["TXT", "v=spf1 ip4:192.0.2.0/24 -all"]],
                 "slow.example": "TIMEOUT"})   # never answered (a DNS timeout)
        ... inbound.nameservers = [dns.address] ...

Zone format: {name: [[type, value], ...] | "TIMEOUT" | "SERVFAIL"}; a ["TIMEOUT", null] item in the
list times out the types not listed before it. TXT values are a string or a list
of strings (several character-strings of one record). A name absent from the zone is NXDOMAIN; a name
present without the asked type answers NOERROR with no data. CNAMEs are followed (5 levels). The zone
file is re-read when it changes, so a test can change records while the server runs. Answers larger
than 512 bytes are truncated over UDP (TC) and served whole over TCP, as a real server does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from . import free_port

_SERVER = r"""
import json, os, sys, time
from dnslib import RR, QTYPE, RCODE, A, AAAA, MX, PTR, TXT, CNAME
from dnslib.server import DNSServer, BaseResolver

ZONE, PORT = sys.argv[1], int(sys.argv[2])
state = {"mtime": None, "zone": {}}

def zone():
    m = os.stat(ZONE).st_mtime_ns
    if m != state["mtime"]:
        with open(ZONE) as f:
            state["zone"] = {k.lower().rstrip("."): v for k, v in json.load(f).items()}
        state["mtime"] = m
    return state["zone"]

def rdata(t, v):
    if t == "A": return A(v)
    if t == "AAAA": return AAAA(v)
    if t == "MX": return MX(v[1], v[0])
    if t == "PTR": return PTR(v)
    if t == "CNAME": return CNAME(v)
    if t == "TXT":
        parts = (v if isinstance(v, list) else [v[i:i + 255] for i in range(0, len(v), 255)]) or [""]
        return TXT([p.encode("utf-8") for p in parts])
    raise ValueError(t)

class Drop(Exception):
    pass

class Resolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        z = zone()
        name = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        for _ in range(6):
            entry = z.get(name)
            if entry == "TIMEOUT":
                raise Drop(name)  # no answer at all (the server thread stays free for others)
            if entry == "SERVFAIL":
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if entry is None:
                if not reply.rr:
                    reply.header.rcode = RCODE.NXDOMAIN
                return reply
            cname = [v for t, v in entry if t == "CNAME"]
            if cname and qtype != "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(cname[0]), ttl=300))
                name = cname[0].lower().rstrip(".")
                continue
            if ["TIMEOUT", None] in entry and not any(
                t == qtype for t, _ in entry[: entry.index(["TIMEOUT", None])]
            ):
                raise Drop(name)  # a timeout for the types not listed before the marker
            for t, v in entry:
                if t == qtype:
                    reply.add_answer(RR(name, getattr(QTYPE, t), rdata=rdata(t, v), ttl=300))
            return reply
        return reply

resolver = Resolver()
servers = [DNSServer(resolver, port=PORT, address="127.0.0.1", tcp=tcp) for tcp in (False, True)]
for s in servers:
    s.start_thread()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class DnsServer:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.zone_path = directory / "zone.json"
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None
        self._zone: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, records: dict[str, Any]) -> None:
        """Add (or replace) names in the zone."""
        self._zone.update(records)
        self._write()

    def replace(self, records: dict[str, Any]) -> None:
        self._zone = dict(records)
        self._write()

    def _write(self) -> None:
        tmp = self.zone_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._zone))
        os.replace(tmp, self.zone_path)
        # mtime_ns must change even for writes within one clock tick
        os.utime(self.zone_path, ns=(time.time_ns(), time.time_ns()))

    def start(self) -> None:
        self._write()
        script = self.directory / "dns_server.py"
        script.write_text(_SERVER)
        for _ in range(5):
            self.port = free_port()
            self._proc = subprocess.Popen(
                [sys.executable, str(script), str(self.zone_path), str(self.port)],
                stdout=subprocess.PIPE,
                stderr=(self.directory / "dns_server.log").open("ab"),
                text=True,
                start_new_session=True,
            )
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if line.strip() == "ready" and self._answers():
                return
            self.stop()
        raise RuntimeError("the test DNS server did not start")

    def _answers(self) -> bool:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
