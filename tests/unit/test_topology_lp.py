"""The LP's column generation: independent parts of the network solved as separate LPs with
the same optimum as one, pricing that asks only for columns that can pay, and the time limit:
a block the budget never reached fails the LP (the greedy stands), a block cut short between
rounds keeps its last restricted optimum as a "feasible" plan."""

from __future__ import annotations

import numpy as np
import pytest

import tdn.topology.lp as lp_module
from tdn.domain import Demand, FactoryLoad, FactorySpec, FactoryState, Health, Price, Site, Tier
from tdn.topology.greedy import assign_greedily
from tdn.topology.lp import LpFailed, _Model, blocks, solve_lp
from tdn.topology.problem import Problem, build_problem, objective_value
from tdn.topology.solver import SolveOptions

TIMING = FactoryLoad(ttft_p50_s=0.5, itl_p50_s=0.0225)
FRA = Site("fra", "eu-west", "eu", rtt_ms=(("eu-west", 4.0), ("us-east", 95.0)))
NYC = Site("nyc", "us-east", "us", rtt_ms=(("eu-west", 90.0), ("us-east", 4.0)))


def factory(fid: str, price: float, *, region: str = "eu-west", zone: str = "eu",
            max_concurrency: int = 40, models: tuple[str, ...] = ("m",)) -> FactoryState:
    spec = FactorySpec(id=fid, tier=Tier.EDGE, region=region, compliance_zone=zone,
                       endpoint=f"http://{fid}.test/v1", models=models,
                       price=Price(price, price), max_concurrency=max_concurrency)
    return FactoryState(spec=spec, load=TIMING, health=Health.HEALTHY)


def demand(site: str, rate: float, model: str = "m") -> Demand:
    return Demand(site=site, model=model, rate_rps=rate, prompt_tokens=1000.0,
                  output_tokens=200.0, ttft_slo_s=60.0)


def two_zones() -> Problem:
    """EU and US traffic that can never share a factory, each contending for cheap ones."""
    factories = [factory("eu-cheap", 0.1, max_concurrency=12),
                 factory("eu-dear", 0.9, max_concurrency=200),
                 factory("eu-mid", 0.4, max_concurrency=20, models=("m", "n")),
                 factory("us-cheap", 0.2, region="us-east", zone="us", max_concurrency=10),
                 factory("us-dear", 1.1, region="us-east", zone="us", max_concurrency=200)]
    demands = [demand("fra", 3.0), demand("fra", 2.0, "n"), demand("nyc", 4.0)]
    return build_problem(factories, [FRA, NYC], demands, None, SolveOptions())


def test_independent_zones_are_separate_lps_with_the_optimum_of_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    problem = two_zones()
    joint = solve_lp(problem, lambda: 10.0)
    assert len(blocks(problem)) == 1  # small parts are packed into one LP
    monkeypatch.setattr(lp_module, "_MIN_BLOCK_PAIRS", 1)
    parts = blocks(problem)
    assert len(parts) == 2
    zones = [{problem.factories.states[int(f)].spec.compliance_zone
              for f in problem.factory[part]} for part in parts]
    assert zones == [{"eu"}, {"us"}]
    apart = solve_lp(problem, lambda: 10.0)
    assert apart.status == joint.status == "optimal"
    assert apart.objective == pytest.approx(joint.objective)
    np.testing.assert_allclose(apart.x, joint.x, atol=1e-7)
    assert apart.objective == pytest.approx(objective_value(problem, apart.x, apart.unserved))


def test_a_group_wholly_on_its_cheapest_factory_asks_for_no_dearer_column() -> None:
    # At the optimum the group sits at x = 1 on "cheap" with its unserved share at 0: a
    # degenerate vertex whose dual for the group may be the unserved penalty, which would make
    # "dear" look worth adding. Pricing uses the dual the group actually pays.
    factories = [factory("cheap", 0.1), factory("dear", 0.9)]
    problem = build_problem(factories, [FRA], [demand("fra", 1.0)], None, SolveOptions())
    cheap = int(np.flatnonzero(problem.primary)[0])
    assert problem.factories.id(int(problem.factory[cheap])) == "cheap"
    model = _Model(problem, np.flatnonzero(problem.primary), np.array([cheap]))
    model.read_solution(model.solve(10.0))
    entering, bound = model.entering()
    assert len(entering) == 0 and bound == 0.0


