"""Prometheus histograms as plain values: quantiles from buckets, and the window between scrapes.

Engines export latency as cumulative histograms (counts since start), so "p99 TTFT right now"
means: subtract the previous scrape's buckets from this one's and read the quantile from the
difference. Quantiles follow PromQL's ``histogram_quantile``, so the numbers the agent reports
match what an operator sees in Grafana for the same buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class HistogramError(ValueError):
    """Bucket data that cannot be a Prometheus histogram (NaN, negative or decreasing counts)."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative bucket counts: ``counts[i]`` observations were ``<= bounds[i]``.

    The last bound is always ``+Inf``; bounds strictly increase and counts never decrease.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.bounds:
            raise HistogramError("histogram has no buckets")
        if len(self.bounds) != len(self.counts):
            raise HistogramError(
                f"{len(self.bounds)} bucket bounds but {len(self.counts)} counts"
            )
        if self.bounds[-1] != math.inf:
            raise HistogramError("histogram has no +Inf bucket")
        for bound in self.bounds:
            if math.isnan(bound):
                raise HistogramError("a bucket bound is NaN")
        for lower, upper in zip(self.bounds, self.bounds[1:], strict=False):
            if upper <= lower:
                raise HistogramError(f"bucket bounds do not increase ({lower} then {upper})")
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if not math.isfinite(count):
                raise HistogramError(f"bucket le={bound} count is {count}")
            if count < 0:
                raise HistogramError(f"bucket le={bound} count is negative ({count})")
        for i in range(1, len(self.counts)):
            if self.counts[i] < self.counts[i - 1]:
                raise HistogramError(
                    f"cumulative counts decrease at le={self.bounds[i]} "
                    f"({self.counts[i - 1]} then {self.counts[i]})"
                )

    @property
    def total(self) -> float:
        """How many observations the histogram holds."""
        return self.counts[-1]

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile by linear interpolation inside its bucket; None when empty.

        As in PromQL: the lowest bucket starts at 0 (when its bound is positive), and a quantile
        that lands in the ``+Inf`` bucket is reported as the highest finite bound, because
        nothing is known about how far beyond it those observations lie.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile {q} is outside 0..1")
        total = self.total
        if total <= 0:
            return None
        rank = q * total
        for i, (bound, cumulative) in enumerate(zip(self.bounds, self.counts, strict=True)):
            if cumulative < rank:
                continue
            if bound == math.inf:
                return self.bounds[-2] if len(self.bounds) > 1 else None
            if i == 0:
                if bound <= 0:
                    return bound
                lower, below = 0.0, 0.0
            else:
                lower, below = self.bounds[i - 1], self.counts[i - 1]
            in_bucket = cumulative - below
            if in_bucket <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / in_bucket
        return None  # unreachable: the +Inf bucket holds every observation

    def since(self, previous: Histogram) -> Histogram | None:
        """The observations made after ``previous`` was taken, or None when they are unknowable.

        None means the engine restarted (a count went down) or changed its buckets: the
        difference would be meaningless, and the caller falls back to the cumulative view.
        """
        if previous.bounds != self.bounds:
            return None
        deltas = tuple(now - before for now, before in zip(self.counts, previous.counts,
                                                           strict=True))
        if any(d < 0 for d in deltas):
            return None
        try:
            return Histogram(self.bounds, deltas)
        except HistogramError:
            # Buckets scraped mid-update can make the deltas non-cumulative by a hair; such a
            # window is not trustworthy either.
            return None


def windowed(current: Histogram, previous: Histogram | None) -> Histogram:
    """What latency to report from: the observations since ``previous`` when there are any,
    otherwise everything the engine has seen (first scrape, idle window, or a restart)."""
    if previous is not None:
        window = current.since(previous)
        if window is not None and window.total > 0:
            return window
    return current
