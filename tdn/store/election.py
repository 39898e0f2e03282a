"""Leader election on any Store: one key per election, created only if absent, on a lease.

The winner's key lives as long as it keeps its lease alive; a crashed or partitioned leader's
lease lapses, the key vanishes, and a waiting candidate (watching the key) takes over. The
leader also steps down on its own clock: it counts itself leader only until one TTL after the
last keep-alive it *sent* that succeeded, which ends no later than the server's lease does, so
two replicas never both believe they lead (given clocks that run at the same rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Self

from tdn.store.base import EventKind, Lease, Store, check_key, check_ttl
from tdn.store.errors import (
    LeaseExpired,
    RevisionCompacted,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

ELECTION_PREFIX = "/tdn/elections/"
# Pause after a store error before trying again, so an outage is not hammered.
RETRY_PAUSE_SECONDS = 0.5


def election_key(election_name: str) -> str:
    if not election_name or "/" in election_name:
        raise ValueError(f"election name {election_name!r} must be non-empty, without '/'")
    return check_key(ELECTION_PREFIX + election_name)


async def current_leader(store: Store, election_name: str) -> str | None:
    """The id of the candidate leading ``election_name`` now, as the store sees it."""
    entry = await store.get(election_key(election_name))
    return None if entry is None else entry.value.decode("utf-8")


async def campaign(store: Store, election_name: str, candidate_id: str, ttl: int = 5) -> Leadership:
    """Stand ``candidate_id`` for ``election_name`` and keep standing until resigned.

    Returns after the first attempt, so ``is_leader`` already says whether it won; the
    returned :class:`Leadership` keeps campaigning (or keeping its lease alive) in a task it
    owns until ``resign()``.
    """
    leadership = Leadership(store, election_name, candidate_id, check_ttl(ttl))
    await leadership._start()
    return leadership


class Leadership:
    """One candidate's standing in one election; see :func:`campaign`."""

    def __init__(self, store: Store, election_name: str, candidate_id: str, ttl: int) -> None:
        if not candidate_id:
            raise ValueError("candidate id must not be empty")
        self.store = store
        self.election_name = election_name
        self.candidate_id = candidate_id
        self.ttl = ttl
        self.key = election_key(election_name)
        self._value = candidate_id.encode("utf-8")
        self._lease: Lease | None = None
        # Monotonic time until which this candidate may act as leader; 0 when not leading.
        self._deadline = 0.0
        self._elected = asyncio.Event()
        self._deposed = asyncio.Event()
        self._deposed.set()
        self._task: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._lease is not None and time.monotonic() < self._deadline

    async def wait_elected(self) -> None:
        """Return once this candidate leads (at once if it does now)."""
        while not self.is_leader:
            await self._elected.wait()
            if not self.is_leader:
                self._elected.clear()

    async def wait_deposed(self) -> None:
        """Return once this candidate no longer leads (at once if it does not now)."""
        while self.is_leader:
            remaining = self._deadline - time.monotonic()
            # Leadership also ends silently when the deadline passes without a keep-alive.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(remaining, 0.0)):
                    await self._deposed.wait()

    async def resign(self) -> None:
        """Stop campaigning and give up leadership now (revoking the lease deletes the key)."""
        await self._stop_task()
        lease, self._lease = self._lease, None
        self._set_deposed()
        if lease is not None:
            try:
                await self.store.revoke_lease(lease)
            except StoreError as exc:
                # The lease lapses on its own within one TTL; others take over then.
                log.warning("resigning %s: could not revoke lease: %s", self.key, exc)

    async def abandon(self) -> None:
        """Stop keeping the lease alive without revoking it: a crash, as others see it.

        For failure drills; the key lives on until the lease lapses.
        """
        await self._stop_task()
        self._lease = None
        self._set_deposed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.resign()

    # --- the campaign ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"tdn-election-{self.election_name}")
        # Wait for the first attempt, but let a task that died early report why.
        done = asyncio.create_task(self._first_attempt.wait())
        try:
            await asyncio.wait({self._task, done}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
        if self._task.done():
            self._task.result()

    async def _stop_task(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _set_elected(self, lease: Lease, deadline: float) -> None:
        self._lease = lease
        self._deadline = deadline
        self._deposed.clear()
        self._elected.set()
        log.info("%s now leads election %s", self.candidate_id, self.election_name)

    def _set_deposed(self) -> None:
        self._deadline = 0.0
        self._elected.clear()
        self._deposed.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._lease is None:
                    await self._try_to_win()
                    self._first_attempt.set()
                    if self._lease is None:
                        await self._wait_for_vacancy()
                else:
                    await self._keep_alive()
            except StoreClosed:
                # The store's owner is shutting down; so is this campaign.
                self._first_attempt.set()
                self._lease = None
                self._set_deposed()
                return
            except (StoreUnavailable, RevisionCompacted, LeaseExpired) as exc:
                # All passing conditions: an outage, history compacted under the vacancy
                # watch, a lease lost between grant and claim. Try again after a pause.
                self._first_attempt.set()
                log.warning("election %s: %s", self.election_name, exc)
                if self._lease is not None and not self.is_leader:
                    self._lose("lease could not be kept alive")
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _try_to_win(self) -> None:
        if await self.store.get(self.key) is not None:
            return
        started = time.monotonic()
        lease = await self.store.grant_lease(self.ttl)
        try:
            won = await self.store.compare_and_put(self.key, self._value, 0, lease=lease)
        except BaseException:
            await self._revoke_quietly(lease)
            raise
        if won:
            self._set_elected(lease, started + self.ttl)
        else:
            await self._revoke_quietly(lease)

    async def _wait_for_vacancy(self) -> None:
        """Return when the election key is deleted, or after a TTL to look again anyway."""
        listing = await self.store.list_prefix(self.key)
        if not any(entry.key == self.key for entry in listing.entries):
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.ttl):
                watch = self.store.watch_prefix(self.key, start_revision=listing.revision + 1)
                async with watch as events:
                    async for event in events:
                        if event.key == self.key and event.kind is EventKind.DELETE:
                            return

    async def _keep_alive(self) -> None:
        lease = self._lease
        assert lease is not None
        # Three keep-alives per TTL, so one lost to a hiccup does not cost the leadership.
        await asyncio.sleep(self.ttl / 3)
        started = time.monotonic()
        try:
            await self.store.refresh_lease(lease)
        except LeaseExpired:
            self._lose("lease expired")
            return
        entry = await self.store.get(self.key)
        if entry is None or entry.lease_id != lease.id:
            await self._revoke_quietly(lease)
            self._lose("election key was removed or replaced")
            return
        self._deadline = started + self.ttl

    def _lose(self, why: str) -> None:
        log.warning("%s lost election %s: %s", self.candidate_id, self.election_name, why)
        self._lease = None
        self._set_deposed()

    async def _revoke_quietly(self, lease: Lease) -> None:
        with contextlib.suppress(StoreError):
            await self.store.revoke_lease(lease)
