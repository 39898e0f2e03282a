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

The placement is sequential (each group sees what earlier ones promised), so it runs per group,
in Python; everything that does not depend on the ledger — each group's candidate pool, split by
failure domain and ranked, and the failover order — is computed for all groups at once with numpy
beforehand, and the ledger is a flat dict with integer keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from tdn.domain import WeightedFactory
from tdn.topology.problem import Problem
from tdn.topology.tables import Floats, Ints
from tdn.topology.weights import WEIGHT_UNITS

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

Additions = dict[int, float]  # ledger key -> load


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

    Events are numbered: factory ``f`` is event ``f``, region ``r`` is event ``F + r``. A
    (event, factory) entry is keyed by one integer, ``event * F + factory``: the planner touches
    the ledger a few dozen times per group, and tuple keys were a fifth of its time.
    """

    def __init__(self, spare: Floats) -> None:
        self.spare: list[float] = spare.tolist()
        self._factories = len(self.spare)
        self._promised: dict[int, float] = {}
        self.worst = [0.0] * self._factories  # the largest promise per factory, any event

    def key(self, event: int, f: int) -> int:
        return event * self._factories + f

    def split(self, key: int) -> tuple[int, int]:
        """(event, factory) of a ledger key."""
        return divmod(key, self._factories)

    def region_event(self, region: int) -> int:
        return self._factories + region

    def reservable(self, f: int) -> float:
        return max(self.spare[f] - self.worst[f], 0.0)

    def fits(self, additions: Mapping[int, float]) -> bool:
        promised, spare, n = self._promised, self.spare, self._factories
        get = promised.get
        for key, load in additions.items():
            if get(key, 0.0) + load > spare[key % n] + _SLACK:
                return False
        return True

    def room(self, event: int, f: int) -> float:
        """What factory ``f`` can still take in ``event``."""
        return max(self.spare[f] - self._promised.get(event * self._factories + f, 0.0), 0.0)

    def holds(self, key: int) -> bool:
        """Whether everything promised to a factory in an event fits its spare capacity."""
        return self._promised.get(key, 0.0) <= self.spare[key % self._factories] + _SLACK

    def commit(self, additions: Mapping[int, float]) -> None:
        promised, worst, n = self._promised, self.worst, self._factories
        for key, load in additions.items():
            total = promised.get(key, 0.0) + load
            promised[key] = total
            f = key % n
            worst[f] = max(worst[f], total)

    def promised(self) -> dict[tuple[int, int], float]:
        """Everything promised, by (event, factory)."""
        return {self.split(key): load for key, load in self._promised.items()}


class _Level(NamedTuple):
    domains: tuple[int, ...]  # segments: the group's pool in one failure domain each
    members: tuple[int, ...]  # candidate indices
    weights: tuple[float, ...]  # aligned with members, summing to 1


@dataclass(slots=True)
class _Record:
    """Where a group's failover was reserved: (level label, ledger key) per event kind."""

    has_primary: bool
    has_backup: bool = False
    factory: list[tuple[str, int]] = field(default_factory=list)
    region: list[tuple[str, int]] = field(default_factory=list)
    # Regions of its primaries whose loss no level catches.
    uncaught: tuple[int, ...] = ()


