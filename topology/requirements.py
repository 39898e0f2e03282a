"""The hard rules one demand group obeys: where it may be served, how fast, at what price.

They come from two places: the network's demand (its SLO and zone restriction) and the
operator's policy (the traffic class's SLOs for the model, the zones and price caps of every
tenant whose traffic the group carries). A route serves all of a group's requests alike, so the
strictest rule of anyone in the group binds the whole group; each rule keeps its source so that
an exclusion can name the tenant or class that caused it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tdn.domain import Demand, Site
from tdn.policy import DEFAULT_POLICY, Policy


@dataclass(frozen=True, slots=True)
class Requirement:
    """What a factory must satisfy to serve one (site, model, class) group."""

    # Zones the site allows, narrowed by the demand's own restriction.
    site_zones: tuple[str, ...]
    # (tenant, zones it allows) for every tenant whose traffic the group carries.
    tenant_zones: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ttft_slo_s: float = math.inf
    per_token_slo_s: float = math.inf
    max_output_price_per_mtok: float = math.inf
    # "class <name>" or "tenant <name>": who set the binding price cap.
    price_cap_source: str = ""

    def zones(self) -> frozenset[str]:
        allowed = set(self.site_zones)
        for _, zones in self.tenant_zones:
            allowed &= set(zones)
        return frozenset(allowed)

    def tenant_refusing(self, zone: str) -> str:
        """The first tenant whose zones do not include ``zone`` ("" when none)."""
        return next((name for name, zones in self.tenant_zones if zone not in zones), "")

    def describe(self) -> tuple[str, ...]:
        """The rules as short phrases, for operators."""
        out = [f"zones {', '.join(sorted(self.zones())) or 'none'}"]
        out += [f"tenant {name}: zones {', '.join(zones)}" for name, zones in self.tenant_zones]
        if math.isfinite(self.ttft_slo_s):
            out.append(f"ttft <= {self.ttft_slo_s:g} s")
        if math.isfinite(self.per_token_slo_s):
            out.append(f"per-token <= {self.per_token_slo_s:g} s")
        if math.isfinite(self.max_output_price_per_mtok):
            out.append(f"output price <= ${self.max_output_price_per_mtok:g}/Mtok "
                       f"({self.price_cap_source})")
        return tuple(out)


def site_zones(demand: Demand, site: Site) -> tuple[str, ...]:
    """The compliance zones the demand may be served in: the site's, narrowed by the demand's."""
    zones = site.zones()
    if demand.allowed_zones:
        zones = tuple(z for z in zones if z in demand.allowed_zones)
    return zones


def requirement(demand: Demand, site: Site, policy: Policy = DEFAULT_POLICY) -> Requirement:
    """Merge the demand's rules with the policy's for this group."""
    cls, model = demand.traffic_class, demand.model
    slo = policy.slo(cls, model)
    tenants = policy.tenants_for(site.id, cls)
    caps: list[tuple[float, str]] = []
    tc = policy.traffic_class(cls)
    if tc is not None and tc.max_output_price_per_mtok is not None:
        caps.append((tc.max_output_price_per_mtok, f"class {cls}"))
    caps += [(t.max_output_price_per_mtok, f"tenant {t.name}") for t in tenants
             if t.max_output_price_per_mtok is not None]
    cap, source = min(caps) if caps else (math.inf, "")
    return Requirement(
        site_zones=site_zones(demand, site),
        tenant_zones=tuple((t.name, t.zones) for t in tenants),
        # The policy's class SLO is the operator's word; the demand's is the network default.
        ttft_slo_s=slo.ttft_s if slo.ttft_s is not None else demand.ttft_slo_s,
        per_token_slo_s=slo.per_token_s if slo.per_token_s is not None else math.inf,
        max_output_price_per_mtok=cap,
        price_cap_source=source,
    )
