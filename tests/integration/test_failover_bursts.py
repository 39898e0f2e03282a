"""Many requests in flight when the factory carrying all of a route's traffic dies, against real
simulators: every one of them fails over, whatever the retry budget, because moving on from a
factory that did no work, or that outlier detection has taken out of rotation, is a re-route and
not a retry; new requests skip the dead factory at once; and the budget still refuses the retries
that would amplify load (a factory that answers 503 and stays in rotation).

The budgets here are as strict as a policy can make them (one retry in flight), so a failover
that asked for a token would show up as a client error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    MODEL,
    make_policy,
    read_stream,
    requests_seen,
    reserved_port,
    running_sidecar,
    simulators,
)
from multidict import CIMultiDict
from support import async_wait_until

from tdn.dataplane.sidecar import Sidecar
from tdn.domain import DataPlaneSettings, OutlierDetection, Route, WeightedFactory
from tdn.sim.faults import Fault, FaultMode

BURST = 24
STRICT_BUDGET = {"retry_budget_percent": 1.0, "retry_budget_min_concurrency": 1}
DEADLINE_S = 1.0
BOUND_S = 10.0  # generous: one deadline, then a fast backup, on a busy machine
HOLD_S = 5.0  # how long a stuck backup holds a retry token while other requests are made


async def post(url: str, body: dict[str, Any]) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        return r.status, CIMultiDict(r.headers), await r.json(content_type=None)


async def burst(sc: Sidecar, n: int = BURST) -> list[tuple[int, str, str]]:
    """``n`` requests at once, every third one streamed: (status, factory, attempts) each."""
    url = f"{sc.proxy_url}/chat/completions"

    async def one(i: int) -> tuple[int, str, str]:
        if i % 3 == 0:
            answer = await read_stream(url, {**CHAT_BODY, "stream": True})
            assert answer.error is None and answer.done, answer.error
            return answer.status, answer.headers["x-tdn-factory"], answer.headers[
                "x-tdn-attempts"]
        status, headers, body = await post(url, {**CHAT_BODY, "max_tokens": 8})
        assert status == 200, body
        return status, headers["x-tdn-factory"], headers["x-tdn-attempts"]

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def metrics(sc: Sidecar) -> str:
    return sc.metrics.exposition().decode()


async def test_a_burst_on_a_refused_primary_all_fails_over_without_spending_the_budget() -> None:
    with reserved_port() as closed:
        async with simulators("backup") as sims:
            policy = make_policy("v1", {"dead": f"http://127.0.0.1:{closed}/v1",
                                        "backup": sims["backup"].url},
                                 [("dead", 1.0)], [[("backup", 1.0)]],
                                 settings=DataPlaneSettings(**STRICT_BUDGET))
            async with running_sidecar(policy) as sc:
                answers = await burst(sc)
                budget = sc.proxy.retry_budget
                # Three refusals in a row eject it: the next request does not even try it.
                status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
                text = metrics(sc)
    assert {(s, f) for s, f, _ in answers} == {(200, "backup")}
    assert budget.exhausted_total == 0
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "backup", "1")
    assert ('tdn_sidecar_ejections_total{factory="dead",'
            'reason="consecutive_local_origin_failures"') in text


async def test_a_burst_on_a_hung_primary_all_fails_over_and_new_requests_skip_it() -> None:
    async with simulators("hung", "backup") as sims:
        sims["hung"].set_fault(Fault(FaultMode.HANG))
        policy = make_policy("v1", {"hung": sims["hung"].url, "backup": sims["backup"].url},
                             [("hung", 1.0)], [[("backup", 1.0)]],
                             settings=DataPlaneSettings(**STRICT_BUDGET),
                             first_byte_timeout_s=DEADLINE_S)
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            answers = await burst(sc)
            elapsed = time.monotonic() - started
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            exhausted = sc.proxy.retry_budget.exhausted_total
            ejected = sc.proxy.health.outlier.is_ejected("hung")
    assert {(s, f, a) for s, f, a in answers} == {(200, "backup", "2")}
    assert exhausted == 0
    assert elapsed < BOUND_S
    # BURST missed deadlines in a row: ejected; in any case nobody waits on it any more.
    assert ejected
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "backup", "1")
    assert requests_seen(sims["hung"]) == BURST


async def test_one_missed_deadline_sends_the_next_requests_elsewhere_at_once() -> None:
    async with simulators("slow", "backup") as sims:
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=30.0))
        policy = make_policy("v1", {"slow": sims["slow"].url, "backup": sims["backup"].url},
                             [("slow", 1.0)], [[("backup", 1.0)]],
                             first_byte_timeout_s=DEADLINE_S)
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            first = await read_stream(url, {**CHAT_BODY, "stream": True})
            later = [await read_stream(url, {**CHAT_BODY, "stream": True}) for _ in range(3)]
            health = sc.proxy.health
            suspect = health.outlier.is_suspect("slow", health.clock())
            ejected = health.outlier.is_ejected("slow")
            text = metrics(sc)
    assert (first.status, first.headers["x-tdn-factory"], first.headers["x-tdn-attempts"]) == (
        200, "backup", "2")
    assert [(a.headers["x-tdn-factory"], a.headers["x-tdn-attempts"]) for a in later] == [
        ("backup", "1")] * 3
    assert requests_seen(sims["slow"]) == 1
    # Suspected, not ejected: one slow answer is not yet proof of a broken factory.
    assert (suspect, ejected) == (True, False)
    assert 'tdn_sidecar_suspicions_total{factory="slow"' in text


async def test_a_burst_on_a_primary_that_resets_every_connection_all_fails_over() -> None:
    async with simulators("crashing", "backup") as sims:
        # Closes every connection before a response byte, as a dead factory behind an L4 proxy
        # does: the request was sent, so the first resets are retries, until three in a row
        # take it out of rotation and the rest are re-routes.
        sims["crashing"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=0))
        policy = make_policy("v1", {"crashing": sims["crashing"].url,
                                    "backup": sims["backup"].url},
                             [("crashing", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            answers = await asyncio.gather(*(post(url, {**CHAT_BODY, "max_tokens": 8})
                                             for _ in range(BURST)))
            exhausted = sc.proxy.retry_budget.exhausted_total
            text = metrics(sc)
    assert {(s, h["x-tdn-factory"]) for s, h, _ in answers} == {(200, "backup")}
    assert exhausted == 0
    assert ('tdn_sidecar_ejections_total{factory="crashing",'
            'reason="consecutive_local_origin_failures"') in text


OTHER = "qwen-2.5-7b-instruct"
THIRD = "mistral-7b-instruct"


async def test_an_exhausted_budget_refuses_a_503_retry_but_not_a_failover_from_a_dead_factory(
        ) -> None:
    with reserved_port() as closed:
        async with simulators("sick", "stuck", "hung", "backup",
                              backup={"models": (MODEL, OTHER, THIRD)},
                              hung={"models": (THIRD,)}) as sims:
            # The sick factory answers 503 and stays in rotation (failures look sporadic: it
            # would take 100 in a row to eject it), so moving on from it is a retry.
            sims["sick"].set_fault(Fault(FaultMode.ERROR, status=503))
            sims["stuck"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=HOLD_S))
            sims["hung"].set_fault(Fault(FaultMode.HANG))
            refused = Route(OTHER, "default", (WeightedFactory("dead", 1.0),),
                            ((WeightedFactory("backup", 1.0),),))
            blackholed = Route(THIRD, "default", (WeightedFactory("hung", 1.0),),
                               ((WeightedFactory("backup", 1.0),),),
                               first_byte_timeout_s=DEADLINE_S)
            settings = DataPlaneSettings(**STRICT_BUDGET,
                                         outlier=OutlierDetection(consecutive_failures=100))
            policy = make_policy(
                "v1", {"sick": sims["sick"].url, "stuck": sims["stuck"].url,
                       "dead": f"http://127.0.0.1:{closed}/v1", "hung": sims["hung"].url,
                       "backup": sims["backup"].url},
                [("sick", 1.0)], [[("stuck", 1.0)]], settings=settings,
                first_byte_timeout_s=20.0, extra_routes=(refused, blackholed))
            async with running_sidecar(policy) as sc:
                url = f"{sc.proxy_url}/chat/completions"
                budget = sc.proxy.retry_budget
                # The first request's retry (sick -> stuck) holds the only token for a while.
                holder = asyncio.create_task(post(url, CHAT_BODY))

                async def token_held() -> bool:
                    return budget.retries_in_flight == 1

                await async_wait_until(token_held, what="the first request's retry")
                amplifying = await post(url, CHAT_BODY)
                from_dead = await post(url, {**CHAT_BODY, "model": OTHER})
                # (max_tokens: a non-streamed answer's deadline includes its generation time)
                from_hung = await post(url, {**CHAT_BODY, "model": THIRD, "max_tokens": 8})
                still_held = budget.retries_in_flight
                held = await holder
    status, headers, body = amplifying
    assert (status, headers["x-tdn-retry-budget"]) == (503, "exhausted")
    assert body["error"]["code"] == "retry_budget_exhausted"
    for (status, headers, _), model in ((from_dead, OTHER), (from_hung, THIRD)):
        assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (
            200, "backup", "2"), model
        assert "x-tdn-retry-budget" not in headers
    assert still_held == 1
    assert budget.exhausted_total == 1
    assert (held[0], held[1]["x-tdn-factory"]) == (200, "stuck")


async def test_in_panic_failures_are_retries_again() -> None:
    async with simulators("sick", "stuck") as sims:
        sims["sick"].set_fault(Fault(FaultMode.ERROR, status=503))
        sims["stuck"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=HOLD_S))
        # One failure ejects; with two factories, one ejected leaves the route at 50 %: below a
        # 60 % panic threshold, so the route ignores ejections and failures are charged again.
        settings = DataPlaneSettings(**STRICT_BUDGET, outlier=OutlierDetection(
            consecutive_failures=1, panic_threshold_percent=60.0, base_ejection_s=60.0,
            probe_interval_s=30.0))
        policy = make_policy("v1", {"sick": sims["sick"].url, "stuck": sims["stuck"].url},
                             [("sick", 1.0)], [[("stuck", 1.0)]], settings=settings,
                             first_byte_timeout_s=20.0)
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            budget = sc.proxy.retry_budget
            # Ejected by its first 503, without panic yet: that failover was a re-route.
            holder = asyncio.create_task(post(url, CHAT_BODY))

            async def sick_ejected() -> bool:
                return sc.proxy.health.outlier.is_ejected("sick")

            await async_wait_until(sick_ejected, what="the sick factory's ejection")
            assert budget.retries_in_flight == 0
            # Now in panic: the ejected factory is tried again, and moving on from it is a retry.
            first_in_panic = asyncio.create_task(post(url, CHAT_BODY))

            async def token_held() -> bool:
                return budget.retries_in_flight == 1

            await async_wait_until(token_held, what="a retry in panic")
            refused = await post(url, CHAT_BODY)
            await asyncio.gather(holder, first_in_panic)
            text = metrics(sc)
    assert (refused[0], refused[1]["x-tdn-retry-budget"]) == (503, "exhausted")
    assert 'tdn_sidecar_panic_total{model="llama-3.1-8b-instruct"' in text
