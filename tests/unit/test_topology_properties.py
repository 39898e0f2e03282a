"""Properties every plan keeps, over random small networks and policies (hypothesis): the
residency, health, SLO and price rules hold for every factory a request could reach, planned
load stays under capacity less headroom, the solver's claims of failure protection survive a
replay of each failure, and the vectorised judge agrees with the scalar one `tdn explain` uses."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tdn.domain import (
    AdminState,
    Demand,
    Energy,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    Site,
    Tier,
)
from tdn.policy import Policy, Slo, Tenant, TrafficClass
from tdn.topology.eligibility import RESERVED_FOR_SOLE_TRAFFIC, Check, judge, on_site_elsewhere
from tdn.topology.estimates import itl_s, request_duration_s, ttft_estimate_s
from tdn.topology.failover import failure_model
from tdn.topology.options import options_from_policy
from tdn.topology.problem import build_problem, merge_demands
from tdn.topology.requirements import requirement
from tdn.topology.solver import SolveResult, greedy, solve_detailed

REGIONS = {"eu-west": "eu", "eu-north": "eu", "us-east": "us"}
SITES = (
    Site("fra", "eu-west", "eu", rtt_ms=(("eu-north", 28.0), ("eu-west", 4.0),
                                          ("us-east", 95.0))),
    Site("nyc", "us-east", "us", rtt_ms=(("eu-north", 105.0), ("eu-west", 90.0),
                                          ("us-east", 4.0))),
)
MODELS = ("m1", "m2")
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def factories(draw: st.DrawFn) -> list[FactoryState]:
    out = []
    for i in range(draw(st.integers(1, 7))):
        tier = draw(st.sampled_from([Tier.CENTER, Tier.EDGE, Tier.EDGE, Tier.ON_SITE]))
        region = draw(st.sampled_from(sorted(REGIONS)))
        zone, site = REGIONS[region], ""
        if tier is Tier.ON_SITE:
            owner = draw(st.sampled_from(SITES))
            region, zone, site = owner.region, f"on-site:{owner.id}", owner.id
        price = draw(st.floats(0.05, 3.0))
        spec = FactorySpec(
            id=f"f{i}", tier=tier, region=region, compliance_zone=zone,
            endpoint=f"http://f{i}.test/v1",
            models=tuple(sorted(draw(st.sets(st.sampled_from(MODELS), min_size=1)))),
            price=Price(price / 4, price),
            energy=Energy(watts=1000, tokens_per_joule=draw(st.floats(0.5, 4.0)),
                          grid_gco2_per_kwh=draw(st.floats(0, 500)),
                          electricity_price_per_kwh=0.1),
            max_concurrency=draw(st.integers(2, 64)), site=site,
            failure_domain=draw(st.sampled_from(["", "rack-a", "rack-b"])))
        load = FactoryLoad(running=draw(st.integers(0, 4)), waiting=draw(st.integers(0, 2)),
                           ttft_p50_s=draw(st.sampled_from([0.0, 0.1, 0.4, 1.2])),
                           itl_p50_s=draw(st.sampled_from([0.0, 0.01, 0.03, 0.06])))
        health = draw(st.sampled_from([Health.HEALTHY] * 5 + [Health.UNHEALTHY,
                                                              Health.UNKNOWN]))
        admin = draw(st.sampled_from([AdminState.ACTIVE] * 5 + [AdminState.CORDONED,
                                                                AdminState.DRAINED]))
        out.append(FactoryState(spec, load, health, admin))
    return out


@st.composite
def demands(draw: st.DrawFn) -> list[Demand]:
    out = []
    for site in SITES:
        for model in MODELS:
            for cls in draw(st.sets(st.sampled_from(["default", "batch"]), max_size=2)):
                zones = draw(st.sampled_from([(), (), (f"on-site:{site.id}",),
                                              (site.compliance_zone,)]))
                out.append(Demand(site=site.id, model=model, traffic_class=cls,
                                  rate_rps=draw(st.floats(0.0, 6.0)),
                                  prompt_tokens=draw(st.sampled_from([200.0, 1000.0, 4000.0])),
                                  output_tokens=draw(st.sampled_from([50.0, 200.0])),
                                  ttft_slo_s=draw(st.sampled_from([0.5, 1.0, 2.0, 5.0])),
                                  allowed_zones=zones))
    return out


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    tenants = []
    if draw(st.booleans()):
        tenants.append(Tenant(
            name="acme", sites=("fra",),
            zones=tuple(sorted(draw(st.sets(st.sampled_from(["eu", "on-site:fra", "us"]),
                                            min_size=1)))),
            max_output_price_per_mtok=draw(st.sampled_from([None, 1.0, 2.5]))))
    batch = TrafficClass(
        name="batch",
        slo=Slo(ttft_s=draw(st.sampled_from([None, 10.0])),
                per_token_s=draw(st.sampled_from([None, 0.02, 0.05]))),
        max_output_price_per_mtok=draw(st.sampled_from([None, 0.5, 1.5])))
    return Policy(
        tier_factors=tuple(sorted(draw(st.dictionaries(
            st.sampled_from(list(Tier)), st.sampled_from([0.7, 1.0, 1.5]))).items())),
        capacity_headroom=draw(st.sampled_from([0.0, 0.2, 0.4])),
        classes=(batch,), tenants=tuple(tenants))


def _network_plan(fs: list[FactoryState], ds: list[Demand], policy: Policy) -> SolveResult:
    return solve_detailed(fs, SITES, ds, policy=policy)


@PROPERTY_SETTINGS
@given(factories(), demands(), policies())
def test_every_factory_a_request_can_reach_obeys_residency_health_slo_and_price_caps(
        fs: list[FactoryState], ds: list[Demand], policy: Policy) -> None:
    result = _network_plan(fs, ds, policy)
    by_id = {f.spec.id: f for f in fs}
    sites = {s.id: s for s in SITES}
    merged = {(d.site, d.model, d.traffic_class): d for d in merge_demands(ds, policy)}
    for site_id, route in result.plan.routes:
        demand = merged[(site_id, route.model, route.traffic_class)]
        site = sites[site_id]
        req = requirement(demand, site, policy)
        for fid in route.factory_ids():
            f = by_id[fid]
            assert f.health is Health.HEALTHY and f.admin is not AdminState.DRAINED
            assert f.spec.compliance_zone in req.zones(), (fid, req)
            assert not on_site_elsewhere(f, site)
            assert f.spec.price.output_per_mtok <= req.max_output_price_per_mtok
            assert ttft_estimate_s(demand, f, site) <= req.ttft_slo_s
            assert itl_s(f) <= req.per_token_slo_s
        for w in route.primary:
            assert by_id[w.factory_id].admin is AdminState.ACTIVE  # cordoned: backups only


@PROPERTY_SETTINGS
@given(factories(), demands(), policies())
def test_planned_load_stays_within_capacity_less_headroom(
        fs: list[FactoryState], ds: list[Demand], policy: Policy) -> None:
    result = _network_plan(fs, ds, policy)
    by_id = {f.spec.id: f for f in fs}
    merged = {(d.site, d.model, d.traffic_class): d for d in merge_demands(ds, policy)}
    load: dict[str, float] = {}
    for key, shares in result.shares.items():
        assert sum(shares.values()) + result.unserved[key] == pytest.approx(1.0, abs=1e-6)
        for fid, share in shares.items():
            load[fid] = load.get(fid, 0.0) + share * merged[key].rate_rps * request_duration_s(
                merged[key], by_id[fid])
    keep = 1.0 - policy.capacity_headroom
    for fid, planned in load.items():
        assert planned <= by_id[fid].spec.max_concurrency * keep + 1e-6, fid


@PROPERTY_SETTINGS
@given(factories(), demands(), policies())
def test_a_group_claimed_protected_is_not_hurt_when_its_failure_is_replayed(
        fs: list[FactoryState], ds: list[Demand], policy: Policy) -> None:
    result = _network_plan(fs, ds, policy)
    model = failure_model(result.plan, fs, ds, policy)
    for event in model.factory_events():
        for key in event.hurt:
            assert not result.protection[key].factory_failure, (event, key)
    for event in model.region_events():
        for key in event.hurt:
            assert not result.protection[key].region_failure, (event, key)


@PROPERTY_SETTINGS
@given(factories(), demands(), policies())
def test_the_vectorised_judge_agrees_with_the_scalar_one_explain_uses(
        fs: list[FactoryState], ds: list[Demand], policy: Policy) -> None:
    problem = build_problem(fs, SITES, ds, None, options_from_policy(policy), policy=policy)
    sites = {s.id: s for s in SITES}
    for g, demand in enumerate(problem.demands):
        site = sites[demand.site]
        req = requirement(demand, site, policy)
        verdicts = {f.spec.id: judge(demand, f, site, req) for f in fs
                    if demand.model in f.spec.models}
        kept = {problem.factories.id(int(problem.factory[j])): (int(problem.check[j]),
                                                                problem.exclusion_reason(j))
                for j in problem.pairs(g)}
        # A small network keeps every pair: each verdict, and its reason word for word; except
        # that the plan reserves a factory some other group may use alone (judged eligible).
        assert kept.keys() == verdicts.keys()
        for fid, (check, reason) in kept.items():
            if check == int(Check.RESERVED):
                assert verdicts[fid].check is Check.OK
                assert reason == RESERVED_FOR_SOLE_TRAFFIC
                assert problem.primary[problem.pairs(g)].any(), "reserved its last factory"
                sole = [h for h in range(problem.group_count) if h != g
                        and [int(problem.factory[j]) for j in problem.pairs(h)
                             if problem.primary[j]] == [problem.factories.index[fid]]]
                assert sole, f"{fid} reserved though no group depends on it alone"
            else:
                assert (check, reason) == (int(verdicts[fid].check), verdicts[fid].reason)


@PROPERTY_SETTINGS
@given(factories(), demands(), policies())
def test_greedy_never_beats_the_lp_optimum_on_the_same_objective(
        fs: list[FactoryState], ds: list[Demand], policy: Policy) -> None:
    lp = _network_plan(fs, ds, policy).plan
    fallback = greedy(fs, SITES, ds, policy=policy)
    if lp.status.startswith("optimal"):
        assert fallback.objective >= lp.objective - 1e-6 * max(1.0, abs(lp.objective))
    assert math.isfinite(fallback.objective)
