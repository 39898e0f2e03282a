"""TDN in the routing simulation: the control plane's periodic solve and each site's sidecar.

The control plane solves with :func:`tdn.topology.solver.solve` (the real solver, default
:class:`~tdn.topology.options.SolveOptions`) every 60 s, then keeps any route the new plan would
empty for telemetry reasons alone (:func:`tdn.topology.hold.hold_lost_routes`, as the control
plane's solve loop does). Demand per group is the trace's trailing 5-minute window, smoothed
with the previous estimate, or the last minute's rate when that is higher (a surge is planned
for at the next solve; see ``PEAK_WINDOW_S``). Telemetry is what an agent reports: slots
running and waiting, the factory-side median and p99 TTFT of the last minute, ITL, the grid's
carbon intensity and power price at that hour. The first plan is made from the first window
(standing in for yesterday's forecast). Plans are compiled into per-site policies with
:func:`tdn.topology.compile.compile_site_policies`.

Each site's sidecar orders a request's candidates with the real balancer
(:class:`tdn.dataplane.balancer.Balancer`: smooth weighted round-robin pick among the primaries,
then each backup level, then the other primaries), narrows them by its ejections once per request
(all of them when none is left: panic), passes over a first candidate where one of its streams
has waited longer than ``slow_first_byte_seconds`` for a first token
(``dataplane/first_byte_watch.py``: the route's other primaries first, then its backups), and
walks them as ``dataplane/failover.py`` does,
preferring after a failure a failure domain that has not failed. A factory that failed an
attempt is ejected (30 s, doubling, as the classic routers'). So a failed primary's share goes to
the route's first backup level, where the plan reserved capacity for it, *without* a solve.
Each attempt has the sidecar's first-byte deadline (``dataplane/deadlines.py``: 3 x the
factory's TTFT p99 in the policy, within [0.5 s, 30 s]; 30 s when unknown): a request with no
first token by then is abandoned there and moves on, and the factory is suspected for one probe
interval (5 s; five misses in a row eject it; at most half the factories out), as
``dataplane/outlier.py`` does. The last candidate a request has waits up to the cap (30 s)
instead, as the sidecar's last attempt does: abandoning it would buy no failover. With no
candidate left the request fails, as the sidecar's would. The per-request routers wait as
long as it takes instead (they read the live queues).
The control plane sees a dead factory only after the telemetry TTL (15 s); in the
single-factory drill it does not solve at all while the factory is down: the precomputed
backups must carry it.
"""

from __future__ import annotations

import bisect
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.routing_sim import Req, Simulation, percentile
from bench.routing_topology import MODEL, GroupModel, Topology
from tdn.dataplane.balancer import Balancer
from tdn.dataplane.deadlines import MAX_DERIVED_S, derived_from_ttft
from tdn.dataplane.first_byte_watch import DEFAULT_SLOW_FIRST_BYTE_S, FirstByteWatch, prefer_fast
from tdn.dataplane.load_reports import LoadReports
from tdn.domain import FactoryEndpoint, FactoryState, Plan, SitePolicy
from tdn.policy import DEFAULT_POLICY
from tdn.topology.compile import compile_site_policies
from tdn.topology.hold import hold_lost_routes
from tdn.topology.options import SolveOptions, options_from_policy
from tdn.topology.solver import solve

SOLVE_PERIOD_S = 60.0
DEMAND_WINDOW_S = 300.0
SMOOTHING = 0.5  # weight of the newest window in the demand estimate
TELEMETRY_WINDOW_S = 60.0
# Traffic is planned for the larger of the smoothed estimate and the last minute's rate: the
# trace's per-minute rates swing 3-10x, and a plan made for the 5-minute mean sends a surge
# where only the mean fits. A surge then shapes the next plan at once; a lull waits for the
# smoothing.
PEAK_WINDOW_S = 60.0
DETECTION_S = 15.0
EJECTION_S = 30.0
MAX_EJECTION_S = 300.0
# dataplane/effective_settings.py defaults: a missed first-byte deadline suspects a factory for
# one probe interval; five in a row eject it; at most half the factories out at once.
SUSPECT_S = 5.0
DEADLINES_TO_EJECT = 5
MAX_OUT_PERCENT = 50.0


