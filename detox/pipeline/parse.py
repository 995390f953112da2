"""Reading a mail as the pipeline does: the read policy, header values, encapsulated messages.

Everything that looks at the original's bytes — the runner, and the quarantine when it finds a held
part's bytes again — reads them through these functions, so both see the same tree.
"""

from __future__ import annotations

import binascii
import email
import quopri
import re
from email.message import Message
from email.policy import Compat32
from typing import Any

from detox.text.headers import decode_header_value


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


def decode_encapsulated(inner: Message, cte: str) -> Message:
    """Re-parse a transfer-encoded message/rfc822 payload from its decoded bytes.

    RFC 2046 forbids a transfer encoding other than 7bit/8bit/binary there, but senders do encode
    message/rfc822; the parser does not decode it, so the inner mail would be one blob of base64.
    ``cte`` is ``base64`` or ``quoted-printable``.
    """
    encoded = inner.as_bytes(policy=READ_POLICY)
    decoded = _b64decode_lenient(encoded) if cte == "base64" else quopri.decodestring(encoded)
    return parse_message(decoded)


def _b64decode_lenient(data: bytes) -> bytes:
    """Base64 as mail software writes it: stray characters, missing or early padding tolerated."""
    text = re.sub(rb"[^A-Za-z0-9+/=]", b"", data).split(b"=", 1)[0]
    if len(text) % 4 == 1:  # a lone trailing character carries no whole byte
        text = text[:-1]
    return binascii.a2b_base64(text + b"=" * (-len(text) % 4))


def first_header(msg: Message, name: str) -> str | None:
    """The first ``name`` field of ``msg``, decoded (RFC 2047, 8-bit Japanese), or None."""
    for key, value in msg.raw_items():
        if key.lower() == name.lower():
            return decode_header_value(str(value))
    return None


_TYPE_JUNK = re.compile(r"[^\x21-\x7e]")


def declared_type(node: Message) -> str:
    """The sender's Content-Type as the stdlib reads it, without spaces and control characters.

    The value is shown as it is in the notice ("名前のない添付ファイル（TYPE）"), the report and the
    audit log; a type like ``multipart/\\x00...`` must not carry a NUL or a line break into them.
    """
    return _TYPE_JUNK.sub("", node.get_content_type())


def disposition(node: Message) -> str:
    """inline / attachment / "" from the raw header: the stdlib's parsed header raises on some
    RFC 2231 parameters (an ISO-2022-JP file name with Microsoft characters, for one)."""
    for key, value in node.raw_items():
        if key.lower() == "content-disposition":
            return str(value).split(";", 1)[0].strip().lower()
    return ""
