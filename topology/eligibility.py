"""Which factories may serve a demand, and the named reason each other factory may not.

These are the solver's hard constraints, kept apart from the optimisation so that the operator
API can say *why* a factory is not in a route in the same words the solver used. Reasons are
checked in a fixed order and the first that applies is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdn.domain import AdminState, Demand, FactoryState, Health, Site, Tier
from tdn.topology.estimates import ttft_estimate_s

DOES_NOT_SERVE_MODEL = "does not serve model"
HEALTH_UNKNOWN = "health unknown"
UNHEALTHY = "unhealthy"
DRAINED = "drained"
AT_CAPACITY = "at capacity"
# Not an exclusion from the route: a cordoned factory takes no new primary traffic but may still
# catch failovers (operator.proto, FACTORY_ADMIN_STATE_CORDONED).
CORDONED = "cordoned (backup only)"


def zone_not_allowed(zone: str, site: str) -> str:
    return f"zone {zone} not allowed for site {site}"


def slo_exceeded(estimate_s: float, slo_s: float) -> str:
    return f"ttft estimate {estimate_s:.2f} s exceeds SLO {slo_s:.2f} s"


def unknown_site(site: str) -> str:
    return f"site {site} unknown"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a factory may serve a demand as a primary, as a backup, or not at all (and why)."""

    factory_id: str
    may_be_primary: bool
    may_be_backup: bool
    # Empty when the factory may be a primary; otherwise why it is limited or excluded.
    reason: str = ""
    ttft_estimate_s: float = 0.0


def allowed_zones(demand: Demand, site: Site) -> tuple[str, ...]:
    """The compliance zones the demand may be served in: the site's, narrowed by the demand's."""
    zones = site.zones()
    if demand.allowed_zones:
        zones = tuple(z for z in zones if z in demand.allowed_zones)
    return zones


def zone_allowed(factory: FactoryState, site: Site, demand: Demand | None = None) -> bool:
    """Whether residency lets the site's (and the demand's) traffic be served at the factory."""
    spec = factory.spec
    # An on-site factory serves only its own site, whatever zones a site claims: it must never
    # carry another site's data, and zone names could collide by misconfiguration.
    if spec.tier is Tier.ON_SITE and spec.site != site.id:
        return False
    zones = allowed_zones(demand, site) if demand is not None else site.zones()
    return spec.compliance_zone in zones


def _excluded(factory: FactoryState, reason: str, estimate_s: float = 0.0) -> Verdict:
    return Verdict(factory.spec.id, False, False, reason, estimate_s)


def _saturated(factory: FactoryState) -> bool:
    # Every slot busy and a queue forming: sending more only lengthens the queue. Planned load
    # is bounded by the capacity constraint; this catches load the plan did not put there.
    load = factory.load
    return load.running >= factory.spec.max_concurrency and load.waiting > 0


def judge(demand: Demand, factory: FactoryState, site: Site | None) -> Verdict:
    """Decide whether ``factory`` may serve ``demand`` from ``site`` (None: the site is unknown)."""
    spec = factory.spec
    if site is None:
        return _excluded(factory, unknown_site(demand.site))
    if demand.model not in spec.models:
        return _excluded(factory, DOES_NOT_SERVE_MODEL)
    if factory.health is Health.UNKNOWN:
        return _excluded(factory, HEALTH_UNKNOWN)
    if factory.health is not Health.HEALTHY:
        return _excluded(factory, UNHEALTHY)
    if factory.admin is AdminState.DRAINED:
        return _excluded(factory, DRAINED)
    if not zone_allowed(factory, site, demand):
        return _excluded(factory, zone_not_allowed(spec.compliance_zone, site.id))
    estimate = ttft_estimate_s(demand, factory, site)
    if estimate > demand.ttft_slo_s:
        return _excluded(factory, slo_exceeded(estimate, demand.ttft_slo_s), estimate)
    if _saturated(factory):
        return _excluded(factory, AT_CAPACITY, estimate)
    if factory.admin is AdminState.CORDONED:
        return Verdict(spec.id, False, True, CORDONED, estimate)
    return Verdict(spec.id, True, True, "", estimate)
