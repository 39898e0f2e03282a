"""The solve loop: turns the registry's view of the network into a plan and per-site policies.

It solves every ``interval`` seconds and soon after a significant change (a new factory, a health
or admin change), debounced: a burst of changes (a region going dark reports many factories at
once) waits for a short quiet window, but never longer than ``max_delay`` after the first change.
The OR-Tools solve runs in a worker thread so telemetry and discovery streams keep flowing.

Plan versions increase monotonically and are persisted in the Store before a plan is published
(a plan the store refuses is not served at all), so a restarted control plane or a newly elected
leader continues above every version a sidecar may run. Only the leader runs :meth:`SolveLoop.run`
(see :mod:`tdn.controlplane.ha`); the other replicas :meth:`SolveLoop.adopt` what it stores.
If a solve raises, the previous plan stays in force and the reason is kept for operators. After a
(re)start the first solve waits one TTL (``warmup``): until then silence does not yet mean a
factory is gone, and a plan made before agents reconnected would push empty routes to sidecars
that still hold good ones.

Besides those changes, a solve is due when prices, carbon, load, latency or demand have drifted
beyond the policy's thresholds since the last one (:meth:`SolveLoop.check_drift`, called by the
owner's periodic sweep; :mod:`tdn.topology.drift` decides). Demand is the
:class:`~tdn.controlplane.demand.DemandEstimator`'s (observed traffic, smoothed; the network
file's where nothing was observed), and the operator's policy (:meth:`SolveLoop.set_policy`)
sets the solve options and the per-group rules; each plan keeps the inputs it was solved from so
that ``tdn explain`` answers in the solver's own terms.

Fail static: a route the new plan would leave empty only because telemetry went dark (or says
every factory it used is down or full) keeps its previous factories (:mod:`tdn.topology.hold`):
a control plane cut off from its agents must not empty every sidecar's routes. Held routes are
counted in ``tdn_plan_routes_held`` and named in the plan's status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tdn.controlplane.demand import DemandEstimator
from tdn.controlplane.durable_state import load_plan_record
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.plan_store import PlanStore
from tdn.controlplane.registry import Change, FactoryRegistry
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.domain import Demand, FactoryState, Plan, Site, SitePolicy
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.store.base import Store
from tdn.store.errors import StoreError
from tdn.topology.compile import compile_site_policies
from tdn.topology.drift import demand_drift, factory_drift
from tdn.topology.hold import held_sites, hold_lost_routes
from tdn.topology.options import SolveOptions, options_from_policy
from tdn.topology.solver import SolveInputs, solve

log = logging.getLogger(__name__)

Solver = Callable[..., Plan]


@dataclass(frozen=True, slots=True)
class PlanStatus:
    """The plan in force and the outcome of the latest solve, as operators see them."""

    version: int
    status: str
    solved_at: float
    objective: float
    solve_seconds: float
    # Why the latest solve did not replace the plan (or could not be persisted); "" when fine.
    last_error: str
    # The operator policy revision the plan in force was solved under.
    policy_revision: int = 0

    @property
    def summary(self) -> str:
        if not self.version:
            return "no plan yet" + (f"; last solve failed: {self.last_error}"
                                    if self.last_error else "")
        if self.last_error:
            return f"{self.status}; last solve failed, previous plan kept: {self.last_error}"
        return self.status


@dataclass(frozen=True, slots=True)
class _Outcome:
    plan: Plan
    policies: dict[str, SitePolicy]
    seconds: float
    inputs: SolveInputs
    held: int = 0
    policy_revision: int = 0


class SolveLoop:
    """Owns the current plan; its :meth:`run` is a long-lived task of the control plane."""

    def __init__(self, *, registry: FactoryRegistry, cache: SnapshotCache, store: Store,
                 metrics: ControlPlaneMetrics, sites: Sequence[Site], demands: Sequence[Demand],
                 interval: float = 5.0, quiet: float = 0.1, max_delay: float = 1.0,
                 warmup: float = 0.0, options: SolveOptions | None = None,
                 solver: Solver = solve, clock: Callable[[], float] = time.time,
                 publisher: PlanStore | None = None,
                 demand: DemandEstimator | None = None) -> None:
        self._registry = registry
        # Writes each plan to the store before it is served (see plan_store).
        self.publisher = publisher if publisher is not None else PlanStore(store, cache)
        self._cache = cache
        self._store = store
        self._metrics = metrics
        self._sites = tuple(sites)
        self._demands = tuple(demands)
        self._interval = interval
        self._quiet = quiet
        self._max_delay = max_delay
        self._warmup = warmup
        # The settings' options carry what a policy does not set; until an operator applies
        # one, the built-in default policy's knobs (share cap, sole-factory reservation) apply,
        # so a fresh control plane routes as the policy documentation and the benchmarks say.
        self._base_options = options or SolveOptions()
        self._options = options_from_policy(DEFAULT_POLICY, self._base_options)
        self._policy: Policy = DEFAULT_POLICY
        self._policy_revision = 0
        self.demand = demand or DemandEstimator(demands, sites=[s.id for s in sites],
                                                clock=clock)
        # What the plan in force was solved from (None for a plan adopted from the store).
        self._inputs: SolveInputs | None = None
        self._inputs_version = 0
        self._solver = solver
        self._clock = clock
        self._signal = asyncio.Event()
        self._first_signal: float | None = None
        self._plan: Plan | None = None
        self._version = 0  # the highest version handed out or found in the store
        self._solved_at = 0.0
        self._plan_policy_revision = 0
        self._last_error = ""
        self._solves = 0

    # --- state ---------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        return self._plan

    @property
    def inputs(self) -> SolveInputs | None:
        """What the plan in force was solved from, when this replica solved it."""
        plan = self._plan
        if plan is None or plan.version != self._inputs_version:
            return None  # adopted from the leader: its inputs are not here
        return self._inputs

    def explain_inputs(self) -> tuple[SolveInputs, bool]:
        """The inputs to explain the plan in force with, and whether they are exactly what it
        was solved from (False: this replica adopted it, so today's view stands in)."""
        inputs = self.inputs
        if inputs is not None:
            return inputs, True
        now = self._clock()
        return SolveInputs(self._registry.states(now), self._sites, self.current_demands(now),
                           self._options, self._policy, None), False

    @property
    def policy(self) -> tuple[Policy, int]:
        """The operator policy in force and its revision (0: the built-in default)."""
        return self._policy, self._policy_revision

    def set_policy(self, policy: Policy, revision: int) -> None:
        """Put an operator policy in force and solve with it soon."""
        self._policy, self._policy_revision = policy, revision
        self._options = options_from_policy(policy, self._base_options)
        self.demand.set_half_life(policy.demand.half_life_s)
        self.notify()

    def current_demands(self, now: float | None = None) -> tuple[Demand, ...]:
        return self.demand.demands(self._clock() if now is None else now, self._policy)

    def check_drift(self, now: float | None = None) -> str:
        """Ask for a solve when prices, load or demand moved beyond the policy's thresholds
        since the plan in force was solved; return the reason ("" when nothing did)."""
        inputs = self._inputs
        if inputs is None:
            return ""
        now = self._clock() if now is None else now
        thresholds = self._policy.solver.resolve_on
        reason = (factory_drift(inputs.factories, self._registry.states(now), thresholds)
                  or demand_drift(inputs.demands, self.current_demands(now), thresholds))
        if reason and self._first_signal is None:
            log.info("solve requested: %s", reason)
            self.notify()
        return reason

    @property
    def solves(self) -> int:
        """Completed solve attempts (successful or not); lets callers wait for a fresh one."""
        return self._solves

    def status(self) -> PlanStatus:
        plan = self._plan
        return PlanStatus(
            version=plan.version if plan else 0,
            status=plan.status if plan else "",
            solved_at=self._solved_at,
            objective=plan.objective if plan else 0.0,
            solve_seconds=plan.solve_seconds if plan else 0.0,
            last_error=self._last_error,
            policy_revision=self._plan_policy_revision,
        )

    async def load(self) -> None:
        """Continue numbering above the last version persisted by any earlier run."""
        record = await load_plan_record(self._store)
        if record is not None:
            self._version = max(self._version, record.version)
            log.info("continuing plan versions above %d (from the store)", record.version)

    def adopt(self, plan: Plan, solved_at: float, policy_revision: int = 0) -> None:
        """Take ``plan`` (solved by the leader under ``policy_revision``, read from the store)
        as the plan in force."""
        if self._plan is not None and plan.version <= self._plan.version:
            return
        self._plan, self._solved_at = plan, solved_at
        self._plan_policy_revision = policy_revision
        self._version = max(self._version, plan.version)
        self._last_error = ""
        self._metrics.plan_version.set(plan.version)

    def reserve_above(self, version: int) -> None:
        """Number the next plan above ``version`` (the highest the store holds)."""
        self._version = max(self._version, version)

    # --- triggers ------------------------------------------------------------------------------

    def notify(self, change: Change | None = None) -> None:
        """Ask for a solve soon (debounced); safe to call from any code on the event loop."""
        if self._first_signal is None:
            self._first_signal = time.monotonic()
        self._signal.set()
        if change is not None:
            log.debug("solve requested: %s %s (%s)", change.factory_id, change.kind,
                      change.detail)

    async def _next_trigger(self) -> None:
        try:
            async with asyncio.timeout(self._interval):
                await self._signal.wait()
        except TimeoutError:
            return  # the periodic solve: prices and load drift without significant changes
        first = self._first_signal if self._first_signal is not None else time.monotonic()
        while True:
            self._signal.clear()
            remaining = first + self._max_delay - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(min(self._quiet, remaining)):
                    await self._signal.wait()
            except TimeoutError:
                break  # quiet long enough
        self._signal.clear()
        self._first_signal = None

    async def run(self, warmup: float | None = None) -> None:
        """Solve forever: at start (after the warm-up), periodically and on change.

        ``warmup`` overrides the configured one (a replica elected leader long after it
        started needs none).
        """
        warmup = self._warmup if warmup is None else warmup
        if warmup > 0:
            await asyncio.sleep(warmup)
        # Changes seen during the warm-up are covered by the first solve.
        self._signal.clear()
        self._first_signal = None
        while True:
            await self.solve_once()
            await self._next_trigger()

    # --- solving -------------------------------------------------------------------------------

    def _solve_and_compile(self, factories: tuple[FactoryState, ...],
                           previous: Plan | None, version: int, now: float) -> _Outcome:
        started = time.perf_counter()
        rules, options, revision = self._policy, self._options, self._policy_revision
        inputs = SolveInputs(factories, self._sites, self.current_demands(now), options, rules,
                             previous)
        plan = self._solver(factories, self._sites, inputs.demands, previous=previous,
                            options=options, version=version, policy=rules)
        if plan.version != version:
            raise RuntimeError(f"solver returned plan version {plan.version}, asked for {version}")
        plan, held = hold_lost_routes(plan, previous, factories, self._sites, inputs.demands,
                                      policy=rules)
        if held:
            log.warning("plan %d: %d route(s) held from the previous plan (fail static) at %s",
                        version, len(held), ", ".join(held_sites(held)))
        policies = compile_site_policies(plan, factories, self._sites, generated_at=now,
                                         policy=rules)
        for policy in policies.values():
            policy.check()  # never publish a policy naming a factory it does not ship
        return _Outcome(plan, dict(policies), time.perf_counter() - started, inputs, len(held),
                        revision)

    async def solve_once(self) -> Plan | None:
        """Solve now; publish and return the new plan, or keep the previous one on failure."""
        now = self._clock()
        factories = self._registry.states(now)
        version = self._version + 1
        try:
            outcome = await asyncio.to_thread(self._solve_and_compile, factories, self._plan,
                                              version, now)
        except Exception as exc:
            # A solver bug or an unexpected input must not take routing down: the previous plan
            # (already in every sidecar) stays in force and the reason is visible.
            self._solves += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._metrics.solves.labels(result="error").inc()
            log.exception("solve for plan version %d failed; previous plan kept", version)
            return None
        self._solves += 1
        # The number is used up even if the plan cannot be stored: part of it may have been.
        self._version = version
        plan = outcome.plan
        solved_at = now
        self._metrics.solve_seconds.observe(outcome.seconds)
        try:
            changed = await self.publisher.publish(plan, outcome.policies, solved_at,
                                                   policy_revision=outcome.policy_revision)
        except StoreError as exc:
            # A version no replica can read back is served by none: a later leader would not
            # know it and could reuse its number for other routes. The previous plan stands.
            self._last_error = f"plan version {version} not stored, so not served: {exc}"
            self._metrics.solves.labels(result="store_error").inc()
            log.error("%s", self._last_error)
            return None
        self._last_error = ""
        # A greedy fallback is a plan too, but operators must see that the LP did not answer.
        self._metrics.solves.labels(
            result="fallback" if plan.status.startswith("fallback") else "ok").inc()
        self._plan, self._solved_at = plan, solved_at
        self._plan_policy_revision = outcome.policy_revision
        self._inputs, self._inputs_version = outcome.inputs, version
        self._metrics.plan_version.set(version)
        self._metrics.routes_held.set(outcome.held)
        self._metrics.planned_demand.clear()
        for d in outcome.inputs.demands:
            self._metrics.planned_demand.labels(
                site=d.site, model=d.model, traffic_class=d.traffic_class).set(d.rate_rps)
        log.info("plan %d: %s in %.3fs; new policy versions for %s", version, plan.status,
                 outcome.seconds, ", ".join(changed) or "no site")
        return plan
