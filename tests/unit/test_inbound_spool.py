"""The authentication result travels with the spooled message: the incoming entry's envelope line.

A message streamed to disk (over STREAM_CHUNK) has its envelope line written before the result is
known: it is padded, and rewritten in place before the commit. Entries written before this (no
``auth``) read as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from detox.envelope import Envelope
from detox.spool import Spool
from detox.spool.incoming import AUTH_RESERVE, MAGIC, STREAM_CHUNK, entry_header

ENV = Envelope("1A2B3C4D5E6F70819203", "taro@partner.example", ("soumu@city.example.lg.jp",), "192.0.2.1")
AUTH = {
    "results": {
        "spf": {"result": "pass"},
        "dkim": [],
        "dmarc": {"result": "pass", "from_domain": "partner.example"},
    },
    "decision": {
        "action": "accept",
        "reason": "",
        "warnings": [{"key": "verified", "domain": "partner.example"}],
    },
    "summary": {"spf": "pass", "dkim": "none", "dmarc": "pass", "arc": "none"},
}


def _receive(spool: Spool, body: bytes, envelope: Envelope) -> None:
    writer = spool.open_incoming(ENV, reserve=AUTH_RESERVE)
    for i in range(0, len(body), 65536):
        if writer.feed(body[i : i + 65536]):
            writer.flush()
    assert writer.message_bytes() == body
    writer.set_envelope(envelope)
    writer.commit()


def test_large_message_gets_its_envelope_rewritten_in_place(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    body = b"Subject: x\r\n\r\n" + b"a" * (STREAM_CHUNK * 3)
    _receive(spool, body, Envelope(**{**ENV.as_dict(), "rcpt_tos": ENV.rcpt_tos, "auth": AUTH}))
    envelope, raw = spool.read_incoming(ENV.queue_id)
    assert raw == body and envelope.auth == AUTH


def test_small_message_needs_no_padding(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    body = b"Subject: x\r\n\r\nsmall\r\n"
    _receive(spool, body, Envelope(**{**ENV.as_dict(), "rcpt_tos": ENV.rcpt_tos, "auth": AUTH}))
    envelope, raw = spool.read_incoming(ENV.queue_id)
    assert raw == body and envelope.auth == AUTH
    path = spool.incoming / f"{ENV.queue_id}.msg"
    assert path.stat().st_size < 2048


def test_oversized_result_keeps_the_decision(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    body = b"Subject: x\r\n\r\n" + b"a" * (STREAM_CHUNK * 2)
    huge = {**AUTH, "results": {**AUTH["results"], "padding": "x" * (AUTH_RESERVE * 2)}}
    _receive(spool, body, Envelope(**{**ENV.as_dict(), "rcpt_tos": ENV.rcpt_tos, "auth": huge}))
    envelope, raw = spool.read_incoming(ENV.queue_id)
    assert raw == body and envelope.auth == {"decision": AUTH["decision"], "summary": AUTH["summary"]}


def test_entries_without_auth_read_as_before(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.accept(ENV, b"x")
    envelope, _ = spool.read_incoming(ENV.queue_id)
    assert envelope == ENV and envelope.auth is None
    assert entry_header(ENV) == MAGIC + json.dumps(ENV.as_dict(), ensure_ascii=False).encode() + b"\n"
    assert "auth" not in ENV.as_dict()
