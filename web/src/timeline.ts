// The timeline: a strip of the last minutes (plan versions and failures as marks) above the
// list of events, newest first.

import { clock, el, svg } from "./format";
import type { TdnEvent } from "./types";

const STRIP_SECONDS = 600;
const LIST_LIMIT = 150;

export type Filter = "all" | "factories" | "plan" | "sidecars";

const FILTERS: Record<Filter, (e: TdnEvent) => boolean> = {
  all: () => true,
  factories: (e) => e.kind.startsWith("factory-"),
  plan: (e) => e.kind === "plan" || e.kind.startsWith("policy-") || e.kind === "solve-failed",
  sidecars: (e) => e.kind.startsWith("sidecar-"),
};

const KIND_LABEL: Record<string, string> = {
  "factory-new": "joined",
  "factory-down": "down",
  "factory-up": "up",
  "factory-admin": "admin",
  plan: "re-solve",
  "solve-failed": "solve failed",
  "policy-pushed": "policy",
  "policy-applied": "policy applied",
  "sidecar-connected": "sidecar",
  "sidecar-disconnected": "sidecar",
  "sidecar-ack": "ACK",
  "sidecar-nack": "NACK",
};

export class Timeline {
  private filter: Filter = "all";
  private readonly strip: HTMLElement;
  private readonly list: HTMLOListElement;
  private events: TdnEvent[] = [];

  constructor(host: HTMLElement, private readonly onSubject: (subject: string, kind: string) => void) {
    const filters = el("div", { class: "filters", role: "tablist" });
    for (const f of Object.keys(FILTERS) as Filter[]) {
      const b = el("button", { type: "button", "data-filter": f, class: f === this.filter ? "on" : "" }, f);
      b.addEventListener("click", () => {
        this.filter = f;
        filters.querySelectorAll("button").forEach((x) => x.classList.toggle("on", x === b));
        this.render(this.events);
      });
      filters.append(b);
    }
    this.strip = el("div", { class: "strip" });
    this.list = el("ol", { class: "events", "aria-live": "polite" });
    host.append(el("header", { class: "timeline-head" }, el("h2", {}, "Timeline"), filters), this.strip, this.list);
  }

  render(events: TdnEvent[]): void {
    this.events = events;
    this.renderStrip(events);
    const shown = events.filter(FILTERS[this.filter]).slice(-LIST_LIMIT).reverse();
    this.list.replaceChildren(
      ...shown.map((e) => {
        const li = el(
          "li",
          { class: `event ${e.severity}`, "data-kind": e.kind, "data-id": String(e.id) },
          el("time", {}, clock(e.at)),
          el("span", { class: "sev" }),
          el("span", { class: "kind" }, KIND_LABEL[e.kind] ?? e.kind),
          el("span", { class: "detail" }, e.detail),
          e.count > 1 ? el("span", { class: "count", title: "repeats folded into this line" }, `×${e.count}`) : null,
          e.plan_version ? el("span", { class: "version" }, `v${e.plan_version}`) : null,
        );
        li.addEventListener("click", () => this.onSubject(e.subject, e.kind));
        return li;
      }),
    );
  }

  private renderStrip(events: TdnEvent[]): void {
    const now = Date.now() / 1000;
    const start = now - STRIP_SECONDS;
    const W = 1000;
    const x = (t: number) => ((t - start) / STRIP_SECONDS) * W;
    const s = svg("svg", { viewBox: `0 0 ${W} 30`, preserveAspectRatio: "none", class: "strip-svg" });
    for (let m = 0; m <= 10; m++) {
      s.append(svg("line", { x1: (m / 10) * W, x2: (m / 10) * W, y1: 24, y2: 30, class: "tick" }));
    }
    for (const e of events) {
      if (e.at < start) continue;
      const cx = x(e.at);
      if (e.kind === "plan") {
        s.append(svg("line", { x1: cx, x2: cx, y1: 4, y2: 24, class: "mark plan" }, svg("title", {}, e.detail)));
      } else if (e.severity === "error" || e.severity === "warning" || e.severity === "ok") {
        s.append(svg("circle", { cx, cy: 14, r: 4, class: `mark ${e.severity}` }, svg("title", {}, `${clock(e.at)} ${e.detail}`)));
      }
    }
    this.strip.replaceChildren(s, el("div", { class: "strip-axis" }, el("span", {}, "−10 min"), el("span", {}, "now")));
  }
}
