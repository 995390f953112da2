"""The filter contract.

A filter claims parts with the cheap :meth:`Filter.applies_to` and decides on one in
:meth:`Filter.process`. It never talks SMTP, never writes the quarantine and never turns its own
failure into a pass: it raises, and the runner maps the error to the configured ``on_error``.

A filter is generic in its options model: ``class PdfFilter(Filter[PdfOptions])`` makes
``self.options`` a ``PdfOptions`` for mypy and sets ``PdfFilter.Options = PdfOptions`` for the
loader, which validates ``[filters.pdf.options]`` against it. A filter also declares, as plain
tuples of strings, what its verdicts may carry (``reasons``, ``notes``) and where it must stand in
``pipeline.order`` (``runs_before``, ``runs_after``): the loader refuses an order that breaks a
constraint, and the contract tests refuse a verdict with an undeclared reason or note. Filters whose
converter runs in the sandbox build on :class:`detox.filters.sandboxed.SandboxedFilter`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, get_args, get_origin

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

from detox.config.schema import DetoxConfig
from detox.pipeline.model import Part, PartRecord, Verdict
from detox.sandbox.base import Sandbox


class NoOptions(BaseModel):
    """Options model for filters that take none; any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Covariant, and BaseModel when not given: a bare ``Filter`` (the runner's "any filter") accepts
# every ``Filter[SomeOptions]``.
OptionsT = TypeVar("OptionsT", bound=BaseModel, default=BaseModel, covariant=True)


@dataclass(frozen=True, slots=True)
class FilterContext:
    queue_id: str
    sender_domain: str  # from the unauthenticated MAIL FROM
    config: DetoxConfig
    defang_urls: bool = True  # urls.defang, unless the sender's domain is exempt
    # Converters of hostile bytes run here; None when no sandbox is configured (they then raise
    # SandboxError and the runner holds the part).
    sandbox: Sandbox | None = None
    # Runs a part found inside another one (an archive member) through the whole pipeline:
    # the same filters, policy, caps and failure handling. Set by the runner.
    decide_member: Callable[[Part], tuple[Verdict, PartRecord]] | None = None


_DECLARATIONS = ("reasons", "notes", "runs_before", "runs_after")


class Filter(ABC, Generic[OptionsT]):
    name: ClassVar[str]
    # Set from the type argument (``Filter[PdfOptions]``); NoOptions for a filter without one.
    Options: ClassVar[type[BaseModel]] = NoOptions
    # True only for filters allowed to answer Action.PASS (the input unchanged); the contract
    # tests check that no other filter ever does.
    may_pass_unchanged: ClassVar[bool] = False
    # Every HOLD/DROP reason (a key of notice.reasons) and every note (an X-Detox-Actions item) a
    # verdict of this filter may carry, its members' records included. A container filter's
    # REPLACE also carries the notes of the filters that decided its members.
    reasons: ClassVar[tuple[str, ...]] = ()
    notes: ClassVar[tuple[str, ...]] = ()
    # Filters this one must come before / after in pipeline.order when both are listed: the
    # loader refuses an order that breaks one (e.g. office before archive: an OOXML file is a zip).
    runs_before: ClassVar[tuple[str, ...]] = ()
    runs_after: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        declared = _options_argument(cls)
        if declared is not None:
            if "Options" not in cls.__dict__:
                cls.Options = declared
            elif not (isinstance(cls.Options, type) and issubclass(cls.Options, declared)):
                raise TypeError(
                    f"{cls.__name__}.Options is not the {declared.__name__} its type argument names"
                )
        for attr in _DECLARATIONS:
            value = getattr(cls, attr)
            if not (isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)):
                raise TypeError(f"{cls.__name__}.{attr} must be a tuple of non-empty strings")

    def __init__(self, options: OptionsT) -> None:
        if not isinstance(options, type(self).Options):
            raise TypeError(
                f"{type(self).__name__} takes {type(self).Options.__name__}, not {type(options).__name__}"
            )
        self._options = options

    @property
    def options(self) -> OptionsT:
        """The validated ``[filters.NAME.options]``, frozen."""
        return self._options

    @abstractmethod
    def applies_to(self, part: Part) -> bool:
        """Cheap, side-effect free: does this filter handle the part?"""

    @abstractmethod
    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        """Decide on the part. Raise on failure; never pass input through to paper over an error."""


def _options_argument(cls: type) -> type[BaseModel] | None:
    """The options model named by ``class X(Filter[Model])`` (or a generic subclass of Filter)."""
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Filter):
            args = get_args(base)
            if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                return args[0]
    return None
