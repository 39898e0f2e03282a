"""The per-request routers TDN is compared with, each choosing among the factories residency allows.

Classic strategies (round-robin, random, least-latency, cheapest-first, join-shortest-queue,
power-of-two-choices) get generous help: the load-aware ones read every factory's *live* queue
instantly (an oracle no real proxy has), and all of them eject a factory that failed an attempt
for 30 s (as Envoy's outlier detection would) and retry elsewhere at once.

The two LiteLLM strategies are reimplemented from LiteLLM 1.108.7's own code (BerriAI/litellm):

* ``latency-based-routing`` — ``litellm/router_strategy/lowest_latency.py``
  (``LowestLatencyLoggingHandler``): per deployment a list of the last 10 latencies (seeded with
  ``[0]`` for a deployment never seen, which is why new ones are tried first); for streaming
  requests the mean of the last 10 times-to-first-token, appended when a request *completes*;
  deployments over their rpm/tpm limit for the current minute are skipped; the lowest mean wins,
  ties broken at random (``lowest_latency_buffer`` 0).
* ``cost-based-routing`` — ``litellm/router_strategy/lowest_cost.py``
  (``LowestCostLoggingHandler``): the deployment whose ``input_cost_per_token +
  output_cost_per_token`` is lowest among those under their rpm/tpm limit, first in model-list
  order on ties.

Each site runs its own LiteLLM proxy, deciding on its own router cache (LiteLLM's DualCache
reads the in-memory copy first, so even instances sharing Redis route on what they saw). Both
count rpm/tpm per calendar minute on success (as LiteLLM's success callbacks do) and use
LiteLLM's router around them: ``num_retries`` 2 (three attempts, the strategy picks again each
time) and its default cooldown (``litellm/router_utils/cooldown_handlers.py``: a deployment whose
failures exceed 50% of at least 5 requests in the current minute is skipped for 5 s). Each
deployment's rpm limit is what its slots sustain (``60 x slots / mean request duration``), as an
operator would configure; without limits, cost-based routing would send everything to one
factory.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.routing_sim import FactoryRuntime, Req, Simulation
from bench.routing_topology import Topology

EJECTION_S = 30.0
LITELLM_RETRIES = 2
LITELLM_COOLDOWN_S = 5.0
LITELLM_FAILURE_PERCENT = 0.5
LITELLM_MIN_REQUESTS = 5
LITELLM_LATENCY_LIST = 10


class _Ejections:
    """Passive health per site: a factory that failed an attempt is avoided for a while."""

    def __init__(self) -> None:
        self.until: dict[tuple[str, str], float] = {}

    def eject(self, site: str, fid: str, now: float) -> None:
        self.until[(site, fid)] = now + EJECTION_S

    def ok(self, site: str, fid: str, now: float) -> bool:
        return self.until.get((site, fid), 0.0) <= now


Pick = Callable[["Baseline", Req, list[str], float], str]


class Baseline:
    """A classic per-request strategy over the eligible, non-ejected, not-yet-tried factories."""

    def __init__(self, name: str, topology: Topology, pick: Pick, seed: int = 0) -> None:
        self.name = name
        self.topology = topology
        self.pick = pick
        self.rng = random.Random(seed)
        self.ejections = _Ejections()
        self.sim: Simulation | None = None
        self.eligible = {(g.site, g.cls): topology.eligible(g.site, g.cls)
                         for g in topology.groups}
        self.cursor: dict[tuple[str, str], itertools.cycle[str]] = {
            key: itertools.cycle(ids) for key, ids in self.eligible.items()}

    def start(self, sim: Simulation) -> None:
        self.sim = sim

    def max_attempts(self, req: Req) -> int:
        return len(self.eligible[(req.site, req.cls)])

    def factory(self, fid: str) -> FactoryRuntime:
        assert self.sim is not None
        return self.sim.factories[fid]

    def choose(self, req: Req, now: float) -> str | None:
        options = [f for f in self.eligible[(req.site, req.cls)]
                   if f not in req.tried and self.ejections.ok(req.site, f, now)]
        if not options:
            options = [f for f in self.eligible[(req.site, req.cls)] if f not in req.tried]
        if not options:
            return None
        return self.pick(self, req, options, now)

    def on_failure(self, req: Req, factory_id: str, now: float) -> None:
        self.ejections.eject(req.site, factory_id, now)

    def on_success(self, req: Req, factory_id: str, now: float) -> None:
        pass

    # --- load signals (oracle: the live state of every factory) --------------------------------

    def load(self, fid: str) -> float:
        f = self.factory(fid)
        return (f.running + f.queued) / f.slots

    def expected_ttft(self, req: Req, fid: str) -> float:
        f = self.factory(fid)
        model = f.model
        wait = 0.0
        if f.running >= f.slots:
            mean = model.duration_s(req.prompt, req.output)
            wait = (f.queued + 1) * mean / f.slots
        return self.topology.rtt_s(req.site, fid) + wait + model.prefill_s(req.prompt)


def _round_robin(b: Baseline, req: Req, options: list[str], now: float) -> str:
    cycle = b.cursor[(req.site, req.cls)]
    for _ in range(len(b.eligible[(req.site, req.cls)])):
        fid = next(cycle)
        if fid in options:
            return fid
    return options[0]


def _random(b: Baseline, req: Req, options: list[str], now: float) -> str:
    return b.rng.choice(options)


def _least_latency(b: Baseline, req: Req, options: list[str], now: float) -> str:
    return min(options, key=lambda f: (b.expected_ttft(req, f), f))


def _cheapest_first(b: Baseline, req: Req, options: list[str], now: float) -> str:
    def price(fid: str) -> float:
        return b.factory(fid).model.cost_usd(req.prompt, req.output)

    free = [f for f in options if b.factory(f).running < b.factory(f).slots]
    return min(free or options, key=lambda f: (price(f), f))


def _shortest_queue(b: Baseline, req: Req, options: list[str], now: float) -> str:
    return min(options, key=lambda f: (b.load(f), f))


def _two_choices(b: Baseline, req: Req, options: list[str], now: float) -> str:
    if len(options) == 1:
        return options[0]
    pair = b.rng.sample(options, 2)
    return min(pair, key=lambda f: (b.load(f), f))


def baselines(topology: Topology, seed: int) -> list[Baseline]:
    return [
        Baseline("round-robin", topology, _round_robin, seed),
        Baseline("random", topology, _random, seed),
        Baseline("least-latency", topology, _least_latency, seed),
        Baseline("cheapest-first", topology, _cheapest_first, seed),
        Baseline("join-shortest-queue", topology, _shortest_queue, seed),
        Baseline("power-of-two-choices", topology, _two_choices, seed),
    ]


# --- LiteLLM ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Deployment:
    """LiteLLM's per-deployment router cache entries for one model group."""

    latency: list[float] = field(default_factory=lambda: [0.0])
    ttft: list[float] = field(default_factory=list)
    minute: int = -1
    rpm: int = 0
    tpm: int = 0


