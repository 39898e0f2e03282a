"""What a sidecar remembers about each factory between requests: outlier ejections, rate-limit
cooldowns and streams still waiting for a first byte, and how they narrow and order a route's
candidates for the next request.

One object per sidecar, fed by every attempt's outcome (:mod:`failover`) and by the prober; it is
reconfigured, keeping the state of factories the new policy keeps, whenever a policy goes live.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence

from tdn.domain import FactoryEndpoint

from .cooldowns import Cooldowns
from .effective_settings import DEFAULT_SLOW_FIRST_BYTE_S
from .first_byte_watch import FirstByteWatch, prefer_fast
from .load_reports import LoadReports
from .metrics import SidecarMetrics
from .outlier import SUSPECTED, Kind, OutlierDetector
from .routing_table import RoutingTable


class FactoryHealth:
    """Ejections, cooldowns and slow first bytes of the factories of the live policy."""

    def __init__(self, metrics: SidecarMetrics, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.clock = clock
        self.outlier = OutlierDetector(listener=self._ejection_changed)
        self.cooldowns = Cooldowns(rng)
        self.first_bytes = FirstByteWatch()
        self.loads = LoadReports()
        self.slow_first_byte_s = DEFAULT_SLOW_FIRST_BYTE_S
        self._tiers: dict[str, str] = {}

    def policy_changed(self, table: RoutingTable) -> None:
        for fid in self.outlier.ejected_ids():
            if fid not in table.endpoints:
                # A factory the policy no longer ships is no longer ejected.
                self.metrics.ejection_changed(fid, self._tiers.get(fid, ""), "removed", False)
        self._tiers = {fid: e.tier.value for fid, e in table.endpoints.items()}
        self.outlier.configure(table.settings.outlier, table.endpoints, table.route_groups())
        self.cooldowns.forget_except(table.endpoints)
        self.first_bytes.forget_except(table.endpoints)
        self.loads.forget_except(table.endpoints)
        self.slow_first_byte_s = table.settings.slow_first_byte_s

    def _ejection_changed(self, factory_id: str, reason: str, ejected: bool) -> None:
        self.metrics.ejection_changed(factory_id, self._tiers.get(factory_id, ""), reason, ejected)

    def select(self, candidates: Sequence[FactoryEndpoint],
               primaries: Collection[str] | None = None,
               ) -> tuple[Sequence[FactoryEndpoint], bool, float]:
        """(candidates to try, route in panic, seconds until a cooled-down factory returns when
        cooldowns left none). With the route's ``primaries``, a first candidate slow to start
        this sidecar's streams right now, or busy by its own latest load report, goes behind
        the others (:mod:`first_byte_watch`, :mod:`load_reports`)."""
        now = self.clock()
        usable, panic = self.outlier.select(candidates, now)
        usable, wait = self.cooldowns.select(usable, now)
        if primaries is not None and usable:
            usable, passed = prefer_fast(usable, primaries, self.first_bytes, now,
                                         self.slow_first_byte_s, loads=self.loads)
            if passed:
                tier = self._tiers.get(passed, "")
                if self.loads.busy(passed, now):
                    self.metrics.passed_over_busy(passed, tier)
                else:
                    self.metrics.passed_over_slow(passed, tier)
        return usable, panic, wait

    def load_reported(self, endpoint: FactoryEndpoint, header_value: bytes) -> None:
        """A factory's answer carried its load report (:mod:`load_reports`)."""
        if not self.loads.observe(endpoint.id, header_value, self.clock()):
            self.metrics.load_report_rejected(endpoint.id, endpoint.tier.value)

    def succeeded(self, endpoint: FactoryEndpoint, *, panic: bool = False) -> None:
        """A successful attempt; ``panic``: routed while the route ignored ejections."""
        self.outlier.success(endpoint.id, self.clock(), panic=panic)
        self.cooldowns.succeeded(endpoint.id)

    def failed(self, endpoint: FactoryEndpoint, kind: Kind) -> bool:
        """Record a failed attempt; whether new requests now skip ``endpoint`` (ejected or
        suspected), which makes moving this request elsewhere a re-route, not a retry."""
        now = self.clock()
        outlier = self.outlier
        if outlier.failure(endpoint.id, now, kind) == SUSPECTED:
            self.metrics.suspected(endpoint.id, endpoint.tier.value)
        return not outlier.available(endpoint.id, now)

    def rate_limited(self, endpoint: FactoryEndpoint, retry_after_s: float | None) -> None:
        self.cooldowns.rate_limited(endpoint.id, self.clock(), retry_after_s)
        self.metrics.cooled_down(endpoint.id, endpoint.tier.value)
