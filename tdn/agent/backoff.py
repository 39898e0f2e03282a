"""Reconnect pacing: exponential backoff with jitter, so that a control plane coming back after
an outage is not hit by every agent in the same instant."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double per consecutive failure up to a cap, each drawn from [d/2, d].

    Half the delay is fixed so retries never spin; the other half is random so a fleet of
    agents that lost the same control plane spreads its reconnects out.
    """

    def __init__(self, initial_s: float, cap_s: float, rng: random.Random | None = None) -> None:
        if initial_s <= 0 or cap_s < initial_s:
            raise ValueError(f"backoff needs 0 < initial ({initial_s}) <= cap ({cap_s})")
        self._initial = initial_s
        self._cap = cap_s
        self._failures = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        # Bound the exponent so the float never overflows however long the outage lasts.
        ceiling = min(self._cap, self._initial * 2.0 ** min(self._failures, 60))
        self._failures += 1
        return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)

    def reset(self) -> None:
        """Forget past failures (after a connection that worked)."""
        self._failures = 0
