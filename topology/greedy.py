"""The fallback when the LP cannot answer: marginal-cost water-filling, groups by regret.

It reads the same :class:`~tdn.topology.problem.Problem` as the LP (same eligibility, costs,
capacities and queueing segments) and prices every step as the LP's objective would: a share
placed on a factory costs its per-request cost plus the queueing price of the capacity segment
it fills, plus churn against the previous plan. Each group in turn pours its demand onto
whichever candidate is cheapest *at the margin*, segment by segment, so it spreads across
factories as they fill instead of stacking one to the brim.

Groups go in order of regret, as in Vogel's approximation for transport problems: a group that
would lose most by missing its best options goes before one that would hardly notice. Two
measures of regret are tried (per group against its second-best factory; per slot against its
dearest), a group the order starved is repaired by moving its neighbours aside, and every group
is then re-poured against what the others left (block coordinate descent). Everything is
deterministic, so the same input gives the same fallback plan.
"""

from __future__ import annotations

import math

import numpy as np

from tdn.topology.problem import Problem, Solution, objective_value, queueing_marginal_costs

_EPSILON = 1e-12


def primary_pairs_by_group(problem: Problem) -> list[list[int]]:
    """Each group's primary-eligible pair indices, cheapest first."""
    prim = np.flatnonzero(problem.primary)
    bounds = np.searchsorted(problem.group[prim], np.arange(problem.group_count + 1))
    flat = prim.tolist()
    edges = bounds.tolist()
    return [flat[edges[g]:edges[g + 1]] for g in range(problem.group_count)]


def _group_regret_order(problem: Problem, pairs: list[list[int]]) -> list[int]:
    """Groups by how much more their second-best factory costs them than their best."""
    rate = problem.objective_rate.tolist()
    cost = problem.cost

    def regret(g: int) -> float:
        own = pairs[g]
        if len(own) == 1:
            return math.inf  # no alternative at all: goes first
        if len(own) >= 2:
            return float(rate[g]) * float(cost[own[1]] - cost[own[0]])
        return 0.0

    return sorted(range(problem.group_count), key=lambda g: (-regret(g), g))


def _slot_regret_order(problem: Problem, pairs: list[list[int]]) -> list[int]:
    """Groups by what they would lose per slot of their best factory if pushed down to their
    dearest option. When the cheap factories are contended (big, cheap centers), the capacity
    should go where each slot saves most, as the LP's duals would price it; the difference to
    the second best is small for everyone there and says little."""
    cost, duration = problem.cost, problem.duration

    def regret(g: int) -> float:
        own = pairs[g]
        if len(own) == 1:
            return math.inf
        if len(own) >= 2:
            return float(cost[own[-1]] - cost[own[0]]) / max(float(duration[own[0]]), 1e-9)
        return 0.0

    return sorted(range(problem.group_count), key=lambda g: (-regret(g), g))


