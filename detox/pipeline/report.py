"""The per-message report: what ``detox scan --report`` prints, the index stores and the audit logs.

A frozen, typed record: its readers (the index, the audit record, the delivery state, the dry-run)
name its fields, and mypy checks them. :meth:`MessageReport.as_dict` gives the JSON shape the report
has always had — the same keys in the same order — and :meth:`MessageReport.to_json` its text.
The report crosses the worker's process pipe (pickled), so it holds plain values only.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Mapping
from dataclasses import dataclass, fields
from email.message import Message
from typing import Any

from detox.envelope import Envelope
from detox.pipeline.model import DETECTED_BY_LIBMAGIC, Action, PartRecord, part_as_dict
from detox.pipeline.parse import first_header


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _values(record: Any) -> tuple[Any, ...]:
    """A report object's field values in order, for ``__reduce__``.

    The report crosses the worker's pipe for every message and the main process (the bottleneck)
    unpickles it: rebuilt by ``__init__`` from a tuple it costs a fraction of what the generic
    ``__setstate__`` of a slotted frozen dataclass does (which looks its fields up per object).
    """
    getter = _GETTERS.get(type(record))
    if getter is None:
        getter = _GETTERS[type(record)] = operator.attrgetter(*(f.name for f in fields(record)))
    values: tuple[Any, ...] = getter(record)
    return values


_GETTERS: dict[type, operator.attrgetter[Any]] = {}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """The report's ``message``: the original as received (decoded headers are None when absent)."""

    header_from: str | None  # "from" in the JSON
    to: str | None
    subject: str | None
    message_id: str | None
    size: int
    sha256: str
    defects: tuple[str, ...]  # names of the MIME defects Python's email package found

    @classmethod
    def of(cls, msg: Message, raw: bytes) -> MessageInfo:
        return cls(
            header_from=first_header(msg, "From"),
            to=first_header(msg, "To"),
            subject=first_header(msg, "Subject"),
            message_id=first_header(msg, "Message-ID"),
            size=len(raw),
            sha256=sha256(raw),
            defects=tuple(sorted({type(d).__name__ for d in msg.defects})),
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return MessageInfo, _values(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.header_from,
            "to": self.to,
            "subject": self.subject,
            "message_id": self.message_id,
            "size": self.size,
            "sha256": self.sha256,
            "defects": list(self.defects),
        }


@dataclass(frozen=True, slots=True)
class PartReport:
    """One part's decision as reported: a snapshot of its :class:`PartRecord` when the walk ended.

    The fields and their meaning are the README's "Per-part fields"; ``removed`` is a copy, typed
    read-only.
    """

    part_id: str
    role: str
    filename: str | None
    declared_type: str
    detected_type: str
    size: int
    sha256: str
    filter: str
    action: str
    reason: str
    removed: Mapping[str, int]
    output_sha256: str | None
    charset: str | None
    error: str | None
    mismatch: str | None
    output_filename: str | None
    output_type: str | None
    conversion: str
    detected_by: str = DETECTED_BY_LIBMAGIC
    virus: str | None = None  # the signature clamd named; in the JSON only when set

    @classmethod
    def of(cls, record: PartRecord) -> PartReport:
        """The snapshot: every field of the record under the same name (``removed`` copied)."""
        values: dict[str, Any] = {name: getattr(record, name) for name in _PART_REPORT_FIELDS}
        values["removed"] = dict(record.removed)
        return cls(**values)

    @property
    def held(self) -> bool:
        return self.action == Action.HOLD

    def __reduce__(self) -> tuple[Any, ...]:
        return PartReport, _values(self)

    def as_dict(self) -> dict[str, Any]:
        return part_as_dict(self)


_PART_REPORT_FIELDS = tuple(f.name for f in fields(PartReport))


@dataclass(frozen=True, slots=True)
class AntivirusReport:
    """The report's ``antivirus`` (present only when ``[antivirus]`` is on): what clamd was asked."""

    streams: int  # INSTREAM scans made: the original, then each distinct part and member
    bytes: int
    found: tuple[tuple[str, str], ...]  # (part_id, signature); part "0" is the original message
    held_message: str | None  # the reason the whole message was held (virus, antivirus-unavailable)

    def __reduce__(self) -> tuple[Any, ...]:
        return AntivirusReport, _values(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "bytes": self.bytes,
            "found": [{"part_id": p, "signature": s} for p, s in self.found],
            "held_message": self.held_message,
        }


@dataclass(frozen=True, slots=True)
class MessageReport:
    """Everything the pipeline decided about one message (README: "The detox scan --report JSON")."""

    queue_id: str
    message: MessageInfo
    envelope: Envelope
    parts: tuple[PartReport, ...]
    urls_defanged: int  # URLs defanged in the body
    actions: str  # the X-Detox-Actions value
    output_sha256: str  # of the clean message (CRLF form)
    output_size: int
    antivirus: AntivirusReport | None = None  # [antivirus] on: in the JSON, else absent

    def __reduce__(self) -> tuple[Any, ...]:
        return MessageReport, _values(self)

    @property
    def authentication(self) -> Mapping[str, Any] | None:
        """Sender authentication (detox.inbound) as decided before the 250; None when [inbound] is off."""
        return self.envelope.auth

    def as_dict(self) -> dict[str, Any]:
        envelope = self.envelope.as_dict()
        auth = envelope.pop("auth", None)
        data: dict[str, Any] = {
            "queue_id": self.queue_id,
            "message": self.message.as_dict(),
            "envelope": envelope,
            "parts": [p.as_dict() for p in self.parts],
            "urls_defanged": self.urls_defanged,
            "actions": self.actions,
            "output_sha256": self.output_sha256,
            "output_size": self.output_size,
            **({"antivirus": self.antivirus.as_dict()} if self.antivirus is not None else {}),
        }
        if auth is not None:
            data["authentication"] = auth
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """The report as ``detox scan --report`` writes it (without the final newline)."""
        return json.dumps(self.as_dict(), ensure_ascii=False, indent=indent)

    def parts_json(self) -> list[dict[str, Any]]:
        """The parts as JSON objects: the ``parts`` of the report and of the ``detoxified`` record."""
        return [p.as_dict() for p in self.parts]
