"""Reliability of the real ``detox serve``: DSNs, the queue CLI, poison messages, a full disk,
SIGTERM under traffic, SIGHUP reloads, back-pressure and hostile line shapes.

Every test runs ``python -m detox serve`` as a child process on loopback, with an aiosmtpd sink as
LGWAN (and as the Internet-side MTA that DSNs go through), or a real Postfix where marked.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import functools
import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
from support import free_port, smtp
from support.detox_proc import DetoxProcess, ok, write_config
from support.faulty_filter import install_faulty_filter
from support.invariants import parse_output as parsed
from support.mails import EXE, mail
from support.postfix import PostfixInstance
from support.sink import SmtpSink
from support.smtp import expected, reply_bytes

from detox.smtp import replies

CITY = "city.example.lg.jp"
TARO = f"taro@{CITY}"
HANAKO = f"hanako@{CITY}"
SENDER = "takahashi@vendor.example.com"
ORDER = ["image", "pdf", "office", "archive", "calendar", "html", "plain", "rtf", "enriched",
         "text-attachment", "signature"]  # fmt: skip
DAY = 86400.0


# -- helpers ---------------------------------------------------------------------------------------


def message(subject: str = "配送テスト", body: str = "本文です。①㈱髙橋\n", sender: str = SENDER) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"髙橋 一郎 <{sender}>"
    msg["To"] = TARO
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{time.time_ns()}@vendor.example.com>"
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


send = functools.partial(smtp.send, sender=SENDER)


records = DetoxProcess.audit_records


def wait_for(
    what: str, check: Callable[[], Any], timeout: float = 30, proc: DetoxProcess | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{proc.log_text() if proc else ''}")


def wait_records(
    proc: DetoxProcess, event: str, n: int = 1, timeout: float = 30, **match: Any
) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        hits = [
            r for r in records(proc) if r["event"] == event and all(r.get(k) == v for k, v in match.items())
        ]
        return hits if len(hits) >= n else []

    result: list[dict[str, Any]] = wait_for(f"{n}x {event} {match}", found, timeout, proc)
    return result


cli = DetoxProcess.cli  # cli(proc, ARGS): `python -m detox ARGS --config <serve's config>` where it runs


def serve(
    tmp_path: Path, deliver_to: str, env: dict[str, str] | None = None, **sections: dict[str, Any]
) -> DetoxProcess:
    overrides: dict[str, dict[str, Any]] = {"delivery": {"starttls": "off"}}
    for name, values in sections.items():
        overrides.setdefault(name.replace("__", "."), {}).update(values)
    return DetoxProcess(tmp_path, deliver_to, overrides, env=env).start()


@pytest.fixture
def faulty(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """(environment with the test-only ``faulty`` filter on PYTHONPATH, its on/off switch file)."""
    packages = install_faulty_filter(tmp_path / "pkgs")
    switch = tmp_path / "fault-on"
    switch.touch()
    return {"PYTHONPATH": str(packages)}, switch


def dsns(sink: SmtpSink) -> list[Any]:
    return [m for m in sink.messages if m.mail_from in ("", "<>")]  # aiosmtpd records <> as "<>"


# -- DSNs ------------------------------------------------------------------------------------------


def test_max_age_gives_up_and_sends_a_dsn_in_japanese_and_english(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    dead = f"smtp://127.0.0.1:{free_port()}"  # LGWAN is down for good
    proc = serve(
        tmp_path,
        dead,
        delivery={
            "max_age_days": 4 / DAY,
            "bounce_via": smtp_sink.url,
            "retry_base_s": 0.5,
            "retry_max_s": 1.0,
        },
    )
    try:
        subject = "【至急】①㈱髙橋 見積の件"
        queue_id = send(proc.port, message(subject), [TARO, HANAKO])
        [dsn] = wait_for("the DSN", lambda: dsns(smtp_sink), 60, proc)
        assert dsn.rcpt_tos == (SENDER,)  # to the envelope sender, from <>
        report = parsed(dsn.data)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        human, status, headers = list(report.iter_parts())
        text = human.get_content()
        assert "お届けできませんでした" in text and "could not be delivered" in text
        assert subject in text and queue_id in text
        blocks = status.get_payload()
        assert isinstance(blocks, list)
        assert blocks[0]["Reporting-MTA"] == "dns; detox.city.example.lg.jp"
        per_rcpt: list[Message] = blocks[1:]
        assert sorted(b["Final-Recipient"] for b in per_rcpt) == [f"rfc822; {HANAKO}", f"rfc822; {TARO}"]
        assert {b["Action"] for b in per_rcpt} == {"failed"} and {b["Status"] for b in per_rcpt} == {"4.4.7"}
        assert headers.get_content_type() == "text/rfc822-headers"
        assert "本文です" not in dsn.data.decode("utf-8", "replace")  # no body goes back

        [failed] = wait_records(proc, "failed", queue_id=queue_id)
        assert failed["reason"] == "expired" and set(failed["recipients"]) == {TARO, HANAKO}
        [bounced] = wait_records(proc, "bounced", queue_id=queue_id)
        assert bounced["to"] == SENDER and sorted(bounced["recipients"]) == [HANAKO, TARO]
        wait_records(proc, "delivered", queue_id=bounced["dsn_id"])
        wait_for("an empty spool", lambda: not list((proc.state / "spool" / "outgoing").iterdir()), 10, proc)
        assert "intact" in ok(cli(proc, "audit", "verify"))
    finally:
        proc.stop()


def test_5xx_for_some_recipients_gives_a_dsn_for_those_only(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    bad = f"nobody@{CITY}"
    smtp_sink.fail_rcpt[bad] = "550 5.1.1 <nobody@city.example.lg.jp>: Recipient address rejected"
    proc = serve(tmp_path, smtp_sink.url, delivery={"bounce_via": smtp_sink.url})
    try:
        queue_id = send(proc.port, message(), [TARO, bad])
        dsn = wait_for("the DSN", lambda: dsns(smtp_sink), 30, proc)[0]
        blocks = list(parsed(dsn.data).iter_parts())[1].get_payload()
        assert [b["Final-Recipient"] for b in blocks[1:]] == [f"rfc822; {bad}"]
        assert blocks[1]["Status"] == "5.1.1"
        assert blocks[1]["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
        delivered = [m for m in smtp_sink.messages if m.mail_from == SENDER]
        assert [m.rcpt_tos for m in delivered] == [(TARO,)]
        [failed] = wait_records(proc, "failed", queue_id=queue_id)
        assert failed["reason"] == "rejected" and list(failed["recipients"]) == [bad]
        wait_records(proc, "bounced", queue_id=queue_id)
    finally:
        proc.stop()


def test_no_dsn_to_a_null_sender_a_forged_own_domain_or_a_message_with_an_executable(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    bad = f"nobody@{CITY}"
    smtp_sink.fail_rcpt[bad] = "550 5.1.1 no such user"
    proc = serve(tmp_path, smtp_sink.url, delivery={"bounce_via": smtp_sink.url})
    try:
        null = send(proc.port, message("bounce of a bounce"), [TARO, bad], sender="")
        own = send(proc.port, message("forged"), [TARO, bad], sender=f"mayor@{CITY}")
        exe = send(
            proc.port,
            mail([("請求書.exe", EXE, "application/octet-stream")], sender=SENDER, to=TARO),
            [TARO, bad],
        )
        plain = send(proc.port, message("normal"), [TARO, bad])  # the control: this one bounces
        suppressed = wait_records(proc, "bounce_suppressed", 3)
        reasons = {r["queue_id"]: r["reason"] for r in suppressed}
        assert reasons == {null: "null-sender", own: "own-domain-sender", exe: "held:executable"}
        [bounced] = wait_records(proc, "bounced")
        assert bounced["queue_id"] == plain
        wait_records(proc, "delivered", queue_id=bounced["dsn_id"])
        assert [m.rcpt_tos for m in dsns(smtp_sink) if m.rcpt_tos != (TARO,)] == [(SENDER,)]
        # the null-sender mail itself still reaches its good recipient, from <>
        assert any(m.mail_from == "<>" and m.rcpt_tos == (TARO,) for m in smtp_sink.messages)
    finally:
        proc.stop()


def test_without_bounce_via_failures_are_recorded_only(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.fail_rcpt[TARO] = "550 5.1.1 no such user"
    proc = serve(tmp_path, smtp_sink.url)
    try:
        queue_id = send(proc.port, message())
        [record] = wait_records(proc, "bounce_suppressed", queue_id=queue_id)
        assert record["reason"] == "disabled" and record["recipients"] == [TARO]
        assert smtp_sink.messages == []
    finally:
        proc.stop()


@pytest.mark.postfix
def test_dsn_for_a_recipient_real_postfix_refuses(
    tmp_path: Path, postfix: PostfixInstance, smtp_sink: SmtpSink
) -> None:
    host, port = postfix.address
    refused = f"reject-{time.time_ns()}@{CITY}"
    proc = serve(tmp_path, f"smtp://{host}:{port}", delivery={"bounce_via": smtp_sink.url})
    try:
        queue_id = send(proc.port, message("postfix"), [TARO, refused])
        dsn = wait_for("the DSN", lambda: dsns(smtp_sink), 60, proc)[0]
        blocks = list(parsed(dsn.data).iter_parts())[1].get_payload()
        assert blocks[1]["Final-Recipient"] == f"rfc822; {refused}"
        assert blocks[1]["Status"].startswith("5.") and blocks[1]["Diagnostic-Code"].startswith("smtp; 550")
        postfix.wait_for(1, timeout=60, contains=queue_id)
    finally:
        proc.stop()


# -- the queue CLI ---------------------------------------------------------------------------------


def test_queue_list_retry_and_flush_against_a_running_serve(tmp_path: Path) -> None:
    port = free_port()  # nothing listens yet: LGWAN is down
    proc = serve(tmp_path, f"smtp://127.0.0.1:{port}", delivery={"retry_base_s": 600.0, "retry_max_s": 600.0})
    sink = SmtpSink(port=port)
    try:
        ids = [send(proc.port, message(f"待機 {i}"), [TARO, HANAKO]) for i in range(3)]
        wait_records(proc, "deferred", 3)
        listed = json.loads(ok(cli(proc, "queue", "list", "--json")))
        assert sorted(e["id"] for e in listed) == sorted(ids)
        entry = next(e for e in listed if e["id"] == ids[0])
        assert entry["stage"] == "deliver" and entry["attempts"] == 1 and entry["mail_from"] == SENDER
        assert [(r["address"], r["status"]) for r in entry["recipients"]] == [
            (TARO, "pending"),
            (HANAKO, "pending"),
        ]
        assert entry["next_attempt"] is not None and entry["age_s"] >= 0
        assert "Connect" in entry["last_response"] or "refused" in entry["last_response"].lower()
        table = ok(cli(proc, "queue", "list"))
        assert ids[0] in table and re.search(r"in [789]m", table) and "detox serve: running" in table

        sink.start()  # LGWAN is back; nothing would be tried for ten minutes
        assert "tried now" in ok(cli(proc, "queue", "retry", ids[1]))
        [first] = sink.wait_for(1, timeout=15)
        assert parsed(first.data)["X-Detox-Id"] == ids[1]
        time.sleep(1.5)
        assert len(sink.messages) == 1  # only the one asked for
        ok(cli(proc, "queue", "flush"))
        sink.wait_for(3, timeout=15)
        wait_for(
            "an empty queue", lambda: json.loads(ok(cli(proc, "queue", "list", "--json"))) == [], 15, proc
        )
        assert cli(proc, "queue", "retry", ids[0]).returncode == 3  # delivered: not in the spool
        assert cli(proc, "queue", "retry", "../../etc").returncode == 3
        events = [r["event"] for r in records(proc)]
        assert events.count("queue_retry") == 1 and events.count("queue_flush") == 1
    finally:
        proc.stop()
        sink.stop()


def test_queue_retry_while_serve_is_stopped_happens_at_the_next_start(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    port = free_port()
    proc = serve(tmp_path, f"smtp://127.0.0.1:{port}", delivery={"retry_base_s": 600.0, "retry_max_s": 600.0})
    queue_id = send(proc.port, message())
    wait_records(proc, "deferred")
    proc.stop()
    assert "not running" in ok(cli(proc, "queue", "retry", queue_id))
    assert "detox serve: not running" in ok(cli(proc, "queue", "list"))
    with SmtpSink(port=port) as sink:
        overrides = {"delivery": {"starttls": "off", "retry_base_s": 600.0, "retry_max_s": 600.0}}
        proc2 = DetoxProcess(tmp_path, f"smtp://127.0.0.1:{port}", overrides, port=proc.port).start()
        try:
            [got] = sink.wait_for(1, timeout=15)  # at once, not in ten minutes
            assert parsed(got.data)["X-Detox-Id"] == queue_id
        finally:
            proc2.stop()


# -- poison messages and damaged entries -----------------------------------------------------------


def test_a_message_that_crashes_its_worker_is_held_after_n_attempts_across_restarts(
    tmp_path: Path, smtp_sink: SmtpSink, faulty: tuple[dict[str, str], Path]
) -> None:
    env, switch = faulty
    sections: dict[str, dict[str, Any]] = {
        "pipeline": {"order": ["faulty", *ORDER], "max_attempts": 3},
        "filters.faulty": {"options": {"switch": str(switch)}},
        "delivery": {"retry_base_s": 3.0, "retry_max_s": 3.0},
    }
    proc = serve(tmp_path, smtp_sink.url, env, **sections)
    try:
        poison = send(proc.port, message("poison", "FAULT:crash\n"))
        innocent = send(proc.port, message("innocent"))
        first = wait_records(proc, "deferred", stage="pipeline", queue_id=poison)[0]
        assert first["reason"] == "worker crashed" and first["attempt"] == 1
        tries = json.loads((proc.state / "spool" / "incoming" / f"{poison}.tries").read_text())
        assert tries["attempts"] == 1 and tries["in_flight"] is False
    finally:
        proc.kill9()  # the count is in the spool, not in serve's memory
    sections["delivery"]["starttls"] = "off"
    proc = DetoxProcess(tmp_path, smtp_sink.url, sections, port=proc.port, env=env).start()
    try:
        # a bystander the crash broke the pool under is retried on a worker of its own, and passes
        wait_records(proc, "delivered", queue_id=innocent, timeout=60)
        [aside] = wait_records(proc, "failed", queue_id=poison, stage="pipeline", timeout=60)
        assert "failed 3 times" in aside["reason"] and aside["moved_to"] == "spool/failed"
        counted = [r for r in records(proc) if r["event"] == "deferred" and r.get("queue_id") == poison]
        assert [r["attempt"] for r in counted] == [1, 2]  # 1 before the restart, 2 after, the 3rd held it
        failed_dir = proc.state / "spool" / "failed"
        assert (failed_dir / f"{poison}.msg").exists()
        assert "failed 3 times" in json.loads((failed_dir / f"{poison}.why.json").read_text())["why"]
        [entry] = json.loads(ok(cli(proc, "queue", "list", "--json")))
        assert entry["id"] == poison and entry["stage"] == "held" and "failed 3 times" in entry["why"]
        time.sleep(4)
        assert not [r for r in records(proc) if r["event"] == "deferred" and r.get("queue_id") == poison][2:]

        switch.unlink()  # the admin fixed the cause; the message is put back and goes through
        ok(cli(proc, "queue", "retry", poison))
        wait_records(proc, "requeued", queue_id=poison)
        wait_records(proc, "delivered", queue_id=poison)
        assert not list(failed_dir.iterdir())
    finally:
        proc.stop()


def test_a_message_that_times_out_is_held_too(
    tmp_path: Path, smtp_sink: SmtpSink, faulty: tuple[dict[str, str], Path]
) -> None:
    env, switch = faulty
    proc = serve(
        tmp_path,
        smtp_sink.url,
        env,
        pipeline={"order": ["faulty", *ORDER], "max_attempts": 2},
        filters__faulty={"options": {"switch": str(switch), "seconds": 30.0}, "timeout_s": 60.0},
        limits={"message_timeout_s": 3.0},
        delivery={"retry_base_s": 0.5, "retry_max_s": 0.5},
    )
    try:
        stuck = send(proc.port, message("stuck", "FAULT:sleep\n"))
        [aside] = wait_records(proc, "failed", queue_id=stuck, stage="pipeline", timeout=60)
        assert "failed 2 times, last: message timeout" in aside["reason"]
        fine = send(proc.port, message("after"))  # the pool was replaced, serve still works
        wait_records(proc, "delivered", queue_id=fine)
    finally:
        proc.stop()


def test_unreadable_spool_entries_are_moved_aside_with_a_record(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    spool = tmp_path / "var" / "spool"
    for sub in ("incoming", "outgoing"):
        (spool / sub).mkdir(parents=True)
    (spool / "incoming" / "1A0000000000000000AA.msg").write_bytes(b"not a spool file\n")
    (spool / "outgoing" / "1A0000000000000000BB.json").write_bytes(b'{"queue_id": "1A00')
    (spool / "outgoing" / "1A0000000000000000BB.eml").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    orphan = {
        "queue_id": "1A0000000000000000CC",
        "mail_from": "a@b",
        "created_at": 1.0,
        "attempts": 0,
        "next_attempt": 0,
        "recipients": {TARO: {"status": "pending"}},
    }
    (spool / "outgoing" / "1A0000000000000000CC.json").write_text(
        json.dumps(orphan)
    )  # its message is missing
    proc = serve(tmp_path, smtp_sink.url)
    try:
        for queue_id in ("1A0000000000000000AA", "1A0000000000000000BB", "1A0000000000000000CC"):
            [record] = wait_records(proc, "failed", queue_id=queue_id)
            assert record["moved_to"] == "spool/failed" and record["reason"]
            assert (spool / "failed" / f"{queue_id}.why.json").exists()
        assert (spool / "failed" / "1A0000000000000000BB.eml").exists()  # nothing dropped
        queue_id = send(proc.port, message())  # and serve serves
        wait_records(proc, "delivered", queue_id=queue_id)
        held = {e["id"] for e in json.loads(ok(cli(proc, "queue", "list", "--json"))) if e["stage"] == "held"}
        assert held == {"1A0000000000000000AA", "1A0000000000000000BB", "1A0000000000000000CC"}
    finally:
        proc.stop()


def test_a_result_not_handed_off_before_a_crash_is_never_delivered_as_is(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """serve died after the worker wrote outgoing/ID.eml and .json but before the hand-off (index,
    `detoxified` record, incoming released): the message is detoxified again, never delivered from
    the unaudited result."""
    from detox.envelope import Envelope
    from detox.spool import DeliveryState, RecipientState, Spool, new_queue_id

    spool = Spool(tmp_path / "var" / "spool", fsync=False)
    env = Envelope(new_queue_id(), SENDER, (TARO,), "192.0.2.1", "mx.vendor.example.com")
    spool.accept(env, message(subject="再処理", body="正しい本文です。\n"))
    spool.begin_attempt(env.queue_id)  # the attempt was under way
    stale = DeliveryState(env.queue_id, SENDER, {TARO: RecipientState()})
    spool.write_outgoing(stale, b"Subject: STALE\r\n\r\nSTALE-NEVER-AUDITED\r\n")
    proc = serve(tmp_path, smtp_sink.url)
    try:
        wait_records(proc, "delivered", queue_id=env.queue_id)
        events = [r["event"] for r in records(proc) if r.get("queue_id") == env.queue_id]
        assert events.index("detoxified") < events.index("delivered")
        [got] = [m for m in smtp_sink.messages if TARO in m.rcpt_tos]
        assert b"STALE" not in got.data
        assert "再処理" in str(parsed(got.data)["Subject"])
        wait_for("the entry removed", lambda: not spool.has_state(env.queue_id), proc=proc)
        assert not spool.has_incoming(env.queue_id)  # nothing left to detoxify or deliver again
    finally:
        proc.stop()


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/var`` on a 6 MiB tmpfs (root only)."""
    var = tmp_path / "var"
    var.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(var)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield var
    finally:
        subprocess.run(["umount", "-l", str(var)], check=False)


