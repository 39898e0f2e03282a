"""Parsing engines' /metrics pages: golden captures of vLLM and SGLang, renamed metrics across
versions, aggregation over data-parallel engines and models, and refusal of garbage."""

from __future__ import annotations

import math

import pytest
from support import FIXTURES

from tdn.agent.scrape import MetricsError, parse_metrics

VLLM_TEXT = (FIXTURES / "vllm-metrics.txt").read_text()
SGLANG_TEXT = (FIXTURES / "sglang-metrics.txt").read_text()


def test_vllm_fixture_yields_load_counters_and_histograms_exactly() -> None:
    m = parse_metrics(VLLM_TEXT)

    assert m.engine == "vllm"
    assert (m.running, m.waiting) == (8, 3)
    assert m.kv_cache_usage == pytest.approx(0.0847)
    assert m.prompt_tokens_total == 78894.0
    assert m.generation_tokens_total == 27453.0
    assert m.ttft is not None and m.itl is not None
    assert m.ttft.total == 140.0
    assert m.itl.total == 27313.0


def test_vllm_fixture_percentiles_interpolate_within_buckets() -> None:
    m = parse_metrics(VLLM_TEXT)
    assert m.ttft is not None and m.itl is not None

    # TTFT buckets ... le=0.02:13, le=0.04:97, le=0.08:138, le=0.1:140 (140 observations).
    assert m.ttft.quantile(0.5) == pytest.approx(0.02 + 0.02 * (70 - 13) / (97 - 13))
    assert m.ttft.quantile(0.99) == pytest.approx(0.08 + 0.02 * (138.6 - 138) / (140 - 138))
    # ITL: le=0.025:2338, le=0.05:27313.
    assert m.itl.quantile(0.5) == pytest.approx(0.025 + 0.025 * (13656.5 - 2338) / 24975)
    assert m.itl.quantile(0.99) == pytest.approx(0.025 + 0.025 * (27039.87 - 2338) / 24975)


def test_sglang_fixture_yields_running_queue_and_token_usage() -> None:
    m = parse_metrics(SGLANG_TEXT)

    assert m.engine == "sglang"
    assert (m.running, m.waiting) == (162, 2826)
    assert m.kv_cache_usage == pytest.approx(0.28)
    assert m.prompt_tokens_total == 8128902.0
    assert m.generation_tokens_total == 7557572.0
    assert m.ttft is not None and m.ttft.total == 11008.0
    assert m.itl is not None and m.itl.total == 7400757.0


def test_sglang_ttft_beyond_the_last_finite_bucket_reports_that_bound() -> None:
    # 8495 of 11008 first tokens took longer than 30 s, the highest finite bucket: as in
    # PromQL's histogram_quantile, the quantile is the highest finite bound.
    m = parse_metrics(SGLANG_TEXT)
    assert m.ttft is not None
    assert m.ttft.quantile(0.5) == 30.0
    assert m.ttft.quantile(0.99) == 30.0


def test_sglang_time_per_output_token_serves_as_inter_token_latency() -> None:
    m = parse_metrics(SGLANG_TEXT)
    assert m.itl is not None
    total = 7400757.0
    assert m.itl.quantile(0.5) == pytest.approx(
        0.075 + 0.025 * (0.5 * total - 433413) / (4950195 - 433413))
    assert m.itl.quantile(0.99) == pytest.approx(
        0.5 + 0.25 * (0.99 * total - 7312226) / (7339675 - 7312226))


def _gauge(name: str, *series: tuple[str, float]) -> str:
    lines = [f"# TYPE {name} gauge"]
    lines += [f"{name}{{{labels}}} {value}" for labels, value in series]
    return "\n".join(lines) + "\n"


def _histogram(name: str, labels: str, buckets: list[tuple[str, float]]) -> str:
    lines = [f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{{labels},le="{le}"}} {count}' for le, count in buckets]
    lines.append(f"{name}_count{{{labels}}} {buckets[-1][1]}")
    lines.append(f"{name}_sum{{{labels}}} 1.0")
    return "\n".join(lines) + "\n"


E0 = 'engine="0",model_name="m"'
E1 = 'engine="1",model_name="m"'


def _old_vllm_page(kv: float = 0.5) -> str:
    """What vLLM before 0.12 exports: gpu_cache_usage_perc and time_per_output_token."""
    return (
        _gauge("vllm:num_requests_running", (E0, 2))
        + _gauge("vllm:num_requests_waiting", (E0, 1))
        + _gauge("vllm:gpu_cache_usage_perc", (E0, kv))
        + _histogram("vllm:time_per_output_token_seconds", E0,
                     [("0.01", 0), ("0.02", 10), ("+Inf", 10)])
    )


def test_pre_012_vllm_names_are_read_as_fallbacks() -> None:
    m = parse_metrics(_old_vllm_page(kv=0.5))

    assert m.kv_cache_usage == 0.5
    assert m.itl is not None
    assert m.itl.quantile(0.5) == pytest.approx(0.015)


