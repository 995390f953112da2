"""One typed event per kind of audit record: the fields each record carries, in the order it has them.

An event is a frozen dataclass; :meth:`AuditEvent.record` makes the JSON object that
:class:`detox.audit.AuditLog` chains and writes: ``ts``, ``event``, then the fields in declaration
order (``queue_id`` first where the event has one), ``prev`` last. So mypy sees every field a writer
sets, and a record's bytes depend on the class alone. A field declared with :func:`absent_when`
is left out of the record while it has that value (``bare_lf`` of 0, ``kind`` of an ordinary
message, ``sudo_user`` outside sudo); every other field is always written, ``null`` included.
Who ran an admin command (:class:`Actor`) is written as its own fields, ``os_user`` and
``sudo_user``.

README's "The audit log" tables list the same events and fields; a test checks them against these
classes (tests/unit/test_audit_events.py), so add a field here and there together.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from detox.pipeline.report import AntivirusReport, MessageReport, PartReport

_ABSENT = "detox.audit.events.absent_when"
_NOTHING = object()


def absent_when(value: Any) -> Any:
    """A field's default, and the value at which the record leaves the field out."""
    return field(default=value, metadata={_ABSENT: value})


@dataclass(frozen=True, slots=True)
class Actor:
    """Who ran a command on this machine (names given on the command line are not proof)."""

    os_user: str
    sudo_user: str | None = None  # SUDO_USER, when run under sudo

    @classmethod
    def current(cls) -> Actor:
        return cls(getpass.getuser(), os.environ.get("SUDO_USER") or None)

    def as_dict(self) -> dict[str, str]:
        who = {"os_user": self.os_user}
        if self.sudo_user:
            who["sudo_user"] = self.sudo_user
        return who


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """What the next hop answered for one recipient (``code`` None: no reply, e.g. no connection)."""

    code: int | None
    response: str

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "response": self.response}


@dataclass(frozen=True, slots=True)
class ReleasedPart:
    """One part of a release, as it was attached: its bytes are the original's."""

    part_id: str
    filename: str
    type: str
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "part_id": self.part_id,
            "filename": self.filename,
            "type": self.type,
            "size": self.size,
            "sha256": self.sha256,
        }


_SPECS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _spec(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, value at which it is left out, or _NOTHING) of every field of the event class, in order."""
    spec = _SPECS.get(cls)
    if spec is None:  # once per class (a race computes the same tuple twice: harmless)
        spec = _SPECS[cls] = tuple((f.name, f.metadata.get(_ABSENT, _NOTHING)) for f in fields(cls))
    return spec


def _plain(value: Any) -> Any:
    """A field's value as JSON types (lists, objects), the way the record has always had it."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    as_dict = getattr(value, "as_dict", None)
    return as_dict() if as_dict is not None else value


class AuditEvent:
    """Base of the events; ``event`` is the record's ``event`` value."""

    __slots__ = ()
    event: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """The record's fields after ``ts`` and ``event``, in order, as JSON types."""
        out: dict[str, Any] = {}
        for name, absent in _spec(type(self)):
            value = getattr(self, name)
            if absent is not _NOTHING and value == absent:
                continue
            if isinstance(value, Actor):
                out.update(value.as_dict())
            else:
                out[name] = _plain(value)
        return out

    def record(self, ts: str) -> dict[str, Any]:
        """The record for :meth:`detox.audit.AuditLog.append`, written at ``ts``."""
        return {"ts": ts, "event": self.event, **self.fields()}


