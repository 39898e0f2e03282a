"""Turning a solved assignment into routes: rounded primary weights and backup levels.

Backups are what a sidecar falls over to without asking the control plane, so they are chosen for
independence first: each level is one failure domain, preferring a region and then a domain that
neither the primaries nor an earlier level use, and only then the cheapest. Cordoned factories
may appear here (never as primaries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tdn.domain import Route, WeightedFactory
from tdn.topology.problem import Candidate, Group

# Weights are multiples of 1/10000: fine enough for any real split, coarse enough that solver
# noise in the last digits does not make every site's policy look changed.
WEIGHT_UNITS = 10_000


def rounded_weights(shares: Mapping[str, float]) -> tuple[WeightedFactory, ...]:
    """Shares renormalised to sum to 1 in units of 1/10000, heaviest first, then by id.

    Largest-remainder rounding keeps the sum exact in units; ties go to the smaller id so the
    result never depends on dictionary order.
    """
    positive = {fid: s for fid, s in shares.items() if s > 0}
    total = sum(positive.values())
    if total <= 0:
        return ()
    exact = {fid: s / total * WEIGHT_UNITS for fid, s in positive.items()}
    units = {fid: math.floor(v) for fid, v in exact.items()}
    left = WEIGHT_UNITS - sum(units.values())
    for fid in sorted(exact, key=lambda f: (-(exact[f] - units[f]), f))[:left]:
        units[fid] += 1
    ordered = sorted((fid for fid in units if units[fid] > 0), key=lambda f: (-units[f], f))
    return tuple(WeightedFactory(fid, units[fid] / WEIGHT_UNITS) for fid in ordered)


def primary_weights(shares: Mapping[str, float], min_share: float) -> tuple[WeightedFactory, ...]:
    """The factories carrying at least ``min_share`` of the group, with renormalised weights."""
    kept = {fid: s for fid, s in shares.items() if s >= min_share}
    if not kept and shares:
        # Almost everything is unserved: the largest sliver is still better than no route.
        best = min(shares, key=lambda f: (-shares[f], f))
        kept = {best: shares[best]}
    return rounded_weights(kept)


def backup_levels(group: Group, primary_ids: set[str], depth: int,
                  capacity: Mapping[str, float]) -> tuple[tuple[WeightedFactory, ...], ...]:
    """Up to ``depth`` levels, each the eligible factories of one failure domain.

    Within a level, traffic is spread by plannable capacity (stable between solves, unlike spare
    capacity) so a failover does not land on one small factory when a larger one sits beside it.
    """
    primaries = [c for c in group.candidates if c.factory_id in primary_ids]
    used_domains = {c.domain for c in primaries}
    used_regions = {c.region for c in primaries}
    pool = [c for c in group.candidates if c.factory_id not in primary_ids]
    levels: list[tuple[WeightedFactory, ...]] = []
    while pool and len(levels) < depth:
        by_domain: dict[str, list[Candidate]] = {}
        for c in pool:  # pool is cheapest first, so members[0] is each domain's best
            by_domain.setdefault(c.domain, []).append(c)

        def preference(domain: str, by_domain: dict[str, list[Candidate]] = by_domain
                       ) -> tuple[bool, bool, bool, float, str]:
            members = by_domain[domain]
            return (
                domain in used_domains,
                members[0].region in used_regions,
                all(m.cordoned for m in members),
                members[0].cost,
                domain,
            )

        chosen = min(by_domain, key=preference)
        members = sorted(by_domain[chosen], key=lambda m: (m.cordoned, m.cost, m.factory_id))
        weights = rounded_weights({m.factory_id: capacity[m.factory_id] for m in members})
        # Keep the preference order (active before cordoned, cheapest first) for the sidecar.
        by_id = {w.factory_id: w for w in weights}
        levels.append(tuple(by_id[m.factory_id] for m in members if m.factory_id in by_id))
        used_domains.add(chosen)
        used_regions.add(members[0].region)
        pool = [c for c in pool if c.domain != chosen]
    return tuple(levels)


def build_route(group: Group, shares: Mapping[str, float], min_share: float, depth: int,
                capacity: Mapping[str, float]) -> Route:
    primary = primary_weights(shares, min_share)
    backups = backup_levels(group, {w.factory_id for w in primary}, depth, capacity)
    return Route(
        model=group.demand.model,
        traffic_class=group.demand.traffic_class,
        primary=primary,
        backups=backups,
    )
