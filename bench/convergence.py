"""Push convergence: from a factory failure being reported to every sidecar ACKing the new policy.

Control-plane replicas run as ``tdn controlplane`` processes: one on the embedded store, and two
on one etcd (when an ``etcd`` binary is found). A driver holds one Telemetry stream like an agent
reporting three factories. Simulated sidecars — bare Discovery streams, one connection each, that
ACK on arrival (:mod:`bench.convergence_sidecars`) — run in two child processes so that the client
side is not the bottleneck. Each round the driver reports one factory's engine unreachable and
times, per sidecar, the arrival of the first policy version that follows; it then heals the
factory and waits for that version too (not timed). With two replicas the failure is reported to
the follower, so each round crosses the store twice (follower → leader → every replica), and
half the sidecars hang on each replica.

Memory per connected sidecar is the growth of the replica's resident set from before the
sidecars connect to after they all run the current version, divided by their number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

from bench import convergence_sidecars
from tdn.chaos.services import free_port
from tdn.domain import Energy, FactorySpec, Price, Tier
from tdn.v1 import operator_pb2, operator_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc
from tdn.wire import energy_to_pb, price_to_pb, spec_to_identity

NAME = "convergence"
TITLE = "Push convergence (factory failure → every sidecar ACKs)"

SITE = "fra"
MODEL = "llama-3.1-8b-instruct"
NETWORK = f"""\
sites:
  - id: {SITE}
    region: eu-west
    compliance_zone: eu
    rtt_ms: {{eu-west: 4, eu-north: 28}}
demand:
  - {{site: {SITE}, model: {MODEL}, rate_rps: 4, ttft_slo_s: 2.0}}
"""
FACTORIES = (
    FactorySpec(id="eu-1", tier=Tier.EDGE, region="eu-west", compliance_zone="eu",
                endpoint="http://127.0.0.1:9/eu-1/v1", models=(MODEL,),
                price=Price(0.12, 0.5), energy=Energy(1000, 1.5, 300, 0.1),
                failure_domain="rack-a"),
    FactorySpec(id="eu-2", tier=Tier.EDGE, region="eu-west", compliance_zone="eu",
                endpoint="http://127.0.0.1:9/eu-2/v1", models=(MODEL,),
                price=Price(0.15, 0.6), energy=Energy(1000, 1.5, 300, 0.1),
                failure_domain="rack-b"),
    FactorySpec(id="eu-3", tier=Tier.CENTER, region="eu-north", compliance_zone="eu",
                endpoint="http://127.0.0.1:9/eu-3/v1", models=(MODEL,),
                price=Price(0.1, 0.4), energy=Energy(5000, 3.0, 35, 0.05)),
)
FAILING = "eu-1"
CLIENT_PROCESSES = 2
ROUND_TIMEOUT = 60.0


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# --- processes ----------------------------------------------------------------------------------


@dataclass
class _Process:
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


def _spawn(args: list[str], log: Path) -> _Process:
    with open(log, "ab") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    return _Process(popen, log)


@dataclass
class _Replica:
    process: _Process
    grpc_target: str
    http_url: str


def _start_replica(folder: Path, name: str, store: str) -> _Replica:
    grpc_port, http_port = free_port(), free_port()
    network = folder / "network.yaml"
    network.write_text(NETWORK)
    args = [sys.executable, "-m", "tdn.cli", "controlplane", "--grpc", f"127.0.0.1:{grpc_port}",
            "--http", f"127.0.0.1:{http_port}", "--config", str(network), "--replica-id", name,
            "--state-dir", str(folder / f"state-{name}"), "--log-level", "WARNING",
            "--lease-ttl", "5"]
    if store:
        args += ["--store", store]
    process = _spawn(args, folder / f"{name}.log")
    return _Replica(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")


def _wait(predicate: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _healthy(replica: _Replica) -> bool:
    if replica.process.popen.poll() is not None:
        raise RuntimeError(f"replica exited: {replica.process.log.read_text()[-2000:]}")
    with urllib.request.urlopen(f"{replica.http_url}/healthz", timeout=1) as response:
        return bool(json.loads(response.read()).get("status") == "ok")


@contextlib.contextmanager
def _etcd(folder: Path) -> Iterator[str | None]:
    binary = os.environ.get("TDN_ETCD_BIN") or shutil.which("etcd")
    if binary is None:
        yield None
        return
    client, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{client}"
    process = _spawn([binary, "--name", "bench", "--data-dir", str(folder / "etcd"),
                      "--listen-client-urls", url, "--advertise-client-urls", url,
                      "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                      "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                      "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
                     folder / "etcd.log")
    try:
        def healthy() -> bool:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                return bool(json.loads(response.read()).get("health") == "true")

        _wait(healthy, "etcd")
        yield f"etcd://127.0.0.1:{client}"
    finally:
        process.stop()


# --- the driver's agent -------------------------------------------------------------------------


def _report(spec: FactorySpec, seq: int, reachable: bool) -> telemetry_pb2.TelemetryReport:
    return telemetry_pb2.TelemetryReport(
        identity=spec_to_identity(spec),
        capacity=telemetry_pb2.Capacity(max_concurrency=64,
                                        max_output_tokens_per_second=2000.0),
        load=telemetry_pb2.Load(running=1, waiting=0, kv_cache_usage=0.1),
        latency=telemetry_pb2.Latency(ttft_p50_seconds=0.05, ttft_p99_seconds=0.2,
                                      itl_p50_seconds=0.02, itl_p99_seconds=0.04),
        price=price_to_pb(spec.price), energy=energy_to_pb(spec.energy),
        engine_reachable=reachable, seq=seq)


class _Agent:
    """Reports the three factories every second; :meth:`set` reports a change at once."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._reachable = {spec.id: True for spec in FACTORIES}
        self._seq = 0
        self._call: grpc.aio.StreamStreamCall[telemetry_pb2.TelemetryReport,
                                             telemetry_pb2.TelemetryAck] | None = None

    async def run(self) -> None:
        async with grpc.aio.insecure_channel(self._target) as channel:
            self._call = telemetry_pb2_grpc.TelemetryStub(channel).Report(None)
            acks = asyncio.create_task(self._drain())
            try:
                while True:
                    await self._send_all()
                    await asyncio.sleep(1.0)
            finally:
                acks.cancel()
                self._call.cancel()

    async def _drain(self) -> None:
        assert self._call is not None
        while isinstance(await self._call.read(), telemetry_pb2.TelemetryAck):
            pass

    async def _send_all(self) -> None:
        for spec in FACTORIES:
            await self._send(spec)

    async def _send(self, spec: FactorySpec) -> None:
        assert self._call is not None
        self._seq += 1
        await self._call.write(_report(spec, self._seq, self._reachable[spec.id]))

    async def set(self, factory_id: str, reachable: bool) -> float:
        """Report the change now; return the wall-clock time it was handed to gRPC."""
        self._reachable[factory_id] = reachable
        spec = next(s for s in FACTORIES if s.id == factory_id)
        started = time.time()
        await self._send(spec)
        return started


