"""The simulator's token-timing model, as pure functions of plain numbers.

A request first pays ``base_latency_ms`` (API and network overhead), then waits in the engine's
FIFO queue until admitted (see :mod:`tdn.sim.scheduler`), then prefills its prompt at
``prefill_tokens_per_s``; its first token appears then, so

    TTFT = base latency + queue wait + prompt_tokens / prefill_tokens_per_s

and each further token follows after ``itl_ms`` (optionally jittered by a seeded fraction, so the
same prompt always gets the same gaps). Concurrent requests do not slow each other down except by
queueing: a deliberate simplification, which keeps a factory's behaviour predictable for routing
tests. :func:`simulate` runs the same model in virtual time, so its consequences (queueing,
TTFT growth under load) are testable without clocks; the server runs it in real time.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from tdn.sim.scheduler import Admission


@dataclass(frozen=True, slots=True)
class TimingModel:
    """Latency parameters of one simulated engine."""

    base_latency_ms: float = 0.0
    prefill_tokens_per_s: float = 8000.0
    itl_ms: float = 15.0
    itl_jitter: float = 0.0  # each gap is itl_ms * (1 ± up to this fraction)

    def prefill_seconds(self, prompt_tokens: int) -> float:
        return prompt_tokens / self.prefill_tokens_per_s

    def time_to_first_token(self, prompt_tokens: int, queue_wait_s: float = 0.0) -> float:
        """Seconds from arrival to the first token, given how long the request queued."""
        return self.base_latency_ms / 1000.0 + queue_wait_s + self.prefill_seconds(prompt_tokens)

    def token_gaps(self, tokens: int, seed: int = 0, itl_ms: float | None = None) -> list[float]:
        """Seconds between consecutive tokens: ``tokens - 1`` gaps (the first token has none).

        ``itl_ms`` overrides the model's (a slow-tokens fault); jitter is drawn from ``seed``.
        """
        gap = (self.itl_ms if itl_ms is None else itl_ms) / 1000.0
        count = max(tokens - 1, 0)
        if self.itl_jitter <= 0.0 or gap == 0.0:
            return [gap] * count
        rng = random.Random(seed)
        return [gap * (1.0 + self.itl_jitter * rng.uniform(-1.0, 1.0)) for _ in range(count)]

    def decode_seconds(self, tokens: int, seed: int = 0) -> float:
        return sum(self.token_gaps(tokens, seed))


@dataclass(frozen=True, slots=True)
class SimulatedRequest:
    """A request for :func:`simulate`: when it arrives and its size in tokens."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class RequestTiming:
    """When a simulated request queued, got its first token and finished (seconds)."""

    queue_wait_s: float
    ttft_s: float
    e2e_s: float


def simulate(model: TimingModel, max_concurrency: int, kv_capacity_tokens: int,
             requests: Sequence[SimulatedRequest]) -> list[RequestTiming]:
    """Run ``requests`` through the model in virtual time; results are in the input's order.

    KV growth during decode is not modelled here (only prompts are held), which only matters
    when the KV cache, not the concurrency limit, is what fills.
    """
    admission = Admission(max_concurrency, kv_capacity_tokens)
    base_s = model.base_latency_ms / 1000.0
    enqueued_at: dict[int, float] = {}
    results: dict[int, RequestTiming] = {}
    # (time, order, kind, index): "enqueue" after the base latency, "finish" when decode ends.
    events: list[tuple[float, int, str, int]] = []
    order = 0
    for i, req in enumerate(requests):
        heapq.heappush(events, (req.arrival_s + base_s, order, "enqueue", i))
        order += 1

    def start(index: int, now: float) -> None:
        nonlocal order
        req = requests[index]
        queue_wait = now - enqueued_at[index]
        first_token = now + model.prefill_seconds(req.prompt_tokens)
        done = first_token + model.decode_seconds(req.output_tokens)
        results[index] = RequestTiming(
            queue_wait_s=queue_wait,
            ttft_s=model.time_to_first_token(req.prompt_tokens, queue_wait),
            e2e_s=done - req.arrival_s,
        )
        heapq.heappush(events, (done, order, "finish", index))
        order += 1

    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == "enqueue":
            enqueued_at[index] = now
            if admission.submit(index, requests[index].prompt_tokens):
                start(index, now)
        else:
            for admitted in admission.finish(index):
                start(admitted, now)
    return [results[i] for i in range(len(requests))]
