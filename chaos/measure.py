"""What a drill's records mean: latency by phase, errors by kind, failover times, what the
control planes and sidecars did, usage accounting — and whether the expectations held.

Everything here is a pure function of the records, fault windows and samples a run collected,
so it is tested without a network. Phases are cut by request start time: ``before`` the first
fault, ``during`` each fault (from its first injection to its last revert) and ``after`` it.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tdn.chaos.load import RequestRecord
from tdn.chaos.observe import Metered, Sample
from tdn.chaos.spec import DrillSpec, Expectations
from tdn.chaos.timeline import Window


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class LatencyStats:
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        return cls(percentile(values, 50), percentile(values, 90), percentile(values, 99),
                   max(values) if values else None)


@dataclass(frozen=True, slots=True)
class Phase:
    """Requests that started in [start, end)."""

    name: str
    start: float
    end: float
    requests: int
    ok: int
    errors: int
    excused: int  # errors on streams already running when the fault hit (see excuse_in_flight)
    truncated: int
    failed_over: int  # successes that needed more than one attempt
    ttft: LatencyStats
    total: LatencyStats

    @property
    def error_rate(self) -> float:
        """Errors that count (not excused) per request."""
        return (self.errors - self.excused) / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class EventResult:
    """How the network took one timeline event."""

    event: int
    title: str
    fault: str
    start: float
    end: float
    occurrences: int
    # Fault injected → first success that needed a backup (max over occurrences); None when no
    # request needed one.
    failover_s: float | None
    # Fault injected → the last error it caused had ended (max over occurrences); 0: none.
    errors_cleared_s: float
    exercised: bool  # some request needed a second attempt, or failed
    added_p99_s: float | None
    reconnect_s: float | None = None
    controlplane_failover_s: float | None = None
    policy_kept: bool | None = None
    nacked: bool | None = None
    # bad_policy via policy_apply: refused with file, line and reason (None: not such an event).
    policy_refused: bool | None = None
    policy_detail: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    passed: bool
    expected: str
    observed: str


@dataclass(frozen=True, slots=True)
class Usage:
    exposed: bool
    client_prompt: int
    client_completion: int  # of complete answers
    client_partial: int  # content pieces of answers that did not complete
    metered_prompt: float
    metered_completion: float
    families: tuple[str, ...] = ()

    @property
    def accounted(self) -> bool:
        """Metered completion tokens cover every complete answer, and at most what clients
        received (partial answers may or may not be billed)."""
        low = self.client_completion
        high = self.client_completion + self.client_partial
        return low - 0.5 <= self.metered_completion <= high + 0.5


@dataclass(frozen=True, slots=True)
class Analysis:
    requests: int
    errors: int
    excused: int
    continuation: bool  # the policy asks sidecars to continue broken streams: nothing excused
    truncated: int
    error_rate: float
    errors_by_kind: dict[str, int]
    served_by: dict[str, int]
    phases: tuple[Phase, ...]
    events: tuple[EventResult, ...]
    usage: Usage | None
    checks: tuple[Check, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        for phase, raw in zip(self.phases, data["phases"], strict=True):
            raw["error_rate"] = phase.error_rate
        return data


# --- phases -----------------------------------------------------------------------------------


MID_STREAM_ERRORS = frozenset({"stream_error_event", "stream_broken"})


def excuse_in_flight(records: Sequence[RequestRecord], windows: Sequence[Window]) -> int:
    """Mark the errors TDN's guarantee allows when mid-stream continuation is off: a stream
    already coming from a factory when a fault hit it can only end with an error the client
    sees (never silently cut short). Everything else — every request sent after the fault,
    every request not yet answering — must succeed. Returns how many were excused."""
    count = 0
    for r in records:
        if not (r.error and r.streamed and r.kind in MID_STREAM_ERRORS and r.factory):
            continue
        if any(r.factory in w.factories and r.t_start < w.start < r.t_end for w in windows):
            r.excused = True
            count += 1
    return count


def event_spans(windows: Sequence[Window], drill_end: float) -> list[tuple[int, str, float, float]]:
    """(event, title, first start, last end) per event, in order of start."""
    spans: dict[int, tuple[str, float, float]] = {}
    for w in windows:
        end = w.end if w.end is not None else drill_end
        title, start, last = spans.get(w.event, (w.title, w.start, end))
        spans[w.event] = (title, min(start, w.start), max(last, end))
    return sorted(((e, t, s, x) for e, (t, s, x) in spans.items()), key=lambda v: v[2])


def _phase(name: str, start: float, end: float, records: Sequence[RequestRecord]) -> Phase:
    inside = [r for r in records if start <= r.t_start < end]
    ok = [r for r in inside if r.ok]
    return Phase(
        name=name, start=start, end=end, requests=len(inside), ok=len(ok),
        errors=sum(1 for r in inside if r.error),
        excused=sum(1 for r in inside if r.excused),
        truncated=sum(1 for r in inside if r.kind == "truncated_success"),
        failed_over=sum(1 for r in ok if r.attempts > 1),
        ttft=LatencyStats.of([r.ttft_s for r in ok if r.ttft_s is not None]),
        total=LatencyStats.of([r.total_s for r in ok if r.total_s is not None]))


def phases(records: Sequence[RequestRecord], windows: Sequence[Window],
           drill_end: float) -> list[Phase]:
    spans = event_spans(windows, drill_end)
    if not spans:
        return [_phase("whole drill", 0.0, drill_end, records)]
    out = [_phase("before", 0.0, spans[0][2], records)]
    for i, (_, title, start, end) in enumerate(spans):
        following = spans[i + 1][2] if i + 1 < len(spans) else drill_end
        out.append(_phase(f"during: {title}", start, end, records))
        if end < following:
            out.append(_phase(f"after: {title}", end, following, records))
    return out


# --- events -----------------------------------------------------------------------------------


def _occurrence_failover(records: Sequence[RequestRecord], window: Window,
                         until: float) -> tuple[float | None, float, bool]:
    """(first backup success, errors cleared, exercised) for the requests one occurrence of a
    fault could touch: those in flight when it hit and those started while it was in force
    (before ``until``). What starts after it ended counts in the "after" phase instead.

    The first backup success is the first byte of the first success that needed another
    attempt; when none did (the sidecar had already ejected the target, say), the first byte of
    the first success elsewhere than the target.
    """
    start = window.start
    touched = [r for r in records
               if start <= r.t_start < until or r.t_start < start < r.t_end]
    backed = [r.t_first_byte for r in touched
              if r.ok and r.attempts > 1 and r.t_first_byte is not None
              and r.t_first_byte > start]
    if not backed and window.factories:
        backed = [r.t_first_byte for r in touched
                  if r.ok and r.t_start >= start and r.factory not in window.factories
                  and r.t_first_byte is not None]
    failover = min(backed) - start if backed else None
    errors = [r.t_end for r in touched if r.failed]
    cleared = max(errors) - start if errors else 0.0
    needed = any(r.error or (r.ok and r.attempts > 1 and r.t_first_byte is not None
                             and r.t_first_byte > start) for r in touched)
    return failover, max(cleared, 0.0), needed


def _latency(phase: Phase, metric: str) -> float | None:
    return (phase.ttft if metric == "ttft" else phase.total).p99


def _peers_before(samples: Sequence[Sample], t: float) -> dict[str, str]:
    peers: dict[str, str] = {}
    for s in samples:
        if s.t > t:
            break
        for cp in s.controlplanes:
            for v in cp.sidecars:
                if v.connected:
                    peers[v.node_id] = v.peer
    return peers


def _connected_anew(sample: Sample, sidecars: Sequence[str], old: dict[str, str],
                    exclude: Sequence[str] = ()) -> bool:
    """Every sidecar is connected, on a new connection, to an answering replica not excluded."""
    for node in sidecars:
        if not any(v.node_id == node and v.connected and v.peer != old.get(node)
                   for cp in sample.controlplanes if cp.up and cp.name not in exclude
                   for v in cp.sidecars):
            return False
    return True


def _reconnect(samples: Sequence[Sample], sidecars: Sequence[str], start: float,
               end: float) -> float | None:
    """Window end → every sidecar connected anew (0 when that happened inside the window)."""
    old = _peers_before(samples, start)
    for s in samples:
        if s.t > start and _connected_anew(s, sidecars, old):
            return max(s.t - end, 0.0)
    return None


def _controlplane_failover(samples: Sequence[Sample], sidecars: Sequence[str], lost: Sequence[str],
                           start: float) -> float | None:
    """Replica lost → every sidecar connected to a survivor (one that already was needs no new
    connection: followers serve Discovery too), and a survivor leads."""
    for s in samples:
        if s.t <= start:
            continue
        leads = any(cp.up and cp.leader and cp.name not in lost for cp in s.controlplanes)
        if leads and _connected_anew(s, sidecars, {}, exclude=lost):
            return s.t - start
    return None


_REFUSED = re.compile(r"version (\S+) refused")


def _refused_versions(samples: Sequence[Sample]) -> set[str]:
    """Versions a control plane reported refused (SidecarTracker's "version V refused: ...")."""
    return {m.group(1) for s in samples for cp in s.controlplanes for v in cp.sidecars
            for m in [_REFUSED.search(v.last_nack)] if m}


def _policy_kept(samples: Sequence[Sample], start: float, end: float) -> bool:
    """Every sidecar held a policy throughout the window and never ran a version it refused.
    (Good versions may still arrive meanwhile: the control plane keeps solving.)"""
    refused = _refused_versions(samples)
    inside = [s for s in samples if start <= s.t <= end]
    return bool(inside) and all(sc.healthy and sc.policy_version not in refused
                                for s in inside for sc in s.sidecars)


def _nacked(samples: Sequence[Sample], sidecars: Sequence[str], start: float,
            end: float) -> bool:
    """Some control plane reported a NACK from every sidecar during the window."""
    seen = {v.node_id for s in samples if start <= s.t <= end + 1.0
            for cp in s.controlplanes for v in cp.sidecars if v.last_nack}
    return set(sidecars) <= seen


def event_results(records: Sequence[RequestRecord], windows: Sequence[Window],
                  samples: Sequence[Sample], phase_list: Sequence[Phase], *,
                  sidecars: Sequence[str], cp_events: set[int],
                  lost_controlplanes: dict[int, tuple[str, ...]], metric: str,
                  drill_end: float) -> list[EventResult]:
    """One result per timeline event; ``cp_events`` are those aimed at control planes, and
    ``lost_controlplanes`` the replicas each event took away (killed)."""
    before = next((p for p in phase_list if p.name == "before"), None)
    base = _latency(before, metric) if before else None
    spans = event_spans(windows, drill_end)
    out = []
    for n, (event, title, start, end) in enumerate(spans):
        mine = sorted((w for w in windows if w.event == event), key=lambda w: w.start)
        next_span = spans[n + 1][2] if n + 1 < len(spans) else drill_end
        failovers, cleared, exercised = [], [], False
        for k, w in enumerate(mine):
            until = min(w.end if w.end is not None else drill_end,
                        mine[k + 1].start if k + 1 < len(mine) else next_span)
            f, c, e = _occurrence_failover(records, w, until)
            if f is not None:
                failovers.append(f)
            cleared.append(c)
            exercised = exercised or e
        during = next((p for p in phase_list if p.name == f"during: {title}"
                       and p.start == start), None)
        p99 = _latency(during, metric) if during else None
        fault = mine[0].fault
        lost = lost_controlplanes.get(event, ())
        out.append(EventResult(
            event=event, title=title, fault=fault, start=start, end=end, occurrences=len(mine),
            failover_s=max(failovers) if failovers else None,
            errors_cleared_s=max(cleared) if cleared else 0.0, exercised=exercised,
            added_p99_s=None if p99 is None or base is None else p99 - base,
            reconnect_s=(_reconnect(samples, sidecars, start, end)
                         if event in cp_events else None),
            controlplane_failover_s=(_controlplane_failover(samples, sidecars, lost, start)
                                     if lost else None),
            policy_kept=_policy_kept(samples, start, end),
            nacked=_nacked(samples, sidecars, start, end) if fault == "bad_policy" else None,
        ))
    return out


# --- usage ------------------------------------------------------------------------------------


def usage(records: Sequence[RequestRecord], before: Metered, after: Metered) -> Usage | None:
    if not (before.exposed and after.exposed):
        return None
    complete = [r for r in records if r.ok]
    return Usage(
        exposed=True,
        client_prompt=sum(r.usage_prompt or 0 for r in complete),
        client_completion=sum(r.usage_completion if r.usage_completion is not None
                              else r.tokens for r in complete),
        client_partial=sum(r.tokens for r in records if not r.ok),
        metered_prompt=after.prompt - before.prompt,
        metered_completion=after.completion - before.completion,
        families=after.families)


# --- expectations -----------------------------------------------------------------------------


def _fmt(value: float | None, unit: str = "s") -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} {unit}".strip() if unit else f"{value:.3f}"


