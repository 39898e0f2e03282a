"""Replicas sharing one store, piece by piece on the embedded store: what a leader writes a
follower serves, what one replica hears another sees, and what falls silent vanishes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from controlplane_support import EU_1, EU_2, report, wait_for

from tdn.controlplane.durable_state import (
    FACTORY_STATE_PREFIX,
    ROOT,
    ReplicaRecord,
    SiteDocument,
    encode_site_document,
    site_key,
)
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.plan_store import PlanMirror, PlanStore
from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.replica_lease import ReplicaLease
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.store_sync import StoreHealth, StoreMirror
from tdn.controlplane.telemetry_sync import FactoryStates, TelemetryPublisher
from tdn.domain import (
    FactoryEndpoint,
    Health,
    Plan,
    Route,
    SitePolicy,
    Tier,
    WeightedFactory,
)
from tdn.store.base import Store, open_store


def endpoint(factory_id: str) -> FactoryEndpoint:
    return FactoryEndpoint(id=factory_id, tier=Tier.EDGE, region="eu-west",
                           failure_domain="eu-west", base_url=f"http://{factory_id}/v1")


def policy(site: str, version: int, *factories: str) -> SitePolicy:
    route = Route(model="m", traffic_class="default",
                  primary=tuple(WeightedFactory(f, 1.0 / len(factories)) for f in factories))
    return SitePolicy(site=site, version=str(version),
                      factories=tuple(endpoint(f) for f in factories), routes=(route,),
                      generated_at=1000.0 + version)


def plan(version: int, policies: dict[str, SitePolicy]) -> Plan:
    return Plan(version=version, status="optimal",
                routes=tuple((site, r) for site, p in policies.items() for r in p.routes),
                exclusions=(("fra", "m", "default", "eu-9", "not in the site's zones"),))


class Follower:
    """A follower's view: its own cache and plan, fed by a mirror of the shared store."""

    def __init__(self, store: Store) -> None:
        self.metrics = ControlPlaneMetrics()
        self.cache = SnapshotCache(self.metrics)
        self.plans = PlanStore(store, self.cache)
        self.adopted: list[Plan] = []
        self.announced: list[tuple[str, str]] = []
        self.cache.add_listener(lambda site, s: self.announced.append((site, s.version)))
        self.mirror = StoreMirror(store, ROOT, {
            "/tdn/plan/": PlanMirror(self.plans, self.cache,
                                     lambda p, _t, _r: self.adopted.append(p))},
            StoreHealth(self.metrics))


@contextlib.asynccontextmanager
async def following(store: Store) -> AsyncIterator[Follower]:
    follower = Follower(store)
    await follower.mirror.sync(initial=True)
    task = asyncio.create_task(follower.mirror.run())
    try:
        yield follower
    finally:
        task.cancel()
        await asyncio.wait([task])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"embedded://{tmp_path / 'store'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_follower_serves_the_policies_the_leader_stored_and_only_changed_sites_move(
        store: Store) -> None:
    leader_cache = SnapshotCache(ControlPlaneMetrics())
    leader = PlanStore(store, leader_cache, writer="leader")
    first = {"fra": policy("fra", 1, "eu-1", "eu-2"), "nyc": policy("nyc", 1, "us-1")}
    assert await leader.publish(plan(1, first), first, 1001.0) == ("fra", "nyc")

    async with following(store) as follower:
        assert {s.policy.site: s.version for s in follower.cache.snapshots()} == {
            "fra": "1", "nyc": "1"}
        assert follower.adopted[-1].version == 1
        nyc_doc = await store.get(site_key("nyc"))
        assert nyc_doc is not None

        # Plan 2 moves fra only: nyc keeps version 1, is not rewritten and is not re-announced.
        second = {"fra": policy("fra", 2, "eu-2"), "nyc": policy("nyc", 2, "us-1")}
        assert await leader.publish(plan(2, second), second, 1002.0) == ("fra",)
        await wait_for(lambda: follower.adopted[-1].version == 2, "plan 2 at the follower")
        assert follower.cache.get("fra").version == "2"  # type: ignore[union-attr]
        assert follower.cache.get("nyc").version == "1"  # type: ignore[union-attr]
        assert follower.announced[-1] == ("fra", "2")
        assert ("nyc", "2") not in follower.announced
        unchanged = await store.get(site_key("nyc"))
        assert unchanged is not None and unchanged.revision == nyc_doc.revision

        rebuilt = follower.adopted[-1]
        assert {site for site, _ in rebuilt.routes} == {"fra", "nyc"}
        assert rebuilt.exclusions == (("fra", "m", "default", "eu-9", "not in the site's zones"),)
        assert follower.plans.highest_version() == 2


async def test_a_stored_policy_that_fails_its_consistency_check_is_never_served(
        store: Store) -> None:
    good = policy("fra", 1, "eu-1")
    await store.put(site_key("fra"), encode_site_document(SiteDocument(good)))
    async with following(store) as follower:
        assert follower.cache.get("fra").version == "1"  # type: ignore[union-attr]
        # A hand edit: version 2 routes to a factory it does not ship.
        broken = SitePolicy(site="fra", version="2", factories=(endpoint("eu-1"),),
                            routes=(Route("m", "default", (WeightedFactory("eu-2", 1.0),)),))
        await store.put(site_key("fra"), encode_site_document(SiteDocument(broken)))
        await store.put(site_key("nyc"), encode_site_document(SiteDocument(policy("nyc", 3,
                                                                                  "us-1"))))
        await wait_for(lambda: follower.cache.get("nyc") is not None, "the next good write")
        assert follower.cache.get("fra").version == "1"  # type: ignore[union-attr]


