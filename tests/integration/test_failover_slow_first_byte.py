"""Passing over a factory slow to start streams right now (dataplane/first_byte_watch.py), against
real simulators: while one stream waits at a stalled primary past ``slow_first_byte_seconds``, a
new stream the balancer would send there goes to the route's other primary instead; once the
wait is over the factory is back in its place. Nothing is ejected and no attempt is cut."""

from __future__ import annotations

import asyncio

from dataplane_support import (
    CHAT_BODY,
    make_policy,
    read_stream,
    running_sidecar,
    simulators,
)
from support import async_wait_until

from tdn.domain import DataPlaneSettings
from tdn.sim.faults import Fault, FaultMode

STALL_S = 2.0
SLOW_S = 0.2
STREAM = {**CHAT_BODY, "stream": True, "max_tokens": 4}


async def test_a_new_stream_passes_over_a_primary_still_starting_another_and_returns_after(
        ) -> None:
    async with simulators("slow", "fast", "backup") as sims:
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=STALL_S))
        urls = {f: sims[f].url for f in ("slow", "fast", "backup")}
        # Smooth weighted round-robin picks "slow" for each of the first three requests.
        policy = make_policy("v1", urls, [("slow", 0.9), ("fast", 0.1)], [[("backup", 1.0)]],
                             settings=DataPlaneSettings(slow_first_byte_s=SLOW_S,
                                                        first_byte_timeout_s=20.0))
        async with running_sidecar(policy) as sc:
            url = f"{sc.proxy_url}/chat/completions"
            first = asyncio.create_task(read_stream(url, STREAM))
            health = sc.proxy.health

            async def waited() -> bool:
                return health.first_bytes.waiting_s("slow", health.clock()) > SLOW_S

            await async_wait_until(waited, timeout=10, what="a stream waiting at 'slow'")
            passed = await read_stream(url, STREAM)
            held = await first
            sims["slow"].set_fault(Fault(FaultMode.NONE))
            after = await read_stream(url, STREAM)
            metrics = sc.metrics.exposition().decode()
    # The waiting stream was not cut: it got its answer from the slow factory.
    assert (held.status, held.headers["x-tdn-factory"], held.done) == (200, "slow", True)
    # The next one went to the other primary, not the backup, in one attempt.
    assert (passed.status, passed.headers["x-tdn-factory"], passed.done) == (200, "fast", True)
    assert passed.headers["x-tdn-attempts"] == "1"
    # With nothing waiting any more, the factory is back in its place.
    assert (after.status, after.headers["x-tdn-factory"]) == (200, "slow")
    assert 'tdn_sidecar_slow_first_byte_passed_over_total{factory="slow"' in metrics
