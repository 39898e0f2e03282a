"""Harness of the high-availability drills: control-plane replicas as real processes on a store,
real simulated factories with real agents, a real sidecar, and a steady stream of requests through
it that counts every failure.

Nothing here is mocked: the replicas are ``tdn controlplane`` processes (so a test can SIGKILL
one), the factories are :func:`tdn.sim.server.run_simulator`, the agents are
:class:`tdn.agent.agent.FactoryAgent` and the sidecar is :class:`tdn.dataplane.sidecar.Sidecar`,
all started in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from backing_services import EtcdCluster, EtcdMember, start_etcd_cluster
from support import Proc, async_wait_until, free_port

from tdn.agent.agent import FactoryAgent
from tdn.agent.settings import AgentSettings
from tdn.dataplane.credentials import Credentials
from tdn.dataplane.policy_client import Backoff
from tdn.dataplane.sidecar import Sidecar, SidecarSettings
from tdn.domain import FactorySpec, Price, Tier
from tdn.sim.server import RunningSimulator, run_simulator
from tdn.sim.settings import SimSettings
from tdn.v1 import operator_pb2, operator_pb2_grpc

MODEL = "llama-3.1-8b-instruct"
SITE = "fra"
NETWORK_YAML = f"""\
sites:
  - id: {SITE}
    region: eu-west
    compliance_zone: eu
    rtt_ms: {{eu-west: 4, eu-north: 28}}
demand:
  - {{site: {SITE}, model: {MODEL}, rate_rps: 4, ttft_slo_s: 2.0}}
