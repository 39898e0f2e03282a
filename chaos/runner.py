"""Running one drill against a network: settle, bind the literal targets, drive load while the
timeline injects faults (binding role targets such as ``primary`` as their first fault fires) and
an observer samples the network, restore everything, then measure.

The restore runs in a ``finally``: a drill that fails, raises or is cancelled (Ctrl-C) still
reverts every fault, resets Toxiproxy, heals the simulators and restarts what it killed, and
then waits for the network to settle again, so the next drill starts from a sound network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tdn.chaos.load import (
    Arrival,
    RequestRecord,
    replay_arrivals,
    run_load,
    synthetic_arrivals,
)
from tdn.chaos.measure import Analysis, analyse
from tdn.chaos.network import DrillNetwork
from tdn.chaos.observe import (
    Metered,
    Observer,
    Sample,
    controlplane_statuses,
    scrape_metering,
    sidecar_policy,
)
from tdn.chaos.services import ServiceError
from tdn.chaos.spec import DrillSpec, shortened
from tdn.chaos.targets import (
    NetworkState,
    ResolvedTarget,
    TargetBinder,
    TargetError,
    leader_names,
    route_for,
)
from tdn.chaos.timeline import InjectError, Injector, Window, run_timeline
from tdn.chaos.toxiproxy import ToxiproxyError
from tdn.chaos.trace import TraceError, find_trace, read_trace, replay_window

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S = 90.0


@dataclass
class DrillResult:
    """Everything one run of a drill produced; :attr:`passed` gates a deploy."""

    spec: DrillSpec
    short: bool
    network: dict[str, Any]
    started_at: float  # wall clock
    # Each target as bound: literal ones at the start, role ones (primary, leader, ...) when
    # their first fault fired; a target whose fault never fired (an interrupted run) is absent.
    targets: dict[str, ResolvedTarget] = field(default_factory=dict)
    route: dict[str, Any] | None = None
    policy_version: str = ""
    windows: list[Window] = field(default_factory=list)
    records: list[RequestRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    analysis: Analysis | None = None
    drill_end: float = 0.0
    restore_problems: list[str] = field(default_factory=list)
    error: str = ""  # the drill could not run as declared
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.error and self.analysis is not None and self.analysis.passed


def _arrivals(spec: DrillSpec) -> list[Arrival]:
    if spec.load.replay is None:
        return synthetic_arrivals(spec.load)
    base = Path(spec.filename).parent if spec.filename else None
    trace = read_trace(find_trace(spec.load.replay.trace, base))
    window = replay_window(trace, spec.load.replay, spec.load.duration_s)
    return replay_arrivals(spec.load, window)


async def run_drill(spec: DrillSpec, network: DrillNetwork, *, short: bool = False,
                    settle_timeout: float = SETTLE_TIMEOUT_S) -> DrillResult:
    """Run ``spec`` (its CI variant when ``short``) against ``network``."""
    if short:
        spec = shortened(spec)
    result = DrillResult(spec=spec, short=short, network=network.to_json(),
                         started_at=time.time())
    try:
        await network.wait_steady(settle_timeout)
        result.notes += await network.clear_ejections()
        arrivals = _arrivals(spec)
        await _run(spec, network, result, arrivals)
    except* _CANNOT_RUN as group:
        # The timeline and the load run in a task group: the first failure is the story.
        result.error = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(group))
        log.error("drill %s could not run: %s", spec.name, result.error)
    return result


_CANNOT_RUN = (ServiceError, TargetError, InjectError, ToxiproxyError, TraceError,
               aiohttp.ClientError, OSError)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


async def _run(spec: DrillSpec, network: DrillNetwork, result: DrillResult,
               arrivals: list[Arrival]) -> None:
    sidecar = network.sidecar(spec.load.sidecar)
    timeout = aiohttp.ClientTimeout(total=5.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        policy = await sidecar_policy(http, sidecar.admin_url)
        if policy is None:
            raise ServiceError(f"sidecar {sidecar.node_id} shows no policy")
        result.policy_version = str(policy.get("version", ""))
        result.route = dict(route_for(policy, spec.load.model) or {}) or None
        statuses = await controlplane_statuses(http, network)
        _, leader_note = leader_names(network, statuses)
        if leader_note:
            result.notes.append(leader_note)
        binder = TargetBinder(
            network, spec.targets, model=spec.load.model, site=sidecar.site,
            policy=lambda: sidecar_policy(http, sidecar.admin_url),
            statuses=lambda: controlplane_statuses(http, network))
        binder.bind_start(NetworkState(policy, statuses))
        result.targets = binder.bound
        continuation = bool((policy.get("settings") or {}).get("continuation_enabled"))
        before = await scrape_metering(sidecar.admin_url)

        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def clock() -> float:
            return loop.time() - t0

        injector = Injector(network, http,
                            base_dir=Path(spec.filename).parent if spec.filename else None)
        observer = Observer(network, clock)
        result.samples = observer.samples
        try:
            async with asyncio.TaskGroup() as tg:
                watching = tg.create_task(observer.run(), name="drill-observer")
                faults = tg.create_task(
                    run_timeline(spec.timeline, injector, binder, clock, result.windows),
                    name="drill-timeline")
                await run_load(spec.load, sidecar.base_url, arrivals, t0, result.records)
                await faults
                # Keep watching past the load so that a reconnect after the last fault counts.
                await _watch_reconnects(result, clock)
                watching.cancel()
        finally:
            result.drill_end = max(spec.load.duration_s, clock())
            result.targets = binder.bound
            for window in result.windows:
                if window.end is None:
                    window.end = clock()
            after = await _quietly(scrape_metering(sidecar.admin_url))
            result.restore_problems = await _restore(injector, network)
            result.notes += network.adoption_notes()
        metered = (before, after) if after is not None else None
        # Both read the targets as bound, so they come after the timeline.
        lost = {ev.index: result.targets[ev.target].controlplanes for ev in spec.timeline
                if ev.fault == "kill" and result.targets[ev.target].controlplanes}
        notes = {ev.index: result.targets[ev.target].description for ev in spec.timeline}
        result.analysis = analyse(
            spec, result.records, result.windows, result.samples,
            sidecars=[sc.node_id for sc in network.sidecars], drill_end=result.drill_end,
            lost_controlplanes=lost, metered=metered, notes=notes,
            restore_problems=result.restore_problems, continuation=continuation,
            policy_outcomes={i: (o.refused and o.located, o.detail)
                             for i, o in injector.policy_outcomes.items()})


async def _watch_reconnects(result: DrillResult, clock: Callable[[], float]) -> None:
    """Give control-plane drills until their declared reconnect bound to show a reconnect."""
    bound = result.spec.expect.max_reconnect_s or result.spec.expect.max_controlplane_failover_s
    if bound is None or not any(result.spec.target(e.target).kind == "controlplane"
                                for e in result.spec.timeline):
        return
    last_end = max((w.end or 0.0) for w in result.windows) if result.windows else 0.0
    deadline = last_end + bound + 1.0
    nodes = {n for s in result.samples[:1] for sc in s.sidecars for n in [sc.node_id]}
    while clock() < deadline:
        latest = result.samples[-1] if result.samples else None
        if latest is not None and latest.t > last_end + 0.2 and all(
                any(v.node_id == n and v.connected for cp in latest.controlplanes if cp.up
                    for v in cp.sidecars) for n in nodes):
            return
        await asyncio.sleep(0.2)


async def _quietly(coro: Awaitable[Metered]) -> Metered | None:
    """A last metering scrape must not stop the restore that follows it."""
    with contextlib.suppress(Exception):
        return await coro
    return None


async def _restore(injector: Injector, network: DrillNetwork) -> list[str]:
    """Restore everything and wait for the network to settle; never interrupted halfway."""
    task = asyncio.ensure_future(_restore_and_settle(injector, network))
    try:
        # Shielded: a second Ctrl-C must not leave a proxy disabled or a factory dead.
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        problems = await task
        raise asyncio.CancelledError(f"interrupted; restored with problems: {problems}") \
            from None


async def _restore_and_settle(injector: Injector, network: DrillNetwork) -> list[str]:
    problems = await injector.restore_all()
    try:
        await network.wait_steady(SETTLE_TIMEOUT_S)
    except ServiceError as exc:
        problems.append(str(exc))
    return problems
