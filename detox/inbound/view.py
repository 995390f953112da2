"""What the pipeline does with the authentication result carried in the spooled envelope.

The result was decided before the 250 (:mod:`detox.inbound.check`); the worker only renders it: our
``Authentication-Results`` header, the notice's lines (verified sender, 「送信元を確認できませんでした」,
「なりすまし」 warnings) and, for a hold, the whole message as one held item (part ``0``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.inbound.check import Outcome
from detox.inbound.decide import render_warnings
from detox.inbound.results import render_header
from detox.pipeline.model import Action, PartRecord

WHOLE_MESSAGE_ROLE = "message"
INBOUND_FILTER = "inbound"


@dataclass(frozen=True, slots=True)
class InboundView:
    outcome: Outcome
    header: str  # the Authentication-Results value
    notice_lines: tuple[str, ...]
    prefix: str  # the Subject prefix of a held message's notice

    @property
    def held(self) -> bool:
        # "reject" reaches the pipeline only from ``detox scan`` (the relay answers 550 and keeps
        # nothing): it shows what the relay refused as a held message.
        return self.outcome.decision.action in ("hold", "reject")

    @property
    def reason(self) -> str:
        return self.outcome.decision.reason or "spoofed-protected-domain"


def inbound_view(config: DetoxConfig, envelope: Envelope) -> InboundView | None:
    if envelope.auth is None:
        return None
    outcome = Outcome.from_json(envelope.auth)
    authserv_id = config.inbound.authserv_id or config.server.hostname
    return InboundView(
        outcome=outcome,
        header=render_header(authserv_id, outcome.results),
        notice_lines=tuple(render_warnings(outcome.decision, config.inbound)),
        prefix=config.inbound.held_subject_prefix,
    )


def whole_message_record(raw: bytes, reason: str) -> PartRecord:
    return PartRecord(
        part_id="0",
        role=WHOLE_MESSAGE_ROLE,
        declared_type="message/rfc822",
        detected_type="message/rfc822",
        filename=None,
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        filter=INBOUND_FILTER,
        action=Action.HOLD.value,
        reason=reason,
    )
