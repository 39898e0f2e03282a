"""Failover without a re-solve: remove each factory (and each region) in turn and replay where
every request would go now, by the routes' weights and the backups' spare capacity, as a
sidecar would. Golden cases show backup levels sized by reserved capacity."""

from __future__ import annotations

import pytest

from tdn.domain import (
    Demand,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    Route,
    Site,
    Tier,
)
from tdn.domain import WeightedFactory as WF
from tdn.topology.failover import failure_model, shares_after
from tdn.topology.solver import SolveOptions, solve, solve_detailed

FRA = Site(id="fra", region="eu-west", compliance_zone="eu",
           rtt_ms=(("eu-north", 28.0), ("eu-west", 4.0)))
# Each request holds a slot for 0.5 s + 200 tokens x 22.5 ms = 5 s, so 4 rps keeps 20 in flight.
TIMING = FactoryLoad(ttft_p50_s=0.5, itl_p50_s=0.0225)
CAPACITY_ONLY = SolveOptions(queueing_steepness=0.0)


def factory(fid: str, price: float, slots: int, region: str = "eu-west",
            domain: str = "") -> FactoryState:
    spec = FactorySpec(id=fid, tier=Tier.EDGE, region=region, compliance_zone="eu",
                       endpoint=f"http://{fid}.test/v1", models=("m",), price=Price(price, price),
                       max_concurrency=slots, failure_domain=domain)
    return FactoryState(spec=spec, load=TIMING, health=Health.HEALTHY)


def demand(rate: float, traffic_class: str = "default") -> Demand:
    return Demand(site="fra", model="m", traffic_class=traffic_class, rate_rps=rate,
                  prompt_tokens=1000.0, output_tokens=200.0, ttft_slo_s=2.0)


# Two regions, two racks in the west: room for any one factory's or region's traffic.
NETWORK = [
    factory("west-a1", 0.20, 40, domain="rack-a"),
    factory("west-a2", 0.25, 40, domain="rack-a"),
    factory("west-b1", 0.30, 40, domain="rack-b"),
    factory("north-1", 0.35, 60, region="eu-north"),
    factory("north-2", 0.40, 60, region="eu-north"),
]
DEMAND = [demand(4.0), demand(2.0, "batch")]


def test_a_dead_primarys_share_goes_to_the_first_live_backup_level_then_to_primaries(
        ) -> None:
    route = Route("m", "default", primary=(WF("a", 0.6), WF("b", 0.4)),
                  backups=((WF("c", 0.5), WF("d", 0.5)), (WF("e", 1.0),)))
    assert shares_after(route, frozenset()) == ({"a": 0.6, "b": 0.4}, 0.0)
    assert shares_after(route, frozenset({"a"})) == ({"b": 0.4, "c": 0.3, "d": 0.3}, 0.0)
    assert shares_after(route, frozenset({"a", "c"})) == ({"b": 0.4, "d": 0.6}, 0.0)
    assert shares_after(route, frozenset({"a", "c", "d"})) == ({"b": 0.4, "e": 0.6}, 0.0)
    assert shares_after(route, frozenset("cde") | {"a"}) == ({"b": 1.0}, 0.0)
    assert shares_after(route, frozenset("abcde")) == ({}, 1.0)
    # With no backup level at all, the other primaries are what a sidecar has left to try.
    bare = Route("m", "default", primary=(WF("a", 0.75), WF("b", 0.25)))
    assert shares_after(bare, frozenset({"b"})) == ({"a": 1.0}, 0.0)


def test_removing_each_factory_in_turn_the_precomputed_backups_carry_its_load() -> None:
    result = solve_detailed(NETWORK, [FRA], DEMAND)
    model = failure_model(result.plan, NETWORK, DEMAND)
    events = model.factory_events()
    assert {e.event for e in events} == {
        f"factory {w.factory_id}" for _, r in result.plan.routes for w in r.primary}
    for event in events:
        assert event.absorbed, event
        (lost,) = event.down
        for _, route in result.plan.routes:
            shares, stranded = shares_after(route, event.down)
            assert stranded == 0.0 and lost not in shares
            assert sum(shares.values()) == pytest.approx(1.0)
    assert all(p.factory_failure for p in result.protection.values())


