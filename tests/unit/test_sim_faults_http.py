"""Each fault mode, as a client of the simulator observes it, and switching faults at run time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import async_wait_until

from tdn.sim.faults import Fault, FaultMode, parse_fault_spec
from tdn.sim.server import RunningSimulator, run_simulator
from tdn.sim.settings import SimSettings

MODEL = "llama-3.1-8b-instruct"
FAST = SimSettings(id="sim-faults", port=0, itl_ms=0.0, prefill_tokens_per_s=1e6,
                   min_output_tokens=8, max_output_tokens=8)
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "tell me about faults"}]}
# Long enough that no test waits for it: a client timeout or the fault being lifted ends it.
FOREVER = 60.0


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(FAST) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def set_fault(http: aiohttp.ClientSession, sim: RunningSimulator,
                    fault: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{sim.base_url}/admin/fault", json=fault) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def healthy_content(http: aiohttp.ClientSession, sim: RunningSimulator) -> str:
    async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        content: str = (await resp.json())["choices"][0]["message"]["content"]
        return content


async def read_stream(resp: aiohttp.ClientResponse) -> tuple[list[str], BaseException | None]:
    """SSE data payloads received before the stream ended, and how it ended (None: cleanly)."""
    events: list[str] = []
    try:
        async for line in resp.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                events.append(text[len("data: "):])
    except (aiohttp.ClientError, TimeoutError) as exc:
        return events, exc
    return events, None


def content_of(events: list[str]) -> str:
    return "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events if e != "[DONE]")


async def test_error_fault_answers_the_status_with_retry_after_and_an_openai_body(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "error", "status": 503, "retry_after": 2})
    async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "server_error"
    async with http.post(f"{sim.url}/embeddings", json={"input": "x"}) as resp:
        assert resp.status == 503


async def test_error_fault_without_retry_after_sends_no_header(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "error", "status": 500})
    async with http.post(f"{sim.url}/completions", json={"prompt": "x"}) as resp:
        assert resp.status == 500
        assert "Retry-After" not in resp.headers


async def test_429_fault_is_a_rate_limit_error_to_the_openai_client() -> None:
    settings = replace(FAST, fault=parse_fault_spec("error:status=429,retry_after=1"))
    async with run_simulator(settings) as sim:
        client = openai.AsyncOpenAI(base_url=sim.url, api_key="unused", max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        finally:
            await client.close()
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["Retry-After"] == "1"


async def test_hang_holds_the_request_until_the_client_gives_up_and_the_server_stays_up(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "hang"})
    with pytest.raises(TimeoutError):
        async with http.post(f"{sim.url}/chat/completions", json=CHAT,
                             timeout=aiohttp.ClientTimeout(total=0.3)):
            pytest.fail("a hung factory must not answer")

    async def client_gone() -> bool:
        return sim.stats()["in_flight"] == 0

    await async_wait_until(client_gone, what="the hung request to end with its client")
    async with http.get(f"{sim.base_url}/health") as resp:
        assert resp.status == 200
    await set_fault(http, sim, {"mode": "none"})
    assert await healthy_content(http, sim)


async def test_stall_first_token_withholds_even_the_headers(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "stall_first_token", "seconds": FOREVER})
    for stream in (True, False):
        with pytest.raises(TimeoutError):
            async with http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": stream},
                                 timeout=aiohttp.ClientTimeout(total=0.3)):
                pytest.fail("no byte may arrive while the first token stalls")


async def test_a_short_first_token_stall_still_delivers_the_full_answer(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    expected = await healthy_content(http, sim)
    await set_fault(http, sim, {"mode": "stall_first_token", "seconds": 0.05})
    assert await healthy_content(http, sim) == expected
    assert sim.stats()["faults_injected"] == {"stall_first_token": 1}


async def test_stall_mid_stream_goes_idle_after_n_tokens(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "stall_mid_stream", "after_tokens": 3,
                                "seconds": FOREVER})
    async with http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": True},
                         timeout=aiohttp.ClientTimeout(sock_read=0.3)) as resp:
        events, ended = await read_stream(resp)
    assert isinstance(ended, TimeoutError)
    assert len(events) == 1 + 3  # role chunk, then three tokens, then silence
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)


async def test_a_short_mid_stream_stall_resumes_and_completes(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    expected = await healthy_content(http, sim)
    await set_fault(http, sim, {"mode": "stall_mid_stream", "after_tokens": 2, "seconds": 0.05})
    async with http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": True}) as resp:
        events, ended = await read_stream(resp)
    assert ended is None
    assert events[-1] == "[DONE]"
    assert content_of(events) == expected


async def test_cut_stream_ends_without_finish_reason_and_without_done(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "cut_stream", "after_tokens": 3})
    async with http.post(f"{sim.url}/chat/completions",
                         json={**CHAT, "stream": True,
                               "stream_options": {"include_usage": True}}) as resp:
        assert resp.status == 200
        events, ended = await read_stream(resp)
    assert isinstance(ended, aiohttp.ClientPayloadError)  # the chunked body never finished
    assert "[DONE]" not in events
    assert len(events) == 1 + 3
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)
    assert sim.stats()["aborted"] == 1


async def test_cut_stream_on_a_non_streamed_request_drops_the_connection(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "cut_stream", "after_tokens": 2})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(f"{sim.url}/chat/completions", json=CHAT):
            pytest.fail("a cut connection has no response")


async def scrape_itl_buckets(http: aiohttp.ClientSession,
                             sim: RunningSimulator) -> dict[str, float]:
    async with http.get(f"{sim.base_url}/metrics") as resp:
        families = text_string_to_metric_families(await resp.text())
    family = next(f for f in families if f.name == "vllm:inter_token_latency_seconds")
    return {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}


async def test_slow_tokens_override_the_inter_token_latency(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    body = {**CHAT, "max_tokens": 3}
    async with http.post(f"{sim.url}/chat/completions", json=body) as resp:
        assert resp.status == 200
    await set_fault(http, sim, {"mode": "slow_tokens", "itl_ms": 30})
    async with http.post(f"{sim.url}/chat/completions", json={**body, "stream": True}) as resp:
        events, ended = await read_stream(resp)
    assert ended is None and events[-1] == "[DONE]"
    buckets = await scrape_itl_buckets(http, sim)
    # Two gaps of 0 ms from the healthy request, two of 30 ms from the slowed one.
    assert buckets["0.01"] == 2
    assert buckets["0.025"] == 2
    assert buckets["0.05"] == 4


async def test_malformed_chunk_sends_one_non_json_data_line_then_continues(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    expected = await healthy_content(http, sim)
    await set_fault(http, sim, {"mode": "malformed_chunk", "after_tokens": 2})
    async with http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": True}) as resp:
        events, ended = await read_stream(resp)
    assert ended is None
    bad = []
    for i, event in enumerate(events[:-1]):
        try:
            json.loads(event)
        except ValueError:
            bad.append(i)
    assert bad == [1 + 2]
    assert events[-1] == "[DONE]"
    assert content_of(events[:3] + events[4:]) == expected


async def test_malformed_chunk_with_then_stop_ends_the_stream_after_it(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "malformed_chunk", "after_tokens": 1, "then": "stop"})
    async with http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": True}) as resp:
        events, ended = await read_stream(resp)
    assert ended is None  # the HTTP body ends properly; the SSE stream is what is broken
    assert len(events) == 1 + 1 + 1
    assert "[DONE]" not in events
    with pytest.raises(ValueError):
        json.loads(events[-1])


async def test_malformed_chunk_on_a_non_streamed_request_sends_broken_json(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    await set_fault(http, sim, {"mode": "malformed_chunk"})
    async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
        assert resp.status == 200
        text = await resp.text()
    with pytest.raises(ValueError):
        json.loads(text)


async def test_probability_faults_the_same_seeded_share_of_requests(
        http: aiohttp.ClientSession) -> None:
    fault = Fault(mode=FaultMode.ERROR, status=503, probability=0.5)
    patterns = []
    for _ in range(2):
        async with run_simulator(replace(FAST, fault=fault, seed=5)) as sim:
            statuses = []
            for _ in range(24):
                async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
                    statuses.append(resp.status)
            patterns.append(statuses)
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 503}


async def test_faults_switch_at_run_time_through_the_admin_api(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.base_url}/admin/fault") as resp:
        assert await resp.json() == {"mode": "none"}
    shown = await set_fault(http, sim, {"mode": "error", "status": 502})
    assert shown == {"mode": "error", "status": 502, "probability": 1.0}
    async with http.get(f"{sim.base_url}/admin/fault") as resp:
        assert await resp.json() == shown
    async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
        assert resp.status == 502
    async with http.delete(f"{sim.base_url}/admin/fault") as resp:
        assert (await resp.json())["mode"] == "none"
    assert await healthy_content(http, sim)
    stats = sim.stats()
    assert stats["requests_total"] == 2
    assert stats["errors"] == 1
    assert stats["completed"] == 1
    assert stats["faults_injected"] == {"error": 1}


@pytest.mark.parametrize("body", [
    {"mode": "meltdown"},
    {"mode": "hang", "after_tokens": 3},
    {"mode": "error", "status": 99},
    ["hang"],
])
async def test_invalid_faults_are_refused_and_the_current_one_stays(
        sim: RunningSimulator, http: aiohttp.ClientSession, body: Any) -> None:
    await set_fault(http, sim, {"mode": "slow_tokens", "itl_ms": 1})
    async with http.post(f"{sim.base_url}/admin/fault", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"]
    async with http.post(f"{sim.base_url}/admin/fault", data=b"{oops") as resp:
        assert resp.status == 400
    assert sim.fault == Fault(mode=FaultMode.SLOW_TOKENS, itl_ms=1.0)


async def test_set_fault_in_process_applies_to_the_next_request(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.set_fault(Fault(mode=FaultMode.ERROR, status=504))
    async with http.post(f"{sim.url}/chat/completions", json=CHAT) as resp:
        assert resp.status == 504
    sim.set_fault(None)
    assert await healthy_content(http, sim)


async def test_a_client_leaving_a_queued_request_frees_nothing_it_did_not_hold(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(replace(FAST, max_concurrency=1)) as sim:
        sim.set_fault(Fault(mode=FaultMode.STALL_MID_STREAM, after_tokens=0, seconds=FOREVER))
        holder = await http.post(f"{sim.url}/chat/completions", json={**CHAT, "stream": True})
        sim.set_fault(None)
        waiter = asyncio.create_task(http.post(f"{sim.url}/chat/completions", json=CHAT))

        async def queued() -> bool:
            return sim.stats()["waiting"] == 1

        await async_wait_until(queued, what="the second request to queue")
        waiter.cancel()  # the client gives up: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await waiter

        async def withdrawn() -> bool:
            return sim.stats()["waiting"] == 0

        await async_wait_until(withdrawn, what="the queued request to leave the queue")
        assert sim.stats()["running"] == 1  # the holder still holds its slot
        holder.close()

        async def idle() -> bool:
            return sim.stats()["running"] == 0

        await async_wait_until(idle, what="the slot to be released")
        assert await healthy_content(http, sim)


async def test_stopping_the_simulator_disconnects_a_hung_client_instead_of_waiting_for_it(
        http: aiohttp.ClientSession) -> None:
    settings = replace(FAST, fault=Fault(mode=FaultMode.HANG), shutdown_grace_s=0.05)
    async with run_simulator(settings) as sim:
        hung = asyncio.create_task(http.post(f"{sim.url}/chat/completions", json=CHAT))

        async def in_flight() -> bool:
            return sim.stats()["in_flight"] == 1

        await async_wait_until(in_flight, what="the hung request to arrive")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await hung
