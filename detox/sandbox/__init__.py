"""Isolation for converters that parse hostile bytes: one abstraction, several providers."""

from __future__ import annotations

# Keep this module import-light: every converter run imports it on the way to the inside package
# (``python -m detox.sandbox.inside.child``), so not even ``typing`` is imported at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from detox.config.schema import DetoxConfig
    from detox.sandbox.base import Sandbox

__all__ = ["make_sandbox"]


def make_sandbox(config: DetoxConfig) -> Sandbox:
    """The provider ``config.sandbox`` names, its default (and maximum) limits from memory_mb / cpu_s.

    Raises SandboxError when bwrap is missing, or for ``provider = "subprocess"`` without
    ``allow_unsandboxed = true``.
    """
    from detox.sandbox.base import Limits

    settings = config.sandbox
    limits = Limits(memory_bytes=settings.memory_mb * 1024 * 1024, cpu_s=settings.cpu_s)
    if settings.provider == "bwrap":
        from detox.sandbox.bwrap import BwrapSandbox

        return BwrapSandbox(default_limits=limits, resident=settings.resident_converters)
    from detox.sandbox.process import SubprocessSandbox

    return SubprocessSandbox(
        allowed=settings.allow_unsandboxed, default_limits=limits, resident=settings.resident_converters
    )
