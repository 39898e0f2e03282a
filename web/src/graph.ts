// The topology drawing: the server's layout (topology/export.py) rendered as SVG, updated in
// place as patches arrive, with zoom, pan, hover and selection.

import { el, loadLevel, money, ms, svg } from "./format";
import type { State } from "./state";
import type { Factory, Layout, Route, Selection, Tier } from "./types";

export interface GraphHandlers {
  select(sel: Selection): void;
  hover(f: Factory | null, clientX: number, clientY: number): void;
}

interface FactoryNode {
  g: SVGGElement;
  name?: SVGTextElement;
  line2?: SVGTextElement;
  line3?: SVGTextElement;
  bar?: SVGRectElement;
  barWidth: number;
}

interface EdgeSpec {
  site: string;
  factory: string;
  weight: number;
  backup: number; // 0 = primary, n = backup level n
}

/** The tier's shape, as topology/export.py draws it: square, circle, diamond. */
export function glyph(tier: Tier, cx: number, cy: number, size: number, cls: string): SVGElement {
  const h = size / 2;
  if (tier === "center") {
    return svg("rect", { x: cx - h, y: cy - h, width: size, height: size, rx: size / 6, class: cls });
  }
  if (tier === "on-site") {
    return svg("polygon", { points: `${cx},${cy - h} ${cx + h},${cy} ${cx},${cy + h} ${cx - h},${cy}`, class: cls });
  }
  return svg("circle", { cx, cy, r: h * 0.92, class: cls });
}

/** Plan edges for what is selected: one route's levels, one site's routes, or all routes. */
export function edgesFor(routes: Route[], sel: Selection): EdgeSpec[] {
  if (sel.kind === "site" && sel.model) {
    const route = routes.find((r) => r.site === sel.id && r.model === sel.model && r.traffic_class === sel.trafficClass)
      ?? routes.find((r) => r.site === sel.id && r.model === sel.model);
    if (!route) return [];
    const out: EdgeSpec[] = route.primary.map((w) => ({ site: route.site, factory: w.factory_id, weight: w.weight, backup: 0 }));
    const seen = new Set(out.map((e) => e.factory));
    route.backups.forEach((level, i) => {
      for (const w of level) {
        if (!seen.has(w.factory_id)) out.push({ site: route.site, factory: w.factory_id, weight: w.weight, backup: i + 1 });
        seen.add(w.factory_id);
      }
    });
    return out;
  }
  const chosen = sel.kind === "site" ? routes.filter((r) => r.site === sel.id) : routes;
  const perSite = new Map<string, number>();
  const primary = new Map<string, number>();
  const backups = new Set<string>();
  for (const r of chosen) {
    perSite.set(r.site, (perSite.get(r.site) ?? 0) + 1);
    for (const w of r.primary) primary.set(`${r.site}\u0000${w.factory_id}`, (primary.get(`${r.site}\u0000${w.factory_id}`) ?? 0) + w.weight);
    for (const level of r.backups) for (const w of level) backups.add(`${r.site}\u0000${w.factory_id}`);
  }
  const out: EdgeSpec[] = [];
  for (const [key, w] of primary) {
    const [site, factory] = key.split("\u0000");
    out.push({ site, factory, weight: w / (perSite.get(site) ?? 1), backup: 0 });
  }
  for (const key of backups) {
    if (primary.has(key)) continue;
    const [site, factory] = key.split("\u0000");
    out.push({ site, factory, weight: 0, backup: 1 });
  }
  return out;
}

export class TopologyGraph {
  readonly root: SVGSVGElement;
  private readonly bg = svg("g", { class: "layer-bg" });
  private readonly edgesLayer = svg("g", { class: "layer-edges" });
  private readonly nodesLayer = svg("g", { class: "layer-nodes" });
  private readonly nodes = new Map<string, FactoryNode>();
  private readonly sites = new Map<string, SVGGElement>();
  private layout: Layout | null = null;
  private view = { x: 0, y: 0, w: 100, h: 100 };
  private drag: { x: number; y: number; vx: number; vy: number; moved: boolean } | null = null;
  private fitted = false;