def check(spec: DrillSpec, analysis: Analysis, restore_problems: Sequence[str]) -> list[Check]:
    """Evaluate the drill's expectations against what was measured."""
    e: Expectations = spec.expect
    out = [Check("load was driven", analysis.requests >= e.min_requests,
                 f">= {e.min_requests} requests", f"{analysis.requests}")]
    out.append(Check("no truncated successes", analysis.truncated <= e.max_truncated_successes,
                     f"<= {e.max_truncated_successes}", f"{analysis.truncated}"))
    if e.max_error_rate is not None:
        failed = analysis.errors - analysis.excused
        excused = (f"; {analysis.excused} more on streams already running when the fault hit, "
                   "reported to the client" if analysis.excused else "")
        out.append(Check("error rate", analysis.error_rate <= e.max_error_rate + 1e-12,
                         f"<= {e.max_error_rate:.2%}",
                         f"{analysis.error_rate:.2%} ({failed} of {analysis.requests}{excused})"))
    if e.error_kinds is not None:
        bad = sorted(set(analysis.errors_by_kind) - set(e.error_kinds))
        out.append(Check("only allowed error kinds", not bad,
                         f"only {', '.join(e.error_kinds) or 'none'}",
                         ", ".join(f"{k}: {analysis.errors_by_kind[k]}" for k in bad) or "ok"))
    if e.max_error_rate_after is not None:
        after = [p for p in analysis.phases if p.name.startswith("after")]
        n = sum(p.requests for p in after)
        errors = sum(p.errors - p.excused for p in after)
        rate = errors / n if n else 0.0
        out.append(Check("error rate after the faults", rate <= e.max_error_rate_after + 1e-12,
                         f"<= {e.max_error_rate_after:.2%}", f"{rate:.2%} ({errors} of {n})"))
    for ev in analysis.events:
        if e.max_added_p99_s is not None:
            ok = ev.added_p99_s is not None and ev.added_p99_s <= e.max_added_p99_s
            out.append(Check(f"added p99 {e.latency}: {ev.title}", ok,
                             f"<= {e.max_added_p99_s:.3f} s",
                             _fmt(ev.added_p99_s) if ev.added_p99_s is not None
                             else "no successful request to measure"))
        if e.max_failover_s is not None and ev.exercised:
            values = [v for v in (ev.failover_s, ev.errors_cleared_s) if v is not None]
            worst = max(values) if values else None
            ok = ev.failover_s is not None and worst is not None and worst <= e.max_failover_s
            out.append(Check(
                f"failover: {ev.title}", ok, f"<= {e.max_failover_s:.3f} s",
                f"first backup success {_fmt(ev.failover_s)}, errors cleared "
                f"{_fmt(ev.errors_cleared_s)}"))
        if e.max_reconnect_s is not None and _is_cp_event(spec, ev):
            ok = ev.reconnect_s is not None and ev.reconnect_s <= e.max_reconnect_s
            out.append(Check(f"sidecars reconnect: {ev.title}", ok,
                             f"<= {e.max_reconnect_s:.3f} s after the fault",
                             _fmt(ev.reconnect_s) if ev.reconnect_s is not None
                             else "not reconnected"))
        if e.max_controlplane_failover_s is not None and _is_cp_event(spec, ev):
            ok = (ev.controlplane_failover_s is not None
                  and ev.controlplane_failover_s <= e.max_controlplane_failover_s)
            out.append(Check(f"control-plane failover: {ev.title}", ok,
                             f"<= {e.max_controlplane_failover_s:.3f} s",
                             _fmt(ev.controlplane_failover_s) if ev.controlplane_failover_s
                             is not None else "no surviving leader with the sidecars"
                             + (f" ({ev.note})" if ev.note else "")))
        if e.sidecars_keep_policy:
            out.append(Check(f"sidecars keep their policy: {ev.title}", bool(ev.policy_kept),
                             "a policy throughout, never a refused one",
                             "kept" if ev.policy_kept else "changed or lost"))
        applied = (ev.fault == "bad_policy"
                   and spec.timeline[ev.event].param("via") == "policy_apply")
        if e.policy_refused and applied:
            out.append(Check(f"policy refused: {ev.title}", bool(ev.policy_refused),
                             "refused naming file, line and reason; policy in force kept",
                             ev.policy_detail or "no answer recorded"))
        if e.nack_reported and ev.fault == "bad_policy" and not applied:
            out.append(Check(f"NACK reported: {ev.title}", bool(ev.nacked),
                             "every sidecar's NACK visible at the control plane",
                             "reported" if ev.nacked else "no NACK seen"))
    if e.max_failover_s is not None:
        exercised = any(ev.exercised for ev in analysis.events if _is_factory_event(spec, ev))
        out.append(Check("the faults were felt", exercised,
                         "some request needed a backup (else the drill proved nothing)",
                         "yes" if exercised else "no request needed a second attempt"))
    if e.usage_accounted and analysis.usage is not None:
        u = analysis.usage
        out.append(Check("usage accounted", u.accounted,
                         f"metered completion tokens in [{u.client_completion}, "
                         f"{u.client_completion + u.client_partial}]",
                         f"{u.metered_completion:g}"))
    out.append(Check("everything restored", not restore_problems, "no problem",
                     "; ".join(restore_problems) or "ok"))
    return out