def test_a_block_the_time_limit_never_reached_fails_the_lp(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp_module, "_MIN_BLOCK_PAIRS", 1)
    problem = two_zones()
    budget = iter([1.0])  # the first block's first solve, then nothing left
    with pytest.raises(LpFailed, match="time limit"):
        solve_lp(problem, lambda: next(budget, 0.0), assign_greedily(problem, "g", passes=0))


def test_rounds_cut_short_by_the_time_limit_leave_a_feasible_restricted_optimum() -> None:
    # Without a seed the model starts from each group's single cheapest factory, too small
    # for the demand: pricing wants more columns, but the budget ends after the first solve.
    tight = build_problem([factory("eu-cheap", 0.1, max_concurrency=12),
                           factory("eu-dear", 0.9, max_concurrency=200)], [FRA],
                          [demand("fra", 3.0)], None, SolveOptions(min_candidates=1))
    budget = iter([1.0])
    cut = solve_lp(tight, lambda: next(budget, 0.0))
    assert cut.status == "feasible"
    assert cut.unserved.sum() > 0  # what the one column could not carry
    full = solve_lp(tight, lambda: 10.0)
    assert full.status == "optimal" and full.objective < cut.objective


def wide(seed: int = 5) -> Problem:
    """Two zones of a dozen factories each against many groups, with the share cap: enough
    contention that pricing needs several rounds."""
    rng = np.random.default_rng(seed)
    sites = [FRA, NYC]
    factories = [factory(f"{zone}-{i:02d}", float(rng.uniform(0.1, 1.5)),
                         region="eu-west" if zone == "eu" else "us-east", zone=zone,
                         max_concurrency=int(rng.integers(4, 30)), models=("m", "n"))
                 for zone in ("eu", "us") for i in range(12)]
    demands = [demand(site, float(rng.uniform(0.5, 4.0)), model)
               for site in ("fra", "nyc") for model in ("m", "n")]
    return build_problem(factories, sites, demands, None, SolveOptions(max_primary_share=0.34))


def test_columns_added_to_a_solved_block_reach_the_optimum_of_solving_them_all_at_once(
        ) -> None:
    # Each pricing round hands GLOP the previous basis with the new columns at zero; the
    # optimum must be the one a cold solve of the final column set finds.
    problem = wide()
    pairs = np.flatnonzero(problem.primary)
    seed = assign_greedily(problem, "g", passes=0)
    start = pairs[seed.x[pairs] > 0]
    warm = _Model(problem, pairs, start)
    warm.read_solution(warm.solve(10.0))
    rounds = 0
    while True:
        entering, _ = warm.entering()
        if len(entering) == 0:
            break
        warm.add(entering)
        warm.read_solution(warm.solve(10.0))
        rounds += 1
    assert rounds >= 1
    cold = _Model(problem, pairs, np.flatnonzero(warm.in_model))
    cold.read_solution(cold.solve(10.0))
    assert warm.value == pytest.approx(cold.value, rel=1e-9)
    full = _Model(problem, pairs, pairs)
    full.read_solution(full.solve(10.0))
    assert warm.value == pytest.approx(full.value, rel=1e-9)


def test_blocks_solved_side_by_side_give_the_plan_of_solving_them_one_after_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lp_module, "_MIN_BLOCK_PAIRS", 1)
    problem = wide()
    assert len(blocks(problem)) == 2
    seed = assign_greedily(problem, "g", passes=0)
    monkeypatch.setattr(lp_module, "_THREADS", 1)
    one_by_one = solve_lp(problem, lambda: 10.0, seed)
    monkeypatch.setattr(lp_module, "_THREADS", 2)
    side_by_side = solve_lp(problem, lambda: 10.0, seed)
    assert side_by_side.status == one_by_one.status == "optimal"
    assert side_by_side.objective == one_by_one.objective
    np.testing.assert_array_equal(side_by_side.x, one_by_one.x)
