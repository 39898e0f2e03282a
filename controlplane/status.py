"""The control plane's status as one value, shared by the Operator API and ``/api/status``.

Both front ends answer the same question ("is this replica healthy, which plan is in force, which
sidecars run it"), so they read one :class:`StatusView` built here and only differ in encoding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.replica import Replica
from tdn.controlplane.sidecars import SidecarTracker, SidecarView
from tdn.controlplane.solve_loop import PlanStatus, SolveLoop
from tdn.domain import Health


@dataclass(frozen=True, slots=True)
class StatusView:
    """One replica's view of itself, the plan and its sidecars."""

    replica_id: str
    # Whether this replica solves and writes plans (always, on the embedded store).
    leader: bool
    store: str
    # The store is unreachable: the replica serves its last plan and writes nothing.
    read_only: bool
    plan: PlanStatus
    sidecars: tuple[SidecarView, ...]
    factories_healthy: int
    factories_total: int
    # Which replica leads, as the store last said ("" when none is elected).
    leader_id: str = ""
    # Why the replica is read-only (the store error), "" when it is not.
    read_only_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["plan"]["summary"] = self.plan.summary
        return data


class StatusSource:
    """Builds :class:`StatusView` values from the live components."""

    def __init__(self, *, replica_id: str, store_kind: str, registry: FactoryRegistry,
                 solve_loop: SolveLoop, tracker: SidecarTracker,
                 replica: Replica | None = None) -> None:
        self.replica_id = replica_id
        self._replica = replica
        self.store_kind = store_kind
        self._registry = registry
        self._loop = solve_loop
        self._tracker = tracker

    def status(self) -> StatusView:
        factories = self._registry.states()
        replica = self._replica
        leader = replica is None or replica.is_leader
        return StatusView(
            replica_id=self.replica_id,
            leader=leader,
            store=self.store_kind,
            read_only=replica is not None and replica.read_only,
            plan=self._loop.status(),
            sidecars=self._tracker.views(),
            factories_healthy=sum(1 for f in factories if f.health is Health.HEALTHY),
            factories_total=len(factories),
            leader_id=(self.replica_id if leader
                       else replica.cluster.leader_id if replica is not None else ""),
            read_only_reason=replica.health.error if replica is not None else "",
        )

    def not_leader(self) -> str | None:
        """Why a write must go to another replica (naming the leader); None on the leader."""
        return None if self._replica is None else self._replica.not_leader()
