"""The quarantine read: hold ids, the index's view of a message, and a held part's bytes.

Nothing is copied at hold time: the whole original is kept in ``originals/`` and the index
(``detox.db``, :mod:`detox.quarantine.store`) records every part's decision. A held part is named by
its 保管番号 (hold id) ``QUEUE_ID/PART_ID``; ``QUEUE_ID`` alone means every held part of the message
and ``QUEUE_ID/0`` the whole original message. :class:`Holds` finds messages, shows one and takes a
part's bytes out of the original (by the recorded hash: :mod:`detox.quarantine.extract`), checked
against the index.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from detox.audit import AuditLog
from detox.audit.events import Actor
from detox.config.schema import DetoxConfig
from detox.errors import NotFoundError, RefusedError, StoreError
from detox.pipeline.parse import parse_message
from detox.quarantine.extract import archive_entries, find_bytes
from detox.quarantine.store import Store
from detox.spool import valid_queue_id
from detox.text.headers import decode_header_value
from detox.untrusted import for_log

WHOLE_MESSAGE = "0"
MEMBER_SEPARATOR = ":"  # archive member ids: "<archive part id>:<path in the archive>"


# -- ids and actors ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HoldRef:
    """What an admin named: a queue id, or a hold id ``QUEUE_ID/PART_ID``."""

    queue_id: str
    part_id: str | None = None  # None: every held part; "0": the whole original

    def __str__(self) -> str:
        return self.queue_id if self.part_id is None else f"{self.queue_id}/{self.part_id}"


def parse_ref(value: str) -> HoldRef:
    """``1A2142AA7ED8478F55C1`` or ``1A2142AA7ED8478F55C1/2`` (as quoted in the notice)."""
    queue_id, sep, part_id = value.strip().partition("/")
    queue_id = queue_id.upper()
    if not valid_queue_id(queue_id) or (sep and not part_id):
        raise RefusedError(
            f"not a queue id or hold id: {for_log(value, 80)} (expected QUEUE_ID or QUEUE_ID/PART)"
        )
    return HoldRef(queue_id, part_id if sep else None)


def actor() -> dict[str, str]:
    """Who ran the command on this machine, as audit fields (names given are not proof).

    For callers that still write untyped records; events take :meth:`Actor.current`.
    """
    return Actor.current().as_dict()


def local_time(rfc3339: str | None) -> str:
    """An RFC 3339 UTC time as the admin's local time, e.g. ``2026-11-25 19:24:31``."""
    if not rfc3339:
        return "-"
    try:
        return datetime.fromisoformat(rfc3339).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return rfc3339


# -- views --------------------------------------------------------------------------------------


@dataclass(slots=True)
class MessageView:
    """One message of the index, with its parts (and, from ``get``, its history)."""

    row: sqlite3.Row
    parts: list[sqlite3.Row]
    approvals: list[sqlite3.Row] = field(default_factory=list)
    releases: list[sqlite3.Row] = field(default_factory=list)

    @property
    def queue_id(self) -> str:
        return str(self.row["queue_id"])

    @property
    def recipients(self) -> list[str]:
        return [str(r) for r in json.loads(self.row["rcpt_tos"])]

    @property
    def held(self) -> list[sqlite3.Row]:
        return [p for p in self.parts if p["action"] == "hold"]

    def part(self, part_id: str) -> sqlite3.Row | None:
        return next((p for p in self.parts if p["part_id"] == part_id), None)

    def as_json(self, *, history: bool = False) -> dict[str, Any]:
        row = self.row
        data: dict[str, Any] = {
            "id": self.queue_id,
            "received_at": row["received_at"],
            "from": row["mail_from"],
            "to": self.recipients,
            "header_from": row["header_from"],
            "subject": row["subject"],
            "message_id": row["message_id"],
            "client_address": row["client_address"],
            "helo": row["helo"],
            **({"authentication": json.loads(row["auth"])} if row["auth"] else {}),
            "size": row["size"],
            "sha256": row["sha256"],
            "actions": row["actions"],
            "expires_at": datetime.fromtimestamp(row["expires_at"])
            .astimezone()
            .isoformat(timespec="seconds"),
            "parts": [
                {
                    "part_id": p["part_id"],
                    "hold_id": f"{self.queue_id}/{p['part_id']}",
                    "role": p["role"],
                    "name": p["filename"],
                    "type": p["detected_type"],
                    "declared_type": p["declared_type"],
                    "size": p["size"],
                    "sha256": p["sha256"],
                    "filter": p["filter"],
                    "action": p["action"],
                    "reason": p["reason"],
                    **({"virus": p["virus"]} if p["virus"] else {}),
                }
                for p in self.parts
            ],
        }
        if history:
            data["approvals"] = [
                {k: a[k] for k in ("part_id", "approved_by", "approved_at", "os_user", "release_id")}
                for a in self.approvals
            ]
            data["releases"] = [
                {
                    "release_id": r["release_id"],
                    "part_ids": json.loads(r["part_ids"]),
                    "approved_by": r["approved_by"],
                    "second_approver": r["second_approver"],
                    "reason": r["reason"],
                    "recipients": json.loads(r["recipients"]),
                    "released_at": r["released_at"],
                    "os_user": r["os_user"],
                }
                for r in self.releases
            ]
        return data