def _push_capped(values: list[float], value: float) -> None:
    if len(values) < LITELLM_LATENCY_LIST:
        values.append(value)
    else:
        del values[0]
        values.append(value)


class LiteLlm:
    """LiteLLM's router with one of its strategies; one model group per (site, class)."""

    def __init__(self, topology: Topology, strategy: str, mean_duration_s: dict[str, float],
                 seed: int = 0) -> None:
        if strategy not in ("latency-based-routing", "cost-based-routing"):
            raise ValueError(f"unknown LiteLLM strategy {strategy}")
        self.name = f"LiteLLM {strategy}"
        self.strategy = strategy
        self.topology = topology
        self.rng = random.Random(seed)
        self.groups = {(g.site, g.cls): topology.eligible(g.site, g.cls)
                       for g in topology.groups}
        self.state: dict[tuple[str, str, str], _Deployment] = {}
        # rpm a deployment's slots sustain: what an operator writes into model_list.
        self.rpm_limit = {f.id: max(1, int(60 * f.slots / mean_duration_s[f.id]))
                          for f in topology.factories}
        # (site, factory, minute) -> [successes, failures]
        self.outcomes: dict[tuple[str, str, int], list[int]] = {}
        self.cooldown: dict[tuple[str, str], float] = {}

    def start(self, sim: Simulation) -> None:
        pass

    def max_attempts(self, req: Req) -> int:
        return 1 + LITELLM_RETRIES

    def _entry(self, req: Req, fid: str) -> _Deployment:
        # Each site's proxy decides on its own cache: LiteLLM's DualCache reads its in-memory
        # copy first, so even with Redis configured, instances route on what they saw.
        key = (req.site, req.cls, fid)
        entry = self.state.get(key)
        if entry is None:
            entry = self.state[key] = _Deployment()
        return entry

    def _under_limits(self, entry: _Deployment, fid: str, req: Req, minute: int) -> bool:
        # LiteLLM skips a deployment when item_rpm + 1 > rpm (tpm is counted but, as no tpm
        # limit is configured here, never binds). The count is of *completed* requests, so a
        # backlog the router itself created does not hold it back.
        rpm = entry.rpm if entry.minute == minute else 0
        return rpm + 1 <= self.rpm_limit[fid]

    def choose(self, req: Req, now: float) -> str | None:
        minute = int(now // 60)
        healthy = [f for f in self.groups[(req.site, req.cls)]
                   if self.cooldown.get((req.site, f), 0.0) <= now]
        potential: list[tuple[str, float]] = []
        if self.strategy == "latency-based-routing":
            # random.sample over the deployments first, as lowest_latency.py does.
            for fid in self.rng.sample(healthy, len(healthy)):
                entry = self._entry(req, fid)
                values = entry.ttft if entry.ttft else entry.latency
                selected = sum(values) / len(values) if values else 0.0
                if self._under_limits(entry, fid, req, minute):
                    potential.append((fid, selected))
            if not potential:
                return None
            potential.sort(key=lambda x: x[1])
            lowest = potential[0][1]
            return self.rng.choice([fid for fid, v in potential if v <= lowest])
        for fid in healthy:
            entry = self._entry(req, fid)
            model = self.topology.by_id[fid]
            item_cost = model.price_in / 1e6 + model.price_out / 1e6
            if self._under_limits(entry, fid, req, minute):
                potential.append((fid, item_cost))
        if not potential:
            return None
        potential.sort(key=lambda x: x[1])  # stable: model-list order on ties
        return potential[0][0]

    def _outcome(self, req: Req, fid: str, now: float, ok: bool) -> list[int]:
        counts = self.outcomes.setdefault((req.site, fid, int(now // 60)), [0, 0])
        counts[0 if ok else 1] += 1
        return counts

    def on_failure(self, req: Req, factory_id: str, now: float) -> None:
        ok, fails = self._outcome(req, factory_id, now, ok=False)
        total = ok + fails
        if total >= LITELLM_MIN_REQUESTS and fails / total > LITELLM_FAILURE_PERCENT:
            self.cooldown[(req.site, factory_id)] = now + LITELLM_COOLDOWN_S

    def on_success(self, req: Req, factory_id: str, now: float) -> None:
        self._outcome(req, factory_id, now, ok=True)
        entry = self._entry(req, factory_id)
        duration = now - req.t
        # Non-streaming "latency" is seconds per output token; streams also log their TTFT.
        _push_capped(entry.latency, duration / max(req.output, 1))
        _push_capped(entry.ttft, req.ttft)
        minute = int(now // 60)
        if entry.minute != minute:
            entry.minute, entry.rpm, entry.tpm = minute, 0, 0
        entry.rpm += 1
        entry.tpm += req.prompt + req.output
