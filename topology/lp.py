"""The routing LP, solved with OR-Tools GLOP by column generation.

Variables, for each group g and primary-eligible factory f *in the model*:
  x[g,f] in [0,c]   share of g served by f, at most its share cap c (problem.share_caps);
                    when the previous plan gave f a share p > 0 it is split into y in
                    [0,min(p,c)] and z in [0,max(c-p,0)], priced cost - churn and cost + churn,
                    which charges churn * |x - p| without extra rows
  u[g]   in [0,1]   share of g left unserved (priced far above any real cost, so an overloaded
                    network still has a plan and says what it could not carry)
  s[f,k] >= 0       planned concurrency at f in capacity segment k (convex queueing cost)
Rows: sum_f x[g,f] + u[g] = 1; sum_g x[g,f] * concurrency[g,f] = sum_k s[f,k] with each
s[f,k] <= capacity_f / K (planned concurrency stays under capacity with headroom); output
tokens/s under the factory's token-rate capacity when it declares one.
Objective: sum rate_g * (cost[g,f] x + churn + penalty u) + sum marginal_k * s[f,k].

The LP falls apart into independent blocks wherever no group could use a factory of another
block (compliance zones, models nobody else serves): each connected component of the
(group, primary-eligible factory) graph is solved as its own LP, tiny components packed
together. Simplex work grows faster than the model, so several small LPs are cheaper than one.

A thousand factories against thousands of groups is a million candidate pairs, most of which no
optimum would use. Each block therefore starts from the pairs the greedy assignment used and
its previous primaries, and after every solve prices all the others with the duals: a pair
whose reduced cost is negative would lower the objective and joins the model; when none is left
(or the Lagrangian bound shows they could gain less than 0.001%), the restricted optimum is
the optimum of the full LP. One GLOP instance per block is kept across rounds so that each
re-solve starts from the previous basis.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
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
_COLUMNS_PER_GROUP = 5
# Pricing stops once the columns left out could lower the objective by at most this share:
# far below what any cost estimate is accurate to, and it saves the last, slowest rounds.
_OPTIMALITY_GAP = 1e-5
# Presolve would rebuild the problem on every re-solve and throw the previous basis away. The
# dual simplex took 20-40% less time than the primal at a thousand factories, warm rounds
# included (measured on the scale benchmark's instances).
_GLOP_PARAMETERS = "use_preprocessing: false use_dual_simplex: true"
# Connected components are packed into one LP until it has this many candidate pairs: a GLOP
# instance per one-group component would cost more in set-up than it saves.
_MIN_BLOCK_PAIRS = 5_000


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


def blocks(problem: Problem) -> list[Ints]:
    """The primary-eligible pairs split into independent LPs: connected components of the
    bipartite (group, factory) graph, small ones packed together, in a deterministic order
    (by their smallest group). Groups with no eligible pair belong to none."""
    prim = np.flatnonzero(problem.primary)
    if len(prim) == 0:
        return []
    g, f = problem.group[prim], problem.factory[prim]
    # Label propagation: every node takes the smallest factory label among its neighbours
    # until nothing changes (as many sweeps as the graph's diameter, a handful here).
    label = np.arange(len(problem.factories), dtype=np.int64)
    by_factory = np.argsort(f, kind="stable")
    f_sorted = f[by_factory]
    f_starts = np.flatnonzero(np.r_[True, f_sorted[1:] != f_sorted[:-1]])
    g_starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # pairs are sorted by group
    group_label = np.zeros(problem.group_count, dtype=np.int64)
    while True:
        group_label[g[g_starts]] = np.minimum.reduceat(label[f], g_starts)
        new = label.copy()
        new[f_sorted[f_starts]] = np.minimum.reduceat(group_label[g][by_factory], f_starts)
        if np.array_equal(new, label):
            break
        label = new
    component = label[f]
    order = np.argsort(component, kind="stable")  # keeps each block's pairs sorted by group
    cuts = np.flatnonzero(np.r_[True, np.diff(component[order]) != 0, True])
    parts = [prim[order[a:b]] for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(),
                                                strict=True)]
    parts.sort(key=lambda part: int(problem.group[part[0]]))
    packed: list[Ints] = []
    pending: list[Ints] = []
    size = 0
    for part in parts:
        if len(part) >= _MIN_BLOCK_PAIRS:
            packed.append(part)
            continue
        pending.append(part)
        size += len(part)
        if size >= _MIN_BLOCK_PAIRS:
            packed.append(np.sort(np.concatenate(pending)))
            pending, size = [], 0
    if pending:
        packed.append(np.sort(np.concatenate(pending)))
    return packed


def _split(row: Ints, values: npt.NDArray[Any], rows: int) -> list[list[Any]]:
    """``values`` grouped by ``row`` (0 <= row < rows), in their given order within a row."""
    order = np.argsort(row, kind="stable")
    cuts = np.searchsorted(row[order], np.arange(rows + 1)).tolist()
    ordered = values[order].tolist()
    return [ordered[a:b] for a, b in pairwise(cuts)]


class _Model:
    """One block's LP in a persistent GLOP solver: fixed rows and queueing variables, columns
    added in rounds. Presolve is off so that each re-solve starts from the previous optimal
    basis (new columns enter it non-basic), which makes a pricing round a few hundred pivots."""

    def __init__(self, problem: Problem, pairs: Ints, initial: Ints) -> None:
        """The block of ``pairs`` (every primary-eligible pair of its groups, sorted) with the
        columns of ``initial`` in it. The starting model is loaded as one protobuf: a call per
        variable and coefficient would cost more than the first solve."""
        self.p = problem
        ft = problem.factories
        self.pairs = pairs
        self.groups = np.unique(problem.group[pairs])
        factories = np.unique(problem.factory[pairs])
        marginals = np.asarray(queueing_marginal_costs(problem.options), dtype=np.float64)
        K = len(marginals)
        n_groups, n_factories = len(self.groups), len(factories)
        # Variables: u per group, then s per factory and segment, then the columns.
        G, F = problem.group_count, len(ft)
        self.unserved_var = np.full(G, -1, dtype=np.int64)
        self.unserved_var[self.groups] = np.arange(n_groups)
        column_pair, upper, price, self.offset = self._columns(initial)
        first_column = n_groups + n_factories * K
        columns = first_column + np.arange(len(column_pair))
        segment = np.repeat(ft.capacity[factories] / K, K)
        model = linear_solver_pb2.MPModelProto()
        add_variable = model.variable.add
        for ub, cost in zip(
                np.concatenate((np.ones(n_groups), segment, upper)).tolist(),
                np.concatenate(((problem.objective_rate * problem.penalty)[self.groups],
                                np.tile(marginals, n_factories), price)).tolist(),
                strict=True):
            add_variable(lower_bound=0.0, upper_bound=ub, objective_coefficient=cost)
        model.objective_offset = self.offset
        # Rows: served per group, then per factory its balance and (if it has one) token row.
        g_of = problem.group[column_pair]
        f_of = problem.factory[column_pair]
        by_group = _split(np.searchsorted(self.groups, g_of), columns, n_groups)
        by_factory = _split(np.searchsorted(factories, f_of), columns, n_factories)
        conc_by_factory = _split(np.searchsorted(factories, f_of),
                                 problem.concurrency[column_pair], n_factories)
        tps_by_factory = _split(np.searchsorted(factories, f_of),
                                problem.tokens_per_s[g_of], n_factories)
        self.served_row = np.full(G, -1, dtype=np.int64)
        self.balance_row = np.full(F, -1, dtype=np.int64)
        self.token_row = np.full(F, -1, dtype=np.int64)
        add_row = model.constraint.add
        for i, g in enumerate(self.groups.tolist()):
            self.served_row[g] = i
            row = add_row(lower_bound=1.0, upper_bound=1.0)
            row.var_index.append(i)
            row.var_index.extend(by_group[i])
            row.coefficient.extend([1.0] * (1 + len(by_group[i])))
        next_row = n_groups
        token_capacity = ft.token_capacity.tolist()
        for i, f in enumerate(factories.tolist()):
            self.balance_row[f] = next_row
            row = add_row(lower_bound=0.0, upper_bound=0.0)
            row.var_index.extend(range(n_groups + i * K, n_groups + (i + 1) * K))
            row.var_index.extend(by_factory[i])
            row.coefficient.extend([-1.0] * K)
            row.coefficient.extend(conc_by_factory[i])
            next_row += 1
            if token_capacity[f] > 0:
                self.token_row[f] = next_row
                row = add_row(lower_bound=0.0, upper_bound=token_capacity[f])
                row.var_index.extend(by_factory[i])
                row.coefficient.extend(tps_by_factory[i])
                next_row += 1
        solver = pywraplp.Solver.CreateSolver("GLOP")
        if solver is None:
            raise LpFailed("GLOP unavailable")
        error = solver.LoadModelFromProto(model)
        if error:
            raise LpFailed(f"GLOP refused the model: {error}")
        if not solver.SetSolverSpecificParametersAsString(_GLOP_PARAMETERS):
            raise LpFailed(f"GLOP refused parameters {_GLOP_PARAMETERS!r}")
        self.solver = solver
        self.objective = solver.Objective()
        self.objective.SetMinimization()
        rows = solver.constraints()
        self.served = {g: rows[i] for g, i in zip(self.groups.tolist(),
                                                  self.served_row[self.groups].tolist(),
                                                  strict=True)}
        self.balance: dict[int, Any] = {f: rows[self.balance_row[f]]
                                        for f in factories.tolist()}
        self.tokens: dict[int, Any] = {f: rows[self.token_row[f]] for f in factories.tolist()
                                       if self.token_row[f] >= 0}
        self.in_model = np.zeros(len(problem.group), dtype=np.bool_)
        self.in_model[initial] = True
        # Column variables by index (creation order), the pair each belongs to, its price.
        self.column_var: list[int] = columns.tolist()
        self.column_pair: list[int] = column_pair.tolist()
        self.column_price: list[float] = price.tolist()
        self.response = linear_solver_pb2.MPSolutionResponse()
        self.values: Floats = np.zeros(0)
        self.dual_values: Floats = np.zeros(0)
        self.value = 0.0  # the objective of the last solution read
        self.solved = False  # whether a solution has been read at all
        self.pricing = False  # whether pricing rounds may still improve it

    def _columns(self, pairs: Ints) -> tuple[Ints, Floats, Floats, float]:
        """The variables of ``pairs``' x columns: the pair each belongs to, its upper bound and
        objective coefficient, and the objective offset they add. Churn |x - p| needs no rows:
        where the previous plan had a share p > 0, x = y + z with y in [0, p] priced cost -
        churn and z in [0, 1 - p] priced cost + churn (plus churn * p as a constant)."""
        p = self.p
        churn = p.options.churn_penalty
        g = p.group[pairs]
        rate = p.objective_rate[g]
        charged = p.has_previous[g] & (churn > 0)
        prev = np.where(charged, p.previous[pairs], 0.0)
        full = rate * (p.cost[pairs] + np.where(charged, churn, 0.0))
        cap = p.share_cap[pairs]
        split = prev > 0
        pair = np.concatenate((pairs, pairs[split]))
        upper = np.concatenate((np.where(split, np.minimum(prev, cap), cap),
                                np.maximum(cap[split] - prev[split], 0.0)))
        price = np.concatenate((np.where(split, full - 2.0 * rate * churn, full), full[split]))
        order = np.argsort(pair, kind="stable")
        return pair[order], upper[order], price[order], float(np.sum(rate * churn * prev))

    def add(self, pairs: Ints) -> None:
        """Add the x columns of ``pairs``."""
        p, solver, objective = self.p, self.solver, self.objective
        pair, upper, price, offset = self._columns(pairs)
        self.offset += offset
        new_var, served, balance, tokens = solver.NumVar, self.served, self.balance, self.tokens
        g = p.group[pair]
        for j, gj, f, conc, tps, ub, cost in zip(
                pair.tolist(), g.tolist(), p.factory[pair].tolist(),
                p.concurrency[pair].tolist(), p.tokens_per_s[g].tolist(), upper.tolist(),
                price.tolist(), strict=True):
            var = new_var(0.0, ub, "")
            objective.SetCoefficient(var, cost)
            served[gj].SetCoefficient(var, 1.0)
            balance[f].SetCoefficient(var, conc)
            token_row = tokens.get(f)
            if token_row is not None:
                token_row.SetCoefficient(var, tps)
            self.column_var.append(var.index())
            self.column_pair.append(j)
            self.column_price.append(cost)
        objective.SetOffset(self.offset)
        self.in_model[pairs] = True

    def read_solution(self) -> None:
        """Fetch all primal and dual values at once (one protobuf, no call per variable)."""
        self.response.Clear()
        self.solver.FillSolutionResponseProto(self.response)
        self.values = np.asarray(self.response.variable_value, dtype=np.float64)
        self.dual_values = np.asarray(self.response.dual_value, dtype=np.float64)
        self.value = float(self.response.objective_value)

    def duals(self) -> tuple[Floats, Floats, Floats]:
        """Duals of the served rows (per group), the balance and token rows (per factory).

        A group served wholly by one factory has its x at the upper bound 1 and its unserved
        share basic at 0, a degenerate vertex where GLOP's dual for the group is the unserved
        penalty: priced with that, every other candidate of the group looks a thousand times
        better than it is and floods the model. Among the optimal duals the basis allows, the
        smallest consistent with the solution is taken instead: the dearest per-share cost
        (less the factory prices) of any column the group uses, unless part of it is unserved.
        That keeps complementary slackness, so the restricted optimum and the Lagrangian bound
        stand as they are; it only stops pricing from chasing a penalty nobody pays.
        """
        p = self.p
        n = len(p.factories)
        d = self.dual_values
        mu = np.zeros(n, dtype=np.float64)
        tau = np.zeros(n, dtype=np.float64)
        in_block = self.balance_row >= 0
        mu[in_block] = d[self.balance_row[in_block]]
        has_tokens = self.token_row >= 0
        tau[has_tokens] = d[self.token_row[has_tokens]]
        pi = np.zeros(p.group_count, dtype=np.float64)
        pi[self.groups] = d[self.served_row[self.groups]]
        var = np.asarray(self.column_var, dtype=np.int64)
        used = self.values[var] > _ZERO
        pair = np.asarray(self.column_pair, dtype=np.int64)[used]
        g, f = p.group[pair], p.factory[pair]
        share_cost = (np.asarray(self.column_price, dtype=np.float64)[used]
                      - p.concurrency[pair] * mu[f] - p.tokens_per_s[g] * tau[f])
        dearest = np.full(p.group_count, -np.inf, dtype=np.float64)
        np.maximum.at(dearest, g, share_cost)
        served = np.zeros(p.group_count, dtype=np.bool_)
        served[self.groups] = self.values[self.unserved_var[self.groups]] <= _ZERO
        served &= np.isfinite(dearest)
        pi[served] = np.minimum(pi[served], dearest[served])
        return pi, mu, tau

    def entering(self) -> tuple[Ints, float]:
        """Pairs outside the model whose reduced cost is negative, the best few per group; and
        how much adding every column could still lower the objective at most (the Lagrangian
        bound: each group's shares sum to at most 1, so its most negative reduced cost, summed
        over groups, bounds the improvement)."""
        p = self.p
        candidates = self.pairs[~self.in_model[self.pairs]]
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

    def shares(self, x: Floats, unserved: Floats) -> None:
        """Write this block's shares in its last solution into the whole problem's ``x`` and
        ``unserved`` (columns added since were not in it: they carry nothing)."""
        var = np.asarray(self.column_var, dtype=np.int64)
        solved = var < len(self.values)
        np.add.at(x, np.asarray(self.column_pair, dtype=np.int64)[solved],
                  self.values[var[solved]])
        unserved[self.groups] = np.clip(self.values[self.unserved_var[self.groups]], 0.0, 1.0)


_STATUS_NAMES = {
    pywraplp.Solver.INFEASIBLE: "infeasible",
    pywraplp.Solver.UNBOUNDED: "unbounded",
    pywraplp.Solver.ABNORMAL: "abnormal",
    pywraplp.Solver.MODEL_INVALID: "model invalid",
    pywraplp.Solver.NOT_SOLVED: "not solved",
}


def _solve(model: _Model, seconds_left: Callable[[], float], limit: float) -> bool:
    """(Re-)solve one block and read the solution; True when it is the restricted optimum.
    False when the budget is spent or GLOP stops short after the block was solved before (its
    last restricted optimum stands). Raises :class:`LpFailed` when there is none."""
    remaining = seconds_left()
    if remaining <= 0:
        if model.solved:
            return False
        raise LpFailed(f"lp model took the whole time limit {limit:g} s to build")
    model.solver.SetTimeLimit(max(1, int(remaining * 1000)))
    status = model.solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        if model.solved:
            return False  # the previous restricted optimum is still read out
        name = _STATUS_NAMES.get(status, f"status {status}")
        if status == pywraplp.Solver.NOT_SOLVED:
            name = f"{name} within time limit {limit:g} s"
        raise LpFailed(f"lp {name}")
    model.read_solution()
    model.solved = True
    return bool(status == pywraplp.Solver.OPTIMAL)


def solve_lp(problem: Problem, seconds_left: Callable[[], float],
             seed: Solution | None = None) -> Solution:
    """Solve the LP; raise :class:`LpFailed` when GLOP returns no optimal or feasible point.

    ``seconds_left`` says how much of the solve's time limit remains: building the model and
    each pricing round take time too, and the limit is the operator's budget for the whole
    solve, not for GLOP. When the budget runs out between rounds, the last restricted optimum
    stands with status "feasible" (a valid plan, not proven optimal).
    """
    limit = problem.options.time_limit_s
    start = initial_pairs(problem, seed)
    # Every block is solved once before any is priced, so that a budget spent while pricing
    # leaves each with a restricted optimum (a "feasible" plan) rather than some with none.
    models = []
    for pairs in blocks(problem):
        model = _Model(problem, pairs, np.intersect1d(start, pairs, assume_unique=True))
        model.pricing = _solve(model, seconds_left, limit)
        models.append(model)
    proven = all(model.pricing for model in models)
    for round_ in range(problem.options.pricing_rounds + 1):
        for model in [m for m in models if m.pricing]:
            entering, bound = model.entering()
            if len(entering) == 0 or bound <= _OPTIMALITY_GAP * max(1.0, abs(model.value)):
                model.pricing = False  # optimal, or provably within _OPTIMALITY_GAP of it
            elif round_ == problem.options.pricing_rounds:
                proven = model.pricing = False  # rounds ran out with columns still to add
            else:
                model.add(entering)
                model.pricing = _solve(model, seconds_left, limit)
                proven &= model.pricing
    x = np.zeros(len(problem.group), dtype=np.float64)
    unserved = np.ones(problem.group_count, dtype=np.float64)
    objective = 0.0
    for model in models:
        model.shares(x, unserved)
        objective += model.value
    # Groups no factory may serve are wholly unserved, at their penalty, as in the LP.
    alone = np.ones(problem.group_count, dtype=np.bool_)
    alone[problem.group[problem.primary]] = False
    objective += float(np.sum((problem.objective_rate * problem.penalty)[alone]))
    x = np.clip(x, 0.0, 1.0)
    x[x <= _ZERO] = 0.0
    return Solution(x=x, unserved=unserved, objective=objective,
                    status="optimal" if proven else "feasible")
