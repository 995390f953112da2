"""Throughput of ``detox serve`` against a bare aiosmtpd relay, measured in one interleaved run.

    .venv/bin/python bench/throughput.py                    # 2000 msgs x 3 rounds per load (a few minutes)
    .venv/bin/python bench/throughput.py --messages 500 --rounds 2 --json /tmp/bench.json

What runs (everything on 127.0.0.1, every process started here is stopped by PID at the end):

* downstream: Postfix ``smtp-sink`` (counts what it receives, ``-c``);
* baseline:   ``../shared/peers/relay.py --loop uvloop --client aiosmtplib-pool`` (forwards inside DATA);
* detox:      ``.venv/bin/detox serve`` with a temporary config and state_dir, delivering to the sink;
* baseline:   as root, a private Postfix (tests/support/postfix.py) delivering into a Maildir
  (``--no-postfix`` leaves it out): "delivered" when all N files are in its Maildir.

Two loads, each 10 concurrent sessions and one message per connection:

* ``smtp-source``: ``smtp-source -s 10 -l 5120 -m N`` (5 KB of ASCII, no MIME);
* ``jp-html``:     this file's own aiosmtplib client (``--jp-client``), ~5 KB Japanese multipart/alternative
  mails (ISO-2022-JP / UTF-8, HTML with a table and links, ①㈱髙﨑).

The relay answers 250 only after the sink did, so its time ends when the client ends. detox answers
250 after spooling and delivers asynchronously, so it gets two figures: "accepted" (client end) and
"delivered" (its spool is empty again). CPU is utime+stime of the server's whole process tree from
/proc (detox has worker processes), per message; memory is sampled from /proc every 0.25 s.

This is a benchmark, not a test: it never asserts timings. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import quopri
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MAIL_FROM = "a@src.test"
RCPT_TO = "b@city.example.lg.jp"
RCPT_DOMAIN = "city.example.lg.jp"
SENDER_DOMAIN = MAIL_FROM.rpartition("@")[2]  # MAIL FROM and From of both loads (--also-trust's zone)
DKIM_SELECTOR = "bench"  # --also-trust: the jp-html mails are signed d=src.test s=bench
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# ================================================================================================
# Japanese HTML mails (also used by the --jp-client subprocess)
# ================================================================================================


def _sjis_to_jis(lead: int, trail: int) -> bytes:
    """A Shift_JIS (CP932) double-byte code to its 7-bit JIS row/cell pair."""
    if lead >= 0xE0:
        lead -= 0x40
    row = (lead - 0x81) * 2 + (1 if trail < 0x9F else 2)
    cell = trail - 0x40 + 1 - (1 if trail >= 0x80 else 0) if trail < 0x9F else trail - 0x9F + 1
    return bytes([row + 0x20, cell + 0x20])


def _nec_selected_ibm() -> dict[str, bytes]:
    """Characters of the NEC-selected IBM extension rows (CP932 0xED/0xEE -> JIS rows 89-92)."""
    table: dict[str, bytes] = {}
    for lead in (0xED, 0xEE):
        for trail in range(0x40, 0xFD):
            if trail == 0x7F:
                continue
            try:
                ch = bytes([lead, trail]).decode("cp932")
            except UnicodeDecodeError:
                continue
            table.setdefault(ch, _sjis_to_jis(lead, trail))
    return table


_IBM = _nec_selected_ibm()


def _jis_pair(ch: str) -> bytes:
    sjis = ch.encode("cp932")
    if len(sjis) != 2:
        raise ValueError(f"{ch!r} has no double-byte JIS code (half-width kana are not used here)")
    if sjis[0] >= 0xF0:  # IBM extension as CP932 encodes it -> its NEC-selected twin, as Outlook does
        return _IBM[ch]
    return _sjis_to_jis(sjis[0], sjis[1])


def iso2022jp(text: str) -> bytes:
    """CP50221-style ISO-2022-JP (Outlook's): NEC row 13 and NEC-selected IBM characters included."""
    out = bytearray()
    double = False
    for ch in text:
        if ch < "\x80":
            if double:
                out += b"\x1b(B"
                double = False
            out += ch.encode("ascii")
        else:
            if not double:
                out += b"\x1b$B"
                double = True
            out += _jis_pair(ch)
    if double:
        out += b"\x1b(B"
    return bytes(out)


def _encoded_words(text: str, charset: str) -> str:
    """RFC 2047 B-words, a few characters each, folded on one header."""
    words = []
    for i in range(0, len(text), 10):
        chunk = text[i : i + 10]
        raw = iso2022jp(chunk) if charset == "ISO-2022-JP" else chunk.encode("utf-8")
        words.append(f"=?{charset}?B?{base64.b64encode(raw).decode('ascii')}?=")
    return "\r\n ".join(words)


_ROWS = [
    ("12月1日（月）", "①住民説明会", "本庁舎 第３会議室", "https://www.city.example.lg.jp/event/1201"),
    (
        "12月3日（水）",
        "②道路工事説明会",
        "㈱髙﨑建設 現場事務所",
        "https://www.takasaki-kensetsu.example.jp/",
    ),
    ("12月6日（土）", "③防災訓練", "市民広場（雨天時は体育館）", "http://bousai.example.net/login.php?id=1"),
    ("12月10日（水）", "④アンケート締切", "情報政策課 髙橋", "https://forms.example.com/s/AbCdEf"),
    ("12月15日（月）", "⑤見積書提出期限", "契約課（内線1234）", "https://www.city.example.lg.jp/keiyaku/"),
]


def _table_rows(rows: int) -> list[tuple[str, str, str, str]]:
    return [_ROWS[i % len(_ROWS)] for i in range(rows)]


def _html(rows: int, charset: str) -> str:
    body = "\n".join(
        f'<tr><td>{d}</td><td><b>{what}</b></td><td>{where}</td><td><a href="{url}">{url}</a></td></tr>'
        for d, what, where, url in _table_rows(rows)
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="ja"><head><meta charset="{charset}"><title>【市報】12月の行事予定</title>\n'
        '<style>body { font-family: "ＭＳ Ｐゴシック", sans-serif; } td { padding: 2px; }</style>\n'
        '<script>document.write("スクリプトは実行されてはいけません");</script>\n'
        "</head><body>\n<!-- コメント：表示されない -->\n"
        "<p>情報政策課 ご担当者様</p>\n<p>いつもお世話になっております。㈱髙﨑商事の髙﨑です。"
        "12月の行事予定を下表のとおりお知らせいたします。</p>\n"
        '<table border="1"><tr><th>日付</th><th>行事</th><th>場所</th><th>詳細</th></tr>\n'
        f"{body}\n</table>\n"
        '<p>詳細は <a href="https://www.city.example.lg.jp/kouhou/">市報のページ</a> をご覧ください。'
        '<img src="https://tracker.example.net/p.gif?u=@@SEQ@@" alt="市章の画像"></p>\n'
        "<p>以上、よろしくお願いいたします。<br>㈱髙﨑商事 営業部 髙﨑 德太郎<br>TEL 03-1234-5678</p>\n"
        "</body></html>\n"
    )


def _plain(rows: int) -> str:
    lines = [
        "情報政策課 ご担当者様",
        "",
        "いつもお世話になっております。㈱髙﨑商事の髙﨑です。",
        "12月の行事予定を下表のとおりお知らせいたします。",
        "",
    ]
    lines += [f"{d} {what} {where} {url}" for d, what, where, url in _table_rows(rows)]
    lines += [
        "",
        "詳細は https://www.city.example.lg.jp/kouhou/ をご覧ください。",
        "",
        "以上、よろしくお願いいたします。",
        "㈱髙﨑商事 営業部 髙﨑 德太郎",
        "TEL 03-1234-5678",
    ]
    return "\n".join(lines) + "\n"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def jp_message(variant: int, rows: int) -> bytes:
    """One mail with a ``@@SEQ@@`` placeholder (6 characters) in Subject, Message-ID and body.

    variant 0: ISO-2022-JP text/plain carrying the full text + UTF-8 quoted-printable HTML (Outlook);
    variant 1: UTF-8 base64 text/plain stub + ISO-2022-JP HTML (the HTML must be converted).
    """
    boundary = f"----=_NextPart_000_00{variant}A_01DC5E1A.2B3C4D50"
    headers = [
        f"From: {_encoded_words('㈱髙﨑商事 髙﨑 德太郎', 'ISO-2022-JP')} <{MAIL_FROM}>",
        f"To: {_encoded_words('情報政策課 御中', 'ISO-2022-JP')} <{RCPT_TO}>",
        f"Subject: {_encoded_words('【ご案内】①㈱髙﨑 12月の行事予定', 'ISO-2022-JP')} No.@@SEQ@@",
        "Date: Tue, 25 Nov 2025 10:11:00 +0900",
        f"Message-ID: <bench.@@SEQ@@.{variant}@src.test>",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative;\r\n\tboundary="{boundary}"',
        "X-Mailer: Microsoft Outlook 16.0" if variant == 0 else "X-Mailer: detox-bench",
    ]
    if variant == 0:
        plain_hdr = 'Content-Type: text/plain;\r\n\tcharset="iso-2022-jp"\r\nContent-Transfer-Encoding: 7bit'
        plain_body = _crlf(iso2022jp(_plain(rows) + "受付番号 @@SEQ@@\n"))
        html_hdr = (
            'Content-Type: text/html;\r\n\tcharset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable'
        )
        html_body = _crlf(quopri.encodestring(_html(rows, "utf-8").encode("utf-8")))
    else:
        stub = "HTMLメールを表示できません。HTML対応のメールソフトでご覧ください。\n"
        plain_hdr = 'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: base64'
        plain_body = _crlf(base64.encodebytes(stub.encode("utf-8")))
        html_hdr = 'Content-Type: text/html; charset="iso-2022-jp"\r\nContent-Transfer-Encoding: 7bit'
        html_body = _crlf(iso2022jp(_html(rows, "iso-2022-jp")))
    parts = [
        "\r\n".join(headers).encode("ascii"),
        b"\r\n\r\nThis is a multi-part message in MIME format.\r\n\r\n",
        f"--{boundary}\r\n{plain_hdr}\r\n\r\n".encode("ascii"),
        plain_body.rstrip(b"\r\n"),
        f"\r\n--{boundary}\r\n{html_hdr}\r\n\r\n".encode("ascii"),
        html_body.rstrip(b"\r\n"),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ]
    return b"".join(parts)


def jp_templates(target_bytes: int) -> list[bytes]:
    """Both variants, each with as many table rows as brings it closest to ``target_bytes``."""
    out = []
    for variant in (0, 1):
        best = min(range(1, 80), key=lambda rows: abs(len(jp_message(variant, rows)) - target_bytes))
        out.append(jp_message(variant, best))
    return out


def jp_client_main(args: argparse.Namespace) -> int:
    """The --jp-client subprocess: N messages, ``--sessions`` at a time, one per connection."""
    import aiosmtplib
    import uvloop

    templates = jp_templates(args.size)
    bodies = [
        templates[i % 2].replace(b"@@SEQ@@", f"{args.seq_base + i:06d}".encode()) for i in range(args.n)
    ]
    sign_cpu = 0.0
    if args.dkim_key:  # --also-trust: DKIM-sign every mail here, before the timed window
        import dkim

        key = Path(args.dkim_key).read_bytes()
        t0 = time.process_time()
        bodies = [
            dkim.sign(body, DKIM_SELECTOR.encode(), SENDER_DOMAIN.encode(), key) + body for body in bodies
        ]
        sign_cpu = time.process_time() - t0

    async def run() -> dict[str, Any]:
        todo = iter(range(args.n))
        sent = 0
        errors: dict[str, int] = {}

        async def session() -> None:
            nonlocal sent
            for i in todo:
                client = aiosmtplib.SMTP(
                    hostname=HOST,
                    port=args.port,
                    local_hostname="jp-sender.src.test",
                    start_tls=False,
                    use_tls=False,
                    timeout=60,
                )
                try:
                    await client.connect()
                    await client.sendmail(MAIL_FROM, [RCPT_TO], bodies[i])
                    await client.quit()
                    sent += 1
                except Exception as exc:
                    key = f"{type(exc).__name__}: {str(exc)[:80]}"
                    errors[key] = errors.get(key, 0) + 1
                    client.close()

        start = time.time()
        await asyncio.gather(*(session() for _ in range(args.sessions)))
        end = time.time()
        cpu = os.times()
        return {
            "sent": sent,
            "errors": errors,
            "start": start,
            "end": end,
            "client_cpu_s": cpu.user + cpu.system - sign_cpu,  # signing is not load generation
            "sign_cpu_s": sign_cpu,
            "sizes": [len(b) for b in bodies[:2]] or [len(t) for t in templates],  # as sent (signed)
        }

    print(json.dumps(uvloop.run(run())), flush=True)
    return 0


# ================================================================================================
# /proc helpers
# ================================================================================================


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # fields after "(comm)"; comm may contain spaces and parentheses
    return raw[raw.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and all its descendants (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int, main: int | None = None) -> tuple[float, float]:
    """(whole tree, ``main`` alone): utime+stime of every live process in the tree, plus what reaped
    children left in cutime/cstime. ``main`` (the server itself, all its threads) excludes its children."""
    ticks = own = 0
    for pid in process_tree(root):
        f = _stat(pid)
        if f is not None:  # fields[11..14] = utime stime cutime cstime (stat fields 14-17)
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            if pid == main:
                own = int(f[11]) + int(f[12])
    return ticks / CLK_TCK, own / CLK_TCK


def process_cpu_seconds(pid: int) -> float | None:
    """utime+stime of one process (all its threads), or None when it is gone."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f is not None else None


def tree_memory(root: int) -> tuple[float, float]:
    """(sum of RSS, sum of PSS) of the tree, in MB. PSS splits pages shared by forked workers."""
    rss = pss = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def start_time(pid: int) -> str | None:
    f = _stat(pid)
    return f[19] if f else None  # stat field 22


class MemorySampler(threading.Thread):
    """Samples the memory of every registered server tree; peaks per measurement window."""

    def __init__(self, interval: float = 0.25) -> None:
        super().__init__(daemon=True, name="mem-sampler")
        self.interval = interval
        self.roots: dict[str, int] = {}
        self.window: dict[str, tuple[float, float]] = {}
        self.overall: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def watch(self, name: str, pid: int) -> None:
        with self.lock:
            self.roots[name] = pid

    def reset(self, name: str) -> None:
        with self.lock:
            self.window[name] = (0.0, 0.0)

    def peak(self, name: str) -> tuple[float, float]:
        self.sample()
        with self.lock:
            return self.window.get(name, (0.0, 0.0))

    def sample(self) -> None:
        with self.lock:
            roots = dict(self.roots)
        for name, pid in roots.items():
            rss, pss = tree_memory(pid)
            with self.lock:
                for store in (self.window, self.overall):
                    old = store.get(name, (0.0, 0.0))
                    store[name] = (max(old[0], rss), max(old[1], pss))

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()


# ================================================================================================
# Processes
# ================================================================================================


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {proc.returncode} before listening; see {log}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {HOST}:{port} within {timeout:.0f}s; see {log}")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes] | None  # the `timeout` wrapper; None for Postfix (its own daemon)
    log: Path
    port: int
    spool: Path | None = None  # detox: <state_dir>/spool
    maildir: Path | None = None  # Postfix: where it delivers (new/ is counted)
    postfix: Any = None  # Postfix: the tests' PostfixInstance (started and stopped by its own commands)
    # Processes outside the server's tree that work for it (detox-trust: clamd, the DNS server): their
    # CPU over each run is recorded beside the tree's.
    aux: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """Root of the process tree that is measured (Postfix: its master)."""
        if self.proc is not None:
            return self.proc.pid
        return int(self.postfix.master_pid() or 0) if self.postfix is not None else 0

    def main_pid(self) -> int:
        """The server itself (the child of `timeout`), which gets our SIGTERM."""
        if self.proc is None:
            return self.pid
        for pid in process_tree(self.proc.pid)[1:]:
            f = _stat(pid)
            if f is not None and int(f[1]) == self.proc.pid:
                return pid
        return self.proc.pid

    def exited(self) -> str | None:
        """Why the server is gone, or None while it runs."""
        if self.proc is not None:
            return None if self.proc.poll() is None else f"exited ({self.proc.returncode})"
        return None if self.postfix is None or self.postfix.running else "master gone"


class Processes:
    """Everything this run starts, so that `finally` can stop it by PID."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def popen(self, name: str, cmd: list[str], log: Path | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        # own session: a Ctrl-C in the terminal reaches only this script, which then stops the rest
        if log is None:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw
            )
        else:
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw
                )
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], term_pid: int | None = None, grace: float = 15.0) -> None:
        """SIGTERM the server (or proc), wait, then SIGKILL whatever of its tree is left, by PID."""
        if proc.poll() is not None:
            return
        tree = [(pid, start_time(pid)) for pid in process_tree(proc.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.kill(term_pid or proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        for pid, started in reversed(tree):
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)

    def stop_all(self) -> None:
        for _name, proc in reversed(self.started):
            self.stop(proc)


# ================================================================================================
# Measurement
# ================================================================================================


@dataclass
class Run:
    load: str
    config: str
    round: int  # 0 = warm-up
    n: int
    seconds: float  # client start -> client end
    cpu_s: float  # server tree, over the whole window (until drained for detox)
    cpu_main_s: float  # the server process alone (detox: SMTP in, spool, hand-off, delivery; no workers)
    rss_mb: float
    pss_mb: float
    delivered_seconds: float | None = None  # detox: client start -> spool empty
    sink_received: int = 0
    client_errors: str = ""
    client_cpu_s: float | None = None
    audit: dict[str, int] = field(default_factory=dict)
    aux_cpu_s: dict[str, float] = field(default_factory=dict)  # Server.aux over the same window
    # detox's "detoxified" records: authentication results ("spf=pass dkim=pass dmarc=pass accept") and
    # "antivirus streams" (INSTREAM scans), counted when [inbound] / [antivirus] are on
    checks: dict[str, int] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        """Messages the rates count: N, or what reached the sink when the client gave up early (smtp-source
        stops at the first 4xx, e.g. detox's 451 back-pressure; the errors column says so)."""
        return self.sink_received if self.client_errors and 0 < self.sink_received < self.n else self.n

    @property
    def accepted_rate(self) -> float:
        return self.counted / self.seconds if self.seconds > 0 else 0.0

    @property
    def delivered_rate(self) -> float:
        end = self.delivered_seconds if self.delivered_seconds is not None else self.seconds
        return self.counted / end if end > 0 else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: Path) -> None:
        self.args = args
        self.procs = procs
        self.workdir = workdir
        self.sampler = MemorySampler()
        self.sink_log = workdir / "smtp-sink.log"
        self.servers: dict[str, Server] = {}
        self.runs: list[Run] = []
        self.seq = 0
        self.audit_offset: dict[str, int] = {}
        self.jp_sizes: list[int] = []
        # --also-trust: the DNS server and clamd (tests/support), stopped by PID in stop_aux()
        self.aux = contextlib.ExitStack()
        self.dns: Any = None
        self.clamd: Any = None
        self.dkim_key: Path | None = None  # the jp client signs with it when set

    # -- servers --------------------------------------------------------------------------------

    def wrap(self, cmd: list[str]) -> list[str]:
        """Every server is bounded by `timeout` too, in case this script is killed without cleanup."""
        return ["timeout", "-k", "10", str(self.args.max_runtime), *cmd]

    def start_sink(self) -> int:
        port = free_port()
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        cmd = [sink, "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += [f"{HOST}:{port}", "1000"]
        proc = self.procs.popen("smtp-sink", self.wrap(cmd), self.sink_log)
        wait_port(port, proc, 10, "smtp-sink", self.sink_log)
        self.sink_proc = proc
        return port

    def sink_count(self) -> int:
        """smtp-sink -c prints 'sess=.. quit=.. mesg=N' (CR-separated) as messages complete."""
        time.sleep(0.2)
        try:
            with open(self.sink_log, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 200))
                tail = fh.read().decode("ascii", "replace")
        except OSError:
            return -1
        marks = [t for t in tail.replace("\r", " ").replace("\n", " ").split() if t.startswith("mesg=")]
        return int(marks[-1][5:]) if marks else 0

    def start_relay(self, relay: Path, sink_port: int) -> None:
        port = free_port()
        log = self.workdir / "relay.log"
        cmd = [
            sys.executable,
            str(relay),
            "--loop",
            "uvloop",
            "--client",
            "aiosmtplib-pool",
            "--listen",
            f"{HOST}:{port}",
            "--upstream",
            f"{HOST}:{sink_port}",
        ]
        proc = self.procs.popen("relay", self.wrap(cmd), log, cwd=str(relay.parent))
        wait_port(port, proc, 30, "relay.py", log)
        self.servers["relay"] = Server("relay", proc, log, port)
        self.sampler.watch("relay", proc.pid)

    def start_trust(self) -> str:
        """--also-trust: a DNS server on loopback (tests/support/dns_server.py, dnslib) holding the load
        senders' zone (SPF passing 127.0.0.1, DMARC p=reject, the DKIM key the jp client signs with) and a
        private clamd (tests/support/clamd.py: the tests' signature database). Returns detox-trust's
        [inbound] and [antivirus] config. Each is registered for stop_aux() before it starts."""
        sys.path.insert(0, str(REPO / "tests"))
        from support.clamd import ClamdInstance, find_clamd
        from support.dkimkeys import rsa_key
        from support.dns_server import DnsServer

        if find_clamd() is None:
            raise RuntimeError("--also-trust needs clamd (clamav-daemon; scripts/install-system-deps.sh)")
        key = rsa_key(2048)
        self.dkim_key = self.workdir / "dkim-bench.pem"
        self.dkim_key.write_bytes(key.private)
        dns_dir = self.workdir / "dns"
        dns_dir.mkdir()
        self.dns = DnsServer(dns_dir)
        self.aux.callback(self.dns.stop)
        self.dns.set(
            {
                SENDER_DOMAIN: [["TXT", "v=spf1 ip4:127.0.0.1 -all"]],
                f"_dmarc.{SENDER_DOMAIN}": [["TXT", "v=DMARC1; p=reject"]],
                f"{DKIM_SELECTOR}._domainkey.{SENDER_DOMAIN}": [["TXT", key.record]],
            }
        )
        self.dns.start()
        clamd_dir = self.workdir / "clamd"
        clamd_dir.mkdir()
        self.clamd = ClamdInstance(clamd_dir)
        if self.clamd.root != clamd_dir:  # a deep --tmpdir: the socket went to a directory of its own
            self.aux.callback(shutil.rmtree, self.clamd.root, ignore_errors=True)
        self.aux.callback(self.clamd.stop)
        self.clamd.start()
        return (
            "[inbound]\n"
            "enabled = true\n"
            f'nameservers = ["{self.dns.address}"]\n'
            "[antivirus]\n"
            f'clamd = "{self.clamd.unix_address}"\n'
        )

    def trust_pids(self) -> dict[str, int]:
        """PIDs of clamd and the DNS server (outside detox's tree; their CPU is recorded beside it)."""
        pids: dict[str, int] = {}
        if self.clamd is not None and self.clamd.proc is not None:
            pids["clamd"] = self.clamd.proc.pid
        proc = getattr(self.dns, "_proc", None)  # DnsServer keeps its Popen private
        if proc is not None:
            pids["dns"] = proc.pid
        return pids

    def stop_aux(self) -> None:
        """clamd and the DNS server: SIGTERM to each PID, SIGKILL after a wait (their own stop())."""
        with contextlib.suppress(Exception):
            self.aux.close()

    def start_detox(self, name: str, sink_port: int, *, fsync: bool, extra: str = "") -> None:
        port = free_port()
        state = self.workdir / f"{name}-state"
        config = self.workdir / f"{name}.toml"
        config.write_text(
            "# written by bench/throughput.py; everything else is the shipped default\n"
            "[server]\n"
            f'listen = "{HOST}:{port}"\n'
            f'accepted_domains = ["{RCPT_DOMAIN}"]\n'
            "[delivery]\n"
            f'deliver_to = "smtp://{HOST}:{sink_port}"\n'
            'starttls = "off"\n'
            "[storage]\n"
            f'state_dir = "{state}"\n'
            f"fsync = {'true' if fsync else 'false'}\n"
            + (f"[pipeline]\nworkers = {self.args.workers}\n" if self.args.workers is not None else "")
            + extra,
            encoding="utf-8",
        )
        log = self.workdir / f"{name}.log"
        cmd = [
            str(self.args.detox),
            "serve",
            "--config",
            str(config),
            "--listen",
            f"{HOST}:{port}",
            "--deliver-to",
            f"smtp://{HOST}:{sink_port}",
        ]
        proc = self.procs.popen(name, self.wrap(cmd), log, cwd=str(self.workdir))
        wait_port(port, proc, 60, "detox serve", log)
        self.servers[name] = Server(
            name, proc, log, port, spool=state / "spool", aux=self.trust_pids() if extra else {}
        )
        self.sampler.watch(name, proc.pid)

    def start_postfix(self) -> bool:
        """A private Postfix (the test suite's tests/support/postfix.py: root only) delivering every
        city.example.lg.jp recipient into one Maildir. False, with a note, when it can't run here."""
        sys.path.insert(0, str(REPO / "tests"))
        try:
            from support.postfix import PostfixInstance, unavailable_reason
        except ImportError as exc:
            print(f"NOTE: no Postfix baseline: tests/support/postfix.py not importable ({exc})", flush=True)
            return False
        reason = unavailable_reason()
        if reason is not None:
            print(f"NOTE: no Postfix baseline: {reason}", flush=True)
            return False
        instance = PostfixInstance(port=free_port())
        try:
            instance.start()
        except Exception as exc:
            print(f"NOTE: no Postfix baseline: it did not start ({exc})", flush=True)
            return False
        server = Server(
            "postfix", None, instance.log_file, instance.port, maildir=instance.maildir(), postfix=instance
        )
        self.servers["postfix"] = server
        self.sampler.watch("postfix", server.pid)
        return True

    def stop_servers(self) -> None:
        for server in reversed(list(self.servers.values())):
            if server.postfix is not None:
                with contextlib.suppress(Exception):
                    server.postfix.stop()  # `postfix stop`, SIGKILL of its master if that fails
            elif server.proc is not None:
                self.procs.stop(server.proc, term_pid=server.main_pid())

    def maildir_count(self, server: Server) -> int:
        assert server.maildir is not None
        try:
            with os.scandir(server.maildir / "new") as it:
                return sum(1 for _ in it)
        except FileNotFoundError:
            return 0

    def wait_maildir(self, server: Server, target: int) -> float:
        """Poll until Postfix's Maildir holds ``target`` messages; the time it did."""
        deadline = time.monotonic() + self.args.drain_timeout
        while self.maildir_count(server) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Postfix delivered {self.maildir_count(server)} of {target} "
                    f"after {self.args.drain_timeout}s; see {server.log}"
                )
            gone = server.exited()
            if gone:
                raise RuntimeError(f"Postfix {gone}; see {server.log}")
            time.sleep(self.args.poll_interval)
        return time.time()

    # -- detox drain / audit -------------------------------------------------------------------

    def spool_busy(self, spool: Path) -> int:
        busy = 0
        for sub in ("incoming", "outgoing"):
            with os.scandir(spool / sub) as it:
                busy += sum(1 for _ in it)
        return busy

    def wait_drained(self, server: Server) -> float:
        assert server.spool is not None
        deadline = time.monotonic() + self.args.drain_timeout
        while self.spool_busy(server.spool):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"detox spool not empty after {self.args.drain_timeout}s "
                    f"({self.spool_busy(server.spool)} files); see {server.log}"
                )
            gone = server.exited()
            if gone:
                raise RuntimeError(f"detox {gone}; see {server.log}")
            time.sleep(self.args.poll_interval)
        return time.time()

    def audit_events(self, server: Server) -> tuple[dict[str, int], dict[str, int]]:
        """Events in detox's audit log since the previous call (outside every timing window), and what
        its "detoxified" records say of [inbound] and [antivirus] (Run.checks; empty when both are off)."""
        assert server.spool is not None
        path = server.spool.parent / "audit" / "audit.jsonl"
        counts: dict[str, int] = {}
        checks: dict[str, int] = {}
        try:
            with open(path, "rb") as fh:
                fh.seek(self.audit_offset.get(server.name, 0))
                data = fh.read()
        except OSError:
            return counts, checks
        self.audit_offset[server.name] = self.audit_offset.get(server.name, 0) + len(data)
        for line in data.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                event = record.get("event", "?")
                counts[event] = counts.get(event, 0) + 1
                auth = record.get("authentication")
                if event == "detoxified" and isinstance(auth, dict):
                    key = " ".join(f"{m}={auth.get(m)}" for m in ("spf", "dkim", "dmarc")) + (
                        f" {auth.get('action')}"
                    )
                    checks[key] = checks.get(key, 0) + 1
                scanned = record.get("antivirus")
                if event == "detoxified" and isinstance(scanned, dict):
                    checks["antivirus streams"] = checks.get("antivirus streams", 0) + int(scanned["streams"])
                    if scanned.get("found"):
                        checks["antivirus found"] = checks.get("antivirus found", 0) + len(scanned["found"])
        failed = server.spool / "failed"
        if failed.is_dir() and any(failed.iterdir()):
            counts["spool_failed_files"] = sum(1 for _ in failed.iterdir())
        return counts, checks

    # -- loads ---------------------------------------------------------------------------------

    def load_smtp_source(self, port: int, n: int) -> tuple[float, float, str, float | None]:
        src = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
        cmd = [
            "timeout",
            str(self.args.load_timeout),
            src,
            "-s",
            str(self.args.sessions),
            "-l",
            str(self.args.size),
            "-m",
            str(n),
            "-f",
            MAIL_FROM,
            "-t",
            RCPT_TO,
            f"{HOST}:{port}",
        ]
        log = self.workdir / "smtp-source.last.log"
        start = time.time()
        proc = self.procs.popen("smtp-source", cmd, log)
        rc = proc.wait()
        end = time.time()
        text = log.read_text(errors="replace").strip()
        errors = "" if rc == 0 and not text else f"rc={rc} {text[-300:]}"
        return start, end, errors, None

    def load_jp(self, port: int, n: int) -> tuple[float, float, str, float | None]:
        cmd = [
            "timeout",
            str(self.args.load_timeout),
            sys.executable,
            str(Path(__file__).resolve()),
            "--jp-client",
            "--port",
            str(port),
            "--n",
            str(n),
            "--sessions",
            str(self.args.sessions),
            "--size",
            str(self.args.size),
            "--seq-base",
            str(self.seq),
            *(["--dkim-key", str(self.dkim_key)] if self.dkim_key is not None else []),
        ]
        self.seq += n
        log = self.workdir / "jp-client.last.log"
        proc = self.procs.popen("jp-client", cmd, log)
        rc = proc.wait()
        text = log.read_text(errors="replace").strip()
        try:
            result = json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"jp client failed (rc={rc}): {text[-1000:]}") from None
        self.jp_sizes = result.get("sizes", [])
        errors = ""
        if rc != 0 or result["errors"]:
            errors = f"rc={rc} sent={result['sent']} {result['errors']}"
        return float(result["start"]), float(result["end"]), errors, float(result["client_cpu_s"])

    def measure(self, load: str, config: str, n: int, rnd: int) -> Run:
        server = self.servers[config]
        run_load = self.load_smtp_source if load == "smtp-source" else self.load_jp
        in_maildir = server.maildir is not None
        sink0 = self.maildir_count(server) if in_maildir else self.sink_count()
        self.sampler.reset(config)
        main = server.main_pid()
        cpu0, own0 = tree_cpu_seconds(server.pid, main)
        aux0 = {what: process_cpu_seconds(pid) for what, pid in server.aux.items()}
        start, end, errors, client_cpu = run_load(server.port, n)
        delivered_end = None
        if server.spool is not None:
            delivered_end = self.wait_drained(server)
        elif in_maildir:
            delivered_end = self.wait_maildir(server, sink0 + n)
        cpu1, own1 = tree_cpu_seconds(server.pid, main)
        aux1 = {what: process_cpu_seconds(pid) for what, pid in server.aux.items()}
        rss, pss = self.sampler.peak(config)
        received = (self.maildir_count(server) if in_maildir else self.sink_count()) - sink0
        run = Run(
            load,
            config,
            rnd,
            n,
            end - start,
            cpu1 - cpu0,
            own1 - own0,
            rss,
            pss,
            delivered_seconds=(delivered_end - start) if delivered_end is not None else None,
            sink_received=received,
            client_errors=errors,
            client_cpu_s=client_cpu,
            aux_cpu_s={
                what: after - before
                for what, before in aux0.items()
                if before is not None and (after := aux1.get(what)) is not None
            },
        )
        if in_maildir:  # outside the window: keep the directory small for the next run
            server.postfix.clear()
        if server.spool is not None:
            run.audit, run.checks = self.audit_events(server)
        self.runs.append(run)
        label = "warm-up" if rnd == 0 else f"round {rnd}"
        extra = f", delivered {run.delivered_rate:7.1f} msg/s" if run.delivered_seconds is not None else ""
        print(
            f"  {label:8} {load:11} {config:13} {n:5} msgs: "
            f"accepted {run.accepted_rate:7.1f} msg/s{extra}, "
            f"CPU {1000 * run.cpu_s / run.counted:5.2f} ms/msg"
            + "".join(f" + {what} {1000 * s / run.counted:.2f}" for what, s in run.aux_cpu_s.items())
            + f", sink +{run.sink_received}"
            + (f"  ERRORS: {errors}" if errors else ""),
            flush=True,
        )
        time.sleep(self.args.settle)
        return run


