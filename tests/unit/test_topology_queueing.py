"""The SLO-safe load: how much a factory may be planned to carry before queueing breaks a TTFT
SLO (M/M/c, Erlang C), and the telemetry that may adjust the slots it is planned on."""

from __future__ import annotations

import math

import numpy as np

from tdn.domain import FactoryLoad, FactorySpec, FactoryState, Health, Price, Tier
from tdn.topology.estimates import effective_slots
from tdn.topology.queueing import erlang_c, slo_safe_load


def test_erlang_c_matches_the_textbook_value() -> None:
    # Two servers at offered load 1 Erlang: P(wait) = 1/3.
    assert math.isclose(float(erlang_c(np.array([2]), np.array([[1.0]]))[0, 0]), 1 / 3)
    # A single server: P(wait) is its utilisation.
    assert math.isclose(float(erlang_c(np.array([1]), np.array([[0.6]]))[0, 0]), 0.6)


def test_the_safe_load_keeps_the_chance_of_missing_the_slo_at_the_target() -> None:
    slots, duration, slack = 34, 5.0, 1.0
    load = slo_safe_load(slots, 0.8 * slots, duration, slack, 0.01)
    wait = float(erlang_c(np.array([slots]), np.array([[load]]))[0, 0])
    miss = wait * math.exp(-(slots - load) * slack / duration)
    assert 0.008 < miss <= 0.0101
    assert 0.6 * slots < load < 0.8 * slots


def test_more_slack_or_a_looser_target_allows_more_load_never_past_the_headroom() -> None:
    loads = [slo_safe_load(18, 14.4, 5.0, slack, 0.01) for slack in (0.0, 0.5, 1.0, 5.0)]
    assert loads == sorted(loads) and loads[0] > 0
    assert slo_safe_load(18, 14.4, 5.0, 1.0, 0.05) > loads[2]
    assert slo_safe_load(18, 14.4, 5.0, 1000.0, 0.01) == 14.4
    assert slo_safe_load(18, 14.4, 5.0, 0.0, 1.0) == 14.4  # a target of 1 turns it off


def test_short_requests_on_many_slots_may_run_fuller_than_long_ones_on_few() -> None:
    long_few = slo_safe_load(13, 13.0, 6.0, 1.0, 0.01) / 13
    short_many = slo_safe_load(34, 34.0, 1.0, 1.0, 0.01) / 34
    assert long_few < 0.6 < short_many


def test_a_queue_with_free_slots_moves_the_planned_slots_half_way_to_what_runs() -> None:
    spec = FactorySpec(id="f", tier=Tier.EDGE, region="r", compliance_zone="eu",
                       endpoint="http://f/v1", models=("m",), price=Price(1.0, 1.0),
                       max_concurrency=32)

    def slots(running: int, waiting: int) -> float:
        load = FactoryLoad(running=running, waiting=waiting)
        return effective_slots(FactoryState(spec=spec, load=load, health=Health.HEALTHY))

    assert slots(16, 4) == 24.0
    assert slots(32, 4) == 32.0  # full and queueing: that is load, not a smaller factory
    assert slots(16, 0) == 32.0
