"""Backup levels with reserved capacity: where each group's traffic goes when a primary fails,
chosen so that the planned spare capacity there can take it, without a new solve.

Failover model (what :mod:`tdn.topology.failover` checks and what sidecars are asked to do): a
request whose primary is down goes to the first backup level with a live factory, spread over
that level's live members by weight; the other primaries keep their own share. Losing one
factory therefore sends its share of every group it is primary for to those groups' level 0;
losing a region sends each group's share in that region to its first level with a member
outside it. (A route with no live backup falls back on its other primaries; that is a last
resort nobody reserved capacity for, so it never counts as protection here.)

Spare capacity is a factory's full concurrency less the load the routes put there: the capacity
headroom the LP never plans for is exactly this reserve. A ledger records, per failure event
(one factory, one region) and per receiving factory, the load already promised to it; a level
*fits* a group when adding the group's share keeps every member within its spare in every event
that routes there. Groups are placed largest failover first. Level 0 is the most independent
failure domain that fits a single-factory loss (widened over further domains when no single one
can), deeper levels the most independent that fit a region loss; a group whose levels cannot
fit is still given its best levels and reported as not protected, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

from tdn.domain import WeightedFactory
from tdn.topology.problem import Problem
from tdn.topology.tables import Floats
from tdn.topology.weights import rounded_weights

# Slack for float error when comparing promised load with spare capacity (slots).
_SLACK = 1e-6
# Domains whose fit is tested per level before settling for the most preferred one, and how
# many once one fits the level's main purpose, in search of one that also fits a region loss.
_DOMAINS_TRIED = 8
_REGION_TRIES = 8
# Members per domain in a level: more would only lengthen every route a sidecar holds, and at a
# thousand factories a region can have dozens serving one model.
_MAX_MEMBERS = 4
# Backup candidates considered per group, cheapest first.
_POOL = 24

Additions = dict[tuple[int, int], float]


@dataclass(frozen=True, slots=True)
class Protection:
    """Whether a group's pre-computed backups absorb a single-factory and a single-region loss,
    and if not, why."""

    factory_failure: bool
    region_failure: bool
    factory_reason: str = ""
    region_reason: str = ""

    @property
    def summary(self) -> str:
        factory = ("absorbs the loss of any one factory" if self.factory_failure
                   else f"does not absorb a factory loss: {self.factory_reason}")
        region = ("absorbs the loss of any one region" if self.region_failure
                  else f"does not absorb a region loss: {self.region_reason}")
        return f"{factory}; {region}"


class ReserveLedger:
    """Load promised to each factory in each failure event, against its spare capacity.

    Events are numbered: factory ``f`` is event ``f``, region ``r`` is event ``F + r``.
    """

    def __init__(self, spare: Floats) -> None:
        self.spare: list[float] = spare.tolist()
        self._factories = len(self.spare)
        self._promised: dict[tuple[int, int], float] = {}
        self.worst = [0.0] * self._factories  # the largest promise per factory, any event

    def region_event(self, region: int) -> int:
        return self._factories + region

    def reservable(self, f: int) -> float:
        return max(self.spare[f] - self.worst[f], 0.0)

    def fits(self, additions: Mapping[tuple[int, int], float]) -> bool:
        promised, spare = self._promised, self.spare
        return all(promised.get(key, 0.0) + load <= spare[key[1]] + _SLACK
                   for key, load in additions.items())

    def room(self, event: int, f: int) -> float:
        """What factory ``f`` can still take in ``event``."""
        return max(self.spare[f] - self._promised.get((event, f), 0.0), 0.0)

    def holds(self, key: tuple[int, int]) -> bool:
        """Whether everything promised to a factory in an event fits its spare capacity."""
        return self._promised.get(key, 0.0) <= self.spare[key[1]] + _SLACK

    def commit(self, additions: Mapping[tuple[int, int], float]) -> None:
        for key, load in additions.items():
            total = self._promised.get(key, 0.0) + load
            self._promised[key] = total
            self.worst[key[1]] = max(self.worst[key[1]], total)


@dataclass(frozen=True, slots=True)
class _Level:
    domains: tuple[int, ...]
    members: tuple[int, ...]  # pair indices
    weights: tuple[float, ...]  # aligned with members, summing to 1


@dataclass(slots=True)
class _Record:
    """Where a group's failover was reserved: (level label, ledger key) per event kind."""

    has_primary: bool
    has_backup: bool = False
    factory: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    region: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    # Regions of its primaries whose loss no level catches.
    uncaught: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Judged:
    level: _Level
    additions: Additions
    fits_factory: bool
    routed: tuple[int, ...]  # regions whose loss this level is the first to catch
    fits_region: bool


