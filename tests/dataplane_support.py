"""Fakes and helpers shared by the sidecar tests (this module holds no tests): OpenAI-like
factories served by small aiohttp apps on loopback, real simulators (tdn.sim) run in-process,
policy builders, a running in-process sidecar, and a client that reads an SSE answer.

A fake factory records every request it receives (path, headers, body) and answers by a
``behaviour`` coroutine the test chooses, so a test can make one factory refuse, fail with 503,
hold a stream open or break it off, and then assert what the client saw. Integration tests use
simulators instead, in the fault mode that matches the failure they test.
"""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from support import FIXTURES as _TEST_FIXTURES

from tdn.dataplane.credentials import Credentials
from tdn.dataplane.policy_client import Backoff
from tdn.dataplane.sidecar import Sidecar, SidecarSettings
from tdn.dataplane.tenants import Tenants
from tdn.domain import (
    DataPlaneSettings,
    FactoryEndpoint,
    OutlierDetection,
    Price,
    Route,
    SitePolicy,
    Tier,
    WeightedFactory,
)
from tdn.sim.server import RunningSimulator, run_simulator
from tdn.sim.settings import SimSettings

SITE = "fra-office"
MODEL = "llama-3.1-8b-instruct"
FIXTURES = _TEST_FIXTURES
STREAM_FIXTURE = (FIXTURES / "openai-chat-stream-with-usage.txt").read_bytes()
FAST_BACKOFF = Backoff(initial_s=0.02, max_s=0.1)

Behaviour = Callable[["FakeFactory", web.Request], Awaitable[web.StreamResponse]]