"""
# id -> (region, failure domain, price per 1M output tokens)
FACTORIES: dict[str, tuple[str, str, float]] = {
    "eu-1": ("eu-west", "rack-a", 0.5),
    "eu-2": ("eu-west", "rack-b", 0.6),
    "eu-3": ("eu-north", "", 0.4),
}
START_TIMEOUT = 30.0


def write_network(folder: Path) -> Path:
    path = folder / "network.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(NETWORK_YAML)
    return path


# --- factories and agents -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulators(ids: Sequence[str] = tuple(FACTORIES),
                     ) -> AsyncIterator[dict[str, RunningSimulator]]:
    """Fast simulated factories: a few tokens per answer, a few milliseconds per token."""
    async with contextlib.AsyncExitStack() as stack:
        running = {}
        for fid in ids:
            settings = SimSettings(id=fid, models=(MODEL,), port=0, itl_ms=2.0,
                                   min_output_tokens=2, max_output_tokens=4,
                                   max_concurrency=64, shutdown_grace_s=0.1)
            running[fid] = await stack.enter_async_context(run_simulator(settings))
        yield running


def factory_spec(fid: str, sim: RunningSimulator) -> FactorySpec:
    region, domain, price = FACTORIES[fid]
    return FactorySpec(id=fid, tier=Tier.EDGE, region=region, compliance_zone="eu",
                       endpoint=sim.url, models=(MODEL,),
                       price=Price(input_per_mtok=price / 4, output_per_mtok=price),
                       max_concurrency=64, failure_domain=domain)


@contextlib.asynccontextmanager
async def agents(sims: dict[str, RunningSimulator], controlplanes: Sequence[str], *,
                 settings: Callable[[AgentSettings], AgentSettings] | None = None,
                 ) -> AsyncIterator[dict[str, FactoryAgent]]:
    """One real agent per simulator, knowing every control-plane address (first one first)."""
    running: dict[str, FactoryAgent] = {}
    for fid, sim in sims.items():
        agent_settings = AgentSettings(engine_url=sim.base_url,
                                       controlplanes=tuple(controlplanes), interval_s=0.5,
                                       backoff_initial_s=0.05, backoff_max_s=0.5,
                                       ack_timeout_s=2.0)
        if settings is not None:
            agent_settings = settings(agent_settings)
        running[fid] = FactoryAgent(factory_spec(fid, sim), agent_settings)
    tasks = [asyncio.create_task(a.run(), name=f"agent-{fid}") for fid, a in running.items()]
    try:
        yield running
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


# --- the sidecar and its traffic ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def sidecar(tmp: Path, controlplanes: Sequence[str], node_id: str = "sc-fra-1",
                  channel_credentials: grpc.ChannelCredentials | None = None,
                  ) -> AsyncIterator[Sidecar]:
    settings = SidecarSettings(site=SITE, node_id=node_id, listen="127.0.0.1:0",
                               admin="127.0.0.1:0", controlplane=tuple(controlplanes),
                               state_dir=tmp / node_id,
                               backoff=Backoff(initial_s=0.05, max_s=0.5),
                               shutdown_timeout_s=1.0)
    async with Sidecar(settings, Credentials(environ={}),
                       channel_credentials=channel_credentials) as running:
        yield running


@dataclass
class Traffic:
    """Requests sent through a sidecar by a few concurrent clients, every outcome kept."""

    ok: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


@contextlib.asynccontextmanager
async def traffic(proxy_url: str, clients: int = 4) -> AsyncIterator[Traffic]:
    """Send chat completions continuously until the block ends; nothing is retried here."""
    seen = Traffic()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 4}
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(f"{proxy_url}/chat/completions", json=body) as resp:
                    payload = await resp.read()
                    if resp.status == 200:
                        seen.ok += 1
                        factory = resp.headers.get("x-tdn-factory", "?")
                        seen.served_by[factory] = seen.served_by.get(factory, 0) + 1
                    else:
                        seen.failures.append(f"HTTP {resp.status}: {payload[:200]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                seen.failures.append(f"{type(exc).__name__}: {exc}")

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        try:
            yield seen
        finally:
            stop.set()
            await asyncio.wait(tasks)
            for task in tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]


# --- etcd ----------------------------------------------------------------------------------------


def start_cluster(tmp_path: Path, attempts: int = 3) -> EtcdCluster:
    """A three-member etcd cluster; started again on fresh ports when a member could not bind
    its port (taken by another process between choosing and binding it)."""
    for attempt in range(attempts):
        try:
            return start_etcd_cluster(tmp_path / f"attempt-{attempt}")
        except AssertionError as exc:
            if "address already in use" not in str(exc) or attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def raft_leader(members: Sequence[EtcdMember]) -> EtcdMember:
    """The member that leads the etcd cluster's raft now (its death stalls writes for an
    election): asked through etcd's JSON gateway."""
    for member in members:
        request = urllib.request.Request(f"{member.client_url}/v3/maintenance/status",
                                         data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                body = json.loads(response.read())
        except OSError:
            continue
        if body.get("leader") and body["leader"] == body["header"]["member_id"]:
            return member
    raise AssertionError("no etcd member says it leads")


# --- control-plane replicas as processes --------------------------------------------------------


class ReplicaProcess:
    """``tdn controlplane`` as a child process on free ports."""

    def __init__(self, folder: Path, name: str, store_url: str, *, lease_ttl: int = 2,
                 report_interval: float = 0.5, extra: Sequence[str] = ()) -> None:
        self.name = name
        self.folder = folder
        self.grpc_port, self.http_port = free_port(), free_port()
        self.args = ["controlplane", "--grpc", self.grpc_target,
                     "--http", f"127.0.0.1:{self.http_port}", "--store", store_url,
                     "--config", str(write_network(folder)), "--replica-id", name,
                     "--state-dir", str(folder / f"state-{name}"),
                     "--lease-ttl", str(lease_ttl), "--report-interval", str(report_interval),
                     "--solve-interval", "2", "--solve-quiet", "0.05",
                     "--solve-max-delay", "0.3", *extra]
        self.proc: Proc | None = None
        self.starts = 0

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> ReplicaProcess:
        self.starts += 1
        self.proc = Proc.tdn(self.args,
                             self.folder / f"controlplane-{self.name}-{self.starts}.log")
        return self

    def log(self) -> str:
        return self.proc.log() if self.proc is not None else ""

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        async def ready() -> bool:
            if self.proc is None or not self.proc.alive():
                raise AssertionError(f"replica {self.name} exited:\n{self.log()[-3000:]}")
            return await healthz(self.http_url) is not None

        await async_wait_until(ready, timeout=timeout, interval=0.05,
                               what=f"replica {self.name} to answer /healthz")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.stop()

    def stop(self) -> int | None:
        return self.proc.stop() if self.proc is not None else None

    # While in-process agents and sidecars run, waiting for the process must not block the
    # event loop they run on: they would be frozen exactly while they should be reconnecting.

    async def akill(self) -> None:
        await asyncio.to_thread(self.kill)

    async def astop(self) -> int | None:
        return await asyncio.to_thread(self.stop)


async def healthz(http_url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http, \
                http.get(f"{http_url}/healthz") as resp:
            body: dict[str, Any] = await resp.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def metric(http_url: str, name: str) -> float | None:
    """One unlabelled sample from a replica's /metrics."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http, \
            http.get(f"{http_url}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def status(target: str, timeout: float = 2.0) -> operator_pb2.StatusResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        answer: operator_pb2.StatusResponse = await stub.GetStatus(
            operator_pb2.GetStatusRequest(), timeout=timeout)
        return answer


async def try_status(target: str) -> operator_pb2.StatusResponse | None:
    try:
        return await status(target, timeout=1.0)
    except grpc.aio.AioRpcError:
        return None


async def get_plan(target: str) -> operator_pb2.Plan:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        plan: operator_pb2.Plan = await stub.GetPlan(operator_pb2.GetPlanRequest(), timeout=2.0)
        return plan


async def set_factory_state(target: str, factory_id: str,
                            state: operator_pb2.FactoryAdminState.ValueType) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        # Longer than the store's own call timeout, so a stuck store shows as UNAVAILABLE.
        await stub.SetFactoryState(operator_pb2.SetFactoryStateRequest(
            factory_id=factory_id, state=state), timeout=10.0)


async def wait_for_leader(replicas: Sequence[ReplicaProcess], timeout: float = START_TIMEOUT,
                          ) -> ReplicaProcess:
    """The one replica that says it leads (waits until exactly one does)."""
    async def one_leader() -> ReplicaProcess | None:
        answers = [await try_status(r.grpc_target) for r in replicas]
        leaders = [r for r, a in zip(replicas, answers, strict=True)
                   if a is not None and a.leader]
        return leaders[0] if len(leaders) == 1 else None

    found = await async_wait_until(one_leader, timeout=timeout, interval=0.05,
                                   what="exactly one leader")
    assert isinstance(found, ReplicaProcess)
    return found


async def start_pair(replicas: Sequence[ReplicaProcess]) -> tuple[ReplicaProcess,
                                                                  ReplicaProcess]:
    """Start two replicas, wait until both answer and one leads: (the leader, the other)."""
    for replica in replicas:
        replica.start()
    for replica in replicas:
        await replica.wait_ready()
    leader = await wait_for_leader(replicas)
    return leader, next(r for r in replicas if r is not leader)


def routed(sidecar: Sidecar) -> set[str]:
    policy = sidecar.policy
    if policy is None:
        return set()
    return {w.factory_id for r in policy.routes for w in r.primary} | {
        w.factory_id for r in policy.routes for level in r.backups for w in level}


async def wait_until_routed(sidecar: Sidecar, predicate: Callable[[set[str]], bool], what: str,
                            timeout: float = START_TIMEOUT) -> None:
    async def check() -> bool:
        return predicate(routed(sidecar))

    await async_wait_until(check, timeout=timeout, interval=0.05, what=what)


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait (with a deadline) for a condition on local state."""
    async def check() -> bool:
        return predicate()

    await async_wait_until(check, timeout=timeout, interval=0.02, what=what)
