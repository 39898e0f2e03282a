"""The sidecar's admin HTTP server, on its own port: health, Prometheus metrics and the policy.

It is separate from the proxy port so that applications, which may reach the proxy, never reach
these, and so that a scrape or a health check never queues behind application traffic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from tdn.domain import SitePolicy

from .live_policy import LivePolicy
from .metrics import SidecarMetrics


def policy_json(policy: SitePolicy) -> dict[str, Any]:
    """A SitePolicy as plain JSON (tiers as their names)."""
    return dataclasses.asdict(policy)


def build_admin_app(live: LivePolicy, metrics: SidecarMetrics, node_id: str,
                    site: str) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        policy = live.current
        if policy is None:
            return web.json_response({"status": "no policy", "node_id": node_id, "site": site},
                                     status=503)
        return web.json_response({"status": "ok", "node_id": node_id, "site": site,
                                  "policy_version": policy.version})

    async def metrics_handler(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def policy_handler(request: web.Request) -> web.Response:
        policy = live.current
        if policy is None:
            return web.json_response({"status": "no policy"}, status=503)
        return web.json_response(policy_json(policy))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/policy", policy_handler)
    return app
