"""The factory registry: what the control plane believes about every token factory right now.

Telemetry reports are validated at the edge (:func:`tdn.wire.report_to_domain`) and applied here;
the registry turns them, the clock and the operator's admin state into one
:class:`~tdn.domain.FactoryState` per factory. It is the only place health is decided:

* HEALTHY   the last report was valid and the agent could reach its engine;
* UNHEALTHY the agent could not reach the engine, or the last report was refused (the last good
  state is kept so operators still see the factory, but it is not routed to);
* UNKNOWN   no report within the TTL (or, for a factory heard by another replica, no live record
  of it in the store: see :mod:`tdn.controlplane.telemetry_sync`). Unknown is never routed to.

Changes that should move traffic (a new factory, a health or admin change, a change of what a
factory serves) are announced through ``on_change`` so the solve loop can re-plan at once rather
than at its next tick. The registry holds no tasks and no sockets: the clock is injected, and
:meth:`FactoryRegistry.sweep` is called by its owner to notice silence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.domain import (
    AdminState,
    Energy,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    ValidationFailure,
)
from tdn.v1 import telemetry_pb2
from tdn.wire import report_to_domain

log = logging.getLogger(__name__)


class ChangeKind(StrEnum):
    """Why the registry thinks the plan may be out of date."""

    NEW_FACTORY = "new-factory"
    HEALTH = "health"
    ADMIN = "admin"
    SPEC = "spec"


@dataclass(frozen=True, slots=True)
class Change:
    """A significant change to one factory, worth an early solve."""

    factory_id: str
    kind: ChangeKind
    detail: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one telemetry report, as the ack tells it to the agent."""

    accepted: bool
    factory_id: str
    reason: str = ""


class UnknownFactory(KeyError):
    """An operator named a factory the registry has never heard from."""

    def __init__(self, factory_id: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"unknown factory {factory_id!r} (known: {names})")
        self.factory_id = factory_id

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(slots=True)
class _Entry:
    """Mutable bookkeeping behind one factory's state."""

    spec: FactorySpec
    load: FactoryLoad
    # Health as of the last report (healthy/unhealthy); TTL expiry is applied on read.
    reported: Health
    reason: str
    last_report: float
    # Health as last announced, so sweep() can tell when expiry changed it.
    announced: Health
    # The last report came from another replica through the store. Its liveness is then the
    # store's lease, not this replica's clock: a store hiccup that delays refreshes must not
    # make a live factory unknown. It turns unknown when its record vanishes (``vanished``).
    remote: bool = False
    vanished: bool = False


_NO_PRICE = Price(0.0, 0.0)
_NO_ENERGY = Energy()


def _spec_routing_fields(spec: FactorySpec) -> FactorySpec:
    """The spec without price and energy: those move with markets and are picked up by the
    periodic solve, while the rest (models, endpoint, zone, ...) changes what is even allowed."""
    return replace(spec, price=_NO_PRICE, energy=_NO_ENERGY)


