"""Drilling a network someone else started with ``tdn up``: its components come from its
``up.json``, and its links are the Toxiproxy proxies listening where its factories' endpoints and
its sidecars' control-plane addresses point.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

from tdn.chaos.network import (
    ControlPlaneNode,
    DrillNetwork,
    FactoryNode,
    SidecarNode,
    host_port,
)
from tdn.chaos.services import ServiceError
from tdn.chaos.toxiproxy import ToxiproxyClient
from tdn.config import load_network
from tdn.up import Component, Supervisor


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie still answers signal 0.
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


class AttachedProcesses:
    """Components of a network someone else started (``tdn up``), found in its up.json.

    A killed component is restarted by us with the same command; it then runs on in its own
    session after the drill, and its new pid is in the drill folder's up.json.
    """

    def __init__(self, components: list[dict[str, Any]], run_dir: Path) -> None:
        self._components = {c["name"]: c for c in components}
        self._pids = {c["name"]: int(c["pid"]) for c in components}
        self._restarted = Supervisor(run_dir)

    def names(self) -> list[str]:
        return list(self._components)

    def adopted(self) -> list[str]:
        """Components we restarted, which the original ``tdn up`` will not stop."""
        return [f"{c.name} (pid {p.pid})" for c, p in self._restarted.procs if p.poll() is None]

    def alive(self, name: str) -> bool:
        if any(c.name == name for c, _ in self._restarted.procs):
            return self._restarted.alive(name)
        return _pid_alive(self._pids[name])

    def kill(self, name: str) -> None:
        if any(c.name == name for c, _ in self._restarted.procs):
            self._restarted.kill(name)
            return
        with contextlib.suppress(ProcessLookupError):
            # Components run in their own session: the pid is the group id.
            os.killpg(self._pids[name], signal.SIGKILL)

    def restart(self, name: str) -> None:
        if self.alive(name):
            return
        if any(c.name == name for c, _ in self._restarted.procs):
            self._restarted.restart(name)
            return
        raw = self._components[name]
        comp = Component(name=raw["name"], kind=raw["kind"], args=tuple(raw["args"]),
                         address=raw.get("address", ""), log=raw.get("log", ""))
        self._restarted.start(comp)


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1] if flag in args else ""


async def attach(state_dir: Path, toxiproxy_url: str, run_dir: Path) -> DrillNetwork:
    """A network ``tdn up --state-dir STATE_DIR`` runs; its links are hurt through the proxies
    the given Toxiproxy already has in front of them (matched by listen address)."""
    up = json.loads(await asyncio.to_thread((state_dir / "up.json").read_text))
    components: list[dict[str, Any]] = up["components"]
    cps = [c for c in components if c["kind"] == "controlplane"]
    if not cps:
        raise ServiceError(f"{state_dir}/up.json lists no control plane")
    config = _arg(list(cps[0]["args"]), "--config")
    net = load_network(config or None)
    tox = ToxiproxyClient(toxiproxy_url)
    proxies = await tox.proxies()
    by_listen = {host_port(p.listen).replace("0.0.0.0", "127.0.0.1").replace("localhost",
                                                                              "127.0.0.1"): n
                 for n, p in proxies.items()}
    names = {c["name"] for c in components}
    factories = {}
    for fc in net.factories:
        sim = f"sim/{fc.spec.id}"
        factories[fc.spec.id] = FactoryNode(
            id=fc.spec.id, region=fc.spec.region, tier=fc.spec.tier.value,
            sim_url=f"http://127.0.0.1:{fc.sim.port}" if fc.sim and sim in names else "",
            link=by_listen.get(host_port(fc.spec.endpoint), ""),
            processes=tuple(n for n in (sim, f"agent/{fc.spec.id}") if n in names))
    sidecars = []
    for comp in components:
        if comp["kind"] != "proxy":
            continue
        args = list(comp["args"])
        addresses = [a for a in _arg(args, "--controlplane").split(",") if a]
        sidecars.append(SidecarNode(
            node_id=_arg(args, "--node-id"), site=_arg(args, "--site"),
            base_url=f"http://{_arg(args, '--listen')}/v1",
            admin_url=f"http://{_arg(args, '--admin')}", process=comp["name"],
            links=tuple(by_listen[a] for a in addresses if a in by_listen)))
    controlplanes = []
    for comp in cps:
        args = list(comp["args"])
        grpc = _arg(args, "--grpc") or net.grpc_address
        store = _arg(args, "--store").removeprefix("etcd://").split(",")[0]
        controlplanes.append(ControlPlaneNode(
            name=comp["name"], grpc=grpc,
            http_url=f"http://{_arg(args, '--http') or net.http_address}",
            links=tuple(sc_link for sc in sidecars for sc_link in sc.links
                        if proxies[sc_link].upstream == grpc),
            etcd_link=by_listen.get(store, "")))
    await asyncio.to_thread(run_dir.mkdir, parents=True, exist_ok=True)
    return DrillNetwork(
        factories=factories, sidecars=tuple(sidecars), controlplanes=tuple(controlplanes),
        site_regions={s.id: s.region for s in net.sites},
        processes=AttachedProcesses(components, run_dir), toxiproxy=tox,
        network_file=Path(config) if config else Path("(embedded)"), run_dir=run_dir,
        description=f"attached ({state_dir})")
