"""Typed audit events: the JSON line of each is the one the untyped call wrote, and README matches them."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from detox.audit import AuditLog
from detox.audit.events import (
    EVENTS,
    Actor,
    Approved,
    AuditEvent,
    Bounced,
    BounceSuppressed,
    DataRefused,
    Deleted,
    Delivered,
    DeliveryDeferred,
    DeliveryFailed,
    Detoxified,
    Exported,
    MovedAside,
    PipelineDeferred,
    Purged,
    QueueFlushed,
    QueueRetried,
    Received,
    RecipientReply,
    Released,
    ReleasedPart,
    ReleaseFailed,
    Reloaded,
    Requeued,
    Rotated,
    SessionRefused,
    field_names,
)
from detox.config.schema import NoticeConfig
from detox.envelope import Envelope
from detox.pipeline.report import AntivirusReport, MessageInfo, MessageReport, PartReport
from detox.pipeline.vocabulary import REASONS

REPO = Path(__file__).resolve().parents[2]
TS = "2026-11-25T19:24:31.970Z"
Q = "1A2142AA7ED8478F55C1"
ME = Actor("admin")
SUDO = Actor("root", "yamada")
REPLIES = {"taro@city.example.lg.jp": RecipientReply(250, "2.0.0 Ok: queued as 4Xyz")}
REPLIES_JSON = {"taro@city.example.lg.jp": {"code": 250, "response": "2.0.0 Ok: queued as 4Xyz"}}
PART = PartReport(
    part_id="2",
    role="attachment",
    filename="見積書.pdf",
    declared_type="application/pdf",
    detected_type="application/pdf",
    size=10,
    sha256="a" * 64,
    filter="pdf",
    action="replace",
    reason="",
    removed={"javascript": 1},
    output_sha256="b" * 64,
    charset=None,
    error=None,
    mismatch=None,
    output_filename="見積書.pdf",
    output_type="application/pdf",
    conversion="pdf-rasterized",
)


def legacy(event: str, queue_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """What ``AuditLog.write(event, queue_id, **fields)`` recorded, at TS."""
    record: dict[str, Any] = {"ts": TS, "event": event}
    if queue_id is not None:
        record["queue_id"] = queue_id
    record.update(fields)
    return record


# (typed event, the untyped call it replaces) — every form the code base writes, serve's included.
CASES: list[tuple[AuditEvent, dict[str, Any]]] = [
    (
        Received(
            queue_id=Q,
            client_address="192.0.2.7",
            helo="mx.example.jp",
            mail_from="a@example.jp",
            rcpt_tos=("taro@city.example.lg.jp",),
            size=120,
            sha256="c" * 64,
        ),
        legacy(
            "received",
            Q,
            client_address="192.0.2.7",
            helo="mx.example.jp",
            mail_from="a@example.jp",
            rcpt_tos=["taro@city.example.lg.jp"],
            size=120,
            sha256="c" * 64,
        ),
    ),
    (
        Received(
            queue_id=Q,
            client_address="192.0.2.7",
            helo="",
            mail_from="",
            rcpt_tos=("taro@city.example.lg.jp",),
            size=1,
            sha256="c" * 64,
            bare_lf=3,
        ),
        legacy(
            "received",
            Q,
            client_address="192.0.2.7",
            helo="",
            mail_from="",
            rcpt_tos=["taro@city.example.lg.jp"],
            size=1,
            sha256="c" * 64,
            bare_lf=3,
        ),
    ),
    (
        DataRefused(
            limit="spool",
            reply="452 4.3.1 Insufficient system storage",
            client_address="192.0.2.7",
            helo="mx",
            mail_from="a@example.jp",
            rcpt_tos=("taro@city.example.lg.jp",),
            size=9,
            error="No space left on device",
        ),
        legacy(
            "refused",
            None,
            stage="data",
            limit="spool",
            reply="452 4.3.1 Insufficient system storage",
            client_address="192.0.2.7",
            helo="mx",
            mail_from="a@example.jp",
            rcpt_tos=["taro@city.example.lg.jp"],
            size=9,
            error="No space left on device",
        ),
    ),
    (
        DataRefused(
            limit="limits.max_line_length",
            reply="500 5.6.0",
            client_address="192.0.2.7",
            helo="mx",
            mail_from="a@example.jp",
            rcpt_tos=(),
            size=9,
        ),
        legacy(
            "refused",
            None,
            stage="data",
            limit="limits.max_line_length",
            reply="500 5.6.0",
            client_address="192.0.2.7",
            helo="mx",
            mail_from="a@example.jp",
            rcpt_tos=[],
            size=9,
        ),
    ),
    (
        SessionRefused(limit="server.max_sessions", reply="421 4.7.0", count=3, clients={"192.0.2.7": 3}),
        legacy(
            "refused",
            None,
            stage="session",
            limit="server.max_sessions",
            reply="421 4.7.0",
            count=3,
            clients={"192.0.2.7": 3},
        ),
    ),
    (
        PipelineDeferred(
            queue_id=Q, reason="worker crashed", attempt=2, max_attempts=5, next_attempt=1764100000.5
        ),
        legacy(
            "deferred",
            Q,
            stage="pipeline",
            reason="worker crashed",
            attempt=2,
            max_attempts=5,
            next_attempt=1764100000.5,
        ),
    ),
    (
        PipelineDeferred(queue_id=Q, reason="disk full", counted=False, next_attempt=1764100000.5),
        legacy("deferred", Q, stage="pipeline", reason="disk full", counted=False, next_attempt=1764100000.5),
    ),
    (
        MovedAside(queue_id=Q, stage="pipeline", reason="detoxification failed 5 times"),
        legacy(
            "failed", Q, stage="pipeline", reason="detoxification failed 5 times", moved_to="spool/failed"
        ),
    ),
    (Requeued(queue_id=Q, stage="incoming"), legacy("requeued", Q, stage="incoming")),
    (Delivered(queue_id=Q, recipients=REPLIES), legacy("delivered", Q, recipients=REPLIES_JSON)),
    (
        Delivered(queue_id=Q, recipients=REPLIES, kind="dsn"),
        legacy("delivered", Q, recipients=REPLIES_JSON, kind="dsn"),
    ),
    (
        DeliveryDeferred(
            queue_id=Q, recipients={"a@b": RecipientReply(None, "timeout")}, next_attempt=5.0, attempt=2
        ),
        legacy(
            "deferred",
            Q,
            recipients={"a@b": {"code": None, "response": "timeout"}},
            next_attempt=5.0,
            attempt=2,
        ),
    ),
    (
        DeliveryFailed(queue_id=Q, recipients=REPLIES, reason="rejected", kind="release"),
        legacy("failed", Q, recipients=REPLIES_JSON, reason="rejected", kind="release"),
    ),
    (
        DeliveryFailed(queue_id=Q, recipients=REPLIES, reason="expired", max_age_days=5.0),
        legacy("failed", Q, recipients=REPLIES_JSON, reason="expired", max_age_days=5.0),
    ),
    (
        Bounced(queue_id=Q, dsn_id="D" * 20, to="a@example.jp", recipients=("x@y",), via="smtp://mx:25"),
        legacy("bounced", Q, dsn_id="D" * 20, to="a@example.jp", recipients=["x@y"], via="smtp://mx:25"),
    ),
    (
        BounceSuppressed(queue_id=Q, reason="held:executable", mail_from="a@example.jp", recipients=("x@y",)),
        legacy(
            "bounce_suppressed", Q, reason="held:executable", mail_from="a@example.jp", recipients=["x@y"]
        ),
    ),
    (
        Reloaded(ok=False, source="SIGHUP", error="bad key"),
        legacy("reloaded", None, ok=False, source="SIGHUP", error="bad key"),
    ),
    (
        Reloaded(ok=True, source="detox reload", changed=("notice.template",), restart_needed=()),
        legacy(
            "reloaded", None, ok=True, source="detox reload", changed=["notice.template"], restart_needed=[]
        ),
    ),
    (Purged(messages=4), legacy("purged", None, messages=4)),
    (
        Purged(
            messages=1,
            queue_ids=(Q,),
            older_than_days=30.0,
            received_before="2026-10-26T00:00:00.000Z",
            actor=SUDO,
        ),
        legacy(
            "purged",
            None,
            messages=1,
            queue_ids=[Q],
            older_than_days=30.0,
            received_before="2026-10-26T00:00:00.000Z",
            os_user="root",
            sudo_user="yamada",
        ),
    ),
    (
        Rotated(previous_file="audit-000001.jsonl"),
        legacy("rotated", None, previous_file="audit-000001.jsonl"),
    ),
    (
        QueueRetried(target=Q, stage="held", actor=ME),
        legacy("queue_retry", None, target=Q, stage="held", os_user="admin"),
    ),
    (QueueFlushed(actor=SUDO), legacy("queue_flush", None, os_user="root", sudo_user="yamada")),
    (
        Approved(queue_id=Q, hold_id=f"{Q}/2", approved_by="佐藤", actor=ME),
        legacy("approved", Q, hold_id=f"{Q}/2", approved_by="佐藤", os_user="admin"),
    ),
    (
        Released(
            queue_id=Q,
            release_id="R" * 20,
            hold_ids=(f"{Q}/2",),
            parts=(ReleasedPart("2", "見積書.pdf", "application/pdf", 10, "a" * 64),),
            recipients=("taro@city.example.lg.jp",),
            mail_from="a@example.jp",
            approved_by="山田",
            second_approver=None,
            two_person_rule=False,
            reason="取引先に確認済み",
            original_sha256="c" * 64,
            release_sha256="d" * 64,
            actor=ME,
        ),
        legacy(
            "released",
            Q,
            release_id="R" * 20,
            hold_ids=[f"{Q}/2"],
            parts=[
                {
                    "part_id": "2",
                    "filename": "見積書.pdf",
                    "type": "application/pdf",
                    "size": 10,
                    "sha256": "a" * 64,
                }
            ],
            recipients=["taro@city.example.lg.jp"],
            mail_from="a@example.jp",
            approved_by="山田",
            second_approver=None,
            two_person_rule=False,
            reason="取引先に確認済み",
            original_sha256="c" * 64,
            release_sha256="d" * 64,
            os_user="admin",
        ),
    ),
    (
        ReleaseFailed(queue_id="R" * 20, reason="OSError: disk full"),
        legacy("failed", "R" * 20, stage="release", reason="OSError: disk full"),
    ),
    (
        Exported(queue_id=Q, hold_id=None, sha256="c" * 64, size=5, output="-", actor=ME),
        legacy("exported", Q, hold_id=None, sha256="c" * 64, size=5, output="-", os_user="admin"),
    ),
    (
        Deleted(queue_id=Q, original_sha256="c" * 64, reason=None, actor=SUDO),
        legacy("deleted", Q, original_sha256="c" * 64, reason=None, os_user="root", sudo_user="yamada"),
    ),
]


def _line(record: dict[str, Any]) -> bytes:
    return AuditLog._encode(record)


@pytest.mark.parametrize(("event", "expected"), CASES, ids=lambda v: type(v).__name__ if v else "")
def test_event_writes_the_line_the_untyped_call_wrote(event: AuditEvent, expected: dict[str, Any]) -> None:
    assert _line(event.record(TS)) == _line(expected)


def test_every_event_class_has_a_case() -> None:
    assert {type(event) for event, _ in CASES} | {Detoxified} == set(EVENTS)


def test_detoxified_of_a_report_is_the_record_serve_wrote() -> None:
    env = Envelope(Q, "a@example.jp", ("taro@city.example.lg.jp",), "192.0.2.7", "mx", TS)
    info = MessageInfo("山田 <a@example.jp>", None, "①見積書", "<x@y>", 120, "c" * 64, ("HeaderDefect",))
    report = MessageReport(Q, info, env, (PART,), 2, "text-converted; pdf-rasterized=1", "e" * 64, 300)
    as_dict = report.as_dict()
    old = legacy(
        "detoxified",
        Q,
        original_sha256=as_dict["message"]["sha256"],
        size=as_dict["message"]["size"],
        header_from=as_dict["message"]["from"],
        subject=as_dict["message"]["subject"],
        message_id=as_dict["message"]["message_id"],
        defects=as_dict["message"]["defects"],
        parts=as_dict["parts"],
        actions=as_dict["actions"],
        urls_defanged=as_dict["urls_defanged"],
        output_sha256=as_dict["output_sha256"],
    )
    assert _line(Detoxified.of(Q, report).record(TS)) == _line(old)


def test_write_takes_an_event_and_the_line_is_chained(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    record = log.write(Requeued(queue_id=Q, stage="outgoing"))
    log.write("requeued", Q, stage="outgoing")  # the deprecated form, still accepted
    log.append([Requeued(queue_id=Q, stage="incoming"), log.record(Requeued(queue_id=Q, stage="outgoing"))])
    lines = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    first, second = (json.loads(line) for line in lines[:2])
    assert list(first) == ["ts", "event", "queue_id", "stage", "prev"] == list(second)
    assert {k: v for k, v in first.items() if k not in ("ts", "prev")} == {
        k: v for k, v in second.items() if k not in ("ts", "prev")
    }
    assert record["event"] == "requeued" and len(lines) == 4
    with pytest.raises(TypeError):
        log.write(Requeued(queue_id=Q, stage="x"), Q)  # type: ignore[call-overload]


def test_events_are_frozen_and_keyword_only() -> None:
    event = Requeued(queue_id=Q, stage="incoming")
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.stage = "outgoing"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Requeued(Q, "incoming")  # type: ignore[misc]


# -- README ---------------------------------------------------------------------------------------

# Words in README's per-event rows that are values or the fields of a nested object, not fields.
VALUES = {e.event for e in EVENTS} | {
    "null",
    "virus",
    "antivirus",
    "email",
    "spool",
    "pipeline",
    "delivery",
    "incoming",
    "outgoing",
    "dsn",
    "release",
    "rejected",
    "expired",
    "disabled",
}
# The sender authentication summary (detox.inbound.check.Outcome.audit_summary) and its values.
AUTHENTICATION = {
    "spf", "dkim", "dmarc", "arc", "from_domain", "policy", "client_ip", "source", "action", "reason",
    "detail", "verified_domain", "warnings",
}  # fmt: skip
VALUES |= {"accept", "mark", "hold", "smtp", "received", "relay-ar"}
NESTED = {
    # [antivirus]: the detoxified record's `antivirus` object; [inbound]: its `authentication`
    "detoxified": {f.name for f in dataclasses.fields(AntivirusReport)} | AUTHENTICATION,
    "refused": AUTHENTICATION,
    "released": {f.name for f in dataclasses.fields(ReleasedPart)},
    "delivered": {f.name for f in dataclasses.fields(RecipientReply)},
    "deferred": {f.name for f in dataclasses.fields(RecipientReply)},
    "failed": {f.name for f in dataclasses.fields(RecipientReply)},
}
# A row that names another record's field: bounced says the DSN's delivery records carry `kind`.
ELSEWHERE = {("bounced", "kind")}
COMMON = {"ts", "event", "queue_id", "prev"}
_FIELD = re.compile(r"([a-z][a-z0-9_]*)(?:: .*)?")


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def _rows(table: str) -> list[tuple[str, str]]:
    """(first cell, the rest) of every body row of a Markdown table."""
    rows = []
    for line in table.splitlines():
        if line.startswith("| `"):
            first, _, rest = line[2:].partition(" | ")
            rows.append((first, rest))
    return rows


@pytest.fixture(scope="module")
def audit_section() -> str:
    return _section((REPO / "README.md").read_text(encoding="utf-8"), "## The audit log", "### The `prev`")


def test_readme_names_every_event_and_no_other(audit_section: str) -> None:
    common = dict(_rows(_section(audit_section, "Every record has:", "Per event:")))
    named = set(re.findall(r"`([a-z_]+)`", common["`event`"]))
    assert named == {e.event for e in EVENTS}
    without_queue_id = set(re.findall(r"`([a-z_]+)`", common["`queue_id`"]))
    assert without_queue_id == {e.event for e in EVENTS if "queue_id" not in field_names(e)}
    assert set(re.findall(r"`([a-z_]+)`", " ".join(common))) == COMMON


def test_readme_per_event_table_matches_the_event_classes(audit_section: str) -> None:
    def fields_of(events: set[str]) -> set[str]:
        return {f for cls in EVENTS if cls.event in events for f in field_names(cls)}

    mentioned: dict[str, set[str]] = {}
    for first, rest in _rows(_section(audit_section, "Per event:", "Per-part fields")):
        tokens = {m.group(1) for t in re.findall(r"`([^`]+)`", rest) if (m := _FIELD.fullmatch(t))}
        events = set(re.findall(r"`([a-z_]+)`", first))
        for event in events:
            mentioned.setdefault(event, set()).update(tokens)
        # A row may only name fields that a record of its event(s) has, or values.
        allowed = fields_of(events) | COMMON | VALUES
        for event in events:
            allowed |= NESTED.get(event, set()) | {f for e, f in ELSEWHERE if e == event}
        unknown = tokens - allowed
        assert not unknown, f"README's row {first} names {sorted(unknown)}, which no such record has"
    assert set(mentioned) == {e.event for e in EVENTS}
    for event, tokens in mentioned.items():
        missing = fields_of({event}) - tokens - COMMON
        assert not missing, f"README's `{event}` row(s) do not mention {sorted(missing)}"


def test_readme_part_and_report_fields_match_the_report(audit_section: str) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    parts = _section(audit_section, "Per-part fields", "**Part ids.**")
    named = {n for first, _ in _rows(parts) for n in re.findall(r"`([a-z_0-9]+)`", first)}
    assert named == set(dataclasses.replace(PART, virus="Win.Test.EICAR_HDB-1").as_dict())
    scan = _section(text, "### The `detox scan --report` JSON", "## What happens")
    rows = dict(_rows(scan))
    named = {n for first in rows for n in re.findall(r"`([a-z_0-9]+)`", first)}
    env = Envelope(Q, "", ())
    info = MessageInfo(None, None, None, None, 0, "", ())
    report = MessageReport(Q, info, env, (), 0, "", "", 0, AntivirusReport(0, 0, (), None))
    assert named == set(report.as_dict()) | {"authentication"}  # present with [inbound] on
    assert set(re.findall(r"`([a-z_0-9]+)`", rows["`message`"])) >= set(info.as_dict())
    assert set(re.findall(r"`([a-z_0-9]+)`", rows["`envelope`"])) >= set(env.as_dict())


def test_readme_reasons_are_the_registered_reasons() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = _section(text, "Default `reasons`", "### `[logging]`")
    codes = [first.strip("`") for first, _ in _rows(table)]
    in_notice = [name for name, entry in REASONS.entries().items() if entry.in_notice]
    assert codes == in_notice, "README's reason table and detox.pipeline.vocabulary differ (order too)"
    assert list(NoticeConfig().reasons) == in_notice, "notice.reasons' defaults and the registry differ"
    after = table[table.index("Two more `drop` reasons") :]
    records_only = set(re.findall(r"`([a-z0-9]+(?:-[a-z0-9]+)+)`", after))
    assert records_only == {name for name, entry in REASONS.entries().items() if not entry.in_notice}
