"""Demand estimates shared between replicas through the Store.

A sidecar sends its usage reports to one replica (the first address it was given, until a send
fails), and each replica estimates demand from what it receives (:mod:`demand`). Without this
module the leader plans only for the traffic whose usage happens to reach it — none at all when
every sidecar reports to a follower, so the plan stays on the network file's demand — and a
newly elected leader starts from its own partial estimate, so the plan jumps at every failover
(the leader-kill drill showed both).

:class:`DemandPublisher` writes this replica's own estimate (:meth:`DemandEstimator.snapshot`)
to ``/tdn/demand/<replica>`` under the replica's lease every ``interval`` seconds, when it has
observed anything; one small key per replica, whatever the number of sidecars. When the replica
dies its lease takes the key with it. :class:`DemandStates` hands the other replicas' keys to
the estimator (:meth:`DemandEstimator.set_peer`), which adds them to its own. A usage report is
counted at one replica only (each de-duplicates what it receives), so the rates add up.

A record that cannot be read is logged and ignored; a record from a newer release with fields
this one does not know is read for the fields it does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from tdn.controlplane.demand import DemandEstimator, GroupEstimate
from tdn.controlplane.replica_lease import ReplicaLease
from tdn.controlplane.store_sync import StoreHealth
from tdn.store.base import Entry, Store
from tdn.store.errors import InvalidEntry, LeaseExpired, StoreClosed, StoreUnavailable

log = logging.getLogger(__name__)

DEMAND_PREFIX = "/tdn/demand/"
DEFAULT_INTERVAL_S = 5.0
RETRY_SECONDS = 0.5


class CorruptDemand(ValueError):
    """A demand record that cannot be read."""


def demand_key(replica_id: str) -> str:
    return f"{DEMAND_PREFIX}{replica_id}"


def encode_demand(replica_id: str, at: float, estimates: Sequence[GroupEstimate]) -> bytes:
    return json.dumps({
        "replica": replica_id, "at": at,
        "groups": [[e.site, e.model, e.traffic_class, e.rate_rps, e.prompt_tokens,
                    e.output_tokens] for e in estimates],
    }, separators=(",", ":")).encode()


def decode_demand(key: str, value: bytes) -> tuple[str, tuple[GroupEstimate, ...]]:
    """(replica id, its estimates) from a record; raises :class:`CorruptDemand`."""
    try:
        doc: Any = json.loads(value)
        replica = key.removeprefix(DEMAND_PREFIX)
        groups = []
        for row in doc["groups"]:
            site, model, cls = (str(v) for v in row[:3])
            rate, prompt, output = (float(v) for v in row[3:6])
            if not all(math.isfinite(v) and v >= 0 for v in (rate, prompt, output)):
                raise ValueError(f"a negative or non-finite figure in {row!r}")
            groups.append(GroupEstimate(site, model, cls, rate, prompt, output))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CorruptDemand(f"{key}: {exc}") from None
    return replica, tuple(groups)


class DemandPublisher:
    """Writes this replica's own demand estimate for the other replicas to add to theirs."""

    def __init__(self, store: Store, lease: ReplicaLease, estimator: DemandEstimator, *,
                 replica_id: str, health: StoreHealth, interval: float = DEFAULT_INTERVAL_S,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._lease = lease
        self._estimator = estimator
        self._replica_id = replica_id
        self._health = health
        self.interval = interval
        self._wall = wall_clock
        self.published = 0

    async def publish_once(self) -> bool:
        """Write the estimate now; False when there was nothing observed to write."""
        estimates = self._estimator.snapshot()
        if not estimates:
            return False
        lease = await self._lease.current()
        try:
            await self._store.put(demand_key(self._replica_id),
                                  encode_demand(self._replica_id, self._wall(), estimates),
                                  lease=lease)
        except LeaseExpired:
            self._lease.lost(lease)
            raise
        self.published += 1
        return True

    async def run(self) -> None:
        """Publish every interval, forever."""
        while True:
            try:
                await self.publish_once()
                self._health.ok()
            except LeaseExpired:
                continue  # written again at once under a new lease
            except InvalidEntry as exc:
                # Thousands of groups could outgrow an etcd value: the others then plan on
                # what reaches them, as before this module.
                log.warning("cannot publish this replica's demand estimate: %s", exc)
            except StoreUnavailable as exc:
                self._health.failure("demand publish", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            except StoreClosed:
                return
            await asyncio.sleep(self.interval)


class DemandStates:
    """The :class:`~tdn.controlplane.store_sync.PrefixHandler` for other replicas' estimates."""

    def __init__(self, estimator: DemandEstimator, replica_id: str) -> None:
        self._estimator = estimator
        self._replica_id = replica_id

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        for replica in self._estimator.peers():
            self._estimator.drop_peer(replica)
        for entry in entries:
            self.put(entry.key, entry.value)

    def put(self, key: str, value: bytes) -> None:
        try:
            replica, estimates = decode_demand(key, value)
        except CorruptDemand as exc:
            log.error("ignoring unreadable demand record: %s", exc)
            return
        if replica != self._replica_id:  # its own estimate it has already
            self._estimator.set_peer(replica, estimates)

    def delete(self, key: str) -> None:
        self._estimator.drop_peer(key.removeprefix(DEMAND_PREFIX))
