"""The filter contract, on every installed filter, the sandboxed ones in the real sandbox (bubblewrap).

For each filter registered under ``detox.filters`` (tests/support/filter_samples.py has an input of
its type; a filter without one fails here):

* a representative input is converted, and the verdict keeps the contract
  (:func:`detox.filters.contract.verdict_problems`): the actions its part's role allows, never the
  input unchanged unless the filter is declared inert, only the reasons and notes it declares;
* garbage of every type never comes out unchanged, and never with an undeclared reason or note;
* an input that makes it fail is held, dropped or retried as ``on_error`` says;
* it honours the deadline: a heavy input under a short ``timeout_s`` ends in time;
* a sandboxed filter answers a converter's malformed answer with one error, SandboxAnswerError.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest
from support.filter_samples import SAMPLES
from support.sandboxes import real_sandbox

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.errors import PipelineTempFail, SandboxAnswerError
from detox.filters.base import Filter, FilterContext, NoOptions
from detox.filters.contract import verdict_problems
from detox.filters.pdf import PdfFilter, PdfOptions
from detox.filters.sandboxed import Answer, SandboxCall, SandboxedFilter
from detox.pipeline.model import Action, Part, PartRecord, Role, Verdict
from detox.pipeline.registry import available_filters, build_pipeline
from detox.pipeline.runner import DetoxResult, Pipeline
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.contract import pack_result

ENV = Envelope(
    "0190000000000CTR", "sender@example.jp", ("taro@city.example.lg.jp",), "192.0.2.1", "mx.example.jp"
)
NAMES = sorted(available_filters())
SANDBOXED = sorted(n for n, cls in available_filters().items() if issubclass(cls, SandboxedFilter))
# A container's REPLACE may carry the notes of the filters that decided its members.
MEMBER_NOTES = frozenset(note for cls in available_filters().values() for note in cls.notes)
DEADLINE_S = 0.5
# From the deadline to the filter's exception: the signal, and the sandbox killing its process group.
GRACE_S = 2.0


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return real_sandbox()


def context(sandbox: Sandbox | None, config: DetoxConfig | None = None) -> FilterContext:
    """A context like the runner's: the sandbox, and members decided by the first filter that claims them."""
    config = config or DetoxConfig()
    filters = build_pipeline(config)

    def decide_member(part: Part) -> tuple[Verdict, PartRecord]:
        for flt in filters:
            if flt.applies_to(part):
                verdict = flt.process(part, ctx)
                return verdict, record(part, flt.name, verdict)
        verdict = Verdict(Action.HOLD, reason="unsupported-type")
        return verdict, record(part, "-", verdict)

    ctx = FilterContext(
        "0190000000000CTR", "example.jp", config, sandbox=sandbox, decide_member=decide_member
    )
    return ctx


def record(part: Part, name: str, verdict: Verdict) -> PartRecord:
    return PartRecord(
        part.part_id, part.role.value, part.declared_type, part.detected_type, part.untrusted_filename,
        part.size, part.sha256, name, verdict.action.value, verdict.reason,
    )  # fmt: skip


def make(name: str) -> Filter:
    cls = available_filters()[name]
    return cls(cls.Options())


def run(config: DetoxConfig, raw: bytes, filters: list[Filter] | None = None) -> DetoxResult:
    return Pipeline(config, filters).run(raw, ENV)


def the_record(result: DetoxResult, name: str) -> PartRecord:
    """The record of the sample's part (the body for a body filter, else the attachment)."""
    sample = SAMPLES[name]
    if sample.role is Role.BODY:
        return next(r for r in result.records if r.role == Role.BODY.value)
    return next(r for r in result.records if r.filename == sample.filename)


def test_every_installed_filter_has_a_sample() -> None:
    missing = sorted(set(NAMES) - set(SAMPLES))
    assert not missing, f"add a representative input to tests/support/filter_samples.py for {missing}"


