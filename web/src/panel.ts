// The side panel: what is selected, in detail. A factory shows its figures, where the plan
// uses it and charts of its recent telemetry; a site shows its sidecars, its routes per model
// and the control plane's explanation of the selected route.

import { healthChart, lineChart } from "./charts";
import { ago, el, fill, money, ms, pct, svg } from "./format";
import { glyph } from "./graph";
import type { State } from "./state";
import type { Explain, Factory, History, Route, Selection } from "./types";

export interface PanelHandlers {
  select(sel: Selection): void;
}

export class Panel {
  private history: History | null = null;
  private historyFor = "";
  private historyAt = 0;
  private explain: Explain | { error: string } | null = null;
  private explainKey = "";
  private pending = new Set<string>();

  constructor(private readonly host: HTMLElement, private readonly handlers: PanelHandlers) {}

  render(state: State, sel: Selection): void {
    if (sel.kind === "factory") {
      const f = state.factories.get(sel.id);
      if (f) return this.renderFactory(state, f);
    }
    if (sel.kind === "site") {
      const site = state.sites.find((s) => s.id === sel.id);
      if (site) return this.renderSite(state, sel);
    }
    this.renderOverview(state);
  }

  // --- nothing selected ----------------------------------------------------------------------

  private renderOverview(state: State): void {
    const plan = state.plan;
    const status = state.status;
    const counts = { healthy: 0, unhealthy: 0, unknown: 0 };
    const tiers = new Map<string, number>();
    for (const f of state.factories.values()) {
      counts[f.health] += 1;
      tiers.set(f.tier, (tiers.get(f.tier) ?? 0) + 1);
    }
    const sidecars = status?.sidecars ?? [];
    fill(this.host, 
      el("h2", {}, "Network"),
      el("p", { class: "hint" }, "Select a factory for its telemetry, or a site for its routes and why they were chosen."),
      kv([
        ["plan", plan?.version ? `v${plan.version} · ${plan.summary}` : plan?.summary || "no plan yet"],
        ["solved", plan?.solved_at ? `${ago(plan.solved_at)} in ${ms((plan.solve_seconds ?? 0) * 1000)}` : "–"],
        ["objective", plan?.objective ? plan.objective.toFixed(4) : "–"],
        ["excluded pairs", String(plan?.excluded ?? 0)],
        ["factories", `${counts.healthy} healthy · ${counts.unhealthy} unhealthy · ${counts.unknown} unknown`],
        ["tiers", [...tiers].map(([t, n]) => `${n} ${t}`).join(" · ") || "–"],
        ["replica", status ? `${status.replica_id} (${status.leader ? "leader" : "follower"}, ${status.store}${status.read_only ? ", read-only" : ""})` : "–"],
      ]),
      el("h3", {}, `Sidecars (${sidecars.length})`),
      sidecars.length
        ? table(["node", "site", "runs", "state"], sidecars.map((s) => [
            s.node_id,
            s.site,
            s.acked_version || "–",
            !s.connected ? "disconnected" : s.last_nack ? `NACK: ${s.last_nack}` : s.lag_seconds > 0 ? `lagging ${s.lag_seconds.toFixed(1)} s` : "in sync",
          ]))
        : el("p", { class: "hint" }, "No sidecar has connected yet."),
    );
  }

  // --- a factory -----------------------------------------------------------------------------