  constructor(host: HTMLElement, private readonly handlers: GraphHandlers) {
    this.root = svg("svg", { class: "topology", role: "img", "aria-label": "network topology" });
    this.root.append(this.bg, this.edgesLayer, this.nodesLayer);
    host.append(this.root);
    this.root.addEventListener("wheel", (e) => this.onWheel(e), { passive: false });
    this.root.addEventListener("pointerdown", (e) => this.onDown(e));
    this.root.addEventListener("pointermove", (e) => this.onMove(e));
    this.root.addEventListener("pointerup", (e) => this.onUp(e));
    this.root.addEventListener("pointerleave", () => this.handlers.hover(null, 0, 0));
    new ResizeObserver(() => this.fitted && this.fit()).observe(host);
  }

  get factoryCount(): number {
    return this.nodes.size;
  }

  /** Rebuild everything from the layout (first render, or the set of factories changed). */
  rebuild(state: State, sel: Selection): void {
    const layout = state.layout;
    if (!layout) return;
    const firstLayout = this.layout === null;
    this.layout = layout;
    this.root.classList.toggle("compact", layout.compact);
    this.bg.replaceChildren();
    this.nodesLayer.replaceChildren();
    this.nodes.clear();
    this.sites.clear();
    this.drawBackground(layout);
    for (const f of state.factories.values()) this.addFactory(f, layout);
    for (const s of state.sites) this.addSite(s.id, layout);
    this.updateSites(state);
    this.drawEdges(state, sel);
    this.setSelection(state, sel);
    if (firstLayout || !this.fitted) this.fit();
  }

  private drawBackground(layout: Layout): void {
    for (const r of layout.rows) {
      this.bg.append(svg("rect", { x: r.x, y: r.y, width: r.w, height: r.h, rx: 8, class: "row-band" }));
      this.bg.append(svg("text", { x: r.x + 10, y: r.y + r.h / 2 + 4, class: "row-label" }, r.label));
    }
    for (const c of layout.columns) {
      this.bg.append(svg("text", { x: c.x + c.w / 2, y: c.y + 14, class: "region-label" }, c.name));
    }
    for (const z of layout.zones) {
      const g = svg("g", { class: `zone${z.on_site ? " on-site" : ""}`, "data-zone": z.zone });
      g.append(svg("rect", { x: z.x, y: z.y, width: z.w, height: z.h, rx: 12, style: `--zone:${z.colour}` }));
      const label = z.on_site ? `on-site zone · ${z.zone.slice("on-site:".length)}` : `zone ${z.zone}`;
      g.append(svg("text", { x: z.x + 10, y: z.y + 14, style: `--zone:${z.colour}` }, label));
      g.append(svg("title", {}, `compliance zone ${z.zone}: traffic from sites outside it may not be served here`));
      this.bg.append(g);
    }
  }

  private addFactory(f: Factory, layout: Layout): void {
    const pos = layout.positions[`factory:${f.id}`];
    if (!pos) return;
    const [cx, cy] = pos;
    const g = svg("g", { class: "factory", "data-id": f.id, "data-tier": f.tier, tabindex: 0 });
    const node: FactoryNode = { g, barWidth: 0 };
    if (layout.compact) {
      const size = layout.cell.w * 0.7;
      g.append(svg("circle", { cx, cy, r: size * 0.72, class: "halo" }));
      g.append(glyph(f.tier, cx, cy, size, "glyph"));
    } else {
      const w = layout.cell.w - 14;
      const h = layout.cell.h - 16;
      const x = cx - w / 2;
      const y = cy - h / 2;
      g.append(svg("rect", { x: x - 3, y: y - 3, width: w + 6, height: h + 6, rx: 10, class: "halo" }));
      g.append(svg("rect", { x, y, width: w, height: h, rx: 8, class: "card" }));
      g.append(glyph(f.tier, x + 15, y + 16, 15, "glyph"));
      node.name = svg("text", { x: x + 29, y: y + 21, class: "name" }, f.id);
      node.line2 = svg("text", { x: x + 10, y: y + 37, class: "figures" });
      node.line3 = svg("text", { x: x + 10, y: y + 50, class: "figures" });
      node.barWidth = w - 20;
      g.append(node.name, node.line2, node.line3);
      g.append(svg("rect", { x: x + 10, y: y + h - 10, width: node.barWidth, height: 4, rx: 2, class: "bar-bg" }));
      node.bar = svg("rect", { x: x + 10, y: y + h - 10, width: 0, height: 4, rx: 2, class: "bar" });
      g.append(node.bar);
    }
    g.addEventListener("click", (e) => {
      e.stopPropagation();
      this.handlers.select({ kind: "factory", id: f.id });
    });
    g.addEventListener("pointermove", (e) => this.handlers.hover(this.current(f.id), e.clientX, e.clientY));
    g.addEventListener("pointerleave", () => this.handlers.hover(null, 0, 0));
    this.nodes.set(f.id, node);
    this.nodesLayer.append(g);
    this.updateFactory(f);
  }

