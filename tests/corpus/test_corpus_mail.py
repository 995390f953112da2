"""Every mail of the third-party corpus through the whole pipeline (../shared/corpus; see conftest.py).

1. Robustness and output invariants, for all 531 mails: Pipeline.run never raises (any parse problem
   must become a held part), and its output re-parses cleanly, contains only text/plain, text/csv,
   multipart/mixed and message/rfc822, carries the trace headers, has a UTF-8 text body, passes no
   input attachment through byte-for-byte (unless it is text/plain or text/csv), keeps every line
   within 998 bytes, and carries no control characters in its text.
2. Text survival, for the mails where another project ships the expected decoded text (Stalwart JSON,
   mime4j ``_decoded`` files, zbateson expected-files; see expected.py), plus the Japanese mails
   decoded by the stdlib with their declared charsets: the expected words and Japanese runs must be
   in our output text.
3. The ``detox scan`` CLI gives the same result as the relay's Pipeline.run on Japanese mails.

Mails that are legitimately different, and detox bugs found by these tests, are listed below with
their reasons; the bugs are strict xfails, so a fix shows up as an XPASS that fails the run.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import hashlib
import json
import re
import subprocess
import sys
import traceback
from email.message import EmailMessage
from pathlib import Path

import expected as oracle
import pytest
from support.inert import (
    OFFICE_OUTPUT_TYPES,
    assert_image_clean,
    assert_inert,
    assert_office_clean,
    assert_zip_clean,
)
from support.invariants import ALLOWED_TYPES, CONTROL, MAX_LINE, leaves
from support.invariants import parse_output as parse

from detox.config.loader import load_config
from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.pipeline.runner import DetoxResult, Pipeline

ENVELOPE = Envelope("019ABCDEF0123456789A", "sender@example.jp", ("taro@city.example.lg.jp",))
# The allowed output types, line limit and control set are the ones every output check uses
# (support.invariants: also the property, fuzz and relay tests).
PER_MAIL_TIMEOUT = 60

# pytest-timeout's default "signal" method arms SIGALRM/ITIMER_REAL, which detox's per-filter deadline
# (detox.pipeline.deadline.deadline) re-arms and then cancels: after the first filter the test would have
# no timeout at all. The "thread" method is not affected (on expiry it dumps all stacks and ends the run).
per_mail_timeout = pytest.mark.timeout(PER_MAIL_TIMEOUT, method="thread")

# Share of the oracle's tokens (runs of 4+ CJK characters, words of 6+ letters; see expected.tokens)
# that must be found in our output, overall and among the non-ASCII tokens alone. Measured when this
# was written: every mail not listed below keeps 100 % of its tokens (179 oracle evaluations on 137
# mails, 5,093 tokens of which 638 non-ASCII; and the 20 Japanese mails of the stdlib oracle), while
# the failures are all-or-nothing (0-11 %: a held body, base64 gibberish). A charset mistake destroys
# most non-ASCII tokens, so 95 % catches any real loss and leaves room for a harmless rendering
# change (e.g. a hidden HTML element dropped by the converter).
MIN_SURVIVAL = 0.95

# -- known differences ------------------------------------------------------------------------------
# Mail id (path under mail/) -> why the check does not apply. Keep these lists small and explained.

# Legitimately different from the oracle: skipped by the text-survival test.
ORACLE_DIFFERS = {
    "mime4j/mimetools-testmsgs/infinite.msg": (
        "the only part is a text/plain attachment whose bytes are a whole mail (libmagic: message/rfc822);"
        " detox holds text attachments that are not detected as text (reason not-text), by policy"
    ),
    "stalwart-mail-parser/malformed/020.eml": (
        "a part with two Content-Type fields (multipart/alternative, then text/plain): Stalwart lets the"
        " last win, detox (the stdlib) the first; both are legitimate readings of an ambiguous part"
    ),
    "stalwart-mail-parser/malformed/021.eml": (
        "same two-Content-Type ambiguity as malformed/020.eml (Stalwart: last wins, detox: first)"
    ),
}

# Detox bugs, per check: the test is a strict xfail for these mails.
# Fixed so far: folded boundaries, base64 message/rfc822, binary and control characters in plain
# bodies, text/richtext (see git log). A new bug goes here as {check: {mail id: reason}}.
KNOWN_BUGS: dict[str, dict[str, str]] = {}


def _expect_bug(request: pytest.FixtureRequest, check: str, mail_id: str) -> None:
    reason = KNOWN_BUGS.get(check, {}).get(mail_id)
    if reason:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# -- running the pipeline once per mail and configuration -----------------------------------------

_PIPELINES: dict[str, Pipeline] = {}
_RESULTS: dict[tuple[str, str], DetoxResult | str] = {}


def _pipeline(label: str) -> Pipeline:
    if label not in _PIPELINES:
        if label == "default":
            config = DetoxConfig()
        else:  # "no-defang": URLs left as they are, so text can be compared with an oracle
            config = DetoxConfig.model_validate({"urls": {"defang": False}})
        _PIPELINES[label] = Pipeline(config)
    return _PIPELINES[label]


def run_pipeline(mail, label: str, timings) -> DetoxResult:
    """The cached result of Pipeline.run on ``mail`` (a conftest.CorpusMail); fails the test if the
    pipeline raised. ``timings`` is the pipeline_timings fixture."""
    key = (label, mail.id)
    if key not in _RESULTS:
        raw = mail.read()
        pipeline = _pipeline(label)
        with timings.measure(label, mail.id):
            try:
                _RESULTS[key] = pipeline.run(raw, ENVELOPE)
            except Exception:
                _RESULTS[key] = traceback.format_exc()
    result = _RESULTS[key]
    if isinstance(result, str):
        pytest.fail(f"Pipeline.run raised on {mail.rel}:\n{result}", pytrace=False)
    return result


def output_texts(output: bytes) -> tuple[str, str]:
    """(the main text body, all text of the output: body, text attachments, forwarded bodies)."""
    msg = parse(output)
    body = msg.get_body(preferencelist=("plain",))
    main = body.get_content() if body is not None else ""
    everything = [p.get_content() for p in leaves(msg) if p.get_content_type() in ("text/plain", "text/csv")]
    return main, "\n".join(everything)


# -- 1. every mail: robustness and output invariants ----------------------------------------------


@pytest.mark.corpus
@per_mail_timeout
def test_pipeline_completes(corpus_mail, pipeline_timings):
    """No exception escapes Pipeline.run: a parse problem must become a held part."""
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    assert result.output
    assert result.report.message.sha256 == corpus_mail.sha256, "read a different file than listed"
    for record in result.report.parts_json():
        assert record["action"] in {"text", "replace", "pass", "hold", "drop"}, record
        assert re.fullmatch("[0-9a-f]{64}", record["sha256"]), record


@pytest.mark.corpus
@per_mail_timeout
def test_output_is_clean_inert_mime(corpus_mail, pipeline_timings):
    """(a) re-parses without defects, (b) only allowed types, (c) trace headers, (f) line lengths."""
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    msg = parse(result.output)

    defects = [(p.get_content_type(), type(d).__name__) for p in msg.walk() for d in p.defects]
    assert not defects, f"our own output has MIME defects: {defects}"

    types = sorted({p.get_content_type() for p in msg.walk()})
    withheld = {r.sha256 for r in result.records if r.action in ("hold", "drop") and r.sha256}
    assert set(types) <= ALLOWED_TYPES, f"output has part types outside the allowed set: {types}"
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype == "application/pdf":
            assert_inert(part.get_payload(decode=True))
        elif ctype in ("image/png", "image/jpeg"):
            assert_image_clean(part.get_payload(decode=True))
        elif ctype == "application/zip":
            assert_zip_clean(part.get_payload(decode=True), withheld)
        elif ctype in OFFICE_OUTPUT_TYPES:
            assert_office_clean(part.get_payload(decode=True), ctype)

    assert msg["X-Detox-Id"] == ENVELOPE.queue_id
    assert msg["X-Detox-Actions"] is not None
    # A value longer than a line is folded right after the colon by the stdlib, hence the strip().
    assert str(msg["X-Detox-Actions"]).strip() == result.actions

    lines = result.output.split(b"\r\n")
    assert lines[-1] == b"", "output does not end with CRLF"
    bare = [i for i, line in enumerate(lines) if b"\r" in line or b"\n" in line]
    assert not bare, f"bare CR or LF on output lines {bare[:5]}"
    long = [(i, len(line)) for i, line in enumerate(lines) if len(line) > MAX_LINE]
    assert not long, f"output lines longer than {MAX_LINE} bytes (line, length): {long[:5]}"


@pytest.mark.corpus
@per_mail_timeout
def test_body_is_utf8_text(corpus_mail, pipeline_timings):
    """(d) the message starts with a text/plain body in UTF-8; every text part decodes strictly."""
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    msg = parse(result.output)
    first = msg.get_payload(0) if msg.is_multipart() else msg
    assert isinstance(first, EmailMessage)
    assert first.get_content_type() == "text/plain"
    assert first.get_content_disposition() is None, "the body must not be an attachment"
    for part in leaves(msg):
        if part.get_content_maintype() != "text":
            continue
        assert part.get_content_charset() == "utf-8", part.get_content_type()
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        data.decode("utf-8")  # strict: raises on any invalid sequence


def _input_attachment_bytes(raw: bytes) -> set[bytes]:
    """The bytes of every leaf of the input, decoded and as transmitted."""
    blobs: set[bytes] = set()
    for part in email.message_from_bytes(raw, policy=email.policy.compat32).walk():
        if part.is_multipart():
            continue
        try:
            decoded = part.get_payload(decode=True)
        except Exception:  # a part the stdlib cannot decode has no decoded bytes to compare
            decoded = None
        if isinstance(decoded, bytes) and decoded.strip():
            blobs.add(decoded)
        encoded = part.get_payload()
        if isinstance(encoded, str) and encoded.strip():
            blobs.add(encoded.encode("utf-8", "surrogateescape"))
    return blobs


@pytest.mark.corpus
@per_mail_timeout
def test_no_attachment_passes_unchanged(corpus_mail, pipeline_timings):
    """(e) no output part carries an input part's bytes unchanged, unless it is text/plain or text/csv."""
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    inputs = _input_attachment_bytes(corpus_mail.read())
    for part in leaves(parse(result.output)):
        if part.get_content_type() in ("text/plain", "text/csv"):
            continue
        data = part.get_payload(decode=True)
        assert data not in inputs, f"{part.get_content_type()} part {part.get_filename()!r} is an input part"


