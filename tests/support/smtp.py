"""SMTP from the client's side: one send() to detox, and detox's replies as a client receives them.

Replies are compared with the constants detox sends (:mod:`detox.smtp.replies`), never with copies
of their text::

    assert client.rcpt(outsider) == expected(replies.RELAY_DENIED)             # smtplib: (code, text)
    assert await send(port, many) == reply_bytes(replies.TOO_MANY_HEADERS, limit=50)  # raw bytes
    assert line(*client.data(raw)).startswith(QUEUED)                          # then the queue id
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence

from detox.smtp import replies

__all__ = ["QUEUED", "expected", "line", "reply_bytes", "send"]

QUEUED = replies.QUEUED.format(queue_id="").encode("ascii")  # b"250 2.0.0 OK queued as "


def reply_bytes(reply: str, **values: object) -> bytes:
    """The reply line as detox writes it (without CRLF), its ``{limit}`` etc. filled in."""
    return reply.format(**values).encode("ascii")


def expected(reply: str, **values: object) -> tuple[int, bytes]:
    """The reply as smtplib returns it: (code, the text after the code)."""
    code, _, text = reply.format(**values).partition(" ")
    return int(code), text.encode("ascii")


def line(code: int, text: bytes) -> bytes:
    """smtplib's (code, text) back as the reply line the server sent."""
    return f"{code} ".encode() + text


def send(
    port: int,
    data: bytes,
    rcpts: Sequence[str] | None = None,
    *,
    sender: str = "hanako@vendor.example.com",
    helo: str = "mx.vendor.example.com",
    timeout: float = 30,
) -> str:
    """One transaction to detox on 127.0.0.1:``port``; asserts it was queued and returns the queue id."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout) as client:
        client.ehlo()
        client.mail(sender)
        for rcpt in rcpts or ["taro@city.example.lg.jp"]:
            client.rcpt(rcpt)
        code, text = client.data(data)
    reply = line(code, text)
    assert reply.startswith(QUEUED), reply
    return reply.removeprefix(QUEUED).decode()
