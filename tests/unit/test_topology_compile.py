"""Plan → per-site policies: consistent snapshots that ship exactly the factories they route to."""

from __future__ import annotations

import dataclasses

from tdn.domain import (
    DataPlaneSettings,
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
from tdn.policy import ModelRule, Policy
from tdn.topology.compile import (
    ceil_two_significant,
    compile_site_policies,
    site_policies_equal_ignoring_version,
)

FRA = Site(id="fra", region="eu-west", compliance_zone="eu")
NYC = Site(id="nyc", region="us-east", compliance_zone="us")
IDLE = Site(id="idle", region="eu-west", compliance_zone="eu")


def factory(fid: str, region: str = "eu-west", domain: str = "", p99: float = 0.0
            ) -> FactoryState:
    spec = FactorySpec(id=fid, tier=Tier.EDGE, region=region, compliance_zone="eu",
                       endpoint=f"http://{fid}.test/v1", models=("m",), price=Price(0.3, 1.2),
                       failure_domain=domain, supports_prefill=fid == "a")
    return FactoryState(spec=spec, load=FactoryLoad(ttft_p99_s=p99), health=Health.HEALTHY)


FACTORIES = [factory("a", domain="rack-a", p99=0.314), factory("b"), factory("c", "eu-north"),
             factory("unused")]
PLAN = Plan(
    version=12,
    status="optimal",
    routes=(
        ("fra", Route("m", "default",
                      primary=(WeightedFactory("a", 0.6), WeightedFactory("b", 0.4)),
                      backups=((WeightedFactory("c", 1.0),),))),
        ("nyc", Route("m", "default", primary=(WeightedFactory("c", 1.0),))),
    ),
)


def test_each_site_gets_a_consistent_policy_shipping_only_its_routed_factories() -> None:
    policies = compile_site_policies(PLAN, FACTORIES, [FRA, NYC, IDLE])
    assert sorted(policies) == ["fra", "idle", "nyc"]
    for policy in policies.values():
        policy.check()
        assert policy.version == "12"
        assert policy.plan_reason == "optimal"
    assert [f.id for f in policies["fra"].factories] == ["a", "b", "c"]
    assert [f.id for f in policies["nyc"].factories] == ["c"]
    assert policies["idle"].factories == () and policies["idle"].routes == ()


def test_a_site_the_plan_routes_gets_its_routes_in_plan_order_even_when_not_listed() -> None:
    batch = Route("m", "batch", primary=(WeightedFactory("b", 1.0),))
    plan = dataclasses.replace(PLAN, routes=(*PLAN.routes, ("fra", batch)))
    policies = compile_site_policies(plan, FACTORIES, [IDLE])
    assert sorted(policies) == ["fra", "idle", "nyc"]
    assert [(r.model, r.traffic_class) for r in policies["fra"].routes] == [
        ("m", "default"), ("m", "batch")]
    assert [r.primary for r in policies["nyc"].routes] == [(WeightedFactory("c", 1.0),)]


def test_endpoints_carry_url_failure_domain_price_credential_and_a_rounded_up_p99() -> None:
    policies = compile_site_policies(PLAN, FACTORIES, [FRA], credential_refs={"a": "key-a"})
    a = policies["fra"].endpoint("a")
    assert a is not None
    assert a.base_url == "http://a.test/v1"
    assert a.failure_domain == "eu-west/rack-a"
    assert a.supports_prefill
    assert a.credential_ref == "key-a"
    assert a.price == Price(0.3, 1.2)
    assert a.ttft_p99_s == 0.32
    b = policies["fra"].endpoint("b")
    assert b is not None and b.credential_ref == "" and b.failure_domain == "eu-west"


def test_p99_quantisation_never_rounds_down_and_keeps_exact_values() -> None:
    assert ceil_two_significant(0.3) == 0.3
    assert ceil_two_significant(0.301) == 0.31
    assert ceil_two_significant(12.01) == 13.0
    assert ceil_two_significant(0.0) == 0.0


def test_a_factory_gone_since_the_solve_is_dropped_and_weights_renormalised() -> None:
    without_b = [f for f in FACTORIES if f.spec.id != "b"]
    policy = compile_site_policies(PLAN, without_b, [FRA])["fra"]
    policy.check()
    route = policy.route_for("m")
    assert route is not None
    assert route.primary == (WeightedFactory("a", 1.0),)
    assert [f.id for f in policy.factories] == ["a", "c"]


def test_recompiling_an_unchanged_plan_under_a_new_version_counts_as_unchanged() -> None:
    old = compile_site_policies(PLAN, FACTORIES, [FRA, NYC])
    new = compile_site_policies(dataclasses.replace(PLAN, version=13, status="feasible"),
                                FACTORIES, [FRA, NYC], generated_at=1234.0)
    for site in old:
        assert new[site].version == "13"
        assert site_policies_equal_ignoring_version(old[site], new[site])


def test_a_moved_weight_or_a_changed_endpoint_counts_as_changed() -> None:
    old = compile_site_policies(PLAN, FACTORIES, [FRA])["fra"]
    moved = dataclasses.replace(PLAN, routes=(
        ("fra", Route("m", "default",
                      primary=(WeightedFactory("a", 0.5), WeightedFactory("b", 0.5)),
                      backups=((WeightedFactory("c", 1.0),),))),))
    assert not site_policies_equal_ignoring_version(
        old, compile_site_policies(moved, FACTORIES, [FRA])["fra"])
    slower = [factory("a", domain="rack-a", p99=0.9), *FACTORIES[1:]]
    assert not site_policies_equal_ignoring_version(
        old, compile_site_policies(PLAN, slower, [FRA])["fra"])


POLICY = Policy(
    models=(ModelRule(name="m", aliases=("chat",), context_fallback="big",
                      first_byte_timeout_s=6.0),
            ModelRule(name="big", context_fallback="")),
    dataplane=DataPlaneSettings(first_byte_timeout_s=3.0, continuation_enabled=True,
                                retry_budget_percent=20.0),
)
BIG = Route("big", "default", primary=(WeightedFactory("c", 1.0),))


def test_every_site_policy_carries_the_policys_data_plane_settings() -> None:
    policies = compile_site_policies(PLAN, FACTORIES, [FRA, NYC, IDLE], policy=POLICY)
    assert {p.settings for p in policies.values()} == {POLICY.dataplane}
    default = compile_site_policies(PLAN, FACTORIES, [FRA])["fra"]
    assert default.settings == DataPlaneSettings()
    assert not site_policies_equal_ignoring_version(
        default, compile_site_policies(PLAN, FACTORIES, [FRA], policy=POLICY)["fra"])


def test_a_context_fallback_is_set_only_where_the_fallback_model_is_routed() -> None:
    with_big = dataclasses.replace(PLAN, routes=(*PLAN.routes, ("fra", BIG)))
    policies = compile_site_policies(with_big, FACTORIES, [FRA, NYC], policy=POLICY)
    fra = policies["fra"].route_for("m")
    nyc = policies["nyc"].route_for("m")
    assert fra is not None and fra.context_fallback_model == "big"
    assert fra.first_byte_timeout_s == 6.0
    assert nyc is not None and nyc.context_fallback_model == ""  # nyc has no route for big
    for policy in policies.values():
        policy.check()


def test_an_alias_gets_the_same_route_as_its_model_under_its_own_name() -> None:
    policy = compile_site_policies(PLAN, FACTORIES, [FRA], policy=POLICY)["fra"]
    model, alias = policy.route_for("m"), policy.route_for("chat")
    assert model is not None and alias is not None
    assert (alias.primary, alias.backups, alias.first_byte_timeout_s) == (
        model.primary, model.backups, model.first_byte_timeout_s)
    assert [r.model for r in policy.routes] == ["m", "chat"]
