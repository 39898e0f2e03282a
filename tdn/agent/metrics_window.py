"""Turning successive scrapes into the load and latency an agent reports.

Engines' latency histograms are cumulative since start, so a p99 read from them alone describes
the engine's whole life and barely moves when it degrades. The window keeps the previous scrape
and reports percentiles over what happened since then, falling back to the cumulative view on
the first scrape, after an idle window, or after the engine restarted.
"""

from __future__ import annotations

from tdn.agent.histogram import Histogram, windowed
from tdn.agent.scrape import EngineMetrics
from tdn.domain import FactoryLoad


class MetricsWindow:
    """Remembers the last scrape of one engine and reports each new one relative to it."""

    def __init__(self) -> None:
        self._previous: EngineMetrics | None = None

    def reset(self) -> None:
        """Forget the previous scrape (the next one is reported cumulatively)."""
        self._previous = None

    def advance(self, current: EngineMetrics) -> FactoryLoad:
        """The load to report for ``current``; it becomes the base of the next window."""
        previous, self._previous = self._previous, current
        ttft = _window(current.ttft, previous.ttft if previous else None)
        itl = _window(current.itl, previous.itl if previous else None)
        return FactoryLoad(
            running=current.running,
            waiting=current.waiting,
            kv_cache_usage=current.kv_cache_usage,
            ttft_p50_s=_quantile(ttft, 0.50),
            ttft_p99_s=_quantile(ttft, 0.99),
            itl_p50_s=_quantile(itl, 0.50),
            itl_p99_s=_quantile(itl, 0.99),
            prompt_tokens_total=current.prompt_tokens_total,
            generation_tokens_total=current.generation_tokens_total,
        )


def _window(current: Histogram | None, previous: Histogram | None) -> Histogram | None:
    return windowed(current, previous) if current is not None else None


def _quantile(histogram: Histogram | None, q: float) -> float:
    # The wire has no "unknown" for latency; 0 is what an engine without observations reports.
    if histogram is None:
        return 0.0
    value = histogram.quantile(q)
    return value if value is not None else 0.0