# ================================================================================================
# Report
# ================================================================================================


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


TITLES = {
    "relay": "relay (uvloop, aiosmtplib pool)",
    "detox": "detox",
    "detox-nofsync": "detox, storage.fsync=false",
    "detox-trust": "detox + [inbound] + [antivirus]",
    "postfix": "Postfix → Maildir",
}


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    out = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return out


def _paired(mine: list[float], base: list[float]) -> str:
    pairs = [d / b for d, b in zip(mine, base, strict=False) if b]
    return f"paired per round {', '.join(f'{p:.2f}' for p in pairs)} -> median {_med(pairs):.2f}"


def _trust_lines(
    runs: list[Run],
    configs: list[str],
    per_round: dict[str, list[float]],
    medians: dict[str, float],
    cpu_med: dict[str, float],
) -> list[str]:
    """--also-trust: detox-trust against plain detox of the same run (what [inbound] + [antivirus] cost),
    the CPU of clamd and the DNS server (outside detox's tree) and what the audit log says was checked."""
    config = "detox-trust"
    mine = [r for r in runs if r.config == config]
    if not mine:
        return []
    out = []
    if "detox:delivered" in per_round:
        for kind in ("delivered", "accepted"):
            ratio = medians[f"{config}:{kind}"] / medians[f"detox:{kind}"]
            out.append(
                f"ratio {config}/detox msg/s, {kind:9}: {ratio:.2f} (of the medians); "
                + _paired(per_round[f"{config}:{kind}"], per_round[f"detox:{kind}"])
            )
        cpu_ratio = cpu_med[f"{config}:delivered"] / cpu_med["detox:delivered"]
        out.append(f"ratio {config}/detox CPU ms/msg (medians): {cpu_ratio:.2f}")
    names = sorted({what for r in mine for what in r.aux_cpu_s})
    if names:
        aux = {what: _med([1000 * r.aux_cpu_s.get(what, 0.0) / r.counted for r in mine]) for what in names}
        total = _med([1000 * (r.cpu_s + sum(r.aux_cpu_s.values())) / r.counted for r in mine])
        line = (
            f"{config} outside its tree (median ms/msg): "
            + ", ".join(f"{what} {ms:.2f}" for what, ms in aux.items())
            + f"; tree + these: {total:.2f} ms/msg"
        )
        if "relay:accepted" in cpu_med:
            line += f" = {total / cpu_med['relay:accepted']:.1f} x relay"
        if "detox:delivered" in cpu_med:
            line += f", {total / cpu_med['detox:delivered']:.2f} x detox"
        out.append(line)
    checks: dict[str, int] = {}
    for r in mine:
        for key, count in r.checks.items():
            checks[key] = checks.get(key, 0) + count
    counted = sum(r.counted for r in mine)
    streams = checks.pop("antivirus streams", 0)
    out.append(
        f"{config} audit, measured rounds ({counted} msgs): "
        + ", ".join(f"{key}: {count}" for key, count in sorted(checks.items()))
        + f"; antivirus streams: {streams} ({streams / counted if counted else 0:.1f} per msg)"
    )
    return out


