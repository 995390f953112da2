"""The pipeline runner: one message in, the clean message and its report out.

The work is done by the modules next to this one — :mod:`~detox.pipeline.parse` reads the mail,
:mod:`~detox.pipeline.walk` visits its tree, :mod:`~detox.pipeline.decide` has each part decided
(policy rules, filters, deadlines, failure policy), :mod:`~detox.pipeline.summary` adds the records
up and :mod:`~detox.pipeline.report` reports them; :class:`Pipeline` ties them together and composes
the result. Nothing reaches the output except text the filters produced and outputs they returned.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.message import Message

from detox.antivirus.clamd import ClamdClient
from detox.antivirus.scan import BY as ANTIVIRUS
from detox.antivirus.scan import WHOLE_MESSAGE, MessageScan, make_client
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import SandboxError
from detox.filters.base import Filter, FilterContext
from detox.inbound.view import InboundView, inbound_view, whole_message_record
from detox.notice import render_notice
from detox.pipeline.compose import compose_message, serialize
from detox.pipeline.deadline import deadline
from detox.pipeline.decide import Decider
from detox.pipeline.detect import detect_type
from detox.pipeline.model import Action, PartRecord, Role
from detox.pipeline.parse import parse_message
from detox.pipeline.policy import Policy
from detox.pipeline.registry import available_filters, build_pipeline
from detox.pipeline.report import MessageInfo, MessageReport, PartReport, sha256
from detox.pipeline.summary import actions_summary, conversion_lines, delivered_attachments
from detox.pipeline.vocabulary import URLS_DEFANGED, VIRUS
from detox.pipeline.walk import Collected, Walk, joined_text
from detox.sandbox import make_sandbox
from detox.sandbox.base import Sandbox
from detox.text.urls import defang_urls

# Names that lived here before the runner was split, for code that imports them from here.
__all__ = ["DetoxResult", "Pipeline", "deadline", "detect_type", "parse_message"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DetoxResult:
    output: bytes  # the clean message, CRLF line endings
    report: MessageReport
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
        self.decider = Decider(config, self.filters, self.policy)
        self.sandbox: Sandbox | None
        try:
            self.sandbox = make_sandbox(config)
        except SandboxError as exc:
            # Fail closed: without a sandbox every converter raises and its part is held.
            log.error("no sandbox for converters (%s); attachments needing one will be held", exc)
            self.sandbox = None
        # [antivirus]: one client per process (each scan opens its own connection).
        self.clamd: ClamdClient | None = (
            make_client(config.antivirus, config.resolve_path) if config.antivirus.enabled else None
        )

    def run(self, raw: bytes, envelope: Envelope) -> DetoxResult:
        scan = None
        if self.clamd is not None:
            # Before anything reads the message: raises AntivirusUnavailable (tempfail) when clamd
            # cannot give a verdict and antivirus.on_error = "tempfail".
            scan = MessageScan(self.config.antivirus, self.clamd, envelope.queue_id)
            scan.original(raw)
        msg = parse_message(raw)
        auth = inbound_view(self.config, envelope)
        if auth is not None and auth.held:
            return self._held_whole(msg, raw, envelope, auth, scan)
        sender_domain = envelope.mail_from.rpartition("@")[2].lower().rstrip(".")
        ctx = FilterContext(
            queue_id=envelope.queue_id,
            sender_domain=sender_domain,
            config=self.config,
            defang_urls=self.config.urls.defang
            and sender_domain not in self.config.urls.exempt_sender_domains,
            sandbox=self.sandbox,
        )
        walk = Walk(self.config, self.decider, ctx, scan)
        walk.ctx = replace(ctx, decide_member=walk.decide_member)
        if scan is not None and scan.held_message is not None:
            collected = Collected()  # held whole already: nothing of it is opened
        else:
            collected = walk.message_contents(msg, prefix="", depth=0)
        if scan is not None:
            held_as = scan.whole_message_reason()
            if held_as is not None:
                # Nothing of the message crosses: the notice names the one held original.
                collected = Collected(records=[_whole_message_record(msg, raw, held_as, scan)])

        body_text = joined_text(collected.texts)
        defanged = 0
        if ctx.defang_urls:
            result = defang_urls(body_text)
            body_text, defanged = result.text, result.count
        # URLs made safe anywhere (forwarded bodies, converted attachments) count in the notice.
        defanged += collected.notes.pop(URLS_DEFANGED, 0)
        records = tuple(collected.records)
        held = [r for r in records if r.action == Action.HOLD]
        actions = actions_summary(collected.notes, defanged, records)
        notice = ""
        if self.config.notice.enabled:
            notice = render_notice(
                self.config.notice,
                queue_id=envelope.queue_id,
                conversions=[
                    *(auth.notice_lines if auth is not None else ()),
                    *conversion_lines(self.config, collected.notes, defanged),
                ],
                held=held,
                delivered=delivered_attachments(records),
            )
        full_text = (notice + "\n" if notice else "") + body_text
        out = compose_message(
            msg,
            envelope,
            full_text if full_text.endswith("\n") else full_text + "\n",
            collected.attachments,
            actions,
            self.config,
            auth_results=auth.header if auth is not None else None,
        )
        output = serialize(out)
        report = MessageReport(
            queue_id=envelope.queue_id,
            message=MessageInfo.of(msg, raw),
            envelope=envelope,
            parts=tuple(PartReport.of(r) for r in records),
            urls_defanged=defanged,
            actions=actions,
            output_sha256=sha256(output),
            output_size=len(output),
            antivirus=scan.report() if scan is not None else None,
        )
        return DetoxResult(output, report, records, actions)

    def _held_whole(
        self, msg: Message, raw: bytes, envelope: Envelope, auth: InboundView, scan: MessageScan | None
    ) -> DetoxResult:
        """Sender authentication decided to hold the whole message (detox.inbound.decide): nothing
        of its content is opened or delivered; the recipients get the notice saying so (with the
        original's From, To and Subject), and the original waits in the quarantine (QUEUE_ID/0).

        When clamd found a signature in the original, the held record names it, so the release
        rule for viruses (--force and a second admin) applies to this hold too."""
        record = whole_message_record(raw, auth.reason)
        if scan is not None and scan.message_signature is not None:
            record.virus = scan.message_signature
        records = (record,)
        actions = actions_summary(Counter(), 0, records)
        if self.config.notice.enabled:
            text = render_notice(
                self.config.notice, queue_id=envelope.queue_id, conversions=auth.notice_lines, held=[record]
            )
        else:
            text = "\n".join(auth.notice_lines) + "\n"
        out = compose_message(
            msg,
            envelope,
            text,
            (),
            actions,
            self.config,
            auth_results=auth.header,
            subject_prefix=auth.prefix,
        )
        output = serialize(out)
        report = MessageReport(
            queue_id=envelope.queue_id,
            message=MessageInfo.of(msg, raw),
            envelope=envelope,
            parts=(PartReport.of(record),),
            urls_defanged=0,
            actions=actions,
            output_sha256=sha256(output),
            output_size=len(output),
            antivirus=scan.report() if scan is not None else None,
        )
        return DetoxResult(output, report, records, actions)


def _whole_message_record(msg: Message, raw: bytes, reason: str, scan: MessageScan) -> PartRecord:
    """The original as one held part, ``0`` (the quarantine's name for the whole message)."""
    try:
        declared = msg.get_content_type()
    except Exception:  # noqa: BLE001 - hostile headers; the type is unknown
        declared = "message/rfc822"
    signature = scan.whole_message_signature() if reason == VIRUS else None
    return PartRecord(
        part_id=WHOLE_MESSAGE,
        role=Role.ATTACHMENT.value,
        declared_type=declared,
        detected_type="message/rfc822",
        filename=None,
        size=len(raw),
        sha256=sha256(raw),
        filter=ANTIVIRUS,
        action=Action.HOLD.value,
        reason=reason,
        error=None if signature else f"the message could not be scanned ({reason})",
        virus=signature,
    )
