"""A replica's own lease: the life of everything it writes on behalf of others.

The replica's record (``/tdn/replicas/<id>``, where it listens) and the telemetry it received
(``/tdn/factories/state/<factory>/<id>``) are written under this lease, so they vanish one lease
TTL after the replica dies, stops or is cut off from the store — never routed to as if alive.
Refreshing it every third of a TTL is also the replica's heartbeat to the store: a refresh that
fails makes the replica read-only (:class:`~tdn.controlplane.store_sync.StoreHealth`), and a
lease found expired after an outage is replaced, and whatever hung on it is written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from tdn.controlplane.durable_state import REPLICA_PREFIX, ReplicaRecord, encode_replica_record
from tdn.controlplane.store_sync import StoreHealth
from tdn.store.base import Lease, Store
from tdn.store.errors import LeaseExpired, StoreClosed, StoreError, StoreUnavailable

log = logging.getLogger(__name__)


def lease_seconds(ttl: float) -> int:
    """A store lease TTL (whole seconds, at least 1) that does not end before ``ttl``."""
    return max(1, math.ceil(ttl))


class ReplicaLease:
    """Grants, refreshes and (on a clean stop) revokes one replica's lease."""

    def __init__(self, store: Store, *, ttl: float, health: StoreHealth,
                 record: ReplicaRecord) -> None:
        self._store = store
        self.ttl = lease_seconds(ttl)
        self._health = health
        self._record = record
        self._lease: Lease | None = None
        self._renewed: list[Callable[[], None]] = []

    @property
    def key(self) -> str:
        return REPLICA_PREFIX + self._record.replica_id

    def on_renewed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a lost lease was replaced (what hung on it is gone)."""
        self._renewed.append(callback)

    async def start(self) -> None:
        """Grant the lease and register the replica; raises StoreError."""
        await self._grant()

    async def _grant(self) -> Lease:
        lease = await self._store.grant_lease(self.ttl)
        await self._store.put(self.key, encode_replica_record(self._record), lease=lease)
        self._lease = lease
        return lease

    async def current(self) -> Lease:
        """The lease to write under now, granting a new one if it was lost; raises
        StoreError."""
        if self._lease is None:
            await self._grant()
            for callback in self._renewed:
                callback()
        assert self._lease is not None
        return self._lease

    def lost(self, lease: Lease) -> None:
        """A write found ``lease`` expired: the next :meth:`current` grants a new one."""
        if self._lease is not None and self._lease.id == lease.id:
            log.warning("replica lease %#x expired; what it held is written again", lease.id)
            self._lease = None

    async def run(self) -> None:
        """Keep the lease alive until cancelled; this is also the store health heartbeat."""
        period = self.ttl / 3
        while True:
            await asyncio.sleep(period)
            try:
                lease = await self.current()
                await self._store.refresh_lease(lease)
            except LeaseExpired:
                if self._lease is not None:
                    self.lost(self._lease)
                continue
            except StoreUnavailable as exc:
                self._health.failure("lease keep-alive", exc)
                continue
            except StoreClosed:
                return
            self._health.ok()

    async def close(self) -> None:
        """Stop keeping the lease alive, and withdraw the replica's record.

        The lease itself is left to lapse rather than revoked: the telemetry published under it
        stays for one TTL, while this replica's agents reconnect to another replica, which
        publishes them again. Revoking would make every one of them unknown to the leader at
        once, and the next plan would route around factories that are perfectly healthy.
        """
        lease, self._lease = self._lease, None
        if lease is not None:
            with contextlib.suppress(StoreError):
                await self._store.delete(self.key)
