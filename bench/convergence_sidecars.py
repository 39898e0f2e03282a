"""Simulated sidecars for the convergence benchmark, run in a child process.

Each simulated sidecar is one Discovery stream on its own connection (as real sidecars have), that
ACKs every response the moment it arrives and notes when (wall clock) it received which version.
It does nothing else, so that the client side is cheap and the figures are the control plane's.
The parent drives the process through a pipe: how many sidecars run a version above N, when each
first received one, the highest version seen, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection

import grpc

from tdn.v1 import discovery_pb2, discovery_pb2_grpc

# Streams are opened in batches, so that a few thousand do not hit the server in one instant.
_OPEN_BATCH = 200


class _Sidecars:
    def __init__(self, targets: list[str], site: str, node_ids: list[str],
                 per_connection: int = 1) -> None:
        self.targets = targets
        self.site = site
        self.node_ids = node_ids
        # node id -> [(version, received at)], in arrival order.
        self.seen: dict[str, list[tuple[int, float]]] = {n: [] for n in node_ids}
        self.errors = 0
        # Streams per connection: 1 is what real sidecars do; more makes the client cheaper.
        self.per_connection = per_connection
        self._shared: dict[tuple[int, str], grpc.aio.Channel] = {}

    async def stream(self, node_id: str, target: str) -> None:
        node = discovery_pb2.Node(id=node_id, site=self.site, build_version="bench")
        while True:
            try:
                async with self._channel(node_id, target) as channel:
                    call = discovery_pb2_grpc.DiscoveryStub(channel).StreamPolicies(None)
                    running = self.seen[node_id][-1][0] if self.seen[node_id] else None
                    await call.write(discovery_pb2.DiscoveryRequest(
                        node=node, version_info="" if running is None else str(running)))
                    while True:
                        response = await call.read()
                        if not isinstance(response, discovery_pb2.DiscoveryResponse):
                            break
                        received = time.time()
                        self.seen[node_id].append((int(response.version_info), received))
                        await call.write(discovery_pb2.DiscoveryRequest(
                            node=node, version_info=response.version_info,
                            response_nonce=response.nonce))
            except grpc.aio.AioRpcError:
                self.errors += 1
            await asyncio.sleep(0.5)

    @contextlib.asynccontextmanager
    async def _channel(self, node_id: str, target: str) -> AsyncIterator[grpc.aio.Channel]:
        if self.per_connection <= 1:
            # A connection of its own (gRPC would otherwise share one per target).
            options = [("grpc.use_local_subchannel_pool", 1)]
            async with grpc.aio.insecure_channel(target, options=options) as channel:
                yield channel
            return
        group = (self.node_ids.index(node_id) // self.per_connection, target)
        if group not in self._shared:
            options = [("grpc.use_local_subchannel_pool", 1)]
            self._shared[group] = grpc.aio.insecure_channel(target, options=options)
        yield self._shared[group]

    def above(self, version: int) -> list[float | None]:
        """Per sidecar: when it first received a version above ``version`` (None: not yet)."""
        times: list[float | None] = []
        for node_id in self.node_ids:
            first = next((t for v, t in self.seen[node_id] if v > version), None)
            times.append(first)
        return times

    def highest(self) -> int:
        return max((seen[-1][0] for seen in self.seen.values() if seen), default=0)

    def lowest(self) -> int:
        """The lowest version any sidecar runs (0 if one has none yet)."""
        return min((seen[-1][0] if seen else 0 for seen in self.seen.values()), default=0)


async def _serve(conn: Connection, sidecars: _Sidecars) -> None:
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, len(sidecars.node_ids), _OPEN_BATCH):
        for i, node_id in enumerate(sidecars.node_ids[start:start + _OPEN_BATCH], start):
            target = sidecars.targets[i % len(sidecars.targets)]
            tasks.append(asyncio.create_task(sidecars.stream(node_id, target)))
        await asyncio.sleep(0.05)
    try:
        while True:
            command, argument = await loop.run_in_executor(None, conn.recv)
            if command == "above":
                conn.send(sidecars.above(int(argument)))
            elif command == "lowest":
                conn.send(sidecars.lowest())
            elif command == "highest":
                conn.send(sidecars.highest())
            elif command == "errors":
                conn.send(sidecars.errors)
            elif command == "stop":
                conn.send("stopped")
                return
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def main(conn: Connection, targets: list[str], site: str, node_ids: list[str],
         per_connection: int = 1) -> None:
    """Child process entry point: run ``node_ids`` against ``targets`` until told to stop."""
    asyncio.run(_serve(conn, _Sidecars(targets, site, node_ids, per_connection)))
