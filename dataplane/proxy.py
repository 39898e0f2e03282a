"""The OpenAI-compatible reverse proxy: the aiohttp application a sidecar serves to applications.

Each request is an :class:`~tdn.dataplane.exchange.Exchange`; this module holds what outlives
requests: the connection pool to factories, the routing table compiled from the live policy,
factory health (ejections, cooldowns) and its prober, the retry budget, the meter, and the
bookkeeping every request ends with (one access-log line, request metrics). The upstream URL
comes only from the policy's ``base_url`` plus the endpoint's fixed suffix: nothing a client
sends can choose where its request goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from tdn.domain import SitePolicy

from . import access_log, api_errors, headers, openai_api
from .access_log import AccessRecord
from .credentials import Credentials
from .exchange import Exchange, ProxySettings, Shared
from .failover import RetryTicket
from .health import FactoryHealth
from .live_policy import LivePolicy
from .metering import Meter
from .metrics import SidecarMetrics
from .overhead import OverheadClock
from .prober import Prober
from .retry_budget import RetryBudget
from .routing_table import RoutingTable
from .tenants import Tenants

__all__ = ["Proxy", "ProxySettings"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Proxy:
    """Request handling over a live policy; :meth:`app` builds the aiohttp application."""

    def __init__(self, live: LivePolicy, metrics: SidecarMetrics,
                 credentials: Credentials | None = None,
                 settings: ProxySettings | None = None, *,
                 tenants: Tenants | None = None, meter: Meter | None = None) -> None:
        self.live = live
        self.metrics = metrics
        self.credentials = credentials if credentials is not None else Credentials()
        self.settings = settings if settings is not None else ProxySettings()
        self.tenants = tenants if tenants is not None else Tenants()
        self.meter = meter if meter is not None else Meter()
        self.health = FactoryHealth(metrics)
        self.retry_budget = RetryBudget()
        budget = self.retry_budget
        metrics.watch_load(lambda: budget.active, lambda: budget.retries_in_flight)
        self.table: RoutingTable | None = None
        self._session: aiohttp.ClientSession | None = None
        self._shared: Shared | None = None
        self.prober = Prober(self.health, metrics, self.credentials, lambda: self.table,
                             lambda: self.session)
        live.add_listener(self.policy_swapped)

    def policy_swapped(self, policy: SitePolicy) -> None:
        """Compile ``policy`` for the request path (once per policy, never per request)."""
        table = RoutingTable(policy)
        self.health.policy_changed(table)
        self.retry_budget.configure(table.settings.retry_budget_percent,
                                    table.settings.retry_budget_min_concurrency)
        self.table = table

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
        # Per-request timeouts are set by each exchange (first-byte deadlines, idle timeout).
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s)
        # DummyCookieJar: a cookie set by a factory for one tenant must never ride along on
        # another tenant's request.
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                              auto_decompress=False,
                                              cookie_jar=aiohttp.DummyCookieJar())
        self._shared = Shared(self._session, self.credentials, self.metrics, self.health,
                              self.tenants, self.meter, self.settings)
        prober = asyncio.create_task(self.prober.run(), name="tdn-prober")
        try:
            yield
        finally:
            prober.cancel()
            await asyncio.wait([prober])
            if not prober.cancelled() and prober.exception() is not None:
                log.error("the prober stopped by a bug", exc_info=prober.exception())
            self._shared = None
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the proxy application is not running")
        return self._session

    # --- models --------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        table = self.table
        if table is None:
            raise api_errors.no_policy()
        created = int(table.policy.generated_at)
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "tdn"}
            for m in table.models
        ]})

    async def get_model(self, request: web.Request) -> web.Response:
        table = self.table
        if table is None:
            raise api_errors.no_policy()
        model = request.match_info["model"]
        if table.route(model) is None:
            raise api_errors.model_not_found(model)
        return web.json_response({"id": model, "object": "model",
                                  "created": int(table.policy.generated_at), "owned_by": "tdn"})

    # --- proxied endpoints ---------------------------------------------------------------------

    def _handler_for(self, endpoint: openai_api.Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.handle(request, endpoint)

        return handle

    async def handle(self, request: web.Request,
                     endpoint: openai_api.Endpoint) -> web.StreamResponse:
        clock = OverheadClock()
        record = AccessRecord(request_id=headers.request_id(request.headers),
                              method=request.method, path=request.path)
        shared = self._shared
        if shared is None:
            raise RuntimeError("the proxy application is not running")
        budget = self.retry_budget
        budget.request_started()
        ticket = RetryTicket(budget)
        metric_model = ""
        try:
            exchange = Exchange(shared, request, endpoint, record=record, clock=clock,
                                ticket=ticket)
            response = await exchange.run(self.table)
            metric_model = record.model if record.factory else ""
            if record.fallback_model:
                metric_model = record.fallback_model
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
            ticket.release()
            elapsed = clock.elapsed_s()
            own = clock.own_s()
            record.duration_ms = elapsed * 1000.0
            record.overhead_ms = own * 1000.0
            if not record.outcome:
                # Cancelled or a bug: the access line still records that the request ended.
                record.outcome = "aborted"
            self.metrics.request_done(record.factory, record.tier, metric_model, record.outcome,
                                      elapsed)
            self.metrics.own_time(own)
            access_log.emit(record)
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
