"""The whole third-party corpus through the real relay and through the ``detox scan`` CLI.

Relay: one ``detox serve`` subprocess (2 pipeline workers, bubblewrap sandbox as configured), every corpus
mail sent over loopback SMTP as DATA, delivered to an aiosmtpd sink. Proves, for all 531 mails:

* no mail makes detox crash or hang: every accepted mail is detoxified within ``message_timeout_s`` on its
  first try (no ``deferred``/``failed`` pipeline record, nothing moved to ``spool/failed``) and the
  service keeps serving to the last mail;
* every accepted mail is delivered exactly once (matched by ``X-Detox-Id`` to the queue id of its 250);
* every delivered message passes the same output invariants as tests/corpus/test_corpus_mail.py
  (support.invariants: re-parses without defects, only allowed part types, disarmed parts re-checked by
  support.inert, trace headers, CRLF, lines <= 998 bytes, UTF-8 text without control characters).

What goes on the wire: each file's bytes as they are stored (190 of the files have bare LF line endings,
a few have lines over 1000 bytes; smtplib does the dot-stuffing). A mail refused at the SMTP level for its
shape (a line too long, too many or too large header fields: 500/552) is counted and printed, not a failure
here (input for the line-length work of issue 5), and is then sent again with its line endings made CRLF,
as an upstream MTA would put it on the wire, so that its content still goes through the relay. Any other
refusal fails the test.

CLI: ``detox scan DIR --summary --jobs 2`` over a sample of the corpus (every mail with
DETOX_CORPUS_CLI_ALL=1), plus ``detox scan FILE`` for files the summary skips as "not mail", each output
checked like the relay's. The in-process pipeline and the relay already see every mail.
"""

from __future__ import annotations

import csv
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.detox_proc import DetoxProcess
from support.invariants import output_problems
from support.ledger import Ledger, read_audit_events
from support.sink import SmtpSink

RCPT = "taro@city.example.lg.jp"
SENDER = "corpus@example.jp"
DRAIN_TIMEOUT = 480.0

pytestmark = [pytest.mark.corpus, pytest.mark.slow]


def to_wire(raw: bytes) -> bytes:
    """The message as an MTA sends it: every line ending CRLF."""
    return re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", raw)


def longest_line(data: bytes) -> int:
    """Length of the longest CRLF-terminated line as sent (dot-stuffing included, CRLF included)."""
    return max(len(line) + (1 if line.startswith(b".") else 0) for line in data.split(b"\r\n")) + 2


@dataclass(frozen=True)
class CorpusMail:
    path: Path
    id: str  # path under mail/, as the corpus tests name it

    def read(self) -> bytes:
        return self.path.read_bytes()


def all_mails(corpus: Path) -> list[CorpusMail]:
    """Every mail of MANIFEST.tsv, read as tests/corpus/conftest.py reads it (its ``corpus_dir`` fixture
    skips these tests when the corpus is absent)."""
    with (corpus / "MANIFEST.tsv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [
        CorpusMail(corpus / r["path"], r["path"].removeprefix("mail/")) for r in rows if r["kind"] == "mail"
    ]


@dataclass
class RelayRun:
    accepted: dict[str, CorpusMail] = field(default_factory=dict)  # queue id -> mail
    refused: list[tuple[CorpusMail, int, str]] = field(default_factory=list)  # as stored
    refused_crlf: list[tuple[CorpusMail, int, str]] = field(default_factory=list)  # CRLF form too
    delivered: list[tuple[str | None, bytes]] = field(default_factory=list)  # (X-Detox-Id, data)
    events: list[dict[str, Any]] = field(default_factory=list)
    failed_dir: list[str] = field(default_factory=list)
    log: str = ""
    seconds: float = 0.0


def _shape_refusal(code: int, text: str) -> bool:
    """A refusal for the message's shape (line length, header limits), not for its content."""
    return code in (500, 552) and any(w in text.lower() for w in ("line", "header", "size"))


def _send_all(port: int, mails: list[CorpusMail], run: RelayRun) -> None:
    client: smtplib.SMTP | None = None

    def transaction(data: bytes) -> tuple[int, str]:
        nonlocal client
        for attempt in range(2):
            if client is None:
                client = smtplib.SMTP("127.0.0.1", port, local_hostname="mx.example.jp", timeout=120)
                client.ehlo()
            try:
                client.mail(SENDER)
                code, reply = client.rcpt(RCPT)
                assert code == 250, (code, reply)
                code, reply = client.data(data)
            except smtplib.SMTPServerDisconnected:
                client = None
                if attempt:
                    raise
                continue
            if code != 250:
                client.rset()
            return code, reply.decode("utf-8", "replace")
        raise AssertionError("unreachable")

    try:
        for mail in mails:
            raw = mail.read()
            code, text = transaction(raw)
            if code != 250 and _shape_refusal(code, text):
                run.refused.append((mail, code, text))
                code, text = transaction(to_wire(raw))
                if code != 250:
                    run.refused_crlf.append((mail, code, text))
                    continue
            assert code == 250, (mail.id, code, text)
            run.accepted[text.rsplit(" ", 1)[1]] = mail
    finally:
        if client is not None:
            try:
                client.quit()
            except smtplib.SMTPException:
                client.close()


