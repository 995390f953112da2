"""Soak: many messages through ``detox serve`` into a real Postfix, with the downstream restarted in the
middle and detox killed once; then the books: accepted / delivered / bounced / lost / duplicates, and
detox's peak memory.

    .venv/bin/python bench/soak.py                       # 20,000 messages (about 10-20 minutes here)
    .venv/bin/python bench/soak.py --messages 2000       # a quicker run
    make soak SOAK_ARGS="--messages 2000"

What runs (127.0.0.1 only; every process started here is stopped by PID at the end):

* downstream: a private Postfix (tests/support/postfix.py: root, ``postfix`` installed) delivering every
  recipient of city.example.lg.jp into one Maildir; ``reject-*`` recipients get ``550`` at RCPT;
* detox: ``.venv/bin/detox serve`` with a temporary config and state_dir, fsync on (shipped defaults,
  except: STARTTLS off towards Postfix, retries after 2 s doubling to at most 15 s instead of 30 s/1 h so
  that the run ends minutes after the downstream is back, logging at WARNING);
* the load: this script's aiosmtplib client, ``--sessions`` concurrent SMTP sessions reusing their
  connection for up to 20 messages, like an upstream MTA: a message refused with 4xx (detox's
  back-pressure), or lost to a dropped connection, is sent again until it gets a 250, and one accepted for
  some recipients only is sent again to the others (a 5xx is final). The mix: ``--corpus-share`` of
  the messages are third-party corpus mails (../shared/corpus, line endings made CRLF), the rest ~5 KB
  Japanese multipart/alternative HTML mails (bench/throughput.py's), each unique; 1 % of the messages
  also go to a ``reject-`` recipient (a permanent failure recorded per recipient) and 10 % to two
  recipients.

Faults: at ``--restart-downstream-at`` of the accepted messages Postfix is stopped for
``--downstream-down-s`` seconds and started again; at ``--kill-at`` detox gets SIGKILL (its whole
process tree) and is started again on the same spool.

The books are kept by queue id (the 250 reply; ``X-Detox-Id`` in every delivered file) with
tests/support/ledger.py: lost = accepted recipients neither in the Maildir nor recorded as failed in the
audit log; duplicates = extra copies; "unacknowledged but delivered" = messages detox spooled while the
kill cut the session before the client read the 250 (the client sent them again: normal SMTP).
Timings and memory are printed, never asserted; the exit status is 1 when anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import throughput  # noqa: E402  (bench/throughput.py: mails, /proc helpers, process handling)
from support.ledger import Ledger, read_audit_events  # noqa: E402
from support.postfix import PostfixInstance, unavailable_reason  # noqa: E402

HOST = "127.0.0.1"
CITY = "city.example.lg.jp"
TARO, HANAKO, REJECT = f"taro@{CITY}", f"hanako@{CITY}", f"reject-soak@{CITY}"
MAIL_FROM = "soak@src.test"
PER_CONNECTION = 20
_QUEUE_ID = re.compile(rb"^X-Detox-Id: *([0-9A-F]{20})\r?$", re.M)
_DELIVERED_TO = re.compile(rb"^Delivered-To: *(\S+)\r?$", re.M | re.I)


# -- the load -------------------------------------------------------------------------------------------


def corpus_mails(limit_bytes: int) -> list[bytes]:
    corpus = Path(os.environ.get("DETOX_CORPUS", REPO.parent / "shared" / "corpus"))
    manifest = corpus / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    mails = []
    with manifest.open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            if row["kind"] == "mail":
                raw = (corpus / row["path"]).read_bytes()
                if len(raw) <= limit_bytes:
                    mails.append(re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", raw))
    return mails


@dataclass(frozen=True)
class Item:
    data: bytes
    rcpts: list[str]
    corpus: bool


def build_load(n: int, corpus_share: float, seed: int) -> list[Item]:
    rng = random.Random(seed)
    corpus = corpus_mails(5 * 1024 * 1024)
    templates = throughput.jp_templates(5120)
    load = []
    for i in range(n):
        from_corpus = bool(corpus) and rng.random() < corpus_share
        if from_corpus:
            data = corpus[i % len(corpus)]
        else:
            data = templates[i % 2].replace(b"@@SEQ@@", f"{i:06d}".encode())
        roll = rng.random()
        rcpts = [TARO, REJECT] if roll < 0.01 else [TARO, HANAKO] if roll < 0.11 else [TARO]
        load.append(Item(data, rcpts, from_corpus))
    return load


@dataclass
class Books:
    accepted: dict[str, list[str]] = field(default_factory=dict)
    refused: list[tuple[int, str]] = field(default_factory=list)  # (code, reply) of final 5xx
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_send: float = 0.0
    last_accept: float = 0.0


async def sender(port: int, load: list[Item], sessions: int, books: Books, deadline: float) -> None:
    import aiosmtplib

    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(load)):
        todo.put_nowait(i)
    books.first_send = time.monotonic()

    async def session() -> None:
        client: aiosmtplib.SMTP | None = None
        used = 0
        while not todo.empty() and time.monotonic() < deadline:
            item = load[todo.get_nowait()]
            rcpts = list(item.rcpts)  # those not accepted yet: a 4xx for one recipient is retried for it
            while rcpts and time.monotonic() < deadline:
                try:
                    if client is None or not client.is_connected or used >= PER_CONNECTION:
                        if client is not None:
                            with contextlib.suppress(Exception):
                                await client.quit()
                        client = aiosmtplib.SMTP(hostname=HOST, port=port, local_hostname="soak.src.test",
                                                 start_tls=False, use_tls=False, timeout=120)  # fmt: skip
                        await client.connect()
                        used = 0
                    used += 1
                    refused, reply = await client.sendmail(MAIL_FROM, rcpts, item.data)
                    books.accepted[reply.rsplit(" ", 1)[-1]] = [r for r in rcpts if r not in refused]
                    books.last_accept = time.monotonic()
                    final = [a for a in refused.values() if a.code >= 500]
                    books.refused += [(a.code, a.message[:80]) for a in final]
                    rcpts = [r for r, answer in refused.items() if answer.code < 500]
                    if not rcpts:
                        break
                    note = f"{min(a.code for a in refused.values())} for some recipients"
                except aiosmtplib.SMTPResponseException as exc:
                    if exc.code >= 500:
                        books.refused.append((exc.code, exc.message[:80]))
                        break
                    note = f"{exc.code}"
                except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                    note = type(exc).__name__
                books.errors[note] = books.errors.get(note, 0) + 1
                books.retries += 1
                if client is not None:
                    client.close()
                client = None
                await asyncio.sleep(0.5)
        if client is not None:
            with contextlib.suppress(Exception):
                await client.quit()

    await asyncio.gather(*(session() for _ in range(sessions)))


# -- the processes ----------------------------------------------------------------------------------------


class Detox:
    def __init__(
        self, procs: throughput.Processes, workdir: Path, postfix_url: str, args: argparse.Namespace
    ) -> None:
        self.procs = procs
        self.workdir = workdir
        self.port = throughput.free_port()
        self.state = workdir / "detox-state"
        self.config = workdir / "detox.toml"
        self.config.write_text(
            "# written by bench/soak.py\n"
            f'[server]\nlisten = "{HOST}:{self.port}"\naccepted_domains = ["{CITY}"]\n'
            f'[delivery]\ndeliver_to = "{postfix_url}"\nstarttls = "off"\n'
            "retry_base_s = 2.0\nretry_max_s = 15.0\n"
            f'[storage]\nstate_dir = "{self.state}"\n'
            '[logging]\nlevel = "WARNING"\n'
            + (f"[pipeline]\nworkers = {args.workers}\n" if args.workers else ""),
            encoding="utf-8",
        )
        self.args = args
        self.proc: Any = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"detox-{self.starts}.log"
        cmd = ["timeout", "-k", "10", str(self.args.max_runtime), str(self.args.detox), "serve",
               "--config", str(self.config)]  # fmt: skip
        self.proc = self.procs.popen(f"detox-{self.starts}", cmd, log, cwd=str(self.workdir))
        throughput.wait_port(self.port, self.proc, 90, "detox serve", log)

    def main_pid(self) -> int:
        for pid in throughput.process_tree(self.proc.pid)[1:]:
            fields = throughput._stat(pid)
            if fields is not None and int(fields[1]) == self.proc.pid:
                return pid
        return int(self.proc.pid)

    def kill9(self) -> int:
        """SIGKILL detox and every process of its tree, by PID; returns how many were killed."""
        tree = [(pid, throughput.start_time(pid)) for pid in throughput.process_tree(self.main_pid())]
        for pid, started in tree:
            if started is not None and throughput.start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(15)
        return len(tree)

    def busy(self) -> int:
        spool = self.state / "spool"
        return len(list((spool / "incoming").glob("*.msg"))) + len(list((spool / "outgoing").glob("*.json")))


def maildir_copies(postfix: PostfixInstance) -> tuple[list[tuple[str | None, str]], int]:
    """(queue id, recipient) of every delivered file, and the files without a readable queue id."""
    found: list[tuple[str | None, str]] = []
    unreadable = 0
    for path in postfix.message_files():
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as fh:
            head = b""
            while b"\n\n" not in head:  # the whole header block: a corpus mail has a 200 KB Subject
                chunk = fh.read(256 * 1024)
                if not chunk:
                    break
                head += chunk
            head = head.split(b"\n\n", 1)[0]
            qid = _QUEUE_ID.search(head)
            rcpt = _DELIVERED_TO.search(head)
            if qid is None:
                unreadable += 1
            found.append((qid.group(1).decode() if qid else None, rcpt.group(1).decode() if rcpt else "?"))
    return found, unreadable


def explain_lost(
    lost: list[tuple[str, str]], state: Path, postfix: PostfixInstance, limit: int = 10
) -> list[str]:
    """What detox's audit log and Postfix's log say about lost recipients (Postfix's queue id is in the
    250 reply detox recorded as delivered)."""
    replies: dict[tuple[str, str], str] = {}
    for event in read_audit_events(state)[0]:
        recipients = event.get("recipients")
        if event.get("event") == "delivered" and isinstance(recipients, dict):
            for rcpt, detail in recipients.items():
                replies[(str(event.get("queue_id")), rcpt.lower())] = str(detail.get("response", ""))
    maillog = postfix.log().splitlines()
    out = []
    for queue_id, rcpt in lost[:limit]:
        reply = replies.get((queue_id, rcpt), "no delivered record")
        out.append(f"  {queue_id} {rcpt}: detox recorded {reply!r}")
        found = re.search(r"queued as ([0-9A-Za-z]+)", reply)
        if found:
            out += [f"    postfix: {line[-220:]}" for line in maillog if found.group(1) in line][-4:]
    return out


class Sampler(threading.Thread):
    """Peak RSS/PSS of detox's whole process tree (main, workers, sandboxed converters), every 0.25 s."""

    def __init__(self, detox: Detox) -> None:
        super().__init__(daemon=True)
        self.detox = detox
        self.peak_rss = self.peak_pss = 0.0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.25):
            with contextlib.suppress(Exception):
                rss, pss = throughput.tree_memory(self.detox.main_pid())
                self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)


