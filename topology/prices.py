"""Capacity prices for the greedy fallback: what a unit of concurrency (and of output tokens/s)
at each factory is worth at the LP's optimum, estimated without the LP.

Why: a greedy pour prices a slot at its queueing segment's marginal, which says nothing about
who *else* wants it. At the optimum most factories sit on a segment boundary (typically the
SLO-safe load, where the overflow segment costs a hundred times more), and the slot there is
worth whatever the groups competing for it would lose by going elsewhere: a value strictly
between two segment marginals that no local move can discover. Poured with the LP's own duals
as price floors, the greedy lands within 0.8% of the optimum (0.2% after refinement) where it
is 1.6-1.7% off without; this module finds such prices itself.

How: the LP's dual, smoothed. The LP (:mod:`tdn.topology.lp`) minimises
``sum_j rate*cost_j x_j + penalty u + sum_fk marginal_k s_fk`` with each group's shares (each at
most its cap) and unserved part summing to 1 (dual ``eta_g``, the price of serving a unit of
the group) and each factory's load ``sum_j conc_j x_j`` equal to its segments' fill (dual
``p_f``, the slot price). Its Lagrangian dual is

    sum_g eta_g - sum_j cap_j (eta_g - b_j)^+ - sum_g (eta_g - penalty_g)^+
                - sum_fk segment_f (p_f - marginal_k)^+,      b_j = rate*cost_j + p_f conc_j

a concave, piecewise linear and highly degenerate function. Each ``(z)^+`` is replaced by
``tau * log(1 + e^(z / tau))``, which makes it smooth, its maximiser tending to one of the LP
dual's as ``tau`` goes to zero; its pair shares are ``cap_j * sigmoid((eta_g - b_j) / tau)``,
every group's candidates in use at once, weighed by how close to its cheapest each is. The
smoothed dual is maximised by block coordinate ascent, Sinkhorn-style: Newton steps on every
group's ``eta`` (its shares sum to one), then one on every factory's ``p`` (the load the groups
send equals what the factory's segments take at that price), each block separable and so one
vectorised pass over the pairs; ``tau`` shrinks geometrically from one sweep to the next
(annealing), each sweep warm-started from the last. Group terms are kept per request (divided
by the group's rate) so that one ``tau`` suits groups of every size. A factory's token-rate
row, where it declares one, is a segment of marginal 0 as wide as the rate, with a price of its
own per output token/s (added to ``b_j`` for the group's tokens).

Measured on the scale benchmark's instances (docs/decisions.md, "Greedy price discovery
(session 4)"): prices in 0.02-0.5 s, a pour with them 0.2-0.45% from the optimum at a thousand
factories (1.6-3.6% without). Churn is left out (the pour and refinement still price it):
prices need only be good enough to tell the pour who should have the contended slots.
Everything is a fixed number of vectorised passes: the same problem gives the same prices.
"""

from __future__ import annotations

import numpy as np

from tdn.topology.problem import Problem
from tdn.topology.tables import Floats