# -- a representative input: converted, within the contract -------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_filter_converts_a_representative_input(name: str, sandbox: Sandbox) -> None:
    cls, sample = available_filters()[name], SAMPLES[name]
    data = sample.make()
    part = sample.part(data)
    flt = make(name)
    assert flt.applies_to(part)
    verdict = flt.process(part, context(sandbox))
    assert verdict_problems(cls, part, verdict, member_notes=MEMBER_NOTES) == []
    assert verdict.action is not Action.HOLD, verdict
    # The same input in a mail, through the runner and its own check of the verdict.
    result = run(DetoxConfig(), sample.mail(data))
    got = the_record(result, name)
    assert (got.filter, got.action, got.reason, got.error) == (
        name,
        verdict.action.value,
        verdict.reason,
        None,
    )
    for member in result.records:
        if member.filter in available_filters() and member.action in ("hold", "drop"):
            assert member.reason in available_filters()[member.filter].reasons, member


# -- garbage: never passed unchanged, never an undeclared reason or note --------------------------


def _garbage_parts() -> list[Part]:
    samples: list[tuple[str, str, Role, bytes]] = [
        ("text/plain", "text/plain", Role.BODY, "本文".encode()),
        ("text/html", "text/html", Role.BODY, b"<p>x</p>"),
        ("text/rtf", "text/rtf", Role.BODY, b"{\\rtf1 x}"),
        ("text/enriched", "text/plain", Role.BODY, b"<bold>x</bold>"),
        ("text/plain", "text/plain", Role.ATTACHMENT, b"plain"),
        ("text/csv", "text/plain", Role.ATTACHMENT, b"a,b"),
        ("text/html", "text/html", Role.ATTACHMENT, b"<p>x</p>"),
        ("text/calendar", "text/calendar", Role.ATTACHMENT, b"BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"),
        ("application/pdf", "application/pdf", Role.ATTACHMENT, b"%PDF-1.4"),
        ("image/png", "image/png", Role.ATTACHMENT, b"\x89PNG\r\n\x1a\n"),
        ("image/jpeg", "image/jpeg", Role.ATTACHMENT, b"\xff\xd8\xff\xe0"),
        ("application/zip", "application/zip", Role.ATTACHMENT, b"PK\x05\x06" + bytes(18)),
        ("application/octet-stream", SAMPLES["office"].detected, Role.ATTACHMENT, b"PK\x03\x04"),
        ("application/msword", "application/msword", Role.ATTACHMENT, b"\xd0\xcf\x11\xe0"),
        ("application/pkcs7-signature", "application/octet-stream", Role.ATTACHMENT, b"\x30\x82"),
    ]
    garbage = bytes(range(256)) * 8
    parts = []
    for declared, detected, role, payload in samples:
        for data in (payload, garbage, b""):
            parts.append(Part("1", role, declared, detected, None, "x.docx", data, "0" * 64))
    return parts


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_filter_never_passes_input_unless_inert(name: str, sandbox: Sandbox) -> None:
    """Contract: garbage in never comes out unchanged, unless the filter's type is declared inert;
    whatever comes out carries only the reasons and notes the filter declares."""
    cls = available_filters()[name]
    flt = make(name)
    ctx = context(sandbox)
    for part in _garbage_parts():
        if not flt.applies_to(part):
            continue
        try:
            verdict = flt.process(part, ctx)
        except Exception:
            continue  # raising is fine: the runner holds the part
        assert verdict_problems(cls, part, verdict, member_notes=MEMBER_NOTES) == []
        if verdict.action is Action.TEXT:
            assert part.role is Role.BODY


# -- failure: on_error --------------------------------------------------------------------------

FAILING = sorted(n for n in NAMES if SAMPLES[n].broken is not None)


