"""The factory registry on its own, with an injected clock: health from reports, TTL and
refusals; admin states; and which changes are significant enough to trigger a solve."""

from __future__ import annotations

import pytest
from controlplane_support import EU_1, EU_2, nan_price, report

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.registry import Change, ChangeKind, FactoryRegistry, UnknownFactory
from tdn.domain import AdminState, Health, Price


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[Change]:
    return []


@pytest.fixture
def registry(clock: Clock, changes: list[Change]) -> FactoryRegistry:
    return FactoryRegistry(ttl=3.0, metrics=ControlPlaneMetrics(), clock=clock,
                           on_change=changes.append)


def test_a_valid_report_makes_a_new_healthy_factory_and_announces_it(
        registry: FactoryRegistry, changes: list[Change]) -> None:
    result = registry.apply_report(report(EU_1))
    assert result.accepted and result.factory_id == "eu-1"
    state = registry.get("eu-1")
    assert state is not None and state.health is Health.HEALTHY and state.routable
    assert [c.kind for c in changes] == [ChangeKind.NEW_FACTORY]


def test_silence_past_the_ttl_is_unknown_and_a_sweep_announces_it_once(
        registry: FactoryRegistry, clock: Clock, changes: list[Change]) -> None:
    registry.apply_report(report(EU_1))
    clock.now += 3.0
    assert registry.sweep() == []  # exactly the TTL is still within it
    clock.now += 0.1
    swept = registry.sweep()
    assert [c.kind for c in swept] == [ChangeKind.HEALTH]
    state = registry.get("eu-1")
    assert state is not None and state.health is Health.UNKNOWN and not state.routable
    assert "no telemetry" in state.reason
    assert registry.sweep() == []
    registry.apply_report(report(EU_1, seq=2))
    assert registry.get("eu-1").health is Health.HEALTHY  # type: ignore[union-attr]
    assert [c.kind for c in changes][-1] is ChangeKind.HEALTH


def test_a_refused_report_keeps_the_last_state_but_makes_it_unroutable(
        registry: FactoryRegistry) -> None:
    registry.apply_report(report(EU_1))
    result = registry.apply_report(report(EU_1, seq=2, price=nan_price(EU_1)))
    assert not result.accepted and "not_finite" in result.reason
    state = registry.get("eu-1")
    assert state is not None
    assert state.health is Health.UNHEALTHY and not state.routable
    assert state.reason.startswith("rejected telemetry: not_finite")
    assert state.spec.price == EU_1.price  # the last good values are still shown


def test_a_refused_first_report_registers_nothing(registry: FactoryRegistry) -> None:
    result = registry.apply_report(report(EU_2, max_concurrency=-1))
    assert not result.accepted
    assert registry.get("eu-2") is None and registry.states() == ()


def test_price_moves_are_left_to_the_periodic_solve_but_model_changes_are_significant(
        registry: FactoryRegistry, changes: list[Change]) -> None:
    registry.apply_report(report(EU_1))
    changes.clear()
    registry.apply_report(report(EU_1, seq=2, price=Price(0.2, 0.9)))
    assert changes == []
    registry.apply_report(report(EU_1, seq=3, models=("other-model",)))
    assert [c.kind for c in changes] == [ChangeKind.SPEC]


def test_admin_states_apply_to_known_factories_and_outlive_silence(
        registry: FactoryRegistry, clock: Clock, changes: list[Change]) -> None:
    registry.apply_report(report(EU_1))
    with pytest.raises(UnknownFactory, match=r"'nope'.*eu-1"):
        registry.set_admin("nope", AdminState.DRAINED)
    state = registry.set_admin("eu-1", AdminState.DRAINED)
    assert state.admin is AdminState.DRAINED and not state.routable
    assert changes[-1].kind is ChangeKind.ADMIN
    changes.clear()
    registry.set_admin("eu-1", AdminState.DRAINED)
    assert changes == []  # no change, no solve
    clock.now += 10
    registry.apply_report(report(EU_1, seq=2))
    assert registry.get("eu-1").admin is AdminState.DRAINED  # type: ignore[union-attr]
    assert registry.admin_states() == {"eu-1": AdminState.DRAINED}


def test_rejections_are_counted_by_reason(clock: Clock) -> None:
    metrics = ControlPlaneMetrics()
    registry = FactoryRegistry(ttl=3.0, metrics=metrics, clock=clock)
    registry.apply_report(report(EU_1, max_concurrency=0))
    registry.apply_report(report(EU_1, max_concurrency=-5))
    registry.apply_report(report(EU_1, region=""))
    assert metrics.registry.get_sample_value(
        "tdn_telemetry_rejected_total", {"reason": "bad_capacity"}) == 2.0
    assert metrics.registry.get_sample_value(
        "tdn_telemetry_rejected_total", {"reason": "missing_region"}) == 1.0
