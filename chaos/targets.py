"""Turning a drill's named targets into concrete things to hurt.

A literal selector (a factory id, a region, ``all``) names a thing: it is bound at the start of
the drill. A role selector (``primary``, ``backup``, the primary's region, the ``leader`` or a
``follower`` replica) names whatever fills that role, and the control plane may hand the role to
another factory or replica between the start and the fault — it re-plans on observed demand a
few seconds in. So a role target is bound when its first fault fires, against the sidecar's
policy (or the replicas' statuses) at that moment, and that binding is kept for the target's
later events: a restart, a heal or the next flap hits what the first fault hit.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tdn.chaos.network import DrillNetwork
from tdn.chaos.spec import TargetSpec


class TargetError(ValueError):
    """A target that resolves to nothing on this network."""


@dataclass(frozen=True, slots=True)
class ResolvedTarget:
    """What a target stands for: factories (with their links, simulators and processes),
    other links, and processes; and when it was bound (drill clock, None: at the start)."""

    name: str
    kind: str
    description: str
    factories: tuple[str, ...] = ()
    links: tuple[str, ...] = ()
    sim_urls: tuple[str, ...] = ()
    processes: tuple[str, ...] = ()
    controlplanes: tuple[str, ...] = ()
    bound_at: float | None = None


# kind -> selectors that name a role the network's state decides, not a thing.
ROLE_SELECTORS: dict[str, frozenset[str]] = {
    "factory": frozenset({"primary", "backup"}),
    "region": frozenset({"primary"}),
    "controlplane": frozenset({"leader", "follower"}),
}


def is_role(spec: TargetSpec) -> bool:
    """Whether ``spec`` is bound when its first fault fires rather than at the start."""
    return spec.select in ROLE_SELECTORS.get(spec.kind, frozenset())


@dataclass(frozen=True, slots=True)
class NetworkState:
    """What role selectors are resolved against: the drill sidecar's policy (as its /policy
    shows it) and each answering replica's /api/status."""

    policy: Mapping[str, Any]
    statuses: Mapping[str, Mapping[str, Any]]

    @property
    def version(self) -> str:
        return str(self.policy.get("version", "?"))


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


def resolve(spec: TargetSpec, network: DrillNetwork, state: NetworkState, *, model: str,
            site: str) -> ResolvedTarget:
    """Resolve one target against ``state``; raise TargetError when it stands for nothing."""
    policy = state.policy
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
            leaders, note = leader_names(network, state.statuses)
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


def _what(target: ResolvedTarget) -> str:
    """The thing a target stands for, without the why: to compare two bindings."""
    return ", ".join(target.factories or target.controlplanes or target.processes
                     or target.links)


PolicySource = Callable[[], Awaitable[Mapping[str, Any] | None]]
StatusSource = Callable[[], Awaitable[Mapping[str, Mapping[str, Any]]]]


class TargetBinder:
    """Binds a drill's targets: literal ones at :meth:`bind_start`, role ones at their first
    fault (:meth:`bind`), each exactly once.

    ``policy`` and ``statuses`` fetch the network's state as it is when called (the drill
    sidecar's /policy, the replicas' /api/status); only what a role needs is fetched.
    """

    def __init__(self, network: DrillNetwork, specs: Sequence[TargetSpec], *, model: str,
                 site: str, policy: PolicySource, statuses: StatusSource) -> None:
        self.network = network
        self.specs = {s.name: s for s in specs}
        self.model = model
        self.site = site
        self._policy = policy
        self._statuses = statuses
        self._bound: dict[str, ResolvedTarget] = {}
        # What each role target stood for at the start, for the report and as the fallback.
        self._at_start: dict[str, ResolvedTarget] = {}
        self._start_state: NetworkState | None = None
        self._locks = {name: asyncio.Lock() for name in self.specs}

    @property
    def bound(self) -> dict[str, ResolvedTarget]:
        """The targets bound so far, in the order the drill declares them."""
        return {n: self._bound[n] for n in self.specs if n in self._bound}

    def bind_start(self, state: NetworkState) -> None:
        """Bind every literal target, and resolve every role target once against the state at
        the start: a role nothing fills (no route for the model, no backup, no leader) fails
        the drill before any load is sent, and the report can say what it was at the start."""
        self._start_state = state
        for name, spec in self.specs.items():
            target = resolve(spec, self.network, state, model=self.model, site=self.site)
            if is_role(spec):
                self._at_start[name] = target
            else:
                self._bound[name] = target

    async def bind(self, name: str, at: float) -> ResolvedTarget:
        """``name`` as bound; a role target is bound now (``at``, drill clock) if it is not yet.
        Concurrent first faults on one target share one binding."""
        async with self._locks[name]:
            if name not in self._bound:
                self._bound[name] = await self._bind_role(self.specs[name], at)
            return self._bound[name]

    async def _bind_role(self, spec: TargetSpec, at: float) -> ResolvedTarget:
        start = self._start_state
        if start is None:
            raise RuntimeError("bind_start was not called")  # a bug in the runner
        stale = ""
        if spec.kind == "controlplane":
            state = NetworkState(start.policy, await self._statuses())
            source = f"the replicas' status at {at:.2f} s"
        else:
            policy = await self._policy()
            if policy is None:
                # The sidecar itself may be down (another fault): the start's policy is all
                # there is, and the report says so.
                state, stale = start, f"; the sidecar showed no policy at {at:.2f} s"
                source = f"policy version {start.version} from the start"
            else:
                state = NetworkState(policy, start.statuses)
                source = f"policy version {state.version} at {at:.2f} s"
        target = resolve(spec, self.network, state, model=self.model, site=self.site)
        before = self._at_start.get(spec.name)
        then = ("the same at the start" if before is not None and _what(before) == _what(target)
                else f"at the start: {before.description}" if before is not None else "")
        how = f"bound at its first fault from {source}{stale}" + (f"; {then}" if then else "")
        return dataclasses.replace(target, description=f"{target.description} — {how}",
                                   bound_at=at)