@pytest.mark.parametrize("on_error", ["hold", "drop", "tempfail"])
@pytest.mark.parametrize("name", FAILING)
def test_errors_map_to_on_error(name: str, on_error: str, sandbox: Sandbox) -> None:
    broken = SAMPLES[name].broken
    assert broken is not None
    with pytest.raises(Exception):  # noqa: B017 - any error: the runner maps them all
        make(name).process(SAMPLES[name].part(broken()), context(sandbox))
    config = DetoxConfig.model_validate({"filters": {name: {"on_error": on_error}}})
    if on_error == "tempfail":
        with pytest.raises(PipelineTempFail):
            run(config, SAMPLES[name].mail(broken()))
        return
    got = the_record(run(config, SAMPLES[name].mail(broken())), name)
    assert (got.filter, got.action, got.reason) == (name, on_error, "filter-error")
    assert got.error


def test_filters_without_a_failing_input_are_the_ones_that_cannot_fail() -> None:
    """Every filter whose converter can fail on its input has a failing sample. The text filters
    decode anything; archive answers every bad archive with a held reason (archive-corrupt...) and
    its members fail on their own: their on_error is exercised by the deadline below."""
    assert set(NAMES) - set(FAILING) <= {
        "archive",
        "enriched",
        "html",
        "plain",
        "rtf",
        "signature",
        "text-attachment",
    }
    assert {"calendar", "image", "office", "pdf"} <= set(FAILING)


# -- the deadline -------------------------------------------------------------------------------


@contextlib.contextmanager
def timed(flt: Filter, spent: list[float]) -> Iterator[None]:
    """Measure the filter's own process(), exceptions (the deadline's) included."""
    inner = flt.process

    def process(part: Part, ctx: FilterContext) -> Verdict:
        started = time.monotonic()
        try:
            return inner(part, ctx)
        finally:
            spent.append(time.monotonic() - started)

    flt.process = process  # type: ignore[method-assign]
    try:
        yield
    finally:
        del flt.process


HEAVY = sorted(n for n in NAMES if SAMPLES[n].heavy is not None)


# Known to catch the deadline's FilterTimeout with every other exception and answer a partial
# conversion past the deadline instead of letting the runner apply on_error (found by this suite).
@pytest.mark.parametrize("on_error", ["hold", "drop", "tempfail"])
@pytest.mark.parametrize("name", HEAVY)
def test_every_registered_filter_honours_the_deadline(name: str, on_error: str, sandbox: Sandbox) -> None:
    heavy = SAMPLES[name].heavy
    assert heavy is not None
    config = DetoxConfig.model_validate({"filters": {name: {"timeout_s": DEADLINE_S, "on_error": on_error}}})
    filters = list(build_pipeline(config))
    flt = next(f for f in filters if f.name == name)
    spent: list[float] = []
    result: DetoxResult | None = None
    with timed(flt, spent), contextlib.suppress(PipelineTempFail):
        result = run(config, SAMPLES[name].mail(heavy()), filters)
    assert spent and max(spent) < DEADLINE_S + GRACE_S, f"{name} took {max(spent):.2f}s"
    if result is None:  # tempfail: only a timeout raises it here
        assert on_error == "tempfail"
        return
    got = the_record(result, name)
    if got.reason == "filter-timeout":
        assert (got.filter, got.action) == (name, on_error)
        return
    # Its own verdict: only if it finished in time (the timer is armed before process() starts, so a
    # filter that ran past it and still answered caught the FilterTimeout).
    assert name not in SANDBOXED, f"{name} converted a heavy input within {DEADLINE_S}s"
    assert got.filter == name and got.error is None
    assert max(spent) < DEADLINE_S, f"{name} ran {max(spent):.2f}s, past its deadline, and still answered"


# -- one error for a sandbox fault ----------------------------------------------------------------


class _Answering(Sandbox):
    """A sandbox whose converter answers what the test says, whatever it was asked."""

    name = "fake"

    def __init__(self, answer: Callable[[str, Mapping[str, Any]], bytes]) -> None:
        self.answer = answer

    def run(self, module: str, data: bytes, args: Mapping[str, Any], limits: Limits) -> bytes:
        return self.answer(module, args)


