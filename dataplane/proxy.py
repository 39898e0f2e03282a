"""The OpenAI-compatible reverse proxy: the aiohttp application a sidecar serves to applications.

A request is read and checked (:mod:`openai_api`), routed by the live policy (:mod:`balancer`),
sent to candidates in order until one answers (:mod:`failover`) and relayed as it streams
(:mod:`relay`). The upstream URL comes only from the policy's ``base_url`` plus the endpoint's
fixed suffix: nothing a client sends can choose where its request goes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from tdn.domain import FactoryEndpoint

from . import access_log, api_errors, headers, openai_api
from .access_log import AccessRecord
from .balancer import Balancer
from .credentials import Credentials
from .failover import (
    AllAttemptsFailed,
    AttemptFailure,
    CandidateUnusable,
    open_first_response,
)
from .live_policy import LivePolicy
from .metrics import SidecarMetrics
from .relay import relay

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Connection handling towards factories and limits towards clients."""

    # Connecting to a healthy factory takes well under a second; past that, the next one is
    # likelier to answer sooner.
    connect_timeout_s: float = 1.0
    # Longest silence tolerated while waiting for, or between, upstream bytes. Generous on
    # purpose until first-byte deadlines per factory arrive.
    read_timeout_s: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024
    pool_limit: int = 1024
    keepalive_timeout_s: float = 30.0


