"""When drift warrants a solve before the periodic tick: prices, carbon, load, latency and
demand moving beyond the policy's thresholds, and not on noise below them."""

from __future__ import annotations

import dataclasses

from tdn.domain import Demand, Energy, FactoryLoad, FactorySpec, FactoryState, Health, Price, Tier
from tdn.policy import ResolveThresholds
from tdn.topology.drift import demand_drift, factory_drift

THRESHOLDS = ResolveThresholds(price_change=0.10, load_change=0.25, demand_change=0.25)


def factory(price: float = 1.0, running: int = 4, ttft: float = 0.3,
            carbon: float = 300.0, slots: int = 20) -> FactoryState:
    spec = FactorySpec(id="f", tier=Tier.EDGE, region="r", compliance_zone="z",
                       endpoint="http://f.test/v1", models=("m",), price=Price(0.25, price),
                       energy=Energy(grid_gco2_per_kwh=carbon), max_concurrency=slots)
    return FactoryState(spec=spec, load=FactoryLoad(running=running, ttft_p50_s=ttft),
                        health=Health.HEALTHY)


def test_a_price_move_beyond_the_threshold_asks_for_a_solve_and_says_what_moved() -> None:
    assert factory_drift([factory(1.0)], [factory(1.05)], THRESHOLDS) == ""
    assert factory_drift([factory(1.0)], [factory(1.2)], THRESHOLDS) == (
        "output price of f changed 17% (1 -> 1.2)")


def test_grid_carbon_follows_the_price_threshold() -> None:
    assert factory_drift([factory(carbon=300)], [factory(carbon=100)], THRESHOLDS) == (
        "grid carbon of f changed 67% (300 -> 100)")


def test_load_is_compared_as_the_busy_share_of_slots() -> None:
    assert factory_drift([factory(running=4)], [factory(running=8)], THRESHOLDS) == ""
    assert factory_drift([factory(running=4)], [factory(running=10)], THRESHOLDS) == (
        "load of f moved from 20% to 50%")


def test_one_request_more_on_a_small_factory_is_noise_not_drift() -> None:
    # 1 -> 2 of 4 slots is a 25-point move, but one request: a small on-site box would otherwise
    # trigger a solve every time a request starts or ends.
    assert factory_drift([factory(running=1, slots=4)], [factory(running=2, slots=4)],
                         dataclasses.replace(THRESHOLDS, load_change=0.2)) == ""
    assert factory_drift([factory(running=1, slots=4)], [factory(running=3, slots=4)],
                         THRESHOLDS) == "load of f moved from 25% to 75%"


def test_ttft_needs_both_a_relative_and_an_absolute_move() -> None:
    assert factory_drift([factory(ttft=0.02)], [factory(ttft=0.05)], THRESHOLDS) == ""
    assert factory_drift([factory(ttft=0.3)], [factory(ttft=0.6)], THRESHOLDS) == (
        "ttft p50 of f moved from 0.30 s to 0.60 s")


def test_a_new_or_vanished_factory_is_the_registrys_news_not_drift() -> None:
    other = dataclasses.replace(factory(), spec=dataclasses.replace(factory().spec, id="g"))
    assert factory_drift([factory()], [factory(), other], THRESHOLDS) == ""
    assert factory_drift([factory(), other], [factory()], THRESHOLDS) == ""


def test_demand_moves_count_when_relatively_and_absolutely_large() -> None:
    def d(rate: float, model: str = "m") -> Demand:
        return Demand(site="s", model=model, rate_rps=rate)

    assert demand_drift([d(1.0)], [d(1.2)], THRESHOLDS) == ""
    assert demand_drift([d(0.1)], [d(0.4)], THRESHOLDS) == ""  # 300%, but 0.3 rps
    assert demand_drift([d(2.0)], [d(3.0)], THRESHOLDS) == (
        "demand s/m/default moved from 2.00 to 3.00 rps")
    assert demand_drift([d(2.0)], [d(2.0), d(1.0, "n")], THRESHOLDS) == (
        "demand s/n/default moved from 0.00 to 1.00 rps")