def test_current_vllm_names_win_when_a_version_exports_both() -> None:
    # vLLM 0.9.2 to 0.10.2 export the old and new names side by side.
    page = (_old_vllm_page(kv=0.9)
            + _gauge("vllm:kv_cache_usage_perc", (E0, 0.25))
            + _histogram("vllm:inter_token_latency_seconds", E0,
                         [("0.1", 0), ("0.2", 4), ("+Inf", 4)]))
    m = parse_metrics(page)

    assert m.kv_cache_usage == 0.25
    assert m.itl is not None
    assert m.itl.quantile(0.5) == pytest.approx(0.15)


def test_data_parallel_engines_are_summed_and_their_cache_use_averaged() -> None:
    page = (
        _gauge("vllm:num_requests_running", (E0, 5), (E1, 7))
        + _gauge("vllm:num_requests_waiting", (E0, 0), (E1, 2))
        + _gauge("vllm:kv_cache_usage_perc", (E0, 0.2), (E1, 0.6))
        + "# TYPE vllm:prompt_tokens_total counter\n"
        + f"vllm:prompt_tokens_total{{{E0}}} 100\nvllm:prompt_tokens_total{{{E1}}} 50\n"
        + "# TYPE vllm:time_to_first_token_seconds histogram\n"
        + "".join(f'vllm:time_to_first_token_seconds_bucket{{{e},le="{le}"}} {n}\n'
                  for e, le, n in [(E0, "0.1", 2), (E0, "1.0", 4), (E0, "+Inf", 4),
                                   (E1, "0.1", 0), (E1, "1.0", 4), (E1, "+Inf", 6)])
    )
    m = parse_metrics(page)

    assert (m.running, m.waiting) == (12, 2)
    assert m.kv_cache_usage == pytest.approx(0.4)
    assert m.prompt_tokens_total == 150.0
    assert m.ttft is not None
    assert m.ttft.bounds == (0.1, 1.0, math.inf)
    assert m.ttft.counts == (2.0, 8.0, 10.0)


def test_series_of_several_models_are_summed() -> None:
    page = _gauge("vllm:num_requests_running", ('engine="0",model_name="a"', 3),
                  ('engine="0",model_name="b"', 4))
    m = parse_metrics(page)
    assert m.running == 7
    # Absent families read as zero / unknown, not as errors.
    assert (m.waiting, m.kv_cache_usage, m.ttft, m.itl) == (0, 0.0, None, None)


def test_openmetrics_exposition_is_parsed_when_the_content_type_says_so() -> None:
    page = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0"} 4.0\n'
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens_total{engine="0"} 12.0\n'
        'vllm:generation_tokens_created{engine="0"} 1.7e+09\n'
        "# EOF\n"
    )
    m = parse_metrics(page, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert m.running == 4
    assert m.generation_tokens_total == 12.0


GOOD_HEAD = _gauge("vllm:num_requests_running", (E0, 1))


@pytest.mark.parametrize(("page", "complaint"), [
    ("<html><body><h1>502 Bad Gateway</h1></body></html>\n", "not Prometheus text"),
    ('{"object": "list", "data": []}', "not Prometheus text"),
    ("hello world\n", "not Prometheus text"),
    ("", "no known engine metrics"),
    ("# TYPE python_gc_objects_collected counter\npython_gc_objects_collected_total 5\n",
     "no known engine metrics"),
    (_gauge("vllm:num_requests_running", (E0, math.nan)), "vllm:num_requests_running is nan"),
    (GOOD_HEAD + _gauge("vllm:num_requests_waiting", (E0, -3)), "negative"),
    (_gauge("vllm:num_requests_running", (E0, 1.5)), "not a whole number"),
    (_gauge("vllm:num_requests_running", (E0, 1e12)), "beyond"),
    (GOOD_HEAD + _gauge("vllm:kv_cache_usage_perc", (E0, math.inf)), "inf"),
    (GOOD_HEAD + _gauge("vllm:kv_cache_usage_perc", (E0, 1.7)), "above 1"),
    (GOOD_HEAD + _histogram("vllm:time_to_first_token_seconds", E0,
                            [("0.1", 5), ("1.0", 3), ("+Inf", 5)]), "decrease"),
    (GOOD_HEAD + _histogram("vllm:time_to_first_token_seconds", E0,
                            [("0.1", -1), ("+Inf", 5)]), "negative"),
    (GOOD_HEAD + _histogram("vllm:time_to_first_token_seconds", E0,
                            [("0.1", 1), ("1.0", 5)]), "no +Inf bucket"),
    (GOOD_HEAD + _histogram("vllm:time_to_first_token_seconds", E0,
                            [("fast", 1), ("+Inf", 5)]), "le='fast'"),
    (GOOD_HEAD + _histogram("vllm:time_to_first_token_seconds", E0,
                            [("0.1", math.nan), ("+Inf", 5)]), "nan"),
])
def test_untrustworthy_pages_are_refused_with_the_reason(page: str, complaint: str) -> None:
    with pytest.raises(MetricsError) as caught:
        parse_metrics(page)
    assert complaint in str(caught.value)
