"""The control plane's HTTP face: health, Prometheus metrics and a JSON API for the web UI.

Endpoints: ``GET /healthz``, ``GET /metrics``, ``GET /api/topology``, ``GET /api/plan[?site=]``,
``GET /api/status``, and the live topology UI (:mod:`tdn.controlplane.ui`): the page at ``/``,
its event stream at ``/api/events`` and ``/api/explain``, ``/api/history``, ``/api/timeline``.
The JSON answers are computed from the live components on request; only the UI's live view
keeps state (its timeline and telemetry history). With an operator token, everything but
``/healthz``, ``/metrics`` and static files needs it (:mod:`tdn.controlplane.http_auth`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tdn.controlplane.http_auth import TokenGate
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.solve_loop import SolveLoop
from tdn.controlplane.status import StatusSource
from tdn.controlplane.ui.live import LiveView
from tdn.controlplane.ui.routes import ExplainFn, UiRoutes
from tdn.domain import FactoryState, Site
from tdn.topology.graph import build_graph, graph_to_json


def factory_json(state: FactoryState) -> dict[str, Any]:
    data = dataclasses.asdict(state)
    data["routable"] = state.routable
    return data


class HttpApi:
    """An aiohttp application over the live components, with its own runner."""

    def __init__(self, *, metrics: ControlPlaneMetrics, registry: FactoryRegistry,
                 solve_loop: SolveLoop, cache: SnapshotCache, status: StatusSource,
                 sites: Sequence[Site], explain: ExplainFn | None = None,
                 operator_token: str = "") -> None:
        self._metrics = metrics
        self._registry = registry
        self._loop = solve_loop
        self._cache = cache
        self._status = status
        self._sites = tuple(sites)
        self.live = LiveView(registry=registry, solve_loop=solve_loop, cache=cache,
                             status=status, sites=sites)
        self._ui = UiRoutes(self.live, explain=explain)
        self._gate = TokenGate(operator_token)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        self._gate.install(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._prometheus)
        app.router.add_get("/api/topology", self._topology)
        app.router.add_get("/api/plan", self._plan)
        app.router.add_get("/api/status", self._status_json)
        self._ui.install(app)
        return app

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the bound port."""
        # Access logs would print a line per UI poll and Prometheus scrape; errors still log.
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        # Liveness of this replica: it answers once serving, whether or not factories have
        # reported yet (a plan version of 0 says no plan has been made so far). Read-only (the
        # store unreachable) is still 200: the replica serves its last plan, and restarting it
        # would not bring the store back.
        view = self._status.status()
        return web.json_response({
            "status": "read-only" if view.read_only else "ok",
            "replica_id": view.replica_id, "plan_version": view.plan.version,
            "leader": view.leader, "read_only": view.read_only,
            "read_only_reason": view.read_only_reason})

    async def _prometheus(self, request: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _topology(self, request: web.Request) -> web.Response:
        states = self._registry.states()
        return web.json_response({
            "graph": graph_to_json(build_graph(states, self._sites)),
            "factories": [factory_json(f) for f in states],
            "sites": [dataclasses.asdict(s) for s in self._sites],
        })

    async def _plan(self, request: web.Request) -> web.Response:
        site = request.query.get("site", "")
        if site and site not in {s.id for s in self._sites}:
            raise web.HTTPNotFound(text=f"unknown site {site!r}\n")
        status = self._loop.status()
        plan = self._loop.plan
        body: dict[str, Any] = dataclasses.asdict(status)
        body["summary"] = status.summary
        body["routes"] = [] if plan is None else [
            {"site": s, **dataclasses.asdict(r)} for s, r in plan.routes if not site or s == site]
        body["exclusions"] = [] if plan is None else [
            dict(zip(("site", "model", "traffic_class", "factory_id", "reason"), e, strict=True))
            for e in plan.exclusions if not site or e[0] == site]
        body["sites"] = [dataclasses.asdict(s.policy) for s in self._cache.snapshots()
                         if not site or s.policy.site == site]
        return web.json_response(body)

    async def _status_json(self, request: web.Request) -> web.Response:
        return web.json_response(self._status.status().to_json())
