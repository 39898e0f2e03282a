"""What only the embedded store promises: durability across restarts, one owner per folder,
bounded history, and refusing garbage clearly. (The shared Store contract is tested against
both stores in tests/integration/test_store.py.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from support import async_wait_until

from tdn.store import embedded
from tdn.store.base import MAX_VALUE_BYTES, EventKind, open_store
from tdn.store.embedded import EmbeddedStore
from tdn.store.errors import InvalidEntry, InvalidStoreUrl, RevisionCompacted, StoreUnavailable
from tdn.store.sqlite_state import prefix_end


async def test_data_survives_closing_and_reopening_and_revisions_keep_increasing(
    tmp_path: Path,
) -> None:
    store = await EmbeddedStore.open(tmp_path)
    await store.put("/tdn/plans/current", b"plan-7")
    last = await store.put("/tdn/policies/site-a", b"policy")
    await store.close()

    reopened = await EmbeddedStore.open(tmp_path)
    try:
        entry = await reopened.get("/tdn/plans/current")
        assert entry is not None and entry.value == b"plan-7"
        assert [e.key for e in await reopened.get_prefix("/tdn/")] == [
            "/tdn/plans/current", "/tdn/policies/site-a",
        ]
        assert await reopened.put("/tdn/plans/current", b"plan-8") > last
    finally:
        await reopened.close()


async def test_a_leased_key_survives_a_restart_and_its_lease_can_still_be_refreshed(
    tmp_path: Path,
) -> None:
    store = await EmbeddedStore.open(tmp_path)
    lease = await store.grant_lease(30)
    await store.put("/tdn/telemetry/f1", b"alive", lease=lease)
    await store.close()

    reopened = await EmbeddedStore.open(tmp_path)
    try:
        entry = await reopened.get("/tdn/telemetry/f1")
        assert entry is not None and entry.lease_id == lease.id
        await reopened.refresh_lease(lease)
        # Lease ids are never reused, even after a restart.
        assert (await reopened.grant_lease(5)).id != lease.id
    finally:
        await reopened.close()


async def test_history_replays_across_a_restart(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path)
    first = await store.put("/k", b"1")
    await store.delete("/k")
    await store.close()

    reopened = await EmbeddedStore.open(tmp_path)
    try:
        async with reopened.watch_prefix("/", start_revision=first) as events:
            async with asyncio.timeout(5):
                got = [await anext(events), await anext(events)]
        assert [(e.kind, e.key) for e in got] == [(EventKind.PUT, "/k"), (EventKind.DELETE, "/k")]
    finally:
        await reopened.close()


async def test_a_second_open_of_the_same_folder_is_refused(tmp_path: Path) -> None:
    async with await EmbeddedStore.open(tmp_path):
        with pytest.raises(StoreUnavailable, match="already open"):
            await EmbeddedStore.open(tmp_path)
    # Once the first is closed the folder is free again.
    await (await EmbeddedStore.open(tmp_path)).close()


async def test_an_expired_lease_hides_its_keys_even_before_the_expiry_sweep_runs(
    tmp_path: Path,
) -> None:
    async with await EmbeddedStore.open(tmp_path, expiry_interval=3600) as store:
        lease = await store.grant_lease(1)
        await store.put("/tdn/telemetry/f1", b"alive", lease=lease)

        async def hidden() -> bool:
            return await store.get("/tdn/telemetry/f1") is None

        await async_wait_until(hidden, timeout=5, what="the expired lease's key to vanish")
        assert await store.get_prefix("/tdn/") == []


async def test_watching_from_a_compacted_revision_says_so(tmp_path: Path) -> None:
    async with await EmbeddedStore.open(tmp_path, history_limit=10) as store:
        first = await store.put("/k", b"0")
        for i in range(30):
            await store.put("/k", str(i).encode())
        with pytest.raises(RevisionCompacted) as raised:
            await store.watch_prefix("/", start_revision=first).start()
        assert raised.value.compact_revision > first
        # Recent history is still there.
        latest = (await store.list_prefix("/")).revision
        async with store.watch_prefix("/", start_revision=latest) as events:
            async with asyncio.timeout(5):
                assert (await anext(events)).value == b"29"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("", "must not be empty"),
        ("tdn/plans", "must start with '/'"),
        ("/a\x00b", "NUL"),
        ("/" + "k" * 2000, "limit"),
        (b"/bytes-key", "must be a str"),
        ("/\udc80", "UTF-8"),
    ],
)
async def test_garbage_keys_are_refused_with_the_reason(
    tmp_path: Path, key: object, reason: str
) -> None:
    async with await EmbeddedStore.open(tmp_path) as store:
        with pytest.raises(InvalidEntry, match=reason):
            await store.put(key, b"v")  # type: ignore[arg-type]
        assert (await store.list_prefix("/")).entries == ()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a str", "must be bytes"),
        (None, "must be bytes"),
        (bytearray(b"x"), "must be bytes"),
        (b"x" * (MAX_VALUE_BYTES + 1), "limit"),
    ],
)
async def test_garbage_values_are_refused_with_the_reason(
    tmp_path: Path, value: object, reason: str
) -> None:
    async with await EmbeddedStore.open(tmp_path) as store:
        with pytest.raises(InvalidEntry, match=reason):
            await store.put("/k", value)  # type: ignore[arg-type]
        with pytest.raises(InvalidEntry, match=reason):
            await store.compare_and_put("/k", value, 0)  # type: ignore[arg-type]
        assert await store.get("/k") is None


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True, "5"])
async def test_garbage_lease_ttls_are_refused(tmp_path: Path, ttl: object) -> None:
    async with await EmbeddedStore.open(tmp_path) as store:
        with pytest.raises(InvalidEntry, match="TTL"):
            await store.grant_lease(ttl)  # type: ignore[arg-type]


async def test_open_store_reads_bare_paths_and_embedded_urls_as_the_embedded_store(
    tmp_path: Path,
) -> None:
    for url in [str(tmp_path / "bare"), f"embedded://{tmp_path / 'url'}"]:
        store = await open_store(url)
        try:
            assert isinstance(store, EmbeddedStore)
            await store.put("/k", b"v")
        finally:
            await store.close()
    assert (tmp_path / "bare" / "state.db").exists()
    assert (tmp_path / "url" / "state.db").exists()


@pytest.mark.parametrize("url", ["redis://localhost:6379", "embedded://", ""])
async def test_open_store_refuses_urls_it_cannot_open(url: str) -> None:
    with pytest.raises(InvalidStoreUrl):
        await open_store(url)


async def test_a_write_cancelled_while_queued_leaves_no_trace_in_data_or_watches(
    tmp_path: Path,
) -> None:
    async with await EmbeddedStore.open(tmp_path) as store:
        async with store.watch_prefix("/") as events:
            # Hold the worker thread so the write is still queued when its caller is cancelled.
            release = threading.Event()
            store._executor.submit(release.wait)
            writer = asyncio.ensure_future(store.put("/cancelled", b"v"))
            await asyncio.sleep(0)  # let the writer queue its job
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer
            release.set()
            await store.put("/next", b"v")
            async with asyncio.timeout(5):
                event = await anext(events)
        assert event.key == "/next"
        assert await store.get("/cancelled") is None


async def test_a_watch_that_falls_too_far_behind_is_cut_off_with_store_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "WATCH_BACKLOG_LIMIT", 5)
    async with await EmbeddedStore.open(tmp_path) as store, store.watch_prefix("/") as events:
        for i in range(10):
            await store.put("/k", str(i).encode())
        with pytest.raises(StoreUnavailable, match="fell over 5 events behind"):
            await anext(events)


def test_prefix_ranges_cover_exactly_the_keys_under_the_prefix() -> None:
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("/\U0010ffff") == "0"
    assert prefix_end("/\ud7ff") == "/\ue000"
    assert prefix_end("\U0010ffff") is None
