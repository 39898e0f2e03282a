"""Active probing of ejected factories, so that one that comes back returns to service within a
bounded time instead of waiting out its ejection (see :mod:`outlier` for the bounds).

Every ``probe_interval`` (from the live policy's outlier settings) each ejected factory gets
``GET {base_url}/models`` with its credential, bounded by the probe timeout (2 s, or the interval
when shorter). Any HTTP answer below 500 is a success: the factory is up and speaking HTTP. It is
the cheapest request every OpenAI-compatible engine answers, and factories that are not ejected
are never probed, so probing costs nothing while all is well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from tdn.domain import FactoryEndpoint

from . import headers
from .credentials import Credentials
from .effective_settings import DEFAULT_PROBE_INTERVAL_S, OutlierConfig
from .failover import TRANSPORT_ERRORS
from .health import FactoryHealth
from .metrics import SidecarMetrics
from .routing_table import RoutingTable
from .upstream_client import UpstreamPool

log = logging.getLogger(__name__)

# A model list is small; a probe never holds more of an answer than this.
_PROBE_BODY_LIMIT = 4 * 1024 * 1024


class Prober:
    """Probes ejected factories; :meth:`run` is a task owned by the proxy application."""

    def __init__(self, health: FactoryHealth, metrics: SidecarMetrics, credentials: Credentials,
                 table: Callable[[], RoutingTable | None],
                 pool: Callable[[], UpstreamPool]) -> None:
        self.health = health
        self.metrics = metrics
        self.credentials = credentials
        self._table = table
        self._pool = pool

    async def run(self) -> None:
        while True:
            table = self._table()
            interval = (table.settings.outlier.probe_interval_s if table is not None
                        else DEFAULT_PROBE_INTERVAL_S)
            await asyncio.sleep(interval)
            await self.probe_ejected()

    async def probe_ejected(self) -> None:
        """Probe every ejected factory once, concurrently."""
        table = self._table()
        if table is None:
            return
        ejected = [table.endpoints[fid] for fid in self.health.outlier.ejected_ids()
                   if fid in table.endpoints]
        if not ejected:
            return
        config = table.settings.outlier
        async with asyncio.TaskGroup() as group:
            for endpoint in ejected:
                group.create_task(self._probe(endpoint, config))

    async def _probe(self, endpoint: FactoryEndpoint, config: OutlierConfig) -> None:
        request_headers = b"Accept-Encoding: identity\r\n"
        if endpoint.credential_ref:
            authorization = self.credentials.authorization(endpoint.credential_ref)
            if authorization is not None:
                with contextlib.suppress(ValueError):  # unsendable: probe without it
                    request_headers += headers.authorization_line(authorization)
        url = endpoint.base_url.rstrip("/") + "/models"
        ok = False
        try:
            async with asyncio.timeout(config.probe_timeout_s):
                response = await self._pool().request(b"GET", url, request_headers)
                try:
                    ok = response.status < 500
                    await response.read(_PROBE_BODY_LIMIT)
                except BaseException:
                    response.close()
                    raise
                response.release()
        except TRANSPORT_ERRORS:
            ok = False
        self.metrics.probed(endpoint.id, endpoint.tier.value, ok)
        self.health.outlier.probe_result(endpoint.id, ok, self.health.clock())
        if ok and not self.health.outlier.is_ejected(endpoint.id):
            log.info("factory %s is back in service after a successful probe", endpoint.id)
