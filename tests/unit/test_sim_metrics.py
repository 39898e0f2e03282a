"""The simulator's /metrics: vLLM's names and labels, and values that follow the traffic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import FIXTURES, async_wait_until

from tdn.sim.faults import Fault, FaultMode
from tdn.sim.server import RunningSimulator, run_simulator
from tdn.sim.settings import SimSettings

MODEL = "llama-3.1-8b-instruct"
FAST = SimSettings(id="sim-metrics", port=0, models=(MODEL, "second-model"), itl_ms=0.0,
                   prefill_tokens_per_s=1e6, min_output_tokens=6, max_output_tokens=6)
USER = [{"role": "user", "content": "hello there"}]
REQUIRED = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def scrape(http: aiohttp.ClientSession, sim: RunningSimulator) -> dict[str, float]:
    """Every sample as ``name{label=value,...}`` (labels sorted, engine/model omitted)."""
    async with http.get(f"{sim.base_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())
                             if k not in ("engine", "model_name"))
            samples[f"{s.name}{{{extra}}}"] = s.value
    return samples


async def test_metrics_parse_with_vllm_names_types_and_labels(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(FAST) as sim, http.get(f"{sim.base_url}/metrics") as resp:
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in REQUIRED.items():
        assert families[name].type == kind, name
        for sample in families[name].samples:
            if sample.name.endswith("_created"):
                continue
            # One engine; every series names the first served model, as vLLM does.
            assert sample.labels["engine"] == "0"
            assert sample.labels["model_name"] == MODEL
    reasons = {s.labels["finished_reason"] for s in families["vllm:request_success"].samples}
    assert {"stop", "length", "abort"} <= reasons


async def test_every_exported_family_matches_the_vllm_fixture_in_type_and_labels(
        http: aiohttp.ClientSession) -> None:
    golden = {f.name: f for f in text_string_to_metric_families(
        (FIXTURES / "vllm-metrics.txt").read_text())}
    async with run_simulator(FAST) as sim, http.get(f"{sim.base_url}/metrics") as resp:
        ours = list(text_string_to_metric_families(await resp.text()))
    for family in ours:
        assert family.name in golden, family.name
        assert family.type == golden[family.name].type
        assert family.documentation == golden[family.name].documentation
        golden_labels = {frozenset(s.labels) for s in golden[family.name].samples}
        assert {frozenset(s.labels) for s in family.samples} <= golden_labels
        golden_le = {s.labels.get("le") for s in golden[family.name].samples}
        assert {s.labels.get("le") for s in family.samples} <= golden_le


async def test_token_counters_and_histograms_follow_served_requests(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(FAST) as sim:
        prompt_total = 0
        for max_tokens in (None, 2):
            body: dict[str, object] = {"model": MODEL, "messages": USER}
            if max_tokens:
                body["max_tokens"] = max_tokens
            async with http.post(f"{sim.url}/chat/completions", json=body) as resp:
                prompt_total += (await resp.json())["usage"]["prompt_tokens"]
        m = await scrape(http, sim)
    assert m["vllm:prompt_tokens_total{}"] == prompt_total
    assert m["vllm:generation_tokens_total{}"] == 6 + 2
    assert m["vllm:request_success_total{finished_reason=stop}"] == 1
    assert m["vllm:request_success_total{finished_reason=length}"] == 1
    assert m["vllm:time_to_first_token_seconds_count{}"] == 2
    assert m["vllm:e2e_request_latency_seconds_count{}"] == 2
    assert m["vllm:inter_token_latency_seconds_count{}"] == 5 + 1
    assert m["vllm:num_requests_running{}"] == 0
    assert m["vllm:kv_cache_usage_perc{}"] == 0


async def read_event(resp: aiohttp.ClientResponse) -> str:
    """The next SSE data payload of a streamed response."""
    while True:
        line = (await resp.content.readline()).decode()
        if line.startswith("data: "):
            return line[len("data: "):].strip()
        assert line, "stream ended"


async def test_waiting_queue_forms_beyond_max_concurrency_and_drains_in_metrics(
        http: aiohttp.ClientSession) -> None:
    settings = replace(FAST, max_concurrency=1, kv_capacity_tokens=1000)
    async with run_simulator(settings) as sim:
        # Request A takes the only slot and holds it: its stream stalls after one token.
        sim.set_fault(Fault(mode=FaultMode.STALL_MID_STREAM, after_tokens=1, seconds=60))
        holder = await http.post(f"{sim.url}/chat/completions",
                                 json={"model": MODEL, "messages": USER, "stream": True})
        assert json.loads(await read_event(holder))["choices"][0]["delta"]["role"] == "assistant"
        await read_event(holder)
        sim.set_fault(None)

        queued = [asyncio.create_task(http.post(f"{sim.url}/chat/completions",
                                                json={"model": MODEL, "messages": USER}))
                  for _ in range(2)]

        async def two_waiting() -> bool:
            m = await scrape(http, sim)
            return (m["vllm:num_requests_waiting{}"], m["vllm:num_requests_running{}"]) == (2, 1)

        await async_wait_until(two_waiting, what="two requests waiting behind one running")
        m = await scrape(http, sim)
        assert 0 < m["vllm:kv_cache_usage_perc{}"] < 1

        holder.close()  # the client leaves: the engine aborts A and the queue drains
        for task in queued:
            resp = await task
            assert resp.status == 200
            resp.release()
        m = await scrape(http, sim)
        assert (m["vllm:num_requests_waiting{}"], m["vllm:num_requests_running{}"]) == (0, 0)
        assert m["vllm:request_success_total{finished_reason=abort}"] == 1
        assert m["vllm:request_success_total{finished_reason=stop}"] == 2
        assert m["vllm:request_queue_time_seconds_count{}"] == 3
        assert sim.stats()["aborted"] == 1


async def test_two_simulators_in_one_process_keep_separate_metrics(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(FAST) as a, run_simulator(replace(FAST, id="b")) as b:
        async with http.post(f"{a.url}/chat/completions",
                             json={"model": MODEL, "messages": USER}) as resp:
            assert resp.status == 200
        assert (await scrape(http, a))["vllm:request_success_total{finished_reason=stop}"] == 1
        assert (await scrape(http, b))["vllm:request_success_total{finished_reason=stop}"] == 0
