"""Why a route is what it is: each factory's role, its cost by term, the rule that excluded it,
whether the route's backups absorb a failure, and each primary's planned load against the load
at which the group still meets its SLO.

An explanation is computed from the inputs the plan was solved from (:class:`SolveInputs`) with
the same judge, requirements and cost model as the solver, so its words and numbers are the
solver's own; the failure verdict replays the plan through :mod:`tdn.topology.failover`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from tdn.domain import Demand, Plan, Route, Site
from tdn.topology.costs import request_cost
from tdn.topology.eligibility import RESERVED_FOR_SOLE_TRAFFIC, Check, judge
from tdn.topology.estimates import planned_loads, request_duration_s
from tdn.topology.failover import FailureModel
from tdn.topology.problem import (
    GroupKey,
    Problem,
    build_problem,
    merge_demands,
    queueing_marginal_costs,
)
from tdn.topology.requirements import requirement
from tdn.topology.solver import SolveInputs


@dataclass(frozen=True, slots=True)
class FactoryExplanation:
    factory_id: str
    # "primary", "backup-0", "backup-1", ..., "eligible" (could serve, not chosen) or "excluded".
    role: str
    weight: float = 0.0
    # Per-request cost terms as the solver weighs them, then "queueing" at the planned fill and
    # "total"; empty for an excluded factory.
    costs: tuple[tuple[str, float], ...] = ()
    # For an excluded or unchosen factory: the rule or the reason.
    excluded_by: str = ""


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    site: str
    model: str  # the served model (an alias is resolved)
    traffic_class: str
    plan_version: int
    factories: tuple[FactoryExplanation, ...]
    # The group's rules (zones, SLOs, price cap) as short phrases.
    requirements: tuple[str, ...] = ()
    # What losing one primary, or one primary region, does to the route's traffic.
    protection: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class NoSuchRoute(LookupError):
    """The plan has no route for the asked site, model and class."""


def find_route(plan: Plan, site: str, model: str, traffic_class: str) -> Route | None:
    """The route a sidecar at ``site`` would use: the exact class, else the model's default."""
    fallback: Route | None = None
    for route in plan.routes_for_site(site):
        if route.model != model:
            continue
        if route.traffic_class == traffic_class:
            return route
        if fallback is None or route.traffic_class == "default":
            fallback = route
    return fallback


def _roles(route: Route | None) -> dict[str, tuple[str, float]]:
    roles: dict[str, tuple[str, float]] = {}
    if route is None:
        return roles
    for w in route.primary:
        roles[w.factory_id] = ("primary", w.weight)
    for level, members in enumerate(route.backups):
        for w in members:
            roles.setdefault(w.factory_id, (f"backup-{level}", w.weight))
    return roles


def _queueing(inputs: SolveInputs, load: float, capacity: float, duration: float) -> float:
    """Per-request queueing cost at a factory filled to ``load`` of ``capacity`` slots (for a
    factory the solver had no pair for)."""
    marginals = queueing_marginal_costs(inputs.options)
    plannable = capacity * (1.0 - inputs.options.capacity_headroom)
    if plannable <= 0:
        return marginals[-1] * duration
    k = min(int(load / plannable * len(marginals)), len(marginals) - 1)
    return marginals[k] * duration


@dataclass(frozen=True, slots=True)
class _Solved:
    """The solver's own view of a plan: each factory's fill in the LP's capacity units, and per
    factory of the explained group its pair (request duration, capacity scale, SLO-safe load,
    share cap), and the factories reserved for other traffic (a backup only here)."""

    problem: Problem
    fill: dict[str, float]
    pairs: dict[str, tuple[float, float, float, float]]
    reserved: frozenset[str] = frozenset()

    def queueing(self, inputs: SolveInputs, factory_id: str) -> float | None:
        """The LP's marginal queueing cost of one more request of the group at the factory."""
        pair = self.pairs.get(factory_id)
        if pair is None:
            return None
        f = self.problem.factories.index[factory_id]
        ends = self.problem.widths[f].cumsum().tolist()
        marginals = self.problem.marginals[f]
        # The segment the next slot falls in (past the capacity: the last).
        k = min(bisect.bisect_right(ends, self.fill.get(factory_id, 0.0)), len(marginals) - 1)
        duration, scale, _, _ = pair
        return float(marginals[k]) * duration * scale


