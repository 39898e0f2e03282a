"""One control-plane replica, assembled: store, registry, solve loop, gRPC services and HTTP.

:class:`ControlPlane` owns every long-lived piece and task. ``start()`` brings them up in
dependency order (store, state, gRPC, HTTP, background tasks); ``stop()`` takes them down in
reverse, so nothing outlives it. Ports may be 0: the bound ones are exposed for tests and logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from tdn.config import NetworkConfig
from tdn.controlplane.demand import DemandEstimator, DemandObservingLedger
from tdn.controlplane.discovery import DiscoveryService
from tdn.controlplane.durable_state import load_admin_states
from tdn.controlplane.http import HttpApi
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.operator_api import OperatorService
from tdn.controlplane.operator_auth import OperatorTokenInterceptor
from tdn.controlplane.policy_service import PolicyService
from tdn.controlplane.registry import Change, FactoryRegistry
from tdn.controlplane.replica import Replica, ReplicaSettings
from tdn.controlplane.sidecars import SidecarTracker
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.solve_loop import SolveLoop, Solver
from tdn.controlplane.status import StatusSource
from tdn.controlplane.telemetry import TelemetryService
from tdn.controlplane.usage import UsageService
from tdn.store.base import Store, open_store
from tdn.topology.options import SolveOptions
from tdn.topology.solver import solve
from tdn.v1 import (
    discovery_pb2,
    discovery_pb2_grpc,
    operator_pb2,
    operator_pb2_grpc,
    telemetry_pb2,
    telemetry_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = ".tdn/controlplane"

SERVICE_NAMES = (
    telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name,
    discovery_pb2.DESCRIPTOR.services_by_name["Discovery"].full_name,
    operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["Usage"].full_name,
)

# Sidecars and agents hold streams for hours through NATs and load balancers that drop idle
# connections: ping every 20 s, and accept client pings as often as every 5 s (the default
# policy would answer a keepalive-happy client with GOAWAY "too_many_pings").
GRPC_OPTIONS: tuple[tuple[str, int], ...] = (
    # A second replica started on a taken port must fail, not silently share it.
    ("grpc.so_reuseport", 0),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
)


class SettingsError(ValueError):
    """Settings no control plane can run with; the message names the setting."""


def split_address(address: str, what: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) into its parts; raise :class:`SettingsError`."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise SettingsError(f"{what} address {address!r} is not host:port")
    return host.strip("[]"), int(port_text)


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ControlPlaneSettings:
    """Everything one replica needs to run; frozen so a running replica's settings are fixed."""

    network: NetworkConfig
    grpc_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:8081"
    # Empty: the embedded store in ``state_dir``.
    store_url: str = ""
    state_dir: str = DEFAULT_STATE_DIR
    report_interval: float = 1.0
    # None: three report intervals (telemetry.proto).
    ttl: float | None = None
    solve_interval: float = 5.0
    solve_quiet: float = 0.1
    solve_max_delay: float = 1.0
    # Delay before the first solve after start; None: one TTL (see solve_loop).
    warmup: float | None = None
    replica_id: str = ""
    solve_options: SolveOptions = field(default_factory=SolveOptions)
    # Server TLS (see tdn.tls.ServerTls, which requires client certificates when given a
    # client CA); None serves plain text.
    server_credentials: grpc.ServerCredentials | None = None
    # When set, every Operator call needs "authorization: Bearer <token>" (operator_auth).
    operator_token: str = field(default="", repr=False)
    # Leader election lease (whole seconds, etcd only): a dead leader is replaced within it.
    lease_ttl: int = 5
    # How long stop() lets in-flight RPCs finish before cancelling the long-lived streams.
    shutdown_grace: float = 1.0

    @property
    def effective_ttl(self) -> float:
        return self.ttl if self.ttl is not None else 3 * self.report_interval

    @property
    def effective_store_url(self) -> str:
        return self.store_url or f"embedded://{Path(self.state_dir).resolve()}"

    @property
    def effective_warmup(self) -> float:
        return self.warmup if self.warmup is not None else self.effective_ttl

    def validate(self) -> None:
        split_address(self.grpc_address, "grpc")
        split_address(self.http_address, "http")
        for name in ("report_interval", "solve_interval", "solve_quiet", "solve_max_delay"):
            value = getattr(self, name)
            if not value > 0:
                raise SettingsError(f"{name} must be positive, not {value}")
        if not self.effective_ttl > 0:
            raise SettingsError(f"ttl must be positive, not {self.ttl}")
        if self.effective_warmup < 0:
            raise SettingsError(f"warmup must not be negative, not {self.warmup}")
        if isinstance(self.lease_ttl, bool) or not isinstance(self.lease_ttl, int) \
                or self.lease_ttl < 1:
            raise SettingsError(f"lease_ttl must be a whole number of seconds >= 1, "
                                f"not {self.lease_ttl!r}")
        if "/" in self.replica_id:
            raise SettingsError(f"replica id {self.replica_id!r} must not contain '/'")
        self.solve_options.validate()


