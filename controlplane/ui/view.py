"""What the web UI is sent: JSON records of factories, sites, the plan and the layout, and the
differences between two sets of records. Pure functions of the control plane's values.

Records hold only what the page shows, rounded to what a person can read, so that jitter in the
last digits of a latency does not count as a change worth pushing to every browser.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tdn.domain import FactoryState, Plan, Route, Site

Record = dict[str, Any]


def factory_record(state: FactoryState) -> Record:
    spec, load, energy = state.spec, state.load, state.spec.energy
    return {
        "id": spec.id, "tier": spec.tier.value, "region": spec.region,
        "zone": spec.compliance_zone, "site": spec.site, "domain": spec.domain,
        "models": list(spec.models), "endpoint": spec.endpoint,
        "health": state.health.value, "admin": state.admin.value, "reason": state.reason,
        "routable": state.routable,
        "load": round(load.running / spec.max_concurrency, 3),
        "running": load.running, "waiting": load.waiting,
        "max_concurrency": spec.max_concurrency,
        "kv_cache": round(load.kv_cache_usage, 3),
        "ttft_p50_ms": round(load.ttft_p50_s * 1000, 1),
        "ttft_p99_ms": round(load.ttft_p99_s * 1000, 1),
        "itl_p50_ms": round(load.itl_p50_s * 1000, 1),
        "price_in": spec.price.input_per_mtok, "price_out": spec.price.output_per_mtok,
        "currency": spec.price.currency,
        "grid_gco2_per_kwh": energy.grid_gco2_per_kwh,
        "gco2_per_mtok": round(energy.gco2_per_mtok(), 1),
        "watts": energy.watts, "tokens_per_joule": energy.tokens_per_joule,
        "electricity_per_kwh": energy.electricity_price_per_kwh,
    }


def site_record(site: Site) -> Record:
    return {"id": site.id, "region": site.region, "zone": site.compliance_zone,
            "allowed_zones": list(site.zones()),
            "rtt_ms": {region: rtt for region, rtt in site.rtt_ms}}


def route_record(site: str, route: Route) -> Record:
    return {
        "site": site, "model": route.model, "traffic_class": route.traffic_class,
        "primary": [{"factory_id": w.factory_id, "weight": round(w.weight, 4)}
                    for w in route.primary],
        "backups": [[{"factory_id": w.factory_id, "weight": round(w.weight, 4)} for w in level]
                    for level in route.backups],
        "context_fallback_model": route.context_fallback_model,
    }


def plan_record(plan: Plan | None, status: Mapping[str, Any],
                policies: Mapping[str, str]) -> Record:
    """The plan in force: its status (as ``/api/status`` words it), routes and site versions."""
    return {
        **dict(status),
        "routes": [] if plan is None else [route_record(s, r) for s, r in plan.routes],
        "excluded": 0 if plan is None else len(plan.exclusions),
        "policies": dict(sorted(policies.items())),
    }


def layout_nodes(states: Iterable[FactoryState], sites: Sequence[Site]) -> list[Record]:
    """The node shapes :func:`tdn.topology.export.layout` places (as ``graph_to_json`` has
    them), without building the full graph."""
    nodes: list[Record] = [
        {"id": f"factory:{s.spec.id}", "kind": "factory", "name": s.spec.id,
         "tier": s.spec.tier.value, "region": s.spec.region, "zone": s.spec.compliance_zone,
         "site": s.spec.site} for s in states]
    nodes += [{"id": f"site:{s.id}", "kind": "site", "name": s.id, "region": s.region,
               "zone": s.compliance_zone} for s in sites]
    return nodes


def structure_key(states: Iterable[FactoryState]) -> tuple[tuple[str, ...], ...]:
    """What the layout depends on; the layout is recomputed only when this changes."""
    return tuple((s.spec.id, s.spec.tier.value, s.spec.region, s.spec.compliance_zone,
                  s.spec.site) for s in states)


def diff_records(old: Mapping[str, Record], new: Mapping[str, Record],
                 ) -> tuple[dict[str, Record], list[str]]:
    """(records added or changed, ids removed) going from ``old`` to ``new``."""
    changed = {key: rec for key, rec in new.items() if old.get(key) != rec}
    removed = sorted(key for key in old if key not in new)
    return changed, removed
