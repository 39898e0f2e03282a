"""The fallback when the LP cannot answer: marginal-cost water-filling, groups by regret, then
swaps and re-pours until they stop paying.

It reads the same :class:`~tdn.topology.problem.Problem` as the LP (same eligibility, costs,
capacities and queueing segments) and prices every step as the LP's objective would: a share
placed on a factory costs its per-request cost plus the queueing price of the capacity segment
it fills, plus churn against the previous plan. Each group in turn pours its demand onto
whichever candidate is cheapest *at the margin*, segment by segment, so it spreads across
factories as they fill instead of stacking one to the brim. A slice dearer than leaving the
share unserved (the LP's unserved penalty) is never poured.

Groups go in order of regret, as in Vogel's approximation for transport problems: a group that
would lose most by missing its best options goes before one that would hardly notice. Two
measures of regret are tried (per group against its second-best factory; per slot against its
dearest), and a group the order starved is repaired by moving its neighbours aside.

What no order gets right is who should have the slots of a factory filled to a queueing
segment's end or to capacity (where water-filling stops, and where most factories end at the
optimum): whoever came first keeps them, though another group would save more per slot there,
or would otherwise go unserved. The LP settles it with a price per slot strictly between two
segment marginals, its capacity dual, so the fallback estimates those duals
(:mod:`tdn.topology.prices`) and pours once more charging at least them per slot: each group
then takes the slots that are worth most to it at the prices everyone faces, not the first
ones left. The cheapest pour (all of them on a small network) is refined.

Refinement repairs what the pour still got wrong. No group gains by moving *alone* at a
factory filled to a segment's end (block coordinate descent stalls there), so it swaps:
at each factory, the group that loses least per slot by moving to its best alternative gives
slots to the group that gains most per slot by taking them, from its dearest slice or its
unserved share (so stranded demand is priced as the LP prices it); then every group is
re-poured against what the others left. Every swap is sized to stay within the segments it
was priced on, so each lowers the LP's objective; the cheapest assignment stands.
Everything is deterministic, so the same input gives the same fallback plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain, pairwise

import numpy as np

from tdn.topology.prices import capacity_prices
from tdn.topology.problem import Problem, Solution, objective_value
from tdn.topology.tables import Floats, Ints

_EPSILON = 1e-12


def _edges(problem: Problem) -> tuple[Ints, list[int]]:
    """The primary-eligible pairs (sorted by group, cheapest first) and where each group's
    run of them starts and ends."""
    prim = np.flatnonzero(problem.primary)
    edges = np.searchsorted(problem.group[prim], np.arange(problem.group_count + 1))
    return prim, edges.tolist()


def _group_regret_order(problem: Problem) -> list[int]:
    """Groups by how much more their second-best factory costs them than their best."""
    prim, edges = _edges(problem)
    starts = np.asarray(edges[:-1], dtype=np.int64)
    ends = np.asarray(edges[1:], dtype=np.int64)
    count = ends - starts
    regret = np.zeros(problem.group_count, dtype=np.float64)
    two = count >= 2
    regret[two] = problem.objective_rate[two] * (problem.cost[prim[starts[two] + 1]]
                                                 - problem.cost[prim[starts[two]]])
    regret[count == 1] = math.inf  # no alternative at all: goes first
    order: list[int] = np.lexsort((np.arange(problem.group_count), -regret)).tolist()
    return order


def _slot_regret_order(problem: Problem) -> list[int]:
    """Groups by what they would lose per slot of their best factory if pushed down to their
    dearest option. When the cheap factories are contended (big, cheap centers), the capacity
    should go where each slot saves most, as the LP's duals would price it; the difference to
    the second best is small for everyone there and says little."""
    prim, edges = _edges(problem)
    starts = np.asarray(edges[:-1], dtype=np.int64)
    ends = np.asarray(edges[1:], dtype=np.int64)
    count = ends - starts
    regret = np.zeros(problem.group_count, dtype=np.float64)
    two = count >= 2
    best, worst = prim[starts[two]], prim[ends[two] - 1]
    regret[two] = (problem.cost[worst] - problem.cost[best]) / np.maximum(
        problem.duration[best], 1e-9)
    regret[count == 1] = math.inf
    order: list[int] = np.lexsort((np.arange(problem.group_count), -regret)).tolist()
    return order


def _runs_by_factory(factories: Ints, items: Ints) -> dict[int, list[int]]:
    """``items`` (sorted by factory) split into one list per factory, the first
    :data:`_SWAPS_PER_FACTORY` of each."""
    if len(items) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, factories[1:] != factories[:-1]])
    rank = np.arange(len(items)) - np.repeat(starts, np.diff(np.r_[starts, len(items)]))
    keep = rank < _SWAPS_PER_FACTORY
    out: dict[int, list[int]] = {}
    for f, item in zip(factories[keep].tolist(), items[keep].tolist(), strict=True):
        out.setdefault(f, []).append(item)
    return out


# Swaps tried per factory and sweep: the few most promising insiders and outsiders; and the
# candidates per group they are looked for among (each sweep is a few vectorised passes over
# them): the ones it uses, its cheapest _NEAR (more where there are few groups, up to about
# _NEAR_PAIRS pairs in all), and up to _REACH that cost less per request than its dearest slice.
_SWAPS_PER_FACTORY = 6
_NEAR = 32
_NEAR_PAIRS = 64_000
_REACH = 96

_State = tuple[list[float], list[float], list[float], list[float], list[set[int]]]


class _WaterFiller:
    """Loads per factory and shares per pair, filled one group at a time.

    Each factory keeps the price of its next slot (the queueing marginal of the segment it is
    filling, infinite when full), so a group's cheapest next slice is one vectorised pass over
    its candidates: per-request cost plus slot price times concurrency, the smallest wins."""

    def __init__(self, problem: Problem) -> None:
        o = problem.options
        ft = problem.factories
        self.problem = problem
        # Per factory: its segments' marginals, and the width of every segment but the
        # overflow (the overflow runs from the end of those to the capacity: its width is at
        # most theirs, so K x segment never falls short of the capacity).
        self.marginals = problem.marginals.tolist()
        self.capacity = ft.capacity.tolist()
        self.segment = problem.widths[:, 0].tolist()
        self.tokens_left = [t if t > 0 else math.inf for t in ft.token_capacity.tolist()]
        self.load = [0.0] * len(ft)
        self.price: Floats = np.zeros(len(ft), dtype=np.float64)
        for f in range(len(ft)):
            self._reprice(f)
        self.conc = problem.concurrency
        self.cap = problem.share_cap
        self.factory = problem.factory
        self.previous = problem.previous
        self.rate = problem.objective_rate.tolist()
        # What leaving a share unserved costs: no slice dearer than that is worth pouring
        # (only a capacity price can make one so).
        self.unserved_cost = (problem.objective_rate * problem.penalty).tolist()
        self.tokens = problem.tokens_per_s.tolist()
        self.churn = [o.churn_penalty if had else 0.0 for had in problem.has_previous.tolist()]
        self.shares = [0.0] * len(problem.group)
        self.x: Floats = np.zeros(len(problem.group), dtype=np.float64)  # shares, as an array
        self.changed: set[int] = set()  # factories whose load moved since this was cleared
        self.unserved = [1.0] * problem.group_count
        self.used: list[set[int]] = [set() for _ in range(problem.group_count)]
        # Per group, cheapest first: pair, factory, rate x cost, concurrency.
        prim, edges = _edges(problem)
        factory = problem.factory[prim]
        static = problem.objective_rate[problem.group[prim]] * problem.cost[prim]
        conc = problem.concurrency[prim]
        spans = list(pairwise(edges))
        self.v_pair = [prim[a:b] for a, b in spans]
        self.v_factory = [factory[a:b] for a, b in spans]
        self.v_static = [static[a:b] for a, b in spans]
        self.v_conc = [conc[a:b] for a, b in spans]
        self.prim_group, self.prim_static = problem.group[prim], static
        # What swaps look at: each group's cheapest few candidates (and whatever it uses).
        near = max(_NEAR, _NEAR_PAIRS // max(problem.group_count, 1))
        self.near = np.concatenate([prim[a:min(b, a + near)] for a, b in spans]
                                   or [np.zeros(0, dtype=np.int64)])

    def _reprice(self, f: int) -> None:
        """The price of factory ``f``'s next slot after its load changed."""
        load, capacity, segment = self.load[f], self.capacity[f], self.segment[f]
        if load >= capacity - _EPSILON or self.tokens_left[f] <= _EPSILON:
            self.price[f] = math.inf
            return
        k = int(load / segment)
        if (k + 1) * segment - load <= 1e-9 * segment:  # at a segment boundary, up to float error
            k += 1
        marginals = self.marginals[f]
        self.price[f] = marginals[min(k, len(marginals) - 1)]

    def _amount(self, g: int, j: int, remaining: float) -> float:
        """How much of group ``g`` pair ``j`` takes at its current price."""
        f = int(self.factory[j])
        load, capacity, segment = self.load[f], self.capacity[f], self.segment[f]
        k = int(load / segment)
        room = (k + 1) * segment - load
        if room <= 1e-9 * segment:
            room = segment
        room = min(room, capacity - load)
        conc = float(self.conc[j])
        amount = remaining if conc <= 0 else min(remaining, room / conc)
        tps = self.tokens[g]
        if tps > 0 and math.isfinite(self.tokens_left[f]):
            amount = min(amount, self.tokens_left[f] / tps)
        amount = min(amount, float(self.cap[j]) - self.shares[j])
        kept = float(self.previous[j]) - self.shares[j]
        if self.churn[g] > 0 and kept > _EPSILON:
            amount = min(amount, kept)  # the slice up to the previous share is priced apart
        return amount

    def _marginals(self, g: int) -> Floats:
        """What the next slice of group ``g`` costs on each of its candidates."""
        factories = self.v_factory[g]
        price = self.price[factories]
        # A full factory (price infinite) is closed even to a group of no traffic (0 x inf).
        marginal: Floats = self.v_static[g] + np.where(
            np.isfinite(price), self.v_conc[g] * np.where(np.isfinite(price), price, 0.0),
            math.inf)
        pairs = self.v_pair[g]
        full = self.x[pairs] >= self.cap[pairs] - _EPSILON
        if full.any():
            marginal = np.where(full, math.inf, marginal)  # at its share cap: closed
        churn = self.churn[g]
        if churn > 0:
            # Keeping the previous split is cheaper than moving: below its previous share a
            # pair is priced cost - churn, above it cost + churn (as in the LP).
            pairs = self.v_pair[g]
            kept = self.previous[pairs] - np.fromiter(
                (self.shares[j] for j in pairs.tolist()), dtype=np.float64, count=len(pairs))
            marginal = marginal + np.where(kept > _EPSILON, -churn, churn) * self.rate[g]
        return marginal

    def _marginal(self, g: int, i: int, j: int) -> float:
        """:meth:`_marginals` for one candidate (index ``i`` of group ``g``'s, pair ``j``),
        computed with the same operations in the same order, so the same value."""
        price = float(self.price[int(self.factory[j])])
        if not math.isfinite(price) or self.shares[j] >= float(self.cap[j]) - _EPSILON:
            return math.inf
        marginal = float(self.v_static[g][i]) + float(self.v_conc[g][i]) * price
        churn = self.churn[g]
        if churn > 0:
            kept = float(self.previous[j]) - self.shares[j]
            marginal = marginal + (-churn if kept > _EPSILON else churn) * self.rate[g]
        return marginal

    def _move(self, j: int, g: int, amount: float) -> None:
        f = int(self.factory[j])
        self.shares[j] += amount
        if self.shares[j] > _EPSILON:
            self.used[g].add(j)
        else:
            self.shares[j] = 0.0
            self.used[g].discard(j)
        self.x[j] = self.shares[j]
        self.changed.add(f)
        self.load[f] += amount * float(self.conc[j])
        if math.isfinite(self.tokens_left[f]):
            self.tokens_left[f] -= amount * self.tokens[g]
        self._reprice(f)

    def fill(self, g: int, avoid: frozenset[int] = frozenset()) -> None:
        """Pour group ``g``'s unassigned share onto the cheapest margins, slice by slice,
        staying off the factories in ``avoid``.

        The candidates' marginals are computed once: a slice changes only its own factory's
        price and its own pair's share, and a group has one pair per factory, so only the
        marginal of the candidate just poured onto moves. A candidate with a mere sliver of
        room or tokens left is closed for the rest of the pour (nothing it depends on changes
        while other candidates take slices)."""
        remaining = self.unserved[g]
        if remaining > _EPSILON and len(self.v_factory[g]):
            marginal = self._marginals(g)
            if avoid:
                marginal[np.isin(self.v_factory[g], list(avoid))] = math.inf
            pairs = self.v_pair[g]
            limit = self.unserved_cost[g]
            while remaining > _EPSILON:
                i = int(marginal.argmin())
                if not float(marginal[i]) < limit:
                    break
                j = int(pairs[i])
                amount = self._amount(g, j, remaining)
                if amount <= _EPSILON:
                    marginal[i] = math.inf  # a sliver of room or tokens: not worth a slice
                    continue
                self._move(j, g, amount)
                remaining -= amount
                marginal[i] = self._marginal(g, i, j)
        self.unserved[g] = max(remaining, 0.0)

    def release(self, g: int) -> None:
        """Take group ``g``'s traffic off every factory, to pour it again."""
        for j in sorted(self.used[g]):
            self._move(j, g, -self.shares[j])
        self.unserved[g] = 1.0

    def snapshot(self) -> _State:
        return (list(self.shares), list(self.load), list(self.tokens_left),
                list(self.unserved), [set(u) for u in self.used])

    def restore(self, state: _State) -> None:
        shares, load, tokens_left, unserved, used = state
        self.shares, self.load, self.tokens_left = list(shares), list(load), list(tokens_left)
        self.x = np.asarray(self.shares, dtype=np.float64)
        self.unserved, self.used = list(unserved), [set(u) for u in used]
        for f in range(len(self.load)):
            self._reprice(f)

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
        scarce = frozenset(self.v_factory[g].tolist())
        candidates = set(scarce)
        near: list[int] = []
        for _ in range(2):
            near = [h for h in order if any(int(self.factory[j]) in candidates
                                            for j in self.used[h])]
            candidates |= {f for h in near for f in self.v_factory[h].tolist()}
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

    def solution(self, status: str) -> Solution:
        x = self.x.copy()
        x[x <= _EPSILON] = 0.0
        unserved = np.asarray(self.unserved, dtype=np.float64)
        return Solution(x=x, unserved=unserved,
                        objective=objective_value(self.problem, x, unserved), status=status)

    def exchange(self) -> int:
        """One sweep of swaps at every factory: the group there that loses least per slot by
        moving to its best alternative (another factory, or leaving the share unserved at the
        LP's penalty) gives its slots to the group elsewhere that gains most per slot by taking
        them (from its dearest slice, or from its unserved share). The factory's load does not
        change, so its queueing cost does not either; each swap is sized to stay within the
        queueing segments the estimate priced, which makes every one a strict improvement
        (without churn; with it, the round's objective is checked). Several swaps may share a
        factory, but no group or other factory is touched twice in a sweep; returns how many
        were made. Block coordinate descent cannot find these: no group gains by moving alone
        at a factory filled to a segment's end (where water-filling stops) or to capacity."""
        p = self.problem
        used = np.fromiter(chain.from_iterable(self.used), dtype=np.int64)
        looked_at = np.zeros(len(p.group), dtype=np.bool_)
        looked_at[self.near] = True
        looked_at[self._reach(used)] = True
        looked_at[used] = True
        prim = np.flatnonzero(looked_at)
        if len(prim) == 0:
            return 0
        g, f = p.group[prim], p.factory[prim]
        conc = p.concurrency[prim]
        rate = p.objective_rate[g]
        static = rate * p.cost[prim]
        shares = self.x[prim]
        if p.options.churn_penalty > 0:
            churn = np.asarray(self.churn, dtype=np.float64)[g] * rate
            below = p.previous[prim] - shares > _EPSILON  # moving on keeps the previous split
            enter_static = static + np.where(below, -churn, churn)
            kept = shares - p.previous[prim] <= _EPSILON  # moving off leaves it
            leave_static = static + np.where(kept, churn, -churn)
        else:
            enter_static = leave_static = static
        load = np.asarray(self.load, dtype=np.float64)
        segment = np.asarray(self.segment, dtype=np.float64)
        marginals = p.marginals
        top = np.clip(np.ceil(load / np.where(segment > 0, segment, 1.0) - 1e-9) - 1, 0,
                      marginals.shape[1] - 1).astype(np.int64)
        in_top = load - top * segment  # load a leaving slice frees at the top segment's price
        room = np.where(np.isfinite(self.price),
                        np.minimum((top + 1) * segment - load, np.asarray(self.capacity) - load),
                        0.0)
        room = np.where((room <= 1e-9 * segment) & np.isfinite(self.price),
                        np.minimum(segment, np.asarray(self.capacity) - load), room)
        runs = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        first_of = np.full(p.group_count, -1, dtype=np.int64)
        first_of[g[runs]] = runs
        index = np.arange(len(prim))
        # A slice entering at its factory's next-slot price: each group's best and second best.
        price = self.price[f]
        cap_room = p.share_cap[prim] - shares  # share a pair may still take
        enter = enter_static + np.where(np.isfinite(price) & (cap_room > _EPSILON),
                                        conc * np.where(np.isfinite(price), price, 0.0),
                                        math.inf)
        best = np.minimum.reduceat(enter, runs)[np.searchsorted(runs, index, side="right") - 1]
        is_best = enter <= best
        best_at = np.full(p.group_count, -1, dtype=np.int64)
        best_at[g[is_best][::-1]] = index[is_best][::-1]  # the first (cheapest) of ties
        second = np.where(index == best_at[g], math.inf, enter)
        second_best = np.minimum.reduceat(second, runs)
        second_at = np.full(p.group_count, -1, dtype=np.int64)
        is_second = second <= second_best[np.searchsorted(runs, index, side="right") - 1]
        second_at[g[is_second][::-1]] = index[is_second][::-1]
        # Each group's dearest used slice, valued at the price its top segment frees.
        on = shares > _EPSILON
        leave = leave_static + conc * marginals[f, top[f]]
        dearest = np.full(p.group_count, -math.inf, dtype=np.float64)
        np.maximum.at(dearest, g[on], leave[on])
        dearest_at = np.full(p.group_count, -1, dtype=np.int64)
        is_dearest = on & (leave >= dearest[g])
        dearest_at[g[is_dearest]] = index[is_dearest]
        unserved = np.asarray(self.unserved, dtype=np.float64)
        short = unserved > 1e-9
        dearest[short] = (p.objective_rate * p.penalty)[short]
        dearest_at[short] = -1
        # Per slot at f: what an insider loses by leaving for its best other factory, and what
        # an outsider gains by moving its dearest slice there.
        alt_at = np.where(f[np.maximum(best_at[g], 0)] != f, best_at[g], second_at[g])
        alt = np.where(alt_at >= 0, enter[np.maximum(alt_at, 0)], math.inf)
        # Or leaving the share unserved, at the LP's penalty (-1: no factory).
        stranded = (p.objective_rate * p.penalty)[g]
        alt_at = np.where(stranded < alt, -1, alt_at)
        alt = np.minimum(alt, stranded)
        # Slices of (next to) no traffic hold no slots worth swapping.
        movable = conc > 1e-9
        safe_conc = np.where(movable, conc, 1.0)
        loses = np.where(on & movable & np.isfinite(alt),
                         (alt - leave_static) / safe_conc, math.inf)
        dearest_factory = np.where(dearest_at[g] >= 0, f[np.maximum(dearest_at[g], 0)], -1)
        gains = np.where(np.isfinite(dearest[g]) & movable & (dearest_factory != f)
                         & (cap_room > _EPSILON),
                         (dearest[g] - enter_static) / safe_conc, -math.inf)
        F = len(self.load)
        cheapest_loss = np.full(F, math.inf)
        np.minimum.at(cheapest_loss, f, loses)
        dearest_gain = np.full(F, -math.inf)
        np.maximum.at(dearest_gain, f, gains)
        gain_per_slot = dearest_gain - cheapest_loss
        candidates = np.flatnonzero(gain_per_slot > 1e-9 * np.maximum(1.0, np.abs(dearest_gain)))
        if len(candidates) == 0:
            return 0
        # Per factory, insiders from cheapest to leave, outsiders from most eager to arrive.
        tolerance = 1e-9 * np.maximum(1.0, np.abs(gains))
        losing = np.flatnonzero(np.isfinite(loses) & (gain_per_slot[f] > 0))
        losing = losing[np.lexsort((losing, loses[losing], f[losing]))]
        winning = np.flatnonzero(gains > cheapest_loss[f] + tolerance)
        winning = winning[np.lexsort((winning, -gains[winning], f[winning]))]
        losers = _runs_by_factory(f[losing], losing)
        winners = _runs_by_factory(f[winning], winning)
        touched_groups: set[int] = set()
        touched_factories: set[int] = set()
        made = 0
        for at in candidates[np.argsort(-gain_per_slot[candidates], kind="stable")].tolist():
            # Several swaps may share this factory: its load stays as it is.
            out_queue, in_queue = losers.get(at, []), winners.get(at, [])
            li = wi = 0
            while li < len(out_queue) and wi < len(in_queue):
                ia, ib = out_queue[li], in_queue[wi]
                if gains[ib] - loses[ia] <= tolerance[ib]:
                    break
                a_group, b_group = int(g[ia]), int(g[ib])
                ja = int(alt_at[ia])
                jb = int(dearest_at[b_group])
                other_a = int(f[ja]) if ja >= 0 else -1
                other_b = int(f[jb]) if jb >= 0 else -1
                if a_group in touched_groups or other_a in touched_factories:
                    li += 1
                    continue
                # (other_a == other_b is fine: the net change there costs at most the
                # estimate, queueing cost being convex.)
                if (b_group in touched_groups or other_b in touched_factories
                        or a_group == b_group):
                    wi += 1
                    continue
                # Slots at the factory that change hands, within every segment priced above.
                slots = shares[ia] * conc[ia]
                if ja >= 0 and conc[ja] > 0:
                    slots = min(slots, room[other_a] / conc[ja] * conc[ia])
                if ja >= 0:
                    slots = min(slots, cap_room[ja] * conc[ia])
                slots = min(slots, cap_room[ib] * conc[ib])
                if jb >= 0:
                    slots = min(slots, shares[jb] * conc[ib], in_top[other_b] / conc[jb]
                                * conc[ib] if conc[jb] > 0 else math.inf)
                else:
                    slots = min(slots, unserved[b_group] * conc[ib])
                pa, pb = int(prim[ia]), int(prim[ib])
                landing = int(prim[ja]) if ja >= 0 else -1
                slots = min(slots, self._token_room(pa, landing, pb))
                li, wi = li + 1, wi + 1
                if not slots > 1e-9:
                    continue
                self._move(pa, a_group, -slots / conc[ia])
                if ja >= 0:
                    self._move(landing, a_group, slots / conc[ia])
                else:
                    self.unserved[a_group] += slots / conc[ia]
                if jb >= 0:
                    self._move(int(prim[jb]), b_group, -slots / conc[ib])
                else:
                    self.unserved[b_group] = max(self.unserved[b_group] - slots / conc[ib], 0.0)
                self._move(pb, b_group, slots / conc[ib])
                touched_groups |= {a_group, b_group}
                touched_factories |= {other_a, other_b} - {-1}
                made += 1
        return made

    def _reach(self, used: Ints) -> Ints:
        """Each group's candidates cheaper per request than its dearest slice (the only ones
        it could gain by moving to), up to _REACH of them."""
        out = [pairs[:min(_REACH, n)] for pairs, n in zip(self.v_pair, self.within(used),
                                                           strict=True) if n]
        return np.concatenate(out) if out else used[:0]

    def within(self, used: Ints) -> list[int]:
        """Per group, how many of its candidates cost less per request than its dearest slice
        as now priced (all of them while part of it is unserved): pairs are cheapest first, so
        these are a prefix of the group's run, and no other candidate could take a slice."""
        p = self.problem
        g = p.group[used]
        load = np.asarray(self.load)[p.factory[used]]
        segment = np.asarray(self.segment)[p.factory[used]]
        top = np.clip(np.ceil(load / np.where(segment > 0, segment, 1.0) - 1e-9) - 1, 0,
                      p.marginals.shape[1] - 1).astype(np.int64)
        dearest = np.full(p.group_count, -math.inf)
        np.maximum.at(dearest, g, p.objective_rate[g] * p.cost[used] + p.concurrency[used]
                      * p.marginals[p.factory[used], top])
        short = np.asarray(self.unserved) > 1e-9
        dearest[short] = math.inf
        counts: list[int] = np.bincount(
            self.prim_group, weights=self.prim_static <= dearest[self.prim_group],
            minlength=p.group_count).astype(np.int64).tolist()
        return counts

    def _token_room(self, leaving: int, landing: int, arriving: int) -> float:
        """Slots a swap may move (pairs: the leaving group's at the swap's factory, where it
        lands or -1 for unserved, the arriving group's at the swap's factory) before a factory
        with a token-rate limit runs out: where the leaving group lands, and the swap's factory
        when the arriving group needs more tokens per slot than the leaving one."""
        g_out, g_in = int(self.problem.group[leaving]), int(self.problem.group[arriving])
        at = int(self.factory[leaving])
        conc_out, conc_in = float(self.conc[leaving]), float(self.conc[arriving])
        tps_out, tps_in = self.tokens[g_out], self.tokens[g_in]
        limit = math.inf
        other = int(self.factory[landing]) if landing >= 0 else -1
        if other >= 0 and math.isfinite(self.tokens_left[other]) and tps_out > 0:
            limit = min(limit, self.tokens_left[other] / tps_out * conc_out)
        net = tps_in / conc_in - tps_out / conc_out  # tokens per slot at the swap's factory
        if math.isfinite(self.tokens_left[at]) and net > 0:
            limit = min(limit, self.tokens_left[at] / net)
        return limit


