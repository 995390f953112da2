"""Delivery status notifications (RFC 3464) for recipients detox gave up on.

A DSN goes to the envelope sender of the original, from the null sender ``<>``, as
``multipart/report; report-type=delivery-status``:

1. ``text/plain`` (UTF-8): what happened, in Japanese and English (``delivery.bounce_text``);
2. ``message/delivery-status``: per-message and per-recipient fields (Final-Recipient, Action,
   Status, Diagnostic-Code when the downstream server gave an SMTP reply, Last-Attempt-Date);
3. ``text/rfc822-headers``: the original's header section only, never its body — the sender is on
   the Internet side and may be forged: a DSN must not carry content anywhere (backscatter).

Whether a DSN may be sent at all is :func:`bounce_block`; see it for what counts as forged or malicious.
"""

from __future__ import annotations

import base64
import email.utils
import re
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import Header

from detox.config.schema import DetoxConfig
from detox.spool import KIND_DSN, KIND_RELEASE, DeliveryState
from detox.text.headers import decode_header_value
from detox.untrusted import for_log

MAX_RETURNED_HEADERS = 64 * 1024  # bytes of the original's header section put in a DSN
_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1" or "4.4.7"
    code: int | None  # the downstream's SMTP reply code, when there was one
    response: str  # its reply text (without the code)
    last_attempt: float
    expired: bool  # given up because of delivery.max_age_days


def enhanced_status(code: int | None, response: str, *, expired: bool) -> str:
    """The RFC 3463 status of a failed recipient: the server's own, else from its reply code."""
    if expired:
        return "4.4.7"  # delivery time expired, whatever the last temporary failure was
    match = _ENHANCED.match(response)
    if match and (code is None or str(code)[0] == match.group(1)):
        return ".".join(match.groups())
    return "5.0.0" if code is None or code >= 500 else "4.0.0"


def _is_own_domain(domain: str, own: Sequence[str]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in own)


def bounce_block(state: DeliveryState, config: DetoxConfig) -> str | None:
    """Why no DSN may go to this message's sender, or None when one may.

    "Forged or malicious" is decided from what detox knows (there is no SPF/DKIM check yet):

    * a null sender (``<>``): it is itself a bounce (RFC 5321 §4.5.5), and a DSN is never bounced;
    * a sender that is not a plain ASCII address, or is a MAILER-DAEMON;
    * a sender in one of our own ``server.accepted_domains`` (or a subdomain): our own staff never send
      from the Internet side, so that sender is forged;
    * a message any part of which was held for a reason in ``delivery.no_bounce_reasons`` (by default
      executables, encrypted archives, archive bombs, unsafe archive members): the usual payloads of
      mail sent from forged addresses;
    * an admin's release (例外措置) or a DSN of ours: failures are recorded, not bounced;
    * ``delivery.bounce_via`` unset: DSNs are off; the failure is recorded for the admin.
    """
    if state.kind == KIND_DSN:
        return "dsn"
    if state.kind == KIND_RELEASE:
        return "release"
    sender = state.mail_from.strip()
    if sender in ("", "<>"):
        return "null-sender"
    local, at, domain = sender.rpartition("@")
    if not at or not local or not domain or not sender.isascii() or re.search(r"[\s<>()\[\],;\\]", sender):
        return "invalid-sender"
    if local.lower() == "mailer-daemon":
        return "mailer-daemon-sender"
    if _is_own_domain(domain.lower().rstrip("."), config.server.accepted_domains):
        return "own-domain-sender"
    for reason in state.held_reasons:
        if reason in config.delivery.no_bounce_reasons:
            return f"held:{reason}"
    if not config.delivery.bounce_via:
        return "disabled"
    return None


def header_section(raw: bytes, limit: int = MAX_RETURNED_HEADERS) -> bytes:
    """The header section of a message (CRLF line endings), cut at a line boundary at ``limit``."""
    match = re.search(rb"\r?\n\r?\n", raw)
    head = raw[: match.start()] if match else raw
    lines = re.split(rb"\r?\n", head)
    out: list[bytes] = []
    size = 0
    for line in lines:
        if size + len(line) + 2 > limit:
            break
        out.append(line)
        size += len(line) + 2
    return b"".join(line + b"\r\n" for line in out)


def _header_value(headers: bytes, name: str) -> str | None:
    """One header of a raw header section, unfolded and decoded (untrusted)."""
    text = headers.decode("utf-8", "surrogateescape")
    match = re.search(rf"(?im)^{re.escape(name)}[ \t]*:(.*(?:\r?\n[ \t].*)*)", text)
    if not match:
        return None
    value = re.sub(r"\r?\n(?=[ \t])", "", match.group(1)).strip()
    return decode_header_value(value)


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(for_log(_CONTROL.sub(" ", text), limit).split())


