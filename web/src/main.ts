// The live topology page: subscribes to the control plane's event stream and keeps the graph,
// the side panel, the timeline and the header in step with it.

import { clock, el, fill, money, ms, pct } from "./format";
import { legend, TopologyGraph } from "./graph";
import { Panel } from "./panel";
import { State, type Changes } from "./state";
import { Timeline } from "./timeline";
import type { Factory, Patch, Selection, Snapshot } from "./types";

interface Rendered {
  seq: number;
  at: number; // Date.now() when the patch was on screen
  serverAt: number; // when the control plane noticed the change (seconds)
  renderMs: number;
}

// What tests and benchmarks read over the browser driver.
interface TdnUi {
  connected: boolean;
  snapshots: number;
  rendered: Rendered | null;
  factoryCount(): number;
  health(id: string): string | null;
}

declare global {
  interface Window {
    tdnUi: TdnUi;
  }
}

const state = new State();
let selection: Selection = { kind: "none" };

const header = document.getElementById("status-bar")!;
const graphHost = document.getElementById("graph")!;
const panelHost = document.getElementById("panel")!;
const timelineHost = document.getElementById("timeline")!;
const tooltip = document.getElementById("tooltip")!;

const ui: TdnUi = {
  connected: false,
  snapshots: 0,
  rendered: null,
  factoryCount: () => graphHost.querySelectorAll("g.factory").length,
  health: (id) => graphHost.querySelector(`g.factory[data-id="${CSS.escape(id)}"]`)?.getAttribute("data-health") ?? null,
};
window.tdnUi = ui;

function select(sel: Selection): void {
  selection = sel;
  graph.drawEdges(state, selection);
  graph.setSelection(state, selection);
  panel.render(state, selection);
}

const graph = new TopologyGraph(graphHost, {
  select,
  hover: (f, x, y) => showTooltip(f, x, y),
});
graph.bindLookup((id) => state.factories.get(id));
const panel = new Panel(panelHost, { select });
panel.bind(() => selection);
const timeline = new Timeline(timelineHost, (subject, kind) => {
  if (kind.startsWith("factory-") && state.factories.has(subject)) select({ kind: "factory", id: subject });
  else if (state.sites.some((s) => s.id === subject)) select({ kind: "site", id: subject, model: "", trafficClass: "default" });
});

graphHost.append(legend(), zoomControls());

function zoomControls(): HTMLElement {
  const box = el("div", { class: "zoom" });
  const button = (label: string, title: string, action: () => void) => {
    const b = el("button", { type: "button", title }, label);
    b.addEventListener("click", action);
    return b;
  };
  box.append(button("+", "zoom in", () => graph.zoom(0.8)), button("−", "zoom out", () => graph.zoom(1.25)), button("fit", "fit the whole network", () => graph.fit()));
  return box;
}

function showTooltip(f: Factory | null, x: number, y: number): void {
  if (!f) {
    tooltip.hidden = true;
    return;
  }
  fill(tooltip, 
    el("div", { class: "tt-title" }, f.id, el("span", { class: `badge h-${f.health}` }, f.health)),
    el("div", {}, `${f.tier} · ${f.region} · zone ${f.zone}${f.admin !== "active" ? ` · ${f.admin}` : ""}`),
    f.reason ? el("div", { class: "tt-reason" }, f.reason) : null,
    el("div", {}, `load ${pct(f.load)} (${f.running}/${f.max_concurrency}, ${f.waiting} queued) · TTFT ${ms(f.ttft_p50_ms)}`),
    el("div", {}, `price $${money(f.price_in)} in / $${money(f.price_out)} out per 1M`),
    el("div", {}, `carbon ${Math.round(f.grid_gco2_per_kwh)} g/kWh · ${f.gco2_per_mtok.toFixed(0)} g per 1M tokens`),
  );
  tooltip.hidden = false;
  const pad = 14;
  const box = tooltip.getBoundingClientRect();
  const left = x + pad + box.width > window.innerWidth ? x - pad - box.width : x + pad;
  const top = y + pad + box.height > window.innerHeight ? y - pad - box.height : y + pad;
  tooltip.style.left = `${left}px`;
  tooltip.style.top = `${top}px`;
}

