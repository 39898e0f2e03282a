// The page's copy of the control plane's view: a snapshot, then patches applied in order.

import type { Factory, Layout, Patch, Plan, Site, Snapshot, Status, TdnEvent } from "./types";

const MAX_EVENTS = 400;

export interface Changes {
  layout: boolean;
  factories: string[];
  plan: boolean;
  status: boolean;
  events: boolean;
}

export class State {
  seq = 0;
  layout: Layout | null = null;
  factories = new Map<string, Factory>();
  sites: Site[] = [];
  plan: Plan | null = null;
  status: Status | null = null;
  events: TdnEvent[] = [];

  /** Replace everything; returns what the view must redraw (all of it). */
  reset(s: Snapshot): Changes {
    this.seq = s.seq;
    this.layout = s.layout;
    this.factories = new Map(Object.entries(s.factories));
    this.sites = s.sites;
    this.plan = s.plan;
    this.status = s.status;
    this.events = s.events.slice(-MAX_EVENTS);
    return { layout: true, factories: [...this.factories.keys()], plan: true, status: true, events: true };
  }

  apply(p: Patch): Changes {
    this.seq = p.seq;
    const changed: string[] = [];
    if (p.factories) {
      for (const [id, f] of Object.entries(p.factories)) {
        this.factories.set(id, f);
        changed.push(id);
      }
    }
    for (const id of p.removed ?? []) this.factories.delete(id);
    if (p.layout) this.layout = p.layout;
    if (p.plan) this.plan = p.plan;
    if (p.status) this.status = p.status;
    if (p.events) {
      // Folded events come back with the same id and a higher count: replace in place.
      const index = new Map(this.events.map((e, i) => [e.id, i]));
      for (const e of p.events) {
        const at = index.get(e.id);
        if (at === undefined) this.events.push(e);
        else this.events[at] = e;
      }
      if (this.events.length > MAX_EVENTS) this.events = this.events.slice(-MAX_EVENTS);
    }
    return {
      layout: Boolean(p.layout) || Boolean(p.removed?.length),
      factories: changed,
      plan: Boolean(p.plan),
      status: Boolean(p.status),
      events: Boolean(p.events),
    };
  }

  sidecarsAt(site: string) {
    return (this.status?.sidecars ?? []).filter((s) => s.site === site);
  }

  routesAt(site: string) {
    return (this.plan?.routes ?? []).filter((r) => r.site === site);
  }

  /** Where a factory is used: (route, role, weight) for every route naming it. */
  usesOf(factoryId: string) {
    const out: { site: string; model: string; role: string; weight: number }[] = [];
    for (const r of this.plan?.routes ?? []) {
      for (const w of r.primary) if (w.factory_id === factoryId) out.push({ site: r.site, model: r.model, role: "primary", weight: w.weight });
      r.backups.forEach((level, i) => {
        for (const w of level) if (w.factory_id === factoryId) out.push({ site: r.site, model: r.model, role: `backup ${i + 1}`, weight: w.weight });
      });
    }
    return out;
  }
}
