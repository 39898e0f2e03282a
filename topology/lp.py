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
s[f,k] <= the segment's width (planned concurrency stays under capacity with headroom; the
last segment, the overflow, starts where the factory's groups stop being SLO-safe); output
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
the optimum of the full LP. One GLOP instance per block (through MathOpt, which takes the
model as arrays and a starting basis) is kept across rounds, and each re-solve starts from the
previous optimal basis.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from typing import Any, TypeVar

import numpy as np
from ortools.glop import parameters_pb2 as glop_parameters_pb2
from ortools.math_opt import (
    callback_pb2,
    model_parameters_pb2,
    model_pb2,
    model_update_pb2,
    parameters_pb2,
    result_pb2,
    solution_pb2,
)
from ortools.math_opt.core.python import solver as math_opt

from tdn.topology.problem import Problem, Solution
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
_GLOP_PARAMETERS = glop_parameters_pb2.GlopParameters(use_preprocessing=False,
                                                       use_dual_simplex=True)
# Connected components are packed into one LP until it has this many candidate pairs: a GLOP
# instance per one-group component would cost more in set-up than it saves.
_MIN_BLOCK_PAIRS = 5_000
# Blocks solved at once, each on its own thread (GLOP releases the GIL while it pivots; no
# more threads than the machine has cores).
_THREADS = min(4, os.cpu_count() or 1)

_T = TypeVar("_T")


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


# A new column's status in the basis handed to the next solve: non-basic at its lower bound 0.
_AT_LOWER = solution_pb2.BASIS_STATUS_AT_LOWER_BOUND


def _matrix(target: Any, rows: Ints, columns: Ints, values: Floats) -> None:
    """Fill a MathOpt sparse matrix with entries sorted by (row, column), as it requires."""
    order = np.lexsort((columns, rows))
    target.row_ids.extend(rows[order].tolist())
    target.column_ids.extend(columns[order].tolist())
    target.coefficients.extend(values[order].tolist())


def _variables(target: Any, first: int, upper: Floats) -> None:
    """Append continuous variables ``first, first + 1, ...`` in [0, upper]."""
    n = len(upper)
    target.ids.extend(range(first, first + n))
    target.lower_bounds.extend([0.0] * n)
    target.upper_bounds.extend(upper.tolist())
    target.integers.extend([False] * n)