def test_a_full_disk_answers_452_and_keeps_nothing_half_written(
    tmp_path: Path, smtp_sink: SmtpSink, small_disk: Path
) -> None:
    proc = serve(tmp_path, smtp_sink.url, server={"max_message_bytes": 50_000_000})
    try:
        big = message("big", "あ" * 3_000_000)  # ~9 MB as sent: more than the disk holds
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=60) as client:
            client.ehlo()
            client.mail(SENDER)
            client.rcpt(TARO)
            code, text = client.data(big)
            assert (code, text) == (452, b"4.3.1 Insufficient system storage, please try again later")
            spool = small_disk / "spool"
            assert list((spool / "incoming").iterdir()) == [] and list((spool / "tmp").iterdir()) == []
            # the space is given back at once: the next message in the same session is accepted
            client.mail(SENDER)
            client.rcpt(TARO)
            code, text = client.data(message("small"))
            assert code == 250, text
        smtp_sink.wait_for(1, timeout=30)
        assert "spool write failed" in proc.log_text()
    finally:
        proc.stop()


# -- SIGTERM, SIGHUP -----------------------------------------------------------------------------------


def test_sigterm_under_traffic_exits_cleanly_and_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    sink = SmtpSink(port=port)
    sink.start()
    sink.data_delay = 0.05  # deliveries are in flight when the signal comes
    proc = serve(tmp_path, sink.url)
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as smtp:
                    smtp.ehlo()
                    smtp.mail(SENDER)
                    smtp.rcpt(TARO)
                    code, text = smtp.data(message(f"負荷 {n}-{i}"))
                    if code == 250:  # what counts: the reply to DATA (QUIT may then meet a 421)
                        with lock:
                            accepted.append(text.decode().rsplit(" ", 1)[1])
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # refused or cut off while stopping: the client keeps its message

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for("traffic", lambda: len(accepted) >= 20, 60, proc)
        assert proc.proc is not None
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(40) == 0
        took = time.monotonic() - started
        stop.set()
        for t in threads:
            t.join(30)
        assert "detox stopped" in proc.log_text()
        assert "Traceback" not in proc.log_text()
        spool = proc.state / "spool"
        assert list((spool / "tmp").iterdir()) == []  # nothing half-written
        proc2 = DetoxProcess(tmp_path, sink.url, {"delivery": {"starttls": "off"}}, port=proc.port).start()
        try:
            expected = set(accepted)
            wait_for(
                "every accepted message delivered",
                lambda: expected <= {parsed(m.data)["X-Detox-Id"] for m in sink.messages},
                60,
                proc2,
            )
            time.sleep(1)
            ids = [parsed(m.data)["X-Detox-Id"] for m in sink.messages]
            assert len(ids) == len(set(ids)), "nothing delivered twice"
            assert set(ids) == expected
        finally:
            proc2.stop()
        print(f"SIGTERM under 4 clients: exit 0 in {took:.2f}s, {len(accepted)} accepted, all delivered")
    finally:
        stop.set()
        proc.stop()
        sink.stop()


