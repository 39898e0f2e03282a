"""Fail static: routes emptied only by telemetry keep their factories; decisions of the operator
and the policy are never overridden. Plans come from the real solver."""

from __future__ import annotations

import dataclasses

from tdn.domain import (
    AdminState,
    Demand,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Plan,
    Price,
    Route,
    Site,
    Tier,
    WeightedFactory,
)
from tdn.policy_parse import parse_policy
from tdn.topology.hold import HELD_NOTE, hold_lost_routes
from tdn.topology.solver import solve

FRA = Site(id="fra", region="eu-west", compliance_zone="eu")
SITES = [FRA]
DEMANDS = [Demand(site="fra", model="m", rate_rps=1.0)]


def factory(fid: str, *, zone: str = "eu", price: float = 1.0, domain: str = "") -> FactoryState:
    spec = FactorySpec(id=fid, tier=Tier.EDGE, region="eu-west", compliance_zone=zone,
                       endpoint=f"http://{fid}.test/v1", models=("m",),
                       price=Price(price / 4, price), failure_domain=domain or fid,
                       max_concurrency=64)
    return FactoryState(spec=spec, load=FactoryLoad(), health=Health.HEALTHY)


def routed(plan: Plan) -> set[str]:
    return {fid for _, route in plan.routes for fid in route.factory_ids()}


def with_health(states: list[FactoryState], health: Health) -> list[FactoryState]:
    return [dataclasses.replace(f, health=health) for f in states]


def two_plans(before: list[FactoryState], after: list[FactoryState]) -> tuple[Plan, Plan]:
    first = solve(before, SITES, DEMANDS, version=1)
    assert routed(first) == {f.spec.id for f in before}, "both factories carry the route first"
    second = solve(after, SITES, DEMANDS, previous=first, version=2)
    return first, second


def test_a_route_emptied_because_telemetry_went_dark_keeps_its_factories() -> None:
    healthy = [factory("a"), factory("b")]
    first, second = two_plans(healthy, with_health(healthy, Health.UNKNOWN))
    assert routed(second) == set(), "the solver alone would empty the route"
    held, keys = hold_lost_routes(second, first, with_health(healthy, Health.UNKNOWN), SITES,
                                  DEMANDS)
    assert keys == (("fra", "m", "default"),)
    assert routed(held) == {"a", "b"}
    (_, route), = held.routes
    assert abs(sum(w.weight for w in route.primary) - 1.0) < 1e-9
    assert HELD_NOTE in held.status and held.version == 2


def test_unhealthy_and_full_factories_are_held_too() -> None:
    healthy = [factory("a"), factory("b")]
    down = [dataclasses.replace(healthy[0], health=Health.UNHEALTHY),
            dataclasses.replace(healthy[1], load=FactoryLoad(running=64, waiting=64))]
    first, second = two_plans(healthy, down)
    held, keys = hold_lost_routes(second, first, down, SITES, DEMANDS)
    assert keys and routed(held) == {"a", "b"}


def test_a_route_with_a_live_factory_is_left_as_the_solver_made_it() -> None:
    healthy = [factory("a"), factory("b")]
    after = [dataclasses.replace(healthy[0], health=Health.UNKNOWN), healthy[1]]
    first, second = two_plans(healthy, after)
    assert routed(second) == {"b"}
    held, keys = hold_lost_routes(second, first, after, SITES, DEMANDS)
    assert keys == () and held is second


def test_a_drained_factory_is_never_held() -> None:
    healthy = [factory("a"), factory("b")]
    after = [dataclasses.replace(healthy[0], health=Health.UNKNOWN),
             dataclasses.replace(healthy[1], health=Health.UNKNOWN, admin=AdminState.DRAINED)]
    first, second = two_plans(healthy, after)
    held, keys = hold_lost_routes(second, first, after, SITES, DEMANDS)
    assert routed(held) == {"a"} and keys == (("fra", "m", "default"),)


def test_residency_and_price_caps_of_the_policy_in_force_are_never_overridden() -> None:
    # Both factories were fine under the old rules; the new policy caps the output price, and
    # their telemetry stopped at the same moment. "Health unknown" is named first, but the cap
    # must still keep the expensive one out of the held route.
    healthy = [factory("cheap", price=0.5), factory("dear", price=2.0)]
    policy = parse_policy("apiVersion: tdn/v1\nkind: Policy\ntenants:\n  - name: t\n"
                          "    sites: [fra]\n    zones: [eu]\n"
                          "    max_output_price_per_mtok: 1.0\n", "p.yaml").policy
    dark = with_health(healthy, Health.UNKNOWN)
    first, second = two_plans(healthy, dark)
    held, _ = hold_lost_routes(second, first, dark, SITES, DEMANDS, policy=policy)
    assert routed(held) == {"cheap"}
    # A zone the site may not use: nothing is left to hold, the route stays empty.
    abroad = [factory("us-1", zone="us"), factory("us-2", zone="us")]
    first = Plan(version=1, status="optimal", routes=(("fra", Route(
        "m", "default", primary=(WeightedFactory("us-1", 0.5), WeightedFactory("us-2", 0.5)))),))
    dark_abroad = with_health(abroad, Health.UNKNOWN)
    second = solve(dark_abroad, SITES, DEMANDS, previous=first, version=2)
    held, keys = hold_lost_routes(second, first, dark_abroad, SITES, DEMANDS)
    assert keys == () and routed(held) == set()


def test_no_previous_plan_or_no_demand_holds_nothing() -> None:
    healthy = [factory("a")]
    dark = with_health(healthy, Health.UNKNOWN)
    first, second = two_plans(healthy, dark)
    assert hold_lost_routes(second, None, dark, SITES, DEMANDS)[1] == ()
    assert hold_lost_routes(second, first, dark, SITES, [])[1] == ()
