"""The control plane's recent events, kept in memory for the web UI's timeline.

A bounded ring: the newest ``capacity`` events survive, older ones fall off, so a control plane
that runs for months holds a constant amount. Events that only repeat the newest one (the
periodic re-solve that changed no route) are folded into it with a count, so the timeline shows
what changed rather than the solver's heartbeat. Other components may record events too (for
example an applied operator policy); the live view drains what changed to push it to browsers.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

DEFAULT_CAPACITY = 500


class Severity(StrEnum):
    """How the timeline colours an event."""

    INFO = "info"
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


class EventKind(StrEnum):
    """What happened; the UI filters and labels by these."""

    FACTORY_NEW = "factory-new"
    FACTORY_DOWN = "factory-down"
    FACTORY_UP = "factory-up"
    FACTORY_ADMIN = "factory-admin"
    PLAN = "plan"
    SOLVE_FAILED = "solve-failed"
    POLICY_PUSHED = "policy-pushed"
    POLICY_APPLIED = "policy-applied"
    SIDECAR_CONNECTED = "sidecar-connected"
    SIDECAR_DISCONNECTED = "sidecar-disconnected"
    SIDECAR_ACK = "sidecar-ack"
    SIDECAR_NACK = "sidecar-nack"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the timeline. ``count`` > 1 when repeats were folded into it."""

    id: int
    at: float  # wall-clock seconds
    kind: EventKind
    subject: str
    detail: str
    severity: Severity
    plan_version: int = 0
    count: int = 1
    # Events with the same non-empty key fold into each other when consecutive.
    fold_key: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "at": round(self.at, 3), "kind": str(self.kind),
                "subject": self.subject, "detail": self.detail,
                "severity": str(self.severity), "plan_version": self.plan_version,
                "count": self.count}


class EventLog:
    """A ring of recent events with a change feed for one consumer (the live view)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, not {capacity}")
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._clock = clock
        self._changed: dict[int, Event] = {}

    def record(self, kind: EventKind, subject: str, detail: str,
               severity: Severity = Severity.INFO, *, plan_version: int = 0,
               fold_key: str = "", at: float | None = None) -> Event:
        """Add an event (or fold it into the newest one with the same ``fold_key``)."""
        at = self._clock() if at is None else at
        newest = self._ring[-1] if self._ring else None
        if fold_key and newest is not None and newest.fold_key == fold_key:
            event = replace(newest, at=at, detail=detail, severity=severity,
                            plan_version=plan_version or newest.plan_version,
                            count=newest.count + 1)
            self._ring[-1] = event
        else:
            event = Event(id=next(self._ids), at=at, kind=kind, subject=subject, detail=detail,
                          severity=severity, plan_version=plan_version, fold_key=fold_key)
            self._ring.append(event)
        self._changed[event.id] = event
        return event

    def recent(self, limit: int | None = None) -> tuple[Event, ...]:
        """The newest ``limit`` events (all kept ones by default), oldest first."""
        events = tuple(self._ring)
        return events if limit is None else events[-limit:] if limit > 0 else ()

    def take_changed(self) -> tuple[Event, ...]:
        """Events added or updated since the last call, oldest first."""
        changed = tuple(sorted(self._changed.values(), key=lambda e: e.id))
        self._changed.clear()
        return changed