# --- sidecar client processes -------------------------------------------------------------------


class _Clients:
    def __init__(self, targets: list[str], count: int, per_connection: int = 1) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs = []
        per = [count // CLIENT_PROCESSES + (1 if i < count % CLIENT_PROCESSES else 0)
               for i in range(CLIENT_PROCESSES)]
        first = 0
        for i, n in enumerate(per):
            parent, child = context.Pipe()
            ids = [f"bench-sc-{j}" for j in range(first, first + n)]
            first += n
            proc = context.Process(target=convergence_sidecars.main,
                                   args=(child, targets, SITE, ids, per_connection),
                                   name=f"sidecars-{i}",
                                   daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)

    def ask(self, command: str, argument: object = None) -> list[object]:
        for conn in self._conns:
            conn.send((command, argument))
        return [conn.recv() for conn in self._conns]

    def above(self, version: int) -> list[float | None]:
        return [t for part in self.ask("above", version) for t in part]  # type: ignore[attr-defined]

    def lowest(self) -> int:
        return min(int(str(v)) for v in self.ask("lowest"))

    def highest(self) -> int:
        return max(int(str(v)) for v in self.ask("highest"))

    def stop(self) -> None:
        with contextlib.suppress(OSError, EOFError):
            self.ask("stop")
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# --- one scenario -------------------------------------------------------------------------------


@dataclass
class Result:
    replicas: int
    sidecars: int
    samples: list[float]
    all_acked: list[float]
    rss_per_sidecar: float
    policy_bytes: int
    note: str = ""


def _status(target: str) -> operator_pb2.StatusResponse:
    with grpc.insecure_channel(target) as channel:
        answer: operator_pb2.StatusResponse = operator_pb2_grpc.OperatorStub(channel).GetStatus(
            operator_pb2.GetStatusRequest(), timeout=10)
        return answer