class Proxy:
    """Request handling over a live policy; :meth:`app` builds the aiohttp application."""

    def __init__(self, live: LivePolicy, metrics: SidecarMetrics,
                 credentials: Credentials | None = None,
                 settings: ProxySettings | None = None) -> None:
        self.live = live
        self.metrics = metrics
        self.credentials = credentials if credentials is not None else Credentials()
        self.settings = settings if settings is not None else ProxySettings()
        self.balancer = Balancer()
        self._session: aiohttp.ClientSession | None = None

    # --- application and its lifecycle -------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes,
                              middlewares=[_openai_errors])
        for endpoint in openai_api.ENDPOINTS:
            app.router.add_post(endpoint.path, self._handler_for(endpoint))
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{model:.+}", self.get_model)
        app.cleanup_ctx.append(self._session_ctx)
        return app

    async def _session_ctx(self, app: web.Application) -> AsyncIterator[None]:
        # One pool per sidecar: keep-alive connections to factories are what makes a failover
        # or a next request cheap.
        connector = aiohttp.TCPConnector(limit=self.settings.pool_limit, limit_per_host=0,
                                         keepalive_timeout=self.settings.keepalive_timeout_s)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s,
                                        sock_read=self.settings.read_timeout_s)
        # DummyCookieJar: a cookie set by a factory for one tenant must never ride along on
        # another tenant's request.
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar())
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the proxy application is not running")
        return self._session

    # --- models --------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        policy = self.live.current
        if policy is None:
            raise api_errors.no_policy()
        created = int(policy.generated_at)
        models = sorted({r.model for r in policy.routes})
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "tdn"} for m in models
        ]})

    async def get_model(self, request: web.Request) -> web.Response:
        policy = self.live.current
        if policy is None:
            raise api_errors.no_policy()
        model = request.match_info["model"]
        if not any(r.model == model for r in policy.routes):
            raise api_errors.model_not_found(model)
        return web.json_response({"id": model, "object": "model",
                                  "created": int(policy.generated_at), "owned_by": "tdn"})

    # --- proxied endpoints ---------------------------------------------------------------------

    def _handler_for(self, endpoint: openai_api.Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, endpoint)

        return handle

    async def handle(self, request: web.Request,
                     endpoint: openai_api.Endpoint) -> web.StreamResponse:
        started = time.monotonic()
        record = AccessRecord(request_id=headers.request_id(request.headers),
                              method=request.method, path=request.path)
        metric_model = ""
        try:
            response = await self._serve(request, endpoint, record)
            metric_model = record.model
        except api_errors.ApiError as err:
            record.status = err.status
            record.outcome = record.outcome or "rejected"
            if record.factory or record.attempts:
                metric_model = record.model
            out = {headers.REQUEST_ID: record.request_id}
            if record.attempts:
                out[headers.ATTEMPTS] = str(record.attempts)
            response = err.response(headers=out)
        except asyncio.CancelledError:
            # The client went away (or the sidecar is stopping past its grace period).
            record.outcome = record.outcome or "client_gone"
            metric_model = record.model if record.factory else ""
            raise
        finally:
            elapsed = time.monotonic() - started
            record.duration_ms = elapsed * 1000.0
            if not record.outcome:
                # Cancelled or a bug: the access line still records that the request ended.
                record.outcome = "aborted"
            self.metrics.request_done(record.factory, record.tier, metric_model, record.outcome,
                                      elapsed)
            access_log.emit(record)
        return response

    async def _serve(self, request: web.Request, endpoint: openai_api.Endpoint,
                     record: AccessRecord) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise api_errors.body_too_large(self.settings.max_body_bytes) from None
        parsed = openai_api.parse_request(endpoint, raw)
        record.model = parsed.model
        record.streamed = parsed.stream
        record.traffic_class = headers.traffic_class(request.headers)
        policy = self.live.current
        if policy is None:
            record.outcome = "no_policy"
            raise api_errors.no_policy()
        route = policy.route_for(parsed.model, record.traffic_class)
        if route is None:
            record.outcome = "unknown_model"
            raise api_errors.model_not_found(parsed.model)
        candidates = self.balancer.candidates(policy, route)
        if not candidates:
            record.outcome = "no_route"
            raise api_errors.no_candidates(parsed.model)

        forwarded = list(request.headers.items())
        has_content_type = any(k.lower() == "content-type" for k, _ in forwarded)

        async def send(factory: FactoryEndpoint) -> aiohttp.ClientResponse:
            authorization: str | None = None
            if factory.credential_ref:
                authorization = self.credentials.authorization(factory.credential_ref)
                if authorization is None:
                    raise CandidateUnusable(
                        "no_credential", f"factory {factory.id} needs credential "
                        f"{factory.credential_ref!r}, which this sidecar does not hold")
            up_headers = headers.upstream_request_headers(forwarded, record.request_id,
                                                          authorization)
            if not has_content_type:
                up_headers["Content-Type"] = "application/json"
            url = factory.base_url.rstrip("/") + endpoint.upstream_suffix
            # Redirects are not followed: an upstream must not be able to send a request
            # (and its credential) somewhere the policy did not name.
            return await self.session.post(url, data=parsed.body, headers=up_headers,
                                           allow_redirects=False)

        def on_failure(failure: AttemptFailure) -> None:
            self.metrics.failover(failure.factory_id, failure.tier, parsed.model, failure.reason)
            log.info("request %s: %s (%s); trying the next candidate", record.request_id,
                     failure.detail, failure.reason)

        try:
            opened = await open_first_response(candidates, send, on_failure)
        except AllAttemptsFailed as exc:
            record.attempts = exc.attempts
            record.outcome = "all_failed"
            raise api_errors.all_attempts_failed(parsed.model, exc.attempts,
                                                 exc.failures[-1].detail) from None
        record.attempts = opened.attempts
        record.factory = opened.endpoint.id
        record.tier = opened.endpoint.tier.value
        record.status = opened.response.status
        extra = {
            headers.REQUEST_ID: record.request_id,
            headers.FACTORY: opened.endpoint.id,
            headers.TIER: opened.endpoint.tier.value,
            headers.ATTEMPTS: str(opened.attempts),
        }
        response, result = await relay(request, opened, extra)
        record.status = result.status
        record.streamed = result.streamed
        if result.outcome == "ok":
            record.outcome = "ok" if result.status < 400 else "upstream_4xx"
        else:
            record.outcome = result.outcome
        return response


@web.middleware
async def _openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer routing misses, refusals and bugs in OpenAI's error shape, never as HTML or text."""
    try:
        return await handler(request)
    except api_errors.ApiError as err:
        return err.response()
    except web.HTTPNotFound:
        return api_errors.not_found(request.path).response()
    except web.HTTPMethodNotAllowed:
        return api_errors.method_not_allowed(request.method, request.path).response()
    except web.HTTPException:
        raise
    except Exception:
        log.exception("bug: unhandled error serving %s %s", request.method, request.path)
        return api_errors.ApiError(500, "The TDN sidecar failed to handle this request.",
                                   type_="server_error", code="internal_error").response()
