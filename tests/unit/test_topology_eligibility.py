"""Eligibility: which factories may serve a demand, and the exact reason the others may not."""

from __future__ import annotations

import math

from tdn.domain import (
    AdminState,
    Demand,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    Site,
    Tier,
)
from tdn.topology.eligibility import judge
from tdn.topology.estimates import DEFAULT_PREFILL_TOKENS_PER_S, ttft_estimate_s

FRA = Site(id="fra", region="eu-west", compliance_zone="eu",
           rtt_ms=(("eu-west", 4.0), ("us-east", 95.0)))


def factory(fid: str = "f", *, region: str = "eu-west", zone: str = "eu",
            tier: Tier = Tier.EDGE, site: str = "", health: Health = Health.HEALTHY,
            admin: AdminState = AdminState.ACTIVE, load: FactoryLoad | None = None,
            max_concurrency: int = 16) -> FactoryState:
    spec = FactorySpec(id=fid, tier=tier, region=region, compliance_zone=zone,
                       endpoint=f"http://{fid}/v1", models=("m",), price=Price(1.0, 1.0),
                       max_concurrency=max_concurrency, site=site)
    return FactoryState(spec=spec, load=load or FactoryLoad(), health=health, admin=admin)


def demand(*, site: str = "fra", model: str = "m", prompt_tokens: float = 1000.0,
           ttft_slo_s: float = 2.0, allowed_zones: tuple[str, ...] = ()) -> Demand:
    return Demand(site=site, model=model, prompt_tokens=prompt_tokens, ttft_slo_s=ttft_slo_s,
                  allowed_zones=allowed_zones)


def test_healthy_active_factory_in_the_sites_zone_may_be_primary() -> None:
    verdict = judge(demand(), factory(), FRA)
    assert verdict.may_be_primary and verdict.may_be_backup
    assert verdict.reason == ""


def test_factory_not_serving_the_model_is_excluded_for_that_reason() -> None:
    verdict = judge(demand(model="other"), factory(), FRA)
    assert not verdict.may_be_backup
    assert verdict.reason == "does not serve model"


def test_unknown_unhealthy_and_drained_factories_are_excluded_by_name() -> None:
    assert judge(demand(), factory(health=Health.UNKNOWN), FRA).reason == "health unknown"
    assert judge(demand(), factory(health=Health.UNHEALTHY), FRA).reason == "unhealthy"
    drained = judge(demand(), factory(admin=AdminState.DRAINED), FRA)
    assert drained.reason == "drained"
    assert not drained.may_be_primary and not drained.may_be_backup


def test_cordoned_factory_may_be_a_backup_but_never_a_primary() -> None:
    verdict = judge(demand(), factory(admin=AdminState.CORDONED), FRA)
    assert not verdict.may_be_primary
    assert verdict.may_be_backup
    assert verdict.reason == "cordoned (backup only)"


def test_factory_in_another_compliance_zone_is_excluded_for_residency() -> None:
    verdict = judge(demand(), factory(region="us-east", zone="us"), FRA)
    assert not verdict.may_be_backup
    assert verdict.reason == "zone us not allowed for site fra"


def test_on_site_factory_serves_its_own_site_only() -> None:
    onsite = factory(tier=Tier.ON_SITE, site="fra", zone="on-site:fra")
    assert judge(demand(), onsite, FRA).may_be_primary
    other = Site(id="muc", region="eu-west", compliance_zone="eu",
                 allowed_zones=("eu", "on-site:fra"))  # even a site claiming the zone
    verdict = judge(demand(site="muc"), onsite, other)
    assert verdict.reason == "zone on-site:fra not allowed for site muc"


def test_demand_zones_narrow_the_sites_zones() -> None:
    onsite_only = demand(allowed_zones=("on-site:fra",))
    assert judge(onsite_only, factory(), FRA).reason == "zone eu not allowed for site fra"
    onsite = factory(tier=Tier.ON_SITE, site="fra", zone="on-site:fra")
    assert judge(onsite_only, onsite, FRA).may_be_primary


def test_ttft_estimate_over_the_slo_excludes_with_both_numbers() -> None:
    # 95 ms away plus an observed 1.95 s first token: 2.045 s against a 2 s SLO.
    slow = factory(region="us-east", zone="eu", load=FactoryLoad(ttft_p50_s=1.95))
    verdict = judge(demand(), slow, FRA)
    assert not verdict.may_be_backup
    assert verdict.reason == "ttft estimate 2.04 s exceeds SLO 2.00 s"


