"""The topology graph the API and UI draw: nodes, latency edges, and its JSON form."""

from __future__ import annotations

import json

from tdn.domain import (
    AdminState,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    Site,
    Tier,
)
from tdn.topology.graph import build_graph, factory_node, graph_to_json, region_node, site_node

FRA = Site(id="fra", region="eu-west", compliance_zone="eu",
           rtt_ms=(("eu-north", 28.0), ("eu-west", 4.0)))


def factories() -> list[FactoryState]:
    center = FactoryState(
        spec=FactorySpec(id="center", tier=Tier.CENTER, region="eu-north", compliance_zone="eu",
                         endpoint="http://center/v1", models=("m",), price=Price(0.1, 0.4),
                         max_concurrency=64),
        load=FactoryLoad(running=16, ttft_p50_s=0.2), health=Health.HEALTHY,
        admin=AdminState.CORDONED)
    onsite = FactoryState(
        spec=FactorySpec(id="fra", tier=Tier.ON_SITE, region="eu-west", site="fra",
                         compliance_zone="on-site:fra", endpoint="http://onsite/v1",
                         models=("m",), price=Price(0.05, 0.2)),
        load=FactoryLoad(), health=Health.UNKNOWN)
    return [center, onsite]


def test_graph_has_regions_factories_and_sites_with_their_state() -> None:
    graph = build_graph(factories(), [FRA])
    kinds = {n: a["kind"] for n, a in graph.nodes(data=True)}
    assert kinds == {
        "region:eu-north": "region", "region:eu-west": "region",
        "factory:center": "factory", "factory:fra": "factory", "site:fra": "site",
    }
    center = graph.nodes[factory_node("center")]
    assert (center["tier"], center["region"], center["zone"]) == ("center", "eu-north", "eu")
    assert (center["health"], center["admin"], center["load"]) == ("healthy", "cordoned", 0.25)
    assert center["price"]["output_per_mtok"] == 0.4
    assert graph.has_edge(factory_node("center"), region_node("eu-north"))


def test_site_to_factory_edge_carries_rtt_plus_observed_ttft() -> None:
    graph = build_graph(factories(), [FRA])
    edge = graph.edges[site_node("fra"), factory_node("center")]
    assert edge["latency_ms"] == 28.0 + 200.0
    assert edge["zone_allowed"]
    # An on-site factory is on the site's own network, not 4 ms away in the region.
    assert graph.edges[site_node("fra"), factory_node("fra")]["rtt_ms"] == 0.5


def test_on_site_factory_is_not_reachable_for_another_site() -> None:
    other = Site(id="muc", region="eu-west", compliance_zone="eu")
    graph = build_graph(factories(), [FRA, other])
    assert graph.edges[site_node("fra"), factory_node("fra")]["zone_allowed"]
    assert not graph.edges[site_node("muc"), factory_node("fra")]["zone_allowed"]


def test_json_form_is_plain_sorted_and_identical_for_the_same_network() -> None:
    doc = graph_to_json(build_graph(factories(), [FRA]))
    again = graph_to_json(build_graph(list(reversed(factories())), [FRA]))
    text = json.dumps(doc, sort_keys=True)
    assert text == json.dumps(again, sort_keys=True)
    parsed = json.loads(text)
    ids = [n["id"] for n in parsed["nodes"]]
    assert ids == sorted(ids)
    assert {"source": "site:fra", "target": "factory:fra"}.items() <= next(
        e for e in parsed["edges"] if e["target"] == "factory:fra" and e["source"] == "site:fra"
    ).items()
    onsite = next(n for n in parsed["nodes"] if n["id"] == "factory:fra")
    assert onsite["health"] == "unknown" and onsite["models"] == ["m"]
