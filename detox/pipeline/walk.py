"""The MIME walk: every node of one message visited once, each leaf decided and its record made.

Containers are numbered and descended into (``1``, ``2.1`` ...); a multipart/alternative is collapsed
to one text; a forwarded message is detoxified on its own and attached as a new one; a subtree the
walk cannot read, or that is too deep or past the part cap, is held as one part (its bytes are in the
kept original). Nothing leaves the walk but the texts and outputs the filters produced.
"""

from __future__ import annotations

import hashlib
import logging
import operator
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from typing import cast

from detox.config.schema import DetoxConfig
from detox.errors import FilterTimeout, PipelineTempFail
from detox.filters.base import FilterContext
from detox.pipeline.compose import Attachment, Forwarded
from detox.pipeline.decide import NO_FILTER, Decided, Decider
from detox.pipeline.detect import detect_part_type, detect_type
from detox.pipeline.model import Action, Output, Part, PartRecord, Role, Verdict
from detox.pipeline.parse import declared_type, decode_encapsulated, disposition
from detox.pipeline.policy import type_mismatch
from detox.pipeline.report import sha256
from detox.pipeline.vocabulary import (
    ALTERNATIVE_UNUSED,
    ENCRYPTED,
    ENRICHED_CONVERTED,
    FORWARDED_DETOXIFIED,
    HTML_CONVERTED,
    LIMIT_EXCEEDED,
    RTF_CONVERTED,
    UNPARSABLE,
    URLS_DEFANGED,
)
from detox.text.headers import decode_filename
from detox.text.html import strip_invisible
from detox.text.urls import defang_urls
from detox.untrusted import for_log

log = logging.getLogger("detox.pipeline.runner")  # the name operators' log filters know

BODY_TYPES = frozenset(
    {"text/plain", "text/html", "text/rtf", "application/rtf", "text/richtext", "text/enriched"}
)
# message/* types that are reports made of text; handled as text attachments.
TEXTUAL_MESSAGE_TYPES = frozenset(
    {"message/delivery-status", "message/disposition-notification", "message/global-delivery-status"}
)
# Notes of a body that was converted from a rich format: an alternative with none is the plain one.
_CONVERTED = (HTML_CONVERTED, RTF_CONVERTED, ENRICHED_CONVERTED)
_URL = re.compile(r"\S+://\S+")


@dataclass
class Collected:
    """What one walk (or one alternative of a multipart/alternative) produced."""

    texts: list[str] = field(default_factory=list)
    attachments: list[Attachment | Forwarded] = field(default_factory=list)
    records: list[PartRecord] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Collected, *, with_text: bool) -> None:
        if with_text:
            self.texts.extend(other.texts)
        self.attachments.extend(other.attachments)
        self.records.extend(other.records)
        self.notes.update(other.notes)


def joined_text(texts: list[str]) -> str:
    """The text parts of a body, one blank line between them, empty ones left out."""
    return "\n\n".join(t.strip("\n") for t in texts if t.strip())


