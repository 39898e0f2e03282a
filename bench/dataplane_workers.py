"""The ``tdn proxy --workers N`` section of the data-plane benchmark: do workers scale across cores?

Two measurements, side by side in one run, rounds interleaved (each round runs every
configuration once, against the same upstream):

* **budgeted**, the test of scaling: each worker runs in a cgroup of its own capped at
  :data:`WORKER_BUDGET_CORES` of a core, with a high weight so it gets that much whenever it is
  runnable, and pinned to a core of its own (worker i on core i). One worker then gets exactly
  one budget and N workers N budgets, whatever else the machine runs: N workers serving N times
  the requests of one at the same requests per CPU-second is scaling, and less is a cost of
  having workers. The budgets add up to at most half the machine; wrk and the upstream (left
  free to run on any core) have the rest. One worker given the N budgets together is measured
  too: it separates what a budget's size does to the CPU a request costs from what the number
  of workers does.
* **unpinned**, as measured before budgets: every process shares every core (the upstream on
  the load core, as in the other sections). On a small machine this measures contention as much
  as scaling, which the preemption and system-call counts beside it show.

Without a writable cgroup-v1 cpu controller (not root, cgroup v2 only) the budgeted rows are
skipped and the output says so.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.dataplane_cgroups import (
    HIGH_SHARES,
    PERIOD_US,
    CpuGroup,
    budgets_unavailable,
    pin,
    usable_cpus,
)
from bench.dataplane_load import WrkResult, chat_body, median, run_wrk
from bench.dataplane_procs import (
    BenchSetupError,
    Proc,
    cpu_seconds,
    involuntary_switches,
    process_tree,
    rw_syscalls,
)
from bench.dataplane_targets import Network, Target, settle, start_tdn

HEADING = "### `tdn proxy --workers N` across cores"
WORKER_BUDGET_CORES = 0.4
CONNECTIONS = 64
MODEL = "bench-d0"
WARMUP_S = 1


def workers_supported() -> bool:
    done = subprocess.run([sys.executable, "-m", "tdn.cli", "proxy", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    return "--workers" in done.stdout


def worker_counts(cpus: int) -> list[int]:
    return sorted({1, 2, cpus})


@dataclass(frozen=True, slots=True)
class Config:
    """One sidecar under test: how many workers, and each one's CPU budget (None: unpinned)."""

    workers: int
    budget: float | None = None

    @property
    def name(self) -> str:
        if self.budget is None:
            return f"u{self.workers}"
        return f"b{self.workers}x{round(self.budget * 100)}"


def budgeted_configs(cpus: int, budget: float = WORKER_BUDGET_CORES) -> list[Config]:
    """N workers at ``budget`` each, for the N whose budgets leave half the machine to the load
    side; and one worker given N budgets (the same CPU in one process) where one process can
    use that much (at most a core)."""
    counts = [n for n in worker_counts(cpus) if n * budget <= cpus / 2]
    configs = [Config(n, budget) for n in counts]
    configs += [Config(1, n * budget) for n in counts if n > 1 and n * budget <= 1.0]
    return configs


@dataclass(frozen=True, slots=True)
class Sample:
    """One wrk run against one configuration, and what the sidecar's processes spent on it."""

    result: WrkResult
    cpu_s: float  # the whole process tree: supervisor and workers
    busiest: float  # the busiest worker's share of the workers' CPU; nan with one worker
    preemptions: int
    rw_calls: int
    throttled: float  # median share of CFS periods a worker was throttled; nan unbudgeted

    @property
    def cores(self) -> float:
        return self.cpu_s / self.result.duration_s if self.result.duration_s else float("nan")

    @property
    def per_cpu_second(self) -> float:
        return self.result.rps / self.cores if self.cpu_s > 0 else float("nan")

    def per_request(self, count: int) -> float:
        return count / self.result.requests if self.result.requests else float("nan")


