"""The retry budget (Envoy's): retries in flight may be at most a share of active requests.

Failing over is cheap for one request and dangerous for all of them: when a whole region breaks,
every request retrying at once doubles the load on what is left. So a retry needs a token: an
attempt after one where the factory may have worked on the request (a 5xx, a missed first-byte
deadline, a broken body or stream, a reset after the request was sent), a larger-context
fallback, a stream continuation. Tokens in use are bounded by ``max(min_concurrency, percent x
active requests)``; a request holds at most one, from its first retry until it ends, as Envoy
counts a retry active until it completes. A request refused a token gets the error it had (see
:mod:`exchange`), marked with ``x-tdn-retry-budget: exhausted``.

What is *not* a retry, and never asks for a token (:mod:`failover` decides): moving on from a
factory that did no work (never reached, no credential, a 429) and from one outlier detection has
taken out of rotation (a re-route, as a new request would be routed). The budget is therefore
spent only while failures look sporadic or while the route is in panic, which is exactly when
retries could amplify load on a sick fleet; the default floor of 10 (Envoy's is 3) is sized for
LLM requests that hold their token for seconds (see :mod:`effective_settings`).
"""

from __future__ import annotations

from .effective_settings import DEFAULT_RETRY_BUDGET_MIN_CONCURRENCY, DEFAULT_RETRY_BUDGET_PERCENT


class RetryBudget:
    """Counts active requests and retries in flight; everything runs on one event loop."""

    def __init__(self, percent: float = DEFAULT_RETRY_BUDGET_PERCENT,
                 min_concurrency: int = DEFAULT_RETRY_BUDGET_MIN_CONCURRENCY) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency
        self.active = 0
        self.retries_in_flight = 0
        self.exhausted_total = 0

    def configure(self, percent: float, min_concurrency: int) -> None:
        self.percent = percent
        self.min_concurrency = min_concurrency

    @property
    def limit(self) -> float:
        return max(float(self.min_concurrency), self.percent / 100.0 * self.active)

    def request_started(self) -> None:
        self.active += 1

    def request_ended(self, held_retry: bool) -> None:
        self.active -= 1
        if held_retry:
            self.retries_in_flight -= 1

    def try_acquire(self) -> bool:
        """Take a retry token if the budget allows; False means: do not retry."""
        if self.retries_in_flight < self.limit:
            self.retries_in_flight += 1
            return True
        self.exhausted_total += 1
        return False
