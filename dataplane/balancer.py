"""Which factories a request tries, in which order: its primary pick by weight, then the backup
levels, then the other primaries.

The first pick among a group uses smooth weighted round-robin (nginx's algorithm): over any
window of N requests each factory gets its weighted share within one request, deterministically,
with picks interleaved rather than bursty. No randomness means tests can state exact counts and
two sidecars at one site spread load the same way.

The rest of the order is the failover contract the solver reserves capacity for
(:mod:`tdn.topology.failover`): a primary's share of traffic that it cannot take goes to the
first backup level with a live member, spread over that level by weight (each level's own
rotation picks first, then the rest of the level, heaviest first), then the next level, and only
when no backup is left to the other primaries. The other primaries run at their planned load
with no spare capacity reserved for a neighbour's loss, while backup level 0 was sized to absorb
any one primary's share; so when the factory carrying 86 % of a route dies, the 14 % primary
keeps its 14 % and the backup takes the 86 %, instead of the 14 % primary drowning in all of it.
This holds both for a pick that is ejected or cooling down (:mod:`outlier` and :mod:`cooldowns`
remove it, so the request starts at the backup) and for one that fails a request (the failover
loop walks on to the backup, preferring another failure domain).

Everything that depends only on the policy (endpoint lookups, the fallback order of each group)
is computed once per policy in :class:`RoutePlan`; a request only advances the rotations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from tdn.domain import FactoryEndpoint, Route, SitePolicy, WeightedFactory


def _usable(weight: float) -> float:
    # A policy is checked before it is run, but a weight that is not a finite non-negative number
    # must still never take a share (or make every other factory's share wrong).
    return weight if math.isfinite(weight) and weight > 0 else 0.0


class SmoothWeightedRoundRobin:
    """One group's smooth weighted round-robin state."""

    __slots__ = ("_current", "_members", "_total", "_weights")

    def __init__(self, members: Sequence[WeightedFactory]) -> None:
        self._members = tuple(members)
        self._weights = tuple(_usable(m.weight) for m in self._members)
        self._total = sum(self._weights)
        self._current = [0.0] * len(self._members)

    def pick_index(self) -> int:
        """Index of the next member, or -1 when no member has a positive weight."""
        if self._total <= 0:
            return -1
        best = 0
        current = self._current
        for i, weight in enumerate(self._weights):
            current[i] += weight
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best

    def pick(self) -> str | None:
        """The next factory id, or None when no member has a positive weight."""
        index = self.pick_index()
        return None if index < 0 else self._members[index].factory_id


class RoutePlan:
    """One route compiled against its policy: the groups' rotations and fallback orders."""

    def __init__(self, route: Route, endpoints: Mapping[str, FactoryEndpoint]) -> None:
        self.route = route
        groups: list[tuple[SmoothWeightedRoundRobin, tuple[FactoryEndpoint | None, ...],
                           tuple[FactoryEndpoint, ...]]] = []
        all_ids: list[str] = []
        for members in (route.primary, *route.backups):
            by_index = tuple(endpoints.get(m.factory_id) for m in members)
            # The rest of the group, heaviest first: the likeliest to have headroom.
            heaviest = sorted(members, key=lambda m: -_usable(m.weight))
            rest = tuple(e for e in (endpoints.get(m.factory_id) for m in heaviest)
                         if e is not None)
            groups.append((SmoothWeightedRoundRobin(members), by_index, rest))
            all_ids.extend(m.factory_id for m in members)
        self._groups = tuple(groups)
        # Passing over a slow first candidate prefers these (first_byte_watch).
        self.primary_ids = frozenset(m.factory_id for m in route.primary)
        self.endpoints: tuple[FactoryEndpoint, ...] = tuple(
            endpoints[fid] for fid in dict.fromkeys(all_ids) if fid in endpoints)
        # A route with one factory needs no rotation and no de-duplication.
        self._single = self.endpoints if len(self.endpoints) == 1 else None

    def order(self) -> list[FactoryEndpoint]:
        """Every factory of the route once, in the order to try them for the next request: the
        primary pick, each backup level (its pick, then the rest), then the other primaries."""
        if self._single is not None:
            return list(self._single)
        out: list[FactoryEndpoint] = []
        seen: set[str] = set()
        groups = self._groups
        for level, (rotation, by_index, rest) in enumerate(groups):
            index = rotation.pick_index()
            if index >= 0:
                first = by_index[index]
                if first is not None and first.id not in seen:
                    seen.add(first.id)
                    out.append(first)
            if not level:
                continue  # the other primaries come last
            for endpoint in rest:
                if endpoint.id not in seen:
                    seen.add(endpoint.id)
                    out.append(endpoint)
        for endpoint in groups[0][2]:
            if endpoint.id not in seen:
                seen.add(endpoint.id)
                out.append(endpoint)
        return out


class Balancer:
    """Orders candidates for each request; plans are kept per policy object and route."""

    def __init__(self) -> None:
        self._policy: SitePolicy | None = None
        self._endpoints: dict[str, FactoryEndpoint] = {}
        self._plans: dict[tuple[str, str], RoutePlan] = {}

    def plan(self, policy: SitePolicy, route: Route) -> RoutePlan:
        # Identity, not version: a swapped-in policy is a new object even if a test or a
        # misbehaving control plane reuses a version string with other routes.
        if policy is not self._policy:
            self._policy = policy
            self._endpoints = {f.id: f for f in policy.factories}
            self._plans.clear()
        key = (route.model, route.traffic_class)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = RoutePlan(route, self._endpoints)
        return plan

    def candidates(self, policy: SitePolicy, route: Route) -> list[FactoryEndpoint]:
        """Every factory of ``route`` once, in the order to try them for the next request."""
        return self.plan(policy, route).order()
