"""The web UI's HTTP endpoints on a running control plane: the page and its assets, the live
event stream, explain, history and the timeline."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from controlplane_support import (
    DEADLINE,
    EU_1,
    FACTORIES,
    MODEL,
    Agent,
    channel,
    report,
    report_all,
    running,
    wait_for,
)

from tdn.controlplane.server import ControlPlane


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) for every message of a Server-Sent Events response."""
    name, data = "message", ""
    while True:
        raw = await resp.content.readline()
        if not raw:
            return
        line = raw.decode().rstrip("\n")
        if not line:
            if data:
                yield name, json.loads(data)
            name, data = "message", ""
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data += line[len("data: "):]


async def ready(cp: ControlPlane) -> None:
    await wait_for(lambda: cp.solve_loop.plan is not None
                   and all(r.primary for _, r in cp.solve_loop.plan.routes)
                   and len(cp.registry.states()) == len(FACTORIES), "a plan routing every site")


async def test_the_page_and_every_asset_it_names_are_served(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, aiohttp.ClientSession() as http:
        async with http.get(f"{cp.http_url}/") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
        assert {a.split("?")[0] for a in assets} == {"/static/app.js", "/static/app.css"}
        for asset in assets:
            async with http.get(f"{cp.http_url}{asset}") as resp:
                assert resp.status == 200, asset
                assert len(await resp.read()) > 1000


async def test_the_event_stream_starts_with_a_snapshot_and_pushes_a_factory_going_down(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch, aiohttp.ClientSession() as http:
        agent = Agent(ch)
        await report_all(agent)
        await ready(cp)
        async with http.get(f"{cp.http_url}/api/events") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            stream = sse_events(resp)
            async with asyncio.timeout(DEADLINE):
                name, first = await anext(stream)
                assert name == "snapshot"
                assert set(first["factories"]) == {f.id for f in FACTORIES}
                await agent.send(report(EU_1, seq=2, reachable=False))
                async for name, patch in stream:
                    assert name == "patch" and patch["seq"] > first["seq"]
                    health = patch.get("factories", {}).get("eu-1", {}).get("health")
                    if health == "unhealthy":
                        break


async def test_explain_over_http_names_primaries_and_why_others_are_excluded(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch, aiohttp.ClientSession() as http:
        await report_all(Agent(ch))
        await ready(cp)
        url = f"{cp.http_url}/api/explain"
        async with http.get(url, params={"site": "fra", "model": MODEL}) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["site"] == "fra" and body["traffic_class"] == "default"
        assert body["plan_version"] == cp.solve_loop.status().version
        # The same answer the Operator service gives: the plan's route and its exclusions.
        plan = cp.solve_loop.plan
        assert plan is not None
        route = next(r for s, r in plan.routes if s == "fra" and r.model == MODEL)
        by_role: dict[str, set[str]] = {}
        for f in body["factories"]:
            by_role.setdefault(f["role"], set()).add(f["factory_id"])
        assert by_role["primary"] == {w.factory_id for w in route.primary}
        assert all(f["costs"] for f in body["factories"] if f["role"] == "primary")
        excluded = {(fid, why) for s, m, _, fid, why in plan.exclusions
                    if (s, m) == ("fra", MODEL)}
        assert {(f["factory_id"], f["excluded_by"]) for f in body["factories"]
                if f["role"] == "excluded"} == excluded
        assert body["requirements"] and body["notes"] and body["exact"] is True
        assert {f["role"] for f in body["factories"]} <= {"primary", "eligible", "excluded"} | {
            f"backup-{i}" for i in range(4)}
        async with http.get(url, params={"site": "nowhere", "model": MODEL}) as resp:
            assert resp.status == 404
            assert "known: fra, nyc" in (await resp.json())["error"]
        async with http.get(url, params={"site": "fra"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["code"] == "INVALID_ARGUMENT"


async def test_history_and_timeline_answer_for_known_factories(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch, aiohttp.ClientSession() as http:
        await report_all(Agent(ch))

        async def history() -> dict[str, Any] | None:
            async with http.get(f"{cp.http_url}/api/history",
                                params={"factory": "eu-1"}) as resp:
                return await resp.json() if resp.status == 200 else None

        body = None
        async with asyncio.timeout(DEADLINE):
            while body is None:
                body = await history()
                await asyncio.sleep(0.05)
        assert body["factory"] == "eu-1" and body["samples"]["t"]
        assert body["samples"]["health"][-1] == 1.0
        async with http.get(f"{cp.http_url}/api/history", params={"factory": "ghost"}) as resp:
            assert resp.status == 404
            assert "eu-1" in (await resp.json())["error"]
        async with http.get(f"{cp.http_url}/api/timeline") as resp:
            events = (await resp.json())["events"]
        assert {e["subject"] for e in events if e["kind"] == "factory-new"} == {
            f.id for f in FACTORIES}
        async with http.get(f"{cp.http_url}/api/timeline", params={"limit": "x"}) as resp:
            assert resp.status == 400


async def test_stopping_the_control_plane_ends_open_event_streams(tmp_path: Path) -> None:
    async with (running(tmp_path) as cp, aiohttp.ClientSession() as http,
                http.get(f"{cp.http_url}/api/events") as resp):
        stream = sse_events(resp)
        async with asyncio.timeout(DEADLINE):
            name, _ = await anext(stream)
            assert name == "snapshot"
            # A browser holding the stream open must not hold the shutdown up.
            await cp.stop()
            assert [n async for n, _ in stream] in ([], ["patch"])
