"""The snapshot cache: the latest SitePolicy of every site, and who to wake when one changes.

On the leader, the solve loop's freshly compiled policies pass through :meth:`SnapshotCache.dedupe`
(a site whose policy is unchanged apart from its version keeps its old snapshot and version) and
then :meth:`SnapshotCache.update`; on every replica, policies read from the store arrive one site
at a time through :meth:`SnapshotCache.install`. Either way only sites whose routing really changed
get a new version, so a plan that moved traffic in New York does not make every sidecar in
Frankfurt reload.

Nothing enters the cache without passing :meth:`SitePolicy.check` (a policy refers only to the
factories it ships — make before break), and versions only move forward. Discovery streams
subscribe per site with an :class:`asyncio.Event` that the cache sets when that site gets a new
version; listeners hear of every new version (discovery uses that to measure convergence).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.domain import PolicyInconsistent, SitePolicy
from tdn.topology.compile import site_policies_equal_ignoring_version
from tdn.v1 import discovery_pb2
from tdn.wire import site_policy_to_pb

log = logging.getLogger(__name__)

# How many past versions per site remember their creation time, so an ACK that arrives after a
# newer version was made still yields a convergence sample.
_HISTORY = 16
_DIGITS = re.compile(r"(\d+)$")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One site's policy as served, with when this replica got this version (monotonic s)."""

    policy: SitePolicy
    created_at: float
    # The wire form, converted once per version rather than once per sidecar.
    message: discovery_pb2.SitePolicy

    @property
    def version(self) -> str:
        return self.policy.version


def version_number(version: str) -> int | None:
    """The plan number a version string carries ("7" or "v7" -> 7), for ordering and gauges."""
    match = _DIGITS.search(version)
    return int(match.group(1)) if match else None


SnapshotListener = Callable[[str, Snapshot], None]


class SnapshotCache:
    """Latest policy per site, change notification, and version creation times."""

    def __init__(self, metrics: ControlPlaneMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._snapshots: dict[str, Snapshot] = {}
        self._created: dict[str, OrderedDict[str, float]] = {}
        self._subscribers: dict[str, set[asyncio.Event]] = {}
        self._listeners: list[SnapshotListener] = []

    def dedupe(self, policies: Mapping[str, SitePolicy]) -> dict[str, SitePolicy]:
        """``policies`` with each policy that differs from the served one only in its version
        replaced by the served one: what to serve, with versions kept where nothing changed."""
        served: dict[str, SitePolicy] = {}
        for site, policy in policies.items():
            old = self._snapshots.get(site)
            same = old is not None and site_policies_equal_ignoring_version(old.policy, policy)
            served[site] = old.policy if old is not None and same else policy
        return served

    def update(self, policies: Mapping[str, SitePolicy]) -> tuple[str, ...]:
        """Replace the cache with ``policies``; return the sites that got a new version.

        Raises :class:`PolicyInconsistent` (and changes nothing) if any policy fails its check.
        """
        for policy in policies.values():
            policy.check()
        served = self.dedupe(policies)
        changed = [site for site, policy in sorted(served.items())
                   if self._set(site, policy)]
        # A site no longer in the plan is dropped; its sidecars keep their last good policy.
        for site in [s for s in self._snapshots if s not in served]:
            self.remove(site)
        self._announce(changed)
        return tuple(changed)

    def install(self, site: str, policy: SitePolicy) -> bool:
        """Serve ``policy`` for ``site`` if it is newer than the one served; True if it was.

        A policy that fails its consistency check is refused (logged, counted), and the last
        good one stays.
        """
        try:
            policy.check()
            if policy.site != site:
                raise PolicyInconsistent(f"policy of site {policy.site!r} offered for {site!r}")
        except PolicyInconsistent as exc:
            self._metrics.policies_refused.labels(site=site).inc()
            log.error("refusing policy version %r for %s: %s; keeping %r", policy.version, site,
                      exc, self._version(site))
            return False
        old = self._snapshots.get(site)
        if old is not None:
            new_number, old_number = version_number(policy.version), version_number(old.version)
            if ((new_number is not None and old_number is not None and new_number <= old_number)
                    or policy.version == old.version):
                return False  # a late echo of what is already served, or older
        changed = self._set(site, policy)
        self._announce([site] if changed else [])
        return changed

    def remove(self, site: str) -> None:
        """Stop serving ``site``; its sidecars keep their last good policy."""
        self._snapshots.pop(site, None)

    def _version(self, site: str) -> str | None:
        snapshot = self._snapshots.get(site)
        return None if snapshot is None else snapshot.version

    def _set(self, site: str, policy: SitePolicy) -> bool:
        old = self._snapshots.get(site)
        if old is not None and old.policy is policy:
            return False
        if old is not None and old.version == policy.version:
            # Same version, same content (versions name content): keep the old snapshot so its
            # creation time, and the streams that already have it, stay as they are.
            return False
        now = self._clock()
        self._snapshots[site] = Snapshot(policy=policy, created_at=now,
                                         message=site_policy_to_pb(policy))
        history = self._created.setdefault(site, OrderedDict())
        history[policy.version] = now
        while len(history) > _HISTORY:
            history.popitem(last=False)
        number = version_number(policy.version)
        if number is not None:
            self._metrics.policy_version.labels(site=site).set(number)
        return True

    def _announce(self, changed: list[str]) -> None:
        for site in changed:
            snapshot = self._snapshots[site]
            for listener in self._listeners:
                listener(site, snapshot)
            for event in self._subscribers.get(site, ()):
                event.set()

    def get(self, site: str) -> Snapshot | None:
        return self._snapshots.get(site)

    def snapshots(self) -> tuple[Snapshot, ...]:
        return tuple(self._snapshots[s] for s in sorted(self._snapshots))

    def highest_version(self) -> int:
        """The highest plan number any served policy carries (0 when none)."""
        numbers = (version_number(s.version) for s in self._snapshots.values())
        return max((n for n in numbers if n is not None), default=0)

    def age(self, site: str, version: str) -> float | None:
        """Seconds since ``version`` of ``site`` reached this replica, if it is recent enough to
        be remembered."""
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

    def add_listener(self, listener: SnapshotListener) -> None:
        """Call ``listener(site, snapshot)`` for every new version, before streams wake."""
        self._listeners.append(listener)
