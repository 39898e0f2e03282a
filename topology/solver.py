"""The routing solver: demand per (site, model, class) onto factories, as a :class:`Plan`.

``solve`` judges eligibility (:mod:`.eligibility`), prices every eligible pair (:mod:`.costs`),
solves the LP with GLOP under a time limit (:mod:`.lp`) and turns the shares into routes with
backups (:mod:`.routes`). It is pure: the only clock read is ``time.perf_counter``, to report how
long the solve took and to keep it within its time limit; the same input, solved within the
limit, gives the same plan.

Plan.status grammar: a head, then optional notes each after "; ".
  head   "optimal" | "feasible" | "fallback:<reason>"
  notes  "no eligible factory for <site>/<model>/<class>" | "unserved <site>/<model>/<class> <n>%"
A solver failure never raises: when GLOP fails, times out or raises, the greedy assignment
(cheapest eligible factory with spare capacity first) is returned with status "fallback:<why>".
That plan is valid for the *current* state, so it is usually safer than an older optimal plan
that may route to factories that have since failed; a caller holding a previous plan may still
prefer to keep it (for example while the fallback leaves more demand unserved), and should show
the fallback status either way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from tdn.domain import Demand, FactoryState, Plan, Route, Site
from tdn.topology.greedy import assign_greedily
from tdn.topology.lp import LpFailed, solve_lp
from tdn.topology.options import SolveOptions
from tdn.topology.problem import Assignment, Problem, build_problem
from tdn.topology.routes import build_route

__all__ = ["DEFAULT_OPTIONS", "SolveOptions", "greedy", "solve"]

# Frozen, so one shared default instance is safe.
DEFAULT_OPTIONS = SolveOptions()

# Unserved shares below this are rounding, not news.
_UNSERVED_NOTE_THRESHOLD = 0.005
_MAX_NOTES = 10


def solve(factories: Sequence[FactoryState], sites: Sequence[Site], demands: Sequence[Demand],
          *, previous: Plan | None = None, options: SolveOptions = DEFAULT_OPTIONS,
          version: int = 1) -> Plan:
    """Compute a plan; ``previous`` damps churn (its primary splits are kept when costs tie)."""
    started = time.perf_counter()
    options.validate()
    problem = build_problem(factories, sites, demands, previous, options)
    try:
        assignment = solve_lp(
            problem, lambda: options.time_limit_s - (time.perf_counter() - started))
    except LpFailed as exc:
        assignment = assign_greedily(problem, f"fallback:{exc.reason}")
    except Exception as exc:
        # The plan must still come out; the status carries the error so it is seen, not hidden.
        assignment = assign_greedily(
            problem, f"fallback:lp raised {type(exc).__name__}: {exc}")
    return _plan(problem, assignment, version, time.perf_counter() - started)


def greedy(factories: Sequence[FactoryState], sites: Sequence[Site], demands: Sequence[Demand],
           *, options: SolveOptions = DEFAULT_OPTIONS, version: int = 1,
           reason: str = "greedy requested") -> Plan:
    """The fallback plan on its own: cheapest eligible factory with spare capacity first."""
    started = time.perf_counter()
    options.validate()
    problem = build_problem(factories, sites, demands, None, options)
    assignment = assign_greedily(problem, f"fallback:{reason}")
    return _plan(problem, assignment, version, time.perf_counter() - started)


def _plan(problem: Problem, assignment: Assignment, version: int, elapsed_s: float) -> Plan:
    options = problem.options
    routes: list[tuple[str, Route]] = []
    notes: list[str] = []
    for group in problem.groups:
        shares = assignment.shares.get(group.key, {})
        route = build_route(group, shares, options.min_primary_share, options.backup_depth,
                            problem.capacity)
        routes.append((group.key[0], route))
        if not group.primaries:
            notes.append(f"no eligible factory for {group.label}")
        elif assignment.unserved.get(group.key, 0.0) > _UNSERVED_NOTE_THRESHOLD:
            percent = round(assignment.unserved[group.key] * 100)
            notes.append(f"unserved {group.label} {percent}%")
    if len(notes) > _MAX_NOTES:
        notes = [*notes[:_MAX_NOTES], f"and {len(notes) - _MAX_NOTES} more"]
    return Plan(
        version=version,
        routes=tuple(routes),
        status="; ".join([assignment.status, *notes]),
        objective=assignment.objective,
        solve_seconds=elapsed_s,
        exclusions=problem.exclusions,
    )
