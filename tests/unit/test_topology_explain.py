"""`tdn explain` in the solver's own words: roles, costs by term that add up to what the solver
compared, the rule that excluded each other factory (tenant zones, price caps, SLOs), and what
losing a primary or its region does to the route."""

from __future__ import annotations

import dataclasses

import pytest

from tdn.domain import (
    Demand,
    Energy,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Plan,
    Price,
    Site,
    Tier,
)
from tdn.policy import ModelRule, Policy, Slo, Tenant, TrafficClass
from tdn.topology.explain import NoSuchRoute, RouteExplanation, explain
from tdn.topology.options import options_from_policy
from tdn.topology.problem import build_problem
from tdn.topology.solver import SolveInputs, solve_detailed

FRA = Site(id="fra", region="eu-west", compliance_zone="eu",
           allowed_zones=("eu", "on-site:fra", "eu-sovereign"),
           rtt_ms=(("eu-north", 28.0), ("eu-west", 4.0)))


def factory(fid: str, price: float, *, zone: str = "eu", region: str = "eu-west",
            itl: float = 0.02, tier: Tier = Tier.EDGE, domain: str = "",
            slots: int = 50) -> FactoryState:
    spec = FactorySpec(id=fid, tier=tier, region=region, compliance_zone=zone,
                       endpoint=f"http://{fid}.test/v1", models=("m",),
                       price=Price(price / 4, price),
                       energy=Energy(watts=1000, tokens_per_joule=2.0, grid_gco2_per_kwh=300,
                                     electricity_price_per_kwh=0.1),
                       max_concurrency=slots, failure_domain=domain,
                       site="fra" if tier is Tier.ON_SITE else "")
    return FactoryState(spec=spec, load=FactoryLoad(ttft_p50_s=0.3, itl_p50_s=itl),
                        health=Health.HEALTHY)


FACTORIES = [
    factory("cheap", 0.5, domain="rack-a"),
    factory("backup", 0.8, region="eu-north"),
    factory("sovereign", 0.4, zone="eu-sovereign"),
    factory("pricey", 4.0),
    factory("sluggish", 0.3, itl=0.08),
    factory("idle", 0.9, domain="rack-b"),
]
POLICY = Policy(
    tenants=(Tenant(name="acme", sites=("fra",), zones=("eu",),
                    max_output_price_per_mtok=3.0),),
    classes=(TrafficClass(name="default", slo=Slo(ttft_s=2.0, per_token_s=0.05)),),
    models=(ModelRule(name="m", aliases=("chat",)),),
    # These answers are about roles, costs and exclusions with the whole group on its cheapest
    # factory; the share cap has its own test below.
    max_primary_share=1.0,
)
DEMAND = [Demand(site="fra", model="m", rate_rps=1.0)]


def explained() -> RouteExplanation:
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=POLICY)
    return explain(result.inputs, result.plan, "fra", "chat")


def test_each_other_factory_is_named_with_the_rule_that_excluded_it() -> None:
    answer = explained()
    excluded = {f.factory_id: f.excluded_by for f in answer.factories if f.role == "excluded"}
    assert excluded == {
        "sovereign": "zone eu-sovereign not allowed for tenant acme",
        "pricey": "output price $4/Mtok above cap $3/Mtok (tenant acme)",
        "sluggish": "per-token latency 0.080 s exceeds SLO 0.050 s",
    }


def test_chosen_factories_come_first_with_their_role_and_weight() -> None:
    answer = explained()
    roles = [(f.role, f.factory_id, f.weight) for f in answer.factories
             if f.role not in ("excluded", "eligible")]
    assert roles == [("primary", "cheap", 1.0), ("backup-0", "backup", 1.0),
                     ("backup-1", "idle", 1.0)]


