"""One exception tree for detox.

Policy code catches these categories; third-party errors are mapped at the boundary
(``map_exceptions``) so callers never need to know which library raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping


class DetoxError(Exception):
    """Base of every error detox raises on purpose."""


class ConfigError(DetoxError):
    """The configuration is invalid; the message names the file and the key."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        super().__init__(f"{file}: {key}: {problem}" if key else f"{file}: {problem}")


class SpoolError(DetoxError):
    """The spool could not durably store or read a message (answer 4xx, never lose mail)."""


class SpoolCorrupt(SpoolError):
    """A spool entry is damaged or incomplete (not a passing I/O problem): it is moved aside."""


class FilterError(DetoxError):
    """A filter failed on a part; the runner maps it to the configured ``on_error``."""


class FilterTimeout(FilterError):
    """A filter ran past its wall-clock limit."""


class LimitExceeded(FilterError):
    """Attacker input crossed a configured cap (bytes, depth, parts, ...)."""

    def __init__(self, limit: str, detail: str = "") -> None:
        self.limit = limit
        super().__init__(f"limit exceeded: {limit}" + (f" ({detail})" if detail else ""))


class SandboxError(FilterError):
    """A sandboxed converter failed, was killed, or the sandbox could not start."""


class SandboxTimeout(SandboxError, FilterTimeout):
    """A sandboxed converter ran past its wall-clock limit and was killed with its process group."""


class SandboxAnswerError(SandboxError):
    """A sandboxed converter ran but its answer breaks the contract: unreadable framing, an unknown
    status or held reason, output that fails the host's check. The one error every sandboxed filter
    raises for it (:class:`detox.filters.sandboxed.SandboxedFilter`): whatever the converter's
    format, an answer the host cannot trust is the sandbox side's fault, never a reason to pass."""


class StoreError(DetoxError):
    """The originals store or its index could not be written or read."""


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[DetoxError]]) -> Iterator[None]:
    """Re-raise third-party exceptions as the most specific mapped DetoxError."""
    try:
        yield
    except DetoxError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{type(exc).__name__}: {exc}") from exc
        raise


class PipelineTempFail(DetoxError):
    """A filter asked (via ``on_error = "tempfail"``) to retry the whole message later."""


class NotFoundError(DetoxError):
    """A queue id, hold id or file the admin named does not exist (exit code 3)."""


class RefusedError(DetoxError):
    """An admin operation was refused by a rule: nothing held, two-person rule, foreign recipient."""


class AuditError(DetoxError):
    """The audit log could not be written or read."""