  private lookup: (id: string) => Factory | undefined = () => undefined;

  bindLookup(lookup: (id: string) => Factory | undefined): void {
    this.lookup = lookup;
  }

  private current(id: string): Factory | null {
    return this.lookup(id) ?? null;
  }

  updateFactory(f: Factory): void {
    const node = this.nodes.get(f.id);
    if (!node) return;
    const g = node.g;
    g.setAttribute("class", `factory h-${f.health} a-${f.admin} load-${loadLevel(f.load)}${g.classList.contains("selected") ? " selected" : ""}${g.classList.contains("dim") ? " dim" : ""}`);
    g.setAttribute("data-health", f.health);
    if (node.line2 && node.line3 && node.bar) {
      node.line2.textContent = `$${money(f.price_in)}/$${money(f.price_out)} per M · ${Math.round(f.grid_gco2_per_kwh)} g/kWh`;
      const ttft = f.ttft_p50_ms > 0 ? `TTFT ${ms(f.ttft_p50_ms)}` : "no traffic yet";
      const state = f.health === "healthy" ? (f.admin === "active" ? ttft : f.admin) : f.health;
      node.line3.textContent = `${state} · ${f.running}/${f.max_concurrency} busy${f.waiting ? `, ${f.waiting} queued` : ""}`;
      node.bar.setAttribute("width", String(Math.max(0, Math.min(1, f.load)) * node.barWidth));
    }
  }

  private addSite(id: string, layout: Layout): void {
    const pos = layout.positions[`site:${id}`];
    if (!pos) return;
    const [cx, cy] = pos;
    const g = svg("g", { class: "site", "data-id": id, tabindex: 0 });
    if (layout.compact) {
      g.append(svg("circle", { cx, cy, r: 13, class: "halo" }));
      g.append(svg("circle", { cx, cy, r: 10, class: "pill" }));
    } else {
      const w = layout.cell.w - 14;
      g.append(svg("rect", { x: cx - w / 2 - 3, y: cy - 31, width: w + 6, height: 38, rx: 19, class: "halo" }));
      g.append(svg("rect", { x: cx - w / 2, y: cy - 28, width: w, height: 32, rx: 16, class: "pill" }));
      g.append(svg("text", { x: cx, y: cy - 8, class: "site-name" }, id));
      g.append(svg("g", { class: "sidecars", "data-cx": cx, "data-cy": cy + 18 }));
    }
    g.append(svg("title", {}, `site ${id}: click to see its routes`));
    g.addEventListener("click", (e) => {
      e.stopPropagation();
      this.handlers.select({ kind: "site", id, model: "", trafficClass: "default" });
    });
    this.sites.set(id, g);
    this.nodesLayer.append(g);
  }

