"""TDN's domain types: small frozen values shared by the control plane, the solver and the sidecar.

Protobuf messages live only at the edges (see :mod:`tdn.wire`); everything inside TDN speaks these
types, so that the pure core (:mod:`tdn.topology`) can be tested with plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Tier(StrEnum):
    """Where a token factory runs."""

    CENTER = "center"
    EDGE = "edge"
    ON_SITE = "on-site"


class Health(StrEnum):
    """What the control plane believes about a factory right now."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    # No valid telemetry within the TTL. Never routed to as if healthy.
    UNKNOWN = "unknown"


class AdminState(StrEnum):
    """What the operator has said about a factory."""

    ACTIVE = "active"
    CORDONED = "cordoned"
    DRAINED = "drained"


class ValidationFailure(ValueError):
    """A value from outside (telemetry, config) that TDN refuses; ``reason`` is a short label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _finite_non_negative(name: str, value: float) -> None:
    if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ValidationFailure("not_finite", f"{name} is {value!r}")
    if value < 0:
        raise ValidationFailure("negative", f"{name} is {value!r}")


@dataclass(frozen=True, slots=True)
class Price:
    """Price per one million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float = 0.0
    currency: str = "USD"

    def validate(self) -> None:
        _finite_non_negative("price.input_per_mtok", self.input_per_mtok)
        _finite_non_negative("price.output_per_mtok", self.output_per_mtok)
        _finite_non_negative("price.cached_input_per_mtok", self.cached_input_per_mtok)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """What a request with these token counts costs at this price."""
        uncached = max(prompt_tokens - cached_tokens, 0)
        return (
            uncached * self.input_per_mtok
            + cached_tokens * self.cached_input_per_mtok
            + completion_tokens * self.output_per_mtok
        ) / 1e6


@dataclass(frozen=True, slots=True)
class Energy:
    """Energy profile of a factory."""

    watts: float = 0.0
    tokens_per_joule: float = 0.0
    grid_gco2_per_kwh: float = 0.0
    electricity_price_per_kwh: float = 0.0

    def validate(self) -> None:
        _finite_non_negative("energy.watts", self.watts)
        _finite_non_negative("energy.tokens_per_joule", self.tokens_per_joule)
        _finite_non_negative("energy.grid_gco2_per_kwh", self.grid_gco2_per_kwh)
        _finite_non_negative("energy.electricity_price_per_kwh", self.electricity_price_per_kwh)

    def gco2_per_mtok(self) -> float:
        """Grams of CO2 per one million output tokens; 0 when the profile is unknown."""
        if self.tokens_per_joule <= 0:
            return 0.0
        joules = 1e6 / self.tokens_per_joule
        return joules / 3.6e6 * self.grid_gco2_per_kwh

    def energy_cost_per_mtok(self) -> float:
        """Electricity cost per one million output tokens."""
        if self.tokens_per_joule <= 0:
            return 0.0
        return 1e6 / self.tokens_per_joule / 3.6e6 * self.electricity_price_per_kwh


@dataclass(frozen=True, slots=True)
class FactorySpec:
    """The static description of a token factory, as its agent reports it."""

    id: str
    tier: Tier
    region: str
    compliance_zone: str
    endpoint: str
    models: tuple[str, ...]
    price: Price
    energy: Energy = field(default_factory=Energy)
    max_concurrency: int = 64
    max_output_tokens_per_second: float = 0.0
    site: str = ""
    supports_prefill: bool = False
    failure_domain: str = ""

    @property
    def domain(self) -> str:
        """The failure domain backups must differ in: the region plus any finer domain."""
        return f"{self.region}/{self.failure_domain}" if self.failure_domain else self.region

    def validate(self) -> None:
        """Raise :class:`ValidationFailure` when the spec cannot be routed to safely."""
        if not self.id:
            raise ValidationFailure("missing_id", "factory id is empty")
        if not self.models:
            raise ValidationFailure("no_models", f"factory {self.id} serves no model")
        if not self.endpoint:
            raise ValidationFailure("missing_endpoint", f"factory {self.id} has no endpoint")
        if not self.region:
            raise ValidationFailure("missing_region", f"factory {self.id} has no region")
        if self.max_concurrency <= 0:
            raise ValidationFailure(
                "bad_capacity", f"factory {self.id} max_concurrency is {self.max_concurrency}"
            )
        _finite_non_negative("capacity.max_output_tokens_per_second",
                             self.max_output_tokens_per_second)
        if self.tier is Tier.ON_SITE and not self.site:
            raise ValidationFailure("missing_site", f"on-site factory {self.id} names no site")
        self.price.validate()
        self.energy.validate()


