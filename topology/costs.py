"""The per-request cost of serving a demand at a factory, as normalised terms the solver weighs.

Each term is divided by a fixed reference so that 1.0 means the same amount of "bad" in every
term: $0.001 of token price (about a 1k-token request at $1/Mtok), 100 ms of estimated TTFT,
0.1 g of CO2 and $0.001 of electricity. References are fixed rather than derived from the network
so that adding or removing one factory never changes how the others are compared. Operator weights
(:class:`tdn.topology.options.SolveOptions`) then move the balance; the defaults of 1.0 make 100 ms
of TTFT worth a tenth of a cent per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdn.domain import Demand, FactoryState, Site
from tdn.topology.estimates import ttft_estimate_s
from tdn.topology.options import SolveOptions

PRICE_UNIT_USD = 0.001
LATENCY_UNIT_S = 0.1
CARBON_UNIT_G = 0.1
ENERGY_UNIT_USD = 0.001


@dataclass(frozen=True, slots=True)
class CostTerms:
    """Normalised, unweighted cost terms of one request (see the module docstring for units)."""

    price: float
    latency: float
    carbon: float
    energy: float

    def total(self, options: SolveOptions, tier_factor: float = 1.0) -> float:
        """The weighted cost the solver compares, times the factory tier's preference factor."""
        return tier_factor * (
            self.price * options.price_weight
            + self.latency * options.latency_weight
            + self.carbon * options.carbon_weight
            + self.energy * options.energy_weight
        )

    def weighted(self, options: SolveOptions, tier_factor: float = 1.0,
                 ) -> tuple[tuple[str, float], ...]:
        """Each term as the solver weighs it, plus the tier preference's share ("tier"), so
        that the terms add up to :meth:`total`."""
        terms = (
            ("price", self.price * options.price_weight),
            ("latency", self.latency * options.latency_weight),
            ("carbon", self.carbon * options.carbon_weight),
            ("energy", self.energy * options.energy_weight),
        )
        return (*terms, ("tier", (tier_factor - 1.0) * sum(v for _, v in terms)))

    def named(self) -> tuple[tuple[str, float], ...]:
        """The terms as (name, value) pairs, in the order the operator API explains them."""
        return (
            ("price", self.price),
            ("latency", self.latency),
            ("carbon", self.carbon),
            ("energy", self.energy),
        )


def request_cost(demand: Demand, factory: FactoryState, site: Site,
                 planned_load: float = 0.0) -> CostTerms:
    """What one mean request of ``demand`` costs at ``factory``, seen from ``site``
    (``planned_load``: the previous plan's in-flight requests there, see
    :func:`~tdn.topology.estimates.idle_trust`)."""
    spec = factory.spec
    price_usd = (
        demand.prompt_tokens * spec.price.input_per_mtok
        + demand.output_tokens * spec.price.output_per_mtok
    ) / 1e6
    # Energy profiles are per generated token; prefill energy is small beside decode and is not
    # reported separately by engines, so it is left out rather than guessed.
    output_mtok = demand.output_tokens / 1e6
    return CostTerms(
        price=price_usd / PRICE_UNIT_USD,
        latency=ttft_estimate_s(demand, factory, site, planned_load) / LATENCY_UNIT_S,
        carbon=spec.energy.gco2_per_mtok() * output_mtok / CARBON_UNIT_G,
        energy=spec.energy.energy_cost_per_mtok() * output_mtok / ENERGY_UNIT_USD,
    )