# -- SMTP in ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Received(AuditEvent):
    """A message accepted: durably in the spool, the 250 about to be sent."""

    event: ClassVar[str] = "received"

    queue_id: str
    client_address: str
    helo: str  # as sent, control characters escaped
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    sha256: str
    bare_lf: int = absent_when(0)  # lines that ended in a bare LF


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRefused(AuditEvent):
    """One message refused in DATA by a limit (nothing was accepted: no queue id)."""

    event: ClassVar[str] = "refused"

    stage: Literal["data"] = "data"
    limit: str
    reply: str
    client_address: str
    helo: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    size: int
    error: str | None = absent_when(None)  # for limit "spool"
    # limit "inbound.dmarc_reject" / "inbound.spoof": the sender authentication that refused it
    authentication: Mapping[str, Any] | None = absent_when(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRefused(AuditEvent):
    """Sessions or transactions refused by a limit, summarised (at most one a minute per limit)."""

    event: ClassVar[str] = "refused"

    stage: Literal["session"] = "session"
    limit: str
    reply: str
    count: int
    clients: Mapping[str, int]  # {address: count}, the top 20


# -- the pipeline ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Detoxified(AuditEvent):
    """A message through the pipeline: indexed, its clean copy spooled for delivery."""

    event: ClassVar[str] = "detoxified"

    queue_id: str
    original_sha256: str
    size: int
    header_from: str | None
    subject: str | None
    message_id: str | None
    defects: tuple[str, ...]
    parts: tuple[PartReport, ...]
    actions: str
    urls_defanged: int
    output_sha256: str
    antivirus: AntivirusReport | None = absent_when(None)  # noqa: RUF009 - frozen; what clamd found
    # Sender authentication ([inbound]): each method's result, the decision and its reason.
    authentication: Mapping[str, Any] | None = absent_when(None)

    @classmethod
    def of(cls, queue_id: str, report: MessageReport) -> Detoxified:
        msg = report.message
        authentication = None
        if report.envelope.auth is not None:
            from detox.inbound.check import Outcome  # late: only with [inbound] on

            authentication = Outcome.from_json(report.envelope.auth).audit_summary()
        return cls(
            authentication=authentication,
            queue_id=queue_id,
            original_sha256=msg.sha256,
            size=msg.size,
            header_from=msg.header_from,
            subject=msg.subject,
            message_id=msg.message_id,
            defects=msg.defects,
            parts=report.parts,
            actions=report.actions,
            urls_defanged=report.urls_defanged,
            output_sha256=report.output_sha256,
            antivirus=report.antivirus,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineDeferred(AuditEvent):
    """An attempt at detoxifying that failed and will be retried. When the fault was ours (the
    disk, not the message) the attempt does not count: ``counted`` False and no attempt numbers."""

    event: ClassVar[str] = "deferred"

    queue_id: str
    stage: Literal["pipeline"] = "pipeline"
    reason: str
    attempt: int | None = absent_when(None)
    max_attempts: int | None = absent_when(None)
    counted: bool = absent_when(True)
    next_attempt: float
    waiting_for: str | None = absent_when(None)  # "antivirus": clamd could not be reached


@dataclass(frozen=True, slots=True, kw_only=True)
class MovedAside(AuditEvent):
    """A spool entry given up on and moved to spool/failed/ (``queue retry`` puts it back)."""

    event: ClassVar[str] = "failed"

    queue_id: str
    stage: Literal["pipeline", "spool", "delivery"]
    reason: str
    moved_to: Literal["spool/failed"] = "spool/failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Requeued(AuditEvent):
    """An entry put back from spool/failed/ by ``queue retry``."""

    event: ClassVar[str] = "requeued"

    queue_id: str
    stage: str  # "incoming" or "outgoing"


# -- delivery -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered(AuditEvent):
    event: ClassVar[str] = "delivered"

    queue_id: str
    recipients: Mapping[str, RecipientReply]
    kind: str | None = absent_when(None)  # "dsn", "release"; None: a detoxified message


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryDeferred(AuditEvent):
    event: ClassVar[str] = "deferred"

    queue_id: str
    recipients: Mapping[str, RecipientReply]
    next_attempt: float
    attempt: int  # the message's delivery attempts so far
    kind: str | None = absent_when(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryFailed(AuditEvent):
    event: ClassVar[str] = "failed"

    queue_id: str
    recipients: Mapping[str, RecipientReply]
    reason: Literal["rejected", "expired"]
    max_age_days: float | None = absent_when(None)  # for "expired"
    kind: str | None = absent_when(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Bounced(AuditEvent):
    """A DSN queued for the sender; its own delivery is recorded under ``dsn_id``, kind "dsn"."""

    event: ClassVar[str] = "bounced"

    queue_id: str
    dsn_id: str
    to: str
    recipients: tuple[str, ...]
    via: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BounceSuppressed(AuditEvent):
    event: ClassVar[str] = "bounce_suppressed"

    queue_id: str
    reason: str  # null-sender, invalid-sender, held:REASON, disabled ...
    mail_from: str
    recipients: tuple[str, ...]


# -- serve's control and housekeeping ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Reloaded(AuditEvent):
    """A config reload: applied (``changed``, ``restart_needed``) or refused (``error``)."""

    event: ClassVar[str] = "reloaded"

    ok: bool
    source: str  # "SIGHUP" or "detox reload"
    changed: tuple[str, ...] | None = absent_when(None)
    restart_needed: tuple[str, ...] | None = absent_when(None)
    error: str | None = absent_when(None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Purged(AuditEvent):
    """Messages whose retention ended (by serve), or purged by an admin (with the rest)."""

    event: ClassVar[str] = "purged"

    messages: int
    queue_ids: tuple[str, ...] | None = absent_when(None)
    older_than_days: float | None = absent_when(None)
    received_before: str | None = absent_when(None)
    actor: Actor | None = absent_when(None)  # noqa: RUF009 - absent_when is field()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rotated(AuditEvent):
    """The first record of a new audit file, chained to the last line of ``previous_file``."""

    event: ClassVar[str] = "rotated"

    previous_file: str


# -- admin commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueRetried(AuditEvent):
    event: ClassVar[str] = "queue_retry"

    target: str
    stage: str  # where it was: "detoxify", "deliver", "held"
    actor: Actor


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueFlushed(AuditEvent):
    event: ClassVar[str] = "queue_flush"

    actor: Actor


@dataclass(frozen=True, slots=True, kw_only=True)
class Approved(AuditEvent):
    """A second admin's approval of a release (two-person rule)."""

    event: ClassVar[str] = "approved"

    queue_id: str
    hold_id: str
    approved_by: str
    actor: Actor


@dataclass(frozen=True, slots=True, kw_only=True)
class Released(AuditEvent):
    """A release (例外措置), recorded before it can take effect."""

    event: ClassVar[str] = "released"

    queue_id: str
    release_id: str
    hold_ids: tuple[str, ...]
    parts: tuple[ReleasedPart, ...]
    recipients: tuple[str, ...]
    mail_from: str
    approved_by: str
    second_approver: str | None
    two_person_rule: bool
    reason: str
    original_sha256: str
    release_sha256: str
    actor: Actor
    # [antivirus]: signatures clamd found in what is released; such a release needed --force and
    # a second admin's approval, whatever quarantine.two_person_rule says.
    viruses: tuple[str, ...] = absent_when(())
    forced: bool = absent_when(False)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseFailed(AuditEvent):
    """A release that was recorded but could not be queued: it did not happen after all."""

    event: ClassVar[str] = "failed"

    queue_id: str  # the release id
    stage: Literal["release"] = "release"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Exported(AuditEvent):
    event: ClassVar[str] = "exported"

    queue_id: str
    hold_id: str | None  # None: the whole original (.eml)
    sha256: str
    size: int
    output: str
    actor: Actor


@dataclass(frozen=True, slots=True, kw_only=True)
class Deleted(AuditEvent):
    event: ClassVar[str] = "deleted"

    queue_id: str
    original_sha256: str
    reason: str | None
    actor: Actor


# Every event class, for the README check and for readers that want the whole vocabulary.
EVENTS: tuple[type[AuditEvent], ...] = (
    Received,
    DataRefused,
    SessionRefused,
    Detoxified,
    PipelineDeferred,
    MovedAside,
    Requeued,
    Delivered,
    DeliveryDeferred,
    DeliveryFailed,
    Bounced,
    BounceSuppressed,
    Reloaded,
    Purged,
    Rotated,
    QueueRetried,
    QueueFlushed,
    Approved,
    Released,
    ReleaseFailed,
    Exported,
    Deleted,
)


def field_names(cls: type[AuditEvent]) -> tuple[str, ...]:
    """The names a record of ``cls`` may carry after ``ts`` and ``event`` (an Actor as its two)."""
    names: list[str] = []
    for name, _ in _spec(cls):
        names += ["os_user", "sudo_user"] if name == "actor" else [name]
    return tuple(names)