def report(bench: Bench, loads: list[str], configs: list[str], args: argparse.Namespace) -> str:
    out: list[str] = []
    rounds = args.rounds
    head = [
        "config",
        *(f"r{i} msg/s" for i in range(1, rounds + 1)),
        "median msg/s",
        "CPU ms/msg (min-max)",
        "main proc",
        "peak RSS MB",
        "peak PSS MB",
        "sink rcvd",
        "errors",
    ]
    for load in loads:
        runs = [r for r in bench.runs if r.load == load and r.round > 0]
        desc = (
            "smtp-source -s {s} -l {l} -m {n} (ASCII, no MIME)"
            if load == "smtp-source"
            else "jp-html: aiosmtplib, {s} sessions, {z} B ISO-2022-JP/UTF-8 multipart/alternative HTML"
        )
        sizes = "/".join(str(z) for z in bench.jp_sizes) or f"~{args.size}"
        out.append(
            f"\n### load: {desc.format(s=args.sessions, l=args.size, n=args.messages, z=sizes)}; "
            f"{args.messages} msgs x {rounds} rounds, 1 msg per connection\n"
        )
        rows: list[list[str]] = []
        medians: dict[str, float] = {}
        cpu_med: dict[str, float] = {}
        per_round: dict[str, list[float]] = {}
        for config in configs:
            mine = sorted((r for r in runs if r.config == config), key=lambda r: r.round)
            if not mine:
                continue
            kinds = ["accepted"] if config == "relay" else ["delivered", "accepted"]
            cpu = [1000 * r.cpu_s / r.counted for r in mine]
            cpu_main = [1000 * r.cpu_main_s / r.counted for r in mine]
            for kind in kinds:
                rates = [r.delivered_rate if kind == "delivered" else r.accepted_rate for r in mine]
                key = f"{config}:{kind}"
                medians[key] = _med(rates)
                per_round[key] = rates
                cpu_med[key] = _med(cpu)
                title = TITLES.get(config, config)
                if config == "postfix":
                    title += {
                        "delivered": ", delivered (all in Maildir)",
                        "accepted": ", accepted (250 after queue file)",
                    }[kind]
                elif config != "relay":
                    title += {
                        "delivered": ", delivered (spool empty)",
                        "accepted": ", accepted (250 after spool)",
                    }[kind]
                first = kind == kinds[0]  # CPU, memory, sink: once per config (same window)
                shown = [f"{x:.1f}" for x in rates] + ["—"] * (rounds - len(rates))  # interrupted run
                rows.append(
                    [
                        title,
                        *shown,
                        f"{medians[key]:.1f}",
                        f"{cpu_med[key]:.2f} ({min(cpu):.2f}-{max(cpu):.2f})" if first else "″",
                        f"{_med(cpu_main):.2f}" if first else "″",
                        f"{max(r.rss_mb for r in mine):.0f}" if first else "″",
                        f"{max(r.pss_mb for r in mine):.0f}" if first else "″",
                        "+".join(str(r.sink_received) for r in mine) if first else "″",
                        str(sum(1 for r in mine if r.client_errors)) if first else "″",
                    ]
                )
        if not rows:
            out.append("(no measured round)")
            continue
        out += _table(head, rows)
        out.append("")
        base_rates = per_round.get("relay:accepted")
        for config in configs:
            if config == "relay":
                continue
            if not base_rates:
                out.append(f"ratio {config}/relay: n/a (no relay baseline in this run)")
                continue
            for kind in ("delivered", "accepted"):
                key = f"{config}:{kind}"
                if key not in medians:
                    continue
                pairs = zip(per_round[key], base_rates, strict=False)
                paired = [d / b for d, b in pairs if b]
                ratio = medians[key] / medians["relay:accepted"]
                out.append(
                    f"ratio {config}/relay msg/s, {kind:9}: {ratio:.2f}"
                    f" (of the medians); paired per round {', '.join(f'{p:.2f}' for p in paired)}"
                    f" -> median {_med(paired):.2f}"
                )
            if f"{config}:delivered" in cpu_med:
                cpu_ratio = cpu_med[f"{config}:delivered"] / cpu_med["relay:accepted"]
                out.append(f"ratio {config}/relay CPU ms/msg (medians): {cpu_ratio:.1f}")
        out += _trust_lines(runs, configs, per_round, medians, cpu_med)
        pf_rates = per_round.get("postfix:delivered")
        for config in configs:
            if not config.startswith("detox") or not pf_rates or f"{config}:delivered" not in medians:
                continue
            paired = [d / b for d, b in zip(per_round[f"{config}:delivered"], pf_rates, strict=False) if b]
            ratio = medians[f"{config}:delivered"] / medians["postfix:delivered"]
            out.append(
                f"ratio {config}/Postfix→Maildir msg/s, delivered: {ratio:.2f} (of the medians); "
                f"paired per round {', '.join(f'{p:.2f}' for p in paired)}"
                f" -> median {_med(paired):.2f}"
            )
            cpu_ratio = cpu_med[f"{config}:delivered"] / cpu_med["postfix:delivered"]
            out.append(f"ratio {config}/Postfix CPU ms/msg (medians): {cpu_ratio:.1f}")
        client = [1000 * r.client_cpu_s / r.n for r in runs if r.client_cpu_s is not None]
        if client:
            out.append(f"load generator CPU (jp client, median): {_med(client):.2f} ms/msg")
        for r in runs:
            if r.client_errors:
                out.append(f"errors: round {r.round} {r.config}: {r.client_errors}")
            expected = ("received", "detoxified", "delivered")
            unexpected = {k: v for k, v in r.audit.items() if k not in expected}
            if unexpected:
                out.append(f"{r.config} audit, round {r.round}: {r.audit}")
    return "\n".join(out)


