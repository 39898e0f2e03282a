"""Conversions between the wire contract (``tdn.v1`` protobuf messages) and domain types.

Both the control plane and the sidecar use these, so a field means the same thing at both ends.
Messages are converted once, at the edge; nothing inside TDN handles protobuf objects.
"""

from __future__ import annotations

from tdn.domain import (
    DataPlaneSettings,
    Energy,
    FactoryEndpoint,
    FactoryLoad,
    FactorySpec,
    OutlierDetection,
    Price,
    Route,
    SitePolicy,
    Tier,
    ValidationFailure,
    WeightedFactory,
)
from tdn.v1 import common_pb2, discovery_pb2, telemetry_pb2

_TIER_TO_PB = {
    Tier.CENTER: common_pb2.TIER_CENTER,
    Tier.EDGE: common_pb2.TIER_EDGE,
    Tier.ON_SITE: common_pb2.TIER_ON_SITE,
}
_TIER_FROM_PB = {v: k for k, v in _TIER_TO_PB.items()}


def tier_to_pb(tier: Tier) -> common_pb2.Tier.ValueType:
    return _TIER_TO_PB[tier]


def tier_from_pb(value: int) -> Tier:
    try:
        return _TIER_FROM_PB[value]  # type: ignore[index]
    except KeyError:
        raise ValidationFailure(
            "bad_tier", f"tier {value} is not center, edge or on-site"
        ) from None


def price_to_pb(price: Price) -> common_pb2.Price:
    return common_pb2.Price(
        input_per_mtok=price.input_per_mtok,
        output_per_mtok=price.output_per_mtok,
        cached_input_per_mtok=price.cached_input_per_mtok,
        currency=price.currency,
    )


def price_from_pb(msg: common_pb2.Price) -> Price:
    return Price(
        input_per_mtok=msg.input_per_mtok,
        output_per_mtok=msg.output_per_mtok,
        cached_input_per_mtok=msg.cached_input_per_mtok,
        currency=msg.currency or "USD",
    )


def energy_to_pb(energy: Energy) -> common_pb2.Energy:
    return common_pb2.Energy(
        watts=energy.watts,
        tokens_per_joule=energy.tokens_per_joule,
        grid_gco2_per_kwh=energy.grid_gco2_per_kwh,
        electricity_price_per_kwh=energy.electricity_price_per_kwh,
    )


def energy_from_pb(msg: common_pb2.Energy) -> Energy:
    return Energy(
        watts=msg.watts,
        tokens_per_joule=msg.tokens_per_joule,
        grid_gco2_per_kwh=msg.grid_gco2_per_kwh,
        electricity_price_per_kwh=msg.electricity_price_per_kwh,
    )


def spec_to_identity(spec: FactorySpec) -> telemetry_pb2.FactoryIdentity:
    return telemetry_pb2.FactoryIdentity(
        id=spec.id,
        tier=tier_to_pb(spec.tier),
        region=spec.region,
        compliance_zone=spec.compliance_zone,
        models=list(spec.models),
        endpoint=spec.endpoint,
        site=spec.site,
        supports_prefill=spec.supports_prefill,
        failure_domain=spec.failure_domain,
    )


def report_to_domain(report: telemetry_pb2.TelemetryReport) -> tuple[FactorySpec, FactoryLoad]:
    """Convert and validate a telemetry report; raise :class:`ValidationFailure` if it is bad."""
    ident = report.identity
    spec = FactorySpec(
        id=ident.id,
        tier=tier_from_pb(ident.tier),
        region=ident.region,
        compliance_zone=ident.compliance_zone,
        endpoint=ident.endpoint,
        models=tuple(ident.models),
        price=price_from_pb(report.price),
        energy=energy_from_pb(report.energy),
        max_concurrency=report.capacity.max_concurrency,
        max_output_tokens_per_second=report.capacity.max_output_tokens_per_second,
        site=ident.site,
        supports_prefill=ident.supports_prefill,
        failure_domain=ident.failure_domain,
    )
    spec.validate()
    load = FactoryLoad(
        running=report.load.running,
        waiting=report.load.waiting,
        kv_cache_usage=report.load.kv_cache_usage,
        ttft_p50_s=report.latency.ttft_p50_seconds,
        ttft_p99_s=report.latency.ttft_p99_seconds,
        itl_p50_s=report.latency.itl_p50_seconds,
        itl_p99_s=report.latency.itl_p99_seconds,
        prompt_tokens_total=report.load.prompt_tokens_total,
        generation_tokens_total=report.load.generation_tokens_total,
    )
    load.validate()
    return spec, load


def _weighted_to_pb(items: tuple[WeightedFactory, ...]) -> list[discovery_pb2.WeightedFactory]:
    return [discovery_pb2.WeightedFactory(factory_id=w.factory_id, weight=w.weight) for w in items]


