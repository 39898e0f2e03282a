"""Where requests go when factories fail, computed from a plan alone, Faucet-style.

The solver *claims* that its backups absorb failures (:mod:`tdn.topology.backups`); this module
checks such claims the way a sidecar would live them: for each failure event it applies the
failover model to every route, adds up the load each surviving factory then carries, and reports
every factory pushed past its full concurrency and every share of traffic left with nowhere to
go. It reads only the plan's routes and the inputs' factories and demand, never the solver's
internals, so that a test built on it checks behaviour, not bookkeeping.

Failover model (the data-plane contract the backups are built for): with the factories in
``down`` failed, a route keeps sending each live primary its own weight; the weight of a dead
primary goes to the first backup level with a live member, spread over its live members by their
weights; with no live backup left, to the live primaries by weight (a sidecar tries every
candidate it has); with none of those either, that share is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tdn.domain import Demand, FactoryState, Plan, Route
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.topology.estimates import request_duration_s
from tdn.topology.problem import GroupKey, merge_demands

# Load above capacity by less than this (in slots) is float error, not an overload.
_SLACK = 1e-6


def shares_after(route: Route, down: frozenset[str]) -> tuple[dict[str, float], float]:
    """Each factory's share of the route's requests with ``down`` failed, and the lost share."""
    shares: dict[str, float] = {}
    lost = 0.0
    live_primaries = [w for w in route.primary if w.factory_id not in down and w.weight > 0]
    for w in route.primary:
        if w.factory_id not in down:
            shares[w.factory_id] = shares.get(w.factory_id, 0.0) + w.weight
            continue
        for level in (*route.backups, tuple(live_primaries)):
            live = [m for m in level if m.factory_id not in down and m.weight > 0]
            total = sum(m.weight for m in live)
            if total > 0:
                for m in live:
                    shares[m.factory_id] = shares.get(m.factory_id, 0.0) + (
                        w.weight * m.weight / total)
                break
        else:
            lost += w.weight
    return shares, lost


@dataclass(frozen=True, slots=True)
class Overload:
    factory_id: str
    load: float  # in-flight requests in the event
    capacity: float  # full concurrency


@dataclass(frozen=True, slots=True)
class EventReport:
    """What one failure event does to the plan: overloaded survivors, groups with lost
    traffic, and the groups whose traffic lands on an overloaded factory or is lost."""

    event: str  # "factory <id>" or "region <name>"
    down: frozenset[str]
    overloaded: tuple[Overload, ...]
    lost: tuple[tuple[GroupKey, float], ...]
    hurt: frozenset[GroupKey]

    @property
    def absorbed(self) -> bool:
        return not self.overloaded and not self.lost


class FailureModel:
    """A plan with the loads it puts on factories, ready to replay failure events."""

    def __init__(self, plan: Plan, factories: Iterable[FactoryState],
                 demands: Iterable[Demand]) -> None:
        self.factories = {f.spec.id: f for f in factories}
        self.demands: dict[GroupKey, Demand] = {
            (d.site, d.model, d.traffic_class): d for d in demands}
        self.routes: dict[GroupKey, Route] = {
            (site, r.model, r.traffic_class): r for site, r in plan.routes}
        self._durations: dict[tuple[GroupKey, str], float] = {}
        self.base = self._loads(dict.fromkeys(self.routes, frozenset()))

    def duration(self, key: GroupKey, factory_id: str) -> float:
        cached = self._durations.get((key, factory_id))
        if cached is None:
            cached = request_duration_s(self.demands[key], self.factories[factory_id])
            self._durations[(key, factory_id)] = cached
        return cached

    def _group_loads(self, key: GroupKey, down: frozenset[str]) -> tuple[dict[str, float], float]:
        demand = self.demands.get(key)
        if demand is None:
            return {}, 0.0
        shares, lost = shares_after(self.routes[key], down)
        return ({fid: share * demand.rate_rps * self.duration(key, fid)
                 for fid, share in shares.items() if fid in self.factories}, lost)

    def _loads(self, down_by_group: Mapping[GroupKey, frozenset[str]]) -> dict[str, float]:
        loads: dict[str, float] = {}
        for key, down in down_by_group.items():
            for fid, load in self._group_loads(key, down)[0].items():
                loads[fid] = loads.get(fid, 0.0) + load
        return loads

    def replay(self, event: str, down: frozenset[str]) -> EventReport:
        """Apply one failure: only groups with a failed primary move."""
        affected = [k for k, r in self.routes.items()
                    if any(w.factory_id in down for w in r.primary)]
        loads = dict(self.base)
        lost: list[tuple[GroupKey, float]] = []
        receivers: dict[GroupKey, set[str]] = {}
        for key in affected:
            before, _ = self._group_loads(key, frozenset())
            after, share_lost = self._group_loads(key, down)
            for fid, load in before.items():
                loads[fid] = loads.get(fid, 0.0) - load
            for fid, load in after.items():
                loads[fid] = loads.get(fid, 0.0) + load
            receivers[key] = {fid for fid in after if fid not in before or after[fid] > before[
                fid] + _SLACK}
            if share_lost > 0:
                lost.append((key, share_lost))
        overloaded = []
        for fid, load in sorted(loads.items()):
            if fid in down:
                continue
            capacity = float(self.factories[fid].spec.max_concurrency)
            # A factory overloaded by the plan itself is only news if the failure adds to it.
            if load > max(capacity, self.base.get(fid, 0.0)) + _SLACK:
                overloaded.append(Overload(fid, load, capacity))
        over = {o.factory_id for o in overloaded}
        hurt = frozenset({k for k, fids in receivers.items() if fids & over}
                         | {k for k, _ in lost})
        return EventReport(event, down, tuple(overloaded), tuple(sorted(lost)), hurt)

    def factory_events(self) -> list[EventReport]:
        """Every single-factory loss among the factories the plan routes to as a primary."""
        primaries = sorted({w.factory_id for r in self.routes.values() for w in r.primary})
        return [self.replay(f"factory {fid}", frozenset({fid})) for fid in primaries]

    def region_events(self) -> list[EventReport]:
        regions: dict[str, set[str]] = {}
        for fid, f in self.factories.items():
            regions.setdefault(f.spec.region, set()).add(fid)
        primaries = {w.factory_id for r in self.routes.values() for w in r.primary}
        return [self.replay(f"region {name}", frozenset(ids))
                for name, ids in sorted(regions.items()) if ids & primaries]


def failure_model(plan: Plan, factories: Iterable[FactoryState], demands: Iterable[Demand],
                  policy: Policy = DEFAULT_POLICY) -> FailureModel:
    """A :class:`FailureModel` over the plan's groups as the solver merged them."""
    return FailureModel(plan, factories, merge_demands(tuple(demands), policy))