class _PricedFiller(_WaterFiller):
    """A :class:`_WaterFiller` that may charge slot and token prices while it pours: a class
    of its own so that the LP's seed pour, which charges none, pays nothing for them. (Nor may
    the base class take their attributes: at 30 CPython 3.11 stops sharing an instance dict's
    keys and every attribute read in the pour gets slower, 4% on the seed.)"""

    def __init__(self, problem: Problem) -> None:
        self.floor: list[float] = []  # per factory, the least a slot is charged; [] for none
        super().__init__(problem)
        self.plain_static = self.v_static  # what v_static is while no token price is charged

    def _reprice(self, f: int) -> None:
        """The queueing marginal, raised to the factory's floor (a full factory stays closed:
        its price is infinite)."""
        super()._reprice(f)
        if self.floor and self.price[f] < self.floor[f]:
            self.price[f] = self.floor[f]

    def price_slots(self, floor: Floats | None, token_price: Floats | None = None) -> None:
        """Charge at least ``floor[f]`` per slot at factory ``f``, and ``token_price[f]`` per
        output token/s placed there on top of each share's cost, from now on (None: only the
        queueing marginals and the costs, as the LP's objective does). A slot priced at its
        estimated LP dual goes to the groups that save most by it, not to whoever pours first;
        once the factory's load reaches the segment whose marginal is above the floor, that
        marginal rules again, so a floor only sets who fills a factory up to where the optimum
        would. (Tokens have no segments: a token price is a surcharge, and the pour still stops
        where the token rate runs out.)"""
        self.v_static = self.plain_static
        self.floor = [] if floor is None else floor.tolist()
        if floor is not None and token_price is not None and token_price.any():
            prim, edges = _edges(self.problem)
            charged = self.prim_static + token_price[self.problem.factory[prim]] * (
                self.problem.tokens_per_s[self.prim_group])
            self.v_static = [charged[a:b] for a, b in pairwise(edges)]
        for f in range(len(self.load)):
            self._reprice(f)


