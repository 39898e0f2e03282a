"""High availability: which replica leads, and the leader's one privilege — solving.

Every replica serves discovery and telemetry; only the leader solves and writes plans. On etcd
the leader is elected with a lease (:func:`tdn.store.campaign`): when it dies or is cut off, its
lease lapses within one TTL and a waiting replica takes over, reading the store afresh before its
first solve so that it numbers plans above everything its predecessor wrote. A replica that loses
the lease stops solving at once (its election deadline ends before the lease does, so two
replicas never both solve). On the embedded store one process holds the folder's lock, so it
simply leads.

:class:`ClusterView` follows the election key and the replica records, so a follower can tell an
operator where the leader is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from tdn.controlplane.durable_state import (
    PLAN_PREFIX,
    REPLICA_PREFIX,
    CorruptState,
    ReplicaRecord,
    decode_replica_record,
)
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.plan_store import PlanMirror, PlanStore
from tdn.controlplane.solve_loop import SolveLoop
from tdn.controlplane.store_sync import StoreHealth
from tdn.store.base import Entry, Store
from tdn.store.election import ELECTION_PREFIX, Leadership, campaign
from tdn.store.errors import StoreError

log = logging.getLogger(__name__)

ELECTION_NAME = "controlplane"
ELECTION_KEY = ELECTION_PREFIX + ELECTION_NAME
RETRY_SECONDS = 0.5


class ClusterView:
    """Who leads, and where every live replica listens (a PrefixHandler for ``/tdn/``'s
    election and replica keys)."""

    def __init__(self) -> None:
        self.leader_id = ""
        self.replicas: dict[str, ReplicaRecord] = {}

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        self.leader_id = ""
        self.replicas.clear()
        for entry in entries:
            try:
                self.put(entry.key, entry.value)
            except CorruptState as exc:
                log.error("ignoring unreadable store entry: %s", exc)

    def put(self, key: str, value: bytes) -> None:
        if key == ELECTION_KEY:
            self.leader_id = value.decode("utf-8", errors="replace")
        elif key.startswith(REPLICA_PREFIX):
            record = decode_replica_record(key, value)
            self.replicas[record.replica_id] = record

    def delete(self, key: str) -> None:
        if key == ELECTION_KEY:
            self.leader_id = ""
        elif key.startswith(REPLICA_PREFIX):
            self.replicas.pop(key.removeprefix(REPLICA_PREFIX), None)

    def leader_address(self) -> str:
        record = self.replicas.get(self.leader_id)
        return record.grpc_target if record is not None else ""


class LeaderRole:
    """Campaigns for leadership and runs the solve loop exactly while this replica leads."""

    def __init__(self, store: Store, *, replica_id: str, lease_ttl: int, solve_loop: SolveLoop,
                 plans: PlanStore, plan_mirror: PlanMirror, metrics: ControlPlaneMetrics,
                 health: StoreHealth, warmup: float, elect: bool) -> None:
        self._store = store
        self.replica_id = replica_id
        self.lease_ttl = lease_ttl
        self._loop = solve_loop
        self._plans = plans
        self._plan_mirror = plan_mirror
        self._metrics = metrics
        self._health = health
        self._warmup_until = time.monotonic() + warmup
        # False: the only possible replica (embedded store) leads without an election.
        self._elect = elect
        self._leadership: Leadership | None = None
        self.terms = 0

    @property
    def is_leader(self) -> bool:
        if not self._elect:
            return True
        return self._leadership is not None and self._leadership.is_leader

    async def run(self) -> None:
        """Lead whenever elected, until cancelled (which resigns)."""
        if not self._elect:
            await self._lead(None)
            return
        leadership = self._leadership = await campaign(self._store, ELECTION_NAME,
                                                       self.replica_id, self.lease_ttl)
        try:
            while True:
                await leadership.wait_elected()
                await self._lead(leadership)
        finally:
            await leadership.resign()

    async def resign(self) -> None:
        """Give up leadership now and for good (a clean stop hands over at once instead of
        after a TTL); idempotent."""
        if self._leadership is not None:
            await self._leadership.resign()

    async def _lead(self, leadership: Leadership | None) -> None:
        self.terms += 1
        log.info("replica %s leads: solving and writing plans", self.replica_id)
        self._metrics.leader.set(1)
        solving = asyncio.create_task(self._catch_up_and_solve(leadership), name="solve-loop")
        watchers = {solving}
        if leadership is not None:
            watchers.add(asyncio.create_task(leadership.wait_deposed(), name="deposed"))
        try:
            await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.wait(watchers)
            self._metrics.leader.set(0)
        error = None if solving.cancelled() else solving.exception()
        if error is not None:
            raise error  # a bug in the solve loop: let it show, do not lead on without it
        log.warning("replica %s no longer leads; serving what the new leader writes",
                    self.replica_id)

    async def _catch_up_and_solve(self, leadership: Leadership | None) -> None:
        if leadership is not None and not await self._catch_up(leadership):
            return  # deposed before catching up; the deposed watcher ends this term
        self._loop.reserve_above(self._plans.highest_version())
        await self._loop.run(warmup=max(self._warmup_until - time.monotonic(), 0.0))

    async def _catch_up(self, leadership: Leadership) -> bool:
        """Read the plan as the store holds it now: the watch may lag behind the election, and
        the previous leader's last plan must be known before numbering the next one."""
        while leadership.is_leader:
            try:
                listing = await self._store.list_prefix(PLAN_PREFIX)
            except StoreError as exc:
                self._health.failure("leader catch-up", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._plan_mirror.reset(listing.entries, initial=False)
            return True
        return False