# ================================================================================================
# Main
# ================================================================================================


def print_report(
    bench: Bench,
    loads: list[str],
    configs: list[str],
    args: argparse.Namespace,
    relay: Path | None,
    workdir: Path,
    took: float,
) -> None:
    versus = "bare relay" + (" and Postfix → Maildir" if "postfix" in configs else "")
    print(f"\n## detox vs {versus} — {time.strftime('%Y-%m-%d %H:%M')} ({took:.0f} s)")
    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    print(
        f"detox: shipped defaults except state_dir (temporary), delivery.starttls=off, "
        f"workers={args.workers or 'default (one per CPU)'}"
        + ("; detox-nofsync: the same with storage.fsync=false" if args.also_no_fsync else "")
    )
    if args.also_trust:
        print(
            f"detox-trust: the same plus [inbound] enabled (nameservers = DNS server on loopback: SPF "
            f"ip4:127.0.0.1 -all and DMARC p=reject for {SENDER_DOMAIN}, jp-html mails DKIM-signed "
            f"rsa-sha256 2048 d={SENDER_DOMAIN} s={DKIM_SELECTOR} for every server) and [antivirus] "
            "(private clamd, the tests' signature database)"
        )
    print(report(bench, loads, configs, args))
    log = workdir / "relay.log"
    if relay and log.exists():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        if tail:
            print(f"relay's own summary (whole run, incl. warm-up): {tail[0]}")
    print(
        "\nmsg/s: N / (client start -> client end), or -> detox spool empty / all N in Postfix's Maildir "
        "for 'delivered'. "
        "CPU: utime+stime of the server's process tree over that window / N (min-max over rounds). "
        "RSS/PSS: peak of the tree, sampled every 0.25 s. "
        "Noisy 2-vCPU VM: compare only within this run."
    )


