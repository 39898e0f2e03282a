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

Each stream owns one reader task (requests in) while the handler itself writes (responses out);
the reader is cancelled and awaited when the stream ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass

import grpc

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.sidecars import SidecarTracker
from tdn.controlplane.snapshot_cache import SnapshotCache
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
    last_nonce: str = ""
    last_sent: str = ""


class DiscoveryService(discovery_pb2_grpc.DiscoveryServicer):
    """grpc.aio servicer for ``tdn.v1.Discovery``."""

    def __init__(self, cache: SnapshotCache, tracker: SidecarTracker,
                 metrics: ControlPlaneMetrics, *, sites: Collection[str]) -> None:
        self._cache = cache
        self._tracker = tracker
        self._metrics = metrics
        self._sites = frozenset(sites)

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
            tracker_id=self._tracker.connect(node.id, node.site, running_version=first.version_info,
                                             build_version=node.build_version,
                                             peer=context.peer()))
        log.info("discovery stream from %s at %s (runs %r)", node.id, node.site,
                 first.version_info)
        wake = asyncio.Event()
        self._cache.subscribe(stream.site, wake)
        self._metrics.discovery_streams.inc()
        reader = asyncio.create_task(self._read(request_iterator, stream),
                                     name=f"discovery-reader-{node.id}")
        reader.add_done_callback(lambda _: wake.set())
        try:
            while True:
                wake.clear()
                response = self._next_response(stream)
                if response is not None:
                    yield response
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
            return
        self._tracker.acked(stream.node_id, stream.tracker_id, request.version_info)
        age = self._cache.age(stream.site, request.version_info)
        if request.version_info == stream.last_sent and age is not None:
            self._metrics.discovery_convergence.labels(site=stream.site).observe(age)
