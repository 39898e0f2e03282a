"""A policy compiled for the request path: routes by (model, class), each with its balancer plan,
per-factory first-byte deadlines and whether a broken stream can be continued, and each factory's
stream idle timeout.

Built once when a policy becomes live (a listener on :class:`LivePolicy`), so that a request does
a dictionary lookup where it would otherwise scan routes, sort weights or derive deadlines. A
request reads the table once and uses that object to its end, so a policy swap never mixes two
versions inside one request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdn.domain import FactoryEndpoint, SitePolicy

from .balancer import RoutePlan
from .deadlines import first_byte_deadline, last_resort_deadline, stream_idle_timeout
from .effective_settings import EffectiveSettings, resolve


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One route as the request path uses it."""

    plan: RoutePlan
    # Policy first-byte deadline (seconds) per factory id of this route.
    deadlines: dict[str, float]
    # The same for an attempt with no candidate left after it (deadlines.last_resort_deadline).
    last_resort: dict[str, float]
    # Continuation is on and at least one factory of the route declares prefill support.
    continuation_possible: bool

    @property
    def model(self) -> str:
        return self.plan.route.model

    @property
    def fallback_model(self) -> str:
        return self.plan.route.context_fallback_model


class RoutingTable:
    """Everything the request path needs from one policy, precomputed."""

    def __init__(self, policy: SitePolicy) -> None:
        self.policy = policy
        self.version = policy.version
        self.settings: EffectiveSettings = resolve(policy.settings)
        self.endpoints: dict[str, FactoryEndpoint] = {f.id: f for f in policy.factories}
        # Seconds a committed stream from each factory may stay silent.
        self.idle_timeouts: dict[str, float] = {
            fid: stream_idle_timeout(self.settings, e) for fid, e in self.endpoints.items()}
        self._exact: dict[tuple[str, str], RouteEntry] = {}
        self._by_model: dict[str, RouteEntry] = {}
        for route in policy.routes:
            plan = RoutePlan(route, self.endpoints)
            entry = RouteEntry(
                plan=plan,
                deadlines={e.id: first_byte_deadline(route, self.settings, e)
                           for e in plan.endpoints},
                last_resort={e.id: last_resort_deadline(route, self.settings, e)
                             for e in plan.endpoints},
                continuation_possible=(self.settings.continuation_enabled
                                       and any(e.supports_prefill for e in plan.endpoints)),
            )
            self._exact.setdefault((route.model, route.traffic_class), entry)
            # Same choice as SitePolicy.route_for: the "default" class, else the first route.
            current = self._by_model.get(route.model)
            if current is None or (route.traffic_class == "default"
                                   and current.plan.route.traffic_class != "default"):
                self._by_model[route.model] = entry
        self.models = tuple(sorted(self._by_model))

    def route_groups(self) -> list[frozenset[str]]:
        """The factory ids of each route (outlier detection's ejection cap is per route)."""
        return [frozenset(e.id for e in entry.plan.endpoints) for entry in self._exact.values()]

    def route(self, model: str, traffic_class: str = "default") -> RouteEntry | None:
        entry = self._exact.get((model, traffic_class))
        return entry if entry is not None else self._by_model.get(model)