@dataclass(frozen=True, slots=True)
class FactoryLoad:
    """A factory's load and observed latency at one moment."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    ttft_p50_s: float = 0.0
    ttft_p99_s: float = 0.0
    itl_p50_s: float = 0.0
    itl_p99_s: float = 0.0
    prompt_tokens_total: float = 0.0
    generation_tokens_total: float = 0.0

    def validate(self) -> None:
        if self.running < 0 or self.waiting < 0:
            raise ValidationFailure(
                "negative", f"load running={self.running} waiting={self.waiting}"
            )
        for name in ("kv_cache_usage", "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s",
                     "prompt_tokens_total", "generation_tokens_total"):
            _finite_non_negative(f"load.{name}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class FactoryState:
    """What the control plane knows about one factory: spec, load, health and operator state."""

    spec: FactorySpec
    load: FactoryLoad
    health: Health
    admin: AdminState = AdminState.ACTIVE
    last_report: float = 0.0  # wall-clock seconds
    reason: str = ""

    @property
    def routable(self) -> bool:
        return self.health is Health.HEALTHY and self.admin is not AdminState.DRAINED


@dataclass(frozen=True, slots=True)
class Site:
    """A consumer site: where applications and their sidecar run.

    ``rtt_ms`` maps a region to the round-trip time from this site to factories there.
    """

    id: str
    region: str
    compliance_zone: str
    rtt_ms: tuple[tuple[str, float], ...] = ()
    # Compliance zones this site's traffic may be served in. Empty: its own zone, plus its own
    # on-site zone ("on-site:<id>"). A tenant policy can narrow this further.
    allowed_zones: tuple[str, ...] = ()

    def zones(self) -> tuple[str, ...]:
        return self.allowed_zones or (self.compliance_zone, f"on-site:{self.id}")

    def rtt_to(self, region: str, default_ms: float = 150.0) -> float:
        for name, rtt in self.rtt_ms:
            if name == region:
                return rtt
        return 0.5 if region == self.region else default_ms


@dataclass(frozen=True, slots=True)
class Demand:
    """Traffic from one site for one model and traffic class, in requests per second."""

    site: str
    model: str
    traffic_class: str = "default"
    rate_rps: float = 1.0
    # Mean tokens per request, to turn a rate into output tokens per second.
    prompt_tokens: float = 1000.0
    output_tokens: float = 200.0
    ttft_slo_s: float = 2.0
    allowed_zones: tuple[str, ...] = ()  # empty: any zone the site itself may use


@dataclass(frozen=True, slots=True)
class WeightedFactory:
    factory_id: str
    weight: float


@dataclass(frozen=True, slots=True)
class Route:
    """How one (model, traffic class) is routed from a site: primaries, then backup levels."""

    model: str
    traffic_class: str
    primary: tuple[WeightedFactory, ...]
    backups: tuple[tuple[WeightedFactory, ...], ...] = ()
    # Model to use instead when the request exceeds this model's context length.
    context_fallback_model: str = ""
    # First-byte deadline for this route (seconds); 0 = the site's DataPlaneSettings default.
    first_byte_timeout_s: float = 0.0

    def factory_ids(self) -> tuple[str, ...]:
        ids = [w.factory_id for w in self.primary]
        for level in self.backups:
            ids.extend(w.factory_id for w in level)
        return tuple(ids)


@dataclass(frozen=True, slots=True)
class FactoryEndpoint:
    """A factory as a sidecar needs to know it."""

    id: str
    tier: Tier
    region: str
    failure_domain: str
    base_url: str
    supports_prefill: bool = False
    ttft_p99_s: float = 0.0
    credential_ref: str = ""
    price: Price = field(default_factory=lambda: Price(0.0, 0.0))


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """When a sidecar ejects a factory (Envoy's semantics); 0 means the sidecar's default."""

    consecutive_failures: int = 0
    failure_rate_threshold: float = 0.0
    minimum_requests: int = 0
    interval_s: float = 0.0
    base_ejection_s: float = 0.0
    max_ejection_s: float = 0.0
    max_ejection_percent: float = 0.0
    panic_threshold_percent: float = 0.0
    probe_interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class DataPlaneSettings:
    """How a site's sidecars behave on failure; 0 / False means the sidecar's default."""

    first_byte_timeout_s: float = 0.0
    stream_idle_timeout_s: float = 0.0
    continuation_enabled: bool = False
    retry_budget_percent: float = 0.0
    retry_budget_min_concurrency: int = 0
    outlier: OutlierDetection = field(default_factory=OutlierDetection)
    # A factory slow to start this sidecar's streams right now is passed over for new ones.
    slow_first_byte_s: float = 0.0


class PolicyInconsistent(ValueError):
    """A site policy refers to a factory it does not ship."""


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """The routing policy one site's sidecars run: consistent by construction (see check)."""

    site: str
    version: str
    factories: tuple[FactoryEndpoint, ...]
    routes: tuple[Route, ...]
    generated_at: float = 0.0
    plan_reason: str = ""
    settings: DataPlaneSettings = field(default_factory=DataPlaneSettings)

    def check(self) -> None:
        """Raise :class:`PolicyInconsistent` unless the policy is safe to route on: a version,
        routes naming only shipped factories, finite non-negative weights summing to 1."""
        if not self.version:
            raise PolicyInconsistent("policy has no version")
        shipped = {f.id for f in self.factories}
        routed = {r.model for r in self.routes}
        for route in self.routes:
            weights = [w.weight for w in route.primary]
            weights += [w.weight for level in route.backups for w in level]
            if any(not math.isfinite(w) or w < 0 for w in weights):
                raise PolicyInconsistent(
                    f"route {route.model}/{route.traffic_class} has a negative or non-finite "
                    f"weight"
                )
            if route.context_fallback_model and route.context_fallback_model not in routed:
                raise PolicyInconsistent(
                    f"route {route.model}/{route.traffic_class} falls back to unrouted model "
                    f"{route.context_fallback_model!r}"
                )
            missing = [fid for fid in route.factory_ids() if fid not in shipped]
            if missing:
                raise PolicyInconsistent(
                    f"route {route.model}/{route.traffic_class} refers to unshipped "
                    f"factories {missing}"
                )
            total = sum(w.weight for w in route.primary)
            if route.primary and not math.isclose(total, 1.0, abs_tol=1e-6):
                raise PolicyInconsistent(
                    f"route {route.model}/{route.traffic_class} primary weights sum to {total}"
                )

    def route_for(self, model: str, traffic_class: str = "default") -> Route | None:
        fallback: Route | None = None
        for route in self.routes:
            if route.model == model:
                if route.traffic_class == traffic_class:
                    return route
                if fallback is None or route.traffic_class == "default":
                    fallback = route
        return fallback

    def endpoint(self, factory_id: str) -> FactoryEndpoint | None:
        for f in self.factories:
            if f.id == factory_id:
                return f
        return None


@dataclass(frozen=True, slots=True)
class Plan:
    """A solved routing plan: one route per (site, model, class), plus how it was reached."""

    version: int
    routes: tuple[tuple[str, Route], ...]  # (site, route)
    status: str
    objective: float = 0.0
    solve_seconds: float = 0.0
    # (site, model, class, factory_id) -> short reason the factory was not eligible.
    exclusions: tuple[tuple[str, str, str, str, str], ...] = ()

    def routes_for_site(self, site: str) -> tuple[Route, ...]:
        return tuple(r for s, r in self.routes if s == site)
