"""The generated network of the routing benchmark: four European regions, three tiers.

Regions are anchored on Ember's monthly grid figures for November 2023 (the trace's month):
Sweden and France (low-carbon grids) host the **center** factories — big, cheap per token, far
from most sites, tuned for throughput (slower prefill, longer inter-token latency); Germany,
France and Poland host **edge** factories — near the sites, tuned for latency, dearer; two sites
have an **on-site** factory in their building — dearest, least efficient, and the only place one
site's code traffic may go (data residency). Prices, speeds and efficiencies are round figures
chosen to be realistic relative to each other (center < edge < on-site in price; edge fastest);
they are assumptions, stated in the report, not measurements.

Capacity (concurrency slots) is sized from the trace so the network runs at a chosen mean
utilisation; the same topology serves every router. A factory that is the *only* place some
traffic may go (the office's on-site factory for its code) is then provisioned for that traffic's
bursts, as an operator must provision any dedicated resource (:func:`provision_sole_factories`):
no router, and no failover, can send that traffic anywhere else.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from bench.routing_trace import GridMonth, diurnal
from tdn.domain import (
    Demand,
    Energy,
    FactoryLoad,
    FactorySpec,
    FactoryState,
    Health,
    Price,
    Site,
    Tier,
)

MODEL = "llama-3.1-70b-instruct"
COUNTRY = {"se": "SWE", "fr": "FRA", "de": "DEU", "pl": "POL"}
# Peak height of the modelled daily curve above the monthly mean: gas peakers on top of French
# nuclear swing its intensity most; Polish coal the least. Prices swing alike everywhere.
CARBON_AMPLITUDE = {"se": 0.10, "fr": 0.30, "de": 0.15, "pl": 0.06}
PRICE_AMPLITUDE = 0.30
CET_OFFSET_H = 1.0  # the trace's timestamps are taken as UTC; Europe is on CET in November
USD_PER_EUR = 1.08
# Round-trip times between regions (ms); inside a region (site to its metro edge) 2 ms.
REGION_RTT_MS = {
    ("de", "fr"): 11.0, ("de", "pl"): 14.0, ("de", "se"): 24.0,
    ("fr", "pl"): 28.0, ("fr", "se"): 33.0, ("pl", "se"): 21.0,
}
SAME_REGION_RTT_MS = 2.0
ON_SITE_RTT_MS = 0.5
# Scheduling overhead before prefill starts, and the energy of a prompt token relative to an
# output token (prefill is compute-bound and batched: far cheaper per token than decode).
BASE_TTFT_S = 0.02
PREFILL_ENERGY_RATIO = 1.0 / 8.0
SLO_S = {"chat": 1.5, "code": 1.0}


@dataclass(frozen=True, slots=True)
class FactoryModel:
    """One simulated factory: where it is, how fast, how dear, how green, how big."""

    id: str
    tier: Tier
    region: str
    domain: str
    share: float  # of the network's slots
    prefill_tps: float
    itl_s: float
    price_in: float  # USD per 1M input tokens
    price_out: float  # USD per 1M output tokens
    tokens_per_joule: float  # output tokens per joule, facility overhead included
    site: str = ""
    slots: int = 0

    @property
    def zone(self) -> str:
        return f"on-site:{self.site}" if self.tier is Tier.ON_SITE else "eu"

    def prefill_s(self, prompt_tokens: int) -> float:
        return BASE_TTFT_S + prompt_tokens / self.prefill_tps

    def duration_s(self, prompt_tokens: float, output_tokens: float) -> float:
        return BASE_TTFT_S + prompt_tokens / self.prefill_tps + output_tokens * self.itl_s

    def cost_usd(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens * self.price_in + output_tokens * self.price_out) / 1e6

    def energy_kwh(self, prompt_tokens: int, output_tokens: int) -> float:
        tokens = output_tokens + prompt_tokens * PREFILL_ENERGY_RATIO
        return tokens / self.tokens_per_joule / 3.6e6


@dataclass(frozen=True, slots=True)
class SiteModel:
    id: str
    region: str


@dataclass(frozen=True, slots=True)
class GroupModel:
    """Traffic of one site and class: its TTFT SLO and where residency lets it go."""

    site: str
    cls: str
    slo_s: float
    allowed_zones: tuple[str, ...] = ()


def _center(fid: str, region: str, domain: str, price_in: float, price_out: float
            ) -> FactoryModel:
    # Throughput-tuned: big batches slow prefill and decode per request, but joules per token
    # fall and so does the price.
    return FactoryModel(fid, Tier.CENTER, region, domain, share=0.17, prefill_tps=10_000.0,
                        itl_s=0.030, price_in=price_in, price_out=price_out,
                        tokens_per_joule=1.6)


def _edge(fid: str, region: str, domain: str, price_in: float, price_out: float
          ) -> FactoryModel:
    return FactoryModel(fid, Tier.EDGE, region, domain, share=0.09, prefill_tps=14_000.0,
                        itl_s=0.018, price_in=price_in, price_out=price_out,
                        tokens_per_joule=1.0)


def _on_site(fid: str, region: str, site: str) -> FactoryModel:
    return FactoryModel(fid, Tier.ON_SITE, region, site, share=0.065, prefill_tps=8_000.0,
                        itl_s=0.028, price_in=1.20, price_out=2.40, tokens_per_joule=0.7,
                        site=site)


def _factories() -> list[FactoryModel]:
    return [
        _center("center-se-1", "se", "a", 0.30, 0.60),
        _center("center-se-2", "se", "b", 0.30, 0.60),
        _center("center-fr-1", "fr", "a", 0.40, 0.80),
        _edge("edge-de-1", "de", "a", 0.80, 1.60),
        _edge("edge-de-2", "de", "b", 0.80, 1.60),
        _edge("edge-fr-1", "fr", "b", 0.80, 1.60),
        _edge("edge-pl-1", "pl", "a", 0.75, 1.50),
        _on_site("onsite-de-office", "de", "de-office"),
        _on_site("onsite-pl-plant", "pl", "pl-plant"),
    ]


SITES = (SiteModel("de-office", "de"), SiteModel("de-berlin", "de"),
         SiteModel("fr-paris", "fr"), SiteModel("pl-plant", "pl"))


def _groups() -> list[GroupModel]:
    groups = []
    for site in SITES:
        for cls in ("chat", "code"):
            zones: tuple[str, ...] = ()
            if site.id == "de-office" and cls == "code":
                # This site's source code never leaves its building.
                zones = ("on-site:de-office",)
            groups.append(GroupModel(site.id, cls, SLO_S[cls], zones))
    return groups


@dataclass(slots=True)
class Topology:
    """Factories (with slots), sites, traffic groups, and the time-varying grid."""

    factories: tuple[FactoryModel, ...]
    sites: tuple[SiteModel, ...]
    groups: tuple[GroupModel, ...]
    grid: dict[str, GridMonth]
    start: datetime
    by_id: dict[str, FactoryModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_id = {f.id: f for f in self.factories}

    def site(self, site_id: str) -> SiteModel:
        return next(s for s in self.sites if s.id == site_id)

    def group(self, site: str, cls: str) -> GroupModel:
        return next(g for g in self.groups if g.site == site and g.cls == cls)

    def rtt_s(self, site_id: str, factory_id: str) -> float:
        f = self.by_id[factory_id]
        if f.tier is Tier.ON_SITE and f.site == site_id:
            return ON_SITE_RTT_MS / 1000
        return region_rtt_ms(self.site(site_id).region, f.region) / 1000

    def eligible(self, site_id: str, cls: str) -> tuple[str, ...]:
        """Factories residency allows for this traffic (the same rule the solver applies)."""
        group = self.group(site_id, cls)
        out = []
        for f in self.factories:
            if f.tier is Tier.ON_SITE and f.site != site_id:
                continue
            zones = group.allowed_zones or ("eu", f"on-site:{site_id}")
            if f.zone in zones:
                out.append(f.id)
        return tuple(out)

    def local_hour(self, t: float) -> float:
        return (self.start.hour + self.start.minute / 60 + self.start.second / 3600
                + t / 3600 + CET_OFFSET_H)

    def carbon(self, region: str, t: float) -> float:
        """Grid gCO2/kWh in ``region`` at simulation time ``t``."""
        month = self.grid[COUNTRY[region]]
        return diurnal(month.gco2_per_kwh, CARBON_AMPLITUDE[region], self.local_hour(t))

    def power_price_usd_per_kwh(self, region: str, t: float) -> float:
        month = self.grid[COUNTRY[region]]
        eur_mwh = diurnal(month.eur_per_mwh, PRICE_AMPLITUDE, self.local_hour(t))
        return eur_mwh / 1000 * USD_PER_EUR

    def total_slots(self) -> int:
        return sum(f.slots for f in self.factories)

    # --- what the TDN control plane sees -------------------------------------------------------

    def solver_sites(self) -> list[Site]:
        regions = sorted(COUNTRY)
        return [Site(id=s.id, region=s.region, compliance_zone="eu",
                     rtt_ms=tuple((r, region_rtt_ms(s.region, r)) for r in regions))
                for s in self.sites]

    def factory_state(self, f: FactoryModel, t: float, *, running: int = 0, waiting: int = 0,
                      ttft_p50_s: float = 0.0, ttft_p99_s: float = 0.0,
                      healthy: bool = True) -> FactoryState:
        spec = FactorySpec(
            id=f.id, tier=f.tier, region=f.region, compliance_zone=f.zone,
            endpoint=f"http://{f.id}.bench.invalid/v1", models=(MODEL,),
            price=Price(f.price_in, f.price_out),
            energy=Energy(tokens_per_joule=f.tokens_per_joule,
                          grid_gco2_per_kwh=self.carbon(f.region, t),
                          electricity_price_per_kwh=self.power_price_usd_per_kwh(f.region, t)),
            max_concurrency=f.slots, site=f.site, failure_domain=f.domain)
        load = FactoryLoad(running=running, waiting=waiting, ttft_p50_s=ttft_p50_s,
                           ttft_p99_s=ttft_p99_s, itl_p50_s=f.itl_s)
        return FactoryState(spec=spec, load=load,
                            health=Health.HEALTHY if healthy else Health.UNHEALTHY,
                            last_report=t)

    def demand(self, group: GroupModel, rate_rps: float, prompt: float, output: float
               ) -> Demand:
        return Demand(site=group.site, model=MODEL, traffic_class=group.cls, rate_rps=rate_rps,
                      prompt_tokens=prompt, output_tokens=output, ttft_slo_s=group.slo_s,
                      allowed_zones=group.allowed_zones)


def region_rtt_ms(a: str, b: str) -> float:
    if a == b:
        return SAME_REGION_RTT_MS
    return REGION_RTT_MS.get((a, b)) or REGION_RTT_MS[(b, a)]


def build_topology(grid: dict[str, GridMonth], start: datetime,
                   demand: Sequence[tuple[int, int]], span_s: float,
                   utilisation: float) -> Topology:
    """Size every factory so that ``demand`` (prompt, output tokens per request over ``span_s``)
    keeps the network's slots busy ``utilisation`` of the time on average."""
    models = _factories()
    # Slot-seconds a request holds, averaged over where capacity is (weighted by share).
    busy = 0.0
    for prompt, output in demand:
        busy += sum(f.share * f.duration_s(prompt, output) for f in models)
    concurrency = busy / span_s
    total = concurrency / utilisation
    sized = tuple(replace(f, slots=max(2, round(f.share * total))) for f in models)
    return Topology(factories=sized, sites=SITES, groups=tuple(_groups()), grid=grid,
                    start=start)


