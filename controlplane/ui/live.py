"""The live view behind the web UI: watches the control plane, keeps the timeline and the
telemetry history, and pushes what changed to every open page.

It polls the components' state four times a second and pushes only differences. Polling, rather
than hooking each component's change signal, catches every source in one place (registry,
solve loop, snapshot cache, sidecar tracker), including health that changes by the mere passage
of time (telemetry TTL, computed on read, announced by nobody); it also batches a burst of
changes into one message per tick, which bounds what a browser must redraw at a thousand
factories. A tick costs a few milliseconds at that size (``make bench``, section "ui").

Each subscriber (one Server-Sent Events response) gets a full snapshot, then patches. A
subscriber too slow to keep up is closed rather than buffered without bound; its browser
reconnects and starts again from a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence

from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.solve_loop import SolveLoop
from tdn.controlplane.status import StatusSource
from tdn.controlplane.ui.events import EventKind, EventLog, Severity
from tdn.controlplane.ui.history import TelemetryHistory
from tdn.controlplane.ui.view import (
    Record,
    diff_records,
    factory_record,
    layout_nodes,
    plan_record,
    site_record,
    structure_key,
)
from tdn.domain import FactoryState, Health, Site
from tdn.topology.export import layout

log = logging.getLogger(__name__)

DEFAULT_PERIOD = 0.25
# Frames a subscriber may have waiting before it is closed (about 25 s of patches at 4 Hz).
SUBSCRIBER_BACKLOG = 100
# Events of one kind in one tick beyond this are told as one ("40 factories down: ...").
_BATCH_ABOVE = 3
SNAPSHOT_EVENTS = 300


def sse_frame(event: str, data: Record, event_id: int | None = None, *,
              retry_ms: int | None = None) -> bytes:
    """One Server-Sent Events message (JSON in a single ``data:`` line)."""
    head = "" if retry_ms is None else f"retry: {retry_ms}\n"
    head += "" if event_id is None else f"id: {event_id}\n"
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


class Subscription:
    """One open page's queue of encoded frames; ``None`` in the queue means "close"."""

    def __init__(self, backlog: int = SUBSCRIBER_BACKLOG) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=backlog + 1)
        self._backlog = backlog
        self.closed = False

    def offer(self, frame: bytes) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= self._backlog:
            self.close()
            return
        self.queue.put_nowait(frame)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class LiveView:
    """Change detection, timeline, history and fan-out; :meth:`run` is its owned task."""

    def __init__(self, *, registry: FactoryRegistry, solve_loop: SolveLoop,
                 cache: SnapshotCache, status: StatusSource, sites: Sequence[Site],
                 events: EventLog | None = None, history: TelemetryHistory | None = None,
                 period: float = DEFAULT_PERIOD, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._loop = solve_loop
        self._cache = cache
        self._status_source = status
        self._sites = tuple(sorted(sites, key=lambda s: s.id))
        self.events = events if events is not None else EventLog()
        self.history = history if history is not None else TelemetryHistory()
        self.period = period
        self._clock = clock
        self._states: dict[str, FactoryState] = {}
        self._factories: dict[str, Record] = {}
        self._structure: tuple[tuple[str, ...], ...] | None = None
        self._layout: Record = {}
        self._plan: Record = {}
        self._plan_version = -1
        self._solves = 0
        self._policies: dict[str, str] = {}
        self._status: Record = {}
        self._sidecars: dict[str, Record] = {}
        self._seq = 0
        self._subscribers: set[Subscription] = set()
        self._last_failure = ""

    # --- reading -------------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    def snapshot(self) -> Record:
        """Everything a page needs to draw, as of the last tick."""
        return {
            "type": "snapshot", "seq": self._seq, "at": self._clock(),
            "layout": self._layout, "factories": self._factories,
            "sites": [site_record(s) for s in self._sites], "plan": self._plan,
            "status": self._status,
            "events": [e.to_json() for e in self.events.recent(SNAPSHOT_EVENTS)],
        }

    def now(self) -> float:
        return self._clock()

    def factory_ids(self) -> tuple[str, ...]:
        return tuple(self._factories)

    # --- subscribers ---------------------------------------------------------------------------

    def subscribe(self) -> tuple[Subscription, bytes]:
        """A new subscription and the snapshot frame to send it first."""
        # Catch up first, so that a page opened right after a change already shows it (the
        # others get that change as a patch, in order).
        self.step()
        sub = Subscription()
        self._subscribers.add(sub)
        frame = sse_frame("snapshot", self.snapshot(), self._seq, retry_ms=1000)
        return sub, frame

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close_all(self) -> None:
        """End every open stream (the server is shutting down)."""
        for sub in self._subscribers:
            sub.close()
        self._subscribers.clear()

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick and publish forever."""
        while True:
            self.step()
            # With no page open the tick only feeds the timeline, so it runs at 1 Hz: at
            # thousands of sidecars a tick costs tens of ms of the loop that serves discovery.
            await asyncio.sleep(self.period if self._subscribers else max(self.period, 1.0))

    def step(self) -> None:
        """One tick, published. A failing tick is logged (once per distinct error) and the next
        one tried, since the page must never take the control plane's routing down with it."""
        try:
            patch = self.tick()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text != self._last_failure:
                log.exception("web UI live view failed; retrying every tick")
                self._last_failure = text
            return
        self._last_failure = ""
        if patch is not None:
            self.publish(patch)

    def publish(self, patch: Record) -> None:
        frame = sse_frame("patch", patch, patch["seq"])
        for sub in list(self._subscribers):
            sub.offer(frame)
            if sub.closed:
                self._subscribers.discard(sub)

    def tick(self) -> Record | None:
        """Look at the components once; return the patch to push, or None if nothing changed."""
        now = self._clock()
        states = self._registry.states(now)
        patch: Record = {}
        self._tick_factories(states, now, patch)
        status = self._status_source.status().to_json()
        for sidecar in status.get("sidecars", ()):
            sidecar["lag_seconds"] = round(float(sidecar.get("lag_seconds", 0.0)), 1)
        self._tick_plan(status.get("plan", {}), patch)
        self._tick_sidecars(status.get("sidecars", ()))
        if status != self._status:
            self._status = status
            patch["status"] = status
        events = self.events.take_changed()
        if events:
            patch["events"] = [e.to_json() for e in events]
        if not patch:
            return None
        self._seq += 1
        return {"type": "patch", "seq": self._seq, "at": now, **patch}

    # --- factories -----------------------------------------------------------------------------

    def _tick_factories(self, states: Sequence[FactoryState], now: float, patch: Record) -> None:
        records: dict[str, Record] = {}
        news: list[tuple[EventKind, Severity, str, str]] = []
        for state in states:
            fid = state.spec.id
            if self._states.get(fid) == state:
                records[fid] = self._factories[fid]
                continue
            self._states[fid] = state
            self.history.record(state, now)
            record = records[fid] = factory_record(state)
            news.extend(_factory_events(self._factories.get(fid), record))
        for gone in [fid for fid in self._states if fid not in records]:
            del self._states[gone]
            self.history.forget(gone)
        changed, removed = diff_records(self._factories, records)
        self._factories = records
        if changed:
            patch["factories"] = changed
        if removed:
            patch["removed"] = removed
        # Only a changed or removed factory can change the layout (or the first tick).
        structure = (structure_key(states) if changed or removed or self._structure is None
                     else self._structure)
        if structure != self._structure:
            self._structure = structure
            self._layout = layout(layout_nodes(states, self._sites)).to_json()
            patch["layout"] = self._layout
        self._record_batched(news)

    def _record_batched(self, news: list[tuple[EventKind, Severity, str, str]]) -> None:
        grouped: dict[tuple[EventKind, Severity], list[tuple[str, str]]] = defaultdict(list)
        for kind, severity, subject, detail in news:
            grouped[(kind, severity)].append((subject, detail))
        for (kind, severity), items in grouped.items():
            if len(items) <= _BATCH_ABOVE:
                for subject, detail in items:
                    self.events.record(kind, subject, detail, severity)
                continue
            names = ", ".join(subject for subject, _ in items[:8])
            more = f" and {len(items) - 8} more" if len(items) > 8 else ""
            verb = _BATCH_VERBS.get(kind, str(kind))
            self.events.record(kind, f"{len(items)} factories",
                               f"{len(items)} factories {verb}: {names}{more}", severity)

    # --- plan and policies ---------------------------------------------------------------------

    def _tick_plan(self, plan_status: Record, patch: Record) -> None:
        version = int(plan_status.get("version", 0))
        solves = self._loop.solves
        if solves != self._solves and version == self._plan_version:
            error = str(plan_status.get("last_error", ""))
            if error:
                self.events.record(EventKind.SOLVE_FAILED, "solver",
                                   f"previous plan kept: {error}", Severity.ERROR,
                                   plan_version=version, fold_key=f"failed:{error}")
        self._solves = solves
        # Site policies are compared on their own: on a replica that follows the leader they
        # change (read from the store) without this replica solving anything.
        policies = {s.policy.site: s.policy.version for s in self._cache.snapshots()}
        pushed = sorted(site for site, v in policies.items() if self._policies.get(site) != v)
        if version == self._plan_version and policies == self._policies:
            return
        self._policies = policies
        new_plan = version != self._plan_version
        self._plan_version = version
        self._plan = plan_record(self._loop.plan, plan_status, policies)
        patch["plan"] = self._plan
        if new_plan and version:
            took = float(plan_status.get("solve_seconds", 0.0)) * 1000
            head = f"plan v{version}: {plan_status.get('status', '')} in {took:.0f} ms"
            if pushed:
                self.events.record(EventKind.PLAN, "plan",
                                   f"{head}; routing changed at {', '.join(pushed)}",
                                   Severity.INFO, plan_version=version)
            else:
                # The periodic re-solve that moved nothing: fold repeats into one line.
                self.events.record(EventKind.PLAN, "plan", f"{head}; no route changed",
                                   Severity.INFO, plan_version=version,
                                   fold_key="plan-unchanged")
        for site in pushed:
            self.events.record(EventKind.POLICY_PUSHED, site,
                               f"policy {policies[site]} published for {site}",
                               Severity.INFO, plan_version=version)

    # --- sidecars ------------------------------------------------------------------------------

    def _tick_sidecars(self, sidecars: Sequence[Record]) -> None:
        current = {str(s["node_id"]): s for s in sidecars}
        for node, s in current.items():
            before = self._sidecars.get(node)
            site = s.get("site", "")
            if s.get("connected") and (before is None or not before.get("connected")):
                self.events.record(EventKind.SIDECAR_CONNECTED, node,
                                   f"{node} connected at {site}", Severity.OK)
            elif before is not None and before.get("connected") and not s.get("connected"):
                self.events.record(EventKind.SIDECAR_DISCONNECTED, node,
                                   f"{node} at {site} disconnected", Severity.WARNING)
            acked = s.get("acked_version", "")
            if acked and (before is None or before.get("acked_version") != acked):
                self.events.record(EventKind.SIDECAR_ACK, node,
                                   f"{node} runs policy {acked}", Severity.OK)
            nack = s.get("last_nack", "")
            if nack and (before is None or before.get("last_nack") != nack):
                self.events.record(EventKind.SIDECAR_NACK, node, f"{node} NACK: {nack}",
                                   Severity.ERROR)
        self._sidecars = current


_BATCH_VERBS = {
    EventKind.FACTORY_NEW: "joined",
    EventKind.FACTORY_DOWN: "down",
    EventKind.FACTORY_UP: "healthy again",
    EventKind.FACTORY_ADMIN: "changed admin state",
}


def _factory_events(before: Record | None, after: Record,
                    ) -> list[tuple[EventKind, Severity, str, str]]:
    fid = after["id"]
    health = after["health"]
    reason = f": {after['reason']}" if after["reason"] else ""
    if before is None:
        where = f"{after['tier']}, {after['region']}, zone {after['zone']}"
        severity = Severity.INFO if health == Health.HEALTHY else Severity.WARNING
        return [(EventKind.FACTORY_NEW, severity, fid, f"{fid} joined ({where}): {health}")]
    out: list[tuple[EventKind, Severity, str, str]] = []
    if before["health"] != health:
        if health == Health.HEALTHY:
            out.append((EventKind.FACTORY_UP, Severity.OK, fid,
                        f"{fid} healthy again (was {before['health']})"))
        else:
            severity = Severity.ERROR if health == Health.UNHEALTHY else Severity.WARNING
            out.append((EventKind.FACTORY_DOWN, severity, fid, f"{fid} {health}{reason}"))
    if before["admin"] != after["admin"]:
        severity = Severity.INFO if after["admin"] == "active" else Severity.WARNING
        out.append((EventKind.FACTORY_ADMIN, severity, fid,
                    f"{fid} {after['admin']} (was {before['admin']})"))
    return out

