"""What every detoxified message must be, whatever went in: the checks shared by the corpus relay test,
the property tests, the fuzz target and the fault-injection tests.

``output_problems(data)`` returns a list of readable problems (empty = the message is fine), so a test over
hundreds of mails can collect them all and fail once with the full list; ``assert_clean_output`` raises.

The checks are the same as tests/corpus/test_corpus_mail.py's invariants:

* the message re-parses with ``policy=default`` and no part has a defect;
* only the part types detox may deliver (text/plain, text/csv, multipart/mixed, message/rfc822 and
  disarmed PDF, PNG/JPEG, ZIP and OOXML), each disarmed kind re-checked by the independent checks in
  :mod:`support.inert` (which share no code with the converters);
* ``X-Detox-Id`` and ``X-Detox-Actions`` are there;
* CRLF line endings (when the bytes are as they travel over SMTP), no line over 998 bytes;
* the first part is an inline text/plain body; every text part is UTF-8 and decodes strictly, with no
  C0/C1 control characters besides TAB, LF, FF and CR.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Set
from email.message import EmailMessage, Message

from .inert import (
    OFFICE_OUTPUT_TYPES,
    assert_image_clean,
    assert_inert,
    assert_office_clean,
    assert_zip_clean,
)

ALLOWED_TYPES = frozenset(
    {
        "text/plain",
        "text/csv",
        "multipart/mixed",
        "message/rfc822",
        "application/pdf",
        "image/png",
        "image/jpeg",
        "application/zip",
        *OFFICE_OUTPUT_TYPES,
    }
)
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")

__all__ = [
    "ALLOWED_TYPES",
    "assert_clean_output",
    "leaves",
    "output_problems",
    "output_text",
    "parse_output",
]


def parse_output(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def leaves(msg: Message) -> list[Message]:
    """Every non-container part, including those inside attached message/rfc822 parts."""
    return [p for p in msg.walk() if not p.is_multipart()]


def output_text(data: bytes) -> str:
    """All text a reader gets: the body, text attachments and the bodies of forwarded messages."""
    msg = parse_output(data)
    texts = []
    for part in leaves(msg):
        if part.get_content_type() in ("text/plain", "text/csv"):
            assert isinstance(part, EmailMessage)
            texts.append(str(part.get_content()))
    return "\n".join(texts)


def _disarmed_problem(ctype: str, payload: bytes, withheld: Set[str]) -> str | None:
    try:
        if ctype == "application/pdf":
            assert_inert(payload)
        elif ctype in ("image/png", "image/jpeg"):
            assert_image_clean(payload)
        elif ctype == "application/zip":
            assert_zip_clean(payload, withheld)
        elif ctype in OFFICE_OUTPUT_TYPES:
            assert_office_clean(payload, ctype)
    except Exception as exc:  # an assertion or the checker failing to read the part: both are findings
        return f"{ctype} part fails the inert check: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def output_problems(
    data: bytes, *, queue_id: str | None = None, withheld: Set[str] = frozenset(), crlf: bool = True
) -> list[str]:
    """Everything wrong with one detoxified message (empty when it is clean).

    ``withheld``: SHA-256s of parts detox held or dropped (from the report or the audit record); none of
    them may come back inside a repacked ZIP. ``crlf``: the bytes are as sent over SMTP (the relay's
    output); ``detox scan`` and Maildir files use LF.
    """
    problems: list[str] = []
    try:
        msg = parse_output(data)
    except Exception as exc:
        return [f"does not parse: {type(exc).__name__}: {exc}"]

    defects = [(p.get_content_type(), type(d).__name__) for p in msg.walk() for d in p.defects]
    if defects:
        problems.append(f"MIME defects in the output: {defects[:5]}")
    types = {p.get_content_type() for p in msg.walk()}
    if not types <= ALLOWED_TYPES:
        problems.append(f"part types outside the allowed set: {sorted(types - ALLOWED_TYPES)}")
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart() or ctype in ("text/plain", "text/csv", "message/rfc822"):
            continue
        payload = part.get_payload(decode=True)
        found = _disarmed_problem(ctype, payload if isinstance(payload, bytes) else b"", withheld)
        if found:
            problems.append(found)

    if msg["X-Detox-Actions"] is None:
        problems.append("no X-Detox-Actions header")
    if queue_id is not None and msg["X-Detox-Id"] != queue_id:
        problems.append(f"X-Detox-Id is {msg['X-Detox-Id']!r}, expected {queue_id!r}")
    elif msg["X-Detox-Id"] is None:
        problems.append("no X-Detox-Id header")

    eol = b"\r\n" if crlf else b"\n"
    lines = data.split(eol)
    if lines[-1] != b"":
        problems.append("the message does not end with a line break")
    if crlf:
        bare = [i for i, line in enumerate(lines) if b"\r" in line or b"\n" in line]
        if bare:
            problems.append(f"bare CR or LF on lines {bare[:5]}")
    long = [(i, len(line)) for i, line in enumerate(lines) if len(line) > MAX_LINE]
    if long:
        problems.append(f"lines longer than {MAX_LINE} bytes (line, length): {long[:5]}")

    first = msg.get_payload(0) if msg.is_multipart() else msg
    if not isinstance(first, EmailMessage) or first.get_content_type() != "text/plain":
        problems.append("the first part is not a text/plain body")
    elif first.get_content_disposition() is not None:
        problems.append("the body is an attachment")
    for leaf in leaves(msg):
        if leaf.get_content_maintype() != "text":
            continue
        label = f"{leaf.get_content_type()} {leaf.get_filename() or '(body)'}"
        if leaf.get_content_charset() != "utf-8":
            problems.append(f"{label}: charset {leaf.get_content_charset()!r}, not utf-8")
            continue
        raw = leaf.get_payload(decode=True)
        try:
            decoded = (raw if isinstance(raw, bytes) else b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{label}: not valid UTF-8: {exc}")
            continue
        controls = CONTROL.findall(decoded)
        if controls:
            problems.append(f"{label}: {len(controls)} control characters, e.g. {sorted(set(controls))[:5]}")
    return problems


def assert_clean_output(
    data: bytes, *, queue_id: str | None = None, withheld: Set[str] = frozenset(), crlf: bool = True
) -> EmailMessage:
    """Fail with every problem found; return the parsed message when there is none."""
    problems = output_problems(data, queue_id=queue_id, withheld=withheld, crlf=crlf)
    assert not problems, "detoxified message is not clean:\n  " + "\n  ".join(problems)
    return parse_output(data)
