"""The filter contract as a check a test can run on any verdict: detox's own suite and a plugin's.

The runner enforces the part of the contract that could leak input (``_check_verdict``: the actions
a role allows, no input returned unchanged) on every verdict, at run time. This adds what a filter
*declares* (:class:`detox.filters.base.Filter`): every HOLD/DROP reason among its ``reasons``, every
note among its ``notes``, its members' records too. A verdict that breaks it is a bug in the filter,
found by its tests (``tests/contract`` for the installed filters; docs/writing-filters.md for a
plugin's own), not a reason to change a mail at run time.
"""

from __future__ import annotations

from collections.abc import Collection

from detox.filters.base import Filter
from detox.pipeline.model import Action, Part, Role, Verdict

_BODY_ACTIONS = frozenset({Action.TEXT, Action.HOLD, Action.DROP})
_ATTACHMENT_ACTIONS = frozenset({Action.REPLACE, Action.HOLD, Action.DROP})


def verdict_problems(
    cls: type[Filter], part: Part, verdict: Verdict, *, member_notes: Collection[str] = ()
) -> list[str]:
    """What in ``verdict`` (of filter ``cls`` on ``part``) breaks the contract; empty when nothing does.

    ``member_notes``: notes a container's REPLACE may carry from the filters that decided its
    members (the notes every installed filter declares), accepted only when it has members.
    """
    problems: list[str] = []
    allowed = set(_BODY_ACTIONS if part.role is Role.BODY else _ATTACHMENT_ACTIONS)
    if part.role is not Role.BODY and cls.may_pass_unchanged:
        allowed.add(Action.PASS)
    if verdict.action not in allowed:
        problems.append(f"{cls.name} answered {verdict.action} for a {part.role} part")
    unchanged = verdict.output is not None and verdict.output.data == part.payload and bool(part.payload)
    if (verdict.action is Action.PASS or unchanged) and not cls.may_pass_unchanged:
        problems.append(f"{cls.name} passed its input unchanged (may_pass_unchanged is False)")
    if verdict.action in (Action.HOLD, Action.DROP) and verdict.reason not in cls.reasons:
        problems.append(f"{cls.name} answered reason {verdict.reason!r}, not among its reasons {cls.reasons}")
    from_members = set(member_notes) if verdict.members else set()
    problems.extend(
        f"{cls.name} answered note {note!r}, not among its notes {cls.notes}"
        for note in verdict.notes
        if note not in cls.notes and note not in from_members
    )
    for record in verdict.members:
        own = record.filter == cls.name
        if own and record.action in (Action.HOLD, Action.DROP) and record.reason not in cls.reasons:
            problems.append(f"{cls.name} recorded member reason {record.reason!r}, not among its reasons")
    return problems
