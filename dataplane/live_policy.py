"""The policy the sidecar routes by right now, and the checks a policy must pass to become it.

A request reads the current policy once and routes on that object to its end, so a swap never
mixes two versions inside one request: swapping is a single reference assignment on the event
loop. Listeners (metrics, tests) are told after each swap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from urllib.parse import urlsplit

from tdn.domain import PolicyInconsistent, SitePolicy

from .effective_settings import settings_problems


def check_acceptable(policy: SitePolicy, site: str) -> None:
    """Raise ValueError unless this sidecar (serving ``site``) may run ``policy``.

    Beyond :meth:`SitePolicy.check` (run by the wire conversion): the policy is for this site,
    weights are usable numbers, every factory has an http(s) base URL to send traffic to, and
    the data-plane settings and route deadlines are numbers the sidecar can run with.
    """
    policy.check()
    if site and policy.site != site:
        raise PolicyInconsistent(f"policy is for site {policy.site!r}, this sidecar serves "
                                 f"{site!r}")
    if not policy.version:
        raise PolicyInconsistent("policy has no version")
    problems = settings_problems(policy.settings)
    if problems:
        raise PolicyInconsistent("; ".join(problems))
    for route in policy.routes:
        if not 0 <= route.first_byte_timeout_s < math.inf:
            raise PolicyInconsistent(
                f"route {route.model}/{route.traffic_class} has first_byte_timeout_seconds "
                f"{route.first_byte_timeout_s!r}; it must be a finite number >= 0")
        for level in (route.primary, *route.backups):
            for member in level:
                if not math.isfinite(member.weight) or member.weight < 0:
                    raise PolicyInconsistent(
                        f"route {route.model}/{route.traffic_class} gives factory "
                        f"{member.factory_id} weight {member.weight}")
    for factory in policy.factories:
        url = urlsplit(factory.base_url)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise PolicyInconsistent(f"factory {factory.id} has no http(s) base_url "
                                     f"({factory.base_url!r})")


class LivePolicy:
    """Holds the current :class:`SitePolicy` (or None before the first one)."""

    def __init__(self, initial: SitePolicy | None = None) -> None:
        self._current = initial
        self._listeners: list[Callable[[SitePolicy], None]] = []

    @property
    def current(self) -> SitePolicy | None:
        return self._current

    @property
    def version(self) -> str:
        return self._current.version if self._current is not None else ""

    def add_listener(self, listener: Callable[[SitePolicy], None]) -> None:
        self._listeners.append(listener)
        if self._current is not None:
            listener(self._current)

    def swap(self, policy: SitePolicy) -> None:
        self._current = policy
        for listener in self._listeners:
            listener(policy)
