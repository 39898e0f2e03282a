"""Drill targets: a literal target is bound at the start; a role target (``primary``, ``backup``,
the primary's region, the ``leader``) is bound against the network's state when its first fault
fires — the control plane may have re-planned since the start — and every later event on it
(the restart, the next flap) hits what the first one hit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from chaos_support import MODEL, fake_network, policy, statuses

from tdn.chaos.spec import DrillSpec, FaultEvent, parse_drill
from tdn.chaos.targets import NetworkState, ResolvedTarget, TargetBinder, TargetError
from tdn.chaos.timeline import Injector, Window, run_timeline

AT_START = policy(1, {"edge-fra-1": 0.6, "edge-fra-2": 0.4}, backups=["center-se-1"])
# The control plane re-planned on observed demand: the traffic moved to edge-fra-2.
REPLANNED = policy(4, {"edge-fra-2": 0.9, "edge-fra-1": 0.1}, backups=["center-se-1"])
# And again, after the fault: the primary's loss moved it to the backup.
AFTER_FAULT = policy(5, {"center-se-1": 1.0})


class States:
    """The network's state as successive fetches see it: each fetch takes the next value (the
    last one repeats). Counts fetches, to show a binding is made once."""

    def __init__(self, policies: list[Mapping[str, Any] | None],
                 replicas: list[Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        self.policies = policies
        self.replicas = replicas or [statuses("a")]
        self.policy_fetches = 0
        self.status_fetches = 0

    async def policy(self) -> Mapping[str, Any] | None:
        self.policy_fetches += 1
        return self.policies[min(self.policy_fetches, len(self.policies)) - 1]

    async def statuses(self) -> Mapping[str, Mapping[str, Any]]:
        self.status_fetches += 1
        return self.replicas[min(self.status_fetches, len(self.replicas)) - 1]


def _drill(targets: str, timeline: str) -> DrillSpec:
    return parse_drill(f"name: t\nload: {{duration_s: 10}}\ntargets:\n{targets}"
                       f"timeline:\n{timeline}", "t.yaml")


def _binder(spec: DrillSpec, states: States, start: Mapping[str, Any] = AT_START,
            leader: str = "a") -> TargetBinder:
    network, _ = fake_network()
    binder = TargetBinder(network, spec.targets, model=MODEL, site="fra-office",
                          policy=states.policy, statuses=states.statuses)
    binder.bind_start(NetworkState(start, statuses(leader)))
    return binder


class _Recorder(Injector):
    """Applies nothing; records which target each occurrence was applied to."""

    def __init__(self) -> None:
        self.applied: list[tuple[int, int, ResolvedTarget]] = []

    async def apply(self, event: FaultEvent, occurrence: int, target: ResolvedTarget) -> int:
        self.applied.append((event.index, occurrence, target))
        return len(self.applied)

    async def revert(self, key: int) -> None:
        return None


async def _run(spec: DrillSpec, injector: Injector, binder: TargetBinder) -> list[Window]:
    windows: list[Window] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await run_timeline(spec.timeline, injector, binder, lambda: loop.time() - t0, windows)
    return windows


def test_literal_targets_are_bound_at_the_start_and_role_targets_are_not() -> None:
    spec = _drill("  named: {factory: center-se-1}\n  home: {region: site}\n"
                  "  cps: {controlplane: all}\n  victim: {factory: primary}\n"
                  "  leader: {controlplane: leader}\n",
                  "  - {at: 0, target: victim, fault: kill}\n")
    binder = _binder(spec, States([REPLANNED]))
    bound = binder.bound
    assert list(bound) == ["named", "home", "cps"]
    assert bound["named"].factories == ("center-se-1",)
    assert bound["home"].factories == ("edge-fra-1", "edge-fra-2")
    assert bound["cps"].controlplanes == ("controlplane/a", "controlplane/b")
    assert all(t.bound_at is None for t in bound.values())


def test_a_role_nothing_fills_at_the_start_fails_the_drill_before_any_load() -> None:
    spec = _drill("  spare: {factory: backup}\n", "  - {at: 0, target: spare, fault: kill}\n")
    with pytest.raises(TargetError, match="no backup"):
        _binder(spec, States([REPLANNED]), start=policy(1, {"edge-fra-1": 1.0}))


async def test_the_primary_is_the_one_in_the_policy_when_the_fault_fires() -> None:
    spec = _drill("  victim: {factory: primary}\n",
                  "  - {at: 0, for: 0.01, target: victim, fault: kill}\n")
    states = States([REPLANNED])
    binder = _binder(spec, states)
    injector = _Recorder()
    windows = await _run(spec, injector, binder)
    ((_, _, target),) = injector.applied
    assert target.factories == ("edge-fra-2",)
    assert target.processes == ("sim/edge-fra-2", "agent/edge-fra-2")
    assert [w.factories for w in windows] == [("edge-fra-2",)]
    assert binder.bound["victim"] == target
    assert target.bound_at is not None and target.bound_at >= 0.0
    # The report says what was hit, why, when it was decided, and what the start would have hit.
    assert target.description.startswith(f"factory edge-fra-2 (primary for {MODEL})")
    assert "policy version 4 at " in target.description
    assert f"at the start: factory edge-fra-1 (primary for {MODEL})" in target.description


async def test_a_killed_primary_is_restarted_even_after_the_route_moved_away_from_it() -> None:
    spec = _drill("  victim: {factory: primary}\n",
                  "  - {at: 0, for: 0.02, target: victim, fault: kill}\n")
    # By the end of the window the policy names another primary: the restart must not follow.
    states = States([REPLANNED, AFTER_FAULT])
    network, processes = fake_network()
    binder = TargetBinder(network, spec.targets, model=MODEL, site="fra-office",
                          policy=states.policy, statuses=states.statuses)
    binder.bind_start(NetworkState(AT_START, statuses("a")))
    async with aiohttp.ClientSession() as http:
        await _run(spec, Injector(network, http), binder)
    assert processes.log == [("kill", "sim/edge-fra-2"), ("kill", "agent/edge-fra-2"),
                             ("restart", "agent/edge-fra-2"), ("restart", "sim/edge-fra-2")]
    assert states.policy_fetches == 1


async def test_every_flap_and_every_later_event_hits_the_factory_the_first_fault_hit() -> None:
    spec = _drill("  victim: {factory: primary}\n",
                  "  - {at: 0, for: 0.01, repeat: {every: 0.03, count: 3}, target: victim, "
                  "fault: kill}\n"
                  "  - {at: 0.05, for: 0.01, target: victim, fault: sim, mode: error}\n")
    states = States([REPLANNED, AFTER_FAULT])
    binder = _binder(spec, states)
    injector = _Recorder()
    windows = await _run(spec, injector, binder)
    assert sorted((e, o) for e, o, _ in injector.applied) == [(0, 0), (0, 1), (0, 2), (1, 0)]
    assert {t.factories for _, _, t in injector.applied} == {("edge-fra-2",)}
    assert {w.factories for w in windows} == {("edge-fra-2",)}
    assert states.policy_fetches == 1


async def test_faults_firing_together_on_one_role_share_one_binding() -> None:
    spec = _drill("  spare: {factory: backup}\n",
                  "  - {at: 0, target: spare, fault: kill}\n"
                  "  - {at: 0, target: spare, fault: sim, mode: error}\n")
    states = States([REPLANNED, AFTER_FAULT])
    binder = _binder(spec, states)
    injector = _Recorder()
    await _run(spec, injector, binder)
    assert [t.factories for _, _, t in injector.applied] == [("center-se-1",)] * 2
    assert states.policy_fetches == 1
    assert "the same at the start" in binder.bound["spare"].description


async def test_the_primarys_region_is_the_region_of_the_primary_when_the_fault_fires() -> None:
    spec = _drill("  region: {region: primary}\n",
                  "  - {at: 0, target: region, fault: kill}\n")
    binder = _binder(spec, States([AFTER_FAULT]))
    injector = _Recorder()
    await _run(spec, injector, binder)
    ((_, _, target),) = injector.applied
    assert target.factories == ("center-se-1",)
    assert target.description.startswith("region eu-north (center-se-1)")
    assert "at the start: region eu-west (edge-fra-1, edge-fra-2)" in target.description


async def test_the_leader_is_the_replica_leading_when_the_fault_fires() -> None:
    spec = _drill("  leader: {controlplane: leader}\n",
                  "  - {at: 0, target: leader, fault: kill}\n")
    # The lead moved from a to b between the start and the kill.
    states = States([REPLANNED], replicas=[statuses("b")])
    binder = _binder(spec, states, leader="a")
    injector = _Recorder()
    await _run(spec, injector, binder)
    ((_, _, target),) = injector.applied
    assert target.controlplanes == target.processes == ("controlplane/b",)
    assert target.links == ("link-cp-b",)
    assert (states.policy_fetches, states.status_fetches) == (0, 1)
    assert "at the start: control plane controlplane/a" in target.description


async def test_without_a_policy_at_the_fault_the_start_policy_decides_and_the_report_says_so(
        ) -> None:
    spec = _drill("  victim: {factory: primary}\n",
                  "  - {at: 0, target: victim, fault: kill}\n")
    binder = _binder(spec, States([None]))
    injector = _Recorder()
    await _run(spec, injector, binder)
    ((_, _, target),) = injector.applied
    assert target.factories == ("edge-fra-1",)
    assert "policy version 1 from the start" in target.description
    assert "the sidecar showed no policy at" in target.description
