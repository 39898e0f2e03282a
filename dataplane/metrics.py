"""The sidecar's Prometheus metrics, in a registry of its own (one test process runs many).

Labels follow STYLE.md: ``site``, ``factory``, ``tier``, ``model`` wherever they apply. ``model``
is only ever a model the policy routes (unrouted names from clients become ``""``), so a client
cannot blow up the label cardinality.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tdn.domain import SitePolicy

# LLM requests run from milliseconds (embeddings) to minutes (long generations).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     120.0, 300.0)


class SidecarMetrics:
    """Counters and histograms the proxy and policy client update."""

    def __init__(self, site: str, registry: CollectorRegistry | None = None) -> None:
        self.site = site
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "tdn_sidecar_requests", "Requests answered, by the factory that answered (empty when "
            "none did) and outcome.", ["site", "factory", "tier", "model", "outcome"],
            registry=self.registry)
        self.failovers = Counter(
            "tdn_sidecar_failovers", "Attempts that failed before any byte reached the client, so "
            "the next candidate was tried.", ["site", "factory", "tier", "model", "reason"],
            registry=self.registry)
        self.duration = Histogram(
            "tdn_sidecar_request_duration_seconds", "Time from request to the last byte relayed.",
            ["site", "factory", "tier", "model"], buckets=_DURATION_BUCKETS,
            registry=self.registry)
        self.policy_info = Gauge(
            "tdn_sidecar_policy_info", "1 for the policy version this sidecar runs.",
            ["site", "version"], registry=self.registry)
        self.policy_updates = Counter(
            "tdn_sidecar_policy_updates", "Policies received from the control plane, by result "
            "(ack or nack).", ["site", "result"], registry=self.registry)
        self.controlplane_connected = Gauge(
            "tdn_sidecar_controlplane_connected", "1 while a discovery stream is open.",
            ["site"], registry=self.registry)
        self.controlplane_connected.labels(self.site).set(0)
        self._version: str | None = None

    def policy_swapped(self, policy: SitePolicy) -> None:
        if self._version is not None:
            self.policy_info.remove(self.site, self._version)
        self._version = policy.version
        self.policy_info.labels(self.site, policy.version).set(1)

    def request_done(self, factory: str, tier: str, model: str, outcome: str,
                     seconds: float) -> None:
        self.requests.labels(self.site, factory, tier, model, outcome).inc()
        self.duration.labels(self.site, factory, tier, model).observe(seconds)

    def failover(self, factory: str, tier: str, model: str, reason: str) -> None:
        self.failovers.labels(self.site, factory, tier, model, reason).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
