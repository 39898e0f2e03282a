"""The greedy fallback: what it may never do (plan past capacity, route outside a group's
eligible factories, lose or invent demand) on generated networks, and the cases where pouring
in order goes wrong and the swaps put it right, as the LP would."""

from __future__ import annotations

import dataclasses
import importlib
import random

import numpy as np
import pytest

from bench.scale_worker import CONTROL_PLANE_OPTIONS, instance
from tdn.domain import Demand, FactoryLoad, FactorySpec, FactoryState, Health, Price, Site, Tier
from tdn.policy import DEFAULT_POLICY
from tdn.topology.greedy import (
    _group_regret_order,
    _pour,
    _PricedFiller,
    _refine,
    _slot_regret_order,
    _WaterFiller,
    assign_greedily,
)
from tdn.topology.lp import solve_lp
from tdn.topology.prices import capacity_prices
from tdn.topology.problem import Problem, build_problem, objective_value
from tdn.topology.solver import SolveOptions, greedy, solve

# The module (the package's attribute of that name is the solver's greedy()).
greedy_module = importlib.import_module("tdn.topology.greedy")

TIMING = FactoryLoad(ttft_p50_s=0.5, itl_p50_s=0.0225)
# No queueing cost: a pure transport problem, whose optimum is easy to state by hand.
CAPACITY_ONLY = SolveOptions(queueing_steepness=0.0)


def factory(fid: str, price: float, *, max_concurrency: int, region: str = "eu-west",
            zone: str = "eu", models: tuple[str, ...] = ("m",)) -> FactoryState:
    spec = FactorySpec(id=fid, tier=Tier.EDGE, region=region, compliance_zone=zone,
                       endpoint=f"http://{fid}.test/v1", models=models,
                       price=Price(price, price), max_concurrency=max_concurrency)
    return FactoryState(spec=spec, load=TIMING, health=Health.HEALTHY)


def demand(site: str, rate: float, *, output_tokens: float = 200.0, model: str = "m"
           ) -> Demand:
    return Demand(site=site, model=model, rate_rps=rate, prompt_tokens=1000.0,
                  output_tokens=output_tokens, ttft_slo_s=60.0)


def generated(seed: int) -> tuple[list[FactoryState], list[Site], list[Demand]]:
    """A random network, loaded from half to twice its capacity so that some runs strand
    demand: three regions in two zones, factories serving some of three models."""
    rng = random.Random(seed)
    regions = {"eu-west": "eu", "eu-north": "eu", "us-east": "us"}
    sites = [Site(f"s{i}", region, zone,
                  rtt_ms=tuple((r, rng.uniform(2.0, 120.0)) for r in regions))
             for i, (region, zone) in enumerate(list(regions.items()) * 2)]
    factories = []
    for i in range(rng.randint(3, 12)):
        region = rng.choice(sorted(regions))
        models = tuple(sorted(rng.sample(["a", "b", "c"], rng.randint(1, 3))))
        factories.append(factory(f"f{i:02d}", rng.uniform(0.1, 2.0),
                                 max_concurrency=rng.randint(4, 60), region=region,
                                 zone=regions[region], models=models))
    demands = [demand(s.id, rng.uniform(0.0, 4.0) * rng.choice([0.5, 1.0, 2.0]),
                      output_tokens=rng.choice([50.0, 200.0, 600.0]), model=m)
               for s in sites for m in ["a", "b", "c"] if rng.random() < 0.7]
    return factories, sites, demands


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("cap", [1.0, 0.34])
def test_greedy_never_plans_past_capacity_nor_outside_a_groups_eligible_factories(
        seed: int, cap: float) -> None:
    factories, sites, demands = generated(seed)
    problem = build_problem(factories, sites, demands, None,
                            SolveOptions(max_primary_share=cap))
    solution = assign_greedily(problem, "fallback:test")
    x, unserved = solution.x, solution.unserved
    assert np.all(x[~problem.primary] == 0.0), "a share on a factory the group may not use"
    assert np.all(x <= problem.share_cap + 1e-9), "a share above the group's share cap"
    assert np.all(x >= 0.0) and np.all((unserved >= 0.0) & (unserved <= 1.0 + 1e-9))
    served = np.bincount(problem.group, weights=x, minlength=problem.group_count)
    np.testing.assert_allclose(served + unserved, 1.0, atol=1e-9)
    load = np.bincount(problem.factory, weights=problem.concurrency * x,
                       minlength=len(problem.factories))
    assert np.all(load <= problem.factories.capacity + 1e-6)
    assert solution.objective == pytest.approx(objective_value(problem, x, unserved))