def test_costs_by_term_add_up_to_what_the_solver_compared() -> None:
    answer = explained()
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=POLICY)
    problem = build_problem(FACTORIES, [FRA], DEMAND, None, options_from_policy(POLICY),
                            policy=POLICY)
    solver_cost = {problem.factories.id(int(problem.factory[j])): float(problem.cost[j])
                   for j in problem.pairs(0)}
    for f in answer.factories:
        if f.role in ("excluded",):
            assert f.costs == ()
            continue
        costs = dict(f.costs)
        assert list(costs) == ["price", "latency", "carbon", "energy", "tier", "queueing",
                               "total"]
        static = sum(v for k, v in costs.items() if k not in ("queueing", "total"))
        assert static == pytest.approx(solver_cost[f.factory_id])
        assert costs["total"] == pytest.approx(static + costs["queueing"])
    assert result.plan.version == answer.plan_version


def test_the_groups_rules_aliases_and_failure_protection_are_spelled_out() -> None:
    answer = explained()
    assert answer.model == "m"
    assert "chat is an alias of m" in answer.notes
    assert answer.requirements == (
        "zones eu", "tenant acme: zones eu", "ttft <= 2 s", "per-token <= 0.05 s",
        "output price <= $3/Mtok (tenant acme)")
    assert answer.protection == (
        "losing cheap: absorbed by the backups, no re-solve needed",
        "losing region eu-west: absorbed by the backups, no re-solve needed")


def test_an_eligible_factory_that_was_not_chosen_says_so() -> None:
    factories = [*FACTORIES, factory("spare", 2.0, domain="rack-a")]
    result = solve_detailed(factories, [FRA], DEMAND, policy=POLICY)
    answer = explain(result.inputs, result.plan, "fra", "m")
    (spare,) = [f for f in answer.factories if f.factory_id == "spare"]
    assert spare.role == "eligible"
    assert spare.excluded_by.startswith("not chosen: costs ")


def test_asking_for_a_route_nobody_planned_is_refused_by_name() -> None:
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=POLICY)
    with pytest.raises(NoSuchRoute, match="no route for gpt-9/default at fra"):
        explain(result.inputs, result.plan, "fra", "gpt-9")


def test_an_unknown_class_is_explained_with_the_route_sidecars_would_use() -> None:
    answer = explain(*_inputs_and_plan(), "fra", "m", "interactive")
    assert answer.traffic_class == "default"
    assert "no route for class interactive; class default is used instead" in answer.notes


def _inputs_and_plan() -> tuple[SolveInputs, Plan]:
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=POLICY)
    return result.inputs, result.plan


def test_each_primary_shows_its_planned_load_against_its_slo_safe_load() -> None:
    answer = explained()
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=POLICY)
    problem = build_problem(FACTORIES, [FRA], DEMAND, None, result.inputs.options,
                            policy=POLICY)
    j = next(j for j in problem.pairs(0) if problem.factories.id(int(problem.factory[j]))
             == "cheap")
    safe = float(problem.slo_safe_load[j])
    # 1 rps of 0.3 s + 200 x 20 ms = 4.3 s requests: 4.3 in flight, far below what 50 slots
    # carry within a 2 s SLO (and below the 40 the headroom leaves).
    assert 30.0 < safe <= 40.0
    assert (f"cheap: 4.3 in flight planned, SLO-safe for this class up to {safe:.1f} of 50 "
            "slots") in answer.notes


def test_a_primary_held_at_the_share_cap_says_so() -> None:
    capped = dataclasses.replace(POLICY, max_primary_share=0.34)
    result = solve_detailed(FACTORIES, [FRA], DEMAND, policy=capped)
    answer = explain(result.inputs, result.plan, "fra", "chat")
    primaries = {f.factory_id: f.weight for f in answer.factories if f.role == "primary"}
    # cheap, backup and idle are the three eligible factories: the cap gives way to 1/2, so that
    # it never forces traffic onto any one of them (problem.share_caps), and cheap is held there.
    assert set(primaries) <= {"cheap", "backup", "idle"} and primaries["cheap"] == 0.5
    assert max(primaries.values()) <= 0.5 + 1e-9
    assert any(n.startswith("cheap: ") and n.endswith("share held at the cap of 0.50 per factory")
               for n in answer.notes)