def chat_completion(factory_id: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{factory_id}", "object": "chat.completion", "created": 1727346168,
        "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"hi from {factory_id}"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def sse_events(body: bytes) -> list[bytes]:
    """The events of an SSE body (each without its terminating blank line)."""
    return [e for e in body.split(b"\n\n") if e]


async def answer_openai(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
    """A well-behaved factory: JSON for plain requests, the recorded OpenAI SSE body for streams."""
    doc = json.loads(factory.requests[-1].body)
    if doc.get("stream") is True:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in sse_events(STREAM_FIXTURE):
            await response.write(event + b"\n\n")
        await response.write_eof()
        return response
    if request.path.endswith("/embeddings"):
        return web.json_response({"object": "list", "model": doc["model"], "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}]})
    return web.json_response(chat_completion(factory.id),
                             headers={"x-request-id": f"upstream-{factory.id}"})


async def answer_503(factory: FakeFactory, request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": {"message": "overloaded", "type": "server_error",
                                        "param": None, "code": None}}, status=503)


@dataclass
class SeenRequest:
    path: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class FakeFactory:
    """An OpenAI-compatible upstream on a free loopback port."""

    id: str
    behaviour: Behaviour = answer_openai
    requests: list[SeenRequest] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(SeenRequest(request.path, CIMultiDict(request.headers),
                                         await request.read()))
        return await self.behaviour(self, request)

    async def start(self) -> FakeFactory:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def factories(*ids: str) -> AsyncIterator[dict[str, FakeFactory]]:
    started = {i: await FakeFactory(i).start() for i in ids}
    try:
        yield started
    finally:
        for f in started.values():
            await f.stop()


@contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port held (bound, never listening) for the whole test.

    While no server listens there, connections to it are refused, and the sidecar's own
    reconnect attempts can never be given it as their local port (a TCP self-connect), so a
    server can always be started on it again. gRPC servers bind with SO_REUSEPORT, as this does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


PRICE = Price(input_per_mtok=1.0, output_per_mtok=2.0)


def endpoint(factory_id: str, base_url: str, tier: Tier = Tier.EDGE,
             credential_ref: str = "", *, prefill: bool = False, domain: str = "",
             ttft_p99_s: float = 0.0) -> FactoryEndpoint:
    return FactoryEndpoint(id=factory_id, tier=tier, region="eu-west",
                           failure_domain=domain or factory_id, base_url=base_url,
                           credential_ref=credential_ref, supports_prefill=prefill,
                           ttft_p99_s=ttft_p99_s, price=PRICE)


def make_policy(version: str, urls: dict[str, str], primary: list[tuple[str, float]],
                backups: list[list[tuple[str, float]]] | None = None, *, model: str = MODEL,
                traffic_class: str = "default", site: str = SITE,
                tiers: dict[str, Tier] | None = None,
                credential_refs: dict[str, str] | None = None,
                extra_routes: tuple[Route, ...] = (),
                settings: DataPlaneSettings | None = None,
                first_byte_timeout_s: float = 0.0, context_fallback_model: str = "",
                prefill: Collection[str] = (), domains: dict[str, str] | None = None,
                ttft_p99_s: dict[str, float] | None = None) -> SitePolicy:
    """A one-route policy; ``urls`` maps factory id to base URL (all of them are shipped)."""
    tiers = tiers or {}
    refs = credential_refs or {}
    domains = domains or {}
    ttfts = ttft_p99_s or {}
    route = Route(
        model=model, traffic_class=traffic_class,
        primary=tuple(WeightedFactory(f, w) for f, w in primary),
        backups=tuple(tuple(WeightedFactory(f, w) for f, w in level) for level in backups or []),
        context_fallback_model=context_fallback_model,
        first_byte_timeout_s=first_byte_timeout_s,
    )
    return SitePolicy(
        site=site, version=version,
        factories=tuple(endpoint(f, u, tiers.get(f, Tier.EDGE), refs.get(f, ""),
                                 prefill=f in prefill, domain=domains.get(f, ""),
                                 ttft_p99_s=ttfts.get(f, 0.0))
                        for f, u in urls.items()),
        routes=(route, *extra_routes), generated_at=1_700_000_000.0, plan_reason="test",
        settings=settings or DataPlaneSettings(),
    )


def outlier(**values: Any) -> DataPlaneSettings:
    """Data-plane settings with these OutlierDetection fields (the rest default)."""
    return DataPlaneSettings(outlier=OutlierDetection(**values))


def sidecar_settings(tmp: Path | None = None, controlplane: tuple[str, ...] = (),
                     node_id: str = "sidecar-test", **overrides: Any) -> SidecarSettings:
    settings = SidecarSettings(site=SITE, node_id=node_id, listen="127.0.0.1:0",
                               admin="127.0.0.1:0", controlplane=controlplane,
                               state_dir=tmp, backoff=FAST_BACKOFF, shutdown_timeout_s=1.0)
    return dataclasses.replace(settings, **overrides)


@asynccontextmanager
async def running_sidecar(policy: SitePolicy | None = None, *, tmp: Path | None = None,
                          controlplane: tuple[str, ...] = (),
                          credentials: Credentials | None = None,
                          node_id: str = "sidecar-test", tenants: Tenants | None = None,
                          **overrides: Any) -> AsyncIterator[Sidecar]:
    sidecar = Sidecar(sidecar_settings(tmp, controlplane, node_id, **overrides),
                      credentials if credentials is not None else Credentials(environ={}),
                      tenants=tenants)
    if policy is not None:
        sidecar.set_policy(policy)
    async with sidecar:
        yield sidecar


# --- simulators ---------------------------------------------------------------------------------

# Fast simulators: a token a millisecond, prefill instantly, short answers.
FAST_SIM: dict[str, Any] = {"itl_ms": 1.0, "prefill_tokens_per_s": 1e7, "min_output_tokens": 12,
                            "max_output_tokens": 24, "shutdown_grace_s": 0.1}


def sim_settings(factory_id: str, **overrides: Any) -> SimSettings:
    return SimSettings(**{"id": factory_id, "port": 0, **FAST_SIM, **overrides})


@asynccontextmanager
async def simulators(*ids: str, **per_sim: dict[str, Any]
                     ) -> AsyncIterator[dict[str, RunningSimulator]]:
    """Run one fast simulator per id; ``per_sim[id]`` overrides that one's SimSettings."""
    async with AsyncExitStack() as stack:
        sims = {i: await stack.enter_async_context(
            run_simulator(sim_settings(i, **per_sim.get(i, {})))) for i in ids}
        yield sims


def requests_seen(sim: RunningSimulator) -> int:
    value = sim.stats()["requests_total"]
    assert isinstance(value, int)
    return value


@dataclass
class StreamAnswer:
    """What a client read from a streamed answer."""

    status: int
    headers: CIMultiDict[str]
    events: list[bytes]
    chunks: list[dict[str, Any]]
    done: bool
    error: dict[str, Any] | None

    @property
    def text(self) -> str:
        parts = []
        for chunk in self.chunks:
            for choice in chunk.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    parts.append(piece)
        return "".join(parts)

    @property
    def usage(self) -> dict[str, int] | None:
        found = [c["usage"] for c in self.chunks if c.get("usage")]
        return found[-1] if found else None

    @property
    def finish_reasons(self) -> list[str]:
        return [ch["finish_reason"] for c in self.chunks for ch in c.get("choices", [])
                if ch.get("finish_reason")]


async def read_stream(url: str, body: dict[str, Any],
                      headers: dict[str, str] | None = None) -> StreamAnswer:
    """POST a streamed request and read the whole answer as a client would."""
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        raw = await r.read()
        status, got = r.status, CIMultiDict(r.headers)
    events = sse_events(raw)
    chunks: list[dict[str, Any]] = []
    done = False
    error: dict[str, Any] | None = None
    for event in events:
        payload = event.removeprefix(b"data: ")
        if payload == b"[DONE]":
            done = True
            continue
        doc = json.loads(payload)
        if "error" in doc:
            error = doc["error"]
        else:
            chunks.append(doc)
    return StreamAnswer(status, got, events, chunks, done, error)


CHAT_BODY = {"model": MODEL, "messages": [{"role": "user", "content": "What's the weather?"}]}