# Refinement rounds after the first pour: each makes up to _SWEEPS sweeps of swaps, then
# re-pours every group (block coordinate descent), and the cheapest round stands. Rounds stop
# once one gains less than _STALL of the objective; the caps (at most REFINING_ROUNDS, and about
# _GROUP_POURS group re-pours in all, but at least _MIN_ROUNDS rounds) bound the work on a
# network where each round still finds a sliver.
REFINING_ROUNDS = 30
_SWEEPS = 4
_STALL = 2e-5
_MIN_ROUNDS = 5
_GROUP_POURS = 100_000
# Up to this many candidate pairs every pour is refined (no one pour wins on every network);
# above, only the cheapest, to bound the work.
_ALL_POURS_UP_TO = 5_000
# Starved groups repaired at most (each repair re-places its neighbours: bounded work).
_REPAIRS = 10


def _pour(problem: Problem, order: list[int], prices: tuple[Floats, Floats] | None = None,
          *, repair: bool = True) -> tuple[_WaterFiller, list[int]]:
    """Every group poured in ``order`` (charged ``prices``, per slot and per token, when
    given: see :meth:`_PricedFiller.price_slots`), and with ``repair`` the starved repaired
    (:func:`_repair`); the filler comes back charging what the objective does, for repair
    and refinement."""
    if prices is None:
        filler = _WaterFiller(problem)
    else:
        priced = _PricedFiller(problem)
        priced.price_slots(*prices)
        filler = priced
    order = [g for g in order if len(filler.v_pair[g])]
    for g in order:
        filler.fill(g)
    if isinstance(filler, _PricedFiller):
        filler.price_slots(None)
    if repair:
        _repair(filler, order)
    return filler, order


