"""The UI's in-memory timeline: bounded, folds repeats, and tells its reader what changed."""

from __future__ import annotations

import pytest

from tdn.controlplane.ui.events import EventKind, EventLog, Severity


def test_the_ring_keeps_only_the_newest_events() -> None:
    log = EventLog(capacity=3, clock=lambda: 1.0)
    for i in range(5):
        log.record(EventKind.FACTORY_DOWN, f"f{i}", f"f{i} unhealthy", Severity.ERROR)
    assert [e.subject for e in log.recent()] == ["f2", "f3", "f4"]
    assert [e.subject for e in log.recent(2)] == ["f3", "f4"]
    assert log.recent(0) == ()


def test_consecutive_events_with_a_fold_key_become_one_line_with_a_count() -> None:
    now = iter([1.0, 2.0, 3.0, 4.0])
    log = EventLog(clock=lambda: next(now))
    first = log.record(EventKind.PLAN, "plan", "plan v1: no route changed", plan_version=1,
                       fold_key="plan-unchanged")
    log.record(EventKind.PLAN, "plan", "plan v2: no route changed", plan_version=2,
               fold_key="plan-unchanged")
    folded = log.recent()[-1]
    assert (folded.id, folded.count, folded.plan_version, folded.at) == (first.id, 2, 2, 2.0)
    assert folded.detail == "plan v2: no route changed"
    # Anything in between starts a new line.
    log.record(EventKind.FACTORY_DOWN, "f", "f unhealthy", Severity.ERROR)
    log.record(EventKind.PLAN, "plan", "plan v3", plan_version=3, fold_key="plan-unchanged")
    assert [e.count for e in log.recent()] == [2, 1, 1]


def test_take_changed_returns_new_and_updated_events_once() -> None:
    log = EventLog(clock=lambda: 1.0)
    a = log.record(EventKind.PLAN, "plan", "v1", fold_key="k")
    assert [e.id for e in log.take_changed()] == [a.id]
    assert log.take_changed() == ()
    log.record(EventKind.PLAN, "plan", "v2", fold_key="k")
    changed = log.take_changed()
    assert [(e.id, e.count) for e in changed] == [(a.id, 2)]


def test_events_serialise_with_their_kind_and_severity_as_text() -> None:
    log = EventLog(clock=lambda: 12.3456)
    event = log.record(EventKind.SIDECAR_NACK, "sc-1", "sc-1 NACK: bad", Severity.ERROR)
    assert event.to_json() == {"id": event.id, "at": 12.346, "kind": "sidecar-nack",
                               "subject": "sc-1", "detail": "sc-1 NACK: bad",
                               "severity": "error", "plan_version": 0, "count": 1}


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EventLog(capacity=0)
