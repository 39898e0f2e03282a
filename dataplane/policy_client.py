"""The sidecar's side of Discovery.StreamPolicies (proto/tdn/v1/discovery.proto), over grpc.aio.

It holds one stream at a time to one control-plane address. The first request names the node and
the version it already runs (the saved one after a restart). Every response is answered: ACK
(the new version and the response's nonce) once the policy is checked, saved and live; NACK (the
last good version, the nonce and an INVALID_ARGUMENT error detail) when it is unusable, keeping
the last good policy. When the stream drops, routing goes on from the last good policy while the
client reconnects with exponential backoff and jitter, rotating through the addresses given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import grpc.aio

from tdn import __version__
from tdn.domain import PolicyInconsistent, SitePolicy
from tdn.v1 import discovery_pb2, discovery_pb2_grpc
from tdn.wire import site_policy_from_pb

from .live_policy import LivePolicy, check_acceptable
from .metrics import SidecarMetrics
from .policy_disk import PolicyDisk

log = logging.getLogger(__name__)

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]

# Keepalive pings notice a control plane that vanished without closing the connection (a cut
# link, a blackholed host) within about 40 s instead of the kernel's hours. The server must allow
# them: grpc.http2.min_recv_ping_interval_without_data_ms <= 30000 and
# grpc.keepalive_permit_without_calls = 1.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnect delays: exponential up to a cap, each drawn from [half, whole] of the step.

    The jitter keeps a fleet of sidecars cut off together from reconnecting in lockstep; the
    floor at half keeps one sidecar from hammering a control plane that is still down.
    """

    initial_s: float = 0.25
    max_s: float = 15.0
    multiplier: float = 2.0

    def delay(self, failures: int, rng: random.Random) -> float:
        step = min(self.max_s, self.initial_s * self.multiplier ** max(failures - 1, 0))
        return rng.uniform(step / 2, step)


class PolicyClient:
    """Keeps ``live`` up to date from the control plane; :meth:`run` is its owned task."""

    def __init__(self, addresses: Sequence[str], node_id: str, site: str, live: LivePolicy, *,
                 disk: PolicyDisk | None = None, metrics: SidecarMetrics | None = None,
                 channel_credentials: grpc.ChannelCredentials | None = None,
                 backoff: Backoff | None = None, rng: random.Random | None = None) -> None:
        if not addresses:
            raise ValueError("PolicyClient needs at least one control-plane address")
        self.addresses = tuple(addresses)
        self.node = discovery_pb2.Node(id=node_id, site=site, build_version=__version__)
        self.site = site
        self.live = live
        self.disk = disk
        self.metrics = metrics
        # None: plaintext. Mutual TLS passes grpc.ssl_channel_credentials(root, key, chain).
        self.channel_credentials = channel_credentials
        self.backoff = backoff if backoff is not None else Backoff()
        self.rng = rng if rng is not None else random.Random()
        self.connected = False
        self.streams_opened = 0

    async def run(self) -> None:
        """Stream policies forever (until cancelled), reconnecting after every failure."""
        failures = 0
        turn = 0
        while True:
            address = self.addresses[turn % len(self.addresses)]
            turn += 1
            try:
                received = await self._stream(address)
                reason = "the control plane closed the stream"
            except grpc.aio.AioRpcError as exc:
                received = False
                reason = f"{exc.code().name}: {exc.details()}"
            finally:
                self._set_connected(False)
            # A stream that delivered policies was healthy: start the backoff from the bottom.
            failures = 1 if received else failures + 1
            delay = self.backoff.delay(failures, self.rng)
            running = (f"routing on last good policy {self.live.version!r}" if self.live.version
                       else "no policy yet")
            log.warning("policy stream to %s ended (%s); %s; reconnecting in %.2fs", address,
                        reason, running, delay)
            await asyncio.sleep(delay)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        if self.metrics is not None:
            self.metrics.controlplane_connected.labels(self.site).set(1 if value else 0)

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self.channel_credentials is not None:
            return grpc.aio.secure_channel(address, self.channel_credentials,
                                           options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)

    async def _stream(self, address: str) -> bool:
        """One stream's life; True when at least one response arrived on it."""
        received = False
        async with self._channel(address) as channel:
            stub = discovery_pb2_grpc.DiscoveryStub(channel)
            call = stub.StreamPolicies(None)  # None: requests are written one by one
            try:
                await call.write(discovery_pb2.DiscoveryRequest(
                    node=self.node, version_info=self.live.version, response_nonce=""))
                await call.wait_for_connection()
                self.streams_opened += 1
                self._set_connected(True)
                log.info("policy stream open to %s (running version %r)", address,
                         self.live.version or None)
                while True:
                    response = await call.read()
                    if not isinstance(response, discovery_pb2.DiscoveryResponse):
                        return received  # grpc.aio.EOF: the server ended the stream
                    received = True
                    await call.write(await self.answer(response))
            finally:
                call.cancel()

    async def answer(self, response: discovery_pb2.DiscoveryResponse,
                     ) -> discovery_pb2.DiscoveryRequest:
        """Apply ``response`` if it is usable and build its ACK, or build its NACK."""
        try:
            policy = self._convert(response)
        except ValueError as exc:
            log.warning("NACK policy version %r (nonce %s): %s; keeping version %r",
                        response.version_info, response.nonce, exc, self.live.version or None)
            if self.metrics is not None:
                self.metrics.policy_updates.labels(self.site, "nack").inc()
            return discovery_pb2.DiscoveryRequest(
                node=self.node, version_info=self.live.version, response_nonce=response.nonce,
                error_detail=discovery_pb2.ErrorDetail(code=INVALID_ARGUMENT, message=str(exc)))
        if policy != self.live.current:
            await self._save(policy)
            self.live.swap(policy)
            log.info("running policy version %r (%d routes, %d factories)", policy.version,
                     len(policy.routes), len(policy.factories))
        if self.metrics is not None:
            self.metrics.policy_updates.labels(self.site, "ack").inc()
        return discovery_pb2.DiscoveryRequest(
            node=self.node, version_info=policy.version, response_nonce=response.nonce)

    def _convert(self, response: discovery_pb2.DiscoveryResponse) -> SitePolicy:
        if not response.HasField("policy"):
            raise PolicyInconsistent("response carries no policy")
        policy = site_policy_from_pb(response.policy)
        if not policy.version:
            policy = dataclasses.replace(policy, version=response.version_info)
        elif response.version_info and response.version_info != policy.version:
            raise PolicyInconsistent(f"response version_info {response.version_info!r} differs "
                                     f"from the policy's version {policy.version!r}")
        check_acceptable(policy, self.site)
        return policy

    async def _save(self, policy: SitePolicy) -> None:
        if self.disk is None:
            return
        try:
            await asyncio.to_thread(self.disk.save, policy)
        except OSError as exc:
            # Running the new policy matters more than saving it: only a restart during an
            # outage would miss it, and it would then route on the older saved one.
            log.error("cannot save policy version %r to %s: %s", policy.version,
                      self.disk.path, exc)
