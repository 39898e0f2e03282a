"""Telemetry shared between replicas through the Store.

A factory's agent holds one stream to one replica, but the leader must see every factory to
solve. :class:`TelemetryPublisher` writes what this replica hears to
``/tdn/factories/state/<factory>/<replica>`` under the replica's lease: at once when something
that moves traffic changed (health, identity, capacity, a refused report), otherwise (load and
prices drifting) at most every half TTL, so that a thousand factories cost the store little.
When a factory falls silent here its key is deleted, and when the replica dies its lease takes
every key with it.

:class:`FactoryStates` applies what other replicas wrote to this replica's registry, as if the
report had arrived here (its own writes come back too, and are skipped). The liveness of such a
factory is the lease, not this replica's clock: it stays as last reported while a record of it
lives in the store, and turns unknown when the last record goes — one TTL after the factory
fell silent at its replica, or one replica lease (two TTLs) after that replica died, unless its
agent reconnected to another replica meanwhile. So a store that stalls for a moment (an etcd leader
election) delays news but never makes a live factory unknown. :class:`AdminStates` follows the
operator's drains and cordons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tdn.controlplane.durable_state import (
    ADMIN_PREFIX,
    CorruptState,
    FactoryRecord,
    decode_admin_state,
    decode_factory_record,
    encode_factory_record,
    factory_state_key,
    split_factory_state_key,
)
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.replica_lease import ReplicaLease
from tdn.controlplane.store_sync import StoreHealth
from tdn.domain import AdminState
from tdn.store.base import Entry, Lease, Store
from tdn.store.errors import InvalidEntry, LeaseExpired, StoreClosed, StoreError, StoreUnavailable
from tdn.v1 import telemetry_pb2

log = logging.getLogger(__name__)

_WRITE_CONCURRENCY = 64
RETRY_SECONDS = 0.5


@dataclass(slots=True)
class _Local:
    """A factory this replica hears from directly."""

    report: telemetry_pb2.TelemetryReport
    signature: tuple[object, ...]
    heard_at: float  # monotonic
    written_at: float = -1e18
    written_signature: tuple[object, ...] = ()
    written: bool = False


def _signature(report: telemetry_pb2.TelemetryReport, accepted: bool) -> tuple[object, ...]:
    """What must reach the leader at once when it changes; load and prices may wait."""
    return (accepted, report.engine_reachable,
            report.identity.SerializeToString(deterministic=True),
            report.capacity.SerializeToString(deterministic=True))


class TelemetryPublisher:
    """Writes the telemetry this replica receives for the other replicas to read."""

    def __init__(self, store: Store, lease: ReplicaLease, *, replica_id: str, ttl: float,
                 metrics: ControlPlaneMetrics, health: StoreHealth,
                 clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._lease = lease
        self._replica_id = replica_id
        self._ttl = ttl
        # Liveness rides on the lease, so unchanged reports only refresh load and prices.
        self.interval = ttl / 2
        self._metrics = metrics
        self._health = health
        self._clock = clock
        self._wall = wall_clock
        self._local: dict[str, _Local] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        lease.on_renewed(self.republish_all)

    def offer(self, report: telemetry_pb2.TelemetryReport, *, accepted: bool) -> None:
        """Note a report this replica received; it is written soon if the others need it."""
        factory_id = report.identity.id
        if not factory_id:
            return
        now = self._clock()
        signature = _signature(report, accepted)
        local = self._local.get(factory_id)
        if local is None:
            local = self._local[factory_id] = _Local(report, signature, now)
        else:
            local.report, local.signature, local.heard_at = report, signature, now
        if signature != local.written_signature or now - local.written_at >= self.interval:
            self._dirty.add(factory_id)
            self._wake.set()

    def republish_all(self) -> None:
        """Write every live factory again (their keys went with a lost lease)."""
        for local in self._local.values():
            local.written = False
            local.written_signature = ()
        self._dirty.update(self._local)
        self._wake.set()

    async def run(self) -> None:
        """Write what is due, forever; delete the keys of factories that fell silent here."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval / 2):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._forget_silent()
                await self._flush()
            except LeaseExpired:
                continue  # the next flush writes everything again under a new lease
            except StoreUnavailable as exc:
                self._health.failure("telemetry publish", exc)
                await asyncio.sleep(RETRY_SECONDS)
            except StoreClosed:
                return

    async def _flush(self) -> None:
        due = sorted(fid for fid in self._dirty if fid in self._local)
        self._dirty.clear()
        if not due:
            return
        try:
            for start in range(0, len(due), _WRITE_CONCURRENCY):
                lease = await self._lease.current()
                batch = due[start:start + _WRITE_CONCURRENCY]
                results = await asyncio.gather(*(self._write(fid, lease) for fid in batch),
                                               return_exceptions=True)
                for result in results:
                    if isinstance(result, LeaseExpired):
                        self._lease.lost(lease)
                    if isinstance(result, BaseException):
                        raise result
        except BaseException:
            # Writing a record twice is harmless; losing one is not.
            self._dirty.update(due)
            self._wake.set()
            raise
        self._health.ok()

    async def _write(self, factory_id: str, lease: Lease) -> None:
        local = self._local.get(factory_id)
        if local is None:
            return
        record = FactoryRecord(factory_id=factory_id, writer=self._replica_id,
                               received_at=self._wall(), report=local.report)
        signature = local.signature
        try:
            await self._store.put(factory_state_key(factory_id, self._replica_id),
                                  encode_factory_record(record), lease=lease)
        except InvalidEntry as exc:
            # An id no key can hold (or a huge report): the others cannot hear of it; the
            # factory still works through this replica.
            self._metrics.telemetry_published.labels(result="invalid").inc()
            log.warning("cannot publish telemetry of %r: %s", factory_id, exc)
            local.written_signature, local.written_at = signature, self._clock()
            return
        except StoreError:
            self._metrics.telemetry_published.labels(result="error").inc()
            raise
        self._metrics.telemetry_published.labels(result="ok").inc()
        local.written_signature, local.written_at, local.written = signature, self._clock(), True

    async def _forget_silent(self) -> None:
        now = self._clock()
        silent = [fid for fid, local in self._local.items() if now - local.heard_at > self._ttl]
        for factory_id in silent:
            local = self._local.pop(factory_id)
            self._dirty.discard(factory_id)
            if local.written:
                with contextlib.suppress(InvalidEntry):
                    await self._store.delete(factory_state_key(factory_id, self._replica_id))


