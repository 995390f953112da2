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
from typing import TYPE_CHECKING, Any

from detox.errors import StoreError

if TYPE_CHECKING:
    from detox.pipeline.report import MessageReport

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
-- Second approvals under the two-person rule; a release uses (consumes) them.
CREATE TABLE IF NOT EXISTS approvals (
    id             INTEGER PRIMARY KEY,
    queue_id       TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
    part_id        TEXT NOT NULL,        -- '' = every held part of the message
    approved_by    TEXT NOT NULL,
    approved_at    TEXT NOT NULL,
    os_user        TEXT NOT NULL,
    release_id     TEXT                  -- the release that used it
);
CREATE TABLE IF NOT EXISTS releases (
    release_id     TEXT PRIMARY KEY,     -- the queue id of the released mail
    queue_id       TEXT NOT NULL REFERENCES messages(queue_id) ON DELETE CASCADE,
    part_ids       TEXT NOT NULL,        -- JSON list
    approved_by    TEXT NOT NULL,
    second_approver TEXT,
    reason         TEXT NOT NULL,
    recipients     TEXT NOT NULL,        -- JSON list
    released_at    TEXT NOT NULL,
    os_user        TEXT NOT NULL
);
"""
# Columns added after the first release, with their type (ALTER TABLE ... ADD COLUMN on open).
_ADDED_COLUMNS = {
    # auth: the sender authentication summary (JSON: spf, dkim, dmarc, arc, action, reason), [inbound] on.
    "messages": {"client_address": "TEXT", "helo": "TEXT", "auth": "TEXT"},
    "parts": {"virus": "TEXT"},  # [antivirus]: the signature clamd named (reason "virus")
}
_INSERT_MESSAGE = (
    "INSERT INTO messages (queue_id, received_at, mail_from, rcpt_tos, header_from, subject, message_id, "
    "sha256, size, actions, expires_at, client_address, helo, auth) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
# What ``find_messages(auth=...)`` may filter on (keys of the summary).
AUTH_KEYS = ("spf", "dkim", "dmarc", "arc", "action", "reason")


def _auth_summary(auth: Any) -> str | None:
    if not auth:
        return None
    summary = dict(auth.get("summary") or {})
    decision = auth.get("decision") or {}
    summary["action"] = decision.get("action", "")
    summary["reason"] = decision.get("reason", "")
    return json.dumps(summary, ensure_ascii=False)


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, case-insensitive for ASCII (escape: backslash)."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


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
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns.items():
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
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

    def index(self, report: MessageReport, retention_days: int) -> None:
        """Record a detoxified message and every part decision (replaces an earlier run's rows)."""
        env = report.envelope
        msg = report.message
        expires = time.time() + retention_days * 86400
        with self.transaction() as db:
            db.execute("DELETE FROM messages WHERE queue_id = ?", (report.queue_id,))
            db.execute(
                _INSERT_MESSAGE,
                (
                    report.queue_id,
                    env.received_at,
                    env.mail_from,
                    json.dumps(list(env.rcpt_tos), ensure_ascii=False),
                    msg.header_from,
                    msg.subject,
                    msg.message_id,
                    msg.sha256,
                    msg.size,
                    report.actions,
                    expires,
                    env.client_address,
                    env.helo,
                    _auth_summary(env.auth),
                ),
            )
            db.executemany(
                "INSERT OR REPLACE INTO parts (queue_id, part_id, role, filename, declared_type, "
                "detected_type, size, sha256, filter, action, reason, removed, output_sha256, virus) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        report.queue_id,
                        p.part_id,
                        p.role,
                        p.filename,
                        p.declared_type,
                        p.detected_type,
                        p.size,
                        p.sha256,
                        p.filter,
                        p.action,
                        p.reason,
                        json.dumps(dict(p.removed)),
                        p.output_sha256,
                        p.virus,
                    )
                    for p in report.parts
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
        return len(self._delete_where("expires_at < ?", (now,)))

    def purge_received_before(self, received_before: str) -> list[str]:
        """Delete messages received before an RFC 3339 UTC time; return their queue ids."""
        return self._delete_where("received_at < ?", (received_before,))

    def delete_message(self, queue_id: str) -> bool:
        return bool(self._delete_where("queue_id = ?", (queue_id,)))

    def _delete_where(self, condition: str, args: tuple[Any, ...]) -> list[str]:
        # Rows go first (in one transaction), files after: a crash in between leaves an
        # unreferenced file, never a row pointing at nothing.
        with self.transaction() as db:
            # ``condition`` is one of this module's constants; values are always bound parameters.
            select = f"SELECT queue_id, sha256 FROM messages WHERE {condition}"  # noqa: S608
            rows = db.execute(select, args).fetchall()
            db.execute(f"DELETE FROM messages WHERE {condition}", args)  # noqa: S608
            orphans = {
                r["sha256"]
                for r in rows
                if db.execute("SELECT 1 FROM messages WHERE sha256 = ? LIMIT 1", (r["sha256"],)).fetchone()
                is None
            }
        for sha in orphans:
            self.path_for(sha).unlink(missing_ok=True)
        return [r["queue_id"] for r in rows]

    # -- quarantine queries -----------------------------------------------------------------

    def find_messages(
        self,
        *,
        since: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        reason: str | None = None,
        held_only: bool = True,
        limit: int = 0,
        auth: Sequence[tuple[str, str]] = (),
    ) -> list[sqlite3.Row]:
        """Messages, newest first. ``since`` is RFC 3339 UTC; the text filters match substrings;
        ``auth``: (key of AUTH_KEYS, exact value) pairs, all of which must hold."""
        where: list[str] = []
        args: list[Any] = []
        for key, value in auth:
            if key not in AUTH_KEYS:
                raise ValueError(f"unknown authentication key {key!r} (one of {', '.join(AUTH_KEYS)})")
            where.append("json_extract(m.auth, ?) = ?")
            args += [f"$.{key}", value.lower()]
        if since:
            where.append("m.received_at >= ?")
            args.append(since)
        if sender:
            where.append(
                r"(lower(m.mail_from) LIKE ? ESCAPE '\'"
                r" OR lower(coalesce(m.header_from, '')) LIKE ? ESCAPE '\')"
            )
            args += [_like(sender), _like(sender)]
        if recipient:
            where.append(r"lower(m.rcpt_tos) LIKE ? ESCAPE '\'")
            args.append(_like(recipient))
        part_conditions = ["p.queue_id = m.queue_id"]
        if held_only:
            part_conditions.append("p.action = 'hold'")
        if reason:
            part_conditions.append(r"lower(p.reason) LIKE ? ESCAPE '\'")
            args.append(_like(reason))
        if held_only or reason:
            # Built from the constant conditions above; every value is a bound parameter.
            where.append(f"EXISTS (SELECT 1 FROM parts p WHERE {' AND '.join(part_conditions)})")  # noqa: S608
        sql = "SELECT * FROM messages m"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY m.received_at DESC, m.queue_id DESC"
        if limit > 0:
            sql += f" LIMIT {int(limit)}"
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def add_approval(
        self, queue_id: str, part_id: str, approved_by: str, approved_at: str, os_user: str
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO approvals (queue_id, part_id, approved_by, approved_at, os_user)"
                " VALUES (?,?,?,?,?)",
                (queue_id, part_id, approved_by, approved_at, os_user),
            )

    def approvals(self, queue_id: str) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(
                "SELECT * FROM approvals WHERE queue_id = ? ORDER BY id", (queue_id,)
            ).fetchall()

    def releases(self, queue_id: str) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(
                "SELECT * FROM releases WHERE queue_id = ? ORDER BY released_at", (queue_id,)
            ).fetchall()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
