"""Demand estimates shared between replicas (controlplane/demand_sync.py), on real etcd: usage
reported only to a follower reaches the leader's plan, and a replica that goes away takes its
share of the estimate with it."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import grpc
import pytest
from backing_services import start_etcd
from ha_support import MODEL, SITE, ReplicaProcess, agents, simulators, start_pair
from support import async_wait_until

from tdn.v1 import usage_pb2, usage_pb2_grpc

pytestmark = pytest.mark.integration

CONFIGURED_RPS = 4.0  # the network file's demand for (SITE, MODEL)


async def planned_rps(http_url: str) -> float | None:
    """The leader's tdn_plan_demand_rps for (SITE, MODEL, default)."""
    pattern = re.compile(r'^tdn_plan_demand_rps\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http, \
            http.get(f"{http_url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            m = pattern.match(line)
            if m and f'site="{SITE}"' in m["labels"] and f'model="{MODEL}"' in m["labels"] \
                    and 'traffic_class="default"' in m["labels"]:
                return float(m["value"])
    return None


async def report_usage(target: str, requests: int, report_id: str) -> None:
    record = usage_pb2.UsageRecord(tenant="t", factory_id="eu-1", model=MODEL,
                                   requests=requests, prompt_tokens=requests * 500,
                                   completion_tokens=requests * 50, traffic_class="default")
    message = usage_pb2.UsageReport(node_id="sc-fra-1", site=SITE, report_id=report_id,
                                    records=[record])
    message.window_start.FromSeconds(0)
    message.window_end.FromSeconds(10)
    async with grpc.aio.insecure_channel(target) as channel:
        ack = await usage_pb2_grpc.UsageStub(channel).Report(message, timeout=5.0)
    assert ack.counted


async def test_the_leader_plans_for_usage_a_follower_received_until_the_follower_goes(
        tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path)
    url = f"etcd://{etcd.endpoint}"
    replicas = [ReplicaProcess(tmp_path, name, url) for name in ("cp-a", "cp-b")]
    try:
        leader, follower = await start_pair(replicas)
        async with simulators() as sims, agents(sims, [leader.grpc_target]):
            async def plan_for(predicate_rps: float, above: bool) -> bool:
                rps = await planned_rps(leader.http_url)
                return rps is not None and (rps > predicate_rps if above
                                            else rps < predicate_rps)

            # First the network file's demand: nothing observed anywhere yet.
            await async_wait_until(lambda: plan_for(CONFIGURED_RPS + 0.5, above=False),
                                   timeout=30, what="a first plan on configured demand")
            # 400 requests in a 10 s window, sent to the follower only: 40 rps at once, then
            # decaying as no more reports come (the estimate takes that as traffic stopping).
            await report_usage(follower.grpc_target, 400, "r1")
            await async_wait_until(lambda: plan_for(10.0, above=True), timeout=30,
                                   what="the leader's plan to follow the follower's usage")
            # The follower stops: its estimate lapses with it, and the leader, which never saw
            # that usage itself, is back on the network file's demand.
            await follower.astop()
            await async_wait_until(lambda: plan_for(CONFIGURED_RPS + 0.5, above=False),
                                   timeout=30, what="the follower's share to go with it")
    finally:
        for replica in replicas:
            replica.stop()
        etcd.stop()