class _WaterFiller:
    """Loads per factory and shares per pair, filled one group at a time."""

    def __init__(self, problem: Problem) -> None:
        o = problem.options
        ft = problem.factories
        self.problem = problem
        self.marginals = queueing_marginal_costs(o)
        self.capacity = ft.capacity.tolist()
        self.segment = [c / len(self.marginals) for c in self.capacity]
        self.tokens_left = [t if t > 0 else math.inf for t in ft.token_capacity.tolist()]
        self.load = [0.0] * len(ft)
        self.cost = problem.cost.tolist()
        self.conc = problem.concurrency.tolist()
        self.factory = problem.factory.tolist()
        self.previous = problem.previous.tolist()
        self.pairs = primary_pairs_by_group(problem)
        self.rate = problem.objective_rate.tolist()
        self.tokens = problem.tokens_per_s.tolist()
        self.churn = [o.churn_penalty if had else 0.0 for had in problem.has_previous.tolist()]
        self.shares = [0.0] * len(problem.group)
        self.unserved = [1.0] * problem.group_count

    def _step(self, g: int, remaining: float,
              avoid: frozenset[int] = frozenset()) -> tuple[float, int, float] | None:
        """The cheapest next slice for group ``g``, not on ``avoid``: (marginal, pair, share)."""
        rate, tps, churn = self.rate[g], self.tokens[g], self.churn[g]
        K = len(self.marginals)
        best: tuple[float, int, float] | None = None
        for j in self.pairs[g]:  # cheapest first: stop once even the static cost cannot win
            if best is not None and rate * (self.cost[j] - churn) >= best[0]:
                break
            f = self.factory[j]
            load, capacity, segment = self.load[f], self.capacity[f], self.segment[f]
            if load >= capacity - _EPSILON or self.tokens_left[f] <= _EPSILON or f in avoid:
                continue
            k = int(load / segment)
            room = (k + 1) * segment - load
            if room <= 1e-9 * segment:  # at a segment boundary, up to float error
                k, room = k + 1, segment
            k = min(k, K - 1)
            room = min(room, capacity - load)
            conc = self.conc[j]
            amount = remaining if conc <= 0 else min(remaining, room / conc)
            if tps > 0 and math.isfinite(self.tokens_left[f]):
                amount = min(amount, self.tokens_left[f] / tps)
            # Keeping the previous split is cheaper than moving: below its previous share a
            # pair is priced cost - churn, above it cost + churn (as in the LP).
            kept = self.previous[j] - self.shares[j]
            step_churn = churn
            if kept > _EPSILON:
                amount = min(amount, kept)
                step_churn = -churn
            if amount <= _EPSILON:
                continue
            marginal = rate * (self.cost[j] + step_churn) + conc * self.marginals[k]
            if best is None or marginal < best[0]:
                best = (marginal, j, amount)
        return best

    def _move(self, j: int, g: int, amount: float) -> None:
        f = self.factory[j]
        self.shares[j] += amount
        self.load[f] += amount * self.conc[j]
        if math.isfinite(self.tokens_left[f]):
            self.tokens_left[f] -= amount * self.tokens[g]

    def fill(self, g: int, avoid: frozenset[int] = frozenset()) -> None:
        """Pour group ``g``'s unassigned share onto the cheapest margins, slice by slice,
        staying off the factories in ``avoid``."""
        remaining = self.unserved[g]
        while remaining > _EPSILON:
            best = self._step(g, remaining, avoid)
            if best is None:
                break
            _, j, amount = best
            self._move(j, g, amount)
            remaining -= amount
        self.unserved[g] = max(remaining, 0.0)

    def snapshot(self) -> tuple[list[float], list[float], list[float], list[float]]:
        return (list(self.shares), list(self.load), list(self.tokens_left),
                list(self.unserved))

    def restore(self, state: tuple[list[float], list[float], list[float], list[float]]
                ) -> None:
        self.shares, self.load, self.tokens_left, self.unserved = (list(v) for v in state)

    def shortfall(self) -> float:
        """Requests per second nobody serves, weighed by their penalty: what repair reduces."""
        penalty: list[float] = self.problem.penalty.tolist()
        return float(sum(u * r * p for u, r, p in zip(self.unserved, self.rate, penalty,
                                                      strict=True)))

    def repair(self, g: int, order: list[int]) -> None:
        """Group ``g`` could not be placed in full: take the groups on its candidate factories
        off them, place ``g`` first, put them back, and keep the result if less is unserved.
        (Regret order alone starves a group whose few candidates others fill first.)"""
        # The groups on its candidates, and the groups on *their* candidates, which must make
        # room for them in turn; they go back elsewhere if they can, onto g's factories if not.
        scarce = frozenset(self.factory[j] for j in self.pairs[g])
        candidates = set(scarce)
        for _ in range(2):
            near = [h for h in order if any(
                self.shares[j] > 0 and self.factory[j] in candidates for j in self.pairs[h])]
            candidates |= {self.factory[j] for h in near for j in self.pairs[h]}
        neighbours = [h for h in near if h != g]
        before = self.shortfall()
        state = self.snapshot()
        for h in neighbours:
            self.release(h)
        self.release(g)
        self.fill(g)
        for h in neighbours:
            self.fill(h, avoid=scarce)
        for h in neighbours:
            self.fill(h)
        if self.shortfall() >= before - _EPSILON:
            self.restore(state)

    def release(self, g: int) -> None:
        """Take group ``g``'s traffic off every factory, to pour it again."""
        for j in self.pairs[g]:
            if self.shares[j] > 0:
                self._move(j, g, -self.shares[j])
                self.shares[j] = 0.0
        self.unserved[g] = 1.0


# Re-pours after the first pass: each lets a group move to what others left cheaper (block
# coordinate descent). Two close most of what the first pass's order leaves: on a thousand
# factories the gap to the LP optimum falls from about 1.6% to 0.9-1.5%.
REFINING_PASSES = 2
# Starved groups repaired at most (each repair re-places its neighbours: bounded work).
_REPAIRS = 10


def _pour(problem: Problem, order: list[int], passes: int) -> _WaterFiller:
    filler = _WaterFiller(problem)
    order = [g for g in order if filler.pairs[g]]
    for g in order:
        filler.fill(g)
    for g in [g for g in order if filler.unserved[g] > _EPSILON][:_REPAIRS]:
        filler.repair(g, order)
    for _ in range(passes):
        for g in order:
            filler.release(g)
            filler.fill(g)
    return filler


def _solution(problem: Problem, filler: _WaterFiller, status: str) -> Solution:
    x = np.asarray(filler.shares, dtype=np.float64)
    x[x <= _EPSILON] = 0.0
    unserved = np.asarray(filler.unserved, dtype=np.float64)
    return Solution(x=x, unserved=unserved, objective=objective_value(problem, x, unserved),
                    status=status)


def assign_greedily(problem: Problem, status: str, passes: int = REFINING_PASSES) -> Solution:
    """Greedy shares for every group; what does not fit anywhere is left unserved.

    With ``passes`` (the fallback), groups are poured in two orders, each refined by
    re-pouring, and the cheaper result is kept: no one order wins on every network. Without
    (the LP's seed), one quick pour in slot-regret order, the better seed where cheap
    capacity is contended.
    """
    pairs = primary_pairs_by_group(problem)
    one = _solution(problem, _pour(problem, _slot_regret_order(problem, pairs), passes), status)
    if passes == 0:
        return one
    other = _solution(problem, _pour(problem, _group_regret_order(problem, pairs), passes),
                      status)
    return other if other.objective < one.objective else one
