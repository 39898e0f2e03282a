"""Pictures of the network: one deterministic layout, drawn as SVG or described as Graphviz DOT.

The layout is shared by ``tdn topology export`` and the live web UI (which receives it as JSON),
so a picture in a report and the page an operator watches put every factory in the same place.
Columns are regions, ordered so that regions of one compliance zone sit side by side; rows are
the tiers (center, edge, on-site) above the consumer sites, so plan edges rise from a site to
the factories serving it. Compliance zones are drawn as areas around their members: a plan edge
that leaves its site's area would be traffic crossing a residency boundary.

Pure: the inputs are plain values (:func:`tdn.topology.graph.graph_to_json` output and the
plan's routes as the HTTP API renders them); no I/O and no clock, so the same inputs always give
byte-identical output.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

TIERS = ("center", "edge", "on-site")
SITES_ROW = "sites"
ROW_LABELS = {"center": "CENTER", "edge": "EDGE", "on-site": "ON-SITE", SITES_ROW: "SITES"}
ON_SITE_ZONE_PREFIX = "on-site:"

# Up to this many factories every node is a card with its name and figures; above, a glyph.
COMPACT_ABOVE = 40

HEALTH_COLOURS = {"healthy": "#22a06b", "unhealthy": "#e5484d", "unknown": "#8b95a5"}
ZONE_COLOURS = ("#3b82f6", "#a855f7", "#f59e0b", "#14b8a6", "#ec4899", "#84cc16")
ON_SITE_ZONE_COLOUR = "#f97316"
PRIMARY_EDGE = "#2563eb"
BACKUP_EDGE = "#94a3b8"
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float

    def to_json(self) -> dict[str, float]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h}


@dataclass(frozen=True, slots=True)
class RegionColumn:
    name: str
    zone: str
    rect: Rect


@dataclass(frozen=True, slots=True)
class Row:
    key: str  # a tier, or "sites"
    label: str
    rect: Rect


@dataclass(frozen=True, slots=True)
class ZoneArea:
    zone: str
    on_site: bool
    colour: str
    rect: Rect


@dataclass(frozen=True, slots=True)
class Layout:
    """Where everything goes, in abstract pixels; ``positions`` maps node ids to centres."""

    width: float
    height: float
    compact: bool
    cell_w: float
    cell_h: float
    columns: tuple[RegionColumn, ...]
    rows: tuple[Row, ...]
    zones: tuple[ZoneArea, ...]
    positions: Mapping[str, tuple[float, float]]

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "compact": self.compact,
            "cell": {"w": self.cell_w, "h": self.cell_h},
            "columns": [{"name": c.name, "zone": c.zone, **c.rect.to_json()}
                        for c in self.columns],
            "rows": [{"key": r.key, "label": r.label, **r.rect.to_json()} for r in self.rows],
            "zones": [{"zone": z.zone, "on_site": z.on_site, "colour": z.colour,
                       **z.rect.to_json()} for z in self.zones],
            "positions": {k: [round(x, 1), round(y, 1)]
                          for k, (x, y) in sorted(self.positions.items())},
        }


# --- layout ------------------------------------------------------------------------------------

_MARGIN_LEFT = 92.0
_MARGIN_TOP = 44.0  # region headers
_MARGIN = 16.0
_COLUMN_GAP = 18.0
_ZONE_GAP = 34.0
_ROW_PAD = 22.0  # room above a row's first nodes for zone labels


def _kind(node: Mapping[str, Any]) -> str:
    return str(node.get("kind", ""))


def _name(node: Mapping[str, Any]) -> str:
    return str(node.get("name") or str(node.get("id", "")).partition(":")[2])


def zone_colour(zone: str, zones: Sequence[str]) -> str:
    """A stable colour per zone: on-site zones share one, the others cycle by sorted position."""
    if zone.startswith(ON_SITE_ZONE_PREFIX):
        return ON_SITE_ZONE_COLOUR
    ordinary = sorted(z for z in set(zones) if not z.startswith(ON_SITE_ZONE_PREFIX))
    index = ordinary.index(zone) if zone in ordinary else len(ordinary)
    return ZONE_COLOURS[index % len(ZONE_COLOURS)]


def layout(nodes: Iterable[Mapping[str, Any]]) -> Layout:
    """Place factory and site nodes (``graph_to_json`` shapes; other kinds are ignored)."""
    given = list(nodes)
    factories = sorted((n for n in given if _kind(n) == "factory"), key=lambda n: str(n["id"]))
    sites = sorted((n for n in given if _kind(n) == "site"), key=lambda n: str(n["id"]))
    nodes = [*factories, *sites]
    compact = len(factories) > COMPACT_ABOVE
    cell_w, cell_h = (30.0, 30.0) if compact else (172.0, 84.0)

    # Which zone a region belongs to: the commonest non-on-site zone of its members.
    zone_votes: dict[str, Counter[str]] = defaultdict(Counter)
    for n in nodes:
        zone = str(n.get("zone", ""))
        if not zone.startswith(ON_SITE_ZONE_PREFIX):
            zone_votes[str(n.get("region", ""))][zone] += 1
    regions = sorted({str(n.get("region", "")) for n in nodes})
    region_zone = {r: (min(zone_votes[r].items(), key=lambda kv: (-kv[1], kv[0]))[0]
                       if zone_votes[r] else "") for r in regions}
    regions.sort(key=lambda r: (region_zone[r], r))

    # Members of every (region, row) cell, in drawing order.
    cells: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for f in factories:
        tier = str(f.get("tier", "edge"))
        cells[(str(f.get("region", "")), tier if tier in TIERS else "edge")].append(f)
    for s in sites:
        cells[(str(s.get("region", "")), SITES_ROW)].append(s)
    for (_, row), members in cells.items():
        if row == "on-site":  # next to the site they sit in
            members.sort(key=lambda n: (str(n.get("site", "")), str(n["id"])))
    row_keys = [k for k in (*TIERS, SITES_ROW) if any(row == k for _, row in cells)]

    per_row = _columns_per_region(regions, row_keys, cells, cell_w, cell_h)

    rows: list[Row] = []
    row_y: dict[str, float] = {}
    y = _MARGIN_TOP
    for key in row_keys:
        lines = max((math.ceil(len(cells.get((r, key), ())) / per_row[r]) for r in regions),
                    default=1)
        height = _ROW_PAD + max(lines, 1) * cell_h + _MARGIN / 2
        row_y[key] = y
        rows.append(Row(key, ROW_LABELS[key], Rect(0.0, y, 0.0, height)))
        y += height + (_MARGIN if key != "on-site" else _MARGIN / 2)
    height = y + _MARGIN

    positions: dict[str, tuple[float, float]] = {}
    columns: list[RegionColumn] = []
    x = _MARGIN_LEFT
    previous_zone: str | None = None
    min_width = 0.0 if compact else cell_w + 16.0
    for r in regions:
        if previous_zone is not None:
            x += _ZONE_GAP if region_zone[r] != previous_zone else _COLUMN_GAP
        previous_zone = region_zone[r]
        width = max(per_row[r] * cell_w + 16.0, min_width, 120.0 if not compact else 72.0)
        inner = x + (width - per_row[r] * cell_w) / 2
        for key in row_keys:
            for i, n in enumerate(cells.get((r, key), ())):
                col, line = i % per_row[r], i // per_row[r]
                positions[str(n["id"])] = (inner + (col + 0.5) * cell_w,
                                           row_y[key] + _ROW_PAD + (line + 0.5) * cell_h)
        columns.append(RegionColumn(r, region_zone[r],
                                    Rect(x, _MARGIN_TOP - 28.0, width, height - _MARGIN_TOP)))
        x += width
    width = x + _MARGIN
    rows = [Row(row.key, row.label, Rect(_MARGIN, row.rect.y, width - 2 * _MARGIN, row.rect.h))
            for row in rows]
    return Layout(width=round(width, 1), height=round(height, 1), compact=compact,
                  cell_w=cell_w, cell_h=cell_h, columns=tuple(columns), rows=tuple(rows),
                  zones=_zone_areas(nodes, positions, cell_w, cell_h),
                  positions=positions)


# Width over height the layout aims for: a screen's graph area, or a report page turned sideways.
TARGET_ASPECT = 1.8


def _columns_per_region(regions: Sequence[str], row_keys: Sequence[str],
                        cells: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]],
                        cell_w: float, cell_h: float) -> dict[str, int]:
    """How many nodes side by side in each region's column: the fullest row of every region
    wraps onto the same number of lines, chosen so the whole picture comes closest to
    :data:`TARGET_ASPECT` (one line each for a small network, a squarer grid for a big one)."""
    largest = {r: max((len(cells.get((r, k), ())) for k in row_keys), default=1) or 1
               for r in regions}
    best: tuple[float, dict[str, int]] | None = None
    for lines in range(1, max(largest.values(), default=1) + 1):
        per_row = {r: math.ceil(largest[r] / lines) for r in regions}
        width = sum(per_row[r] * cell_w + _COLUMN_GAP for r in regions) + _MARGIN_LEFT
        height = _MARGIN_TOP + sum(
            _ROW_PAD + _MARGIN + cell_h * max(
                (math.ceil(len(cells.get((r, k), ())) / per_row[r]) for r in regions), default=1)
            for k in row_keys)
        miss = abs(math.log(width / height / TARGET_ASPECT))
        if best is None or miss < best[0] - 1e-9:
            best = (miss, per_row)
    return best[1] if best is not None else {}


def _zone_areas(nodes: Sequence[Mapping[str, Any]], positions: Mapping[str, tuple[float, float]],
                cell_w: float, cell_h: float) -> tuple[ZoneArea, ...]:
    """One area per zone around its members; an on-site zone also holds the site it is in."""
    members: dict[str, list[str]] = defaultdict(list)
    site_ids = {_name(n): str(n["id"]) for n in nodes if _kind(n) == "site"}
    for n in nodes:
        zone = str(n.get("zone", ""))
        if zone:
            members[zone].append(str(n["id"]))
    for zone in list(members):
        site = site_ids.get(zone.removeprefix(ON_SITE_ZONE_PREFIX))
        if zone.startswith(ON_SITE_ZONE_PREFIX) and site is not None:
            members[zone].append(site)
    all_zones = sorted(members)
    areas: list[ZoneArea] = []
    for zone in all_zones:
        on_site = zone.startswith(ON_SITE_ZONE_PREFIX)
        # Nested on-site areas sit inside their surrounding zone's area.
        pad_x, pad_y = (4.0, 12.0) if on_site else (10.0, 18.0)
        points = [positions[m] for m in members[zone] if m in positions]
        if not points:
            continue
        left = min(p[0] for p in points) - cell_w / 2 - pad_x
        right = max(p[0] for p in points) + cell_w / 2 + pad_x
        top = min(p[1] for p in points) - cell_h / 2 - pad_y
        bottom = max(p[1] for p in points) + cell_h / 2 + (pad_y if not on_site else 4.0)
        areas.append(ZoneArea(zone, on_site, zone_colour(zone, all_zones),
                              Rect(round(left, 1), round(top, 1), round(right - left, 1),
                                   round(bottom - top, 1))))
    # Outer zones first, so on-site areas are drawn on top of them.
    areas.sort(key=lambda a: (a.on_site, a.zone))
    return tuple(areas)


# --- plan edges --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlanEdge:
    """Traffic from a site to a factory: the mean primary weight over the site's routes, or a
    backup link when the factory only backs the site up."""

    site: str
    factory: str
    weight: float
    backup: bool


def plan_edges(routes: Iterable[Mapping[str, Any]]) -> tuple[PlanEdge, ...]:
    """Aggregate routes (``{"site", "primary": [{"factory_id", "weight"}], "backups": ...}``)."""
    routes_per_site: Counter[str] = Counter()
    primary: dict[tuple[str, str], float] = defaultdict(float)
    backups: set[tuple[str, str]] = set()
    for route in routes:
        site = str(route["site"])
        routes_per_site[site] += 1
        for w in route.get("primary", ()):
            primary[(site, str(w["factory_id"]))] += float(w["weight"])
        for level in route.get("backups", ()):
            for w in level:
                backups.add((site, str(w["factory_id"])))
    edges = [PlanEdge(s, f, w / routes_per_site[s], backup=False)
             for (s, f), w in primary.items()]
    edges += [PlanEdge(s, f, 0.0, backup=True) for s, f in backups if (s, f) not in primary]
    return tuple(sorted(edges, key=lambda e: (e.backup, e.site, e.factory)))


# --- SVG ---------------------------------------------------------------------------------------


def _f(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _attrs(**attrs: object) -> str:
    return " ".join(f'{k.rstrip("_").replace("_", "-")}="{escape(str(v), {chr(34): "&quot;"})}"'
                    for k, v in attrs.items())


def tier_glyph(tier: str, cx: float, cy: float, size: float, **attrs: object) -> str:
    """The tier's shape: a square for center, a circle for edge, a diamond (a building seen
    from above) for on-site, so tiers differ in black and white too."""
    half = size / 2
    extra = _attrs(**attrs)
    if tier == "center":
        return (f'<rect x="{_f(cx - half)}" y="{_f(cy - half)}" width="{_f(size)}" '
                f'height="{_f(size)}" rx="{_f(size / 6)}" {extra}/>')
    if tier == "on-site":
        points = f"{_f(cx)},{_f(cy - half)} {_f(cx + half)},{_f(cy)} {_f(cx)},{_f(cy + half)} " \
                 f"{_f(cx - half)},{_f(cy)}"
        return f'<polygon points="{points}" {extra}/>'
    return f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(half * 0.92)}" {extra}/>'


def _money(value: Any) -> str:
    return f"{float(value or 0):.2f}"


def _edge_path(site: tuple[float, float], factory: tuple[float, float], lay: Layout) -> str:
    # From the top of the site's pill to the bottom of the factory's card (or glyph).
    sx, sy = site[0], site[1] - (10.0 if lay.compact else 20.0)
    fx, fy = factory[0], factory[1] + (lay.cell_w * 0.35 if lay.compact else lay.cell_h / 2 - 8)
    mid = (sy + fy) / 2
    return f"M{_f(sx)},{_f(sy)} C{_f(sx)},{_f(mid)} {_f(fx)},{_f(mid)} {_f(fx)},{_f(fy)}"


def to_svg(graph: Mapping[str, Any], routes: Sequence[Mapping[str, Any]] = (), *,
           title: str = "TDN topology") -> str:
    """A standalone SVG of the graph with the plan's edges (light background, for reports)."""
    nodes = [n for n in graph.get("nodes", ()) if _kind(n) in {"factory", "site"}]
    lay = layout(nodes)
    by_id = {str(n["id"]): n for n in nodes}
    width = max(lay.width, 640.0)
    legend, legend_h = _svg_legend(16.0, 0.0, width)
    height = lay.height + legend_h + 40.0
    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_f(width)}" height="{_f(height)}" '
        f'viewBox="0 0 {_f(width)} {_f(height)}" font-family="{FONT}">',
        f'<rect width="{_f(width)}" height="{_f(height)}" fill="#ffffff"/>',
        f'<text x="16" y="22" font-size="15" font-weight="bold" fill="#0f172a">'
        f"{escape(title)}</text>",
        '<g transform="translate(0,30)">',
    ]
    for row in lay.rows:
        out.append(f'<rect x="{_f(row.rect.x)}" y="{_f(row.rect.y)}" width="{_f(row.rect.w)}" '
                   f'height="{_f(row.rect.h)}" rx="6" fill="#f8fafc"/>')
        out.append(f'<text x="{_f(row.rect.x + 8)}" y="{_f(row.rect.y + row.rect.h / 2 + 4)}" '
                   f'font-size="11" font-weight="bold" letter-spacing="1" fill="#64748b">'
                   f"{row.label}</text>")
    for col in lay.columns:
        out.append(f'<text x="{_f(col.rect.x + col.rect.w / 2)}" y="{_f(col.rect.y + 14)}" '
                   f'font-size="13" font-weight="bold" text-anchor="middle" fill="#1e293b">'
                   f"{escape(col.name)}</text>")
    for zone in lay.zones:
        r = zone.rect
        dash = "4 3" if zone.on_site else "9 5"
        out.append(f'<rect x="{_f(r.x)}" y="{_f(r.y)}" width="{_f(r.w)}" height="{_f(r.h)}" '
                   f'rx="10" fill="{zone.colour}" fill-opacity="0.07" stroke="{zone.colour}" '
                   f'stroke-width="{2 if not zone.on_site else 1.5}" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{_f(r.x + 8)}" y="{_f(r.y + 13)}" font-size="10" '
                   f'font-weight="bold" fill="{zone.colour}">zone {escape(zone.zone)}</text>')
    for edge in plan_edges(routes):
        s, f = lay.positions.get(f"site:{edge.site}"), lay.positions.get(f"factory:{edge.factory}")
        if s is None or f is None:
            continue
        path = _edge_path(s, f, lay)
        if edge.backup:
            out.append(f'<path d="{path}" fill="none" stroke="{BACKUP_EDGE}" stroke-width="1.2" '
                       f'stroke-dasharray="3 3"/>')
        else:
            out.append(f'<path d="{path}" fill="none" stroke="{PRIMARY_EDGE}" '
                       f'stroke-opacity="0.75" stroke-width="{_f(1.5 + 7 * edge.weight)}"/>')
            if not lay.compact:
                out.append(f'<text x="{_f(f[0] + 6)}" y="{_f(f[1] + lay.cell_h / 2 + 4)}" '
                           f'font-size="10" fill="{PRIMARY_EDGE}">{edge.weight:.2f}</text>')
    for node_id, (cx, cy) in sorted(lay.positions.items()):
        node = by_id[node_id]
        out.append(_svg_site(node, cx, cy, lay) if _kind(node) == "site"
                   else _svg_factory(node, cx, cy, lay))
    out.append("</g>")
    out.append(f'<g transform="translate(0,{_f(height - legend_h - 4)})">{legend}</g>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_factory(node: Mapping[str, Any], cx: float, cy: float, lay: Layout) -> str:
    health = str(node.get("health", "unknown"))
    colour = HEALTH_COLOURS.get(health, HEALTH_COLOURS["unknown"])
    tier = str(node.get("tier", "edge"))
    admin = str(node.get("admin", "active"))
    tip = escape(f"{_name(node)} ({tier}, {node.get('region', '')}, zone {node.get('zone', '')})"
                 f" {health}, {admin}")
    if lay.compact:
        return (f"<g><title>{tip}</title>"
                + tier_glyph(tier, cx, cy, lay.cell_w * 0.7, fill=colour, stroke="#0f172a",
                             stroke_width=0.6) + "</g>")
    w, h = lay.cell_w - 14, lay.cell_h - 16
    x, y = cx - w / 2, cy - h / 2
    load = min(max(float(node.get("load") or 0.0), 0.0), 1.0)
    price = node.get("price") or {}
    carbon = node.get("carbon") or {}
    border = "#f59e0b" if admin != "active" else "#cbd5e1"
    parts = [
        f"<g><title>{tip}</title>",
        f'<rect x="{_f(x)}" y="{_f(y)}" width="{_f(w)}" height="{_f(h)}" rx="7" fill="#ffffff" '
        f'stroke="{border}" stroke-width="{1.8 if admin != "active" else 1}"/>',
        tier_glyph(tier, x + 14, y + 15, 14, fill=colour, stroke="#0f172a", stroke_width=0.5),
        f'<text x="{_f(x + 27)}" y="{_f(y + 19)}" font-size="11.5" font-weight="bold" '
        f'fill="#0f172a">{escape(_name(node))}</text>',
        f'<text x="{_f(x + 8)}" y="{_f(y + 35)}" font-size="9.5" fill="#475569">'
        f"${_money(price.get('input_per_mtok'))}/${_money(price.get('output_per_mtok'))} per M"
        f" · {float(carbon.get('grid_gco2_per_kwh') or 0):.0f} g/kWh</text>",
        f'<text x="{_f(x + 8)}" y="{_f(y + 48)}" font-size="9.5" fill="#475569">'
        f"{health}{'' if admin == 'active' else ', ' + admin} · load "
        f"{node.get('running', 0)}/{node.get('max_concurrency', 0)}</text>",
        f'<rect x="{_f(x + 8)}" y="{_f(y + h - 9)}" width="{_f(w - 16)}" height="4" rx="2" '
        f'fill="#e2e8f0"/>',
        f'<rect x="{_f(x + 8)}" y="{_f(y + h - 9)}" width="{_f((w - 16) * load)}" height="4" '
        f'rx="2" fill="{_load_colour(load)}"/>',
        "</g>",
    ]
    return "".join(parts)


def _load_colour(load: float) -> str:
    return "#22a06b" if load < 0.6 else "#f59e0b" if load < 0.85 else "#e5484d"


def _svg_site(node: Mapping[str, Any], cx: float, cy: float, lay: Layout) -> str:
    name = escape(_name(node))
    if lay.compact:
        return (f"<g><title>site {name}</title>"
                f'<rect x="{_f(cx - 11)}" y="{_f(cy - 11)}" width="22" height="22" rx="11" '
                f'fill="#0f172a"/></g>')
    w, h = lay.cell_w - 14, 40.0
    return (f"<g><title>site {name}</title>"
            f'<rect x="{_f(cx - w / 2)}" y="{_f(cy - h / 2)}" width="{_f(w)}" height="{_f(h)}" '
            f'rx="20" fill="#0f172a"/>'
            f'<text x="{_f(cx)}" y="{_f(cy + 4)}" font-size="12" font-weight="bold" '
            f'text-anchor="middle" fill="#ffffff">{name}</text></g>')


def _legend_items() -> list[tuple[float, str]]:
    """(width, SVG drawn at the origin) per legend entry."""
    text = '<text x="{x}" y="10" font-size="10.5" fill="#334155">{label}</text>'
    items: list[tuple[float, str]] = []
    for tier in TIERS:
        glyph = tier_glyph(tier, 6, 6, 12, fill="#cbd5e1", stroke="#0f172a", stroke_width=0.5)
        items.append((72.0, glyph + text.format(x=16, label=tier)))
    for health, colour in HEALTH_COLOURS.items():
        items.append((86.0, f'<circle cx="6" cy="6" r="5" fill="{colour}"/>'
                      + text.format(x=15, label=health)))
    items.append((172.0, f'<line x1="0" y1="6" x2="24" y2="6" stroke="{PRIMARY_EDGE}" '
                  f'stroke-width="3"/>' + text.format(x=30, label="primary (width = weight)")))
    items.append((80.0, f'<line x1="0" y1="6" x2="24" y2="6" stroke="{BACKUP_EDGE}" '
                  f'stroke-width="1.2" stroke-dasharray="3 3"/>'
                  + text.format(x=30, label="backup")))
    items.append((250.0, '<rect x="0" y="0" width="22" height="12" rx="3" fill="none" '
                  'stroke="#3b82f6" stroke-dasharray="5 3"/>'
                  + text.format(x=28, label="compliance zone: traffic may not cross")))
    return items


LEGEND_LINE = 18.0


def _svg_legend(x: float, y: float, width: float) -> tuple[str, float]:
    """The legend wrapped to ``width``; returns the SVG and its height."""
    out, cx, cy = ["<g>"], x, y
    for item_w, svg in _legend_items():
        if cx + item_w > width - x and cx > x:
            cx, cy = x, cy + LEGEND_LINE
        out.append(f'<g transform="translate({_f(cx)},{_f(cy)})">{svg}</g>')
        cx += item_w
    out.append("</g>")
    return "".join(out), cy - y + LEGEND_LINE


# --- Graphviz DOT ------------------------------------------------------------------------------

_DOT_SHAPES = {"center": "box3d", "edge": "ellipse", "on-site": "house"}


def _q(text: object) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Mapping[str, Any], routes: Sequence[Mapping[str, Any]] = (), *,
           title: str = "TDN topology") -> str:
    """Graphviz text: a cluster per compliance zone holding a cluster per region, factories
    shaped by tier and filled by health, and the plan's edges weighted."""
    nodes = [n for n in graph.get("nodes", ()) if _kind(n) in {"factory", "site"}]
    grouped: dict[str, dict[str, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for n in sorted(nodes, key=lambda n: str(n["id"])):
        grouped[str(n.get("zone", ""))][str(n.get("region", ""))].append(n)
    lines = [f"digraph {_q(title)} {{", "  rankdir=BT;", f"  label={_q(title)};",
             f'  node [fontname={_q("Helvetica")}, style=filled];']
    for zi, zone in enumerate(sorted(grouped)):
        lines.append(f"  subgraph cluster_zone_{zi} {{")
        lines.append(f"    label={_q('zone ' + zone)}; style=dashed;")
        for ri, region in enumerate(sorted(grouped[zone])):
            lines.append(f"    subgraph cluster_zone_{zi}_region_{ri} {{")
            lines.append(f"      label={_q(region)}; style=rounded;")
            for n in grouped[zone][region]:
                lines.append("      " + _dot_node(n) + ";")
            lines.append("    }")
        lines.append("  }")
    for edge in plan_edges(routes):
        attrs = (f"style=dashed, color={_q(BACKUP_EDGE)}" if edge.backup else
                 f"label={_q(f'{edge.weight:.2f}')}, penwidth={1 + 4 * edge.weight:.2f}, "
                 f"color={_q(PRIMARY_EDGE)}")
        lines.append(f"  {_q('site:' + edge.site)} -> {_q('factory:' + edge.factory)} [{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_node(node: Mapping[str, Any]) -> str:
    if _kind(node) == "site":
        return f"{_q(node['id'])} [label={_q(_name(node))}, shape=cds, fillcolor={_q('#cbd5e1')}]"
    health = str(node.get("health", "unknown"))
    tier = str(node.get("tier", "edge"))
    label = _q(f"{_name(node)}\n{tier} · {health}").replace("\n", "\\n")
    return (f"{_q(node['id'])} [label={label}, shape={_DOT_SHAPES.get(tier, 'ellipse')}, "
            f"fillcolor={_q(HEALTH_COLOURS.get(health, HEALTH_COLOURS['unknown']))}]")