@pytest.mark.corpus
@per_mail_timeout
def test_text_has_no_control_characters(corpus_mail, pipeline_timings, request):
    """(extra) the output text is text: no NUL, no C0/C1 controls besides TAB, LF, FF and CR."""
    _expect_bug(request, "no-control-characters", corpus_mail.id)
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    for part in leaves(parse(result.output)):
        if part.get_content_maintype() != "text":
            continue
        found = CONTROL.findall(part.get_content())
        assert not found, (
            f"{part.get_content_type()} {part.get_filename() or '(body)'}: {len(found)} control"
            f" characters, e.g. {sorted(set(found))[:8]}"
        )


BOUNDARY_DEFECTS = (
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.NoBoundaryInMultipartDefect,
)


def _structure_is_broken(raw: bytes) -> bool:
    """Whether the stdlib's modern parser (policy=default) also fails to read some multipart."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        return any(isinstance(d, BOUNDARY_DEFECTS) for part in msg.walk() for d in part.defects)
    except Exception:
        return True


@pytest.mark.corpus
@per_mail_timeout
def test_readable_multiparts_are_walked(corpus_mail, pipeline_timings, request):
    """(extra) detox holds a multipart as one unreadable unit only when its structure is really broken.

    Holding is the safe answer to a broken structure, but the reader then gets an empty body; if the
    stdlib's policy=default parser reads the same mail without a boundary defect, detox lost the text
    of a readable mail.
    """
    _expect_bug(request, "multipart-walked", corpus_mail.id)
    result = run_pipeline(corpus_mail, "default", pipeline_timings)
    held = [
        r["part_id"]
        for r in result.report.parts_json()
        if r["declared_type"].startswith("multipart/") and r["action"] == "hold"
    ]
    if held:
        assert _structure_is_broken(corpus_mail.read()), (
            f"multipart part(s) {held} held whole, but the stdlib reads their structure without defects"
        )


# -- 2. text survival against the corpus's own expected texts --------------------------------------


def _survival_message(exp: oracle.Expected, results: list[oracle.SlotResult]) -> str:
    lines = [f"oracle {exp.source}:"]
    for r in results:
        chosen = r.chosen.label if r.chosen else "(a member without tokens)"
        lines.append(f"  {r.slot.label} [{r.slot.where}] via {chosen}: {r.survival.describe()}")
    return "\n".join(lines)


def _non_ascii(survival: oracle.Survival) -> oracle.Survival:
    return oracle.Survival(
        tuple(t for t in survival.expected if not t.isascii()),
        tuple(t for t in survival.missing if not t.isascii()),
    )


def _assert_survives(exp: oracle.Expected, body: str, everything: str) -> int:
    total, results = oracle.evaluate(exp, body, everything)
    message = _survival_message(exp, results)
    assert total.fraction >= MIN_SURVIVAL, message
    assert _non_ascii(total).fraction >= MIN_SURVIVAL, "non-ASCII tokens lost\n" + message
    return total.total


@pytest.mark.corpus
@per_mail_timeout
def test_expected_text_survives(oracle_mail, corpus_dir, pipeline_timings, request):
    """The words (and Japanese runs) of the oracle's decoded text are in our output text."""
    if oracle_mail.id in ORACLE_DIFFERS:
        pytest.skip(ORACLE_DIFFERS[oracle_mail.id])
    _expect_bug(request, "text-survives", oracle_mail.id)
    result = run_pipeline(oracle_mail, "no-defang", pipeline_timings)
    body, everything = output_texts(result.output)
    checked = sum(
        _assert_survives(exp, body, everything) for exp in oracle.load_all(oracle_mail.path, corpus_dir)
    )
    if not checked:
        pytest.skip("the expected text has no comparable token (no 4+ CJK run, no 6+ letter word)")


