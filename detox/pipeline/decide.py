"""Who decides on one part, and what a failure becomes.

Policy rules first (attachments only), then the first filter in ``pipeline.order`` that claims the
part. The runner, not the filters, owns failure policy: a filter that raises or runs out of time has
its part handled as the configured ``on_error`` (hold by default), and a part no filter claims is
handled as ``pipeline.unhandled``. A verdict that could leak input (an action the part's role does
not allow, an input returned unchanged by a filter not declared inert) counts as the filter failing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from detox.config.schema import DetoxConfig, OnError, PolicyActionKind
from detox.errors import FilterTimeout, PipelineTempFail
from detox.filters.base import Filter, FilterContext
from detox.pipeline.deadline import deadline
from detox.pipeline.model import Action, Part, Role, Verdict
from detox.pipeline.policy import Policy
from detox.pipeline.vocabulary import FILTER_ERROR, FILTER_TIMEOUT, UNSUPPORTED_TYPE
from detox.untrusted import for_log

log = logging.getLogger("detox.pipeline.runner")  # the name operators' log filters know

NO_FILTER = "-"  # the record's ``filter`` when none decided (unclaimed, a limit, a parse failure)


@dataclass(frozen=True, slots=True)
class Decided:
    """A verdict on one part, who gave it, and what went wrong on the way (for the record)."""

    verdict: Verdict
    by: str  # the filter's name, "policy:RULE", or NO_FILTER
    error: str | None = None


class Decider:
    """The filters and rules of one Pipeline; ``decide`` is called for every part of every message."""

    def __init__(self, config: DetoxConfig, filters: Sequence[Filter], policy: Policy) -> None:
        self.config = config
        self.filters = tuple(filters)
        self.policy = policy
        self._unhandled = Action.HOLD if config.pipeline.unhandled == "hold" else Action.DROP

    def decide(self, part: Part, ctx: FilterContext) -> Decided:
        """Policy rules first (attachments), then the first filter in pipeline.order that claims it."""
        if part.role is Role.ATTACHMENT and self.policy.rules:
            decision, _ = self.policy.decide(part, ctx.sender_domain)
            if decision is not None and decision.action is not PolicyActionKind.DEFAULT:
                label = f"policy:{decision.rule}"
                if decision.filter is not None:
                    return self.run_filter(decision.filter, part, label, ctx)
                action = Action.DROP if decision.action is PolicyActionKind.DROP else Action.HOLD
                return Decided(Verdict(action, reason=decision.reason), label)
        for flt in self.filters:
            try:
                claimed = flt.applies_to(part)
            except Exception as exc:  # noqa: BLE001 - whatever a filter raises, the part is held
                on_error = self.config.filter_settings(flt.name).on_error
                return Decided(failure_verdict(on_error, FILTER_ERROR), flt.name, for_log(repr(exc)))
            if claimed:
                return self.run_filter(flt, part, flt.name, ctx)
        return Decided(Verdict(self._unhandled, reason=UNSUPPORTED_TYPE), NO_FILTER)

    def run_filter(self, flt: Filter, part: Part, label: str, ctx: FilterContext) -> Decided:
        """One filter on one part, its failures mapped to the configured on_error."""
        settings = self.config.filter_settings(flt.name)
        try:
            if not flt.applies_to(part):  # a policy rule named a filter for a type it cannot read
                return Decided(
                    Verdict(Action.HOLD, reason=UNSUPPORTED_TYPE), label, f"{flt.name} does not apply"
                )
            with deadline(settings.timeout_s):
                verdict = flt.process(part, ctx)
            check_verdict(flt, part, verdict)
        except FilterTimeout as exc:
            log.warning("%s: filter %s timed out on part %s", ctx.queue_id, flt.name, part.part_id)
            return Decided(failure_verdict(settings.on_error, FILTER_TIMEOUT), label, str(exc))
        except PipelineTempFail:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a filter raises, the part is held
            log.warning(
                "%s: filter %s failed on part %s: %s",
                ctx.queue_id,
                flt.name,
                part.part_id,
                for_log(repr(exc)),
            )
            return Decided(failure_verdict(settings.on_error, FILTER_ERROR), label, for_log(repr(exc)))
        return Decided(verdict, label)


def failure_verdict(on_error: OnError, reason: str) -> Verdict:
    """A filter's failure as its ``on_error`` says: hold or drop the part, or the whole message
    back to the spool (PipelineTempFail)."""
    if on_error is OnError.TEMPFAIL:
        raise PipelineTempFail(reason)
    return Verdict(Action.DROP if on_error is OnError.DROP else Action.HOLD, reason=reason)


def check_verdict(flt: Filter, part: Part, verdict: Verdict) -> None:
    """A filter's verdict must fit the part: the runner refuses anything that could leak input."""
    if part.role is Role.BODY:
        allowed = {Action.TEXT, Action.HOLD, Action.DROP}
    else:
        allowed = {Action.REPLACE, Action.HOLD, Action.DROP}
        if flt.may_pass_unchanged:
            allowed.add(Action.PASS)
    if verdict.action not in allowed:
        raise TypeError(f"filter {flt.name} answered {verdict.action} for a {part.role} part")
    unchanged = verdict.output is not None and verdict.output.data == part.payload
    if verdict.action is Action.REPLACE and unchanged and not flt.may_pass_unchanged:
        raise TypeError(f"filter {flt.name} returned its input unchanged")
