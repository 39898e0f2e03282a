"""The routing LP, solved with OR-Tools GLOP by column generation.

Variables, for each group g and primary-eligible factory f *in the model*:
  x[g,f] in [0,1]   share of g served by f; when the previous plan gave f a share p > 0 it is
                    split into y in [0,p] and z in [0,1-p], priced cost - churn and cost + churn,
                    which charges churn * |x - p| without extra rows
  u[g]   in [0,1]   share of g left unserved (priced far above any real cost, so an overloaded
                    network still has a plan and says what it could not carry)
  s[f,k] >= 0       planned concurrency at f in capacity segment k (convex queueing cost)
Rows: sum_f x[g,f] + u[g] = 1; sum_g x[g,f] * concurrency[g,f] = sum_k s[f,k] with each
s[f,k] <= capacity_f / K (planned concurrency stays under capacity with headroom); output
tokens/s under the factory's token-rate capacity when it declares one.
Objective: sum rate_g * (cost[g,f] x + churn + penalty u) + sum marginal_k * s[f,k].

A thousand factories against thousands of groups is a million candidate pairs, most of which no
optimum would use. The model therefore starts from each group's few cheapest candidates, its
previous primaries and whatever the greedy assignment used, and after every solve prices all
the others with the duals: a pair whose reduced cost is negative would lower the objective and
joins the model; when none is left (or the Lagrangian bound shows they could gain less than
0.001%), the restricted optimum is the optimum of the full LP. One GLOP instance is kept across
rounds so that each re-solve starts from the previous basis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from ortools.linear_solver import linear_solver_pb2, pywraplp

from tdn.topology.problem import Problem, Solution, queueing_marginal_costs
from tdn.topology.tables import Floats, Ints

# Shares below this are solver noise, not routing decisions.
_ZERO = 1e-9
# A pair joins the model when it would lower the objective by more than this per unit share:
# GLOP's own tolerances make anything smaller noise.
_PRICING_TOLERANCE = 1e-6
# Columns added per group per round: enough to move a whole group, few enough that one round of
# extreme duals (an unserved group prices every candidate it has) does not flood the model.
_COLUMNS_PER_GROUP = 3
# Pricing stops once the columns left out could lower the objective by at most this share:
# far below what any cost estimate is accurate to, and it saves the last, slowest rounds.
_OPTIMALITY_GAP = 1e-5
# Presolve would rebuild the problem on every re-solve and throw the previous basis away.
_GLOP_PARAMETERS = "use_preprocessing: false"


class LpFailed(Exception):
    """GLOP gave no usable solution; ``reason`` is a short phrase for the plan status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def initial_pairs(problem: Problem, seed: Solution | None = None) -> Ints:
    """The columns the LP starts from: each group's previous primaries, and every pair a seed
    solution (the greedy one) uses, or without a seed its ``min_candidates`` cheapest. The seed
    knows about contention for the cheapest factories, which cheapest-per-group cannot: started
    from it, pricing has little left to add (and a small first model solves fastest)."""
    prim = np.flatnonzero(problem.primary)
    if len(prim) == 0:
        return prim
    keep = problem.previous[prim] > 0
    if seed is not None:
        keep |= seed.x[prim] > 0
    else:
        groups = problem.group[prim]
        rank = np.arange(len(prim)) - np.searchsorted(groups, groups, side="left")
        keep |= rank < problem.options.min_candidates
    return prim[keep]


