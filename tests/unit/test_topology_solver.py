"""The solver on small networks with hand-computed answers: splits, exclusions, backups, churn,
fallback. Tests read the routes a request would take, including after a factory fails."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tdn.topology.solver as solver_module
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
from tdn.topology.explain import explain
from tdn.topology.lp import LpFailed
from tdn.topology.queueing import slo_safe_load
from tdn.topology.solver import SolveInputs, SolveOptions, greedy, solve

FRA = Site(id="fra", region="eu-west", compliance_zone="eu",
           rtt_ms=(("eu-north", 28.0), ("eu-west", 4.0), ("us-east", 95.0)))
MUC = Site(id="muc", region="eu-west", compliance_zone="eu", rtt_ms=(("eu-west", 6.0),))
# Each request holds a slot for 0.5 s + 200 tokens x 22.5 ms = 5 s, so 4 rps keeps 20 in flight.
TIMING = FactoryLoad(ttft_p50_s=0.5, itl_p50_s=0.0225)
CAPACITY_ONLY = SolveOptions(queueing_steepness=0.0)


def planned_load_limit(slots: int, *, ttft_s: float, slo_s: float) -> float:
    """The most a default solve plans on one factory for the 5 s requests of ``demand``: its
    SLO-safe load (M/M/c, 1% missing the SLO) scaled up to the overflow segment, never past
    the headroom."""
    plannable = slots * 0.8
    # Each request holds a slot 0.5 s (TTFT) + 200 x 22.5 ms = 5 s; its slack is the SLO less
    # the estimate (round trip + 0.5 s).
    safe = slo_safe_load(slots, plannable, 5.0, slo_s - ttft_s, 0.01)
    return min(plannable, safe / 0.75)


def factory(fid: str, price: float, *, max_concurrency: int = 100, region: str = "eu-west",
            zone: str = "eu", domain: str = "", health: Health = Health.HEALTHY,
            admin: AdminState = AdminState.ACTIVE, tier: Tier = Tier.EDGE, site: str = "",
            models: tuple[str, ...] = ("m",)) -> FactoryState:
    spec = FactorySpec(id=fid, tier=tier, region=region, compliance_zone=zone,
                       endpoint=f"http://{fid}.test/v1", models=models,
                       price=Price(price, price), max_concurrency=max_concurrency, site=site,
                       failure_domain=domain)
    return FactoryState(spec=spec, load=TIMING, health=health, admin=admin)


def demand(rate: float = 4.0, *, site: str = "fra", model: str = "m", ttft_slo_s: float = 2.0,
           allowed_zones: tuple[str, ...] = ()) -> Demand:
    return Demand(site=site, model=model, rate_rps=rate, prompt_tokens=1000.0,
                  output_tokens=200.0, ttft_slo_s=ttft_slo_s, allowed_zones=allowed_zones)


def route_of(plan: Plan, site: str = "fra", model: str = "m") -> Route:
    routes = [r for r in plan.routes_for_site(site) if r.model == model]
    assert len(routes) == 1, plan.routes
    return routes[0]


def split(route: Route) -> dict[str, float]:
    return {w.factory_id: w.weight for w in route.primary}


def head(plan: Plan) -> str:
    """The plan status without its notes: how the plan was reached."""
    return plan.status.split("; ")[0]


def notes(plan: Plan) -> list[str]:
    return plan.status.split("; ")[1:]


def excluded_by(plan: Plan, factories: list[FactoryState], sites: list[Site],
                demands: list[Demand], *, site: str = "fra", model: str = "m",
                ) -> dict[str, str]:
    """What `tdn explain` says excluded each factory from the route."""
    inputs = SolveInputs(tuple(factories), tuple(sites), tuple(demands), SolveOptions())
    answer = explain(inputs, plan, site, model)
    return {f.factory_id: f.excluded_by for f in answer.factories if f.role == "excluded"}


def serving(route: Route, down: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Where a sidecar sends the next request with ``down`` failed: the live primaries, else the
    first backup level that has a live factory."""
    for level in (route.primary, *route.backups):
        live = tuple(w.factory_id for w in level if w.factory_id not in down)
        if live:
            return live
    return ()


