"""Shared harness of the control-plane tests: a small network, a real control plane on free
ports with its embedded store in a temporary folder, and test-defined gRPC clients that behave
like a factory agent, a sidecar and an operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from support import async_wait_until

from tdn.config import NetworkConfig
from tdn.controlplane.server import ControlPlane, ControlPlaneSettings
from tdn.domain import Demand, Energy, FactorySpec, Price, Site, Tier
from tdn.v1 import (
    discovery_pb2,
    discovery_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
)
from tdn.wire import energy_to_pb, price_to_pb, site_policy_from_pb, spec_to_identity

DEADLINE = 10.0

# Two sites in two compliance zones; three factories, two of them in the EU.
SITES = (
    Site(id="fra", region="eu-west", compliance_zone="eu",
         rtt_ms=(("eu-west", 4.0), ("us-east", 90.0))),
    Site(id="nyc", region="us-east", compliance_zone="us",
         rtt_ms=(("eu-west", 90.0), ("us-east", 4.0))),
)
MODEL = "llama-3.1-8b-instruct"
DEMAND = (
    Demand(site="fra", model=MODEL, rate_rps=2.0, ttft_slo_s=2.0),
    Demand(site="nyc", model=MODEL, rate_rps=1.0, ttft_slo_s=2.0),
)
NETWORK = NetworkConfig(filename="test-network", sites=SITES, demand=DEMAND)


def spec(factory_id: str, region: str, zone: str, *, price: float = 0.5,
         failure_domain: str = "") -> FactorySpec:
    return FactorySpec(
        id=factory_id, tier=Tier.EDGE, region=region, compliance_zone=zone,
        endpoint=f"http://127.0.0.1:1/{factory_id}/v1", models=(MODEL,),
        price=Price(input_per_mtok=price / 4, output_per_mtok=price),
        energy=Energy(watts=1000, tokens_per_joule=1.5, grid_gco2_per_kwh=300,
                      electricity_price_per_kwh=0.1),
        max_concurrency=32, failure_domain=failure_domain)


EU_1 = spec("eu-1", "eu-west", "eu", price=0.5, failure_domain="rack-a")
EU_2 = spec("eu-2", "eu-west", "eu", price=0.6, failure_domain="rack-b")
US_1 = spec("us-1", "us-east", "us", price=0.5)
FACTORIES = (EU_1, EU_2, US_1)


def report(factory: FactorySpec, *, seq: int = 1, reachable: bool = True,
           **overrides: Any) -> telemetry_pb2.TelemetryReport:
    """A telemetry report for ``factory``; ``overrides`` replace spec fields (to make it bad)."""
    factory = dataclasses.replace(factory, **overrides)
    return telemetry_pb2.TelemetryReport(
        identity=spec_to_identity(factory),
        capacity=telemetry_pb2.Capacity(max_concurrency=factory.max_concurrency,
                                        max_output_tokens_per_second=2000.0),
        load=telemetry_pb2.Load(running=1, waiting=0, kv_cache_usage=0.1),
        latency=telemetry_pb2.Latency(ttft_p50_seconds=0.05, ttft_p99_seconds=0.2,
                                      itl_p50_seconds=0.02, itl_p99_seconds=0.04),
        price=price_to_pb(factory.price),
        energy=energy_to_pb(factory.energy),
        engine_reachable=reachable,
        seq=seq,
    )


def nan_price(factory: FactorySpec) -> Price:
    return dataclasses.replace(factory.price, output_per_mtok=math.nan)


def settings(tmp_path: Path, **overrides: Any) -> ControlPlaneSettings:
    """Settings for a fast test control plane: free ports, quick debounce, no warm-up, and a
    TTL long enough that only tests about silence see a factory expire."""
    base: dict[str, Any] = {
        "network": NETWORK, "grpc_address": "127.0.0.1:0", "http_address": "127.0.0.1:0",
        "state_dir": str(tmp_path / "state"), "report_interval": 1.0, "ttl": 60.0,
        "solve_interval": 30.0, "solve_quiet": 0.02, "solve_max_delay": 0.2, "warmup": 0.0,
        "replica_id": "test-replica", "shutdown_grace": 0.2,
    }
    base.update(overrides)
    return ControlPlaneSettings(**base)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[ControlPlane]:
    solver = overrides.pop("solver", None)
    cp = ControlPlane(settings(tmp_path, **overrides), **({"solver": solver} if solver else {}))
    async with cp:
        yield cp


@contextlib.asynccontextmanager
async def channel(cp: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(cp.grpc_target) as ch:
        yield ch


class Agent:
    """A factory agent's side of one Telemetry stream: send a report, read its ack."""

    def __init__(self, ch: grpc.aio.Channel) -> None:
        self.call = telemetry_pb2_grpc.TelemetryStub(ch).Report()

    async def send(self, msg: telemetry_pb2.TelemetryReport) -> telemetry_pb2.TelemetryAck:
        await self.call.write(msg)
        async with asyncio.timeout(DEADLINE):
            ack = await self.call.read()
        assert isinstance(ack, telemetry_pb2.TelemetryAck), ack
        return ack

    async def close(self) -> None:
        await self.call.done_writing()
        self.call.cancel()


