"""The template of a filter whose converter runs in the sandbox.

Every such filter does the same steps around its own converter, and they are written once here:

1. :meth:`SandboxedFilter.precheck` — an answer that needs no sandbox (the options say hold, a
   depth cap); ``None`` to go on;
2. the sandbox, or :class:`~detox.errors.SandboxError` when none could be made (hostile bytes are
   never parsed in this process), and the clock: the sandboxed steps end before the runner's own
   deadline (:meth:`sandbox_timeout`), so a slow file is killed with its process group;
3. :meth:`converter_args` and :meth:`limits` (never more memory or CPU than ``[sandbox]`` allows);
4. ``sandbox.run`` → the answer unpacked (the ``DXR1`` framing of :mod:`detox.sandbox.contract`) →
   its header checked: the values of :meth:`expected_header` first, then ``status``: "held"
   with one of the converter's declared reasons (:attr:`converter_reasons`) and no payload, or "ok";
5. held: :meth:`held` (a HOLD verdict with the converter's reason); ok: :meth:`converted`, which
   checks everything else the converter says and builds the verdict.

Whatever in the answer does not check out raises :class:`~detox.errors.SandboxAnswerError`, the one
error for a sandbox fault, and the runner applies the filter's ``on_error`` (hold by default).

A converter is ``main(data: bytes, args: dict) -> bytes`` run by ``ctx.sandbox.run(NAME, ...)``:
the built-in ones are modules under :mod:`detox.sandbox.inside.converters`; a plugin registers its own (see
docs/writing-filters.md).
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from detox.errors import SandboxAnswerError, SandboxError
from detox.filters.base import Filter, FilterContext, OptionsT
from detox.pipeline.model import Action, Part, Verdict
from detox.sandbox.base import Limits, Sandbox
from detox.sandbox.contract import unpack_result

MAX_KIND_CHARS = 40  # a removed kind ("vba-project", "exif"...) longer than this is refused


@dataclass(frozen=True, slots=True)
class SandboxCall:
    """One :meth:`SandboxedFilter.process` call: the part, the sandbox and the clock of its steps."""

    part: Part
    ctx: FilterContext
    sandbox: Sandbox
    timeout_s: float  # filters.NAME.timeout_s: the runner gives up on the filter after this
    started: float  # time.monotonic() when the call began
    deadline: float  # time.monotonic() by which every sandboxed step must have ended

    def left(self) -> float:
        """Seconds until the deadline (a positive minimum: a spent deadline still names a limit)."""
        return max(0.001, self.deadline - time.monotonic())


@dataclass(slots=True)
class Answer:
    """A converter's answer whose framing, expected values and status checked out."""

    header: dict[str, Any]
    data: bytes
    held: str | None = None  # the reason, one of the converter's declared ones, when it held the file

    def release(self) -> bytes:
        """The payload, dropped from the answer: a large one (an archive's members) is then freed as
        soon as the caller lets go of it, while the template still holds the answer."""
        data, self.data = self.data, b""
        return data


