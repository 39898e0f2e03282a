"""Demand from observed traffic: usage reports smoothed with the policy's half-life, unbiased
from the first report, summed over sidecars, split over configured classes, and the network
file's demand wherever nothing was observed."""

from __future__ import annotations

import math

import pytest

from tdn.controlplane.demand import DemandEstimator, DemandObservingLedger
from tdn.domain import Demand
from tdn.policy import ModelRule, Policy, TrafficClass
from tdn.v1 import usage_pb2

CONFIGURED = (
    Demand(site="fra", model="m", traffic_class="default", rate_rps=3.0, ttft_slo_s=2.0),
    Demand(site="fra", model="m", traffic_class="batch", rate_rps=1.0, ttft_slo_s=30.0),
    Demand(site="nyc", model="m", rate_rps=2.0),
)
HALF_LIFE = 60.0


def report(site: str, requests: int, *, model: str = "m", report_id: str = "r", node: str = "s1",
           window: float = 10.0, prompt: int = 0, completion: int = 0,
           traffic_class: str = "") -> usage_pb2.UsageReport:
    msg = usage_pb2.UsageReport(node_id=node, site=site, report_id=report_id, records=[
        usage_pb2.UsageRecord(tenant="t", factory_id="f", model=model, requests=requests,
                              prompt_tokens=prompt, completion_tokens=completion,
                              traffic_class=traffic_class)])
    msg.window_start.FromSeconds(1000)
    msg.window_end.FromNanoseconds(int((1000 + window) * 1e9))
    return msg


def feed(estimator: DemandEstimator, site: str, rate: float, seconds: float, *,
         start: float = 0.0, every: float = 10.0) -> float:
    """Reports of a steady ``rate`` every ``every`` seconds; returns the time of the last."""
    t = start
    while t < start + seconds:
        t += every
        estimator.observe(report(site, round(rate * every), report_id=f"{site}{t}"), now=t)
    return t


def rates(demands: tuple[Demand, ...]) -> dict[tuple[str, str, str], float]:
    return {(d.site, d.model, d.traffic_class): d.rate_rps for d in demands}


def test_without_observations_the_network_files_demand_stands() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE, clock=lambda: 0.0)
    assert estimator.demands() == CONFIGURED


def test_a_steady_rate_is_estimated_from_the_first_report_on() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    t = feed(estimator, "fra", 8.0, 10.0)
    assert estimator.rate("fra", "m", now=t) == pytest.approx(8.0)
    t = feed(estimator, "fra", 8.0, 300.0, start=t)
    assert estimator.rate("fra", "m", now=t) == pytest.approx(8.0, rel=0.02)


def test_a_change_is_followed_with_the_half_life() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    t = feed(estimator, "fra", 8.0, 600.0)
    t = feed(estimator, "fra", 0.0, HALF_LIFE, start=t)
    assert estimator.rate("fra", "m", now=t) == pytest.approx(4.0, rel=0.05)
    assert estimator.rate("fra", "m", now=t + 10 * HALF_LIFE) == pytest.approx(
        4.0 / 2 ** 10, rel=0.05)


def test_sidecars_of_one_site_add_up() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    for t in range(10, 610, 10):
        estimator.observe(report("fra", 30, node="a", report_id=f"a{t}"), now=float(t))
        estimator.observe(report("fra", 20, node="b", report_id=f"b{t}"), now=float(t))
    assert estimator.rate("fra", "m", now=600.0) == pytest.approx(5.0, rel=0.02)


def test_a_record_without_a_class_is_split_over_the_configured_classes_and_keeps_their_slos(
        ) -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    estimator.observe(report("fra", 80, prompt=80_000, completion=16_000), now=10.0)
    demands = estimator.demands(now=10.0)
    assert rates(demands) == pytest.approx({("fra", "m", "default"): 6.0,
                                            ("fra", "m", "batch"): 2.0,
                                            ("nyc", "m", "default"): 2.0})
    by_class = {d.traffic_class: d for d in demands if d.site == "fra"}
    assert by_class["batch"].ttft_slo_s == 30.0
    assert (by_class["default"].prompt_tokens, by_class["default"].output_tokens) == (
        pytest.approx(1000.0), pytest.approx(200.0))


def test_traffic_to_an_alias_counts_for_its_model_and_unknown_sites_are_ignored() -> None:
    policy = Policy(models=(ModelRule(name="m", aliases=("chat",)),))
    estimator = DemandEstimator(CONFIGURED, sites=["fra", "nyc"], half_life_s=HALF_LIFE)
    estimator.observe(report("nyc", 40, model="chat"), now=10.0, policy=policy)
    estimator.observe(report("mars", 40), now=10.0, policy=policy)
    assert rates(estimator.demands(now=10.0, policy=policy))[("nyc", "m", "default")] == \
        pytest.approx(4.0)
    assert estimator.ignored_reports == 1
    assert estimator.observed() == {("nyc", "m")}


