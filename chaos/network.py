"""The TDN a drill runs against: where its sidecars, control planes and factories are, which
Toxiproxy proxy carries each link, how to kill and restart its processes, and when it is steady.

:mod:`tdn.chaos.local` starts such a network; :mod:`tdn.chaos.attach` finds one ``tdn up``
already runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tdn.chaos.services import EtcdService, ServiceError
from tdn.chaos.toxiproxy import ToxiproxyClient
from tdn.up import Supervisor


@dataclass(frozen=True, slots=True)
class FactoryNode:
    """A factory as a drill sees it: its simulator (for fault modes), link and processes."""

    id: str
    region: str
    tier: str
    sim_url: str  # http://host:port of the simulator, "" for an engine we do not run
    link: str  # Toxiproxy proxy between sidecars and the factory, "" when there is none
    processes: tuple[str, ...]  # component names: its simulator and its agent


@dataclass(frozen=True, slots=True)
class SidecarNode:
    node_id: str
    site: str
    base_url: str  # the OpenAI base URL (…/v1)
    admin_url: str
    process: str
    links: tuple[str, ...]  # proxies to the control plane(s)


@dataclass(frozen=True, slots=True)
class ControlPlaneNode:
    name: str  # component name
    grpc: str
    http_url: str
    links: tuple[str, ...]  # proxies sidecars reach this replica through
    etcd_link: str  # proxy this replica reaches etcd through, "" when none


class Processes(Protocol):
    """Kill and restart a network's components by name."""

    def names(self) -> list[str]: ...

    def alive(self, name: str) -> bool: ...

    def kill(self, name: str) -> None: ...

    def restart(self, name: str) -> None: ...

    def adopted(self) -> list[str]:
        """Components restarted by us that their original owner will not stop."""
        ...


