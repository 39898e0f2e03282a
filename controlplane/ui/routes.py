"""The web UI's HTTP endpoints, installed into the control plane's aiohttp application.

``GET /`` the page and ``/static/*`` its built assets (``web/`` is the source); ``GET /api/events``
the live Server-Sent Events stream (a snapshot, then patches); ``GET /api/explain`` why a site's
route for a model is what it is (the Operator service's Explain, as JSON); ``GET /api/history``
a factory's recent telemetry; ``GET /api/timeline`` the recent events. The live view's task is
owned by the application (started on startup, cancelled on cleanup), and open streams are ended
on shutdown so that stopping the server never waits on a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import grpc
from aiohttp import web
from google.protobuf import json_format

from tdn.controlplane.ui.live import LiveView
from tdn.v1 import operator_pb2

# The Operator servicer's Explain: (request, context) -> response; it reports user errors
# through ``context.abort``.
ExplainFn = Callable[[operator_pb2.ExplainRequest, Any],
                     Awaitable[operator_pb2.ExplainResponse]]

# Long enough that idle proxies keep the stream open, short enough to notice a gone browser.
KEEPALIVE_SECONDS = 15.0

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
}


def static_dir() -> Path:
    """Where the built assets are (inside the installed package)."""
    return Path(str(resources.files("tdn.controlplane.ui").joinpath("static")))


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _AbortContext:
    """The one part of a gRPC servicer context that Explain uses, for calling it over HTTP."""

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise _Aborted(code, details)


class UiRoutes:
    """The UI's handlers over one :class:`LiveView`."""

    def __init__(self, live: LiveView, *, explain: ExplainFn | None = None,
                 assets: Path | None = None) -> None:
        self.live = live
        self._explain = explain
        self._assets = assets if assets is not None else static_dir()
        self._task: asyncio.Task[None] | None = None

    def install(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/explain", self._explain_json)
        app.router.add_get("/api/history", self._history)
        app.router.add_get("/api/timeline", self._timeline)
        if self._assets.is_dir():
            app.router.add_static("/static/", self._assets, append_version=False)
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._close_streams)

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self.live.run(), name="ui-live-view")
        yield
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _close_streams(self, app: web.Application) -> None:
        self.live.close_all()

    # --- page ----------------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = self._assets / "index.html"
        if not page.is_file():
            raise web.HTTPServiceUnavailable(
                text="the web UI's assets are not built: run `npm ci && npm run build` in web/\n")
        # The page names its assets by content hash, so only the page itself must be re-read.
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    # --- live stream ---------------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        sub, first = self.live.subscribe()
        try:
            await response.write(first)
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_SECONDS):
                        frame = await sub.queue.get()
                except TimeoutError:
                    frame = b": keep-alive\n\n"
                if frame is None:
                    break  # closed: too slow, or the server is stopping
                await response.write(frame)
        except ConnectionError:
            pass  # the browser went away
        finally:
            self.live.unsubscribe(sub)
        return response

    # --- JSON ----------------------------------------------------------------------------------

    async def _explain_json(self, request: web.Request) -> web.Response:
        if self._explain is None:
            raise web.HTTPServiceUnavailable(text="explain is not available on this server\n")
        query = request.query
        req = operator_pb2.ExplainRequest(site=query.get("site", ""),
                                          model=query.get("model", ""),
                                          traffic_class=query.get("class", ""))
        try:
            answer = await self._explain(req, _AbortContext())
        except _Aborted as exc:
            return web.json_response({"error": exc.details, "code": exc.code.name},
                                     status=_HTTP_STATUS.get(exc.code, 500))
        body = json_format.MessageToDict(answer, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        # Proto JSON writes 64-bit integers as strings; the page wants the number.
        body["plan_version"] = int(body.get("plan_version", 0))
        return web.json_response(body)

    async def _history(self, request: web.Request) -> web.Response:
        factory = request.query.get("factory", "")
        series = self.live.history.series(factory, self.live.now())
        if series is None:
            known = ", ".join(sorted(self.live.factory_ids())[:20]) or "none"
            return web.json_response(
                {"error": f"no telemetry history for factory {factory!r} (known: {known})"},
                status=404)
        return web.json_response(series.to_json())

    async def _timeline(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "200"))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        return web.json_response(
            {"events": [e.to_json() for e in self.live.events.recent(max(limit, 0))]})
