"""The Operator service over gRPC: admin states, topology, plan, status and explain."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from controlplane_support import (
    EU_1,
    EU_2,
    US_1,
    Agent,
    Sidecar,
    channel,
    operator,
    report,
    report_all,
    routed_ids,
    running,
    wait_for,
)

from tdn.domain import Health
from tdn.v1 import discovery_pb2, operator_pb2

DRAINED = operator_pb2.FACTORY_ADMIN_STATE_DRAINED
CORDONED = operator_pb2.FACTORY_ADMIN_STATE_CORDONED
ACTIVE = operator_pb2.FACTORY_ADMIN_STATE_ACTIVE


def primaries(response: discovery_pb2.DiscoveryResponse) -> set[str]:
    return {w.factory_id for r in response.policy.routes for w in r.primary}


async def test_draining_a_factory_removes_it_from_every_route_and_activating_restores_it(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))

        answer = await operator(ch).SetFactoryState(
            operator_pb2.SetFactoryStateRequest(factory_id="eu-1", state=DRAINED))
        assert answer.factory_id == "eu-1" and answer.state == DRAINED
        drained = await sidecar.next_where(lambda r: "eu-1" not in routed_ids(r))
        assert "eu-2" in routed_ids(drained)
        topo = await operator(ch).GetTopology(operator_pb2.GetTopologyRequest())
        assert {f.identity.id: f.admin_state for f in topo.factories}["eu-1"] == DRAINED

        await operator(ch).SetFactoryState(
            operator_pb2.SetFactoryStateRequest(factory_id="eu-1", state=ACTIVE))
        await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))
        sidecar.close()


async def test_a_cordoned_factory_takes_no_primary_traffic(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: "eu-1" in primaries(r))
        await operator(ch).SetFactoryState(
            operator_pb2.SetFactoryStateRequest(factory_id="eu-1", state=CORDONED))
        cordoned = await sidecar.next_where(lambda r: "eu-1" not in primaries(r))
        assert primaries(cordoned) == {"eu-2"}
        sidecar.close()


async def test_a_drained_factory_stays_drained_across_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch), (EU_1,))
        await operator(ch).SetFactoryState(
            operator_pb2.SetFactoryStateRequest(factory_id="eu-1", state=DRAINED))
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch), (EU_1,))
        topo = await operator(ch).GetTopology(operator_pb2.GetTopologyRequest())
        assert [f.admin_state for f in topo.factories] == [DRAINED]


async def test_setting_the_state_of_an_unknown_factory_is_refused_by_name(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch), (EU_1,))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await operator(ch).SetFactoryState(
                operator_pb2.SetFactoryStateRequest(factory_id="nope", state=DRAINED))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "'nope'" in (err.value.details() or "") and "eu-1" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await operator(ch).SetFactoryState(
                operator_pb2.SetFactoryStateRequest(factory_id="eu-1"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_plan_returns_every_site_or_one_and_refuses_an_unknown_site(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await wait_for(lambda: {"eu-1", "us-1"} <= {
            w.factory_id for _, r in (cp.solve_loop.plan.routes if cp.solve_loop.plan else ())
            for w in r.primary}, "a plan routing both sites")
        plan = await operator(ch).GetPlan(operator_pb2.GetPlanRequest())
        assert plan.version == cp.solve_loop.status().version
        assert sorted(s.site for s in plan.sites) == ["fra", "nyc"]
        assert plan.status.startswith(("optimal", "feasible"))
        one = await operator(ch).GetPlan(operator_pb2.GetPlanRequest(site="nyc"))
        assert [s.site for s in one.sites] == ["nyc"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await operator(ch).GetPlan(operator_pb2.GetPlanRequest(site="atlantis"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_explain_names_the_chosen_factories_with_costs_and_the_excluded_with_reasons(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        await agent.send(report(EU_2, seq=2, reachable=False))
        await wait_for(lambda: cp.solve_loop.inputs is not None and any(
            f.spec.id == "eu-2" and f.health == Health.UNHEALTHY
            for f in cp.solve_loop.inputs.factories), "a plan solved with eu-2 unhealthy")
        answer = await operator(ch).Explain(
            operator_pb2.ExplainRequest(site="fra", model=EU_1.models[0]))
        assert answer.plan_version == cp.solve_loop.status().version
        assert answer.traffic_class == "default"
        roles = {f.factory_id: f for f in answer.factories}
        assert roles["eu-1"].role == "primary" and roles["eu-1"].weight == pytest.approx(1.0)
        assert {"price", "latency", "carbon", "energy", "total"} <= {
            c.name for c in roles["eu-1"].costs}
        assert roles["eu-2"].role == "excluded" and roles["eu-2"].excluded_by == "unhealthy"
        assert roles[US_1.id].role == "excluded" and "zone" in roles[US_1.id].excluded_by
        # Rows are factories only; the group's rules and notes have fields of their own.
        assert set(roles) == {"eu-1", "eu-2", US_1.id}
        assert list(answer.requirements) == ["zones eu, on-site:fra", "ttft <= 2 s"]
        assert any(n.startswith(f"plan {answer.plan_version}") for n in answer.notes)
        assert answer.exact

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await operator(ch).Explain(operator_pb2.ExplainRequest(site="fra", model="gpt-9"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_status_reports_replica_store_plan_and_factory_counts(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        await agent.send(report(EU_2, seq=2, reachable=False))
        status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
        assert status.replica_id == "test-replica"
        assert status.leader and not status.read_only
        assert status.store == "embedded"
        assert (status.factories_healthy, status.factories_total) == (2, 3)
        await wait_for(lambda: cp.solve_loop.status().version > 0, "a plan")
        status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
        assert status.plan_version >= 1 and status.plan_status