  private renderFactory(state: State, f: Factory): void {
    this.loadHistory(state, f.id);
    const icon = svg("svg", { width: 22, height: 22, viewBox: "0 0 22 22", class: `title-glyph h-${f.health}` });
    icon.append(glyph(f.tier, 11, 11, 16, "glyph"));
    const uses = state.usesOf(f.id);
    const charts = el("div", { class: "charts" });
    const h = this.historyFor === f.id ? this.history : null;
    if (h && h.samples.t.length) {
      const now = Date.now() / 1000;
      const t = h.samples.t;
      const win = h.window_s;
      charts.append(
        healthChart(t, h.samples.health, now, win),
        lineChart(t, [{ values: h.samples.running, cls: "s1", label: "running" }, { values: h.samples.waiting, cls: "s2", label: "queued" }],
          { title: `load (of ${f.max_concurrency} slots)`, format: (v) => v.toFixed(0), now, window: win, max: 1 }),
        lineChart(t, [{ values: h.samples.ttft_p50_s.map((v) => v * 1000), cls: "s1", label: "p50" }, { values: h.samples.ttft_p99_s.map((v) => v * 1000), cls: "s3", label: "p99" }],
          { title: "time to first token", format: (v) => ms(v), now, window: win }),
        lineChart(t, [{ values: h.samples.price_in, cls: "s1", label: "input" }, { values: h.samples.price_out, cls: "s2", label: "output" }],
          { title: `price per 1M tokens (${f.currency})`, format: (v) => `$${money(v)}`, now, window: win }),
      );
    } else {
      charts.append(el("p", { class: "hint" }, "Collecting telemetry…"));
    }
    const close = el("button", { type: "button", class: "close", title: "back to the overview" }, "×");
    close.addEventListener("click", () => this.handlers.select({ kind: "none" }));
    fill(this.host, 
      el("div", { class: "title" }, icon, el("h2", {}, f.id), el("span", { class: `badge h-${f.health}` }, f.health), f.admin !== "active" ? el("span", { class: "badge admin" }, f.admin) : null, close),
      f.reason ? el("p", { class: `reason h-${f.health}` }, f.reason) : null,
      el("div", { class: "metrics" },
        metric("load", pct(f.load), `${f.running}/${f.max_concurrency} busy, ${f.waiting} queued`),
        metric("TTFT p50", ms(f.ttft_p50_ms), `p99 ${ms(f.ttft_p99_ms)}`),
        metric("price / 1M", `$${money(f.price_in)} · $${money(f.price_out)}`, "input · output"),
        metric("carbon", `${Math.round(f.grid_gco2_per_kwh)} g/kWh`, `${f.gco2_per_mtok.toFixed(0)} g CO₂ per 1M tokens`),
      ),
      charts,
      kv([
        ["tier", f.tier],
        ["region", f.region],
        ["zone", f.zone],
        ["failure domain", f.domain],
        ...(f.site ? ([["site", f.site]] as [string, string][]) : []),
        ["models", f.models.join(", ")],
        ["KV cache", pct(f.kv_cache)],
        ["energy", `${f.watts} W · ${f.tokens_per_joule} tok/J · $${f.electricity_per_kwh}/kWh`],
        ["endpoint", f.endpoint],
      ]),
      el("h3", {}, `In the plan (${uses.length})`),
      uses.length
        ? table(["site", "model", "role", "weight"], uses.map((u) => [u.site, u.model, u.role, u.role === "primary" ? pct(u.weight) : "–"]))
        : el("p", { class: "hint" }, "No route uses this factory now."),
    );
  }

  private loadHistory(state: State, id: string): void {
    const now = Date.now();
    // At most one fetch per second per factory; the stream says when figures changed.
    if (this.historyFor === id && now - this.historyAt < 1000) return;
    if (this.pending.has(`h:${id}`)) return;
    this.pending.add(`h:${id}`);
    this.historyAt = now;
    fetch(`/api/history?factory=${encodeURIComponent(id)}`)
      .then((r) => (r.ok ? (r.json() as Promise<History>) : null))
      .then((h) => {
        this.history = h;
        this.historyFor = id;
        this.historyAt = Date.now();
        this.rerender(state);
      })
      .catch(() => undefined)
      .finally(() => this.pending.delete(`h:${id}`));
  }

  // --- a site --------------------------------------------------------------------------------

  private rerender: (state: State) => void = () => undefined;

  bind(getSelection: () => Selection): void {
    this.rerender = (state) => this.render(state, getSelection());
  }

  private renderSite(state: State, sel: Extract<Selection, { kind: "site" }>): void {
    const site = state.sites.find((s) => s.id === sel.id)!;
    const routes = state.routesAt(site.id);
    const models = [...new Set(routes.map((r) => `${r.model}\u0000${r.traffic_class}`))].sort();
    const picker = el("div", { class: "models", role: "tablist" });
    for (const key of models) {
      const [model, cls] = key.split("\u0000");
      const b = el("button", { type: "button", "data-model": model, class: sel.model === model && sel.trafficClass === cls ? "on" : "" }, cls === "default" ? model : `${model} · ${cls}`);
      b.addEventListener("click", () => this.handlers.select({ kind: "site", id: site.id, model, trafficClass: cls }));
      picker.append(b);
    }
    const route = routes.find((r) => r.model === sel.model && r.traffic_class === sel.trafficClass);
    const close = el("button", { type: "button", class: "close", title: "back to the overview" }, "×");
    close.addEventListener("click", () => this.handlers.select({ kind: "none" }));
    const sidecars = state.sidecarsAt(site.id);
    const policy = state.plan?.policies[site.id] ?? "";
    fill(this.host, 
      el("div", { class: "title" }, el("span", { class: "site-icon" }), el("h2", {}, site.id), el("span", { class: "badge" }, `policy ${policy || "–"}`), close),
      kv([
        ["region", site.region],
        ["zone", site.zone],
        ["may be served in", site.allowed_zones.join(", ")],
        ["RTT", Object.entries(site.rtt_ms).map(([r, v]) => `${r} ${v} ms`).join(" · ") || "–"],
      ]),
      el("h3", {}, `Sidecars (${sidecars.length})`),
      sidecars.length
        ? table(["node", "runs", "state"], sidecars.map((s) => [s.node_id, s.acked_version || "–", !s.connected ? "disconnected" : s.last_nack ? `NACK: ${s.last_nack}` : s.acked_version === policy ? "in sync" : "lagging"]))
        : el("p", { class: "hint" }, "No sidecar at this site."),
      el("h3", {}, "Routes"),
      models.length ? picker : el("p", { class: "hint" }, "The plan has no route for this site."),
      route ? routeView(route, state) : models.length ? el("p", { class: "hint" }, "Pick a model to see its route and why.") : null,
      route ? this.explainView(state, route) : null,
    );
  }

