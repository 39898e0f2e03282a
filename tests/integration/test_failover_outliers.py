"""Outlier detection against real simulators: a factory failing in a row is ejected and skipped,
comes back after it heals (active probing for an unreachable one, well before its ejection time),
and a route with a single factory is never left with nothing (panic)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    make_policy,
    outlier,
    requests_seen,
    running_sidecar,
    sim_settings,
    simulators,
)
from multidict import CIMultiDict
from support import async_wait_until

from tdn.dataplane.sidecar import Sidecar
from tdn.sim.faults import Fault, FaultMode
from tdn.sim.server import run_simulator


async def post(url: str, body: dict[str, Any] = CHAT_BODY
               ) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, CIMultiDict(r.headers), await r.json(content_type=None)


def ejected(sc: Sidecar, factory_id: str) -> bool:
    return sc.proxy.health.outlier.is_ejected(factory_id)


async def test_factory_is_ejected_after_consecutive_failures_and_returns_after_it_heals() -> None:
    async with simulators("sick", "backup") as sims:
        sick = sims["sick"]
        sick.set_fault(Fault(FaultMode.ERROR, status=503))
        settings = outlier(consecutive_failures=3, base_ejection_s=1.0, probe_interval_s=0.2)
        policy = make_policy("v1", {"sick": sick.url, "backup": sims["backup"].url},
                             [("sick", 1.0)], [[("backup", 1.0)]], settings=settings)
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            for _ in range(3):
                status, headers, _ = await post(url)
                assert (status, headers["x-tdn-attempts"]) == (200, "2")
            assert ejected(sc, "sick")
            skipped = 0
            while ejected(sc, "sick") and skipped < 3:
                status, headers, _ = await post(url)
                # Ejected: straight to the backup, the sick factory is not even asked.
                assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (
                    200, "backup", "1")
                skipped += 1
            assert requests_seen(sick) == 3
            sick.set_fault(None)

            async def served_by_sick() -> bool:
                _, h, _ = await post(url)
                return h["x-tdn-factory"] == "sick"

            await async_wait_until(served_by_sick, timeout=15, interval=0.1,
                                   what="the healed factory to return to service")
            metrics = sc.metrics.exposition().decode()
    assert skipped > 0
    assert ('tdn_sidecar_ejections_total{factory="sick",reason="consecutive_failures",'
            'site="fra-office",tier="edge"} 1.0') in metrics
    assert 'tdn_sidecar_ejected{factory="sick",site="fra-office",tier="edge"} 0.0' in metrics


async def test_requests_in_flight_when_a_factory_is_ejected_do_not_bring_it_back() -> None:
    async with simulators("sick", "backup") as sims:
        sick = sims["sick"]
        settings = outlier(consecutive_failures=3, base_ejection_s=60.0, probe_interval_s=30.0)
        policy = make_policy("v1", {"sick": sick.url, "backup": sims["backup"].url},
                             [("sick", 1.0)], [[("backup", 1.0)]], settings=settings)
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            # Three requests it will answer well, slowly (a fault is drawn when a request
            # arrives, so they keep theirs)...
            sick.set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=1.5))
            slow = [asyncio.create_task(post(url)) for _ in range(3)]

            async def arrived() -> bool:
                return requests_seen(sick) == 3

            await async_wait_until(arrived, what="the slow requests to reach the factory")
            # ...then it breaks: three 503s in a row eject it while those are in flight.
            sick.set_fault(Fault(FaultMode.ERROR, status=503))
            for _ in range(3):
                await post(url)
            assert ejected(sc, "sick")
            served = [(await task)[1]["x-tdn-factory"] for task in slow]
            # Under load a request sent before the ejection always succeeds somewhere; if that
            # returned the factory, ejecting a partly failing factory would last milliseconds.
            still_ejected = ejected(sc, "sick")
            status, headers, _ = await post(url)
    assert served == ["sick"] * 3
    assert still_ejected
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "backup", "1")


async def test_unreachable_factory_returns_on_a_probe_well_before_its_ejection_time() -> None:
    ejection_s = 60.0
    async with simulators("backup") as sims:
        settings = outlier(consecutive_failures=2, base_ejection_s=ejection_s,
                           probe_interval_s=0.2)
        async with run_simulator(sim_settings("flappy")) as flappy:
            port = flappy.port
            policy = make_policy("v1", {"flappy": flappy.url, "backup": sims["backup"].url},
                                 [("flappy", 1.0)], [[("backup", 1.0)]], settings=settings)
        # The simulator is gone: its port refuses connections.
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            for _ in range(2):
                status, headers, _ = await post(url)
                assert (status, headers["x-tdn-factory"]) == (200, "backup")
            assert ejected(sc, "flappy")
            async with run_simulator(sim_settings("flappy", port=port)) as back:
                started = time.monotonic()

                async def served_by_flappy() -> bool:
                    _, h, _ = await post(url)
                    return h["x-tdn-factory"] == "flappy"

                await async_wait_until(served_by_flappy, timeout=15, interval=0.05,
                                       what="the restarted factory to return to service")
                returned_after = time.monotonic() - started
                assert requests_seen(back) >= 1
            metrics = sc.metrics.exposition().decode()
    # Active probing, not the 60 s ejection, brought it back.
    assert returned_after < 10.0 < ejection_s
    assert 'tdn_sidecar_probes_total{factory="flappy",result="ok"' in metrics


async def test_single_factory_route_is_never_ejected_into_having_nothing() -> None:
    async with simulators("only") as sims:
        only = sims["only"]
        only.set_fault(Fault(FaultMode.ERROR, status=503))
        settings = outlier(consecutive_failures=2, base_ejection_s=60.0, probe_interval_s=30.0)
        policy = make_policy("v1", {"only": only.url}, [("only", 1.0)], settings=settings)
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            statuses = [(await post(url))[0] for _ in range(4)]
            assert ejected(sc, "only")
            only.set_fault(None)
            # Panic routing still sends to the ejected factory, so it serves as soon as it
            # heals, not after its 60 s ejection; the success returns it to service.
            status, headers, _ = await post(url)
            metrics = sc.metrics.exposition().decode()
            still_ejected = ejected(sc, "only")
    assert statuses == [502] * 4
    assert requests_seen(only) == 5
    assert (status, headers["x-tdn-factory"]) == (200, "only")
    assert not still_ejected
    assert 'tdn_sidecar_panic_total{model="llama-3.1-8b-instruct",site="fra-office"}' in metrics


async def test_at_most_the_max_ejection_share_of_factories_is_ejected() -> None:
    async with simulators("a", "b", "c", "d") as sims:
        for sim in sims.values():
            sim.set_fault(Fault(FaultMode.ERROR, status=503))
        settings = outlier(consecutive_failures=1, base_ejection_s=60.0,
                           max_ejection_percent=50.0, probe_interval_s=30.0)
        urls = {i: s.url for i, s in sims.items()}
        policy = make_policy("v1", urls, [("a", 0.25), ("b", 0.25), ("c", 0.25), ("d", 0.25)],
                             settings=settings)
        async with running_sidecar(policy) as sc:
            for _ in range(4):
                await post(f"{sc.proxy_url}/chat/completions")
            out = [i for i in sims if ejected(sc, i)]
    assert len(out) == 2
