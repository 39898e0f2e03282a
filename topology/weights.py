"""Route weights: shares rounded to multiples of 1/10000 that sum to exactly one.

Fine enough for any real split, coarse enough that solver noise in the last digits does not make
every site's policy look changed between solves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tdn.domain import WeightedFactory

WEIGHT_UNITS = 10_000


def rounded_weights(shares: Mapping[str, float]) -> tuple[WeightedFactory, ...]:
    """Shares renormalised to sum to 1 in units of 1/10000, heaviest first, then by id.

    Largest-remainder rounding keeps the sum exact in units; ties go to the smaller id so the
    result never depends on dictionary order.
    """
    positive = {fid: s for fid, s in shares.items() if s > 0}
    total = sum(positive.values())
    if total <= 0:
        return ()
    exact = {fid: s / total * WEIGHT_UNITS for fid, s in positive.items()}
    units = {fid: math.floor(v) for fid, v in exact.items()}
    left = WEIGHT_UNITS - sum(units.values())
    for fid in sorted(exact, key=lambda f: (-(exact[f] - units[f]), f))[:left]:
        units[fid] += 1
    ordered = sorted((fid for fid in units if units[fid] > 0), key=lambda f: (-units[f], f))
    return tuple(WeightedFactory(fid, units[fid] / WEIGHT_UNITS) for fid in ordered)


def primary_weights(shares: Mapping[str, float], min_share: float) -> tuple[WeightedFactory, ...]:
    """The factories carrying at least ``min_share`` of the group, with renormalised weights."""
    kept = {fid: s for fid, s in shares.items() if s >= min_share}
    if not kept and shares:
        # Almost everything is unserved: the largest sliver is still better than no route.
        best = min(shares, key=lambda f: (-shares[f], f))
        kept = {best: shares[best]}
    return rounded_weights(kept)
