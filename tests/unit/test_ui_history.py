"""Per-factory telemetry history for the UI's charts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tdn.controlplane.ui.history import TelemetryHistory
from tdn.domain import FactoryLoad, FactorySpec, FactoryState, Health, Price, Tier

SPEC = FactorySpec(id="f1", tier=Tier.EDGE, region="eu-west", compliance_zone="eu",
                   endpoint="http://127.0.0.1:1/v1", models=("m",),
                   price=Price(0.1, 0.4), max_concurrency=10)


def state(running: int, health: Health = Health.HEALTHY, price_out: float = 0.4) -> FactoryState:
    spec = replace(SPEC, price=Price(0.1, price_out))
    return FactoryState(spec=spec, load=FactoryLoad(running=running, ttft_p50_s=0.05),
                        health=health)


def test_samples_are_kept_per_resolution_step_with_the_newest_figures() -> None:
    h = TelemetryHistory(window_s=60, resolution_s=1.0)
    h.record(state(1), 100.0)
    h.record(state(2), 100.4)  # same step: replaces
    h.record(state(3), 101.1)
    series = h.series("f1", now=101.5)
    assert series is not None
    assert series.columns["t"] == [100.0, 101.1]
    assert series.columns["running"] == [2.0, 3.0]
    assert series.columns["load"] == [0.2, 0.3]
    assert series.columns["ttft_p50_s"] == [0.05, 0.05]


def test_a_health_change_always_gets_its_own_sample() -> None:
    h = TelemetryHistory(window_s=60, resolution_s=1.0)
    h.record(state(1), 100.0)
    h.record(state(1, Health.UNHEALTHY), 100.2)
    series = h.series("f1", now=100.5)
    assert series is not None
    assert series.columns["health"] == [1.0, 0.0]


def test_old_samples_leave_the_window_and_the_ring_stays_bounded() -> None:
    h = TelemetryHistory(window_s=10, resolution_s=1.0)
    for i in range(100):
        h.record(state(i % 10, price_out=0.4 + i), 1000.0 + i)
    series = h.series("f1", now=1099.0)
    assert series is not None
    assert series.columns["t"] == [1000.0 + i for i in range(89, 100)]
    assert series.columns["price_out"][-1] == pytest.approx(99.4)


def test_unknown_and_forgotten_factories_have_no_history() -> None:
    h = TelemetryHistory()
    assert h.series("nope", now=0.0) is None
    h.record(state(1), 1.0)
    h.forget("f1")
    assert h.series("f1", now=1.0) is None