class _Sidecar:
    """A ``tdn proxy --workers N`` under test, each worker in its budget group when given one."""

    def __init__(self, network: Network, work: Path, config: Config,
                 cpus: Sequence[int]) -> None:
        self.config = config
        self.target = start_tdn(network, work, None, workers=config.workers,
                                name=f"tdn-{config.name}")
        assert self.target.proc is not None
        self.proc: Proc = self.target.proc
        # With one worker there is no supervisor: the process is the worker.
        children = [p for p in process_tree(self.proc.pid) if p != self.proc.pid]
        self.pids = children if config.workers > 1 else [self.proc.pid]
        if len(self.pids) != config.workers:
            self.target.stop()
            raise BenchSetupError(f"tdn proxy --workers {config.workers} runs {len(children)} "
                                  f"worker processes:\n{self.proc.log_tail()}")
        self.groups: list[CpuGroup] = []
        if config.budget is not None:
            try:
                for i, pid in enumerate(self.pids):
                    group = CpuGroup(f"{config.name}-w{i}", config.budget)
                    self.groups.append(group)
                    group.add(pid)
                    pin(pid, {cpus[i % len(cpus)]})
            except OSError:
                self.stop()
                raise

    def run(self, seconds: int) -> Sample:
        cpu0 = self.proc.cpu()
        each0 = [cpu_seconds(p) for p in self.pids]
        pre0 = sum(involuntary_switches(p) for p in self.pids)
        rw0 = sum(rw_syscalls(p) for p in self.pids)
        thr0 = [g.throttling() for g in self.groups]
        try:
            res = run_wrk(self.target.url(), [chat_body(MODEL)], connections=CONNECTIONS,
                          seconds=seconds, cpus=None)
        except RuntimeError as exc:
            state = "running" if self.proc.alive() else f"exited ({self.proc.popen.returncode})"
            raise BenchSetupError(f"{exc}\n{self.proc.name} ({state}) log:\n"
                                  f"{self.proc.log_tail()}") from None
        each = [cpu_seconds(p) - c for p, c in zip(self.pids, each0, strict=True)]
        throttled = [(g.throttling() - t).share for g, t in zip(self.groups, thr0, strict=True)]
        return Sample(
            result=res, cpu_s=self.proc.cpu() - cpu0,
            busiest=max(each) / sum(each) if len(each) > 1 and sum(each) > 0 else float("nan"),
            preemptions=sum(involuntary_switches(p) for p in self.pids) - pre0,
            rw_calls=sum(rw_syscalls(p) for p in self.pids) - rw0,
            throttled=median(throttled) if throttled else float("nan"))

    def stop(self) -> None:
        self.target.stop()
        for group in self.groups:
            group.close()


def workers_section(network: Network, upstream: Proc, work: Path, *, rounds: int, seconds: int,
                    log: Callable[[str], None]) -> list[str]:
    """The section's Markdown lines, beginning with :data:`HEADING`."""
    out = [HEADING, ""]
    if not workers_supported():
        return [*out, "Not yet: `tdn proxy` has no `--workers` flag in this tree.", ""]
    cpus = usable_cpus()
    unavailable = budgets_unavailable()
    unpinned = [Config(n) for n in worker_counts(len(cpus))]
    budgeted = [] if unavailable else budgeted_configs(len(cpus))
    sidecars: list[_Sidecar] = []
    samples: dict[Config, list[Sample]] = {}
    try:
        for config in unpinned + budgeted:
            sidecars.append(_Sidecar(network, work, config, cpus))
        targets: list[Target] = [s.target for s in sidecars]
        for s in sidecars:  # first requests (connection pools, caches) are not measured
            _run(s, WARMUP_S, upstream, cpus)
            settle(targets)
        for r in range(rounds):
            for s in sidecars:
                samples.setdefault(s.config, []).append(_run(s, seconds, upstream, cpus))
                settle(targets)
            log(f"workers round {r + 1}/{rounds} done")
    finally:
        for s in sidecars:
            s.stop()
    if budgeted:
        out += _budgeted_table(samples, budgeted, rounds, seconds)
    else:
        out += [f"Budgeted rows not measured: {unavailable}. Only the unpinned measurement "
                "below was made; where wrk and the upstream share the sidecar's cores it "
                "measures contention as much as scaling.", ""]
    out += _unpinned_table(samples, unpinned, len(cpus))
    return out


def _run(sidecar: _Sidecar, seconds: int, upstream: Proc, cpus: Sequence[int]) -> Sample:
    if sidecar.config.budget is None:
        return sidecar.run(seconds)
    # The upstream lives on the load core in the other sections; here that core holds a
    # budgeted worker, so the upstream may run on any core, as wrk does, while workers are
    # measured on a budget.
    with _affinity(upstream.pid, set(cpus)):
        return sidecar.run(seconds)


