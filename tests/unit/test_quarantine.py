"""The quarantine: finding, showing, exporting, approving, releasing, deleting and purging originals.

Mails go through the real Pipeline and are kept and indexed the way ``serve`` hands them off
(original → index → ``detoxified`` audit record), so every test reads what production writes.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from support.configs import make_config
from support.mails import CITY, EXE, mail, ppap_mail, zip_of

from detox.audit import AuditLog, read_records, verify
from detox.audit.events import Detoxified
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import NotFoundError, RefusedError, SpoolError
from detox.pipeline import Pipeline
from detox.quarantine.admin import Quarantine
from detox.quarantine.holds import HoldRef, parse_ref
from detox.quarantine.store import Store
from detox.spool import Spool, new_queue_id

TARO = f"taro@{CITY}"


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return Pipeline(DetoxConfig())


class Gateway:
    """What serve does between the pipeline and delivery, without the network."""

    def __init__(self, config: DetoxConfig, pipeline: Pipeline) -> None:
        self.config = config
        self.pipeline = pipeline
        self.store = Store(config.state_path(), fsync=False)
        self.audit = AuditLog.from_config(config)

    def ingest(
        self,
        raw: bytes,
        *,
        sender: str = "hanako@vendor.example.com",
        rcpts: tuple[str, ...] = (TARO,),
        received_at: str = "2026-11-25T01:00:00.000Z",
    ) -> dict[str, Any]:
        env = Envelope(new_queue_id(), sender, rcpts, "192.0.2.7", "mx.vendor.example.com", received_at)
        result = self.pipeline.run(raw, env)
        self.store.put_original(result.report.message.sha256, raw)
        self.store.index(result.report, self.config.storage.retention_days)
        self.audit.write(Detoxified.of(env.queue_id, result.report))  # as serve writes it
        return result.report.as_dict()


@pytest.fixture
def gateway(tmp_path: Path, pipeline: Pipeline) -> Iterator[Gateway]:
    gw = Gateway(make_config(tmp_path / "var"), pipeline)
    yield gw
    gw.store.close()


def quarantine_of(gw: Gateway, **settings: Any) -> Quarantine:
    config = make_config(gw.config.state_path(), quarantine=settings) if settings else gw.config
    return Quarantine(config)


def held(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in report["parts"] if p["action"] == "hold"]


# -- ids ----------------------------------------------------------------------------------------


def test_ids_parse_as_quoted_in_the_notice() -> None:
    assert parse_ref("1a2142aa7ed8478f55c1") == HoldRef("1A2142AA7ED8478F55C1")
    assert parse_ref("1A2142AA7ED8478F55C1/2.1") == HoldRef("1A2142AA7ED8478F55C1", "2.1")
    assert str(parse_ref("1A2142AA7ED8478F55C1/0")) == "1A2142AA7ED8478F55C1/0"
    for bad in ("", "xyz", "1A2142AA7ED8478F55C1/", "../../etc/passwd", "1A2142AA7ED8478F55C"):
        with pytest.raises(RefusedError):
            parse_ref(bad)


def test_no_index_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        Quarantine(make_config(tmp_path / "nowhere"))


# -- list / show / export -------------------------------------------------------------------------


def test_held_ppap_is_listed_shown_and_exported(gateway: Gateway) -> None:
    raw, archive = ppap_mail()
    report = gateway.ingest(raw)
    gateway.ingest(mail([]), sender="clean@example.jp")  # nothing held: not in the default list
    [part] = held(report)
    assert (part["filename"], part["reason"]) == ("見積書.zip", "encrypted-archive")
    q = quarantine_of(gateway)

    [view] = q.find()
    assert view.queue_id == report["queue_id"]
    data = view.as_json()
    assert data["from"] == "hanako@vendor.example.com" and data["to"] == [TARO]
    assert data["subject"] == "①見積書の送付（㈱髙橋商事）"
    zip_part = next(p for p in data["parts"] if p["part_id"] == part["part_id"])
    assert zip_part["name"] == "見積書.zip" and zip_part["action"] == "hold"
    assert zip_part["sha256"] == hashlib.sha256(archive).hexdigest() and zip_part["size"] == len(archive)
    assert zip_part["hold_id"] == f"{view.queue_id}/{part['part_id']}"
    assert len(q.find(held_only=False)) == 2

    shown = q.get(parse_ref(zip_part["hold_id"]))
    headers = dict(q.headers(shown))
    assert headers["Subject"] == "①見積書の送付（㈱髙橋商事）"
    assert headers["From"] == "佐藤 花子 <hanako@vendor.example.com>"
    assert shown.row["client_address"] == "192.0.2.7" and shown.row["helo"] == "mx.vendor.example.com"

    exported = q.export(parse_ref(zip_part["hold_id"]), "/tmp/x.zip")
    assert exported.data == archive and exported.filename == "見積書.zip"
    whole = q.export(HoldRef(view.queue_id), "/tmp/x.eml")
    assert whole.data == raw
    assert q.held_bytes(shown, "0").data == raw  # hold id /0: the whole original
    events = [r for r in read_records(gateway.audit.path) if r["event"] == "exported"]
    assert [e["hold_id"] for e in events] == [zip_part["hold_id"], None]
    assert events[0]["sha256"] == hashlib.sha256(archive).hexdigest() and events[0]["os_user"]


def test_find_filters(gateway: Gateway) -> None:
    raw, _ = ppap_mail()
    early = gateway.ingest(raw, received_at="2026-11-01T00:00:00.000Z")
    late = gateway.ingest(
        mail(
            [("setup.exe", EXE, "application/octet-stream")],
            sender="x@partner.example.jp",
            sender_name="鈴木",
        ),
        rcpts=(f"hanako@{CITY}",),
        received_at="2026-11-20T00:00:00.000Z",
    )
    q = quarantine_of(gateway)
    ids = lambda views: [v.queue_id for v in views]  # noqa: E731
    assert ids(q.find()) == [late["queue_id"], early["queue_id"]]  # newest first
    assert ids(q.find(since="2026-11-10T00:00:00.000Z")) == [late["queue_id"]]
    assert ids(q.find(sender="PARTNER.example")) == [late["queue_id"]]
    assert ids(q.find(sender="佐藤")) == [early["queue_id"]]  # the decoded header From counts too
    assert ids(q.find(recipient="hanako@")) == [late["queue_id"]]
    assert ids(q.find(reason="encrypted")) == [early["queue_id"]]
    assert ids(q.find(reason="%")) == []  # LIKE wildcards are literal
    assert ids(q.find(limit=1)) == [late["queue_id"]]


def test_unknown_ids_are_not_found(gateway: Gateway) -> None:
    report = gateway.ingest(ppap_mail()[0])
    q = quarantine_of(gateway)
    with pytest.raises(NotFoundError):
        q.get(HoldRef(new_queue_id()))
    with pytest.raises(NotFoundError):
        q.get(HoldRef(report["queue_id"], "7"))


def test_a_member_held_inside_a_repacked_zip_is_exported_from_the_archive(gateway: Gateway) -> None:
    archive = zip_of([("説明.txt", "中身です\n".encode()), ("tools/setup.exe", EXE)])
    report = gateway.ingest(mail([("資料.zip", archive, "application/zip")]))
    [member] = held(report)
    assert ":" in member["part_id"]  # "2:tools/setup.exe"
    q = quarantine_of(gateway)
    item = q.export(parse_ref(f"{report['queue_id']}/{member['part_id']}"), "-")
    assert item.data == EXE and item.filename == member["filename"]


# -- release ----------------------------------------------------------------------------------------


def released_mail(spool: Spool, release_id: str) -> EmailMessage:
    data = (spool.released / f"{release_id}.eml").read_bytes()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def test_release_queues_the_original_part_and_records_the_exception(gateway: Gateway) -> None:
    raw, archive = ppap_mail()
    report = gateway.ingest(raw)
    [part] = held(report)
    hold_id = f"{report['queue_id']}/{part['part_id']}"
    q = quarantine_of(gateway)
    result = q.release(parse_ref(hold_id), reason="送信者に電話で確認済み", approved_by="情報政策課 山田")

    spool = Spool(gateway.config.state_path("spool"))
    state = json.loads((spool.released / f"{result.release_id}.json").read_text())
    assert state["mail_from"] == "hanako@vendor.example.com"
    assert state["recipients"][TARO]["status"] == "pending"
    msg = released_mail(spool, result.release_id)
    assert msg["Subject"] == "【例外措置】①見積書の送付（㈱髙橋商事）"
    assert msg["X-Detox-Release"] == hold_id and msg["X-Detox-Id"] == result.release_id
    assert msg["In-Reply-To"] == "<ppap@vendor.example.com>"
    body = msg.get_body(("plain",))
    assert body is not None
    note = body.get_content()
    expected = (
        "例外措置",
        hold_id,
        "情報政策課 山田",
        "送信者に電話で確認済み",
        "見積書.zip",
        result.release_id,
    )
    for text in expected:
        assert text in note
    [attached] = list(msg.iter_attachments())
    assert attached.get_filename() == "見積書.zip" and attached.get_content() == archive

    [record] = [r for r in read_records(gateway.audit.path) if r["event"] == "released"]
    assert record["queue_id"] == report["queue_id"] and record["release_id"] == result.release_id
    assert record["approved_by"] == "情報政策課 山田" and record["reason"] == "送信者に電話で確認済み"
    assert record["parts"][0]["sha256"] == hashlib.sha256(archive).hexdigest()
    assert record["recipients"] == [TARO] and record["second_approver"] is None
    assert verify(gateway.audit.path)[0]
    [row] = q.get(HoldRef(report["queue_id"])).releases
    assert row["release_id"] == result.release_id


def test_release_of_a_queue_id_takes_every_held_part_and_to_overrides(gateway: Gateway) -> None:
    raw = mail([("a.zip", ppap_mail()[1], "application/zip"), ("b.exe", EXE, "application/octet-stream")])
    report = gateway.ingest(raw)
    assert len(held(report)) == 2
    q = quarantine_of(gateway)
    other = f"jiro@{CITY}"
    result = q.release(HoldRef(report["queue_id"]), reason="r", approved_by="山田", to=[f"次郎 <{other}>"])
    assert result.recipients == (other,)
    assert sorted(p.filename for p in result.parts) == ["a.zip", "b.exe"]
    with pytest.raises(RefusedError, match="accepted_domains"):
        q.release(HoldRef(report["queue_id"]), reason="r", approved_by="山田", to=["x@evil.example"])


def test_release_refuses_parts_that_were_not_held(gateway: Gateway) -> None:
    report = gateway.ingest(ppap_mail()[0])
    body = next(p for p in report["parts"] if p["role"] == "body")
    q = quarantine_of(gateway)
    with pytest.raises(RefusedError, match="not held"):
        q.release(HoldRef(report["queue_id"], body["part_id"]), reason="r", approved_by="山田")
    clean = gateway.ingest(mail([]))
    with pytest.raises(RefusedError, match="nothing is held"):
        q.release(HoldRef(clean["queue_id"]), reason="r", approved_by="山田")
    with pytest.raises(RefusedError):
        q.release(HoldRef(report["queue_id"]), reason=" ", approved_by="山田")


def test_two_person_rule(gateway: Gateway) -> None:
    report = gateway.ingest(ppap_mail()[0])
    [part] = held(report)
    ref = HoldRef(report["queue_id"], part["part_id"])
    q = quarantine_of(gateway, two_person_rule=True)
    with pytest.raises(RefusedError, match="approve"):
        q.release(ref, reason="r", approved_by="山田")
    q.approve(ref, "Ｙａｍａｄａ")  # the same person, written in full-width letters
    with pytest.raises(RefusedError, match="someone other than"):
        q.release(ref, reason="r", approved_by="yamada")
    q.approve(HoldRef(report["queue_id"]), "佐藤")  # a whole-message approval covers the part
    result = q.release(ref, reason="r", approved_by="yamada")
    assert result.second_approver == "佐藤"
    # the approval is used up: a second release needs a new one
    with pytest.raises(RefusedError):
        q.release(ref, reason="again", approved_by="yamada")
    records = read_records(gateway.audit.path)
    assert [r["approved_by"] for r in records if r["event"] == "approved"] == ["Ｙａｍａｄａ", "佐藤"]
    [released] = [r for r in records if r["event"] == "released"]
    assert released["second_approver"] == "佐藤" and released["two_person_rule"] is True
    # nothing was queued by the refused attempts
    assert len(list(Spool(gateway.config.state_path("spool")).released.glob("*.json"))) == 1


def test_spool_adoption_moves_a_release_to_outgoing(gateway: Gateway) -> None:
    report = gateway.ingest(ppap_mail()[0])
    result = quarantine_of(gateway).release(HoldRef(report["queue_id"]), reason="r", approved_by="山田")
    spool = Spool(gateway.config.state_path("spool"))
    assert spool.adopt_released() == [result.release_id]
    assert spool.outgoing_ids() == [result.release_id]
    assert spool.read_state(result.release_id).pending() == [TARO]
    assert b"X-Detox-Release" in spool.read_output(result.release_id)
    assert spool.adopt_released() == []


# -- delete / purge ---------------------------------------------------------------------------------


def test_delete_and_purge_remove_files_and_rows(gateway: Gateway) -> None:
    old = gateway.ingest(ppap_mail(subject="古い")[0], received_at="2020-01-01T00:00:00.000Z")
    new = gateway.ingest(ppap_mail(subject="新しい")[0], received_at="2099-01-01T00:00:00.000Z")
    gone = gateway.ingest(mail([("x.exe", EXE, "application/octet-stream")]))
    q = quarantine_of(gateway)
    path_of = lambda r: q.store.path_for(r["message"]["sha256"])  # noqa: E731
    assert all(path_of(r).exists() for r in (old, new, gone))

    q.delete(HoldRef(gone["queue_id"]), reason="誤送信の申し出")
    assert not path_of(gone).exists() and q.store.message(gone["queue_id"]) is None
    assert q.store.parts(gone["queue_id"]) == []

    assert q.purge(30) == [old["queue_id"]]
    assert not path_of(old).exists() and q.store.parts(old["queue_id"]) == []
    assert path_of(new).exists() and q.store.message(new["queue_id"]) is not None
    records = read_records(gateway.audit.path)
    [deleted] = [r for r in records if r["event"] == "deleted"]
    assert deleted["queue_id"] == gone["queue_id"] and deleted["reason"] == "誤送信の申し出"
    [purged] = [r for r in records if r["event"] == "purged"]
    assert purged["queue_ids"] == [old["queue_id"]] and purged["older_than_days"] == 30
    with pytest.raises(NotFoundError):
        q.delete(HoldRef(gone["queue_id"]))


def test_an_index_from_before_the_quarantine_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "detox.db")
    db.executescript(
        "CREATE TABLE messages (queue_id TEXT PRIMARY KEY, received_at TEXT NOT NULL,"
        " mail_from TEXT NOT NULL, rcpt_tos TEXT NOT NULL, header_from TEXT, subject TEXT,"
        " message_id TEXT, sha256 TEXT NOT NULL,"
        " size INTEGER NOT NULL, actions TEXT NOT NULL, expires_at REAL NOT NULL);"
        "INSERT INTO messages VALUES ('Q', '2026-01-01T00:00:00.000Z', 'a@b', '[]', NULL, NULL, NULL, 'x', 1,"
        " '', 0);"
    )
    db.close()
    store = Store(tmp_path, fsync=False)
    row = store.message("Q")
    assert row is not None and row["client_address"] is None
    assert store.approvals("Q") == [] and store.releases("Q") == []
    store.close()


def test_a_release_that_cannot_be_queued_is_recorded_as_failed(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = gateway.ingest(ppap_mail()[0])

    def broken(self: Spool, state: object) -> None:
        raise SpoolError("disk full")

    monkeypatch.setattr(Spool, "commit_release", broken)
    q = quarantine_of(gateway)
    with pytest.raises(SpoolError):
        q.release(HoldRef(report["queue_id"]), reason="r", approved_by="山田")
    records = read_records(gateway.audit.path)
    released = next(r for r in records if r["event"] == "released")
    failed = next(r for r in records if r["event"] == "failed")
    assert failed["queue_id"] == released["release_id"] and failed["stage"] == "release"
    assert list(Spool(gateway.config.state_path("spool")).released.iterdir()) == []
    assert q.get(HoldRef(report["queue_id"])).releases == []