@dataclass(slots=True)
class SidecarModel:
    """One site's sidecar: the policy it holds, the real balancer's route plans (rotations and
    fallback order), its ejections, and each request's candidate list while it is attempted."""

    policy: SitePolicy | None = None
    balancer: Balancer = field(default_factory=Balancer)
    ejected: dict[str, tuple[float, int]] = field(default_factory=dict)
    suspects: dict[str, float] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    pending: dict[int, tuple[list[FactoryEndpoint], set[str]]] = field(default_factory=dict)
    # Its streams awaiting a first token (dataplane/first_byte_watch.py), and each request's
    # current attempt there.
    watch: FirstByteWatch = field(default_factory=FirstByteWatch)
    loads: LoadReports = field(default_factory=LoadReports)
    waiting: dict[int, tuple[str, int]] = field(default_factory=dict)
    slow_first_byte_s: float = DEFAULT_SLOW_FIRST_BYTE_S

    def set_policy(self, policy: SitePolicy) -> None:
        if self.policy is not None and self.policy.routes == policy.routes:
            return  # same routes: no swap, the balancer keeps its rotations
        self.policy = policy

    def _usable(self, fid: str, now: float) -> bool:
        until = self.ejected.get(fid)
        return (until is None or until[0] <= now) and self.suspects.get(fid, 0.0) <= now

    def deadline(self, req: Req, fid: str) -> float:
        """The first-byte deadline for ``req``'s attempt at ``fid``: derived from the
        factory's TTFT p99 in the policy, or the cap when no candidate is left after it
        (``dataplane/deadlines.py``, ``last_resort_deadline``)."""
        state = self.pending.get(req.id)
        if self.policy is None or (state is not None and not state[0]):
            return MAX_DERIVED_S
        endpoint = self.policy.endpoint(fid)
        return derived_from_ttft(endpoint.ttft_p99_s if endpoint is not None else 0.0)

    def missed_deadline(self, fid: str, now: float) -> None:
        """As ``dataplane/outlier.py``: a missed deadline takes the factory out of rotation for
        one probe interval at once (within the cap on factories out), five in a row eject it."""
        misses = self.misses.get(fid, 0) + 1
        self.misses[fid] = misses
        if misses >= DEADLINES_TO_EJECT:
            self.misses[fid] = 0
            self.eject(fid, now)
            return
        out = sum(1 for until, _ in self.ejected.values() if until > now)
        out += sum(1 for f, until in self.suspects.items() if until > now and f != fid)
        factories = len(self.policy.factories) if self.policy is not None else 0
        if out + 1 <= max(1, int(factories * MAX_OUT_PERCENT / 100)):
            self.suspects[fid] = now + SUSPECT_S

    def choose(self, req: Req, now: float) -> str | None:
        if self.policy is None:
            return None
        state = self.pending.get(req.id)
        if state is None:
            route = self.policy.route_for(MODEL, req.cls)
            if route is None:
                return None
            # As exchange.py: the balancer's order for this request, narrowed by ejections
            # once (all of them when none is left: panic), then walked by the failover loop.
            plan = self.balancer.plan(self.policy, route)
            order = plan.order()
            live = [e for e in order if self._usable(e.id, now)]
            # As health.select for a stream: a first candidate slow to start streams right now
            # is passed over for the route's other primaries, then its backups.
            ordered, _ = prefer_fast(live or order, plan.primary_ids, self.watch, now,
                                     self.slow_first_byte_s, loads=self.loads)
            state = self.pending[req.id] = (list(ordered), set())
        remaining, failed_domains = state
        if req.tried:
            last = self.policy.endpoint(req.tried[-1])
            if last is not None:
                failed_domains.add(last.failure_domain or last.region)
        if not remaining:
            self.pending.pop(req.id, None)
            return None
        # failover.py's _next: after a failure, prefer a failure domain that has not failed.
        chosen = None
        for i, candidate in enumerate(remaining):
            if not failed_domains or (candidate.failure_domain or candidate.region
                                      ) not in failed_domains:
                chosen = remaining.pop(i).id
                break
        if chosen is None:
            chosen = remaining.pop(0).id
        self.waiting[req.id] = (chosen, self.watch.begin(chosen, now))
        return chosen

    def attempt_over(self, req: Req) -> None:
        """The request's current attempt got its first token, failed or was abandoned."""
        current = self.waiting.pop(req.id, None)
        if current is not None:
            self.watch.end(*current)

    def eject(self, fid: str, now: float) -> None:
        _, count = self.ejected.get(fid, (0.0, 0))
        hold = min(EJECTION_S * 2 ** count, MAX_EJECTION_S)
        self.ejected[fid] = (now + hold, count + 1)

    def succeeded(self, req: Req, fid: str) -> None:
        self.pending.pop(req.id, None)
        self.ejected.pop(fid, None)
        self.suspects.pop(fid, None)
        self.misses.pop(fid, None)


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
        # By default what the control plane solves with under the default policy.
        self.options = options or options_from_policy(DEFAULT_POLICY)
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

    def _window(self, group: GroupModel, now: float, span: float = DEMAND_WINDOW_S
                ) -> tuple[float, float, float]:
        start, end = (now - span, now) if now >= span else (0.0, span)
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
            recent = sorted(ttft for _, ttft in runtime.ttft_log)
            down = self.sim.down_since(f.id, now)
            known_down = down is not None and now - down >= DETECTION_S
            if not self.load_telemetry:
                recent = []
            busy = self.load_telemetry
            states.append(self.topology.factory_state(
                f, now, running=runtime.running if busy else 0,
                waiting=runtime.queued if busy else 0,
                ttft_p50_s=statistics.median(recent) if recent else 0.0,
                ttft_p99_s=percentile(recent, 99) if recent else 0.0,
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
            rate = max(rate, self._window(group, now, PEAK_WINDOW_S)[0])
            demands.append(self.topology.demand(group, rate, prompt, output))
        states = self._states(now)
        self.version += 1
        plan = solve(states, self.sites, demands, previous=self.plan, options=self.options,
                     version=self.version)
        # As the control plane's solve loop: a route the new plan empties only because of
        # telemetry keeps the previous plan's factories (fail static, topology/hold.py).
        plan, _ = hold_lost_routes(plan, self.plan, states, self.sites, demands)
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

    def deadline(self, req: Req, factory_id: str) -> float:
        return self.sidecars[req.site].deadline(req, factory_id)

    def on_load_report(self, req: Req, factory_id: str, now: float, waiting: int) -> None:
        self.sidecars[req.site].loads.record(factory_id, float(waiting), now)

    def on_first_token(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].attempt_over(req)

    def on_deadline(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].attempt_over(req)
        self.sidecars[req.site].missed_deadline(factory_id, now)

    def on_failure(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].attempt_over(req)
        self.sidecars[req.site].eject(factory_id, now)

    def on_success(self, req: Req, factory_id: str, now: float) -> None:
        self.sidecars[req.site].attempt_over(req)
        self.sidecars[req.site].succeeded(req, factory_id)
