"""The pipeline runner: walks the MIME tree, runs the filters, and composes the clean message.

The runner, not the filters, owns failure policy: a filter that raises or runs out of time has
its part handled as the configured ``on_error`` (hold by default), and a part no filter claims is
handled as ``pipeline.unhandled``. Nothing reaches the output except text the filters produced and
outputs they returned.
"""

from __future__ import annotations

import binascii
import contextlib
import email
import email.policy
import hashlib
import importlib
import logging
import operator
import quopri
import re
import signal
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from email.message import Message
from email.policy import Compat32
from types import FrameType
from typing import Any, cast

import magic

from detox.config.schema import DetoxConfig, OnError
from detox.envelope import Envelope
from detox.errors import FilterTimeout, PipelineTempFail, SandboxError
from detox.filters.base import Filter, FilterContext
from detox.filters.text import BINARY_SIGNATURES
from detox.notice import render_notice
from detox.pipeline.compose import Attachment, Forwarded, compose_message, serialize
from detox.pipeline.model import (
    DETECTED_BY_LIBMAGIC,
    DETECTED_BY_TEXT_BYTES,
    Action,
    Output,
    Part,
    PartRecord,
    Role,
    Verdict,
)
from detox.pipeline.policy import Policy, type_mismatch
from detox.pipeline.registry import available_filters, build_pipeline
from detox.sandbox import make_sandbox
from detox.sandbox.base import Sandbox
from detox.text.headers import decode_filename, decode_header_value
from detox.text.html import strip_invisible
from detox.text.urls import defang_urls
from detox.untrusted import for_log

log = logging.getLogger(__name__)

