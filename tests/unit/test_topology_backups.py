"""Backup levels on networks large enough for the planner's shortcuts to matter: pools cut at
the cheapest candidates, levels widened over several domains, thousands of reservations in one
ledger. Every single-factory and region failure is replayed as a sidecar would live it; what the
solver claims protected must not be hurt, and every level must be one a sidecar can use."""

from __future__ import annotations

import dataclasses

import pytest

from bench.scale_worker import instance
from tdn.domain import Demand, FactoryState, Route, Site
from tdn.topology.failover import failure_model
from tdn.topology.solver import SolveResult, solve_detailed
from tdn.topology.weights import WEIGHT_UNITS

# (factories, groups, demand multiplier): a pool cut at its cheapest 24 candidates (120
# factories serve each model), and networks short enough of spare capacity that level 0 is
# widened and some groups cannot be protected at all.
NETWORKS = [(400, 120, 1.0), (60, 240, 1.0), (60, 240, 1.5), (24, 120, 1.8)]


def _network(n_factories: int, n_groups: int, boost: float,
             ) -> tuple[list[FactoryState], list[Site], list[Demand]]:
    factories, sites, demands = instance(n_factories, n_groups, seed=3)
    return factories, sites, [dataclasses.replace(d, rate_rps=d.rate_rps * boost)
                              for d in demands]


@pytest.fixture(scope="module", params=NETWORKS, ids=lambda n: "x".join(map(str, n)))
def solved(request: pytest.FixtureRequest,
           ) -> tuple[SolveResult, list[FactoryState], list[Demand]]:
    factories, sites, demands = _network(*request.param)
    return solve_detailed(factories, sites, demands), factories, demands


def test_removing_each_factory_in_turn_hurts_no_group_claimed_protected(
        solved: tuple[SolveResult, list[FactoryState], list[Demand]]) -> None:
    result, factories, demands = solved
    model = failure_model(result.plan, factories, demands)
    events = model.factory_events()
    assert len(events) > 5
    for event in events:
        for key in event.hurt:
            assert not result.protection[key].factory_failure, (event.event, key)


def test_removing_each_region_in_turn_hurts_no_group_claimed_protected(
        solved: tuple[SolveResult, list[FactoryState], list[Demand]]) -> None:
    result, factories, demands = solved
    for event in failure_model(result.plan, factories, demands).region_events():
        for key in event.hurt:
            assert not result.protection[key].region_failure, (event.event, key)


def test_every_backup_level_is_a_weighted_set_a_sidecar_can_use(
        solved: tuple[SolveResult, list[FactoryState], list[Demand]]) -> None:
    result, _, _ = solved
    levels = 0
    for _, route in result.plan.routes:
        seen = {w.factory_id for w in route.primary}
        for level in route.backups:
            ids = [w.factory_id for w in level]
            assert ids and not seen & set(ids) and len(set(ids)) == len(ids), route
            seen |= set(ids)
            units = [round(w.weight * WEIGHT_UNITS) for w in level]
            assert all(u > 0 for u in units) and sum(units) == WEIGHT_UNITS, level
            assert [w.weight for w in level] == [u / WEIGHT_UNITS for u in units]
            levels += 1
    assert levels > 0


def _unprotected(result: SolveResult) -> int:
    return sum(not p.factory_failure for p in result.protection.values())


def test_tighter_networks_are_reported_less_protected_never_more() -> None:
    # The same network with more demand has less spare for the same failures.
    plenty = solve_detailed(*_network(60, 240, 1.0))
    short = solve_detailed(*_network(60, 240, 1.5))
    assert _unprotected(short) > _unprotected(plenty)


def test_a_route_with_no_primary_gets_no_backup_and_no_protection() -> None:
    factories, sites, demands = _network(24, 40, 1.0)
    # A model nobody serves: the group has neither primaries nor backups.
    orphan = dataclasses.replace(demands[0], model="unserved-model")
    result = solve_detailed(factories, sites, [*demands, orphan])
    key = (orphan.site, orphan.model, orphan.traffic_class)
    route: Route = dict(((s, r.model, r.traffic_class), r) for s, r in result.plan.routes)[key]
    assert not route.primary and not route.backups
    assert not result.protection[key].factory_failure