def store_kind(url: str) -> str:
    return "etcd" if url.startswith("etcd://") else "embedded"


class ControlPlane:
    """A running control-plane replica; use ``async with`` or ``start()``/``stop()``."""

    def __init__(self, settings: ControlPlaneSettings, *, solver: Solver = solve) -> None:
        settings.validate()
        self.settings = settings
        self.replica_id = settings.replica_id or default_replica_id()
        self.metrics = ControlPlaneMetrics()
        self._solver = solver
        self._store: Store | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: HealthServicer | None = None
        self._http: HttpApi | None = None
        self._background: asyncio.Task[None] | None = None
        self.replica: Replica | None = None
        self.grpc_port = 0
        self.http_port = 0

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        network = s.network
        url = s.effective_store_url
        self._store = store = await open_store(url)
        admin = await load_admin_states(store)
        self.cache = SnapshotCache(self.metrics)
        self.tracker = SidecarTracker()
        self.registry = FactoryRegistry(ttl=s.effective_ttl, metrics=self.metrics,
                                        on_change=self._on_change, admin=admin)
        # Observed traffic (usage reports), smoothed; the network file's demand until then.
        self.demand = DemandEstimator(network.demand, sites=[site.id for site in network.sites])
        self.solve_loop = SolveLoop(
            registry=self.registry, cache=self.cache, store=store, metrics=self.metrics,
            sites=network.sites, demands=network.demand, interval=s.solve_interval,
            quiet=s.solve_quiet, max_delay=s.solve_max_delay, warmup=s.effective_warmup,
            options=s.solve_options, solver=self._solver, demand=self.demand)
        await self.solve_loop.load()
        self.replica = Replica(store, ReplicaSettings(
            replica_id=self.replica_id, ttl=s.effective_ttl, lease_ttl=s.lease_ttl,
            warmup=s.effective_warmup, elect=store_kind(url) == "etcd"),
            registry=self.registry, cache=self.cache, solve_loop=self.solve_loop,
            metrics=self.metrics)
        # Serve what the store holds from the first request: policies, plan, admin states.
        await self.replica.sync()
        self.status = StatusSource(replica_id=self.replica_id, store_kind=store_kind(url),
                                   registry=self.registry, solve_loop=self.solve_loop,
                                   tracker=self.tracker, replica=self.replica)
        # The operator's policy in force survives restarts: load it before the first solve.
        self.policies = PolicyService(
            store, self.metrics, site_ids=[site.id for site in network.sites],
            on_change=self.solve_loop.set_policy, not_leader=self.status.not_leader)
        await self.policies.load()
        self.usage = DemandObservingLedger(self.demand, policy=lambda: self.policies.policy)

        interceptors = [OperatorTokenInterceptor(s.operator_token)] if s.operator_token else []
        server = grpc.aio.server(options=list(GRPC_OPTIONS), interceptors=interceptors)
        self._grpc = server
        telemetry_pb2_grpc.add_TelemetryServicer_to_server(
            TelemetryService(self.registry, self.metrics, report_interval=s.report_interval,
                             replica=self.replica), server)
        discovery_pb2_grpc.add_DiscoveryServicer_to_server(
            DiscoveryService(self.cache, self.tracker, self.metrics,
                             sites=[site.id for site in network.sites]), server)
        # Kept: the web UI's /api/explain answers through the same Explain.
        self.operator = OperatorService(
            registry=self.registry, solve_loop=self.solve_loop, cache=self.cache, store=store,
            status=self.status, sites=network.sites, demands=network.demand,
            policies=self.policies)
        operator_pb2_grpc.add_OperatorServicer_to_server(self.operator, server)
        usage_pb2_grpc.add_UsageServicer_to_server(UsageService(self.usage, self.metrics), server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.grpc_port = self._bind(server, s.grpc_address)
        await server.start()

        http_host, http_port = split_address(s.http_address, "http")
        self._http = HttpApi(metrics=self.metrics, registry=self.registry,
                             solve_loop=self.solve_loop, cache=self.cache, status=self.status,
                             sites=network.sites, explain=self.operator.Explain,
                             operator_token=s.operator_token)
        self.http_port = await self._http.start(http_host, http_port)
        await self.replica.register(self.grpc_target, self.http_url)

        self._background = asyncio.create_task(self._run_background(), name="controlplane")
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _bind(self, server: grpc.aio.Server, address: str) -> int:
        creds = self.settings.server_credentials
        try:
            port = (server.add_secure_port(address, creds) if creds is not None
                    else server.add_insecure_port(address))
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {address}: {exc}") from None
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        return port

    async def _run_background(self) -> None:
        assert self.replica is not None
        async with asyncio.TaskGroup() as tg:
            # The replica runs the solve loop while it leads (always, on the embedded store).
            tg.create_task(self.replica.run(), name="replica")
            tg.create_task(self._sweep(), name="ttl-sweep")
            # Every replica follows the policy pointer in the store (applied on the leader).
            tg.create_task(self.policies.watch(), name="policy-watch")

    async def _sweep(self) -> None:
        # Often enough that a silent factory turns UNKNOWN soon after its TTL, rarely enough to
        # cost nothing with a thousand factories.
        period = min(max(self.registry.ttl / 4, 0.02), 1.0)
        while True:
            self.registry.sweep()
            # Prices, load and demand drift without announcing it: solve when it matters.
            self.solve_loop.check_drift()
            await asyncio.sleep(period)

    def _on_change(self, change: Change) -> None:
        self.solve_loop.notify(change)

    async def wait(self) -> None:
        """Return (or raise) when the background work ends, which only a bug makes happen."""
        if self._background is not None:
            await asyncio.shield(self._background)

    async def stop(self) -> None:
        """Stop serving and release everything; safe to call twice or after a failed start."""
        if self.replica is not None:
            # First, so that another replica takes over now rather than after a lease TTL.
            await self.replica.resign()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._background is not None:
            self._background.cancel()
            await asyncio.wait([self._background])
            if not self._background.cancelled() and self._background.exception() is not None:
                log.error("control plane background work had failed: %r",
                          self._background.exception())
            self._background = None
        if self._grpc is not None:
            await self._grpc.stop(self.settings.shutdown_grace)
            self._grpc = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self.replica is not None:
            await self.replica.stop()
            self.replica = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def grpc_target(self) -> str:
        """Where clients dial this replica's gRPC server (the bound port, not the asked one)."""
        host, _ = split_address(self.settings.grpc_address, "grpc")
        return f"{_bracketed(host)}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        host, _ = split_address(self.settings.http_address, "http")
        return f"http://{_bracketed(host)}:{self.http_port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
