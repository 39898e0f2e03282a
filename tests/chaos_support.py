"""Shared by the chaos unit tests (this module holds no tests): a drill network that exists only
as values — three factories, two control-plane replicas, one sidecar — whose processes record
what was killed and restarted, and sidecar policies shaped as the sidecar's /policy shows them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tdn.chaos.network import ControlPlaneNode, DrillNetwork, FactoryNode, SidecarNode
from tdn.chaos.toxiproxy import ToxiproxyClient

MODEL = "llama-3.1-8b-instruct"
FACTORIES = {"edge-fra-1": "eu-west", "edge-fra-2": "eu-west", "center-se-1": "eu-north"}


class RecordingProcesses:
    """Processes that only record what a drill did to them, in order."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = list(names)
        self.dead: set[str] = set()
        self.log: list[tuple[str, str]] = []

    def names(self) -> list[str]:
        return list(self._names)

    def alive(self, name: str) -> bool:
        return name not in self.dead

    def kill(self, name: str) -> None:
        self.dead.add(name)
        self.log.append(("kill", name))

    def restart(self, name: str) -> None:
        self.dead.discard(name)
        self.log.append(("restart", name))

    def adopted(self) -> list[str]:
        return []


def fake_network() -> tuple[DrillNetwork, RecordingProcesses]:
    factories = {
        fid: FactoryNode(id=fid, region=region, tier="edge", sim_url=f"http://sim-{fid}",
                         link=f"link-{fid}", processes=(f"sim/{fid}", f"agent/{fid}"))
        for fid, region in FACTORIES.items()}
    controlplanes = tuple(
        ControlPlaneNode(name=f"controlplane/{n}", grpc=f"127.0.0.1:{port}",
                         http_url=f"http://127.0.0.1:{port + 1}", links=(f"link-cp-{n}",),
                         etcd_link="")
        for n, port in (("a", 7000), ("b", 7100)))
    sidecar = SidecarNode(node_id="sc-fra", site="fra-office", base_url="http://sc/v1",
                          admin_url="http://sc-admin", process="proxy/sc-fra",
                          links=("link-cp-a", "link-cp-b"))
    names = [p for f in factories.values() for p in f.processes]
    names += [cp.name for cp in controlplanes] + [sidecar.process]
    processes = RecordingProcesses(names)
    network = DrillNetwork(
        factories=factories, sidecars=(sidecar,), controlplanes=controlplanes,
        site_regions={"fra-office": "eu-west"}, processes=processes,
        # Never contacted: the faults these tests inject act on processes only.
        toxiproxy=ToxiproxyClient("http://127.0.0.1:9"), network_file=Path("network.yaml"),
        run_dir=Path("."))
    return network, processes


def policy(version: int, primary: Mapping[str, float], backups: Iterable[str] = ()
           ) -> dict[str, Any]:
    """A sidecar policy with one default route for :data:`MODEL`."""
    return {"version": str(version), "routes": [{
        "model": MODEL, "traffic_class": "default",
        "primary": [{"factory_id": f, "weight": w} for f, w in primary.items()],
        "backups": [[{"factory_id": f, "weight": 1.0}] for f in backups]}]}


def statuses(leader: str) -> dict[str, dict[str, Any]]:
    """Both replicas answering, ``leader`` (a or b) leading, the sidecar connected to it."""
    return {f"controlplane/{n}": {
        "leader": n == leader,
        "sidecars": [{"node_id": "sc-fra", "connected": n == leader}]} for n in ("a", "b")}
