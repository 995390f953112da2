"""The filter contract.

A filter claims parts with the cheap :meth:`Filter.applies_to` and decides on one in
:meth:`Filter.process`. It never talks SMTP, never writes the quarantine and never turns its own
failure into a pass: it raises, and the runner maps the error to the configured ``on_error``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from detox.config.schema import DetoxConfig
from detox.pipeline.model import Part, PartRecord, Verdict
from detox.sandbox.base import Sandbox


class NoOptions(BaseModel):
    """Options model for filters that take none; any key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


class Filter(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    # True only for filters allowed to answer Action.PASS (the input unchanged); the contract
    # tests check that no other filter ever does.
    may_pass_unchanged: ClassVar[bool] = False

    def __init__(self, options: BaseModel) -> None:
        self.options = options

    @abstractmethod
    def applies_to(self, part: Part) -> bool:
        """Cheap, side-effect free: does this filter handle the part?"""

    @abstractmethod
    def process(self, part: Part, ctx: FilterContext) -> Verdict:
        """Decide on the part. Raise on failure; never pass input through to paper over an error."""