class Sidecar:
    """A sidecar's side of one Discovery stream, driven step by step by the test."""

    def __init__(self, ch: grpc.aio.Channel, node_id: str, site: str) -> None:
        self.call = discovery_pb2_grpc.DiscoveryStub(ch).StreamPolicies()
        self.node = discovery_pb2.Node(id=node_id, site=site, build_version="test")
        self.received: list[discovery_pb2.DiscoveryResponse] = []

    async def subscribe(self, version: str = "") -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(node=self.node, version_info=version))

    async def next(self) -> discovery_pb2.DiscoveryResponse:
        async with asyncio.timeout(DEADLINE):
            response = await self.call.read()
        assert isinstance(response, discovery_pb2.DiscoveryResponse), response
        site_policy_from_pb(response.policy)  # what a real sidecar checks before it ACKs
        self.received.append(response)
        return response

    async def next_where(self, predicate: Callable[[discovery_pb2.DiscoveryResponse], bool],
                         ) -> discovery_pb2.DiscoveryResponse:
        """ACK responses until one satisfies ``predicate``; return it (ACKed too)."""
        while True:
            response = await self.next()
            await self.ack(response)
            if predicate(response):
                return response

    async def ack(self, response: discovery_pb2.DiscoveryResponse,
                  nonce: str | None = None) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(
            node=self.node, version_info=response.version_info,
            response_nonce=response.nonce if nonce is None else nonce))

    async def nack(self, response: discovery_pb2.DiscoveryResponse, running: str,
                   message: str) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(
            node=self.node, version_info=running, response_nonce=response.nonce,
            error_detail=discovery_pb2.ErrorDetail(code=3, message=message)))

    def close(self) -> None:
        self.call.cancel()


def routed_ids(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    """Every factory any route of the pushed policy may send traffic to."""
    ids: set[str] = set()
    for route in response.policy.routes:
        ids.update(w.factory_id for w in route.primary)
        for level in route.backups:
            ids.update(w.factory_id for w in level.factories)
    return ids | {f.id for f in response.policy.factories}


def operator(ch: grpc.aio.Channel) -> operator_pb2_grpc.OperatorStub:
    return operator_pb2_grpc.OperatorStub(ch)


async def topology_health(ch: grpc.aio.Channel) -> dict[str, int]:
    topo = await operator(ch).GetTopology(operator_pb2.GetTopologyRequest())
    return {f.identity.id: f.health for f in topo.factories}


async def sidecar_status(ch: grpc.aio.Channel, node_id: str) -> operator_pb2.SidecarStatus | None:
    status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
    return next((s for s in status.sidecars if s.node_id == node_id), None)


async def report_all(agent: Agent, factories: tuple[FactorySpec, ...] = FACTORIES) -> None:
    for f in factories:
        ack = await agent.send(report(f))
        assert ack.accepted, ack.reason


async def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    async def check() -> Any:
        return predicate()

    return await async_wait_until(check, timeout=DEADLINE, what=what)


async def wait_for_status(ch: grpc.aio.Channel, node_id: str,
                          predicate: Callable[[operator_pb2.SidecarStatus], bool],
                          ) -> operator_pb2.SidecarStatus:
    """Poll GetStatus until the sidecar's row satisfies ``predicate``; return that row."""
    async def check() -> operator_pb2.SidecarStatus | None:
        status = await sidecar_status(ch, node_id)
        return status if status is not None and predicate(status) else None

    found = await async_wait_until(check, timeout=DEADLINE, what=f"status of {node_id}")
    assert isinstance(found, operator_pb2.SidecarStatus)
    return found
