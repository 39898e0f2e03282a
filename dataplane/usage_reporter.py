"""Sending metered usage to the control plane's Usage service (proto/tdn/v1/usage.proto).

Every ``interval`` the meter's window is cut into one ``UsageReport`` (nothing is sent for an
empty window) with a report id unique to this sidecar process (``<node id>:<boot id>:<n>``), and
every report not yet acknowledged is sent, oldest first. A report whose send fails (control plane
down, timeout, lost acknowledgement) stays queued and is sent again, with the same id, at the next
tick: delivery is at-least-once, and the control plane counts an id once. Reports the control
plane refuses as invalid are dropped (resending would never help) and logged. The queue holds at
most :data:`MAX_PENDING` reports (about a day at the default interval); past that the oldest is
dropped, counted in ``tdn_sidecar_usage_reports_total{result="dropped"}``. When the sidecar stops,
the current window is cut and one last send is tried, briefly.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque
from collections.abc import Sequence

import grpc
import grpc.aio

from tdn.v1 import usage_pb2, usage_pb2_grpc

from .metering import Meter
from .metrics import SidecarMetrics
from .policy_client import CHANNEL_OPTIONS

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 10.0
RPC_TIMEOUT_S = 5.0
MAX_PENDING = 10_000


class UsageReporter:
    """Reports ``meter``'s windows; :meth:`run` is a task owned by the sidecar."""

    def __init__(self, addresses: Sequence[str], node_id: str, site: str, meter: Meter, *,
                 metrics: SidecarMetrics | None = None, interval_s: float = DEFAULT_INTERVAL_S,
                 channel_credentials: grpc.ChannelCredentials | None = None,
                 rpc_timeout_s: float = RPC_TIMEOUT_S) -> None:
        if not addresses:
            raise ValueError("UsageReporter needs at least one control-plane address")
        self.addresses = tuple(addresses)
        self.node_id = node_id
        self.site = site
        self.meter = meter
        self.metrics = metrics
        self.interval_s = interval_s
        self.channel_credentials = channel_credentials
        self.rpc_timeout_s = rpc_timeout_s
        self.pending: deque[usage_pb2.UsageReport] = deque()
        self.acked: list[str] = []
        self._boot = uuid.uuid4().hex[:12]
        self._sequence = 0
        self._turn = 0
        self._channel: grpc.aio.Channel | None = None

    async def run(self) -> None:
        """Cut and send a report every interval, until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Cut the current window into a report and send everything pending."""
        self.cut()
        await self.send_pending()

    def cut(self) -> usage_pb2.UsageReport | None:
        start, end, totals = self.meter.take()
        if not totals:
            return None
        self._sequence += 1
        report = usage_pb2.UsageReport(
            node_id=self.node_id, site=self.site,
            report_id=f"{self.node_id}:{self._boot}:{self._sequence}",
            records=[usage_pb2.UsageRecord(
                tenant=tenant, factory_id=factory, model=model, requests=t.requests,
                prompt_tokens=t.prompt_tokens, completion_tokens=t.completion_tokens,
                cached_prompt_tokens=t.cached_prompt_tokens, cost=t.cost,
                traffic_class=traffic_class)
                for (tenant, factory, model, traffic_class), t in sorted(totals.items())])
        report.window_start.FromNanoseconds(int(start * 1e9))
        report.window_end.FromNanoseconds(int(end * 1e9))
        self.pending.append(report)
        while len(self.pending) > MAX_PENDING:
            dropped = self.pending.popleft()
            log.error("usage report %s dropped: %d reports are waiting for the control plane",
                      dropped.report_id, MAX_PENDING)
            self._count("dropped")
        return report

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.usage_report(result, len(self.pending))

    def _stub(self) -> usage_pb2_grpc.UsageAsyncStub:
        if self._channel is None:
            address = self.addresses[self._turn % len(self.addresses)]
            if self.channel_credentials is not None:
                self._channel = grpc.aio.secure_channel(address, self.channel_credentials,
                                                        options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return usage_pb2_grpc.UsageStub(self._channel)

    async def _next_address(self) -> None:
        channel, self._channel = self._channel, None
        self._turn += 1
        if channel is not None:
            await channel.close(grace=None)

    async def send_pending(self) -> bool:
        """Send queued reports in order; False when one could not be delivered (kept queued)."""
        while self.pending:
            report = self.pending[0]
            try:
                ack = await self._stub().Report(report, timeout=self.rpc_timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    self.pending.popleft()
                    log.error("usage report %s refused by the control plane and dropped: %s",
                              report.report_id, exc.details())
                    self._count("dropped")
                    continue
                log.warning("usage report %s not delivered (%s); %d waiting, resending later",
                            report.report_id, exc.code().name, len(self.pending))
                self._count("failed")
                await self._next_address()
                return False
            self.pending.popleft()
            self.acked.append(ack.report_id)
            del self.acked[:-1000]
            self._count("sent")
        return True

    async def close(self, timeout_s: float = 2.0) -> None:
        """Cut the last window, try once more to send, and close the channel."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.flush()
        except TimeoutError:
            log.warning("stopping with %d usage reports not delivered", len(self.pending))
        finally:
            channel, self._channel = self._channel, None
            if channel is not None:
                await channel.close(grace=None)
