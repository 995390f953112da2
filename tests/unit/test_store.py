"""Originals (content-addressed) and the SQLite index, with retention."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from detox.envelope import Envelope
from detox.pipeline.report import MessageInfo, MessageReport, PartReport
from detox.quarantine.store import Store


def report(queue_id: str, raw: bytes) -> MessageReport:
    return MessageReport(
        queue_id=queue_id,
        envelope=Envelope(
            queue_id=queue_id,
            received_at="2026-11-25T00:00:00Z",
            mail_from="a@example.jp",
            rcpt_tos=("taro@city.example.lg.jp",),
        ),
        message=MessageInfo(
            header_from="山田 <a@example.jp>",
            to=None,
            subject="①㈱髙",
            message_id="<x@y>",
            sha256=hashlib.sha256(raw).hexdigest(),
            size=len(raw),
            defects=(),
        ),
        actions="text-converted; attachments-held=1",
        parts=(
            PartReport(
                part_id="2",
                role="attachment",
                filename="請求書.pdf",
                declared_type="application/pdf",
                detected_type="application/pdf",
                size=10,
                sha256="0" * 64,
                filter="-",
                action="hold",
                reason="unsupported-type",
                removed={},
                output_sha256=None,
                charset=None,
                error=None,
                mismatch=None,
                output_filename=None,
                output_type=None,
                conversion="",
            ),
        ),
        urls_defanged=0,
        output_sha256="1" * 64,
        output_size=0,
    )


def test_originals_are_content_addressed_and_indexed(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync=False)
    raw = "Subject: x\r\n\r\n本文\r\n".encode()
    sha = hashlib.sha256(raw).hexdigest()
    path = store.put_original(sha, raw)
    assert path == tmp_path / "originals" / sha[:2] / f"{sha}.eml"
    assert store.put_original(sha, raw) == path  # idempotent
    assert store.read_original(sha) == raw
    store.index(report("Q1", raw), retention_days=90)
    store.index(report("Q1", raw), retention_days=90)  # a re-run replaces, never duplicates
    row = store.message("Q1")
    assert row is not None and row["subject"] == "①㈱髙"
    assert [p["filename"] for p in store.parts("Q1")] == ["請求書.pdf"]


def test_purge_removes_expired_rows_and_unreferenced_files(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync=False)
    old, shared = b"old message", b"same bytes twice"
    for raw in (old, shared):
        store.put_original(hashlib.sha256(raw).hexdigest(), raw)
    store.index(report("OLD", old), retention_days=1)
    store.index(report("SHARED-OLD", shared), retention_days=1)
    store.index(report("SHARED-NEW", shared), retention_days=90)
    purged = store.purge_expired(now=time.time() + 2 * 86400)
    assert purged == 2
    assert store.message("OLD") is None and store.parts("OLD") == []
    assert not store.path_for(hashlib.sha256(old).hexdigest()).exists()
    # still referenced by a message inside its retention period: kept
    assert store.path_for(hashlib.sha256(shared).hexdigest()).exists()
    assert store.message("SHARED-NEW") is not None