def _repair(filler: _WaterFiller, order: list[int]) -> None:
    """Repair the first _REPAIRS groups the pour starved (each re-places its neighbours:
    where much is unserved this takes ten times as long as the pour itself)."""
    for g in [g for g in order if filler.unserved[g] > _EPSILON][:_REPAIRS]:
        filler.repair(g, order)


def _refine(filler: _WaterFiller, order: list[int], rounds: int, status: str,
            seconds_left: Callable[[], float] | None = None) -> Solution:
    best = filler.solution(status)
    # Each round may re-pour every group: fewer rounds where there are many, to bound the work.
    rounds = min(rounds, max(_MIN_ROUNDS, _GROUP_POURS // max(len(order), 1)))
    # A group is re-poured only when one of the factories that could take a slice from it
    # (those cheaper per request than its dearest slice) changed load since its last pour:
    # otherwise it would pour as before. (Clock stamps: when each factory last changed, when
    # each group was last poured.)
    changed_at = np.zeros(len(filler.load), dtype=np.int64)
    poured_at = np.full(filler.problem.group_count, -1, dtype=np.int64)
    clock = 0
    for _ in range(rounds):
        if seconds_left is not None and seconds_left() <= 0:
            break
        filler.changed.clear()
        for _ in range(_SWEEPS):
            if not filler.exchange():
                break
        clock += 1
        changed_at[list(filler.changed)] = clock
        used = np.fromiter(chain.from_iterable(filler.used), dtype=np.int64)
        reach = filler.within(used)
        for g in order:
            if reach[g] and poured_at[g] >= changed_at[filler.v_factory[g][:reach[g]]].max():
                continue
            before = {j: filler.shares[j] for j in filler.used[g]}
            stranded = filler.unserved[g]
            filler.changed.clear()
            filler.release(g)
            filler.fill(g)
            clock += 1
            if abs(filler.unserved[g] - stranded) > _EPSILON or before.keys() != filler.used[
                    g] or any(abs(filler.shares[j] - v) > _EPSILON for j, v in before.items()):
                changed_at[list(filler.changed)] = clock
            poured_at[g] = clock
        found = filler.solution(status)
        gained = best.objective - found.objective
        if gained > 0:
            best = found
        if gained <= _STALL * abs(best.objective):
            break
    return best


def assign_greedily(problem: Problem, status: str, passes: int = REFINING_ROUNDS,
                    seconds_left: Callable[[], float] | None = None) -> Solution:
    """Greedy shares for every group; what does not fit anywhere is left unserved.

    With ``passes`` (the fallback: at most that many refining rounds), groups are poured in
    slot-regret order with every slot charged at least its estimated LP dual (and every token
    at its own, where factories declare token rates; see
    :func:`~tdn.topology.prices.capacity_prices`): the pour that gets contended factories
    right. As a safety net they are also poured at the queueing marginals alone, on a small
    network in group-regret order too (no one pour wins on every network), and, where token
    rates are declared, with slot prices found without them. Every pour is refined by swaps
    and re-pours on a small network, else only the cheapest, and the cheapest result stands.
    Without ``passes`` (the LP's seed), one quick pour in slot-regret order at the queueing
    marginals, the better seed where cheap capacity is contended. ``seconds_left``, when given,
    ends refining once it reaches zero (checked between rounds): the cheapest assignment found
    by then stands.
    """
    order = _slot_regret_order(problem)
    if passes == 0:
        return _pour(problem, order)[0].solution(status)
    small = int(problem.primary.sum()) <= _ALL_POURS_UP_TO
    pours = [_pour(problem, order, capacity_prices(problem), repair=small),
             _pour(problem, order, repair=small)]
    if problem.factories.token_capacity.any():
        pours.append(_pour(problem, order, capacity_prices(problem, tokens=False),
                           repair=small))
    if small:
        pours.append(_pour(problem, _group_regret_order(problem)))
        refined = [_refine(f, o, passes, status, seconds_left) for f, o in pours]
        return min(refined, key=lambda solution: solution.objective)  # the first of ties
    # Only the cheapest pour is repaired and refined, to leave refinement its time; the
    # group-regret pour, the least likely to be cheapest, is left out.
    poured = [f.solution(status).objective for f, _ in pours]
    filler, order = pours[poured.index(min(poured))]
    _repair(filler, order)
    return _refine(filler, order, passes, status, seconds_left)