class SupervisedProcesses:
    """The components a :class:`Supervisor` of ours started."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def names(self) -> list[str]:
        return [c.name for c, _ in self.supervisor.procs]

    def alive(self, name: str) -> bool:
        return self.supervisor.alive(name)

    def kill(self, name: str) -> None:
        self.supervisor.kill(name)

    def restart(self, name: str) -> None:
        self.supervisor.restart(name)

    def adopted(self) -> list[str]:
        return []  # ours from the start: close() stops them


@dataclass
class DrillNetwork:
    """Everything a drill needs to reach and hurt one TDN."""

    factories: dict[str, FactoryNode]
    sidecars: tuple[SidecarNode, ...]
    controlplanes: tuple[ControlPlaneNode, ...]
    site_regions: dict[str, str]
    processes: Processes
    toxiproxy: ToxiproxyClient
    network_file: Path
    run_dir: Path
    description: str = "local"
    proxy_tag: str = ""  # prefix of the proxies we created (two networks may share a Toxiproxy)
    # Closed in close(): our supervisor, etcd and anything else we started.
    _owned: list[Any] = field(default_factory=list, repr=False)

    def sidecar(self, node_id: str = "") -> SidecarNode:
        for sc in self.sidecars:
            if not node_id or sc.node_id == node_id:
                return sc
        raise KeyError(f"no sidecar {node_id!r} in the network")

    def adoption_notes(self) -> list[str]:
        """For an attached network: what a drill restarted now runs outside ``tdn up``."""
        adopted = self.processes.adopted()
        if not adopted:
            return []
        return [f"restarted by the drill and no longer stopped by `tdn up`: {', '.join(adopted)}"
                f" (pids in {self.run_dir / 'up.json'}; stop them after `tdn up`)"]

    def links(self) -> list[str]:
        names = [f.link for f in self.factories.values() if f.link]
        names += [link for sc in self.sidecars for link in sc.links]
        names += [cp.etcd_link for cp in self.controlplanes if cp.etcd_link]
        return names

    def to_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "network_file": str(self.network_file),
            "factories": [dataclasses.asdict(f) for f in self.factories.values()],
            "sidecars": [dataclasses.asdict(s) for s in self.sidecars],
            "controlplanes": [dataclasses.asdict(c) for c in self.controlplanes],
        }

    # --- health --------------------------------------------------------------------------------

    async def wait_steady(self, within_s: float = 60.0) -> None:
        """Wait until every factory is healthy at the control plane, every sidecar holds a
        policy and runs the newest version, and every component runs; raise on timeout."""
        deadline = time.monotonic() + within_s
        last = "nothing checked yet"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            while time.monotonic() < deadline:
                last = await self._unsteady(http)
                if not last:
                    return
                await asyncio.sleep(0.2)
        raise ServiceError(f"the network did not settle within {within_s:.0f}s: {last}")

    async def _unsteady(self, http: aiohttp.ClientSession) -> str:
        """Why the network is not steady yet; "" when it is."""
        dead = [n for n in self.processes.names() if not self.processes.alive(n)]
        if dead:
            return f"not running: {', '.join(dead)}"
        for node in self.factories.values():
            # Its process may run before it listens again (a restart a moment ago).
            if node.sim_url and not await _ok(http, f"{node.sim_url}/health"):
                return f"simulator {node.id} does not answer"
        for sc in self.sidecars:
            if not await _ok(http, f"{sc.admin_url}/healthz"):
                return f"sidecar {sc.node_id} holds no policy"
        statuses = []
        for cp in self.controlplanes:
            body = await _json(http, f"{cp.http_url}/api/status")
            topo = await _json(http, f"{cp.http_url}/api/topology")
            if body is None or topo is None:
                return f"control plane {cp.name} does not answer"
            health = {f["spec"]["id"]: f["health"] for f in topo.get("factories", [])}
            sick = [fid for fid in self.factories if health.get(fid) != "healthy"]
            if sick:
                return f"{cp.name}: not healthy yet: {', '.join(sick)}"
            statuses.append(body)
        for sc in self.sidecars:
            views = [v for body in statuses for v in body.get("sidecars", [])
                     if v.get("node_id") == sc.node_id and v.get("connected")]
            if not views:
                return f"sidecar {sc.node_id} is not connected to a control plane"
            if any(v.get("lag_seconds", 0) > 0 or v.get("last_nack") for v in views):
                return f"sidecar {sc.node_id} has not acknowledged the newest policy"
        return ""

    async def ejected(self) -> dict[str, list[str]]:
        """Factories each sidecar has ejected right now (outlier detection), by node id."""
        out: dict[str, list[str]] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http:
            for sc in self.sidecars:
                try:
                    async with http.get(f"{sc.admin_url}/metrics") as resp:
                        text = await resp.text()
                except (aiohttp.ClientError, TimeoutError, OSError):
                    continue
                ids = [s.labels.get("factory", "") for f in text_string_to_metric_families(text)
                       if f.name == "tdn_sidecar_ejected" for s in f.samples if s.value >= 1]
                if ids:
                    out[sc.node_id] = ids
        return out

    async def clear_ejections(self, grace_s: float = 5.5) -> list[str]:
        """Give the sidecars ``grace_s`` to return the factories they ejected (an earlier drill's
        doing): long enough for one probe to return an unreachable factory, while an ejection for
        errors lasts 30 s and more. Restart those that still hold some, when we started them, so
        that every drill begins from a sidecar that trusts every factory. Returns notes for the
        report."""
        deadline = time.monotonic() + grace_s
        ejected = await self.ejected()
        while ejected and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            ejected = await self.ejected()
        if not ejected:
            return []
        if not isinstance(self.processes, SupervisedProcesses):
            return [f"sidecar {node} still ejects {', '.join(ids)} from before this drill"
                    for node, ids in ejected.items()]
        notes = []
        for node, ids in ejected.items():
            process = self.sidecar(node).process
            await asyncio.to_thread(self.processes.kill, process)
            await asyncio.to_thread(self.processes.restart, process)
            notes.append(f"sidecar {node} restarted before the drill: it still ejected "
                         f"{', '.join(ids)} after an earlier drill")
        await self.wait_steady()
        return notes

    async def close(self) -> None:
        for owned in reversed(self._owned):
            if isinstance(owned, Supervisor):
                await asyncio.to_thread(owned.stop_all)
            elif isinstance(owned, EtcdService):
                await asyncio.to_thread(owned.stop)
            elif isinstance(owned, str):
                # A proxy we created.
                with contextlib.suppress(Exception):
                    await self.toxiproxy.delete_proxy(owned)
        self._owned.clear()
        await self.toxiproxy.close()


async def _ok(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def _json(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                return None
            body = await resp.json()
            return body if isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


def host_port(url_or_address: str) -> str:
    """``host:port`` of a URL (``http://h:p/v1``) or of an address given as such already."""
    if "://" in url_or_address:
        parts = urlsplit(url_or_address)
        return f"{parts.hostname}:{parts.port}"
    return url_or_address
