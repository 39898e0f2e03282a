"""The failure-handling settings a sidecar actually runs: a policy's ``DataPlaneSettings`` with
every zero replaced by the sidecar's default, resolved once when a policy arrives.

The wire contract says "zero means the sidecar's default"; these are those defaults, and the one
place they are written down (dataplane/README.md repeats them for operators):

==============================  ============================================================
stream idle timeout             derived per factory from its TTFT p99 (see :mod:`deadlines`):
                                3 x p99 bounded to [2 s, 10 s]; 10 s when the p99 is unknown
continuation                    off unless the policy enables it
slow first byte                 a factory where one of the sidecar's streams has waited 0.5 s
                                for its first byte is passed over for new streams while the
                                route has others (:mod:`first_byte_watch`)
retry budget                    retries in flight <= 20 % of active requests, but at least 10
                                may always run (Envoy's percentage; a higher floor, below)
consecutive failures            5 in a row eject a factory
local-origin failures           3 in a row that never got an answer (refused, connect error
                                or timeout, DNS, reset before any response byte) eject it;
                                never more than ``consecutive failures``
failure rate                    >= 50 % failed attempts over a 10 s window with >= 10
                                attempts ejects a factory
suspicion                       a missed first-byte deadline takes the factory out of rotation
                                for one probe interval (it is ejected after 5 in a row)
ejection time                   30 s x 2^(n-1) for the n-th ejection, capped at 300 s
max ejected                     50 % of the policy's factories (but one may always be ejected);
                                suspected factories count towards it
panic threshold                 a route with under 50 % of its factories healthy ignores
                                ejections (Envoy's panic routing)
probe interval                  ejected factories are probed every 5 s; a probe waits at most
                                2 s (never longer than the interval)
==============================  ============================================================

Why the retry budget's floor is 10 where Envoy's is 3: a budget token is held until the request
ends, and an LLM request lasts seconds, not Envoy's milliseconds. At a few requests per second a
factory that starts answering 503 fails four requests (until its fifth ejects it) within the
time their backups take to answer; with a floor of 3 the fourth client would get the 503. Ten
covers two factories failing at once plus a continuation or two. Failures that cost no retry at
all (a factory that was never reached, or one already out of rotation) are described in
:mod:`retry_budget`.

Why 3 for local-origin failures: a refused connection is unambiguous (nothing listens there) and
costs a millisecond, so there is nothing to wait for; 3 rather than 1 so a single dropped SYN or
a restart's brief gap does not eject a healthy factory. It is not a policy field yet (the wire
contract has none); a policy with ``consecutive_failures`` below 3 lowers it too.

First-byte deadlines have their own module (:mod:`deadlines`) because they also depend on the
route, the factory and the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdn.domain import DataPlaneSettings

DEFAULT_RETRY_BUDGET_PERCENT = 20.0
DEFAULT_RETRY_BUDGET_MIN_CONCURRENCY = 10
DEFAULT_CONSECUTIVE_FAILURES = 5
DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES = 3
DEFAULT_FAILURE_RATE_THRESHOLD = 0.5
DEFAULT_MINIMUM_REQUESTS = 10
DEFAULT_INTERVAL_S = 10.0
DEFAULT_BASE_EJECTION_S = 30.0
DEFAULT_MAX_EJECTION_S = 300.0
DEFAULT_MAX_EJECTION_PERCENT = 50.0
DEFAULT_PANIC_THRESHOLD_PERCENT = 50.0
DEFAULT_PROBE_INTERVAL_S = 5.0
# A stream waiting this long for its first byte marks its factory slow (first_byte_watch).
DEFAULT_SLOW_FIRST_BYTE_S = 0.5
MAX_PROBE_TIMEOUT_S = 2.0


def _or(value: float, default: float) -> float:
    return value if value > 0 else default


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """Outlier detection with every default filled in (see the module table)."""

    consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES
    consecutive_local_origin_failures: int = DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES
    failure_rate_threshold: float = DEFAULT_FAILURE_RATE_THRESHOLD
    minimum_requests: int = DEFAULT_MINIMUM_REQUESTS
    interval_s: float = DEFAULT_INTERVAL_S
    base_ejection_s: float = DEFAULT_BASE_EJECTION_S
    max_ejection_s: float = DEFAULT_MAX_EJECTION_S
    max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT
    panic_threshold_percent: float = DEFAULT_PANIC_THRESHOLD_PERCENT
    probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S

    @property
    def probe_timeout_s(self) -> float:
        return min(MAX_PROBE_TIMEOUT_S, self.probe_interval_s)

    @property
    def suspect_s(self) -> float:
        """How long a missed first-byte deadline keeps a factory out of rotation: one probe
        interval, the horizon at which the sidecar looks at an ejected factory again too."""
        return self.probe_interval_s


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """A site's data-plane settings as the sidecar runs them (no zero left to interpret)."""

    # 0: derive each factory's deadline from its TTFT p99 (see deadlines.first_byte_deadline).
    first_byte_timeout_s: float = 0.0
    # 0: derive each factory's idle timeout from its TTFT p99 (see deadlines.stream_idle_timeout).
    stream_idle_timeout_s: float = 0.0
    continuation_enabled: bool = False
    retry_budget_percent: float = DEFAULT_RETRY_BUDGET_PERCENT
    retry_budget_min_concurrency: int = DEFAULT_RETRY_BUDGET_MIN_CONCURRENCY
    outlier: OutlierConfig = OutlierConfig()
    slow_first_byte_s: float = DEFAULT_SLOW_FIRST_BYTE_S


