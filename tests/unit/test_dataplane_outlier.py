"""Outlier detection on a fake clock: when factories are ejected, for how long, how many at once,
when a route panics, and what brings an ejected factory back."""

from __future__ import annotations

from tdn.dataplane.effective_settings import OutlierConfig, resolve
from tdn.dataplane.outlier import Kind, OutlierDetector
from tdn.domain import DataPlaneSettings, FactoryEndpoint, OutlierDetection, Tier

CONFIG = OutlierConfig(consecutive_failures=3, failure_rate_threshold=0.5, minimum_requests=10,
                       interval_s=10.0, base_ejection_s=30.0, max_ejection_s=100.0,
                       max_ejection_percent=50.0, panic_threshold_percent=50.0,
                       probe_interval_s=5.0)


def endpoints(*ids: str) -> list[FactoryEndpoint]:
    return [FactoryEndpoint(i, Tier.EDGE, "eu", i, f"http://{i}/v1") for i in ids]


def detector(*ids: str, config: OutlierConfig = CONFIG,
             events: list[tuple[str, str, bool]] | None = None) -> OutlierDetector:
    d = OutlierDetector(listener=(lambda *e: events.append(e)) if events is not None else None)
    d.configure(config, ids)
    return d


def fail(d: OutlierDetector, fid: str, times: int, now: float = 0.0,
         kind: Kind = Kind.ERROR) -> None:
    for _ in range(times):
        d.failure(fid, now, kind)


def test_consecutive_failures_eject_and_a_success_in_between_resets_the_count() -> None:
    events: list[tuple[str, str, bool]] = []
    d = detector("a", "b", events=events)
    fail(d, "a", 2)
    d.success("a", 0.0)
    fail(d, "a", 2)
    assert not d.is_ejected("a")
    fail(d, "a", 1)
    assert d.is_ejected("a")
    assert events == [("a", "consecutive_failures", True)]


def test_failure_rate_over_the_interval_ejects_without_consecutive_failures() -> None:
    d = detector("a", "b")
    for i in range(11):
        # Alternating: never two failures in a row, but over half of all attempts fail (the
        # rate is judged when a failure comes in, once there were ten attempts).
        if i % 2:
            d.success("a", 1.0)
        else:
            d.failure("a", 1.0)
    assert d.is_ejected("a")


def test_a_stream_broken_after_its_commit_is_one_failed_attempt_not_two_attempts() -> None:
    d = detector("a", "b", config=OutlierConfig(consecutive_failures=100))
    for i in range(10):
        d.success("a", 1.0)  # the stream committed: the attempt is counted
        if i % 5 >= 2:
            d.failure("a", 1.0, Kind.BROKEN)  # 6 of 10 broke afterwards: 60 % failed
    # Counted as 16 attempts (each break a second one) it would be 37.5 %: never ejected.
    assert d.is_ejected("a")


def test_failure_rate_window_restarts_after_the_interval() -> None:
    d = detector("a", "b")
    for _ in range(4):
        d.failure("a", 0.0)
        d.success("a", 0.0)
    for _ in range(4):  # a new window: the old failures no longer count
        d.success("a", 11.0)
    d.failure("a", 11.0)
    assert not d.is_ejected("a")


def test_ejection_time_doubles_with_each_ejection_and_is_capped() -> None:
    d = detector("a", "b")
    now = 0.0
    durations = []
    for _ in range(4):
        fail(d, "a", 3, now)
        d.probe_result("a", True, now)
        start = now
        while not d.available("a", now):
            now += 1.0
        durations.append(now - start)
    assert durations == [30.0, 60.0, 100.0, 100.0]


def test_errors_ejection_needs_its_time_over_and_a_successful_probe() -> None:
    d = detector("a", "b")
    fail(d, "a", 3, 0.0)
    assert not d.available("a", 31.0)  # time over, but no probe has succeeded
    d.probe_result("a", False, 31.0)
    assert not d.available("a", 32.0)
    d.probe_result("a", True, 10.0)  # a success before its time is not enough
    assert not d.available("a", 29.0)
    assert d.available("a", 30.0)


def test_unreachable_ejection_ends_at_the_first_successful_probe() -> None:
    events: list[tuple[str, str, bool]] = []
    d = detector("a", "b", events=events)
    fail(d, "a", 3, 0.0, Kind.UNREACHABLE)
    d.probe_result("a", False, 5.0)
    assert d.is_ejected("a")
    d.probe_result("a", True, 10.0)
    assert not d.is_ejected("a")
    assert events[-1] == ("a", "probe", False)