def _solved(inputs: SolveInputs, plan: Plan, key: GroupKey) -> _Solved:
    problem = build_problem(inputs.factories, inputs.sites, inputs.demands, inputs.previous,
                            inputs.options, policy=inputs.policy)
    ft = problem.factories
    index = {k: g for g, k in enumerate(problem.keys)}
    fill: dict[str, float] = {}
    for site, route in plan.routes:
        g = index.get((site, route.model, route.traffic_class))
        if g is None:
            continue
        weights = {w.factory_id: w.weight for w in route.primary}
        for j in problem.pairs(g):
            fid = ft.id(int(problem.factory[j]))
            if fid in weights:
                fill[fid] = fill.get(fid, 0.0) + weights[fid] * float(problem.concurrency[j])
    pairs = {}
    reserved = set()
    if key in index:
        for j in problem.pairs(index[key]):
            fid = ft.id(int(problem.factory[j]))
            pairs[fid] = (float(problem.duration[j]), float(problem.scale[j]),
                          float(problem.slo_safe_load[j]), float(problem.share_cap[j]))
            if int(problem.check[j]) == int(Check.RESERVED):
                reserved.add(fid)
    return _Solved(problem, fill, pairs, frozenset(reserved))


def _protection(model: FailureModel, key: GroupKey, route: Route) -> tuple[str, ...]:
    if not route.primary:
        return ("no primary: nothing to protect",)
    out = []
    regions: dict[str, set[str]] = {}
    for fid, f in model.factories.items():
        regions.setdefault(f.spec.region, set()).add(fid)
    for w in route.primary:
        out.append(_verdict(model, key, f"losing {w.factory_id}", frozenset({w.factory_id})))
    primary_regions = sorted({model.factories[w.factory_id].spec.region for w in route.primary
                              if w.factory_id in model.factories})
    for region in primary_regions:
        out.append(_verdict(model, key, f"losing region {region}", frozenset(regions[region])))
    return tuple(out)


def _verdict(model: FailureModel, key: GroupKey, what: str, down: frozenset[str]) -> str:
    report = model.replay(what, down)
    lost = dict(report.lost).get(key, 0.0)
    if lost > 0:
        return f"{what}: {lost:.0%} of this traffic has no live backup"
    if key not in report.hurt:
        return f"{what}: absorbed by the backups, no re-solve needed"
    over = ", ".join(f"{o.factory_id} {o.load:.1f}/{o.capacity:g} slots"
                     for o in report.overloaded[:3])
    return f"{what}: backups overloaded ({over})"


