"""The Usage service: sidecars report metered tokens; the control plane adds them up.

Totals are kept per (tenant, factory, model). Delivery is at-least-once, so a report whose
``report_id`` was already counted for that sidecar is acknowledged with ``counted=false`` and
not added again. Everything is in memory for now: totals restart from zero with the control
plane, and the de-duplication window is the last :data:`DEDUP_WINDOW` reports. Durable usage (in
the Store, shared by replicas) comes with budgets and billing; the *demand* each replica
estimates from the usage it counts is shared already (:mod:`tdn.controlplane.demand_sync`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.v1 import usage_pb2, usage_pb2_grpc

# Sidecars resend a report only while unsure it arrived (seconds to minutes), so remembering the
# most recent ids bounds memory without letting a real resend through.
DEDUP_WINDOW = 100_000


class BadUsage(ValueError):
    """A usage report that cannot be counted; the message says which field and why."""


@dataclass(slots=True)
class _Totals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost: float = 0.0


def _check(report: usage_pb2.UsageReport) -> None:
    if not report.report_id:
        raise BadUsage("report_id is empty")
    for i, record in enumerate(report.records):
        for name in ("tenant", "factory_id", "model"):
            if not getattr(record, name):
                raise BadUsage(f"records[{i}].{name} is empty")
        if not math.isfinite(record.cost) or record.cost < 0:
            raise BadUsage(f"records[{i}].cost is {record.cost!r}; must be finite and >= 0")


class UsageLedger:
    """Aggregated usage with de-duplication by (node id, report id)."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], _Totals] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, report: usage_pb2.UsageReport) -> bool:
        """Count ``report`` unless already counted; raise :class:`BadUsage` if it is invalid."""
        _check(report)
        key = (report.node_id, report.report_id)
        if key in self._seen:
            return False
        self._seen[key] = None
        while len(self._seen) > DEDUP_WINDOW:
            self._seen.popitem(last=False)
        for r in report.records:
            totals = self._totals.setdefault((r.tenant, r.factory_id, r.model), _Totals())
            totals.requests += r.requests
            totals.prompt_tokens += r.prompt_tokens
            totals.completion_tokens += r.completion_tokens
            totals.cached_prompt_tokens += r.cached_prompt_tokens
            totals.cost += r.cost
        return True

    def records(self, tenant: str = "") -> list[usage_pb2.UsageRecord]:
        return [
            usage_pb2.UsageRecord(
                tenant=t, factory_id=f, model=m, requests=v.requests,
                prompt_tokens=v.prompt_tokens, completion_tokens=v.completion_tokens,
                cached_prompt_tokens=v.cached_prompt_tokens, cost=v.cost)
            for (t, f, m), v in sorted(self._totals.items())
            if not tenant or t == tenant
        ]


class UsageService(usage_pb2_grpc.UsageServicer):
    """grpc.aio servicer for ``tdn.v1.Usage``."""

    def __init__(self, ledger: UsageLedger, metrics: ControlPlaneMetrics) -> None:
        self._ledger = ledger
        self._metrics = metrics

    async def Report(self, request: usage_pb2.UsageReport,
                     context: grpc.aio.ServicerContext[usage_pb2.UsageReport,
                                                       usage_pb2.UsageAck],
                     ) -> usage_pb2.UsageAck:
        try:
            counted = self._ledger.add(request)
        except BadUsage as exc:
            self._metrics.usage_reports.labels(result="invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"usage report refused: {exc}")
        self._metrics.usage_reports.labels(result="counted" if counted else "duplicate").inc()
        return usage_pb2.UsageAck(report_id=request.report_id, counted=counted)

    async def Query(self, request: usage_pb2.UsageQuery,
                    context: grpc.aio.ServicerContext[usage_pb2.UsageQuery,
                                                      usage_pb2.UsageSummary],
                    ) -> usage_pb2.UsageSummary:
        return usage_pb2.UsageSummary(records=self._ledger.records(request.tenant))
