"""Which factories a request tries, in which order: the primary set by weight, then backups.

The first pick among a group uses smooth weighted round-robin (nginx's algorithm): over any
window of N requests each factory gets its weighted share within one request, deterministically,
with picks interleaved rather than bursty. No randomness means tests can state exact counts and
two sidecars at one site spread load the same way. The rest of the order (other primaries, then
backup levels in the policy's order) is what the failover loop walks when a pick fails.

Later work slots in here: outlier ejection removes factories from the order, and per-factory
state stays keyed by route so a new policy version starts fresh.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tdn.domain import FactoryEndpoint, Route, SitePolicy, WeightedFactory


def _usable(weight: float) -> float:
    # A policy is checked before it is run, but a weight that is not a finite non-negative number
    # must still never take a share (or make every other factory's share wrong).
    return weight if math.isfinite(weight) and weight > 0 else 0.0


class SmoothWeightedRoundRobin:
    """One group's smooth weighted round-robin state."""

    def __init__(self, members: Sequence[WeightedFactory]) -> None:
        self._members = tuple(members)
        self._weights = tuple(_usable(m.weight) for m in self._members)
        self._total = sum(self._weights)
        self._current = [0.0] * len(self._members)

    def pick(self) -> str | None:
        """The next factory id, or None when no member has a positive weight."""
        if self._total <= 0:
            return None
        best = 0
        for i, weight in enumerate(self._weights):
            self._current[i] += weight
            if self._current[i] > self._current[best]:
                best = i
        self._current[best] -= self._total
        return self._members[best].factory_id


class Balancer:
    """Orders candidates for each request; state per (model, class, group), reset per policy."""

    def __init__(self) -> None:
        self._policy: SitePolicy | None = None
        self._groups: dict[tuple[str, str, int], SmoothWeightedRoundRobin] = {}

    def _group(self, policy: SitePolicy, route: Route, level: int,
               members: Sequence[WeightedFactory]) -> SmoothWeightedRoundRobin:
        # Identity, not version: a swapped-in policy is a new object even if a test or a
        # misbehaving control plane reuses a version string with other routes.
        if policy is not self._policy:
            self._policy = policy
            self._groups.clear()
        key = (route.model, route.traffic_class, level)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = SmoothWeightedRoundRobin(members)
        return group

    def candidates(self, policy: SitePolicy, route: Route) -> list[FactoryEndpoint]:
        """Every factory of ``route`` once, in the order to try them for the next request."""
        order: list[str] = []
        groups = (route.primary, *route.backups)
        for level, members in enumerate(groups):
            first = self._group(policy, route, level, members).pick()
            if first is not None:
                order.append(first)
            # The rest of the group, heaviest first: the likeliest to have headroom.
            for member in sorted(members, key=lambda m: -_usable(m.weight)):
                order.append(member.factory_id)
        seen: set[str] = set()
        out: list[FactoryEndpoint] = []
        for factory_id in order:
            if factory_id in seen:
                continue
            seen.add(factory_id)
            endpoint = policy.endpoint(factory_id)
            if endpoint is not None:
                out.append(endpoint)
        return out
