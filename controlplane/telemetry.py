"""The Telemetry service: factory agents stream reports in, the control plane acks each one.

Every report is validated and applied to the :class:`~tdn.controlplane.registry.FactoryRegistry`;
the ack says whether it was accepted (and why not) and how often to report. A stream closing says
nothing about the factory itself (the agent may just be reconnecting), so it does not mark the
factory down: the TTL does, if the silence lasts. Each report is also offered to the replica's
publisher, which writes it to the store for the other replicas (and the leader) to apply.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.duration_pb2 import Duration

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.registry import FactoryRegistry
from tdn.controlplane.replica import Replica
from tdn.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger(__name__)


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


class TelemetryService(telemetry_pb2_grpc.TelemetryServicer):
    """grpc.aio servicer for ``tdn.v1.Telemetry``."""

    def __init__(self, registry: FactoryRegistry, metrics: ControlPlaneMetrics, *,
                 report_interval: float, replica: Replica | None = None) -> None:
        self._registry = registry
        # Shares what this replica hears with the others (and the leader) through the store.
        self._replica = replica
        self._metrics = metrics
        self._report_interval = _duration(report_interval)
        self._ttl = _duration(registry.ttl)

    async def Report(
        self,
        request_iterator: AsyncIterator[telemetry_pb2.TelemetryReport],
        context: grpc.aio.ServicerContext[telemetry_pb2.TelemetryReport,
                                          telemetry_pb2.TelemetryAck],
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        self._metrics.telemetry_streams.inc()
        factory_id = ""
        try:
            async for report in request_iterator:
                result = self._registry.apply_report(report)
                if self._replica is not None:
                    self._replica.offer(report, accepted=result.accepted)
                if result.accepted and result.factory_id != factory_id:
                    factory_id = result.factory_id
                    log.info("telemetry stream from %s (%s)", factory_id, context.peer())
                yield telemetry_pb2.TelemetryAck(
                    seq=report.seq,
                    accepted=result.accepted,
                    reason=result.reason,
                    report_interval=self._report_interval,
                    ttl=self._ttl,
                )
        finally:
            self._metrics.telemetry_streams.dec()
            if factory_id:
                log.info("telemetry stream from %s closed; the ttl decides its health",
                         factory_id)