def locate_relay(args: argparse.Namespace) -> Path | None:
    shared = Path(os.environ["DETOX_SHARED"]) if os.environ.get("DETOX_SHARED") else REPO.parent / "shared"
    relay = Path(args.relay) if args.relay else shared / "peers" / "relay.py"
    return relay if relay.is_file() else None


def _raise_interrupt(signum: int, frame: Any) -> None:
    # Only once: timeout(1) --foreground forwards the terminal's Ctrl-C, so it may come twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def bench_main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    loads = [x for x in ("smtp-source", "jp-html") if x not in args.skip]
    relay = None if args.no_relay else locate_relay(args)
    if relay is None and not args.no_relay:
        print(
            "NOTE: relay.py not found (looked in $DETOX_SHARED/peers or ../shared/peers; --relay PATH); "
            "skipping the baseline, detox's figures only.",
            flush=True,
        )
    configs = (
        (["relay"] if relay else [])
        + ["detox"]
        + (["detox-nofsync"] if args.also_no_fsync else [])
        + (["detox-trust"] if args.also_trust else [])
    )
    with_postfix = not args.no_postfix
    workdir = Path(tempfile.mkdtemp(prefix="detox-bench-", dir=args.tmpdir))
    procs = Processes(workdir)
    bench = Bench(args, procs, workdir)
    t_begin = time.monotonic()
    print(
        f"detox throughput bench: workdir {workdir}; {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; python {sys.version.split()[0]}",
        flush=True,
    )
    ok = False
    try:
        bench.sampler.start()
        sink_port = bench.start_sink()
        trust = bench.start_trust() if args.also_trust else ""
        if relay:
            bench.start_relay(relay, sink_port)
        if with_postfix and bench.start_postfix():
            configs.append("postfix")
        for name in configs:
            if name.startswith("detox"):
                extra = trust if name == "detox-trust" else ""
                bench.start_detox(name, sink_port, fsync=name != "detox-nofsync", extra=extra)
        print(
            "  "
            + ", ".join(f"{s.name} on :{s.port} (pid {s.main_pid()})" for s in bench.servers.values())
            + f", smtp-sink on :{sink_port}"
            + "".join(f", {what} pid {pid}" for what, pid in bench.trust_pids().items()),
            flush=True,
        )
        for load in loads:
            for config in configs:
                bench.measure(load, config, args.warmup, 0)
        for rnd in range(1, args.rounds + 1):
            order = configs if rnd % 2 else list(reversed(configs))  # ABBA: neither side always goes first
            for load in loads:
                for config in order:
                    bench.measure(load, config, args.messages, rnd)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
    except RuntimeError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
    finally:
        # a second Ctrl-C must not leave servers behind: ignore signals while stopping them
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop_servers()
        bench.stop_aux()
        procs.stop_all()
        bench.sampler.halt.set()
    try:
        if bench.runs:
            print_report(bench, loads, configs, args, relay, workdir, time.monotonic() - t_begin)
        if args.json:
            runs = [r.__dict__ for r in bench.runs]
            Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000, help="messages per measured run (default 2000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up messages per load and server")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent client sessions")
    ap.add_argument("--size", type=int, default=5120, help="message size in bytes (approximate for jp-html)")
    ap.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["smtp-source", "jp-html"],
        help="leave out a load (repeatable)",
    )
    ap.add_argument("--relay", help="path to relay.py (default: $DETOX_SHARED/peers or ../shared/peers)")
    ap.add_argument("--no-relay", action="store_true", help="no bare relay baseline")
    ap.add_argument(
        "--no-postfix",
        action="store_true",
        help="no Postfix → Maildir baseline (it needs root and the postfix package)",
    )
    ap.add_argument("--detox", default=str(REPO / ".venv" / "bin" / "detox"), help="the detox executable")
    ap.add_argument("--workers", type=int, help="pipeline.workers for detox (default: the shipped default)")
    ap.add_argument(
        "--also-no-fsync",
        action="store_true",
        help="also measure a second detox with storage.fsync = false (never in production)",
    )
    ap.add_argument(
        "--also-trust",
        action="store_true",
        help="also measure detox-trust: detox with [inbound] (a DNS server on loopback: SPF, DMARC, DKIM "
        "key; the jp-html mails are then DKIM-signed for every server) and [antivirus] (a private clamd)",
    )
    ap.add_argument("--tmpdir", help="where the temporary state_dir goes (default: $TMPDIR or /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state_dir)")
    ap.add_argument("--json", help="also write every run as JSON to this file")
    ap.add_argument("--load-timeout", type=int, default=600, help="timeout for one client run, seconds")
    ap.add_argument("--drain-timeout", type=float, default=600, help="max wait for detox's spool to empty")
    ap.add_argument(
        "--max-runtime",
        type=int,
        default=3600,
        help="servers are started under timeout(1) with this many seconds",
    )
    ap.add_argument("--poll-interval", type=float, default=0.02, help="spool polling interval, seconds")
    ap.add_argument("--settle", type=float, default=1.0, help="pause between runs, seconds")
    # internal: the Japanese HTML client subprocess
    ap.add_argument("--jp-client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seq-base", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--dkim-key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.jp_client:
        return jp_client_main(args)
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
