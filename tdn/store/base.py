"""The one Store interface the control plane keeps its state behind, its value types, and the
factory that picks an implementation from a URL.

Two implementations exist so that ``tdn up`` needs nothing but a local folder (embedded, SQLite)
while production replicas share state and elect a leader through etcd. Both follow etcd's model —
a global revision bumped by every write, per-key create/mod revisions and versions, leases whose
expiry deletes their keys, and ordered watches — so code written against one runs on the other.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from tdn.store.errors import InvalidEntry, InvalidStoreUrl

# etcd refuses requests over 1.5 MiB by default; holding both stores to 1 MiB means a value that
# works on a laptop (embedded) also works in production (etcd).
MAX_VALUE_BYTES = 1024 * 1024
MAX_KEY_BYTES = 1024
# etcd's own upper bound on a lease TTL (lease.MaxLeaseTTL).
MAX_LEASE_TTL = 9_000_000_000


@dataclass(frozen=True, slots=True)
class Lease:
    """A time-to-live granted by the store; keys put with it vanish when it expires."""

    id: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One key as stored. ``revision`` is the store revision of its last modification."""

    key: str
    value: bytes
    revision: int
    create_revision: int
    # Number of writes since the key was (re)created; 1 right after creation.
    version: int
    # 0 when no lease is attached.
    lease_id: int = 0


@dataclass(frozen=True, slots=True)
class Listing:
    """The entries under a prefix and the store revision they were read at.

    Watching from ``revision + 1`` after a listing misses nothing and repeats nothing.
    """

    entries: tuple[Entry, ...]
    revision: int


class EventKind(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch. ``value`` is empty for deletes."""

    kind: EventKind
    key: str
    value: bytes
    revision: int


class Watch(AsyncIterator[WatchEvent]):
    """A stream of changes under a prefix, in revision order.

    Use it as ``async with store.watch_prefix(p) as events: async for event in events: ...``:
    once ``__aenter__`` returns the watch is in place, so a write made afterwards is seen. Leaving
    the block (or ``aclose()``) cancels it; iteration ends when the store is closed, and raises
    ``StoreUnavailable`` when the backend is lost (re-list and watch again from there).
    """

    @abstractmethod
    async def start(self) -> None:
        """Put the watch in place; idempotent. Iterating starts it too."""

    @abstractmethod
    async def aclose(self) -> None:
        """Cancel the watch; idempotent."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class Store(Protocol):
    """Durable key/value state with revisions, leases and watches (see the module docstring).

    Keys are ``/``-rooted paths such as ``/tdn/plans/current``; values are bytes. Every method may
    raise ``StoreUnavailable`` (backend unreachable), ``StoreClosed`` and ``InvalidEntry``.
    """

    async def get(self, key: str) -> Entry | None:
        """The entry at ``key``, or None when absent (or attached to an expired lease)."""
        ...

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        """Write ``value`` at ``key``; return the new store revision.

        Raises ``LeaseExpired`` when ``lease`` no longer exists.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""
        ...

    async def get_prefix(self, prefix: str) -> list[Entry]:
        """Every live entry whose key starts with ``prefix``, sorted by key."""
        ...

    async def list_prefix(self, prefix: str) -> Listing:
        """``get_prefix`` plus the revision it was read at, for list-then-watch."""
        ...

    async def compare_and_put(
        self, key: str, value: bytes, expected_revision: int, *, lease: Lease | None = None
    ) -> bool:
        """Write only if ``key``'s revision is ``expected_revision`` (0: only if absent).

        Returns whether the write happened: optimistic concurrency without locks.
        """
        ...

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Changes under ``prefix`` from now on, or replayed from ``start_revision`` (inclusive).

        Raises ``RevisionCompacted`` if that history is no longer kept — from ``start()`` or
        from the first ``__anext__`` (etcd reports it on the stream), so handle it around both.
        """
        ...

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        """A new lease that expires ``ttl_seconds`` after its last refresh."""
        ...

    async def refresh_lease(self, lease: Lease) -> None:
        """Restart ``lease``'s TTL. Raises ``LeaseExpired`` when it is already gone."""
        ...

    async def revoke_lease(self, lease: Lease) -> None:
        """End ``lease`` now and delete its keys; a lease already gone is not an error."""
        ...

    async def close(self) -> None:
        """Release connections and background tasks; watches end. Idempotent."""
        ...


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a valid store key or prefix; raise ``InvalidEntry`` otherwise."""
    if not isinstance(key, str):
        raise InvalidEntry(f"{what} must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidEntry(f"{what} must not be empty")
    if not key.startswith("/"):
        raise InvalidEntry(f"{what} {key!r} must start with '/'")
    if "\x00" in key:
        raise InvalidEntry(f"{what} {key!r} must not contain NUL")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidEntry(f"{what} {key!r} is not valid UTF-8: {exc.reason}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidEntry(f"{what} is {size} bytes long; the limit is {MAX_KEY_BYTES}")
    return key


def check_value(value: object) -> bytes:
    """Return ``value`` if it is a storable value; raise ``InvalidEntry`` otherwise."""
    if not isinstance(value, bytes):
        raise InvalidEntry(
            f"value must be bytes, got {type(value).__name__} (encode it before storing)"
        )
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidEntry(f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}")
    return value


def check_ttl(ttl_seconds: object) -> int:
    """Return a valid lease TTL in whole seconds (what etcd grants); raise otherwise."""
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidEntry(f"lease TTL must be whole seconds (int), got {ttl_seconds!r}")
    if not 1 <= ttl_seconds <= MAX_LEASE_TTL:
        raise InvalidEntry(f"lease TTL {ttl_seconds}s is outside 1..{MAX_LEASE_TTL}")
    return ttl_seconds


def check_revision(revision: object, what: str) -> int:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise InvalidEntry(f"{what} must be a non-negative int, got {revision!r}")
    return revision


async def open_store(url: str) -> Store:
    """Open the store a configuration names.

    ``embedded:///path/to/dir`` or a bare path opens the embedded store in that folder (created
    if missing); ``etcd://host:port[,host:port...]`` connects to etcd, trying the endpoints in
    order. The backends are imported here so that the embedded default never loads gRPC.
    """
    if url.startswith("etcd://"):
        from tdn.store.etcd import EtcdStore, parse_endpoints

        return await EtcdStore.connect(parse_endpoints(url))
    if url.startswith("embedded://"):
        path = url.removeprefix("embedded://")
    elif "://" in url:
        raise InvalidStoreUrl(
            f"store URL {url!r}: unknown scheme; use embedded:///path/to/dir, a bare path, "
            "or etcd://host:port[,host:port...]"
        )
    else:
        path = url
    if not path:
        raise InvalidStoreUrl(f"store URL {url!r} names no folder")
    from tdn.store.embedded import EmbeddedStore

    return await EmbeddedStore.open(Path(path))
