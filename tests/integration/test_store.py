"""The Store contract, run against both implementations (embedded and a real etcd), plus what
only etcd has: several endpoints, and being unreachable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aetcd
import pytest
from backing_services import start_etcd, start_etcd_cluster
from support import async_wait_until, free_port

from tdn.store.base import EventKind, Store, Watch, WatchEvent, open_store
from tdn.store.election import campaign, current_leader
from tdn.store.errors import (
    InvalidEntry,
    InvalidStoreUrl,
    LeaseExpired,
    RevisionCompacted,
    StoreClosed,
    StoreUnavailable,
)
from tdn.store.etcd import EtcdStore, parse_endpoints

DEADLINE = 10.0


async def take(events: Watch, n: int) -> list[WatchEvent]:
    """The next ``n`` events of a watch, failing the test if they do not come in time."""
    got: list[WatchEvent] = []
    async with asyncio.timeout(DEADLINE):
        async for event in events:
            got.append(event)
            if len(got) == n:
                break
    return got


# --- keys and revisions ---------------------------------------------------------------------------


async def test_put_returns_increasing_revisions_and_get_reads_the_value_back(
    store: Store, key_prefix: str
) -> None:
    first = await store.put(key_prefix + "a", b"one")
    second = await store.put(key_prefix + "b", b"two")
    assert second > first > 0
    entry = await store.get(key_prefix + "a")
    assert entry is not None
    assert (entry.key, entry.value, entry.revision) == (key_prefix + "a", b"one", first)
    assert entry.lease_id == 0


async def test_get_of_an_absent_key_is_none(store: Store, key_prefix: str) -> None:
    assert await store.get(key_prefix + "missing") is None


async def test_rewriting_a_key_bumps_its_version_and_keeps_its_create_revision(
    store: Store, key_prefix: str
) -> None:
    created = await store.put(key_prefix + "k", b"v1")
    updated = await store.put(key_prefix + "k", b"v2")
    entry = await store.get(key_prefix + "k")
    assert entry is not None
    assert (entry.value, entry.create_revision, entry.revision, entry.version) == (
        b"v2", created, updated, 2,
    )


async def test_get_prefix_lists_only_keys_under_the_prefix_sorted_by_key(
    store: Store, key_prefix: str
) -> None:
    await store.put(key_prefix + "plans/b", b"2")
    await store.put(key_prefix + "plans/a", b"1")
    await store.put(key_prefix + "plans/a/nested", b"3")
    await store.put(key_prefix + "plansX", b"not under plans/")
    entries = await store.get_prefix(key_prefix + "plans/")
    assert [(e.key, e.value) for e in entries] == [
        (key_prefix + "plans/a", b"1"),
        (key_prefix + "plans/a/nested", b"3"),
        (key_prefix + "plans/b", b"2"),
    ]


async def test_list_prefix_reports_the_revision_it_read_at(store: Store, key_prefix: str) -> None:
    revision = await store.put(key_prefix + "x", b"1")
    listing = await store.list_prefix(key_prefix)
    assert listing.revision >= revision
    assert [e.key for e in listing.entries] == [key_prefix + "x"]


async def test_delete_removes_the_key_and_says_whether_it_existed(
    store: Store, key_prefix: str
) -> None:
    await store.put(key_prefix + "k", b"v")
    assert await store.delete(key_prefix + "k") is True
    assert await store.get(key_prefix + "k") is None
    assert await store.delete(key_prefix + "k") is False


async def test_a_deleted_key_put_again_starts_over_at_version_one(
    store: Store, key_prefix: str
) -> None:
    await store.put(key_prefix + "k", b"v")
    await store.put(key_prefix + "k", b"v")
    await store.delete(key_prefix + "k")
    recreated = await store.put(key_prefix + "k", b"w")
    entry = await store.get(key_prefix + "k")
    assert entry is not None
    assert (entry.version, entry.create_revision) == (1, recreated)


# --- optimistic concurrency -----------------------------------------------------------------------


async def test_compare_and_put_with_revision_zero_creates_only_if_absent(
    store: Store, key_prefix: str
) -> None:
    key = key_prefix + "plan"
    assert await store.compare_and_put(key, b"first", 0) is True
    assert await store.compare_and_put(key, b"second", 0) is False
    entry = await store.get(key)
    assert entry is not None and entry.value == b"first"


async def test_compare_and_put_succeeds_only_against_the_current_revision(
    store: Store, key_prefix: str
) -> None:
    key = key_prefix + "plan"
    seen = await store.put(key, b"v1")
    newer = await store.put(key, b"v2 by someone else")
    assert await store.compare_and_put(key, b"stale write", seen) is False
    assert await store.compare_and_put(key, b"v3", newer) is True
    entry = await store.get(key)
    assert entry is not None and entry.value == b"v3"


async def test_compare_and_put_on_an_absent_key_with_a_revision_fails(
    store: Store, key_prefix: str
) -> None:
    assert await store.compare_and_put(key_prefix + "nothing", b"v", 5) is False
    assert await store.get(key_prefix + "nothing") is None


# --- watches --------------------------------------------------------------------------------------


async def test_watch_sees_puts_and_deletes_under_its_prefix_in_revision_order(
    store: Store, key_prefix: str
) -> None:
    async with store.watch_prefix(key_prefix + "w/") as events:
        r1 = await store.put(key_prefix + "w/a", b"1")
        await store.put(key_prefix + "elsewhere", b"not watched")
        r2 = await store.put(key_prefix + "w/b", b"2")
        await store.delete(key_prefix + "w/a")
        got = await take(events, 3)
    assert [(e.kind, e.key, e.value) for e in got] == [
        (EventKind.PUT, key_prefix + "w/a", b"1"),
        (EventKind.PUT, key_prefix + "w/b", b"2"),
        (EventKind.DELETE, key_prefix + "w/a", b""),
    ]
    assert got[0].revision == r1 and got[1].revision == r2
    assert got[2].revision > r2


async def test_watch_from_a_listing_revision_sees_writes_made_in_between(
    store: Store, key_prefix: str
) -> None:
    listing = await store.list_prefix(key_prefix)
    missed = await store.put(key_prefix + "k", b"written before the watch started")
    async with store.watch_prefix(key_prefix, start_revision=listing.revision + 1) as events:
        await store.put(key_prefix + "k", b"after")
        got = await take(events, 2)
    assert [(e.revision, e.value) for e in got] == [
        (missed, b"written before the watch started"),
        (got[1].revision, b"after"),
    ]
    assert got[1].revision > missed


async def test_two_watches_on_one_prefix_each_see_every_event(
    store: Store, key_prefix: str
) -> None:
    async with store.watch_prefix(key_prefix) as one, store.watch_prefix(key_prefix) as two:
        await store.put(key_prefix + "k", b"v")
        assert [e.value for e in await take(one, 1)] == [b"v"]
        assert [e.value for e in await take(two, 1)] == [b"v"]


# --- leases ---------------------------------------------------------------------------------------


async def test_a_key_on_a_lease_disappears_when_the_lease_expires(
    store: Store, key_prefix: str
) -> None:
    lease = await store.grant_lease(1)
    key = key_prefix + "telemetry/f1"
    async with store.watch_prefix(key_prefix) as events:
        await store.put(key, b"alive", lease=lease)
        entry = await store.get(key)
        assert entry is not None and entry.lease_id == lease.id

        async def gone() -> bool:
            return await store.get(key) is None

        await async_wait_until(gone, timeout=DEADLINE, what="the leased key to expire")
        got = await take(events, 2)
    assert [(e.kind, e.key) for e in got] == [(EventKind.PUT, key), (EventKind.DELETE, key)]
    assert await store.get_prefix(key_prefix) == []


async def test_a_refreshed_lease_keeps_its_key_past_the_ttl(
    store: Store, key_prefix: str
) -> None:
    lease = await store.grant_lease(1)
    await store.put(key_prefix + "k", b"v", lease=lease)
    loop = asyncio.get_running_loop()
    until = loop.time() + 1.6  # well past the 1 s TTL
    while loop.time() < until:
        await store.refresh_lease(lease)
        assert await store.get(key_prefix + "k") is not None
        await asyncio.sleep(0.25)


async def test_revoking_a_lease_deletes_its_keys_at_once(store: Store, key_prefix: str) -> None:
    lease = await store.grant_lease(60)
    await store.put(key_prefix + "a", b"1", lease=lease)
    await store.put(key_prefix + "b", b"2", lease=lease)
    await store.put(key_prefix + "c", b"3")
    await store.revoke_lease(lease)
    assert [e.key for e in await store.get_prefix(key_prefix)] == [key_prefix + "c"]
    await store.revoke_lease(lease)  # revoking again is harmless


async def test_a_revoked_lease_cannot_be_refreshed_or_used(store: Store, key_prefix: str) -> None:
    lease = await store.grant_lease(60)
    await store.revoke_lease(lease)
    with pytest.raises(LeaseExpired):
        await store.refresh_lease(lease)
    with pytest.raises(LeaseExpired):
        await store.put(key_prefix + "k", b"v", lease=lease)
    assert await store.get(key_prefix + "k") is None


# --- refusals and lifecycle -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "no-leading-slash", "/nul\x00inside"])
async def test_malformed_keys_are_refused_before_reaching_the_backend(
    store: Store, key: str
) -> None:
    with pytest.raises(InvalidEntry):
        await store.put(key, b"v")
    with pytest.raises(InvalidEntry):
        await store.get(key)


async def test_a_value_that_is_not_bytes_is_refused(store: Store, key_prefix: str) -> None:
    with pytest.raises(InvalidEntry, match="bytes"):
        await store.put(key_prefix + "k", "text")  # type: ignore[arg-type]


async def test_a_lease_ttl_below_one_second_is_refused(store: Store) -> None:
    with pytest.raises(InvalidEntry):
        await store.grant_lease(0)


async def test_closing_the_store_ends_its_watches_and_refuses_further_calls(
    store: Store, key_prefix: str
) -> None:
    events = store.watch_prefix(key_prefix)
    await events.start()
    await store.close()
    async with asyncio.timeout(DEADLINE):
        assert [e async for e in events] == []
    with pytest.raises(StoreClosed):
        await store.get(key_prefix + "k")


# --- leader election ------------------------------------------------------------------------------


async def test_of_two_candidates_one_leads_and_the_other_takes_over_when_it_resigns(
    store: Store, key_prefix: str
) -> None:
    election = "solver-" + key_prefix.strip("/").replace("/", "-")
    first = await campaign(store, election, "replica-a", ttl=2)
    second = await campaign(store, election, "replica-b", ttl=2)
    try:
        assert first.is_leader and not second.is_leader
        assert await current_leader(store, election) == "replica-a"
        await first.resign()
        assert not first.is_leader
        async with asyncio.timeout(DEADLINE):
            await second.wait_elected()
        assert second.is_leader
        assert await current_leader(store, election) == "replica-b"
    finally:
        await first.resign()
        await second.resign()
    assert await current_leader(store, election) is None


async def test_a_standby_takes_over_when_the_leaders_lease_lapses(
    store: Store, key_prefix: str
) -> None:
    election = "solver-" + key_prefix.strip("/").replace("/", "-")
    crashed = await campaign(store, election, "replica-a", ttl=1)
    standby = await campaign(store, election, "replica-b", ttl=1)
    try:
        assert crashed.is_leader
        await crashed.abandon()  # stops keep-alives without revoking, as a crash would
        async with asyncio.timeout(DEADLINE):
            await standby.wait_elected()
        assert await current_leader(store, election) == "replica-b"
    finally:
        await crashed.resign()
        await standby.resign()


async def test_a_leader_keeps_leading_past_its_ttl_while_it_is_alive(
    store: Store, key_prefix: str
) -> None:
    election = "solver-" + key_prefix.strip("/").replace("/", "-")
    async with await campaign(store, election, "replica-a", ttl=1) as leader:
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.6  # well past the 1 s TTL
        while loop.time() < until:
            assert leader.is_leader
            await asyncio.sleep(0.2)
        assert await current_leader(store, election) == "replica-a"


async def test_a_leader_whose_key_is_removed_steps_down_and_a_standby_takes_over(
    store: Store, key_prefix: str
) -> None:
    election = "solver-" + key_prefix.strip("/").replace("/", "-")
    leader = await campaign(store, election, "replica-a", ttl=1)
    standby = await campaign(store, election, "replica-b", ttl=1)
    try:
        assert leader.is_leader
        await store.delete(leader.key)  # an operator forcing a failover
        async with asyncio.timeout(DEADLINE):
            await leader.wait_deposed()
            await standby.wait_elected()
        assert not leader.is_leader
        assert await current_leader(store, election) == "replica-b"
    finally:
        await leader.resign()
        await standby.resign()


# --- etcd only ------------------------------------------------------------------------------------


def test_etcd_urls_list_endpoints_in_order_with_the_default_port() -> None:
    assert parse_endpoints("etcd://10.0.0.1:2379,etcd-b,[::1]:12379/") == [
        ("10.0.0.1", 2379), ("etcd-b", 2379), ("[::1]", 12379),
    ]
    for bad in ["etcd://", "etcd://a:notaport", "etcd://a:2379,,b", "http://a:2379"]:
        with pytest.raises(InvalidStoreUrl):
            parse_endpoints(bad)


@pytest.mark.integration
async def test_etcd_store_skips_an_endpoint_that_is_down(etcd_server: str, key_prefix: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = await open_store(f"etcd://{dead},{etcd_server}")
    try:
        assert isinstance(store, EtcdStore) and store.endpoint == etcd_server
        revision = await store.put(key_prefix + "k", b"v")
        entry = await store.get(key_prefix + "k")
        assert entry is not None and entry.revision == revision
    finally:
        await store.close()


@pytest.mark.integration
async def test_etcd_watch_from_a_compacted_revision_says_so(
    etcd_server: str, key_prefix: str
) -> None:
    store = await open_store(f"etcd://{etcd_server}")
    try:
        first = await store.put(key_prefix + "k", b"1")
        latest = await store.put(key_prefix + "k", b"2")
        host, port = parse_endpoints(f"etcd://{etcd_server}")[0]
        async with aetcd.Client(host, port) as raw:
            await raw.compact(latest)
        # etcd reports compaction on the stream, so it surfaces at the first event, not start.
        with pytest.raises(RevisionCompacted) as raised:
            async with store.watch_prefix(key_prefix, start_revision=first) as events:
                async with asyncio.timeout(DEADLINE):
                    await anext(events)
        assert raised.value.compact_revision >= latest
    finally:
        await store.close()


@pytest.mark.integration
async def test_etcd_store_raises_unavailable_when_no_endpoint_answers() -> None:
    with pytest.raises(StoreUnavailable):
        await open_store(f"etcd://127.0.0.1:{free_port()}")


@pytest.mark.integration
async def test_losing_etcd_turns_calls_and_watches_into_store_unavailable(
    tmp_path: Path, key_prefix: str
) -> None:
    member = start_etcd(tmp_path)
    try:
        store = await EtcdStore.connect(parse_endpoints(f"etcd://{member.endpoint}"),
                                        call_timeout=2.0)
        try:
            await store.put(key_prefix + "k", b"v")
            async with store.watch_prefix(key_prefix) as events:
                member.kill()
                with pytest.raises(StoreUnavailable):
                    await store.get(key_prefix + "k")
                with pytest.raises(StoreUnavailable):
                    async with asyncio.timeout(DEADLINE):
                        await anext(events)
        finally:
            await store.close()
    finally:
        member.stop()


@pytest.mark.integration
async def test_a_three_member_cluster_keeps_serving_when_the_member_in_use_dies(
    tmp_path: Path, key_prefix: str
) -> None:
    cluster = await asyncio.to_thread(start_etcd_cluster, tmp_path, 3)
    try:
        store = await EtcdStore.connect(parse_endpoints(cluster.url), call_timeout=3.0)
        try:
            await store.put(key_prefix + "k", b"before")
            assert store.endpoint == cluster.members[0].endpoint
            await asyncio.to_thread(cluster.members[0].kill)

            async def survives() -> bool:
                # The first call after the loss may land mid-election on the survivors.
                await store.put(key_prefix + "k", b"after")
                return True

            await async_wait_until(survives, timeout=DEADLINE, what="a surviving member")
            entry = await store.get(key_prefix + "k")
            assert entry is not None and entry.value == b"after"
            assert store.endpoint != cluster.members[0].endpoint
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(cluster.stop)
