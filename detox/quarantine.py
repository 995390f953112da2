"""The quarantine: held originals on the Internet side, found, shown, exported and released.

Nothing is copied at hold time: the whole original is kept in ``originals/`` and the index
(``detox.db``) records every part's decision. A held part is named by its 保管番号 (hold id)
``QUEUE_ID/PART_ID``; ``QUEUE_ID`` alone means every held part of the message and ``QUEUE_ID/0`` the
whole original message.

A release is a deliberate exception (例外措置): it bypasses the filters, so it is recorded before it
takes effect. The released mail is a new message — a Japanese cover note naming the approver, the
reason and the hold ids, with the held part(s) attached as they arrived — written to
``spool/released/``; ``serve`` moves it to ``spool/outgoing/`` and delivers it like any other
message (queued on disk, retried, restart-safe).

Over 500 lines, not split yet: finding a held part's bytes (by hash, through archives) and
composing the released mail are candidates for modules of their own when the portal issue adds
its reader; the rest is the admin's one workflow (find, show, approve, release, delete).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import json
import sqlite3
import tarfile
import time
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from string import Template
from typing import Any

from detox.audit import AuditLog, now_rfc3339, to_rfc3339
from detox.audit_events import (
    Actor,
    Approved,
    Deleted,
    Exported,
    Purged,
    Released,
    ReleasedPart,
    ReleaseFailed,
)
from detox.config.schema import DetoxConfig
from detox.errors import NotFoundError, RefusedError, StoreError
from detox.notice import human_size
from detox.pipeline.compose import serialize, set_header
from detox.pipeline.parse import decode_encapsulated, parse_message
from detox.spool import DeliveryState, RecipientState, Spool, new_queue_id, valid_queue_id
from detox.store import Store
from detox.text.headers import decode_header_value
from detox.untrusted import for_log

WHOLE_MESSAGE = "0"
MEMBER_SEPARATOR = ":"  # archive member ids: "<archive part id>:<path in the archive>"
_MAX_MEMBER_BYTES = 512 * 1024 * 1024


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


def _same_person(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        return "".join(unicodedata.normalize("NFKC", name).casefold().split())

    return norm(a) == norm(b)


def local_time(rfc3339: str | None) -> str:
    """An RFC 3339 UTC time as the admin's local time, e.g. ``2026-11-25 19:24:31``."""
    if not rfc3339:
        return "-"
    try:
        return datetime.fromisoformat(rfc3339).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return rfc3339


def _clean(text: str | None) -> str:
    """Untrusted header text for a mail we compose: one line, no control characters."""
    return " ".join(for_log(text or "", 500).split())


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


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    release_id: str
    queue_id: str
    parts: tuple[HeldBytes, ...]
    recipients: tuple[str, ...]
    approved_by: str
    second_approver: str | None
    earlier_releases: tuple[str, ...]


# -- finding a part's bytes in the original ------------------------------------------------------


def _nodes(msg: Message, depth: int = 0) -> Iterator[Message]:
    """Every node of the tree, also inside transfer-encoded message/rfc822 (as the pipeline reads it)."""
    if depth > 200:
        return
    yield msg
    payload = msg.get_payload()
    if isinstance(payload, list):
        for child in payload:
            if not isinstance(child, Message):
                continue
            if msg.get_content_type() == "message/rfc822":
                cte = str(msg.get("Content-Transfer-Encoding", "")).strip().lower()
                if cte in ("base64", "quoted-printable"):
                    try:
                        child = decode_encapsulated(child, cte)
                    except Exception:  # noqa: BLE001, S112 - undecodable: its raw form is searched instead
                        continue
            yield from _nodes(child, depth + 1)


def _candidates(node: Message) -> Iterator[tuple[bytes, bool]]:
    """The byte forms a part record may have hashed: (data, is_whole_subtree)."""
    if not node.is_multipart():
        try:
            decoded = node.get_payload(decode=True)
        except Exception:  # noqa: BLE001 - a broken payload: only its serialised form can match
            decoded = None
        if isinstance(decoded, bytes):
            yield decoded, False
    try:
        whole = node.as_bytes()
    except Exception:  # noqa: BLE001 - cannot be serialised: nothing to offer
        return
    yield whole, True


