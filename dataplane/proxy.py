"""The OpenAI-compatible reverse proxy: what a sidecar serves to applications on its proxy port.

Each request is an :class:`~tdn.dataplane.exchange.Exchange`; this module holds what outlives
requests: the connection pool to factories (:mod:`upstream_client`), the routing table compiled
from the live policy, factory health (ejections, cooldowns) and its prober, the retry budget, the
meter, and the bookkeeping every request ends with (one access-log line, request metrics), done
after the answer has been handed to the client's socket so that it adds nothing to the client's
latency. The upstream URL comes only from the policy's ``base_url`` plus the endpoint's fixed
suffix: nothing a client sends can choose where its request goes. The HTTP server itself is
:mod:`http_server`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from urllib.parse import unquote

from tdn.domain import SitePolicy

from . import access_log, api_errors, headers, openai_api
from .access_log import AccessRecord
from .credentials import Credentials
from .exchange import Exchange, ProxySettings, Shared
from .failover import RetryTicket
from .health import FactoryHealth
from .http_server import Reply, Request, Responder, error_reply, json_reply
from .live_policy import LivePolicy
from .metering import Meter
from .metrics import SidecarMetrics
from .overhead import OverheadClock
from .prober import Prober
from .retry_budget import RetryBudget
from .routing_table import RoutingTable
from .tenants import Tenants
from .upstream_client import UpstreamPool

__all__ = ["Proxy", "ProxySettings"]

log = logging.getLogger(__name__)

_MODELS = "/v1/models"
_MODEL_PREFIX = "/v1/models/"


class Proxy:
    """Request handling over a live policy; :meth:`dispatch` is the HTTP server's handler,
    :meth:`start` and :meth:`stop` own the connection pool and the prober."""

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
        self._pool: UpstreamPool | None = None
        self._shared: Shared | None = None
        self._prober_task: asyncio.Task[None] | None = None
        self._endpoints = {e.path: e for e in openai_api.ENDPOINTS}
        self.prober = Prober(self.health, metrics, self.credentials, lambda: self.table,
                             lambda: self.pool)
        live.add_listener(self.policy_swapped)

    def policy_swapped(self, policy: SitePolicy) -> None:
        """Compile ``policy`` for the request path (once per policy, never per request)."""
        table = RoutingTable(policy)
        self.health.policy_changed(table)
        self.retry_budget.configure(table.settings.retry_budget_percent,
                                    table.settings.retry_budget_min_concurrency)
        self.table = table

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # One pool per sidecar: keep-alive connections to factories are what makes a failover
        # or a next request cheap.
        settings = self.settings
        self._pool = UpstreamPool(connect_timeout_s=settings.connect_timeout_s,
                                  limit=settings.pool_limit,
                                  keepalive_timeout_s=settings.keepalive_timeout_s)
        self._shared = Shared(self._pool, self.credentials, self.metrics, self.health,
                              self.tenants, self.meter, settings)
        self._prober_task = asyncio.create_task(self.prober.run(), name="tdn-prober")

    async def stop(self) -> None:
        prober, self._prober_task = self._prober_task, None
        if prober is not None:
            prober.cancel()
            await asyncio.wait([prober])
            if not prober.cancelled() and prober.exception() is not None:
                log.error("the prober stopped by a bug", exc_info=prober.exception())
        self._shared = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            raise RuntimeError("the proxy is not running")
        return self._pool

    # --- routing of paths ----------------------------------------------------------------------

    def dispatch(self, request: Request, responder: Responder) -> Awaitable[None] | None:
        """Answer one request: a proxied endpoint (the coroutine to await), the model list, or
        an OpenAI-shaped error (answered at once)."""
        path = request.path
        endpoint = self._endpoints.get(path)
        if endpoint is not None:
            if request.method == "POST":
                return self.handle(request, responder, endpoint)
            responder.send(error_reply(api_errors.method_not_allowed(request.method, path)))
            return None
        if path == _MODELS or path.startswith(_MODEL_PREFIX):
            if request.method not in ("GET", "HEAD"):
                responder.send(error_reply(api_errors.method_not_allowed(request.method, path)))
                return None
            try:
                reply = (self.list_models() if path == _MODELS else
                         self.get_model(unquote(path[len(_MODEL_PREFIX):])))
            except api_errors.ApiError as err:
                reply = error_reply(err)
            if request.method == "HEAD":
                reply.body = b""
            responder.send(reply)
            return None
        responder.send(error_reply(api_errors.not_found(path)))
        return None

    # --- models --------------------------------------------------------------------------------

    def list_models(self) -> Reply:
        table = self.table
        if table is None:
            raise api_errors.no_policy()
        created = int(table.policy.generated_at)
        return json_reply(200, json.dumps({"object": "list", "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "tdn"}
            for m in table.models
        ]}).encode())

    def get_model(self, model: str) -> Reply:
        table = self.table
        if table is None:
            raise api_errors.no_policy()
        if not model or table.route(model) is None:
            raise api_errors.model_not_found(model)
        return json_reply(200, json.dumps({"id": model, "object": "model",
                                           "created": int(table.policy.generated_at),
                                           "owned_by": "tdn"}).encode())

    # --- proxied endpoints ---------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder,
                     endpoint: openai_api.Endpoint) -> None:
        clock = OverheadClock(request.received_at)
        client = headers.scan_request(request.raw_headers)
        record = AccessRecord(request_id=client.request_id, method=request.method,
                              path=request.path)
        shared = self._shared
        if shared is None:
            raise RuntimeError("the proxy is not running")
        budget = self.retry_budget
        budget.request_started()
        ticket = RetryTicket(budget)
        metric_model = ""
        exchange = Exchange(shared, request, responder, endpoint, client, record=record,
                            clock=clock, ticket=ticket)
        try:
            reply = await exchange.run(self.table)
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
            reply = error_reply(err, out)
        except asyncio.CancelledError:
            # The client went away (or the sidecar is stopping past its grace period).
            record.outcome = record.outcome or "client_gone"
            metric_model = record.model if record.factory else ""
            exchange.close()
            self._done(record, clock, metric_model, ticket)
            raise
        except BaseException:
            exchange.close()
            self._done(record, clock, metric_model, ticket)
            raise
        exchange.close()
        # The answer goes to the client's socket first; the bookkeeping after it costs the
        # client nothing.
        if reply is not None:
            responder.send(reply)
        exchange.finish()
        self._done(record, clock, metric_model, ticket)

    def _done(self, record: AccessRecord, clock: OverheadClock, metric_model: str,
              ticket: RetryTicket) -> None:
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
