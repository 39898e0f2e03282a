"""Running a drill's timeline: each fault is applied at its time, reverted when its window ends,
and everything is restored at the end, whatever happened in between.

Every fault applied pushes its own undo onto :class:`Injector`'s stack; reverting a window pops
that undo, and :meth:`Injector.restore_all` runs whatever is left (in reverse), then resets
Toxiproxy, heals every simulator and restarts every component that is not running. The runner
calls it in a ``finally``, so an interrupted or failed drill leaves the network as it found it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from tdn.chaos.network import DrillNetwork
from tdn.chaos.services import ServiceProcess
from tdn.chaos.spec import FaultEvent
from tdn.chaos.targets import ResolvedTarget, TargetBinder
from tdn.chaos.toxiproxy import Stream, Toxic, ToxicType, ToxiproxyError
from tdn.config import load_network
from tdn.v1 import operator_pb2, operator_pb2_grpc

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]


class InjectError(RuntimeError):
    """A fault that could not be applied as declared."""


@dataclass(slots=True)
class Window:
    """When one occurrence of a fault was in force (seconds from the drill's start)."""

    event: int
    occurrence: int
    title: str
    fault: str
    target: str
    factories: tuple[str, ...]
    start: float
    end: float | None = None  # None while in force; the end of the drill when never reverted
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _toxic(event: FaultEvent, name: str) -> Toxic:
    stream = Stream(event.param("stream"))
    toxicity = float(event.param("toxicity"))
    kind = event.fault
    if kind == "latency":
        return Toxic.latency(event.param("latency_ms"), event.param("jitter_ms"), stream=stream,
                             toxicity=toxicity, name=name)
    if kind == "blackhole":
        return Toxic.blackhole(event.param("timeout_ms"), stream=stream, toxicity=toxicity,
                               name=name)
    if kind == "reset_peer":
        return Toxic.reset_peer(event.param("timeout_ms"), stream=stream, toxicity=toxicity,
                                name=name)
    if kind == "cut_stream":
        return Toxic(ToxicType.LIMIT_DATA, {"bytes": event.param("bytes")}, stream, toxicity,
                     name)
    if kind == "slicer":
        return Toxic.slicer(event.param("average_size"), event.param("size_variation"),
                            event.param("delay_us"), stream=stream, toxicity=toxicity, name=name)
    if kind == "bandwidth":
        return Toxic.bandwidth(event.param("rate_kbps"), stream=stream, toxicity=toxicity,
                               name=name)
    raise InjectError(f"{kind} is not a toxic")


@dataclass(frozen=True, slots=True)
class PolicyOutcome:
    """What the control plane answered to a policy applied by a drill."""

    refused: bool
    # The errors as `tdn policy apply` prints them (file:line: key: reason), or what went wrong.
    detail: str
    # Every error named the file and a line.
    located: bool


class Injector:
    """Applies faults to a network and remembers how to undo each one."""

    def __init__(self, network: DrillNetwork, http: aiohttp.ClientSession,
                 base_dir: Path | None = None) -> None:
        self.network = network
        self.http = http
        # Where a drill's `file:` parameters are relative to (the drill file's folder).
        self.base_dir = base_dir or Path.cwd()
        # bad_policy via policy_apply, by timeline event index.
        self.policy_outcomes: dict[int, PolicyOutcome] = {}
        self._undo: dict[int, tuple[str, list[Undo]]] = {}
        self._keys = itertools.count(1)
        self._killed: set[str] = set()
        self._rogues: list[ServiceProcess] = []
        self._channels: list[grpc.aio.Channel] = []

    async def apply(self, event: FaultEvent, occurrence: int, target: ResolvedTarget) -> int:
        """Put ``event`` in force on ``target`` (its target as bound); return the key
        :meth:`revert` takes. Each undo remembers what it acts on, so a revert hits what the
        fault hit whatever happens to the network meanwhile."""
        undo: list[Undo] = []
        key = next(self._keys)
        self._undo[key] = (f"{event.title} #{occurrence}", undo)
        kind = event.fault
        tox = self.network.toxiproxy
        if kind in {"latency", "blackhole", "reset_peer", "cut_stream", "slicer", "bandwidth"}:
            if not target.links:
                raise InjectError(f"{event.title}: target {target.name} has no Toxiproxy link")
            name = f"drill-{event.index}-{occurrence}"
            for proxy in target.links:
                await tox.add_toxic(proxy, _toxic(event, name))
                undo.append(_remove_toxic(self.network, proxy, name))
        elif kind == "refuse":
            if not target.links:
                raise InjectError(f"{event.title}: target {target.name} has no Toxiproxy link")
            for proxy in target.links:
                await tox.disable(proxy)
                undo.append(_enable(self.network, proxy))
        elif kind == "kill":
            for name in target.processes:
                await asyncio.to_thread(self.network.processes.kill, name)
                self._killed.add(name)
                if event.param("restart"):
                    undo.append(self._restart(name))
        elif kind == "sim":
            if not target.sim_urls:
                raise InjectError(f"{event.title}: target {target.name} has no simulator")
            fault = dict(event.params)
            for url in target.sim_urls:
                await self._post_fault(url, fault)
                undo.append(self._heal(url))
        elif kind == "bad_policy":
            undo.append(await self._bad_policy(event, target))
        else:
            raise InjectError(f"unknown fault {kind}")
        return key

    async def revert(self, key: int) -> None:
        _, undo = self._undo.pop(key, ("", []))
        for step in reversed(undo):
            await step()

    def _restart(self, name: str) -> Undo:
        async def restart() -> None:
            await asyncio.to_thread(self.network.processes.restart, name)
        return restart

    async def _post_fault(self, sim_url: str, fault: Mapping[str, Any]) -> None:
        async with self.http.post(f"{sim_url}/admin/fault", json=dict(fault)) as resp:
            if resp.status != 200:
                raise InjectError(f"{sim_url} refused fault {fault}: {await resp.text()}")

    def _heal(self, sim_url: str) -> Undo:
        async def heal() -> None:
            async with self.http.delete(f"{sim_url}/admin/fault") as resp:
                resp.raise_for_status()
        return heal

    async def _bad_policy(self, event: FaultEvent, target: ResolvedTarget) -> Undo:
        if event.param("via") == "policy_apply":
            return await self._apply_policy(event)
        return await self._rogue_factory(event, target)

    async def _apply_policy(self, event: FaultEvent) -> Undo:
        """Apply a policy the way `tdn policy apply` does (Operator.ApplyPolicy, to whichever
        replica leads). It must be refused with file, line and reason; if it is accepted
        anyway, that is recorded as the drill's finding and undone by a rollback."""
        inline = event.param("policy")
        if inline is not None:
            filename, text = f"drill-{event.index}-policy.yaml", str(inline)
        else:
            path = self.base_dir / str(event.param("file"))
            try:
                text = path.read_text()
            except OSError as exc:
                raise InjectError(f"{event.title}: cannot read policy file {path}: "
                                  f"{exc.strerror or exc}") from None
            filename = str(path)
        doc = operator_pb2.PolicyDocument(filename=filename, yaml=text)
        answer, stub = await self._apply_on_leader(doc)
        if answer.applied:
            self.policy_outcomes[event.index] = PolicyOutcome(
                False, f"applied as revision {answer.revision}", False)

            async def roll_back() -> None:
                await stub.RollbackPolicy(operator_pb2.RollbackPolicyRequest(), timeout=10)
            return roll_back
        errors = [f"{e.filename}:{e.line}: {e.key}: {e.reason}" for e in answer.errors]
        located = bool(answer.errors) and all(e.filename == filename and e.line > 0
                                              for e in answer.errors)
        self.policy_outcomes[event.index] = PolicyOutcome(True, "; ".join(errors), located)

        async def nothing() -> None:
            return None
        return nothing

    async def _apply_on_leader(self, doc: operator_pb2.PolicyDocument
                               ) -> tuple[operator_pb2.ApplyPolicyResponse,
                                          operator_pb2_grpc.OperatorAsyncStub]:
        """ApplyPolicy on the leading replica (followers refuse writes), as the CLI does."""
        last = ""
        for cp in self.network.controlplanes:
            channel = grpc.aio.insecure_channel(cp.grpc)
            self._channels.append(channel)
            stub: operator_pb2_grpc.OperatorAsyncStub = operator_pb2_grpc.OperatorStub(channel)
            try:
                return await stub.ApplyPolicy(doc, timeout=10), stub
            except grpc.aio.AioRpcError as exc:
                last = f"{cp.name}: {exc.code().name}: {exc.details()}"
        raise InjectError(f"no control plane took the policy ({last})")

    async def _rogue_factory(self, event: FaultEvent, target: ResolvedTarget) -> Undo:
        """A misconfigured twin of the target factory registers: same engine, a tempting
        price, and an endpoint with its scheme left out (a typo). The control plane routes to
        it, so the policy it compiles names a base_url no sidecar can call: every sidecar must
        NACK it and keep routing on its last good policy."""
        (fid,) = target.factories[:1]
        node = self.network.factories[fid]
        spec = next(fc.spec for fc in load_network(self.network.network_file).factories
                    if fc.spec.id == fid)
        rogue_id = f"{fid}-misconfigured"
        engine = node.sim_url or spec.endpoint.removesuffix("/v1")
        args = [sys.executable, "-m", "tdn.cli", "agent", "--config",
                str(self.network.network_file), "--factory", fid, "--id", rogue_id,
                "--endpoint", spec.endpoint.split("://", 1)[-1],
                "--price-input", f"{spec.price.input_per_mtok / 10:g}",
                "--price-output", f"{spec.price.output_per_mtok / 10:g}",
                "--failure-domain", "misconfigured",
                "--engine-url", engine,
                "--controlplane", ",".join(cp.grpc for cp in self.network.controlplanes)]
        proc = ServiceProcess.start(f"agent/{rogue_id}", args,
                                    self.network.run_dir / "logs" / f"agent-{rogue_id}.log")
        self._rogues.append(proc)

        async def stop() -> None:
            await asyncio.to_thread(proc.stop)
        return stop

    async def restore_all(self) -> list[str]:
        """Undo everything still in force, reset Toxiproxy, heal every simulator and restart
        every component that is not running. Returns what could not be restored."""
        problems: list[str] = []
        for key in sorted(self._undo, reverse=True):
            title, _ = self._undo[key]
            try:
                await self.revert(key)
            except Exception as exc:  # keep restoring the rest; report what failed
                problems.append(f"undo {title}: {exc!r}")
        for proc in self._rogues:
            await asyncio.to_thread(proc.stop)
        for channel in self._channels:
            await channel.close(None)
        self._channels.clear()
        try:
            await self.network.toxiproxy.reset()
        except ToxiproxyError as exc:
            problems.append(f"toxiproxy reset: {exc}")
        for node in self.network.factories.values():
            if node.sim_url:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with self.http.delete(f"{node.sim_url}/admin/fault"):
                        pass
        for name in self.network.processes.names():
            if not self.network.processes.alive(name):
                try:
                    await asyncio.to_thread(self.network.processes.restart, name)
                except Exception as exc:
                    problems.append(f"restart {name}: {exc!r}")
        return problems


def _remove_toxic(network: DrillNetwork, proxy: str, name: str) -> Undo:
    async def remove() -> None:
        try:
            await network.toxiproxy.remove_toxic(proxy, name)
        except ToxiproxyError as exc:
            if exc.status != 404:  # already gone (a reset): nothing to undo
                raise
    return remove


def _enable(network: DrillNetwork, proxy: str) -> Undo:
    async def enable() -> None:
        await network.toxiproxy.enable(proxy)
    return enable


async def run_timeline(events: Sequence[FaultEvent], injector: Injector, targets: TargetBinder,
                       clock: Callable[[], float], windows: list[Window]) -> None:
    """Apply every occurrence of every event at its time (``clock`` counts from the drill's
    start); append a :class:`Window` per occurrence as it starts. A role target is bound by
    ``targets`` when its first fault fires, and kept for its later ones."""

    async def occurrence(event: FaultEvent, i: int, start: float, length: float | None) -> None:
        await asyncio.sleep(max(start - clock(), 0.0))
        target = await targets.bind(event.target, at=clock())
        # The window opens when injection begins (after binding, which only reads state):
        # failover time is measured from the first moment a request could have been hurt.
        begin = clock()
        key = await injector.apply(event, i, target)
        window = Window(event=event.index, occurrence=i, title=event.title, fault=event.fault,
                        target=event.target, factories=target.factories, start=begin)
        windows.append(window)
        if length is None:
            return  # in force until the load ends; restore_all reverts it
        await asyncio.sleep(max(start + length - clock(), 0.0))
        await injector.revert(key)
        window.end = clock()

    async with asyncio.TaskGroup() as tg:
        for event in events:
            for i, (start, length) in enumerate(event.occurrences()):
                tg.create_task(occurrence(event, i, start, length),
                               name=f"fault-{event.index}-{i}")