def wait_until(what: str, check: Any, timeout: float, poll: float = 0.5) -> float:
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"{what}: not done after {timeout:.0f}s")
        time.sleep(poll)
    return time.monotonic() - began


# -- the run ----------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"soak: needs a real Postfix: {reason}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="detox-soak-", dir=args.tmpdir))
    procs = throughput.Processes(workdir)
    postfix = PostfixInstance(extra_main_cf={"default_process_limit": "50"})
    detox: Detox | None = None
    books = Books()
    lost_any = True
    sampler: Sampler | None = None
    try:
        print(
            f"soak: {args.messages} messages, {args.sessions} sessions, corpus share {args.corpus_share}; "
            f"workdir {workdir}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        load = build_load(args.messages, args.corpus_share, args.seed)
        corpus_count = sum(1 for item in load if item.corpus)
        postfix.start()
        detox = Detox(procs, workdir, postfix.url, args)
        detox.start()
        live: Detox = detox  # for the controller thread
        sampler = Sampler(detox)
        sampler.start()
        print(
            f"  postfix on :{postfix.port}, detox on :{detox.port} (pid {detox.main_pid()}); "
            f"{corpus_count} corpus mails in the mix",
            flush=True,
        )

        events: list[str] = []
        began = time.monotonic()

        def when(fraction: float) -> bool:
            """Wait until that share of the messages was accepted (False if the run ends first)."""
            while time.monotonic() - began < args.max_runtime and not sending_done.is_set():
                if len(books.accepted) >= fraction * args.messages:
                    return True
                time.sleep(0.1)
            return False

        def restart_downstream() -> None:
            if not when(args.restart_downstream_at):
                return
            events.append(
                f"{time.monotonic() - began:6.1f}s downstream stopping at {len(books.accepted)} accepted"
            )
            postfix.stop(remove=False)
            time.sleep(args.downstream_down_s)
            postfix.start()
            events.append(f"{time.monotonic() - began:6.1f}s downstream started again")

        def kill_detox() -> None:
            if not when(args.kill_at):
                return
            at = f"{len(books.accepted)} accepted, {live.busy()} spool entries"
            n = live.kill9()
            events.append(f"{time.monotonic() - began:6.1f}s detox SIGKILLed ({n} processes) at {at}")
            time.sleep(1.0)
            live.start()
            events.append(f"{time.monotonic() - began:6.1f}s detox started again")

        sending_done = threading.Event()
        faults = [threading.Thread(target=f, daemon=True) for f in (restart_downstream, kill_detox)]
        for thread in faults:
            thread.start()
        deadline = time.monotonic() + args.max_runtime
        asyncio.run(sender(detox.port, load, args.sessions, books, deadline))
        sent_s = time.monotonic() - began
        sending_done.set()
        for thread in faults:
            thread.join(timeout=args.downstream_down_s + 120)
        for line in events:
            print("  " + line, flush=True)
        counts = f"{len(books.accepted)} accepted, {len(books.refused)} refused (5xx)"
        print(
            f"  sending done after {sent_s:.0f}s: {counts}, {books.retries} retries {books.errors}",
            flush=True,
        )
        drained = wait_until("detox spool", lambda: detox.busy() == 0, args.drain_timeout)
        print(f"  detox spool empty {drained:.0f}s later", flush=True)
        with contextlib.suppress(Exception):
            postfix.flush()
        wait_until("postfix queue", lambda: "Mail queue is empty" in postfix.queue(), args.drain_timeout, 1.0)
        total_s = time.monotonic() - began
        sampler.halt.set()

        ledger = Ledger()
        for queue_id, rcpts in books.accepted.items():
            ledger.accepted(queue_id, rcpts)
        copies, unreadable = maildir_copies(postfix)
        for copy_id, rcpt in copies:
            ledger.delivered(copy_id, [rcpt])
        broken = ledger.read_audit(detox.state)
        result = ledger.settle()
        events_by_kind: dict[str, int] = {}
        for event in read_audit_events(detox.state)[0]:
            events_by_kind[event.get("event", "?")] = events_by_kind.get(event.get("event", "?"), 0) + 1
        failed_dir = detox.state / "spool" / "failed"
        moved_aside = len(list(failed_dir.glob("*.why.json"))) if failed_dir.is_dir() else 0
        lost_any = bool(result.lost)

        recipients = sum(len(item.rcpts) for item in load)
        rows = [
            ("messages sent", (f"{args.messages} ({corpus_count} corpus, {args.messages - corpus_count} "
                              f"Japanese HTML), {recipients} recipients")),
            ("accepted (250)", f"{result.messages} messages / {result.accepted} recipients"),
            ("refused at SMTP (5xx)", f"{len(books.refused)} {sorted(set(books.refused))[:3]}"),
            ("delivered", f"{result.delivered} recipients ({len(copies)} Maildir files)"),
            ("bounced / failed", f"{result.bounced} recipients {dict(result.failed_reasons)}"),
            ("lost", f"{len(result.lost)} {result.lost[:5]}"),
            ("duplicates", f"{result.duplicate_copies} extra copies of {len(result.duplicates)} recipients"),
            ("unacknowledged, sent", f"{result.unacked} (spooled by detox when the kill cut the session)"),
            ("unidentified files", (f"{result.unknown + unreadable}; unreadable audit lines {broken}; "
                                   f"moved aside {moved_aside}")),
            ("audit events", str(dict(sorted(events_by_kind.items())))),
            ("peak RSS / PSS", f"{sampler.peak_rss:.0f} / {sampler.peak_pss:.0f} MB (detox's process tree)"),
            ("throughput", (f"{result.messages / sent_s:.1f} msg/s accepted over {sent_s:.0f}s; "
                           f"all delivered after {total_s:.0f}s ({result.messages / total_s:.1f} msg/s), "
                           "faults included; measured, not asserted")),
        ]  # fmt: skip
        print(f"\n## detox soak — {time.strftime('%Y-%m-%d %H:%M')} ({total_s:.0f} s)")
        print(f"command: {sys.executable} {' '.join(sys.argv)}")
        for label, value in rows:
            print(f"{label:22} {value}")
        if result.lost:
            print("lost recipients, as far as the logs tell:")
            for line in explain_lost(result.lost, detox.state, postfix):
                print(line)
        if args.json:
            figures = {
                "messages": args.messages, "accepted": result.messages, "recipients": result.accepted,
                "delivered": result.delivered, "bounced": result.bounced, "lost": len(result.lost),
                "duplicates": result.duplicate_copies, "unacked": result.unacked,
                "refused": len(books.refused), "peak_rss_mb": sampler.peak_rss,
                "peak_pss_mb": sampler.peak_pss, "seconds": total_s, "events": events,
                "audit": events_by_kind,
            }  # fmt: skip
            Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nsoak failed: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sampler is not None:
            sampler.halt.set()
        if detox is not None and detox.proc is not None:
            procs.stop(detox.proc, term_pid=detox.main_pid())
        procs.stop_all()
        postfix.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if lost_any else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=8, help="concurrent SMTP sessions")
    ap.add_argument("--corpus-share", type=float, default=0.1, help="share of corpus mails in the mix")
    ap.add_argument("--restart-downstream-at", type=float, default=0.3, help="fraction of accepted messages")
    ap.add_argument("--downstream-down-s", type=float, default=10.0)
    ap.add_argument("--kill-at", type=float, default=0.6, help="fraction of accepted messages")
    ap.add_argument("--workers", type=int, help="pipeline.workers (default: one per CPU)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--detox", default=str(REPO / ".venv" / "bin" / "detox"))
    ap.add_argument("--tmpdir", help="where the temporary state goes (default $TMPDIR or /tmp)")
    ap.add_argument("--drain-timeout", type=float, default=1800)
    ap.add_argument("--max-runtime", type=int, default=7200, help="bound on sending, and on every server")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, state, Maildir)")
    ap.add_argument("--json", help="also write the figures as JSON to this file")
    args = ap.parse_args()

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