class BackupPlanner:
    """Chooses every group's backup levels against one shared :class:`ReserveLedger`."""

    def __init__(self, problem: Problem, primaries: Sequence[Mapping[int, float]]) -> None:
        self.p = problem
        ft = problem.factories
        # Plain lists over the pairs that may catch failovers (primaries among them), indexed
        # by position: this runs per group and per candidate domain, in Python.
        backup = np.flatnonzero(problem.backup_capable)
        position = np.full(len(problem.group), -1, dtype=np.int64)
        position[backup] = np.arange(len(backup))
        at_position: list[int] = position.tolist()
        self.primaries = [{at_position[j]: w for j, w in primary.items()}
                          for primary in primaries]
        edges = np.searchsorted(problem.group[backup], np.arange(problem.group_count + 1))
        cut = edges.tolist()
        self.pool = [range(cut[g], cut[g + 1]) for g in range(problem.group_count)]
        # Only each group's primaries and its cheapest other candidates (its pool, below) are
        # ever looked at: at a thousand factories that is a tenth of the pairs.
        needed = np.zeros(len(backup), dtype=np.bool_)
        window = np.minimum(np.diff(edges), _POOL + np.fromiter(
            (len(p) for p in primaries), dtype=np.int64, count=problem.group_count))
        first = np.repeat(edges[:-1] - np.cumsum(window) + window, window)
        needed[first + np.arange(len(first))] = True
        needed[[j for primary in self.primaries for j in primary]] = True
        keep = np.flatnonzero(needed)
        at = keep.tolist()
        f = problem.factory[backup[keep]]

        def by_position(values: npt.NDArray[Any]) -> dict[int, Any]:
            return dict(zip(at, values.tolist(), strict=True))

        self.factory: Mapping[int, int] = by_position(f)
        self.domain: Mapping[int, int] = by_position(ft.domain[f])
        self.region: Mapping[int, int] = by_position(ft.region[f])
        self.cordoned: Mapping[int, bool] = by_position(ft.cordoned[f])
        self.cost: Mapping[int, float] = by_position(problem.cost[backup[keep]])
        self.duration: Mapping[int, float] = by_position(problem.duration[backup[keep]])
        self.rate = problem.rate.tolist()
        self.ids = [s.spec.id for s in ft.states]
        self.max_concurrency = ft.max_concurrency.tolist()
        self.ledger = ReserveLedger(spare_capacity(problem, primaries))
        self.records: dict[int, _Record] = {}

    # --- one level ----------------------------------------------------------------------------

    def _level(self, domains: Sequence[int], by_domain: Mapping[int, Sequence[int]], *,
               exact: bool = False) -> _Level:
        """Active members before cordoned, cheapest first, at most :data:`_MAX_MEMBERS` per
        domain, weighted by the capacity each can still reserve, so failover lands where the
        spare is. ``exact`` rounds the weights as the route will carry them (what is reserved
        must be what a sidecar will send); candidates are compared on the plain shares."""
        chosen: list[int] = []
        for d in domains:
            # Members are cheapest first already; active ones go before cordoned ones.
            members = by_domain[d]
            ordered = [j for j in members if not self.cordoned[j]]
            ordered += [j for j in members if self.cordoned[j]]
            chosen += ordered[:_MAX_MEMBERS]
        room = [self.ledger.reservable(self.factory[j]) for j in chosen]
        if sum(room) <= 0:
            # Nothing left to reserve anywhere here: spread by size, which at least does not
            # make the smallest member take as much as the largest.
            room = [self.max_concurrency[self.factory[j]] for j in chosen]
        if len(chosen) == 1:
            return _Level(tuple(domains), (chosen[0],), (1.0,))
        if not exact:
            total = sum(room)
            shares = [(j, r / total) for j, r in zip(chosen, room, strict=True) if r > 0]
            return _Level(tuple(domains), tuple(j for j, _ in shares),
                          tuple(w for _, w in shares))
        ids = self.ids
        weights = {w.factory_id: w.weight for w in rounded_weights(
            {ids[self.factory[j]]: r for j, r in zip(chosen, room, strict=True)})}
        kept = [j for j in chosen if ids[self.factory[j]] in weights]
        return _Level(tuple(domains), tuple(kept),
                      tuple(weights[ids[self.factory[j]]] for j in kept))

    def _judge(self, g: int, level: _Level, factory_events: Sequence[tuple[int, float]],
               pending: Mapping[int, float]) -> _Judged:
        rate = self.rate[g]
        additions: Additions = {}
        f_add: Additions = {}
        for j, w in zip(level.members, level.weights, strict=True):
            f = self.factory[j]
            per_share = w * rate * self.duration[j]
            for event, share in factory_events:
                f_add[(event, f)] = f_add.get((event, f), 0.0) + share * per_share
        r_add: Additions = {}
        routed = []
        for region, share in pending.items():
            live = [(j, w) for j, w in zip(level.members, level.weights, strict=True)
                    if self.region[j] != region]
            total = sum(w for _, w in live)
            if total <= 0:
                continue
            routed.append(region)
            event = self.ledger.region_event(region)
            for j, w in live:
                key = (event, self.factory[j])
                r_add[key] = r_add.get(key, 0.0) + share * w / total * rate * self.duration[j]
        additions.update(f_add)
        additions.update(r_add)
        return _Judged(level, additions, self.ledger.fits(f_add), tuple(routed),
                       bool(routed) and self.ledger.fits(r_add))

    def _may_fit_region(self, g: int, members: Sequence[int],
                        pending: Mapping[int, float]) -> bool:
        """A cheap necessary condition for a domain to take a region's loss: its members' room
        in that event, summed, covers the load at the shortest request duration among them."""
        region = self.region[members[0]]
        rate = self.rate[g]
        shortest = min(self.duration[j] for j in members)
        ledger = self.ledger
        for lost, share in pending.items():
            if lost == region:
                continue
            event = ledger.region_event(lost)
            room = sum(ledger.room(event, self.factory[j]) for j in members[:_MAX_MEMBERS])
            if room < share * rate * shortest - _SLACK:
                return False
        return True

    # --- one group ----------------------------------------------------------------------------

    def levels(self, g: int, depth: int) -> tuple[tuple[WeightedFactory, ...], ...]:
        """Up to ``depth`` levels for group ``g``, each from failure domains no primary and no
        earlier level uses, reserving their failover load in the ledger."""
        primary = self.primaries[g]
        used_domains = {self.domain[j] for j in primary}
        used_regions = {self.region[j] for j in primary}
        # The cheapest candidates are where failover should go, and a bounded pool keeps the
        # per-group work constant however many factories serve the model.
        pool = list(islice((j for j in self.pool[g] if j not in primary), _POOL))
        factory_events = [(self.factory[j], w) for j, w in primary.items()]
        pending: dict[int, float] = {}  # region losses not yet caught by a level
        for j, w in primary.items():
            pending[self.region[j]] = pending.get(self.region[j], 0.0) + w
        record = _Record(has_primary=bool(primary))
        levels: list[tuple[WeightedFactory, ...]] = []
        by_domain: dict[int, list[int]] = {}
        names = self.p.factories.domains
        # What ranks a domain apart from what earlier levels used: (region, all cordoned,
        # cheapest cost, name), computed once per group.
        fixed: dict[int, tuple[int, bool, float, str]] = {}
        domain_of, region_of, cordoned_of = self.domain, self.region, self.cordoned
        for j in pool:  # pool is cheapest first, so each domain's first member is its best
            d = domain_of[j]
            members = by_domain.get(d)
            if members is None:
                by_domain[d] = [j]
                fixed[d] = (region_of[j], cordoned_of[j], self.cost[j], names[d])
            else:
                members.append(j)
                if not cordoned_of[j] and fixed[d][1]:
                    fixed[d] = (fixed[d][0], False, *fixed[d][2:])
        while by_domain and len(levels) < depth:
            first = not levels
            f_events = factory_events if first else []

            def static(d: int) -> tuple[bool, bool, bool, float, str]:
                region, cordoned, cost, name = fixed[d]
                return (d in used_domains, region in used_regions, cordoned, cost, name)

            ranked = [key[-1] for key in sorted(
                (d in used_domains, f[0] in used_regions, f[1], f[2], f[3], d)
                for d, f in fixed.items() if d in by_domain)]
            best: tuple[tuple[object, ...], _Judged] | None = None
            for d in ranked[:_DOMAINS_TRIED]:
                if (best is not None and (best[1].fits_factory or not first)
                        and not self._may_fit_region(g, by_domain[d], pending)):
                    continue  # it could not rank above the level already found
                judged = self._judge(g, self._level([d], by_domain), f_events, pending)
                st = static(d)
                # Level 0 carries every single-factory loss: absorbing one matters more than
                # region independence. Deeper levels exist for region losses.
                key: tuple[object, ...] = (
                    (st[0], not judged.fits_factory, st[1], not judged.fits_region, *st[2:])
                    if first else (st[0], st[1], not judged.fits_region, *st[2:]))
                if best is None or key < best[0]:
                    best = (key, judged)
                # Domains come in static order: once one fits all it can catch, no later one
                # ranks above it (the common case, at the first domain tried).
                if (judged.fits_factory or not first) and (
                        judged.fits_region or not pending or (not judged.routed and st[1])):
                    break
            assert best is not None
            chosen = best[1]
            if first and f_events and not chosen.fits_factory:
                # No one domain can take a failed primary's share: widen level 0 over the next
                # independent domains until it can, or until there is nothing more to add.
                free = [d for d in ranked if d not in used_domains] or ranked
                for n in range(2, min(len(free), _DOMAINS_TRIED) + 1):
                    chosen = self._judge(g, self._level(free[:n], by_domain), f_events,
                                         pending)
                    if chosen.fits_factory:
                        break
            if len(chosen.level.members) > 1:  # reserve exactly what the route will carry
                chosen = self._judge(g, self._level(chosen.level.domains, by_domain, exact=True),
                                     f_events, pending)
            self.ledger.commit(chosen.additions)
            domains = "+".join(names[d] for d in chosen.level.domains)
            label = f"backup level {len(levels)} ({domains})"
            factory_region = self.ledger.region_event(0)
            for key in chosen.additions:
                if key[0] < factory_region:
                    record.factory.append((label, key))
                else:
                    record.region.append((label, key))
            for region in chosen.routed:
                del pending[region]
            levels.append(tuple(WeightedFactory(self.ids[self.factory[j]], w) for j, w in zip(
                chosen.level.members, chosen.level.weights, strict=True)))
            for j in chosen.level.members:
                used_domains.add(self.domain[j])
                used_regions.add(self.region[j])
            for d in chosen.level.domains:
                by_domain.pop(d, None)
        record.has_backup = bool(levels)
        record.uncaught = tuple(sorted(pending))
        self.records[g] = record
        self.ledger.commit(self._last_resort(g, primary, caught_factory=bool(levels),
                                             uncaught=record.uncaught))
        return tuple(levels)

    def _last_resort(self, g: int, primary: Mapping[int, float], *, caught_factory: bool,
                     uncaught: Sequence[int]) -> Additions:
        """Where a failure no backup level catches sends the group's share: to its live other
        primaries, by weight (as sidecars do, and :mod:`.failover` replays). Nobody reserved
        that room, so it never protects this group; but it is load in that event all the same,
        and a group that was promised the same room must not count on it."""
        additions: Additions = {}
        rate = self.rate[g]

        def spread(event: int, share: float, live: Sequence[tuple[int, float]]) -> None:
            total = sum(w for _, w in live)
            if total <= 0:
                return
            for j, w in live:
                key = (event, self.factory[j])
                additions[key] = additions.get(key, 0.0) + (
                    share * w / total * rate * self.duration[j])

        if not caught_factory:
            for j, w in primary.items():
                spread(self.factory[j], w, [(o, v) for o, v in primary.items()
                                            if o != j and v > 0])
        for region in uncaught:
            lost = sum(w for j, w in primary.items() if self.region[j] == region)
            spread(self.ledger.region_event(region), lost,
                   [(o, v) for o, v in primary.items() if self.region[o] != region and v > 0])
        return additions

    def protection(self, g: int) -> Protection:
        """Whether group ``g``'s backups absorb a loss, judged once every group's failover is
        reserved: a level that fitted when it was chosen may have been overfilled since by a
        group that fitted nowhere, and then it no longer protects anyone there."""
        record = self.records[g]
        if not record.has_primary:
            return Protection(False, False, "no primary", "no primary")
        ledger, regions = self.ledger, self.p.factories.regions
        factory_why = "" if record.has_backup else "no eligible backup"
        short = sorted({label for label, key in record.factory if not ledger.holds(key)})
        if short:
            factory_why = f"{', '.join(short)} lacks spare capacity for a failed primary"
        region_why = sorted({
            f"{label} lacks spare capacity for the loss of "
            f"{regions[key[0] - ledger.region_event(0)]}"
            for label, key in record.region if not ledger.holds(key)})
        region_why += [f"no backup outside {regions[r]}" for r in record.uncaught]
        return Protection(not factory_why, not region_why, factory_why, "; ".join(region_why))


def spare_capacity(problem: Problem, primaries: Sequence[Mapping[int, float]]) -> Floats:
    """Full concurrency less the load the routes' primary weights put on each factory."""
    load = np.zeros(len(problem.factories), dtype=np.float64)
    for g, primary in enumerate(primaries):
        rate = float(problem.rate[g])
        for j, w in primary.items():
            load[int(problem.factory[j])] += w * rate * float(problem.duration[j])
    spare: Floats = problem.factories.max_concurrency - load
    return spare


def failover_order(problem: Problem, primaries: Sequence[Mapping[int, float]]) -> list[int]:
    """Groups largest failover first (the load their biggest primary sheds), then by key."""
    rate = problem.rate.tolist()
    duration = problem.duration.tolist()

    def shed(g: int) -> float:
        return max((w * rate[g] * duration[j] for j, w in primaries[g].items()), default=0.0)

    return sorted(range(problem.group_count), key=lambda g: (-shed(g), problem.keys[g]))
