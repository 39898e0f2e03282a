"""First-byte deadlines against real simulators: a silent (hang) or slow (stall_first_token)
factory is abandoned at its deadline and a backup serves, so a request takes about the deadline
plus the backup's own time, never the fault's 30 s; clients may lower the deadline, never raise
it."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    StreamAnswer,
    make_policy,
    read_stream,
    requests_seen,
    running_sidecar,
    simulators,
)
from multidict import CIMultiDict

from tdn.domain import DataPlaneSettings, SitePolicy
from tdn.sim.faults import Fault, FaultMode

FAULT_S = 30.0  # how long the faulty factory would keep the client waiting
# Deadlines are short enough to prove the point and long enough for a fast backup on a busy
# machine (every attempt of a request, the backup's too, has the same deadline).
DEADLINE_S = 1.0
BOUND_S = 6.0  # generous bound for "abandoned at the deadline, then a fast backup"


async def post(url: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.json(content_type=None)


async def streamed_through(policy: SitePolicy) -> tuple[StreamAnswer, float, str]:
    """One stream through a fresh sidecar: the answer, its seconds, the sidecar's metrics."""
    async with running_sidecar(policy) as sc:
        started = time.monotonic()
        answer = await read_stream(f"{sc.proxy_url}/chat/completions",
                                   {**CHAT_BODY, "stream": True})
        elapsed = time.monotonic() - started
        return answer, elapsed, sc.metrics.exposition().decode()


async def test_blackholed_factory_is_abandoned_at_the_first_byte_deadline_for_a_stream() -> None:
    async with simulators("silent", "backup") as sims:
        sims["silent"].set_fault(Fault(FaultMode.HANG))
        policy = make_policy("v1", {"silent": sims["silent"].url, "backup": sims["backup"].url},
                             [("silent", 1.0)], [[("backup", 1.0)]],
                             first_byte_timeout_s=DEADLINE_S)
        answer, elapsed, metrics = await streamed_through(policy)
    assert answer.status == 200
    assert answer.headers["x-tdn-factory"] == "backup"
    assert answer.done and answer.text and answer.error is None
    assert elapsed < BOUND_S < FAULT_S
    assert 'factory="silent",model="llama-3.1-8b-instruct",reason="first_byte_timeout"' in metrics


async def test_slow_first_token_factory_is_abandoned_at_the_site_deadline() -> None:
    async with simulators("slow", "backup") as sims:
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=FAULT_S))
        policy = make_policy("v1", {"slow": sims["slow"].url, "backup": sims["backup"].url},
                             [("slow", 1.0)], [[("backup", 1.0)]],
                             settings=DataPlaneSettings(first_byte_timeout_s=DEADLINE_S))
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            answer = await read_stream(f"{sc.proxy_url}/chat/completions",
                                       {**CHAT_BODY, "stream": True})
            elapsed = time.monotonic() - started
    assert (answer.status, answer.headers["x-tdn-factory"]) == (200, "backup")
    assert answer.done
    assert elapsed < BOUND_S


async def test_deadline_derived_from_ttft_p99_abandons_a_slow_factory() -> None:
    async with simulators("slow", "backup") as sims:
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=FAULT_S))
        # No deadline in the policy: 3 x p99 = 0.9 s from the factory's observed TTFT.
        policy = make_policy("v1", {"slow": sims["slow"].url, "backup": sims["backup"].url},
                             [("slow", 1.0)], [[("backup", 1.0)]],
                             ttft_p99_s={"slow": 0.3, "backup": 0.3})
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            status, headers, _ = await post(f"{sc.proxy_url}/chat/completions",
                                            {**CHAT_BODY, "max_tokens": 8})
            elapsed = time.monotonic() - started
    assert (status, headers["x-tdn-factory"]) == (200, "backup")
    assert elapsed < BOUND_S


