"""Latency percentiles from histogram buckets, and over the window between two scrapes."""

from __future__ import annotations

import math

import pytest

from tdn.agent.histogram import Histogram, HistogramError, windowed
from tdn.agent.metrics_window import MetricsWindow
from tdn.agent.scrape import parse_metrics

INF = math.inf


def test_quantile_interpolates_linearly_inside_its_bucket() -> None:
    h = Histogram((1.0, 2.0, 4.0, INF), (10, 30, 40, 40))
    # Rank 20 is the 10th of 20 observations in (1, 2].
    assert h.quantile(0.5) == pytest.approx(1.5)
    # Rank 36 is the 6th of 10 in (2, 4].
    assert h.quantile(0.9) == pytest.approx(2.0 + 2.0 * 6 / 10)


def test_lowest_bucket_is_interpolated_from_zero() -> None:
    h = Histogram((0.5, INF), (10, 10))
    assert h.quantile(0.4) == pytest.approx(0.2)


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    h = Histogram((0.1, 0.2, INF), (1, 2, 100))
    assert h.quantile(0.99) == 0.2


def test_empty_histogram_has_no_quantile() -> None:
    assert Histogram((0.1, INF), (0, 0)).quantile(0.5) is None


@pytest.mark.parametrize(("bounds", "counts", "complaint"), [
    ((0.1, 1.0), (1, 2), "+Inf"),
    ((1.0, 0.5, INF), (1, 2, 3), "do not increase"),
    ((0.1, INF), (5, 4), "decrease"),
    ((0.1, INF), (-1, 4), "negative"),
    ((0.1, INF), (1,), "counts"),
    ((), (), "no buckets"),
])
def test_impossible_bucket_data_is_refused(bounds: tuple[float, ...],
                                           counts: tuple[float, ...], complaint: str) -> None:
    with pytest.raises(HistogramError, match=complaint.replace("+", r"\+")):
        Histogram(bounds, counts)


def test_window_holds_only_observations_since_the_previous_scrape() -> None:
    before = Histogram((0.1, 1.0, 10.0, INF), (100, 100, 100, 100))  # all fast so far
    after = Histogram((0.1, 1.0, 10.0, INF), (100, 100, 110, 110))  # then 10 slow ones

    window = windowed(after, before)

    assert window.counts == (0, 0, 10, 10)
    assert window.quantile(0.5) == pytest.approx(5.5)
    # The cumulative view would still call the engine fast.
    assert after.quantile(0.5) == pytest.approx(0.05 * 55 / 50)


def test_window_without_new_observations_falls_back_to_cumulative() -> None:
    h = Histogram((0.1, INF), (10, 10))
    assert windowed(h, h) is h


def test_window_after_an_engine_restart_falls_back_to_cumulative() -> None:
    before = Histogram((0.1, INF), (500, 500))
    after_restart = Histogram((0.1, INF), (3, 4))
    assert windowed(after_restart, before) is after_restart


def test_window_across_a_change_of_buckets_falls_back_to_cumulative() -> None:
    before = Histogram((0.1, INF), (1, 1))
    after = Histogram((0.2, INF), (5, 5))
    assert windowed(after, before) is after


def test_first_window_is_cumulative() -> None:
    h = Histogram((0.1, INF), (1, 1))
    assert windowed(h, None) is h


def _page(running: int, ttft: tuple[int, int, int]) -> str:
    fast, slow, total = ttft
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{engine="0"}} {running}\n'
        "# TYPE vllm:time_to_first_token_seconds histogram\n"
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1"}} {fast}\n'
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="1.0"}} {slow}\n'
        f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf"}} {total}\n'
    )


def test_metrics_window_reports_latency_of_the_last_interval() -> None:
    window = MetricsWindow()

    first = window.advance(parse_metrics(_page(running=1, ttft=(100, 100, 100))))
    second = window.advance(parse_metrics(_page(running=2, ttft=(100, 120, 120))))
    idle = window.advance(parse_metrics(_page(running=0, ttft=(100, 120, 120))))

    assert first.ttft_p50_s == pytest.approx(0.05)  # cumulative: nothing to compare with
    assert second.running == 2
    # The 20 new first tokens all took 0.1..1 s; the 100 old fast ones do not dilute them.
    assert second.ttft_p50_s == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert second.ttft_p99_s == pytest.approx(0.1 + 0.9 * 19.8 / 20)
    # No new observations: the cumulative view again, rather than "no latency".
    assert idle.ttft_p50_s == pytest.approx(0.1 * 60 / 100)


def test_metrics_window_reports_zero_latency_when_the_engine_exports_none() -> None:
    load = MetricsWindow().advance(parse_metrics(_page(running=3, ttft=(0, 0, 0))))
    assert (load.running, load.ttft_p50_s, load.itl_p99_s) == (3, 0.0, 0.0)
