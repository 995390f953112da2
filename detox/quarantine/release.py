"""Approvals and releases (例外措置): the two-person rule, and the released mail composed and queued.

A release is a deliberate exception: it bypasses the filters, so it is recorded before it takes
effect. The released mail is a new message — a Japanese cover note naming the approver, the reason
and the hold ids, with the held part(s) attached as they arrived — written to ``spool/released/``;
``serve`` moves it to ``spool/outgoing/`` and delivers it like any other message (queued on disk,
retried, restart-safe). With ``quarantine.two_person_rule`` a release needs an earlier approval by a
second admin (``detox quarantine approve``), which the release then uses up.

Composing the released mail (:meth:`Releases._compose`) is a candidate for a module of its own
when the portal issue adds its reader.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import sqlite3
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from string import Template

from detox.audit import now_rfc3339
from detox.audit.events import Actor, Approved, Released, ReleasedPart, ReleaseFailed
from detox.errors import RefusedError
from detox.notice import human_size
from detox.pipeline.compose import serialize, set_header
from detox.quarantine.holds import WHOLE_MESSAGE, HeldBytes, HoldRef, Holds, MessageView, local_time
from detox.spool import DeliveryState, RecipientState, Spool, new_queue_id
from detox.untrusted import for_log


def _same_person(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        return "".join(unicodedata.normalize("NFKC", name).casefold().split())

    return norm(a) == norm(b)


def _clean(text: str | None) -> str:
    """Untrusted header text for a mail we compose: one line, no control characters."""
    return " ".join(for_log(text or "", 500).split())


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    release_id: str
    queue_id: str
    parts: tuple[HeldBytes, ...]
    recipients: tuple[str, ...]
    approved_by: str
    second_approver: str | None
    earlier_releases: tuple[str, ...]


class Releases(Holds):
    """The quarantine with approvals and releases: reading (:class:`Holds`) and the exception to it."""

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
