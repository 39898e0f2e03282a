"""Which factories may serve a demand, and the named reason each other factory may not.

These are the solver's hard constraints, kept apart from the optimisation so that the operator
API can say *why* a factory is not in a route in the same words the solver used. Reasons are
checked in a fixed order (:class:`Check`) and the first that applies is reported; the vectorised
twin in :mod:`tdn.topology.problem` applies the same checks in the same order, and a test holds
the two to the same verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from tdn.domain import AdminState, Demand, FactoryState, Health, Site, Tier
from tdn.topology.estimates import IDLE_UTILISATION, itl_s, ttft_estimate_s
from tdn.topology.requirements import Requirement, requirement, site_zones

DOES_NOT_SERVE_MODEL = "does not serve model"
HEALTH_UNKNOWN = "health unknown"
UNHEALTHY = "unhealthy"
DRAINED = "drained"
AT_CAPACITY = "at capacity"
# Not an exclusion from the route: a cordoned factory takes no new primary traffic but may still
# catch failovers (operator.proto, FACTORY_ADMIN_STATE_CORDONED).
CORDONED = "cordoned (backup only)"


class Check(IntEnum):
    """The verdict codes, in the order the checks are made (the first failing one is named)."""

    OK = 0
    CORDONED = 1
    UNKNOWN_SITE = 2
    NO_MODEL = 3
    HEALTH_UNKNOWN = 4
    UNHEALTHY = 5
    DRAINED = 6
    ZONE_SITE = 7
    ZONE_TENANT = 8
    PRICE_CAP = 9
    TTFT_SLO = 10
    PER_TOKEN_SLO = 11
    AT_CAPACITY = 12
    # Not judged per factory but per plan (tdn.topology.problem): the factory is the only one
    # some other traffic may use, so it is kept for that traffic and is a backup only here.
    RESERVED = 13


RESERVED_FOR_SOLE_TRAFFIC = ("reserved for traffic that may use no other factory "
                             "(a backup only for this route)")


def zone_not_allowed(zone: str, site: str) -> str:
    return f"zone {zone} not allowed for site {site}"


def zone_not_allowed_for_tenant(zone: str, tenant: str) -> str:
    return f"zone {zone} not allowed for tenant {tenant}"


def price_above_cap(price: float, cap: float, source: str) -> str:
    return f"output price ${price:g}/Mtok above cap ${cap:g}/Mtok ({source})"


def slo_exceeded(estimate_s: float, slo_s: float) -> str:
    return f"ttft estimate {estimate_s:.2f} s exceeds SLO {slo_s:.2f} s"


def per_token_exceeded(itl: float, slo_s: float) -> str:
    return f"per-token latency {itl:.3f} s exceeds SLO {slo_s:.3f} s"


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
    check: Check = Check.OK


def allowed_zones(demand: Demand, site: Site) -> tuple[str, ...]:
    """The compliance zones the demand may be served in: the site's, narrowed by the demand's."""
    return site_zones(demand, site)


def on_site_elsewhere(factory: FactoryState, site: Site) -> bool:
    # An on-site factory serves only its own site, whatever zones a site claims: it must never
    # carry another site's data, and zone names could collide by misconfiguration.
    return factory.spec.tier is Tier.ON_SITE and factory.spec.site != site.id


def zone_allowed(factory: FactoryState, site: Site, demand: Demand | None = None) -> bool:
    """Whether residency lets the site's (and the demand's) traffic be served at the factory."""
    if on_site_elsewhere(factory, site):
        return False
    zones = allowed_zones(demand, site) if demand is not None else site.zones()
    return factory.spec.compliance_zone in zones


def _excluded(factory: FactoryState, check: Check, reason: str,
              estimate_s: float = 0.0) -> Verdict:
    return Verdict(factory.spec.id, False, False, reason, estimate_s, check)


def saturated(factory: FactoryState, planned_load: float = 0.0) -> bool:
    """A queue at least as long as the factory's slots that the previous plan does not explain
    (it sent less than :data:`~.estimates.IDLE_UTILISATION` of the slots' worth of requests
    there, ``planned_load``): other traffic or a stalled engine fills it, and a request sent now
    would wait a whole request's duration or more before it even starts.

    Only such a departure from the model excludes. A queue the plan's own load causes now and
    then (Erlang C: at the SLO-safe load some requests wait; a burst makes more wait, briefly)
    is the queueing model's business; excluding the factory for it moved all its traffic away
    for a period and back the next, and a plan kept through a failure without a solve kept the
    exclusion for the whole failure.
    """
    slots = max(factory.spec.max_concurrency, 1)
    return factory.load.waiting >= slots and planned_load < IDLE_UTILISATION * slots


def judge(demand: Demand, factory: FactoryState, site: Site | None,
          req: Requirement | None = None, *, planned_load: float = 0.0) -> Verdict:
    """Decide whether ``factory`` may serve ``demand`` from ``site`` (None: the site is unknown)
    under ``req`` (default: the demand's own rules, no policy); ``planned_load`` is the previous
    plan's in-flight requests at the factory (:func:`~.estimates.planned_loads`)."""
    spec = factory.spec
    if site is None:
        return _excluded(factory, Check.UNKNOWN_SITE, unknown_site(demand.site))
    if req is None:
        req = requirement(demand, site)
    if demand.model not in spec.models:
        return _excluded(factory, Check.NO_MODEL, DOES_NOT_SERVE_MODEL)
    if factory.health is Health.UNKNOWN:
        return _excluded(factory, Check.HEALTH_UNKNOWN, HEALTH_UNKNOWN)
    if factory.health is not Health.HEALTHY:
        return _excluded(factory, Check.UNHEALTHY, UNHEALTHY)
    if factory.admin is AdminState.DRAINED:
        return _excluded(factory, Check.DRAINED, DRAINED)
    zone = spec.compliance_zone
    if on_site_elsewhere(factory, site) or zone not in req.site_zones:
        return _excluded(factory, Check.ZONE_SITE, zone_not_allowed(zone, site.id))
    tenant = req.tenant_refusing(zone)
    if tenant:
        return _excluded(factory, Check.ZONE_TENANT, zone_not_allowed_for_tenant(zone, tenant))
    if spec.price.output_per_mtok > req.max_output_price_per_mtok:
        return _excluded(factory, Check.PRICE_CAP, price_above_cap(
            spec.price.output_per_mtok, req.max_output_price_per_mtok, req.price_cap_source))
    estimate = ttft_estimate_s(demand, factory, site, planned_load)
    if estimate > req.ttft_slo_s:
        return _excluded(factory, Check.TTFT_SLO, slo_exceeded(estimate, req.ttft_slo_s),
                         estimate)
    if math.isfinite(req.per_token_slo_s) and itl_s(factory) > req.per_token_slo_s:
        return _excluded(factory, Check.PER_TOKEN_SLO,
                         per_token_exceeded(itl_s(factory), req.per_token_slo_s), estimate)
    if saturated(factory, planned_load):
        return _excluded(factory, Check.AT_CAPACITY, AT_CAPACITY, estimate)
    if factory.admin is AdminState.CORDONED:
        return Verdict(spec.id, False, True, CORDONED, estimate, Check.CORDONED)
    return Verdict(spec.id, True, True, "", estimate, Check.OK)
