"""Passing over a factory that is slow to start streams *right now*, before any deadline fires.

The plan's weights hold for a solve period, and LLM traffic comes in bursts: the Azure code
trace reaches 20x its mean within seconds. A burst that lands on one factory queues there while
the route's other factories have room, and the first-byte deadline (:mod:`deadlines`, 3 x the
factory's TTFT p99) fires too late to save a one-second SLO. The sidecar has the signal that
matters, at no cost: its own streams still waiting for a first byte, and since when. When one of
them has waited longer than the site's ``slow_first_byte_seconds`` (default 0.5 s), a new stream
whose first candidate is that factory starts at a route candidate with no such wait instead —
the route's other primaries first (they are what the plan intended this traffic to use), then
its backups — and the slow factory keeps its place behind them. Nothing is ejected and no
attempt is cut: once the waiting stream gets its first byte (or gives up), the factory is back
in its place for the next request. When every candidate is slow, the plan's order stands.

Only streams are watched. A non-streamed answer's first byte is the whole answer, so its wait
says how long the generation was, not whether the factory is queueing. Every request, streamed
or not, is ordered by what the watch and the factories' own load reports (:mod:`load_reports`)
say: a factory queueing streams queues plain requests too.

In the routing benchmark (``python -m bench routing``) this raised TDN's SLO attainment through
the loss of its busiest center, on the traffic that had a choice of factory, from 98.1% to
99.4% with the plan unchanged (docs/decisions.md, "Slow first bytes").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tdn.domain import FactoryEndpoint

from .effective_settings import DEFAULT_SLOW_FIRST_BYTE_S
from .load_reports import LoadReports

__all__ = ["DEFAULT_SLOW_FIRST_BYTE_S", "FirstByteWatch", "prefer_fast"]


class FirstByteWatch:
    """This sidecar's streams awaiting a first byte, per factory, oldest first.

    ``begin`` and ``end`` are O(1); so is :meth:`waiting_s` (a dict keeps insertion order, and a
    stream that ends is removed wherever it is).
    """

    __slots__ = ("_next", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[str, dict[int, float]] = {}
        self._next = 0

    def begin(self, factory_id: str, now: float) -> int:
        """A stream was sent to ``factory_id`` at ``now``; the token ends it."""
        self._next += 1
        waiting = self._waiting.get(factory_id)
        if waiting is None:
            waiting = self._waiting[factory_id] = {}
        waiting[self._next] = now
        return self._next

    def end(self, factory_id: str, token: int) -> None:
        """The stream got its first byte, failed or was abandoned."""
        waiting = self._waiting.get(factory_id)
        if waiting is not None:
            waiting.pop(token, None)
            if not waiting:
                del self._waiting[factory_id]

    def waiting_s(self, factory_id: str, now: float) -> float:
        """How long the oldest stream still waiting at ``factory_id`` has waited (0: none)."""
        waiting = self._waiting.get(factory_id)
        if not waiting:
            return 0.0
        return now - next(iter(waiting.values()))

    def forget_except(self, factory_ids: Collection[str]) -> None:
        """Drop factories a new policy no longer has (their streams end on their own)."""
        for fid in [f for f in self._waiting if f not in factory_ids]:
            del self._waiting[fid]


def prefer_fast(candidates: Sequence[FactoryEndpoint], primaries: Collection[str],
                watch: FirstByteWatch, now: float, limit_s: float, *,
                loads: LoadReports | None = None,
                ) -> tuple[Sequence[FactoryEndpoint], str]:
    """``candidates`` reordered when the first is slow (see the module docstring) or, with
    ``loads``, busy by its own latest load report (:mod:`load_reports`), and the id of the
    factory passed over ("" when the order stands)."""
    if not candidates:
        return candidates, ""
    first = candidates[0].id
    if watch.waiting_s(first, now) <= limit_s and (loads is None or not loads.busy(first, now)):
        return candidates, ""
    fast_primary: list[FactoryEndpoint] = []
    fast_other: list[FactoryEndpoint] = []
    slow = [candidates[0]]
    for c in candidates[1:]:
        if watch.waiting_s(c.id, now) > limit_s or (loads is not None and loads.busy(c.id, now)):
            slow.append(c)
        elif c.id in primaries:
            fast_primary.append(c)
        else:
            fast_other.append(c)
    if not fast_primary and not fast_other:
        return candidates, ""
    return [*fast_primary, *fast_other, *slow], candidates[0].id
