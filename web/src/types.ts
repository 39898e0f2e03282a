// The shapes the control plane sends (controlplane/ui/view.py and live.py): a snapshot first,
// then patches carrying only what changed.

export type Health = "healthy" | "unhealthy" | "unknown";
export type Tier = "center" | "edge" | "on-site";

export interface Factory {
  id: string;
  tier: Tier;
  region: string;
  zone: string;
  site: string;
  domain: string;
  models: string[];
  endpoint: string;
  health: Health;
  admin: "active" | "cordoned" | "drained";
  reason: string;
  routable: boolean;
  load: number;
  running: number;
  waiting: number;
  max_concurrency: number;
  kv_cache: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  itl_p50_ms: number;
  price_in: number;
  price_out: number;
  currency: string;
  grid_gco2_per_kwh: number;
  gco2_per_mtok: number;
  watts: number;
  tokens_per_joule: number;
  electricity_per_kwh: number;
}

export interface Site {
  id: string;
  region: string;
  zone: string;
  allowed_zones: string[];
  rtt_ms: Record<string, number>;
}

export interface Weighted {
  factory_id: string;
  weight: number;
}

export interface Route {
  site: string;
  model: string;
  traffic_class: string;
  primary: Weighted[];
  backups: Weighted[][];
  context_fallback_model: string;
}

export interface PlanStatus {
  version: number;
  status: string;
  solved_at: number;
  objective: number;
  solve_seconds: number;
  last_error: string;
  summary: string;
}

export interface Plan extends PlanStatus {
  routes: Route[];
  excluded: number;
  policies: Record<string, string>;
}

export interface Sidecar {
  node_id: string;
  site: string;
  build_version: string;
  peer: string;
  connected: boolean;
  acked_version: string;
  last_nack: string;
  lag_seconds: number;
}

export interface Status {
  replica_id: string;
  leader: boolean;
  store: string;
  read_only: boolean;
  plan: PlanStatus;
  sidecars: Sidecar[];
  factories_healthy: number;
  factories_total: number;
}

export interface Box {
  x: number;
  y: number;
  w: number;
  h: number;
}

export interface Layout {
  width: number;
  height: number;
  compact: boolean;
  cell: { w: number; h: number };
  columns: (Box & { name: string; zone: string })[];
  rows: (Box & { key: string; label: string })[];
  zones: (Box & { zone: string; on_site: boolean; colour: string })[];
  positions: Record<string, [number, number]>;
}

export type Severity = "info" | "ok" | "warning" | "error";

export interface TdnEvent {
  id: number;
  at: number;
  kind: string;
  subject: string;
  detail: string;
  severity: Severity;
  plan_version: number;
  count: number;
}

export interface Snapshot {
  type: "snapshot";
  seq: number;
  at: number;
  layout: Layout;
  factories: Record<string, Factory>;
  sites: Site[];
  plan: Plan;
  status: Status;
  events: TdnEvent[];
}

export interface Patch {
  type: "patch";
  seq: number;
  at: number;
  layout?: Layout;
  factories?: Record<string, Factory>;
  removed?: string[];
  plan?: Plan;
  status?: Status;
  events?: TdnEvent[];
}

export interface History {
  factory: string;
  window_s: number;
  fields: string[];
  samples: Record<string, number[]>;
}

export interface ExplainCost {
  name: string;
  value: number;
}

export interface ExplainFactory {
  factory_id: string;
  role: string;
  weight: number;
  costs: ExplainCost[];
  excluded_by: string;
}

export interface Explain {
  site: string;
  model: string;
  traffic_class: string;
  plan_version: number;
  factories: ExplainFactory[];
  requirements: string[];
  protection: string[];
  notes: string[];
  exact: boolean;
}

export type Selection =
  | { kind: "none" }
  | { kind: "factory"; id: string }
  | { kind: "site"; id: string; model: string; trafficClass: string };