  /** The sidecar chips under each site: green in sync, amber lagging, red NACK, grey gone. */
  updateSites(state: State): void {
    const current = state.plan?.policies ?? {};
    for (const [id, g] of this.sites) {
      const sidecars = state.sidecarsAt(id);
      const holder = g.querySelector<SVGGElement>("g.sidecars");
      g.setAttribute("data-sidecars", String(sidecars.length));
      if (!holder) continue;
      holder.replaceChildren();
      const cx = Number(holder.dataset.cx);
      const cy = Number(holder.dataset.cy);
      const shown = sidecars.slice(0, 3);
      const label = (id: string) => (id.length > 22 ? `${id.slice(0, 21)}…` : id);
      const widths = shown.map((s) => 5.6 * label(s.node_id).length + 16);
      const total = widths.reduce((a, b) => a + b + 4, -4) + (sidecars.length > 3 ? 28 : 0);
      let x = cx - total / 2;
      for (const [i, s] of shown.entries()) {
        const chipW = widths[i];
        const status = !s.connected ? "gone" : s.last_nack ? "nack" : s.acked_version && s.acked_version === current[id] ? "synced" : "lagging";
        const chip = svg("g", { class: `sidecar ${status}` });
        chip.append(svg("rect", { x, y: cy - 8, width: chipW, height: 16, rx: 8 }));
        chip.append(svg("text", { x: x + chipW / 2, y: cy + 3.5 }, label(s.node_id)));
        chip.append(svg("title", {}, `${s.node_id}: ${s.connected ? "connected" : "disconnected"}, runs ${s.acked_version || "nothing yet"}${s.last_nack ? `, last NACK: ${s.last_nack}` : ""}`));
        holder.append(chip);
        x += chipW + 4;
      }
      if (sidecars.length > 3) holder.append(svg("text", { x: x + 12, y: cy + 3.5, class: "more" }, `+${sidecars.length - 3}`));
      if (!sidecars.length) holder.append(svg("text", { x: cx, y: cy + 3.5, class: "more" }, "no sidecar"));
    }
  }

  drawEdges(state: State, sel: Selection): void {
    const layout = this.layout;
    this.edgesLayer.replaceChildren();
    if (!layout) return;
    const compact = layout.compact;
    const edges = edgesFor(state.plan?.routes ?? [], sel);
    const labelled = sel.kind === "site";
    // Backups first so that primaries are drawn on top of them.
    edges.sort((a, b) => b.backup - a.backup || a.weight - b.weight);
    for (const e of edges) {
      const s = layout.positions[`site:${e.site}`];
      const f = layout.positions[`factory:${e.factory}`];
      if (!s || !f) continue;
      const sx = s[0];
      const sy = s[1] - (compact ? 10 : 28);
      const fx = f[0];
      const fy = f[1] + (compact ? layout.cell.w * 0.35 : layout.cell.h / 2 - 8);
      const mid = (sy + fy) / 2;
      const d = `M${sx},${sy} C${sx},${mid} ${fx},${mid} ${fx},${fy}`;
      const health = state.factories.get(e.factory)?.health ?? "unknown";
      const g = svg("g", { class: `edge ${e.backup ? "backup" : "primary"} to-${health}`, "data-site": e.site, "data-factory": e.factory });
      if (e.backup) {
        g.append(svg("path", { d, class: "line" }));
      } else {
        const width = (compact ? 0.8 : 1.5) + (compact ? 3 : 7) * e.weight;
        g.append(svg("path", { d, class: "line", "stroke-width": width }));
        if (!compact) g.append(svg("path", { d, class: "flow" }));
      }
      if (labelled && !compact) {
        const text = e.backup ? `backup ${e.backup}` : `${Math.round(e.weight * 100)}%`;
        g.append(svg("text", { x: fx + 6, y: fy + 13, class: "weight" }, text));
      }
      this.edgesLayer.append(g);
    }
  }

  setSelection(state: State, sel: Selection): void {
    for (const [id, node] of this.nodes) node.g.classList.toggle("selected", sel.kind === "factory" && sel.id === id);
    for (const [id, g] of this.sites) g.classList.toggle("selected", sel.kind === "site" && sel.id === id);
    // With a site selected, fade the factories its traffic cannot reach under the plan.
    let involved: Set<string> | null = null;
    if (sel.kind === "site") {
      involved = new Set(edgesFor(state.plan?.routes ?? [], sel).map((e) => e.factory));
    }
    for (const [id, node] of this.nodes) node.g.classList.toggle("dim", involved !== null && !involved.has(id));
  }

  // --- zoom and pan --------------------------------------------------------------------------