def _find_bytes(raw: bytes, sha256: str) -> tuple[bytes, bool] | None:
    # Matching by hash, not by re-walking the pipeline's numbering: the bytes found are then
    # proven to be the very bytes the record describes.
    for node in _nodes(parse_message(raw)):
        for data, whole in _candidates(node):
            if hashlib.sha256(data).hexdigest() == sha256:
                return data, whole
    return None


def _archive_entries(data: bytes) -> Iterator[bytes]:
    """Regular members of a zip or tar archive, size-capped (the members of a held archive)."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if not info.is_dir() and info.file_size <= _MAX_MEMBER_BYTES:
                    with zf.open(info) as fh:
                        yield fh.read(_MAX_MEMBER_BYTES + 1)
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            for member in tf:
                if member.isfile() and member.size <= _MAX_MEMBER_BYTES:
                    extracted = tf.extractfile(member)
                    if extracted is not None:
                        yield extracted.read(_MAX_MEMBER_BYTES + 1)
    except (tarfile.TarError, EOFError, OSError):
        return


# -- the quarantine -----------------------------------------------------------------------------


class Quarantine:
    def __init__(self, config: DetoxConfig) -> None:
        self.config = config
        state = config.state_path()
        if not (state / "detox.db").exists():
            raise NotFoundError(f"no detox index at {state / 'detox.db'} (is --config the one serve uses?)")
        self.store = Store(state, fsync=config.storage.fsync)
        self.audit = AuditLog.from_config(config)

    def close(self) -> None:
        self.store.close()

    # -- reading ------------------------------------------------------------------------------

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
        if part_id == WHOLE_MESSAGE and view.part(WHOLE_MESSAGE) is None:
            sha = hashlib.sha256(raw).hexdigest()
            return HeldBytes(WHOLE_MESSAGE, f"{view.queue_id}.eml", "message/rfc822", raw, sha)
        record = view.part(part_id)
        if record is None:
            raise NotFoundError(f"{view.queue_id}/{part_id}: no such part")
        base, _, member_path = part_id.partition(MEMBER_SEPARATOR)
        top = view.part(base)
        if top is None:
            raise NotFoundError(f"{view.queue_id}/{base}: no such part")
        found = _find_bytes(raw, top["sha256"])
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
                (m for m in _archive_entries(data) if hashlib.sha256(m).hexdigest() == wanted["sha256"]), None
            )
            if match is None:
                archive = MEMBER_SEPARATOR.join(segments[:depth])
                raise RefusedError(
                    f"{view.queue_id}/{part_id}: cannot take this member out of its archive "
                    f"(only zip and tar are opened here); release {view.queue_id}/{archive} instead"
                )
            data = match
        return data

    # -- export -------------------------------------------------------------------------------

    def export(self, ref: HoldRef, output: str) -> HeldBytes:
        """The original .eml (queue id) or one part's bytes (hold id); recorded in the audit log."""
        view = self.get(ref)
        if ref.part_id is None:
            raw = self.original(view)
            item = HeldBytes("", f"{view.queue_id}.eml", "message/rfc822", raw, str(view.row["sha256"]))
        else:
            item = self.held_bytes(view, ref.part_id)
        self.audit.write(
            Exported(
                queue_id=view.queue_id,
                hold_id=str(ref) if ref.part_id is not None else None,
                sha256=item.sha256,
                size=len(item.data),
                output=output,
                actor=Actor.current(),
            )
        )
        return item

    # -- approvals and releases ---------------------------------------------------------------

    def approve(self, ref: HoldRef, by: str) -> None:
        by = by.strip()
        if not by:
            raise RefusedError("--by needs a name")
        view = self.get(ref)
        self._targets(view, ref)  # refuses when there is nothing to release
        at = now_rfc3339()
        who = Actor.current()
        # Audit first: an approval that is not in the audit log must not count.
        self.audit.write(Approved(queue_id=view.queue_id, hold_id=str(ref), approved_by=by, actor=who))
        self.store.add_approval(view.queue_id, ref.part_id or "", by, at, who.os_user)

    def _targets(self, view: MessageView, ref: HoldRef) -> list[str]:
        if ref.part_id is None:
            targets = [p["part_id"] for p in view.held]
            if not targets:
                raise RefusedError(f"{view.queue_id}: nothing is held in this message")
            return targets
        if ref.part_id == WHOLE_MESSAGE:
            return [WHOLE_MESSAGE]
        record = view.part(ref.part_id)
        if record is None or record["action"] != "hold":
            action = record["action"] if record is not None else "-"
            raise RefusedError(
                f"{ref}: this part was not held (action: {action}); only held parts are released"
            )
        return [ref.part_id]

    def _recipients(self, view: MessageView, to: Sequence[str]) -> tuple[str, ...]:
        if not to:
            return tuple(view.recipients)
        accepted = set(self.config.server.accepted_domains)
        for address in to:
            _, parsed = email.utils.parseaddr(address)
            domain = parsed.rpartition("@")[2].lower().rstrip(".")
            if not parsed or "@" not in parsed or domain not in accepted:
                raise RefusedError(
                    f"--to {for_log(address, 120)}: not an address in server.accepted_domains "
                    "(a release only goes to our own users)"
                )
        return tuple(email.utils.parseaddr(a)[1] for a in to)

    def release(
        self, ref: HoldRef, *, reason: str, approved_by: str, to: Sequence[str] = ()
    ) -> ReleaseResult:
        reason, approved_by = reason.strip(), approved_by.strip()
        if not reason or not approved_by:
            raise RefusedError("a release needs --reason and --approved-by")
        view = self.get(ref)
        targets = self._targets(view, ref)
        recipients = self._recipients(view, to)
        parts = tuple(self.held_bytes(view, part_id) for part_id in targets)
        release_id = new_queue_id()
        released_at = now_rfc3339()
        spool = Spool(self.config.state_path("spool"), fsync=self.config.storage.fsync)
        earlier = tuple(str(r["release_id"]) for r in view.releases)
        who = Actor.current()
        with self.store.transaction() as db:
            second: sqlite3.Row | None = None
            if self.config.quarantine.two_person_rule:
                second = self._second_approval(db, view, ref, approved_by)
            data = self._compose(
                view,
                ref,
                parts,
                recipients,
                release_id,
                released_at,
                approved_by,
                second["approved_by"] if second is not None else None,
                reason,
            )
            spool.stage_release(release_id, data)
            recorded = False
            try:
                # Recorded before it can take effect: a release missing from the audit log never happens.
                self.audit.write(
                    Released(
                        queue_id=view.queue_id,
                        release_id=release_id,
                        hold_ids=tuple(f"{view.queue_id}/{p.part_id}" for p in parts),
                        parts=tuple(
                            ReleasedPart(p.part_id, p.filename, p.content_type, len(p.data), p.sha256)
                            for p in parts
                        ),
                        recipients=recipients,
                        mail_from=view.row["mail_from"],
                        approved_by=approved_by,
                        second_approver=second["approved_by"] if second is not None else None,
                        two_person_rule=self.config.quarantine.two_person_rule,
                        reason=reason,
                        original_sha256=view.row["sha256"],
                        release_sha256=hashlib.sha256(data).hexdigest(),
                        actor=who,
                    )
                )
                recorded = True
                db.execute(
                    "INSERT INTO releases (release_id, queue_id, part_ids, approved_by, second_approver,"
                    " reason, recipients, released_at, os_user) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        release_id,
                        view.queue_id,
                        json.dumps(targets),
                        approved_by,
                        second["approved_by"] if second is not None else None,
                        reason,
                        json.dumps(list(recipients), ensure_ascii=False),
                        released_at,
                        who.os_user,
                    ),
                )
                if second is not None:
                    db.execute("UPDATE approvals SET release_id = ? WHERE id = ?", (release_id, second["id"]))
                # Last: the state file hands the release to serve (the index commits right after).
                state = DeliveryState(
                    queue_id=release_id,
                    mail_from=str(view.row["mail_from"]),
                    recipients={r: RecipientState() for r in recipients},
                )
                spool.commit_release(state)
            except BaseException as exc:
                spool.discard_release(release_id)
                if recorded:  # the log said "released": say that it did not happen after all
                    with contextlib.suppress(OSError):
                        self.audit.write(
                            ReleaseFailed(queue_id=release_id, reason=f"{type(exc).__name__}: {exc}")
                        )
                raise
        return ReleaseResult(
            release_id,
            view.queue_id,
            parts,
            recipients,
            approved_by,
            second["approved_by"] if second is not None else None,
            earlier,
        )

    def _second_approval(
        self, db: sqlite3.Connection, view: MessageView, ref: HoldRef, approved_by: str
    ) -> sqlite3.Row:
        """An unused approval covering ``ref`` by someone other than the releasing admin."""
        rows: list[sqlite3.Row] = db.execute(
            "SELECT * FROM approvals WHERE queue_id = ? AND release_id IS NULL ORDER BY id", (view.queue_id,)
        ).fetchall()
        wanted = ref.part_id or ""
        covering = [r for r in rows if r["part_id"] in ("", wanted)]
        for row in covering:
            if not _same_person(row["approved_by"], approved_by):
                return row
        if covering:
            raise RefusedError(
                f"{ref}: the two-person rule needs an approval by someone other than {approved_by} "
                f"(the only approval is by {covering[0]['approved_by']})"
            )
        raise RefusedError(
            f"{ref}: the two-person rule is on: a second admin must first run "
            f"`detox quarantine approve {ref} --by NAME`"
        )

    def _compose(
        self,
        view: MessageView,
        ref: HoldRef,
        parts: Sequence[HeldBytes],
        recipients: Sequence[str],
        release_id: str,
        released_at: str,
        approved_by: str,
        second_approver: str | None,
        reason: str,
    ) -> bytes:
        """The released mail: our cover note, then the held part(s) exactly as they arrived."""
        row = view.row
        qconf = self.config.quarantine
        approvers = (
            approved_by if second_approver is None else f"{approved_by}、{second_approver}（二人目の承認）"
        )
        items = "\n".join(
            f"  ・{_clean(p.filename)}（{human_size(len(p.data))}、SHA-256: {p.sha256}）" for p in parts
        )
        note = Template(qconf.release_note).safe_substitute(
            hold_ids="、".join(f"{view.queue_id}/{p.part_id}" for p in parts),
            approvers=_clean(approvers),
            reason=_clean(reason),
            release_id=release_id,
            released_at=local_time(released_at),
            queue_id=view.queue_id,
            received_at=local_time(row["received_at"]),
            subject=_clean(row["subject"]) or "（件名なし）",
            parts=items,
            **{"from": _clean(row["header_from"] or row["mail_from"])},
        )
        out = EmailMessage()
        host = self.config.server.hostname
        out["Received"] = (
            f"by {host} (detox quarantine release) id {release_id}; "
            f"{email.utils.format_datetime(email.utils.localtime())}"
        )
        set_header(
            out, "From", _clean(row["header_from"]) or _clean(row["mail_from"]) or f"postmaster@{host}"
        )
        set_header(out, "To", ", ".join(recipients))
        set_header(out, "Subject", qconf.release_subject_prefix + _clean(row["subject"]))
        out["Date"] = email.utils.format_datetime(email.utils.localtime())
        out["Message-ID"] = email.utils.make_msgid(idstring=release_id, domain=host)
        if row["message_id"]:
            original_id = _clean(row["message_id"])
            set_header(out, "In-Reply-To", original_id)
            set_header(out, "References", original_id)
        out["X-Detox-Id"] = release_id
        out["X-Detox-Release"] = ", ".join(f"{view.queue_id}/{p.part_id}" for p in parts)
        out["X-Detox-Actions"] = "released"
        out["MIME-Version"] = "1.0"
        out.set_content(note, subtype="plain", charset="utf-8", cte="base64")
        for part in parts:
            maintype, _, subtype = part.content_type.partition("/")
            if maintype in ("multipart", "message") or not subtype:
                maintype, subtype = "application", "octet-stream"
            out.add_attachment(part.data, maintype=maintype, subtype=subtype, filename=part.filename)
        return serialize(out)

    # -- deletion -----------------------------------------------------------------------------

    def delete(self, ref: HoldRef, reason: str | None = None) -> None:
        view = self.get(HoldRef(ref.queue_id))
        self.audit.write(
            Deleted(
                queue_id=view.queue_id,
                original_sha256=view.row["sha256"],
                reason=reason,
                actor=Actor.current(),
            )
        )
        self.store.delete_message(view.queue_id)

    def purge(self, older_than_days: float) -> list[str]:
        received_before = to_rfc3339(datetime.fromtimestamp(time.time() - older_than_days * 86400, UTC))
        queue_ids = self.store.purge_received_before(received_before)
        self.audit.write(
            Purged(
                messages=len(queue_ids),
                queue_ids=tuple(queue_ids),
                older_than_days=older_than_days,
                received_before=received_before,
                actor=Actor.current(),
            )
        )
        return queue_ids
