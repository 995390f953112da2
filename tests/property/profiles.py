"""Hypothesis profiles for the property and fuzz tests (applied per test with :func:`profile`).

* ``ci`` (the default): derandomized (the same examples on every run, so CI is reproducible), no example
  database, no per-example deadline (the sandbox's start-up time varies), bounded example counts.
* ``dev``: random examples, five times as many, the database on (re-runs failures first):
  ``HYPOTHESIS_PROFILE=dev .venv/bin/python -m pytest tests/property``.

"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=SLOW_CHECKS,
    max_examples=100,
)
settings.register_profile(
    "dev", deadline=None, print_blob=True, suppress_health_check=SLOW_CHECKS, max_examples=500
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


def profile(ci_examples: int) -> settings:
    """Settings for one test: the chosen profile with ``ci_examples`` examples (five times as many under
    dev). Applied per test, never loaded globally: the unit tests' own hypothesis settings stay as they are.
    """
    parent = settings.get_profile(PROFILE if PROFILE in ("ci", "dev") else "ci")
    return settings(parent, max_examples=ci_examples * 5 if PROFILE == "dev" else ci_examples)
