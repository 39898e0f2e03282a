"""The knobs of a solve: objective weights, capacity headroom, churn, backups and the time limit.

Every cost term the solver weighs is first normalised to a *cost unit* (see
:mod:`tdn.topology.costs`) so that a weight of 1.0 on each term is a sensible default, and an
operator's policy changes the balance by moving weights, not by learning each term's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from tdn.domain import Tier
from tdn.policy import BackupDomain, Policy


@dataclass(frozen=True, slots=True)
class SolveOptions:
    """How the solver trades price, latency, carbon and energy, and how cautious it is.

    Weights multiply normalised per-request cost terms (1 unit = $0.001 of price, 100 ms of
    TTFT, 0.1 g of CO2, $0.001 of electricity). ``churn_penalty`` is in cost units per request per
    second moved off the previous plan's split; ``queueing_steepness`` scales the marginal cost of
    filling a factory (units per second of occupancy of one concurrency slot, times the M/M/1 delay
    factor rho/(1-rho) at that fill level).
    """

    price_weight: float = 1.0
    latency_weight: float = 1.0
    carbon_weight: float = 1.0
    energy_weight: float = 1.0
    # Share of each factory's concurrency never planned for: room for bursts and for absorbing a
    # failed neighbour's traffic without a new solve.
    capacity_headroom: float = 0.2
    churn_penalty: float = 0.1
    backup_depth: int = 2
    time_limit_s: float = 2.0
    queueing_steepness: float = 0.1
    # How many equal slices of a factory's plannable capacity carry increasing queueing cost.
    queueing_segments: int = 4
    # The chance, per factory, that a request's queueing wait pushes it past its TTFT SLO at
    # the planned load (M/M/c, :mod:`tdn.topology.queueing`): what bounds planned load below
    # the headroom when requests are long and slots few. 1 turns the bound off.
    slo_miss_target: float = 0.01
    # A factory with a smaller share of a group than this is dropped from its primary set: a
    # sliver of traffic buys a connection pool and a failure mode, not capacity.
    min_primary_share: float = 0.01
    # The largest share of a group one factory may carry when the group has enough eligible
    # factories (else 1 / their number): spreads a group so that a burst or a failure lands
    # on part of it only (:func:`tdn.topology.problem.share_caps`). 1 (here) turns the bound
    # off; an operator's policy sets it, 0.34 by default (``capacity.max_primary_share``).
    max_primary_share: float = 1.0
    # Keep a factory that is the only one some group may use (its on-site factory, for
    # residency-bound traffic) for such groups: others use it as a backup only
    # (:func:`tdn.topology.problem.reserve_sole_factories`). An operator's policy sets it, on
    # by default (``capacity.reserve_sole_factories``).
    reserve_sole_factories: bool = False
    # (tier, factor) multiplying every cost of a factory of that tier: 1 neutral, 0.8 a bonus.
    tier_factors: tuple[tuple[Tier, float], ...] = ()
    # What backup levels must differ in: "failure_domain" (region plus rack) or "region".
    backup_domain: BackupDomain = BackupDomain.FAILURE_DOMAIN
    # The LP starts from each group's few cheapest candidates (plus the greedy solution's) and
    # adds others only when their reduced cost says they would lower the objective (column
    # generation), so it stays small at a thousand factories yet optimal.
    min_candidates: int = 3
    pricing_rounds: int = 25

    def tier_factor(self, tier: Tier) -> float:
        for name, factor in self.tier_factors:
            if name is tier:
                return factor
        return 1.0

    def validate(self) -> None:
        """Raise ValueError for options no solve can honour (a bug in whoever built them)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and (not math.isfinite(value) or value < 0):
                raise ValueError(f"SolveOptions.{f.name} is {value!r}; must be finite and >= 0")
        if not self.capacity_headroom < 1.0:
            raise ValueError(
                f"SolveOptions.capacity_headroom is {self.capacity_headroom}; must be < 1"
            )
        if not 0.0 < self.slo_miss_target <= 1.0:
            raise ValueError(
                f"SolveOptions.slo_miss_target is {self.slo_miss_target}; must be in (0, 1]")
        if self.queueing_segments < 1:
            raise ValueError("SolveOptions.queueing_segments must be at least 1")
        if self.backup_depth < 0:
            raise ValueError("SolveOptions.backup_depth must be >= 0")
        if not self.min_primary_share < 0.5:
            raise ValueError("SolveOptions.min_primary_share must be < 0.5")
        if not 0.0 < self.max_primary_share <= 1.0:
            raise ValueError(
                f"SolveOptions.max_primary_share is {self.max_primary_share}; must be in (0, 1]")
        for tier, factor in self.tier_factors:
            if not math.isfinite(factor) or factor <= 0:
                raise ValueError(f"SolveOptions tier factor for {tier} is {factor!r}; must be > 0")
        if self.min_candidates < 1 or self.pricing_rounds < 0:
            raise ValueError("SolveOptions.min_candidates must be >= 1, pricing_rounds >= 0")


def options_from_policy(policy: Policy, base: SolveOptions | None = None) -> SolveOptions:
    """The solve knobs an operator's policy sets, on top of ``base`` for the ones it does not."""
    b = base or SolveOptions()
    return SolveOptions(
        price_weight=policy.objective.price,
        latency_weight=policy.objective.latency,
        carbon_weight=policy.objective.carbon,
        energy_weight=policy.objective.energy,
        capacity_headroom=policy.capacity_headroom,
        churn_penalty=policy.churn_penalty,
        backup_depth=policy.backups.depth,
        time_limit_s=policy.solver.time_limit_s,
        queueing_steepness=policy.queueing_steepness,
        queueing_segments=b.queueing_segments,
        slo_miss_target=policy.slo_miss_target,
        min_primary_share=b.min_primary_share,
        max_primary_share=policy.max_primary_share,
        reserve_sole_factories=policy.reserve_sole_factories,
        tier_factors=policy.tier_factors,
        backup_domain=policy.backups.domain,
        min_candidates=b.min_candidates,
        pricing_rounds=b.pricing_rounds,
    )
