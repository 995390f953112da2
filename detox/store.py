"""Originals kept on the Internet side: content-addressed files plus a SQLite index.

Files live at ``<state_dir>/originals/ab/<sha256>.eml``; the same bytes are stored once however
often they arrive. The index (``<state_dir>/detox.db``, WAL mode) lists every message and every
part decision, so the quarantine CLI and a running ``serve`` can share it.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from detox.errors import StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    queue_id     TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL,
    mail_from    TEXT NOT NULL,
    rcpt_tos     TEXT NOT NULL,          -- JSON list
    header_from  TEXT,
    subject      TEXT,
    message_id   TEXT,
    sha256       TEXT NOT NULL,          -- the original's file in originals/
    size         INTEGER NOT NULL,
    actions      TEXT NOT NULL,
    expires_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_received ON messages(received_at);
CREATE INDEX IF NOT EXISTS messages_sha ON messages(sha256);
CREATE TABLE IF NOT EXISTS parts (
    queue_id       TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
    part_id        TEXT NOT NULL,
    role           TEXT NOT NULL,
    filename       TEXT,
    declared_type  TEXT NOT NULL,
    detected_type  TEXT NOT NULL,
    size           INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    filter         TEXT NOT NULL,
    action         TEXT NOT NULL,
    reason         TEXT NOT NULL,
    removed        TEXT NOT NULL,        -- JSON object
    output_sha256  TEXT,
    PRIMARY KEY (queue_id, part_id)
);
CREATE INDEX IF NOT EXISTS parts_action ON parts(action);
"""


class Store:
    def __init__(self, state_dir: Path, *, fsync: bool = True) -> None:
        self.originals = state_dir / "originals"
        self.db_path = state_dir / "detox.db"
        self.tmp = state_dir / "originals" / "tmp"
        self.fsync = fsync
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = None
        # One connection shared by the service's threads; sqlite3 needs us to serialise them.
        self._lock = threading.RLock()

    # -- files ------------------------------------------------------------------------------

    def path_for(self, sha256: str) -> Path:
        return self.originals / sha256[:2] / f"{sha256}.eml"

    def put_original(self, sha256: str, raw: bytes) -> Path:
        """Store the raw message under its hash (idempotent; safe from several processes)."""
        target = self.path_for(sha256)
        if target.exists():
            return target
        target.parent.mkdir(exist_ok=True)
        tmp = self.tmp / f"{sha256}.{secrets.token_hex(4)}"
        try:
            with open(tmp, "xb") as fh:
                fh.write(raw)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
            if self.fsync:
                fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot store original {sha256[:12]}: {exc.strerror}") from exc
        return target

    def read_original(self, sha256: str) -> bytes:
        try:
            return self.path_for(sha256).read_bytes()
        except OSError as exc:
            raise StoreError(f"original {sha256[:12]} unreadable: {exc.strerror}") from exc

    # -- index ------------------------------------------------------------------------------

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=30000")
            db.executescript(SCHEMA)
            db.row_factory = sqlite3.Row
            self._db = db
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def index(self, report: dict[str, Any], retention_days: int) -> None:
        """Record a detoxified message and every part decision (replaces an earlier run's rows)."""
        env = report["envelope"]
        msg = report["message"]
        expires = time.time() + retention_days * 86400
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE queue_id = ?", (report["queue_id"],))
            db.execute(
                "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    report["queue_id"],
                    env["received_at"],
                    env["mail_from"],
                    json.dumps(env["rcpt_tos"], ensure_ascii=False),
                    msg["from"],
                    msg["subject"],
                    msg["message_id"],
                    msg["sha256"],
                    msg["size"],
                    report["actions"],
                    expires,
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO parts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        report["queue_id"],
                        p["part_id"],
                        p["role"],
                        p["filename"],
                        p["declared_type"],
                        p["detected_type"],
                        p["size"],
                        p["sha256"],
                        p["filter"],
                        p["action"],
                        p["reason"],
                        json.dumps(p["removed"]),
                        p["output_sha256"],
                    )
                    for p in report["parts"]
                ],
            )

    def message(self, queue_id: str) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self.db.execute(
                "SELECT * FROM messages WHERE queue_id = ?", (queue_id,)
            ).fetchone()
        return row

    def parts(self, queue_id: str) -> Sequence[sqlite3.Row]:
        with self._lock:
            return self.db.execute(
                "SELECT * FROM parts WHERE queue_id = ? ORDER BY rowid", (queue_id,)
            ).fetchall()

    def purge_expired(self, now: float | None = None) -> int:
        """Delete index rows past retention and the originals nobody references any more."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            rows = db.execute("SELECT queue_id, sha256 FROM messages WHERE expires_at < ?", (now,)).fetchall()
            db.execute("DELETE FROM messages WHERE expires_at < ?", (now,))
            orphans = [
                r["sha256"]
                for r in rows
                if db.execute("SELECT 1 FROM messages WHERE sha256 = ? LIMIT 1", (r["sha256"],)).fetchone()
                is None
            ]
        for sha in orphans:
            self.path_for(sha).unlink(missing_ok=True)
        return len(rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
