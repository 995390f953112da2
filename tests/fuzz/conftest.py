"""The fuzz marker (tests/fuzz/test_fuzz.py); ``make fuzz FUZZ_SECONDS=N`` runs only these tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: bounded-time fuzzing of the parser and body converters")
