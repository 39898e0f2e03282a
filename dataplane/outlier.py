"""Outlier detection: which factories a sidecar stops sending traffic to, and when they come back.

Envoy's semantics are the model (see :mod:`effective_settings` for the defaults):

* A factory is **ejected** after ``consecutive_failures`` failed attempts in a row, or when at
  least ``failure_rate_threshold`` of its attempts failed within the current ``interval`` (and
  there were at least ``minimum_requests``). The n-th ejection lasts ``base x 2^(n-1)``, capped at
  ``max_ejection``; the count decays to zero once the factory has served well for ``max_ejection``.
* **Local-origin failures** (Envoy's ``consecutive_local_origin_failure``): attempts that never got
  an answer at all (connection refused, connect error or timeout, DNS, a reset before any response
  byte) eject it sooner, after ``consecutive_local_origin_failures`` in a row (3). Such a failure
  is unambiguous and costs a millisecond each, so waiting for five teaches nothing, and every one
  of them is a request that had to walk past a factory that is plainly gone.
* **Suspicion**: a missed first-byte deadline takes the factory out of rotation at once, for
  ``suspect_s`` (one probe interval), without ejecting it. A blackholed or stalled factory is only
  found out one deadline after it broke, and every request sent to it meanwhile waits a whole
  deadline; one expiry is reason enough for *new* requests to go elsewhere. It is ejected properly
  once its deadline expiries (or other failures) reach ``consecutive_failures`` in a row. Any
  success lifts the suspicion: a slow outlier request does not cost a healthy factory more than
  the in-flight evidence says.
* At most ``max_ejection_percent`` of a route's factories are ejected or suspected at once, but
  one factory always may be (Envoy's rule, per cluster there), so a two-factory route can still
  drop its broken half. A factory serving several routes is taken out only if every one of them
  stays within the cap. (It used to be a share of all the policy's factories, against the wire
  contract's "of a route's factories": two unrelated broken factories elsewhere then kept a
  third route's broken primary in rotation, and every one of its requests paid a failed attempt.)
* **Panic**: when fewer than ``panic_threshold_percent`` of a route's factories are available, the
  route ignores ejections and tries all of them. A route with a single factory is therefore never
  left with nothing: once that factory is ejected the route is in panic and requests still go to
  it, fail over to nothing, and get the factory's own error (or succeed once it heals, which
  returns it to service at once).

How an ejected factory returns (the bound operators can rely on). The prober
(:mod:`prober`) sends ``GET {base_url}/models`` to every ejected factory each
``probe_interval``; a probe succeeds when the factory answers any HTTP status below 500.

* Ejected for being **unreachable** (local-origin failures: connection refused, connect error or
  timeout, DNS, reset before any response byte): the probe is proof enough, so it returns at the
  first successful probe, i.e. within ``probe_interval + probe timeout`` of coming back.
* Ejected for **errors** (5xx, missed deadlines, broken streams): a listing answering is not
  proof that generation works, so it returns when its ejection time is over *and* a probe has
  succeeded since it was ejected: within ``ejection time + probe_interval + probe timeout``.
* A request routed to an ejected factory in panic that succeeds returns it at once. A request
  that was already in flight when its factory was ejected and still succeeds does not: under
  load there always is one, and every ejection of a partly failing factory would be undone within
  milliseconds.

The detector is pure: every call takes the time, so tests drive it with a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tdn.domain import FactoryEndpoint

from .effective_settings import OutlierConfig


class Cause(StrEnum):
    """Why a factory was ejected, which decides what brings it back."""

    UNREACHABLE = "unreachable"
    ERRORS = "errors"


class Kind(StrEnum):
    """What kind of failure an attempt had, as outlier detection weighs it."""

    # Never connected: refused, connect error or timeout, DNS, an unusable URL.
    UNREACHABLE = "unreachable"
    # Connected, but closed or reset before any response byte.
    RESET = "reset"
    # No first byte within the first-byte deadline.
    DEADLINE = "deadline"
    # An answer it must not pass on (5xx...), or a body or stream that broke before commit.
    ERROR = "error"
    # A committed stream that broke: a failure, but not a second attempt (its commit counted as
    # the attempt, so a factory that cuts every stream fails all its attempts, not half).
    BROKEN = "broken"


LOCAL_ORIGIN = frozenset({Kind.UNREACHABLE, Kind.RESET})

# (factory id, reason label, ejected?) -> None; reasons: consecutive_failures,
# consecutive_local_origin_failures, failure_rate, probe, expired, served.
Listener = Callable[[str, str, bool], None]
SUSPECTED = "suspected"


@dataclass(slots=True)
class _Factory:
    consecutive: int = 0
    consecutive_local: int = 0
    window_start: float = 0.0
    window_attempts: int = 0
    window_failures: int = 0
    ejections: int = 0
    ejected: bool = False
    until: float = 0.0
    cause: Cause = Cause.ERRORS
    probe_ok: bool = False
    returned_at: float = 0.0


class OutlierDetector:
    """Per-factory failure tracking and ejection, shared by every route of a sidecar."""

    def __init__(self, config: OutlierConfig | None = None,
                 listener: Listener | None = None) -> None:
        self.config = config if config is not None else OutlierConfig()
        self._listener = listener
        self._factories: dict[str, _Factory] = {}
        self._ejected = 0
        # Suspected factories (never ejected ones) and when their suspicion ends; expired entries
        # are dropped lazily, when looked at.
        self._suspects: dict[str, float] = {}
        # The routes (as sets of factory ids) each factory serves, for the ejection cap.
        self._groups_of: dict[str, list[frozenset[str]]] = {}

    # --- configuration -------------------------------------------------------------------------

    def configure(self, config: OutlierConfig, factory_ids: Iterable[str],
                  groups: Iterable[Iterable[str]] | None = None) -> None:
        """Run with ``config`` over exactly ``factory_ids`` (a new policy); state of factories
        the policy keeps is kept, so a policy push does not bring a broken factory back.

        ``groups`` are the factories of each route, over which ``max_ejection_percent`` is
        counted; None counts it over all of ``factory_ids``, as one route.
        """
        self.config = config
        keep = set(factory_ids)
        everything = frozenset(keep)
        self._groups_of = {}
        for group in (groups if groups is not None else [everything]):
            members = frozenset(group) & everything
            for fid in members:
                self._groups_of.setdefault(fid, []).append(members)
        for fid in list(self._factories):
            if fid not in keep:
                del self._factories[fid]
        for fid in keep:
            self._factories.setdefault(fid, _Factory())
        self._ejected = sum(1 for f in self._factories.values() if f.ejected)
        self._suspects = {fid: t for fid, t in self._suspects.items() if fid in keep}

    # --- outcomes ------------------------------------------------------------------------------

    def _roll(self, f: _Factory, now: float) -> None:
        if now - f.window_start >= self.config.interval_s:
            f.window_start = now
            f.window_attempts = 0
            f.window_failures = 0

    def success(self, factory_id: str, now: float, *, panic: bool = False) -> None:
        """Record a successful attempt; ``panic``: it was routed in panic (ejections ignored),
        so if its factory is ejected the success proves it works again."""
        f = self._factories.get(factory_id)
        if f is None:
            return
        f.consecutive = 0
        f.consecutive_local = 0
        self._roll(f, now)
        f.window_attempts += 1
        if self._suspects:
            self._suspects.pop(factory_id, None)
        if f.ejected:
            if panic:
                self._return(factory_id, f, now, "served")
        elif f.ejections and now - f.returned_at >= self.config.max_ejection_s:
            f.ejections = 0

    def failure(self, factory_id: str, now: float, kind: Kind = Kind.ERROR) -> str | None:
        """Record a failed attempt; the ejection reason when this failure ejected it, or
        :data:`SUSPECTED` when it made it suspect."""
        f = self._factories.get(factory_id)
        if f is None:
            return None
        f.consecutive += 1
        local = kind in LOCAL_ORIGIN
        # Anything but a local-origin failure ends a local-origin streak.
        f.consecutive_local = f.consecutive_local + 1 if local else 0
        self._roll(f, now)
        if kind is not Kind.BROKEN:
            f.window_attempts += 1
        f.window_failures += 1
        if f.ejected:
            return None
        c = self.config
        reason: str | None = None
        if local and f.consecutive_local >= c.consecutive_local_origin_failures:
            reason = "consecutive_local_origin_failures"
        elif f.consecutive >= c.consecutive_failures:
            reason = "consecutive_failures"
        elif (f.window_attempts >= c.minimum_requests
              and f.window_failures >= c.failure_rate_threshold * f.window_attempts):
            reason = "failure_rate"
        if reason is None:
            return self._suspect(factory_id, now) if kind is Kind.DEADLINE else None
        if not self._may_exclude(factory_id, now):
            return None
        self._suspects.pop(factory_id, None)
        f.ejections += 1
        f.ejected = True
        f.until = now + min(c.base_ejection_s * 2 ** (f.ejections - 1), c.max_ejection_s)
        f.cause = Cause.UNREACHABLE if local else Cause.ERRORS
        f.probe_ok = False
        self._ejected += 1
        if self._listener is not None:
            self._listener(factory_id, reason, True)
        return reason

    def _suspect(self, factory_id: str, now: float) -> str | None:
        if not self._may_exclude(factory_id, now):
            return None
        self._suspects[factory_id] = now + self.config.suspect_s
        return SUSPECTED

    def _may_exclude(self, factory_id: str, now: float) -> bool:
        """Whether ``factory_id`` may be taken out of rotation (ejected or suspected) under
        ``max_ejection_percent`` of every route it serves; one already suspected is out
        already."""
        suspects = self._suspects
        for fid in [fid for fid, until in suspects.items() if until <= now]:
            del suspects[fid]
        if factory_id in suspects:
            return True
        factories = self._factories
        share = self.config.max_ejection_percent / 100
        for group in self._groups_of.get(factory_id, ()):
            out = sum(1 for fid in group
                      if fid in suspects or (fid in factories and factories[fid].ejected))
            if out + 1 > max(1, int(len(group) * share)):
                return False
        return True

    def _return(self, factory_id: str, f: _Factory, now: float, reason: str) -> None:
        f.ejected = False
        f.consecutive = 0
        f.consecutive_local = 0
        f.window_start = now
        f.window_attempts = 0
        f.window_failures = 0
        f.returned_at = now
        self._ejected -= 1
        if self._listener is not None:
            self._listener(factory_id, reason, False)

    # --- probing -------------------------------------------------------------------------------

    def ejected_ids(self) -> list[str]:
        return [fid for fid, f in self._factories.items() if f.ejected]

    def probe_result(self, factory_id: str, ok: bool, now: float) -> None:
        f = self._factories.get(factory_id)
        if f is None or not f.ejected:
            return
        f.probe_ok = ok
        self.available(factory_id, now)

    # --- selection -----------------------------------------------------------------------------

    def available(self, factory_id: str, now: float) -> bool:
        """Whether ``factory_id`` takes new requests now (returning it when its time has come)."""
        f = self._factories.get(factory_id)
        if f is None:
            return True
        if f.ejected:
            if f.probe_ok and (f.cause is Cause.UNREACHABLE or now >= f.until):
                self._return(factory_id, f, now, "probe" if f.cause is Cause.UNREACHABLE
                             else "expired")
                return True
            return False
        until = self._suspects.get(factory_id)
        if until is None:
            return True
        if now < until:
            return False
        del self._suspects[factory_id]
        return True

    def is_suspect(self, factory_id: str, now: float) -> bool:
        until = self._suspects.get(factory_id)
        return until is not None and now < until

    def is_ejected(self, factory_id: str) -> bool:
        f = self._factories.get(factory_id)
        return f is not None and f.ejected

    def select(self, candidates: Sequence[FactoryEndpoint],
               now: float) -> tuple[Sequence[FactoryEndpoint], bool]:
        """The candidates to try and whether the route is in panic (ejections ignored)."""
        if not self._ejected and not self._suspects:
            return candidates, False
        healthy = [c for c in candidates if self.available(c.id, now)]
        if len(healthy) == len(candidates):
            return candidates, False
        if len(healthy) * 100 < self.config.panic_threshold_percent * len(candidates):
            return candidates, True
        return healthy, False
