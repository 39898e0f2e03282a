"""The control plane against etcd failures: an etcd member dying interrupts nothing, etcd gone
altogether leaves the control plane serving its last plan read-only (and saying so), and after a
full restart of etcd and the replicas the plan, its policies and the admin states are back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from backing_services import EtcdMember, start_etcd
from ha_support import (
    ReplicaProcess,
    Traffic,
    agents,
    get_plan,
    healthz,
    metric,
    raft_leader,
    routed,
    set_factory_state,
    sidecar,
    simulators,
    start_cluster,
    start_pair,
    status,
    traffic,
    try_status,
    wait_for,
    wait_for_leader,
    wait_until_routed,
)
from support import async_wait_until

from tdn.dataplane.sidecar import Sidecar
from tdn.domain import SitePolicy
from tdn.v1 import operator_pb2, operator_pb2_grpc

pytestmark = pytest.mark.integration

ALL = {"eu-1", "eu-2", "eu-3"}
DRAINED = operator_pb2.FACTORY_ADMIN_STATE_DRAINED


async def test_killing_an_etcd_member_interrupts_nothing(tmp_path: Path) -> None:
    """Also the follower path: telemetry a follower hears reaches the leader through etcd, and
    the plan the leader writes reaches the follower's sidecar the same way; and a follower
    that stops cleanly hands its sidecar and agents over without a dip."""
    cluster = start_cluster(tmp_path)
    # A lease TTL well above an etcd leader election, which the kill may cause.
    replicas = [ReplicaProcess(tmp_path, name, cluster.url, lease_ttl=5)
                for name in ("cp-a", "cp-b")]
    try:
        leader, follower = await start_pair(replicas)
        # Agents and sidecar on the follower: the leader hears the factories only through the
        # store, and the sidecar is served only what the follower reads back from it.
        addresses = [follower.grpc_target, leader.grpc_target]
        async with simulators() as sims, agents(sims, addresses), \
                sidecar(tmp_path, addresses) as proxy:
            await wait_until_routed(proxy, lambda ids: ids == ALL, "a policy with every factory")
            assert proxy.policy_client is not None
            streams = proxy.policy_client.streams_opened
            assert (await status(leader.grpc_target)).factories_healthy == 3
            # Writes go to the leader: a follower refuses them and says where it is.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await set_factory_state(follower.grpc_target, "eu-3", DRAINED)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"leader {leader.name} at {leader.grpc_target}" in (
                refused.value.details() or "")
            async with traffic(proxy.proxy_url) as seen:
                await wait_for(lambda: seen.ok >= 20, "traffic to flow")

                # The raft leader: its death stalls every write until the others elect one.
                await asyncio.to_thread(lambda: raft_leader(cluster.members).kill())
                ok_at_kill = seen.ok
                # A write caught in flight by the election may time out (etcd's semantics):
                # the operator is told UNAVAILABLE and tries again.
                await drain_with_retries(leader.grpc_target, "eu-3")
                await wait_until_routed(proxy, lambda ids: ids == ALL - {"eu-3"},
                                        "a plan made after the kill to reach the sidecar")
                await wait_for(lambda: seen.ok >= ok_at_kill + 40, "traffic to keep flowing")
                # The discovery stream was never broken, and every replica is writable again.
                assert proxy.policy_client.streams_opened == streams
                for replica in replicas:
                    async def writable(target: str = replica.grpc_target) -> bool:
                        return not (await status(target)).read_only

                    await async_wait_until(writable, timeout=20, what="no replica read-only")

                # The follower goes away cleanly: the sidecar and the agents move to the leader,
                # which never plans without the factories while they move.
                pushed: list[set[str]] = []
                proxy.live.add_listener(lambda p: pushed.append(
                    {w.factory_id for r in p.routes for w in r.primary}
                    | {w.factory_id for r in p.routes for b in r.backups for w in b}))
                await follower.astop()

                async def moved() -> bool:
                    answer = await status(leader.grpc_target)
                    return any(s.connected for s in answer.sidecars) and \
                        answer.factories_healthy == 3
                await async_wait_until(moved, timeout=20, what="everyone on the leader")
                ok_after_move = seen.ok
                await wait_for(lambda: seen.ok >= ok_after_move + 20, "traffic after the move")
                assert proxy.policy_client.streams_opened == streams + 1
                assert all(ids == ALL - {"eu-3"} for ids in pushed), pushed
        assert seen.failures == [], seen.failures[:5]
    finally:
        for replica in replicas:
            replica.stop()
        cluster.stop()


async def drain_with_retries(target: str, factory_id: str, attempts: int = 3) -> None:
    for attempt in range(attempts):
        try:
            await set_factory_state(target, factory_id, DRAINED)
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE or attempt + 1 == attempts:
                raise


async def test_with_etcd_unreachable_the_last_plan_is_served_read_only_and_said_so(
        tmp_path: Path) -> None:
    etcd = start_etcd(tmp_path)
    replica = ReplicaProcess(tmp_path, "cp-a", f"etcd://{etcd.endpoint}", lease_ttl=2)
    try:
        replica.start()
        await replica.wait_ready()
        await wait_for_leader([replica])
        target = replica.grpc_target
        async with simulators() as sims, agents(sims, [target]), \
                sidecar(tmp_path, [target]) as proxy:
            await wait_until_routed(proxy, lambda ids: ids == ALL, "a policy with every factory")
            served = proxy.policy
            assert served is not None
            seen = await outage_drill(etcd, replica, proxy, served, tmp_path)
        assert seen.failures == [], seen.failures[:5]
    finally:
        replica.stop()
        etcd.stop()


async def outage_drill(etcd: EtcdMember, replica: ReplicaProcess, proxy: Sidecar,
                       served: SitePolicy, tmp_path: Path) -> Traffic:
    """Take etcd away under traffic, check what the replica says and serves, bring it back."""
    target = replica.grpc_target
    async with traffic(proxy.proxy_url) as seen:
        await wait_for(lambda: seen.ok >= 20, "traffic to flow")
        await asyncio.to_thread(etcd.kill)

        async def read_only() -> operator_pb2.StatusResponse | None:
            answer = await try_status(target)
            return answer if answer is not None and answer.read_only else None

        said = await async_wait_until(read_only, timeout=20, what="read-only status")
        assert isinstance(said, operator_pb2.StatusResponse)
        assert said.plan_version >= int(served.version)
        body = await healthz(replica.http_url)
        assert body is not None and body["status"] == "read-only" and body["read_only"]
        assert "etcd" in body["read_only_reason"]
        assert await metric(replica.http_url, "tdn_controlplane_read_only") == 1.0

        # Nothing can be written: the operator is told, not ignored.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await set_factory_state(target, "eu-3", DRAINED)
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE,
                                    grpc.StatusCode.FAILED_PRECONDITION)

        # A sidecar arriving now still gets the last plan, and traffic flows.
        async with sidecar(tmp_path, [target], node_id="sc-fra-2") as late:
            await wait_until_routed(late, lambda ids: ids == ALL, "the last plan")
            assert late.policy == served
        ok_in_outage = seen.ok
        await wait_for(lambda: seen.ok >= ok_in_outage + 20, "traffic during the outage")

        # etcd returns: the replica leaves read-only mode, leads again, and writes again.
        etcd.start()
        await asyncio.to_thread(etcd.wait_healthy)

        async def writable() -> bool:
            answer = await try_status(target)
            return answer is not None and not answer.read_only and answer.leader

        await async_wait_until(writable, timeout=30, what="leaving read-only mode")
        assert await metric(replica.http_url, "tdn_controlplane_read_only") == 0.0
        await set_factory_state(target, "eu-3", DRAINED)
        await wait_until_routed(proxy, lambda ids: ids == ALL - {"eu-3"},
                                "the first write after the outage to reach the sidecar")
    return seen


async def test_after_a_full_restart_the_plan_policies_and_admin_states_are_recovered(
        tmp_path: Path) -> None:
    etcd: EtcdMember = start_etcd(tmp_path)
    url = f"etcd://{etcd.endpoint}"
    first = ReplicaProcess(tmp_path, "cp-a", url)
    second = ReplicaProcess(tmp_path, "cp-a", url, extra=["--warmup", "120"])
    try:
        first.start()
        await first.wait_ready()
        async with simulators() as sims, agents(sims, [first.grpc_target]), \
                sidecar(tmp_path, [first.grpc_target]) as proxy:
            await wait_until_routed(proxy, lambda ids: ids == ALL, "a policy with every factory")
            await set_factory_state(first.grpc_target, "eu-3", DRAINED)
            await wait_until_routed(proxy, lambda ids: ids == ALL - {"eu-3"}, "the drain")
            before = await get_plan(first.grpc_target)
            running = proxy.policy
        # Everything goes down: replica (a crash) and etcd.
        first.kill()
        etcd.stop()

        etcd.start()
        etcd.wait_healthy()
        second.grpc_port, second.http_port = first.grpc_port, first.http_port
        second.args = [*first.args, "--warmup", "120"]
        second.start()
        await second.wait_ready()
        # No solve has run (long warm-up, no agent yet): what is served came from the store.
        after = await get_plan(second.grpc_target)
        assert after.version == before.version
        assert list(after.sites) == list(before.sites)
        async with sidecar(tmp_path, [second.grpc_target], node_id="sc-fra-new") as fresh:
            await wait_until_routed(fresh, lambda ids: ids == ALL - {"eu-3"},
                                    "the stored policy")
            assert fresh.policy == running

            async with simulators() as sims, agents(sims, [second.grpc_target]):
                async def drained_again() -> bool:
                    async with grpc.aio.insecure_channel(second.grpc_target) as ch:
                        topo = await operator_pb2_grpc.OperatorStub(ch).GetTopology(
                            operator_pb2.GetTopologyRequest(), timeout=2.0)
                    states = {f.identity.id: f.admin_state for f in topo.factories}
                    return states.get("eu-3") == DRAINED and len(states) == 3

                await async_wait_until(drained_again, timeout=20,
                                       what="eu-3 to come back drained")
        assert routed(fresh) == ALL - {"eu-3"}
    finally:
        first.stop()
        second.stop()
        etcd.stop()
