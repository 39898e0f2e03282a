"""The Store on etcd, for production: control-plane replicas share state and elect a leader.

Built on ``aetcd`` (asyncio gRPC). A URL may list several endpoints; the store talks to one at a
time, starting with the first that answers, and moves to the next when a call finds it
unreachable. Reads, puts and lease calls are retried on the next endpoint at once; conditional
writes and deletes are not, because a lost connection leaves unknown whether they landed — they
raise ``StoreUnavailable`` and the caller reads back. Every aetcd error is mapped to the
:mod:`tdn.store.errors` family, so callers can go read-only on ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self, TypeVar

import aetcd
import grpc

from tdn.store.base import (
    Entry,
    EventKind,
    Lease,
    Listing,
    Watch,
    WatchEvent,
    check_key,
    check_revision,
    check_ttl,
    check_value,
)
from tdn.store.errors import (
    InvalidEntry,
    InvalidStoreUrl,
    LeaseExpired,
    RevisionCompacted,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
# Per-call deadline: a blackholed endpoint costs at most this long before the next is tried.
DEFAULT_TIMEOUT_SECONDS = 5.0


def parse_endpoints(url: str) -> list[tuple[str, int]]:
    """``etcd://host:port[,host:port...]`` → ``[(host, port), ...]`` (port defaults to 2379).

    IPv6 hosts are written in brackets (``[::1]:2379``) and kept so, as gRPC targets want them.
    """
    if not url.startswith("etcd://"):
        raise InvalidStoreUrl(f"etcd store URL {url!r} must start with etcd://")
    body = url.removeprefix("etcd://").rstrip("/")
    endpoints: list[tuple[str, int]] = []
    for part in body.split(","):
        item = part.strip()
        if not item:
            raise InvalidStoreUrl(f"etcd store URL {url!r} has an empty endpoint")
        host, port = item, DEFAULT_PORT
        head, sep, tail = item.rpartition(":")
        if sep and (not head.startswith("[") or head.endswith("]")):
            host = head
            if not tail.isdigit() or not 0 < int(tail) < 65536:
                raise InvalidStoreUrl(f"etcd store URL {url!r}: bad port in {item!r}")
            port = int(tail)
        if not host or "/" in host:
            raise InvalidStoreUrl(f"etcd store URL {url!r}: bad host in {item!r}")
        endpoints.append((host, port))
    return endpoints


def _entry(kv: Any) -> Entry:
    return Entry(
        key=bytes(kv.key).decode("utf-8"),
        value=bytes(kv.value),
        revision=int(kv.mod_revision),
        create_revision=int(kv.create_revision),
        version=int(kv.version),
        lease_id=int(kv.lease),
    )


def _map_error(exc: BaseException, where: str, lease: Lease | None = None) -> StoreError:
    """The Store error an aetcd/gRPC failure means."""
    if isinstance(exc, StoreError):
        return exc
    message = str(exc)
    if lease is not None and "lease not found" in message:
        return LeaseExpired(lease.id)
    if isinstance(exc, aetcd.InvalidArgumentError):
        return InvalidEntry(f"etcd refused the request: {message}")
    return StoreUnavailable(f"etcd {where}: {type(exc).__name__}: {message}")


class EtcdWatch(Watch):
    """A watch on etcd (see :class:`tdn.store.base.Watch`); raises ``StoreUnavailable`` when
    the endpoint it runs on is lost."""

    def __init__(self, store: EtcdStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._start_revision = start_revision or None
        self._watch: Any = None
        self._events: AsyncIterator[Any] | None = None
        self._closed = False

    async def start(self) -> None:
        if self._watch is not None or self._closed:
            return
        prefix = self._prefix.encode("utf-8")

        async def create(client: aetcd.Client) -> Any:
            return await client.watch_prefix(prefix, start_revision=self._start_revision)

        try:
            self._watch = await self._store._call(create, "watch")
        except aetcd.RevisionCompactedError as exc:
            raise RevisionCompacted(self._start_revision or 0, exc.compacted_revision) from exc
        self._events = aiter(self._watch)

    async def __anext__(self) -> WatchEvent:
        await self.start()
        if self._events is None:
            raise StopAsyncIteration
        try:
            event = await anext(self._events)
        except aetcd.RevisionCompactedError as exc:
            raise RevisionCompacted(self._start_revision or 0, exc.compacted_revision) from exc
        except (aetcd.ClientError, grpc.RpcError) as exc:
            raise _map_error(exc, f"watch on {self._prefix!r}") from exc
        kind = EventKind(event.kind)
        kv = event.kv
        return WatchEvent(
            kind=kind,
            key=bytes(kv.key).decode("utf-8"),
            value=bytes(kv.value) if kind is EventKind.PUT else b"",
            revision=int(kv.mod_revision),
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None and not self._store.closed:
            # Best effort: if the connection is gone, the server has dropped the watch anyway.
            with contextlib.suppress(aetcd.ClientError, grpc.RpcError, AttributeError):
                await self._watch.cancel()


class EtcdStore:
    """The Store on an etcd cluster (see the module docstring). Open with :meth:`connect`."""

    def __init__(
        self, endpoints: list[tuple[str, int]], *, call_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        if not endpoints:
            raise InvalidStoreUrl("an etcd store needs at least one endpoint")
        self.endpoints = list(endpoints)
        # aetcd hands the timeout to gRPC as a deadline, which takes fractions of a second.
        self._clients = [aetcd.Client(host, port, timeout=call_timeout)
                         for host, port in endpoints]
        self._current = 0
        self.closed = False

    @classmethod
    async def connect(
        cls, endpoints: list[tuple[str, int]], *, call_timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> EtcdStore:
        """Connect to the first endpoint that answers a read; ``StoreUnavailable`` if none."""
        store = cls(endpoints, call_timeout=call_timeout)
        try:
            await store._call(lambda client: client.get(b"/"), "connect")
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def endpoint(self) -> str:
        """``host:port`` of the endpoint calls go to now."""
        host, port = self.endpoints[self._current]
        return f"{host}:{port}"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        op: Callable[[aetcd.Client], Awaitable[T]],
        where: str,
        *,
        retry: bool = True,
        lease: Lease | None = None,
    ) -> T:
        """Run ``op`` on the current endpoint, moving to the next while endpoints fail.

        Each endpoint is tried at most once per call. Without ``retry`` a failure moves the
        store on for the next call but is raised, since the request may have been applied.
        """
        if self.closed:
            raise StoreClosed("etcd store is closed")
        failures: list[str] = []
        for _ in range(len(self._clients)):
            index = self._current
            try:
                return await op(self._clients[index])
            except aetcd.RevisionCompactedError:
                raise
            except (aetcd.ConnectionFailedError, aetcd.ConnectionTimeoutError,
                    aetcd.InternalError, grpc.RpcError, TimeoutError) as exc:
                host, port = self.endpoints[index]
                failures.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
                self._move_on_from(index)
                if not retry or isinstance(exc, aetcd.ConnectionTimeoutError | TimeoutError):
                    # A timeout may hide a request that was applied: never repeat it blindly.
                    raise StoreUnavailable(f"etcd {where}: {failures[-1]}") from exc
            except aetcd.ClientError as exc:
                raise _map_error(exc, where, lease) from exc
        raise StoreUnavailable(f"etcd {where}: no endpoint answered: " + "; ".join(failures))

    def _move_on_from(self, index: int) -> None:
        # Compare first: concurrent calls failing on the same endpoint move on only once.
        if self._current == index and len(self._clients) > 1:
            self._current = (index + 1) % len(self._clients)
            log.warning("etcd endpoint %s:%s failed; moving to %s", *self.endpoints[index],
                        self.endpoint)

    # --- the Store interface --------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        raw = check_key(key).encode("utf-8")

        async def op(client: aetcd.Client) -> Any:
            return await client.get(raw)

        result = await self._call(op, f"get {key!r}")
        return None if result is None else _entry(result)

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        raw = check_key(key).encode("utf-8")
        check_value(value)

        async def op(client: aetcd.Client) -> Any:
            return await client.put(raw, value, lease=lease.id if lease else None)

        result = await self._call(op, f"put {key!r}", lease=lease)
        return int(result.header.revision)

    async def delete(self, key: str) -> bool:
        raw = check_key(key).encode("utf-8")

        async def op(client: aetcd.Client) -> Any:
            return await client.delete(raw)

        return await self._call(op, f"delete {key!r}", retry=False) is not None

    async def get_prefix(self, prefix: str) -> list[Entry]:
        return list((await self.list_prefix(prefix)).entries)

    async def list_prefix(self, prefix: str) -> Listing:
        raw = check_key(prefix, "prefix").encode("utf-8")

        async def op(client: aetcd.Client) -> Any:
            return await client.get_prefix(raw, sort_order="ascend", sort_target="key")

        result = await self._call(op, f"list {prefix!r}")
        return Listing(tuple(_entry(kv) for kv in result.kvs), int(result.header.revision))

    async def compare_and_put(
        self, key: str, value: bytes, expected_revision: int, *, lease: Lease | None = None
    ) -> bool:
        raw = check_key(key).encode("utf-8")
        check_value(value)
        check_revision(expected_revision, "expected_revision")

        async def op(client: aetcd.Client) -> Any:
            txn = client.transactions
            # etcd compares an absent key's mod revision as 0, which is what makes
            # expected_revision=0 mean "create only if absent".
            return await client.transaction(
                compare=[txn.mod(raw) == expected_revision],
                success=[txn.put(raw, value, lease=lease.id if lease else None)],
                failure=[],
            )

        succeeded, _ = await self._call(op, f"compare_and_put {key!r}", retry=False, lease=lease)
        return bool(succeeded)

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> Watch:
        check_key(prefix, "prefix")
        if start_revision is not None:
            check_revision(start_revision, "start_revision")
        return EtcdWatch(self, prefix, start_revision)

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        ttl = check_ttl(ttl_seconds)

        async def op(client: aetcd.Client) -> Any:
            return await client.lease(ttl)

        granted = await self._call(op, "grant lease")
        return Lease(int(granted.id), ttl)

    async def refresh_lease(self, lease: Lease) -> None:
        async def op(client: aetcd.Client) -> Any:
            return await client.refresh_lease(lease.id)

        reply = await self._call(op, f"refresh lease {lease.id:#x}", lease=lease)
        # etcd answers a keep-alive for an unknown lease with TTL 0 rather than an error.
        if reply is None or int(reply.TTL) <= 0:
            raise LeaseExpired(lease.id)

    async def revoke_lease(self, lease: Lease) -> None:
        async def op(client: aetcd.Client) -> Any:
            return await client.revoke_lease(lease.id)

        with contextlib.suppress(LeaseExpired):
            await self._call(op, f"revoke lease {lease.id:#x}", lease=lease)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for client in self._clients:
            try:
                await client.close()
            except (aetcd.ClientError, grpc.RpcError, TimeoutError) as exc:
                log.debug("closing etcd client: %s", exc)

