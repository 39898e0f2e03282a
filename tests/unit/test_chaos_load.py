"""The drill's client: what it records for each way an answer can end, against small OpenAI-like
servers on loopback — above all, that a stream cut short without an error is caught as a
truncated success, and one ending in an error event is not."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support import FIXTURES

from tdn.chaos.load import (
    Arrival,
    RequestRecord,
    replay_arrivals,
    run_load,
    send_one,
    synthetic_arrivals,
)
from tdn.chaos.spec import LoadSpec
from tdn.chaos.trace import TraceRequest

STREAM = (FIXTURES / "openai-chat-stream-with-usage.txt").read_bytes()
EVENTS = STREAM.split(b"\n\n")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _sse(request: web.Request, body: bytes, *, abort: bool = False) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "x-tdn-factory": "edge-fra-1", "x-tdn-attempts": "2"})
    await resp.prepare(request)
    await resp.write(body)
    if abort:
        assert request.transport is not None
        request.transport.abort()
        return resp
    await resp.write_eof()
    return resp


def _sending(body: bytes, *, abort: bool = False) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _sse(request, body, abort=abort)
    return handler


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _one(url: str, streamed: bool = True, timeout_s: float = 5.0) -> RequestRecord:
    rec = RequestRecord(id=1, t_start=0.0, streamed=streamed, max_tokens=30, prompt_words=5)
    async with aiohttp.ClientSession() as session:
        await send_one(session, url, "m", Arrival(0.0, streamed, 5, 30), rec,
                       timeout_s=timeout_s)
    return rec


async def test_a_whole_stream_is_complete_with_usage_and_routing_headers(serve: Any) -> None:
    rec = await _one(await serve(_sending(STREAM)))
    assert rec.kind == "ok" and rec.complete
    assert (rec.factory, rec.attempts, rec.status) == ("edge-fra-1", 2, 200)
    assert rec.usage_completion == 30 and rec.usage_prompt == 14
    assert rec.tokens > 0
    assert rec.ttft_s is not None and rec.total_s is not None and rec.ttft_s <= rec.total_s


async def test_a_stream_ending_cleanly_without_done_is_a_truncated_success(serve: Any) -> None:
    cut = b"\n\n".join(EVENTS[:4]) + b"\n\n"
    rec = await _one(await serve(_sending(cut)))
    assert rec.kind == "truncated_success"
    assert not rec.complete and not rec.error
    assert "[DONE]" in rec.detail and "finish_reason" in rec.detail


async def test_done_without_a_finish_reason_is_still_truncated(serve: Any) -> None:
    body = b"\n\n".join(EVENTS[:4]) + b"\n\ndata: [DONE]\n\n"
    rec = await _one(await serve(_sending(body)))
    assert rec.kind == "truncated_success"


async def test_a_stream_ending_with_an_error_event_is_a_reported_error(serve: Any) -> None:
    error = json.dumps({"error": {"message": "factory edge-fra-1 broke off", "type":
                                  "server_error"}}).encode()
    body = b"\n\n".join(EVENTS[:4]) + b"\n\ndata: " + error + b"\n\n"
    rec = await _one(await serve(_sending(body)))
    assert rec.kind == "stream_error_event" and rec.error
    assert "broke off" in rec.detail


async def test_a_dropped_connection_mid_stream_is_a_broken_stream(serve: Any) -> None:
    body = b"\n\n".join(EVENTS[:4]) + b"\n\n"
    rec = await _one(await serve(_sending(body, abort=True)))
    assert rec.kind == "stream_broken" and rec.error


async def test_status_errors_are_classified(serve: Any) -> None:
    async def fail(request: web.Request) -> web.Response:
        status = int(request.headers.get("x-status", "503"))
        return web.json_response({"error": {"message": f"failed {status}"}}, status=status)

    url = await serve(fail)
    rec = await _one(url)
    assert (rec.kind, rec.status, rec.detail) == ("http_5xx", 503, "failed 503")


async def test_a_silent_server_is_a_client_timeout(serve: Any) -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response()

    rec = await _one(await serve(hang), timeout_s=0.2)
    assert rec.kind == "timeout" and rec.error


async def test_nobody_listening_is_refused() -> None:
    from support import free_port
    rec = await _one(f"http://127.0.0.1:{free_port()}/v1/chat/completions")
    assert rec.kind == "refused"


async def test_a_non_streamed_answer_needs_its_finish_reason(serve: Any) -> None:
    answer = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(answer)

    rec = await _one(await serve(ok), streamed=False)
    assert rec.kind == "ok" and rec.usage_completion == 1 and rec.ttft_s == rec.total_s
    answer["choices"][0]["finish_reason"] = None  # type: ignore[index]
    rec = await _one(await serve(ok), streamed=False)
    assert rec.kind == "truncated_success"


def test_synthetic_arrivals_are_seeded_and_span_the_duration() -> None:
    spec = LoadSpec(rate_rps=50, duration_s=10, streaming_share=0.5, seed=7)
    first, again = synthetic_arrivals(spec), synthetic_arrivals(spec)
    assert first == again
    assert 350 < len(first) < 650
    assert all(0 <= a.at < 10 for a in first)
    assert 0.35 < sum(a.streamed for a in first) / len(first) < 0.65


def test_replayed_arrivals_keep_the_trace_s_times_and_sizes() -> None:
    trace = [TraceRequest(0.0, 100, 7), TraceRequest(0.5, 2000, 64)]
    arrivals = replay_arrivals(LoadSpec(streaming_share=1.0), trace)
    assert [(a.at, a.prompt_words, a.max_tokens, a.streamed) for a in arrivals] == [
        (0.0, 100, 7, True), (0.5, 2000, 64, True)]


async def test_run_load_records_every_request_on_schedule(serve: Any) -> None:
    url = await serve(_sending(STREAM))
    spec = LoadSpec(concurrency=4)
    arrivals = [Arrival(0.05 * i, True, 5, 10) for i in range(8)]
    records: list[RequestRecord] = []
    loop = asyncio.get_running_loop()
    await run_load(spec, url.removesuffix("/chat/completions"), arrivals, loop.time(), records)
    assert sorted(r.id for r in records) == list(range(8))
    assert all(r.kind == "ok" for r in records)
    starts = sorted(r.t_start for r in records)
    assert starts[-1] >= 0.35



