"""The operator's routing policy (``apiVersion: tdn/v1``, ``kind: Policy``) as frozen values.

A policy says what the solver optimises (objective weights, tier preferences), how cautious it is
(capacity headroom, churn penalty, backup depth and failure-domain rule, time limit), which hard
rules each demand group obeys (traffic-class SLOs per model, tenants' allowed compliance zones,
price caps), how clients' model names map onto served models (aliases, context fallbacks) and how
sidecars behave on failure (:class:`~tdn.domain.DataPlaneSettings`). Values are frozen and made
of tuples, so a policy can be hashed, compared and diffed; :mod:`tdn.policy_parse` builds them
from YAML with file/line/key errors and :mod:`tdn.policy_canonical` writes them back.

The kernel holds the schema and its lookups only; the solver (``tdn.topology``) turns a policy
into solve options and per-group requirements, the control plane stores and applies it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tdn.domain import DataPlaneSettings, Tier

API_VERSION = "tdn/v1"
KIND = "Policy"
DEFAULT_CLASS = "default"
# A zone of the form "on-site:<site>" is the building of that consumer site.
ON_SITE_ZONE_PREFIX = "on-site:"


class BackupDomain(StrEnum):
    """What two backup levels must differ in: the region, or the finer failure domain."""

    REGION = "region"
    FAILURE_DOMAIN = "failure_domain"


@dataclass(frozen=True, slots=True)
class Objective:
    """Weights on the solver's normalised cost terms (see ``tdn.topology.costs`` for units)."""

    price: float = 1.0
    latency: float = 1.0
    carbon: float = 1.0
    energy: float = 1.0


@dataclass(frozen=True, slots=True)
class Slo:
    """Latency objectives of a request; None means no objective on that measure."""

    ttft_s: float | None = None
    per_token_s: float | None = None

    def over(self, base: Slo) -> Slo:
        """This SLO with ``base`` filling what this one leaves open."""
        return Slo(
            ttft_s=self.ttft_s if self.ttft_s is not None else base.ttft_s,
            per_token_s=self.per_token_s if self.per_token_s is not None else base.per_token_s,
        )


@dataclass(frozen=True, slots=True)
class TrafficClass:
    """A class of traffic (interactive, batch, ...): SLOs, per-model overrides, a price cap."""

    name: str
    slo: Slo = field(default_factory=Slo)
    # (model, SLO) pairs sorted by model; each overrides the class SLO for that model.
    model_slos: tuple[tuple[str, Slo], ...] = ()
    max_output_price_per_mtok: float | None = None

    def slo_for(self, model: str) -> Slo:
        for name, slo in self.model_slos:
            if name == model:
                return slo.over(self.slo)
        return self.slo


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who sends traffic from which sites, and where that traffic may be served.

    Routes are per (site, model, class), not per tenant, so a tenant's zones and price cap bind
    every route its traffic can take: those of its sites (all sites when ``sites`` is empty) and
    of its classes (all classes when ``classes`` is empty).
    """

    name: str
    zones: tuple[str, ...]
    sites: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    max_output_price_per_mtok: float | None = None

    def applies_to(self, site: str, traffic_class: str) -> bool:
        return ((not self.sites or site in self.sites)
                and (not self.classes or traffic_class in self.classes))


@dataclass(frozen=True, slots=True)
class ModelRule:
    """How clients' names reach a served model, and where to go when its context is too short."""

    name: str
    aliases: tuple[str, ...] = ()
    # Model to retry with when a factory answers that the request exceeds this model's context.
    context_fallback: str = ""
    # First-byte deadline for this model's routes, seconds; 0 means the site default.
    first_byte_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Backups:
    depth: int = 2
    domain: BackupDomain = BackupDomain.FAILURE_DOMAIN


@dataclass(frozen=True, slots=True)
class ResolveThresholds:
    """Relative changes since the last solve that warrant solving now rather than at the tick."""

    price_change: float = 0.10
    load_change: float = 0.25
    demand_change: float = 0.25


@dataclass(frozen=True, slots=True)
class SolverSettings:
    time_limit_s: float = 2.0
    resolve_on: ResolveThresholds = field(default_factory=ResolveThresholds)


@dataclass(frozen=True, slots=True)
class DemandSettings:
    """How observed traffic becomes the demand the solver plans for."""

    # Half-life of the exponential smoothing of observed request rates.
    half_life_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Policy:
    """One complete routing policy; every field has the default an empty policy means."""

    name: str = "default"
    description: str = ""
    objective: Objective = field(default_factory=Objective)
    # (tier, cost factor) sorted by tier: 1 is neutral, 0.8 a 20% bonus, 1.5 a 50% penalty.
    tier_factors: tuple[tuple[Tier, float], ...] = ()
    capacity_headroom: float = 0.2
    queueing_steepness: float = 0.1
    # The chance per factory that a request's queueing wait breaks its TTFT SLO at the planned
    # load (M/M/c): what bounds planned load below the headroom. 1 turns the bound off.
    slo_miss_target: float = 0.01
    # The largest share of a route one factory carries when the route has enough eligible
    # factories (else an equal split over them): a burst or a failure hits part of it only.
    max_primary_share: float = 0.34
    # Keep a factory that is the only one some traffic may use (on-site, residency) for that
    # traffic: other routes use it as a backup only.
    reserve_sole_factories: bool = True
    churn_penalty: float = 0.1
    backups: Backups = field(default_factory=Backups)
    solver: SolverSettings = field(default_factory=SolverSettings)
    demand: DemandSettings = field(default_factory=DemandSettings)
    classes: tuple[TrafficClass, ...] = ()
    tenants: tuple[Tenant, ...] = ()
    models: tuple[ModelRule, ...] = ()
    dataplane: DataPlaneSettings = field(default_factory=DataPlaneSettings)

    # --- lookups the solver and the control plane share ---------------------------------------

    def tier_factor(self, tier: Tier) -> float:
        for name, factor in self.tier_factors:
            if name is tier:
                return factor
        return 1.0

    def traffic_class(self, name: str) -> TrafficClass | None:
        return next((c for c in self.classes if c.name == name), None)

    def slo(self, traffic_class: str, model: str) -> Slo:
        """The class's SLO for ``model``; empty when the class is not in the policy."""
        tc = self.traffic_class(traffic_class)
        return tc.slo_for(model) if tc is not None else Slo()

    def tenants_for(self, site: str, traffic_class: str) -> tuple[Tenant, ...]:
        return tuple(t for t in self.tenants if t.applies_to(site, traffic_class))

    def model_rule(self, model: str) -> ModelRule | None:
        return next((m for m in self.models if m.name == model), None)

    def resolve_model(self, name: str) -> str:
        """The served model a client's ``name`` means (an alias's target, else the name)."""
        for rule in self.models:
            if name in rule.aliases:
                return rule.name
        return name


DEFAULT_POLICY = Policy()