def resolve(settings: DataPlaneSettings) -> EffectiveSettings:
    """Fill in the defaults; ``settings`` was checked when the policy was accepted."""
    o = settings.outlier
    base = _or(o.base_ejection_s, DEFAULT_BASE_EJECTION_S)
    consecutive = o.consecutive_failures or DEFAULT_CONSECUTIVE_FAILURES
    outlier = OutlierConfig(
        consecutive_failures=consecutive,
        consecutive_local_origin_failures=min(DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURES,
                                              consecutive),
        failure_rate_threshold=_or(o.failure_rate_threshold, DEFAULT_FAILURE_RATE_THRESHOLD),
        minimum_requests=o.minimum_requests or DEFAULT_MINIMUM_REQUESTS,
        interval_s=_or(o.interval_s, DEFAULT_INTERVAL_S),
        base_ejection_s=base,
        # A cap below the base would make the first ejection longer than the cap.
        max_ejection_s=max(_or(o.max_ejection_s, DEFAULT_MAX_EJECTION_S), base),
        max_ejection_percent=_or(o.max_ejection_percent, DEFAULT_MAX_EJECTION_PERCENT),
        panic_threshold_percent=_or(o.panic_threshold_percent, DEFAULT_PANIC_THRESHOLD_PERCENT),
        probe_interval_s=_or(o.probe_interval_s, DEFAULT_PROBE_INTERVAL_S),
    )
    return EffectiveSettings(
        first_byte_timeout_s=settings.first_byte_timeout_s,
        stream_idle_timeout_s=settings.stream_idle_timeout_s,
        continuation_enabled=settings.continuation_enabled,
        retry_budget_percent=_or(settings.retry_budget_percent, DEFAULT_RETRY_BUDGET_PERCENT),
        retry_budget_min_concurrency=(settings.retry_budget_min_concurrency
                                      or DEFAULT_RETRY_BUDGET_MIN_CONCURRENCY),
        outlier=outlier,
        slow_first_byte_s=_or(settings.slow_first_byte_s, DEFAULT_SLOW_FIRST_BYTE_S),
    )


def settings_problems(settings: DataPlaneSettings) -> list[str]:
    """What makes ``settings`` unusable (empty when it is fine): a reason to NACK the policy."""
    problems: list[str] = []
    o = settings.outlier
    numbers = {
        "first_byte_timeout_seconds": settings.first_byte_timeout_s,
        "stream_idle_timeout_seconds": settings.stream_idle_timeout_s,
        "slow_first_byte_seconds": settings.slow_first_byte_s,
        "retry_budget_percent": settings.retry_budget_percent,
        "outlier_detection.failure_rate_threshold": o.failure_rate_threshold,
        "outlier_detection.interval_seconds": o.interval_s,
        "outlier_detection.base_ejection_seconds": o.base_ejection_s,
        "outlier_detection.max_ejection_seconds": o.max_ejection_s,
        "outlier_detection.max_ejection_percent": o.max_ejection_percent,
        "outlier_detection.panic_threshold_percent": o.panic_threshold_percent,
        "outlier_detection.probe_interval_seconds": o.probe_interval_s,
    }
    for name, value in numbers.items():
        # NaN fails both comparisons, so it is caught here too.
        if not 0 <= value < float("inf"):
            problems.append(f"settings.{name} is {value!r}; it must be a finite number >= 0")
    for name, value in (("retry_budget_percent", settings.retry_budget_percent),
                        ("outlier_detection.max_ejection_percent", o.max_ejection_percent),
                        ("outlier_detection.panic_threshold_percent",
                         o.panic_threshold_percent)):
        if value > 100:
            problems.append(f"settings.{name} is {value}; a percentage is at most 100")
    if o.failure_rate_threshold > 1:
        problems.append(f"settings.outlier_detection.failure_rate_threshold is "
                        f"{o.failure_rate_threshold}; it is a share between 0 and 1")
    return problems