def explain(inputs: SolveInputs, plan: Plan, site_id: str, model: str,
            traffic_class: str = "default") -> RouteExplanation:
    """Explain the route for (site, model, class); raise :class:`NoSuchRoute` if there is none
    and no factory was even considered for it."""
    policy = inputs.policy
    served = policy.resolve_model(model)
    notes: list[str] = [f"plan {plan.version}: {plan.status.split('; ')[0]}"]
    if served != model:
        notes.append(f"{model} is an alias of {served}")
    route = find_route(plan, site_id, served, traffic_class)
    if route is not None and route.traffic_class != traffic_class:
        notes.append(f"no route for class {traffic_class}; "
                     f"class {route.traffic_class} is used instead")
        traffic_class = route.traffic_class
    key = (site_id, served, traffic_class)
    demands = {(d.site, d.model, d.traffic_class): d for d in merge_demands(inputs.demands,
                                                                            policy)}
    site = next((s for s in inputs.sites if s.id == site_id), None)
    demand = demands.get(key)
    if route is None and demand is None:
        routed = sorted({r.model for r in plan.routes_for_site(site_id)})
        raise NoSuchRoute(f"plan {plan.version} has no route for {served}/{traffic_class} at "
                          f"{site_id} (routed models there: {', '.join(routed) or 'none'})")
    if demand is None:
        demand = Demand(site=site_id, model=served, traffic_class=traffic_class, rate_rps=0.0)
        notes.append("no demand for this group in the solve's inputs")
    failure = FailureModel(plan, inputs.factories, demands.values())
    # The previous plan's load per factory: how far an observed TTFT is believed (estimates).
    planned = planned_loads(inputs.previous, inputs.factories, demands.values())
    solved = _solved(inputs, plan, key)
    roles = _roles(route)
    req = requirement(demand, site, policy) if site is not None else None
    dearest = max((_total(inputs, demand, site, fid, planned) for fid in
                   (w.factory_id for w in route.primary)), default=0.0) if (
        route is not None and site is not None) else 0.0
    explained = []
    for factory in sorted(inputs.factories, key=lambda f: f.spec.id):
        fid = factory.spec.id
        verdict = judge(demand, factory, site, req, planned_load=planned.get(fid, 0.0))
        role, weight = roles.get(fid, ("", 0.0))
        if not role and not verdict.may_be_backup:
            explained.append(FactoryExplanation(fid, "excluded", excluded_by=verdict.reason))
            continue
        assert site is not None  # judge excludes every factory of an unknown site
        terms = request_cost(demand, factory, site, planned.get(fid, 0.0)).weighted(
            inputs.options, inputs.options.tier_factor(factory.spec.tier))
        queueing = solved.queueing(inputs, fid)
        if queueing is None:
            queueing = _queueing(inputs, failure.base.get(fid, 0.0),
                                 float(factory.spec.max_concurrency),
                                 request_duration_s(demand, factory, planned.get(fid, 0.0)))
        static = sum(v for _, v in terms)
        costs = (*terms, ("queueing", queueing), ("total", static + queueing))
        if role:
            reason = verdict.reason or (RESERVED_FOR_SOLE_TRAFFIC if fid in solved.reserved
                                        else "")
            explained.append(FactoryExplanation(fid, role, weight, costs, reason))
        elif fid in solved.reserved:
            explained.append(FactoryExplanation(fid, "eligible", 0.0, costs,
                                                RESERVED_FOR_SOLE_TRAFFIC))
        elif verdict.reason:  # cordoned: may catch failovers, was not needed as a backup
            explained.append(FactoryExplanation(fid, "eligible", 0.0, costs,
                                                f"{verdict.reason}; not chosen as a backup"))
        else:
            why = (f"not chosen: costs {static:.3g} per request before queueing, the "
                   f"dearest primary {dearest:.3g}" if static > dearest else
                   "not chosen: its capacity went to other groups, or its failure domain "
                   "is already used")
            explained.append(FactoryExplanation(fid, "eligible", 0.0, costs, why))
    explained.sort(key=lambda e: (_rank(e.role), -e.weight, e.factory_id))
    if route is not None:
        notes += _slo_safe_notes(solved, route, failure)
    return RouteExplanation(
        site=site_id, model=served, traffic_class=traffic_class, plan_version=plan.version,
        factories=tuple(explained),
        requirements=req.describe() if req is not None else (f"site {site_id} unknown",),
        protection=_protection(failure, key, route) if route is not None else (),
        notes=tuple(notes),
    )


def _rank(role: str) -> int:
    """Primaries, then backup levels in order, then eligible, then excluded factories."""
    if role == "primary":
        return 0
    if role.startswith("backup-"):
        return 1 + int(role.removeprefix("backup-"))
    return 1000 if role == "eligible" else 1001


def _total(inputs: SolveInputs, demand: Demand, site: Site, factory_id: str,
           planned: dict[str, float]) -> float:
    factory = next((f for f in inputs.factories if f.spec.id == factory_id), None)
    if factory is None:
        return 0.0
    return request_cost(demand, factory, site, planned.get(factory_id, 0.0)).total(
        inputs.options, inputs.options.tier_factor(factory.spec.tier))


def _slo_safe_notes(solved: _Solved, route: Route, failure: FailureModel) -> list[str]:
    """Per primary: the load the plan puts there against the load at which this group's
    requests still meet their SLO (the solver's own numbers, from the same problem), and
    whether its share is held at the route's share cap (``capacity.max_primary_share``)."""
    ft = solved.problem.factories
    out = []
    for w in route.primary:
        pair = solved.pairs.get(w.factory_id)
        if pair is not None:
            slots = ft.states[ft.index[w.factory_id]].spec.max_concurrency
            out.append(f"{w.factory_id}: {failure.base.get(w.factory_id, 0.0):.1f} in flight "
                       f"planned, SLO-safe for this class up to {pair[2]:.1f} of {slots} slots"
                       + (f"; share held at the cap of {pair[3]:.2f} per factory"
                          if pair[3] < 1.0 and w.weight >= pair[3] - 1e-3 else ""))
    return out
