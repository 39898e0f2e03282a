"""Turning a solution into routes: rounded primary weights, then backup levels with reserved
capacity (:mod:`tdn.topology.backups`).

Backups are what a sidecar falls over to without asking the control plane, so they are chosen
for independence first: each level is one failure domain, preferring a domain and then a region
that neither the primaries nor an earlier level use, then one with the spare capacity to absorb
the failover, and only then the cheapest. Cordoned factories may appear here (never as
primaries).
"""

from __future__ import annotations

import numpy as np

from tdn.domain import Route, WeightedFactory
from tdn.topology.backups import BackupPlanner, Protection, failover_order
from tdn.topology.problem import Problem, Solution
from tdn.topology.tables import Floats
from tdn.topology.weights import WEIGHT_UNITS, primary_weights, rounded_weights

__all__ = ["WEIGHT_UNITS", "build_routes", "primary_weights", "rounded_weights"]


# Below this unserved share a group's routes are left as the solver planned them.
_SPREAD_FROM = 1e-3


def spread_unserved(problem: Problem, solution: Solution) -> Floats:
    """The solution's shares with each group's unserved share spread over its primary-eligible
    factories, by the room each has left, in the order the groups come.

    Unserved means the plan found no SLO-safe capacity for that part of a group, yet its
    traffic still arrives: a route's weights are renormalised over what was planned, so the
    remainder would land on the few factories the group was given, on top of their planned
    load. When a region went down in the routing benchmark, one site's chat was 47-79%
    unserved and piled 2-5 times its planned load onto three factories, while the headroom of
    the others stayed unused (93.8% SLO attainment through the failure; per-request routers
    reading live queues had 99.8%). Spread, the overflow first fills what is left of each
    factory's *whole* capacity (its headroom included: by now that is what it is for), and
    what does not fit goes in proportion to the factories' size. The plan's status still
    reports the unserved share, so the operator sees the shortage."""
    x = solution.x.copy()
    over = np.flatnonzero(solution.unserved > _SPREAD_FROM)
    if len(over) == 0:
        return x
    keep = 1.0 - problem.options.capacity_headroom
    capacity = problem.factories.capacity
    load = np.bincount(problem.factory, weights=x * problem.concurrency,
                       minlength=len(capacity))
    room = np.maximum(capacity / keep - load, 0.0)
    for g in over.tolist():
        pairs = np.arange(problem.start[g], problem.start[g + 1])
        pairs = pairs[problem.primary[pairs] & (problem.concurrency[pairs] > 0)]
        if len(pairs) == 0:
            continue
        f = problem.factory[pairs]
        conc = problem.concurrency[pairs]
        want = float(solution.unserved[g])
        fits = room[f] / conc  # the share of the group each factory's room takes
        total = float(fits.sum())
        if total >= want:
            add = fits * (want / total)
        else:
            size = capacity[f] / conc
            add = fits + size * ((want - total) / float(size.sum()))
        x[pairs] += add
        # A group has one pair per factory, so ``f`` holds no repeats.
        room[f] = np.maximum(room[f] - add * conc, 0.0)
    return x


def route_primaries(problem: Problem, solution: Solution) -> list[dict[int, float]]:
    """Per group: pair index → primary weight, as the route will carry it (its unserved share
    spread first: :func:`spread_unserved`)."""
    out: list[dict[int, float]] = [{} for _ in range(problem.group_count)]
    shares = spread_unserved(problem, solution)
    used = np.flatnonzero(shares > 0)
    ids = problem.factories.id
    by_group: dict[int, dict[str, int]] = {}
    for j, g, f in zip(used.tolist(), problem.group[used].tolist(),
                       problem.factory[used].tolist(), strict=True):
        by_group.setdefault(g, {})[ids(f)] = j
    min_share = problem.options.min_primary_share
    for g, pair_of in by_group.items():
        weights = primary_weights({fid: float(shares[j]) for fid, j in pair_of.items()},
                                  min_share)
        out[g] = {pair_of[w.factory_id]: w.weight for w in weights}
    return out


def build_routes(problem: Problem, solution: Solution,
                 ) -> tuple[tuple[Route, ...], tuple[Protection, ...]]:
    """One route per group (in group order) and whether its backups absorb a failure."""
    primaries = route_primaries(problem, solution)
    planner = BackupPlanner(problem, primaries)
    levels = {g: planner.levels(g, problem.options.backup_depth)
              for g in failover_order(problem, primaries)}
    ids = problem.factories.id
    routes = []
    for g in range(problem.group_count):
        _, model, traffic_class = problem.keys[g]
        primary = sorted(((ids(int(problem.factory[j])), w) for j, w in primaries[g].items()),
                         key=lambda item: (-item[1], item[0]))
        routes.append(Route(
            model=model,
            traffic_class=traffic_class,
            primary=tuple(WeightedFactory(fid, w) for fid, w in primary),
            backups=levels[g],
        ))
    return tuple(routes), tuple(planner.protection(g) for g in range(problem.group_count))
