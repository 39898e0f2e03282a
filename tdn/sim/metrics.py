"""The simulator's Prometheus metrics, under the names and labels current vLLM exports.

Names, HELP strings, label names (``engine``, ``model_name``, ``finished_reason``) and histogram
buckets follow vLLM's V1 ``PrometheusStatLogger`` (see tests/fixtures/vllm-metrics.txt), so the
factory agent can scrape a simulator exactly as it scrapes a real engine. Like vLLM started with
several ``--served-model-name`` values, every series carries ``model_name`` = the *first* served
model: the gauges describe the whole engine, not one model.

The values are kept in plain Python numbers by :class:`EngineMetrics` (a prometheus_client
custom collector, registered in a per-simulator ``CollectorRegistry``) rather than in
prometheus_client's own metric objects: the hot path then costs a list increment per token, and
many tokens with the same gap are counted in one call. Inter-token latency observes the modelled
gaps (including injected stalls), not the event loop's wake-up jitter.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# vLLM's default bucket bounds (vllm/v1/metrics/loggers.py), as in the fixture.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


class Histogram:
    """Cumulative-bucket histogram state with a batch observe."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        if times <= 0:
            return
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


class EngineMetrics(Collector):
    """Counters and histograms of one simulated engine, plus gauges read from its scheduler."""

    def __init__(self, model_name: str, load: Callable[[], tuple[int, int, float]],
                 engine: str = "0") -> None:
        self._labels = (engine, model_name)
        self._load = load  # () -> (running, waiting, kv_cache_usage)
        self._created = time.time()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = dict.fromkeys(FINISHED_REASONS, 0)
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(REQUEST_LATENCY_BUCKETS)
        self.queue_time = Histogram(REQUEST_LATENCY_BUCKETS)

    def observe_gaps(self, gaps: Iterable[float]) -> None:
        """Record inter-token gaps; runs of equal gaps cost one update."""
        last: float | None = None
        run = 0
        for gap in gaps:
            if gap == last:
                run += 1
                continue
            if last is not None:
                self.itl.observe(last, run)
            last, run = gap, 1
        if last is not None:
            self.itl.observe(last, run)

    def finished(self, reason: str, prompt_tokens: int, generated: int) -> None:
        self.success[reason] = self.success.get(reason, 0) + 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generated

    def collect(self) -> Iterable[Metric]:
        labels = ["engine", "model_name"]
        values = list(self._labels)
        running, waiting, kv_usage = self._load()
        for name, doc, value in (
            ("vllm:num_requests_running", "Number of requests in model execution batches.",
             running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", waiting),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", kv_usage),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=labels)
            gauge.add_metric(values, float(value))
            yield gauge
        for name, doc, total in (
            ("vllm:prompt_tokens", "Number of prefill tokens processed.", self.prompt_tokens),
            ("vllm:generation_tokens", "Number of generation tokens processed.",
             self.generation_tokens),
        ):
            counter = CounterMetricFamily(name, doc, labels=labels)
            counter.add_metric(values, float(total), created=self._created)
            yield counter
        success = CounterMetricFamily("vllm:request_success",
                                      "Count of successfully processed requests.",
                                      labels=["engine", "finished_reason", "model_name"])
        for reason, count in self.success.items():
            success.add_metric([self._labels[0], reason, self._labels[1]], float(count),
                               created=self._created)
        yield success
        for name, doc, hist in (
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             self.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
             self.itl),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
             self.e2e),
            ("vllm:request_queue_time_seconds",
             "Histogram of time spent in WAITING phase for request.", self.queue_time),
        ):
            family = HistogramMetricFamily(name, doc, labels=labels)
            family.add_metric(values, hist.cumulative(), hist.sum)
            yield family