def _wait_drained(proc: DetoxProcess, sink: SmtpSink, accepted: int) -> None:
    spool = proc.state / "spool"
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        busy = list((spool / "incoming").glob("*.msg")) + list((spool / "outgoing").glob("*.json"))
        if not busy and len(sink.messages) >= accepted:
            return
        assert proc.proc is not None and proc.proc.poll() is None, "detox serve exited:\n" + proc.log_text()
        time.sleep(0.2)
    raise AssertionError(
        f"not drained after {DRAIN_TIMEOUT:.0f}s: {len(sink.messages)} of {accepted} delivered, "
        f"{len(busy)} spool entries left\n{proc.log_text()[-3000:]}"
    )


@pytest.fixture(scope="module")
def relay_run(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Iterator[RelayRun]:
    mails = all_mails(corpus_dir)
    workdir = tmp_path_factory.mktemp("corpus-relay")
    run = RelayRun()
    with SmtpSink() as sink:
        proc = DetoxProcess(
            workdir,
            sink.url,
            {
                "delivery": {"starttls": "off", "retry_base_s": 0.5, "retry_max_s": 2.0},
                # A mail that takes longer than this is a hang: it is retried and shows as "deferred".
                "limits": {"message_timeout_s": 90.0},
                "logging": {"level": "WARNING"},
            },
        )
        proc.start()
        try:
            began = time.monotonic()
            _send_all(proc.port, mails, run)
            _wait_drained(proc, sink, len(run.accepted))
            run.seconds = time.monotonic() - began
        finally:
            proc.stop()
            run.log = proc.log_text()
        for message in sink.messages:
            found = re.search(rb"^X-Detox-Id: *([0-9A-F]{20})\r?$", message.data, re.M)
            run.delivered.append((found.group(1).decode() if found else None, message.data))
    run.events, _ = read_audit_events(proc.state)
    failed = proc.state / "spool" / "failed"
    run.failed_dir = sorted(p.name for p in failed.iterdir()) if failed.is_dir() else []
    yield run


def test_corpus_relay_accepts_and_delivers_every_mail_once(
    relay_run: RelayRun, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mails = all_mails(corpus_dir)
    # Refusals for the message's shape are listed for the line-length work of issue 5; any other
    # refusal failed the send already (an assertion in _send_all).
    with capsys.disabled():
        print(
            f"\ncorpus relay: {len(mails)} mails, {len(relay_run.accepted)} accepted, "
            f"{len(relay_run.delivered)} delivered in {relay_run.seconds:.0f}s; refused at the SMTP level as "
            f"stored: {len(relay_run.refused)}, also with CRLF line endings: {len(relay_run.refused_crlf)}"
        )
        for mail, code, text in relay_run.refused + relay_run.refused_crlf:
            print(f"  refused {code} {text!r}: {mail.id} (longest line {longest_line(to_wire(mail.read()))})")
    assert len(relay_run.accepted) + len(relay_run.refused_crlf) == len(mails)

    ledger = Ledger()
    for queue_id in relay_run.accepted:
        ledger.accepted(queue_id, [RCPT])
    for queue_id, _ in relay_run.delivered:
        ledger.delivered(queue_id, [RCPT])
    settled = ledger.settle()  # no failure record is read: here every accepted mail must arrive
    with capsys.disabled():
        print(f"  {settled.summary()}")
    lost = [relay_run.accepted[q].id for q, _ in settled.lost]
    assert not lost, f"accepted but never delivered: {lost}"
    assert settled.unknown == 0, "a delivered message without our X-Detox-Id"
    assert settled.unacked == 0
    assert not settled.duplicates, f"delivered more than once: {settled.duplicates}"


def test_corpus_relay_never_crashes_or_hangs(relay_run: RelayRun) -> None:
    by_id = {q: m.id for q, m in relay_run.accepted.items()}
    troubles = [
        (by_id.get(str(e.get("queue_id")), e.get("queue_id")), e["event"], e.get("stage"), e.get("reason"))
        for e in relay_run.events
        if e.get("event") in ("deferred", "failed")
    ]
    assert not troubles, f"pipeline retries or failures (crash, timeout, exception): {troubles}"
    assert not relay_run.failed_dir, f"moved aside: {relay_run.failed_dir}"
    detoxified = {str(e["queue_id"]) for e in relay_run.events if e.get("event") == "detoxified"}
    assert detoxified == set(relay_run.accepted)
    assert "Traceback" not in relay_run.log, relay_run.log[-3000:]


def test_corpus_relay_outputs_are_clean(relay_run: RelayRun) -> None:
    withheld: dict[str, set[str]] = {}
    for event in relay_run.events:
        if event.get("event") == "detoxified":
            parts = event.get("parts") or []
            withheld[str(event["queue_id"])] = {
                p["sha256"] for p in parts if p.get("action") in ("hold", "drop") and p.get("sha256")
            }
    problems: dict[str, list[str]] = {}
    for queue_id, data in relay_run.delivered:
        assert queue_id is not None
        found = output_problems(data, queue_id=queue_id, withheld=withheld.get(queue_id, set()))
        if found:
            problems[relay_run.accepted[queue_id].id] = found
    assert not problems, "unclean outputs:\n" + "\n".join(f"{k}: {v}" for k, v in sorted(problems.items()))


# -- the CLI --------------------------------------------------------------------------------------


def _detox() -> list[str]:
    script = Path(sys.executable).with_name("detox")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "detox"]


# The whole corpus already goes through Pipeline.run in-process (test_corpus_mail.py) and through the
# relay above; the CLI adds process start-up, file reading and the worker pool, so a sample is enough in
# CI: every SAMPLE_EVERY-th mail plus the hostile ones named here. DETOX_CORPUS_CLI_ALL=1 scans them all.
SAMPLE_EVERY = 12
CLI_HOSTILE = (
    "flanker/enclosed-endless.eml",  # DoS-shaped: endless nesting of enclosed messages
    "flanker/long-header.eml",
    "mime4j/testmsgs/basic-plain-very-long-lines.msg",
    "mime4j/testmsgs/very-very-long-boundary.msg",
    "stalwart-mail-parser/malformed/019.eml",
    "zbateson-mmp/m4009.txt",  # the largest: a 10 MB attachment
)
# Files the summary skips as "not mail" (no header first): each through ``detox scan FILE`` instead.
CLI_SINGLE = (
    "flanker/enclosed-endless.eml",  # starts with 60 spaces
    "sisimai/mailbox/size-0",  # empty
    "spamscope-mail-parser/mail_outlook_1.eml",  # an Outlook .msg (OLE) file, not MIME at all
    "mime4j/testmsgs/obsolete.msg",  # "Subject :" (obsolete syntax)
)


@pytest.mark.timeout(600, method="thread")
def test_corpus_scan_cli(tmp_path: Path, corpus_dir: Path) -> None:
    """``detox scan DIR --summary --jobs 2`` over a sample of the corpus: no pipeline error, every file
    counted; ``detox scan FILE`` on files the summary skips as "not mail": exit 0 and a clean output."""
    mails = all_mails(corpus_dir)
    if os.environ.get("DETOX_CORPUS_CLI_ALL") != "1":
        mails = [m for i, m in enumerate(mails) if i % SAMPLE_EVERY == 0 or m.id in CLI_HOSTILE]
    tree = tmp_path / "mails"
    for mail in mails:
        link = tree / mail.id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(mail.path)
    config = tmp_path / "detox.toml"
    config.write_text("# built-in defaults\n", encoding="utf-8")
    report = tmp_path / "summary.json"
    proc = subprocess.run(
        [*_detox(), "scan", str(tree), "--summary", "--jobs", "2", "--config", str(config),
         "--report", str(report)],
        capture_output=True, timeout=540, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["errors"] == [], summary["errors"]
    skipped = [m for m in mails if not _looks_like_mail(m.path)]
    assert summary["skipped_files"] == len(skipped), "the CLI and this test disagree on what is mail"
    # an mbox-looking file ("From " first) counts once per message in it: at least one per file
    assert summary["messages"] >= len(mails) - len(skipped)

    problems: dict[str, list[str]] = {}
    for mail_id in CLI_SINGLE:
        out = tmp_path / "out.eml"
        one = subprocess.run(
            [*_detox(), "scan", str(corpus_dir / "mail" / mail_id), "--config", str(config),
             "--output", str(out)],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        assert one.returncode == 0, (mail_id, one.stderr.decode("utf-8", "replace")[-2000:])
        found = output_problems(out.read_bytes(), crlf=False)
        if found:
            problems[mail_id] = found
    assert not problems, problems


def _looks_like_mail(path: Path) -> bool:
    from detox.scan import looks_like_mail

    with open(path, "rb") as fh:
        head = fh.read(1024)
    return head.startswith(b"From ") or looks_like_mail(head)
