"""Reading an inference engine's Prometheus ``/metrics`` page into the numbers TDN routes on.

Pure parsing, no I/O. Engines name the same facts differently, and rename them across versions,
so each engine is described by a :class:`MetricNames` table with fallbacks (vLLM renamed
``gpu_cache_usage_perc`` to ``kv_cache_usage_perc`` and ``time_per_output_token_seconds`` to
``inter_token_latency_seconds`` in 0.12; SGLang did the latter rename too). Series are summed
over every label (``engine`` under data parallelism, ``model_name`` when several models are
served), except cache-usage fractions, which are averaged.

Input from an engine is untrusted: anything that is not Prometheus text, or that holds NaN,
infinite or negative values where counts belong, raises :class:`MetricsError` with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as prometheus_families
from prometheus_client.samples import Sample

from tdn.agent.histogram import Histogram, HistogramError


class MetricsError(ValueError):
    """A ``/metrics`` page the agent cannot trust; the message says what was wrong."""


@dataclass(frozen=True, slots=True)
class MetricNames:
    """Where one engine keeps each fact; each tuple is tried in order (newest name first)."""

    engine: str
    running: tuple[str, ...]
    waiting: tuple[str, ...]
    kv_cache_usage: tuple[str, ...]
    ttft: tuple[str, ...]
    itl: tuple[str, ...]
    prompt_tokens: tuple[str, ...]
    generation_tokens: tuple[str, ...]


VLLM = MetricNames(
    engine="vllm",
    running=("vllm:num_requests_running",),
    waiting=("vllm:num_requests_waiting",),
    kv_cache_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    ttft=("vllm:time_to_first_token_seconds",),
    itl=("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    prompt_tokens=("vllm:prompt_tokens_total",),
    generation_tokens=("vllm:generation_tokens_total",),
)

SGLANG = MetricNames(
    engine="sglang",
    running=("sglang:num_running_reqs",),
    waiting=("sglang:num_queue_reqs",),
    kv_cache_usage=("sglang:token_usage",),
    ttft=("sglang:time_to_first_token_seconds",),
    itl=("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    prompt_tokens=("sglang:prompt_tokens_total",),
    generation_tokens=("sglang:generation_tokens_total",),
)

KNOWN_ENGINES: tuple[MetricNames, ...] = (VLLM, SGLANG)


@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """One scrape of an engine, summed over its engines and models.

    Histograms are cumulative (since the engine started); :mod:`tdn.agent.metrics_window`
    turns two scrapes into latency over the window between them. A histogram the engine does
    not export is None; an absent counter or cache gauge is 0.
    """

    engine: str
    running: int
    waiting: int
    kv_cache_usage: float
    prompt_tokens_total: float
    generation_tokens_total: float
    ttft: Histogram | None
    itl: Histogram | None


def parse_metrics(text: str, content_type: str = "") -> EngineMetrics:
    """Parse a ``/metrics`` body; raise :class:`MetricsError` when it cannot be trusted.

    ``content_type`` picks the OpenMetrics parser for ``application/openmetrics-text``
    (what the endpoint answers a Prometheus server that asks for it); otherwise the classic
    text format 0.0.4 is assumed.
    """
    samples = _index(_parse_samples(text, content_type))
    names = next((n for n in KNOWN_ENGINES if _first_present(samples, n.running)), None)
    if names is None:
        expected = " or ".join(n.running[0] for n in KNOWN_ENGINES)
        raise MetricsError(f"no known engine metrics in the page (expected {expected})")
    return EngineMetrics(
        engine=names.engine,
        running=_count_gauge(samples, names.running),
        waiting=_count_gauge(samples, names.waiting),
        kv_cache_usage=_fraction_gauge(samples, names.kv_cache_usage),
        prompt_tokens_total=_counter(samples, names.prompt_tokens),
        generation_tokens_total=_counter(samples, names.generation_tokens),
        ttft=_histogram(samples, names.ttft),
        itl=_histogram(samples, names.itl),
    )


def _parse_samples(text: str, content_type: str) -> list[Sample]:
    openmetrics = "application/openmetrics-text" in content_type.lower()
    parse = openmetrics_families if openmetrics else prometheus_families
    try:
        # The parsers are generators: consume them here so every error surfaces inside the try.
        return [s for family in parse(text) for s in family.samples]
    except Exception as exc:
        # prometheus_client documents no error types; whatever it raises on foreign input
        # (ValueError mostly, IndexError/KeyError on some truncations) means "not metrics".
        kind = "OpenMetrics" if openmetrics else "Prometheus"
        raise MetricsError(f"not {kind} text: {exc}") from exc


_Series = list[tuple[dict[str, str], float]]

# Request counts travel as int32 on the wire (telemetry.proto's Load).
_INT32_MAX = 2**31 - 1


def _index(samples: Iterable[Sample]) -> dict[str, _Series]:
    index: dict[str, _Series] = {}
    for sample in samples:
        index.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return index


def _first_present(samples: dict[str, _Series], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in samples), None)


def _values(samples: dict[str, _Series], name: str) -> list[float]:
    values = [value for _, value in samples[name]]
    for value in values:
        if not math.isfinite(value):
            raise MetricsError(f"{name} is {value}")
        if value < 0:
            raise MetricsError(f"{name} is negative ({value})")
    return values


def _count_gauge(samples: dict[str, _Series], names: tuple[str, ...]) -> int:
    name = _first_present(samples, names)
    if name is None:
        return 0
    total = sum(_values(samples, name))
    if total != int(total):
        raise MetricsError(f"{name} is not a whole number of requests ({total})")
    if total > _INT32_MAX:
        raise MetricsError(f"{name} is {total}, beyond any engine's request count")
    return int(total)


def _fraction_gauge(samples: dict[str, _Series], names: tuple[str, ...]) -> float:
    name = _first_present(samples, names)
    if name is None:
        return 0.0
    values = _values(samples, name)
    if not values:
        return 0.0
    # A fraction of each engine's own cache: summing data-parallel engines would exceed 1, so
    # report their mean (engines of one deployment have equal caches).
    mean = sum(values) / len(values)
    if mean > 1.0:
        raise MetricsError(f"{name} is {mean}, above 1 (it is a fraction)")
    return mean


def _counter(samples: dict[str, _Series], names: tuple[str, ...]) -> float:
    name = _first_present(samples, names)
    return sum(_values(samples, name)) if name is not None else 0.0


def _histogram(samples: dict[str, _Series], names: tuple[str, ...]) -> Histogram | None:
    for name in names:
        series = samples.get(f"{name}_bucket")
        if series is None:
            continue
        by_bound: dict[float, float] = {}
        for labels, count in series:
            raw_bound = labels.get("le")
            if raw_bound is None:
                raise MetricsError(f"{name}_bucket has a sample without an le label")
            try:
                bound = float(raw_bound)
            except ValueError:
                raise MetricsError(f"{name}_bucket has le={raw_bound!r}") from None
            # Summing per bound merges the engines' and models' histograms; they share buckets.
            by_bound[bound] = by_bound.get(bound, 0.0) + count
        bounds = tuple(sorted(by_bound))
        try:
            return Histogram(bounds, tuple(by_bound[b] for b in bounds))
        except HistogramError as exc:
            raise MetricsError(f"{name}: {exc}") from None
    return None
