"""The routing LP, solved with OR-Tools GLOP: shares of each demand group per factory.

Variables, for each group g and primary-eligible factory f:
  x[g,f] in [0,1]   share of g served by f
  u[g]   in [0,1]   share of g left unserved (penalised far above any real cost, so an overloaded
                    network still has a plan and says what it could not carry)
  s[f,k] >= 0       planned concurrency at f in capacity segment k (convex queueing cost)
  d[g,f] >= |x[g,f] - x_prev[g,f]|  churn against the previous plan
Constraints: sum_f x[g,f] + u[g] = 1; sum_g x[g,f] * concurrency[g,f] = sum_k s[f,k], each
s[f,k] <= capacity_f / K (so planned concurrency stays under capacity with headroom); output
tokens/s under the factory's token-rate capacity when it declares one.
Objective: sum rate_g * (cost[g,f] x + churn d + penalty u) + sum marginal_k * s[f,k].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ortools.linear_solver import pywraplp

from tdn.topology.problem import (
    Assignment,
    GroupKey,
    Problem,
    queueing_marginal_costs,
    unserved_penalty,
)

# Shares below this are solver noise, not routing decisions.
_ZERO = 1e-9

_STATUS_NAMES = {
    pywraplp.Solver.INFEASIBLE: "infeasible",
    pywraplp.Solver.UNBOUNDED: "unbounded",
    pywraplp.Solver.ABNORMAL: "abnormal",
    pywraplp.Solver.MODEL_INVALID: "model invalid",
    pywraplp.Solver.NOT_SOLVED: "not solved",
}


class LpFailed(Exception):
    """GLOP gave no usable solution; ``reason`` is a short phrase for the plan status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def solve_lp(problem: Problem, seconds_left: Callable[[], float]) -> Assignment:
    """Solve the LP; raise :class:`LpFailed` when GLOP returns no optimal or feasible point.

    ``seconds_left`` says how much of the solve's time limit remains: building a large model
    takes time too, and the limit is the operator's budget for the whole solve, not for GLOP.
    """
    options = problem.options
    solver = pywraplp.Solver.CreateSolver("GLOP")
    if solver is None:
        raise LpFailed("GLOP unavailable")
    objective = solver.Objective()
    x: dict[tuple[GroupKey, str], Any] = {}
    u: dict[GroupKey, Any] = {}
    load_terms: dict[str, list[tuple[Any, float]]] = {}
    token_terms: dict[str, list[tuple[Any, float]]] = {}

    for gi, group in enumerate(problem.groups):
        if seconds_left() <= 0:
            raise LpFailed(
                f"lp model took the whole time limit {options.time_limit_s:g} s to build")
        rate = group.objective_rate
        served = solver.Constraint(1.0, 1.0)
        u[group.key] = solver.NumVar(0.0, 1.0, f"u{gi}")
        served.SetCoefficient(u[group.key], 1.0)
        objective.SetCoefficient(u[group.key], rate * unserved_penalty(group, options))
        prev = problem.previous.get(group.key)
        for c in group.primaries:
            var = solver.NumVar(0.0, 1.0, f"x{gi}_{c.factory_id}")
            x[group.key, c.factory_id] = var
            served.SetCoefficient(var, 1.0)
            objective.SetCoefficient(var, rate * c.cost)
            load_terms.setdefault(c.factory_id, []).append((var, c.concurrency))
            token_terms.setdefault(c.factory_id, []).append(
                (var, group.demand.rate_rps * group.demand.output_tokens))
            if prev is not None and options.churn_penalty > 0:
                # d >= x - p and d >= p - x, so d = |x - p| at the optimum.
                p = prev.get(c.factory_id, 0.0)
                d = solver.NumVar(0.0, 1.0, f"d{gi}_{c.factory_id}")
                objective.SetCoefficient(d, rate * options.churn_penalty)
                up = solver.Constraint(-p, solver.infinity())
                up.SetCoefficient(d, 1.0)
                up.SetCoefficient(var, -1.0)
                down = solver.Constraint(p, solver.infinity())
                down.SetCoefficient(d, 1.0)
                down.SetCoefficient(var, 1.0)

    marginals = queueing_marginal_costs(options)
    for fid in sorted(load_terms):
        segment_size = problem.capacity[fid] / len(marginals)
        balance = solver.Constraint(0.0, 0.0)
        for var, conc in load_terms[fid]:
            balance.SetCoefficient(var, conc)
        for k, marginal in enumerate(marginals):
            seg = solver.NumVar(0.0, segment_size, f"s_{fid}_{k}")
            balance.SetCoefficient(seg, -1.0)
            objective.SetCoefficient(seg, marginal)
        if fid in problem.output_capacity:
            tokens = solver.Constraint(0.0, problem.output_capacity[fid])
            for var, tps in token_terms[fid]:
                tokens.SetCoefficient(var, tps)
    objective.SetMinimization()

    remaining = seconds_left()
    if remaining <= 0:
        raise LpFailed(f"lp model took the whole time limit {options.time_limit_s:g} s to build")
    solver.SetTimeLimit(max(1, int(remaining * 1000)))
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        name = _STATUS_NAMES.get(status, f"status {status}")
        if status == pywraplp.Solver.NOT_SOLVED:
            name = f"{name} within time limit {options.time_limit_s:g} s"
        raise LpFailed(f"lp {name}")

    shares: dict[GroupKey, dict[str, float]] = {}
    for (key, fid), var in x.items():
        value = min(max(var.solution_value(), 0.0), 1.0)
        if value > _ZERO:
            shares.setdefault(key, {})[fid] = value
    unserved = {key: min(max(var.solution_value(), 0.0), 1.0) for key, var in u.items()}
    return Assignment(
        shares=shares,
        unserved=unserved,
        objective=objective.Value(),
        status="optimal" if status == pywraplp.Solver.OPTIMAL else "feasible",
    )
