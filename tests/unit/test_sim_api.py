"""The simulator's OpenAI-compatible API, exercised over real HTTP on a loopback port."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import openai
import pytest
from support import FIXTURES

from tdn.sim.server import RunningSimulator, run_simulator
from tdn.sim.settings import SimSettings
from tdn.sim.textgen import count_tokens

MODEL = "llama-3.1-8b-instruct"
FAST = SimSettings(id="sim-test", port=0, models=(MODEL, "bge-m3"), itl_ms=0.0,
                   prefill_tokens_per_s=1e6, min_output_tokens=4, max_output_tokens=12)
USER = [{"role": "user", "content": "What's the weather like in SF?"}]


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with run_simulator(FAST) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sse_events(raw: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [block[len("data: "):] for block in raw.split("\n\n") if block.startswith("data: ")]


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[str]:
    async with http.post(url, json={**body, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return sse_events(await resp.text())


async def test_chat_completion_answers_with_openai_shape_and_usage(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.url}/chat/completions",
                              {"model": MODEL, "messages": USER})
    assert status == 200
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    assert body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    words = choice["message"]["content"].split(" ")
    usage = body["usage"]
    assert usage["completion_tokens"] == len(words)
    assert usage["prompt_tokens"] == count_tokens("user: What's the weather like in SF?\n")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_same_prompt_gets_the_same_answer_from_two_simulators(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with run_simulator(replace(FAST, id="other", seed=99)) as other:
        _, a = await post(http, f"{sim.url}/chat/completions", {"model": MODEL, "messages": USER})
        _, b = await post(http, f"{other.url}/chat/completions",
                          {"model": MODEL, "messages": USER})
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


async def test_streamed_chat_sends_role_content_finish_usage_and_done(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    events = await stream(http, f"{sim.url}/chat/completions",
                          {"model": MODEL, "messages": USER,
                           "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(content)
    _, whole = await post(http, f"{sim.url}/chat/completions", {"model": MODEL, "messages": USER})
    assert "".join(content) == whole["choices"][0]["message"]["content"]


async def test_stream_without_include_usage_has_no_usage_chunk(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    events = await stream(http, f"{sim.url}/chat/completions", {"model": MODEL, "messages": USER})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_has_the_shape_of_the_recorded_openai_stream(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    recorded = sse_events((FIXTURES / "openai-chat-stream-with-usage.txt").read_text())
    ours = await stream(http, f"{sim.url}/chat/completions",
                        {"model": MODEL, "messages": USER,
                         "stream_options": {"include_usage": True}})
    for events in (recorded, ours):
        assert events[-1] == "[DONE]"
        first, finish, last = (json.loads(events[i]) for i in (0, -3, -2))
        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert finish["choices"][0]["delta"] == {}
        assert last["choices"] == []
        assert set(last["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    keys = set(json.loads(recorded[1]))
    assert keys == set(json.loads(ours[1]))
    assert set(json.loads(recorded[1])["choices"][0]) == set(json.loads(ours[1])["choices"][0])


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    for field in ("max_tokens", "max_completion_tokens"):
        status, body = await post(http, f"{sim.url}/chat/completions",
                                  {"model": MODEL, "messages": USER, field: 2})
        assert status == 200
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 2
    events = await stream(http, f"{sim.url}/chat/completions",
                          {"model": MODEL, "messages": USER, "max_tokens": 3})
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) == 1 + 3 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_stream_and_not_with_usage(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.url}/completions",
                              {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 50})
    assert status == 200
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == count_tokens("Once upon a time")
    events = await stream(http, f"{sim.url}/completions",
                          {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 50,
                           "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert text == body["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == body["usage"]


async def test_completions_default_to_sixteen_tokens_and_accept_token_ids(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(replace(FAST, min_output_tokens=40, max_output_tokens=40)) as sim:
        _, body = await post(http, f"{sim.url}/completions", {"model": MODEL, "prompt": "x"})
        assert body["usage"]["completion_tokens"] == 16
        assert body["choices"][0]["finish_reason"] == "length"
        _, ids = await post(http, f"{sim.url}/completions",
                            {"model": MODEL, "prompt": [1, 2, 3, 4, 5], "max_tokens": 1})
        assert ids["usage"]["prompt_tokens"] == 5


async def test_openai_client_works_unchanged_streamed_and_not(sim: RunningSimulator) -> None:
    client = openai.AsyncOpenAI(base_url=sim.url, api_key="unused", max_retries=0)
    try:
        reply = await client.chat.completions.create(model=MODEL, messages=USER)  # type: ignore[arg-type]
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        parts = []
        final_usage = None
        async for chunk in await client.chat.completions.create(
                model=MODEL, messages=USER, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True}):
            parts.extend(c.delta.content or "" for c in chunk.choices)
            final_usage = chunk.usage or final_usage
        assert "".join(parts) == reply.choices[0].message.content
        assert final_usage is not None and final_usage == reply.usage
        vectors = await client.embeddings.create(model="bge-m3", input=["a", "b"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
    finally:
        await client.close()


async def test_embeddings_are_deterministic_per_text_and_count_prompt_tokens(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.url}/embeddings",
                              {"model": "bge-m3", "input": ["hello world", "hello world", "bye"],
                               "dimensions": 8})
    assert status == 200
    assert body["object"] == "list"
    assert body["model"] == "bge-m3"
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[1] != vectors[2]
    assert body["usage"]["prompt_tokens"] == 2 * count_tokens("hello world") + count_tokens("bye")
    _, b64 = await post(http, f"{sim.url}/embeddings",
                        {"model": "bge-m3", "input": "hello world", "dimensions": 8,
                         "encoding_format": "base64"})
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(vectors[0], rel=1e-6)


async def test_models_are_listed_in_openai_format(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/models") as resp:
        body = await resp.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL, "bge-m3"]
    assert all(m["object"] == "model" and "created" in m and "owned_by" in m
               for m in body["data"])
    async with http.get(f"{sim.url}/models/bge-m3") as resp:
        assert (await resp.json())["id"] == "bge-m3"
    async with http.get(f"{sim.url}/models/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_health_answers_200(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.base_url}/health") as resp:
        assert resp.status == 200


async def test_prefill_request_from_vllm_tests_continues_the_assistant_message(
        http: aiohttp.ClientSession) -> None:
    request = json.loads((FIXTURES / "vllm-continue-final-message.json").read_text())
    prefix = request["messages"][-1]["content"]
    async with run_simulator(replace(FAST, models=(request["model"],))) as sim:
        status, body = await post(http, f"{sim.url}/chat/completions", request)
        assert status == 200
        continuation = body["choices"][0]["message"]["content"]
        assert continuation.startswith(" ")  # carries on from "... keeps"
        assert not continuation.startswith(prefix)
        assert prefix not in continuation
        again = await post(http, f"{sim.url}/chat/completions", request)
        assert again[1]["choices"][0]["message"]["content"] == continuation
        events = await stream(http, f"{sim.url}/chat/completions", request)
        streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                           for e in events[:-1])
        assert streamed == continuation
        echoed = await post(http, f"{sim.url}/chat/completions", {**request, "echo": True})
        assert echoed[1]["choices"][0]["message"]["content"] == prefix + continuation


async def test_prefill_needs_add_generation_prompt_false_as_in_vllm(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.url}/chat/completions",
                              {"model": MODEL, "continue_final_message": True,
                               "messages": [*USER, {"role": "assistant", "content": "It is"}]})
    assert status == 400
    assert "add_generation_prompt" in body["error"]["message"]


async def test_engine_without_prefill_support_rejects_continue_final_message(
        http: aiohttp.ClientSession) -> None:
    request = json.loads((FIXTURES / "vllm-continue-final-message.json").read_text())
    async with run_simulator(replace(FAST, models=(request["model"],),
                                     supports_prefill=False)) as sim:
        status, body = await post(http, f"{sim.url}/chat/completions", request)
        assert status == 400
        assert body["error"]["param"] == "continue_final_message"
        plain = {k: v for k, v in request.items()
                 if k not in ("continue_final_message", "add_generation_prompt")}
        assert (await post(http, f"{sim.url}/chat/completions", plain))[0] == 200


def _error_shape(body: Any) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return dict(body["error"])


async def test_malformed_json_is_a_400_in_openai_error_format(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    for path in ("/chat/completions", "/completions", "/embeddings"):
        async with http.post(f"{sim.url}{path}", data=b"{not json",
                             headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert _error_shape(await resp.json())["type"] == "invalid_request_error"
    async with http.post(f"{sim.url}/chat/completions", json=[1, 2]) as resp:
        assert resp.status == 400


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/chat/completions", {"model": MODEL}, "messages"),
    ("/chat/completions", {"model": MODEL, "messages": []}, "messages"),
    ("/chat/completions", {"model": MODEL, "messages": [{"content": "x"}]}, "messages[0]"),
    ("/chat/completions", {"model": MODEL, "messages": USER, "n": 2}, "n"),
    ("/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 0}, "max_tokens"),
    ("/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": "9"}, "max_tokens"),
    ("/chat/completions", {"model": MODEL, "messages": USER, "stream": "yes"}, "stream"),
    ("/chat/completions", {"model": MODEL, "messages": USER,
                           "stream_options": {"include_usage": True}}, "stream_options"),
    ("/chat/completions", {"model": 7, "messages": USER}, "model"),
    ("/completions", {"model": MODEL}, "prompt"),
    ("/completions", {"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
    ("/completions", {"model": MODEL, "prompt": {"text": "a"}}, "prompt"),
    ("/embeddings", {"model": MODEL}, "input"),
    ("/embeddings", {"model": MODEL, "input": []}, "input"),
    ("/embeddings", {"model": MODEL, "input": "a", "encoding_format": "hex"}, "encoding_format"),
])
async def test_bad_requests_are_400_naming_the_parameter(
        sim: RunningSimulator, http: aiohttp.ClientSession, path: str, body: dict[str, Any],
        param: str) -> None:
    status, answer = await post(http, f"{sim.url}{path}", body)
    assert status == 400
    assert _error_shape(answer)["param"] == param


async def test_negative_dimensions_get_openais_own_error(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    recorded = {e["id"]: e for e in json.loads((FIXTURES / "openai-errors.json").read_text())}
    expected = recorded["invalid_request_error_null_param_and_code"]
    status, body = await post(http, f"{sim.url}/embeddings",
                              {"model": "bge-m3", "input": "x", "dimensions": -42})
    assert status == expected["http_status"]
    assert body == expected["body"]


async def test_unknown_model_is_404_model_not_found(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    recorded = {e["id"]: e for e in json.loads((FIXTURES / "openai-errors.json").read_text())}
    for path, body in (("/chat/completions", {"model": "fake_id", "messages": USER}),
                       ("/completions", {"model": "fake_id", "prompt": "x"}),
                       ("/embeddings", {"model": "fake_id", "input": "x"})):
        status, answer = await post(http, f"{sim.url}{path}", body)
        assert status == 404
        assert answer["error"] == {**recorded["model_not_found"]["body"]["error"],
                                   "message": "The model 'fake_id' does not exist"}


async def test_prompt_beyond_max_model_len_is_context_length_exceeded(
        http: aiohttp.ClientSession) -> None:
    async with run_simulator(replace(FAST, max_model_len=100)) as sim:
        long = [{"role": "user", "content": "x" * 1000}]
        status, body = await post(http, f"{sim.url}/chat/completions",
                                  {"model": MODEL, "messages": long})
        assert status == 400
        err = _error_shape(body)
        assert (err["type"], err["param"], err["code"]) == (
            "invalid_request_error", "messages", "context_length_exceeded")
        assert "maximum context length is 100 tokens" in err["message"]
        status, body = await post(http, f"{sim.url}/chat/completions",
                                  {"model": MODEL, "messages": USER, "max_tokens": 95})
        assert status == 400
        assert "in the completion" in body["error"]["message"]
        status, body = await post(http, f"{sim.url}/completions",
                                  {"model": MODEL, "prompt": "y" * 1000})
        assert (status, body["error"]["code"]) == (400, "context_length_exceeded")
        status, _ = await post(http, f"{sim.url}/embeddings",
                               {"model": "bge-m3", "input": ["ok", "z" * 1000]})
        assert status == 400


async def test_unknown_routes_and_methods_answer_in_openai_error_format(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{sim.url}/nothing-here") as resp:
        assert resp.status == 404
        _error_shape(await resp.json())
    async with http.get(f"{sim.url}/chat/completions") as resp:
        assert resp.status == 405
        _error_shape(await resp.json())


async def test_missing_model_is_served_by_the_first_model_as_vllm_does(
        sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, f"{sim.url}/chat/completions", {"messages": USER})
    assert status == 200
    assert body["model"] == MODEL