class FactoryStates:
    """The :class:`~tdn.controlplane.store_sync.PrefixHandler` for factory telemetry.

    A factory may have records from several replicas for a moment (its agent moved); it is
    known to be heard as long as any of them lives, and turns unknown here when the last one
    goes (unless this replica hears from it itself).
    """

    def __init__(self, registry: FactoryRegistry, replica_id: str) -> None:
        self._registry = registry
        self._replica_id = replica_id
        # factory id -> the other replicas whose record of it is live in the store.
        self._writers: dict[str, set[str]] = {}
        self.applied = 0

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        before = set(self._writers)
        self._writers.clear()
        for entry in entries:
            # At start, what an earlier run of this replica wrote is news as well.
            try:
                self._apply(entry.key, entry.value, own_too=initial)
            except CorruptState as exc:
                log.error("ignoring unreadable store entry: %s", exc)
        for factory_id in before - set(self._writers):
            self._registry.remote_vanished(factory_id)

    def put(self, key: str, value: bytes) -> None:
        self._apply(key, value, own_too=False)

    def _apply(self, key: str, value: bytes, *, own_too: bool) -> None:
        factory_id, writer = split_factory_state_key(key)
        if writer == self._replica_id and not own_too:
            return  # this replica's own report, applied when it arrived
        record = decode_factory_record(key, value)
        self._writers.setdefault(factory_id, set()).add(writer)
        self._registry.apply_report(record.report, remote=True)
        self.applied += 1

    def delete(self, key: str) -> None:
        # The writer stopped hearing from the factory, or died and its lease expired.
        factory_id, writer = split_factory_state_key(key)
        writers = self._writers.get(factory_id)
        if writers is None:
            return
        writers.discard(writer)
        if not writers:
            del self._writers[factory_id]
            self._registry.remote_vanished(factory_id)


class AdminStates:
    """The :class:`~tdn.controlplane.store_sync.PrefixHandler` for operator admin states."""

    def __init__(self, registry: FactoryRegistry) -> None:
        self._registry = registry

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        wanted: dict[str, AdminState] = {}
        for entry in entries:
            try:
                wanted[entry.key.removeprefix(ADMIN_PREFIX)] = decode_admin_state(
                    entry.key, entry.value)
            except CorruptState as exc:
                log.error("ignoring unreadable store entry: %s", exc)
        for factory_id in self._registry.admin_states():
            if factory_id not in wanted:
                self._registry.load_admin(factory_id, AdminState.ACTIVE)
        for factory_id, state in wanted.items():
            self._registry.load_admin(factory_id, state)

    def put(self, key: str, value: bytes) -> None:
        self._registry.load_admin(key.removeprefix(ADMIN_PREFIX), decode_admin_state(key, value))

    def delete(self, key: str) -> None:
        self._registry.load_admin(key.removeprefix(ADMIN_PREFIX), AdminState.ACTIVE)
