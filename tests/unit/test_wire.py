"""The wire conversions: what the control plane sends is what the sidecar reads, and a report
TDN must not route on is refused with a reason."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tdn.config import load_network
from tdn.domain import (
    DataPlaneSettings,
    FactoryEndpoint,
    OutlierDetection,
    PolicyInconsistent,
    Price,
    Route,
    SitePolicy,
    Tier,
    ValidationFailure,
    WeightedFactory,
)
from tdn.v1 import telemetry_pb2
from tdn.wire import report_to_domain, site_policy_from_pb, site_policy_to_pb, spec_to_identity


def _report(**overrides: object) -> telemetry_pb2.TelemetryReport:
    spec = load_network().factories[0].spec
    report = telemetry_pb2.TelemetryReport(identity=spec_to_identity(spec), seq=1,
                                           engine_reachable=True)
    report.capacity.max_concurrency = 32
    report.price.input_per_mtok = 0.1
    report.price.output_per_mtok = 0.4
    report.load.running = 3
    report.latency.ttft_p50_seconds = 0.2
    for path, value in overrides.items():
        msg, field = path.split(".")
        setattr(getattr(report, msg), field, value)
    return report


def test_valid_report_converts_to_spec_and_load() -> None:
    spec, load = report_to_domain(_report())
    assert spec.id == "center-se-1" and spec.tier is Tier.CENTER
    assert spec.max_concurrency == 32
    assert load.running == 3 and load.ttft_p50_s == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("capacity.max_concurrency", -1, "bad_capacity"),
        ("price.output_per_mtok", math.nan, "not_finite"),
        ("price.input_per_mtok", -0.5, "negative"),
        ("load.running", -2, "negative"),
        ("latency.ttft_p99_seconds", math.inf, "not_finite"),
        ("identity.tier", 0, "bad_tier"),
        ("identity.id", "", "missing_id"),
    ],
)
def test_garbage_report_is_refused_with_a_reason(field: str, value: object, reason: str) -> None:
    with pytest.raises(ValidationFailure) as err:
        report_to_domain(_report(**{field: value}))
    assert err.value.reason == reason


def _policy(routes: tuple[Route, ...]) -> SitePolicy:
    return SitePolicy(
        site="fra-office",
        version="7",
        factories=(
            FactoryEndpoint("a", Tier.EDGE, "eu-west", "eu-west/rack-a", "http://127.0.0.1:1/v1",
                            price=Price(0.3, 1.2)),
            FactoryEndpoint("b", Tier.CENTER, "eu-north", "eu-north", "http://127.0.0.1:2/v1",
                            supports_prefill=True, ttft_p99_s=0.4, price=Price(0.1, 0.4)),
        ),
        routes=routes,
        generated_at=1_700_000_000.5,
        plan_reason="optimal",
    )


def test_site_policy_survives_the_round_trip_through_protobuf() -> None:
    primary = (WeightedFactory("a", 0.25), WeightedFactory("b", 0.75))
    routes = (
        Route("m", "default", primary, ((WeightedFactory("b", 1.0),),),
              context_fallback_model="m-long", first_byte_timeout_s=1.5),
        Route("m-long", "default", (WeightedFactory("b", 1.0),)),
    )
    settings = DataPlaneSettings(
        first_byte_timeout_s=2.0, stream_idle_timeout_s=5.0, continuation_enabled=True,
        retry_budget_percent=20.0, retry_budget_min_concurrency=3, slow_first_byte_s=0.3,
        outlier=OutlierDetection(consecutive_failures=5, failure_rate_threshold=0.5,
                                 minimum_requests=10, interval_s=10.0, base_ejection_s=30.0,
                                 max_ejection_s=300.0, max_ejection_percent=50.0,
                                 panic_threshold_percent=50.0, probe_interval_s=2.0))
    policy = dataclasses.replace(_policy(routes), settings=settings)
    assert site_policy_from_pb(site_policy_to_pb(policy)) == policy


@pytest.mark.parametrize("weight", [-0.5, math.nan, math.inf])
def test_policy_with_a_bad_weight_is_refused(weight: float) -> None:
    route = Route("m", "default", (WeightedFactory("a", 1.0),), ((WeightedFactory("b", weight),),))
    with pytest.raises(PolicyInconsistent, match="weight"):
        _policy((route,)).check()


def test_policy_without_a_version_or_with_an_unrouted_fallback_is_refused() -> None:
    route = Route("m", "default", (WeightedFactory("a", 1.0),))
    with pytest.raises(PolicyInconsistent, match="version"):
        dataclasses.replace(_policy((route,)), version="").check()
    fallback = dataclasses.replace(route, context_fallback_model="m-long")
    with pytest.raises(PolicyInconsistent, match="m-long"):
        _policy((fallback,)).check()


def test_policy_naming_an_unshipped_factory_is_refused() -> None:
    policy = _policy((Route("m", "default", (WeightedFactory("ghost", 1.0),)),))
    with pytest.raises(PolicyInconsistent, match="ghost"):
        site_policy_from_pb(site_policy_to_pb(policy))


def test_policy_whose_primary_weights_do_not_sum_to_one_is_refused() -> None:
    policy = _policy((Route("m", "default", (WeightedFactory("a", 0.5),)),))
    with pytest.raises(PolicyInconsistent, match="sum"):
        site_policy_from_pb(site_policy_to_pb(policy))


def test_route_lookup_falls_back_to_the_default_class() -> None:
    default = Route("m", "default", (WeightedFactory("a", 1.0),))
    batch = Route("m", "batch", (WeightedFactory("b", 1.0),))
    policy = _policy((batch, default))
    assert policy.route_for("m", "batch") == batch
    assert policy.route_for("m", "interactive") == default
    assert policy.route_for("other") is None
