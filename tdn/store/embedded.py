"""The embedded Store: single process, durable in a local folder, nothing else to run.

This is what ``tdn up`` uses. Data lives in SQLite (see :mod:`tdn.store.sqlite_state`); every
call runs as a job on one worker thread, which both keeps disk I/O off the event loop and
serialises writes. Each job hands its committed events to the loop in commit order, where they
feed in-process watches; a watch is attached by a job too, so it sees every later write exactly
once. A background task owned by the store expires leases between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sqlite3
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO, Self, TypeVar

from tdn.store.base import (
    Entry,
    Lease,
    Listing,
    Watch,
    WatchEvent,
    check_key,
    check_revision,
    check_ttl,
    check_value,
)
from tdn.store.errors import StoreClosed, StoreError, StoreUnavailable
from tdn.store.sqlite_state import SqliteState

log = logging.getLogger(__name__)

T = TypeVar("T")

DB_FILE = "state.db"
LOCK_FILE = "LOCK"
# A watcher this many events behind is cut off rather than growing memory without bound.
WATCH_BACKLOG_LIMIT = 100_000


def _lock_folder(folder: Path) -> IO[bytes]:
    """Create ``folder`` and hold an exclusive lock on it until the returned file is closed."""
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = open(folder / LOCK_FILE, "ab")  # noqa: SIM115 - held until the store closes
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StoreUnavailable(
            f"embedded store {folder} is already open (by another process or store)"
        ) from None
    return lock_file


class _Subscriber:
    """The receiving end of one watch: events queued by the store, read by the watch."""

    def __init__(self, prefix: str, start_revision: int) -> None:
        self.prefix = prefix
        self.start_revision = start_revision
        self.pending: deque[WatchEvent] = deque()
        self.wakeup = asyncio.Event()
        self.error: StoreError | None = None
        self.ended = False

    def offer(self, events: list[WatchEvent]) -> None:
        if self.ended or self.error is not None:
            return
        for event in events:
            if event.revision >= self.start_revision and event.key.startswith(self.prefix):
                self.pending.append(event)
        if len(self.pending) > WATCH_BACKLOG_LIMIT:
            self.pending.clear()
            self.error = StoreUnavailable(
                f"watch on {self.prefix!r} fell over {WATCH_BACKLOG_LIMIT} events behind; "
                "list again and watch from the listing's revision"
            )
        self.wakeup.set()

    def end(self) -> None:
        self.ended = True
        self.wakeup.set()


class EmbeddedWatch(Watch):
    """A watch on the embedded store (see :class:`tdn.store.base.Watch`)."""

    def __init__(self, store: EmbeddedStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._start_revision = start_revision
        self._subscriber: _Subscriber | None = None
        self._closed = False

    async def start(self) -> None:
        if self._subscriber is None and not self._closed:
            self._subscriber = await self._store._attach(self._prefix, self._start_revision)

    async def __anext__(self) -> WatchEvent:
        await self.start()
        sub = self._subscriber
        if sub is None:
            raise StopAsyncIteration
        while True:
            if sub.pending:
                return sub.pending.popleft()
            if sub.error is not None:
                raise sub.error
            if sub.ended:
                raise StopAsyncIteration
            sub.wakeup.clear()
            await sub.wakeup.wait()

    async def aclose(self) -> None:
        self._closed = True
        if self._subscriber is not None:
            self._store._detach(self._subscriber)
            self._subscriber.end()

    def __del__(self) -> None:
        # A watch dropped without aclose() (a `break` out of `async for`) must not keep
        # collecting events; the store prunes ended subscribers on its next publish.
        if self._subscriber is not None:
            self._subscriber.ended = True


class EmbeddedStore:
    """The Store in a local folder (see the module docstring). Open with :meth:`open`."""

    def __init__(
        self,
        folder: Path,
        state: SqliteState,
        executor: ThreadPoolExecutor,
        lock_file: IO[bytes],
        expiry_interval: float,
    ) -> None:
        self.folder = folder
        self._state = state
        self._executor = executor
        self._lock_file = lock_file
        self._expiry_interval = expiry_interval
        self._loop = asyncio.get_running_loop()
        self._subscribers: set[_Subscriber] = set()
        self._closed = False
        self._expiry_task = asyncio.create_task(self._expire_leases(), name="tdn-store-expiry")

    @classmethod
    async def open(
        cls, folder: Path, *, history_limit: int = 10_000, expiry_interval: float = 0.2
    ) -> EmbeddedStore:
        """Open (creating if needed) the store in ``folder``.

        Raises ``StoreUnavailable`` when another process (or another open store in this one)
        holds the folder: two writers would each hand out the same revisions.
        """
        lock_file = await asyncio.to_thread(_lock_folder, folder)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tdn-store")
        try:
            state = await asyncio.wrap_future(
                executor.submit(SqliteState, folder / DB_FILE, history_limit)
            )
        except BaseException as exc:
            executor.shutdown(wait=False)
            lock_file.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(f"cannot open embedded store {folder}: {exc}") from exc
            raise
        return cls(folder, state, executor, lock_file, expiry_interval)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the worker thread ----------------------------------------------------------------------

    def _job(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn`` on the worker thread and hand the events it committed to the loop.

        Publishing from here, not from the awaiting coroutine, keeps events in commit order
        and delivers them even when the caller is cancelled while the job runs. (A job whose
        caller is cancelled while it is still queued never runs: no write, no event.)
        """
        try:
            return fn(*args)
        finally:
            events = self._state.take_events()
            if events:
                self._loop.call_soon_threadsafe(self._publish, events)

    async def _submit(self, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise StoreClosed(f"embedded store {self.folder} is closed")
        future = self._executor.submit(self._job, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except sqlite3.OperationalError as exc:
            # Disk full, I/O error, file locked by a foreign writer: the request may succeed
            # later; anything else from sqlite is a bug and propagates as is.
            raise StoreUnavailable(f"embedded store {self.folder}: {exc}") from exc

    def _publish(self, events: list[WatchEvent]) -> None:
        for subscriber in list(self._subscribers):
            if subscriber.ended:
                self._subscribers.discard(subscriber)
            else:
                subscriber.offer(events)

    async def _attach(self, prefix: str, start_revision: int | None) -> _Subscriber:
        subscriber = _Subscriber(prefix, start_revision or 0)

        def attach_in_order() -> None:
            # Runs on the worker thread between two writes: the replay read here and the
            # attachment scheduled here sit at the same point in the commit order, so the
            # watch sees every later write exactly once.
            if start_revision:
                replay = self._state.history_since(prefix, start_revision)
            else:
                replay = []
                subscriber.start_revision = self._state.revision() + 1
            self._loop.call_soon_threadsafe(self._attach_now, subscriber, replay)

        try:
            await self._submit(attach_in_order)
        except BaseException:
            # Cancelled or failed: make sure a late attachment is discarded, not leaked.
            subscriber.end()
            raise
        return subscriber

    def _attach_now(self, subscriber: _Subscriber, replay: list[WatchEvent]) -> None:
        if self._closed or subscriber.ended:
            subscriber.end()
            return
        subscriber.offer(replay)
        self._subscribers.add(subscriber)

    def _detach(self, subscriber: _Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(self._expiry_interval)
            try:
                await self._submit(self._state.expire_due)
            except StoreUnavailable as exc:
                log.warning("lease expiry sweep failed, will retry: %s", exc)

    # --- the Store interface --------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        return await self._submit(self._state.get, check_key(key))

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        check_key(key)
        check_value(value)
        return await self._submit(self._state.put, key, value, lease.id if lease else 0, None)

    async def delete(self, key: str) -> bool:
        return await self._submit(self._state.delete, check_key(key))

    async def get_prefix(self, prefix: str) -> list[Entry]:
        return list((await self.list_prefix(prefix)).entries)

    async def list_prefix(self, prefix: str) -> Listing:
        check_key(prefix, "prefix")
        entries, revision = await self._submit(self._state.list_prefix, prefix)
        return Listing(tuple(entries), revision)

    async def compare_and_put(
        self, key: str, value: bytes, expected_revision: int, *, lease: Lease | None = None
    ) -> bool:
        check_key(key)
        check_value(value)
        check_revision(expected_revision, "expected_revision")
        revision = await self._submit(
            self._state.put, key, value, lease.id if lease else 0, expected_revision
        )
        return revision != 0

    def watch_prefix(self, prefix: str, start_revision: int | None = None) -> Watch:
        check_key(prefix, "prefix")
        if start_revision is not None:
            check_revision(start_revision, "start_revision")
        return EmbeddedWatch(self, prefix, start_revision)

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        return await self._submit(self._state.grant, check_ttl(ttl_seconds))

    async def refresh_lease(self, lease: Lease) -> None:
        await self._submit(self._state.refresh, lease)

    async def revoke_lease(self, lease: Lease) -> None:
        await self._submit(self._state.revoke, lease)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._expiry_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._expiry_task
        # Closing the database is the last job; earlier jobs finish (and publish) first.
        await asyncio.wrap_future(self._executor.submit(self._job, self._state.close))
        self._executor.shutdown(wait=True)
        for subscriber in self._subscribers:
            subscriber.end()
        self._subscribers.clear()
        self._lock_file.close()