# The share of the traffic bound to one factory that its provisioning must serve within the
# SLO, replayed alone on the trace: above the 99% through-failure goal, so that the
# goal measures routing and failover, not a dedicated factory's own bursts.
SOLE_TRAFFIC_TARGET = 0.995


def fifo_slo_attainment(f: FactoryModel, rtt_s: float, slo_s: float, slots: int,
                        requests: Sequence[tuple[float, int, int]]) -> float:
    """SLO attainment of ``requests`` (arrival time, prompt, output tokens; sorted by time)
    alone at ``f`` with ``slots`` slots, FIFO, with the simulation's timing model (half a round
    trip to reach the factory, queueing, prefill; the first token travels back)."""
    if not requests:
        return 1.0
    free = [0.0] * slots
    met = 0
    for t, prompt, output in requests:
        begin = max(t + rtt_s / 2, heapq.heappop(free))
        ttft = begin - t + rtt_s / 2 + f.prefill_s(prompt)
        heapq.heappush(free, begin + f.duration_s(prompt, output))
        met += ttft <= slo_s
    return met / len(requests)


def provision_sole_factories(topology: Topology,
                             arrivals: Sequence[tuple[float, str, str, int, int]],
                             target: float = SOLE_TRAFFIC_TARGET) -> Topology:
    """``topology`` with every factory that is the only eligible one of some traffic group
    given the fewest slots (never fewer than it has) with which that traffic alone, replayed
    from ``arrivals`` (time, site, class, prompt, output), meets its SLO for ``target`` of its
    requests.

    Why: sized by its share of the network, the office's on-site factory got 13 slots for
    traffic averaging 2.7 busy slots whose bursts reach 70 requests in a second (the Azure code
    trace); that traffic alone then missed its SLO a third of the time with every router, with
    no failure anywhere, and no router or backup can move it. Capacity planning for a
    dedicated resource sizes it for its bursts; that is what this does, for every router alike.
    """
    sized = list(topology.factories)
    for group in topology.groups:
        eligible = topology.eligible(group.site, group.cls)
        if len(eligible) != 1:
            continue
        index = next(i for i, f in enumerate(sized) if f.id == eligible[0])
        f = sized[index]
        mine = sorted((t, p, o) for t, site, cls, p, o in arrivals
                      if (site, cls) == (group.site, group.cls))
        rtt = topology.rtt_s(group.site, f.id)

        def enough(slots: int, f: FactoryModel = f, mine: list[tuple[float, int, int]] = mine,
                   rtt: float = rtt, slo: float = group.slo_s) -> bool:
            return fifo_slo_attainment(f, rtt, slo, slots, mine) >= target

        low, high = f.slots, max(f.slots, 1)
        while not enough(high):
            low, high = high, high * 2
        while low < high:  # the fewest slots that are enough, in [low, high]
            mid = (low + high) // 2
            if enough(mid):
                high = mid
            else:
                low = mid + 1
        sized[index] = replace(f, slots=high)
    return replace(topology, factories=tuple(sized))
