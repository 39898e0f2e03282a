"""Factories' own load, reported on every answer (ORCA), so that a burst does not queue where the
plan's weights happen to send it.

The plan holds for a solve period and sees factories' queues through telemetry that is seconds
old. Per-request routers that read live queues dodge a burst; a sidecar following weights sends
it into the queue. vLLM reports its load in each response when asked (``endpoint-load-metrics-
format: text`` on the request; ORCA's ``endpoint-load-metrics`` header on the answer, e.g.
``TEXT named_metrics.kv_cache_usage_perc=0.4, named_metrics.num_requests_waiting=3.0``; the
format is xDS's ORCA load report, also what Envoy's client-side weighted round robin reads). The
sidecar asks every factory for it, keeps each factory's latest report with the time it arrived,
and a factory whose latest report, at most :data:`MAX_AGE_S` old, had requests waiting is
*busy*: a new request whose first candidate it is starts at a route candidate that is not
(the route's other primaries first, then its backups), exactly as for a factory slow to start
streams (:mod:`first_byte_watch`). Nothing is ejected; once the report is older than
:data:`MAX_AGE_S`, the factory is back in its place, and the next answer from it refreshes the
report. Factories that send no report are never busy.

Why "any request waiting" and one second: a waiting request means every slot is taken, so the
next one queues behind it for a whole request's time (seconds for an LLM answer), while a
factory of the same route with a free slot starts it at once. In the routing benchmark
(``python -m bench routing``, docs/decisions.md "Session 4") this took TDN's SLO attainment
through a region failure from 95.6% to about 98%; older reports (2 s) did as well, a global
view refreshed every second did worse (reports of a factory this sidecar does not use are of
no help, and a second is long in a burst).

A report that cannot be read is ignored and counted (``tdn_sidecar_load_reports_rejected_total``);
it never makes a factory busy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection

__all__ = ["FORMAT_REQUEST_LINE", "MAX_AGE_S", "REPORT_HEADER", "LoadReports",
           "waiting_requests"]

# The request header that asks a vLLM server for its load report, as a header line.
FORMAT_REQUEST_LINE = b"endpoint-load-metrics-format: text\r\n"
# The answer's header (lower case) and the named metric read from it.
REPORT_HEADER = b"endpoint-load-metrics"
_WAITING = "num_requests_waiting"
_TEXT_KEY = b"named_metrics.num_requests_waiting="
# A report counts for this long after it arrived.
MAX_AGE_S = 1.0


def waiting_requests(value: bytes) -> float | None:
    """The ``num_requests_waiting`` of an ORCA ``endpoint-load-metrics`` header value (TEXT or
    JSON format); None when the value has none or cannot be read."""
    text = value.strip()
    kind = text[:5].upper()
    if kind == b"TEXT ":
        at = text.find(_TEXT_KEY)
        if at < 0:
            return None
        start = at + len(_TEXT_KEY)
        end = text.find(b",", start)
        raw = text[start:end if end >= 0 else len(text)].strip()
        try:
            number = float(raw)
        except ValueError:
            return None
    elif kind == b"JSON ":
        try:
            report = json.loads(text[5:])
            number = float(report["named_metrics"][_WAITING])
        except (ValueError, TypeError, KeyError, RecursionError):
            return None
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


class LoadReports:
    """The latest load report per factory: (arrival time, requests waiting)."""

    __slots__ = ("_latest", "rejected")

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, float]] = {}
        self.rejected = 0

    def observe(self, factory_id: str, header_value: bytes, now: float) -> bool:
        """Record a report as received at ``now``; False (and counted) when unreadable."""
        waiting = waiting_requests(header_value)
        if waiting is None:
            self.rejected += 1
            return False
        self._latest[factory_id] = (now, waiting)
        return True

    def record(self, factory_id: str, waiting: float, now: float) -> None:
        """Record a report already read (the routing benchmark's simulated sidecar)."""
        self._latest[factory_id] = (now, waiting)

    def busy(self, factory_id: str, now: float) -> bool:
        """Whether the factory's latest report, at most :data:`MAX_AGE_S` old, had requests
        waiting."""
        latest = self._latest.get(factory_id)
        return latest is not None and latest[1] >= 1.0 and now - latest[0] <= MAX_AGE_S

    def forget_except(self, factory_ids: Collection[str]) -> None:
        """Drop factories a new policy no longer has."""
        for fid in [f for f in self._latest if f not in factory_ids]:
            del self._latest[fid]
