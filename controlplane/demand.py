"""Demand the solver plans for: observed traffic, smoothed, with the network file as fallback.

Sidecars report metered usage per window (``tdn.v1.Usage``): requests and tokens per tenant,
factory and model, with their site. The estimator keeps, per (site, served model), exponentially
decayed sums of requests, prompt tokens and completion tokens:

    S(t) = sum_i n_i * exp(-(t - t_i) / tau),    tau = half_life / ln 2

where a report's counts are weighed as spread over its window. For a steady rate lambda observed
since t0 this is lambda * tau * (1 - exp(-(t - t0) / tau)), so the estimate divides by that
factor: it is unbiased from the first report on (no cold-start dip to zero) and follows a change
with the policy's half-life. Several sidecars at one site simply
add up. Token sizes are the ratios of the decayed sums (tokens per request, weighted by recency).

Surges: the plan stands until the next solve, and LLM traffic comes in bursts (the Azure code
trace's per-minute rates swing 3-10x around their 5-minute mean), so a plan sized for the smoothed
mean sends a surge where only the mean fits. The estimator therefore keeps a second, fast sum
(half-life ``SURGE_HALF_LIFE_S``, about the last minute) and plans for the larger of the two
rates: a surge shapes the next plan at once, a lull waits for the policy's half-life before
capacity is given back. (The routing benchmark's control plane does the same.)

Classes: usage records carry the requests' traffic class, so sums are kept per (site, model,
class). A class the sidecar names that is neither listed for that site and model in the network
file nor defined in the policy is counted as "default": the sidecar served it on the default
route, and a client must not be able to create demand groups by inventing class names. Records
without a class (sidecars that predate the field) are split over the classes the network file
lists for that site and model, in their configured proportions (all "default" when none are
listed). Each class keeps its configured SLO (the policy's class SLO applies on top, as for
configured demand).

Replicas: a sidecar sends its usage to one control-plane replica, and each replica estimates
from what it receives. So that the leader plans for all of the traffic, and a newly elected one
starts from the same estimate rather than from the network file, every replica publishes its own
estimate through the store (:mod:`tdn.controlplane.demand_sync`) and adds the others' to its own
(:meth:`DemandEstimator.set_peer`): per (site, model, class), rates add up and token sizes are
averaged by rate.

A (site, model) never seen in usage keeps the network file's demand; once any of its classes is
seen, the observations win, including their decay towards zero when traffic stops, and a
configured class with no observed traffic is planned at zero. Time is the control plane's receive
time: sidecars' clocks may be skewed, and a report's own window length is only used to date the
first observation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from tdn.controlplane.usage import UsageLedger
from tdn.domain import Demand
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.v1 import usage_pb2

DEFAULT_HALF_LIFE_S = 300.0
# The fast sum behind the surge term: about the last minute.
SURGE_HALF_LIFE_S = 60.0
MIN_WINDOW_S = 1.0


@dataclass(slots=True)
class _Smoothed:
    """Decayed sums for one (site, model, class), as of ``at``."""

    first: float
    at: float
    requests: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0

    def decay_to(self, now: float, tau: float) -> None:
        if now > self.at:
            factor = math.exp(-(now - self.at) / tau)
            self.requests *= factor
            self.prompt_tokens *= factor
            self.completion_tokens *= factor
            self.at = now


Key = tuple[str, str, str]  # (site, served model, traffic class)


@dataclass(frozen=True, slots=True)
class GroupEstimate:
    """One group's estimate as a replica publishes it: the rate to plan for (the larger of the
    smoothed and surge rates), and mean tokens per request."""

    site: str
    model: str
    traffic_class: str
    rate_rps: float
    prompt_tokens: float
    output_tokens: float


class DemandEstimator:
    """Per-(site, model, class) request rates from usage reports; see the module docstring."""

    def __init__(self, configured: Sequence[Demand], *, sites: Iterable[str] = (),
                 half_life_s: float = DEFAULT_HALF_LIFE_S,
                 clock: Callable[[], float] = time.time) -> None:
        self._configured = tuple(configured)
        self._sites = frozenset(sites)
        self._clock = clock
        self._tau = half_life_s / math.log(2)
        self._surge_tau = min(SURGE_HALF_LIFE_S, half_life_s) / math.log(2)
        self._groups: dict[Key, _Smoothed] = {}
        self._surges: dict[Key, _Smoothed] = {}
        # Other replicas' published estimates (demand_sync), by replica id.
        self._peers: dict[str, dict[Key, GroupEstimate]] = {}
        self.ignored_reports = 0

    def set_half_life(self, half_life_s: float) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half-life must be positive, not {half_life_s}")
        self._tau = half_life_s / math.log(2)
        self._surge_tau = min(SURGE_HALF_LIFE_S, half_life_s) / math.log(2)

    def _configured_by_group(self, policy: Policy) -> dict[tuple[str, str], list[Demand]]:
        out: dict[tuple[str, str], list[Demand]] = {}
        for d in self._configured:
            model = policy.resolve_model(d.model)
            out.setdefault((d.site, model), []).append(replace(d, model=model))
        return out

    def _classes(self, record: usage_pb2.UsageRecord, configured: Sequence[Demand],
                 policy: Policy) -> list[tuple[str, float]]:
        """(class, share of the record) for one record; see the module docstring."""
        name = record.traffic_class
        if name:
            known = name == "default" or any(d.traffic_class == name for d in configured) \
                or policy.traffic_class(name) is not None
            return [(name if known else "default", 1.0)]
        if not configured:
            return [("default", 1.0)]
        total = sum(d.rate_rps for d in configured)
        shares: dict[str, float] = {}
        for d in configured:
            share = d.rate_rps / total if total > 0 else 1.0 / len(configured)
            shares[d.traffic_class] = shares.get(d.traffic_class, 0.0) + share
        return sorted(shares.items())

    def observe(self, report: usage_pb2.UsageReport, now: float | None = None,
                policy: Policy = DEFAULT_POLICY) -> None:
        """Add one (already de-duplicated) usage report."""
        if self._sites and report.site not in self._sites:
            self.ignored_reports += 1
            return
        now = self._clock() if now is None else now
        window = 0.0
        if report.HasField("window_start") and report.HasField("window_end"):
            window = max((report.window_end.ToNanoseconds()
                          - report.window_start.ToNanoseconds()) / 1e9, 0.0)
        # A report with no window (or an empty one) is taken as a second's worth: dated "now"
        # alone, its first estimate would divide by almost nothing.
        window = max(window, MIN_WINDOW_S)
        configured = self._configured_by_group(policy)
        # Each record's (group, share of its counts), decided once for both sums.
        counted: list[tuple[Key, float, usage_pb2.UsageRecord]] = []
        for record in report.records:
            model = policy.resolve_model(record.model)
            parts = configured.get((report.site, model), [])
            counted += [((report.site, model, name), share, record)
                        for name, share in self._classes(record, parts, policy)]
        for sums, tau in ((self._groups, self._tau), (self._surges, self._surge_tau)):
            # The counts were spread over the window, not all made now: weighed as such, a
            # steady rate reported in windows gives exactly the continuous estimate.
            spread = -math.expm1(-window / tau) * tau / window
            for key, share, record in counted:
                group = sums.get(key)
                if group is None:
                    # The counts cover the window before now: date it from its start.
                    group = sums[key] = _Smoothed(first=now - window, at=now)
                group.decay_to(now, tau)
                weight = spread * share
                group.requests += record.requests * weight
                group.prompt_tokens += record.prompt_tokens * weight
                group.completion_tokens += record.completion_tokens * weight

    def observed(self) -> frozenset[tuple[str, str]]:
        """The (site, model) groups some usage was seen for, here or at a peer."""
        return frozenset((site, model) for site, model, _ in self._seen_keys())

    def _seen_keys(self) -> set[Key]:
        keys = set(self._groups)
        for estimates in self._peers.values():
            keys.update(estimates)
        return keys

    # --- replicas ------------------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> tuple[GroupEstimate, ...]:
        """This replica's own estimate (not its peers'), for the others to add to theirs
        (sizes 0 where no request was counted: the record holds finite numbers only)."""
        now = self._clock() if now is None else now
        out = []
        for key in sorted(self._groups):
            own = self._own(key, now)
            if own is not None:
                out.append(own if own.prompt_tokens == own.prompt_tokens
                           else replace(own, prompt_tokens=0.0, output_tokens=0.0))
        return tuple(out)

    def set_peer(self, replica: str, estimates: Iterable[GroupEstimate]) -> None:
        """Another replica's latest published estimate (replacing its previous one)."""
        self._peers[replica] = {(e.site, e.model, e.traffic_class): e for e in estimates
                                if math.isfinite(e.rate_rps) and e.rate_rps >= 0}

    def drop_peer(self, replica: str) -> None:
        """A replica whose estimate is gone (it stopped, or its lease lapsed)."""
        self._peers.pop(replica, None)

    def peers(self) -> tuple[str, ...]:
        return tuple(sorted(self._peers))

    def rate(self, site: str, model: str, traffic_class: str | None = None,
             now: float | None = None) -> float | None:
        """Requests per second to plan for — per class, the larger of the smoothed rate and the
        last minute's (see the module docstring); summed over the classes seen when
        ``traffic_class`` is None — or None when nothing was observed."""
        now = self._clock() if now is None else now
        found = [e for key in self._keys(site, model, traffic_class)
                 for e in self._estimates(key, now)]
        return sum(e.rate_rps for e in found) if found else None

    def _own(self, key: Key, now: float) -> GroupEstimate | None:
        """This replica's estimate of one group (sizes NaN when no request was counted)."""
        rate = self._own_rate(key, now)
        if rate is None:
            return None
        group = self._groups[key]
        per = group.requests
        return GroupEstimate(*key, rate_rps=rate,
                             prompt_tokens=group.prompt_tokens / per if per > 0 else math.nan,
                             output_tokens=group.completion_tokens / per if per > 0 else math.nan)

    def _estimates(self, key: Key, now: float) -> list[GroupEstimate]:
        """This replica's and its peers' estimates of one group."""
        own = self._own(key, now)
        return ([own] if own is not None else []) + [
            estimates[key] for estimates in self._peers.values() if key in estimates]

    def _own_rate(self, key: Key, now: float) -> float | None:
        smoothed = self._rate(self._groups, self._tau, key, now)
        if smoothed is None:
            return None
        surge = self._rate(self._surges, self._surge_tau, key, now)
        return max(smoothed, surge or 0.0)

    def smoothed_rate(self, site: str, model: str, traffic_class: str | None = None,
                      now: float | None = None) -> float | None:
        """The policy's half-life estimate alone (no surge term)."""
        now = self._clock() if now is None else now
        found = None
        for key in self._keys(site, model, traffic_class):
            smoothed = self._rate(self._groups, self._tau, key, now)
            if smoothed is not None:
                found = (found or 0.0) + smoothed
        return found

    def _keys(self, site: str, model: str, traffic_class: str | None) -> list[Key]:
        if traffic_class is not None:
            return [(site, model, traffic_class)]
        return sorted(k for k in self._seen_keys() if k[0] == site and k[1] == model)

    def _sizes(self, key: Key, now: float) -> tuple[float, float | None, float | None]:
        """(rate, mean prompt tokens, mean output tokens) of a group over this replica and its
        peers; the sizes are None when no request was counted anywhere."""
        parts = [(e.rate_rps, e.prompt_tokens, e.output_tokens)
                 for e in self._estimates(key, now)]
        total = sum(r for r, _, _ in parts)
        sized = [(r, p, o) for r, p, o in parts if not math.isnan(p)]
        if not sized:
            return total, None, None
        weight = sum(r for r, _, _ in sized)
        if weight <= 0:
            return (total, sum(p for _, p, _ in sized) / len(sized),
                    sum(o for _, _, o in sized) / len(sized))
        return (total, sum(r * p for r, p, _ in sized) / weight,
                sum(r * o for r, _, o in sized) / weight)

    @staticmethod
    def _rate(sums: dict[Key, _Smoothed], tau: float, key: Key, now: float) -> float | None:
        group = sums.get(key)
        if group is None:
            return None
        group.decay_to(now, tau)
        seen = max(now - group.first, 1e-9)
        return group.requests / (tau * -math.expm1(-seen / tau))

    def demands(self, now: float | None = None,
                policy: Policy = DEFAULT_POLICY) -> tuple[Demand, ...]:
        """The demand to plan for now: observed where observed, configured elsewhere."""
        now = self._clock() if now is None else now
        configured = self._configured_by_group(policy)
        seen: dict[tuple[str, str], set[str]] = {}
        for site, model, name in self._seen_keys():
            seen.setdefault((site, model), set()).add(name)
        out: list[Demand] = []
        for key in sorted(configured.keys() | seen.keys()):
            parts = {d.traffic_class: d for d in configured.get(key, [])}
            classes = seen.get(key)
            if classes is None:
                out.extend(configured[key])
                continue
            for name in sorted(parts.keys() | classes):
                part = parts.get(name) or Demand(site=key[0], model=key[1], traffic_class=name)
                if name not in classes:
                    # Configured, never seen while its siblings are: no traffic to plan for.
                    out.append(replace(part, rate_rps=0.0))
                    continue
                rate, prompt, output = self._sizes((key[0], key[1], name), now)
                out.append(replace(
                    part, rate_rps=rate,
                    prompt_tokens=prompt if prompt is not None else part.prompt_tokens,
                    output_tokens=output if output is not None else part.output_tokens))
        return tuple(out)


class DemandObservingLedger(UsageLedger):
    """The usage ledger, also feeding each newly counted report to the demand estimator.

    Only reports the ledger counts are observed: a re-sent report (at-least-once delivery) must
    not count twice in the demand either.
    """

    def __init__(self, estimator: DemandEstimator,
                 policy: Callable[[], Policy] = lambda: DEFAULT_POLICY) -> None:
        super().__init__()
        self._estimator = estimator
        self._policy = policy

    def add(self, report: usage_pb2.UsageReport) -> bool:
        counted = super().add(report)
        if counted:
            self._estimator.observe(report, policy=self._policy())
        return counted
