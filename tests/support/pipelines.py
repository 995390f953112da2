"""Running mails through the real Pipeline in tests, configured by keywords.

Test modules used to define their own ``run()`` (a Pipeline, an envelope, maybe the output parsed);
they now bind one here and state only what differs from the default::

    ENV = Envelope("0190000000000CAL00", "soumu@pref.example.lg.jp", ("taro@city.example.lg.jp",))
    run = pipeline_runner(ENV)
    result = run(raw)                                 # the default configuration
    result = run(raw, config)                         # another configuration (a Pipeline of its own)
    result = run(msg, config, [MyFilter()])           # an EmailMessage; these filters, not the registry's
    result = run(raw, sender="x@elsewhere.example")   # another envelope sender for this one mail
    result, out = run.parsed(msg)                     # and the output parsed (policy=default)

``shared=True`` reuses one Pipeline of the default configuration for the whole session (for modules
that run many mails: building a pipeline starts the sandbox's resident converters). Without it, as
before, every call builds its Pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from email.message import EmailMessage

from detox.config.schema import DetoxConfig
from detox.envelope import Envelope
from detox.filters.base import Filter
from detox.pipeline.runner import DetoxResult, Pipeline

from .invariants import parse_output

__all__ = ["PipelineRunner", "default_pipeline", "pipeline_runner"]

_DEFAULT: Pipeline | None = None


def default_pipeline() -> Pipeline:
    """One Pipeline of the default configuration (bubblewrap sandbox, fail closed) for the session."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Pipeline(DetoxConfig())
    return _DEFAULT


@dataclasses.dataclass(frozen=True)
class PipelineRunner:
    """``run(mail, config=None, filters=None, *, sender=None) -> DetoxResult`` with a fixed envelope.

    (A dataclass rather than a closure: the signature is typed once, here, for every module.)
    """

    envelope: Envelope
    shared: bool = False

    def __call__(
        self,
        mail: bytes | EmailMessage,
        config: DetoxConfig | None = None,
        filters: Sequence[Filter] | None = None,
        *,
        sender: str | None = None,
    ) -> DetoxResult:
        raw = mail if isinstance(mail, bytes) else mail.as_bytes()
        env = self.envelope if sender is None else dataclasses.replace(self.envelope, mail_from=sender)
        if self.shared and config is None and filters is None:
            pipeline = default_pipeline()
        else:
            pipeline = Pipeline(config if config is not None else DetoxConfig(), filters)
        return pipeline.run(raw, env)

    def parsed(
        self,
        mail: bytes | EmailMessage,
        config: DetoxConfig | None = None,
        filters: Sequence[Filter] | None = None,
    ) -> tuple[DetoxResult, EmailMessage]:
        """The result and its output parsed (``policy=default``), for tests that read the message."""
        result = self(mail, config, filters)
        return result, parse_output(result.output)


def pipeline_runner(env: Envelope, *, shared: bool = False) -> PipelineRunner:
    """A module's ``run`` with this envelope (``shared``: the session's default pipeline when it can)."""
    return PipelineRunner(env, shared)
