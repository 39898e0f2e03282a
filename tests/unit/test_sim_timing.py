"""The token-timing model and FIFO admission, in virtual time (no clocks)."""

from __future__ import annotations

import pytest

from tdn.sim.scheduler import Admission
from tdn.sim.timing import SimulatedRequest, TimingModel, simulate

MODEL = TimingModel(base_latency_ms=10.0, prefill_tokens_per_s=1000.0, itl_ms=20.0)


def test_ttft_is_base_latency_plus_queue_wait_plus_prefill() -> None:
    assert MODEL.time_to_first_token(500, queue_wait_s=0.25) == pytest.approx(0.01 + 0.25 + 0.5)


def test_ttft_grows_with_prompt_length() -> None:
    short, long = MODEL.time_to_first_token(100), MODEL.time_to_first_token(2000)
    assert long > short
    assert long - short == pytest.approx(1.9)


def test_token_gaps_are_itl_without_jitter_and_one_fewer_than_tokens() -> None:
    assert MODEL.token_gaps(4) == pytest.approx([0.02, 0.02, 0.02])
    assert MODEL.token_gaps(1) == []
    assert MODEL.token_gaps(0) == []
    assert MODEL.token_gaps(3, itl_ms=100.0) == pytest.approx([0.1, 0.1])


def test_jittered_gaps_stay_within_the_fraction_and_repeat_for_the_same_seed() -> None:
    jittery = TimingModel(itl_ms=10.0, itl_jitter=0.2)
    gaps = jittery.token_gaps(200, seed=7)
    assert all(0.008 <= g <= 0.012 for g in gaps)
    assert len(set(gaps)) > 1
    assert gaps == jittery.token_gaps(200, seed=7)
    assert gaps != jittery.token_gaps(200, seed=8)


def test_ttft_grows_with_queue_position_beyond_max_concurrency() -> None:
    burst = [SimulatedRequest(arrival_s=0.0, prompt_tokens=100, output_tokens=10)
             for _ in range(5)]
    timings = simulate(MODEL, max_concurrency=2, kv_capacity_tokens=100_000, requests=burst)
    # The first two run at once; each later one waits for a whole service time more.
    assert timings[0].queue_wait_s == 0.0
    assert timings[1].queue_wait_s == 0.0
    service = MODEL.prefill_seconds(100) + MODEL.decode_seconds(10)
    assert timings[2].queue_wait_s == pytest.approx(service)
    assert timings[4].queue_wait_s == pytest.approx(2 * service)
    ttfts = [t.ttft_s for t in timings]
    assert ttfts[0] == pytest.approx(MODEL.time_to_first_token(100))
    assert ttfts[1] < ttfts[2] < ttfts[4]


def test_requests_under_the_concurrency_limit_never_queue() -> None:
    spread = [SimulatedRequest(arrival_s=i * 10.0, prompt_tokens=100, output_tokens=10)
              for i in range(4)]
    timings = simulate(MODEL, max_concurrency=1, kv_capacity_tokens=100_000, requests=spread)
    assert all(t.queue_wait_s == 0.0 for t in timings)
    assert all(t.e2e_s == pytest.approx(timings[0].e2e_s) for t in timings)


def test_admission_queues_beyond_max_concurrency_and_admits_in_fifo_order() -> None:
    admission = Admission(max_concurrency=2, kv_capacity_tokens=10_000)
    assert admission.submit(1, 10)
    assert admission.submit(2, 10)
    assert not admission.submit(3, 10)
    assert not admission.submit(4, 10)
    assert (admission.running, admission.waiting) == (2, 2)
    assert admission.finish(2) == [3]
    assert admission.finish(1) == [4]
    assert (admission.running, admission.waiting) == (2, 0)


def test_a_new_request_never_overtakes_the_waiting_queue() -> None:
    admission = Admission(max_concurrency=1, kv_capacity_tokens=10_000)
    admission.submit(1, 10)
    admission.submit(2, 10)
    assert admission.finish(1) == [2]
    # Slot is taken by 2; 3 must wait even though it arrived to an empty queue.
    assert not admission.submit(3, 10)


def test_kv_usage_is_tokens_held_by_running_requests_over_capacity() -> None:
    admission = Admission(max_concurrency=4, kv_capacity_tokens=1000)
    admission.submit(1, 200)
    admission.submit(2, 100)
    admission.grow(1, 50)
    assert admission.kv_tokens == 350
    assert admission.kv_usage == pytest.approx(0.35)
    admission.finish(1)
    assert admission.kv_usage == pytest.approx(0.1)


def test_a_prompt_that_does_not_fit_the_kv_cache_waits_until_it_does() -> None:
    admission = Admission(max_concurrency=4, kv_capacity_tokens=1000)
    assert admission.submit(1, 800)
    assert not admission.submit(2, 300)
    assert admission.finish(1) == [2]


def test_an_idle_engine_admits_even_a_prompt_larger_than_the_kv_cache() -> None:
    admission = Admission(max_concurrency=4, kv_capacity_tokens=100)
    assert admission.submit(1, 500)
    assert admission.kv_usage == 1.0


def test_withdrawing_the_waiting_head_lets_the_next_one_in_when_it_fits() -> None:
    admission = Admission(max_concurrency=4, kv_capacity_tokens=1000)
    admission.submit(1, 600)
    admission.submit(2, 900)  # head: does not fit next to 1
    admission.submit(3, 100)  # would fit, but FIFO keeps it behind 2
    assert admission.waiting_tickets() == [2, 3]
    assert admission.withdraw(2) == [3]
    assert admission.waiting == 0


def test_admission_rejects_impossible_limits() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        Admission(0, 100)
    with pytest.raises(ValueError, match="kv_capacity_tokens"):
        Admission(1, 0)
