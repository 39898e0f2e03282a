"""The factory agent: scrapes one engine and streams its telemetry to the TDN control plane.

One :class:`FactoryAgent` holds one Telemetry stream at a time (telemetry.proto's contract). Each
report interval it scrapes the engine and sends a full report; a concurrent reader counts the
acks, logs rejections and adopts the interval the control plane asks for. When the engine cannot
be read the report still goes out, with ``engine_reachable=false``, so the control plane learns
it now rather than at the TTL. When the stream fails the agent reconnects with jittered
exponential backoff, moving to the next control-plane address each time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from typing import NoReturn

import aiohttp
import grpc
import grpc.aio

from tdn.agent.backoff import Backoff
from tdn.agent.engine_client import EngineClient, EngineUnavailable
from tdn.agent.metrics_window import MetricsWindow
from tdn.agent.report import build_report
from tdn.agent.settings import AgentSettings, SettingsError
from tdn.domain import FactoryLoad, FactorySpec
from tdn.tls import TlsError
from tdn.v1 import telemetry_pb2, telemetry_pb2_grpc

log = logging.getLogger("tdn.agent")

_ReportCall = grpc.aio.StreamStreamCall[telemetry_pb2.TelemetryReport, telemetry_pb2.TelemetryAck]


class StreamEnded(Exception):
    """The telemetry stream is over; the message says why, fit for a log line."""


@dataclass(slots=True)
class AgentStats:
    """What the agent has done so far, for logs, ``tdn up`` status and tests. Live, not frozen."""

    reports_sent: int = 0
    acks_accepted: int = 0
    acks_rejected: int = 0
    last_rejection: str = ""
    streams_opened: int = 0
    stream_failures: int = 0
    last_stream_error: str = ""
    # The control plane the current stream goes to; "" while disconnected.
    connected_to: str = ""
    # None until the first scrape.
    engine_reachable: bool | None = None
    last_engine_error: str = ""


class FactoryAgent:
    """Attaches one engine to the control plane; :meth:`run` works until it is cancelled.

    ``spec`` describes the factory. Its ``models`` may be empty: the agent then reports what the
    engine's ``/v1/models`` lists. An empty ``endpoint`` defaults to the engine URL plus ``/v1``.
    """

    def __init__(self, spec: FactorySpec, settings: AgentSettings,
                 rng: random.Random | None = None) -> None:
        settings.validate()
        if not spec.endpoint:
            spec = dataclasses.replace(spec, endpoint=f"{settings.engine_base}/v1")
        # Models may be discovered later, so check everything else with a stand-in list.
        dataclasses.replace(spec, models=spec.models or ("(from the engine)",)).validate()
        self.spec = spec
        self.settings = settings
        self.stats = AgentStats()
        self._interval = settings.interval_s
        self._interval_changed = asyncio.Event()
        self._window = MetricsWindow()
        self._discovered_models: tuple[str, ...] = ()
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s, rng)
        self._acked_on_stream = False
        self._rejecting = False
        # Read once, at start: a bad file is refused now, not on the first reconnect.
        self._credentials: grpc.ChannelCredentials | None = None
        if settings.tls is not None:
            try:
                self._credentials = settings.tls.client_tls().credentials()
            except TlsError as exc:
                raise SettingsError(str(exc)) from None

    @property
    def interval_s(self) -> float:
        """The report interval in force: the configured one, or what the last ack asked for."""
        return self._interval

    def describe(self) -> str:
        """One line saying what this agent attaches to where, for the start-up log."""
        models = ", ".join(self.spec.models) if self.spec.models else "as the engine lists them"
        return (f"factory {self.spec.id} ({self.spec.tier}, {self.spec.region}) engine "
                f"{self.settings.engine_base} endpoint {self.spec.endpoint} models [{models}] "
                f"-> control plane {', '.join(self.settings.controlplanes)} "
                f"every {self._interval:g}s")

    async def run(self) -> None:
        """Report until cancelled, reconnecting (and rotating control planes) on failure."""
        addresses = self.settings.controlplanes
        # Bound to the running loop here, not in __init__, so an agent object can be run again.
        self._interval_changed = asyncio.Event()
        # A fresh connection per scrape: a pooled keep-alive connection that the engine closed at
        # its idle timeout (uvicorn's is 5 s) would fail one scrape and flap engine_reachable.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            engine = EngineClient(session, self.settings.engine_base)
            index = 0
            while True:
                address = addresses[index % len(addresses)]
                try:
                    await self._stream(address, engine)
                except StreamEnded as exc:
                    reason = str(exc)
                finally:
                    self.stats.connected_to = ""
                self.stats.stream_failures += 1
                self.stats.last_stream_error = reason
                index += 1
                delay = self._backoff.next_delay()
                log.warning("telemetry stream to %s ended: %s; trying %s in %.2fs",
                            address, reason, addresses[index % len(addresses)], delay)
                await asyncio.sleep(delay)

    # --- one stream -----------------------------------------------------------------------------

    def _open_channel(self, address: str) -> grpc.aio.Channel:
        s = self.settings
        options = [
            ("grpc.keepalive_time_ms", int(s.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout_s * 1000)),
            # Our own backoff paces reconnects; don't let the channel sit in its own longer one.
            ("grpc.initial_reconnect_backoff_ms", int(s.backoff_initial_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(s.backoff_max_s * 1000)),
        ]
        if self._credentials is not None:
            return grpc.aio.secure_channel(address, self._credentials, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    async def _stream(self, address: str, engine: EngineClient) -> NoReturn:
        """Hold one stream to ``address`` until it fails; always ends in :class:`StreamEnded`."""
        self._acked_on_stream = False
        channel = self._open_channel(address)
        try:
            stub = telemetry_pb2_grpc.TelemetryStub(channel)
            # No request iterator: reports are written with call.write() as scrapes complete.
            call: _ReportCall = stub.Report(None)
            self.stats.streams_opened += 1
            self.stats.connected_to = address
            sender = asyncio.create_task(self._send_reports(call, engine),
                                         name=f"telemetry-send-{address}")
            reader = asyncio.create_task(self._read_acks(call, address),
                                         name=f"telemetry-acks-{address}")
            try:
                done, _ = await asyncio.wait({sender, reader},
                                             return_when=asyncio.FIRST_COMPLETED)
                ending = await _why_ended(call, done)
            finally:
                # Both tasks belong to this stream: neither outlives it, whatever ended it.
                for task in (sender, reader):
                    task.cancel()
                await asyncio.gather(sender, reader, return_exceptions=True)
                call.cancel()
            raise ending
        finally:
            await channel.close(grace=None)

    async def _send_reports(self, call: _ReportCall, engine: EngineClient) -> None:
        loop = asyncio.get_running_loop()
        seq = 0
        while True:
            started = loop.time()
            seq += 1  # per stream, from 1 (telemetry.proto)
            report = await self._next_report(engine, seq)
            await call.write(report)
            self.stats.reports_sent += 1
            await self._sleep_until_due(started)

    async def _sleep_until_due(self, started: float) -> None:
        """Wait out the report interval from ``started``, re-reading it if an ack changes it."""
        loop = asyncio.get_running_loop()
        while True:
            remaining = started + self._interval - loop.time()
            if remaining <= 0:
                return
            self._interval_changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._interval_changed.wait()
            except TimeoutError:
                return

    async def _read_acks(self, call: _ReportCall, address: str) -> None:
        while True:
            # Acks answer reports, so a long silence means the control plane is wedged even if
            # its connection (and keepalive) looks fine.
            patience = max(self.settings.ack_timeout_s, 3 * self._interval)
            try:
                async with asyncio.timeout(patience):
                    message = await call.read()
            except TimeoutError:
                raise StreamEnded(f"no ack from {address} for {patience:g}s") from None
            if not isinstance(message, telemetry_pb2.TelemetryAck):  # grpc.aio.EOF
                raise StreamEnded(f"{address} closed the stream")
            self._on_ack(message, address)

    def _on_ack(self, ack: telemetry_pb2.TelemetryAck, address: str) -> None:
        if not self._acked_on_stream:
            log.info("telemetry stream to %s established", address)
            self._acked_on_stream = True
            # A control plane that answers is a working connection: the next failure starts
            # the backoff afresh instead of continuing an old outage's long delays.
            self._backoff.reset()
        # Log changes only: a factory rejected every second must not flood the log.
        if ack.accepted:
            self.stats.acks_accepted += 1
            if self._rejecting:
                log.info("control plane %s accepts reports again", address)
        else:
            self.stats.acks_rejected += 1
            if not self._rejecting or ack.reason != self.stats.last_rejection:
                log.warning("control plane %s rejected report seq=%d: %s (counted in "
                            "acks_rejected; repeats are not logged)", address, ack.seq,
                            ack.reason or "(no reason given)")
            self.stats.last_rejection = ack.reason
        self._rejecting = not ack.accepted
        if ack.HasField("report_interval"):
            wanted = ack.report_interval.ToNanoseconds() / 1e9
            if wanted > 0:
                self._set_interval(max(wanted, self.settings.min_interval_s))

    def _set_interval(self, interval: float) -> None:
        if interval == self._interval:
            return
        log.info("report interval %gs -> %gs (asked by the control plane)", self._interval,
                 interval)
        self._interval = interval
        self._interval_changed.set()

    # --- one report -----------------------------------------------------------------------------

    async def _next_report(self, engine: EngineClient,
                           seq: int) -> telemetry_pb2.TelemetryReport:
        observed_at = time.time()
        # A scrape must not eat the interval: a stalled engine still gets reported on time.
        budget = min(self.settings.scrape_timeout_s, max(self._interval, 0.5))
        load: FactoryLoad | None
        try:
            scrape = await engine.scrape(budget)
        except EngineUnavailable as exc:
            self._note_engine(False, str(exc))
            load = None
        else:
            self._note_engine(True, "")
            load = self._window.advance(scrape.metrics)
            self._discovered_models = scrape.models
        spec = self.spec
        if not spec.models:
            spec = dataclasses.replace(spec, models=self._discovered_models)
        return build_report(spec, load, seq, observed_at)

    def _note_engine(self, reachable: bool, reason: str) -> None:
        # Log changes only: an engine that stays down must not flood the log every second.
        if reachable and self.stats.engine_reachable is not True:
            log.info("engine %s is reachable", self.settings.engine_base)
        elif not reachable and (self.stats.engine_reachable is not False
                                or reason != self.stats.last_engine_error):
            log.warning("engine unreachable, reporting engine_reachable=false: %s", reason)
        self.stats.engine_reachable = reachable
        if not reachable:
            self.stats.last_engine_error = reason


async def _why_ended(call: _ReportCall, done: set[asyncio.Task[None]]) -> StreamEnded:
    """Name what broke a stream; an unexpected error (a bug) is re-raised, not disguised."""
    for task in done:
        exc = task.exception()
        if exc is None:
            continue
        if isinstance(exc, StreamEnded):
            return exc
        if isinstance(exc, grpc.aio.AioRpcError):
            return StreamEnded(f"{exc.code().name}: {exc.details()}")
        if isinstance(exc, asyncio.InvalidStateError) and call.done():
            # grpc.aio refuses a write on a finished call with this error rather than the
            # call's status; the status is what says why (UNAVAILABLE, CANCELLED, ...).
            return StreamEnded(f"{(await call.code()).name}: {await call.details()}")
        raise exc
    return StreamEnded("stream tasks stopped without an error")
