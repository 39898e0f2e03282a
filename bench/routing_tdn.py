"""TDN in the routing simulation: the control plane's periodic solve and each site's sidecar.

The control plane solves with :func:`tdn.topology.solver.solve` (the real solver, default
:class:`~tdn.topology.options.SolveOptions`) every 60 s on demand groups estimated from the
trace's trailing 5-minute window (smoothed), with telemetry as an agent would report it: slots
running and waiting, the factory-side median TTFT of the last minute, ITL, the grid's carbon
intensity and power price at that hour. The first plan is made from the first window (standing
in for yesterday's forecast). Plans are compiled into per-site policies with
:func:`tdn.topology.compile.compile_site_policies`.

Each site's sidecar routes as ``dataplane/balancer.py`` does — smooth weighted round-robin
(nginx's algorithm) over the primary set, then backup levels in order — and ejects a factory that
failed an attempt (30 s, doubling, as Envoy's outlier detection), so the traffic of a failed
primary moves to the other primaries by weight, or to the first backup level, *without* a solve.
The control plane sees a dead factory only after the telemetry TTL (15 s); in the single-factory
drill it does not solve at all while the factory is down: the precomputed backups must carry it.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.routing_sim import Req, Simulation
from bench.routing_topology import MODEL, GroupModel, Topology
from tdn.domain import FactoryState, Plan, SitePolicy, WeightedFactory
from tdn.topology.compile import compile_site_policies
from tdn.topology.options import SolveOptions
from tdn.topology.solver import solve

SOLVE_PERIOD_S = 60.0
DEMAND_WINDOW_S = 300.0
SMOOTHING = 0.5  # weight of the newest window in the demand estimate
TELEMETRY_WINDOW_S = 60.0
DETECTION_S = 15.0
EJECTION_S = 30.0
MAX_EJECTION_S = 300.0


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin, as ``dataplane/balancer.py`` implements it."""

    def __init__(self, members: Sequence[WeightedFactory]) -> None:
        self.ids = [m.factory_id for m in members]
        self.weights = [max(m.weight, 0.0) for m in members]
        self.total = sum(self.weights)
        self.current = [0.0] * len(members)

    def pick(self) -> str | None:
        if self.total <= 0:
            return None
        best = 0
        for i, weight in enumerate(self.weights):
            self.current[i] += weight
            if self.current[i] > self.current[best]:
                best = i
        self.current[best] -= self.total
        return self.ids[best]


@dataclass(slots=True)
class SidecarModel:
    """One site's sidecar: the policy it holds, its balancer state, its ejections."""

    policy: SitePolicy | None = None
    groups: dict[tuple[str, int, tuple[str, ...]], SmoothWeightedRoundRobin] = field(
        default_factory=dict)
    ejected: dict[str, tuple[float, int]] = field(default_factory=dict)

    def set_policy(self, policy: SitePolicy) -> None:
        if self.policy is not None and self.policy.routes == policy.routes:
            self.policy = policy  # same routes: keep the balancer's position, as no swap
            return
        self.policy = policy
        self.groups.clear()

    def _usable(self, fid: str, now: float) -> bool:
        until = self.ejected.get(fid)
        return until is None or until[0] <= now

    def choose(self, req: Req, now: float) -> str | None:
        if self.policy is None:
            return None
        route = self.policy.route_for(MODEL, req.cls)
        if route is None:
            return None
        for level, members in enumerate((route.primary, *route.backups)):
            live = [m for m in members
                    if m.factory_id not in req.tried and self._usable(m.factory_id, now)]
            if not live:
                continue
            key = (req.cls, level, tuple(m.factory_id for m in live))
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = SmoothWeightedRoundRobin(live)
            return group.pick() or live[0].factory_id
        return None

    def eject(self, fid: str, now: float) -> None:
        _, count = self.ejected.get(fid, (0.0, 0))
        hold = min(EJECTION_S * 2 ** count, MAX_EJECTION_S)
        self.ejected[fid] = (now + hold, count + 1)

    def succeeded(self, fid: str) -> None:
        self.ejected.pop(fid, None)


@dataclass(slots=True)
class SolveRecord:
    at: float
    status: str
    seconds: float


