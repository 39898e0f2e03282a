"""The snapshot cache: the latest SitePolicy of every site, and who to wake when one changes.

The solve loop hands every freshly compiled set of per-site policies to
:meth:`SnapshotCache.update`. A site whose policy is unchanged apart from its version keeps its
old snapshot (and version), so only sites whose routing really changed are pushed to sidecars: a
plan that moved traffic in New York does not make every sidecar in Frankfurt reload. Discovery
streams subscribe per site with an :class:`asyncio.Event` that the cache sets when that site gets
a new version.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.domain import SitePolicy
from tdn.topology.compile import site_policies_equal_ignoring_version
from tdn.v1 import discovery_pb2
from tdn.wire import site_policy_to_pb

# How many past versions per site remember their creation time, so an ACK that arrives after a
# newer version was made still yields a convergence sample.
_HISTORY = 16
_DIGITS = re.compile(r"(\d+)$")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One site's policy as served, with when this version was created (monotonic seconds)."""

    policy: SitePolicy
    created_at: float
    # The wire form, converted once per version rather than once per sidecar.
    message: discovery_pb2.SitePolicy

    @property
    def version(self) -> str:
        return self.policy.version


def version_number(version: str) -> int | None:
    """The plan number a version string carries ("7" or "v7" -> 7), for the gauge."""
    match = _DIGITS.search(version)
    return int(match.group(1)) if match else None


class SnapshotCache:
    """Latest policy per site, change notification, and version creation times."""

    def __init__(self, metrics: ControlPlaneMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._created: dict[str, OrderedDict[str, float]] = {}
        self._subscribers: dict[str, set[asyncio.Event]] = {}

    def update(self, policies: Mapping[str, SitePolicy]) -> tuple[str, ...]:
        """Replace the cache with ``policies``; return the sites that got a new version."""
        now = self._clock()
        changed: list[str] = []
        fresh: dict[str, Snapshot] = {}
        for site, policy in sorted(policies.items()):
            old = self._snapshots.get(site)
            if old is not None and site_policies_equal_ignoring_version(old.policy, policy):
                fresh[site] = old
                continue
            fresh[site] = Snapshot(policy=policy, created_at=now,
                                   message=site_policy_to_pb(policy))
            history = self._created.setdefault(site, OrderedDict())
            history[policy.version] = now
            while len(history) > _HISTORY:
                history.popitem(last=False)
            changed.append(site)
            number = version_number(policy.version)
            if number is not None:
                self._metrics.policy_version.labels(site=site).set(number)
        # A site no longer in the plan is dropped; its sidecars keep their last good policy.
        self._snapshots = fresh
        for site in changed:
            for event in self._subscribers.get(site, ()):
                event.set()
        return tuple(changed)

    def get(self, site: str) -> Snapshot | None:
        return self._snapshots.get(site)

    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(self._snapshots[s] for s in sorted(self._snapshots))

    def age(self, site: str, version: str) -> float | None:
        """Seconds since ``version`` of ``site`` was created, if it is recent enough to be
        remembered."""
        history = self._created.get(site)
        created = None if history is None else history.get(version)
        return None if created is None else max(self._clock() - created, 0.0)

    def subscribe(self, site: str, event: asyncio.Event) -> None:
        """Set ``event`` whenever ``site`` gets a new version, until :meth:`unsubscribe`."""
        self._subscribers.setdefault(site, set()).add(event)

    def unsubscribe(self, site: str, event: asyncio.Event) -> None:
        subscribers = self._subscribers.get(site)
        if subscribers is not None:
            subscribers.discard(event)
            if not subscribers:
                del self._subscribers[site]
