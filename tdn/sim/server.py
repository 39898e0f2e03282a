"""The simulator's HTTP face: OpenAI routes, /metrics, /health, the admin API, and running it.

``build_app`` wires a :class:`~tdn.sim.engine.Simulator` into an aiohttp application;
``run_simulator`` serves it on a port for as long as an ``async with`` block lasts, which is how
tests and ``tdn up`` run simulators in-process (each with its own metrics registry, so several
can share a process). Client disconnects cancel their handler, as a real engine aborts the
request, so a hung or queued request never outlives its client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from tdn.sim.engine import Simulator, error_response, json_response
from tdn.sim.faults import HEALTHY, Fault, FaultError, fault_from_mapping
from tdn.sim.protocol import ApiError, model_not_found
from tdn.sim.settings import SimSettings

log = logging.getLogger("tdn.sim")

SIMULATOR = web.AppKey("simulator", Simulator)

# Large enough that an over-long prompt is answered with context_length_exceeded, not a 413.
MAX_BODY_BYTES = 32 * 1024 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer routing errors and bugs in OpenAI's error shape instead of aiohttp's text pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(ApiError(exc.status, f"{exc.reason}: {request.method} "
                                                    f"{request.path}"))
    except ApiError as err:
        return error_response(err)
    except Exception:
        log.exception("simulator bug while serving %s %s", request.method, request.path)
        return error_response(ApiError(500, "The simulator failed while processing your "
                                            "request.", type_="server_error"))


def _sim(request: web.Request) -> Simulator:
    return request.app[SIMULATOR]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _sim(request).handle_generation(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _sim(request).handle_generation(request, "completion")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _sim(request).handle_embeddings(request)


def _model_card(sim: Simulator, model: str) -> dict[str, object]:
    return {"id": model, "object": "model", "created": sim.started, "owned_by": "vllm",
            "root": model, "parent": None, "max_model_len": sim.settings.max_model_len}


async def list_models(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    return json_response({"object": "list",
                          "data": [_model_card(sim, m) for m in sim.settings.models]})


async def get_model(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    model = request.match_info["model"]
    if model not in sim.settings.models:
        raise model_not_found(model)
    return json_response(_model_card(sim, model))


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def metrics(request: web.Request) -> web.StreamResponse:
    # Text format 0.0.4: what a vLLM server answers a plain scrape with.
    return web.Response(body=generate_latest(_sim(request).registry),
                        headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})


async def get_fault(request: web.Request) -> web.StreamResponse:
    return json_response(_sim(request).faults.current.to_json())


async def set_fault(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    try:
        body = await request.json()
    except ValueError as exc:
        raise ApiError(400, f"The fault must be a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The fault must be a JSON object with a 'mode'.")
    try:
        fault = fault_from_mapping(body)
    except FaultError as exc:
        raise ApiError(400, str(exc)) from None
    sim.faults.set(fault)
    log.info("factory %s: fault set to %s", sim.settings.id, fault.to_json())
    return json_response(fault.to_json())


async def clear_fault(request: web.Request) -> web.StreamResponse:
    sim = _sim(request)
    sim.faults.set(HEALTHY)
    log.info("factory %s: fault cleared", sim.settings.id)
    return json_response(HEALTHY.to_json())


async def stats(request: web.Request) -> web.StreamResponse:
    return json_response(_sim(request).stats_json())


def build_app(settings: SimSettings) -> web.Application:
    """An aiohttp application serving one simulated factory; raises SettingsError if invalid."""
    app = web.Application(middlewares=[openai_errors], client_max_size=MAX_BODY_BYTES)
    app[SIMULATOR] = Simulator(settings)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/fault", get_fault)
    app.router.add_post("/admin/fault", set_fault)
    app.router.add_delete("/admin/fault", clear_fault)
    app.router.add_get("/admin/stats", stats)
    return app


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator serving on a port, as :func:`run_simulator` yields it."""

    settings: SimSettings
    simulator: Simulator
    host: str
    port: int

    @property
    def base_url(self) -> str:
        """``http://host:port``, for /metrics, /health and /admin."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL (``.../v1``), as clients and factory endpoints take it."""
        return f"{self.base_url}/v1"

    @property
    def fault(self) -> Fault:
        return self.simulator.faults.current

    def set_fault(self, fault: Fault | None) -> None:
        """Put ``fault`` in force for requests that arrive from now on; None heals."""
        self.simulator.faults.set(fault or HEALTHY)

    def stats(self) -> dict[str, object]:
        return self.simulator.stats_json()


@asynccontextmanager
async def run_simulator(settings: SimSettings) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator for the duration of the block; ``settings.port=0`` picks a free port."""
    app = build_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = int(runner.addresses[0][1])
        yield RunningSimulator(settings, app[SIMULATOR], settings.host, port)
    finally:
        await runner.cleanup()