def test_no_more_than_the_max_ejection_share_is_ejected_but_one_always_may_be() -> None:
    d = detector("a", "b", "c", "d")
    for fid in "abcd":
        fail(d, fid, 3)
    assert sorted(d.ejected_ids()) == ["a", "b"]
    single = detector("only", config=OutlierConfig(consecutive_failures=1,
                                                   max_ejection_percent=10.0))
    fail(single, "only", 1)
    assert single.ejected_ids() == ["only"]


def test_route_in_panic_ignores_ejections_and_otherwise_skips_ejected_factories() -> None:
    d = detector("a", "b", "c", "d")
    route = endpoints("a", "b", "c", "d")
    fail(d, "a", 3)
    chosen, panic = d.select(route, 1.0)
    assert ([e.id for e in chosen], panic) == (["b", "c", "d"], False)
    two = endpoints("a", "b")
    fail(d, "b", 3)
    chosen, panic = d.select(two, 1.0)  # 0 of 2 healthy: below 50 %
    assert ([e.id for e in chosen], panic) == (["a", "b"], True)


def test_single_factory_route_panics_rather_than_having_no_candidate() -> None:
    d = detector("only", config=OutlierConfig(consecutive_failures=1))
    fail(d, "only", 1)
    chosen, panic = d.select(endpoints("only"), 1.0)
    assert ([e.id for e in chosen], panic) == (["only"], True)
    d.success("only", 2.0)  # sent before the ejection: proves nothing about now
    assert d.is_ejected("only")
    d.success("only", 2.0, panic=True)  # routed to it in panic, and it served: it is back
    assert not d.is_ejected("only")


def test_a_new_policy_keeps_the_state_of_factories_it_keeps_and_drops_the_rest() -> None:
    d = detector("a", "b", "c")
    fail(d, "a", 3)
    d.configure(CONFIG, ["a", "c"])
    assert d.is_ejected("a")
    assert d.ejected_ids() == ["a"]
    d.configure(CONFIG, ["c"])
    assert d.ejected_ids() == []


def test_zero_settings_mean_the_documented_defaults() -> None:
    effective = resolve(DataPlaneSettings())
    o = effective.outlier
    assert (o.consecutive_failures, o.consecutive_local_origin_failures,
            o.failure_rate_threshold, o.base_ejection_s, o.max_ejection_s,
            o.max_ejection_percent, o.panic_threshold_percent, o.probe_interval_s,
            o.probe_timeout_s, o.suspect_s) == (5, 3, 0.5, 30.0, 300.0, 50.0, 50.0, 5.0, 2.0, 5.0)
    # 0: each factory's idle timeout is derived from its TTFT p99 (see the deadline tests).
    assert (effective.stream_idle_timeout_s, effective.retry_budget_percent,
            effective.retry_budget_min_concurrency) == (0.0, 20.0, 10)
    custom = resolve(DataPlaneSettings(outlier=OutlierDetection(
        consecutive_failures=2, base_ejection_s=50.0, max_ejection_s=10.0,
        probe_interval_s=0.5)))
    # A cap below the base would shorten the first ejection: the base wins. Fewer consecutive
    # failures than the local-origin default lower that too.
    assert (custom.outlier.consecutive_failures, custom.outlier.consecutive_local_origin_failures,
            custom.outlier.max_ejection_s, custom.outlier.probe_timeout_s) == (2, 2, 50.0, 0.5)


def test_local_origin_failures_eject_after_three_and_as_unreachable() -> None:
    events: list[tuple[str, str, bool]] = []
    d = detector("a", "b", config=OutlierConfig(consecutive_failures=5), events=events)
    fail(d, "a", 2, kind=Kind.UNREACHABLE)
    assert not d.is_ejected("a")
    fail(d, "a", 1, kind=Kind.RESET)  # a reset before any answer is local-origin too
    assert events == [("a", "consecutive_local_origin_failures", True)]
    d.probe_result("a", True, 1.0)  # unreachable: the first good probe brings it back
    assert not d.is_ejected("a")