def _rfc5322_date(when: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(when).astimezone())


def _recipient_lines(failed: Sequence[FailedRecipient], max_age_days: float) -> str:
    blocks = []
    for r in failed:
        if r.expired:
            why = (
                f"{max_age_days:g} 日間配送を試みましたが、届けられませんでした"
                f" / could not be delivered within {max_age_days:g} day(s)"
            )
        else:
            why = "宛先のメールサーバが受け取りを拒否しました / the recipient's mail server refused it"
        lines = [
            f"  宛先 / Recipient:  {_one_line(r.address)}",
            f"  状態 / Status:     {r.status} {why}",
        ]
        if r.code is not None:
            lines.append(f"  応答 / Reply:      {_one_line(f'{r.code} {r.response}', 300)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _encode_header(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode(linesep="\r\n")


def _base64_lines(data: bytes) -> bytes:
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return encoded if encoded.endswith(b"\r\n") else encoded + b"\r\n"


def build_dsn(
    config: DetoxConfig,
    state: DeliveryState,
    failed: Sequence[FailedRecipient],
    original_headers: bytes,
    *,
    dsn_id: str,
    now: float | None = None,
) -> bytes:
    """The DSN for ``failed`` recipients of ``state``: a complete message, CRLF line endings."""
    now = time.time() if now is None else now
    hostname = config.server.hostname
    subject = _header_value(original_headers, "Subject")
    message_id = _header_value(original_headers, "Message-ID")
    # Exactly the names config.loader.BOUNCE_PLACEHOLDERS lets delivery.bounce_text use.
    human = string.Template(config.delivery.bounce_text).safe_substitute(
        hostname=hostname,
        subject=_one_line(subject) if subject else "(件名なし / no subject)",
        received_at=datetime.fromtimestamp(state.received_at).astimezone().strftime("%Y-%m-%d %H:%M:%S %z"),
        queue_id=state.queue_id,
        recipients=_recipient_lines(failed, config.delivery.max_age_days),
    )
    human_bytes = human.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")

    status_lines = [
        f"Reporting-MTA: dns; {hostname}",
        f"X-Detox-Queue-ID: {state.queue_id}",
        f"Arrival-Date: {_rfc5322_date(state.received_at)}",
    ]
    for r in failed:
        status_lines += [
            "",
            f"Final-Recipient: rfc822; {_one_line(r.address, 500)}",
            "Action: failed",
            f"Status: {r.status}",
        ]
        if r.code is not None:
            # Only an SMTP reply is returned: our own connection errors name internal hosts.
            status_lines.append(f"Diagnostic-Code: smtp; {_one_line(f'{r.code} {r.response}', 500)}")
        status_lines.append(f"Last-Attempt-Date: {_rfc5322_date(r.last_attempt)}")
    delivery_status = ("\r\n".join(status_lines) + "\r\n").encode("ascii", "replace")

    boundary = f"=_detox_dsn_{secrets.token_hex(12)}"
    sender_from = config.delivery.bounce_from or f"MAILER-DAEMON@{hostname}"
    head = [
        f"From: {_encode_header('Mail Delivery System')} <{sender_from}>",
        f"To: <{state.mail_from}>",
        f"Subject: {_encode_header('配信不能のお知らせ / Undelivered Mail Returned to Sender')}",
        f"Date: {_rfc5322_date(now)}",
        f"Message-ID: <{dsn_id}.dsn@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    if message_id and re.fullmatch(r"<[!-~]{1,500}>", message_id.strip()):
        head += [f"In-Reply-To: {message_id.strip()}", f"References: {message_id.strip()}"]
    returned = header_section(original_headers)
    returned_cte = "7bit" if returned.isascii() else "base64"
    parts = [
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Description: Notification\r\n\r\n" + _base64_lines(human_bytes),
        b"Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n"
        + delivery_status,
        b"Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered message headers\r\n"
        + f"Content-Transfer-Encoding: {returned_cte}\r\n\r\n".encode()
        + (returned if returned_cte == "7bit" else _base64_lines(returned)),
    ]
    out = (
        "\r\n".join(head) + "\r\n\r\nThis is a MIME-encapsulated delivery status notification.\r\n"
    ).encode()
    for part in parts:
        out += f"\r\n--{boundary}\r\n".encode() + part
    out += f"\r\n--{boundary}--\r\n".encode()
    return out
