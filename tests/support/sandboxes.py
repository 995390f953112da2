"""Sandboxes for converter tests: the real one (skipped where it cannot exist, a failure under CI=true)
and a canned one that answers what the test says, to check what a filter makes of the answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import pytest

from detox.config.schema import DetoxConfig
from detox.errors import SandboxError
from detox.sandbox.base import Limits, Sandbox
from support import in_ci


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under CI=true fail instead, so nothing is skipped silently there."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: not skipping)", pytrace=False)
    pytest.skip(reason)


def real_sandbox(config: DetoxConfig | None = None) -> Sandbox:
    """The provider the config names (bubblewrap by default), as in production."""
    from detox.sandbox import make_sandbox

    try:
        return make_sandbox(config or DetoxConfig())
    except (ImportError, SandboxError) as exc:
        skip_or_fail(f"no sandbox provider here: {exc}")


class CannedSandbox(Sandbox):
    """Answers every run with the same bytes: the filter must not believe whatever the sandbox says.

    With ``module``, a run of any other converter fails the test.
    """

    name = "fake"

    def __init__(self, answer: bytes, module: str | None = None) -> None:
        self.answer = answer
        self.module = module

    def run(self, module: str, data: bytes, args: Mapping[str, Any], limits: Limits) -> bytes:
        assert self.module is None or module == self.module, module
        return self.answer


def require_libreoffice() -> None:
    """LibreOffice and its uno Python, and bubblewrap to run them in."""
    import shutil

    from detox.sandbox import libreoffice

    if shutil.which("bwrap") is None:
        skip_or_fail("bubblewrap is not installed")
    missing = libreoffice.unavailable_reason("soffice", libreoffice.DEFAULT_PYTHON)
    if missing is not None:
        skip_or_fail(f"LibreOffice cannot run here: {missing}")
