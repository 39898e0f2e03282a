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
from tdn.topology.weights import WEIGHT_UNITS, primary_weights, rounded_weights

__all__ = ["WEIGHT_UNITS", "build_routes", "primary_weights", "rounded_weights"]


def route_primaries(problem: Problem, solution: Solution) -> list[dict[int, float]]:
    """Per group: pair index → primary weight, as the route will carry it."""
    out: list[dict[int, float]] = [{} for _ in range(problem.group_count)]
    used = np.flatnonzero(solution.x > 0)
    ids = problem.factories.id
    by_group: dict[int, dict[str, int]] = {}
    for j, g, f in zip(used.tolist(), problem.group[used].tolist(),
                       problem.factory[used].tolist(), strict=True):
        by_group.setdefault(g, {})[ids(f)] = j
    min_share = problem.options.min_primary_share
    for g, pair_of in by_group.items():
        weights = primary_weights({fid: float(solution.x[j]) for fid, j in pair_of.items()},
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