def _two_sites_one_cheap_factory() -> tuple[Problem, list[FactoryState], list[Site],
                                             list[Demand]]:
    """"near" is as close to both regions; "far" is 900 ms from the big factory's region, so a
    slot of the small cheap factory saves "far" much more than it saves "near"."""
    sites = [Site("near", "eu-west", "eu", rtt_ms=(("eu-west", 5.0), ("eu-north", 5.0))),
             Site("far", "eu-west", "eu", rtt_ms=(("eu-west", 5.0), ("eu-north", 900.0)))]
    factories = [factory("cheap", 0.1, max_concurrency=15),
                 factory("big", 0.2, max_concurrency=400, region="eu-north")]
    demands = [demand("near", 4.0), demand("far", 4.0)]
    return build_problem(factories, sites, demands, None, CAPACITY_ONLY), factories, sites, \
        demands


def _share(problem: Problem, x: np.ndarray, site: str, fid: str) -> float:
    g = problem.keys.index((site, "m", "default"))
    return float(sum(x[j] for j in problem.pairs(g)
                     if problem.factories.id(int(problem.factory[j])) == fid))


def test_a_swap_gives_a_full_factory_to_the_group_that_saves_most_per_slot_there() -> None:
    problem, *_ = _two_sites_one_cheap_factory()
    near = problem.keys.index(("near", "m", "default"))
    far = problem.keys.index(("far", "m", "default"))
    # Poured in the wrong order, "near" takes the whole cheap factory and "far" goes north.
    filler, order = _pour(problem, [near, far])
    poured = filler.solution("x")
    assert _share(problem, poured.x, "near", "cheap") > 0.5
    assert _share(problem, poured.x, "far", "cheap") == 0.0
    refined = _refine(filler, order, 5, "x")
    optimum = solve_lp(problem, lambda: 10.0)
    assert _share(problem, refined.x, "far", "cheap") == pytest.approx(
        _share(problem, optimum.x, "far", "cheap"))
    assert _share(problem, refined.x, "near", "cheap") == pytest.approx(0.0, abs=1e-9)
    assert refined.objective == pytest.approx(optimum.objective)
    assert refined.objective < poured.objective


def test_greedy_and_lp_agree_on_who_gets_a_contended_cheap_factory() -> None:
    _, factories, sites, demands = _two_sites_one_cheap_factory()
    fallback = greedy(factories, sites, demands, options=CAPACITY_ONLY)
    optimum = solve(factories, sites, demands, options=CAPACITY_ONLY)
    assert fallback.routes == optimum.routes
    assert fallback.objective == pytest.approx(optimum.objective)