class _Model:
    """One block's LP in a persistent GLOP solver (through MathOpt): fixed rows and queueing
    variables, columns added in rounds. Each re-solve is handed the previous optimal basis with
    the new columns non-basic at zero, which makes a pricing round a few hundred pivots.

    Why the basis is handed over explicitly: GLOP's dual simplex cannot keep its own basis when
    columns are added (the objective changed), and the statuses it then reuses are indexed as
    before the new columns, so the slacks' statuses land on the new columns and the warm start
    is mostly lost (about 800 pivots to take in 40 new columns at 1,000 x 2,000; 180 with the
    basis handed over)."""

    def __init__(self, problem: Problem, pairs: Ints, initial: Ints) -> None:
        """The block of ``pairs`` (every primary-eligible pair of its groups, sorted) with the
        columns of ``initial`` in it, built as one MathOpt model from arrays."""
        self.p = problem
        ft = problem.factories
        self.pairs = pairs
        grouped = problem.group[pairs]  # sorted: pairs are in group order
        self.groups = grouped[np.r_[True, grouped[1:] != grouped[:-1]]]
        factories = np.flatnonzero(np.bincount(problem.factory[pairs], minlength=len(ft)))
        K = problem.widths.shape[1]
        n_groups, n_factories = len(self.groups), len(factories)
        G, F = problem.group_count, len(ft)
        # Rows: served per group, balance per factory, then a token row per factory that
        # declares a token rate. Variables: u per group, s per factory and segment, columns.
        self.served_row = np.full(G, -1, dtype=np.int64)
        self.served_row[self.groups] = np.arange(n_groups)
        self.balance_row = np.full(F, -1, dtype=np.int64)
        self.balance_row[factories] = n_groups + np.arange(n_factories)
        with_tokens = factories[ft.token_capacity[factories] > 0]
        self.token_row = np.full(F, -1, dtype=np.int64)
        self.token_row[with_tokens] = n_groups + n_factories + np.arange(len(with_tokens))
        n_rows = n_groups + n_factories + len(with_tokens)
        self.unserved_var = np.full(G, -1, dtype=np.int64)
        self.unserved_var[self.groups] = np.arange(n_groups)
        column_pair, upper, price, self.offset = self._columns(initial)
        first_column = n_groups + n_factories * K
        columns = first_column + np.arange(len(column_pair), dtype=np.int64)
        model = model_pb2.ModelProto()
        _variables(model.variables, 0, np.concatenate(
            (np.ones(n_groups), problem.widths[factories].ravel(), upper)))
        n_vars = first_column + len(column_pair)
        model.objective.offset = self.offset
        model.objective.linear_coefficients.ids.extend(range(n_vars))
        model.objective.linear_coefficients.values.extend(np.concatenate(
            ((problem.objective_rate * problem.penalty)[self.groups],
             problem.marginals[factories].ravel(), price)).tolist())
        rows = model.linear_constraints
        rows.ids.extend(range(n_rows))
        rows.lower_bounds.extend([1.0] * n_groups + [0.0] * (n_rows - n_groups))
        rows.upper_bounds.extend([1.0] * n_groups + [0.0] * n_factories
                                 + ft.token_capacity[with_tokens].tolist())
        segments = n_groups + np.arange(n_factories * K, dtype=np.int64)
        r, c, v = self._entries(column_pair, columns)
        _matrix(model.linear_constraint_matrix,
                np.concatenate((np.arange(n_groups), np.repeat(self.balance_row[factories], K), r)),
                np.concatenate((np.arange(n_groups), segments, c)),
                np.concatenate((np.ones(n_groups), -np.ones(n_factories * K), v)))
        try:
            self.solver = math_opt.new(parameters_pb2.SOLVER_TYPE_GLOP, model,
                                       parameters_pb2.SolverInitializerProto())
        except Exception as exc:  # pybind11_abseil's StatusNotOk: the model was refused
            raise LpFailed(f"GLOP refused the model: {exc}") from exc
        self.n_vars, self.n_rows = n_vars, n_rows
        self.in_model = np.zeros(len(problem.group), dtype=np.bool_)
        self.in_model[initial] = True
        # Column variables by id (creation order), the pair each belongs to, its price.
        self.column_var: list[int] = columns.tolist()
        self.column_pair: list[int] = column_pair.tolist()
        self.column_price: list[float] = price.tolist()
        self.variable_status: list[int] = []  # the last basis, empty before the first solve
        self.row_status: list[int] = []
        self.values: Floats = np.zeros(0)
        self.dual_values: Floats = np.zeros(0)
        self.value = 0.0  # the objective of the last solution read
        self.solved = False  # whether a solution has been read at all
        self.pricing = False  # whether pricing rounds may still improve it

    def _entries(self, pair: Ints, var: Ints) -> tuple[Ints, Ints, Floats]:
        """Constraint matrix entries (row, variable, coefficient) of x columns: 1 in the
        group's served row, concurrency in the factory's balance row, the group's output
        tokens/s in the factory's token row if it has one."""
        p = self.p
        g, f = p.group[pair], p.factory[pair]
        tokens = self.token_row[f] >= 0
        rows = np.concatenate((self.served_row[g], self.balance_row[f], self.token_row[f][tokens]))
        columns = np.concatenate((var, var, var[tokens]))
        values = np.concatenate((np.ones(len(pair)), p.concurrency[pair],
                                 p.tokens_per_s[g][tokens]))
        return rows, columns, values

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
        """Add the x columns of ``pairs`` (non-basic at zero in the next solve's basis)."""
        pair, upper, price, offset = self._columns(pairs)
        self.offset += offset
        var = self.n_vars + np.arange(len(pair), dtype=np.int64)
        update = model_update_pb2.ModelUpdateProto()
        _variables(update.new_variables, self.n_vars, upper)
        update.objective_updates.offset_update = self.offset
        update.objective_updates.linear_coefficients.ids.extend(var.tolist())
        update.objective_updates.linear_coefficients.values.extend(price.tolist())
        _matrix(update.linear_constraint_matrix_updates, *self._entries(pair, var))
        try:
            updated = self.solver.update(update)
        except Exception as exc:  # StatusNotOk
            raise LpFailed(f"GLOP refused new columns: {exc}") from exc
        if not updated:
            raise LpFailed("GLOP cannot add columns to a model")
        self.n_vars += len(pair)
        if self.variable_status:
            self.variable_status.extend([_AT_LOWER] * len(pair))
        self.column_var.extend(var.tolist())
        self.column_pair.extend(pair.tolist())
        self.column_price.extend(price.tolist())
        self.in_model[pairs] = True

    def solve(self, seconds: float) -> Any:
        """Run GLOP for at most ``seconds``, from the last basis if there is one; the result
        (a SolveResultProto)."""
        parameters = parameters_pb2.SolveParametersProto()
        parameters.time_limit.FromMilliseconds(max(1, int(seconds * 1000)))
        parameters.lp_algorithm = parameters_pb2.LP_ALGORITHM_DUAL_SIMPLEX
        parameters.presolve = parameters_pb2.EMPHASIS_OFF
        parameters.glop.CopyFrom(_GLOP_PARAMETERS)
        model_parameters = model_parameters_pb2.ModelSolveParametersProto()
        # Reduced costs are recomputed by pricing for the columns outside the model only.
        model_parameters.reduced_costs_filter.filter_by_ids = True
        if self.variable_status:
            basis = model_parameters.initial_basis
            basis.variable_status.ids.extend(range(self.n_vars))
            basis.variable_status.values.extend(self.variable_status)
            basis.constraint_status.ids.extend(range(self.n_rows))
            basis.constraint_status.values.extend(self.row_status)
        try:
            return self.solver.solve(parameters, model_parameters, None,
                                     callback_pb2.CallbackRegistrationProto(), None, None)
        except Exception as exc:  # StatusNotOk: the model or the basis was refused
            raise LpFailed(f"GLOP failed: {exc}") from exc

    def read_solution(self, result: Any) -> None:
        """Keep the primal and dual values and the basis of a solve's result."""
        solution = result.solutions[0]
        values = solution.primal_solution.variable_values.values
        self.values = np.fromiter(values, dtype=np.float64, count=len(values))
        duals = solution.dual_solution.dual_values.values
        self.dual_values = np.fromiter(duals, dtype=np.float64, count=len(duals))
        self.value = float(solution.primal_solution.objective_value)
        if solution.HasField("basis"):
            self.variable_status = list(solution.basis.variable_status.values)
            self.row_status = list(solution.basis.constraint_status.values)
        else:
            self.variable_status, self.row_status = [], []

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


