"""Factories' own load reports (ORCA ``endpoint-load-metrics``, as vLLM sends them) against real
simulators and a real sidecar: the sidecar asks every factory for its report, and while a
factory's latest one (at most a second old) has requests waiting, a new request whose first
candidate it is goes to the route's other primary instead. Clients never see the report."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    make_policy,
    read_stream,
    running_sidecar,
    simulators,
)
from support import async_wait_until

from tdn.domain import DataPlaneSettings

# "busy" has one slot and slow tokens: one long answer holds it, a second waits behind.
BUSY = {"max_concurrency": 1, "itl_ms": 100.0, "min_output_tokens": 40, "max_output_tokens": 40}
STREAM = {**CHAT_BODY, "stream": True, "max_tokens": 4}


async def _direct(url: str, body: dict[str, Any]) -> int:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/chat/completions", json=body) as r:
        await r.read()
        return r.status


async def test_the_simulator_reports_its_load_only_when_asked() -> None:
    async with simulators("f") as sims, aiohttp.ClientSession() as s:
        url = f"{sims['f'].url}/chat/completions"
        async with s.post(url, json=CHAT_BODY) as plain:
            assert "endpoint-load-metrics" not in plain.headers
        async with s.post(url, json=CHAT_BODY,
                          headers={"endpoint-load-metrics-format": "text"}) as text:
            report = text.headers["endpoint-load-metrics"]
        async with s.post(url, json={**CHAT_BODY, "stream": True},
                          headers={"endpoint-load-metrics-format": "json"}) as streamed:
            await streamed.read()
            json_report = streamed.headers["endpoint-load-metrics"]
    assert report.startswith("TEXT ") and "named_metrics.num_requests_waiting=0.0" in report
    assert json_report.startswith("JSON ") and '"num_requests_waiting": 0.0' in json_report


async def test_a_factory_reporting_a_queue_is_passed_over_for_the_next_request() -> None:
    async with simulators("busy", "other", "backup", busy=BUSY) as sims:
        urls = {f: sims[f].url for f in ("busy", "other", "backup")}
        # Smooth weighted round-robin picks "busy" first for the first requests; slow first
        # bytes cannot be the reason here (30 s threshold), only the load report.
        policy = make_policy("v1", urls, [("busy", 0.9), ("other", 0.1)], [[("backup", 1.0)]],
                             settings=DataPlaneSettings(slow_first_byte_s=30.0,
                                                        first_byte_timeout_s=20.0))
        holding = asyncio.create_task(_direct(sims["busy"].url, {**CHAT_BODY, "max_tokens": 40}))
        queued = asyncio.create_task(_direct(sims["busy"].url, {**CHAT_BODY, "max_tokens": 40}))

        async def one_waiting() -> bool:
            return sims["busy"].stats()["waiting"] == 1

        await async_wait_until(one_waiting, timeout=10, what="a request waiting at 'busy'")
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            health = sc.proxy.health
            # Sent to "busy": its stream's head says one request is waiting there.
            reported = asyncio.create_task(read_stream(url, STREAM))

            async def busy_reported() -> bool:
                return health.loads.busy("busy", health.clock())

            await async_wait_until(busy_reported, timeout=10, what="busy's load report")
            passed = await read_stream(url, STREAM)
            first = await reported
            metrics = sc.metrics.exposition().decode()
        assert await holding == 200 and await queued == 200
    # The reported request was not moved or cut: it queued at "busy" and got its answer.
    assert (first.status, first.headers["x-tdn-factory"], first.done) == (200, "busy", True)
    assert "endpoint-load-metrics" not in first.headers
    # The next one went to the route's other primary, in one attempt, not to the backup.
    assert (passed.status, passed.headers["x-tdn-factory"], passed.done) == (200, "other", True)
    assert passed.headers["x-tdn-attempts"] == "1"
    assert 'tdn_sidecar_busy_passed_over_total{factory="busy"' in metrics
    assert "tdn_sidecar_slow_first_byte_passed_over_total{" not in metrics