class FactoryRegistry:
    """Per-factory state from telemetry, TTL and operator admin state."""

    def __init__(self, *, ttl: float, metrics: ControlPlaneMetrics,
                 clock: Callable[[], float] = time.time,
                 on_change: Callable[[Change], None] | None = None,
                 admin: Mapping[str, AdminState] | None = None) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        self.ttl = ttl
        self._metrics = metrics
        self._clock = clock
        self._on_change = on_change
        self._entries: dict[str, _Entry] = {}
        # Admin state is kept apart from entries: it is the operator's word and outlives a
        # factory's silence (a drained factory that reconnects stays drained).
        self._admin: dict[str, AdminState] = dict(admin or {})

    # --- telemetry -----------------------------------------------------------------------------

    def apply_report(self, report: telemetry_pb2.TelemetryReport,
                     now: float | None = None, *, remote: bool = False) -> ApplyResult:
        """Validate and apply one report; a refused report makes its factory unroutable.

        ``remote`` reports were received by another replica and read from the store: they
        are applied alike but not counted or logged again here (the receiver did that).
        """
        now = self._clock() if now is None else now
        factory_id = report.identity.id
        try:
            spec, load = report_to_domain(report)
        except ValidationFailure as exc:
            if not remote:
                self._metrics.telemetry_rejected.labels(reason=exc.reason).inc()
                log.warning("rejected telemetry from %r: %s", factory_id or "<no id>", exc)
            self._reject(factory_id, str(exc), now, remote=remote)
            return ApplyResult(accepted=False, factory_id=factory_id, reason=str(exc))
        health = Health.HEALTHY if report.engine_reachable else Health.UNHEALTHY
        reason = "" if report.engine_reachable else "agent cannot reach the engine"
        entry = self._entries.get(spec.id)
        if entry is None:
            self._entries[spec.id] = _Entry(spec, load, health, reason, now, announced=health,
                                            remote=remote)
            self._emit(Change(spec.id, ChangeKind.NEW_FACTORY, f"new factory ({health})"))
        else:
            spec_changed = _spec_routing_fields(entry.spec) != _spec_routing_fields(spec)
            entry.spec, entry.load = spec, load
            entry.reported, entry.reason, entry.last_report = health, reason, now
            entry.remote, entry.vanished = remote, False
            if spec_changed:
                self._emit(Change(spec.id, ChangeKind.SPEC, "identity or capacity changed"))
            self._announce(entry, now)
        if not remote:
            self._metrics.telemetry_reports.labels(factory=spec.id).inc()
        return ApplyResult(accepted=True, factory_id=spec.id)

    def _reject(self, factory_id: str, why: str, now: float, *, remote: bool = False) -> None:
        entry = self._entries.get(factory_id)
        if entry is None:
            # Nothing valid was ever heard from it, so it was never routable: nothing to undo.
            return
        entry.remote, entry.vanished = remote, False
        entry.reported = Health.UNHEALTHY
        entry.reason = f"rejected telemetry: {why}"
        # The refused report still proves the agent is alive; refreshing the time keeps the
        # reason "rejected" visible instead of decaying to a vaguer "unknown".
        entry.last_report = now
        self._announce(entry, now)

    # --- reading -------------------------------------------------------------------------------

    def _health(self, entry: _Entry, now: float) -> tuple[Health, str]:
        if entry.remote:
            if entry.vanished:
                return Health.UNKNOWN, "no replica hears from it (its telemetry record expired)"
            return entry.reported, entry.reason
        silent = now - entry.last_report
        if silent > self.ttl:
            return Health.UNKNOWN, f"no telemetry for {silent:.1f}s (ttl {self.ttl:g}s)"
        return entry.reported, entry.reason

    def remote_vanished(self, factory_id: str, now: float | None = None) -> None:
        """No replica publishes ``factory_id`` any more (every record of it expired or was
        deleted): unknown, unless this replica hears from it itself."""
        entry = self._entries.get(factory_id)
        if entry is not None and entry.remote and not entry.vanished:
            entry.vanished = True
            self._announce(entry, self._clock() if now is None else now)

    def _state(self, factory_id: str, entry: _Entry, now: float) -> FactoryState:
        health, reason = self._health(entry, now)
        return FactoryState(spec=entry.spec, load=entry.load, health=health,
                            admin=self._admin.get(factory_id, AdminState.ACTIVE),
                            last_report=entry.last_report, reason=reason)

    def states(self, now: float | None = None) -> tuple[FactoryState, ...]:
        """Every known factory as of ``now``, ordered by id."""
        now = self._clock() if now is None else now
        return tuple(self._state(fid, self._entries[fid], now) for fid in sorted(self._entries))

    def get(self, factory_id: str, now: float | None = None) -> FactoryState | None:
        entry = self._entries.get(factory_id)
        if entry is None:
            return None
        return self._state(factory_id, entry, self._clock() if now is None else now)

    def admin_states(self) -> dict[str, AdminState]:
        """The operator's admin states that differ from active (what a store persists)."""
        return {fid: s for fid, s in self._admin.items() if s is not AdminState.ACTIVE}

    # --- changes -------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> list[Change]:
        """Notice factories whose health changed by the passage of time (TTL expiry)."""
        now = self._clock() if now is None else now
        changes = [c for entry in self._entries.values()
                   if (c := self._announce(entry, now)) is not None]
        self._count(now)
        return changes

    def set_admin(self, factory_id: str, state: AdminState) -> FactoryState:
        """Apply an operator's cordon, drain or activate; raise :class:`UnknownFactory`."""
        entry = self._entries.get(factory_id)
        if entry is None:
            raise UnknownFactory(factory_id, self._entries)
        before = self._admin.get(factory_id, AdminState.ACTIVE)
        self._admin[factory_id] = state
        if before is not state:
            log.info("factory %s: admin state %s -> %s", factory_id, before, state)
            self._emit(Change(factory_id, ChangeKind.ADMIN, f"{before} -> {state}"))
        return self._state(factory_id, entry, self._clock())

    def load_admin(self, factory_id: str, state: AdminState) -> None:
        """Adopt an admin state read from the store (set by an operator on any replica).

        Unlike :meth:`set_admin` the factory need not have reported yet: the operator's word
        waits for it.
        """
        before = self._admin.get(factory_id, AdminState.ACTIVE)
        if state is AdminState.ACTIVE:
            self._admin.pop(factory_id, None)
        else:
            self._admin[factory_id] = state
        if before is not state and factory_id in self._entries:
            log.info("factory %s: admin state %s -> %s (from the store)", factory_id, before,
                     state)
            self._emit(Change(factory_id, ChangeKind.ADMIN, f"{before} -> {state}"))

    def _announce(self, entry: _Entry, now: float) -> Change | None:
        health, reason = self._health(entry, now)
        if health is entry.announced:
            return None
        change = Change(entry.spec.id, ChangeKind.HEALTH,
                        f"{entry.announced} -> {health}" + (f" ({reason})" if reason else ""))
        entry.announced = health
        log.info("factory %s: %s", entry.spec.id, change.detail)
        self._emit(change)
        return change

    def _emit(self, change: Change) -> None:
        if self._on_change is not None:
            self._on_change(change)

    def _count(self, now: float) -> None:
        counts = dict.fromkeys(Health, 0)
        for entry in self._entries.values():
            counts[self._health(entry, now)[0]] += 1
        for health, n in counts.items():
            self._metrics.factories.labels(health=str(health)).set(n)