class TdnRouter:
    """The control plane plus one sidecar per site."""

    def __init__(self, topology: Topology, requests: Sequence[Req], *,
                 no_solve: Sequence[tuple[float, float]] = (),
                 options: SolveOptions | None = None, name: str = "TDN",
                 load_telemetry: bool = True) -> None:
        self.name = name
        # False: the solver sees traffic, prices and grids but no queue or observed TTFT, which
        # separates the plan's quality from how the solver reacts to load telemetry.
        self.load_telemetry = load_telemetry
        self.topology = topology
        self.options = options or SolveOptions()
        self.no_solve = tuple(no_solve)
        self.sidecars = {s.id: SidecarModel() for s in topology.sites}
        self.sites = topology.solver_sites()
        self.plan: Plan | None = None
        self.version = 0
        self.solves: list[SolveRecord] = []
        self.estimate: dict[tuple[str, str], tuple[float, float, float]] = {}
        self.arrivals: dict[tuple[str, str], tuple[list[float], list[Req]]] = {}
        for req in requests:
            times, reqs = self.arrivals.setdefault((req.site, req.cls), ([], []))
            times.append(req.t)
            reqs.append(req)
        self.sim: Simulation | None = None

    def start(self, sim: Simulation) -> None:
        self.sim = sim
        self._solve(0.0)
        sim.call_at(SOLVE_PERIOD_S, self._tick)

    def _tick(self, now: float) -> None:
        assert self.sim is not None
        if not any(a <= now < b for a, b in self.no_solve):
            self._solve(now)
        self.sim.call_at(now + SOLVE_PERIOD_S, self._tick)

    def _window(self, group: GroupModel, now: float) -> tuple[float, float, float]:
        start, end = (now - DEMAND_WINDOW_S, now) if now >= DEMAND_WINDOW_S else \
            (0.0, DEMAND_WINDOW_S)
        times, reqs = self.arrivals.get((group.site, group.cls), ([], []))
        lo, hi = bisect.bisect_left(times, start), bisect.bisect_left(times, end)
        window = reqs[lo:hi]
        rate = len(window) / (end - start)
        if not window:
            return rate, 1000.0, 200.0
        return (rate, statistics.fmean(r.prompt for r in window),
                statistics.fmean(r.output for r in window))

    def _states(self, now: float) -> list[FactoryState]:
        assert self.sim is not None
        states = []
        for f in self.topology.factories:
            runtime = self.sim.factories[f.id]
            while runtime.ttft_log and runtime.ttft_log[0][0] < now - TELEMETRY_WINDOW_S:
                runtime.ttft_log.popleft()
            recent = [ttft for _, ttft in runtime.ttft_log]
            down = self.sim.down_since(f.id, now)
            known_down = down is not None and now - down >= DETECTION_S
            if not self.load_telemetry:
                recent = []
            busy = self.load_telemetry
            states.append(self.topology.factory_state(
                f, now, running=runtime.running if busy else 0,
                waiting=runtime.queued if busy else 0,
                ttft_p50_s=statistics.median(recent) if recent else 0.0,
                healthy=not known_down))
        return states

    def _solve(self, now: float) -> None:
        demands = []
        for group in self.topology.groups:
            rate, prompt, output = self._window(group, now)
            old = self.estimate.get((group.site, group.cls))
            if old is not None:
                rate = SMOOTHING * rate + (1 - SMOOTHING) * old[0]
                prompt = SMOOTHING * prompt + (1 - SMOOTHING) * old[1]
                output = SMOOTHING * output + (1 - SMOOTHING) * old[2]
            self.estimate[(group.site, group.cls)] = (rate, prompt, output)
            demands.append(self.topology.demand(group, rate, prompt, output))
        states = self._states(now)
        self.version += 1
        plan = solve(states, self.sites, demands, previous=self.plan, options=self.options,
                     version=self.version)
        self.plan = plan
        self.solves.append(SolveRecord(now, plan.status, plan.solve_seconds))
        for site, policy in compile_site_policies(plan, states, self.sites,
                                                  generated_at=now).items():
            if site in self.sidecars:
                self.sidecars[site].set_policy(policy)

    def max_attempts(self, req: Req) -> int:
        return len(self.topology.factories)

    def choose(self, req: Req, now: float) -> str | None:
        return self.sidecars[req.site].choose(req, now)

    def on_failure(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].eject(factory_id, now)

    def on_success(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].succeeded(factory_id)