def _is_cp_event(spec: DrillSpec, ev: EventResult) -> bool:
    target = spec.target(spec.timeline[ev.event].target)
    return target.kind == "controlplane"


def _is_factory_event(spec: DrillSpec, ev: EventResult) -> bool:
    target = spec.target(spec.timeline[ev.event].target)
    return target.kind in {"factory", "region"}


def analyse(spec: DrillSpec, records: Sequence[RequestRecord], windows: Sequence[Window],
            samples: Sequence[Sample], *, sidecars: Sequence[str], drill_end: float,
            lost_controlplanes: dict[int, tuple[str, ...]] | None = None,
            metered: tuple[Metered, Metered] | None = None,
            notes: dict[int, str] | None = None, restore_problems: Sequence[str] = (),
            continuation: bool = False,
            policy_outcomes: dict[int, tuple[bool, str]] | None = None) -> Analysis:
    """Everything a report shows, with the expectations checked. ``continuation``: the policy
    in force had mid-stream continuation on, so no broken stream is excused."""
    done = [r for r in records if r.kind]
    excused = 0 if continuation else excuse_in_flight(done, windows)
    phase_list = phases(done, windows, drill_end)
    cp_events = {ev.index for ev in spec.timeline
                 if spec.target(ev.target).kind == "controlplane"}
    events = event_results(done, windows, samples, phase_list, sidecars=sidecars,
                           cp_events=cp_events, lost_controlplanes=lost_controlplanes or {},
                           metric=spec.expect.latency, drill_end=drill_end)
    notes = notes or {}
    events = [replace(ev, note=notes[ev.event]) if ev.event in notes else ev for ev in events]
    outcomes = policy_outcomes or {}
    # A policy refused at the control plane never reaches a sidecar: no NACK to look for.
    events = [replace(ev, policy_refused=outcomes[ev.event][0],
                      policy_detail=outcomes[ev.event][1], nacked=None)
              if ev.event in outcomes else ev for ev in events]
    errors = [r for r in done if r.error]
    analysis = Analysis(
        requests=len(done), errors=len(errors), excused=excused, continuation=continuation,
        truncated=sum(1 for r in done if r.kind == "truncated_success"),
        error_rate=(len(errors) - excused) / len(done) if done else 0.0,
        errors_by_kind=dict(Counter(r.kind for r in errors).most_common()),
        served_by=dict(Counter(r.factory for r in done if r.ok).most_common()),
        phases=tuple(phase_list), events=tuple(events),
        usage=usage(done, *metered) if metered else None)
    return replace(analysis, checks=tuple(check(spec, analysis, restore_problems)))
