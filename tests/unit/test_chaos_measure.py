"""What a drill's records mean, computed without a network: phases, failover times, excused
in-flight streams, control-plane events, usage accounting and the expectation verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from tdn.chaos.load import RequestRecord
from tdn.chaos.measure import analyse, excuse_in_flight, percentile, phases
from tdn.chaos.observe import ControlPlaneSample, Metered, Sample, SidecarSample, SidecarView
from tdn.chaos.spec import parse_drill
from tdn.chaos.timeline import Window

DRILL = """\
name: crash
load: {duration_s: 30}
targets:
  victim: {factory: primary}
  cp: {controlplane: all}
timeline:
  - {at: 10, for: 10, target: victim, fault: kill}
expect:
  max_error_rate: 0
  max_failover_s: 1.0
  max_added_p99_s: 0.25
  max_error_rate_after: 0
  min_requests: 1
"""


def _spec(extra: str = "", text: str = DRILL) -> Any:
    return parse_drill(text + extra, "drill.yaml")


def _rec(i: int, t: float, *, kind: str = "ok", factory: str = "edge-fra-2", attempts: int = 1,
         ttft: float = 0.05, total: float = 0.3, streamed: bool = True,
         tokens: int = 10) -> RequestRecord:
    return RequestRecord(id=i, t_start=t, streamed=streamed, max_tokens=24, prompt_words=10,
                         status=200, kind=kind, factory=factory, attempts=attempts,
                         ttft_s=ttft if kind == "ok" else None, total_s=total,
                         complete=kind == "ok", tokens=tokens,
                         usage_completion=tokens if kind == "ok" else None)


def _window(start: float = 10.0, end: float | None = 20.0, *,
            factories: tuple[str, ...] = ("center-se-1",), event: int = 0, fault: str = "kill",
            target: str = "victim") -> Window:
    return Window(event=event, occurrence=0, title=f"{fault} {target}", fault=fault,
                  target=target, factories=factories, start=start, end=end)


def _steady(before: int = 20, during: int = 20, after: int = 20) -> list[RequestRecord]:
    records, i = [], 0
    for t0, n in ((0.0, before), (10.0, during), (20.0, after)):
        for k in range(n):
            records.append(_rec(i, t0 + k * 10.0 / n))
            i += 1
    return records


def test_percentile_interpolates_and_is_none_for_nothing() -> None:
    assert percentile([], 99) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0


def test_phases_split_requests_by_start_time_around_each_fault() -> None:
    names = [p.name for p in phases(_steady(), [_window()], 30.0)]
    assert names == ["before", "during: kill victim", "after: kill victim"]
    counts = [p.requests for p in phases(_steady(), [_window()], 30.0)]
    assert counts == [20, 20, 20]


def test_a_clean_failover_passes_every_check() -> None:
    records = _steady()
    # The first request after the crash finds the victim dead and is served by a backup.
    records.append(_rec(100, 10.05, attempts=2, ttft=0.06))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert result.passed, [c for c in result.checks if not c.passed]
    (event,) = result.events
    assert event.failover_s == pytest.approx(0.11)
    assert event.errors_cleared_s == 0.0
    assert event.exercised


def test_errors_after_the_fault_fail_the_drill_and_time_the_recovery() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    records.append(_rec(101, 12.0, kind="http_5xx", total=0.5))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert not result.passed
    failing = {c.name for c in result.checks if not c.passed}
    assert failing == {"error rate", "failover: kill victim"}
    assert result.events[0].errors_cleared_s == pytest.approx(2.5)
    assert result.errors_by_kind == {"http_5xx": 1}


def test_streams_running_on_the_victim_when_it_died_are_excused_but_counted() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    # Started before the crash on the victim, broke at the crash with an error event.
    cut = _rec(101, 9.9, kind="stream_error_event", factory="center-se-1", total=0.2)
    # Started after the crash: nothing excuses it.
    late = _rec(102, 10.5, kind="stream_error_event", factory="center-se-1", total=0.2)
    records += [cut, late]
    assert excuse_in_flight(records, [_window()]) == 1
    assert cut.excused and not late.excused


def test_continuation_in_the_policy_excuses_nothing() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    records.append(_rec(101, 9.9, kind="stream_error_event", factory="center-se-1", total=0.2))
    off = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert off.excused == 1 and off.passed
    for r in records:
        r.excused = False
    on = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0,
                 continuation=True)
    assert on.excused == 0 and not on.passed


def test_a_truncated_success_always_fails() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    records.append(_rec(101, 15.0, kind="truncated_success"))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert not result.passed
    assert [c.name for c in result.checks if not c.passed] == ["no truncated successes"]


def test_slower_first_tokens_during_the_fault_are_measured_against_before() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    records += [_rec(200 + k, 11.0 + k * 0.1, ttft=1.0) for k in range(5)]
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert result.events[0].added_p99_s == pytest.approx(0.95, abs=0.01)
    assert "added p99 ttft: kill victim" in {c.name for c in result.checks if not c.passed}


def test_a_fault_nobody_felt_proves_nothing() -> None:
    result = analyse(_spec(), _steady(), [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert [c.name for c in result.checks if not c.passed] == ["the faults were felt"]


def _sample(t: float, *, up: tuple[bool, bool] = (True, True), leader: str = "a",
            peer: str = "p1", on: str = "a", version: str = "7", nack: str = "") -> Sample:
    cps = []
    for name, alive in zip(("a", "b"), up, strict=True):
        views = (SidecarView("sc", True, version, nack, peer),) if alive and name == on else ()
        cps.append(ControlPlaneSample(name, up=alive, leader=alive and name == leader,
                                      sidecars=views))
    return Sample(t, (SidecarSample("sc", True, version),), tuple(cps))


CP_DRILL = DRILL.replace("target: victim, fault: kill", "target: cp, fault: kill").replace(
    "  max_failover_s: 1.0\n", "  max_controlplane_failover_s: 3\n  max_reconnect_s: 2\n"
    "  sidecars_keep_policy: true\n")


def test_leader_kill_measures_failover_to_the_surviving_replica() -> None:
    samples = [_sample(t) for t in (8.0, 9.0, 9.9)]
    samples += [_sample(10.5, up=(False, True), leader="", on="")]
    samples += [_sample(12.0, up=(False, True), leader="b", on="b", peer="p2")]
    samples += [_sample(t, leader="b", on="b", peer="p2") for t in (21.0, 25.0)]
    window = _window(factories=(), target="cp")
    result = analyse(_spec(text=CP_DRILL), _steady(), [window], samples, sidecars=["sc"],
                     drill_end=30.0, lost_controlplanes={0: ("a",)})
    (event,) = result.events
    assert event.controlplane_failover_s == pytest.approx(2.0)
    assert event.reconnect_s == 0.0  # already back on a replica before the window ended
    assert event.policy_kept
    assert result.passed, [c for c in result.checks if not c.passed]


def test_a_sidecar_already_on_the_surviving_replica_needs_no_reconnect() -> None:
    samples = [_sample(t, on="b") for t in (8.0, 9.9)]
    samples += [_sample(10.5, up=(False, True), leader="", on="b")]
    samples += [_sample(13.0, up=(False, True), leader="b", on="b")]
    result = analyse(_spec(text=CP_DRILL), _steady(), [_window(factories=(), target="cp")],
                     samples, sidecars=["sc"], drill_end=30.0, lost_controlplanes={0: ("a",)})
    assert result.events[0].controlplane_failover_s == pytest.approx(3.0)


def test_no_surviving_leader_fails_the_control_plane_failover() -> None:
    samples = [_sample(9.0), _sample(11.0, up=(False, True), leader="", on="")]
    samples += [_sample(21.0, leader="a", on="a", peer="p3")]
    result = analyse(_spec(text=CP_DRILL), _steady(), [_window(factories=(), target="cp")],
                     samples, sidecars=["sc"], drill_end=30.0, lost_controlplanes={0: ("a",)})
    failing = {c.name for c in result.checks if not c.passed}
    assert failing == {"control-plane failover: kill cp"}
    assert result.events[0].reconnect_s == pytest.approx(1.0)


def test_bad_policy_needs_a_nack_and_the_refused_version_never_running() -> None:
    text = DRILL.replace("target: victim, fault: kill", "target: victim, fault: bad_policy")
    text = text.replace("  max_failover_s: 1.0\n", "  sidecars_keep_policy: true\n"
                        "  nack_reported: true\n")
    window = _window(fault="bad_policy")
    refused = "version 8 refused: factory x has no http(s) base_url"
    nacked = [_sample(9.0), _sample(11.0, version="8", nack=""),
              _sample(12.0, nack=refused)]
    # A good version arriving meanwhile is fine; the refused one must never run.
    good = [nacked[0], _sample(11.0, nack=refused), _sample(14.0, version="9")]
    result = analyse(_spec(text=text), _steady(), [window], good, sidecars=["sc"],
                     drill_end=30.0)
    assert result.events[0].nacked and result.events[0].policy_kept
    assert result.passed, [c for c in result.checks if not c.passed]
    result = analyse(_spec(text=text), _steady(), [window], nacked, sidecars=["sc"],
                     drill_end=30.0)
    failing = {c.name for c in result.checks if not c.passed}
    assert failing == {"sidecars keep their policy: bad_policy victim"}
    silent = [_sample(9.0), _sample(12.0)]
    result = analyse(_spec(text=text), _steady(), [window], silent, sidecars=["sc"],
                     drill_end=30.0)
    assert {c.name for c in result.checks if not c.passed} == {
        "NACK reported: bad_policy victim"}


def test_usage_is_accounted_when_metering_matches_complete_answers() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))
    spent = sum(r.tokens for r in records)
    before = Metered(True, prompt=100.0, completion=1000.0, families=("tdn_sidecar_tokens",))
    exact = Metered(True, prompt=200.0, completion=1000.0 + spent, families=before.families)
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0,
                     metered=(before, exact))
    assert result.usage is not None and result.usage.accounted
    over = Metered(True, prompt=200.0, completion=1000.0 + spent + 5, families=before.families)
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0,
                     metered=(before, over))
    assert [c.name for c in result.checks if not c.passed] == ["usage accounted"]


def test_restore_problems_fail_the_drill() -> None:
    records = [*_steady(), _rec(100, 10.05, attempts=2)]
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0,
                     restore_problems=["restart sim/center-se-1: boom"])
    assert [c.name for c in result.checks if not c.passed] == ["everything restored"]


def test_a_request_in_flight_when_the_fault_hit_that_failed_over_counts() -> None:
    records = _steady()
    # Sent just before the crash, its first attempt died with the factory: a backup answered.
    records.append(_rec(100, 9.95, attempts=2, ttft=0.25))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    assert result.events[0].failover_s == pytest.approx(0.2)
    assert result.passed, [c for c in result.checks if not c.passed]


def test_when_the_sidecar_ejected_the_victim_at_once_the_first_success_elsewhere_counts() -> None:
    records = _steady()
    # Streams running on the victim broke (reported) and got it ejected: nothing after the
    # crash needed a second attempt, and the next request went straight to a backup.
    records.append(_rec(100, 9.8, kind="stream_error_event", factory="center-se-1", total=0.3))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    (event,) = result.events
    assert event.exercised
    assert event.failover_s == pytest.approx(0.05)  # the request at 10.0 s, first byte 50 ms
    assert result.passed, [c for c in result.checks if not c.passed]


def test_what_starts_after_a_fault_ended_is_not_its_failover() -> None:
    records = _steady()
    records.append(_rec(100, 10.05, attempts=2))  # the fault's own failover, 100 ms
    # Long after the window: a retry for another reason, and an error the after phase owns.
    records.append(_rec(101, 25.0, attempts=2, ttft=0.5))
    records.append(_rec(102, 26.0, kind="http_5xx", total=0.5))
    result = analyse(_spec(), records, [_window()], [], sidecars=["sc"], drill_end=30.0)
    (event,) = result.events
    assert event.failover_s == pytest.approx(0.1)
    assert event.errors_cleared_s == 0.0
    assert {c.name for c in result.checks if not c.passed} == {
        "error rate", "error rate after the faults"}
