// Small time-series charts for a factory's recent telemetry (hand-drawn SVG, no library).

import { el, svg } from "./format";

export interface Line {
  values: number[];
  cls: string;
  label: string;
}

export interface ChartOptions {
  title: string;
  format: (v: number) => string;
  now: number;
  window: number;
  max?: number;
}

const W = 320;
const H = 58;
const PAD = 3;

/** The time span drawn: the whole window once it is full, else from the first sample (at least
 * a minute), so a factory watched for ten seconds does not draw as a sliver at the right. */
export function span(t: number[], now: number, window: number): number {
  const first = t.length ? t[0] : now;
  return Math.min(window, Math.max(60, now - first));
}

export function lineChart(t: number[], lines: Line[], o: ChartOptions): HTMLElement {
  const width = span(t, o.now, o.window);
  const start = o.now - width;
  const x = (at: number) => PAD + ((at - start) / width) * (W - 2 * PAD);
  const top = Math.max(o.max ?? 0, ...lines.flatMap((l) => l.values), 1e-9);
  const y = (v: number) => H - PAD - (v / top) * (H - 2 * PAD);
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", preserveAspectRatio: "none" });
  chart.append(svg("line", { x1: 0, x2: W, y1: H - PAD, y2: H - PAD, class: "axis" }));
  for (const line of lines) {
    if (!line.values.length) continue;
    const points = line.values.map((v, i) => `${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { points, class: `series ${line.cls}` }));
  }
  const legend = el("div", { class: "chart-legend" });
  for (const line of lines) {
    const last = line.values.length ? o.format(line.values[line.values.length - 1]) : "–";
    legend.append(el("span", { class: `swatch ${line.cls}` }), `${line.label} `, el("b", {}, last), " ");
  }
  return el("figure", { class: "chart-box" }, el("figcaption", {}, o.title, el("span", { class: "scale" }, `max ${o.format(top)}`)), chart, legend);
}

/** Health over time as coloured bands: green healthy, grey unknown, red unhealthy. */
export function healthChart(t: number[], health: number[], now: number, window: number): HTMLElement {
  const width = span(t, now, window);
  const start = now - width;
  const x = (at: number) => ((Math.max(at, start) - start) / width) * W;
  const chart = svg("svg", { viewBox: `0 0 ${W} 14`, class: "chart health-band", preserveAspectRatio: "none" });
  for (let i = 0; i < t.length; i++) {
    const from = x(t[i]);
    const to = i + 1 < t.length ? x(t[i + 1]) : x(now);
    const cls = health[i] >= 1 ? "healthy" : health[i] <= 0 ? "unhealthy" : "unknown";
    if (to > from) chart.append(svg("rect", { x: from, y: 0, width: to - from, height: 14, class: cls }));
  }
  return el("figure", { class: "chart-box" }, el("figcaption", {}, "health", el("span", { class: "scale" }, `last ${width >= 90 ? `${Math.round(width / 60)} min` : `${Math.round(width)} s`}`)), chart);
}