class _Model:
    """The LP in one persistent GLOP solver: fixed rows and queueing variables, columns added
    in rounds. Presolve is off so that each re-solve starts from the previous optimal basis
    (new columns enter it non-basic), which makes a pricing round a few hundred pivots."""

    def __init__(self, problem: Problem) -> None:
        self.p = problem
        o = problem.options
        solver = pywraplp.Solver.CreateSolver("GLOP")
        if solver is None:
            raise LpFailed("GLOP unavailable")
        if not solver.SetSolverSpecificParametersAsString(_GLOP_PARAMETERS):
            raise LpFailed(f"GLOP refused parameters {_GLOP_PARAMETERS!r}")
        self.solver = solver
        self.objective = solver.Objective()
        self.objective.SetMinimization()
        ft = problem.factories
        G = problem.group_count
        self.offset = 0.0
        self.served = [solver.Constraint(1.0, 1.0) for _ in range(G)]
        self.unserved = []
        for g, price in enumerate((problem.objective_rate * problem.penalty).tolist()):
            u = solver.NumVar(0.0, 1.0, "")
            self.served[g].SetCoefficient(u, 1.0)
            self.objective.SetCoefficient(u, price)
            self.unserved.append(u)
        marginals = queueing_marginal_costs(o)
        self.balance: dict[int, Any] = {}
        self.tokens: dict[int, Any] = {}
        for f in np.unique(problem.factory[problem.primary]).tolist():
            row = self.balance[f] = solver.Constraint(0.0, 0.0)
            segment = float(ft.capacity[f]) / len(marginals)
            for marginal in marginals:
                s = solver.NumVar(0.0, segment, "")
                row.SetCoefficient(s, -1.0)
                self.objective.SetCoefficient(s, marginal)
            if ft.token_capacity[f] > 0:
                self.tokens[f] = solver.Constraint(0.0, float(ft.token_capacity[f]))
        self.in_model = np.zeros(len(problem.group), dtype=np.bool_)
        # Column variables by index (creation order), and the pair each belongs to.
        self.column_var: list[int] = []
        self.column_pair: list[int] = []
        self.unserved_var = np.fromiter((u.index() for u in self.unserved), dtype=np.int64,
                                        count=G)
        self.served_row = np.fromiter((row.index() for row in self.served), dtype=np.int64,
                                      count=G)
        self.response = linear_solver_pb2.MPSolutionResponse()
        self.values: Floats = np.zeros(0)
        self.dual_values: Floats = np.zeros(0)

    def add(self, pairs: Ints) -> None:
        """Add the x columns of ``pairs`` (split in two where the previous plan had a share)."""
        p, solver, objective = self.p, self.solver, self.objective
        churn = p.options.churn_penalty
        for j, g, f, cost, conc, prev in zip(
                pairs.tolist(), p.group[pairs].tolist(), p.factory[pairs].tolist(),
                p.cost[pairs].tolist(), p.concurrency[pairs].tolist(),
                p.previous[pairs].tolist(), strict=True):
            rate = float(p.objective_rate[g])
            had_previous = bool(p.has_previous[g]) and churn > 0
            if had_previous and prev > 0:
                # |x - p| without rows: x = y + z, y in [0, p] saves churn, z costs it.
                parts = [(prev, cost - churn), (1.0 - prev, cost + churn)]
                self.offset += rate * churn * prev
            else:
                parts = [(1.0, cost + (churn if had_previous else 0.0))]
            token_row = self.tokens.get(f)
            tps = float(p.tokens_per_s[g])
            for upper, price in parts:
                var = solver.NumVar(0.0, upper, "")
                objective.SetCoefficient(var, rate * price)
                self.served[g].SetCoefficient(var, 1.0)
                self.balance[f].SetCoefficient(var, conc)
                if token_row is not None:
                    token_row.SetCoefficient(var, tps)
                self.column_var.append(var.index())
                self.column_pair.append(j)
        objective.SetOffset(self.offset)
        self.in_model[pairs] = True

    def read_solution(self) -> None:
        """Fetch all primal and dual values at once (one protobuf, no call per variable)."""
        self.response.Clear()
        self.solver.FillSolutionResponseProto(self.response)
        self.values = np.asarray(self.response.variable_value, dtype=np.float64)
        self.dual_values = np.asarray(self.response.dual_value, dtype=np.float64)

    def duals(self) -> tuple[Floats, Floats, Floats]:
        """Duals of the served rows (per group), the balance and token rows (per factory)."""
        n = len(self.p.factories)
        d = self.dual_values
        mu = np.zeros(n, dtype=np.float64)
        tau = np.zeros(n, dtype=np.float64)
        for f, row in self.balance.items():
            mu[f] = d[row.index()]
        for f, row in self.tokens.items():
            tau[f] = d[row.index()]
        return d[self.served_row], mu, tau

    def entering(self) -> tuple[Ints, float]:
        """Pairs outside the model whose reduced cost is negative, the best few per group; and
        how much adding every column could still lower the objective at most (the Lagrangian
        bound: each group's shares sum to at most 1, so its most negative reduced cost, summed
        over groups, bounds the improvement)."""
        p = self.p
        candidates = np.flatnonzero(p.primary & ~self.in_model)
        if len(candidates) == 0:
            return candidates, 0.0
        pi, mu, tau = self.duals()
        g = p.group[candidates]
        f = p.factory[candidates]
        churn = np.where(p.has_previous[g], p.options.churn_penalty, 0.0)
        reduced = (p.objective_rate[g] * (p.cost[candidates] + churn) - pi[g]
                   - p.concurrency[candidates] * mu[f] - p.tokens_per_s[g] * tau[f])
        improving = reduced < -_PRICING_TOLERANCE
        candidates, g, reduced = candidates[improving], g[improving], reduced[improving]
        if len(candidates) == 0:
            return candidates, 0.0
        order = np.lexsort((reduced, g))
        candidates, g, reduced = candidates[order], g[order], reduced[order]
        first = np.searchsorted(g, g, side="left")
        rank = np.arange(len(g)) - first
        bound = -float(np.sum(reduced[rank == 0]))
        return np.sort(candidates[rank < _COLUMNS_PER_GROUP]), bound

    def shares(self) -> tuple[Floats, Floats]:
        x = np.zeros(len(self.p.group), dtype=np.float64)
        if self.column_var:
            np.add.at(x, np.asarray(self.column_pair, dtype=np.int64),
                      self.values[np.asarray(self.column_var, dtype=np.int64)])
        x = np.clip(x, 0.0, 1.0)
        x[x <= _ZERO] = 0.0
        return x, np.clip(self.values[self.unserved_var], 0.0, 1.0)