def _mode(args: Mapping[str, Any]) -> dict[str, Any]:
    return {"mode": args["mode"]} if "mode" in args else {}


BAD_ANSWERS: dict[str, Callable[[str, Mapping[str, Any]], bytes]] = {
    "empty": lambda module, args: b"",
    "no-framing": lambda module, args: b"%PDF-1.7 PK\x03\x04 not an answer",
    "header-not-json": lambda module, args: b"DXR1\x00\x00\x00\x03{{{",
    "unknown-reason": lambda module, args: pack_result(
        {"status": "held", "reason": "because", **_mode(args)}
    ),
    "held-with-bytes": lambda module, args: pack_result(
        {"status": "held", "reason": "limit-exceeded", **_mode(args)}, b"leftover"
    ),
    "ok-with-nothing": lambda module, args: pack_result({"status": "ok", **_mode(args)}),
}


@pytest.mark.parametrize("answer", sorted(BAD_ANSWERS))
@pytest.mark.parametrize("name", SANDBOXED)
def test_sandboxed_filters_raise_one_error_for_a_bad_answer(name: str, answer: str) -> None:
    sample = SAMPLES[name]
    ctx = context(_Answering(BAD_ANSWERS[answer]))
    with pytest.raises(SandboxAnswerError, match=f"{name} converter"):
        make(name).process(sample.part(sample.make()), ctx)


# -- the SDK's own checks -------------------------------------------------------------------------


def test_options_come_from_the_type_argument() -> None:
    assert PdfFilter.Options is PdfOptions
    assert PdfFilter(PdfOptions(dpi=72)).options.dpi == 72
    with pytest.raises(TypeError, match="takes PdfOptions"):
        PdfFilter(NoOptions())  # type: ignore[arg-type]


def test_declarations_are_checked_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="reasons must be a tuple"):

        class Bad(Filter):
            name: ClassVar[str] = "bad"
            reasons: ClassVar[tuple[str, ...]] = "held"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="converter_reasons"):

        class Undeclared(SandboxedFilter[NoOptions]):
            name: ClassVar[str] = "undeclared"
            converter: ClassVar[str] = "undeclared"
            converter_reasons: ClassVar[frozenset[str]] = frozenset({"encrypted"})

            def applies_to(self, part: Part) -> bool:
                return False

            def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
                raise NotImplementedError


def test_constraints_name_installed_filters() -> None:
    for name, cls in available_filters().items():
        unknown = set(cls.runs_before + cls.runs_after) - set(NAMES)
        assert not unknown, f"{name} names {sorted(unknown)}"


def test_a_verdict_with_an_undeclared_reason_or_note_fails_the_contract() -> None:
    cls = available_filters()["pdf"]
    part = SAMPLES["pdf"].part(b"%PDF-1.7")
    assert verdict_problems(cls, part, Verdict(Action.HOLD, reason="encrypted")) == []
    assert verdict_problems(cls, part, Verdict(Action.HOLD, reason="svg"))
    out = Verdict(Action.REPLACE, output=_output(), notes=("pdf-rasterized", "html-converted"))
    assert verdict_problems(cls, part, out, member_notes=MEMBER_NOTES)  # no members: no member notes
    assert verdict_problems(cls, part, Verdict(Action.PASS))
    assert verdict_problems(cls, part, Verdict(Action.TEXT, text="x"))


def _output() -> Any:
    from detox.pipeline.model import Output

    return Output("application/pdf", b"%PDF-1.7 new", "a.pdf")


def test_mail_helper_reads_back() -> None:
    """The samples' mails parse, and carry the part where the records expect it."""
    for name in NAMES:
        sample = SAMPLES[name]
        msg = email.message_from_bytes(sample.mail(sample.make()), policy=email.policy.default)
        assert msg["Subject"] == "契約テスト"
