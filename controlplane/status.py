"""The control plane's status as one value, shared by the Operator API and ``/api/status``.

Both front ends answer the same question ("is this replica healthy, which plan is in force, which
sidecars run it"), so they read one :class:`StatusView` built here and only differ in encoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.sidecars import SidecarTracker, SidecarView
from tdn.controlplane.solve_loop import PlanStatus, SolveLoop
from tdn.domain import Health


@dataclass(frozen=True, slots=True)
class StatusView:
    """One replica's view of itself, the plan and its sidecars."""

    replica_id: str
    # Always true until leader election arrives with the etcd store.
    leader: bool
    store: str
    read_only: bool
    plan: PlanStatus
    sidecars: tuple[SidecarView, ...]
    factories_healthy: int
    factories_total: int

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"]["summary"] = self.plan.summary
        return data


class StatusSource:
    """Builds :class:`StatusView` values from the live components."""

    def __init__(self, *, replica_id: str, store_kind: str, registry: FactoryRegistry,
                 solve_loop: SolveLoop, tracker: SidecarTracker) -> None:
        self.replica_id = replica_id
        self.store_kind = store_kind
        self._registry = registry
        self._loop = solve_loop
        self._tracker = tracker

    def status(self) -> StatusView:
        factories = self._registry.states()
        return StatusView(
            replica_id=self.replica_id,
            leader=True,
            store=self.store_kind,
            read_only=False,
            plan=self._loop.status(),
            sidecars=self._tracker.views(),
            factories_healthy=sum(1 for f in factories if f.health is Health.HEALTHY),
            factories_total=len(factories),
        )
