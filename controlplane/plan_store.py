"""Plans in the Store: the leader writes each new plan there before serving it, and every replica
serves discovery from what it reads back.

:class:`PlanStore` is the leader's side. A new plan's per-site policies are first deduplicated
against the ones served (a site whose routing did not change keeps its version, and is neither
rewritten nor pushed), then the changed site documents are written, then the plan record; only
when all of that is durable does the leader serve the new versions itself. A plan that cannot be
written is not served by anyone: a version a sidecar runs must never be reused for other routes
by a later leader, and a later leader only knows what the store holds.

:class:`PlanMirror` is every replica's side (the leader's own writes come back to it too and are
recognised as already served): site documents go into the snapshot cache as they arrive, which
wakes that site's discovery streams; the plan record, which the leader writes last, rebuilds the
plan that ``tdn plan`` and ``tdn explain`` show and that a newly elected leader continues from.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from tdn.controlplane.durable_state import (
    PLAN_KEY,
    SITE_PLAN_PREFIX,
    CorruptState,
    Exclusion,
    PlanRecord,
    SiteDocument,
    decode_plan_record,
    decode_site_document,
    encode_plan_record,
    encode_site_document,
    site_key,
)
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.domain import Plan, SitePolicy
from tdn.store.base import Entry, Store

log = logging.getLogger(__name__)

# Site documents are written concurrently, this many at a time: one round trip for a typical
# plan instead of one per site, without flooding the store when thousands of sites change.
_WRITE_CONCURRENCY = 64


class PlanStore:
    """What the store holds of the plan, and how the leader writes a new one."""

    def __init__(self, store: Store, cache: SnapshotCache, *, writer: str = "") -> None:
        self._store = store
        self._cache = cache
        self.writer = writer
        # Raw site documents as last written or read: equal bytes are not written again.
        self._docs: dict[str, bytes] = {}
        self.exclusions: dict[str, tuple[Exclusion, ...]] = {}
        self.record: PlanRecord | None = None

    # --- the leader's side ---------------------------------------------------------------------

    async def publish(self, plan: Plan, policies: Mapping[str, SitePolicy],
                      solved_at: float, *, policy_revision: int = 0) -> tuple[str, ...]:
        """Write ``plan`` and its site policies, then serve them; return the sites that got a
        new version. Raises StoreError (nothing new is served) when the store refuses."""
        for policy in policies.values():
            policy.check()  # never write, let alone serve, a policy naming an unshipped factory
        served = self._cache.dedupe(policies)
        exclusions: dict[str, list[Exclusion]] = {site: [] for site in served}
        for site, model, traffic_class, factory_id, reason in plan.exclusions:
            if site in exclusions:
                exclusions[site].append((model, traffic_class, factory_id, reason))
        writes: dict[str, bytes] = {}
        for site, policy in served.items():
            raw = encode_site_document(SiteDocument(policy, tuple(exclusions[site])))
            if self._docs.get(site) != raw:
                writes[site] = raw
        removed = [site for site in self._docs if site not in served]
        await self._write_all(writes, removed)
        record = PlanRecord(version=plan.version, status=plan.status, solved_at=solved_at,
                            objective=plan.objective, solve_seconds=plan.solve_seconds,
                            writer=self.writer, policy_revision=policy_revision)
        # The record goes last: whoever sees it already holds every policy it names.
        await self._store.put(PLAN_KEY, encode_plan_record(record))
        self.record = record
        for site in removed:
            self.forget_site(site)
        for site, raw in writes.items():
            self._docs[site] = raw
            self.exclusions[site] = tuple(exclusions[site])
        return self._cache.update(served)

    async def _write_all(self, writes: Mapping[str, bytes], removed: Sequence[str]) -> None:
        jobs: list[Callable[[], Awaitable[object]]] = [
            functools.partial(self._store.put, site_key(site), raw)
            for site, raw in writes.items()]
        jobs += [functools.partial(self._store.delete, site_key(site)) for site in removed]
        for start in range(0, len(jobs), _WRITE_CONCURRENCY):
            batch = jobs[start:start + _WRITE_CONCURRENCY]
            results = await asyncio.gather(*(job() for job in batch), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    def highest_version(self) -> int:
        """The highest plan version the store is known to hold (record or any site policy)."""
        recorded = self.record.version if self.record is not None else 0
        return max(recorded, self._cache.highest_version())

    # --- what was read back --------------------------------------------------------------------

    def observed_site(self, site: str, raw: bytes, doc: SiteDocument) -> None:
        self._docs[site] = raw
        self.exclusions[site] = doc.exclusions

    def forget_site(self, site: str) -> None:
        self._docs.pop(site, None)
        self.exclusions.pop(site, None)

    def rebuild_plan(self, record: PlanRecord) -> Plan:
        """The plan ``record`` names, from the site policies served now (which the record,
        written last, is never ahead of)."""
        routes = tuple((s.policy.site, route) for s in self._cache.snapshots()
                       for route in s.policy.routes)
        exclusions = tuple((site, *e) for site in sorted(self.exclusions)
                           for e in self.exclusions[site])
        return Plan(version=record.version, routes=routes, status=record.status,
                    objective=record.objective, solve_seconds=record.solve_seconds,
                    exclusions=exclusions)


Adopt = Callable[[Plan, float, int], None]  # plan, solved at, policy revision


class PlanMirror:
    """The :class:`~tdn.controlplane.store_sync.PrefixHandler` for ``/tdn/plan/``."""

    def __init__(self, plans: PlanStore, cache: SnapshotCache, adopt: Adopt) -> None:
        self._plans = plans
        self._cache = cache
        self._adopt = adopt

    def reset(self, entries: Sequence[Entry], *, initial: bool) -> None:
        present = set()
        record: Entry | None = None
        for entry in entries:
            if entry.key == PLAN_KEY:
                record = entry
            elif entry.key.startswith(SITE_PLAN_PREFIX):
                present.add(entry.key.removeprefix(SITE_PLAN_PREFIX))
                self._guarded(self.put, entry.key, entry.value)
        # A site document deleted while this replica was not watching: the leader dropped
        # the site. Its sidecars keep their last good policy.
        for snapshot in self._cache.snapshots():
            if snapshot.policy.site not in present:
                self.delete(site_key(snapshot.policy.site))
        if record is not None:
            self._guarded(self.put, record.key, record.value)

    @staticmethod
    def _guarded(fn: Callable[[str, bytes], None], key: str, value: bytes) -> None:
        try:
            fn(key, value)
        except CorruptState as exc:
            log.error("ignoring unreadable store entry: %s", exc)

    def put(self, key: str, value: bytes) -> None:
        if key == PLAN_KEY:
            record = decode_plan_record(key, value)
            known = self._plans.record
            if known is None or record.version > known.version:
                self._plans.record = record
                self._adopt(self._plans.rebuild_plan(record), record.solved_at,
                            record.policy_revision)
            return
        if not key.startswith(SITE_PLAN_PREFIX):
            return
        site = key.removeprefix(SITE_PLAN_PREFIX)
        doc = decode_site_document(key, value)
        self._plans.observed_site(site, value, doc)
        if self._cache.install(site, doc.policy):
            log.info("serving policy version %s for %s (from the store)", doc.policy.version,
                     site)

    def delete(self, key: str) -> None:
        if key.startswith(SITE_PLAN_PREFIX):
            site = key.removeprefix(SITE_PLAN_PREFIX)
            self._plans.forget_site(site)
            self._cache.remove(site)

