// Small formatting helpers shared by the graph, the panel and the timeline.

export function money(v: number): string {
  return v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

export function ms(v: number): string {
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 1 : 0)} ms`;
}

export function pct(v: number): string {
  return `${Math.round(v * 100)}%`;
}

export function clock(seconds: number): string {
  const d = new Date(seconds * 1000);
  return d.toTimeString().slice(0, 8);
}

export function ago(seconds: number, now: number = Date.now() / 1000): string {
  const s = Math.max(0, now - seconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  ...children: (Node | string)[]
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c);
  return node;
}

export function loadLevel(load: number): "low" | "mid" | "high" {
  return load < 0.6 ? "low" : load < 0.85 ? "mid" : "high";
}

/** replaceChildren that skips null and undefined (optional parts of a view). */
export function fill(parent: Element, ...children: (Node | string | null | undefined)[]): void {
  parent.replaceChildren(...children.filter((c): c is Node | string => c !== null && c !== undefined));
}
