"""The routing problem in solver-neutral form: demand groups, their candidate factories, capacities.

Both the LP (:mod:`tdn.topology.lp`) and the greedy fallback (:mod:`tdn.topology.greedy`) read this,
so a fallback plan obeys exactly the same eligibility, costs and capacities as an optimal one.
Everything is built in sorted order: the same input always yields the same model, and GLOP on the
same model yields the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tdn.domain import AdminState, Demand, FactoryState, Plan, Site
from tdn.topology.costs import CostTerms, request_cost
from tdn.topology.eligibility import judge
from tdn.topology.estimates import concurrency, request_duration_s
from tdn.topology.options import SolveOptions

GroupKey = tuple[str, str, str]  # (site, model, traffic class)
Exclusion = tuple[str, str, str, str, str]  # (site, model, class, factory id, reason)

# A zone no factory can be in: what merged demands with disjoint zone restrictions allow.
_NO_ZONE = "<no common zone>"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A factory that may serve a group, with what one request of the group would cost there."""

    factory_id: str
    may_be_primary: bool
    terms: CostTerms
    cost: float  # weighted per-request cost, in cost units
    concurrency: float  # in-flight requests if this factory took the whole group
    duration_s: float  # how long one request holds a slot here
    domain: str
    region: str
    cordoned: bool


@dataclass(frozen=True, slots=True)
class Group:
    """One (site, model, class) of demand with its candidates, cheapest first."""

    key: GroupKey
    demand: Demand
    candidates: tuple[Candidate, ...]

    @property
    def primaries(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.may_be_primary)

    @property
    def objective_rate(self) -> float:
        # A group with no traffic yet still deserves its cheapest route, so costs are weighed as
        # if a trickle of traffic existed; capacity uses the true (zero) load.
        return max(self.demand.rate_rps, 1e-3)

    @property
    def label(self) -> str:
        return "/".join(self.key)


@dataclass(frozen=True, slots=True)
class Problem:
    groups: tuple[Group, ...]
    factories: Mapping[str, FactoryState]
    # Concurrency each factory may be planned for, after headroom.
    capacity: Mapping[str, float]
    # Output tokens/s each factory may be planned for, after headroom; absent means unbounded.
    output_capacity: Mapping[str, float]
    exclusions: tuple[Exclusion, ...]
    # Previous plan's primary split per group, for the churn penalty.
    previous: Mapping[GroupKey, Mapping[str, float]]
    options: SolveOptions


def merge_demands(demands: Sequence[Demand]) -> tuple[Demand, ...]:
    """One demand per (site, model, class): rates add, token counts average by rate.

    The strictest of the merged SLOs and zone restrictions applies, because each request of the
    merged group must be allowed to go wherever the group is routed.
    """
    by_key: dict[GroupKey, list[Demand]] = {}
    for d in demands:
        by_key.setdefault((d.site, d.model, d.traffic_class), []).append(d)
    merged = []
    for key in sorted(by_key):
        parts = by_key[key]
        if len(parts) == 1:
            merged.append(parts[0])
            continue
        rate = sum(d.rate_rps for d in parts)

        def mean(values: list[float], parts: list[Demand] = parts, rate: float = rate) -> float:
            if rate > 0:
                return sum(v * d.rate_rps for v, d in zip(values, parts, strict=True)) / rate
            return sum(values) / len(values)

        restricted = [set(d.allowed_zones) for d in parts if d.allowed_zones]
        zones: tuple[str, ...] = ()
        if restricted:
            common = set.intersection(*restricted)
            zones = tuple(sorted(common)) or (_NO_ZONE,)
        merged.append(Demand(
            site=key[0], model=key[1], traffic_class=key[2], rate_rps=rate,
            prompt_tokens=mean([d.prompt_tokens for d in parts]),
            output_tokens=mean([d.output_tokens for d in parts]),
            ttft_slo_s=min(d.ttft_slo_s for d in parts),
            allowed_zones=zones,
        ))
    return tuple(merged)