def _policy_bytes(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        plan = operator_pb2_grpc.OperatorStub(channel).GetPlan(
            operator_pb2.GetPlanRequest(site=SITE), timeout=10)
    return max((p.ByteSize() for p in plan.sites), default=0)


def _wait_all_above(clients: _Clients, version: int, count: int) -> list[float]:
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        times = clients.above(version)
        if all(t is not None for t in times) and len(times) == count:
            return [t for t in times if t is not None]
        time.sleep(0.05)
    missing = sum(1 for t in clients.above(version) if t is None)
    raise RuntimeError(f"{missing} of {count} sidecars never got a version above {version}")


async def _scenario(folder: Path, store: str, replicas: int, count: int,
                    rounds: int) -> Result:
    started = [_start_replica(folder, f"cp-{i}", store) for i in range(replicas)]
    clients: _Clients | None = None
    try:
        for replica in started:
            _wait(lambda r=replica: _healthy(r), f"{replica.grpc_target} to serve")
        # Report to a follower when there is one: the longest path a change can take.
        def leaders() -> list[bool]:
            return [_status(r.grpc_target).leader for r in started]

        _wait(lambda: sum(leaders()) == 1, "one leader")
        flags = leaders()
        reporter = next((r for r, lead in zip(started, flags, strict=True) if not lead),
                        started[0])
        agent = _Agent(reporter.grpc_target)
        agent_task = asyncio.create_task(agent.run())
        try:
            await asyncio.to_thread(
                _wait, lambda: all(_status(r.grpc_target).factories_healthy == 3
                                   and _status(r.grpc_target).plan_version > 0 for r in started),
                "the first plan", 60.0)
            baseline = [_rss_bytes(r.process.popen.pid) for r in started]
            clients = _Clients([r.grpc_target for r in started], count)
            await asyncio.to_thread(_wait, lambda: clients is not None and clients.lowest() > 0,
                                    f"{count} sidecars to get a policy", 60.0 + count / 25)
            await asyncio.sleep(1.0)  # let allocations settle before measuring
            grown = sum(_rss_bytes(r.process.popen.pid) - b
                        for r, b in zip(started, baseline, strict=True))
            policy_bytes = _policy_bytes(started[0].grpc_target)
            samples: list[float] = []
            all_acked: list[float] = []
            for _ in range(rounds):
                before = await asyncio.to_thread(clients.highest)
                t0 = await agent.set(FAILING, reachable=False)
                times = await asyncio.to_thread(_wait_all_above, clients, before, count)
                delays = [t - t0 for t in times]
                samples.extend(delays)
                all_acked.append(max(delays))
                healed = await asyncio.to_thread(clients.highest)
                await agent.set(FAILING, reachable=True)
                await asyncio.to_thread(_wait_all_above, clients, healed, count)
            return Result(replicas, count, samples, all_acked, grown / count, policy_bytes)
        finally:
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await agent_task
    finally:
        if clients is not None:
            clients.stop()
        for replica in started:
            replica.process.stop()


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def _table(results: list[Result], skipped: list[str]) -> str:
    lines = [
        "| replicas | sidecars | rounds | p50 | p99 | all ACKed (median) | all ACKed (max) "
        "| RSS per sidecar |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.replicas} | {r.sidecars:,} | {len(r.all_acked)} "
            f"| {statistics.median(r.samples) * 1000:.0f} ms "
            f"| {_percentile(r.samples, 99) * 1000:.0f} ms "
            f"| {statistics.median(r.all_acked) * 1000:.0f} ms "
            f"| {max(r.all_acked) * 1000:.0f} ms | {r.rss_per_sidecar / 1024:.1f} KiB |")
    body = "\n".join(lines)
    size = max((r.policy_bytes for r in results), default=0)
    notes = [
        "",
        "p50/p99 are over every sidecar of every round: the time from the failure report "
        "leaving the agent to that sidecar receiving (and at once ACKing) the new version. "
        "\"All ACKed\" is the slowest sidecar of a round: the push's convergence. It includes "
        "the solve loop's debounce (quiet window 0.1 s, the default) and the solve itself.",
        f"The site policy pushed is {size} bytes on the wire (three factories, one route): "
        "whole-site snapshots, no deltas (see docs/decisions.md).",
    ]
    notes += [f"Not measured: {s}." for s in skipped]
    notes.append(f"Machine load average while measuring: {os.getloadavg()[0]:.1f} "
                 f"on {os.cpu_count()} cores (other work shares it; figures are upper bounds).")
    return body + "\n" + "\n".join(notes) + "\n"


def run(quick: bool) -> str:
    counts = (100, 1000) if quick else (100, 1000, 5000)
    rounds = 3 if quick else 8
    results: list[Result] = []
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tdn-bench-convergence-") as tmp:
        folder = Path(tmp)
        with _etcd(folder) as etcd_url:
            for count in counts:
                for replicas in (1, 2):
                    if replicas == 2 and etcd_url is None:
                        skipped.append(f"{count} sidecars on two replicas (no etcd binary)")
                        continue
                    store = "" if replicas == 1 else etcd_url or ""
                    scenario_dir = folder / f"{replicas}x{count}"
                    scenario_dir.mkdir()
                    print(f"  {replicas} replica(s), {count} sidecars ...", flush=True)
                    try:
                        result = asyncio.run(_scenario(scenario_dir, store, replicas, count,
                                                       rounds))
                    except RuntimeError as exc:
                        # One scenario this machine cannot carry must not lose the others.
                        print(f"    failed: {exc}", flush=True)
                        skipped.append(f"{count:,} sidecars on {replicas} replica(s): {exc}")
                        continue
                    print(f"    p99 {_percentile(result.samples, 99) * 1000:.0f} ms, all ACKed "
                          f"max {max(result.all_acked) * 1000:.0f} ms, "
                          f"{result.rss_per_sidecar / 1024:.1f} KiB/sidecar", flush=True)
                    results.append(result)
    return _table(results, skipped)