function renderHeader(): void {
  const s = state.status;
  const plan = state.plan;
  const counts = { healthy: 0, unhealthy: 0, unknown: 0 };
  for (const f of state.factories.values()) counts[f.health] += 1;
  const sidecars = s?.sidecars ?? [];
  const synced = sidecars.filter((x) => x.connected && x.acked_version && x.acked_version === plan?.policies[x.site]).length;
  const nacks = sidecars.filter((x) => x.last_nack).length;
  fill(header, 
    el("span", { class: "stat plan", title: plan?.summary ?? "" }, el("b", {}, plan?.version ? `plan v${plan.version}` : "no plan"), ` ${plan?.status ?? ""}`),
    plan?.last_error ? el("span", { class: "stat error", title: plan.last_error }, "last solve failed") : null,
    el("span", { class: "stat" }, el("i", { class: "dot healthy" }), `${counts.healthy} healthy`),
    counts.unhealthy ? el("span", { class: "stat" }, el("i", { class: "dot unhealthy" }), `${counts.unhealthy} unhealthy`) : null,
    counts.unknown ? el("span", { class: "stat" }, el("i", { class: "dot unknown" }), `${counts.unknown} unknown`) : null,
    el("span", { class: "stat" }, `sidecars ${synced}/${sidecars.length} in sync`),
    nacks ? el("span", { class: "stat error" }, `${nacks} NACK`) : null,
    el("span", { class: "stat muted" }, s ? `${s.replica_id} · ${s.leader ? "leader" : "follower"} · ${s.store}` : ""),
  );
}

function render(changes: Changes): void {
  if (changes.layout) {
    graph.rebuild(state, selection);
  } else {
    for (const id of changes.factories) {
      const f = state.factories.get(id);
      if (f) graph.updateFactory(f);
    }
    if (changes.plan) {
      graph.drawEdges(state, selection);
      graph.setSelection(state, selection);
    } else if (changes.factories.length) {
      // Edge colours follow the health of the factory they lead to.
      graph.drawEdges(state, selection);
    }
    if (changes.status || changes.plan) graph.updateSites(state);
  }
  if (changes.status || changes.plan || changes.factories.length) renderHeader();
  const panelCares = changes.layout || changes.plan || changes.status || (selection.kind === "factory" ? changes.factories.includes(selection.id) : selection.kind === "none" && changes.factories.length > 0);
  if (panelCares) panel.render(state, selection);
  if (changes.events) timeline.render(state.events);
}

function onMessage(kind: "snapshot" | "patch", data: string): void {
  const started = performance.now();
  const message = JSON.parse(data) as Snapshot | Patch;
  const changes = kind === "snapshot" ? state.reset(message as Snapshot) : state.apply(message as Patch);
  const sel = selection;
  if (kind === "snapshot" && sel.kind !== "none") {
    const gone = sel.kind === "factory" ? !state.factories.has(sel.id) : !state.sites.some((s) => s.id === sel.id);
    if (gone) selection = { kind: "none" };
  }
  render(changes);
  const finished = performance.now();
  performance.measure(`tdn:${kind}`, { start: started, end: finished });
  if (kind === "snapshot" && ui.snapshots++ === 0) performance.mark("tdn:first-render");
  ui.rendered = { seq: message.seq, at: Date.now(), serverAt: message.at, renderMs: finished - started };
}

const connection = document.getElementById("connection")!;

function connect(): void {
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    ui.connected = true;
    connection.className = "live";
    connection.textContent = "live";
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (the server asks for 1 s); a fresh snapshot follows.
    ui.connected = false;
    connection.className = "down";
    connection.textContent = "reconnecting…";
  });
  source.addEventListener("snapshot", (e) => onMessage("snapshot", (e as MessageEvent<string>).data));
  source.addEventListener("patch", (e) => onMessage("patch", (e as MessageEvent<string>).data));
}

// The timeline's "−10 min" strip moves with the clock even when nothing happens.
setInterval(() => timeline.render(state.events), 5000);
document.getElementById("clock")!.textContent = clock(Date.now() / 1000);
setInterval(() => (document.getElementById("clock")!.textContent = clock(Date.now() / 1000)), 1000);
connect();
