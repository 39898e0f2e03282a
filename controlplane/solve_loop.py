"""The solve loop: turns the registry's view of the network into a plan and per-site policies.

It solves every ``interval`` seconds and soon after a significant change (a new factory, a health
or admin change), debounced: a burst of changes (a region going dark reports many factories at
once) waits for a short quiet window, but never longer than ``max_delay`` after the first change.
The OR-Tools solve runs in a worker thread so telemetry and discovery streams keep flowing.

Plan versions increase monotonically and are persisted in the Store before a plan is published,
so a restarted control plane continues above every version a sidecar may run. If a solve raises,
the previous plan stays in force and the reason is kept for operators. After a (re)start the first
solve waits one TTL (``warmup``): until then silence does not yet mean a factory is gone, and a
plan made before agents reconnected would push empty routes to sidecars that still hold good ones.

Demand comes from the network description's ``demand`` list for now; estimating it from observed
traffic (usage reports, agents' token counters) is a later step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tdn.controlplane.durable_state import PlanRecord, load_plan_record, save_plan_record
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.registry import Change, FactoryRegistry
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.domain import Demand, FactoryState, Plan, Site, SitePolicy
from tdn.store.base import Store
from tdn.store.errors import StoreError
from tdn.topology.compile import compile_site_policies
from tdn.topology.options import SolveOptions
from tdn.topology.solver import solve

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


class SolveLoop:
    """Owns the current plan; its :meth:`run` is a long-lived task of the control plane."""

    def __init__(self, *, registry: FactoryRegistry, cache: SnapshotCache, store: Store,
                 metrics: ControlPlaneMetrics, sites: Sequence[Site], demands: Sequence[Demand],
                 interval: float = 5.0, quiet: float = 0.1, max_delay: float = 1.0,
                 warmup: float = 0.0, options: SolveOptions | None = None,
                 solver: Solver = solve, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._cache = cache
        self._store = store
        self._metrics = metrics
        self._sites = tuple(sites)
        self._demands = tuple(demands)
        self._interval = interval
        self._quiet = quiet
        self._max_delay = max_delay
        self._warmup = warmup
        self._options = options or SolveOptions()
        self._solver = solver
        self._clock = clock
        self._signal = asyncio.Event()
        self._first_signal: float | None = None
        self._plan: Plan | None = None
        self._version = 0  # the highest version handed out or found in the store
        self._solved_at = 0.0
        self._last_error = ""
        self._solves = 0

    # --- state ---------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        return self._plan

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
        )

    async def load(self) -> None:
        """Continue numbering above the last version persisted by any earlier run."""
        record = await load_plan_record(self._store)
        if record is not None:
            self._version = max(self._version, record.version)
            log.info("continuing plan versions above %d (from the store)", record.version)

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

    async def run(self) -> None:
        """Solve forever: at start (after the warm-up), periodically and on change."""
        if self._warmup > 0:
            await asyncio.sleep(self._warmup)
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
        plan = self._solver(factories, self._sites, self._demands, previous=previous,
                            options=self._options, version=version)
        if plan.version != version:
            raise RuntimeError(f"solver returned plan version {plan.version}, asked for {version}")
        policies = compile_site_policies(plan, factories, self._sites, generated_at=now)
        for policy in policies.values():
            policy.check()  # never publish a policy naming a factory it does not ship
        return _Outcome(plan, dict(policies), time.perf_counter() - started)

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
        self._version = version
        plan = outcome.plan
        solved_at = now
        self._metrics.solve_seconds.observe(outcome.seconds)
        try:
            await save_plan_record(self._store, PlanRecord(version, plan.status, solved_at))
        except StoreError as exc:
            # Routing comes first: publish anyway, and say that the number is not yet durable.
            self._last_error = f"plan version {version} not persisted: {exc}"
            self._metrics.solves.labels(result="store_error").inc()
            log.error("%s", self._last_error)
        else:
            self._last_error = ""
            self._metrics.solves.labels(result="ok").inc()
        self._plan, self._solved_at = plan, solved_at
        self._metrics.plan_version.set(version)
        changed = self._cache.update(outcome.policies)
        log.info("plan %d: %s in %.3fs; new policy versions for %s", version, plan.status,
                 outcome.seconds, ", ".join(changed) or "no site")
        return plan
