"""The agent end to end on loopback: a fake engine (aiohttp, serving the vLLM fixture) and a fake
control plane (a grpc.aio Telemetry servicer defined here) that records reports and acks them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import web
from support import FIXTURES, Proc, async_wait_until, free_port

from tdn.agent.agent import FactoryAgent
from tdn.agent.settings import AgentSettings
from tdn.domain import FactorySpec, Price, Tier
from tdn.v1 import telemetry_pb2, telemetry_pb2_grpc
from tdn.wire import report_to_domain

VLLM_TEXT = (FIXTURES / "vllm-metrics.txt").read_text()
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class FakeEngine:
    """An OpenAI-compatible engine reduced to /metrics and /v1/models, with mutable answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.metrics_text = VLLM_TEXT
        self.models = [MODEL]
        self.models_body: str | None = None  # raw /v1/models body instead of the list
        self.stalled = False  # answer /metrics only once released
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _metrics(self, _: web.Request) -> web.Response:
        if self.stalled:
            await self._release.wait()
        return web.Response(text=self.metrics_text, content_type="text/plain")

    async def _models(self, _: web.Request) -> web.Response:
        if self.models_body is not None:
            return web.Response(text=self.models_body, content_type="application/json")
        return web.json_response({"object": "list",
                                  "data": [{"id": m, "object": "model"} for m in self.models]})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class RecordingTelemetry(telemetry_pb2_grpc.TelemetryServicer):
    """Records every report; acks each with the interval it wants and an optional rejection."""

    interval_s: float = 0.05
    reject_reason: str = ""
    ack: bool = True
    reports: list[telemetry_pb2.TelemetryReport] = field(default_factory=list)
    streams: int = 0

    async def Report(  # type: ignore[override]
        self, request_iterator: AsyncIterator[telemetry_pb2.TelemetryReport],
        context: grpc.aio.ServicerContext[object, object],
    ) -> AsyncIterator[telemetry_pb2.TelemetryAck]:
        self.streams += 1
        async for report in request_iterator:
            self.reports.append(report)
            if not self.ack:
                continue
            ack = telemetry_pb2.TelemetryAck(seq=report.seq, accepted=not self.reject_reason,
                                             reason=self.reject_reason)
            ack.report_interval.FromNanoseconds(int(self.interval_s * 1e9))
            yield ack


class ControlPlane:
    """A grpc.aio server holding one RecordingTelemetry; can be stopped and started again."""

    def __init__(self, port: int | None = None, **servicer: object) -> None:
        self.port = port or free_port()
        self.servicer = RecordingTelemetry(**servicer)  # type: ignore[arg-type]
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = grpc.aio.server()
        telemetry_pb2_grpc.add_TelemetryServicer_to_server(self.servicer, self._server)
        self._server.add_insecure_port(self.address)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


@pytest.fixture
async def engine() -> AsyncIterator[FakeEngine]:
    e = FakeEngine()
    await e.start()
    yield e
    await e.stop()


@pytest.fixture
async def controlplane() -> AsyncIterator[ControlPlane]:
    cp = ControlPlane()
    await cp.start()
    yield cp
    await cp.stop()


def make_spec(models: tuple[str, ...] = ()) -> FactorySpec:
    return FactorySpec(id="edge-fra-1", tier=Tier.EDGE, region="eu-west", compliance_zone="eu",
                       endpoint="", models=models, price=Price(0.3, 1.2), max_concurrency=16,
                       failure_domain="rack-a")


