"""The routing solver: demand per (site, model, class) onto factories, as a :class:`Plan`.

``solve`` judges and prices every (group, factory) pair (:mod:`.problem`), solves the LP with
GLOP under a time limit (:mod:`.lp`) and turns the shares into routes with backup levels that
reserve capacity for failover (:mod:`.routes`, :mod:`.backups`). It is pure: the only clock read
is ``time.perf_counter``, to report how long the solve took and to keep it within its time limit;
the same input, solved within the limit, gives the same plan.

An operator's :class:`~tdn.policy.Policy` supplies the solve options (unless ``options`` are
given explicitly) and the per-group rules: class SLOs, tenants' zones, price caps, aliases.

Plan.status grammar: a head, then optional notes each after "; ".
  head   "optimal" | "feasible" | "fallback:<reason>"
  notes  "no eligible factory for <site>/<model>/<class>" | "unserved <site>/<model>/<class> <n>%"
         | "factory loss not absorbed for <n>/<m> groups (<group>: <why>, ...)"
         | "region loss not absorbed for <n>/<m> groups (<group>: <why>, ...)"
A solver failure never raises: when GLOP fails, times out or raises, the greedy assignment
(marginal-cost water-filling, refined by swaps and re-pouring for at most one more time limit)
is returned with status "fallback:<why>".
That plan is valid for the *current* state, so it is usually safer than an older optimal plan
that may route to factories that have since failed; a caller holding a previous plan may still
prefer to keep it, and should show the fallback status either way.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tdn.domain import Demand, FactoryState, Plan, Site
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.topology.backups import Protection
from tdn.topology.greedy import assign_greedily
from tdn.topology.lp import LpFailed, solve_lp
from tdn.topology.options import SolveOptions, options_from_policy
from tdn.topology.problem import GroupKey, Problem, Solution, build_problem
from tdn.topology.routes import build_routes

__all__ = ["DEFAULT_OPTIONS", "SolveInputs", "SolveOptions", "SolveResult", "greedy", "solve",
           "solve_detailed"]

# Frozen, so one shared default instance is safe.
DEFAULT_OPTIONS = SolveOptions()

# Unserved shares below this are rounding, not news.
_UNSERVED_NOTE_THRESHOLD = 0.005
_MAX_NOTES = 10
_EXAMPLES_PER_NOTE = 3


@dataclass(frozen=True, slots=True)
class SolveInputs:
    """Everything one solve read, so that it can be explained and checked afterwards."""

    factories: tuple[FactoryState, ...]
    sites: tuple[Site, ...]
    demands: tuple[Demand, ...]
    options: SolveOptions
    policy: Policy = DEFAULT_POLICY
    previous: Plan | None = None


@dataclass(frozen=True, slots=True)
class SolveResult:
    """A plan with what the solve learned on the way: per-group failure protection and the
    size of the LP it needed."""

    plan: Plan
    inputs: SolveInputs
    protection: Mapping[GroupKey, Protection]
    # The assignment the routes were rounded from: each group's share per factory, and the
    # share left unserved (what no capacity could take).
    shares: Mapping[GroupKey, Mapping[str, float]] = dataclasses.field(default_factory=dict)
    unserved: Mapping[GroupKey, float] = dataclasses.field(default_factory=dict)
    # Usable (group, factory) pairs, and those eligible as primaries.
    pairs: int = 0
    eligible: int = 0


def effective_options(options: SolveOptions | None, policy: Policy | None) -> SolveOptions:
    if options is not None:
        return options
    return options_from_policy(policy) if policy is not None else DEFAULT_OPTIONS


def solve_detailed(factories: Sequence[FactoryState], sites: Sequence[Site],
                   demands: Sequence[Demand], *, previous: Plan | None = None,
                   options: SolveOptions | None = None, version: int = 1,
                   policy: Policy | None = None) -> SolveResult:
    """Compute a plan; ``previous`` damps churn (its primary splits are kept when costs tie)."""
    started = time.perf_counter()
    opts = effective_options(options, policy)
    opts.validate()
    rules = policy or DEFAULT_POLICY
    inputs = SolveInputs(tuple(factories), tuple(sites), tuple(demands), opts, rules, previous)
    problem = build_problem(factories, sites, demands, previous, opts, policy=rules)
    # A quick greedy pass seeds the LP with the columns contention needs; only when the LP
    # fails is the greedy refined into the fallback plan.
    seed = assign_greedily(problem, "greedy", passes=0)
    try:
        solution = solve_lp(
            problem, lambda: opts.time_limit_s - (time.perf_counter() - started), seed)
    except LpFailed as exc:
        solution = _fallback(problem, f"fallback:{exc.reason}")
    except Exception as exc:
        # The plan must still come out; the status carries the error so it is seen, not hidden.
        solution = _fallback(problem, f"fallback:lp raised {type(exc).__name__}: {exc}")
    return _result(problem, solution, inputs, version, started)


def _fallback(problem: Problem, status: str) -> Solution:
    """The greedy plan, refined for at most one more time limit: a fallback that arrives long
    after the LP was given up on helps nobody (the cheapest assignment found by then stands;
    on a network small enough to refine within it, the same input gives the same plan)."""
    started = time.perf_counter()
    limit = problem.options.time_limit_s
    return assign_greedily(problem, status,
                           seconds_left=lambda: limit - (time.perf_counter() - started))


def solve(factories: Sequence[FactoryState], sites: Sequence[Site], demands: Sequence[Demand],
          *, previous: Plan | None = None, options: SolveOptions | None = None,
          version: int = 1, policy: Policy | None = None) -> Plan:
    """:func:`solve_detailed`, returning only the plan."""
    return solve_detailed(factories, sites, demands, previous=previous, options=options,
                          version=version, policy=policy).plan


def greedy(factories: Sequence[FactoryState], sites: Sequence[Site], demands: Sequence[Demand],
           *, previous: Plan | None = None, options: SolveOptions | None = None,
           version: int = 1, reason: str = "greedy requested",
           policy: Policy | None = None) -> Plan:
    """The fallback plan on its own. Its ``objective`` is the LP's objective function evaluated
    on the greedy assignment, so comparing it with :func:`solve`'s gives the fallback's gap."""
    started = time.perf_counter()
    opts = effective_options(options, policy)
    opts.validate()
    rules = policy or DEFAULT_POLICY
    inputs = SolveInputs(tuple(factories), tuple(sites), tuple(demands), opts, rules, previous)
    problem = build_problem(factories, sites, demands, previous, opts, policy=rules)
    solution = _fallback(problem, f"fallback:{reason}")
    return _result(problem, solution, inputs, version, started).plan


def _protection_note(problem: Problem, reasons: Sequence[str], what: str,
                     failed: Sequence[int]) -> str:
    examples = ", ".join(f"{problem.label(g)}: {reasons[g]}" for g in failed[:_EXAMPLES_PER_NOTE])
    more = f", and {len(failed) - _EXAMPLES_PER_NOTE} more" if len(
        failed) > _EXAMPLES_PER_NOTE else ""
    return (f"{what} loss not absorbed for {len(failed)}/{problem.group_count} groups "
            f"({examples}{more})")


def _result(problem: Problem, solution: Solution, inputs: SolveInputs, version: int,
            started: float) -> SolveResult:
    routes, protection = build_routes(problem, solution)
    notes: list[str] = []
    eligible = np.bincount(problem.group[problem.primary], minlength=problem.group_count)
    for g in range(problem.group_count):
        if not eligible[g]:
            notes.append(f"no eligible factory for {problem.label(g)}")
        elif solution.unserved[g] > _UNSERVED_NOTE_THRESHOLD:
            percent = round(float(solution.unserved[g]) * 100)
            notes.append(f"unserved {problem.label(g)} {percent}%")
    if len(notes) > _MAX_NOTES:
        notes = [*notes[:_MAX_NOTES], f"and {len(notes) - _MAX_NOTES} more"]
    served = [g for g in range(problem.group_count) if routes[g].primary]
    factory_lost = [g for g in served if not protection[g].factory_failure]
    region_lost = [g for g in served if not protection[g].region_failure]
    if factory_lost:
        notes.append(_protection_note(problem, [p.factory_reason for p in protection],
                                      "factory", factory_lost))
    if region_lost:
        notes.append(_protection_note(problem, [p.region_reason for p in protection], "region",
                                      region_lost))
    plan = Plan(
        version=version,
        routes=tuple((problem.keys[g][0], routes[g]) for g in range(problem.group_count)),
        status="; ".join([solution.status, *notes]),
        objective=solution.objective,
        solve_seconds=time.perf_counter() - started,
        exclusions=problem.exclusions(),
    )
    return SolveResult(
        plan=plan, inputs=inputs,
        protection={problem.keys[g]: protection[g] for g in range(problem.group_count)},
        shares=_shares(problem, solution),
        unserved={problem.keys[g]: float(solution.unserved[g])
                  for g in range(problem.group_count)},
        pairs=len(problem.group), eligible=int(problem.primary.sum()),
    )


def _shares(problem: Problem, solution: Solution) -> dict[GroupKey, dict[str, float]]:
    shares: dict[GroupKey, dict[str, float]] = {key: {} for key in problem.keys}
    used = np.flatnonzero(solution.x > 0)
    for j, g, f in zip(used.tolist(), problem.group[used].tolist(),
                       problem.factory[used].tolist(), strict=True):
        shares[problem.keys[g]][problem.factories.id(f)] = float(solution.x[j])
    return shares
