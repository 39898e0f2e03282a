"""The solver and compiler on the embedded local network (tdn/defaults/up.yaml): a realistic
case with three tiers, two sites in two compliance zones and an on-site factory."""

from __future__ import annotations

import dataclasses

import pytest

from tdn.config import NetworkConfig, load_network
from tdn.domain import FactoryLoad, FactoryState, Health, Plan, Route
from tdn.topology.compile import compile_site_policies
from tdn.topology.eligibility import judge
from tdn.topology.solver import solve


@pytest.fixture(scope="module")
def network() -> NetworkConfig:
    return load_network()


def healthy(network: NetworkConfig) -> list[FactoryState]:
    return [FactoryState(spec=fc.spec, load=FactoryLoad(), health=Health.HEALTHY)
            for fc in network.factories]


def without(factories: list[FactoryState], factory_id: str) -> list[FactoryState]:
    return [dataclasses.replace(f, health=Health.UNHEALTHY) if f.spec.id == factory_id else f
            for f in factories]


def serving(route: Route, down: frozenset[str]) -> tuple[str, ...]:
    """Where a sidecar sends the next request with ``down`` failed, without a new plan."""
    for level in (route.primary, *route.backups):
        live = tuple(w.factory_id for w in level if w.factory_id not in down)
        if live:
            return live
    return ()


def test_every_site_and_model_in_the_local_network_gets_primaries(network: NetworkConfig
                                                                  ) -> None:
    plan = solve(healthy(network), network.sites, network.demand)
    assert plan.status.split("; ")[0] == "optimal"
    assert len(plan.routes) == len(network.demand)
    for site, route in plan.routes:
        assert route.primary, f"{site}/{route.model} has no primary"


def test_fra_office_8b_traffic_stays_in_eu_or_its_own_premises(network: NetworkConfig) -> None:
    factories = healthy(network)
    zones = {f.spec.id: f.spec.compliance_zone for f in factories}
    plan = solve(factories, network.sites, network.demand)
    (route,) = [r for r in plan.routes_for_site("fra-office")
                if r.model == "llama-3.1-8b-instruct"]
    assert {zones[fid] for fid in route.factory_ids()} <= {"eu", "on-site:fra-office"}
    assert "onsite-fra-office" in {w.factory_id for w in route.primary}


def test_nyc_office_is_never_routed_to_eu_factories(network: NetworkConfig) -> None:
    factories = healthy(network)
    zones = {f.spec.id: f.spec.compliance_zone for f in factories}
    plan = solve(factories, network.sites, network.demand)
    for route in plan.routes_for_site("nyc-office"):
        assert {zones[fid] for fid in route.factory_ids()} == {"us"}


def test_losing_any_one_factory_leaves_every_route_served_when_an_alternative_exists(
        network: NetworkConfig) -> None:
    factories = healthy(network)
    sites = {s.id: s for s in network.sites}
    plan = solve(factories, network.sites, network.demand)
    for demand in network.demand:
        (route,) = [r for r in plan.routes_for_site(demand.site) if r.model == demand.model]
        for lost in factories:
            alternatives = [f for f in factories if f is not lost
                            and judge(demand, f, sites[demand.site]).may_be_backup]
            survivors = serving(route, frozenset({lost.spec.id}))
            if alternatives:
                assert survivors, f"{demand.site}/{demand.model} stranded by {lost.spec.id}"
            assert lost.spec.id not in survivors


def test_resolving_without_a_failed_factory_routes_around_it(network: NetworkConfig) -> None:
    base = healthy(network)
    previous = solve(base, network.sites, network.demand)
    for lost in base:
        plan = solve(without(base, lost.spec.id), network.sites, network.demand,
                     previous=previous, version=2)
        assert all(lost.spec.id not in r.factory_ids() for _, r in plan.routes)
        policies = compile_site_policies(plan, base, network.sites)
        for policy in policies.values():
            policy.check()


def test_compiled_policies_for_the_local_network_ship_only_what_they_route_to(
        network: NetworkConfig) -> None:
    factories = healthy(network)
    plan: Plan = solve(factories, network.sites, network.demand, version=7)
    policies = compile_site_policies(plan, factories, network.sites)
    assert sorted(policies) == ["fra-office", "nyc-office"]
    for site, policy in policies.items():
        policy.check()
        assert policy.version == "7"
        routed = {fid for r in policy.routes for fid in r.factory_ids()}
        assert {f.id for f in policy.factories} == routed
        assert len(policy.routes) == len([d for d in network.demand if d.site == site])