def make_settings(engine_url: str, *addresses: str, interval_s: float = 0.05,
                  **more: float) -> AgentSettings:
    options: dict[str, float] = {"scrape_timeout_s": 1.0, "backoff_initial_s": 0.02,
                                 "backoff_max_s": 0.1, **more}
    return AgentSettings(engine_url=engine_url, controlplanes=addresses, interval_s=interval_s,
                         **options)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(agent: FactoryAgent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def reports_where(cp: ControlPlane,
                        predicate: Callable[[telemetry_pb2.TelemetryReport], bool],
                        what: str, count: int = 1) -> list[telemetry_pb2.TelemetryReport]:
    async def found() -> list[telemetry_pb2.TelemetryReport] | None:
        matching = [r for r in cp.servicer.reports if predicate(r)]
        return matching if len(matching) >= count else None

    result = await async_wait_until(found, timeout=10, what=what)
    assert isinstance(result, list)
    return result


async def test_agent_reports_identity_and_load_read_from_the_engine(
        engine: FakeEngine, controlplane: ControlPlane) -> None:
    agent = FactoryAgent(make_spec(), make_settings(engine.url + "/v1", controlplane.address))

    async with running(agent):
        reports = await reports_where(controlplane, lambda r: True, "three reports", count=3)

    first = reports[0]
    spec, load = report_to_domain(first)  # the control plane's own validation passes
    assert first.engine_reachable
    assert spec.id == "edge-fra-1" and spec.tier is Tier.EDGE and spec.region == "eu-west"
    assert spec.failure_domain == "rack-a" and spec.max_concurrency == 16
    assert spec.models == (MODEL,)  # none configured: what /v1/models lists
    assert spec.endpoint == engine.url + "/v1"  # engine URL given with /v1, reported once
    assert spec.price == Price(0.3, 1.2)
    assert (load.running, load.waiting) == (8, 3)
    assert load.kv_cache_usage == pytest.approx(0.0847)
    assert load.generation_tokens_total == 27453.0
    assert load.ttft_p99_s == pytest.approx(0.086)
    assert [r.seq for r in reports[:3]] == [1, 2, 3]
    assert reports[0].observed_at.ToNanoseconds() <= reports[2].observed_at.ToNanoseconds()
    assert agent.stats.acks_accepted >= 2 and agent.stats.acks_rejected == 0


async def test_configured_models_are_reported_instead_of_the_engines_list(
        engine: FakeEngine, controlplane: ControlPlane) -> None:
    agent = FactoryAgent(make_spec(models=("llama-3.1-8b-instruct",)),
                         make_settings(engine.url, controlplane.address))

    async with running(agent):
        report, *_ = await reports_where(controlplane, lambda r: True, "a report")

    assert list(report.identity.models) == ["llama-3.1-8b-instruct"]


async def test_agent_adopts_the_report_interval_the_control_plane_asks_for(
        engine: FakeEngine, controlplane: ControlPlane) -> None:
    # Configured for one report per minute; the control plane's acks ask for 50 ms. Several
    # reports within the test's deadline are only possible if the agent obeys the acks.
    controlplane.servicer.interval_s = 0.05
    agent = FactoryAgent(make_spec(), make_settings(engine.url, controlplane.address,
                                                    interval_s=60.0))

    async with running(agent):
        await reports_where(controlplane, lambda r: True, "reports at the acked interval",
                            count=4)

    assert agent.interval_s == pytest.approx(0.05)


async def test_engine_that_goes_away_is_reported_unreachable_then_reachable_again(
        engine: FakeEngine, controlplane: ControlPlane) -> None:
    agent = FactoryAgent(make_spec(), make_settings(engine.url, controlplane.address))

    async with running(agent):
        await reports_where(controlplane, lambda r: r.engine_reachable, "a reachable report")
        await engine.stop()
        down, *_ = await reports_where(controlplane, lambda r: not r.engine_reachable,
                                         "an engine_reachable=false report")
        # Still a complete report: identity (models as last discovered) and zero load.
        assert list(down.identity.models) == [MODEL]
        assert down.identity.id == "edge-fra-1"
        assert down.load.running == 0
        assert agent.stats.engine_reachable is False
        assert "metrics" in agent.stats.last_engine_error

        await engine.start()
        sent_while_down = len(controlplane.servicer.reports)
        await reports_where(controlplane,
                            lambda r: r.engine_reachable and r.seq > sent_while_down,
                            "a reachable report after the engine came back")


async def test_garbage_metrics_are_reported_as_unreachable_with_the_reason_logged(
        engine: FakeEngine, controlplane: ControlPlane,
        caplog: pytest.LogCaptureFixture) -> None:
    engine.metrics_text = "<html><body>502 Bad Gateway</body></html>\n"
    agent = FactoryAgent(make_spec(models=("m",)),
                         make_settings(engine.url, controlplane.address))

    with caplog.at_level("WARNING", logger="tdn.agent"):
        async with running(agent):
            await reports_where(controlplane, lambda r: not r.engine_reachable,
                                "two unreachable reports", count=2)
            engine.metrics_text = VLLM_TEXT
            await reports_where(controlplane, lambda r: r.engine_reachable,
                                "a reachable report once the page is valid")

    assert "not Prometheus text" in agent.stats.last_engine_error
    warnings = [r.getMessage() for r in caplog.records if "engine unreachable" in r.getMessage()]
    # Logged once for the outage, not once per report.
    assert len(warnings) == 1
    assert "not Prometheus text" in warnings[0]


@pytest.mark.parametrize(("breakage", "reason"), [
    ("stalled", "no complete answer within 0.3s"),
    ("models_not_json", "/v1/models: not JSON"),
    ("models_without_data", 'no "data" array'),
])
async def test_an_engine_that_answers_badly_is_reported_unreachable_on_schedule(
        engine: FakeEngine, controlplane: ControlPlane, breakage: str, reason: str) -> None:
    if breakage == "stalled":
        engine.stalled = True
    elif breakage == "models_not_json":
        engine.models_body = "<html>login</html>"
    else:
        engine.models_body = '{"models": ["m"]}'
    agent = FactoryAgent(make_spec(models=("m",)),
                         make_settings(engine.url, controlplane.address, scrape_timeout_s=0.3))

    async with running(agent):
        await reports_where(controlplane, lambda r: not r.engine_reachable,
                            "unreachable reports, one per interval", count=2)

    assert reason in agent.stats.last_engine_error


async def test_rejected_reports_are_counted_and_logged_once_while_reporting_continues(
        engine: FakeEngine, caplog: pytest.LogCaptureFixture) -> None:
    reason = "no_models: factory edge-fra-1 serves no model"
    cp = ControlPlane(reject_reason=reason)
    await cp.start()
    try:
        agent = FactoryAgent(make_spec(), make_settings(engine.url, cp.address))
        with caplog.at_level("WARNING", logger="tdn.agent"):
            async with running(agent):
                await reports_where(cp, lambda r: True, "reports despite rejections", count=3)
                await async_wait_until(lambda: _true(agent.stats.acks_rejected >= 3),
                                       what="rejections counted")
    finally:
        await cp.stop()

    assert agent.stats.acks_accepted == 0
    assert agent.stats.last_rejection == reason
    logged = [r.getMessage() for r in caplog.records if "rejected report" in r.getMessage()]
    assert len(logged) == 1 and reason in logged[0]


async def _true(value: bool) -> bool:
    return value


async def test_agent_reconnects_when_the_control_plane_restarts_on_the_same_port(
        engine: FakeEngine) -> None:
    first = ControlPlane()
    await first.start()
    agent = FactoryAgent(make_spec(), make_settings(engine.url, first.address))

    async with running(agent):
        await reports_where(first, lambda r: True, "reports before the restart", count=2)
        await first.stop()
        await async_wait_until(lambda: _true(agent.stats.stream_failures >= 1),
                               what="the agent noticing the outage")
        second = ControlPlane(port=first.port)
        await second.start()
        try:
            report, *_ = await reports_where(second, lambda r: True,
                                             "a report after the restart")
        finally:
            await second.stop()

    assert report.seq == 1  # a new stream numbers its reports afresh
    assert report.identity.id == "edge-fra-1"
    assert agent.stats.streams_opened >= 2


async def test_agent_moves_to_the_next_address_when_its_control_plane_dies(
        engine: FakeEngine) -> None:
    primary, secondary = ControlPlane(), ControlPlane()
    await primary.start()
    agent = FactoryAgent(make_spec(), make_settings(engine.url, primary.address,
                                                    secondary.address))

    async with running(agent):
        await reports_where(primary, lambda r: True, "reports to the first address")
        await primary.stop()
        await secondary.start()
        try:
            await reports_where(secondary, lambda r: True, "reports to the second address")
        finally:
            await secondary.stop()

    assert agent.stats.last_stream_error  # says why the first stream ended


async def test_agent_skips_an_unreachable_first_address(engine: FakeEngine,
                                                        controlplane: ControlPlane) -> None:
    dead = f"127.0.0.1:{free_port()}"
    agent = FactoryAgent(make_spec(), make_settings(engine.url, dead, controlplane.address))

    async with running(agent):
        await reports_where(controlplane, lambda r: True, "reports to the live address")

    assert "UNAVAILABLE" in agent.stats.last_stream_error


async def test_a_control_plane_that_stops_acking_is_abandoned(engine: FakeEngine) -> None:
    silent = ControlPlane(ack=False)
    await silent.start()
    try:
        agent = FactoryAgent(make_spec(), make_settings(engine.url, silent.address,
                                                        ack_timeout_s=0.2))
        async with running(agent):
            await async_wait_until(lambda: _true(silent.servicer.streams >= 2),
                                   what="a fresh stream after the silence")
    finally:
        await silent.stop()

    assert "no ack" in agent.stats.last_stream_error


async def test_cancelling_the_agent_leaves_no_task_behind(engine: FakeEngine,
                                                          controlplane: ControlPlane) -> None:
    agent = FactoryAgent(make_spec(), make_settings(engine.url, controlplane.address))
    task = asyncio.create_task(agent.run())
    await reports_where(controlplane, lambda r: True, "a report")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # gRPC's own bookkeeping tasks may linger a moment; none of the agent's may.
    leftovers = [t for t in asyncio.all_tasks()
                 if t.get_coro().__qualname__.startswith("FactoryAgent.")]  # type: ignore[union-attr]
    assert leftovers == []
    assert agent.stats.connected_to == ""


async def test_tdn_agent_command_streams_telemetry_and_exits_cleanly_on_sigterm(
        engine: FakeEngine, controlplane: ControlPlane, tmp_path: Path) -> None:
    proc = Proc.tdn(["agent", "--engine-url", engine.url, "--controlplane", controlplane.address,
                     *CLI_FLAGS], tmp_path / "agent.log")
    try:
        report, *_ = await reports_where(controlplane, lambda r: r.engine_reachable,
                                         "a report from the tdn agent process")
    finally:
        code = await asyncio.to_thread(proc.stop)

    assert report.identity.id == "cli-1" and list(report.identity.models) == [MODEL]
    assert code == 0
    log = proc.log_path.read_text()  # Proc.log() flushes a file stop() has closed
    assert f"attaching factory cli-1 (edge, eu-west) engine {engine.url}" in log
    assert f"-> control plane {controlplane.address}" in log
    assert "stopped on SIGTERM" in log
    assert "Traceback" not in log


CLI_FLAGS = ["--id", "cli-1", "--tier", "edge", "--region", "eu-west", "--compliance-zone", "eu",
             "--price-input", "0.3", "--price-output", "1.2", "--interval", "0.05"]