@pytest.mark.corpus
@per_mail_timeout
def test_japanese_text_survives(japanese_mail, pipeline_timings):
    """The Japanese runs of every text part that decodes strictly with its declared charset."""
    exp = oracle.load_stdlib_japanese(japanese_mail.path)
    assert exp is not None
    result = run_pipeline(japanese_mail, "no-defang", pipeline_timings)
    body, everything = output_texts(result.output)
    _assert_survives(exp, body, everything)


# text/richtext (RFC 1341) is not RTF, but detox hands it to the RTF converter, which passes the
# markup through: the body shows "<bold>...</bold><nl>". These are the corpus mails whose richtext part
# is rendered (flanker/torture.eml has one too, but there it is the unused alternative).
RICHTEXT_MAILS = [
    "mime4j/mimetools-testmsgs/multi-frag.msg",
    "mime4j/mimetools-testmsgs/multi-nested.msg",
    "mime4j/mimetools-testmsgs/multi-nested2.msg",
    "mime4j/mimetools-testmsgs/multi-nested3.msg",
]
RICHTEXT_COMMAND = re.compile(
    r"</?(?:bold|italic|underline|nl|np|smaller|bigger|fixed|center|excerpt)>", re.I
)


@pytest.mark.corpus
@pytest.mark.parametrize("mail_id", RICHTEXT_MAILS)
@per_mail_timeout
def test_richtext_body_is_rendered(mail_id, corpus_dir):
    raw = (corpus_dir / "mail" / mail_id).read_bytes()
    result = _pipeline("default").run(raw, ENVELOPE)
    body, _ = output_texts(result.output)
    assert "part 4 of the outer message" in body
    assert not RICHTEXT_COMMAND.search(body), RICHTEXT_COMMAND.findall(body)[:8]


