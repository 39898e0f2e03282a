"""Telemetry ingest, end to end over gRPC: what reports make a factory healthy, unhealthy,
refused or unknown, and what that does to the routes sidecars are sent."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from controlplane_support import (
    DEADLINE,
    EU_1,
    EU_2,
    FACTORIES,
    Agent,
    Sidecar,
    channel,
    nan_price,
    operator,
    report,
    report_all,
    routed_ids,
    running,
    topology_health,
    wait_for,
)

from tdn.domain import Health
from tdn.v1 import operator_pb2

HEALTHY = operator_pb2.FACTORY_HEALTH_HEALTHY
UNHEALTHY = operator_pb2.FACTORY_HEALTH_UNHEALTHY
UNKNOWN = operator_pb2.FACTORY_HEALTH_UNKNOWN


async def test_factories_reporting_valid_telemetry_appear_healthy_in_the_topology(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        assert await topology_health(ch) == {f.id: HEALTHY for f in FACTORIES}
        ack = await agent.send(report(EU_1, seq=7))
        assert ack.seq == 7
        assert ack.report_interval.ToNanoseconds() == 1_000_000_000
        assert ack.ttl.ToNanoseconds() == 60_000_000_000


async def test_negative_concurrency_is_refused_counted_and_never_routed(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        ack = await agent.send(report(EU_2, max_concurrency=-1))
        assert not ack.accepted
        assert "max_concurrency is -1" in ack.reason
        await report_all(agent, (EU_1,))
        sidecar = Sidecar(ch, "sc-1", "fra")
        await sidecar.subscribe()
        routed = await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))
        assert "eu-2" not in routed_ids(routed)
        assert all("eu-2" not in routed_ids(r) for r in sidecar.received)
        assert cp.metrics.registry.get_sample_value(
            "tdn_telemetry_rejected_total", {"reason": "bad_capacity"}) == 1.0
        sidecar.close()


async def test_nan_price_makes_a_known_factory_unroutable_and_says_why(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1, EU_2))
        sidecar = Sidecar(ch, "sc-1", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))

        ack = await agent.send(report(EU_2, price=nan_price(EU_2)))
        assert not ack.accepted and "not_finite" in ack.reason

        pushed = await sidecar.next_where(lambda r: "eu-2" not in routed_ids(r))
        assert "eu-1" in routed_ids(pushed)
        topo = await operator(ch).GetTopology(operator_pb2.GetTopologyRequest())
        eu_2 = next(f for f in topo.factories if f.identity.id == "eu-2")
        assert eu_2.health == UNHEALTHY
        assert eu_2.reason.startswith("rejected telemetry:")
        assert cp.metrics.registry.get_sample_value(
            "tdn_telemetry_rejected_total", {"reason": "not_finite"}) == 1.0
        sidecar.close()


async def test_engine_unreachable_makes_the_factory_unhealthy(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1,))
        ack = await agent.send(report(EU_1, seq=2, reachable=False))
        assert ack.accepted
        assert (await topology_health(ch))["eu-1"] == UNHEALTHY


async def test_silent_factory_becomes_unknown_after_the_ttl_and_leaves_the_routes(
        tmp_path: Path) -> None:
    async with running(tmp_path, ttl=0.5) as cp, channel(cp) as ch:
        quiet, chatty = Agent(ch), Agent(ch)
        await report_all(quiet, (EU_2,))
        await report_all(chatty, (EU_1,))
        sidecar = Sidecar(ch, "sc-1", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))

        # eu-1 keeps reporting while the test waits; eu-2 has gone silent.
        seq = 1
        async with asyncio.timeout(DEADLINE):
            while (await topology_health(ch))["eu-2"] != UNKNOWN:
                seq += 1
                await chatty.send(report(EU_1, seq=seq))
        pushed = await sidecar.next_where(lambda r: "eu-2" not in routed_ids(r))
        assert "eu-1" in routed_ids(pushed)
        sidecar.close()


async def test_when_every_factory_of_a_route_falls_silent_the_route_is_held_not_emptied(
        tmp_path: Path) -> None:
    # Fail static: silence is what a partition between agents and the control plane looks like,
    # and the factories may well be serving on. The plan keeps the route; a factory that is heard
    # again takes it over as usual.
    async with running(tmp_path, ttl=0.5) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1, EU_2))
        sidecar = Sidecar(ch, "sc-1", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))

        await wait_for(lambda: all(f.health is Health.UNKNOWN
                                   for f in cp.registry.states(time.time())),
                       "both factories unknown once silent past the TTL")
        held = await wait_for(lambda: cp.solve_loop.plan if cp.solve_loop.plan is not None
                              and "held" in cp.solve_loop.plan.status else None,
                              "a plan solved with every factory unknown")
        assert cp.metrics.registry.get_sample_value("tdn_plan_routes_held") == 1.0
        fra = [route for site, route in held.routes if site == "fra"]
        assert fra and set(fra[0].factory_ids()) == {"eu-1", "eu-2"}
        served = cp.cache.get("fra")
        assert served is not None and {f.id for f in served.policy.factories} == {"eu-1", "eu-2"}

        await agent.send(report(EU_1, seq=2))
        pushed = await sidecar.next_where(lambda r: routed_ids(r) == {"eu-1"})
        assert "held" not in pushed.policy.plan_reason
        # The gauge follows the plan in force, set just after the plan is published.
        await wait_for(lambda: cp.metrics.registry.get_sample_value("tdn_plan_routes_held")
                       == 0.0, "no route held once eu-1 is heard again")
        sidecar.close()


async def test_a_closed_telemetry_stream_does_not_mark_the_factory_down(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1,))
        await agent.close()
        await wait_for(lambda: cp.metrics.registry.get_sample_value(
            "tdn_telemetry_streams") == 0.0, "the server to see the stream close")
        assert (await topology_health(ch))["eu-1"] == HEALTHY