class Walk:
    """One message's walk; ``ctx.decide_member`` is :meth:`decide_member` (for archive members)."""

    def __init__(self, config: DetoxConfig, decider: Decider, ctx: FilterContext) -> None:
        self.config = config
        self.decider = decider
        self.ctx = ctx
        self.parts_seen = 0

    # -- the tree ---------------------------------------------------------------------------

    def message_contents(self, msg: Message, prefix: str, depth: int) -> Collected:
        """Everything inside one (possibly forwarded) message, numbered under ``prefix``."""
        out = Collected()
        # The top of a message is its part "1" (single part) or its children "1", "2", ...
        if msg.get_content_type() == "message/rfc822":  # a mail that is only an encapsulated mail
            self._visit_forwarded(msg, _join(prefix, "1"), depth + 1, out)
        elif msg.is_multipart():
            self._visit_multipart(msg, prefix, depth, out)
        else:
            self._visit(msg, _join(prefix, "1"), depth, out)
        return out

    def _visit(self, node: Message, path: str, depth: int, out: Collected) -> None:
        if depth > self.config.limits.max_mime_depth:
            self._hold_subtree(node, path, out, LIMIT_EXCEEDED, "MIME nesting too deep")
            return
        try:
            # message/* payloads are lists too, so check them before is_multipart().
            ctype = node.get_content_type()
            if ctype in TEXTUAL_MESSAGE_TYPES:
                self._visit_leaf(node, path, depth, out)
            elif ctype == "message/rfc822":
                self._visit_forwarded(node, path, depth + 1, out)
            elif node.is_multipart():
                # A multipart child is a container: its children are numbered under its path.
                self._visit_multipart(node, path, depth + 1, out)
            else:
                self._visit_leaf(node, path, depth, out)
        except (FilterTimeout, PipelineTempFail):
            raise
        except RecursionError:
            self._hold_subtree(node, path, out, LIMIT_EXCEEDED, "nesting too deep to walk")
        except Exception as exc:  # noqa: BLE001 - any parser failure means: hold, never pass
            # The MIME structure itself could not be read (not a filter failure): fail closed.
            log.warning("%s: part %s unparsable: %s", self.ctx.queue_id, path, for_log(repr(exc)))
            self._hold_subtree(node, path, out, UNPARSABLE, type(exc).__name__)

    def _visit_multipart(self, node: Message, path: str, depth: int, out: Collected) -> None:
        payload = node.get_payload()
        if not isinstance(payload, list):
            # Declared multipart but carrying no parseable children: recover it as text.
            self._visit_leaf(node, _join(path, "1"), depth, out, force_type="text/plain")
            return
        # A str among the children is a parse defect; _visit holds it as unparsable.
        children = cast(list[Message], payload)
        subtype = node.get_content_subtype()
        if subtype == "alternative":
            self._visit_alternative(children, path, depth, out)
            return
        if subtype == "encrypted":
            # The whole encrypted subtree is one held item; "0" names the whole message.
            self._hold_subtree(node, path or "0", out, ENCRYPTED, "multipart/encrypted")
            return
        for i, child in enumerate(children, 1):
            self._visit(child, _join(path, str(i)), depth, out)

    def _visit_alternative(self, children: list[Message], path: str, depth: int, out: Collected) -> None:
        """Collapse alternatives to one text: the richest, unless the plain one carries the content."""
        options = []
        for i, child in enumerate(children, 1):
            sub = Collected()
            self._visit(child, _join(path, str(i)), depth, sub)
            options.append(sub)
        with_text = [o for o in options if o.texts]
        chosen: Collected | None = None
        if with_text:
            plain = next((o for o in with_text if _is_plain(o)), None)
            rich = next((o for o in reversed(with_text) if not _is_plain(o)), None)
            if plain is None or rich is None:
                chosen = with_text[-1]
            elif _coverage("\n".join(plain.texts), "\n".join(rich.texts)) >= self.config.body.plain_coverage:
                chosen = plain
            else:
                chosen = rich
        for option in options:
            if option is not chosen:
                for rec in option.records:
                    if rec.action == Action.TEXT:
                        rec.action = Action.DROP
                        rec.reason = ALTERNATIVE_UNUSED
                        rec.output_sha256 = None
                option.notes = Counter({k: v for k, v in option.notes.items() if k not in _CONVERTED})
            out.merge(option, with_text=option is chosen)

    def _visit_forwarded(self, node: Message, path: str, depth: int, out: Collected) -> None:
        payload = node.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            self._visit_leaf(node, path, depth, out, force_type="text/plain")
            return
        cte = str(node.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            inner = decode_encapsulated(inner, cte)
        contents = self.message_contents(inner, path, depth)
        body = joined_text(contents.texts)
        if self.ctx.defang_urls:
            defanged = defang_urls(body)
            body = defanged.text
            contents.notes[URLS_DEFANGED] += defanged.count
        out.attachments.append(Forwarded(inner, body + "\n" if body else "", contents.attachments, path))
        out.records.extend(contents.records)
        out.notes.update(contents.notes)
        out.notes[FORWARDED_DETOXIFIED] += 1

    # -- leaves -----------------------------------------------------------------------------

    def _make_part(self, node: Message, path: str, depth: int, force_type: str | None) -> Part:
        ctype = force_type or declared_type(node)
        raw_payload = node.get_payload()
        if isinstance(raw_payload, list):
            # message/delivery-status and friends: blocks of header fields; keep them as text.
            payload = b"\n".join(
                m.as_bytes() if isinstance(m, Message) else str(m).encode("utf-8", "surrogateescape")
                for m in raw_payload
            )
        elif force_type:
            payload = (raw_payload if isinstance(raw_payload, str) else str(raw_payload)).encode(
                "utf-8", "surrogateescape"
            )
        else:
            decoded = node.get_payload(decode=True)
            payload = decoded if isinstance(decoded, bytes) else b""
        filename = decode_filename(node)
        role = Role.ATTACHMENT
        if ctype in BODY_TYPES and disposition(node) != "attachment" and filename is None:
            role = Role.BODY
        if ctype in TEXTUAL_MESSAGE_TYPES or ctype == "text/rfc822-headers":
            role = Role.ATTACHMENT
        try:
            charset = node.get_content_charset()
        except Exception:  # noqa: BLE001 - a garbled parameter is the same as none: detection decides
            charset = None
        digest = hashlib.sha256(payload)  # the part's SHA-256 and detect_type's cache key
        detected, detected_by = detect_part_type(
            payload, digest.digest(), declared=ctype, body=role is Role.BODY
        )
        return Part(
            part_id=path,
            role=role,
            declared_type=ctype,
            detected_type=detected,
            charset_label=charset,
            untrusted_filename=filename,
            payload=payload,
            sha256=digest.hexdigest(),
            depth=depth,
            detected_by=detected_by,
        )

    def _visit_leaf(
        self, node: Message, path: str, depth: int, out: Collected, force_type: str | None = None
    ) -> None:
        self.parts_seen += 1
        if self.parts_seen > self.config.limits.max_mime_parts:
            # Past the cap a part is not even decoded: it is held as it stands in the original.
            self._hold_subtree(node, path, out, LIMIT_EXCEEDED, "too many MIME parts")
            return
        part = self._make_part(node, path, depth, force_type)
        self._apply(part, self.decider.decide(part, self.ctx), out)

    def decide_member(self, part: Part) -> tuple[Verdict, PartRecord]:
        """A part found inside another (an archive member): counted, capped, decided like any part."""
        self.parts_seen += 1
        if self.parts_seen > self.config.limits.max_mime_parts:
            decided = Decided(Verdict(Action.HOLD, reason=LIMIT_EXCEEDED), NO_FILTER, "too many parts")
        else:
            decided = self.decider.decide(part, self.ctx)
        return decided.verdict, make_record(part, decided)

    def _apply(self, part: Part, decided: Decided, out: Collected) -> None:
        verdict = decided.verdict
        record = make_record(part, decided)
        if verdict.action is Action.TEXT:
            assert verdict.text is not None
            # Control and invisible (zero-width, bidi) characters never reach the reader.
            text, invisible, control = strip_invisible(verdict.text)
            if invisible + control:
                record.removed["invisible"] = record.removed.get("invisible", 0) + invisible
                record.removed["control"] = record.removed.get("control", 0) + control
            out.texts.append(text)
            record.output_sha256 = sha256(text.encode("utf-8"))
        elif verdict.action is Action.REPLACE:
            assert verdict.output is not None
            out.attachments.append(Attachment(verdict.output, part.part_id))
        elif verdict.action is Action.PASS:
            output = Output(part.declared_type, part.payload, part.untrusted_filename)
            out.attachments.append(Attachment(output, part.part_id))
        out.notes.update(verdict.notes)
        out.records.append(record)
        out.records.extend(verdict.members)

    def _hold_subtree(self, node: Message, path: str, out: Collected, reason: str, detail: str) -> None:
        """Hold a whole subtree as one part (its bytes are in the kept original)."""
        try:
            data = node.as_bytes()
        except Exception:  # noqa: BLE001 - the subtree cannot even be serialised; size unknown
            data = b""
        try:
            ctype = declared_type(node)
        except Exception:  # noqa: BLE001 - hostile headers; the type is unknown
            ctype = "application/octet-stream"
        digest = hashlib.sha256(data)
        out.records.append(
            PartRecord(
                part_id=path,
                role=Role.ATTACHMENT.value,
                declared_type=ctype,
                detected_type=detect_type(data, digest=digest.digest()),
                filename=None,
                size=len(data),
                sha256=digest.hexdigest(),
                filter=NO_FILTER,
                action=Action.HOLD.value,
                reason=reason,
                error=detail,
            )
        )


def make_record(part: Part, decided: Decided) -> PartRecord:
    """What the report, the audit log and the notice say about a decided part."""
    verdict = decided.verdict
    record = PartRecord(
        part_id=part.part_id,
        role=part.role.value,
        declared_type=part.declared_type,
        detected_type=part.detected_type,
        detected_by=part.detected_by,
        filename=part.untrusted_filename,
        size=part.size,
        sha256=part.sha256,
        filter=decided.by,
        action=verdict.action.value,
        reason=verdict.reason,
        removed=dict(verdict.removed),
        charset=verdict.charset,
        error=decided.error,
        mismatch=type_mismatch(part) if part.role is Role.ATTACHMENT else None,
    )
    if verdict.action is Action.REPLACE and verdict.output is not None:
        record.output_sha256 = sha256(verdict.output.data)
        record.output_filename = verdict.output.filename
        record.output_type = verdict.output.content_type
    elif verdict.action is Action.PASS:
        record.output_sha256 = part.sha256
        record.output_filename = part.untrusted_filename
        record.output_type = part.detected_type
    if verdict.action in (Action.REPLACE, Action.PASS, Action.TEXT) and verdict.notes:
        record.conversion = verdict.notes[0]
    return record


def _coverage(plain: str, rich: str, limit: int = 200_000) -> float:
    """Share of the rich text's character bigrams (URLs left out) that the plain text also has."""

    def bigrams(text: str) -> Iterator[str]:
        flat = "".join(_URL.sub(" ", text[:limit]).split())
        return map(operator.add, flat, flat[1:])  # flat[i] + flat[i + 1], made in C

    wanted = set(bigrams(rich))
    return len(wanted.intersection(bigrams(plain))) / len(wanted) if wanted else 1.0


def _join(prefix: str, index: str) -> str:
    return f"{prefix}.{index}" if prefix else index


def _is_plain(collected: Collected) -> bool:
    return not any(collected.notes[n] for n in _CONVERTED)