@contextlib.contextmanager
def _affinity(pid: int, cpus: set[int]) -> Iterator[None]:
    pids = process_tree(pid)
    before = {p: os.sched_getaffinity(p) for p in pids}
    for p in pids:
        pin(p, cpus)
    try:
        yield
    finally:
        for p, mask in before.items():
            pin(p, mask)


def _figures(runs: Sequence[Sample]) -> dict[str, float]:
    return {
        "rps": median([s.result.rps for s in runs]),
        "cores": median([s.cores for s in runs]),
        "per_cpu": median([s.per_cpu_second for s in runs]),
        "throttled": median([s.throttled for s in runs]),
        "busiest": median([s.busiest for s in runs]),
        "preempt_k": median([s.per_request(s.preemptions) * 1000 for s in runs]),
        "rw": median([s.per_request(s.rw_calls) for s in runs]),
        "errors": float(sum(s.result.errors for s in runs)),
    }


def _paired(runs: Sequence[Sample], base: Sequence[Sample],
            measure: Callable[[Sample], float]) -> float:
    """Median over rounds of ``measure(run) / measure(base run of the same round)``: a noisy
    round moves both sides of its own ratio."""
    ratios = [measure(a) / measure(b) if measure(b) > 0 else float("nan")
              for a, b in zip(runs, base, strict=True)]
    return median(ratios)


def _rps(s: Sample) -> float:
    return s.result.rps


def _per_cpu(s: Sample) -> float:
    return s.per_cpu_second


def _x(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.0%}"


