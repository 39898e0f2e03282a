"""How much load a factory may be planned to carry before its queue breaks a TTFT SLO.

A factory is modelled as an M/M/c queue: ``c`` concurrency slots, requests arriving at random
and holding a slot for the factory's mean request duration ``D``. With offered load ``a``
(requests in flight, Little's law) the chance that a request waits longer than ``t`` is Erlang
C times an exponential tail::

    P(wait > t) = C(c, a) * exp(-(c - a) * t / D)

A request of a group meets its TTFT SLO when its wait stays within the group's *slack* (SLO less
round trip less unloaded TTFT). The **SLO-safe load** of a (group, factory) pair is the largest
``a`` for which ``P(wait > slack)`` stays at or below the options' ``slo_miss_target``, never above
the capacity the headroom leaves plannable. The LP keeps every factory's planned load within it
plus a priced overflow up to the headroom (:mod:`tdn.topology.problem` starts each factory's
overflow at the largest SLO-safe load of the groups it serves, at least 3/4 of the plannable
capacity, and scales each pair's concurrency by (overflow start) / SLO-safe, so a group with
little slack uses up a factory's capacity faster than one with plenty).

This is what replaces reading the observed TTFT back into the plan: the wait is predicted from
the load the plan itself places, so a plan that respects it does not have to be undone next
period. Everything here is vectorised over factories and pairs and has no state.
"""

from __future__ import annotations

import math

import numpy as np

from tdn.topology.tables import Floats, Ints

# Loads tried per factory, evenly from 0 to its plannable capacity; caps are interpolated
# between them, so a coarser grid only rounds the cap down a little.
GRID = 48
# Slack (s) treated as unbounded: beyond it every load up to the plannable capacity is safe.
_HUGE_S = 1e6
# Normalised slacks (slack / mean request duration) at which each factory size's SLO-safe load
# is tabulated: geometric from 0.001 to 100 durations, about 7% apart, so a pair finds its place
# by a logarithm instead of a search. Beyond 100 durations of slack every plannable load is safe.
_SLACK_UNIT = 1e-3
_SLACK_POINTS = 160
_SLACK_STEP = math.log1p(100.0 / _SLACK_UNIT) / (_SLACK_POINTS - 1)
_SLACK_GRID = _SLACK_UNIT * np.expm1(_SLACK_STEP * np.arange(_SLACK_POINTS))


def erlang_c(servers: Ints, offered: Floats) -> Floats:
    """P(wait > 0) in M/M/c for each row's ``servers`` (>= 1) and each offered load in the row
    (``offered`` has one row per entry of ``servers``); 1 where the load reaches the servers."""
    c = np.maximum(servers, 1).astype(np.int64)
    a = np.asarray(offered, dtype=np.float64)
    b = np.ones_like(a)
    # Erlang B by its stable recursion B(k) = a B(k-1) / (k + a B(k-1)), rows stopping at c.
    for k in range(1, int(c.max(initial=1)) + 1):
        step = a * b / (k + a * b)
        b = np.where((k <= c)[:, None], step, b)
    rho = a / c[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out = b / (1.0 - rho * (1.0 - b))
    return np.where(rho < 1.0, np.clip(out, 0.0, 1.0), 1.0)


def _inverse_tables(c: Floats, top: Floats, miss_target: float) -> tuple[Ints, Floats]:
    """Per distinct (slots, plannable) row: the SLO-safe load at each normalised slack of
    :data:`_SLACK_GRID` (slack in units of the mean request duration), and each factory's row.

    The least slack at which a load ``a`` is safe is ``D * (ln C(c, a) - ln target) / (c - a)``:
    the mean duration ``D`` only scales it, so one table per factory size serves every mix, and
    factories share few sizes (the Erlang recursion is the costly part)."""
    frac = np.linspace(0.0, 1.0, GRID)
    distinct, back = np.unique(np.stack([c, top]), axis=1, return_inverse=True)
    loads = distinct[1][:, None] * frac[None, :]
    wait = erlang_c(distinct[0].astype(np.int64), loads)
    log_target = math.log(miss_target) if miss_target < 1.0 else 0.0
    excess = np.log(np.maximum(wait, 1e-300)) - log_target
    per_duration = np.maximum(distinct[0][:, None] - loads, 1e-12)
    need = np.where(excess > 0, excess / per_duration, 0.0)
    need = np.maximum.accumulate(need, axis=1)
    if miss_target >= 1.0:
        need[:] = 0.0
    table = np.empty((distinct.shape[1], len(_SLACK_GRID)), dtype=np.float64)
    for row in range(distinct.shape[1]):
        k = np.clip(np.searchsorted(need[row], _SLACK_GRID, side="right") - 1, 0, GRID - 1)
        nxt = np.minimum(k + 1, GRID - 1)
        gap = need[row, nxt] - need[row, k]
        share = np.where(gap > 0, np.clip((_SLACK_GRID - need[row, k])
                                          / np.where(gap > 0, gap, 1.0), 0.0, 1.0), 0.0)
        table[row] = loads[row, k] + share * (loads[row, nxt] - loads[row, k])
    return back.reshape(-1).astype(np.int64), table


def slo_safe_loads(slots: Floats, plannable: Floats, mean_duration: Floats, *,
                   pair_factory: Ints, slack: Floats, miss_target: float) -> Floats:
    """Per pair: the largest load of its factory that keeps the pair's requests within their
    slack with probability ``1 - miss_target``, at most the factory's plannable capacity."""
    if len(pair_factory) == 0:
        return np.zeros(0, dtype=np.float64)
    c = np.maximum(np.floor(slots), 1.0)
    top = np.maximum(np.minimum(plannable, c * (1.0 - 1e-9)), 0.0)
    row, table = _inverse_tables(c, top, miss_target)
    # Slack in mean durations, placed on the geometric grid by its index (no search per pair).
    u = np.clip(slack, 0.0, _HUGE_S) / np.maximum(mean_duration, 1e-9)[pair_factory]
    position = np.clip(np.log1p(u / _SLACK_UNIT) / _SLACK_STEP, 0.0, len(_SLACK_GRID) - 1.0)
    k = np.minimum(position.astype(np.int64), len(_SLACK_GRID) - 2)
    share = position - k
    # One flat gather per end of the interval (a 2-D gather per term costs three).
    at = row[pair_factory] * table.shape[1] + k
    flat = table.ravel()
    low = flat[at]
    out: Floats = low + share * (flat[at + 1] - low)
    return out


def slo_safe_load(slots: float, plannable: float, mean_duration: float, slack: float,
                  miss_target: float) -> float:
    """:func:`slo_safe_loads` for one factory and one slack (for explanations and tests)."""
    return float(slo_safe_loads(np.array([slots]), np.array([plannable]),
                                np.array([mean_duration]),
                                pair_factory=np.zeros(1, dtype=np.int64),
                                slack=np.array([slack]), miss_target=miss_target)[0])