_REASONS = {
    result_pb2.TERMINATION_REASON_INFEASIBLE: "infeasible",
    result_pb2.TERMINATION_REASON_UNBOUNDED: "unbounded",
    result_pb2.TERMINATION_REASON_INFEASIBLE_OR_UNBOUNDED: "infeasible or unbounded",
    result_pb2.TERMINATION_REASON_IMPRECISE: "imprecise",
    result_pb2.TERMINATION_REASON_NO_SOLUTION_FOUND: "not solved",
    result_pb2.TERMINATION_REASON_NUMERICAL_ERROR: "abnormal",
    result_pb2.TERMINATION_REASON_OTHER_ERROR: "abnormal",
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
    result = model.solve(remaining)
    reason = int(result.termination.reason)
    optimal: bool = reason == result_pb2.TERMINATION_REASON_OPTIMAL
    feasible = (reason == result_pb2.TERMINATION_REASON_FEASIBLE and bool(result.solutions)
                and result.solutions[0].primal_solution.feasibility_status
                == solution_pb2.SOLUTION_STATUS_FEASIBLE)
    if not (optimal or feasible):
        if model.solved:
            return False  # the previous restricted optimum is still read out
        name = _REASONS.get(reason, f"status {reason}")
        if result.termination.limit == result_pb2.LIMIT_TIME:
            name = f"{name} within time limit {limit:g} s"
        raise LpFailed(f"lp {name}")
    model.read_solution(result)
    model.solved = True
    return optimal


def _price(model: _Model, seconds_left: Callable[[], float], rounds: int) -> bool:
    """Pricing rounds on one solved block until no column could lower its objective by more
    than _OPTIMALITY_GAP; True when its restricted optimum is then proven optimal (False when
    the budget or the rounds ran out first, leaving the last restricted optimum)."""
    limit = model.p.options.time_limit_s
    for round_ in range(rounds + 1):
        entering, bound = model.entering()
        if len(entering) == 0 or bound <= _OPTIMALITY_GAP * max(1.0, abs(model.value)):
            return True  # optimal, or provably within _OPTIMALITY_GAP of it
        if round_ == rounds:
            return False  # rounds ran out with columns still to add
        model.add(entering)
        if not _solve(model, seconds_left, limit):
            return False
    return False


def _in_parallel(tasks: Sequence[Callable[[], _T]]) -> list[_T]:
    """Run independent blocks' work on up to _THREADS threads (GLOP releases the GIL while it
    pivots), results in the tasks' order; the first exception is raised after all finished."""
    workers = min(len(tasks), _THREADS)
    if workers <= 1:
        return [task() for task in tasks]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tdn-lp") as pool:
        futures = [pool.submit(task) for task in tasks]
        wait(futures)
    return [future.result() for future in futures]


def solve_lp(problem: Problem, seconds_left: Callable[[], float],
             seed: Solution | None = None) -> Solution:
    """Solve the LP; raise :class:`LpFailed` when GLOP returns no optimal or feasible point.

    ``seconds_left`` says how much of the solve's time limit remains: building the model and
    each pricing round take time too, and the limit is the operator's budget for the whole
    solve, not for GLOP. When the budget runs out between rounds, the last restricted optimum
    stands with status "feasible" (a valid plan, not proven optimal).

    Blocks are independent LPs, so they are solved side by side on threads; each block's
    result depends only on its own rounds, so the plan is the same however they interleave.
    """
    limit = problem.options.time_limit_s
    starting = np.zeros(len(problem.group), dtype=np.bool_)
    starting[initial_pairs(problem, seed)] = True

    def first(pairs: Ints) -> _Model:
        model = _Model(problem, pairs, pairs[starting[pairs]])
        model.pricing = _solve(model, seconds_left, limit)
        return model

    # Every block is solved once before any is priced, so that a budget spent while pricing
    # leaves each with a restricted optimum (a "feasible" plan) rather than some with none.
    models = _in_parallel([partial(first, pairs) for pairs in blocks(problem)])
    rounds = problem.options.pricing_rounds
    proven = _in_parallel([partial(_price, model, seconds_left, rounds) if model.pricing
                           else partial(bool, False) for model in models])
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
                    status="optimal" if all(proven) else "feasible")