async def test_an_older_or_repeated_version_never_replaces_the_served_one(store: Store) -> None:
    cache = SnapshotCache(ControlPlaneMetrics())
    assert cache.install("fra", policy("fra", 5, "eu-1"))
    assert not cache.install("fra", policy("fra", 4, "eu-2"))
    assert not cache.install("fra", policy("fra", 5, "eu-1"))
    assert cache.get("fra").version == "5"  # type: ignore[union-attr]


async def test_telemetry_heard_by_one_replica_reaches_another_and_vanishes_with_silence(
        store: Store) -> None:
    ttl = 1.0
    metrics = ControlPlaneMetrics()
    health = StoreHealth(metrics)
    lease = ReplicaLease(store, ttl=ttl, health=health,
                         record=ReplicaRecord("a", "127.0.0.1:1", "http://127.0.0.1:2"))
    await lease.start()
    publisher = TelemetryPublisher(store, lease, replica_id="a", ttl=ttl, metrics=metrics,
                                   health=health)
    # Replica b: its own registry, fed only by the store.
    registry_b = FactoryRegistry(ttl=ttl, metrics=ControlPlaneMetrics())
    mirror_b = StoreMirror(store, ROOT, {FACTORY_STATE_PREFIX: FactoryStates(registry_b, "b")},
                           StoreHealth(ControlPlaneMetrics()))
    await mirror_b.sync(initial=True)
    tasks = [asyncio.create_task(publisher.run()), asyncio.create_task(mirror_b.run()),
             asyncio.create_task(lease.run())]
    try:
        publisher.offer(report(EU_1), accepted=True)
        publisher.offer(report(EU_2, reachable=False), accepted=True)
        await wait_for(lambda: registry_b.get("eu-2") is not None, "eu-2 at replica b")
        assert registry_b.get("eu-1").health is Health.HEALTHY  # type: ignore[union-attr]
        assert registry_b.get("eu-2").health is Health.UNHEALTHY  # type: ignore[union-attr]

        # eu-2 recovers: the change reaches b at once, not at the next refresh.
        publisher.offer(report(EU_2, seq=2), accepted=True)
        await wait_for(lambda: registry_b.get("eu-2").health is Health.HEALTHY,  # type: ignore[union-attr]
                       "eu-2 healthy at b")

        # Reports stop: a's key goes after one TTL, and b, refreshed no more, says unknown.
        async def keys() -> list[str]:
            return [e.key for e in await store.get_prefix(FACTORY_STATE_PREFIX)]

        assert len(await keys()) == 2
        for _ in range(100):
            if not await keys():
                break
            await asyncio.sleep(0.05)
        assert await keys() == []
        await wait_for(lambda: registry_b.get("eu-1").health  # type: ignore[union-attr]
                       is Health.UNKNOWN, "eu-1 unknown at b once no record of it lives")
        assert "no replica hears from it" in registry_b.get("eu-1").reason  # type: ignore[union-attr]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await lease.close()


async def test_a_stopped_replicas_telemetry_outlives_it_by_one_lease_ttl(store: Store) -> None:
    metrics = ControlPlaneMetrics()
    health = StoreHealth(metrics)
    lease = ReplicaLease(store, ttl=1.0, health=health,
                         record=ReplicaRecord("a", "127.0.0.1:1", ""))
    await lease.start()
    publisher = TelemetryPublisher(store, lease, replica_id="a", ttl=1.0, metrics=metrics,
                                   health=health)
    task = asyncio.create_task(publisher.run())
    try:
        publisher.offer(report(EU_1), accepted=True)

        async def published() -> bool:
            return bool(await store.get_prefix(FACTORY_STATE_PREFIX))

        for _ in range(100):
            if await published():
                break
            await asyncio.sleep(0.02)
        assert await published()
    finally:
        task.cancel()
        await asyncio.wait([task])
    # The replica stops: its record goes now, but what it published stays for one TTL (its
    # agents are moving to another replica meanwhile), then lapses with the lease.
    await lease.close()
    assert await store.get("/tdn/replicas/a") is None
    assert await published()
    for _ in range(100):
        if not await published():
            break
        await asyncio.sleep(0.05)
    assert not await published()


async def test_a_follower_knows_where_the_leader_is_after_listing_or_watching(
        store: Store) -> None:
    from tdn.controlplane.durable_state import REPLICA_PREFIX, encode_replica_record
    from tdn.controlplane.ha import ELECTION_KEY, ClusterView

    async def register(replica_id: str, grpc_target: str) -> None:
        await store.put(REPLICA_PREFIX + replica_id, encode_replica_record(
            ReplicaRecord(replica_id, grpc_target, "")))

    await register("cp-a", "10.0.0.1:50051")
    await store.put(ELECTION_KEY, b"cp-a")
    view = ClusterView()
    mirror = StoreMirror(store, ROOT, {ELECTION_KEY: view, "/tdn/replicas/": view},
                         StoreHealth(ControlPlaneMetrics()))
    await mirror.sync(initial=True)
    assert (view.leader_id, view.leader_address()) == ("cp-a", "10.0.0.1:50051")

    task = asyncio.create_task(mirror.run())
    try:
        await register("cp-b", "10.0.0.2:50051")
        await store.put(ELECTION_KEY, b"cp-b")
        await wait_for(lambda: view.leader_address() == "10.0.0.2:50051", "the new leader")
        await store.delete(ELECTION_KEY)
        await wait_for(lambda: view.leader_id == "", "no leader")
    finally:
        task.cancel()
        await asyncio.wait([task])
