"""The UI's live view over a real control plane: what it pushes, and what lands on the
timeline, when factories, plans and sidecars change. Ticks are driven by the test."""

from __future__ import annotations

from pathlib import Path

import pytest
from controlplane_support import (
    EU_1,
    FACTORIES,
    MODEL,
    SITES,
    Agent,
    Sidecar,
    channel,
    report,
    report_all,
    running,
    wait_for,
)

from tdn.controlplane.server import ControlPlane
from tdn.controlplane.ui.live import LiveView, Subscription
from tdn.controlplane.ui.view import Record


def live_view(cp: ControlPlane) -> LiveView:
    return LiveView(registry=cp.registry, solve_loop=cp.solve_loop, cache=cp.cache,
                    status=cp.status, sites=SITES)


def kinds(events: list[Record]) -> list[str]:
    return [e["kind"] for e in events]


async def planned(cp: ControlPlane) -> None:
    def ready() -> bool:
        plan = cp.solve_loop.plan
        return (plan is not None and bool(plan.routes) and all(r.primary for _, r in plan.routes)
                and len(cp.registry.states()) == len(FACTORIES))

    await wait_for(ready, "a plan routing every site")


async def test_a_snapshot_has_every_factory_site_route_and_a_place_for_each(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await planned(cp)
        live = live_view(cp)
        assert live.tick() is not None
        snap = live.snapshot()
        assert set(snap["factories"]) == {f.id for f in FACTORIES}
        assert snap["factories"]["eu-1"]["health"] == "healthy"
        assert {s["id"] for s in snap["sites"]} == {"fra", "nyc"}
        positions = snap["layout"]["positions"]
        assert {f"factory:{f.id}" for f in FACTORIES} | {"site:fra", "site:nyc"} <= set(positions)
        routed = {w["factory_id"] for r in snap["plan"]["routes"] for w in r["primary"]}
        assert routed and routed <= set(snap["factories"])
        assert snap["plan"]["version"] == cp.solve_loop.status().version
        assert kinds(snap["events"]).count("factory-new") == len(FACTORIES)


async def test_nothing_changed_means_nothing_is_pushed(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await planned(cp)
        live = live_view(cp)
        live.tick()
        assert live.tick() is None


async def test_an_unreachable_engine_is_pushed_as_that_factory_alone_and_a_down_event(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        await planned(cp)
        live = live_view(cp)
        live.tick()
        await agent.send(report(EU_1, seq=2, reachable=False))
        patch = live.tick()
        assert patch is not None
        assert set(patch["factories"]) == {"eu-1"}
        assert patch["factories"]["eu-1"]["health"] == "unhealthy"
        down = [e for e in patch["events"] if e["kind"] == "factory-down"]
        assert [(e["subject"], e["severity"]) for e in down] == [("eu-1", "error")]
        assert "cannot reach the engine" in down[0]["detail"]
        series = live.history.series("eu-1", live.now())
        assert series is not None and series.columns["health"][-1] == 0.0


async def test_silence_past_the_ttl_shows_as_unknown_without_any_report(tmp_path: Path) -> None:
    async with running(tmp_path, ttl=0.3, report_interval=0.1) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        live = live_view(cp)
        live.tick()
        await wait_for(lambda: all(s.health == "unknown" for s in cp.registry.states()),
                       "every factory unknown")
        patch = live.tick()
        assert patch is not None
        assert {f["health"] for f in patch["factories"].values()} == {"unknown"}
        # Three at once is still told one by one; the text says why.
        downs = [e for e in patch["events"] if e["kind"] == "factory-down"]
        assert len(downs) == len(FACTORIES)
        assert all("no telemetry" in e["detail"] for e in downs)


async def test_re_solves_that_change_no_route_fold_into_one_timeline_line(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await planned(cp)
        live = live_view(cp)
        live.tick()
        ids = []
        for _ in range(2):
            before = cp.solve_loop.solves
            cp.solve_loop.notify()
            await wait_for(lambda b=before: cp.solve_loop.solves > b, "one more solve")
            patch = live.tick()
            assert patch is not None
            assert patch["plan"]["version"] == cp.solve_loop.status().version
            unchanged = [e for e in patch["events"] if e["kind"] == "plan"]
            assert len(unchanged) == 1 and "no route changed" in unchanged[0]["detail"]
            ids.append((unchanged[0]["id"], unchanged[0]["count"]))
        assert ids[0][0] == ids[1][0] and ids[1][1] == ids[0][1] + 1


async def test_sidecar_connect_ack_and_nack_reach_the_timeline(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await planned(cp)
        live = live_view(cp)
        live.tick()
        acking = Sidecar(ch, "sc-good", "fra")
        await acking.subscribe()
        await acking.ack(await acking.next())
        refusing = Sidecar(ch, "sc-bad", "nyc")
        await refusing.subscribe()
        await refusing.nack(await refusing.next(), running="", message="weights do not add up")
        await wait_for(lambda: {v.node_id: (v.acked_version, v.last_nack)
                                for v in cp.tracker.views()}.get("sc-bad", ("", ""))[1],
                       "the NACK recorded")
        await wait_for(lambda: any(v.node_id == "sc-good" and v.acked_version
                                   for v in cp.tracker.views()), "the ACK recorded")
        patch = live.tick()
        assert patch is not None
        events = {(e["kind"], e["subject"]): e for e in patch["events"]}
        assert ("sidecar-connected", "sc-good") in events
        assert ("sidecar-ack", "sc-good") in events
        nack = events[("sidecar-nack", "sc-bad")]
        assert nack["severity"] == "error" and "weights do not add up" in nack["detail"]
        assert {s["node_id"] for s in patch["status"]["sidecars"]} == {"sc-good", "sc-bad"}
        acking.close()
        refusing.close()


async def test_a_subscriber_gets_the_snapshot_first_then_every_patch(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        await planned(cp)
        live = live_view(cp)
        live.tick()
        sub, first = live.subscribe()
        assert first.startswith(f"retry: 1000\nid: {live.seq}\nevent: snapshot\ndata: {{".encode())
        await agent.send(report(EU_1, seq=2, reachable=False))
        patch = live.tick()
        assert patch is not None
        live.publish(patch)
        frame = sub.queue.get_nowait()
        assert frame is not None
        assert frame.startswith(f"id: {patch['seq']}\nevent: patch\n".encode())
        assert b'"eu-1"' in frame and frame.endswith(b"\n\n")
        live.close_all()
        assert sub.queue.get_nowait() is None


def test_a_subscriber_that_falls_behind_is_closed_rather_than_buffered() -> None:
    sub = Subscription(backlog=2)
    for i in range(3):
        sub.offer(f"frame {i}".encode())
    assert sub.closed
    assert sub.queue.qsize() == 1 and sub.queue.get_nowait() is None
    sub.offer(b"late")
    assert sub.queue.empty()


@pytest.mark.parametrize("model", [MODEL])
async def test_the_plan_record_names_its_routes_by_site_and_model(tmp_path: Path,
                                                                  model: str) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await planned(cp)
        live = live_view(cp)
        live.tick()
        routes = {(r["site"], r["model"]) for r in live.snapshot()["plan"]["routes"]}
        assert routes == {("fra", model), ("nyc", model)}
        policies = live.snapshot()["plan"]["policies"]
        assert set(policies) == {"fra", "nyc"}
