"""The assembled control plane: plan versions across restarts, failed solves, gRPC health, the
HTTP endpoints and the Usage service."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from controlplane_support import (
    EU_1,
    FACTORIES,
    Agent,
    channel,
    report_all,
    running,
    settings,
    wait_for,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tdn.controlplane.server import (
    SERVICE_NAMES,
    ControlPlane,
    ControlPlaneSettings,
    SettingsError,
)
from tdn.domain import Plan
from tdn.topology.solver import solve
from tdn.v1 import usage_pb2, usage_pb2_grpc


async def test_plan_versions_continue_above_the_stored_one_after_a_restart(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))  # new factories: at least one more solve after the first
        await wait_for(lambda: cp.solve_loop.status().version >= 2, "a second plan")
        cp.solve_loop.notify()
        before = cp.solve_loop.solves
        await wait_for(lambda: cp.solve_loop.solves > before, "one more solve")
        last = cp.solve_loop.status().version
        served = {s.policy.site: s.policy for s in cp.cache.snapshots()}
    # Restarted (and not solving yet): the stored plan and policies are in force at once.
    async with running(tmp_path, warmup=60.0) as cp:
        assert cp.solve_loop.status().version == last
        assert {s.policy.site: s.policy for s in cp.cache.snapshots()} == served
    async with running(tmp_path) as cp:
        await wait_for(lambda: cp.solve_loop.solves > 0, "the first solve after restart")
        assert cp.solve_loop.status().version == last + 1


async def test_a_failing_solve_keeps_the_previous_plan_and_says_why(tmp_path: Path) -> None:
    broken = False

    def flaky_solver(*args: Any, **kwargs: Any) -> Plan:
        if broken:
            raise RuntimeError("solver exploded")
        return solve(*args, **kwargs)

    async with running(tmp_path, solver=flaky_solver) as cp, channel(cp) as ch:
        await wait_for(lambda: cp.solve_loop.status().version > 0, "the first plan")
        good = cp.solve_loop.plan
        served = cp.cache.get("fra")
        broken = True
        before = cp.solve_loop.solves
        await report_all(Agent(ch))
        await wait_for(lambda: cp.solve_loop.solves > before, "the failed solve")
        status = cp.solve_loop.status()
        assert cp.solve_loop.plan is good
        assert cp.cache.get("fra") is served
        assert "solver exploded" in status.summary and "previous plan kept" in status.summary
        assert cp.metrics.registry.get_sample_value("tdn_solves_total", {"result": "error"}) >= 1

        broken = False
        cp.solve_loop.notify()
        await wait_for(lambda: cp.solve_loop.status().version > good.version, "recovery")
        # The failed attempt did not use up a version number.
        assert cp.solve_loop.status().version == good.version + 1
        assert cp.solve_loop.status().last_error == ""


async def test_a_second_control_plane_on_a_taken_grpc_port_fails_to_start(
        tmp_path: Path) -> None:
    async with running(tmp_path / "a") as first:
        second = ControlPlane(settings(tmp_path / "b", grpc_address=first.grpc_target))
        with pytest.raises(OSError, match="cannot listen for gRPC"):
            await second.start()
        await second.stop()  # idempotent after a failed start


async def test_grpc_health_answers_serving_for_the_server_and_every_service(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", *SERVICE_NAMES):
            answer = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
        assert "tdn.v1.Discovery" in SERVICE_NAMES


async def test_http_endpoints_answer_health_metrics_and_json(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch, aiohttp.ClientSession() as http:
        await report_all(Agent(ch))
        await wait_for(lambda: cp.solve_loop.status().version > 0, "a plan")

        async with http.get(f"{cp.http_url}/healthz") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["status"] == "ok" and body["plan_version"] >= 1
        async with http.get(f"{cp.http_url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
            assert 'tdn_telemetry_reports_total{factory="eu-1"}' in text
            assert "tdn_discovery_streams" in text and "tdn_plan_version" in text
        async with http.get(f"{cp.http_url}/api/topology") as resp:
            topo = await resp.json()
            assert {f["spec"]["id"] for f in topo["factories"]} == {f.id for f in FACTORIES}
            assert all(f["health"] == "healthy" and f["routable"] for f in topo["factories"])
            assert topo["graph"] and {s["id"] for s in topo["sites"]} == {"fra", "nyc"}
        async with http.get(f"{cp.http_url}/api/plan?site=fra") as resp:
            plan = await resp.json()
            assert plan["version"] >= 1 and [s["site"] for s in plan["sites"]] == ["fra"]
            assert all(r["site"] == "fra" for r in plan["routes"])
        async with http.get(f"{cp.http_url}/api/plan?site=atlantis") as resp:
            assert resp.status == 404
        async with http.get(f"{cp.http_url}/api/status") as resp:
            status = await resp.json()
            assert status["replica_id"] == "test-replica"
            assert status["factories_total"] == 3 and status["plan"]["version"] >= 1
        async with http.get(f"{cp.http_url}/") as resp:
            page = await resp.text()
            assert resp.status == 200 and "<html" in page


async def test_two_control_planes_in_one_process_keep_separate_metrics(tmp_path: Path) -> None:
    async with running(tmp_path / "a") as a, running(tmp_path / "b") as b, channel(a) as ch:
        await report_all(Agent(ch), (EU_1,))
        assert a.metrics.registry.get_sample_value(
            "tdn_telemetry_reports_total", {"factory": "eu-1"}) == 1.0
        assert b.metrics.registry.get_sample_value(
            "tdn_telemetry_reports_total", {"factory": "eu-1"}) is None


async def test_usage_is_summed_per_tenant_factory_and_model_and_counted_once(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        usage = usage_pb2_grpc.UsageStub(ch)

        def record(tenant: str, tokens: int) -> usage_pb2.UsageRecord:
            return usage_pb2.UsageRecord(tenant=tenant, factory_id="eu-1", model="m",
                                         requests=1, prompt_tokens=tokens,
                                         completion_tokens=tokens // 2, cost=0.01)

        first = usage_pb2.UsageReport(node_id="sc-1", report_id="r1",
                                      records=[record("acme", 100), record("globex", 10)])
        second = usage_pb2.UsageReport(node_id="sc-1", report_id="r2",
                                       records=[record("acme", 50)])
        assert (await usage.Report(first)).counted
        assert (await usage.Report(second)).counted
        repeat = await usage.Report(first)
        assert repeat.report_id == "r1" and not repeat.counted

        acme = await usage.Query(usage_pb2.UsageQuery(tenant="acme"))
        assert [(r.tenant, r.requests, r.prompt_tokens, r.completion_tokens)
                for r in acme.records] == [("acme", 2, 150, 75)]
        assert acme.records[0].cost == pytest.approx(0.02)
        everyone = await usage.Query(usage_pb2.UsageQuery())
        assert sorted(r.tenant for r in everyone.records) == ["acme", "globex"]

        bad = usage_pb2.UsageReport(node_id="sc-1", report_id="r3", records=[
            usage_pb2.UsageRecord(tenant="acme", factory_id="eu-1", model="m", cost=math.nan)])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await usage.Report(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "records[0].cost" in (err.value.details() or "")


@pytest.mark.parametrize(("overrides", "message"), [
    ({"grpc_address": "localhost"}, "grpc address 'localhost' is not host:port"),
    ({"http_address": "127.0.0.1:99999"}, "http address"),
    ({"report_interval": 0.0}, "report_interval must be positive"),
    ({"ttl": -1.0}, "ttl must be positive"),
])
def test_nonsense_settings_are_refused_naming_the_setting(
        tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    from controlplane_support import NETWORK

    settings = ControlPlaneSettings(network=NETWORK, **overrides)
    with pytest.raises(SettingsError, match=message):
        settings.validate()


def test_status_json_is_plain_json(tmp_path: Path) -> None:
    from tdn.controlplane.sidecars import SidecarView
    from tdn.controlplane.solve_loop import PlanStatus
    from tdn.controlplane.status import StatusView

    view = StatusView(replica_id="r", leader=True, store="embedded", read_only=False,
                      plan=PlanStatus(1, "optimal", 0.0, 0.0, 0.0, "boom"),
                      sidecars=(SidecarView("n", "fra", "", "", True, "1", "", 0.0),),
                      factories_healthy=1, factories_total=1)
    data = json.loads(json.dumps(view.to_json()))
    assert data["plan"]["summary"] == "optimal; last solve failed, previous plan kept: boom"
    assert data["sidecars"][0]["acked_version"] == "1"