@dataclass(frozen=True, slots=True)
class HeldBytes:
    """A held part as it arrived (transfer-decoded), ready to export or attach."""

    part_id: str
    filename: str
    content_type: str
    data: bytes
    sha256: str


# -- reading the quarantine ------------------------------------------------------------------


class Holds:
    """The quarantine read: messages found in the index, one shown, a held part's bytes taken out."""

    def __init__(self, config: DetoxConfig) -> None:
        self.config = config
        state = config.state_path()
        if not (state / "detox.db").exists():
            raise NotFoundError(f"no detox index at {state / 'detox.db'} (is --config the one serve uses?)")
        self.store = Store(state, fsync=config.storage.fsync)
        self.audit = AuditLog.from_config(config)

    def close(self) -> None:
        self.store.close()

    def find(
        self,
        *,
        since: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        reason: str | None = None,
        held_only: bool = True,
        limit: int = 0,
        auth: Sequence[tuple[str, str]] = (),
    ) -> list[MessageView]:
        rows = self.store.find_messages(
            since=since,
            sender=sender,
            recipient=recipient,
            reason=reason,
            held_only=held_only,
            limit=limit,
            auth=auth,
        )
        return [MessageView(row, list(self.store.parts(row["queue_id"]))) for row in rows]

    def get(self, ref: HoldRef) -> MessageView:
        row = self.store.message(ref.queue_id)
        if row is None:
            raise NotFoundError(
                f"{ref.queue_id}: no such message in the quarantine (purged, or never indexed)"
            )
        view = MessageView(
            row,
            list(self.store.parts(ref.queue_id)),
            self.store.approvals(ref.queue_id),
            self.store.releases(ref.queue_id),
        )
        if ref.part_id not in (None, WHOLE_MESSAGE) and view.part(ref.part_id) is None:
            raise NotFoundError(f"{ref}: message {ref.queue_id} has no part {for_log(ref.part_id, 80)}")
        return view

    def original(self, view: MessageView) -> bytes:
        try:
            return self.store.read_original(view.row["sha256"])
        except StoreError as exc:
            raise NotFoundError(f"{view.queue_id}: the original file is gone ({exc})") from exc

    def headers(self, view: MessageView) -> list[tuple[str, str]]:
        """The original's header fields, decoded (RFC 2047, 8-bit Japanese) and safe to print."""
        msg = parse_message(self.original(view))
        return [(for_log(k, 80), for_log(decode_header_value(str(v)), 2000)) for k, v in msg.raw_items()]

    def held_bytes(self, view: MessageView, part_id: str) -> HeldBytes:
        """The bytes of one part (or ``0``: the whole original), checked against the index."""
        raw = self.original(view)
        whole_record = view.part(WHOLE_MESSAGE) if part_id == WHOLE_MESSAGE else None
        # Part 0 is the whole original: asked for as such, or held whole by sender authentication
        # (role "message": detox.inbound), whose record must name these very bytes.
        if part_id == WHOLE_MESSAGE and (whole_record is None or whole_record["role"] == "message"):
            sha = hashlib.sha256(raw).hexdigest()
            if whole_record is not None and whole_record["sha256"] != sha:
                raise StoreError(
                    f"{view.queue_id}/0: the original is not the message held (index and file disagree)"
                )
            return HeldBytes(WHOLE_MESSAGE, f"{view.queue_id}.eml", "message/rfc822", raw, sha)
        record = view.part(part_id)
        if record is None:
            raise NotFoundError(f"{view.queue_id}/{part_id}: no such part")
        base, _, member_path = part_id.partition(MEMBER_SEPARATOR)
        top = view.part(base)
        if top is None:
            raise NotFoundError(f"{view.queue_id}/{base}: no such part")
        found = find_bytes(raw, top["sha256"])
        if found is None:
            raise StoreError(
                f"{view.queue_id}/{base}: its bytes are not in the original (index and file disagree)"
            )
        data, whole = found
        if member_path:
            data = self._member_bytes(view, part_id, data)
            whole = False
        safe_id = part_id.replace("/", "_").replace(MEMBER_SEPARATOR, "_")
        if whole:  # a held subtree (encrypted, too deep, unparsable): a MIME entity with its headers
            return HeldBytes(
                part_id, f"{view.queue_id}-{safe_id}.eml", "application/octet-stream", data, record["sha256"]
            )
        name = record["filename"] or f"{view.queue_id}-{safe_id}.bin"
        return HeldBytes(part_id, name, record["declared_type"], data, record["sha256"])

    def _member_bytes(self, view: MessageView, part_id: str, data: bytes) -> bytes:
        """Walk down nested archives by the recorded hashes (zip and tar; others are refused)."""
        segments = part_id.split(MEMBER_SEPARATOR)
        for depth in range(1, len(segments)):
            wanted = view.part(MEMBER_SEPARATOR.join(segments[: depth + 1]))
            if wanted is None:
                raise NotFoundError(f"{view.queue_id}/{part_id}: the index has no record of its archive")
            match = next(
                (m for m in archive_entries(data) if hashlib.sha256(m).hexdigest() == wanted["sha256"]), None
            )
            if match is None:
                archive = MEMBER_SEPARATOR.join(segments[:depth])
                raise RefusedError(
                    f"{view.queue_id}/{part_id}: cannot take this member out of its archive "
                    f"(only zip and tar are opened here); release {view.queue_id}/{archive} instead"
                )
            data = match
        return data