def test_sighup_applies_a_valid_config_keeps_sessions_and_refuses_an_invalid_one(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    proc = serve(tmp_path, smtp_sink.url)
    assert proc.proc is not None
    base: dict[str, dict[str, Any]] = {
        "server": {"listen": f"127.0.0.1:{proc.port}"},
        "delivery": {"deliver_to": smtp_sink.url, "starttls": "off", "retry_base_s": 0.5, "retry_max_s": 2.0},
        "pipeline": {"workers": 2},
    }
    town = "taro@town.example.lg.jp"
    try:
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as session:  # open across the reload
            session.ehlo()
            session.mail(SENDER)
            assert session.rcpt(town) == expected(replies.RELAY_DENIED)
            session.rset()

            write_config(
                proc.config,
                {**base, "server": {**base["server"], "accepted_domains": [CITY, "town.example.lg.jp"]}},
            )
            proc.proc.send_signal(signal.SIGHUP)
            [reloaded] = wait_records(proc, "reloaded", ok=True)
            assert "server.accepted_domains" in reloaded["changed"] and reloaded["source"] == "SIGHUP"

            session.mail(SENDER)
            assert session.rcpt(town) == expected(replies.RCPT_OK)  # the same session, the new rule
            code, _ = session.data(message("after reload"))
            assert code == 250

            (proc.config).write_text(proc.config.read_text() + "\n[delivery]\nno_such_key = 1\n")
            proc.proc.send_signal(signal.SIGHUP)
            [bad] = wait_records(proc, "reloaded", ok=False)
            assert "no_such_key" in bad["error"] or "twice" in bad["error"]
            session.mail(SENDER)
            assert session.rcpt(town) == expected(replies.RCPT_OK)  # the running config stayed
            session.rset()
        smtp_sink.wait_for(1, timeout=30)

        # the CLI: an invalid file is refused before serve is asked; a valid one is applied
        assert cli(proc, "reload").returncode == 2
        write_config(proc.config, {**base, "server": {"listen": "127.0.0.1:1"}})
        out = ok(cli(proc, "reload"))
        assert "reloaded" in out and "needs a restart to take effect: server.listen" in out
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as client:  # still on its old address
            client.ehlo()
            client.mail(SENDER)
            assert client.rcpt(town) == expected(replies.RELAY_DENIED)  # accepted_domains back to the default
        assert proc.proc.poll() is None
    finally:
        proc.stop()


# -- caps and back-pressure --------------------------------------------------------------------------


def test_back_pressure_and_session_caps_in_the_real_serve(
    tmp_path: Path, smtp_sink: SmtpSink, faulty: tuple[dict[str, str], Path]
) -> None:
    env, switch = faulty
    proc = serve(
        tmp_path,
        smtp_sink.url,
        env,
        pipeline={"order": ["faulty", *ORDER], "workers": 1},
        filters__faulty={"options": {"switch": str(switch), "seconds": 3.0}},
        limits={"max_backlog_messages": 2},
        server={"max_sessions_per_client": 3},
    )
    try:
        slow = [send(proc.port, message(f"slow {i}", "FAULT:sleep\n")) for i in range(2)]
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as client:
            client.ehlo()
            code, text = client.mail(SENDER)
            assert (code, text) == expected(replies.BUSY)
        wait_records(proc, "delivered", queue_id=slow[0], timeout=60)
        send(proc.port, message("room again"))  # the backlog went down
        [refused] = wait_records(proc, "refused", limit="limits.max_backlog_messages")
        assert refused["count"] >= 1 and refused["stage"] == "session"

        for _ in range(5):  # clients that hang up at once (health checks, scanners) hold no slot
            socket.create_connection(("127.0.0.1", proc.port), timeout=10).close()
        time.sleep(0.2)
        held = [socket.create_connection(("127.0.0.1", proc.port), timeout=10) for _ in range(3)]
        for s in held:
            assert s.recv(100).startswith(b"220")
        extra = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        assert extra.recv(200) == reply_bytes(replies.TOO_MANY_SESSIONS_CLIENT) + b"\r\n"
        extra.close()
        for s in held:
            s.close()
        wait_records(proc, "refused", limit="server.max_sessions_per_client")
    finally:
        proc.stop()


# -- line shapes ----------------------------------------------------------------------------------------


def test_long_lines_and_bare_lf_reach_lgwan_rebuilt(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    proc = serve(tmp_path, smtp_sink.url, limits={"max_line_length": 400_000})
    try:
        long_html = (
            b"From: a@vendor.example.com\r\nTo: taro@city.example.lg.jp\r\nSubject: long\r\n"
            b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>"
            + "長い一行のメール。".encode() * 10_000
            + b"</p></body></html>\r\n"
        )
        first = send(proc.port, long_html)
        bare = b"From: scanner@vendor.example.com\nTo: taro@city.example.lg.jp\nSubject: scan\n\nscanned.\n"
        second = send(proc.port, bare + b"\r\n")
        too_long = long_html.replace(b"<p>", b"<p>" + b"x" * 200_000)  # 470 KB on one line
        with smtplib.SMTP("127.0.0.1", proc.port, timeout=30) as client:
            client.ehlo()
            client.mail(SENDER)
            client.rcpt(TARO)
            code, text = client.data(too_long)
        assert (code, text) == expected(replies.LINE_TOO_LONG, limit=400_000)
        got = {parsed(m.data)["X-Detox-Id"]: m.data for m in smtp_sink.wait_for(2, timeout=30)}
        assert max(len(line) for line in got[first].split(b"\r\n")) <= 998  # rebuilt within RFC 5322
        assert (
            "長い一行のメール。"
            in (parsed(got[first]).get_body(("plain",)) or parsed(got[first])).get_content()
        )
        scanned = parsed(got[second]).get_body(("plain",))
        assert scanned is not None and "scanned." in scanned.get_content()
        assert b"\n" not in got[second].replace(b"\r\n", b"")  # CRLF only on the LGWAN side
        received = {r["queue_id"]: r for r in records(proc) if r["event"] == "received"}
        assert received[second]["bare_lf"] == 5 and "bare_lf" not in received[first]
        [refused] = wait_records(proc, "refused", limit="limits.max_line_length")
        assert refused["reply"] == replies.LINE_TOO_LONG.format(limit=400_000)
    finally:
        proc.stop()


def test_one_spool_one_serve(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    proc = serve(tmp_path, smtp_sink.url)
    try:
        other = free_port()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "detox",
                "serve",
                "--config",
                str(proc.config),
                "--listen",
                f"127.0.0.1:{other}",
            ],
            cwd=proc.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and "another detox serve" in second.stderr
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", other), timeout=1):
            raise AssertionError("the second serve must not listen")
    finally:
        proc.stop()
