"""Keeping a replica in step with the Store: is it reachable, and what is under ``/tdn/`` now.

:class:`StoreHealth` is the one place a replica decides it is read-only: any store operation
that finds the store unreachable marks it so (``tdn_controlplane_read_only`` = 1, GetStatus and
``/healthz`` say why), and the next one that succeeds clears it. While read-only the replica goes
on serving discovery and telemetry from memory; it writes nothing and, having lost its lease, no
longer solves.

:class:`StoreMirror` lists a prefix, hands every entry to the handler of its sub-prefix, then
watches from the listing's revision so nothing is missed or repeated; when the watch breaks (an
etcd member died, history was compacted, the store was unreachable) it lists again and hands the
handlers the whole state (``reset``), so a replica that was cut off catches up in one step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from tdn.controlplane.durable_state import CorruptState
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.store.base import Entry, EventKind, Store, WatchEvent
from tdn.store.errors import RevisionCompacted, StoreClosed, StoreUnavailable

log = logging.getLogger(__name__)

# Pause before listing again after the store failed, so an outage is not hammered.
RETRY_SECONDS = 0.5


class StoreHealth:
    """Whether this replica can reach its store, as the latest operation found."""

    def __init__(self, metrics: ControlPlaneMetrics) -> None:
        self._metrics = metrics
        self.error = ""
        self.since = time.time()
        # Set on every failure, so watchers stuck on a dead connection can start over.
        self.failed = asyncio.Event()
        metrics.read_only.set(0)

    @property
    def read_only(self) -> bool:
        return bool(self.error)

    def ok(self) -> None:
        if self.error:
            log.info("store reachable again after %.1fs; leaving read-only mode",
                     time.time() - self.since)
            self.error = ""
            self.since = time.time()
            self._metrics.read_only.set(0)

    def failure(self, operation: str, exc: BaseException) -> None:
        self._metrics.store_errors.labels(operation=operation).inc()
        if not self.error:
            log.error("store unreachable (%s: %s): read-only, serving the last plan", operation,
                      exc)
            self.since = time.time()
            self._metrics.read_only.set(1)
        self.error = f"{operation}: {exc}"
        self.failed.set()


class PrefixHandler(Protocol):
    """Receives the entries under one sub-prefix of a :class:`StoreMirror`."""

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        """The complete state under the prefix (after a first or a fresh listing)."""

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class StoreMirror:
    """List-then-watch of ``prefix``, dispatched to handlers by their (longest) sub-prefix."""

    def __init__(self, store: Store, prefix: str, handlers: Mapping[str, PrefixHandler],
                 health: StoreHealth) -> None:
        self._store = store
        self._prefix = prefix
        # Longest first, so that a more specific prefix wins.
        self._handlers = sorted(handlers.items(), key=lambda kv: -len(kv[0]))
        self._health = health
        self._revision = 0
        self.resyncs = 0

    def _handler(self, key: str) -> PrefixHandler | None:
        for prefix, handler in self._handlers:
            if key.startswith(prefix):
                return handler
        return None

    async def sync(self, *, initial: bool = False) -> None:
        """List everything and reset every handler to it; raises StoreError."""
        listing = await self._store.list_prefix(self._prefix)
        # One reset per handler, with everything it owns (a handler may own several prefixes).
        owned: dict[int, tuple[PrefixHandler, list[Entry]]] = {
            id(handler): (handler, []) for _, handler in self._handlers}
        for entry in listing.entries:
            handler = self._handler(entry.key)
            if handler is not None:
                owned[id(handler)][1].append(entry)
        for handler, entries in owned.values():
            handler.reset(entries, initial=initial)
        self._revision = listing.revision
        self.resyncs += 1

    async def run(self) -> None:
        """Watch forever (until cancelled), listing again whenever the watch is lost."""
        while True:
            try:
                await self._watch()
            except (StoreUnavailable, RevisionCompacted) as exc:
                # A lost watch alone is no outage (an etcd member went away, history was
                # compacted): only a store that cannot even be listed makes this replica
                # read-only.
                log.warning("store watch lost (%s); listing again", exc)
            except StoreClosed:
                return
            try:
                await self._resync()
            except StoreClosed:
                return

    async def _resync(self) -> None:
        while True:
            try:
                await self.sync()
            except StoreUnavailable as exc:
                self._health.failure("list", exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._health.ok()
            return

    async def _watch(self) -> None:
        self._health.failed.clear()
        watch = self._store.watch_prefix(self._prefix, start_revision=self._revision + 1)
        async with watch as events:
            failed = asyncio.create_task(self._health.failed.wait(), name="store-failed")
            event_task: asyncio.Future[WatchEvent] | None = None
            try:
                while True:
                    event_task = asyncio.ensure_future(anext(events))
                    done, _ = await asyncio.wait({event_task, failed},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if event_task not in done:
                        # Another operation found the store unreachable: this watch may sit on
                        # the same dead connection, so start over (list, then watch again).
                        raise StoreUnavailable("the store failed elsewhere; watching again")
                    try:
                        event = event_task.result()
                    except StopAsyncIteration:
                        raise StoreClosed("the store was closed") from None
                    self._revision = max(self._revision, event.revision)
                    self._dispatch(event.kind, event.key, event.value)
            finally:
                pending = [t for t in (failed, event_task) if t is not None and not t.done()]
                for task in pending:
                    task.cancel()
                # Whatever they end with (cancelled, a lost watch) is superseded by why this
                # watch ends; retrieve it so it is not reported as never retrieved.
                if pending:
                    await asyncio.wait(pending)
                for task in pending:
                    if not task.cancelled():
                        task.exception()

    def _dispatch(self, kind: EventKind, key: str, value: bytes) -> None:
        handler = self._handler(key)
        if handler is None:
            return
        try:
            if kind is EventKind.PUT:
                handler.put(key, value)
            else:
                handler.delete(key)
        except CorruptState as exc:
            # One bad value (a hand edit, a newer writer) must not stop the replica following
            # everything else; what it holds for that key stays as it was.
            log.error("ignoring unreadable store entry: %s", exc)
