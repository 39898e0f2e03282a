"""Metered usage reaches the control plane's Usage service: per tenant (named by the tenants file,
never by key), factory and model; a report whose acknowledgement was lost is resent with the same
report id and counted once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import grpc
import grpc.aio
import pytest
from dataplane_support import (
    CHAT_BODY,
    MODEL,
    make_policy,
    reserved_port,
    running_sidecar,
    simulators,
)
from support import async_wait_until

from tdn.dataplane.tenants import Tenants, key_digest
from tdn.v1 import usage_pb2, usage_pb2_grpc

TENANT_KEY = "sk-tenant-acme-123"


class LossyUsage(usage_pb2_grpc.UsageServicer):
    """Counts each report id once, like the control plane, but loses its first acknowledgement
    (the report is counted, the sidecar sees an error), so the sidecar must resend it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.counted: dict[str, usage_pb2.UsageReport] = {}
        self.lose_next_ack = True

    async def Report(self, request: usage_pb2.UsageReport,
                     context: grpc.aio.ServicerContext[usage_pb2.UsageReport,
                                                       usage_pb2.UsageAck],
                     ) -> usage_pb2.UsageAck:
        self.calls.append(request.report_id)
        first = request.report_id not in self.counted
        if first:
            self.counted[request.report_id] = request
        if self.lose_next_ack:
            self.lose_next_ack = False
            await context.abort(grpc.StatusCode.UNAVAILABLE, "acknowledgement lost")
        return usage_pb2.UsageAck(report_id=request.report_id, counted=first)

    async def Query(self, request: usage_pb2.UsageQuery,
                    context: grpc.aio.ServicerContext[usage_pb2.UsageQuery,
                                                      usage_pb2.UsageSummary],
                    ) -> usage_pb2.UsageSummary:
        return usage_pb2.UsageSummary()

    def totals(self) -> dict[tuple[str, str, str], tuple[int, int, int]]:
        out: dict[tuple[str, str, str, str], tuple[int, int, int]] = {}
        for report in self.counted.values():
            for r in report.records:
                key = (r.tenant, r.factory_id, r.model, r.traffic_class)
                req, p, c = out.get(key, (0, 0, 0))
                out[key] = (req + r.requests, p + r.prompt_tokens, c + r.completion_tokens)
        return out


@asynccontextmanager
async def usage_server(servicer: LossyUsage) -> AsyncIterator[str]:
    server = grpc.aio.server()
    usage_pb2_grpc.add_UsageServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_usage_reaches_the_usage_service_per_tenant_and_a_resent_report_counts_once(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    servicer = LossyUsage()
    tenants = Tenants({key_digest(TENANT_KEY): "acme"})
    async with usage_server(servicer) as address, simulators("edge-1") as sims:
        policy = make_policy("v1", {"edge-1": sims["edge-1"].url}, [("edge-1", 1.0)])
        async with running_sidecar(policy, tenants=tenants, usage_controlplane=(address,),
                                   usage_interval_s=0.1) as sc:
            usages = []
            async with aiohttp.ClientSession() as s:
                for headers in ({"Authorization": f"Bearer {TENANT_KEY}"},
                                {"Authorization": f"Bearer {TENANT_KEY}"},
                                {"Authorization": "Bearer sk-unknown"},
                                {"x-tdn-class": "batch"}):
                    async with s.post(f"{sc.proxy_url}/chat/completions", json=CHAT_BODY,
                                      headers=headers) as r:
                        usages.append((await r.json())["usage"])

            async def delivered() -> bool:
                reporter = sc.usage_reporter
                assert reporter is not None
                return (not reporter.pending and not sc.meter.peek()
                        and len(servicer.calls) > len(servicer.counted))

            await async_wait_until(delivered, what="every report delivered, one of them twice")
            metrics = sc.metrics.exposition().decode()
    resent = [i for i in servicer.counted if servicer.calls.count(i) == 2]
    assert len(resent) == 1
    assert all(servicer.calls.count(i) in (1, 2) for i in servicer.counted)
    acme = usages[:2]
    anonymous = usages[2:]
    # Per traffic class too (the request without a class header is "default"): the control
    # plane estimates demand per (site, model, class).
    assert servicer.totals() == {
        ("acme", "edge-1", MODEL, "default"): (2, sum(u["prompt_tokens"] for u in acme),
                                               sum(u["completion_tokens"] for u in acme)),
        ("anonymous", "edge-1", MODEL, "default"): (1, anonymous[0]["prompt_tokens"],
                                                    anonymous[0]["completion_tokens"]),
        ("anonymous", "edge-1", MODEL, "batch"): (1, anonymous[1]["prompt_tokens"],
                                                  anonymous[1]["completion_tokens"]),
    }
    report = next(iter(servicer.counted.values()))
    assert report.node_id == "sidecar-test" and report.site == "fra-office"
    assert report.window_end.ToNanoseconds() >= report.window_start.ToNanoseconds()
    assert 'tenant="acme"' in metrics
    assert TENANT_KEY not in metrics and TENANT_KEY not in caplog.text
    assert "sk-unknown" not in caplog.text


async def test_usage_reports_wait_while_the_control_plane_is_down_and_are_sent_when_it_is_back(
        ) -> None:
    servicer = LossyUsage()
    servicer.lose_next_ack = False
    # The control plane is down: connections to its port are refused.
    with reserved_port() as port:
        async with simulators("edge-1") as sims:
            await _send_once_the_control_plane_is_back(servicer, sims["edge-1"].url, port)
    assert len(servicer.calls) == 1


async def _send_once_the_control_plane_is_back(servicer: LossyUsage, factory_url: str,
                                               port: int) -> None:
    policy = make_policy("v1", {"edge-1": factory_url}, [("edge-1", 1.0)])
    address = f"127.0.0.1:{port}"
    async with running_sidecar(policy, usage_controlplane=(address,),
                               usage_interval_s=0.1) as sc:
        async with aiohttp.ClientSession() as s, s.post(
                f"{sc.proxy_url}/chat/completions", json=CHAT_BODY) as r:
            assert r.status == 200
        reporter = sc.usage_reporter
        assert reporter is not None

        async def queued() -> bool:
            return bool(reporter.pending) and 'result="failed"' in (
                sc.metrics.exposition().decode())

        await async_wait_until(queued, what="a report queued after a failed send")
        server = grpc.aio.server()
        usage_pb2_grpc.add_UsageServicer_to_server(servicer, server)
        assert server.add_insecure_port(address) == port
        await server.start()
        try:
            async def sent() -> bool:
                return not reporter.pending and len(servicer.counted) == 1

            await async_wait_until(sent, timeout=15, what="the queued report to be sent")
        finally:
            await server.stop(None)
