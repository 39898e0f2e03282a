"""A whole sidecar in-process: proxy server, admin server, policy client and usage reporter,
started and stopped together. ``tdn proxy`` runs one (or several, see :mod:`workers`); ``tdn up``
and the tests start them directly.

Start order gives static stability: the saved policy is loaded before the proxy listens, so a
sidecar restarted while the control plane is down routes from its first request. Stop order lets
requests in flight finish, then sends the last usage window.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from tdn.domain import SitePolicy

from .admin import build_admin_app
from .credentials import Credentials
from .http_server import HttpServer
from .live_policy import LivePolicy, check_acceptable
from .metering import Meter
from .metrics import SidecarMetrics
from .policy_client import Backoff, PolicyClient
from .policy_disk import PolicyDisk
from .proxy import Proxy, ProxySettings
from .tenants import Tenants
from .usage_reporter import DEFAULT_INTERVAL_S, UsageReporter

log = logging.getLogger(__name__)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to a pair; raise ValueError naming the problem."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return host, port


@dataclass(frozen=True, slots=True)
class SidecarSettings:
    """Where a sidecar listens, who it is, where its control planes and its state are.

    Port 0 in ``listen`` or ``admin`` binds a free port (see :attr:`Sidecar.proxy_port`).
    An empty ``controlplane`` runs no policy client: policies come from :meth:`Sidecar.set_policy`
    or the state directory only. ``state_dir`` None keeps nothing on disk. Usage reports go to
    ``usage_controlplane`` (None: the ``controlplane`` addresses; empty: nowhere).
    ``reuse_port`` lets several worker processes listen on one proxy port (SO_REUSEPORT).
    """

    site: str
    node_id: str = "sidecar-1"
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9901"
    controlplane: tuple[str, ...] = ()
    state_dir: Path | None = None
    proxy: ProxySettings = field(default_factory=ProxySettings)
    backoff: Backoff = field(default_factory=Backoff)
    # How long in-flight requests (long streams included) may run on after stop() is called.
    shutdown_timeout_s: float = 5.0
    usage_controlplane: tuple[str, ...] | None = None
    usage_interval_s: float = DEFAULT_INTERVAL_S
    reuse_port: bool = False

    @property
    def usage_addresses(self) -> tuple[str, ...]:
        return self.controlplane if self.usage_controlplane is None else self.usage_controlplane


class Sidecar:
    """One sidecar; use ``async with Sidecar(...)`` or :meth:`start` / :meth:`stop`."""

    def __init__(self, settings: SidecarSettings, credentials: Credentials | None = None, *,
                 channel_credentials: grpc.ChannelCredentials | None = None,
                 registry: CollectorRegistry | None = None,
                 tenants: Tenants | None = None) -> None:
        self.settings = settings
        self.metrics = SidecarMetrics(settings.site, registry)
        self.live = LivePolicy()
        self.live.add_listener(self.metrics.policy_swapped)
        self.disk = PolicyDisk(settings.state_dir) if settings.state_dir is not None else None
        self.meter = Meter()
        self.proxy = Proxy(self.live, self.metrics, credentials, settings.proxy,
                           tenants=tenants, meter=self.meter)
        self.usage_reporter: UsageReporter | None = None
        if settings.usage_addresses:
            self.usage_reporter = UsageReporter(
                settings.usage_addresses, settings.node_id, settings.site, self.meter,
                metrics=self.metrics, interval_s=settings.usage_interval_s,
                channel_credentials=channel_credentials)
        self.policy_client: PolicyClient | None = None
        if settings.controlplane:
            self.policy_client = PolicyClient(
                settings.controlplane, settings.node_id, settings.site, self.live, disk=self.disk,
                metrics=self.metrics, channel_credentials=channel_credentials,
                backoff=settings.backoff)
        self._runners: list[web.AppRunner] = []
        self._server: HttpServer | None = None
        self._proxy_started = False
        self._ports: dict[str, int] = {}
        self._client_task: asyncio.Task[None] | None = None
        self._usage_task: asyncio.Task[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.disk is not None and self.live.current is None:
            saved = await asyncio.to_thread(self.disk.load, self.settings.site)
            if saved is not None:
                self.live.swap(saved)
                log.info("routing on saved policy version %r from %s", saved.version,
                         self.disk.path)
        try:
            await self.proxy.start()
            self._proxy_started = True
            # The proxy port has a server of its own (see http_server: why not aiohttp's); a
            # request whose client goes away is cancelled, which closes its upstream request
            # at once instead of letting a factory generate tokens nobody will read.
            self._server = HttpServer(self.proxy.dispatch,
                                      max_body_bytes=self.settings.proxy.max_body_bytes)
            host, port = parse_address(self.settings.listen)
            self._ports["proxy"] = await self._server.start(host, port,
                                                            reuse_port=self.settings.reuse_port)
            admin = build_admin_app(self.live, self.metrics, self.settings.node_id,
                                    self.settings.site)
            self._ports["admin"] = await self._serve(admin, self.settings.admin)
        except BaseException:
            await self.stop()
            raise
        if self.policy_client is not None:
            self._client_task = asyncio.create_task(self.policy_client.run(),
                                                    name="tdn-policy-client")
            self._client_task.add_done_callback(_report_crash)
        if self.usage_reporter is not None:
            self._usage_task = asyncio.create_task(self.usage_reporter.run(),
                                                   name="tdn-usage-reporter")
            self._usage_task.add_done_callback(_report_crash)
        log.info("sidecar %s for site %s: proxy on %s:%d, admin on %s:%d",
                 self.settings.node_id, self.settings.site, self.proxy_host, self.proxy_port,
                 parse_address(self.settings.admin)[0], self.admin_port)

    async def _serve(self, app: web.Application, address: str) -> int:
        host, port = parse_address(address)
        runner = web.AppRunner(app, access_log=None,
                               shutdown_timeout=self.settings.shutdown_timeout_s)
        await runner.setup()
        self._runners.append(runner)
        # No reuse_port here: admin ports stay one per process, so that a scrape always
        # reaches the process it names.
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound: int = runner.addresses[0][1]
        return bound

    async def stop(self) -> None:
        """Stop taking connections, let requests in flight finish (bounded), then stop."""
        task, self._client_task = self._client_task, None
        if task is not None:
            task.cancel()
            # wait() rather than await: a crash was already reported by _report_crash.
            await asyncio.wait([task])
        usage, self._usage_task = self._usage_task, None
        if usage is not None:
            usage.cancel()
            await asyncio.wait([usage])
        server, self._server = self._server, None
        if server is not None:
            await server.stop(self.settings.shutdown_timeout_s)
        if self._proxy_started:
            self._proxy_started = False
            await self.proxy.stop()
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        if usage is not None and self.usage_reporter is not None:
            # After the runners: requests that finished during the grace period are metered too.
            await self.usage_reporter.close()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- ports ---------------------------------------------------------------------------------

    @property
    def proxy_host(self) -> str:
        return parse_address(self.settings.listen)[0]

    @property
    def proxy_port(self) -> int:
        return self._ports["proxy"]

    @property
    def admin_port(self) -> int:
        return self._ports["admin"]

    @property
    def proxy_url(self) -> str:
        """Base URL for OpenAI clients (ends in /v1)."""
        return f"http://{_url_host(self.proxy_host)}:{self.proxy_port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://{_url_host(parse_address(self.settings.admin)[0])}:{self.admin_port}"

    # --- policy --------------------------------------------------------------------------------

    @property
    def policy(self) -> SitePolicy | None:
        return self.live.current

    def set_policy(self, policy: SitePolicy) -> None:
        """Run ``policy`` now (and save it when a state directory is set), as if pushed.

        Raises ValueError, like a NACK, when the policy is inconsistent or for another site.
        """
        check_acceptable(policy, self.settings.site)
        if self.disk is not None:
            self.disk.save(policy)
        self.live.swap(policy)


def _url_host(host: str) -> str:
    if host in {"", "0.0.0.0"}:
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _report_crash(task: asyncio.Task[None]) -> None:
    # The proxy keeps routing on its last good policy; a crashed background task is a bug to
    # fix, so it is logged loudly, not swallowed.
    if not task.cancelled() and task.exception() is not None:
        log.error("%s stopped by a bug; routing continues on the last good policy",
                  task.get_name(), exc_info=task.exception())
