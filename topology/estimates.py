"""What a request from a site would experience at a factory: round trip, TTFT, duration, slots.

This is the one physical model the eligibility rules, the cost terms and the capacity constraint
share, so a factory excluded for its TTFT and a factory priced for its latency are judged alike.

The model is of the factory **unloaded**: its TTFT with no queue in front of the request. The
queueing a plan causes is not read back from telemetry but predicted from the load the plan
itself puts on each factory (:mod:`tdn.topology.queueing`): an observed TTFT or queue is the
*result* of the last plan, and feeding it back as a property of the factory made plans
oscillate (a busy factory looked slow, traffic left, it drained, looked fast, traffic returned).

Telemetry still counts where it says the model is wrong, damped so that it never flips a
verdict from one report to the next:

* An observed TTFT p50 *below* the conservative default (:data:`DEFAULT_PREFILL_TOKENS_PER_S`)
  shows the factory is faster than assumed, and is believed. One *above* it is believed in
  proportion to how idle the factory was, both by its own report (running, waiting) and by the
  load the previous plan sent it (:func:`planned_loads`): an idle factory that is slow is slow;
  at half its slots busy, by either count, or with any queue, the excess is taken to be
  queueing, which the queueing model accounts for itself. The previous plan's load matters
  because a report is a snapshot while the TTFT is a median over a window: a factory the plan
  keeps busy can look idle between two bursts while its median still holds their queueing.
* A queue while slots are free (``waiting > 0`` and ``running < max_concurrency``) says the
  factory cannot run as many requests as it declares (KV cache, a smaller batch): its planned
  slots move half-way towards what it runs (:func:`effective_slots`).
"""

from __future__ import annotations

from collections.abc import Iterable

from tdn.domain import Demand, FactoryState, Plan, Site, Tier

# An on-site factory sits on its site's own network: the region RTT table does not apply.
LOCAL_RTT_MS = 0.5
# Without an observed TTFT: a fixed scheduling cost plus prefill at a conservative rate, so that
# long prompts are not promised short first tokens by a factory that has never reported.
DEFAULT_BASE_TTFT_S = 0.05
DEFAULT_PREFILL_TOKENS_PER_S = 5000.0
# Without an observed inter-token latency: 50 tokens/s per stream, slower than any engine we
# simulate, so unreported factories are never assumed to be faster than they are.
DEFAULT_ITL_S = 0.02
# Above this share of slots busy, an observed TTFT above the default is taken as queueing.
IDLE_UTILISATION = 0.5
# How far a queue with free slots moves a factory's planned slots towards what it runs.
SLOTS_DAMPING = 0.5


def rtt_ms(site: Site, factory: FactoryState) -> float:
    """Round-trip time from the site to the factory, in milliseconds."""
    spec = factory.spec
    if spec.tier is Tier.ON_SITE and spec.site == site.id:
        return LOCAL_RTT_MS
    return site.rtt_to(spec.region)


def default_ttft_s(prompt_tokens: float) -> float:
    """The conservative unloaded TTFT of a factory that has not reported one."""
    return DEFAULT_BASE_TTFT_S + prompt_tokens / DEFAULT_PREFILL_TOKENS_PER_S


def idle_trust(factory: FactoryState, planned_load: float = 0.0) -> float:
    """How much an observed TTFT above the default is the factory's own speed (1) rather than
    queueing (0): 1 when idle, falling linearly to 0 at :data:`IDLE_UTILISATION` of its slots
    busy (as reported, or as ``planned_load``, the previous plan's in-flight requests there,
    whichever is higher), 0 with a queue."""
    load = factory.load
    if load.waiting > 0:
        return 0.0
    busy = max(load.running, planned_load) / max(factory.spec.max_concurrency, 1)
    return max(0.0, 1.0 - busy / IDLE_UTILISATION)


def factory_ttft_s(factory: FactoryState, prompt_tokens: float, planned_load: float = 0.0,
                   ) -> float:
    """Unloaded TTFT at the factory itself (no network, no queue); see the module docstring."""
    default = default_ttft_s(prompt_tokens)
    observed = factory.load.ttft_p50_s
    if observed <= 0:
        return default
    if observed <= default:
        return observed
    return default + idle_trust(factory, planned_load) * (observed - default)


def planned_loads(previous: Plan | None, factories: Iterable[FactoryState],
                  demands: Iterable[Demand]) -> dict[str, float]:
    """In-flight requests the previous plan's primary weights send each factory under
    ``demands`` (merged, one per group), with the default TTFT (so that what this estimates
    never depends on the observation it is used to judge)."""
    if previous is None:
        return {}
    by_id = {f.spec.id: f for f in factories}
    by_key = {(d.site, d.model, d.traffic_class): d for d in demands}
    out: dict[str, float] = {}
    for site, route in previous.routes:
        d = by_key.get((site, route.model, route.traffic_class))
        if d is None:
            continue
        for w in route.primary:
            f = by_id.get(w.factory_id)
            if f is not None:
                duration = default_ttft_s(d.prompt_tokens) + d.output_tokens * itl_s(f)
                out[w.factory_id] = out.get(w.factory_id, 0.0) + w.weight * d.rate_rps * duration
    return out


def itl_s(factory: FactoryState) -> float:
    observed = factory.load.itl_p50_s
    return observed if observed > 0 else DEFAULT_ITL_S


def effective_slots(factory: FactoryState) -> float:
    """The concurrency the plan counts on: the declared slots, unless a queue forms while slots
    are free, which moves it :data:`SLOTS_DAMPING` of the way to what the factory runs."""
    declared = float(factory.spec.max_concurrency)
    load = factory.load
    if load.waiting > 0 and load.running < declared:
        return declared - SLOTS_DAMPING * (declared - load.running)
    return declared


def request_duration_s(demand: Demand, factory: FactoryState, planned_load: float = 0.0,
                       ) -> float:
    """How long one request of this demand holds a concurrency slot at the factory."""
    return (factory_ttft_s(factory, demand.prompt_tokens, planned_load)
            + demand.output_tokens * itl_s(factory))


def ttft_estimate_s(demand: Demand, factory: FactoryState, site: Site,
                    planned_load: float = 0.0) -> float:
    """Estimated time to first token seen by the site with no queue: RTT + unloaded TTFT
    (``planned_load``: the previous plan's in-flight requests at the factory, see
    :func:`idle_trust`).

    This is what the SLO check and the latency cost use; the wait a plan adds is bounded by the
    SLO-safe load (:mod:`tdn.topology.queueing`) and priced by the queueing cost.
    """
    return (rtt_ms(site, factory) / 1000.0
            + factory_ttft_s(factory, demand.prompt_tokens, planned_load))


def concurrency(demand: Demand, factory: FactoryState) -> float:
    """In-flight requests the whole demand would keep at the factory (Little: L = lambda W)."""
    return demand.rate_rps * request_duration_s(demand, factory)