def test_unreported_ttft_defaults_by_prompt_length_so_long_prompts_miss_tight_slos() -> None:
    fresh = factory()
    short = ttft_estimate_s(demand(prompt_tokens=1000), fresh, FRA)
    long = ttft_estimate_s(demand(prompt_tokens=21000), fresh, FRA)
    assert math.isclose(long - short, 20000 / DEFAULT_PREFILL_TOKENS_PER_S)
    assert judge(demand(prompt_tokens=1000, ttft_slo_s=1.0), fresh, FRA).may_be_primary
    assert "exceeds SLO 1.00 s" in judge(demand(prompt_tokens=21000, ttft_slo_s=1.0), fresh,
                                         FRA).reason


def test_a_queue_the_plan_caused_does_not_change_the_ttft_estimate() -> None:
    # The estimate is of the factory unloaded: the queueing a plan causes is predicted from the
    # load it plans (topology/queueing.py), not read back, which made plans oscillate.
    idle = factory(load=FactoryLoad(ttft_p50_s=0.2, itl_p50_s=0.01))
    queued = factory(load=FactoryLoad(ttft_p50_s=0.2, itl_p50_s=0.01, running=16, waiting=8))
    assert ttft_estimate_s(demand(), queued, FRA) == ttft_estimate_s(demand(), idle, FRA)


def test_an_observed_ttft_above_the_default_counts_only_as_far_as_the_factory_was_idle() -> None:
    default = 0.05 + 1000 / DEFAULT_PREFILL_TOKENS_PER_S  # 0.25 s for 1000 prompt tokens
    rtt = 0.004
    idle_slow = factory(load=FactoryLoad(ttft_p50_s=1.25))
    busy_slow = factory(load=FactoryLoad(ttft_p50_s=1.25, running=4))  # a quarter busy
    queued = factory(load=FactoryLoad(ttft_p50_s=1.25, running=16, waiting=3))
    fast = factory(load=FactoryLoad(ttft_p50_s=0.1, running=16, waiting=3))
    assert math.isclose(ttft_estimate_s(demand(), idle_slow, FRA), rtt + 1.25)
    assert math.isclose(ttft_estimate_s(demand(), busy_slow, FRA), rtt + default + 0.5)
    assert math.isclose(ttft_estimate_s(demand(), queued, FRA), rtt + default)
    assert math.isclose(ttft_estimate_s(demand(), fast, FRA), rtt + 0.1)


def test_only_a_queue_as_long_as_the_factorys_slots_makes_it_at_capacity() -> None:
    full = factory(load=FactoryLoad(running=16, waiting=16, ttft_p50_s=0.1, itl_p50_s=0.001))
    assert judge(demand(), full, FRA).reason == "at capacity"
    short_queue = factory(load=FactoryLoad(running=16, waiting=3, ttft_p50_s=0.1,
                                           itl_p50_s=0.001))
    assert judge(demand(), short_queue, FRA).may_be_primary


def test_a_queue_the_previous_plan_explains_never_excludes() -> None:
    # The plan sent 12 of 16 slots' worth there: a burst queued it; the queueing model, not an
    # exclusion that empties the factory for a period, deals with that.
    full = factory(load=FactoryLoad(running=16, waiting=16, ttft_p50_s=0.1, itl_p50_s=0.001))
    assert judge(demand(), full, FRA, planned_load=12.0).may_be_primary
    assert judge(demand(), full, FRA, planned_load=4.0).reason == "at capacity"


def test_a_slow_median_at_a_factory_the_plan_keeps_busy_is_taken_as_queueing() -> None:
    # Idle in this report, but the previous plan keeps 8 of its 16 slots busy: its 1.25 s
    # median is its queue between bursts, not its speed.
    between_bursts = factory(load=FactoryLoad(ttft_p50_s=1.25))
    default = 0.05 + 1000 / DEFAULT_PREFILL_TOKENS_PER_S
    assert math.isclose(ttft_estimate_s(demand(), between_bursts, FRA, planned_load=8.0),
                        0.004 + default)
    assert math.isclose(ttft_estimate_s(demand(), between_bursts, FRA), 0.004 + 1.25)


def test_demand_from_an_unknown_site_excludes_every_factory() -> None:
    verdict = judge(demand(site="nowhere"), factory(), None)
    assert not verdict.may_be_backup
    assert verdict.reason == "site nowhere unknown"