  private explainView(state: State, route: Route): HTMLElement {
    const key = `${route.site}|${route.model}|${route.traffic_class}|${state.plan?.version ?? 0}`;
    if (key !== this.explainKey && !this.pending.has(key)) {
      this.pending.add(key);
      const q = new URLSearchParams({ site: route.site, model: route.model, class: route.traffic_class });
      fetch(`/api/explain?${q}`)
        .then(async (r) => (r.ok ? ((await r.json()) as Explain) : { error: ((await r.json()) as { error: string }).error }))
        .then((x) => {
          this.explain = x;
          this.explainKey = key;
          this.rerender(state);
        })
        .catch((e: unknown) => {
          this.explain = { error: String(e) };
          this.explainKey = key;
        })
        .finally(() => this.pending.delete(key));
    }
    const box = el("section", { class: "explain" }, el("h3", {}, "Why (explain)"));
    const x = this.explainKey === key ? this.explain : null;
    if (!x) {
      box.append(el("p", { class: "hint" }, "Asking the control plane…"));
    } else if ("error" in x) {
      box.append(el("p", { class: "reason h-unhealthy" }, x.error));
    } else {
      const names = [...new Set(x.factories.flatMap((f) => f.costs.map((c) => c.name)))];
      const rows = x.factories.map((f) => [
        f.factory_id,
        f.role,
        f.weight ? pct(f.weight) : "–",
        f.excluded_by || f.costs.map((c) => `${c.name} ${c.value.toPrecision(3)}`).join(" · ") || "–",
      ]);
      box.append(el("p", { class: "hint" }, `plan v${x.plan_version}, ${x.traffic_class} traffic${names.length ? `; cost terms: ${names.join(", ")}` : ""}`));
      box.append(table(["factory", "role", "weight", "costs / excluded by"], rows, "explain-table"));
      const lists: [string, string[]][] = [
        ["rules", x.requirements],
        ["failure protection (pre-computed backups, no re-solve)", x.protection],
        ["notes", x.notes],
      ];
      for (const [title, items] of lists) {
        if (items.length) box.append(el("p", { class: "hint" }, `${title}:`), el("ul", { class: "explain-notes" }, ...items.map((t) => el("li", {}, t))));
      }
    }
    return box;
  }
}

function routeView(route: Route, state: State): HTMLElement {
  const box = el("section", { class: "route" });
  const bar = el("div", { class: "weights" });
  for (const w of route.primary) {
    const f = state.factories.get(w.factory_id);
    const seg = el("span", { class: `seg h-${f?.health ?? "unknown"}`, style: `flex:${Math.max(w.weight, 0.02)}`, title: `${w.factory_id} ${pct(w.weight)}` }, w.weight >= 0.12 ? `${w.factory_id} ${pct(w.weight)}` : "");
    bar.append(seg);
  }
  box.append(el("div", { class: "label" }, "primary"), bar);
  route.backups.forEach((level, i) => {
    box.append(el("div", { class: "label" }, `backup ${i + 1}`), el("div", { class: "chips" }, ...level.map((w) => el("span", { class: `chip h-${state.factories.get(w.factory_id)?.health ?? "unknown"}` }, w.factory_id))));
  });
  if (route.context_fallback_model) box.append(el("p", { class: "hint" }, `longer prompts fall back to ${route.context_fallback_model}`));
  return box;
}

function kv(rows: [string, string][]): HTMLElement {
  const dl = el("dl", { class: "kv" });
  for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
  return dl;
}

function metric(label: string, value: string, sub: string): HTMLElement {
  return el("div", { class: "metric" }, el("span", { class: "label" }, label), el("span", { class: "value" }, value), el("span", { class: "sub" }, sub));
}

function table(head: string[], rows: string[][], cls = ""): HTMLElement {
  const t = el("table", { class: cls });
  t.append(el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))));
  t.append(el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
  return t;
}
