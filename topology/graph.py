"""The network as a graph: regions, factories and sites, with the latency from each site to each
factory. The control plane's HTTP API and web UI draw it (via :func:`graph_to_json`); keeping it
in the pure core means the picture is built from exactly the values the solver sees.

Node ids carry their kind ("region:eu-west", "factory:edge-fra-1", "site:fra-office") because a
site, a region and a factory may share a name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import networkx as nx

from tdn.domain import FactoryState, Site
from tdn.topology.eligibility import zone_allowed
from tdn.topology.estimates import rtt_ms


def region_node(region: str) -> str:
    return f"region:{region}"


def factory_node(factory_id: str) -> str:
    return f"factory:{factory_id}"


def site_node(site_id: str) -> str:
    return f"site:{site_id}"


def build_graph(factories: Sequence[FactoryState], sites: Sequence[Site]) -> nx.DiGraph:
    """Nodes for regions, factories and sites; edges factory→region ("in"), site→region ("rtt")
    and site→factory ("reach", with estimated latency and whether residency allows it)."""
    graph = nx.DiGraph()
    ordered = sorted(factories, key=lambda f: f.spec.id)
    regions = {f.spec.region for f in ordered} | {s.region for s in sites}
    regions |= {name for s in sites for name, _ in s.rtt_ms}
    for region in sorted(regions):
        graph.add_node(region_node(region), kind="region", name=region)
    for f in ordered:
        spec = f.spec
        graph.add_node(
            factory_node(spec.id),
            kind="factory",
            name=spec.id,
            tier=spec.tier.value,
            region=spec.region,
            zone=spec.compliance_zone,
            domain=spec.domain,
            site=spec.site,
            models=list(spec.models),
            health=f.health.value,
            admin=f.admin.value,
            reason=f.reason,
            # Share of concurrency slots busy: what the UI colours a factory by.
            load=f.load.running / spec.max_concurrency,
            running=f.load.running,
            waiting=f.load.waiting,
            max_concurrency=spec.max_concurrency,
            ttft_p50_s=f.load.ttft_p50_s,
            ttft_p99_s=f.load.ttft_p99_s,
            price={"input_per_mtok": spec.price.input_per_mtok,
                   "output_per_mtok": spec.price.output_per_mtok,
                   "currency": spec.price.currency},
            carbon={"grid_gco2_per_kwh": spec.energy.grid_gco2_per_kwh,
                    "gco2_per_mtok": spec.energy.gco2_per_mtok()},
        )
        graph.add_edge(factory_node(spec.id), region_node(spec.region), kind="in")
    for site in sorted(sites, key=lambda s: s.id):
        graph.add_node(site_node(site.id), kind="site", name=site.id, region=site.region,
                       zone=site.compliance_zone, allowed_zones=list(site.zones()))
        for region in sorted(regions):
            graph.add_edge(site_node(site.id), region_node(region), kind="rtt",
                           rtt_ms=site.rtt_to(region), home=region == site.region)
        for f in ordered:
            rtt = rtt_ms(site, f)
            ttft_ms = f.load.ttft_p50_s * 1000.0
            graph.add_edge(site_node(site.id), factory_node(f.spec.id), kind="reach",
                           rtt_ms=rtt, ttft_p50_ms=ttft_ms, latency_ms=rtt + ttft_ms,
                           zone_allowed=zone_allowed(f, site))
    return graph


def _plain(value: Any) -> Any:
    """A JSON-able copy: enums to their values, tuples to lists, non-finite floats to None."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def graph_to_json(graph: nx.DiGraph) -> dict[str, Any]:
    """{"nodes": [{"id", "kind", ...}], "edges": [{"source", "target", "kind", ...}]}, sorted."""
    nodes = [{"id": node, **_plain(dict(attrs))}
             for node, attrs in sorted(graph.nodes(data=True), key=lambda n: str(n[0]))]
    edges = [{"source": u, "target": v, **_plain(dict(attrs))}
             for u, v, attrs in sorted(graph.edges(data=True),
                                       key=lambda e: (str(e[0]), str(e[1])))]
    return {"nodes": nodes, "edges": edges}
