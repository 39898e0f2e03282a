"""Killing the leading control-plane replica, on a three-member etcd cluster: a new leader is
elected within the lease TTL, the sidecar and the agents move to the survivor, the new leader
solves and pushes, and not one request through the sidecar fails meanwhile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ha_support import (
    SITE,
    ReplicaProcess,
    agents,
    set_factory_state,
    sidecar,
    simulators,
    start_cluster,
    start_pair,
    status,
    traffic,
    wait_for,
    wait_for_leader,
    wait_until_routed,
)
from support import async_wait_until

from tdn.v1 import operator_pb2

pytestmark = pytest.mark.integration

LEASE_TTL = 2
# etcd expires leases on a 500 ms tick, the survivor then has to see the deletion and win the
# key, and the test polls: allowance on top of the TTL for all of that.
ELECTION_MARGIN = 1.5


async def test_killing_the_leader_elects_another_within_the_lease_ttl_and_no_request_fails(
        tmp_path: Path) -> None:
    cluster = start_cluster(tmp_path)
    replicas = [ReplicaProcess(tmp_path, name, cluster.url, lease_ttl=LEASE_TTL)
                for name in ("cp-a", "cp-b")]
    try:
        leader, survivor = await start_pair(replicas)
        # The leader first in every list, so that killing it makes everyone move.
        addresses = [leader.grpc_target, survivor.grpc_target]

        async with simulators() as sims, agents(sims, addresses), \
                sidecar(tmp_path, addresses) as proxy:
            await wait_until_routed(proxy, lambda ids: ids == {"eu-1", "eu-2", "eu-3"},
                                    "a policy routing to all three factories")
            assert proxy.policy_client is not None
            streams_before = proxy.policy_client.streams_opened
            async with traffic(proxy.proxy_url) as seen:
                await wait_for(lambda: seen.ok >= 20, "traffic to flow")
                await leader.akill()
                killed_at = time.monotonic()

                new_leader = await wait_for_leader([survivor], timeout=LEASE_TTL + 10)
                elected_after = time.monotonic() - killed_at
                assert new_leader is survivor

                # The sidecar moved to the survivor, which knows it as connected.
                async def reconnected() -> bool:
                    answer = await status(survivor.grpc_target)
                    return any(s.node_id == "sc-fra-1" and s.connected for s in answer.sidecars)

                await async_wait_until(reconnected, timeout=20, what="the sidecar to reconnect")
                assert proxy.policy_client.streams_opened > streams_before

                # The agents moved too: the new leader sees every factory healthy and solves.
                async def all_healthy() -> bool:
                    answer = await status(survivor.grpc_target)
                    return answer.factories_healthy == 3
                await async_wait_until(all_healthy, timeout=20, what="all factories healthy")

                # The new leader plans and pushes: a drain reaches the sidecar.
                before = (await status(survivor.grpc_target)).plan_version
                await set_factory_state(survivor.grpc_target, "eu-3",
                                        operator_pb2.FACTORY_ADMIN_STATE_DRAINED)
                await wait_until_routed(proxy, lambda ids: ids == {"eu-1", "eu-2"},
                                        "the drain to reach the sidecar")
                after = (await status(survivor.grpc_target)).plan_version
                assert after > before
                ok_at_end = seen.ok
                await wait_for(lambda: seen.ok >= ok_at_end + 20, "traffic to keep flowing")
            assert seen.failures == [], seen.failures[:5]
            assert seen.ok >= 60
            policy = proxy.policy
            assert policy is not None and policy.site == SITE
        print(f"new leader elected {elected_after:.2f}s after the kill "
              f"(lease TTL {LEASE_TTL}s); {seen.ok} requests, 0 failed")
        assert elected_after <= LEASE_TTL + ELECTION_MARGIN, (
            f"no new leader {elected_after:.2f}s after the kill (TTL {LEASE_TTL}s)")
    finally:
        for replica in replicas:
            replica.stop()
        cluster.stop()

