"""Starting a local TDN for drills: the components ``tdn up`` would start (same plan, same
supervision: :func:`tdn.up.plan_components` and :class:`tdn.up.Supervisor`), on free ports, with
a Toxiproxy proxy in front of every factory (sidecar → factory), every sidecar → control-plane
link and, on etcd, every control plane → etcd link.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tdn.chaos.network import (
    ControlPlaneNode,
    DrillNetwork,
    FactoryNode,
    SidecarNode,
    SupervisedProcesses,
    host_port,
)
from tdn.chaos.services import free_port, start_etcd
from tdn.chaos.spec import NetworkNeeds
from tdn.chaos.toxiproxy import ToxiproxyClient
from tdn.config import NetworkConfig, load_network
from tdn.up import Component, Supervisor, plan_components


def _set_arg(args: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    """``args`` with ``flag``'s value replaced (or the pair appended)."""
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return tuple(out)


def _read_base(run_dir: Path, base_network: Path | None) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    text = (base_network.read_text() if base_network is not None
            else resources.files("tdn").joinpath("defaults/up.yaml").read_text())
    load_network(base_network)  # refuse a bad base file with its own file/line/key message
    raw: dict[str, Any] = yaml.safe_load(text)
    return raw


async def start_local(run_dir: Path, toxiproxy_url: str, *, base_network: Path | None = None,
                      needs: NetworkNeeds | None = None,
                      ready_within_s: float = 90.0) -> DrillNetwork:
    """Start a local TDN under ``run_dir`` with Toxiproxy in front of its links.

    The network is ``base_network`` (default: the embedded one) moved to free ports. Close the
    returned network to stop everything it started.
    """
    needs = needs or NetworkNeeds()
    raw = await asyncio.to_thread(_read_base, run_dir, base_network)
    tox = ToxiproxyClient(toxiproxy_url)
    tag = uuid.uuid4().hex[:6]  # proxies of two networks can share one Toxiproxy
    network = DrillNetwork(factories={}, sidecars=(), controlplanes=(), site_regions={},
                           processes=SupervisedProcesses(Supervisor(run_dir / "state")),
                           toxiproxy=tox, network_file=run_dir / "network.yaml", run_dir=run_dir,
                           description=f"local ({base_network or 'embedded network'})",
                           proxy_tag=tag)
    try:
        cp_links = await _build(network, raw, needs)
        await _launch(network, cp_links, needs, ready_within_s)
    except BaseException:
        await network.close()
        raise
    return network


async def _proxy(network: DrillNetwork, name: str, upstream: str) -> str:
    """Create a proxy on a free port in front of ``upstream``; return its listen address."""
    # A port chosen here, not 0: Toxiproxy could otherwise take one handed out a moment ago to
    # a process that has not bound it yet (a control plane then failed to start in CI).
    proxy = await network.toxiproxy.create_proxy(name, f"127.0.0.1:{free_port()}", upstream)
    network._owned.append(name)
    return f"127.0.0.1:{proxy.listen_port}"


