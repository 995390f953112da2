"""Compose the clean message: kept headers, our trace headers, one text body, disarmed attachments.

The output is built from scratch; nothing of the original's MIME structure is reused, so a header
or part we did not choose to write cannot leak through.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage, Message

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline.model import Output
from detox.text.charset import encode_body
from detox.text.headers import decode_header_value

# Headers carried over from the original (decoded, then re-encoded by us). Everything else —
# Content-*, DKIM-Signature, ARC-*, List-*, X-* — belongs to the original body or its signatures.
KEPT_HEADERS = (
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Message-ID",
    "In-Reply-To",
    "References",
)
_SINGLE = frozenset(
    {"date", "from", "sender", "reply-to", "subject", "message-id", "in-reply-to", "references"}
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SMTP = email.policy.SMTP


@dataclass(frozen=True, slots=True)
class Attachment:
    output: Output
    part_id: str


@dataclass(slots=True)
class Forwarded:
    """A forwarded message (message/rfc822), detoxified recursively and attached as such."""

    original: Message
    body_text: str
    attachments: Sequence[Attachment | Forwarded]
    part_id: str


def _clean(value: str) -> str:
    return _CONTROL.sub(" ", value).strip()


def _copy_headers(original: Message, out: EmailMessage) -> None:
    seen: set[str] = set()
    for name, raw in original.raw_items():
        lname = name.lower()
        canonical = next((h for h in KEPT_HEADERS if h.lower() == lname), None)
        if canonical is None or (lname in _SINGLE and lname in seen):
            continue
        seen.add(lname)
        value = _clean(decode_header_value(str(raw)))
        if not value:
            continue
        set_header(out, canonical, value)


def set_header(out: EmailMessage, name: str, value: str) -> None:
    """Set a header; if the structured parser rejects the value, keep it as RFC 2047 text."""
    try:
        out[name] = value
        out[name].fold(policy=_SMTP)  # surfaces problems now, not at serialisation time
        return
    except Exception:  # noqa: BLE001 - the stdlib header parser raises many types on hostile input
        del out[name]
    # e.g. an address with a non-ASCII local part: all-ASCII encoded words always fold.
    try:
        out[name] = Header(value, "utf-8").encode()
        out[name].fold(policy=_SMTP)
    except Exception:  # noqa: BLE001 - same reason; a header we cannot write is left out
        del out[name]


def _received(envelope: Envelope, hostname: str) -> str:
    helo = _clean(envelope.helo)[:200] or "unknown"
    helo = re.sub(r"[^\x21-\x7e]", "?", helo)
    client = re.sub(r"[^0-9a-fA-F.:]", "", envelope.client_address)[:64] or "unknown"
    when = email.utils.format_datetime(email.utils.localtime())
    rcpt = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else ""
    for_clause = f" for <{rcpt}>" if rcpt and rcpt.isascii() else ""
    trace = f"from {helo} ([{client}]) by {hostname} (detox) with ESMTP id {envelope.queue_id}"
    return f"{trace}{for_clause}; {when}"


def _body_part(target: EmailMessage, text: str, charset: str) -> None:
    data, label = encode_body(text, charset)
    if label == "utf-8":
        # base64: safe through any downstream (no 8BITMIME needed, no line-length limits).
        target.set_content(text, subtype="plain", charset="utf-8", cte="base64")
    else:
        target["Content-Type"] = f'text/plain; charset="{label}"'
        target["Content-Transfer-Encoding"] = "7bit"
        target.set_payload(data.decode("ascii"))


def _add_output(target: EmailMessage, output: Output) -> None:
    maintype, _, subtype = output.content_type.partition("/")
    filename = output.filename or "attachment"
    if maintype == "text":
        text = output.data.decode(output.charset or "utf-8", "replace")
        target.add_attachment(text, subtype=subtype, charset="utf-8", cte="base64", filename=filename)
    else:
        target.add_attachment(output.data, maintype=maintype, subtype=subtype, filename=filename)


def _fill(
    target: EmailMessage, text: str, attachments: Sequence[Attachment | Forwarded], config: DetoxConfig
) -> None:
    """The text body first; the first attachment turns the message into multipart/mixed."""
    _body_part(target, text, config.body.output_charset)
    for item in attachments:
        if isinstance(item, Attachment):
            _add_output(target, item.output)
        else:
            inner = EmailMessage()
            _copy_headers(item.original, inner)
            _fill(inner, item.body_text, item.attachments, config)
            target.add_attachment(inner)


def compose_message(
    original: Message,
    envelope: Envelope,
    body_text: str,
    attachments: Sequence[Attachment | Forwarded],
    actions: str,
    config: DetoxConfig,
) -> EmailMessage:
    out = EmailMessage()
    out["Received"] = _received(envelope, config.server.hostname)
    _copy_headers(original, out)
    if "Date" not in out:
        out["Date"] = email.utils.format_datetime(email.utils.localtime())
    if "From" not in out and envelope.mail_from:
        set_header(out, "From", _clean(envelope.mail_from))
    out["X-Detox-Id"] = envelope.queue_id
    out["X-Detox-Actions"] = actions
    out["MIME-Version"] = "1.0"
    _fill(out, body_text, attachments, config)
    return out


def serialize(msg: EmailMessage) -> bytes:
    """RFC 5322 bytes with CRLF line endings, 7-bit safe headers."""
    return msg.as_bytes(policy=_SMTP)
