"""The Discovery service: streams each sidecar its site's policy, xDS style, with ACK and NACK.

This implements the contract written in ``proto/tdn/v1/discovery.proto``:

* the first request names the node and the version it already runs; the current policy of its
  site is sent unless the sidecar already runs that version; nothing is ever sent for another
  site;
* every response carries a fresh nonce; a request answering anything but the latest nonce sent
  on its stream is stale and ignored;
* an ACK records the version the sidecar now runs; a NACK records the error for operators (log,
  ``tdn_discovery_nacks_total``, GetStatus) and that version is not sent again on the stream;
* when the snapshot cache gives the site a new version, it is pushed on every stream of the site.

Metrics per site: ``tdn_discovery_queue_seconds`` (a new version waiting for its turn on a stream),
``tdn_discovery_push_seconds`` (writing it), ``tdn_discovery_convergence_seconds`` (from the
version reaching this replica to each ACK) and ``tdn_policy_convergence_seconds`` (per version:
from its creation by the solver until the last sidecar connected here at the time ACKed it).

Each stream owns one reader task (requests in) while the handler itself writes (responses out);
the reader is cancelled and awaited when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

import grpc

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.sidecars import SidecarTracker
from tdn.controlplane.snapshot_cache import Snapshot, SnapshotCache
from tdn.v1 import discovery_pb2, discovery_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Stream:
    """What one stream has sent and heard."""

    node_id: str
    site: str
    tracker_id: int
    # The version the sidecar says it runs (from its first request, then every ACK/NACK).
    running: str
    # Monotonic time the stream opened: versions made before that were not queued for it.
    opened_at: float = 0.0
    last_nonce: str = ""
    last_sent: str = ""


@dataclass(slots=True)
class _Rollout:
    """One site version on its way to the sidecars connected when it arrived."""

    version: str
    created_wall: float
    waiting: set[int] = field(default_factory=set)


class VersionConvergence:
    """Times each site version from its creation until every sidecar connected to this replica
    at the time has ACKed it (``tdn_policy_convergence_seconds``). A sidecar that disconnects
    first is no longer waited for; a newer version replaces an unfinished one."""

    def __init__(self, metrics: ControlPlaneMetrics, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._wall = wall_clock
        self._streams: dict[str, set[int]] = {}
        self._rollouts: dict[str, _Rollout] = {}
        # (site, version) -> seconds, for the versions that converged, newest last (bounded).
        self.converged: dict[tuple[str, str], float] = {}

    def opened(self, site: str, stream_id: int) -> None:
        self._streams.setdefault(site, set()).add(stream_id)

    def closed(self, site: str, stream_id: int) -> None:
        self._streams.get(site, set()).discard(stream_id)
        rollout = self._rollouts.get(site)
        if rollout is not None:
            rollout.waiting.discard(stream_id)
            self._finish_if_done(site, rollout)

    def new_version(self, site: str, snapshot: Snapshot) -> None:
        waiting = set(self._streams.get(site, ()))
        created = snapshot.policy.generated_at or self._wall()
        self._rollouts[site] = _Rollout(snapshot.version, created, waiting)
        # No sidecar connected: nothing to wait for, nothing to measure.
        if not waiting:
            del self._rollouts[site]

    def acked(self, site: str, stream_id: int, version: str) -> None:
        rollout = self._rollouts.get(site)
        if rollout is not None and rollout.version == version:
            rollout.waiting.discard(stream_id)
            self._finish_if_done(site, rollout)

    def nacked(self, site: str, version: str) -> None:
        # A refused version never converges; it is not measured (the NACK metric counts it).
        rollout = self._rollouts.get(site)
        if rollout is not None and rollout.version == version:
            del self._rollouts[site]

    def _finish_if_done(self, site: str, rollout: _Rollout) -> None:
        if rollout.waiting:
            return
        del self._rollouts[site]
        seconds = max(self._wall() - rollout.created_wall, 0.0)
        self._metrics.version_convergence.labels(site=site).observe(seconds)
        self.converged[(site, rollout.version)] = seconds
        while len(self.converged) > 256:
            del self.converged[next(iter(self.converged))]


class DiscoveryService(discovery_pb2_grpc.DiscoveryServicer):
    """grpc.aio servicer for ``tdn.v1.Discovery``."""

    def __init__(self, cache: SnapshotCache, tracker: SidecarTracker,
                 metrics: ControlPlaneMetrics, *, sites: Collection[str]) -> None:
        self._cache = cache
        self._tracker = tracker
        self._metrics = metrics
        self._sites = frozenset(sites)
        self.convergence = VersionConvergence(metrics)
        cache.add_listener(self.convergence.new_version)

    async def StreamPolicies(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext[discovery_pb2.DiscoveryRequest,
                                          discovery_pb2.DiscoveryResponse],
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            return
        node = first.node
        if not node.id or not node.site:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first DiscoveryRequest must name node.id and node.site")
        if node.site not in self._sites:
            known = ", ".join(sorted(self._sites)) or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"site {node.site!r} is not in this network (known: {known})")
        stream = _Stream(
            node_id=node.id, site=node.site, running=first.version_info,
            opened_at=time.monotonic(),
            tracker_id=self._tracker.connect(node.id, node.site, running_version=first.version_info,
                                             build_version=node.build_version,
                                             peer=context.peer()))
        log.info("discovery stream from %s at %s (runs %r)", node.id, node.site,
                 first.version_info)
        wake = asyncio.Event()
        self._cache.subscribe(stream.site, wake)
        self._metrics.discovery_streams.inc()
        self.convergence.opened(stream.site, stream.tracker_id)
        reader = asyncio.create_task(self._read(request_iterator, stream),
                                     name=f"discovery-reader-{node.id}")
        reader.add_done_callback(lambda _: wake.set())
        try:
            while True:
                wake.clear()
                response = self._next_response(stream)
                if response is not None:
                    started = time.monotonic()
                    yield response
                    self._metrics.discovery_push.labels(site=stream.site).observe(
                        time.monotonic() - started)
                    continue  # the cache may have moved on while the response was written
                if reader.done():
                    return
                await wake.wait()
        finally:
            reader.cancel()
            await asyncio.wait([reader])
            if not reader.cancelled() and reader.exception() is not None:
                log.error("discovery stream from %s: reader failed: %r", stream.node_id,
                          reader.exception())
            self._cache.unsubscribe(stream.site, wake)
            self._metrics.discovery_streams.dec()
            self.convergence.closed(stream.site, stream.tracker_id)
            self._tracker.disconnect(stream.node_id, stream.tracker_id)
            log.info("discovery stream from %s closed", stream.node_id)

    def _next_response(self, stream: _Stream) -> discovery_pb2.DiscoveryResponse | None:
        snapshot = self._cache.get(stream.site)
        if snapshot is None or snapshot.version in (stream.running, stream.last_sent):
            # Nothing yet, already running it, or already sent on this stream (ACKed, pending,
            # or NACKed: a refused version is never resent).
            return None
        # The nonce and the version are recorded before the response leaves, so an answer that
        # races back is matched against this response and not the previous one.
        if snapshot.created_at >= stream.opened_at:
            # The stream was open when this version arrived: it waited this long for its turn.
            self._metrics.discovery_queue.labels(site=stream.site).observe(
                max(time.monotonic() - snapshot.created_at, 0.0))
        stream.last_nonce = secrets.token_hex(8)
        stream.last_sent = snapshot.version
        self._tracker.sent(stream.node_id, stream.tracker_id, snapshot.version)
        self._metrics.discovery_pushes.labels(site=stream.site).inc()
        return discovery_pb2.DiscoveryResponse(version_info=snapshot.version,
                                               nonce=stream.last_nonce, policy=snapshot.message)

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
                    stream: _Stream) -> None:
        try:
            async for request in requests:
                self._on_request(stream, request)
        except grpc.aio.AioRpcError as exc:
            # The client went away mid-read; the handler ends the stream.
            log.debug("discovery stream from %s: read ended: %s", stream.node_id, exc.code())

    def _on_request(self, stream: _Stream, request: discovery_pb2.DiscoveryRequest) -> None:
        if request.response_nonce != stream.last_nonce:
            self._metrics.discovery_stale.labels(site=stream.site).inc()
            log.debug("discovery: %s answered stale nonce %r (latest %r); ignored",
                      stream.node_id, request.response_nonce, stream.last_nonce)
            return
        if not stream.last_nonce:
            return  # a repeated first request: nothing has been sent to answer
        stream.running = request.version_info
        if request.HasField("error_detail"):
            detail = request.error_detail
            message = f"code {detail.code}: {detail.message}"
            self._metrics.discovery_nacks.labels(site=stream.site).inc()
            log.warning("discovery: %s at %s refused version %s (still runs %r): %s",
                        stream.node_id, stream.site, stream.last_sent, request.version_info,
                        message)
            self._tracker.nacked(stream.node_id, stream.tracker_id, refused=stream.last_sent,
                                 running=request.version_info, message=message)
            self.convergence.nacked(stream.site, stream.last_sent)
            return
        self._tracker.acked(stream.node_id, stream.tracker_id, request.version_info)
        self.convergence.acked(stream.site, stream.tracker_id, request.version_info)
        age = self._cache.age(stream.site, request.version_info)
        if request.version_info == stream.last_sent and age is not None:
            self._metrics.discovery_convergence.labels(site=stream.site).observe(age)
