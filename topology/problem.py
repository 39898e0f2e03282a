"""The routing problem in solver-neutral form: demand groups, every (group, factory) pair that
serves the group's model, each judged and priced, plus capacities and the previous plan.

Both the LP (:mod:`tdn.topology.lp`) and the greedy fallback (:mod:`tdn.topology.greedy`) read
this, so a fallback plan obeys exactly the same eligibility, costs and capacities as an optimal
one. Pairs are held as flat arrays sorted by (group, cost, factory id): judging and pricing a
thousand factories against thousands of groups is then a few vectorised passes.

Costs and the SLO check use each factory *unloaded* (:mod:`tdn.topology.estimates`); the queue a
plan causes is bounded instead: each pair's concurrency is scaled so that the capacity rows the
solvers already have keep every factory within its SLO-safe load (:mod:`tdn.topology.queueing`),
with the last queueing segment left as priced overflow beyond it (:func:`safe_share`). Everything is
built in sorted order, so the same input always yields the same arrays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tdn.domain import Demand, FactoryState, Plan, Site
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.topology.costs import CARBON_UNIT_G, ENERGY_UNIT_USD, LATENCY_UNIT_S, PRICE_UNIT_USD
from tdn.topology.eligibility import (
    AT_CAPACITY,
    CORDONED,
    DOES_NOT_SERVE_MODEL,
    DRAINED,
    HEALTH_UNKNOWN,
    RESERVED_FOR_SOLE_TRAFFIC,
    UNHEALTHY,
    Check,
    per_token_exceeded,
    price_above_cap,
    slo_exceeded,
    unknown_site,
    zone_not_allowed,
    zone_not_allowed_for_tenant,
)
from tdn.topology.estimates import (
    DEFAULT_BASE_TTFT_S,
    DEFAULT_PREFILL_TOKENS_PER_S,
    LOCAL_RTT_MS,
    planned_loads,
)
from tdn.topology.options import SolveOptions
from tdn.topology.queueing import slo_safe_loads
from tdn.topology.requirements import Requirement, requirement
from tdn.topology.tables import (
    Bools,
    FactoryTable,
    Floats,
    Ints,
    SiteTable,
    factory_table,
    site_table,
)

GroupKey = tuple[str, str, str]  # (site, model, traffic class)
Exclusion = tuple[str, str, str, str, str]  # (site, model, class, factory id, reason)

# A zone no factory can be in: what merged demands with disjoint zone restrictions allow.
_NO_ZONE = "<no common zone>"
# Up to this many (group, factory serving its model) pairs, a plan lists every exclusion.
EXCLUSIONS_LISTED_UP_TO = 20_000
# The price of planning a slot-second beyond the SLO-safe load, in units of queueing steepness
# (so 10 at the default steepness of 0.1: a 5 s request pushed there costs 50 units, more than
# any difference in price, latency or carbon between factories, far less than leaving it
# unserved).
SLO_OVERFLOW_FACTOR = 100.0
# A pair's concurrency counts at most this many times over against its factory's capacity
# (a group with no slack left for queueing), so that the LP's coefficients stay well scaled.
MAX_CAPACITY_SCALE = 20.0
# A group with no traffic yet still deserves its cheapest route, so costs are weighed as if a
# trickle of traffic existed; capacity uses the true (zero) load.
MIN_OBJECTIVE_RATE = 1e-3


def merge_demands(demands: Sequence[Demand], policy: Policy = DEFAULT_POLICY,
                  ) -> tuple[Demand, ...]:
    """One demand per (site, served model, class): rates add, token counts average by rate.

    Model aliases are resolved first (traffic to an alias is traffic to its model). The
    strictest of the merged SLOs and zone restrictions applies, because each request of the
    merged group must be allowed to go wherever the group is routed.
    """
    by_key: dict[GroupKey, list[Demand]] = {}
    for given in demands:
        model = policy.resolve_model(given.model)
        d = given if model == given.model else dataclasses.replace(given, model=model)
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


def queueing_marginal_costs(options: SolveOptions) -> tuple[float, ...]:
    """Cost per second of occupancy of one slot in each capacity segment, increasing (convex),
    for a factory whose overflow starts at the least point it may (:func:`safe_share` of the
    plannable capacity; :func:`segment_marginals` gives every factory's own).

    Segment k covers utilisations [k, k+1) / K of the plannable capacity; its price is the M/M/1
    delay factor rho / (1 - rho) at the segment's midpoint, rho measured against the factory's
    full concurrency, so filling towards the headroom costs ever more. With two segments or
    more, the last one is the *overflow* beyond the SLO-safe load (see :func:`safe_share`) and
    also carries :data:`SLO_OVERFLOW_FACTOR`: the SLO misses a plan buys by filling it.
    """
    return tuple(segment_marginals(options, np.array([safe_share(options)]))[0].tolist())


def segment_marginals(options: SolveOptions, overflow_from: Floats) -> Floats:
    """Per factory (rows) and capacity segment, the cost per second of occupancy of one slot,
    increasing (convex). ``overflow_from`` is each factory's overflow start as a share of its
    plannable capacity (between :func:`safe_share` and 1; see :func:`segment_widths`).

    The first K - 1 segments split the capacity below the overflow start evenly, the last is
    the rest up to the plannable capacity; each is priced at the M/M/1 delay factor
    rho / (1 - rho) at its midpoint, rho measured against the factory's full concurrency, so
    filling towards the headroom costs ever more. With two segments or more the last is the
    *overflow* beyond the SLO-safe load and also carries :data:`SLO_OVERFLOW_FACTOR`: the SLO
    misses a plan buys by filling it. With the overflow starting at its least point this is
    K equal segments.
    """
    k = options.queueing_segments
    keep = 1.0 - options.capacity_headroom
    start = np.asarray(overflow_from, dtype=np.float64)[:, None]
    if k >= 2:
        mid = np.concatenate((start * ((np.arange(k - 1) + 0.5) / (k - 1))[None, :],
                              (start + 1.0) / 2.0), axis=1)
    else:
        mid = np.full((len(start), 1), 0.5)
    rho = mid * keep
    out: Floats = options.queueing_steepness * rho / (1.0 - rho)
    if k >= 2:
        out[:, -1] += options.queueing_steepness * SLO_OVERFLOW_FACTOR
    return out


def segment_widths(options: SolveOptions, plannable: Floats, overflow_from: Floats) -> Floats:
    """Per factory (rows) and capacity segment, its width in planned concurrency (the LP's
    units): K - 1 equal segments up to the overflow start (``overflow_from`` x ``plannable``),
    then the overflow up to the plannable capacity."""
    k = options.queueing_segments
    if k < 2:
        return np.asarray(plannable, dtype=np.float64)[:, None].copy()
    below = plannable * overflow_from
    out: Floats = np.concatenate((np.repeat((below / (k - 1))[:, None], k - 1, axis=1),
                                  (plannable - below)[:, None]), axis=1)
    return out


def safe_share(options: SolveOptions) -> float:
    """Share of the plannable capacity (in the LP's units) that the SLO-safe load maps to: all
    segments but the last, which is left for overflow when the SLO-safe loads cannot carry the
    demand (far better spread there, at a price, than left unserved and piled by the sidecars
    onto whatever a group was given)."""
    k = options.queueing_segments
    return (k - 1) / k if k >= 2 else 1.0


@dataclass(frozen=True, slots=True, eq=False)
class Problem:
    """Groups, pairs and capacities; pair arrays are sorted by (group, cost, factory id)."""

    options: SolveOptions
    factories: FactoryTable
    sites: SiteTable
    # --- groups
    keys: tuple[GroupKey, ...]
    demands: tuple[Demand, ...]
    requirements: tuple[Requirement, ...]
    rate: Floats
    objective_rate: Floats
    tokens_per_s: Floats  # output tokens/s of the whole group
    penalty: Floats  # per-request cost of leaving the group unserved
    has_previous: Bools
    start: Ints  # the group's pairs are [start[g], start[g + 1])
    # --- pairs: every factory serving the group's model, or in a large network only those
    # that may carry traffic (and all of a group that has none); see build_problem
    group: Ints
    factory: Ints
    check: Ints  # a Check code
    cost: Floats  # weighted per-request cost, tier factor included
    duration: Floats  # seconds one request holds a slot
    # In-flight requests if the factory took the whole group, in units of the factory's
    # plannable capacity: in_flight scaled by (overflow start) / slo_safe_load, never below 1
    # (see build_problem). The LP and the greedy fallback count load in these units.
    concurrency: Floats
    in_flight: Floats  # in-flight requests if the factory took the whole group (Little's law)
    scale: Floats  # concurrency / in_flight: how much faster than its load the pair fills capacity
    slo_safe_load: Floats  # the factory's load (slots) at which this group still meets its SLO
    ttft: Floats  # estimated TTFT seen from the site
    previous: Floats  # the previous plan's primary weight (0 when none)
    primary: Bools  # check is OK: may carry primary traffic
    backup_capable: Bools  # check is OK or CORDONED: may catch failovers
    # The largest share of its group a pair may carry (see share_caps): the LP's column bound,
    # the greedy's too.
    share_cap: Floats
    # --- per factory: where its overflow segment starts, as a share of its plannable capacity
    # (see overflow_starts), and its segments' widths and marginal costs (factory x segment)
    overflow_from: Floats
    widths: Floats
    marginals: Floats

    @property
    def group_count(self) -> int:
        return len(self.keys)

    def pairs(self, g: int) -> range:
        return range(int(self.start[g]), int(self.start[g + 1]))


    def label(self, g: int) -> str:
        return "/".join(self.keys[g])

    def exclusion_reason(self, j: int) -> str:
        """The reason text for pair ``j`` in the words of :func:`~.eligibility.judge`."""
        code = Check(int(self.check[j]))
        g, f = int(self.group[j]), int(self.factory[j])
        spec = self.factories.states[f].spec
        req = self.requirements[g]
        if code is Check.UNKNOWN_SITE:
            return unknown_site(self.keys[g][0])
        if code is Check.ZONE_SITE:
            return zone_not_allowed(spec.compliance_zone, self.keys[g][0])
        if code is Check.ZONE_TENANT:
            return zone_not_allowed_for_tenant(spec.compliance_zone,
                                               req.tenant_refusing(spec.compliance_zone))
        if code is Check.PRICE_CAP:
            return price_above_cap(spec.price.output_per_mtok, req.max_output_price_per_mtok,
                                   req.price_cap_source)
        if code is Check.TTFT_SLO:
            return slo_exceeded(float(self.ttft[j]), req.ttft_slo_s)
        if code is Check.PER_TOKEN_SLO:
            return per_token_exceeded(float(self.factories.itl[f]), req.per_token_slo_s)
        return _FIXED_REASONS.get(code, "")

    def exclusions(self) -> tuple[Exclusion, ...]:
        """Why each kept pair's factory may not be its group's primary (see build_problem for
        which pairs a large network keeps)."""
        out = [(*self.keys[int(self.group[j])], self.factories.id(int(self.factory[j])),
                self.exclusion_reason(j))
               for j in np.flatnonzero(self.check != int(Check.OK)).tolist()]
        out.sort()
        return tuple(out)


_FIXED_REASONS = {
    Check.NO_MODEL: DOES_NOT_SERVE_MODEL,
    Check.HEALTH_UNKNOWN: HEALTH_UNKNOWN,
    Check.UNHEALTHY: UNHEALTHY,
    Check.DRAINED: DRAINED,
    Check.AT_CAPACITY: AT_CAPACITY,
    Check.CORDONED: CORDONED,
    Check.RESERVED: RESERVED_FOR_SOLE_TRAFFIC,
}


def _zone_matrices(sites: SiteTable, zones: Sequence[str], reqs: Sequence[Requirement],
                   ) -> tuple[Ints, Bools, Bools]:
    """Per group an index into two [zone set, factory zone] tables: allowed by the site (and
    demand), and allowed by everyone (tenants included). Few distinct sets exist, so the tables
    stay small however many groups there are."""
    sets: dict[tuple[tuple[str, ...], frozenset[str]], int] = {}
    ids = np.empty(len(reqs), dtype=np.int64)
    for g, req in enumerate(reqs):
        ids[g] = sets.setdefault((req.site_zones, req.zones()), len(sets))
    site_ok = np.zeros((max(len(sets), 1), max(len(zones), 1)), dtype=np.bool_)
    all_ok = np.zeros_like(site_ok)
    for (site_zones, all_zones), i in sets.items():
        for z, zone in enumerate(zones):
            site_ok[i, z] = zone in site_zones
            all_ok[i, z] = zone in all_zones
    return ids, site_ok, all_ok


def build_problem(factories: Sequence[FactoryState], sites: Sequence[Site],
                  demands: Sequence[Demand], previous: Plan | None, options: SolveOptions,
                  *, policy: Policy = DEFAULT_POLICY) -> Problem:
    """Judge every (group, factory serving its model) pair and price the usable ones, all at
    once."""
    site_ids = sorted({s.id for s in sites})
    site_index = {sid: i for i, sid in enumerate(site_ids)}
    merged = merge_demands(demands, policy)
    ft = factory_table(factories, site_index, options,
                       planned_loads(previous, factories, merged))
    st = site_table(sites, ft.regions)
    G = len(merged)
    keys = tuple((d.site, d.model, d.traffic_class) for d in merged)
    site_of = np.fromiter((st.index.get(d.site, -1) for d in merged), dtype=np.int64, count=G)
    reqs = tuple(requirement(d, st.sites[site_of[g]], policy) if site_of[g] >= 0
                 else requirement(d, Site(d.site, "", "")) for g, d in enumerate(merged))

    def per_group(values: Sequence[float]) -> Floats:
        return np.fromiter(values, dtype=np.float64, count=G)

    rate = per_group([d.rate_rps for d in merged])
    prompt = per_group([d.prompt_tokens for d in merged])
    output = per_group([d.output_tokens for d in merged])
    ttft_slo = per_group([r.ttft_slo_s for r in reqs])
    token_slo = per_group([r.per_token_slo_s for r in reqs])
    price_cap = per_group([r.max_output_price_per_mtok for r in reqs])
    zone_set, site_ok, all_ok = _zone_matrices(st, ft.zones, reqs)

    empty = np.empty(0, dtype=np.int64)
    per_model = [ft.by_model.get(d.model, empty) for d in merged]
    lengths = np.fromiter((len(a) for a in per_model), dtype=np.int64, count=G)
    g = np.repeat(np.arange(G, dtype=np.int64), lengths)
    f = np.concatenate(per_model) if per_model else empty
    s = site_of[g]
    s_safe = np.maximum(s, 0)

    # The physical model of tdn.topology.estimates, term by term in the same order: the
    # factory unloaded (an observed TTFT above the default believed only as far as the
    # factory was idle), no queue; the queue is the SLO-safe load's business, below.
    observed = ft.ttft_observed[f]
    default_ttft = DEFAULT_BASE_TTFT_S + prompt[g] / DEFAULT_PREFILL_TOKENS_PER_S
    factory_ttft = np.where(
        observed <= 0, default_ttft,
        np.where(observed <= default_ttft, observed,
                 default_ttft + ft.ttft_trust[f] * (observed - default_ttft)))
    duration = factory_ttft + output[g] * ft.itl[f]
    local = ft.onsite[f] & (ft.onsite_site[f] == s)
    rtt = np.where(local, LOCAL_RTT_MS, st.rtt_ms[s_safe, ft.region[f]])
    ttft = rtt / 1000.0 + factory_ttft

    # The checks in order of precedence (a pair's verdict is the first it fails), each only
    # where some pair could fail it: a check is a pass over every pair, and most networks have
    # every site known, every factory healthy, no tenant zones, price caps or per-token SLOs.
    zone = ft.zone[f]
    failed: list[Bools] = []
    verdicts: list[int | Ints] = []
    if (s < 0).any():
        failed.append(s < 0)
        verdicts.append(int(Check.UNKNOWN_SITE))
    if (ft.health != int(Check.OK)).any():
        health = ft.health[f]
        failed.append(health != int(Check.OK))
        verdicts.append(health)
    failed.append(~(site_ok[zone_set[g], zone] & ~(ft.onsite[f] & ~local)))
    verdicts.append(int(Check.ZONE_SITE))
    if not np.array_equal(site_ok, all_ok):
        failed.append(~all_ok[zone_set[g], zone])
        verdicts.append(int(Check.ZONE_TENANT))
    if np.isfinite(price_cap).any():
        failed.append(ft.output_price[f] > price_cap[g])
        verdicts.append(int(Check.PRICE_CAP))
    failed.append(ttft > ttft_slo[g])
    verdicts.append(int(Check.TTFT_SLO))
    if np.isfinite(token_slo).any():
        failed.append(ft.itl[f] > token_slo[g])
        verdicts.append(int(Check.PER_TOKEN_SLO))
    if ft.saturated.any():
        failed.append(ft.saturated[f])
        verdicts.append(int(Check.AT_CAPACITY))
    if ft.cordoned.any():
        failed.append(ft.cordoned[f])
        verdicts.append(int(Check.CORDONED))
    check = np.select(failed, verdicts, default=int(Check.OK)).astype(np.int64)
    if options.reserve_sole_factories:
        check = reserve_sole_factories(g, f, check, G, len(ft))

    # A small network keeps every pair, so the plan can list every exclusion. A large one
    # keeps only the pairs that may carry traffic, plus every pair of a group that has none
    # (so its plan can say why): listing, say, every US factory as "zone not allowed" for
    # every EU group would cost more than the solve. Explain re-judges any pair on demand.
    usable = _backup_capable(check)
    keep = np.ones(len(g), dtype=np.bool_)
    if len(g) > EXCLUSIONS_LISTED_UP_TO:
        has_usable = np.zeros(G, dtype=np.bool_)
        has_usable[g[usable]] = True
        keep = usable | ~has_usable[g]
    if not keep.all():
        g, f, check, duration, ttft = g[keep], f[keep], check[keep], duration[keep], ttft[keep]
        lengths = np.bincount(g, minlength=G).astype(np.int64)
    start = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)

    price = (prompt[g] * ft.input_price[f] + output[g] * ft.output_price[f]) / 1e6
    out_mtok = output[g] / 1e6
    o = options
    cost = ft.tier_factor[f] * (
        price / PRICE_UNIT_USD * o.price_weight
        + ttft / LATENCY_UNIT_S * o.latency_weight
        + ft.gco2_per_mtok[f] * out_mtok / CARBON_UNIT_G * o.carbon_weight
        + ft.energy_cost_per_mtok[f] * out_mtok / ENERGY_UNIT_USD * o.energy_weight)

    # Pairs come grouped, each group's in factory order: sorting each group's run by cost,
    # ties kept in place, orders them by (group, cost, factory).
    order = _sorted_within_groups(start, lengths, cost)
    g, f, check, cost = g[order], f[order], check[order], cost[order]
    duration, ttft = duration[order], ttft[order]

    prev = previous_shares(previous)
    has_prev = np.fromiter((k in prev for k in keys), dtype=np.bool_, count=G)
    prev_share = np.zeros(len(f), dtype=np.float64)
    for gi in np.flatnonzero(has_prev).tolist():
        shares = prev[keys[gi]]
        for j in range(int(start[gi]), int(start[gi + 1])):
            prev_share[j] = shares.get(ft.id(int(f[j])), 0.0)

    primary = check == int(Check.OK)
    caps = share_caps(g, primary, G, options)
    safe = _slo_safe_loads(ft, g, f, primary=primary, duration=duration,
                           slack=ttft_slo[g] - ttft, weight=np.maximum(rate, MIN_OBJECTIVE_RATE),
                           options=options)
    # The LP keeps sum(concurrency * x) within the plannable capacity; scaling each pair's
    # concurrency by (the factory's overflow start) / SLO-safe load keeps every factory within
    # the SLO-safe load of the groups it serves (exactly so for groups of one slack) before the
    # overflow segment; never below 1, so planned load never passes the headroom.
    overflow_from = overflow_starts(ft.capacity, f[primary], safe[primary], options)
    start_at = (ft.capacity * overflow_from)[f]
    scale = np.where(start_at > 0, np.maximum(
        start_at / np.maximum(safe, start_at / MAX_CAPACITY_SCALE), 1.0), 1.0)
    in_flight = rate[g] * duration

    # Leaving demand unserved must cost far more than serving it anywhere, fully queued.
    marginals = segment_marginals(options, overflow_from)
    top_queueing = marginals[f[primary], -1]
    worst = np.zeros(G, dtype=np.float64)
    np.maximum.at(worst, g[primary],
                  cost[primary] + top_queueing * duration[primary] * scale[primary])
    return Problem(
        options=options, factories=ft, sites=st, keys=keys, demands=merged, requirements=reqs,
        rate=rate, objective_rate=np.maximum(rate, MIN_OBJECTIVE_RATE),
        tokens_per_s=rate * output, penalty=1000.0 + 10.0 * worst, has_previous=has_prev,
        start=start, group=g, factory=f, check=check, cost=cost, duration=duration,
        concurrency=in_flight * scale, in_flight=in_flight, scale=scale, slo_safe_load=safe,
        ttft=ttft, previous=prev_share, primary=primary,
        backup_capable=_backup_capable(check), share_cap=caps, overflow_from=overflow_from,
        widths=segment_widths(options, ft.capacity, overflow_from), marginals=marginals,
    )


def overflow_starts(plannable: Floats, factory: Ints, safe: Floats,
                    options: SolveOptions) -> Floats:
    """Per factory, where its overflow segment starts, as a share of its plannable capacity:
    at the largest SLO-safe load among the groups it may serve as a primary, but no lower than
    :func:`safe_share` (so the queueing segments keep their width) and no higher than the
    plannable capacity.

    Why: the overflow surcharge prices SLO misses, and a factory whose groups are all SLO-safe
    up to the headroom has none to price there. Until session 5 every overflow started at 3/4
    of the plannable capacity, so such a factory was planned to 60% of its slots with the
    default headroom before filling cost a hundred times more: in the routing benchmark the
    big, cheap, green centers (SLO-safe to 77%) ran at 57% while dear edges filled to 77%.
    Groups with less slack at the same factory still reach only their own SLO-safe load before
    the overflow (their concurrency is scaled up to it)."""
    least = safe_share(options)  # 1 with a single segment: no overflow at all
    largest = np.zeros(len(plannable), dtype=np.float64)
    np.maximum.at(largest, factory, safe)
    share = np.divide(largest, plannable, out=np.zeros_like(largest), where=plannable > 0)
    out: Floats = np.clip(share, least, 1.0)
    return out


# Above this many distinct run lengths, one sort of all pairs is cheaper than a sort per length.
_MAX_RUN_LENGTHS = 64


def _sorted_within_groups(start: Ints, lengths: Ints, cost: Floats) -> Ints:
    """The permutation sorting each group's run of pairs (``start``, ``lengths``) by cost, ties
    in their given order: ``np.lexsort((cost, group))``, computed as a row-wise sort of the
    runs of each length stacked into a matrix (groups of one model share their candidates, so
    there are few lengths), a quarter of the time of one sort over all pairs."""
    order = np.arange(len(cost), dtype=np.int64)
    distinct = np.unique(lengths[lengths > 1])
    if len(distinct) > _MAX_RUN_LENGTHS:
        out: Ints = np.lexsort((cost, np.repeat(np.arange(len(lengths)), lengths)))
        return out
    for n in distinct.tolist():
        runs = start[:-1][lengths == n][:, None] + np.arange(n, dtype=np.int64)
        order[runs] = runs[:, :1] + np.argsort(cost[runs], axis=1, kind="stable")
    return order


def _backup_capable(check: Ints) -> Bools:
    """Pairs that may catch failovers: eligible, cordoned, or reserved for other traffic."""
    out: Bools = (check <= int(Check.CORDONED)) | (check == int(Check.RESERVED))
    return out


def reserve_sole_factories(g: Ints, f: Ints, check: Ints, group_count: int,
                           factory_count: int) -> Ints:
    """``check`` with every factory that is the only eligible one of some group (its on-site
    factory, for traffic that must not leave the building) reserved for such groups: any other
    group may use it as a backup, not as a primary, unless it has no other factory either.

    A plan's weights hold between solves, so a share of another group planned there lands on
    it whatever its sole users' load is at the moment, and those have nowhere else to go: in
    the routing benchmark a tenth of an office's chat traffic (6.5 s requests) on its on-site
    factory cost the residency-bound code traffic of that office 9 points of SLO attainment
    in bursts. Every other group has somewhere else to go, and may still fail over there."""
    ok = check == int(Check.OK)
    options = np.bincount(g[ok], minlength=group_count)
    sole = np.zeros(factory_count, dtype=np.bool_)
    sole[f[ok & (options[g] == 1)]] = True
    reserved = ok & sole[f] & (options[g] > 1)
    # A group whose every option is some other group's only one keeps them all.
    left = options - np.bincount(g[reserved], minlength=group_count)
    reserved &= left[g] > 0
    out = check.copy()
    out[reserved] = int(Check.RESERVED)
    return out


def share_caps(g: Ints, primary: Bools, group_count: int, options: SolveOptions) -> Floats:
    """Per pair, the largest share of its group one factory may be planned to carry:
    ``options.max_primary_share``, or 1 / (the group's primary-eligible factories - 1) where
    there are too few for that.

    A plan holds between solves: a group wholly on its cheapest factory sends that factory all
    of its next burst (the benchmark's code traffic reaches 20x its mean for seconds at a site)
    and all of its traffic to the backups when the factory dies. Spread over a few factories,
    each takes only its part of the burst, and a failure moves only that part.

    Why n - 1 and not n: the caps must never *force* traffic onto a factory. With caps of 1/n
    the only feasible split is the even one, whatever the factories' capacity: after a crash
    left a route two eligible factories, a 16-slot edge and a 4-slot on-site one, 1/2 each sent
    half the route to the small one, far past its SLO-safe load (the factory-crash drill, full
    length). With 1 / (n - 1) the other factories can always carry the whole route, so each can
    be left out; with two eligible factories there is no cap at all."""
    eligible = np.bincount(g[primary], minlength=group_count).astype(np.float64)
    floor = 1.0 / np.maximum(eligible - 1.0, 1.0)
    return np.minimum(np.maximum(floor[g], options.max_primary_share), 1.0)


def _slo_safe_loads(ft: FactoryTable, g: Ints, f: Ints, *, primary: Bools, duration: Floats,
                    slack: Floats, weight: Floats, options: SolveOptions) -> Floats:
    """Per pair, the SLO-safe load of its factory for its group's slack
    (:mod:`tdn.topology.queueing`). A factory's mean request duration is that of the groups it
    may serve as a primary, weighed by their demand: the mix it will see if it is used."""
    n = len(ft)
    weights = weight[g] * primary
    total = np.bincount(f, weights=weights, minlength=n)
    mean = np.bincount(f, weights=weights * duration, minlength=n)
    fallback = np.bincount(f, weights=duration, minlength=n) / np.maximum(
        np.bincount(f, minlength=n), 1)
    mean_duration = np.where(total > 0, mean / np.where(total > 0, total, 1.0), fallback)
    return slo_safe_loads(ft.slots, ft.capacity, mean_duration, pair_factory=f, slack=slack,
                          miss_target=options.slo_miss_target)


@dataclass(frozen=True, slots=True, eq=False)
class Solution:
    """Shares per pair (aligned with the problem's pair arrays), unserved share per group, the
    objective value and how it was reached ("optimal", "feasible" or "fallback:<why>")."""

    x: Floats
    unserved: Floats
    objective: float
    status: str

    def shares(self, problem: Problem, g: int, zero: float = 1e-9) -> dict[str, float]:
        """Group ``g``'s share per factory id."""
        return {problem.factories.id(int(problem.factory[j])): min(float(self.x[j]), 1.0)
                for j in problem.pairs(g) if self.x[j] > zero}


def objective_value(problem: Problem, x: Floats, unserved: Floats) -> float:
    """The LP's objective for any per-pair assignment ``x``: what greedy and LP are compared
    on. Queueing is charged by filling each factory's cheapest segments first, as the LP does."""
    o = problem.options
    rate = problem.objective_rate[problem.group]
    total = float(np.sum(rate * problem.cost * x))
    total += float(np.sum(problem.objective_rate * problem.penalty * unserved))
    if o.churn_penalty > 0:
        # Churn is charged where the LP can weigh it: on factories still eligible as primaries.
        churned = problem.has_previous[problem.group] & problem.primary
        total += float(np.sum(rate[churned] * o.churn_penalty
                              * np.abs(x[churned] - problem.previous[churned])))
    load = np.zeros(len(problem.factories), dtype=np.float64)
    np.add.at(load, problem.factory, problem.concurrency * x)
    K = problem.widths.shape[1]
    begin = np.zeros(len(load), dtype=np.float64)
    for k in range(K):
        width = problem.widths[:, k]
        in_segment = np.clip(load - begin, 0.0, width)
        if k == K - 1:
            in_segment = np.maximum(load - begin, 0.0)
        total += float(np.sum(problem.marginals[:, k] * in_segment))
        begin = begin + width
    return total