def _weighted_from_pb(items: object) -> tuple[WeightedFactory, ...]:
    return tuple(WeightedFactory(w.factory_id, w.weight) for w in items)  # type: ignore[attr-defined]


def settings_to_pb(s: DataPlaneSettings) -> discovery_pb2.DataPlaneSettings:
    o = s.outlier
    return discovery_pb2.DataPlaneSettings(
        first_byte_timeout_seconds=s.first_byte_timeout_s,
        stream_idle_timeout_seconds=s.stream_idle_timeout_s,
        continuation_enabled=s.continuation_enabled,
        retry_budget_percent=s.retry_budget_percent,
        retry_budget_min_concurrency=s.retry_budget_min_concurrency,
        slow_first_byte_seconds=s.slow_first_byte_s,
        outlier_detection=discovery_pb2.OutlierDetection(
            consecutive_failures=o.consecutive_failures,
            failure_rate_threshold=o.failure_rate_threshold,
            minimum_requests=o.minimum_requests,
            interval_seconds=o.interval_s,
            base_ejection_seconds=o.base_ejection_s,
            max_ejection_seconds=o.max_ejection_s,
            max_ejection_percent=o.max_ejection_percent,
            panic_threshold_percent=o.panic_threshold_percent,
            probe_interval_seconds=o.probe_interval_s,
        ),
    )


def settings_from_pb(msg: discovery_pb2.DataPlaneSettings) -> DataPlaneSettings:
    o = msg.outlier_detection
    return DataPlaneSettings(
        first_byte_timeout_s=msg.first_byte_timeout_seconds,
        stream_idle_timeout_s=msg.stream_idle_timeout_seconds,
        continuation_enabled=msg.continuation_enabled,
        retry_budget_percent=msg.retry_budget_percent,
        retry_budget_min_concurrency=msg.retry_budget_min_concurrency,
        slow_first_byte_s=msg.slow_first_byte_seconds,
        outlier=OutlierDetection(
            consecutive_failures=o.consecutive_failures,
            failure_rate_threshold=o.failure_rate_threshold,
            minimum_requests=o.minimum_requests,
            interval_s=o.interval_seconds,
            base_ejection_s=o.base_ejection_seconds,
            max_ejection_s=o.max_ejection_seconds,
            max_ejection_percent=o.max_ejection_percent,
            panic_threshold_percent=o.panic_threshold_percent,
            probe_interval_s=o.probe_interval_seconds,
        ),
    )


def site_policy_to_pb(policy: SitePolicy) -> discovery_pb2.SitePolicy:
    msg = discovery_pb2.SitePolicy(
        site=policy.site,
        version=policy.version,
        plan_reason=policy.plan_reason,
        settings=settings_to_pb(policy.settings),
        factories=[
            discovery_pb2.FactoryEndpoint(
                id=f.id,
                tier=tier_to_pb(f.tier),
                region=f.region,
                failure_domain=f.failure_domain,
                base_url=f.base_url,
                supports_prefill=f.supports_prefill,
                ttft_p99_seconds=f.ttft_p99_s,
                credential_ref=f.credential_ref,
                price=price_to_pb(f.price),
            )
            for f in policy.factories
        ],
        routes=[
            discovery_pb2.Route(
                model=r.model,
                traffic_class=r.traffic_class,
                primary=_weighted_to_pb(r.primary),
                backups=[
                    discovery_pb2.BackupLevel(factories=_weighted_to_pb(b)) for b in r.backups
                ],
                context_fallback_model=r.context_fallback_model,
                first_byte_timeout_seconds=r.first_byte_timeout_s,
            )
            for r in policy.routes
        ],
    )
    msg.generated_at.FromNanoseconds(int(policy.generated_at * 1e9))
    return msg


def site_policy_from_pb(msg: discovery_pb2.SitePolicy) -> SitePolicy:
    """Convert a received policy; raise ValueError (NACK-worthy) when it is not usable."""
    policy = SitePolicy(
        site=msg.site,
        version=msg.version,
        plan_reason=msg.plan_reason,
        generated_at=msg.generated_at.ToNanoseconds() / 1e9,
        settings=settings_from_pb(msg.settings),
        factories=tuple(
            FactoryEndpoint(
                id=f.id,
                tier=tier_from_pb(f.tier),
                region=f.region,
                failure_domain=f.failure_domain,
                base_url=f.base_url,
                supports_prefill=f.supports_prefill,
                ttft_p99_s=f.ttft_p99_seconds,
                credential_ref=f.credential_ref,
                price=price_from_pb(f.price),
            )
            for f in msg.factories
        ),
        routes=tuple(
            Route(
                model=r.model,
                traffic_class=r.traffic_class or "default",
                primary=_weighted_from_pb(r.primary),
                backups=tuple(_weighted_from_pb(b.factories) for b in r.backups),
                context_fallback_model=r.context_fallback_model,
                first_byte_timeout_s=r.first_byte_timeout_seconds,
            )
            for r in msg.routes
        ),
    )
    policy.check()
    return policy
