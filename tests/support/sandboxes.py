"""The real sandbox for converter tests: skipped where it cannot exist, a failure under CI=true."""

from __future__ import annotations

from typing import NoReturn

import pytest

from detox.config.schema import DetoxConfig
from detox.errors import SandboxError
from detox.sandbox.base import Sandbox
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


def require_libreoffice() -> None:
    """LibreOffice and its uno Python, and bubblewrap to run them in."""
    import shutil

    from detox.sandbox import libreoffice

    if shutil.which("bwrap") is None:
        skip_or_fail("bubblewrap is not installed")
    missing = libreoffice.unavailable_reason("soffice", libreoffice.DEFAULT_PYTHON)
    if missing is not None:
        skip_or_fail(f"LibreOffice cannot run here: {missing}")
