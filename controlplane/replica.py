"""One replica's place among its peers, assembled: shared state in, telemetry out, leadership.

:class:`Replica` owns the pieces that make several control-plane replicas on one store behave as
one control plane: the mirror that keeps the registry, the admin states and the served policies in
step with the store (every replica serves discovery from that watched state), the publisher that
writes the telemetry this replica hears for the leader to see, the replica's lease, and the
leader role that runs the solve loop only while this replica leads. The same assembly runs on the
embedded store, where the one replica simply leads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tdn.controlplane.demand_sync import DEMAND_PREFIX, DemandPublisher, DemandStates
from tdn.controlplane.durable_state import (
    ADMIN_PREFIX,
    FACTORY_STATE_PREFIX,
    PLAN_PREFIX,
    REPLICA_PREFIX,
    ROOT,
    ReplicaRecord,
)
from tdn.controlplane.ha import ELECTION_KEY, ClusterView, LeaderRole
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.plan_store import PlanMirror
from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.replica_lease import ReplicaLease
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.solve_loop import SolveLoop
from tdn.controlplane.store_sync import StoreHealth, StoreMirror
from tdn.controlplane.telemetry_sync import AdminStates, FactoryStates, TelemetryPublisher
from tdn.store.base import Store
from tdn.v1 import telemetry_pb2

log = logging.getLogger(__name__)

LEASE_TTL_FACTOR = 2


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """How this replica takes part: its id, its lease TTLs and whether it must be elected."""

    replica_id: str
    # Factory telemetry TTL (seconds): published records live as long as the replica's lease.
    ttl: float
    # Leader election lease TTL (whole seconds): a dead leader is replaced within it.
    lease_ttl: int
    warmup: float
    # False on the embedded store: one process holds it, so it leads without an election.
    elect: bool


class Replica:
    """Start with :meth:`sync` (before serving), :meth:`register` (once addresses are bound),
    then run :meth:`run` as a background task; :meth:`stop` hands leadership over."""

    def __init__(self, store: Store, settings: ReplicaSettings, *, registry: FactoryRegistry,
                 cache: SnapshotCache, solve_loop: SolveLoop,
                 metrics: ControlPlaneMetrics) -> None:
        if not settings.replica_id or "/" in settings.replica_id:
            raise ValueError(f"replica id {settings.replica_id!r} must be non-empty, without '/'")
        self.settings = settings
        self._store = store
        self.health = StoreHealth(metrics)
        self.cluster = ClusterView()
        plans = solve_loop.publisher
        plans.writer = settings.replica_id
        self.plan_mirror = PlanMirror(plans, cache, solve_loop.adopt)
        self.factory_states = FactoryStates(registry, settings.replica_id)
        self._estimator = solve_loop.demand
        self.mirror = StoreMirror(store, ROOT, {
            PLAN_PREFIX: self.plan_mirror,
            DEMAND_PREFIX: DemandStates(solve_loop.demand, settings.replica_id),
            ADMIN_PREFIX: AdminStates(registry),
            FACTORY_STATE_PREFIX: self.factory_states,
            ELECTION_KEY: self.cluster,
            REPLICA_PREFIX: self.cluster,
        }, self.health)
        self._lease: ReplicaLease | None = None
        self.publisher: TelemetryPublisher | None = None
        self.demand_publisher: DemandPublisher | None = None
        self.leader = LeaderRole(
            store, replica_id=settings.replica_id, lease_ttl=settings.lease_ttl,
            solve_loop=solve_loop, plans=plans, plan_mirror=self.plan_mirror, metrics=metrics,
            health=self.health, warmup=settings.warmup, elect=settings.elect)
        self._metrics = metrics

    async def sync(self) -> None:
        """Load the shared state (plan, policies, admin states, live factories); raises
        StoreError, and then the replica should not start."""
        await self.mirror.sync(initial=True)

    async def register(self, grpc_target: str, http_url: str) -> None:
        """Take a lease and say where this replica listens; raises StoreError."""
        # Twice the telemetry TTL: when a replica dies, its agents have that long to reconnect
        # to another one (which publishes them again) before the leader stops routing to their
        # factories. A factory that falls silent is still unknown after one TTL: the replica
        # hearing it deletes its record then (see telemetry_sync).
        self._lease = ReplicaLease(
            self._store, ttl=LEASE_TTL_FACTOR * self.settings.ttl, health=self.health,
            record=ReplicaRecord(self.settings.replica_id, grpc_target, http_url))
        await self._lease.start()
        self.publisher = TelemetryPublisher(
            self._store, self._lease, replica_id=self.settings.replica_id, ttl=self.settings.ttl,
            metrics=self._metrics, health=self.health)
        self.demand_publisher = DemandPublisher(
            self._store, self._lease, self._estimator, replica_id=self.settings.replica_id,
            health=self.health)

    def offer(self, report: telemetry_pb2.TelemetryReport, *, accepted: bool) -> None:
        """A report this replica received: publish it for the others (see telemetry_sync)."""
        if self.publisher is not None:
            self.publisher.offer(report, accepted=accepted)

    async def run(self) -> None:
        """Follow the store, publish telemetry and demand, keep the lease and lead when elected."""
        if self._lease is None or self.publisher is None or self.demand_publisher is None:
            raise RuntimeError("Replica.run() before register()")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._lease.run(), name="replica-lease")
            tg.create_task(self.publisher.run(), name="telemetry-publisher")
            tg.create_task(self.demand_publisher.run(), name="demand-publisher")
            tg.create_task(self.mirror.run(), name="store-mirror")
            tg.create_task(self.leader.run(), name="leader-role")

    async def resign(self) -> None:
        """Hand leadership over now; call before stopping the servers."""
        await self.leader.resign()

    async def stop(self) -> None:
        """Withdraw this replica's record; what it published lapses with its lease."""
        await self.leader.resign()
        if self._lease is not None:
            await self._lease.close()

    # --- what status pages show --------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.leader.is_leader

    @property
    def read_only(self) -> bool:
        return self.health.read_only

    def not_leader(self) -> str | None:
        """Why a write must go elsewhere, naming the leader; None on the leader."""
        if self.is_leader:
            return None
        leader = self.cluster.leader_id
        if not leader:
            return (f"replica {self.settings.replica_id} is not the leader and no leader is "
                    "elected now; try again shortly")
        address = self.cluster.leader_address() or "address unknown"
        return (f"replica {self.settings.replica_id} is not the leader; send writes to the "
                f"leader {leader} at {address}")
