"""Failures before the first byte, against real simulators in the matching fault mode: the next
candidate serves at once (another failure domain first), rate limits are honoured without a tight
loop, client errors are never retried on the same model, and retries stay within the budget."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    MODEL,
    make_policy,
    requests_seen,
    reserved_port,
    running_sidecar,
    simulators,
)
from multidict import CIMultiDict
from support import async_wait_until

from tdn.domain import DataPlaneSettings, Route, WeightedFactory
from tdn.sim.faults import Fault, FaultMode

BIG_MODEL = "llama-3.1-70b-instruct"


async def post(url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.json(content_type=None)


async def test_refused_factory_fails_over_at_once_to_another_failure_domain() -> None:
    with reserved_port() as closed:
        async with simulators("same-rack", "other-rack") as sims:
            urls = {"dead": f"http://127.0.0.1:{closed}/v1", "same-rack": sims["same-rack"].url,
                    "other-rack": sims["other-rack"].url}
            # By weight the backup level would try same-rack first; it shares the dead
            # factory's failure domain, so other-rack is preferred.
            policy = make_policy("v1", urls, [("dead", 1.0)],
                                 [[("same-rack", 0.7), ("other-rack", 0.3)]],
                                 domains={"dead": "eu-west/rack-1", "same-rack": "eu-west/rack-1",
                                          "other-rack": "eu-west/rack-2"})
            async with running_sidecar(policy) as sc:
                status, headers, body = await post(f"{sc.proxy_url}/chat/completions",
                                                   CHAT_BODY)
                metrics = sc.metrics.exposition().decode()
    assert status == 200
    assert headers["x-tdn-factory"] == "other-rack"
    assert headers["x-tdn-attempts"] == "2"
    assert body["choices"][0]["message"]["content"]
    assert requests_seen(sims["same-rack"]) == 0
    assert 'reason="refused"' in metrics


async def test_a_dead_primarys_share_goes_to_the_backup_not_to_the_other_primary() -> None:
    with reserved_port() as closed:
        async with simulators("small", "backup") as sims:
            # The solver sized the backup to absorb the big primary's share and left the small
            # primary no room for it: the small one must keep serving exactly its own share.
            policy = make_policy("v1", {"big": f"http://127.0.0.1:{closed}/v1",
                                        "small": sims["small"].url,
                                        "backup": sims["backup"].url},
                                 [("big", 0.75), ("small", 0.25)], [[("backup", 1.0)]])
            async with running_sidecar(policy) as sc:
                answers = [await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
                           for _ in range(40)]
    assert {status for status, _, _ in answers} == {200}
    served = [headers["x-tdn-factory"] for _, headers, _ in answers]
    assert (served.count("small"), served.count("backup")) == (10, 30)


async def test_overloaded_503_factory_fails_over_to_the_backup() -> None:
    async with simulators("sick", "healthy") as sims:
        sims["sick"].set_fault(Fault(FaultMode.ERROR, status=503))
        policy = make_policy("v1", {"sick": sims["sick"].url, "healthy": sims["healthy"].url},
                             [("sick", 1.0)], [[("healthy", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "healthy", "2")
    assert body["model"] == MODEL
    assert requests_seen(sims["sick"]) == 1


async def test_connection_reset_before_any_answer_fails_over() -> None:
    async with simulators("crashing", "healthy") as sims:
        # A non-streamed cut_stream closes the connection before any response byte.
        sims["crashing"].set_fault(Fault(FaultMode.CUT_STREAM, after_tokens=0))
        policy = make_policy("v1", {"crashing": sims["crashing"].url,
                                    "healthy": sims["healthy"].url},
                             [("crashing", 1.0)], [[("healthy", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            metrics = sc.metrics.exposition().decode()
    assert (status, headers["x-tdn-factory"]) == (200, "healthy")
    assert 'factory="crashing",model="llama-3.1-8b-instruct",reason="reset"' in metrics


async def test_429_with_retry_after_keeps_the_factory_out_for_that_long_then_uses_it_again(
        ) -> None:
    async with simulators("limited", "backup") as sims:
        limited = sims["limited"]
        limited.set_fault(Fault(FaultMode.ERROR, status=429, retry_after=1))
        policy = make_policy("v1", {"limited": limited.url, "backup": sims["backup"].url},
                             [("limited", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            health = sc.proxy.health
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (
                200, "backup", "2")
            limited.set_fault(None)  # it would answer now, but asked for a second's rest
            # Retry-After said one second: the factory is avoided for (what is left of) it.
            assert 0 < health.cooldowns.remaining("limited", health.clock()) <= 1.0
            answers = await asyncio.gather(*(post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
                                             for _ in range(3)))
            assert [h["x-tdn-factory"] for _, h, _ in answers] == ["backup"] * 3
            assert requests_seen(limited) == 1  # no tight loop: not even asked

            async def back() -> bool:
                _, h, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
                return h["x-tdn-factory"] == "limited"

            await async_wait_until(back, timeout=10, interval=0.1,
                                   what="the rate-limited factory to be used again")
            metrics = sc.metrics.exposition().decode()
    assert 'tdn_sidecar_rate_limited_total{factory="limited"' in metrics


async def test_every_factory_rate_limited_answers_429_with_retry_after_without_asking_any(
        ) -> None:
    async with simulators("only") as sims:
        sims["only"].set_fault(Fault(FaultMode.ERROR, status=429, retry_after=30))
        policy = make_policy("v1", {"only": sims["only"].url}, [("only", 1.0)])
        async with running_sidecar(policy) as sc:
            first = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            second = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    for status, headers, body in (first, second):
        assert status == 429
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert 25 <= int(headers["Retry-After"]) <= 30
    assert requests_seen(sims["only"]) == 1


def _long_prompt(tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "word " * tokens}]}


async def test_context_length_error_is_not_retried_on_the_same_model_and_reaches_the_client(
        ) -> None:
    async with simulators("small", "small-backup",
                          small={"max_model_len": 64}, **{"small-backup": {"max_model_len": 64}}
                          ) as sims:
        policy = make_policy("v1", {"small": sims["small"].url,
                                    "small-backup": sims["small-backup"].url},
                             [("small", 1.0)], [[("small-backup", 1.0)]])
        async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s, s.post(
                f"{sc.proxy_url}/chat/completions", json=_long_prompt(200)) as r:
            status, headers, raw = r.status, r.headers, await r.read()
    assert status == 400
    error = json.loads(raw)["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 64 tokens" in error["message"]
    assert headers["x-tdn-factory"] == "small"
    assert requests_seen(sims["small-backup"]) == 0


async def test_context_length_error_is_resent_to_the_routes_larger_fallback_model() -> None:
    async with simulators("small", "big", small={"max_model_len": 64},
                          big={"models": (BIG_MODEL,), "max_model_len": 8192}) as sims:
        big_route = Route(BIG_MODEL, "default", (WeightedFactory("big", 1.0),))
        policy = make_policy("v1", {"small": sims["small"].url, "big": sims["big"].url},
                             [("small", 1.0)], context_fallback_model=BIG_MODEL,
                             extra_routes=(big_route,))
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions",
                                               _long_prompt(200))
            metrics = sc.metrics.exposition().decode()
    assert status == 200
    assert headers["x-tdn-fallback-model"] == BIG_MODEL
    assert headers["x-tdn-factory"] == "big"
    assert headers["x-tdn-attempts"] == "2"
    # Accounting is the answering factory's: its model, its usage.
    assert body["model"] == BIG_MODEL
    assert body["usage"]["completion_tokens"] > 0
    assert 'fallback_model="llama-3.1-70b-instruct"' in metrics
    assert 'factory="small",model="llama-3.1-8b-instruct",site="fra-office",tenant=' not in metrics


async def test_content_policy_style_client_error_passes_through_unchanged_and_is_not_retried(
        ) -> None:
    async with simulators("picky", "backup") as sims:
        sims["picky"].set_fault(Fault(FaultMode.ERROR, status=400))
        policy = make_policy("v1", {"picky": sims["picky"].url, "backup": sims["backup"].url},
                             [("picky", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s, s.post(
                f"{sc.proxy_url}/chat/completions", json=CHAT_BODY) as r:
            status, raw = r.status, await r.read()
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "Simulated client error on factory picky"
    assert requests_seen(sims["backup"]) == 0


async def test_retries_beyond_the_retry_budget_get_the_error_marked_budget_exhausted() -> None:
    async with simulators("sick", "slow-backup") as sims:
        sims["sick"].set_fault(Fault(FaultMode.ERROR, status=503))
        # The backup holds the first request's retry in flight while the second arrives.
        sims["slow-backup"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=1.5))
        settings = DataPlaneSettings(retry_budget_percent=1.0, retry_budget_min_concurrency=1)
        policy = make_policy("v1", {"sick": sims["sick"].url,
                                    "slow-backup": sims["slow-backup"].url},
                             [("sick", 1.0)], [[("slow-backup", 1.0)]], settings=settings,
                             first_byte_timeout_s=20.0)
        async with running_sidecar(policy) as sc:
            first = asyncio.create_task(post(f"{sc.proxy_url}/chat/completions", CHAT_BODY))

            async def retry_in_flight() -> bool:
                return sc.proxy.retry_budget.retries_in_flight == 1

            await async_wait_until(retry_in_flight, what="the first request's retry")
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            first_status, first_headers, _ = await first
            metrics = sc.metrics.exposition().decode()
    assert status == 503
    assert headers["x-tdn-retry-budget"] == "exhausted"
    assert body["error"]["code"] == "retry_budget_exhausted"
    assert "sick answered HTTP 503" in body["error"]["message"]
    assert (first_status, first_headers["x-tdn-factory"]) == (200, "slow-backup")
    assert 'tdn_sidecar_retry_budget_exhausted_total{model="llama-3.1-8b-instruct"' in metrics


async def test_only_the_answering_attempt_is_metered_and_its_usage_passes_through() -> None:
    async with simulators("sick", "healthy") as sims:
        sims["sick"].set_fault(Fault(FaultMode.ERROR, status=503))
        policy = make_policy("v1", {"sick": sims["sick"].url, "healthy": sims["healthy"].url},
                             [("sick", 1.0)], [[("healthy", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            metrics = sc.metrics.exposition().decode()
            metered = dict(sc.meter.peek())
    assert status == 200
    usage = body["usage"]
    assert list(metered) == [("anonymous", "healthy", MODEL, "default")]
    totals = metered[("anonymous", "healthy", MODEL, "default")]
    assert (totals.requests, totals.prompt_tokens, totals.completion_tokens) == (
        1, usage["prompt_tokens"], usage["completion_tokens"])
    # Priced at the answering factory's prices ($1 in, $2 out per million).
    assert abs(totals.cost - (usage["prompt_tokens"] + 2 * usage["completion_tokens"]) / 1e6) \
        < 1e-12
    assert 'factory="sick",model="llama-3.1-8b-instruct",site="fra-office",tenant' not in metrics
    assert float(headers["x-tdn-overhead-ms"]) >= 0
