"""What a request from a site would experience at a factory: round trip, TTFT, duration, load.

This is the one physical model the eligibility rules, the cost terms and the capacity constraint
share, so a factory excluded for its TTFT and a factory priced for its latency are judged alike.
Observed telemetry wins; defaults stand in for what a factory has not reported yet.
"""

from __future__ import annotations

from tdn.domain import Demand, FactoryState, Site, Tier

# An on-site factory sits on its site's own network: the region RTT table does not apply.
LOCAL_RTT_MS = 0.5
# Without an observed TTFT: a fixed scheduling cost plus prefill at a conservative rate, so that
# long prompts are not promised short first tokens by a factory that has never reported.
DEFAULT_BASE_TTFT_S = 0.05
DEFAULT_PREFILL_TOKENS_PER_S = 5000.0
# Without an observed inter-token latency: 50 tokens/s per stream, slower than any engine we
# simulate, so unreported factories are never assumed to be faster than they are.
DEFAULT_ITL_S = 0.02


def rtt_ms(site: Site, factory: FactoryState) -> float:
    """Round-trip time from the site to the factory, in milliseconds."""
    spec = factory.spec
    if spec.tier is Tier.ON_SITE and spec.site == site.id:
        return LOCAL_RTT_MS
    return site.rtt_to(spec.region)


def factory_ttft_s(factory: FactoryState, prompt_tokens: float) -> float:
    """TTFT at the factory itself (no network): observed p50, else a prompt-length default."""
    observed = factory.load.ttft_p50_s
    if observed > 0:
        return observed
    return DEFAULT_BASE_TTFT_S + prompt_tokens / DEFAULT_PREFILL_TOKENS_PER_S


def itl_s(factory: FactoryState) -> float:
    observed = factory.load.itl_p50_s
    return observed if observed > 0 else DEFAULT_ITL_S


def request_duration_s(demand: Demand, factory: FactoryState) -> float:
    """How long one request of this demand holds a concurrency slot at the factory."""
    return factory_ttft_s(factory, demand.prompt_tokens) + demand.output_tokens * itl_s(factory)


def backlog_s(demand: Demand, factory: FactoryState) -> float:
    """Time for the factory's current queue to drain through its slots (Little's law).

    Observed TTFT already holds the queueing of the recent past; this adds the backlog waiting
    *now*, which is what a request sent on this plan meets first.
    """
    waiting = factory.load.waiting
    if waiting <= 0:
        return 0.0
    return waiting * request_duration_s(demand, factory) / factory.spec.max_concurrency


def ttft_estimate_s(demand: Demand, factory: FactoryState, site: Site) -> float:
    """Estimated time to first token seen by the site: RTT + factory TTFT + current backlog."""
    return (
        rtt_ms(site, factory) / 1000.0
        + factory_ttft_s(factory, demand.prompt_tokens)
        + backlog_s(demand, factory)
    )


def concurrency(demand: Demand, factory: FactoryState) -> float:
    """In-flight requests the whole demand would keep at the factory (Little: L = lambda W)."""
    return demand.rate_rps * request_duration_s(demand, factory)

