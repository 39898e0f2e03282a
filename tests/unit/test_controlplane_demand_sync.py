"""Demand estimates shared between replicas: the records, and how an estimator adds its peers'
estimates to its own (controlplane/demand_sync.py, controlplane/demand.py)."""

from __future__ import annotations

import pytest

from tdn.controlplane.demand import DemandEstimator, GroupEstimate
from tdn.controlplane.demand_sync import (
    DemandStates,
    decode_demand,
    demand_key,
    encode_demand,
)
from tdn.domain import Demand
from tdn.store.base import Entry
from tdn.v1 import usage_pb2

CONFIGURED = (Demand(site="fra", model="m", rate_rps=4.0, prompt_tokens=1000.0,
                     output_tokens=200.0),)


def observe(estimator: DemandEstimator, requests: int, prompt: int, output: int,
            now: float = 10.0) -> None:
    report = usage_pb2.UsageReport(node_id="s", site="fra", report_id=f"r{now}", records=[
        usage_pb2.UsageRecord(tenant="t", factory_id="f", model="m", requests=requests,
                              prompt_tokens=prompt, completion_tokens=output,
                              traffic_class="default")])
    report.window_start.FromSeconds(0)
    report.window_end.FromSeconds(10)
    estimator.observe(report, now=now)


def fra(estimator: DemandEstimator, now: float = 10.0) -> Demand:
    return next(d for d in estimator.demands(now=now) if d.site == "fra")


def test_a_peers_estimate_adds_to_this_replicas_and_sizes_are_averaged_by_rate() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=60.0)
    observe(estimator, 100, 100 * 2000, 100 * 100)  # 10 s at 10 rps of 2000-token prompts
    own = estimator.snapshot(now=10.0)
    assert [(e.site, e.model, e.traffic_class) for e in own] == [("fra", "m", "default")]
    assert (own[0].rate_rps, own[0].prompt_tokens) == pytest.approx((10.0, 2000.0))
    estimator.set_peer("cp-b", [GroupEstimate("fra", "m", "default", 30.0, 1000.0, 300.0)])
    demand = fra(estimator)
    assert demand.rate_rps == pytest.approx(40.0)
    assert demand.prompt_tokens == pytest.approx((10 * 2000 + 30 * 1000) / 40)
    assert demand.output_tokens == pytest.approx((10 * 100 + 30 * 300) / 40)
    # What a replica publishes is its own estimate only, never its peers' (no echo).
    assert estimator.snapshot(now=10.0) == own
    estimator.drop_peer("cp-b")
    assert fra(estimator).rate_rps == pytest.approx(10.0)


def test_traffic_seen_only_at_a_peer_replaces_the_network_files_demand_until_it_goes() -> None:
    estimator = DemandEstimator(CONFIGURED, half_life_s=60.0)
    assert fra(estimator).rate_rps == 4.0
    estimator.set_peer("cp-b", [GroupEstimate("fra", "m", "default", 25.0, 800.0, 100.0)])
    demand = fra(estimator)
    assert (demand.rate_rps, demand.prompt_tokens, demand.output_tokens) == (25.0, 800.0, 100.0)
    assert estimator.observed() == {("fra", "m")}
    assert estimator.rate("fra", "m") == 25.0
    estimator.drop_peer("cp-b")
    assert fra(estimator) == CONFIGURED[0]


def test_records_round_trip_and_the_store_handler_skips_its_own_and_unreadable_ones() -> None:
    estimates = (GroupEstimate("fra", "m", "default", 12.5, 900.0, 150.0),)
    assert decode_demand(demand_key("cp-b"), encode_demand("cp-b", 1.0, estimates)) == (
        "cp-b", estimates)
    estimator = DemandEstimator(CONFIGURED)
    states = DemandStates(estimator, "cp-a")
    states.reset([Entry(demand_key("cp-a"), encode_demand("cp-a", 1.0, estimates), 1, 1, 1),
                  Entry(demand_key("cp-b"), encode_demand("cp-b", 1.0, estimates), 2, 2, 1),
                  Entry(demand_key("cp-c"), b"{not json", 3, 3, 1),
                  Entry(demand_key("cp-d"), b'{"groups": [["fra", "m", "default", -1, 0, 0]]}',
                        4, 4, 1)],
                 initial=True)
    assert estimator.peers() == ("cp-b",)
    states.put(demand_key("cp-c"), encode_demand("cp-c", 2.0, estimates))
    assert estimator.rate("fra", "m") == 25.0
    states.delete(demand_key("cp-b"))
    assert estimator.peers() == ("cp-c",)
    # A fresh listing replaces everything known before.
    states.reset([], initial=False)
    assert estimator.peers() == ()