def test_a_resent_report_is_counted_once_in_the_demand_too() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE, clock=lambda: 10.0)
    ledger = DemandObservingLedger(estimator)
    assert ledger.add(report("fra", 50, report_id="once"))
    assert not ledger.add(report("fra", 50, report_id="once"))
    assert estimator.rate("fra", "m") == pytest.approx(5.0)


def test_the_half_life_must_be_positive() -> None:
    estimator = DemandEstimator(CONFIGURED)
    with pytest.raises(ValueError, match="half-life"):
        estimator.set_half_life(0.0)
    estimator.set_half_life(math.inf)


def test_a_surge_is_planned_for_at_once_and_a_lull_gives_capacity_back_slowly() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=300.0)
    t = feed(estimator, "fra", 2.0, 1800.0)
    assert estimator.rate("fra", "m", now=t) == pytest.approx(2.0, rel=0.02)
    # A minute at 10x: the 5-minute estimate has barely moved, the plan follows the surge.
    t = feed(estimator, "fra", 20.0, 60.0, start=t)
    smoothed = estimator.smoothed_rate("fra", "m", now=t)
    assert smoothed is not None and smoothed < 6.0
    planned = estimator.rate("fra", "m", now=t)
    assert planned is not None and planned > 11.0 and planned > 2 * smoothed
    # Back to the old rate: a minute later the plan still keeps most of the surge's capacity.
    t = feed(estimator, "fra", 2.0, 60.0, start=t)
    after = estimator.rate("fra", "m", now=t)
    assert after is not None and after > 4.0


def test_records_with_a_class_are_estimated_per_class_not_in_configured_proportions() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    # The network file says 3:1; the traffic is 1:3, with its own sizes per class.
    estimator.observe(report("fra", 20, prompt=2_000, completion=400, report_id="a",
                             traffic_class="default"), now=10.0)
    estimator.observe(report("fra", 60, prompt=600_000, completion=6_000, report_id="b",
                             traffic_class="batch"), now=10.0)
    demands = estimator.demands(now=10.0)
    assert rates(demands) == pytest.approx({("fra", "m", "default"): 2.0,
                                            ("fra", "m", "batch"): 6.0,
                                            ("nyc", "m", "default"): 2.0})
    by_class = {d.traffic_class: d for d in demands if d.site == "fra"}
    assert (by_class["batch"].prompt_tokens, by_class["batch"].output_tokens) == (
        pytest.approx(10_000.0), pytest.approx(100.0))
    assert by_class["batch"].ttft_slo_s == 30.0 and by_class["default"].ttft_slo_s == 2.0
    assert estimator.rate("fra", "m", "batch", now=10.0) == pytest.approx(6.0)
    assert estimator.rate("fra", "m", now=10.0) == pytest.approx(8.0)


def test_a_class_nobody_defined_counts_as_default_and_a_policy_class_gets_its_own_group(
        ) -> None:
    policy = Policy(classes=(TrafficClass(name="interactive"),))
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    # A client inventing class names must not create demand groups: served on the default
    # route, counted as default.
    estimator.observe(report("nyc", 30, report_id="a", traffic_class="made-up"), now=10.0,
                      policy=policy)
    estimator.observe(report("nyc", 10, report_id="b", traffic_class="interactive"), now=10.0,
                      policy=policy)
    assert {k: v for k, v in rates(estimator.demands(now=10.0, policy=policy)).items()
            if k[0] == "nyc"} == pytest.approx({("nyc", "m", "default"): 3.0,
                                                ("nyc", "m", "interactive"): 1.0})


def test_a_configured_class_with_no_traffic_while_its_siblings_have_some_is_planned_at_zero(
        ) -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    estimator.observe(report("fra", 50, traffic_class="default"), now=10.0)
    assert rates(estimator.demands(now=10.0)) == pytest.approx(
        {("fra", "m", "default"): 5.0, ("fra", "m", "batch"): 0.0,
         ("nyc", "m", "default"): 2.0})


def test_a_report_without_a_window_counts_as_a_seconds_worth_not_as_an_instant() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=HALF_LIFE)
    bare = report("nyc", 5)
    bare.ClearField("window_start")
    bare.ClearField("window_end")
    estimator.observe(bare, now=100.0)
    # Dated "now" alone, the unbiased estimate would divide 5 requests by ~0 s.
    rate = estimator.rate("nyc", "m", now=100.0)
    assert rate is not None and rate == pytest.approx(5.0, rel=0.05)