# Sweeps of block coordinate ascent, and the smoothing at the first and last: in units of the
# typical per-request cost (the median of each group's cheapest candidate), from a half (every
# candidate within a few units shares) down to well below any difference that matters. Fewer
# sweeps or a faster schedule left prices visibly short (1,000 x 1,000: 20 sweeps, pour 1.0%
# from the optimum; 40, 0.4%).
SWEEPS = 40
_TAU_FIRST = 0.5
_TAU_LAST = 1.0 / 750.0
# Smoothing of the factories' side relative to the groups', per slot (divided by the median
# slot-seconds a request holds): sharper than the groups' (a slot price must separate segment
# marginals a few hundredths apart), not so sharp that its Newton steps jump.
_FACTORY_TAU = 0.5
# Newton steps on every group's price per sweep (each is one pass over the pairs), and the
# largest move of any price in one step, in units of tau (a sigmoid's Newton step far from its
# root would overshoot).
_GROUP_STEPS = 2
_MAX_STEP = 5.0


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z), in place on ``z`` (float32: the pass over every pair is most of the
    work, and single precision is five times faster and far finer than the smoothing)."""
    np.multiply(z, 0.5, out=z)
    np.tanh(z, out=z)
    np.add(z, 1.0, out=z)
    np.multiply(z, 0.5, out=z)
    return z


def capacity_prices(problem: Problem, sweeps: int = SWEEPS, *, tokens: bool = True,
                    ) -> tuple[Floats, Floats]:
    """Per factory, the estimated LP duals of its capacity rows (see the module's doc): the
    price of a unit of planned concurrency, and of a unit of output tokens/s on a factory that
    declares a token rate (0 elsewhere), both 0 or more. The greedy pour charges at least the
    first for a slot, up to the load where the factory's queueing marginal rises above it, and
    the second on top of every share's cost. ``tokens=False`` leaves the token rows out (token
    prices all 0): near-binding token rows the LP leaves slack can still get a price from the
    smoothed shares, which mix groups of different token rates at a tie, so the greedy pours
    both ways and keeps the cheaper."""
    F = len(problem.factories)
    price = np.zeros(F, dtype=np.float64)
    token_price = np.zeros(F, dtype=np.float64)
    prim = np.flatnonzero(problem.primary)
    if len(prim) == 0 or sweeps <= 0:
        return price, token_price
    g = problem.group[prim]
    f = problem.factory[prim]
    rate = problem.objective_rate[g]
    cost = problem.cost[prim]
    conc = problem.concurrency[prim]
    per_request = conc / rate  # slot-seconds a request holds on this pair (with its scale)
    cap = problem.share_cap[prim]
    runs = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # pairs are sorted by group
    counts = np.diff(np.r_[runs, len(prim)])
    groups = g[runs]
    penalty = problem.penalty[groups]
    marginals = problem.marginals  # factory x segment
    widths = problem.widths
    token_capacity = problem.factories.token_capacity
    limited = token_capacity > 0  # factories with a token-rate row
    tokens = tokens and bool(limited.any())
    per_token = problem.tokens_per_s[g]  # output tokens/s the whole group would send

    cheapest = np.minimum.reduceat(cost, runs)
    scale = float(np.median(cheapest))
    slot_seconds = float(np.median(per_request))
    if not scale > 0:
        scale = max(float(np.median(marginals[:, 0])) * slot_seconds, 1e-9)
    slot_seconds = max(slot_seconds, 1e-9)
    token_scale = max(float(np.median(per_token / rate)), 1e-9)  # tokens per request

    # Single precision where a pass touches every pair; sums go to float64 (bincount).
    cost32 = cost.astype(np.float32)
    per_request32 = per_request.astype(np.float32)
    cap32 = cap.astype(np.float32)
    load_weight = rate * cap * per_request  # rate x cap x per_request = cap x concurrency
    slope_weight = load_weight * per_request
    if tokens:
        tokens32 = (per_token / rate).astype(np.float32)
        token_weight = cap * per_token
        token_slope_weight = token_weight * per_token / rate
    eta = cheapest.copy()  # per group (in run order): its price per request
    b = np.empty(len(prim), dtype=np.float32)
    z = np.empty(len(prim), dtype=np.float32)
    for tau in np.geomspace(_TAU_FIRST * scale, _TAU_LAST * scale, sweeps).tolist():
        factory_tau = _FACTORY_TAU * tau / slot_seconds
        # Each pair's cost per request at the current slot prices.
        np.multiply(price.astype(np.float32)[f], per_request32, out=b)
        np.add(b, cost32, out=b)
        if tokens:
            b += token_price.astype(np.float32)[f] * tokens32  # below 0 while slack
        for _ in range(_GROUP_STEPS):
            np.subtract(np.repeat(eta.astype(np.float32), counts), b, out=z)
            np.multiply(z, np.float32(1.0 / tau), out=z)
            share = _sigmoid(z)
            served = np.add.reduceat(cap32 * share, runs, dtype=np.float64)
            slope = np.add.reduceat(cap32 * share * (1.0 - share), runs,
                                    dtype=np.float64) / tau
            unserved = 1.0 / (1.0 + np.exp(np.clip((penalty - eta) / tau, -500.0, 500.0)))
            served += unserved
            slope += unserved * (1.0 - unserved) / tau
            step = (1.0 - served) / np.maximum(slope, 1e-300)
            eta += np.clip(step, -_MAX_STEP * tau, _MAX_STEP * tau)
        np.subtract(np.repeat(eta.astype(np.float32), counts), b, out=z)
        np.multiply(z, np.float32(1.0 / tau), out=z)
        share64 = _sigmoid(z).astype(np.float64)
        load = np.bincount(f, weights=load_weight * share64, minlength=F)
        slope_load = np.bincount(f, weights=slope_weight * share64 * (1.0 - share64),
                                 minlength=F) / tau
        filled = 1.0 / (1.0 + np.exp(np.clip((marginals - price[:, None])
                                             / factory_tau, -500.0, 500.0)))
        supply = (widths * filled).sum(axis=1)
        slope_supply = (widths * filled * (1.0 - filled)).sum(axis=1) / factory_tau
        step = (load - supply) / np.maximum(slope_load + slope_supply, 1e-300)
        bound = _MAX_STEP * tau + price  # (a price may double in a sweep: overload)
        price = np.maximum(price + np.clip(step, -bound, bound), 0.0)
        if tokens:
            # The token row as a segment of marginal 0 and width the token rate, smoothed like
            # the queueing segments (a bare inequality made the price jump about on slivers of
            # smoothed shares): it may go below 0 while the row is slack, and is charged only
            # above.
            token_tau = _FACTORY_TAU * tau / token_scale
            sent = np.bincount(f, weights=token_weight * share64, minlength=F)
            slope_sent = np.bincount(f, weights=token_slope_weight * share64 * (1.0 - share64),
                                     minlength=F) / tau
            taken = 1.0 / (1.0 + np.exp(np.clip(-token_price / token_tau, -500.0, 500.0)))
            step = (sent - token_capacity * taken) / np.maximum(
                slope_sent + token_capacity * taken * (1.0 - taken) / token_tau, 1e-300)
            bound = _MAX_STEP * tau / token_scale + np.abs(token_price)
            token_price = np.where(limited, token_price + np.clip(step, -bound, bound), 0.0)
    return price, np.maximum(token_price, 0.0)
