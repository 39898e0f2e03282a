"""The control plane's Prometheus metrics, registered in one registry per control-plane instance.

A per-instance :class:`~prometheus_client.CollectorRegistry` (rather than the process-global one)
lets several control planes run in one process, as the tests and a future multi-replica harness
do, without their series colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Convergence is usually milliseconds on a LAN but can take many seconds when a sidecar is slow
# or reconnecting; the buckets span both.
_CONVERGENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_SOLVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControlPlaneMetrics:
    """Every series the control plane exports; ``registry`` is what ``/metrics`` renders."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # Telemetry ingest.
        self.telemetry_reports = Counter(
            "tdn_telemetry_reports_total", "Telemetry reports accepted, per factory.",
            ["factory"], registry=r)
        self.telemetry_rejected = Counter(
            "tdn_telemetry_rejected_total",
            "Telemetry reports refused by validation, per reason (negative, not_finite, ...).",
            ["reason"], registry=r)
        self.telemetry_streams = Gauge(
            "tdn_telemetry_streams", "Open telemetry streams from factory agents.", registry=r)
        self.factories = Gauge(
            "tdn_factories", "Known factories by health as last evaluated.", ["health"],
            registry=r)
        # Solving.
        self.plan_version = Gauge(
            "tdn_plan_version", "Version of the plan in force.", registry=r)
        self.solves = Counter(
            "tdn_solves_total", "Solve attempts by result (ok, error, store_error).", ["result"],
            registry=r)
        self.routes_held = Gauge(
            "tdn_plan_routes_held",
            "Routes of the plan in force kept from an earlier plan because every factory they "
            "used is excluded only by telemetry (unknown, unhealthy, at capacity): fail static.",
            registry=r)
        self.planned_demand = Gauge(
            "tdn_plan_demand_rps",
            "Requests per second the plan in force was solved for, per demand group (observed "
            "usage, smoothed, over every replica; the network file's where none was seen).",
            ["site", "model", "traffic_class"], registry=r)
        self.solve_seconds = Histogram(
            "tdn_solve_seconds", "Wall time of one solve and compile.",
            buckets=_SOLVE_BUCKETS, registry=r)
        # Discovery.
        self.discovery_streams = Gauge(
            "tdn_discovery_streams", "Open policy discovery streams from sidecars.", registry=r)
        self.discovery_pushes = Counter(
            "tdn_discovery_pushes_total", "Policy responses sent to sidecars, per site.",
            ["site"], registry=r)
        self.discovery_nacks = Counter(
            "tdn_discovery_nacks_total", "Policies refused (NACKed) by sidecars, per site.",
            ["site"], registry=r)
        self.discovery_stale = Counter(
            "tdn_discovery_stale_requests_total",
            "Discovery requests ignored because their nonce was not the latest sent, per site.",
            ["site"], registry=r)
        self.policy_version = Gauge(
            "tdn_policy_version",
            "Plan version the site's current policy was generated in (its version number).",
            ["site"], registry=r)
        self.discovery_convergence = Histogram(
            "tdn_discovery_convergence_seconds",
            "Time from a site policy version reaching this replica to a sidecar's ACK of it.",
            ["site"], buckets=_CONVERGENCE_BUCKETS, registry=r)
        self.discovery_queue = Histogram(
            "tdn_discovery_queue_seconds",
            "Time a new policy version waited, per connected sidecar, between reaching this "
            "replica and being handed to that sidecar's stream.",
            ["site"], buckets=_CONVERGENCE_BUCKETS, registry=r)
        self.discovery_push = Histogram(
            "tdn_discovery_push_seconds",
            "Time to write one policy response onto a sidecar's stream.",
            ["site"], buckets=_CONVERGENCE_BUCKETS, registry=r)
        self.version_convergence = Histogram(
            "tdn_policy_convergence_seconds",
            "Per site policy version: time from its creation by the solver (wall clock, so it "
            "spans replicas) until every sidecar connected to this replica at the site ACKed it.",
            ["site"], buckets=_CONVERGENCE_BUCKETS, registry=r)
        self.policies_refused = Counter(
            "tdn_policies_refused_total",
            "Site policies refused before serving because they failed the consistency check.",
            ["site"], registry=r)
        # Replication and high availability.
        self.leader = Gauge(
            "tdn_controlplane_leader", "1 while this replica leads (solves and writes plans).",
            registry=r)
        self.read_only = Gauge(
            "tdn_controlplane_read_only",
            "1 while the store is unreachable: the replica serves its last plan and writes "
            "nothing.", registry=r)
        self.store_errors = Counter(
            "tdn_store_errors_total", "Store operations that failed, per operation.",
            ["operation"], registry=r)
        self.telemetry_published = Counter(
            "tdn_telemetry_published_total",
            "Factory states written to the store for the other replicas, per result.",
            ["result"], registry=r)
        # Usage.
        self.usage_reports = Counter(
            "tdn_usage_reports_total", "Usage reports by result (counted, duplicate, invalid).",
            ["result"], registry=r)
