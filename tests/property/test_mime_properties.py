"""Property tests: Pipeline.run over generated MIME trees (tests/property/mimegen.py).

For every generated mail (multipart/mixed/alternative/related and forwarded message/rfc822 nesting;
text/plain and text/html in ISO-2022-JP with ①㈱髙, CP932, EUC-JP, UTF-8, under right, missing and wrong
labels, base64/QP/8bit/7bit; RFC 2047/2231 and raw 8-bit file names; random attachment bytes and types,
a few real images and PDFs through the bubblewrap sandbox; header garbage):

1. Pipeline.run never raises;
2. the output parses with ``policy=default`` without defects and holds only the allowed part types, each
   disarmed part re-checked independently (support.invariants, the corpus tests' invariants);
3. every text part (a body, or a text/plain, text/csv or text/html attachment) becomes text — it is not
   held or dropped, unless it is the unused half of a multipart/alternative — and the Japanese words
   it carries are in the output's text;
4. every held part is listed in the notice with its hold id (queue id / part id);
5. the Subject (RFC 2047 words cut every 8 characters, ISO-2022-JP / UTF-8 / Shift_JIS) and every file
   name (RFC 2231 with continuations, RFC 2047 in quotes, raw 8-bit) come out decoded right.

For broken mails (the same trees cut, bit-flipped, with garbage Content-* headers, lost boundaries, NULs,
bad base64, 20-120 levels of nesting, bare LF) properties 1, 2 and 4 hold.

Example counts come from the hypothesis profile (tests/property/conftest.py): ``ci`` is derandomized.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from mimegen import GeneratedMail, hostile_mails, mails
from profiles import profile
from support.invariants import assert_clean_output, output_text, parse_output
from support.pipelines import pipeline_runner

from detox.envelope import Envelope
from detox.notice import hold_id
from detox.pipeline.runner import DetoxResult

ENVELOPE = Envelope("019ABCDEF0123456789A", "sender@example.jp", ("taro@city.example.lg.jp",))

pytestmark = [pytest.mark.property, pytest.mark.timeout(300, method="thread")]

# One pipeline for every example (the default configuration: bubblewrap sandbox, fail closed).
_run = pipeline_runner(ENVELOPE, shared=True)


def run(mail: GeneratedMail) -> DetoxResult:
    return _run(mail.raw)  # property 1: any exception fails the example


def check_common(result: DetoxResult) -> None:
    """Properties 2 and 4."""
    withheld = {r.sha256 for r in result.records if r.action in ("hold", "drop")}
    msg = assert_clean_output(result.output, queue_id=ENVELOPE.queue_id, withheld=withheld)
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None
    notice = str(body.get_content())  # type: ignore[attr-defined]
    unlisted = [r.part_id for r in result.held if hold_id(ENVELOPE.queue_id, r.part_id) not in notice]
    assert not unlisted, f"held parts missing from the notice: {unlisted}"


@profile(120)
@given(mails())
def test_generated_mails(mail: GeneratedMail) -> None:
    result = run(mail)
    check_common(result)
    assert str(parse_output(result.output)["Subject"]) == mail.subject, "Subject decoded wrong"
    records = {r.part_id: r for r in result.records}
    text = output_text(result.output)
    for leaf in mail.leaves:
        record = records.get(leaf.part_id)
        assert record is not None, f"no record for part {leaf.part_id}: {sorted(records)}"
        assert record.declared_type == leaf.declared_type, (leaf, record)
        if leaf.filename is not None:
            assert record.filename == leaf.filename, "file name decoded wrong"
        if not leaf.textual:
            continue
        if record.action == "drop" and record.reason == "alternative-unused":
            continue
        assert record.action in ("text", "replace"), f"text part {leaf.part_id} {record.action}: {record}"
        lost = [w for w in leaf.words if w not in text]
        assert not lost, f"part {leaf.part_id} ({record.charset}): words lost {lost}"


@profile(100)
@given(hostile_mails())
def test_broken_mails(mail: GeneratedMail) -> None:
    result = run(mail)
    check_common(result)
    parse_output(result.output)
