"""The timeline: each declared fault becomes the right Toxiproxy toxic, occurrences are applied
and reverted on schedule (a flapping fault several times), and each leaves a window behind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from chaos_support import MODEL, fake_network, policy, statuses

from tdn.chaos.spec import DrillSpec, FaultEvent, parse_drill
from tdn.chaos.targets import NetworkState, ResolvedTarget, TargetBinder
from tdn.chaos.timeline import Injector, Window, _toxic, run_timeline
from tdn.chaos.toxiproxy import Stream, ToxicType

HEAD = """\
name: t
load: {duration_s: 10}
targets:
  victim: {factory: primary}
timeline:
"""


def _event(line: str) -> FaultEvent:
    (event,) = parse_drill(HEAD + f"  - {{at: 1, for: 1, target: victim, {line}}}\n",
                           "t.yaml").timeline
    return event


@pytest.mark.parametrize(("line", "kind", "attributes", "stream"), [
    ("fault: latency, latency_ms: 300, jitter_ms: 20", ToxicType.LATENCY,
     {"latency": 300, "jitter": 20}, Stream.DOWNSTREAM),
    ("fault: blackhole", ToxicType.TIMEOUT, {"timeout": 0}, Stream.DOWNSTREAM),
    ("fault: reset_peer, timeout_ms: 5, stream: upstream", ToxicType.RESET_PEER,
     {"timeout": 5}, Stream.UPSTREAM),
    ("fault: cut_stream, bytes: 1500", ToxicType.LIMIT_DATA, {"bytes": 1500},
     Stream.DOWNSTREAM),
    ("fault: slicer, average_size: 8, size_variation: 2, delay_us: 100", ToxicType.SLICER,
     {"average_size": 8, "size_variation": 2, "delay": 100}, Stream.DOWNSTREAM),
    ("fault: bandwidth, rate_kbps: 4", ToxicType.BANDWIDTH, {"rate": 4}, Stream.DOWNSTREAM),
])
def test_each_link_fault_becomes_its_toxiproxy_toxic(line: str, kind: ToxicType,
                                                     attributes: dict[str, int],
                                                     stream: Stream) -> None:
    toxic = _toxic(_event(line), "drill-0-0")
    assert (toxic.type, dict(toxic.attributes), toxic.stream, toxic.name) == (
        kind, attributes, stream, "drill-0-0")


class _Recorder(Injector):
    """An injector that only records what it was asked to do, and when."""

    def __init__(self, clock: Any) -> None:
        self.log: list[tuple[str, int, float]] = []
        self.clock = clock
        self._n = 0

    async def apply(self, event: FaultEvent, occurrence: int, target: ResolvedTarget) -> int:
        self._n += 1
        self.log.append(("apply", occurrence, self.clock()))
        return self._n

    async def revert(self, key: int) -> None:
        self.log.append(("revert", key, self.clock()))


def _binder(spec: DrillSpec) -> TargetBinder:
    """The drill's targets on a network whose sidecar routes everything to edge-fra-1."""
    primary = policy(1, {"edge-fra-1": 1.0})

    async def current() -> dict[str, Any]:
        return primary

    async def replicas() -> dict[str, dict[str, Any]]:
        return statuses("a")

    network, _ = fake_network()
    binder = TargetBinder(network, spec.targets, model=MODEL, site="fra-office",
                          policy=current, statuses=replicas)
    binder.bind_start(NetworkState(primary, statuses("a")))
    return binder


async def test_a_flapping_fault_is_applied_and_reverted_each_time_on_schedule() -> None:
    text = HEAD + ("  - {at: 0.05, for: 0.05, repeat: {every: 0.15, count: 3}, target: victim, "
                   "fault: refuse}\n")
    spec = parse_drill(text, "t.yaml")
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    def clock() -> float:
        return loop.time() - t0

    injector = _Recorder(clock)
    windows: list[Window] = []
    await run_timeline(spec.timeline, injector, _binder(spec), clock, windows)
    assert [(what, n) for what, n, _ in injector.log] == [
        ("apply", 0), ("revert", 1), ("apply", 1), ("revert", 2), ("apply", 2), ("revert", 3)]
    starts = [w.start for w in windows]
    assert [round(s, 2) for s in starts] == pytest.approx([0.05, 0.2, 0.35], abs=0.03)
    assert all(w.end is not None and w.end - w.start == pytest.approx(0.05, abs=0.03)
               for w in windows)
    assert {w.factories for w in windows} == {("edge-fra-1",)}


async def test_a_fault_without_an_end_stays_open_for_the_restore() -> None:
    spec = parse_drill(HEAD + "  - {at: 0, target: victim, fault: kill}\n", "t.yaml")
    loop = asyncio.get_running_loop()
    injector = _Recorder(loop.time)
    windows: list[Window] = []
    await run_timeline(spec.timeline, injector, _binder(spec), loop.time, windows)
    assert [what for what, _, _ in injector.log] == ["apply"]
    assert windows[0].end is None
