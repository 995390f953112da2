"""The property marker. The hypothesis profiles are in profiles.py (``ci`` by default,
``HYPOTHESIS_PROFILE=dev`` for random examples and five times as many)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "property: hypothesis property tests over generated mails")