async def test_non_streamed_request_to_a_silent_factory_fails_over_within_deadline_and_allowance(
        ) -> None:
    async with simulators("silent", "backup") as sims:
        sims["silent"].set_fault(Fault(FaultMode.HANG))
        policy = make_policy("v1", {"silent": sims["silent"].url, "backup": sims["backup"].url},
                             [("silent", 1.0)], [[("backup", 1.0)]],
                             first_byte_timeout_s=DEADLINE_S)
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            # 1 s + 20 tokens x 50 ms of generation allowance.
            status, headers, body = await post(f"{sc.proxy_url}/chat/completions",
                                               {**CHAT_BODY, "max_tokens": 20})
            elapsed = time.monotonic() - started
    assert (status, headers["x-tdn-factory"]) == (200, "backup")
    assert body["choices"][0]["message"]["content"]
    assert elapsed < BOUND_S


async def test_client_header_lowers_the_deadline_but_cannot_raise_it() -> None:
    async with simulators("slow", "backup") as sims:
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=FAULT_S))
        urls = {"slow": sims["slow"].url, "backup": sims["backup"].url}
        policy = make_policy("v1", urls, [("slow", 1.0)], [[("backup", 1.0)]],
                             first_byte_timeout_s=20.0)
        # A missed deadline makes the factory suspect, so each half of the test gets a fresh
        # sidecar: both requests must really be sent to the slow factory.
        async with running_sidecar(policy) as sc:
            started = time.monotonic()
            lowered = await read_stream(f"{sc.proxy_url}/chat/completions",
                                        {**CHAT_BODY, "stream": True},
                                        {"x-tdn-first-byte-timeout-ms": "1000"})
            lowered_s = time.monotonic() - started
        sims["slow"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=3.0))
        # Asking for more than the policy's 1 s gets the policy's 1 s.
        capped_policy = make_policy("v2", urls, [("slow", 1.0)], [[("backup", 1.0)]],
                                    first_byte_timeout_s=DEADLINE_S)
        async with running_sidecar(capped_policy) as sc:
            capped = await read_stream(f"{sc.proxy_url}/chat/completions",
                                       {**CHAT_BODY, "stream": True},
                                       {"x-tdn-first-byte-timeout-ms": "60000"})
            status, _, bad = await post(f"{sc.proxy_url}/chat/completions", CHAT_BODY,
                                        {"x-tdn-first-byte-timeout-ms": "soon"})
    assert (lowered.status, lowered.headers["x-tdn-factory"]) == (200, "backup")
    assert lowered_s < BOUND_S
    assert (capped.status, capped.headers["x-tdn-factory"],
            capped.headers["x-tdn-attempts"]) == (200, "backup", "2")
    assert status == 400
    assert bad["error"]["code"] == "invalid_header"
    assert requests_seen(sims["slow"]) == 2


async def test_last_candidate_is_not_abandoned_at_a_derived_deadline() -> None:
    # 3 x 0.2 s p99 = 0.6 s derived deadline, first token after 1.5 s; nothing to fail over to,
    # so the sidecar waits (up to the 30 s cap) instead of turning a slow answer into an error.
    async with simulators("only") as sims:
        sims["only"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=1.5))
        policy = make_policy("v1", {"only": sims["only"].url}, [("only", 1.0)],
                             ttft_p99_s={"only": 0.2})
        answer, _, metrics = await streamed_through(policy)
    assert (answer.status, answer.headers["x-tdn-factory"],
            answer.headers["x-tdn-attempts"]) == (200, "only", "1")
    assert answer.done and answer.text and answer.error is None
    assert 'reason="first_byte_timeout"' not in metrics


async def test_operator_deadline_still_bounds_the_last_candidate() -> None:
    async with simulators("only") as sims:
        sims["only"].set_fault(Fault(FaultMode.STALL_FIRST_TOKEN, seconds=FAULT_S))
        policy = make_policy("v1", {"only": sims["only"].url}, [("only", 1.0)],
                             first_byte_timeout_s=DEADLINE_S)
        answer, elapsed, metrics = await streamed_through(policy)
    assert answer.status >= 500
    assert elapsed < BOUND_S < FAULT_S
    assert 'factory="only",model="llama-3.1-8b-instruct",reason="first_byte_timeout"' in metrics
