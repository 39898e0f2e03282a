"""Rate-limit cooldowns, the retry budget and first-byte deadlines, as pure values (no network)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from tdn.dataplane.api_errors import ApiError
from tdn.dataplane.cooldowns import Cooldowns, parse_retry_after
from tdn.dataplane.deadlines import (
    attempt_deadline,
    client_limit_s,
    derived_from_ttft,
    first_byte_deadline,
    generation_allowance,
    idle_from_ttft,
    last_resort_deadline,
    stream_idle_timeout,
)
from tdn.dataplane.effective_settings import EffectiveSettings, settings_problems
from tdn.dataplane.retry_budget import RetryBudget
from tdn.domain import DataPlaneSettings, FactoryEndpoint, OutlierDetection, Route, Tier

A = FactoryEndpoint("a", Tier.EDGE, "eu", "a", "http://a/v1", ttft_p99_s=0.4)
B = FactoryEndpoint("b", Tier.EDGE, "eu", "b", "http://b/v1")


@pytest.mark.parametrize(("value", "expected"), [
    ("2", 2.0), (" 1.5 ", 1.5), ("0", 0.0), ("-3", 0.0), ("100000", 300.0), (None, None),
    ("", None), ("soon", None), ("nan", None),
])
def test_retry_after_is_read_as_seconds_never_negative_and_capped(value: str | None,
                                                                  expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    now = 1_700_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 12, UTC), usegmt=True)
    assert parse_retry_after(date, wall_now=now) == pytest.approx(12.0)


def test_factory_with_retry_after_is_avoided_exactly_that_long() -> None:
    cooldowns = Cooldowns()
    cooldowns.rate_limited("a", 100.0, 1.0)
    assert [e.id for e in cooldowns.select([A, B], 100.5)[0]] == ["b"]
    assert [e.id for e in cooldowns.select([A, B], 101.0)[0]] == ["a", "b"]


def test_rate_limits_without_retry_after_back_off_with_jitter_and_grow() -> None:
    cooldowns = Cooldowns(random.Random(7))
    waits = [cooldowns.rate_limited("a", 0.0, None) for _ in range(8)]
    steps = [1, 2, 4, 8, 16, 32, 60, 60]
    assert all(step / 2 <= w <= step for w, step in zip(waits, steps, strict=True))
    assert len(set(waits)) == len(waits)  # jittered, not fixed
    cooldowns.succeeded("a")
    assert cooldowns.rate_limited("a", 0.0, None) <= 1.0


def test_when_every_candidate_cools_down_select_says_when_the_first_returns() -> None:
    cooldowns = Cooldowns()
    cooldowns.rate_limited("a", 0.0, 5.0)
    cooldowns.rate_limited("b", 0.0, 2.0)
    usable, wait = cooldowns.select([A, B], 0.5)
    assert list(usable) == []
    assert wait == pytest.approx(1.5)


def test_retry_budget_allows_a_share_of_active_requests_but_at_least_the_minimum() -> None:
    budget = RetryBudget(percent=20.0, min_concurrency=2)
    for _ in range(20):
        budget.request_started()
    granted = [budget.try_acquire() for _ in range(6)]
    assert granted == [True, True, True, True, False, False]  # 20 % of 20
    assert budget.exhausted_total == 2
    budget.request_ended(held_retry=True)
    quiet = RetryBudget(percent=20.0, min_concurrency=2)
    quiet.request_started()
    assert [quiet.try_acquire() for _ in range(3)] == [True, True, False]


def test_first_byte_deadline_comes_from_route_then_site_then_ttft() -> None:
    route = Route("m", "default", (), first_byte_timeout_s=2.0)
    plain = Route("m", "default", ())
    site = EffectiveSettings(first_byte_timeout_s=5.0)
    derive = EffectiveSettings()
    assert first_byte_deadline(route, site, A) == 2.0
    assert first_byte_deadline(plain, site, A) == 5.0
    assert first_byte_deadline(plain, derive, A) == pytest.approx(1.2)  # 3 x 0.4 s
    assert first_byte_deadline(plain, derive, B) == 30.0  # unknown TTFT: the cap
    # A request's last candidate: the operator's deadline as set, else the cap (a derived
    # 1.2 s would buy no failover).
    assert [last_resort_deadline(r, s, A) for r, s in ((route, site), (plain, site),
                                                       (plain, derive))] == [2.0, 5.0, 30.0]
    assert last_resort_deadline(plain, derive, B) == 30.0


@pytest.mark.parametrize(("p99", "expected"), [(0.01, 0.5), (1.0, 3.0), (20.0, 30.0),
                                               (0.0, 30.0), (float("nan"), 30.0)])
def test_derived_deadline_is_three_ttft_p99_bounded(p99: float, expected: float) -> None:
    assert derived_from_ttft(p99) == expected


@pytest.mark.parametrize(("p99", "expected"), [(0.1, 2.0), (1.0, 3.0), (2.5, 7.5), (5.0, 10.0),
                                               (0.0, 10.0), (float("inf"), 10.0)])
def test_stream_idle_timeout_is_three_ttft_p99_between_two_and_ten_seconds(
        p99: float, expected: float) -> None:
    assert idle_from_ttft(p99) == pytest.approx(expected)


def test_site_idle_timeout_overrides_the_derived_one() -> None:
    assert stream_idle_timeout(EffectiveSettings(stream_idle_timeout_s=25.0), A) == 25.0
    assert stream_idle_timeout(EffectiveSettings(), A) == pytest.approx(2.0)  # 3 x 0.4 s < 2 s
    assert stream_idle_timeout(EffectiveSettings(), B) == 10.0  # unknown TTFT: the cap


def test_client_may_lower_the_deadline_but_never_raise_it() -> None:
    assert attempt_deadline(2.0, 0.0, client_limit_s({"x-tdn-first-byte-timeout-ms": "300"})) \
        == 0.3
    assert attempt_deadline(2.0, 0.0, client_limit_s({"x-tdn-first-byte-timeout-ms": "9000"})) \
        == 2.0
    assert attempt_deadline(2.0, 0.0, client_limit_s({})) == 2.0
    for bad in ("0", "-5", "1.5", "soon", ""):
        with pytest.raises(ApiError) as caught:
            client_limit_s({"x-tdn-first-byte-timeout-ms": bad})
        assert caught.value.status == 400


def test_non_streamed_generations_get_an_allowance_for_their_whole_answer() -> None:
    assert generation_allowance(True, 100) == 0.0
    assert generation_allowance(False, 100) == pytest.approx(5.0)
    assert generation_allowance(False, None) == 60.0


def test_unusable_data_plane_settings_are_named_so_the_policy_can_be_refused() -> None:
    bad = DataPlaneSettings(first_byte_timeout_s=float("nan"), retry_budget_percent=150.0,
                            outlier=OutlierDetection(failure_rate_threshold=2.0,
                                                     probe_interval_s=-1.0))
    problems = " ".join(settings_problems(bad))
    for name in ("first_byte_timeout_seconds", "retry_budget_percent",
                 "failure_rate_threshold", "probe_interval_seconds"):
        assert name in problems
    assert settings_problems(DataPlaneSettings()) == []
