"""The discrete-event simulation behind the routing benchmark (heapq; one clock, no threads).

A request arrives at its site, its router picks a factory, and it travels half a round trip to
reach it. Each factory has a fixed number of concurrency slots and a FIFO queue: a request waits
for a slot, then holds it for prefill (``prompt / prefill rate``) and decode (``output x ITL``).
The client's time to first token is therefore RTT + queueing + prefill.

A router may give each attempt a first-byte deadline (TDN's sidecar does): a request with no
first token by then leaves the queue, or has its prefill aborted, and the router picks again.

Failures are hard: from its failure time a factory refuses connections (the sender learns it
after a round trip) and drops what it held — queued requests and requests still in prefill are
retried by their router (nothing reached the client yet); requests already streaming fail
(a client error, for every router alike). Routers learn of failures only through these attempts,
as a real proxy does; the TDN control plane additionally sees them in telemetry after a delay.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bench.routing_topology import FactoryModel, Topology

_ARRIVE, _REACH, _FINISH, _RETRY, _FAIL, _RECOVER, _CALL, _DEADLINE, _FIRST = range(9)


@dataclass(slots=True, eq=False)
class Req:
    """One request and what became of it."""

    id: int
    t: float
    site: str
    cls: str
    prompt: int
    output: int
    slo_s: float
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    status: str = ""  # "ok", or why it failed
    factory: str = ""
    reached: float = 0.0
    first_token_at: float = math.inf  # as the client sees it (inf: no first token yet)
    ttft: float = float("inf")
    cost_usd: float = 0.0
    gco2: float = 0.0

    @property
    def slo_met(self) -> bool:
        return self.status == "ok" and self.ttft <= self.slo_s


@dataclass(slots=True, eq=False)
class FactoryRuntime:
    """A factory's live state during the run (routers may read running and queued)."""

    model: FactoryModel
    running: int = 0
    queue: deque[Req] = field(default_factory=deque)
    alive: bool = True
    epoch: int = 0
    active: dict[int, Req] = field(default_factory=dict)
    # (time the first token left the factory, factory-side TTFT): what an agent would report.
    ttft_log: deque[tuple[float, float]] = field(default_factory=deque)
    busy_s: float = 0.0
    _since: float = 0.0

    @property
    def slots(self) -> int:
        return self.model.slots

    @property
    def queued(self) -> int:
        return len(self.queue)

    def _account(self, now: float) -> None:
        self.busy_s += self.running * (now - self._since)
        self._since = now


