"""The sidecar proxy, end to end in one process: OpenAI traffic relayed intact and unbuffered,
failover before the first byte, errors in OpenAI's shape, weights honoured, keys kept apart."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import openai
import pytest
from aiohttp import web
from dataplane_support import (
    CHAT_BODY,
    FIXTURES,
    MODEL,
    STREAM_FIXTURE,
    FakeFactory,
    answer_503,
    factories,
    make_policy,
    reserved_port,
    running_sidecar,
    sse_events,
)
from multidict import CIMultiDict
from support import async_wait_until

from tdn.dataplane.credentials import Credentials
from tdn.domain import Route, Tier, WeightedFactory


def content_chunk(text: str, finish: str | None = None) -> bytes:
    """One OpenAI chat stream event carrying ``text``."""
    doc = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


CHUNK_1 = content_chunk("Hel")
CHUNK_2 = content_chunk("lo", finish="stop")


async def post(url: str, body: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(
        url, data=raw if raw is not None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def test_non_streamed_chat_completion_is_relayed_intact_with_routing_headers() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi from edge-1"
    assert headers["x-tdn-factory"] == "edge-1"
    assert headers["x-tdn-tier"] == "edge"
    assert headers["x-tdn-attempts"] == "1"
    assert headers["x-tdn-upstream-request-id"] == "upstream-edge-1"
    seen = f["edge-1"].requests[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.body == json.dumps(CHAT_BODY).encode()


async def test_streamed_chat_completion_relays_the_recorded_openai_sse_body_byte_for_byte() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(
                f"{sc.proxy_url}/chat/completions",
                {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert "Content-Encoding" not in headers
    assert body == STREAM_FIXTURE
    assert body.endswith(b"data: [DONE]\n\n")


async def test_stream_is_metered_from_a_usage_chunk_the_client_did_not_ask_for_and_never_sees(
        ) -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            status, _, body = await post(f"{sc.proxy_url}/chat/completions",
                                         {**CHAT_BODY, "stream": True})
            metrics = sc.metrics.exposition().decode()
    assert status == 200
    sent = json.loads(f["edge-1"].requests[0].body)
    assert sent["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {**CHAT_BODY,
                                                                        "stream": True}
    fixture_events = sse_events(STREAM_FIXTURE)
    usage_chunk = next(e for e in fixture_events if b'"usage"' in e)
    assert sse_events(body) == [e for e in fixture_events if e != usage_chunk]
    assert ('tdn_sidecar_tokens_total{factory="edge-1",model="llama-3.1-8b-instruct",'
            'site="fra-office",tenant="anonymous",tier="edge",type="completion"} 30.0') in metrics


async def test_sse_chunk_reaches_the_client_while_the_upstream_still_holds_the_rest() -> None:
    release = asyncio.Event()

    async def gated(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(CHUNK_1)
        await release.wait()
        await response.write(CHUNK_2 + b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async with factories("edge-1") as f:
        f["edge-1"].behaviour = gated
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s, s.post(
                f"{sc.proxy_url}/chat/completions", json={**CHAT_BODY, "stream": True}) as r:
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
            # The upstream has not sent chunk 2 yet: it waits on us.
            assert first == CHUNK_1
            assert not release.is_set()
            release.set()
            rest = await r.read()
    assert rest == CHUNK_2 + b"data: [DONE]\n\n"


async def test_refused_primary_fails_over_to_the_backup_within_the_same_request() -> None:
    with reserved_port() as closed:  # nothing listens there: connection refused
        async with factories("backup") as f:
            policy = make_policy("v1", {"primary": f"http://127.0.0.1:{closed}/v1",
                                        "backup": f["backup"].base_url},
                                 [("primary", 1.0)], [[("backup", 1.0)]],
                                 tiers={"backup": Tier.CENTER})
            async with running_sidecar(policy) as sc:
                status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
                metrics = sc.metrics.exposition().decode()
    assert status == 200
    assert headers["x-tdn-factory"] == "backup"
    assert headers["x-tdn-tier"] == "center"
    assert headers["x-tdn-attempts"] == "2"
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi from backup"
    assert ('tdn_sidecar_failovers_total{factory="primary",model="llama-3.1-8b-instruct",'
            'reason="refused",site="fra-office",tier="edge"} 1.0') in metrics


async def test_upstream_503_before_any_body_fails_over_to_the_next_candidate() -> None:
    async with factories("sick", "healthy") as f:
        f["sick"].behaviour = answer_503
        policy = make_policy("v1", {"sick": f["sick"].base_url, "healthy": f["healthy"].base_url},
                             [("sick", 1.0)], [[("healthy", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert status == 200
    assert headers["x-tdn-factory"] == "healthy"
    assert headers["x-tdn-attempts"] == "2"
    assert len(f["sick"].requests) == 1


async def test_connection_dropped_before_the_first_body_byte_fails_over() -> None:
    async def drop(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    async with factories("dropper", "healthy") as f:
        f["dropper"].behaviour = drop
        policy = make_policy("v1", {"dropper": f["dropper"].base_url,
                                    "healthy": f["healthy"].base_url},
                             [("dropper", 1.0)], [[("healthy", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "healthy", "2")


async def breaking_stream(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for event in sse_events(STREAM_FIXTURE)[:3]:
        await response.write(event + b"\n\n")
    await response.write(b'data: {"id":"chatcmpl-half')  # then the factory dies mid-event
    assert request.transport is not None
    request.transport.abort()
    return response


async def test_stream_broken_midway_ends_with_an_sse_error_event_not_a_clean_end() -> None:
    async with factories("flaky", "backup") as f:
        f["flaky"].behaviour = breaking_stream
        policy = make_policy("v1", {"flaky": f["flaky"].base_url,
                                    "backup": f["backup"].base_url},
                             [("flaky", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions",
                                               {**CHAT_BODY, "stream": True})
    assert status == 200
    assert headers["x-tdn-factory"] == "flaky"
    events = sse_events(body)
    assert events[:3] == sse_events(STREAM_FIXTURE)[:3]
    last = json.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "upstream_stream_broken"
    assert "flaky" in last["error"]["message"]
    assert b"[DONE]" not in body
    # Once bytes reached the client, the backup is never asked.
    assert f["backup"].requests == []


async def short_body(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b'{"id": "chatcmpl-1", "choices": [')
    assert request.transport is not None
    request.transport.abort()
    return response


async def test_non_streamed_body_broken_midway_goes_to_the_backup_since_the_client_saw_nothing(
        ) -> None:
    async with factories("flaky", "backup") as f:
        f["flaky"].behaviour = short_body
        policy = make_policy("v1", {"flaky": f["flaky"].base_url,
                                    "backup": f["backup"].base_url},
                             [("flaky", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "backup", "2")
    assert json.loads(body)["choices"][0]["message"]["content"] == "hi from backup"


async def test_non_streamed_body_broken_midway_is_never_delivered_as_complete() -> None:
    async with factories("flaky") as f:
        f["flaky"].behaviour = short_body
        policy = make_policy("v1", {"flaky": f["flaky"].base_url}, [("flaky", 1.0)])
        async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s:
            async with s.post(f"{sc.proxy_url}/chat/completions", json=CHAT_BODY) as r:
                status, error = r.status, (await r.json())["error"]
            # The sidecar keeps serving.
            async with s.get(f"{sc.proxy_url}/models") as r:
                assert r.status == 200
    assert status == 502
    assert error["code"] == "upstream_unavailable"
    assert "flaky broke off its answer" in error["message"]


async def test_client_leaving_mid_stream_closes_the_upstream_request_at_once() -> None:
    upstream_requests: list[web.Request] = []
    never = asyncio.Event()

    async def held_open(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        upstream_requests.append(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(CHUNK_1)
        await never.wait()  # a long generation
        return response

    async def upstream_closed() -> bool:
        transport = upstream_requests[0].transport
        return transport is None or transport.is_closing()

    async with factories("slow") as f:
        f["slow"].behaviour = held_open
        policy = make_policy("v1", {"slow": f["slow"].base_url}, [("slow", 1.0)])
        async with running_sidecar(policy) as sc:
            async with aiohttp.ClientSession() as s, s.post(
                    f"{sc.proxy_url}/chat/completions", json={**CHAT_BODY, "stream": True}) as r:
                await r.content.readuntil(b"\n\n")
            await async_wait_until(upstream_closed, what="the upstream request to be closed")
            never.set()
            metrics = sc.metrics.exposition().decode()
    assert 'outcome="client_gone"' in metrics


async def test_openai_sdk_raises_instead_of_returning_a_truncated_stream() -> None:
    async with factories("flaky") as f:
        f["flaky"].behaviour = breaking_stream
        policy = make_policy("v1", {"flaky": f["flaky"].base_url}, [("flaky", 1.0)])
        async with running_sidecar(policy) as sc:
            client = openai.AsyncOpenAI(base_url=sc.proxy_url, api_key="tenant-key",
                                        max_retries=0)
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
            received: list[str] = []
            with pytest.raises(openai.APIError):
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
            await client.close()
    assert received  # some tokens arrived before the break


async def test_primary_weights_split_traffic_in_proportion() -> None:
    async with factories("big", "small") as f:
        policy = make_policy("v1", {"big": f["big"].base_url, "small": f["small"].base_url},
                             [("big", 0.75), ("small", 0.25)])
        async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s:
            for _ in range(200):
                async with s.post(f"{sc.proxy_url}/chat/completions", json=CHAT_BODY) as r:
                    assert r.status == 200
    # Smooth weighted round-robin is exact over whole cycles of four requests.
    assert (len(f["big"].requests), len(f["small"].requests)) == (150, 50)


async def test_traffic_class_header_selects_the_route_for_that_class() -> None:
    async with factories("batch-f", "default-f") as f:
        batch = Route(MODEL, "batch", (WeightedFactory("batch-f", 1.0),))
        policy = make_policy("v1", {"batch-f": f["batch-f"].base_url,
                                    "default-f": f["default-f"].base_url},
                             [("default-f", 1.0)], extra_routes=(batch,))
        async with running_sidecar(policy) as sc:
            _, h_batch, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                                       {"x-tdn-class": "batch"})
            _, h_plain, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            _, h_other, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                                       {"x-tdn-class": "interactive"})
    assert h_batch["x-tdn-factory"] == "batch-f"
    assert h_plain["x-tdn-factory"] == "default-f"
    assert h_other["x-tdn-factory"] == "default-f"
    assert "x-tdn-class" not in f["batch-f"].requests[0].headers


async def test_completions_and_embeddings_go_to_their_upstream_paths() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            s1, _, _ = await post(f"{sc.proxy_url}/completions", {"model": MODEL, "prompt": "x"})
            s2, _, body = await post(f"{sc.proxy_url}/embeddings", {"model": MODEL, "input": "x"})
    assert (s1, s2) == (200, 200)
    assert [r.path for r in f["edge-1"].requests] == ["/v1/completions", "/v1/embeddings"]
    assert json.loads(body)["data"][0]["embedding"] == [0.1, 0.2]


async def test_models_lists_exactly_the_models_the_policy_routes() -> None:
    other = Route("bge-m3", "default", (WeightedFactory("edge-1", 1.0),))
    policy = make_policy("v1", {"edge-1": "http://127.0.0.1:9/v1"}, [("edge-1", 1.0)],
                         extra_routes=(other,))
    async with running_sidecar(policy) as sc, aiohttp.ClientSession() as s:
        async with s.get(f"{sc.proxy_url}/models") as r:
            listing = await r.json()
        async with s.get(f"{sc.proxy_url}/models/bge-m3") as r:
            one = await r.json()
        async with s.get(f"{sc.proxy_url}/models/gpt-5") as r:
            missing_status, missing = r.status, await r.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["bge-m3", MODEL]
    assert one["id"] == "bge-m3"
    assert (missing_status, missing["error"]["code"]) == (404, "model_not_found")


async def test_upstream_4xx_error_is_passed_to_the_client_as_it_is() -> None:
    errors = json.loads((FIXTURES / "openai-errors.json").read_text())
    fixture = next(e for e in errors if e["id"] == "context_length_exceeded")
    raw = json.dumps(fixture["body"]).encode()

    async def too_long(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        return web.Response(status=fixture["http_status"], body=raw,
                            content_type="application/json")

    async with factories("edge-1", "backup") as f:
        f["edge-1"].behaviour = too_long
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url,
                                    "backup": f["backup"].base_url},
                             [("edge-1", 1.0)], [[("backup", 1.0)]])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert status == 400
    assert body == raw
    assert headers["x-tdn-factory"] == "edge-1"
    assert f["backup"].requests == []


# --- bad input, answered in OpenAI's error shape -------------------------------------------------

class BadBody(NamedTuple):
    case: str
    path: str
    raw: bytes
    status: int
    param: str | None
    code: str | None


BAD_BODIES = [
    BadBody("malformed_json", "/chat/completions", b'{"model": "x", ', 400, None, None),
    BadBody("not_an_object", "/chat/completions", b'[1, 2]', 400, None, None),
    BadBody("empty_body", "/chat/completions", b"", 400, None, None),
    BadBody("not_utf8", "/chat/completions", b'{"model": "\xff"}', 400, None, None),
    BadBody("missing_model", "/chat/completions", b'{"messages": []}', 400, "model",
            "missing_required_parameter"),
    BadBody("model_not_a_string", "/chat/completions", b'{"model": 7, "messages": []}', 400,
            "model", "invalid_type"),
    BadBody("missing_messages", "/chat/completions", b'{"model": "llama-3.1-8b-instruct"}', 400,
            "messages", "missing_required_parameter"),
    BadBody("missing_prompt", "/completions", b'{"model": "llama-3.1-8b-instruct"}', 400,
            "prompt", "missing_required_parameter"),
    BadBody("missing_input", "/embeddings", b'{"model": "llama-3.1-8b-instruct"}', 400, "input",
            "missing_required_parameter"),
    BadBody("unknown_model", "/chat/completions", b'{"model": "gpt-9", "messages": []}', 404,
            None, "model_not_found"),
]


@pytest.mark.parametrize("bad", BAD_BODIES, ids=[c.case for c in BAD_BODIES])
async def test_bad_request_is_refused_with_an_openai_error_body(bad: BadBody) -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            status, headers, body = await post(f"{sc.proxy_url}{bad.path}", None, raw=bad.raw)
            # The sidecar is still serving after the bad request.
            ok_status, _, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert status == bad.status
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == bad.param
    assert error["code"] == bad.code
    assert error["message"]
    assert headers["x-request-id"]
    assert len(f["edge-1"].requests) == 1  # only the good request went upstream
    assert ok_status == 200


async def test_body_over_the_size_limit_is_refused_with_413() -> None:
    policy = make_policy("v1", {"edge-1": "http://127.0.0.1:9/v1"}, [("edge-1", 1.0)])
    async with running_sidecar(policy) as sc:
        limit = sc.settings.proxy.max_body_bytes
        status, _, body = await post(f"{sc.proxy_url}/chat/completions", None,
                                     raw=b" " * (limit + 1))
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"


async def test_request_before_any_policy_is_answered_503_saying_so() -> None:
    async with running_sidecar() as sc:
        status, _, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
        async with aiohttp.ClientSession() as s, s.get(f"{sc.proxy_url}/models") as r:
            models_status = r.status
    error = json.loads(body)["error"]
    assert (status, models_status) == (503, 503)
    assert error["code"] == "no_policy"
    assert "no routing policy" in error["message"]


async def test_all_candidates_failing_gives_502_naming_the_attempts_but_no_key() -> None:
    with reserved_port() as closed_a, reserved_port() as closed_b:
        async with factories("sick") as f:
            f["sick"].behaviour = answer_503
            policy = make_policy("v1", {"a": f"http://127.0.0.1:{closed_a}/v1",
                                        "b": f"http://127.0.0.1:{closed_b}/v1",
                                        "sick": f["sick"].base_url},
                                 [("a", 1.0)], [[("b", 1.0)], [("sick", 1.0)]],
                                 credential_refs={"sick": "pool"})
            creds = Credentials({"pool": "sk-upstream-secret"}, environ={})
            async with running_sidecar(policy, credentials=creds) as sc:
                status, headers, body = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert status == 502
    assert headers["x-tdn-attempts"] == "3"
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_unavailable"
    assert "3 attempts" in error["message"]
    assert "sk-upstream-secret" not in body.decode()


async def test_unknown_path_and_wrong_method_get_openai_error_bodies() -> None:
    async with running_sidecar() as sc, aiohttp.ClientSession() as s:
        async with s.get(f"{sc.proxy_url}/files") as r:
            nf_status, nf = r.status, await r.json()
        async with s.get(f"{sc.proxy_url}/chat/completions") as r:
            na_status, na = r.status, await r.json()
    assert (nf_status, nf["error"]["code"]) == (404, "unknown_url")
    assert (na_status, na["error"]["code"]) == (405, "method_not_allowed")


# --- headers and credentials -------------------------------------------------------------------


async def test_tenant_authorization_never_reaches_the_factory_and_its_credential_does(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with factories("from-file", "from-env") as f:
        urls = {"from-file": f["from-file"].base_url, "from-env": f["from-env"].base_url}
        policy = make_policy("v1", urls, [("from-file", 0.5), ("from-env", 0.5)],
                             credential_refs={"from-file": "eu-pool", "from-env": "us.pool"})
        creds = Credentials({"eu-pool": "sk-file-key"},
                            environ={"TDN_CREDENTIAL_US_POOL": "sk-env-key"})
        async with running_sidecar(policy, credentials=creds) as sc:
            for _ in range(2):
                status, _, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                                          {"Authorization": "Bearer tenant-key"})
                assert status == 200
    assert f["from-file"].requests[0].headers["Authorization"] == "Bearer sk-file-key"
    assert f["from-env"].requests[0].headers["Authorization"] == "Bearer sk-env-key"
    for key in ("sk-file-key", "sk-env-key", "tenant-key", "What's the weather"):
        assert key not in caplog.text


async def test_factory_without_credential_ref_gets_no_authorization_at_all() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                       {"Authorization": "Bearer tenant-key", "Cookie": "session=tenant"})
    seen = f["edge-1"].requests[0].headers
    assert "Authorization" not in seen
    assert "Cookie" not in seen


async def test_factory_whose_credential_is_missing_here_is_skipped_for_the_next() -> None:
    async with factories("locked", "open") as f:
        policy = make_policy("v1", {"locked": f["locked"].base_url, "open": f["open"].base_url},
                             [("locked", 1.0)], [[("open", 1.0)]],
                             credential_refs={"locked": "nowhere"})
        async with running_sidecar(policy) as sc:
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
    assert (status, headers["x-tdn-factory"], headers["x-tdn-attempts"]) == (200, "open", "2")
    assert f["locked"].requests == []


async def test_hop_by_hop_headers_are_dropped_and_end_to_end_ones_kept() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY, {
                "Connection": "keep-alive, X-Private-Hop",
                "X-Private-Hop": "secret",
                "Proxy-Authorization": "Basic abc",
                "TE": "trailers",
                "Upgrade": "h2c",
                "OpenAI-Beta": "assistants=v2",
            })
    seen = f["edge-1"].requests[0].headers
    for name in ("X-Private-Hop", "Proxy-Authorization", "TE", "Upgrade"):
        assert name not in seen
    assert seen["OpenAI-Beta"] == "assistants=v2"


async def test_body_fields_cannot_choose_the_upstream_and_are_forwarded_unchanged() -> None:
    async with factories("edge-1", "elsewhere") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        body = {**CHAT_BODY, "base_url": f["elsewhere"].base_url,
                "api_base": f["elsewhere"].base_url, "extra_body": {"url": "http://x"}}
        raw = json.dumps(body, indent=1).encode()
        async with running_sidecar(policy) as sc:
            status, _, _ = await post(f"{sc.proxy_url}/chat/completions", None, raw=raw,
                                      headers={"Host": f"127.0.0.1:{f['elsewhere'].port}"})
    assert status == 200
    assert f["elsewhere"].requests == []
    assert f["edge-1"].requests[0].body == raw


async def test_request_id_is_generated_when_absent_and_kept_when_sent() -> None:
    async with factories("edge-1") as f:
        policy = make_policy("v1", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)])
        async with running_sidecar(policy) as sc:
            _, generated, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
            _, kept, _ = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                                    {"x-request-id": "req-42"})
    assert len(generated["x-request-id"]) == 32
    assert f["edge-1"].requests[0].headers["x-request-id"] == generated["x-request-id"]
    assert kept["x-request-id"] == "req-42"
    assert f["edge-1"].requests[1].headers["x-request-id"] == "req-42"


async def test_access_log_has_one_json_line_per_request_without_prompt_or_key(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tdn.dataplane.access")
    with reserved_port() as closed:
        async with factories("backup") as f:
            policy = make_policy("v1", {"primary": f"http://127.0.0.1:{closed}/v1",
                                        "backup": f["backup"].base_url},
                                 [("primary", 1.0)], [[("backup", 1.0)]])
            async with running_sidecar(policy) as sc:
                await post(f"{sc.proxy_url}/chat/completions", {**CHAT_BODY, "stream": True},
                           {"Authorization": "Bearer tenant-key", "x-request-id": "req-7"})
    lines = [r.getMessage() for r in caplog.records if r.name == "tdn.dataplane.access"]
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["request_id"] == "req-7"
    assert entry["model"] == MODEL
    assert entry["factory"] == "backup"
    assert entry["attempts"] == 2
    assert entry["status"] == 200
    assert entry["streamed"] is True
    assert entry["outcome"] == "ok"
    assert entry["duration_ms"] >= 0
    assert "tenant-key" not in lines[0] and "weather" not in lines[0]


# --- admin server ------------------------------------------------------------------------------


async def test_admin_reports_health_policy_and_metrics() -> None:
    async with factories("edge-1") as f, running_sidecar() as sc, \
            aiohttp.ClientSession() as s:
        async with s.get(f"{sc.admin_url}/healthz") as r:
            before = r.status, await r.json()
        sc.set_policy(make_policy("v7", {"edge-1": f["edge-1"].base_url}, [("edge-1", 1.0)]))
        await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY)
        async with s.get(f"{sc.admin_url}/healthz") as r:
            after = r.status, await r.json()
        async with s.get(f"{sc.admin_url}/policy") as r:
            policy = await r.json()
        async with s.get(f"{sc.admin_url}/metrics") as r:
            metrics = await r.text()
    assert before == (503, {"status": "no policy", "node_id": "sidecar-test",
                            "site": "fra-office"})
    assert after[0] == 200 and after[1]["policy_version"] == "v7"
    assert policy["version"] == "v7"
    assert policy["factories"][0]["tier"] == "edge"
    assert policy["routes"][0]["primary"] == [{"factory_id": "edge-1", "weight": 1.0}]
    assert ('tdn_sidecar_requests_total{factory="edge-1",model="llama-3.1-8b-instruct",'
            'outcome="ok",site="fra-office",tier="edge"} 1.0') in metrics
    assert 'tdn_sidecar_policy_info{site="fra-office",version="v7"} 1.0' in metrics
    assert "tdn_sidecar_request_duration_seconds_bucket" in metrics


async def test_unrouted_model_names_never_become_metric_labels() -> None:
    policy = make_policy("v1", {"edge-1": "http://127.0.0.1:9/v1"}, [("edge-1", 1.0)])
    async with running_sidecar(policy) as sc:
        await post(f"{sc.proxy_url}/chat/completions", {**CHAT_BODY, "model": "made-up-123"})
        metrics = sc.metrics.exposition().decode()
    assert "made-up-123" not in metrics
    assert 'outcome="unknown_model"' in metrics


async def test_stopping_lets_a_request_in_flight_finish_before_the_sidecar_exits() -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.json_response({"id": "chatcmpl-slow", "choices": []})

    async with factories("slow") as f:
        f["slow"].behaviour = slow
        policy = make_policy("v1", {"slow": f["slow"].base_url}, [("slow", 1.0)])
        async with running_sidecar(policy) as sc:
            in_flight = asyncio.create_task(post(f"{sc.proxy_url}/chat/completions", CHAT_BODY))
            await asyncio.wait_for(arrived.wait(), 10)
            stopping = asyncio.create_task(sc.stop())
            await async_wait_until(_refusing(sc.proxy_port), what="the listener to close")
            assert not stopping.done()
            release.set()
            status, _, body = await asyncio.wait_for(in_flight, 10)
            await asyncio.wait_for(stopping, 10)
    assert status == 200
    assert json.loads(body)["id"] == "chatcmpl-slow"


def _refusing(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return True
        writer.close()
        await writer.wait_closed()
        return False

    return check