def test_cheap_factory_takes_what_its_capacity_allows_and_the_rest_overflows() -> None:
    # cheap: 15 slots less 20% headroom = 12 of the 20 in flight = 60%.
    factories = [factory("cheap", 0.1, max_concurrency=15), factory("dear", 1.0)]
    plan = solve(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    assert head(plan) == "optimal"
    assert split(route_of(plan)) == {"cheap": 0.6, "dear": 0.4}
    assert [w.factory_id for w in route_of(plan).primary] == ["cheap", "dear"]


def test_greedy_fills_the_cheapest_factory_first_to_the_same_split() -> None:
    factories = [factory("cheap", 0.1, max_concurrency=15), factory("dear", 1.0)]
    plan = greedy(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    assert head(plan) == "fallback:greedy requested"
    assert split(route_of(plan)) == {"cheap": 0.6, "dear": 0.4}


def test_queueing_cost_spreads_load_before_the_cheaper_factory_is_full() -> None:
    factories = [factory("a", 0.10), factory("b", 0.12)]
    # 40 in flight; each factory may plan 80, all of it SLO-safe for this group (2 s SLO, 100
    # slots), so there is no overflow segment: three queueing segments of 26.7.
    demands = [demand(8.0)]
    assert split(route_of(solve(factories, [FRA], demands, options=CAPACITY_ONLY))) == {"a": 1.0}
    # Filling a's second segment costs 0.051 a slot-second more than b's first; b's higher
    # price costs 0.0048 a slot-second more. So a fills its first segment, 26.7, b the rest.
    assert split(route_of(solve(factories, [FRA], demands))) == {"a": 0.6667, "b": 0.3333}


def test_a_factory_safe_up_to_its_headroom_is_planned_to_it_at_queueing_prices() -> None:
    # "a" is cheap, and its 100 slots carry these 5 s requests within their 2 s SLO up to the
    # headroom's 80, so filling them past 60 (3/4 of 80) is queueing, not SLO overflow; "b" is
    # dear. Until session 5 the overflow surcharge started at 60 on every factory, and 70 in
    # flight went 60 to "a", 10 to "b".
    factories = [factory("a", 0.1, domain="rack-a"), factory("b", 1.0, domain="rack-b")]
    assert split(route_of(solve(factories, [FRA], [demand(14.0)]))) == {"a": 1.0}
    # Never past the headroom: of 90 in flight, "a" takes its 80 and "b" the rest.
    assert split(route_of(solve(factories, [FRA], [demand(18.0)]))) == {"a": 0.8889,
                                                                         "b": 0.1111}


def test_the_overflow_starts_at_the_largest_slo_safe_load_a_factory_serves() -> None:
    from tdn.topology.problem import build_problem, overflow_starts

    options = SolveOptions()
    plannable = np.array([80.0, 80.0, 80.0, 0.0])
    factory_of = np.array([0, 1, 1, 2, 2])
    safe = np.array([80.0, 30.0, 70.0, 20.0, 40.0])
    # All safe to the headroom: no overflow. Loads safe to 30 and 70: from 70 (the group safe
    # to 30 reaches it scaled 7/3 faster). Safe to 20 and 40: never below 3/4 (the queueing
    # segments keep their width); no capacity at all: nothing to start.
    assert overflow_starts(plannable, factory_of, safe, options).tolist() == [
        1.0, 0.875, 0.75, 0.75]
    # In a problem: the tighter group fills the shared factory faster, up to the same point.
    factories = [factory("a", 0.1, max_concurrency=30)]  # 24 plannable
    problem = build_problem(factories, [FRA], [demand(4.0, ttft_slo_s=2.0),
                                               demand(4.0, site="muc", ttft_slo_s=0.6)],
                            None, options)
    safe_loads = problem.slo_safe_load
    assert 18.0 < safe_loads.min() < safe_loads.max() < 24.0
    start = float(problem.overflow_from[0]) * 24.0
    assert start == pytest.approx(float(safe_loads.max()))
    assert np.allclose(problem.scale * safe_loads, start)
    assert problem.widths[0].tolist() == pytest.approx([start / 3] * 3 + [24.0 - start])


def test_unknown_unhealthy_and_drained_factories_are_in_no_route() -> None:
    factories = [
        factory("unknown", 0.1, health=Health.UNKNOWN),
        factory("sick", 0.1, health=Health.UNHEALTHY),
        factory("drained", 0.1, admin=AdminState.DRAINED),
        factory("ok", 1.0),
        factory("ok-north", 1.0, region="eu-north"),
    ]
    plan = solve(factories, [FRA], [demand()])
    route = route_of(plan)
    assert set(route.factory_ids()) == {"ok", "ok-north"}
    assert excluded_by(plan, factories, [FRA], [demand()]) == {
        "unknown": "health unknown", "sick": "unhealthy", "drained": "drained"}


def test_cordoned_factory_only_ever_appears_as_a_backup() -> None:
    factories = [factory("cordoned", 0.1, admin=AdminState.CORDONED, region="eu-north"),
                 factory("active", 1.0)]
    route = route_of(solve(factories, [FRA], [demand()]))
    assert split(route) == {"active": 1.0}
    assert serving(route, frozenset({"active"})) == ("cordoned",)


def test_group_whose_only_eligible_factory_is_cordoned_has_no_primary_but_a_backup() -> None:
    plan = solve([factory("cordoned", 0.1, admin=AdminState.CORDONED)], [FRA], [demand()])
    route = route_of(plan)
    assert route.primary == ()
    assert serving(route) == ("cordoned",)
    assert head(plan) == "optimal"
    assert notes(plan)[0] == "no eligible factory for fra/m/default"
    assert plan.exclusions == (("fra", "m", "default", "cordoned", "cordoned (backup only)"),)


def test_us_factory_never_serves_an_eu_site_however_cheap() -> None:
    factories = [factory("us", 0.01, region="us-east", zone="us"), factory("eu", 1.0)]
    plan = solve(factories, [FRA], [demand()])
    assert "us" not in route_of(plan).factory_ids()
    assert excluded_by(plan, factories, [FRA], [demand()]) == {
        "us": "zone us not allowed for site fra"}


def test_on_site_factory_carries_its_own_sites_traffic_only() -> None:
    onsite = factory("onsite-fra", 0.01, tier=Tier.ON_SITE, site="fra", zone="on-site:fra",
                     domain="fra")
    factories = [onsite, factory("edge", 1.0)]
    plan = solve(factories, [FRA, MUC], [demand(1.0), demand(1.0, site="muc")])
    assert "onsite-fra" in split(route_of(plan, "fra"))
    assert "onsite-fra" not in route_of(plan, "muc").factory_ids()


def test_on_site_only_traffic_never_leaves_the_site_even_when_the_site_is_full() -> None:
    onsite = factory("onsite-fra", 1.0, tier=Tier.ON_SITE, site="fra", zone="on-site:fra",
                     max_concurrency=5)
    factories = [onsite, factory("edge", 0.01)]
    plan = solve(factories, [FRA], [demand(4.0, allowed_zones=("on-site:fra",))])
    route = route_of(plan)
    assert route.factory_ids() == ("onsite-fra",)
    # What fits on-site (its SLO-safe load and the overflow beyond it) is served; the rest is
    # reported, not sent elsewhere.
    assert head(plan) == "optimal"
    served = planned_load_limit(5, ttft_s=0.5005, slo_s=2.0) / 20.0
    assert notes(plan)[0] == f"unserved fra/m/default {round((1 - served) * 100)}%"


def test_factory_too_slow_for_the_slo_is_excluded_with_the_estimate() -> None:
    far = factory("far", 0.01, region="us-east")  # 95 ms + 0.5 s
    factories = [far, factory("near", 1.0)]
    plan = solve(factories, [FRA], [demand(ttft_slo_s=0.55)])
    assert route_of(plan).factory_ids() == ("near",)
    assert excluded_by(plan, factories, [FRA], [demand(ttft_slo_s=0.55)]) == {
        "far": "ttft estimate 0.59 s exceeds SLO 0.55 s"}


def test_backups_come_from_another_region_then_another_domain_before_cost() -> None:
    factories = [
        factory("primary", 0.1, domain="rack-a"),
        factory("same-rack", 0.2, domain="rack-a"),
        factory("other-rack", 0.3, domain="rack-b"),
        factory("north", 0.9, region="eu-north"),
    ]
    route = route_of(solve(factories, [FRA], [demand(1.0)]))
    assert split(route) == {"primary": 1.0}
    assert [[w.factory_id for w in level] for level in route.backups] == [
        ["north"], ["other-rack"]]
    deeper = route_of(solve(factories, [FRA], [demand(1.0)],
                            options=SolveOptions(backup_depth=3)))
    assert [level[0].factory_id for level in deeper.backups] == ["north", "other-rack",
                                                                 "same-rack"]


def test_backup_from_the_same_domain_is_used_when_no_other_exists() -> None:
    factories = [factory("primary", 0.1, domain="rack-a"), factory("twin", 0.2, domain="rack-a")]
    route = route_of(solve(factories, [FRA], [demand(1.0)]))
    assert serving(route, frozenset({"primary"})) == ("twin",)


def test_backup_level_spreads_failover_over_a_domain_by_capacity() -> None:
    factories = [factory("primary", 0.1),
                 factory("north-big", 0.5, region="eu-north", max_concurrency=300),
                 factory("north-small", 0.4, region="eu-north", max_concurrency=100)]
    route = route_of(solve(factories, [FRA], [demand(1.0)]))
    assert [(w.factory_id, w.weight) for w in route.backups[0]] == [
        ("north-small", 0.25), ("north-big", 0.75)]


def test_losing_any_one_factory_leaves_a_route_that_still_serves() -> None:
    factories = [factory("a", 0.1, max_concurrency=15, domain="rack-a"),
                 factory("b", 0.2, domain="rack-b"),
                 factory("n", 0.3, region="eu-north"),
                 factory("cordoned", 0.05, region="eu-north", domain="x",
                         admin=AdminState.CORDONED)]
    route = route_of(solve(factories, [FRA], [demand(4.0)]))
    for f in factories:
        survivors = serving(route, frozenset({f.spec.id}))
        assert survivors, f"losing {f.spec.id} leaves fra/m with nowhere to go"
        assert f.spec.id not in survivors


def test_churn_penalty_keeps_the_previous_split_when_costs_are_equal() -> None:
    factories = [factory("a", 0.5), factory("b", 0.5)]
    first = solve(factories, [FRA], [demand(1.0)])
    assert len(route_of(first).primary) == 1  # with nothing to hold, one factory wins the tie
    held = Route("m", "default", primary=(WeightedFactory("a", 0.3), WeightedFactory("b", 0.7)))
    previous = Plan(version=1, routes=(("fra", held),), status="optimal")
    again = solve(factories, [FRA], [demand(1.0)], previous=previous, version=2)
    assert split(route_of(again)) == {"b": 0.7, "a": 0.3}
    assert again.version == 2


def test_churn_penalty_does_not_pin_traffic_to_a_factory_that_became_expensive() -> None:
    previous = solve([factory("a", 0.5), factory("b", 0.5)], [FRA], [demand(1.0)])
    b_dear = [factory("a", 0.5), factory("b", 5.0)]
    assert split(route_of(solve(b_dear, [FRA], [demand(1.0)], previous=previous))) == {"a": 1.0}


def test_overloaded_network_still_routes_and_says_what_is_unserved() -> None:
    plan = solve([factory("small", 0.1, max_concurrency=10)], [FRA], [demand(4.0)])
    assert split(route_of(plan)) == {"small": 1.0}
    assert head(plan) == "optimal"
    # 20 in flight wanted; 5 s requests through 10 slots meet a 2 s SLO 99% of the time only up
    # to about 5 in flight, and the overflow beyond stops at 4/3 of that.
    served = planned_load_limit(10, ttft_s=0.504, slo_s=2.0) / 20.0
    assert 0.3 < served < 0.4
    assert notes(plan)[0] == f"unserved fra/m/default {round((1 - served) * 100)}%"


def test_long_requests_through_few_slots_are_planned_below_the_headroom() -> None:
    # Same price, same place: without the SLO-safe load the cheaper factory would take 80 of
    # its 100 slots. 5 s requests meeting a 2 s SLO fit far fewer on a 15-slot factory.
    factories = [factory("small", 0.1, max_concurrency=15), factory("big", 0.1001)]
    route = route_of(solve(factories, [FRA], [demand(4.0)]))
    small_load = split(route).get("small", 0.0) * 20.0
    assert 0 < small_load <= slo_safe_load(15, 12, 5.0, 2.0 - 0.504, 0.01) + 1e-3


def test_a_plan_does_not_move_away_from_the_queue_it_caused() -> None:
    # The old model read the loaded TTFT and the queue back as properties of the factory, so
    # the next plan fled the factory it had just filled, and came back once it drained.
    factories = [factory("a", 0.1, domain="rack-a"), factory("b", 0.3, domain="rack-b")]
    first = solve(factories, [FRA], [demand(8.0)])
    loaded = [dataclasses.replace(f, load=FactoryLoad(
        running=f.spec.max_concurrency, waiting=10, ttft_p50_s=1.9, itl_p50_s=0.0225))
        for f in factories]
    again = solve(loaded, [FRA], [demand(8.0)], previous=first, version=2)
    # Its queue at "a" does not push the next plan off "a" (the slightly shorter requests the
    # loaded telemetry implies may bring a little more there).
    before, after = split(route_of(first)), split(route_of(again))
    assert before["a"] > 0.5
    assert after["a"] >= before["a"]


def test_model_nobody_serves_gets_an_empty_route_and_a_status_note() -> None:
    factories = [factory("a", 0.1)]
    plan = solve(factories, [FRA], [demand(model="rare")])
    route = route_of(plan, model="rare")
    assert route.primary == () and route.backups == ()
    assert notes(plan) == ["no eligible factory for fra/rare/default"]
    assert excluded_by(plan, factories, [FRA], [demand(model="rare")], model="rare") == {
        "a": "does not serve model"}


def test_failed_lp_falls_back_to_greedy_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def time_out(*_: object) -> None:
        raise LpFailed("lp not solved within time limit 2 s")

    monkeypatch.setattr(solver_module, "solve_lp", time_out)
    factories = [factory("cheap", 0.1, max_concurrency=15), factory("dear", 1.0)]
    plan = solve(factories, [FRA], [demand(4.0)], options=CAPACITY_ONLY)
    assert head(plan) == "fallback:lp not solved within time limit 2 s"
    assert split(route_of(plan)) == {"cheap": 0.6, "dear": 0.4}


def test_lp_that_raises_still_yields_a_plan_naming_the_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(solver_module, "solve_lp", broken)
    plan = solve([factory("a", 0.1)], [FRA], [demand(1.0)])
    assert head(plan) == "fallback:lp raised RuntimeError: boom"
    assert split(route_of(plan)) == {"a": 1.0}


def test_duplicate_demands_for_one_group_are_merged_into_one_route() -> None:
    factories = [factory("cheap", 0.1, max_concurrency=15), factory("dear", 1.0)]
    plan = solve(factories, [FRA], [demand(2.0), demand(2.0)], options=CAPACITY_ONLY)
    assert len(plan.routes) == 1
    assert split(route_of(plan)) == {"cheap": 0.6, "dear": 0.4}


def test_primary_weights_sum_to_one_and_slivers_are_dropped() -> None:
    factories = [factory(f"f{i}", 0.1 + i / 100, max_concurrency=7) for i in range(7)]
    plan = solve(factories, [FRA], [demand(6.0)])
    weights = [w.weight for w in route_of(plan).primary]
    assert sum(weights) == pytest.approx(1.0, abs=1e-9)
    assert all(w >= 0.01 for w in weights)
    assert weights == sorted(weights, reverse=True)


def test_same_input_gives_the_identical_plan_whatever_the_input_order() -> None:
    factories = [factory("a", 0.1, max_concurrency=15), factory("b", 0.2, domain="r"),
                 factory("c", 0.3, region="eu-north")]
    demands = [demand(4.0), demand(1.0, site="muc")]
    one = solve(factories, [FRA, MUC], demands)
    two = solve(list(reversed(factories)), [MUC, FRA], list(reversed(demands)))
    assert dataclasses.replace(one, solve_seconds=0.0) == dataclasses.replace(
        two, solve_seconds=0.0)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity_headroom"):
        solve([], [FRA], [], options=SolveOptions(capacity_headroom=1.0))


# The share cap of the default policy (capacity.max_primary_share).
CAPPED = dataclasses.replace(CAPACITY_ONLY, max_primary_share=0.34)


def test_no_factory_carries_more_than_the_share_cap_of_a_route_with_enough_factories() -> None:
    # Four factories, cheapest first; one request in flight: capacity binds nowhere, so only
    # the share cap (0.34) keeps the group off "a" alone. The cheapest three fill to the cap.
    factories = [factory("a", 0.10), factory("b", 0.11), factory("c", 0.12),
                 factory("d", 0.13)]
    for plan in (solve(factories, [FRA], [demand(0.2)], options=CAPPED),
                 greedy(factories, [FRA], [demand(0.2)], options=CAPPED)):
        assert split(route_of(plan)) == pytest.approx({"a": 0.34, "b": 0.34, "c": 0.32}, abs=0.005)
        # Losing the cheapest factory moves a third of the route, not all of it.
        assert set(serving(route_of(plan), frozenset({"a"}))) == {"b", "c"}
    # Without the cap (the solver's own default) the cheapest takes it all.
    assert split(route_of(solve(factories, [FRA], [demand(0.2)], options=CAPACITY_ONLY))) == {
        "a": 1.0}


def test_the_cap_never_forces_traffic_onto_a_factory_when_few_are_eligible() -> None:
    # Two eligible: no cap at all (an even split would be forced whatever their capacity).
    two = [factory("a", 0.10), factory("b", 0.50)]
    assert split(route_of(solve(two, [FRA], [demand(0.2)], options=CAPPED))) == {"a": 1.0}
    # Three: 1/2 each, so the dearest can be left out entirely, by the LP and the greedy alike.
    three = [factory("a", 0.10), factory("b", 0.11), factory("c", 0.50)]
    for plan in (solve(three, [FRA], [demand(0.2)], options=CAPPED),
                 greedy(three, [FRA], [demand(0.2)], options=CAPPED)):
        assert split(route_of(plan)) == pytest.approx({"a": 0.5, "b": 0.5}, abs=0.005)
    # Residency leaves one factory: it carries everything, cap or not.
    onsite = [factory("office", 1.0, zone="on-site:fra", tier=Tier.ON_SITE, site="fra"),
              factory("a", 0.10)]
    plan = solve(onsite, [FRA], [demand(0.2, allowed_zones=("on-site:fra",))],
                 options=CAPPED)
    assert split(route_of(plan)) == {"office": 1.0}


def test_a_previous_share_above_the_cap_is_brought_down_to_it_despite_churn() -> None:
    # Four eligible factories, so the 0.34 cap applies as it is.
    factories = [factory("a", 0.10), factory("b", 0.11), factory("c", 0.12),
                 factory("d", 0.13)]
    first = solve(factories, [FRA], [demand(0.2)], options=CAPACITY_ONLY)
    assert split(route_of(first)) == {"a": 1.0}
    for again in (solve(factories, [FRA], [demand(0.2)], previous=first, version=2,
                        options=CAPPED),
                  greedy(factories, [FRA], [demand(0.2)], previous=first, version=2,
                         options=CAPPED)):
        assert split(route_of(again)) == pytest.approx({"a": 0.34, "b": 0.34, "c": 0.32},
                                                       abs=0.005)


def test_a_factory_some_traffic_may_use_alone_is_kept_for_it_and_a_backup_for_the_rest() -> None:
    # "onsite-fra" is cheap and near, but the office's confidential class may use nothing
    # else: chat goes to the edges, and may still fail over on-site.
    onsite = factory("onsite-fra", 0.01, tier=Tier.ON_SITE, site="fra", zone="on-site:fra",
                     domain="office")
    factories = [onsite, factory("edge-1", 1.0, domain="r1"), factory("edge-2", 1.0,
                                                                       domain="r2")]
    confidential = dataclasses.replace(demand(1.0, allowed_zones=("on-site:fra",)),
                                       traffic_class="confidential")
    demands = [demand(1.0), confidential]
    reserving = dataclasses.replace(CAPACITY_ONLY, reserve_sole_factories=True)
    plan = solve(factories, [FRA], demands, options=reserving)
    routes = {r.traffic_class: r for r in plan.routes_for_site("fra")}
    assert split(routes["confidential"]) == {"onsite-fra": 1.0}
    assert "onsite-fra" not in split(routes["default"])
    assert "onsite-fra" in {w.factory_id for level in routes["default"].backups
                            for w in level}
    assert ("fra", "m", "default", "onsite-fra",
            "reserved for traffic that may use no other factory (a backup only for this route)"
            ) in plan.exclusions
    inputs = SolveInputs(tuple(factories), (FRA,), tuple(demands), reserving)
    why = {f.factory_id: (f.role, f.excluded_by) for f in explain(inputs, plan, "fra", "m")
           .factories}
    assert why["onsite-fra"][0] != "primary"
    assert why["onsite-fra"][1].startswith("reserved for traffic that may use no other")
    # Off (the solver's own default), the cheap on-site factory takes the chat too.
    assert "onsite-fra" in split({r.traffic_class: r for r in solve(
        factories, [FRA], demands, options=CAPACITY_ONLY).routes_for_site("fra")}["default"])


def test_unserved_share_is_spread_by_room_not_piled_on_the_planned_primaries() -> None:
    from tdn.topology.problem import Solution, build_problem
    from tdn.topology.routes import spread_unserved

    factories = [factory("a", 0.1, max_concurrency=10), factory("b", 0.2, max_concurrency=40),
                 factory("c", 0.3, max_concurrency=40)]
    problem = build_problem(factories, [FRA], [demand(8.0)], None, SolveOptions())
    pairs = list(problem.pairs(0))
    by_id = {problem.factories.id(int(problem.factory[j])): j for j in pairs}
    conc = {fid: float(problem.concurrency[j]) for fid, j in by_id.items()}
    whole = {fid: float(problem.factories.capacity[problem.factory[j]]) / 0.8
             for fid, j in by_id.items()}

    def solution(shares: dict[str, float], unserved: float) -> Solution:
        x = np.zeros(len(problem.group))
        for fid, share in shares.items():
            x[by_id[fid]] = share
        return Solution(x, np.array([unserved]), 0.0, "optimal")

    # Served in full: routes are the solver's shares, untouched.
    served = solution({"a": 0.25, "b": 0.75}, 0.0)
    assert np.array_equal(spread_unserved(problem, served), served.x)
    # "a" full to its whole capacity: the unserved 30% goes to "b" and "c" by their room.
    full_a = whole["a"] / conc["a"]
    planned = {"a": full_a, "b": 0.7 - full_a}
    spread = spread_unserved(problem, solution(planned, 0.3))
    added = {fid: float(spread[j]) - planned.get(fid, 0.0) for fid, j in by_id.items()}
    assert added["a"] == pytest.approx(0.0, abs=1e-12)
    room = {fid: (whole[fid] - planned.get(fid, 0.0) * conc[fid]) / conc[fid]
            for fid in ("b", "c")}
    assert sum(added.values()) == pytest.approx(0.3)
    assert added["c"] / added["b"] == pytest.approx(room["c"] / room["b"])
    # Five times the traffic, 95% of it unserved: more than all the room. Every factory is
    # filled past its whole capacity, the rest by size, and the whole group is placed.
    big = build_problem(factories, [FRA], [demand(40.0)], None, SolveOptions())
    x = np.zeros(len(big.group))
    x[next(j for j in big.pairs(0) if big.factories.id(int(big.factory[j])) == "a")] = 0.05
    short = spread_unserved(big, Solution(x, np.array([0.95]), 0.0, "optimal"))
    assert float(short.sum()) == pytest.approx(1.0)
    loads = np.bincount(big.factory, weights=short * big.concurrency)
    assert np.all(loads > big.factories.capacity / 0.8)