  fit(): void {
    const layout = this.layout;
    if (!layout) return;
    const box = this.root.getBoundingClientRect();
    // Screen pixels kept clear: a little above, and the legend's strip below.
    const top = 8;
    const bottom = 52;
    const width = box.width > 0 ? box.width : layout.width;
    const height = box.height > top + bottom ? box.height - top - bottom : layout.height;
    const scale = Math.max(layout.width / width, layout.height / height);
    const w = (box.width > 0 ? box.width : layout.width) * scale;
    const h = (box.height > 0 ? box.height : layout.height) * scale;
    this.view = { x: (layout.width - w) / 2, y: -top * scale, w, h };
    this.applyView();
    this.fitted = true;
  }

  zoom(factor: number, clientX?: number, clientY?: number): void {
    const box = this.root.getBoundingClientRect();
    const px = clientX === undefined ? 0.5 : (clientX - box.left) / box.width;
    const py = clientY === undefined ? 0.5 : (clientY - box.top) / box.height;
    const v = this.view;
    const w = Math.min(Math.max(v.w * factor, 60), (this.layout?.width ?? 1000) * 4);
    const h = (w * v.h) / v.w;
    this.view = { x: v.x + (v.w - w) * px, y: v.y + (v.h - h) * py, w, h };
    this.fitted = false;
    this.applyView();
  }

  private applyView(): void {
    const v = this.view;
    this.root.setAttribute("viewBox", `${v.x} ${v.y} ${v.w} ${v.h}`);
  }

  private onWheel(e: WheelEvent): void {
    e.preventDefault();
    this.zoom(Math.exp(e.deltaY * 0.0015), e.clientX, e.clientY);
  }

  private onDown(e: PointerEvent): void {
    this.drag = { x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y, moved: false };
  }

  private onMove(e: PointerEvent): void {
    const d = this.drag;
    if (!d) return;
    const dx = e.clientX - d.x;
    const dy = e.clientY - d.y;
    if (!d.moved && Math.hypot(dx, dy) < 4) return;
    if (!d.moved) this.root.setPointerCapture(e.pointerId);
    d.moved = true;
    const box = this.root.getBoundingClientRect();
    const scale = this.view.w / Math.max(box.width, 1);
    this.view = { ...this.view, x: d.vx - dx * scale, y: d.vy - dy * scale };
    this.fitted = false;
    this.applyView();
  }

  private onUp(e: PointerEvent): void {
    const d = this.drag;
    this.drag = null;
    if (d?.moved) {
      this.root.releasePointerCapture(e.pointerId);
      // A drag that ended on a node must not also select it.
      const swallow = (ev: Event) => ev.stopPropagation();
      window.addEventListener("click", swallow, { capture: true, once: true });
      setTimeout(() => window.removeEventListener("click", swallow, { capture: true }), 0);
    } else if (e.target === this.root || (e.target as Element).closest(".layer-bg")) {
      this.handlers.select({ kind: "none" });
    }
  }
}

export function legend(): HTMLElement {
  const box = el("div", { class: "legend" });
  const row = (icon: SVGElement, text: string) => {
    const s = svg("svg", { width: 16, height: 16, viewBox: "0 0 16 16" });
    s.append(icon);
    return el("span", { class: "legend-item" }, s, text);
  };
  box.append(
    row(glyph("center", 8, 8, 12, "legend-glyph"), "center"),
    row(glyph("edge", 8, 8, 13, "legend-glyph"), "edge"),
    row(glyph("on-site", 8, 8, 13, "legend-glyph"), "on-site"),
    row(svg("circle", { cx: 8, cy: 8, r: 5, class: "dot healthy" }), "healthy"),
    row(svg("circle", { cx: 8, cy: 8, r: 5, class: "dot unhealthy" }), "unhealthy"),
    row(svg("circle", { cx: 8, cy: 8, r: 5, class: "dot unknown" }), "unknown"),
    row(svg("line", { x1: 1, y1: 8, x2: 15, y2: 8, class: "legend-primary" }), "primary · width = weight"),
    row(svg("line", { x1: 1, y1: 8, x2: 15, y2: 8, class: "legend-backup" }), "backup"),
    row(svg("rect", { x: 1.5, y: 3.5, width: 13, height: 9, rx: 2, class: "legend-zone" }), "compliance zone: no crossing"),
  );
  return box;
}