def test_an_answer_in_between_breaks_a_local_origin_streak() -> None:
    d = detector("a", "b", config=OutlierConfig(consecutive_failures=10))
    fail(d, "a", 2, kind=Kind.UNREACHABLE)
    d.failure("a", 0.0, Kind.ERROR)  # it answered (a 503): it is reachable
    fail(d, "a", 1, kind=Kind.UNREACHABLE)
    assert not d.is_ejected("a")
    d.success("a", 0.0)
    fail(d, "a", 2, kind=Kind.UNREACHABLE)
    assert not d.is_ejected("a")  # 2 local-origin in a row since the success
    fail(d, "a", 1, kind=Kind.UNREACHABLE)
    assert d.is_ejected("a")


def test_a_missed_deadline_takes_the_factory_out_of_rotation_for_one_probe_interval() -> None:
    d = detector("a", "b", "c", "d", config=OutlierConfig(probe_interval_s=5.0))
    route = endpoints("a", "b", "c", "d")
    assert d.failure("a", 10.0, Kind.DEADLINE) == "suspected"
    assert not d.is_ejected("a")
    chosen, panic = d.select(route, 10.1)
    assert ([e.id for e in chosen], panic) == (["b", "c", "d"], False)
    assert not d.available("a", 14.9)
    assert d.available("a", 15.0)  # suspicion over: it gets requests again
    assert [e.id for e in d.select(route, 15.0)[0]] == ["a", "b", "c", "d"]


def test_any_success_lifts_a_suspicion_and_deadlines_in_a_row_eject() -> None:
    d = detector("a", "b", config=OutlierConfig(consecutive_failures=3))
    d.failure("a", 0.0, Kind.DEADLINE)
    d.success("a", 0.5)  # an answer still in flight came back fine
    assert d.available("a", 0.6)
    events: list[tuple[str, str, bool]] = []
    d = detector("a", "b", config=OutlierConfig(consecutive_failures=3), events=events)
    assert [d.failure("a", 0.0, Kind.DEADLINE) for _ in range(3)] == [
        "suspected", "suspected", "consecutive_failures"]
    assert d.is_ejected("a")
    assert not d.is_suspect("a", 0.0)  # ejection supersedes the suspicion
    # Ejected for errors, not for being unreachable: a probe alone does not bring it back.
    d.probe_result("a", True, 1.0)
    assert d.is_ejected("a")


def test_suspected_factories_count_towards_the_max_ejection_share() -> None:
    d = detector("a", "b", "c", "d")  # at most 2 of 4 out of rotation
    assert d.failure("a", 0.0, Kind.DEADLINE) == "suspected"
    fail(d, "b", 3)
    assert d.is_ejected("b")
    assert d.failure("c", 0.0, Kind.DEADLINE) is None  # the cap: c stays in rotation
    assert d.available("c", 0.0)
    fail(d, "d", 3)
    assert not d.is_ejected("d")
    # Once a's suspicion is over, there is room again.
    assert d.failure("c", 6.0, Kind.DEADLINE) == "suspected"


def test_a_new_policy_forgets_suspicions_of_factories_it_drops() -> None:
    d = detector("a", "b")
    d.failure("a", 0.0, Kind.DEADLINE)
    d.configure(CONFIG, ["b"])
    d.configure(CONFIG, ["a", "b"])
    assert d.available("a", 0.1)


def test_the_ejection_cap_is_per_route_so_broken_factories_elsewhere_do_not_block_one() -> None:
    # Three routes, each a primary with the shared backup "good" (the data-plane benchmark's
    # failover drills): two broken primaries already out must not keep the third in rotation.
    d = OutlierDetector()
    d.configure(CONFIG, ["good", "p1", "p2", "p3"],
                [["p1", "good"], ["p2", "good"], ["p3", "good"]])
    for fid in ("p1", "p2", "p3"):
        fail(d, fid, 3)
        assert d.is_ejected(fid)
    # Within one route the cap still holds: "good" is the only one left in each.
    fail(d, "good", 3)
    assert not d.is_ejected("good")


def test_a_factory_serving_several_routes_is_ejected_only_if_each_stays_within_the_cap() -> None:
    d = OutlierDetector()
    d.configure(CONFIG, ["a", "b", "c", "d"], [["a", "b"], ["a", "c", "d", "b"]])
    fail(d, "b", 3)
    assert d.is_ejected("b")
    fail(d, "a", 3)  # route 1 would lose both of its factories
    assert not d.is_ejected("a")
