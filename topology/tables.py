"""Factories and sites as arrays, so that judging and pricing a million (group, factory) pairs
is a handful of vectorised operations rather than a million Python calls.

Values are taken from the same domain fields, with the same defaults, as the scalar model in
:mod:`tdn.topology.estimates` and :mod:`tdn.topology.costs`; the arrays only change how many
pairs are computed at once, never what a pair costs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tdn.domain import AdminState, FactoryState, Health, Site, Tier
from tdn.policy import BackupDomain
from tdn.topology.eligibility import Check, saturated
from tdn.topology.estimates import DEFAULT_ITL_S, effective_slots, idle_trust
from tdn.topology.options import SolveOptions

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]


def _codes(values: Sequence[str]) -> tuple[tuple[str, ...], Ints]:
    names = tuple(sorted(set(values)))
    lookup = {name: i for i, name in enumerate(names)}
    return names, np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


@dataclass(frozen=True, slots=True, eq=False)
class FactoryTable:
    """One entry per factory, ordered by id."""

    states: tuple[FactoryState, ...]
    index: Mapping[str, int]
    regions: tuple[str, ...]
    region: Ints
    # The failure domain backups must differ in, per the options' rule (region or finer).
    domains: tuple[str, ...]
    domain: Ints
    zones: tuple[str, ...]
    zone: Ints
    onsite: Bools
    # Index of an on-site factory's own site in the site table, -1 for none or an unknown one.
    onsite_site: Ints
    health: Ints  # Check.OK, HEALTH_UNKNOWN, UNHEALTHY or DRAINED
    cordoned: Bools
    saturated: Bools
    ttft_observed: Floats
    # How far an observed TTFT above the default is believed (estimates.idle_trust).
    ttft_trust: Floats
    itl: Floats
    max_concurrency: Floats
    # The concurrency planned on (estimates.effective_slots): declared, unless telemetry shows
    # the factory runs fewer.
    slots: Floats
    input_price: Floats
    output_price: Floats
    gco2_per_mtok: Floats
    energy_cost_per_mtok: Floats
    tier_factor: Floats
    # Plannable concurrency (of ``slots``) and output tokens/s after headroom; tokens 0 means
    # undeclared.
    capacity: Floats
    token_capacity: Floats
    by_model: Mapping[str, Ints]

    def __len__(self) -> int:
        return len(self.states)

    def id(self, i: int) -> str:
        return self.states[i].spec.id


def _health_code(state: FactoryState) -> int:
    if state.health is Health.UNKNOWN:
        return int(Check.HEALTH_UNKNOWN)
    if state.health is not Health.HEALTHY:
        return int(Check.UNHEALTHY)
    if state.admin is AdminState.DRAINED:
        return int(Check.DRAINED)
    return int(Check.OK)


def factory_table(factories: Sequence[FactoryState], site_index: Mapping[str, int],
                  options: SolveOptions, planned: Mapping[str, float] | None = None,
                  ) -> FactoryTable:
    """The factories as arrays; ``planned``: the previous plan's in-flight requests per factory
    (:func:`~tdn.topology.estimates.planned_loads`)."""
    by_id: dict[str, FactoryState] = {}
    for f in factories:
        if f.spec.id in by_id:
            raise ValueError(f"duplicate factory id {f.spec.id!r}")
        by_id[f.spec.id] = f
    states = tuple(by_id[fid] for fid in sorted(by_id))
    specs = [s.spec for s in states]
    n = len(states)
    regions, region = _codes([s.region for s in specs])
    by_region = options.backup_domain is BackupDomain.REGION
    domains, domain = _codes([s.region if by_region else s.domain for s in specs])
    zones, zone = _codes([s.compliance_zone for s in specs])
    models: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        for model in spec.models:
            models.setdefault(model, []).append(i)

    def floats(values: Sequence[float]) -> Floats:
        return np.fromiter(values, dtype=np.float64, count=n)

    keep = 1.0 - options.capacity_headroom
    max_conc = floats([s.max_concurrency for s in specs])
    slots = floats([effective_slots(s) for s in states])
    return FactoryTable(
        states=states,
        index={s.id: i for i, s in enumerate(specs)},
        regions=regions, region=region, domains=domains, domain=domain, zones=zones, zone=zone,
        onsite=np.fromiter((s.tier is Tier.ON_SITE for s in specs), dtype=np.bool_, count=n),
        onsite_site=np.fromiter((site_index.get(s.site, -1) if s.tier is Tier.ON_SITE else -1
                                 for s in specs), dtype=np.int64, count=n),
        health=np.fromiter((_health_code(s) for s in states), dtype=np.int64, count=n),
        cordoned=np.fromiter((s.admin is AdminState.CORDONED for s in states), dtype=np.bool_,
                             count=n),
        saturated=np.fromiter((saturated(s, (planned or {}).get(s.spec.id, 0.0))
                               for s in states), dtype=np.bool_, count=n),
        ttft_observed=floats([s.load.ttft_p50_s for s in states]),
        ttft_trust=floats([idle_trust(s, (planned or {}).get(s.spec.id, 0.0))
                           for s in states]),
        itl=floats([s.load.itl_p50_s if s.load.itl_p50_s > 0 else DEFAULT_ITL_S
                    for s in states]),
        max_concurrency=max_conc,
        slots=slots,
        input_price=floats([s.price.input_per_mtok for s in specs]),
        output_price=floats([s.price.output_per_mtok for s in specs]),
        gco2_per_mtok=floats([s.energy.gco2_per_mtok() for s in specs]),
        energy_cost_per_mtok=floats([s.energy.energy_cost_per_mtok() for s in specs]),
        tier_factor=floats([options.tier_factor(s.tier) for s in specs]),
        capacity=slots * keep,
        token_capacity=floats([s.max_output_tokens_per_second for s in specs]) * keep,
        by_model={m: np.asarray(ix, dtype=np.int64) for m, ix in models.items()},
    )


@dataclass(frozen=True, slots=True, eq=False)
class SiteTable:
    """Sites in a fixed order with their RTT (ms) to every factory region."""

    sites: tuple[Site, ...]
    index: Mapping[str, int]
    rtt_ms: Floats  # [site, region of the factory table]


def site_table(sites: Sequence[Site], regions: Sequence[str]) -> SiteTable:
    ordered = tuple(sorted({s.id: s for s in sites}.values(), key=lambda s: s.id))
    rtt = np.zeros((max(len(ordered), 1), max(len(regions), 1)), dtype=np.float64)
    for i, site in enumerate(ordered):
        for j, region in enumerate(regions):
            rtt[i, j] = site.rtt_to(region)
    return SiteTable(sites=ordered, index={s.id: i for i, s in enumerate(ordered)}, rtt_ms=rtt)