class SandboxedFilter(Filter[OptionsT]):
    """A filter that converts in the sandbox: precheck → limits → run → unpack → held/ok → check."""

    # The sandboxed converter's name (``sandbox.run``'s first argument).
    converter: ClassVar[str]
    # The reasons the converter may hold a file for; any other "held" answer is a fault. They must
    # be among the filter's ``reasons``.
    converter_reasons: ClassVar[frozenset[str]] = frozenset()
    # What the filter opens, for the error without a sandbox: "no sandbox is configured: <what> are
    # only opened inside one".
    opens: ClassVar[str] = "these files"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        undeclared = set(cls.converter_reasons) - set(cls.reasons)
        if undeclared:
            raise TypeError(f"{cls.__name__}: converter_reasons {sorted(undeclared)} are not in its reasons")

    # -- the template --------------------------------------------------------------------------

    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        early = self.precheck(part, ctx)
        if early is not None:
            return early
        call = self.begin(part, ctx)
        args, limits = self.converter_args(call), self.limits(call)
        answer = self.run_converter(call, part.payload, args, limits, expect=self.expected_header(call))
        if answer.held is not None:
            return self.held(call, answer)
        return self.converted(call, answer)

    def begin(self, part: Part, ctx: FilterContext) -> SandboxCall:
        """The sandbox (SandboxError without one) and the deadline of this call's sandboxed steps."""
        if ctx.sandbox is None:
            raise SandboxError(f"no sandbox is configured: {self.opens} are only opened inside one")
        timeout = ctx.config.filter_settings(self.name).timeout_s
        now = time.monotonic()
        return SandboxCall(part, ctx, ctx.sandbox, timeout, now, now + self.sandbox_timeout(timeout))

    def run_converter(
        self,
        call: SandboxCall,
        data: bytes,
        args: Mapping[str, Any],
        limits: Limits,
        *,
        converter: str | None = None,
        reasons: frozenset[str] | None = None,
        expect: Mapping[str, object] | None = None,
    ) -> Answer:
        """Run a converter (this filter's, or ``converter`` with its held ``reasons``) and check its answer.

        ``expect``: header values the answer must carry (e.g. the mode asked for), checked first.
        Raises SandboxError/SandboxTimeout from the run, SandboxAnswerError for the answer.
        """
        name = converter or self.converter
        allowed = self.converter_reasons if reasons is None else reasons
        raw = call.sandbox.run(name, data, args, limits)
        try:
            header, payload = self.unpack_answer(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SandboxAnswerError(f"{name} converter answered something unreadable: {exc}") from None
        for key, value in (expect or {}).items():
            if header.get(key) != value:
                raise SandboxAnswerError(f"{name} converter answered for another {key}")
        status = self.answer_status(header)
        if status == "held":
            reason = header.get("reason")
            if reason not in allowed or payload:
                raise SandboxAnswerError(f"{name} converter held the file for an unknown reason")
            return Answer(header, payload, str(reason))
        if status != "ok":
            raise SandboxAnswerError(f"{name} converter answered an unknown status")
        return Answer(header, payload)

    # -- the hooks -----------------------------------------------------------------------------

    def precheck(self, part: Part, ctx: FilterContext) -> Verdict | None:
        """A verdict reached without the sandbox (options say hold, a cap), or None to convert."""
        return None

    def sandbox_timeout(self, timeout_s: float) -> float:
        """How long the sandboxed steps may take of the filter's ``timeout_s``: 90 %, so the sandbox
        kills the converter before the runner's deadline gives up on it (at least a second, if the
        timeout allows)."""
        return max(timeout_s * 0.9, min(timeout_s, 1.0))

    def converter_args(self, call: SandboxCall) -> dict[str, Any]:
        """The converter's ``args`` (JSON): by default the options as they are."""
        return self.options.model_dump()

    def limits(self, call: SandboxCall) -> Limits:
        """The run's limits: ``[sandbox]``'s, with the time left and CPU seconds to match it."""
        configured = call.sandbox.default_limits  # sandbox.memory_mb / cpu_s
        return replace(
            configured,
            timeout_s=call.left(),
            cpu_s=max(1, min(configured.cpu_s, math.ceil(call.timeout_s))),
        )

    def unpack_answer(self, raw: bytes) -> tuple[dict[str, Any], bytes]:
        """Split the converter's output into (header, payload); ValueError when it is not one."""
        return unpack_result(raw)

    def expected_header(self, call: SandboxCall) -> Mapping[str, object]:
        """Header values the answer must carry (e.g. the mode asked for); checked before the status."""
        return {}

    def answer_status(self, header: Mapping[str, Any]) -> object:
        """The answer's status: ``"held"``, ``"ok"``, anything else is a fault."""
        return header.get("status")

    def held(self, call: SandboxCall, answer: Answer) -> Verdict:
        """The converter held the file: by default the part is held with its reason."""
        return Verdict(Action.HOLD, reason=str(answer.held))

    @abstractmethod
    def converted(self, call: SandboxCall, answer: Answer) -> Verdict:
        """Check everything an "ok" answer says (raise SandboxAnswerError) and build the verdict."""

    # -- for the checks ------------------------------------------------------------------------

    def fault(self, problem: str, *, converter: str | None = None) -> SandboxAnswerError:
        """``raise self.fault("produced no PDF")``: the error for an answer that does not check out."""
        return SandboxAnswerError(f"{converter or self.converter} converter {problem}")

    def removed_counts(self, value: object, *, converter: str | None = None) -> dict[str, int]:
        """The answer's ``removed`` object as {kind: count}, zero counts left out; a fault unless it is
        an object whose every kind is a short alphanumeric-and-dash word and every count an int >= 0."""
        name = converter or self.converter
        if not isinstance(value, dict):
            raise SandboxAnswerError(f"{name} converter answered no removed counts")
        counts: dict[str, int] = {}
        for key, count in value.items():
            if not (
                isinstance(key, str) and 0 < len(key) <= MAX_KIND_CHARS and key.replace("-", "").isalnum()
            ):
                raise SandboxAnswerError(f"{name} converter answered a malformed removed kind")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SandboxAnswerError(f"{name} converter answered a malformed removed count")
            if count:
                counts[key] = count
        return counts
