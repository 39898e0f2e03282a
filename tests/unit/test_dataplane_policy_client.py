"""The sidecar's end of Discovery.StreamPolicies, against a fake control plane served in-process:
ACK and NACK exactly as proto/tdn/v1/discovery.proto says, the last good policy kept and saved,
a restart during an outage routing from disk, and reconnection after the control plane returns."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import grpc.aio
import pytest
from dataplane_support import (
    CHAT_BODY,
    FAST_BACKOFF,
    SITE,
    factories,
    make_policy,
    reserved_port,
    running_sidecar,
)
from support import async_wait_until

from tdn.dataplane.live_policy import LivePolicy
from tdn.dataplane.policy_client import Backoff, PolicyClient
from tdn.dataplane.policy_disk import PolicyDisk
from tdn.domain import SitePolicy
from tdn.v1 import discovery_pb2, discovery_pb2_grpc
from tdn.wire import site_policy_to_pb


class FakeDiscovery(discovery_pb2_grpc.DiscoveryServicer):
    """Sends the responses a test queues and records every request a sidecar sends."""

    def __init__(self) -> None:
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.outbox: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        self.streams = 0

    # A coroutine handler that reads and writes through the context (grpc.aio allows it; the
    # stubs only know generator handlers), so reading and sending run independently.
    async def StreamPolicies(  # type: ignore[override]
            self, request_iterator: object,
            context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest,
                                              discovery_pb2.DiscoveryResponse]) -> None:
        self.streams += 1

        async def record() -> None:
            while True:
                request = await context.read()
                if not isinstance(request, discovery_pb2.DiscoveryRequest):
                    return
                self.requests.append(request)

        reader = asyncio.create_task(record())
        try:
            while True:
                await context.write(await self.outbox.get())
        finally:
            reader.cancel()
            await asyncio.wait([reader])

    def push(self, policy: SitePolicy | discovery_pb2.SitePolicy, nonce: str,
             version: str | None = None) -> None:
        msg = policy if isinstance(policy, discovery_pb2.SitePolicy) else site_policy_to_pb(policy)
        self.outbox.put_nowait(discovery_pb2.DiscoveryResponse(
            version_info=msg.version if version is None else version, nonce=nonce, policy=msg))

    async def answered(self, nonce: str) -> discovery_pb2.DiscoveryRequest:
        async def find() -> discovery_pb2.DiscoveryRequest | None:
            return next((r for r in self.requests if r.response_nonce == nonce), None)

        found = await async_wait_until(find, what=f"an answer to nonce {nonce}")
        assert isinstance(found, discovery_pb2.DiscoveryRequest)
        return found


@asynccontextmanager
async def discovery_server(port: int = 0) -> AsyncIterator[tuple[FakeDiscovery, int]]:
    fake = FakeDiscovery()
    server = grpc.aio.server()
    discovery_pb2_grpc.add_DiscoveryServicer_to_server(fake, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield fake, bound
    finally:
        await server.stop(grace=None)


async def chat(sidecar_url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.post(f"{sidecar_url}/chat/completions",
                                                    json=CHAT_BODY) as r:
        await r.read()
        return r.status, r.headers.get("x-tdn-factory", "")


def inconsistent(version: str, good_url: str) -> discovery_pb2.SitePolicy:
    """A policy whose route names a factory it does not ship (breaks make-before-break)."""
    msg = site_policy_to_pb(make_policy(version, {"a": good_url}, [("a", 1.0)]))
    msg.routes[0].primary[0].factory_id = "ghost"
    return msg


async def test_first_request_names_the_node_and_a_consistent_policy_is_acked_with_its_nonce(
        tmp_path: Path) -> None:
    async with factories("a") as f, discovery_server() as (cp, port), running_sidecar(
            tmp=tmp_path, controlplane=(f"127.0.0.1:{port}",)) as sc:
        await async_wait_until(_has_requests(cp, 1), what="the first request")
        first = cp.requests[0]
        cp.push(make_policy("v1", {"a": f["a"].base_url}, [("a", 1.0)]), nonce="n1")
        ack = await cp.answered("n1")
        status, factory = await chat(sc.proxy_url)
    assert (first.node.id, first.node.site) == ("sidecar-test", SITE)
    assert first.node.build_version
    assert (first.version_info, first.response_nonce) == ("", "")
    assert not first.HasField("error_detail")
    assert (ack.version_info, ack.response_nonce) == ("v1", "n1")
    assert not ack.HasField("error_detail")
    assert (status, factory) == (200, "a")


async def test_inconsistent_policy_is_nacked_with_the_last_good_version_and_routing_goes_on(
        tmp_path: Path) -> None:
    async with factories("a") as f, discovery_server() as (cp, port), running_sidecar(
            tmp=tmp_path, controlplane=(f"127.0.0.1:{port}",)) as sc:
        cp.push(make_policy("v1", {"a": f["a"].base_url}, [("a", 1.0)]), nonce="n1")
        await cp.answered("n1")
        cp.push(inconsistent("v2", f["a"].base_url), nonce="n2")
        nack = await cp.answered("n2")
        status, factory = await chat(sc.proxy_url)
        running = sc.policy
        metrics = sc.metrics.exposition().decode()
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert nack.error_detail.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] == 3
    assert "ghost" in nack.error_detail.message
    assert running is not None and running.version == "v1"
    assert (status, factory) == (200, "a")
    assert PolicyDisk(tmp_path).load(SITE) == running  # the NACKed one was never saved
    assert 'tdn_sidecar_policy_updates_total{result="nack",site="fra-office"} 1.0' in metrics


async def test_policy_for_another_site_or_with_mismatched_version_is_nacked() -> None:
    live = LivePolicy()
    client = PolicyClient(["127.0.0.1:1"], "n", SITE, live)
    good = make_policy("v1", {"a": "http://127.0.0.1:9/v1"}, [("a", 1.0)])
    other_site = make_policy("v2", {"a": "http://127.0.0.1:9/v1"}, [("a", 1.0)],
                             site="nyc-office")
    bad_url = make_policy("v3", {"a": "file:///etc/passwd"}, [("a", 1.0)])
    ack = await client.answer(discovery_pb2.DiscoveryResponse(
        version_info="v1", nonce="n1", policy=site_policy_to_pb(good)))
    answers = [await client.answer(response) for response in (
        discovery_pb2.DiscoveryResponse(version_info="v2", nonce="n2",
                                        policy=site_policy_to_pb(other_site)),
        discovery_pb2.DiscoveryResponse(version_info="v9", nonce="n3",
                                        policy=site_policy_to_pb(bad_url)),
        discovery_pb2.DiscoveryResponse(version_info="v4", nonce="n4"),
    )]
    assert ack.version_info == "v1" and not ack.HasField("error_detail")
    assert [(a.version_info, a.response_nonce, a.error_detail.code) for a in answers] == [
        ("v1", "n2", 3), ("v1", "n3", 3), ("v1", "n4", 3)]
    assert "nyc-office" in answers[0].error_detail.message
    assert "v9" in answers[1].error_detail.message
    assert "no policy" in answers[2].error_detail.message
    assert live.current == good


async def test_saved_policy_lets_a_restarted_sidecar_route_while_the_control_plane_is_down(
        tmp_path: Path) -> None:
    async with factories("a") as f:
        async with discovery_server() as (cp, port), running_sidecar(
                tmp=tmp_path, controlplane=(f"127.0.0.1:{port}",)):
            cp.push(make_policy("v1", {"a": f["a"].base_url}, [("a", 1.0)]), nonce="n1")
            await cp.answered("n1")
        # The control plane is gone and so is the first sidecar; a fresh one starts.
        with reserved_port() as unreachable_port:
            async with running_sidecar(
                    tmp=tmp_path, controlplane=(f"127.0.0.1:{unreachable_port}",)) as sc:
                status, factory = await chat(sc.proxy_url)
                version = sc.policy.version if sc.policy else None
    assert (status, factory, version) == (200, "a", "v1")
    assert os.listdir(tmp_path) == ["policy.pb"]  # no temp file left behind


async def test_sidecar_reconnects_after_the_control_plane_restarts_and_reports_its_version(
        tmp_path: Path) -> None:
    with reserved_port() as port:
        async with factories("a", "b") as f, running_sidecar(
                tmp=tmp_path, controlplane=(f"127.0.0.1:{port}",)) as sc:
            async with discovery_server(port) as (cp, _):
                cp.push(make_policy("v1", {"a": f["a"].base_url}, [("a", 1.0)]), nonce="n1")
                await cp.answered("n1")
            # Down: the sidecar keeps routing on v1.
            assert await chat(sc.proxy_url) == (200, "a")
            async with discovery_server(port) as (cp2, _):
                await async_wait_until(_has_requests(cp2, 1), what="a new stream")
                hello = cp2.requests[0]
                cp2.push(make_policy("v2", {"b": f["b"].base_url}, [("b", 1.0)]), nonce="m1")
                await cp2.answered("m1")
                after = await chat(sc.proxy_url)
    assert (hello.version_info, hello.response_nonce) == ("v1", "")
    assert after == (200, "b")


async def test_client_rotates_through_control_plane_addresses() -> None:
    with reserved_port() as dead_port:
        async with discovery_server() as (cp, port):
            live = LivePolicy()
            client = PolicyClient([f"127.0.0.1:{dead_port}", f"127.0.0.1:{port}"], "n", SITE,
                                  live, backoff=FAST_BACKOFF)
            task = asyncio.create_task(client.run())
            try:
                await async_wait_until(_has_requests(cp, 1), what="a stream to the live address")
                assert client.connected
            finally:
                task.cancel()
                await asyncio.wait([task])


async def test_corrupt_saved_policy_is_ignored_and_the_sidecar_waits_for_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "policy.pb").write_bytes(b"\xff\xfe not a protobuf")
    caplog.set_level(logging.WARNING)
    async with running_sidecar(tmp=tmp_path) as sc, aiohttp.ClientSession() as s, s.get(
            f"{sc.admin_url}/healthz") as r:
        health = r.status, await r.json()
    assert health == (503, {"status": "no policy", "node_id": "sidecar-test", "site": SITE})
    assert "ignoring saved policy" in caplog.text


def test_backoff_grows_to_its_cap_with_jitter_and_never_to_zero() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0)
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(1, 9)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True))
    assert len({round(d, 6) for d in delays[3:]}) > 1  # jittered, not in lockstep


def _has_requests(cp: FakeDiscovery, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(cp.requests) >= n

    return check