async def _build(network: DrillNetwork, raw: dict[str, Any],
                 needs: NetworkNeeds) -> dict[str, list[str]]:
    """Move ``raw`` to free ports, create the proxies, and write the network file; return each
    sidecar's control-plane addresses (its proxies, in replica order)."""
    tag = network.proxy_tag
    replicas = [(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
                for _ in range(needs.controlplanes)]
    raw["controlplane"] = {"grpc": replicas[0][0], "http": replicas[0][1]}
    sidecar = raw.get("sidecar")
    if sidecar is not None:
        sidecar["listen"] = f"127.0.0.1:{free_port()}"
        sidecar["admin"] = f"127.0.0.1:{free_port()}"
    factory_links: dict[str, tuple[str, str]] = {}
    for factory in raw.get("factories", []):
        fid = factory["id"]
        if factory.get("sim") is not None:
            factory["sim"]["port"] = free_port()
            upstream = f"127.0.0.1:{factory['sim']['port']}"
        else:
            upstream = host_port(factory["endpoint"])
        listen = await _proxy(network, f"{tag}.factory.{fid}", upstream)
        factory["endpoint"] = f"http://{listen}/v1"
        factory_links[fid] = (f"{tag}.factory.{fid}", upstream)
    network.network_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    net = load_network(network.network_file)
    network.site_regions = {s.id: s.region for s in net.sites}
    network.factories = {
        fc.spec.id: FactoryNode(
            id=fc.spec.id, region=fc.spec.region, tier=fc.spec.tier.value,
            sim_url=f"http://127.0.0.1:{fc.sim.port}" if fc.sim else "",
            link=factory_links[fc.spec.id][0],
            processes=((f"sim/{fc.spec.id}",) if fc.sim else ()) + (f"agent/{fc.spec.id}",))
        for fc in net.factories}
    cp_links: dict[str, list[str]] = {}  # sidecar -> listen addresses, in replica order
    cps = []
    for i, (grpc, http) in enumerate(replicas):
        name = "controlplane" if i == 0 else f"controlplane-{i + 1}"
        links = []
        for sc in net.sidecars:
            proxy = f"{tag}.{name}.{sc.node_id}"
            cp_links.setdefault(sc.node_id, []).append(await _proxy(network, proxy, grpc))
            links.append(proxy)
        cps.append(ControlPlaneNode(name=name, grpc=grpc, http_url=f"http://{http}",
                                    links=tuple(links), etcd_link=""))
    network.controlplanes = tuple(cps)
    network.sidecars = tuple(
        SidecarNode(node_id=sc.node_id, site=sc.site, base_url=f"http://{sc.listen}/v1",
                    admin_url=f"http://{sc.admin}", process=f"proxy/{sc.node_id}",
                    links=tuple(link for cp in cps for link in cp.links
                                if link.endswith(f".{sc.node_id}")))
        for sc in net.sidecars)
    (network.run_dir / "state").mkdir(exist_ok=True)
    return cp_links


async def _launch(network: DrillNetwork, cp_links: dict[str, list[str]], needs: NetworkNeeds,
                  ready_within_s: float) -> None:
    net: NetworkConfig = load_network(network.network_file)
    state = network.run_dir / "state"
    store_urls = [""] * len(network.controlplanes)
    if needs.store == "etcd":
        etcd = await start_etcd(network.run_dir / "etcd")
        network._owned.append(etcd)
        cps = []
        for i, cp in enumerate(network.controlplanes):
            link = f"{network.proxy_tag}.{cp.name}.etcd"
            listen = await _proxy(network, link, etcd.endpoint)
            store_urls[i] = f"etcd://{listen}"
            cps.append(dataclasses.replace(cp, etcd_link=link))
        network.controlplanes = tuple(cps)
    comps: list[Component] = []
    all_grpc = ",".join(cp.grpc for cp in network.controlplanes)
    for comp in plan_components(net, str(network.network_file), state):
        if comp.kind == "controlplane":
            for i, cp in enumerate(network.controlplanes):
                args = comp.args
                args = _set_arg(args, "--grpc", cp.grpc)
                args = _set_arg(args, "--http", cp.http_url.removeprefix("http://"))
                args = _set_arg(args, "--state-dir", str(state / cp.name))
                if store_urls[i]:
                    args = _set_arg(args, "--store", store_urls[i])
                    args = _set_arg(args, "--replica-id", cp.name)
                comps.append(dataclasses.replace(
                    comp, name=cp.name, args=args, log=str(state / "logs" / f"{cp.name}.log"),
                    address=f"grpc {cp.grpc}, http {cp.http_url}"))
        elif comp.kind == "agent":
            # Agents stay beside their engines and reach every replica directly: the drills
            # cut sidecars off, not telemetry.
            comps.append(dataclasses.replace(
                comp, args=_set_arg(comp.args, "--controlplane", all_grpc)))
        elif comp.kind == "proxy":
            node = comp.name.removeprefix("proxy/")
            comps.append(dataclasses.replace(
                comp, args=_set_arg(comp.args, "--controlplane", ",".join(cp_links[node]))))
        else:
            comps.append(comp)
    processes = network.processes
    assert isinstance(processes, SupervisedProcesses)
    network._owned.append(processes.supervisor)
    for comp in comps:
        processes.supervisor.start(comp)
    await network.wait_steady(ready_within_s)
