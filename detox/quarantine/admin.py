"""The quarantine as the admin's commands drive it: :class:`Quarantine` is reading and releasing
(:mod:`detox.quarantine.holds`, :mod:`detox.quarantine.release`) plus what takes an original out of
the quarantine — as a copy (``export``) or for good (``delete``, ``purge``) — each recorded in the
audit log with who ran it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from detox.audit import to_rfc3339
from detox.audit.events import Actor, Deleted, Exported, Purged
from detox.quarantine.holds import HeldBytes, HoldRef
from detox.quarantine.release import Releases


class Quarantine(Releases):
    """The quarantine as ``detox quarantine`` drives it: find, show, approve, release, export, delete."""

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