def test_removing_each_region_in_turn_the_backups_outside_it_carry_its_load() -> None:
    result = solve_detailed(NETWORK, [FRA], DEMAND)
    events = failure_model(result.plan, NETWORK, DEMAND).region_events()
    assert events
    for event in events:
        assert event.absorbed, event
    assert all(p.region_failure for p in result.protection.values())


def test_backup_level_0_is_the_domain_whose_spare_capacity_can_take_the_primarys_share() -> None:
    # The primary carries all 20 in flight. The cheap "small" rack has 10 slots free: it could
    # not take them, so level 0 is the dearer "big" rack, and "small" comes second.
    factories = [factory("primary", 0.1, 100),
                 factory("small", 0.2, 10, region="eu-north", domain="s"),
                 factory("big", 0.3, 50, region="eu-north", domain="b")]
    result = solve_detailed(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    (_, route), = result.plan.routes
    assert [w.factory_id for w in route.primary] == ["primary"]
    assert [[w.factory_id for w in level] for level in route.backups] == [["big"], ["small"]]
    assert result.protection[("fra", "m", "default")].factory_failure


def test_when_no_one_domain_has_the_room_level_0_spans_two_weighted_by_their_spare() -> None:
    factories = [factory("primary", 0.1, 100),
                 factory("small-1", 0.2, 10, region="eu-north", domain="r1"),
                 factory("small-2", 0.3, 12, region="eu-north", domain="r2")]
    result = solve_detailed(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    (_, route), = result.plan.routes
    assert [(w.factory_id, w.weight) for w in route.backups[0]] == [
        ("small-1", 0.4545), ("small-2", 0.5455)]  # 10/22 and 12/22 of 20 slots: both fit
    assert result.protection[("fra", "m", "default")].factory_failure
    assert failure_model(result.plan, factories, [demand(4.0)]).replay(
        "primary lost", frozenset({"primary"})).absorbed


def test_a_group_whose_backups_cannot_take_the_load_is_reported_with_the_reason() -> None:
    factories = [factory("primary", 0.1, 100),
                 factory("small", 0.2, 5, region="eu-north", domain="s")]
    result = solve_detailed(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    protection = result.protection[("fra", "m", "default")]
    assert not protection.factory_failure
    assert protection.factory_reason == (
        "backup level 0 (eu-north/s) lacks spare capacity for a failed primary")
    assert ("factory loss not absorbed for 1/1 groups (fra/m/default: backup level 0 "
            "(eu-north/s) lacks spare capacity for a failed primary)") in result.plan.status
    report = failure_model(result.plan, factories, [demand(4.0)]).replay(
        "primary lost", frozenset({"primary"}))
    assert [(o.factory_id, o.load, o.capacity) for o in report.overloaded] == [
        ("small", pytest.approx(20.0), 5.0)]
    assert report.hurt == {("fra", "m", "default")}


def test_backups_already_promised_to_one_failure_are_not_promised_twice() -> None:
    # Two groups share the primary; the 25-slot rack can take one group's 20 slots when the
    # primary dies, not both groups' 30: the second group's level 0 goes to the other rack.
    factories = [factory("primary", 0.1, 100),
                 factory("rack-1", 0.2, 25, region="eu-north", domain="r1"),
                 factory("rack-2", 0.3, 25, region="eu-north", domain="r2")]
    demands = [demand(4.0), demand(2.0, "batch")]
    result = solve_detailed(factories, [FRA], demands, options=CAPACITY_ONLY)
    level0 = {r.traffic_class: [w.factory_id for w in r.backups[0]] for _, r in result.plan.routes}
    assert level0 == {"default": ["rack-1"], "batch": ["rack-2"]}
    assert all(p.factory_failure for p in result.protection.values())
    assert failure_model(result.plan, factories, demands).replay(
        "primary lost", frozenset({"primary"})).absorbed


def test_a_re_solve_without_the_failed_factory_needs_no_backup_any_more() -> None:
    plan = solve(NETWORK, [FRA], DEMAND)
    for lost in NETWORK:
        survivors = [f for f in NETWORK if f is not lost]
        again = solve(survivors, [FRA], DEMAND, previous=plan, version=2)
        assert all(lost.spec.id not in r.factory_ids() for _, r in again.routes)
        assert failure_model(again, survivors, DEMAND).replay("none", frozenset()).absorbed