def previous_shares(previous: Plan | None) -> dict[GroupKey, dict[str, float]]:
    if previous is None:
        return {}
    return {
        (site, route.model, route.traffic_class): {w.factory_id: w.weight for w in route.primary}
        for site, route in previous.routes
    }


def build_problem(factories: Sequence[FactoryState], sites: Sequence[Site],
                  demands: Sequence[Demand], previous: Plan | None,
                  options: SolveOptions) -> Problem:
    """Judge every (group, factory) pair and price the eligible ones."""
    by_id: dict[str, FactoryState] = {}
    for f in factories:
        if f.spec.id in by_id:
            raise ValueError(f"duplicate factory id {f.spec.id!r}")
        by_id[f.spec.id] = f
    site_by_id = {s.id: s for s in sites}
    ordered = [by_id[fid] for fid in sorted(by_id)]
    groups = []
    exclusions: list[Exclusion] = []
    for demand in merge_demands(demands):
        key = (demand.site, demand.model, demand.traffic_class)
        site = site_by_id.get(demand.site)
        candidates = []
        for factory in ordered:
            verdict = judge(demand, factory, site)
            if verdict.reason:
                exclusions.append((*key, factory.spec.id, verdict.reason))
            if not verdict.may_be_backup or site is None:
                continue
            terms = request_cost(demand, factory, site)
            candidates.append(Candidate(
                factory_id=factory.spec.id,
                may_be_primary=verdict.may_be_primary,
                terms=terms,
                cost=terms.total(options),
                concurrency=concurrency(demand, factory),
                duration_s=request_duration_s(demand, factory),
                domain=factory.spec.domain,
                region=factory.spec.region,
                cordoned=factory.admin is AdminState.CORDONED,
            ))
        candidates.sort(key=lambda c: (c.cost, c.factory_id))
        groups.append(Group(key=key, demand=demand, candidates=tuple(candidates)))
    keep = 1.0 - options.capacity_headroom
    return Problem(
        groups=tuple(groups),
        factories=by_id,
        capacity={fid: f.spec.max_concurrency * keep for fid, f in by_id.items()},
        output_capacity={
            fid: f.spec.max_output_tokens_per_second * keep
            for fid, f in by_id.items() if f.spec.max_output_tokens_per_second > 0
        },
        exclusions=tuple(sorted(exclusions)),
        previous=previous_shares(previous),
        options=options,
    )


@dataclass(frozen=True, slots=True)
class Assignment:
    """A solution: each group's share per factory, its unserved share, and the objective value."""

    shares: Mapping[GroupKey, Mapping[str, float]]
    unserved: Mapping[GroupKey, float]
    objective: float
    status: str  # "optimal" or "feasible" from the LP; the greedy fallback sets its own


def unserved_penalty(group: Group, options: SolveOptions) -> float:
    """Per-request cost of leaving demand unserved: far above serving it anywhere, fully queued."""
    top_queueing = queueing_marginal_costs(options)[-1]
    worst = max((c.cost + top_queueing * c.duration_s for c in group.primaries), default=0.0)
    return 1000.0 + 10.0 * worst


def queueing_marginal_costs(options: SolveOptions) -> tuple[float, ...]:
    """Cost per second of occupancy of one slot in each capacity segment, increasing (convex).

    Segment k covers utilisations [k, k+1) / K of the plannable capacity; its price is the M/M/1
    delay factor rho / (1 - rho) at the segment's midpoint, rho measured against the factory's
    full concurrency, so filling towards the headroom costs ever more.
    """
    k = options.queueing_segments
    keep = 1.0 - options.capacity_headroom
    costs = []
    for i in range(k):
        rho = (i + 0.5) / k * keep
        costs.append(options.queueing_steepness * rho / (1.0 - rho))
    return tuple(costs)
