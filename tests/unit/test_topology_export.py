"""The static pictures of the network: the shared layout, SVG and DOT. Pure: no network."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from tdn.topology.export import (
    COMPACT_ABOVE,
    Layout,
    Rect,
    layout,
    plan_edges,
    to_dot,
    to_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


def factory(fid: str, tier: str, region: str, zone: str, *, site: str = "",
            health: str = "healthy") -> dict[str, Any]:
    return {"id": f"factory:{fid}", "kind": "factory", "name": fid, "tier": tier,
            "region": region, "zone": zone, "site": site, "health": health, "admin": "active",
            "load": 0.25, "running": 4, "max_concurrency": 16,
            "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
            "carbon": {"grid_gco2_per_kwh": 35.0}}


def site(sid: str, region: str, zone: str) -> dict[str, Any]:
    return {"id": f"site:{sid}", "kind": "site", "name": sid, "region": region, "zone": zone}


# The default local network's shape: two zones, three regions, all three tiers, two sites.
NODES = [
    factory("center-se-1", "center", "eu-north", "eu"),
    factory("center-us-1", "center", "us-east", "us"),
    factory("edge-fra-1", "edge", "eu-west", "eu"),
    factory("edge-fra-2", "edge", "eu-west", "eu", health="unhealthy"),
    factory("onsite-fra-office", "on-site", "eu-west", "on-site:fra-office", site="fra-office"),
    factory("edge-nyc-1", "edge", "us-east", "us", health="unknown"),
    site("fra-office", "eu-west", "eu"),
    site("nyc-office", "us-east", "us"),
    {"id": "region:eu-west", "kind": "region", "name": "eu-west"},
]
ROUTES = [
    {"site": "fra-office", "model": "m", "primary": [
        {"factory_id": "center-se-1", "weight": 0.75},
        {"factory_id": "edge-fra-1", "weight": 0.25}],
     "backups": [[{"factory_id": "edge-fra-2", "weight": 1.0}]]},
    {"site": "fra-office", "model": "n", "primary": [{"factory_id": "center-se-1", "weight": 1.0}],
     "backups": []},
    {"site": "nyc-office", "model": "m", "primary": [{"factory_id": "center-us-1", "weight": 1.0}],
     "backups": [[{"factory_id": "edge-nyc-1", "weight": 1.0}]]},
]


def contains(rect: Rect, point: tuple[float, float]) -> bool:
    return rect.x <= point[0] <= rect.x + rect.w and rect.y <= point[1] <= rect.y + rect.h


def zone_rect(lay: Layout, zone: str) -> Rect:
    return next(z.rect for z in lay.zones if z.zone == zone)


def test_every_factory_and_site_gets_its_own_place() -> None:
    lay = layout(NODES)
    expected = {n["id"] for n in NODES if n["kind"] in {"factory", "site"}}
    assert set(lay.positions) == expected
    assert len(set(lay.positions.values())) == len(expected)


def test_tiers_are_rows_from_center_down_to_the_sites() -> None:
    lay = layout(NODES)
    y = {key: lay.positions[key][1] for key in lay.positions}
    assert y["factory:center-se-1"] < y["factory:edge-fra-1"] < y["factory:onsite-fra-office"]
    assert y["factory:onsite-fra-office"] < y["site:fra-office"]
    assert [r.key for r in lay.rows] == ["center", "edge", "on-site", "sites"]


def test_regions_of_one_zone_sit_side_by_side() -> None:
    lay = layout(NODES)
    assert [c.zone for c in lay.columns] == ["eu", "eu", "us"]
    for column in lay.columns:
        members = [n for n in NODES if n.get("region") == column.name and "kind" in n
                   and n["kind"] in {"factory", "site"}]
        for n in members:
            x = lay.positions[n["id"]][0]
            assert column.rect.x <= x <= column.rect.x + column.rect.w


def test_compliance_zones_enclose_their_members_and_no_one_else() -> None:
    lay = layout(NODES)
    eu, us = zone_rect(lay, "eu"), zone_rect(lay, "us")
    on_site = zone_rect(lay, "on-site:fra-office")
    for node in NODES:
        if node["kind"] not in {"factory", "site"}:
            continue
        at = lay.positions[node["id"]]
        in_eu = node["zone"] in {"eu", "on-site:fra-office"}
        assert contains(eu, at) is in_eu, node["id"]
        assert contains(us, at) is (node["zone"] == "us"), node["id"]
    # The on-site zone holds its factory and the site it is in, inside the EU area.
    assert contains(on_site, lay.positions["factory:onsite-fra-office"])
    assert contains(on_site, lay.positions["site:fra-office"])
    assert not contains(on_site, lay.positions["factory:edge-fra-1"])
    assert eu.x <= on_site.x and on_site.x + on_site.w <= eu.x + eu.w


def test_layout_does_not_depend_on_input_order() -> None:
    shuffled = NODES[:]
    random.Random(7).shuffle(shuffled)
    assert layout(shuffled).to_json() == layout(NODES).to_json()


def test_many_factories_switch_to_compact_glyphs() -> None:
    nodes = [factory(f"f{i:04d}", ("center", "edge", "on-site")[i % 3], f"r{i % 7}", "eu",
                     site="s") for i in range(COMPACT_ABOVE + 1)]
    lay = layout([*nodes, site("s", "r0", "eu")])
    assert lay.compact
    assert len(set(lay.positions.values())) == len(nodes) + 1
    assert not layout(nodes[:COMPACT_ABOVE]).compact


def test_plan_edges_average_primary_weights_per_site_and_keep_backup_only_links() -> None:
    edges = {(e.site, e.factory): e for e in plan_edges(ROUTES)}
    assert edges[("fra-office", "center-se-1")].weight == pytest.approx((0.75 + 1.0) / 2)
    assert edges[("fra-office", "edge-fra-1")].weight == pytest.approx(0.25 / 2)
    assert edges[("fra-office", "edge-fra-2")].backup
    assert edges[("nyc-office", "edge-nyc-1")].backup
    assert not edges[("nyc-office", "center-us-1")].backup


def test_svg_is_valid_deterministic_and_draws_every_factory_coloured_by_health() -> None:
    text = to_svg({"nodes": NODES}, ROUTES, title="t")
    assert text == to_svg({"nodes": list(reversed(NODES))}, ROUTES, title="t")
    root = ET.fromstring(text)
    titles = [t.text or "" for t in root.iter(f"{SVG}title")]
    for n in NODES:
        if n["kind"] == "factory":
            tip = next(t for t in titles if t.startswith(n["name"] + " "))
            assert n["health"] in tip
    fills = {el.get("fill") for el in root.iter() if el.get("fill")}
    assert {"#22a06b", "#e5484d", "#8b95a5"} <= fills  # healthy, unhealthy, unknown
    paths = [p for p in root.iter(f"{SVG}path")]
    assert len(paths) == len(plan_edges(ROUTES))
    widths = sorted(float(p.get("stroke-width", "0")) for p in paths
                    if p.get("stroke-dasharray") is None)
    assert widths[-1] > widths[0]  # heavier weight, wider edge


def test_edges_to_factories_not_in_the_graph_are_left_out() -> None:
    routes = [{"site": "fra-office", "primary": [{"factory_id": "ghost", "weight": 1.0}],
               "backups": []}]
    root = ET.fromstring(to_svg({"nodes": NODES}, routes))
    assert not list(root.iter(f"{SVG}path"))


def test_dot_has_a_cluster_per_zone_and_weighted_plan_edges() -> None:
    text = to_dot({"nodes": NODES}, ROUTES)
    assert text.startswith("digraph ")
    assert 'label="zone eu"' in text and 'label="zone us"' in text
    assert 'label="zone on-site:fra-office"' in text
    for n in NODES:
        if n["kind"] in {"factory", "site"}:
            assert f'"{n["id"]}" [' in text
    assert '"site:fra-office" -> "factory:center-se-1" [label="0.88"' in text
    assert '"site:nyc-office" -> "factory:edge-nyc-1" [style=dashed' in text
    assert text.count("{") == text.count("}")