def test_the_group_stranded_is_the_one_whose_requests_are_worth_least_per_slot() -> None:
    # One factory, room for 12 requests in flight; each group alone would fill it. Long
    # answers hold a slot eight times as long for the same unserved penalty per request, so
    # the LP serves the short ones first, whatever order the groups come in.
    sites = [Site("a-long", "eu-west", "eu", rtt_ms=(("eu-west", 5.0),)),
             Site("b-short", "eu-west", "eu", rtt_ms=(("eu-west", 5.0),))]
    factories = [factory("only", 0.5, max_concurrency=15)]
    demands = [demand("a-long", 4.0, output_tokens=800.0),
               demand("b-short", 4.0, output_tokens=100.0)]
    fallback = greedy(factories, sites, demands, options=CAPACITY_ONLY)
    optimum = solve(factories, sites, demands, options=CAPACITY_ONLY)
    assert optimum.status.startswith("optimal")
    unserved = [n for n in optimum.status.split("; ") if n.startswith("unserved")]
    assert unserved and all("a-long" in n for n in unserved)
    assert [n for n in fallback.status.split("; ") if n.startswith("unserved")] == unserved
    assert fallback.objective == pytest.approx(optimum.objective, rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cap", [1.0, 0.34])
def test_greedy_is_never_cheaper_than_the_lp_optimum_and_the_same_input_gives_the_same_plan(
        seed: int, cap: float) -> None:
    factories, sites, demands = generated(seed)
    options = SolveOptions(max_primary_share=cap)
    optimum = solve(factories, sites, demands, options=options)
    first = greedy(factories, sites, demands, options=options)
    again = greedy(list(reversed(factories)), sites, list(reversed(demands)), options=options)
    assert (first.routes, first.status, first.objective) == (
        again.routes, again.status, again.objective)
    if optimum.status.startswith("optimal"):
        assert first.objective >= optimum.objective * (1 - 1e-6) - 1e-6


class _SliceBySlice(_WaterFiller):
    """Water-filling as first written: every candidate's marginal recomputed before each slice
    (the reference the pour keeps to while updating only the candidate that moved)."""

    def fill(self, g: int, avoid: frozenset[int] = frozenset()) -> None:
        remaining = self.unserved[g]
        while remaining > 1e-12 and len(self.v_pair[g]):
            marginal = self._marginals(g)
            if avoid:
                marginal[np.isin(self.v_factory[g], list(avoid))] = np.inf
            while True:
                i = int(np.argmin(marginal))
                if not marginal[i] < self.unserved_cost[g]:
                    self.unserved[g] = max(remaining, 0.0)
                    return
                j = int(self.v_pair[g][i])
                amount = self._amount(g, j, remaining)
                if amount > 1e-12:
                    break
                marginal[i] = np.inf
            self._move(j, g, amount)
            remaining -= amount
        self.unserved[g] = max(remaining, 0.0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("cap", [1.0, 0.34])
def test_pouring_with_marginals_updated_slice_by_slice_pours_exactly_as_recomputing_them(
        seed: int, cap: float) -> None:
    factories, sites, demands = generated(seed)
    options = SolveOptions(max_primary_share=cap)
    # A previous plan makes churn price slices below and above the previous share apart.
    previous = solve(factories, sites, demands[::2], options=options)
    problem = build_problem(factories, sites, demands, previous, options)
    order = _slot_regret_order(problem)
    fast, reference = _WaterFiller(problem), _SliceBySlice(problem)
    for g in order:
        fast.fill(g)
        reference.fill(g)
    np.testing.assert_array_equal(fast.x, reference.x)
    assert fast.unserved == reference.unserved


def _with_token_rates(factories: list[FactoryState], seed: int) -> list[FactoryState]:
    """Every other factory given an output token rate tight enough to bind at its load."""
    rng = random.Random(seed)
    return [dataclasses.replace(f, spec=dataclasses.replace(
        f.spec, max_output_tokens_per_second=f.spec.max_concurrency * rng.uniform(2.0, 12.0)))
        if i % 2 == 0 else f for i, f in enumerate(factories)]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("all_pours_up_to", [greedy_module._ALL_POURS_UP_TO, 0],
                         ids=["small network", "large network"])
def test_greedy_keeps_within_slots_and_token_rates_whichever_pour_wins(
        seed: int, all_pours_up_to: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Priced pours charge slots and tokens differently from the objective while pouring; the
    # plan must still keep every limit. (0 makes these small networks take the large path:
    # pours compared before repair and refinement.)
    monkeypatch.setattr(greedy_module, "_ALL_POURS_UP_TO", all_pours_up_to)
    factories, sites, demands = generated(seed)
    factories = _with_token_rates(factories, seed)
    problem = build_problem(factories, sites, demands, None, SolveOptions(max_primary_share=0.34))
    assert problem.factories.token_capacity.any()
    solution = assign_greedily(problem, "fallback:test")
    x = solution.x
    assert np.all(x[~problem.primary] == 0.0) and np.all(x <= problem.share_cap + 1e-9)
    served = np.bincount(problem.group, weights=x, minlength=problem.group_count)
    np.testing.assert_allclose(served + solution.unserved, 1.0, atol=1e-9)
    n = len(problem.factories)
    load = np.bincount(problem.factory, weights=problem.concurrency * x, minlength=n)
    assert np.all(load <= problem.factories.capacity + 1e-6)
    tokens = np.bincount(problem.factory, weights=problem.tokens_per_s[problem.group] * x,
                         minlength=n)
    limited = problem.factories.token_capacity > 0
    assert np.all(tokens[limited] <= problem.factories.token_capacity[limited] + 1e-6)
    assert solution.objective == pytest.approx(objective_value(problem, x, solution.unserved))


@pytest.mark.parametrize("options", [CAPACITY_ONLY, SolveOptions()],
                         ids=["capacity only", "queueing"])
def test_the_slot_price_found_is_the_lps_dual_where_a_group_splits_between_two_factories(
        options: SolveOptions) -> None:
    # "far" does not fit on the cheap factory whole, so the LP splits it between the cheap one
    # and the big one: at the optimum both cost it the same at the margin (rate x cost + slot
    # price x concurrency), which fixes the cheap factory's dual. The big one is far from full,
    # in its first queueing segment: its slot price is that segment's marginal.
    _, factories, sites, demands = _two_sites_one_cheap_factory()
    problem = build_problem(factories, sites, demands, None, options)
    optimum = solve_lp(problem, lambda: 10.0)
    far = problem.keys.index(("far", "m", "default"))
    pair = {problem.factories.id(int(problem.factory[j])): j for j in problem.pairs(far)}
    assert 0.0 < optimum.x[pair["cheap"]] < problem.share_cap[pair["cheap"]]
    assert optimum.x[pair["big"]] > 0.0
    rate = problem.objective_rate[far]
    big_price = problem.marginals[problem.factories.index["big"], 0]
    cheap_price = (rate * (problem.cost[pair["big"]] - problem.cost[pair["cheap"]])
                   + problem.concurrency[pair["big"]] * big_price
                   ) / problem.concurrency[pair["cheap"]]
    slot, token = capacity_prices(problem)
    cheap, big = (problem.factories.index[fid] for fid in ("cheap", "big"))
    assert slot[cheap] == pytest.approx(cheap_price, rel=1e-2)
    assert slot[big] == pytest.approx(big_price, abs=1e-3)
    assert not token.any()


def test_a_pour_at_the_prices_found_lands_within_a_percent_of_the_optimum_and_plain_ones_do_not(
        ) -> None:
    # The scale benchmark's kind of network: most factories end on a queueing segment's
    # boundary at the optimum, where who gets the slots is decided by prices no pour at the
    # segment marginals sees.
    factories, sites, demands = instance(100, 1000)
    problem = build_problem(factories, sites, demands, None, CONTROL_PLANE_OPTIONS,
                            policy=DEFAULT_POLICY)
    optimum = solve_lp(problem, lambda: 60.0)
    assert optimum.status == "optimal"
    order = _slot_regret_order(problem)
    prices = capacity_prices(problem)
    priced = _pour(problem, order, prices)[0].solution("x").objective
    assert optimum.objective * (1 - 1e-9) <= priced <= optimum.objective * 1.01
    for plain_order in (order, _group_regret_order(problem)):
        assert _pour(problem, plain_order)[0].solution("x").objective > optimum.objective * 1.01
    # The same problem, built again from the inputs in another order, gets the same prices.
    again = build_problem(list(reversed(factories)), sites, list(reversed(demands)), None,
                          CONTROL_PLANE_OPTIONS, policy=DEFAULT_POLICY)
    for found, repeated in zip(prices, capacity_prices(again), strict=True):
        np.testing.assert_array_equal(found, repeated)


@pytest.mark.parametrize("seed", range(4))
def test_a_priced_pour_hands_refinement_a_filler_charging_what_the_objective_charges(
        seed: int) -> None:
    factories, sites, demands = generated(seed)
    factories = _with_token_rates(factories, seed)
    problem = build_problem(factories, sites, demands, None, SolveOptions(max_primary_share=0.34))
    filler, _ = _pour(problem, _slot_regret_order(problem), capacity_prices(problem))
    assert isinstance(filler, _PricedFiller)
    plain = _WaterFiller(problem)
    plain.restore(filler.snapshot())
    np.testing.assert_array_equal(filler.price, plain.price)
    for charged, expected in zip(filler.v_static, plain.v_static, strict=True):
        np.testing.assert_array_equal(charged, expected)