BODY_TYPES = frozenset(
    {"text/plain", "text/html", "text/rtf", "application/rtf", "text/richtext", "text/enriched"}
)
# message/* types that are reports made of text; handled as text attachments.
TEXTUAL_MESSAGE_TYPES = frozenset(
    {"message/delivery-status", "message/disposition-notification", "message/global-delivery-status"}
)
_SNIFF_BYTES = 64 * 1024
_URL = re.compile(r"\S+://\S+")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ReadPolicy(Compat32):
    """compat32 that unfolds header values (RFC 5322 §2.2.3) when they are read.

    Reading uses compat32 because policy=default parses structured headers eagerly and raises
    UnicodeDecodeError on RFC 2231 names in ISO-2022-JP with Microsoft characters (as Outlook
    writes them), which would make a whole mail unreadable; headers and names are decoded by
    detox.text.headers, and the output is written with policy=default. Plain compat32 keeps the
    folding, so a boundary folded onto two lines would never match and a whole body would be lost.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        fetched = super().header_fetch_parse(name, value)
        # Most values are not folded: the substring test is cheaper than the regex's scan.
        return _FOLD.sub("", fetched) if isinstance(fetched, str) and "\n" in fetched else fetched


_FOLD = re.compile(r"\r?\n(?=[ \t])")
READ_POLICY = _ReadPolicy()


def parse_message(raw: bytes) -> Message:
    return email.message_from_bytes(raw, policy=READ_POLICY)


_magic: magic.Magic | None = None
# libmagic spends 0.5-3 ms on any text, whatever its size (its text tests), and its answer depends on
# the bytes alone: the same bytes (one newsletter to many recipients, a logo in every mail of a
# sender) are looked up once per process. Keyed by a digest of the bytes libmagic reads.
_TYPE_CACHE_SIZE = 512
_type_cache: OrderedDict[bytes, str] = OrderedDict()
_type_lock = threading.Lock()


def detect_type(data: bytes, *, digest: bytes | None = None) -> str:
    """The true type of the bytes according to libmagic (one handle per process).

    ``digest``: the SHA-256 of ``data`` if the caller has it (a part's is computed anyway); it is
    the cache key when ``data`` is no longer than what libmagic reads.
    """
    global _magic
    if not data:
        return "inode/x-empty"
    sniff = data[:_SNIFF_BYTES]
    key = digest if digest is not None and len(data) <= _SNIFF_BYTES else hashlib.sha256(sniff).digest()
    with _type_lock:
        found = _type_cache.get(key)
        if found is not None:
            _type_cache.move_to_end(key)
            return found
    if _magic is None:
        _magic = magic.Magic(mime=True)
    try:
        found = str(_magic.from_buffer(sniff))
    except magic.MagicException:
        return "application/octet-stream"
    with _type_lock:
        _type_cache[key] = found
        if len(_type_cache) > _TYPE_CACHE_SIZE:
            _type_cache.popitem(last=False)
    return found


# A body part is only ever converted to text, never forwarded; for one declared text/plain or
# text/html whose bytes are plainly text, libmagic (1-3 ms on any new text) could only name a text
# type, so the declared one is taken. ESC stays allowed for ISO-2022-JP, bytes >= 0x80 for CP932,
# EUC-JP and UTF-8. Executables, archives and documents carry NULs or other control bytes, and an
# all-ASCII PDF opens with its signature: those still go to libmagic, so a body held as not-text is
# named by what it is.
_TEXT_BODY_TYPES = frozenset({"text/plain", "text/html"})
_NON_TEXT_CONTROLS = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def _plainly_text(payload: bytes) -> bool:
    # Deleting the bytes in C is several times faster than a regex search for them.
    return (
        bool(payload)
        and len(payload.translate(None, _NON_TEXT_CONTROLS)) == len(payload)
        and not payload.startswith(BINARY_SIGNATURES)
    )


# signal.signal() wraps _signal.signal() to hand back handlers as enum members, which for a Python
# handler means raising and catching a ValueError; deadline() swaps handlers twice per filter run and
# only ever passes back what it got, so it calls the C function directly.
_swap_handler: Callable[[int, Any], Any] = importlib.import_module("_signal").signal


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise FilterTimeout in the running code after ``seconds`` (main thread only).

    Converters that can hang in C code run in sandboxed subprocesses with their own limits; this
    bounds the pure-Python work done in-process.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: FrameType | None) -> None:
        raise FilterTimeout(f"no result within {seconds:g}s")

    # Deadlines nest (an archive's filter runs its members' filters): the inner one never outlives
    # the outer, and the outer's remaining time is re-armed when the inner ends.
    outer_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    effective = min(seconds, outer_remaining) if outer_remaining > 0 else seconds
    previous = _swap_handler(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, effective)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _swap_handler(signal.SIGALRM, previous)
        if outer_remaining > 0:
            left = outer_remaining - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


@dataclass
class _Collected:
    """What one walk (or one alternative of a multipart/alternative) produced."""

    texts: list[str] = field(default_factory=list)
    attachments: list[Attachment | Forwarded] = field(default_factory=list)
    records: list[PartRecord] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def merge(self, other: _Collected, *, with_text: bool) -> None:
        if with_text:
            self.texts.extend(other.texts)
        self.attachments.extend(other.attachments)
        self.records.extend(other.records)
        self.notes.update(other.notes)


@dataclass(frozen=True, slots=True)
class DetoxResult:
    output: bytes  # the clean message, CRLF line endings
    report: dict[str, Any]
    records: tuple[PartRecord, ...]
    actions: str  # the X-Detox-Actions value

    @property
    def held(self) -> tuple[PartRecord, ...]:
        return tuple(r for r in self.records if r.action == Action.HOLD)


class Pipeline:
    """Built once per process from the config; ``run`` is safe to call for many messages."""

    def __init__(self, config: DetoxConfig, filters: Sequence[Filter] | None = None) -> None:
        self.config = config
        self.filters = tuple(filters) if filters is not None else build_pipeline(config)
        self.policy = Policy(config, available_filters())
        self.sandbox: Sandbox | None
        try:
            self.sandbox = make_sandbox(config)
        except SandboxError as exc:
            # Fail closed: without a sandbox every converter raises and its part is held.
            log.error("no sandbox for converters (%s); attachments needing one will be held", exc)
            self.sandbox = None

    def run(self, raw: bytes, envelope: Envelope) -> DetoxResult:
        msg = parse_message(raw)
        sender_domain = envelope.mail_from.rpartition("@")[2].lower().rstrip(".")
        ctx = FilterContext(
            queue_id=envelope.queue_id,
            sender_domain=sender_domain,
            config=self.config,
            defang_urls=self.config.urls.defang
            and sender_domain not in self.config.urls.exempt_sender_domains,
            sandbox=self.sandbox,
        )
        walk = _Walk(self, ctx)
        walk.ctx = replace(ctx, decide_member=walk.decide_member)
        collected = walk.message_contents(msg, prefix="", depth=0)

        body_text = "\n\n".join(t.strip("\n") for t in collected.texts if t.strip())
        defanged = 0
        if ctx.defang_urls:
            result = defang_urls(body_text)
            body_text, defanged = result.text, result.count
        # URLs made safe anywhere (forwarded bodies, converted attachments) count in the notice.
        defanged += collected.notes.pop("urls-defanged", 0)
        held = [r for r in collected.records if r.action == Action.HOLD]
        delivered = _delivered_attachments(collected.records)
        actions = _actions_summary(collected.notes, defanged, collected.records)
        notice = ""
        if self.config.notice.enabled:
            notice = render_notice(
                self.config.notice,
                queue_id=envelope.queue_id,
                conversions=_conversion_lines(self.config, collected.notes, defanged),
                held=held,
                delivered=delivered,
            )
        full_text = (notice + "\n" if notice else "") + body_text
        out = compose_message(
            msg,
            envelope,
            full_text if full_text.endswith("\n") else full_text + "\n",
            collected.attachments,
            actions,
            self.config,
        )
        output = serialize(out)
        report = {
            "queue_id": envelope.queue_id,
            "message": {
                "from": _header(msg, "From"),
                "to": _header(msg, "To"),
                "subject": _header(msg, "Subject"),
                "message_id": _header(msg, "Message-ID"),
                "size": len(raw),
                "sha256": sha256(raw),
                "defects": sorted({type(d).__name__ for d in msg.defects}),
            },
            "envelope": envelope.as_dict(),
            "parts": [r.as_dict() for r in collected.records],
            "urls_defanged": defanged,
            "actions": actions,
            "output_sha256": sha256(output),
            "output_size": len(output),
        }
        return DetoxResult(output, report, tuple(collected.records), actions)


def _header(msg: Message, name: str) -> str | None:
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return decode_header_value(str(value))
    return None


def _actions_summary(notes: Counter[str], defanged: int, records: Sequence[PartRecord]) -> str:
    """A machine-readable summary, e.g. ``text-converted; urls-defanged=2; attachments-held=1``."""
    items = ["text-converted"]
    for note in sorted(notes):
        items.append(f"{note}={notes[note]}")
    if defanged:
        items.append(f"urls-defanged={defanged}")
    attachment_actions = Counter(r.action for r in records if r.role == Role.ATTACHMENT)
    for action, label in ((Action.REPLACE, "attachments-converted"), (Action.PASS, "attachments-passed")):
        if attachment_actions[action]:
            items.append(f"{label}={attachment_actions[action]}")
    held = sum(1 for r in records if r.action == Action.HOLD)
    if held:
        items.append(f"attachments-held={held}")
    dropped = sum(1 for r in records if r.action == Action.DROP and r.reason != "alternative-unused")
    if dropped:
        items.append(f"parts-dropped={dropped}")
    return "; ".join(items)


def _delivered_attachments(records: Sequence[PartRecord]) -> list[PartRecord]:
    """Attachments that reach LGWAN in a converted form. Members of an archive that was held in
    the end (e.g. its repacked zip was over a cap) did not, whatever their own verdict said."""
    held = [r.part_id + ":" for r in records if r.action == Action.HOLD]
    return [
        r
        for r in records
        if r.role == Role.ATTACHMENT.value
        and r.action in (Action.REPLACE, Action.PASS)
        and not r.part_id.startswith(tuple(held))
    ]


def _conversion_lines(config: DetoxConfig, notes: Counter[str], defanged: int) -> list[str]:
    lines = []
    if notes["html-converted"]:
        lines.append(config.notice.converted_html)
    if notes["rtf-converted"] or notes["enriched-converted"]:
        lines.append(config.notice.converted_rtf)
    if defanged:
        lines.append(config.notice.urls_defanged.replace("$count", str(defanged)))
    if notes["signature-removed"]:
        lines.append(config.notice.signature_removed)
    rebuilt = (
        notes["image-reencoded"]
        + notes["pdf-sanitized"]
        + notes["pdf-rasterized"]
        + notes["office-disarmed"]
        + notes["office-rasterized"]
    )
    if rebuilt:
        lines.append(config.notice.attachments_converted.replace("$count", str(rebuilt)))
    if notes["calendar-converted"]:
        lines.append(config.notice.calendar_converted.replace("$count", str(notes["calendar-converted"])))
    if notes["archive-repacked"]:
        lines.append(config.notice.archives_repacked.replace("$count", str(notes["archive-repacked"])))
    return lines


class _Walk:
    def __init__(self, pipeline: Pipeline, ctx: FilterContext) -> None:
        self.pipeline = pipeline
        self.config = pipeline.config
        self.ctx = ctx
        self.parts_seen = 0

    # -- the tree ---------------------------------------------------------------------------

    def message_contents(self, msg: Message, prefix: str, depth: int) -> _Collected:
        """Everything inside one (possibly forwarded) message, numbered under ``prefix``."""
        out = _Collected()
        # The top of a message is its part "1" (single part) or its children "1", "2", ...
        if msg.get_content_type() == "message/rfc822":  # a mail that is only an encapsulated mail
            self._visit_forwarded(msg, _join(prefix, "1"), depth + 1, out)
        elif msg.is_multipart():
            self._visit_multipart(msg, prefix, depth, out)
        else:
            self._visit(msg, _join(prefix, "1"), depth, out)
        return out

    def _visit(self, node: Message, path: str, depth: int, out: _Collected) -> None:
        if depth > self.config.limits.max_mime_depth:
            self._hold_subtree(node, path, depth, out, "limit-exceeded", "MIME nesting too deep")
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
            self._hold_subtree(node, path, depth, out, "limit-exceeded", "nesting too deep to walk")
        except Exception as exc:  # noqa: BLE001 - any parser failure means: hold, never pass
            # The MIME structure itself could not be read (not a filter failure): fail closed.
            log.warning("%s: part %s unparsable: %s", self.ctx.queue_id, path, for_log(repr(exc)))
            self._hold_subtree(node, path, depth, out, "unparsable", type(exc).__name__)

    def _visit_multipart(self, node: Message, path: str, depth: int, out: _Collected) -> None:
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
            self._hold_subtree(node, path or "0", depth, out, "encrypted", "multipart/encrypted")
            return
        for i, child in enumerate(children, 1):
            self._visit(child, _join(path, str(i)), depth, out)

    def _visit_alternative(self, children: list[Message], path: str, depth: int, out: _Collected) -> None:
        """Collapse alternatives to one text: the richest, unless the plain one carries the content."""
        options = []
        for i, child in enumerate(children, 1):
            sub = _Collected()
            self._visit(child, _join(path, str(i)), depth, sub)
            options.append(sub)
        with_text = [o for o in options if o.texts]
        chosen: _Collected | None = None
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
                        rec.reason = "alternative-unused"
                        rec.output_sha256 = None
                converted = ("html-converted", "rtf-converted", "enriched-converted")
                option.notes = Counter({k: v for k, v in option.notes.items() if k not in converted})
            out.merge(option, with_text=option is chosen)

    def _visit_forwarded(self, node: Message, path: str, depth: int, out: _Collected) -> None:
        payload = node.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if not isinstance(inner, Message):
            self._visit_leaf(node, path, depth, out, force_type="text/plain")
            return
        cte = str(node.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte in ("base64", "quoted-printable"):
            # RFC 2046 forbids it, but senders do encode message/rfc822; the parser does not decode
            # it, so the inner mail would arrive as one blob of base64 text.
            inner = _decode_encapsulated(inner, cte)
        contents = self.message_contents(inner, path, depth)
        body = "\n\n".join(t.strip("\n") for t in contents.texts if t.strip())
        if self.ctx.defang_urls:
            defanged = defang_urls(body)
            body = defanged.text
            contents.notes["urls-defanged"] += defanged.count
        out.attachments.append(Forwarded(inner, body + "\n" if body else "", contents.attachments, path))
        out.records.extend(contents.records)
        out.notes.update(contents.notes)
        out.notes["forwarded-detoxified"] += 1

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
        disposition = _disposition(node)
        role = Role.ATTACHMENT
        if ctype in BODY_TYPES and disposition != "attachment" and filename is None:
            role = Role.BODY
        if ctype in TEXTUAL_MESSAGE_TYPES or ctype == "text/rfc822-headers":
            role = Role.ATTACHMENT
        try:
            charset = node.get_content_charset()
        except Exception:  # noqa: BLE001 - a garbled parameter is the same as none: detection decides
            charset = None
        digest = hashlib.sha256(payload)  # the part's SHA-256 and detect_type's cache key
        if role is Role.BODY and ctype in _TEXT_BODY_TYPES and _plainly_text(payload):
            detected, detected_by = ctype, DETECTED_BY_TEXT_BYTES
        else:
            detected, detected_by = detect_type(payload, digest=digest.digest()), DETECTED_BY_LIBMAGIC
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
        self, node: Message, path: str, depth: int, out: _Collected, force_type: str | None = None
    ) -> None:
        self.parts_seen += 1
        if self.parts_seen > self.config.limits.max_mime_parts:
            # Past the cap a part is not even decoded: it is held as it stands in the original.
            self._hold_subtree(node, path, depth, out, "limit-exceeded", "too many MIME parts")
            return
        part = self._make_part(node, path, depth, force_type)
        verdict, filter_name, error = self._decide(part)
        self._apply(part, verdict, filter_name, error, out)

    def _decide(self, part: Part) -> tuple[Verdict, str, str | None]:
        """Policy rules first (attachments), then the first filter in pipeline.order that claims it."""
        if part.role is Role.ATTACHMENT and self.pipeline.policy.rules:
            decision, _ = self.pipeline.policy.decide(part, self.ctx.sender_domain)
            if decision is not None and decision.action != "default":
                label = f"policy:{decision.rule}"
                if decision.filter is not None:
                    return self._run_filter(decision.filter, part, label)
                action = Action.DROP if decision.action == "drop" else Action.HOLD
                return Verdict(action, reason=decision.reason), label, None
        for flt in self.pipeline.filters:
            try:
                claimed = flt.applies_to(part)
            except Exception as exc:  # noqa: BLE001 - whatever a filter raises, the part is held
                on_error = self.config.filter_settings(flt.name).on_error
                return self._on_error(on_error, "filter-error"), flt.name, for_log(repr(exc))
            if claimed:
                return self._run_filter(flt, part, flt.name)
        unhandled = Action.HOLD if self.config.pipeline.unhandled == "hold" else Action.DROP
        return Verdict(unhandled, reason="unsupported-type"), "-", None

    def _run_filter(self, flt: Filter, part: Part, label: str) -> tuple[Verdict, str, str | None]:
        """One filter on one part, its failures mapped to the configured on_error."""
        settings = self.config.filter_settings(flt.name)
        try:
            if not flt.applies_to(part):  # a policy rule named a filter for a type it cannot read
                return Verdict(Action.HOLD, reason="unsupported-type"), label, f"{flt.name} does not apply"
            with deadline(settings.timeout_s):
                verdict = flt.process(part, self.ctx)
            _check_verdict(flt, part, verdict)
        except FilterTimeout as exc:
            log.warning("%s: filter %s timed out on part %s", self.ctx.queue_id, flt.name, part.part_id)
            return self._on_error(settings.on_error, "filter-timeout"), label, str(exc)
        except PipelineTempFail:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a filter raises, the part is held
            log.warning(
                "%s: filter %s failed on part %s: %s",
                self.ctx.queue_id,
                flt.name,
                part.part_id,
                for_log(repr(exc)),
            )
            return self._on_error(settings.on_error, "filter-error"), label, for_log(repr(exc))
        return verdict, label, None

    def _on_error(self, on_error: OnError, reason: str) -> Verdict:
        if on_error is OnError.TEMPFAIL:
            raise PipelineTempFail(reason)
        return Verdict(Action.DROP if on_error is OnError.DROP else Action.HOLD, reason=reason)

    def decide_member(self, part: Part) -> tuple[Verdict, PartRecord]:
        """A part found inside another (an archive member): counted, capped, decided like any part."""
        self.parts_seen += 1
        decision: tuple[Verdict, str, str | None]
        if self.parts_seen > self.config.limits.max_mime_parts:
            decision = Verdict(Action.HOLD, reason="limit-exceeded"), "-", "too many parts"
        else:
            decision = self._decide(part)
        return decision[0], self._record(part, *decision)

    def _record(self, part: Part, verdict: Verdict, filter_name: str, error: str | None) -> PartRecord:
        record = PartRecord(
            part_id=part.part_id,
            role=part.role.value,
            declared_type=part.declared_type,
            detected_type=part.detected_type,
            detected_by=part.detected_by,
            filename=part.untrusted_filename,
            size=part.size,
            sha256=part.sha256,
            filter=filter_name,
            action=verdict.action.value,
            reason=verdict.reason,
            removed=dict(verdict.removed),
            charset=verdict.charset,
            error=error,
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

    def _apply(
        self, part: Part, verdict: Verdict, filter_name: str, error: str | None, out: _Collected
    ) -> None:
        record = self._record(part, verdict, filter_name, error)
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

    def _hold_subtree(
        self, node: Message, path: str, depth: int, out: _Collected, reason: str, detail: str
    ) -> None:
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
                filter="-",
                action=Action.HOLD.value,
                reason=reason,
                error=detail,
            )
        )


def _decode_encapsulated(inner: Message, cte: str) -> Message:
    """Re-parse a transfer-encoded message/rfc822 payload from its decoded bytes."""
    encoded = inner.as_bytes(policy=READ_POLICY)
    decoded = _b64decode_lenient(encoded) if cte == "base64" else quopri.decodestring(encoded)
    return parse_message(decoded)


def _b64decode_lenient(data: bytes) -> bytes:
    """Base64 as mail software writes it: stray characters, missing or early padding tolerated."""
    text = re.sub(rb"[^A-Za-z0-9+/=]", b"", data).split(b"=", 1)[0]
    if len(text) % 4 == 1:  # a lone trailing character carries no whole byte
        text = text[:-1]
    return binascii.a2b_base64(text + b"=" * (-len(text) % 4))


_TYPE_JUNK = re.compile(r"[^\x21-\x7e]")


def declared_type(node: Message) -> str:
    """The sender's Content-Type as the stdlib reads it, without spaces and control characters.

    The value is shown as it is in the notice ("名前のない添付ファイル（TYPE）"), the report and the
    audit log; a type like ``multipart/\\x00...`` must not carry a NUL or a line break into them.
    """
    return _TYPE_JUNK.sub("", node.get_content_type())


def _disposition(node: Message) -> str:
    """inline / attachment / "" from the raw header: the stdlib's parsed header raises on some
    RFC 2231 parameters (an ISO-2022-JP file name with Microsoft characters, for one)."""
    for key, value in node.raw_items():
        if key.lower() == "content-disposition":
            return str(value).split(";", 1)[0].strip().lower()
    return ""


def _coverage(plain: str, rich: str, limit: int = 200_000) -> float:
    """Share of the rich text's character bigrams (URLs left out) that the plain text also has."""

    def bigrams(text: str) -> Iterator[str]:
        flat = "".join(_URL.sub(" ", text[:limit]).split())
        return map(operator.add, flat, flat[1:])  # flat[i] + flat[i + 1], made in C

    wanted = set(bigrams(rich))
    return len(wanted.intersection(bigrams(plain))) / len(wanted) if wanted else 1.0


def _join(prefix: str, index: str) -> str:
    return f"{prefix}.{index}" if prefix else index


def _is_plain(collected: _Collected) -> bool:
    return not any(collected.notes[n] for n in ("html-converted", "rtf-converted", "enriched-converted"))


def _check_verdict(flt: Filter, part: Part, verdict: Verdict) -> None:
    """A filter's verdict must fit the part: the runner refuses anything that could leak input."""
    if part.role is Role.BODY:
        allowed = {Action.TEXT, Action.HOLD, Action.DROP}
    else:
        allowed = {Action.REPLACE, Action.HOLD, Action.DROP}
        if flt.may_pass_unchanged:
            allowed.add(Action.PASS)
    if verdict.action not in allowed:
        raise TypeError(f"filter {flt.name} answered {verdict.action} for a {part.role} part")
    unchanged = verdict.output is not None and verdict.output.data == part.payload
    if verdict.action is Action.REPLACE and unchanged and not flt.may_pass_unchanged:
        raise TypeError(f"filter {flt.name} returned its input unchanged")
