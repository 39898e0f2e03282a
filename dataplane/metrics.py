"""The sidecar's Prometheus metrics, in a registry of its own (one test process runs many).

Labels follow STYLE.md: ``site``, ``factory``, ``tier``, ``model`` wherever they apply. ``model``
is only ever a model the policy routes (unrouted names from clients become ``""``), and
``tenant`` only a name from the tenants file or ``anonymous``, so a client cannot blow up label
cardinality. The metrics every request updates are :mod:`fast_metrics` (plain dictionaries,
turned into metric families when scraped); for the others, label children are cached, so an
update pays one dictionary lookup instead of prometheus_client's label validation.

=========================================  =================================================
tdn_sidecar_requests_total                 requests by answering factory, model, outcome
tdn_sidecar_request_duration_seconds       request to last byte relayed
tdn_sidecar_ttft_seconds                   request to first answer byte relayed to the client
tdn_sidecar_overhead_seconds               the sidecar's own time (excluding upstream and
                                           client waits)
tdn_sidecar_tokens_total                   metered tokens by tenant, factory, model, type
tdn_sidecar_failovers_total                attempts given up before the client saw a byte,
                                           by reason
tdn_sidecar_stream_breaks_total            streams broken after bytes were relayed, by reason
tdn_sidecar_continuations_total            continuations of broken streams, by result
tdn_sidecar_fallbacks_total                re-sends to a route's context fallback model
tdn_sidecar_ejections_total                outlier ejections, by reason
tdn_sidecar_ejected                        1 while a factory is ejected
tdn_sidecar_suspicions_total               missed first-byte deadlines that took a factory
                                           out of rotation for a probe interval
tdn_sidecar_panic_total                    requests routed in panic (ejections ignored)
tdn_sidecar_rate_limited_total             429s that put a factory in cooldown
tdn_sidecar_probes_total                   active probes of ejected factories, by result
tdn_sidecar_retry_budget_exhausted_total   retries refused by the retry budget
tdn_sidecar_retries_in_flight              retry tokens in use
tdn_sidecar_active_requests                requests in flight
tdn_sidecar_usage_reports_total            usage reports by result (sent, failed, dropped)
tdn_sidecar_usage_reports_pending          usage reports waiting to be (re)sent
tdn_sidecar_policy_info                    1 for the policy version this sidecar runs
tdn_sidecar_policy_updates_total           policies received, by result (ack, nack)
tdn_sidecar_controlplane_connected         1 while a discovery stream is open
=========================================  =================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tdn.domain import SitePolicy

from .fast_metrics import FastCounter, FastHistogram

# LLM requests run from milliseconds (embeddings) to minutes (long generations).
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     120.0, 300.0)
# The sidecar's own time is meant to be well under a millisecond.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)

_F = ["site", "factory", "tier", "model"]


class SidecarMetrics:
    """Counters, gauges and histograms the proxy, policy client and usage reporter update."""

    def __init__(self, site: str, registry: CollectorRegistry | None = None) -> None:
        self.site = site
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.requests = FastCounter(
            "tdn_sidecar_requests", "Requests answered, by the factory that answered (empty when "
            "none did) and outcome.", [*_F, "outcome"], registry=r)
        self.failovers = Counter(
            "tdn_sidecar_failovers", "Attempts that failed before any byte reached the client, so "
            "the next candidate was tried.", [*_F, "reason"], registry=r)
        self.duration = FastHistogram(
            "tdn_sidecar_request_duration_seconds", "Time from request to the last byte relayed.",
            _F, _DURATION_BUCKETS, r)
        self.ttft = FastHistogram(
            "tdn_sidecar_ttft_seconds", "Time from request to the first answer byte relayed to "
            "the client.", _F, _DURATION_BUCKETS, r)
        self.overhead = FastHistogram(
            "tdn_sidecar_overhead_seconds", "The sidecar's own time per request: the duration "
            "minus time spent waiting on factories and on the client.", ["site"],
            _OVERHEAD_BUCKETS, r)
        self.tokens = FastCounter(
            "tdn_sidecar_tokens", "Metered tokens of answers delivered, by tenant and type "
            "(prompt or completion).", [*_F, "tenant", "type"], r)
        self.stream_breaks = Counter(
            "tdn_sidecar_stream_breaks", "Streams that broke after bytes reached the client.",
            [*_F, "reason"], registry=r)
        self.continuations = Counter(
            "tdn_sidecar_continuations", "Broken streams continued on a prefill-capable backup, "
            "by result (spliced, failed, impossible).", [*_F, "result"], registry=r)
        self.fallbacks = Counter(
            "tdn_sidecar_fallbacks", "Requests re-sent to the route's context fallback model.",
            ["site", "model", "fallback_model"], registry=r)
        self.ejections = Counter(
            "tdn_sidecar_ejections", "Outlier ejections, by reason.",
            ["site", "factory", "tier", "reason"], registry=r)
        self.ejected = Gauge(
            "tdn_sidecar_ejected", "1 while the factory is ejected by outlier detection.",
            ["site", "factory", "tier"], registry=r)
        self.suspicions = Counter(
            "tdn_sidecar_suspicions", "Missed first-byte deadlines that took a factory out of "
            "rotation for one probe interval.", ["site", "factory", "tier"], registry=r)
        self.slow_first_byte = Counter(
            "tdn_sidecar_slow_first_byte_passed_over", "New streams sent past a factory where "
            "one of this sidecar's streams was still waiting for its first byte longer than "
            "slow_first_byte_seconds.", ["site", "factory", "tier"], registry=r)
        self.busy = Counter(
            "tdn_sidecar_busy_passed_over", "New requests sent past a factory whose own latest "
            "load report (ORCA endpoint-load-metrics, at most 1 s old) had requests waiting.",
            ["site", "factory", "tier"], registry=r)
        self.load_reports_rejected = Counter(
            "tdn_sidecar_load_reports_rejected", "Factory load reports (ORCA "
            "endpoint-load-metrics) that could not be read, so were ignored.",
            ["site", "factory", "tier"], registry=r)
        self.panic = Counter(
            "tdn_sidecar_panic", "Requests routed in panic: too few healthy factories, so "
            "ejections were ignored.", ["site", "model"], registry=r)
        self.rate_limited = Counter(
            "tdn_sidecar_rate_limited", "Rate-limit answers that put a factory in cooldown.",
            ["site", "factory", "tier"], registry=r)
        self.probes = Counter(
            "tdn_sidecar_probes", "Active probes of ejected factories, by result (ok, failed).",
            ["site", "factory", "tier", "result"], registry=r)
        self.retry_budget_exhausted = Counter(
            "tdn_sidecar_retry_budget_exhausted", "Retries refused because the retry budget was "
            "used up.", ["site", "model"], registry=r)
        self.retries_in_flight = Gauge(
            "tdn_sidecar_retries_in_flight", "Retry-budget tokens in use.", ["site"], registry=r)
        self.active_requests = Gauge(
            "tdn_sidecar_active_requests", "Proxied requests in flight.", ["site"], registry=r)
        self.usage_reports = Counter(
            "tdn_sidecar_usage_reports", "Usage reports, by result (sent, failed, dropped).",
            ["site", "result"], registry=r)
        self.usage_pending = Gauge(
            "tdn_sidecar_usage_reports_pending", "Usage reports waiting to be sent or resent.",
            ["site"], registry=r)
        self.policy_info = Gauge(
            "tdn_sidecar_policy_info", "1 for the policy version this sidecar runs.",
            ["site", "version"], registry=r)
        self.policy_updates = Counter(
            "tdn_sidecar_policy_updates", "Policies received from the control plane, by result "
            "(ack or nack).", ["site", "result"], registry=r)
        self.controlplane_connected = Gauge(
            "tdn_sidecar_controlplane_connected", "1 while a discovery stream is open.",
            ["site"], registry=r)
        self.controlplane_connected.labels(self.site).set(0)
        self._version: str | None = None
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.site, *labels)
        return child

    def policy_swapped(self, policy: SitePolicy) -> None:
        if self._version is not None:
            self.policy_info.remove(self.site, self._version)
        self._version = policy.version
        self.policy_info.labels(self.site, policy.version).set(1)

    def request_done(self, factory: str, tier: str, model: str, outcome: str,
                     seconds: float) -> None:
        site = self.site
        self.requests.inc((site, factory, tier, model, outcome))
        self.duration.observe((site, factory, tier, model), seconds)

    def first_byte(self, factory: str, tier: str, model: str, seconds: float) -> None:
        self.ttft.observe((self.site, factory, tier, model), seconds)

    def own_time(self, seconds: float) -> None:
        self.overhead.observe((self.site,), seconds)

    def metered(self, factory: str, tier: str, model: str, tenant: str, *, prompt_tokens: int,
                completion_tokens: int) -> None:
        site = self.site
        if prompt_tokens:
            self.tokens.inc((site, factory, tier, model, tenant, "prompt"), prompt_tokens)
        if completion_tokens:
            self.tokens.inc((site, factory, tier, model, tenant, "completion"),
                            completion_tokens)

    def failover(self, factory: str, tier: str, model: str, reason: str) -> None:
        self._child(self.failovers, factory, tier, model, reason).inc()

    def stream_broke(self, factory: str, tier: str, model: str, reason: str) -> None:
        self._child(self.stream_breaks, factory, tier, model, reason).inc()

    def continued(self, factory: str, tier: str, model: str, result: str) -> None:
        self._child(self.continuations, factory, tier, model, result).inc()

    def fell_back(self, model: str, fallback_model: str) -> None:
        self._child(self.fallbacks, model, fallback_model).inc()

    def ejection_changed(self, factory: str, tier: str, reason: str, ejected: bool) -> None:
        if ejected:
            self._child(self.ejections, factory, tier, reason).inc()
        self._child(self.ejected, factory, tier).set(1 if ejected else 0)

    def suspected(self, factory: str, tier: str) -> None:
        self._child(self.suspicions, factory, tier).inc()

    def passed_over_slow(self, factory: str, tier: str) -> None:
        self._child(self.slow_first_byte, factory, tier).inc()

    def passed_over_busy(self, factory: str, tier: str) -> None:
        self._child(self.busy, factory, tier).inc()

    def load_report_rejected(self, factory: str, tier: str) -> None:
        self._child(self.load_reports_rejected, factory, tier).inc()

    def panicked(self, model: str) -> None:
        self._child(self.panic, model).inc()

    def cooled_down(self, factory: str, tier: str) -> None:
        self._child(self.rate_limited, factory, tier).inc()

    def probed(self, factory: str, tier: str, ok: bool) -> None:
        self._child(self.probes, factory, tier, "ok" if ok else "failed").inc()

    def budget_exhausted(self, model: str) -> None:
        self._child(self.retry_budget_exhausted, model).inc()

    def watch_load(self, active: Callable[[], float], retries: Callable[[], float]) -> None:
        """Read in-flight counts when scraped, so requests never pay for these gauges."""
        self._child(self.active_requests).set_function(active)
        self._child(self.retries_in_flight).set_function(retries)

    def usage_report(self, result: str, pending: int) -> None:
        self._child(self.usage_reports, result).inc()
        self._child(self.usage_pending).set(pending)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
