"""The sidecar's own time per request: wall time minus the time spent waiting on others.

A proxy's cost is what it adds to a request, not how long the factory took. Every await on a
factory (connect, response, body bytes) or on the client (reading its body, writing to a slow
reader) adds its duration to :attr:`OverheadClock.waiting`; what remains of the elapsed time is
the sidecar's own work: parsing, routing, relaying. It is reported in ``x-tdn-overhead-ms`` (up to
the moment the headers are sent), in the access log and in ``tdn_sidecar_overhead_seconds`` (for
the whole request).
"""

from __future__ import annotations

from time import perf_counter


class OverheadClock:
    """Started when a request arrives (``start``, a perf_counter reading; None: now)."""

    __slots__ = ("start", "waiting")

    def __init__(self, start: float | None = None) -> None:
        self.start = perf_counter() if start is None else start
        self.waiting = 0.0

    def elapsed_s(self) -> float:
        return perf_counter() - self.start

    def own_s(self) -> float:
        return max(perf_counter() - self.start - self.waiting, 0.0)
