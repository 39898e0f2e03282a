"""Turning a drill's named targets into concrete things to hurt, at the start of the drill.

Symbolic selectors are resolved against the policy the sidecar runs right then: ``primary`` is
the factory carrying the largest share of the drill's model (the one whose loss matters), and
``backup`` the first backup. So a built-in drill hurts what actually serves traffic on any
network, not a name that happens to exist in the default one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tdn.chaos.network import DrillNetwork
from tdn.chaos.spec import TargetSpec


class TargetError(ValueError):
    """A target that resolves to nothing on this network."""


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """What a target stands for: factories (with their links, simulators and processes),
    other links, and processes."""

    name: str
    kind: str
    description: str
    factories: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    sim_urls: tuple[str, ...] = ()
    processes: tuple[str, ...] = ()
    controlplanes: tuple[str, ...] = ()


def route_for(policy: Mapping[str, Any], model: str) -> Mapping[str, Any] | None:
    """The default-class route for ``model`` in a policy as the sidecar's /policy shows it."""
    routes = [r for r in policy.get("routes", []) if r.get("model") == model]
    for route in routes:
        if route.get("traffic_class", "default") == "default":
            return dict(route)
    return dict(routes[0]) if routes else None


def primary_factory(policy: Mapping[str, Any], model: str) -> str:
    route = route_for(policy, model)
    if route is None or not route.get("primary"):
        raise TargetError(f"the sidecar's policy has no route with primaries for {model!r}")
    heaviest = max(route["primary"], key=lambda w: (w["weight"], -route["primary"].index(w)))
    return str(heaviest["factory_id"])


def backup_factory(policy: Mapping[str, Any], model: str) -> str:
    route = route_for(policy, model)
    if route is None or not route.get("backups") or not route["backups"][0]:
        raise TargetError(f"the sidecar's policy has no backup for {model!r}")
    return str(route["backups"][0][0]["factory_id"])


def _factories_target(spec: TargetSpec, network: DrillNetwork, ids: Sequence[str],
                      description: str) -> ResolvedTarget:
    nodes = [network.factories[i] for i in ids]
    return ResolvedTarget(
        name=spec.name, kind=spec.kind, description=description, factories=tuple(ids),
        links=tuple(n.link for n in nodes if n.link),
        sim_urls=tuple(n.sim_url for n in nodes if n.sim_url),
        processes=tuple(p for n in nodes for p in n.processes))


def leader_names(network: DrillNetwork, statuses: Mapping[str, Mapping[str, Any]]
                       ) -> tuple[list[str], str]:
    """Replicas that say they lead, and a note when that cannot be told apart (every replica
    claims it: no election yet) — then the one the sidecars are connected to counts."""
    claim = [cp.name for cp in network.controlplanes
             if statuses.get(cp.name, {}).get("leader")]
    if len(claim) <= 1:
        return claim, ""
    connected = [cp.name for cp in network.controlplanes
                 if any(v.get("connected") for v in statuses.get(cp.name, {}).get("sidecars", []))]
    note = (f"{len(claim)} replicas claim leadership ({', '.join(claim)}): no leader election; "
            f"taking the one the sidecars are connected to")
    return (connected[:1] or claim[:1]), note


async def resolve(spec: TargetSpec, network: DrillNetwork, policy: Mapping[str, Any], *,
                  model: str, site: str,
                  statuses: Mapping[str, Mapping[str, Any]]) -> ResolvedTarget:
    """Resolve one target; raise TargetError when it stands for nothing here."""
    if spec.kind == "factory":
        if spec.select == "primary":
            fid, how = primary_factory(policy, model), f"primary for {model}"
        elif spec.select == "backup":
            fid, how = backup_factory(policy, model), f"first backup for {model}"
        else:
            fid, how = spec.select, "named"
        if fid not in network.factories:
            raise TargetError(f"target {spec.name}: no factory {fid!r} in the network")
        return _factories_target(spec, network, [fid], f"factory {fid} ({how})")
    if spec.kind == "region":
        if spec.select == "primary":
            region = network.factories[primary_factory(policy, model)].region
        elif spec.select == "site":
            region = network.site_regions.get(site, "")
        else:
            region = spec.select
        ids = [f.id for f in network.factories.values() if f.region == region]
        if not ids:
            raise TargetError(f"target {spec.name}: no factory in region {region!r}")
        return _factories_target(spec, network, ids, f"region {region} ({', '.join(ids)})")
    if spec.kind == "controlplane":
        note = ""
        if spec.select == "all":
            names = [cp.name for cp in network.controlplanes]
        else:
            leaders, note = leader_names(network, statuses)
            if spec.select == "leader":
                names = leaders
            else:
                names = [cp.name for cp in network.controlplanes if cp.name not in leaders][:1]
        if not names:
            raise TargetError(f"target {spec.name}: no {spec.select} control plane")
        cps = [cp for cp in network.controlplanes if cp.name in names]
        description = f"control plane {', '.join(names)}" + (f" — {note}" if note else "")
        return ResolvedTarget(name=spec.name, kind=spec.kind, description=description,
                              links=tuple(link for cp in cps for link in cp.links),
                              processes=tuple(names), controlplanes=tuple(names))
    if spec.kind == "etcd":
        links = tuple(cp.etcd_link for cp in network.controlplanes if cp.etcd_link)
        if not links:
            raise TargetError(f"target {spec.name}: the control planes reach no etcd through "
                              "Toxiproxy (the network runs on the embedded store)")
        return ResolvedTarget(name=spec.name, kind=spec.kind, description="etcd links",
                              links=links)
    if spec.kind == "sidecar":
        nodes = [sc for sc in network.sidecars
                 if spec.select in {"all", sc.node_id}]
        if not nodes:
            raise TargetError(f"target {spec.name}: no sidecar {spec.select!r}")
        return ResolvedTarget(name=spec.name, kind=spec.kind,
                              description=f"sidecar {', '.join(n.node_id for n in nodes)}",
                              processes=tuple(n.process for n in nodes))
    if spec.select not in network.processes.names():
        raise TargetError(f"target {spec.name}: no component {spec.select!r} "
                          f"(known: {', '.join(network.processes.names())})")
    return ResolvedTarget(name=spec.name, kind=spec.kind, description=f"process {spec.select}",
                          processes=(spec.select,))
