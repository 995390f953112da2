"""When to try again: exponential backoff with jitter, bounded, and never past the maximum age."""

from __future__ import annotations

import random

JITTER = 0.2  # ±20 %: messages deferred together do not come back together


def backoff(attempts: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``attempts``-th failure: ``base × 2^(attempts−1)``, ±20 %, ≤ ``cap``.

    Below the cap the delay is drawn from [0.8 d, 1.2 d]; near it from [0.8 d, cap], so it is never
    longer than ``cap`` and never shorter than 80 % of the nominal delay.
    """
    nominal = min(base * (2 ** min(max(attempts, 1) - 1, 30)), cap)
    low = nominal * (1 - JITTER)
    high = min(nominal * (1 + JITTER), cap)
    return (rng or random).uniform(low, high)


def next_attempt(now: float, delay: float, deadline: float) -> float:
    """The next attempt, brought forward to ``deadline`` (the maximum age) if the delay passes it,
    so a message is tried one last time when it expires rather than up to ``retry_max_s`` later."""
    return min(now + delay, deadline) if deadline > now else now + delay
