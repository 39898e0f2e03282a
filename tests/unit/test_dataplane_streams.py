"""Stream endings a simulator cannot produce, against fake factories: an answer that finished but
never sent [DONE] is finalised promptly (with usage when asked), an error event before any output
fails over, and the access log tells the story of a failover without a key or a prompt."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from dataplane_support import (
    CHAT_BODY,
    MODEL,
    Behaviour,
    FakeFactory,
    factories,
    make_policy,
    read_stream,
    running_sidecar,
)

from tdn.dataplane.proxy import ProxySettings
from tdn.dataplane.tenants import Tenants, TenantsError, key_digest


def event(doc: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def content(text: str, finish: str | None = None) -> bytes:
    return event({"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1,
                  "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                             "finish_reason": finish}]})


def finished_without_done(hang: bool) -> Behaviour:
    async def behaviour(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(content("Hello") + content(" there") + content("", "stop"))
        if hang:
            await asyncio.Event().wait()  # never closes, never sends [DONE]
        return response

    return behaviour


@pytest.mark.parametrize("hang", [False, True], ids=["closed", "left_open"])
async def test_stream_that_finished_without_done_is_finalised_promptly_with_usage(
        hang: bool) -> None:
    async with factories("edge-1") as f:
        f["edge-1"].behaviour = finished_without_done(hang)
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            answer = await read_stream(f"{sc.proxy_url}/chat/completions",
                                       {**CHAT_BODY, "stream": True,
                                        "stream_options": {"include_usage": True}})
            elapsed = time.monotonic() - started
    assert (answer.status, answer.done, answer.error) == (200, True, None)
    assert answer.text == "Hello there"
    assert answer.usage is not None and answer.usage["completion_tokens"] == 2
    assert answer.usage["total_tokens"] == answer.usage["prompt_tokens"] + 2
    assert answer.chunks[-1]["id"] == "chatcmpl-x"
    assert elapsed < 10.0  # well before the 30 s idle timeout


async def test_error_event_before_any_output_fails_over_to_the_backup() -> None:
    async def error_first(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event({"error": {"message": "out of KV cache", "type": "x"}}))
        return response

    async with factories("sick", "backup") as f:
        f["sick"].behaviour = error_first
        policy = make_policy("v1", {"sick": f["sick"].base_url, "backup": f["backup"].base_url},
                             [("sick", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            answer = await read_stream(f"{sc.proxy_url}/chat/completions",
                                       {**CHAT_BODY, "stream": True})
            metrics = sc.metrics.exposition().decode()
    assert (answer.status, answer.done, answer.headers["x-tdn-factory"]) == (200, True, "backup")
    assert 'reason="stream_error"' in metrics


async def test_access_log_line_records_attempts_failovers_ttft_overhead_and_tenant(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tdn.dataplane.access")

    async def overloaded(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "busy"}}, status=503)

    async with factories("sick", "backup") as f:
        f["sick"].behaviour = overloaded
        policy = make_policy("v1", {"sick": f["sick"].base_url, "backup": f["backup"].base_url},
                             [("sick", 1.0)], [[("backup", 1.0)]])
        tenants = Tenants({key_digest("sk-acme"): "acme"})
        async with running_sidecar(policy, tenants=tenants) as sc:
            await read_stream(f"{sc.proxy_url}/chat/completions", {**CHAT_BODY, "stream": True},
                              {"Authorization": "Bearer sk-acme"})
    lines = [r.getMessage() for r in caplog.records if r.name == "tdn.dataplane.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["attempts"] == 2
    assert entry["failovers"] == ["sick:status_5xx"]
    assert entry["factory"] == "backup" and entry["tenant"] == "acme"
    assert entry["completion_tokens"] == 30  # from the recorded stream's usage chunk
    assert 0 <= entry["overhead_ms"] <= entry["duration_ms"]
    assert 0 <= entry["ttft_ms"] <= entry["duration_ms"]
    assert "sk-acme" not in lines[0] and "weather" not in lines[0]


def test_tenants_file_maps_keys_or_their_digests_to_names_and_unknown_keys_to_anonymous(
        tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(f"sk-acme-1: acme\nsha256:{key_digest('sk-globex')}: globex\n")
    tenants = Tenants.from_file(path)
    assert tenants.resolve({"Authorization": "Bearer sk-acme-1"}) == "acme"
    assert tenants.resolve({"api-key": "sk-globex"}) == "globex"
    assert tenants.resolve({"Authorization": "Bearer sk-other"}) == "anonymous"
    assert tenants.resolve({}) == "anonymous"
    assert "sk-acme" not in repr(tenants)


@pytest.mark.parametrize("text", ["sk-secret-1: [acme\n", "sk-secret-1: 'bad name!'\n",
                                  "sha256:abc: acme\n", "- sk-secret-1\n"])
def test_bad_tenants_file_is_refused_without_printing_any_key(tmp_path: Path,
                                                              text: str) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    with pytest.raises(TenantsError) as caught:
        Tenants.from_file(path)
    assert "sk-secret" not in str(caught.value)
    assert str(path) in str(caught.value)


def big_answer(broken: bool) -> Behaviour:
    body = json.dumps({"id": "x", "object": "list", "data": [0.5] * 2000,
                       "usage": {"prompt_tokens": 11, "total_tokens": 11}}).encode()

    async def behaviour(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[:3000])
        await asyncio.sleep(0.05)  # the sidecar has committed: more than it holds arrived
        if broken:
            assert request.transport is not None
            request.transport.abort()
        else:
            await response.write(body[3000:])
        return response

    return behaviour


async def test_body_larger_than_the_sidecar_holds_is_relayed_as_it_comes_and_metered() -> None:
    async with factories("edge-1") as f:
        f["edge-1"].behaviour = big_answer(broken=False)
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy, proxy=ProxySettings(max_body_bytes=1024)) as sc:
            async with aiohttp.ClientSession() as s, s.post(
                    f"{sc.proxy_url}/embeddings", json={"model": MODEL, "input": "x"}) as r:
                status, body = r.status, await r.json()
            metered = dict(sc.meter.peek())
    assert status == 200
    assert len(body["data"]) == 2000
    assert metered[("anonymous", "edge-1", MODEL, "default")].prompt_tokens == 11


async def test_large_body_broken_after_it_started_drops_the_client_connection() -> None:
    async with factories("edge-1") as f:
        f["edge-1"].behaviour = big_answer(broken=True)
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy, proxy=ProxySettings(max_body_bytes=1024)) as sc, \
                aiohttp.ClientSession() as s:
            async with s.post(f"{sc.proxy_url}/embeddings",
                              json={"model": MODEL, "input": "x"}) as r:
                assert r.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await r.read()
            metered = dict(sc.meter.peek())
    assert metered == {}