class _Judged(NamedTuple):
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
        groups = problem.group_count
        # Only each group's primaries and its cheapest other candidates (its pool) are ever
        # looked at: at a thousand factories that is a tenth of the pairs. They are numbered
        # compactly ("candidates") and their attributes held in plain lists, because the
        # planner reads them per group and per candidate domain, in Python.
        backup = np.flatnonzero(problem.backup_capable)
        position = np.full(len(problem.group), -1, dtype=np.int64)
        position[backup] = np.arange(len(backup))
        edges = np.searchsorted(problem.group[backup], np.arange(groups + 1))
        counts = np.fromiter((len(p) for p in primaries), dtype=np.int64, count=groups)
        primary_pairs = np.fromiter((j for primary in primaries for j in primary),
                                    dtype=np.int64, count=int(counts.sum()))
        is_primary = np.zeros(len(backup), dtype=np.bool_)
        is_primary[position[primary_pairs]] = True
        # A group's pool is its first _POOL backup-capable pairs (cheapest first) that are
        # not its primaries, found within its first _POOL + (its primaries) pairs.
        window = np.minimum(np.diff(edges), _POOL + counts)
        in_window = np.repeat(edges[:-1] - np.cumsum(window) + window, window)
        in_window += np.arange(len(in_window))
        window_group = np.repeat(np.arange(groups), window)
        pool, pool_group = (in_window[~is_primary[in_window]],
                            window_group[~is_primary[in_window]])
        rank = np.arange(len(pool)) - np.searchsorted(pool_group, np.arange(groups))[pool_group]
        pool, pool_group = pool[rank < _POOL], pool_group[rank < _POOL]
        needed = np.zeros(len(backup), dtype=np.bool_)
        needed[pool] = True
        needed[position[primary_pairs]] = True
        keep = np.flatnonzero(needed)
        compact = np.full(len(backup), -1, dtype=np.int64)
        compact[keep] = np.arange(len(keep))
        at: list[int] = compact[position[primary_pairs]].tolist()
        weights = [w for primary in primaries for w in primary.values()]
        cut = np.concatenate(([0], np.cumsum(counts))).tolist()
        self.primaries = [dict(zip(at[cut[g]:cut[g + 1]], weights[cut[g]:cut[g + 1]],
                                   strict=True)) for g in range(groups)]
        pairs = backup[keep]
        f = problem.factory[pairs]
        self.factory: list[int] = f.tolist()
        self.domain: list[int] = ft.domain[f].tolist()
        self.region: list[int] = ft.region[f].tolist()
        self.duration: list[float] = problem.duration[pairs].tolist()
        self.rate = problem.rate.tolist()
        self.ids = [s.spec.id for s in ft.states]
        self.max_concurrency = ft.max_concurrency.tolist()
        self._segments(problem, compact[pool], pool_group, pairs, primary_pairs=primary_pairs,
                       primary_group=np.repeat(np.arange(groups), counts))
        self.ledger = ReserveLedger(spare_capacity(problem, primaries))
        self.records: dict[int, _Record] = {}

    def _segments(self, problem: Problem, pool: Ints, pool_group: Ints, pairs: Ints,
                  *, primary_pairs: Ints, primary_group: Ints) -> None:
        """Each group's pool split by failure domain ("segments"), in the part of a domain's
        rank that does not depend on what the primaries and earlier levels use: all members
        cordoned last, then by the cost of the cheapest member, then by name. Computed for every
        group at once (it was a fifth of the planner's time, per group in Python), so that
        :meth:`levels` only partitions a list by the domains and regions used.

        Per segment: the domain, the region and cost of its cheapest member, whether all its
        members are cordoned, its shortest request duration, its first :data:`_MAX_MEMBERS`
        members (``head``, cheapest first) and those a level takes (``top``: active before
        cordoned, cheapest first, at most :data:`_MAX_MEMBERS`)."""
        ft = problem.factories
        f = problem.factory[pairs][pool]
        domain, cordoned = ft.domain[f], ft.cordoned[f]
        order = np.arange(len(pool))
        # Stable sorts on one integer key: pool order stays within each key.
        by_domain = np.argsort(pool_group * len(ft.domains) + domain, kind="stable")
        g_sorted, d_sorted = pool_group[by_domain], domain[by_domain]
        starts = np.flatnonzero(np.concatenate((
            [len(pool) > 0], (g_sorted[1:] != g_sorted[:-1]) | (d_sorted[1:] != d_sorted[:-1]))))
        sizes = np.diff(np.append(starts, len(pool)))
        lead = by_domain[starts]  # each segment's cheapest member (a pool index)
        all_cordoned = np.logical_and.reduceat(cordoned[by_domain], starts) if len(pool) \
            else np.zeros(0, dtype=np.bool_)
        shortest = (np.minimum.reduceat(problem.duration[pairs][pool][by_domain], starts)
                    if len(pool) else np.zeros(0))
        seg_group, seg_domain = pool_group[lead], domain[lead]
        seg_cost = problem.cost[pairs][pool][lead]
        name_rank = np.argsort(np.argsort(np.array(ft.domains, dtype=object), kind="stable"),
                               kind="stable")
        static = np.lexsort((seg_domain, name_rank[seg_domain], seg_cost, all_cordoned,
                             seg_group))
        # Members of segment s (numbered in static order), cheapest first.
        segment_of = np.empty(len(pool), dtype=np.int64)
        segment_of[by_domain] = np.repeat(np.argsort(static), sizes)
        within = np.empty(len(pool), dtype=np.int64)
        within[by_domain] = order - np.repeat(starts, sizes)
        head = np.argsort(segment_of, kind="stable")
        head = head[within[head] < _MAX_MEMBERS]
        top = np.argsort(segment_of * 2 + cordoned, kind="stable")
        top_rank = np.arange(len(top)) - np.searchsorted(segment_of[top], segment_of[top])
        top = top[top_rank < _MAX_MEMBERS]
        segments = np.arange(len(static) + 1)
        self._head_cut: list[int] = np.searchsorted(segment_of[head], segments).tolist()
        self._top_cut: list[int] = np.searchsorted(segment_of[top], segments).tolist()
        self._head: list[int] = pool[head].tolist()
        self._top: list[int] = pool[top].tolist()
        self._group_cut: list[int] = np.searchsorted(
            seg_group[static], np.arange(problem.group_count + 1)).tolist()
        self._seg_domain: list[int] = seg_domain[static].tolist()
        self._seg_region: list[int] = ft.region[f[lead]][static].tolist()
        self._seg_cordoned: list[bool] = all_cordoned[static].tolist()
        self._seg_cost: list[float] = seg_cost[static].tolist()
        self._seg_name: list[int] = name_rank[seg_domain][static].tolist()
        self._seg_shortest: list[float] = shortest[static].tolist()
        # Level 0's ranking, for every group at once: segments outside the primaries' domains
        # first, then outside their regions, each in static order (what levels() does for
        # deeper levels, by the domains and regions used so far).
        n_domains, n_regions = len(ft.domains), len(ft.regions)
        primary_f = problem.factory[primary_pairs]
        group_static = seg_group[static]
        in_used = np.isin(group_static * n_domains + seg_domain[static],
                          primary_group * n_domains + ft.domain[primary_f])
        region_used = np.isin(group_static * n_regions + ft.region[f[lead]][static],
                              primary_group * n_regions + ft.region[primary_f])
        self._ranked0: list[int] = np.lexsort((
            np.arange(len(static)), region_used, in_used, group_static)).tolist()

    # --- one level ----------------------------------------------------------------------------

    def _level(self, segments: Sequence[int], *, exact: bool = False) -> _Level:
        """The segments' top members, weighted by the capacity each can still reserve, so
        failover lands where the spare is. ``exact`` rounds the weights as the route will
        carry them (what is reserved must be what a sidecar will send); candidates are
        compared on the plain shares."""
        top, cut = self._top, self._top_cut
        if len(segments) == 1:
            s = segments[0]
            chosen = top[cut[s]:cut[s + 1]]
            if len(chosen) == 1:
                return _Level((s,), (chosen[0],), (1.0,))
        else:
            chosen = [j for s in segments for j in top[cut[s]:cut[s + 1]]]
        factory = self.factory
        reservable = self.ledger.reservable
        room = [reservable(factory[j]) for j in chosen]
        if sum(room) <= 0:
            # Nothing left to reserve anywhere here: spread by size, which at least does not
            # make the smallest member take as much as the largest.
            room = [self.max_concurrency[factory[j]] for j in chosen]
        if len(chosen) == 1:
            return _Level(tuple(segments), (chosen[0],), (1.0,))
        if not exact:
            total = sum(room)
            shares = [(j, r / total) for j, r in zip(chosen, room, strict=True) if r > 0]
            return _Level(tuple(segments), tuple(j for j, _ in shares),
                          tuple(w for _, w in shares))
        kept, weights = self._rounded(chosen, room)
        return _Level(tuple(segments), kept, weights)

    def _rounded(self, chosen: Sequence[int], room: Sequence[float],
                 ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The members with the weights :func:`.weights.rounded_weights` gives them by room
        (those rounded to nothing dropped), in member order: the same arithmetic and the same
        tie-break by factory id, without building factories by id."""
        ids, factory = self.ids, self.factory
        positive = [(j, r) for j, r in zip(chosen, room, strict=True) if r > 0]
        total = sum(r for _, r in positive)
        if total <= 0:
            return (), ()
        exact = [r / total * WEIGHT_UNITS for _, r in positive]
        units = [math.floor(e) for e in exact]
        left = WEIGHT_UNITS - sum(units)
        for _, _, i in sorted((-(e - u), ids[factory[j]], i) for i, ((j, _), e, u) in
                              enumerate(zip(positive, exact, units, strict=True)))[:left]:
            units[i] += 1
        kept = [(j, u) for (j, _), u in zip(positive, units, strict=True) if u > 0]
        return tuple(j for j, _ in kept), tuple(u / WEIGHT_UNITS for _, u in kept)

    def _judge(self, g: int, level: _Level, factory_events: Sequence[tuple[int, float]],
               pending: Mapping[int, float]) -> _Judged:
        rate = self.rate[g]
        factory, duration, region = self.factory, self.duration, self.region
        ledger = self.ledger
        n = len(ledger.spare)
        # Keys never repeat within one judgement: members are distinct factories, none of
        # them a primary, and factory events come before region events.
        f_add: Additions = {}
        if factory_events:
            for j, w in zip(level.members, level.weights, strict=True):
                f = factory[j]
                per_share = w * rate * duration[j]
                for event, share in factory_events:
                    f_add[event * n + f] = share * per_share
        r_add: Additions = {}
        routed = []
        if pending:
            members = list(zip(level.members, level.weights, strict=True))
            regions = [region[j] for j in level.members]
            whole = sum(level.weights)
        for lost, share in pending.items():
            if lost in regions:
                live = [m for m, r in zip(members, regions, strict=True) if r != lost]
                total = sum(w for _, w in live)
            else:  # the common case: a level outside the lost region takes all of it
                live, total = members, whole
            if total <= 0:
                continue
            routed.append(lost)
            event = ledger.region_event(lost)
            for j, w in live:
                r_add[event * n + factory[j]] = share * w / total * rate * duration[j]
        fits = ledger.fits
        return _Judged(level, {**f_add, **r_add}, fits(f_add), tuple(routed),
                       bool(routed) and fits(r_add))

    def _may_fit_region(self, g: int, s: int, pending: Mapping[int, float]) -> bool:
        """A cheap necessary condition for a segment to take a region's loss: its first
        members' room in that event, summed, covers the load at the shortest request duration
        among all its members."""
        region = self._seg_region[s]
        need = self.rate[g] * self._seg_shortest[s]
        ledger, factory = self.ledger, self.factory
        head = self._head[self._head_cut[s]:self._head_cut[s + 1]]
        for lost, share in pending.items():
            if lost == region:
                continue
            event = ledger.region_event(lost)
            room = sum(ledger.room(event, factory[j]) for j in head)
            if room < share * need - _SLACK:
                return False
        return True

    def _ranked(self, segments: Sequence[int], used_domains: set[int],
                used_regions: set[int]) -> list[int]:
        """``segments`` outside the used domains first, then outside the used regions; a
        stable partition of the static order."""
        seg_domain, seg_region = self._seg_domain, self._seg_region
        fresh: list[int] = []
        other_region: list[int] = []
        used: list[int] = []
        used_both: list[int] = []
        for s in segments:
            if seg_domain[s] in used_domains:
                (used_both if seg_region[s] in used_regions else used).append(s)
            else:
                (other_region if seg_region[s] in used_regions else fresh).append(s)
        return fresh + other_region + used + used_both

    def _most_independent(self, segments: Sequence[int], used_domains: set[int],
                          used_regions: set[int]) -> int:
        """The first of :meth:`_ranked`, without ranking the rest."""
        seg_domain, seg_region = self._seg_domain, self._seg_region
        best, best_rank = segments[0], 4
        for s in segments:
            rank = 2 * (seg_domain[s] in used_domains) + (seg_region[s] in used_regions)
            if rank < best_rank:
                best, best_rank = s, rank
                if not rank:
                    break
        return best

    def _choose(self, g: int, ranked: Sequence[int], f_events: Sequence[tuple[int, float]],
                pending: Mapping[int, float], *, first: bool, used_domains: set[int],
                used_regions: set[int]) -> _Judged:
        """The next level of group ``g`` among its ``ranked`` segments, judged against the
        ledger; level 0 (``first``) is widened over further domains when no one fits."""
        seg_domain, seg_region = self._seg_domain, self._seg_region
        seg_cordoned, seg_cost, seg_name = self._seg_cordoned, self._seg_cost, self._seg_name
        best: tuple[tuple[object, ...], _Judged] | None = None
        for s in ranked[:_DOMAINS_TRIED]:
            if (best is not None and (best[1].fits_factory or not first)
                    and not self._may_fit_region(g, s, pending)):
                continue  # it could not rank above the level already found
            judged = self._judge(g, self._level((s,)), f_events, pending)
            in_used = seg_domain[s] in used_domains
            region_used = seg_region[s] in used_regions
            # Level 0 carries every single-factory loss: absorbing one matters more than
            # region independence. Deeper levels exist for region losses.
            key: tuple[object, ...] = (
                (in_used, not judged.fits_factory, region_used, not judged.fits_region,
                 seg_cordoned[s], seg_cost[s], seg_name[s])
                if first else (in_used, region_used, not judged.fits_region,
                               seg_cordoned[s], seg_cost[s], seg_name[s]))
            if best is None or key < best[0]:
                best = (key, judged)
            # Domains come in static order: once one fits all it can catch, no later one
            # ranks above it (the common case, at the first domain tried).
            if (judged.fits_factory or not first) and (
                    judged.fits_region or not pending or (not judged.routed
                                                          and region_used)):
                break
        assert best is not None
        chosen = best[1]
        if first and f_events and not chosen.fits_factory:
            # No one domain can take a failed primary's share: widen level 0 over the next
            # independent domains until it can, or until there is nothing more to add.
            free = [s for s in ranked if seg_domain[s] not in used_domains] or ranked
            for n in range(2, min(len(free), _DOMAINS_TRIED) + 1):
                chosen = self._judge(g, self._level(free[:n]), f_events, pending)
                if chosen.fits_factory:
                    break
        if len(chosen.level.members) > 1:  # reserve exactly what the route will carry
            chosen = self._judge(g, self._level(chosen.level.domains, exact=True),
                                 f_events, pending)
        return chosen

    # --- one group ----------------------------------------------------------------------------

    def levels(self, g: int, depth: int) -> tuple[tuple[WeightedFactory, ...], ...]:
        """Up to ``depth`` levels for group ``g``, each from failure domains no primary and no
        earlier level uses, reserving their failover load in the ledger."""
        primary = self.primaries[g]
        domain_of, region_of, factory_of = self.domain, self.region, self.factory
        used_domains = {domain_of[j] for j in primary}
        used_regions = {region_of[j] for j in primary}
        factory_events = [(factory_of[j], w) for j, w in primary.items()]
        pending: dict[int, float] = {}  # region losses not yet caught by a level
        for j, w in primary.items():
            pending[region_of[j]] = pending.get(region_of[j], 0.0) + w
        record = _Record(has_primary=bool(primary))
        levels: list[tuple[WeightedFactory, ...]] = []
        names = self.p.factories.domains
        seg_domain = self._seg_domain
        # The group's pool by failure domain, in static order (see _segments).
        remaining = list(range(self._group_cut[g], self._group_cut[g + 1]))
        ledger = self.ledger
        first_region = ledger.key(ledger.region_event(0), 0)
        while remaining and len(levels) < depth:
            if not levels:
                chosen = self._choose(g, self._ranked0[self._group_cut[g]:self._group_cut[g + 1]],
                                      factory_events, pending, first=True,
                                      used_domains=used_domains, used_regions=used_regions)
            elif not pending:
                # Every loss a deeper level could catch is caught already: there is nothing to
                # judge or reserve, and judging would settle on the first domain ranked.
                chosen = _Judged(self._level((self._most_independent(
                    remaining, used_domains, used_regions),), exact=True), {}, True, (), False)
            else:
                chosen = self._choose(g, self._ranked(remaining, used_domains, used_regions),
                                      [], pending, first=False,
                                      used_domains=used_domains, used_regions=used_regions)
            ledger.commit(chosen.additions)
            domains = "+".join(names[seg_domain[s]] for s in chosen.level.domains)
            label = f"backup level {len(levels)} ({domains})"
            for key_ in chosen.additions:
                (record.factory if key_ < first_region else record.region).append((label, key_))
            for lost in chosen.routed:
                del pending[lost]
            levels.append(tuple(WeightedFactory(self.ids[factory_of[j]], w) for j, w in zip(
                chosen.level.members, chosen.level.weights, strict=True)))
            for j in chosen.level.members:
                used_domains.add(domain_of[j])
                used_regions.add(region_of[j])
            if len(levels) < depth:
                remaining = [s for s in remaining if s not in chosen.level.domains]
        record.has_backup = bool(levels)
        record.uncaught = tuple(sorted(pending))
        self.records[g] = record
        ledger.commit(self._last_resort(g, primary, caught_factory=bool(levels),
                                        uncaught=record.uncaught))
        return tuple(levels)

    def _last_resort(self, g: int, primary: Mapping[int, float], *, caught_factory: bool,
                     uncaught: Sequence[int]) -> Additions:
        """Where a failure no backup level catches sends the group's share: to its live other
        primaries, by weight (as sidecars do, and :mod:`.failover` replays). Nobody reserved
        that room, so it never protects this group; but it is load in that event all the same,
        and a group that was promised the same room must not count on it."""
        additions: Additions = {}
        if caught_factory and not uncaught:
            return additions
        rate = self.rate[g]
        key = self.ledger.key

        def spread(event: int, share: float, live: Sequence[tuple[int, float]]) -> None:
            total = sum(w for _, w in live)
            if total <= 0:
                return
            for j, w in live:
                k = key(event, self.factory[j])
                additions[k] = additions.get(k, 0.0) + (
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
            f"{regions[ledger.split(key)[0] - ledger.region_event(0)]}"
            for label, key in record.region if not ledger.holds(key)})
        region_why += [f"no backup outside {regions[r]}" for r in record.uncaught]
        return Protection(not factory_why, not region_why, factory_why, "; ".join(region_why))


def spare_capacity(problem: Problem, primaries: Sequence[Mapping[int, float]]) -> Floats:
    """Full concurrency less the load the routes' primary weights put on each factory."""
    pairs, groups, weights = _flat(primaries)
    # bincount adds in input order, as a loop over groups and their primaries would.
    load = np.bincount(problem.factory[pairs], minlength=len(problem.factories),
                       weights=weights * problem.rate[groups] * problem.duration[pairs])
    spare: Floats = problem.factories.max_concurrency - load
    return spare


def _flat(primaries: Sequence[Mapping[int, float]]) -> tuple[Ints, Ints, Floats]:
    """Every (pair, group, weight) of the routes' primaries, group by group."""
    counts = [len(p) for p in primaries]
    pairs = np.fromiter((j for p in primaries for j in p), dtype=np.int64, count=sum(counts))
    weights = np.fromiter((w for p in primaries for w in p.values()), dtype=np.float64,
                          count=len(pairs))
    return pairs, np.repeat(np.arange(len(primaries)), counts), weights


def failover_order(problem: Problem, primaries: Sequence[Mapping[int, float]]) -> list[int]:
    """Groups largest failover first (the load their biggest primary sheds), then by key."""
    pairs, groups, weights = _flat(primaries)
    shed = np.zeros(problem.group_count, dtype=np.float64)
    np.maximum.at(shed, groups, weights * problem.rate[groups] * problem.duration[pairs])
    # Keys are unique, so this is a total order: by shed load, then by the key's sort rank.
    key_rank = np.empty(problem.group_count, dtype=np.int64)
    key_rank[sorted(range(problem.group_count), key=problem.keys.__getitem__)] = np.arange(
        problem.group_count)
    order: list[int] = np.lexsort((key_rank, -shed)).tolist()
    return order