def _budgeted_table(samples: dict[Config, list[Sample]], configs: Sequence[Config],
                    rounds: int, seconds: int) -> list[str]:
    figs = {c: _figures(samples[c]) for c in configs}
    per_worker = configs[0].budget
    assert per_worker is not None
    one = samples[Config(1, per_worker)]
    quota_ms = per_worker * PERIOD_US / 1000
    off_ms = PERIOD_US / 1000 - quota_ms
    out = [f"**Budgeted** (the scaling test): each worker in a cgroup of its own, capped at "
           f"{per_worker:.2f} of a core (CFS quota {quota_ms:g} ms per {PERIOD_US / 1000:g} ms "
           f"period) with weight {HIGH_SHARES} so that it gets its budget whenever it is "
           "runnable, and pinned to core i; wrk and the upstream run at normal weight on any "
           "core. c=64, 0 ms upstream, medians of "
           f"{rounds} interleaved rounds of {seconds} s; ratios are taken round by round, "
           "then the median. With no per-worker loss, N workers serve N times the requests of "
           "one at the same requests per CPU-second. "
           "*Throttled* is the share of CFS periods in which a worker used up its budget: "
           "near 100% means the budget, not wrk or the upstream, bounded it. The last row, one "
           "worker given the budgets of all, is a control for what a budget's size alone does.",
           "",
           f"| workers | budget per worker (cores) | req/s | x 1 worker at {per_worker:.2f} "
           "| sidecar CPU (cores) | throttled | req/s per sidecar CPU-second | x 1 worker at "
           f"{per_worker:.2f} | preemptions per 1,000 req | read+write calls per req "
           "| errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in configs:
        f = figs[c]
        assert c.budget is not None
        out.append(f"| {c.workers} | {c.budget:.2f} | {f['rps']:,.0f} | "
                   f"{_x(_paired(samples[c], one, _rps))} | {f['cores']:.2f} | "
                   f"{_pct(f['throttled'])} | {f['per_cpu']:,.0f} | "
                   f"{_x(_paired(samples[c], one, _per_cpu))} | {f['preempt_k']:,.0f} | "
                   f"{f['rw']:.2f} | {f['errors']:.0f} |")
    out.append("")
    for c in configs:
        if c.workers == 1:
            continue
        scale = _paired(samples[c], one, _rps)
        flat = _paired(samples[c], one, _per_cpu)
        met = scale >= 0.9 * c.workers and flat >= 0.9
        above = (" (above the ideal: the one-worker runs got fewer requests per CPU-second, "
                 "which more rounds even out)" if scale > 1.1 * c.workers else "")
        out += [f"Scaling at a fixed budget per worker: {c.workers} workers at "
                f"{per_worker:.2f} core each serve **{scale:.2f}x** the requests of one (ideal "
                f"{c.workers:.2f}x) at **{flat:.2f}x** its requests per sidecar CPU-second "
                f"(ideal 1.00x){above} — **{'scales' if met else 'does not scale'}**.", ""]
        whole_config = Config(1, c.workers * per_worker)
        if whole_config not in samples:
            continue
        whole = samples[whole_config]
        own = _paired(whole, one, _per_cpu)
        text = (f"Control: one worker given the same {c.workers * per_worker:.2f} core serves "
                f"{_x(_paired(whole, one, _rps))} the requests of one at {per_worker:.2f}, "
                f"at {own:.2f}x its requests per CPU-second, and {c.workers} workers at "
                f"{per_worker:.2f} serve {_x(_paired(samples[c], whole, _rps))} of its "
                "requests.")
        if 0.9 <= flat <= 1.1 and own > flat:
            text += (f" What separates them is the budget per process (a worker capped at "
                     f"{per_worker:.2f} sits out {off_ms:g} ms of every {PERIOD_US / 1000:g} "
                     "and comes back to caches others have used), not the number of "
                     "workers: at the same budget each, one worker or "
                     f"{c.workers} cost the same CPU per request.")
        out += [text, ""]
    loose = [f"{c.workers} worker(s) at {c.budget:.2f} core ({_pct(figs[c]['throttled'])})"
             for c in configs if c.budget is not None and not figs[c]["throttled"] >= 0.8]
    if loose:
        out += ["Caution: throttled in under 80% of periods: " + ", ".join(loose) + ". There "
                "wrk or the upstream, not the budget, bounded the sidecar at times, so its "
                "figures understate what that configuration can do.", ""]
    return out


def _unpinned_table(samples: dict[Config, list[Sample]], configs: Sequence[Config],
                    cpus: int) -> list[str]:
    counts = [c.workers for c in configs]
    figs = {c.workers: _figures(samples[c]) for c in configs}
    base = figs[counts[0]]
    one = samples[configs[0]]
    out = [f"**Unpinned** (as measured before budgets; all {cpus} cores shared by the "
           "workers, wrk and the upstream), c=64, 0 ms upstream. *req/s per sidecar core* is "
           "throughput over the cores the sidecar's processes actually got. *Busiest worker* "
           "is the largest share of the workers' CPU one worker took (an even spread of "
           "connections by SO_REUSEPORT: 1/N). *Preemptions* (involuntary context switches "
           "of the workers) show how much they shared their cores; *read+write calls per "
           "request* count the work each request costs, which sharing does not change.", "",
           "| workers | req/s | x 1 worker | cores used by the sidecar | req/s per sidecar core "
           "| x 1 worker | busiest worker | preemptions per 1,000 req "
           "| read+write calls per req |", "|---|---|---|---|---|---|---|---|---|"]
    for n in counts:
        f = figs[n]
        runs = samples[Config(n)]
        out.append(f"| {n} | {f['rps']:,.0f} | {_x(_paired(runs, one, _rps))} | "
                   f"{f['cores']:.2f} | {f['per_cpu']:,.0f} | "
                   f"{_x(_paired(runs, one, _per_cpu))} | {_pct(f['busiest'])} | "
                   f"{f['preempt_k']:,.0f} | {f['rw']:.2f} |")
    out.append("")
    if len(counts) > 1:
        top = figs[counts[-1]]
        same_work = abs(top["rw"] - base["rw"]) <= 0.02 * base["rw"]
        per_core = _paired(samples[configs[-1]], one, _per_cpu)
        out += [f"Unpinned, {counts[-1]} workers got {_x(per_core)} "
                "the requests per core of one, preempted "
                f"{top['preempt_k']:,.0f} times per 1,000 requests (one worker: "
                f"{base['preempt_k']:,.0f}), making "
                + (f"the same {top['rw']:.2f} read+write calls per request: the workers do no "
                   "extra work per request, so any loss per core here is the cost of sharing "
                   "cores with wrk and the upstream."
                   if same_work else
                   f"{top['rw']:.2f} read+write calls per request against {base['rw']:.2f}."),
                ""]
    return out