# -- 3. the CLI gives the relay's result ------------------------------------------------------------

# Japanese mails, each with a string (checked by hand in the decoded mail) that must come out intact.
CLI_MAILS = {
    "mikel-mail/multi_charset/japanese_shift_jis.eml": "このメールはテスト用のメールです。",
    "mikel-mail/multi_charset/japanese_iso_2022.eml": "すみません。",
    "sisimai/bsd/lhost-mfilter-01.eml": "このメールは「m-FILTER」が自動的に生成して送信しています。",
    "deco-mail-filter/2-1-17.eml": "テスト-ja-sjis.txt",  # ISO-2022-JP file name of a Shift_JIS attachment
    "deco-mail-filter/3-2-13.eml": "テスト.zip",  # held: named in the notice and in the report
}
VARYING_HEADERS = {b"received", b"x-detox-id", b"date"}


def _without_varying_headers(message: bytes) -> bytes:
    """LF form of ``message`` without the top-level Received, X-Detox-Id and Date fields, and with its
    random MIME boundaries replaced by stable names."""
    text = message.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in VARYING_HEADERS
        if not skipping:
            kept.append(line)
    normalised = b"\n".join(kept) + sep + body
    # MIME boundaries are random per serialisation: number them in order of appearance.
    for index, boundary in enumerate(dict.fromkeys(re.findall(rb'boundary="([^"]+)"', normalised))):
        normalised = normalised.replace(boundary, b"BOUNDARY-%d" % index)
    return normalised


