"""Whether the network has drifted enough since the last solve to solve again now.

Health, admin and membership changes always trigger a solve (the registry announces them).
Prices, load, latency and demand move all the time; most of that is noise the periodic solve
absorbs. This decides when such a move is *significant*: a relative change beyond the policy's
thresholds (and beyond a small absolute floor, so that a factory going from 1 to 2 requests in
flight is not a "100% load change").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tdn.domain import Demand, FactoryState
from tdn.policy import ResolveThresholds

# Below these, a change is noise whatever its relative size.
_MIN_RATE_CHANGE_RPS = 0.5
_MIN_TTFT_CHANGE_S = 0.1
# A small factory's utilisation jumps 25% with one request: fewer than this many requests more
# or less in flight is noise, whatever share of the factory it is.
_MIN_LOAD_CHANGE_REQUESTS = 2


def _relative(old: float, new: float) -> float:
    if old == new:
        return 0.0
    base = max(abs(old), abs(new))
    return abs(new - old) / base if base > 0 else 0.0


def _utilisation(f: FactoryState) -> float:
    return (f.load.running + f.load.waiting) / max(f.spec.max_concurrency, 1)


def factory_drift(before: Iterable[FactoryState], after: Iterable[FactoryState],
                  thresholds: ResolveThresholds) -> str:
    """The first significant price, carbon, load or latency change, or ""."""
    old = {f.spec.id: f for f in before}
    for f in sorted(after, key=lambda f: f.spec.id):
        prev = old.get(f.spec.id)
        if prev is None:
            continue  # a new factory is the registry's news, not drift
        fid = f.spec.id
        for name, a, b in (
                ("output price", prev.spec.price.output_per_mtok, f.spec.price.output_per_mtok),
                ("input price", prev.spec.price.input_per_mtok, f.spec.price.input_per_mtok),
                ("grid carbon", prev.spec.energy.grid_gco2_per_kwh,
                 f.spec.energy.grid_gco2_per_kwh),
                ("electricity price", prev.spec.energy.electricity_price_per_kwh,
                 f.spec.energy.electricity_price_per_kwh)):
            change = _relative(a, b)
            if change > thresholds.price_change:
                return f"{name} of {fid} changed {change:.0%} ({a:g} -> {b:g})"
        load_before, load_after = _utilisation(prev), _utilisation(f)
        requests_moved = abs((f.load.running + f.load.waiting)
                             - (prev.load.running + prev.load.waiting))
        if (requests_moved >= _MIN_LOAD_CHANGE_REQUESTS
                and abs(load_after - load_before) > thresholds.load_change):
            return f"load of {fid} moved from {load_before:.0%} to {load_after:.0%}"
        ttft_before, ttft_after = prev.load.ttft_p50_s, f.load.ttft_p50_s
        if (abs(ttft_after - ttft_before) > _MIN_TTFT_CHANGE_S
                and _relative(ttft_before, ttft_after) > thresholds.load_change):
            return f"ttft p50 of {fid} moved from {ttft_before:.2f} s to {ttft_after:.2f} s"
    return ""


def demand_drift(before: Sequence[Demand], after: Sequence[Demand],
                 thresholds: ResolveThresholds) -> str:
    """The first group whose rate changed significantly (or appeared, or vanished), or ""."""
    def rates(demands: Sequence[Demand]) -> dict[tuple[str, str, str], float]:
        out: dict[tuple[str, str, str], float] = {}
        for d in demands:
            key = (d.site, d.model, d.traffic_class)
            out[key] = out.get(key, 0.0) + d.rate_rps
        return out

    old, new = rates(before), rates(after)
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, 0.0), new.get(key, 0.0)
        if abs(b - a) > _MIN_RATE_CHANGE_RPS and _relative(a, b) > thresholds.demand_change:
            return f"demand {'/'.join(key)} moved from {a:.2f} to {b:.2f} rps"
    return ""