class Router(Protocol):
    """What the simulation asks of a routing strategy."""

    name: str

    def start(self, sim: Simulation) -> None: ...

    def max_attempts(self, req: Req) -> int: ...

    def choose(self, req: Req, now: float) -> str | None: ...

    def on_failure(self, req: Req, factory_id: str, now: float) -> None: ...

    def on_success(self, req: Req, factory_id: str, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Factories that are down from ``start`` to ``end`` (simulation seconds)."""

    start: float
    end: float
    factory_ids: tuple[str, ...]


class Simulation:
    """One run: one router over one arrival sequence, with optional failures."""

    def __init__(self, topology: Topology, requests: Sequence[Req], router: Router,
                 failures: Sequence[Failure] = (), seed: int = 0) -> None:
        self.topology = topology
        self.requests = list(requests)
        self.router = router
        self.failures = tuple(failures)
        self.rng = random.Random(seed)
        self.factories = {f.id: FactoryRuntime(f) for f in topology.factories}
        # A router that watches first tokens (TDN's sidecar does) is told when each arrives.
        self._on_first_token: Callable[[Req, str, float], None] | None = getattr(
            router, "on_first_token", None)
        # A router that reads factories' load reports (TDN's sidecar does: ORCA headers on each
        # answer) is told, as each request reaches its factory, how many were waiting there.
        self._on_load_report: Callable[[Req, str, float, int], None] | None = getattr(
            router, "on_load_report", None)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, object, object]] = []
        self._seq = 0

    # --- scheduling ----------------------------------------------------------------------------

    def _push(self, when: float, kind: int, a: object = None, b: object = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, a, b))

    def call_at(self, when: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` at ``when`` (routers' timers, such as TDN's periodic solve)."""
        self._push(when, _CALL, fn)

    def down_since(self, factory_id: str, now: float) -> float | None:
        """When the factory's current outage began, or None while it is up."""
        for failure in self.failures:
            if factory_id in failure.factory_ids and failure.start <= now < failure.end:
                return failure.start
        return None

    # --- the run -------------------------------------------------------------------------------

    def run(self) -> list[Req]:
        for req in self.requests:
            self._push(req.t, _ARRIVE, req)
        for failure in self.failures:
            for fid in failure.factory_ids:
                self._push(failure.start, _FAIL, fid)
                self._push(failure.end, _RECOVER, fid)
        self.router.start(self)
        end = self.requests[-1].t if self.requests else 0.0
        heap = self._heap
        while heap:
            when, _, kind, a, b = heapq.heappop(heap)
            self.now = when
            if kind == _ARRIVE:
                assert isinstance(a, Req)
                self._dispatch(a, when)
            elif kind == _RETRY:
                assert isinstance(a, Req) and isinstance(b, tuple)
                if a.attempts == b[1]:  # not already moved on by its deadline
                    self.router.on_failure(a, b[0], when)
                    self._dispatch(a, when)
            elif kind == _REACH:
                assert isinstance(a, Req) and isinstance(b, tuple)
                if a.attempts == b[1]:
                    self._reach(a, b[0], when)
            elif kind == _FINISH:
                assert isinstance(a, Req) and isinstance(b, tuple)
                self._finish(a, b[0], b[1], b[2], when)
            elif kind == _DEADLINE:
                assert isinstance(a, Req) and isinstance(b, tuple)
                self._deadline(a, b[0], b[1], when)
            elif kind == _FIRST:
                assert isinstance(a, Req) and isinstance(b, tuple)
                # Still this attempt's first token (not abandoned or lost meanwhile).
                if (self._on_first_token is not None and a.attempts == b[1]
                        and a.first_token_at == when and not a.status):
                    self._on_first_token(a, b[0], when)
            elif kind == _FAIL:
                assert isinstance(a, str)
                self._fail(a, when)
            elif kind == _RECOVER:
                assert isinstance(a, str)
                self.factories[a].alive = True
            elif kind == _CALL and when <= end:
                assert callable(a)
                a(when)
        for f in self.factories.values():
            f._account(self.now)
        return self.requests

    def _dispatch(self, req: Req, now: float) -> None:
        if req.attempts >= self.router.max_attempts(req):
            req.status = "retries exhausted"
            return
        fid = self.router.choose(req, now)
        if fid is None:
            req.status = "no factory available"
            return
        req.attempts += 1
        req.tried.append(fid)
        attempt = (fid, req.attempts)
        rtt = self.topology.rtt_s(req.site, fid)
        if not self.factories[fid].alive:
            # Connection refused: known after one round trip.
            self._push(now + rtt, _RETRY, req, attempt)
            return
        deadline = self._deadline_of(req, fid)
        if math.isfinite(deadline):
            self._push(now + deadline, _DEADLINE, req, attempt)
        self._push(now + rtt / 2, _REACH, req, attempt)

    def _deadline_of(self, req: Req, fid: str) -> float:
        """The router's first-byte deadline for this attempt (inf: it waits as long as it
        takes, as every router but TDN's sidecar does here)."""
        deadline = getattr(self.router, "deadline", None)
        return float(deadline(req, fid)) if deadline is not None else math.inf

    def _deadline(self, req: Req, fid: str, attempt: int, now: float) -> None:
        """A first-byte deadline passed: unless the first token is already out, the attempt is
        abandoned (taken out of the queue, or its prefill aborted) and the request moves on."""
        if req.attempts != attempt or req.status or req.first_token_at <= now:
            return
        f = self.factories[fid]
        if req.id in f.active:
            f._account(now)
            f.running -= 1
            del f.active[req.id]
            if f.queue:
                self._start(f.queue.popleft(), f, now)
        elif req in f.queue:
            f.queue.remove(req)
        req.first_token_at = math.inf
        on_deadline = getattr(self.router, "on_deadline", None)
        if on_deadline is not None:
            on_deadline(req, fid, now)
        self._dispatch(req, now)

    def _reach(self, req: Req, fid: str, now: float) -> None:
        f = self.factories[fid]
        if not f.alive:
            self._push(now + self.topology.rtt_s(req.site, fid) / 2, _RETRY, req,
                       (fid, req.attempts))
            return
        req.reached = now
        report = self._on_load_report
        if report is not None:
            # The answer's head leaves at once with the queue as it was (vLLM sends a stream's
            # headers before admitting it) and reaches the sidecar half a round trip later.
            waiting = len(f.queue)
            self._push(now + self.topology.rtt_s(req.site, fid) / 2, _CALL,
                       lambda when: report(req, fid, when, waiting))
        if f.running < f.slots:
            self._start(req, f, now)
        else:
            f.queue.append(req)

    def _start(self, req: Req, f: FactoryRuntime, now: float) -> None:
        f._account(now)
        f.running += 1
        prefill = f.model.prefill_s(req.prompt)
        rtt = self.topology.rtt_s(req.site, f.model.id)
        req.first_token_at = now + prefill + rtt / 2
        f.active[req.id] = req
        f.ttft_log.append((now + prefill, now + prefill - req.reached))
        if self._on_first_token is not None:
            self._push(req.first_token_at, _FIRST, req, (f.model.id, req.attempts))
        duration = prefill + req.output * f.model.itl_s
        self._push(now + duration, _FINISH, req, (f.model.id, f.epoch, req.attempts))

    def _finish(self, req: Req, fid: str, epoch: int, attempt: int, now: float) -> None:
        f = self.factories[fid]
        if epoch != f.epoch or attempt != req.attempts or req.id not in f.active:
            return  # the factory failed meanwhile (_fail dealt with it), or it was abandoned
        f._account(now)
        f.running -= 1
        del f.active[req.id]
        req.status = "ok"
        req.factory = fid
        req.ttft = req.first_token_at - req.t
        req.cost_usd = f.model.cost_usd(req.prompt, req.output)
        # Carbon at the hour the work was done, in the factory's grid.
        req.gco2 = (f.model.energy_kwh(req.prompt, req.output)
                    * self.topology.carbon(f.model.region, now))
        self.router.on_success(req, fid, now)
        if f.queue:
            self._start(f.queue.popleft(), f, now)

    def _fail(self, fid: str, now: float) -> None:
        f = self.factories[fid]
        f._account(now)
        f.alive = False
        f.epoch += 1
        for req in f.queue:
            self._push(now + self.topology.rtt_s(req.site, fid) / 2, _RETRY, req,
                       (fid, req.attempts))
        f.queue.clear()
        for req in f.active.values():
            half = self.topology.rtt_s(req.site, fid) / 2
            if req.first_token_at - half <= now:
                req.status = "stream broken"  # tokens reached the client: no silent retry
                req.factory = fid
            else:
                req.first_token_at = math.inf
                self._push(now + half, _RETRY, req, (fid, req.attempts))
        f.active.clear()
        f.running = 0


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """What the report shows for one router in one scenario."""

    requests: int
    errors: int
    cost_per_mtok: float
    ttft_p50_s: float
    ttft_p99_s: float
    slo_attainment: float
    gco2_per_mtok: float
    utilisation: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values) - 1e-9)))
    return sorted_values[rank - 1]


def summarise(reqs: Sequence[Req], sim: Simulation | None = None,
              window: tuple[float, float] | None = None) -> Summary:
    """Figures over ``reqs`` (those arriving in ``window`` if given)."""
    if window is not None:
        reqs = [r for r in reqs if window[0] <= r.t < window[1]]
    done = [r for r in reqs if r.status == "ok"]
    tokens = sum(r.prompt + r.output for r in done)
    ttfts = sorted(r.ttft for r in done)
    utilisation = float("nan")
    if sim is not None and sim.now > 0:
        slots = sum(f.slots for f in sim.factories.values())
        utilisation = sum(f.busy_s for f in sim.factories.values()) / (slots * sim.now)
    return Summary(
        requests=len(reqs),
        errors=len(reqs) - len(done),
        cost_per_mtok=sum(r.cost_usd for r in done) / tokens * 1e6 if tokens else float("nan"),
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        slo_attainment=sum(r.slo_met for r in reqs) / len(reqs) if reqs else float("nan"),
        gco2_per_mtok=sum(r.gco2 for r in done) / tokens * 1e6 if tokens else float("nan"),
        utilisation=utilisation,
    )
