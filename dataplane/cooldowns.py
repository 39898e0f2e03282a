"""Rate-limit cooldowns: a factory that answered 429 is left alone for as long as it asked.

A ``429`` (or a ``503``) with ``Retry-After`` puts that factory in cooldown for exactly that long
(whole seconds or an HTTP date; capped at 300 s so a bogus header cannot remove a factory for a
day). Without the header the factory is backed off with jitter: ``1 s x 2^(n-1)`` for its n-th
rate limit in a row, capped at 60 s, each drawn from [half, whole] so a fleet of sidecars does not
come back in lockstep. A successful answer ends the streak.

A factory in cooldown is not tried at all, so there is no tight loop against it; when every
factory of a route is in cooldown the client gets a 429 whose ``Retry-After`` says when the first
one comes back, without any upstream being asked. This is separate from outlier detection on
purpose: a rate limit is the factory protecting itself, not a failure, and must not eject it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime

from tdn.domain import FactoryEndpoint

MAX_RETRY_AFTER_S = 300.0
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0


def parse_retry_after(value: str | None, wall_now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date), or None when
    absent or unreadable; never negative, never above :data:`MAX_RETRY_AFTER_S`."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        now = time.time() if wall_now is None else wall_now
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class Cooldowns:
    """Per-factory "avoid until" times (monotonic clock)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._until: dict[str, float] = {}
        self._streak: dict[str, int] = {}

    def rate_limited(self, factory_id: str, now: float, retry_after_s: float | None) -> float:
        """Record a rate limit; returns how long the factory is avoided."""
        streak = self._streak.get(factory_id, 0) + 1
        self._streak[factory_id] = streak
        if retry_after_s is not None:
            wait = retry_after_s
        else:
            step = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (streak - 1))
            wait = self._rng.uniform(step / 2, step)
        self._until[factory_id] = max(self._until.get(factory_id, 0.0), now + wait)
        return wait

    def succeeded(self, factory_id: str) -> None:
        if self._streak:
            self._streak.pop(factory_id, None)

    def remaining(self, factory_id: str, now: float) -> float:
        until = self._until.get(factory_id)
        return 0.0 if until is None else max(until - now, 0.0)

    def forget_except(self, factory_ids: Iterable[str]) -> None:
        keep = set(factory_ids)
        for table in (self._until, self._streak):
            for fid in [f for f in table if f not in keep]:
                del table[fid]

    def select(self, candidates: Sequence[FactoryEndpoint],
               now: float) -> tuple[Sequence[FactoryEndpoint], float]:
        """Candidates not in cooldown, and (when that leaves none) the seconds until the first
        comes back (0.0 otherwise)."""
        if not self._until:
            return candidates, 0.0
        usable: list[FactoryEndpoint] = []
        soonest = math.inf
        for c in candidates:
            until = self._until.get(c.id)
            if until is None:
                usable.append(c)
            elif until <= now:
                del self._until[c.id]
                usable.append(c)
            else:
                soonest = min(soonest, until - now)
        if len(usable) == len(candidates):
            return candidates, 0.0
        return usable, (soonest if not usable else 0.0)