_STATUS_NAMES = {
    pywraplp.Solver.INFEASIBLE: "infeasible",
    pywraplp.Solver.UNBOUNDED: "unbounded",
    pywraplp.Solver.ABNORMAL: "abnormal",
    pywraplp.Solver.MODEL_INVALID: "model invalid",
    pywraplp.Solver.NOT_SOLVED: "not solved",
}


def solve_lp(problem: Problem, seconds_left: Callable[[], float],
             seed: Solution | None = None) -> Solution:
    """Solve the LP; raise :class:`LpFailed` when GLOP returns no optimal or feasible point.

    ``seconds_left`` says how much of the solve's time limit remains: building the model and
    each pricing round take time too, and the limit is the operator's budget for the whole
    solve, not for GLOP. When the budget runs out between rounds, the last restricted optimum
    stands with status "feasible" (a valid plan, not proven optimal).
    """
    limit = problem.options.time_limit_s
    model = _Model(problem)
    model.add(initial_pairs(problem, seed))
    best: Solution | None = None
    for _ in range(problem.options.pricing_rounds + 1):
        remaining = seconds_left()
        if remaining <= 0:
            if best is not None:
                return _feasible(best)
            raise LpFailed(f"lp model took the whole time limit {limit:g} s to build")
        model.solver.SetTimeLimit(max(1, int(remaining * 1000)))
        status = model.solver.Solve()
        if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
            if best is not None:
                return _feasible(best)
            name = _STATUS_NAMES.get(status, f"status {status}")
            if status == pywraplp.Solver.NOT_SOLVED:
                name = f"{name} within time limit {limit:g} s"
            raise LpFailed(f"lp {name}")
        model.read_solution()
        x, unserved = model.shares()
        proven = status == pywraplp.Solver.OPTIMAL
        best = Solution(x=x, unserved=unserved, objective=float(model.objective.Value()),
                        status="optimal" if proven else "feasible")
        if not proven:
            return best
        entering, bound = model.entering()
        if len(entering) == 0 or bound <= _OPTIMALITY_GAP * max(1.0, abs(best.objective)):
            return best  # optimal, or provably within _OPTIMALITY_GAP of it
        model.add(entering)
    assert best is not None
    return _feasible(best)


def _feasible(solution: Solution) -> Solution:
    return Solution(x=solution.x, unserved=solution.unserved, objective=solution.objective,
                    status="feasible")