def _detox_command() -> list[str]:
    script = Path(sys.executable).with_name("detox")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "detox"]


@pytest.mark.corpus
@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize("mail_id", sorted(CLI_MAILS))
def test_cli_scan_matches_pipeline(mail_id, corpus_dir, tmp_path):
    path = corpus_dir / "mail" / mail_id
    raw = path.read_bytes()
    config_file = tmp_path / "detox.toml"
    config_file.write_text("# built-in defaults\n", encoding="utf-8")
    sender, rcpt = "sender@example.jp", "taro@city.example.lg.jp"
    out_file, report_file = tmp_path / "out.eml", tmp_path / "report.json"
    proc = subprocess.run(
        [
            *_detox_command(),
            *("scan", str(path), "--config", str(config_file)),
            *("--output", str(out_file), "--report", str(report_file)),
            *("--mail-from", sender, "--rcpt", rcpt),
        ],
        capture_output=True,
        timeout=110,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")

    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["message"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert report["parts"], "the report lists no part"
    for part in report["parts"]:
        assert re.fullmatch("[0-9a-f]{64}", part["sha256"]), part
        assert part["action"] in {"text", "replace", "pass", "hold", "drop"}, part

    # The relay's view: same bytes, same envelope, same queue id (it is in the notice text).
    envelope = Envelope(report["queue_id"], sender, (rcpt,), helo="detox-scan")
    relay = Pipeline(load_config(config_file)).run(raw, envelope)
    scanned = out_file.read_bytes()
    assert b"\r\n" not in scanned, "scan writes LF line endings, like the relay's Maildir files"
    assert _without_varying_headers(scanned) == _without_varying_headers(relay.output)
    assert report["parts"] == json.loads(json.dumps(relay.report.parts_json()))
    assert report["actions"] == relay.actions

    _, everything = output_texts(scanned.replace(b"\n", b"\r\n"))
    names = " ".join(p["filename"] or "" for p in report["parts"])
    assert CLI_MAILS[mail_id] in everything + names, "the Japanese text did not come out intact"
