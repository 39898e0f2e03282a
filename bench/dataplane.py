"""Data-plane benchmark (issue 3, item 8): what the sidecar adds, costs and survives, beside
HAProxy (the reference floor) and LiteLLM's proxy (the peer users would otherwise pick).

Everything is measured side by side in one run, rounds interleaved (round 1: every path, round 2:
every path, ...), against the same upstream, and reported as medians over rounds and ratios: the
machine has two shared cores and its noise moves all paths alike within a round. Layout:

* core 0: the proxy under test (``taskset -c 0``), so "one core" means one core;
* core 1: wrk (the load generator, C) and the fixed-delay upstream (:mod:`bench.dataplane_upstream`)
  or the simulated factories of the failover drills.

Sections: added latency (c = 1, 16, 64; 0 ms and 20 ms upstream), CPU per request and saturation
throughput, SSE relay cost per chunk, ``--workers`` scaling, failover drills (refused, reset,
blackholed primary), and an RSS soak (10 minutes; 1 with ``--quick``). Default run: about 20
minutes; ``--quick``: about 3. Needs ``wrk`` and ``haproxy`` (Debian packages); LiteLLM is
installed into ``~/.cache/tdn/bench-litellm`` on first use.

``python -m bench.dataplane --only workers|failover [--quick] [--no-write]`` runs one section
alone (a few minutes) and replaces just that subsection in docs/benchmarks.md, dated on its own
line.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.dataplane_load import WrkResult, chat_body, run_wrk
from bench.dataplane_load import median as _median
from bench.dataplane_load import ratio as _ratio
from bench.dataplane_procs import (
    BenchSetupError,
    Proc,
    cpu_count,
    haproxy_available,
    haproxy_version,
    litellm_version,
    pinned,
    python_module,
    wait_ready,
    wrk_available,
)
from bench.dataplane_targets import (
    Drill,
    Network,
    Target,
    direct,
    settle,
    start_haproxy,
    start_litellm,
    start_tdn,
    stop_all,
)
from bench.dataplane_workers import HEADING as WORKERS_HEADING
from bench.dataplane_workers import workers_section
from tdn.chaos.services import free_port

NAME = "dataplane"
TITLE = "Data plane: sidecar overhead, failover and memory (issue 3)"

PROXY_CPU = "0"
LOAD_CPU = "1"
SSE_MODEL = "bench-sse-i2"  # chunks 2 ms apart, as tokens from a fast engine
SSE_CHUNKS = 200
DEADLINE_S = 0.5


@dataclass(frozen=True, slots=True)
class Budget:
    """How long each section runs; the quick budget is a smoke check of the same code."""

    rounds: int
    latency_s: int
    cpu_s: int
    sse_s: int
    drill_s: int
    soak_s: int
    soak_sample_s: float
    workers_rounds: int  # a short section whose ratios move with the machine's noise: more


FULL = Budget(rounds=3, latency_s=3, cpu_s=4, sse_s=4, drill_s=3, soak_s=600, soak_sample_s=10,
              workers_rounds=7)
QUICK = Budget(rounds=1, latency_s=1, cpu_s=2, sse_s=2, drill_s=3, soak_s=60, soak_sample_s=5,
               workers_rounds=1)


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


# --- the network under the proxies -----------------------------------------------------------


class Backends:
    """The upstream and the failover drills' simulated factories, all on the load core."""

    def __init__(self, work: Path) -> None:
        self.procs: list[Proc] = []
        self.work = work
        up = free_port()
        self.upstream = self._start("upstream", python_module(
            "bench.dataplane_upstream", "--port", str(up)), f"http://127.0.0.1:{up}/health",
            accept=500)
        good, cutter, hanger, dead = free_port(), free_port(), free_port(), free_port()
        drills = (Drill("healthy", "fo-healthy", good), Drill("refused", "fo-refused", dead),
                  Drill("reset", "fo-reset", cutter), Drill("hang", "fo-hang", hanger))
        models = ",".join(d.model for d in drills)
        for name, port, fault in (("sim-good", good, None),
                                  ("sim-reset", cutter, "cut_stream:after_tokens=0"),
                                  ("sim-hang", hanger, "hang")):
            args = ["tdn.cli", "factory-sim", "--port", str(port), "--id", name,
                    "--models", models, "--max-concurrency", "1024", "--itl-ms", "0",
                    "--prefill-tokens-per-s", "1000000"]
            if fault:
                args += ["--fault", fault]
            self._start(name, python_module(*args), f"http://127.0.0.1:{port}/health")
        self.network = Network(upstream_port=up,
                               models=("bench-d0", "bench-d20", SSE_MODEL),
                               good_port=good, drills=drills, first_byte_deadline_s=DEADLINE_S)

    def _start(self, name: str, args: list[str], ready: str, accept: int = 300) -> Proc:
        proc = Proc(name, pinned(LOAD_CPU, args), self.work)
        self.procs.append(proc)
        # The raw upstream answers GET with 200 too (it does not look at the method).
        wait_ready(proc, ready, 30.0, accept_status=accept)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


# --- sections ---------------------------------------------------------------------------------


def latency_section(targets: Sequence[Target], budget: Budget, log: Callable[[str], None]
                    ) -> list[str]:
    by: dict[tuple[str, int, str], list[WrkResult]] = {}
    for r in range(budget.rounds):
        for delay in (0, 20):
            for conns in (1, 16, 64):
                for t in targets:
                    res = run_wrk(t.url(), [chat_body(f"bench-d{delay}")], connections=conns,
                                  seconds=budget.latency_s, cpus=LOAD_CPU)
                    settle(targets)
                    by.setdefault((t.name, conns, f"{delay}"), []).append(res)
        log(f"latency round {r + 1}/{budget.rounds} done")
    proxies = [t.name for t in targets if t.name != "direct"]
    out = ["### Added latency versus calling the upstream directly",
           "",
           f"wrk, keep-alive, non-streaming chat completion; medians of {budget.rounds} "
           f"interleaved rounds of {budget.latency_s} s. Added = percentile via the proxy minus "
           "the same percentile direct, in ms. Goal for TDN at c=1, 0 ms upstream: "
           "p50 ≤ 0.30 ms, p99 ≤ 0.60 ms.",
           "",
           "| upstream | c | direct p50 / p99 | " +
           " | ".join(f"{p} added p50 / p99" for p in proxies) + " | TDN/HAProxy p50 | "
           "TDN/LiteLLM p50 |",
           "|---|---|---|" + "---|" * len(proxies) + "---|---|"]
    goal = ""
    for delay in ("0", "20"):
        for conns in (1, 16, 64):
            d = by[("direct", conns, delay)]
            d50, d99 = _median([x.p50_us for x in d]), _median([x.p99_us for x in d])
            added: dict[str, tuple[float, float]] = {}
            for p in proxies:
                runs = by[(p, conns, delay)]
                # Differences are taken round by round, then the median: a noisy round moves
                # both sides of its own difference.
                a50 = _median([x.p50_us - y.p50_us for x, y in zip(runs, d, strict=True)])
                a99 = _median([x.p99_us - y.p99_us for x, y in zip(runs, d, strict=True)])
                added[p] = (a50, a99)
            cells = " | ".join(f"{_ms(added[p][0])} / {_ms(added[p][1])}" for p in proxies)
            tdn = added.get("TDN", (float("nan"), 0.0))[0]
            hap = added.get("HAProxy", (float("nan"), 0.0))[0]
            lit = added.get("LiteLLM", (float("nan"), 0.0))[0]
            out.append(f"| {delay} ms | {conns} | {_ms(d50)} / {_ms(d99)} | {cells} | "
                       f"{_ratio(tdn, hap)} | {_ratio(tdn, lit)} |")
            if delay == "0" and conns == 1 and "TDN" in added:
                a50, a99 = added["TDN"]
                met = a50 <= 300 and a99 <= 600
                goal = (f"Goal at c=1, 0 ms: TDN adds p50 {_ms(a50)} ms, p99 {_ms(a99)} ms — "
                        f"**{'met' if met else 'missed'}**.")
    out += ["", goal, ""]
    return out


def _cpu_run(target: Target, body: list[str], conns: int, seconds: int, *,
             load_cpu: str | None = LOAD_CPU, proc: Proc | None = None) -> tuple[WrkResult, float]:
    """One wrk run and the CPU seconds the measured process tree spent meanwhile."""
    measured = proc if proc is not None else target.proc
    before = measured.cpu() if measured is not None else 0.0
    res = run_wrk(target.url(), body, connections=conns, seconds=seconds, cpus=load_cpu)
    after = measured.cpu() if measured is not None else 0.0
    return res, after - before


def cpu_section(targets: Sequence[Target], backends: Backends, budget: Budget,
                log: Callable[[str], None]) -> list[str]:
    runs: dict[tuple[str, str], list[tuple[WrkResult, float]]] = {}
    cases = (("saturation", "bench-d0", 64), ("moderate", "bench-d20", 16))
    for r in range(budget.rounds):
        for case, model, conns in cases:
            for t in targets:
                # For the direct path the CPU read is the upstream's: the floor the proxies sit
                # on, and proof that the upstream is not what limits them.
                proc = backends.upstream if t.name == "direct" else None
                runs.setdefault((t.name, case), []).append(
                    _cpu_run(t, [chat_body(model)], conns, budget.cpu_s, proc=proc))
                settle(targets)
        log(f"cpu round {r + 1}/{budget.rounds} done")

    def figures(name: str, case: str) -> tuple[float, float, float]:
        rs = runs[(name, case)]
        rps = _median([w.rps for w, _ in rs])
        us = _median([cpu / w.requests * 1e6 if w.requests else float("nan") for w, cpu in rs])
        util = _median([cpu / w.duration_s if w.duration_s else 0.0 for w, cpu in rs])
        return rps, us, util

    out = ["### CPU per request and saturation throughput on one core",
           "",
           "Proxy pinned to core 0, wrk and upstream on core 1. CPU = utime + stime of the "
           "proxy's process tree (/proc/<pid>/stat) over the run ÷ requests served. "
           "*Saturation*: c=64, 0 ms upstream; *moderate*: c=16, 20 ms upstream (≈ 800 req/s "
           "offered). For `direct`, CPU is the upstream's own. Goals for TDN: ≤ 110 µs per "
           "request and ≥ 7,000 req/s on one core.",
           "",
           "*Core use* is the share of core 0 the proxy actually got: below ~100% at "
           "saturation means other processes on this shared machine took the rest, so "
           "*req/s per core* (1 / CPU per request) is the contention-free estimate of what one "
           "core carries.",
           "",
           "| path | saturation req/s | core use | CPU µs/req at saturation | req/s per core | "
           "moderate req/s | CPU µs/req at moderate load |",
           "|---|---|---|---|---|---|---|"]
    sat: dict[str, tuple[float, float]] = {}
    for t in targets:
        rps, us, util = figures(t.name, "saturation")
        mrps, mus, _ = figures(t.name, "moderate")
        sat[t.name] = (rps, us)
        per_core = 1e6 / us if us > 0 else float("nan")
        out.append(f"| {t.name} | {rps:,.0f} | {util:.0%} | {us:,.0f} | {per_core:,.0f} | "
                   f"{mrps:,.0f} | {mus:,.0f} |")
    if "TDN" in sat:
        rps, us = sat["TDN"]
        per_core = 1e6 / us if us > 0 else 0.0
        out += ["",
                f"TDN/HAProxy: throughput {_ratio(rps, sat.get('HAProxy', (0, 0))[0])}, "
                f"CPU per request {_ratio(us, sat.get('HAProxy', (0, 0))[1])}; "
                f"TDN/LiteLLM: throughput {_ratio(rps, sat.get('LiteLLM', (0, 0))[0])}, "
                f"CPU per request {_ratio(us, sat.get('LiteLLM', (0, 0))[1])}.",
                f"Goals: CPU {us:,.0f} µs/request (≤ 110) — **{'met' if us <= 110 else 'missed'}**"
                f"; throughput {rps:,.0f} req/s measured, {per_core:,.0f} req/s per core "
                f"(≥ 7,000) — **{'met' if max(rps, per_core) >= 7000 else 'missed'}**."]
    out.append("")
    return out


def sse_section(targets: Sequence[Target], budget: Budget, log: Callable[[str], None]
                ) -> list[str]:
    proxies = [t for t in targets if t.name != "direct"]
    body = [chat_body(SSE_MODEL, stream=True, max_tokens=SSE_CHUNKS)]
    conns = 16
    runs: dict[str, list[tuple[WrkResult, float]]] = {}
    for r in range(budget.rounds):
        for t in proxies:
            runs.setdefault(t.name, []).append(_cpu_run(t, body, conns, budget.sse_s))
            settle(targets)
        log(f"sse round {r + 1}/{budget.rounds} done")
    # role chunk + tokens + finish chunk + usage chunk + [DONE]
    events = SSE_CHUNKS + 4
    out = ["### SSE relay cost per chunk",
           "",
           f"Streams of {events} SSE events, one every 2 ms (one HTTP chunk each), {conns} at "
           "a time; CPU of the proxy ÷ events relayed (includes each stream's request overhead "
           f"spread over its {events} events). Stream duration shows whether the relay keeps "
           "pace.",
           "",
           "| path | CPU µs per event | median stream time (ms) | p99 stream time (ms) | "
           "errors |",
           "|---|---|---|---|---|"]
    per: dict[str, float] = {}
    for t in proxies:
        rs = runs[t.name]
        per[t.name] = _median([cpu / (w.requests * events) * 1e6 if w.requests else
                               float("nan") for w, cpu in rs])
        out.append(f"| {t.name} | {per[t.name]:.1f} | {_ms(_median([w.p50_us for w, _ in rs]))}"
                   f" | {_ms(_median([w.p99_us for w, _ in rs]))} | "
                   f"{sum(w.errors for w, _ in rs)} |")
    if "TDN" in per:
        out += ["", f"TDN/HAProxy {_ratio(per['TDN'], per.get('HAProxy', 0))}, "
                    f"TDN/LiteLLM {_ratio(per['TDN'], per.get('LiteLLM', 0))} (CPU per event)."]
    out.append("")
    return out


def failover_section(targets: Sequence[Target], network: Network, budget: Budget,
                     log: Callable[[str], None]) -> list[str]:
    proxies = [t for t in targets if t.name != "direct"]
    healthy_model = next(d.model for d in network.drills if d.name == "healthy")
    conns = 8
    runs: dict[tuple[str, str], list[WrkResult]] = {}
    for r in range(budget.rounds):
        for t in proxies:
            for drill in network.drills:
                # The hang drill streams, so that "first byte" is the first token for every
                # proxy (a non-streamed answer's first byte is its last, and TDN rightly adds a
                # generation allowance to its deadline). The others do not: the reset drill's
                # factory then closes before sending any byte, headers included.
                body = [chat_body(drill.model, stream=drill.name == "hang", max_tokens=8)]
                # A request still unanswered after 2 s counts as a client error (wrk timeout).
                res = run_wrk(t.drill_url(drill.name), body, connections=conns,
                              seconds=budget.drill_s, cpus=LOAD_CPU, timeout_s=2)
                runs.setdefault((t.name, drill.name), []).append(res)
                settle(targets)
            # The hang drill's bound is the deadline plus what the backup takes for the same
            # request, streamed: the healthy route measured the same way.
            res = run_wrk(t.drill_url("healthy"), [chat_body(healthy_model, stream=True,
                                                             max_tokens=8)],
                          connections=conns, seconds=budget.drill_s, cpus=LOAD_CPU, timeout_s=2)
            runs.setdefault((t.name, "healthy-stream"), []).append(res)
            settle(targets)
        log(f"failover round {r + 1}/{budget.rounds} done")
    out = ["### Failover drills (simulated factories)",
           "",
           f"Each route has a primary and one healthy backup (`tdn factory-sim`); c={conns}, "
           f"8-token answers (streamed in the hang drill), {budget.rounds} rounds of "
           f"{budget.drill_s} s. "
           "*refused*: nothing listens on the primary's port; *reset*: the primary closes "
           "the connection before answering (`cut_stream:after_tokens=0`); *hang*: the "
           f"primary accepts and never answers (`hang`), first-byte deadline "
           f"{DEADLINE_S * 1000:.0f} ms (HAProxy: "
           "`timeout server`, LiteLLM: the deployment's `timeout`). Added p99 = p99 of the "
           "drill minus p99 of the healthy route, same proxy, same round. Goals for TDN: "
           "refused/reset add ≤ 5 ms at p99 with zero client errors; hang: every request "
           "within deadline + the backup's own time (the slowest request of the healthy "
           "route, streamed like the hang drill's, same proxy), zero client errors.",
           "",
           "| path | healthy p99 (ms) | refused: added p99 / errors | reset: added p99 / errors "
           "| hang: max (ms) / bound (ms) / errors |",
           "|---|---|---|---|---|"]
    verdicts: list[str] = []
    for t in proxies:
        healthy = runs[(t.name, "healthy")]
        h99 = _median([x.p99_us for x in healthy])
        cells = [f"{_ms(h99)}"]
        for drill in ("refused", "reset"):
            rs = runs[(t.name, drill)]
            added = _median([x.p99_us - y.p99_us for x, y in zip(rs, healthy, strict=True)])
            errors = sum(x.errors for x in rs)
            cells.append(f"{_ms(added)} / {errors}")
            if t.name == "TDN":
                ok = added <= 5000 and errors == 0
                verdicts.append(f"{drill}: added p99 {_ms(added)} ms, {errors} errors — "
                                f"**{'met' if ok else 'missed'}**")
        hang = runs[(t.name, "hang")]
        worst = max(x.max_us for x in hang)
        bound = DEADLINE_S * 1e6 + max(x.max_us for x in runs[(t.name, "healthy-stream")])
        errors = sum(x.errors for x in hang)
        served = sum(x.requests for x in hang)
        cells.append(f"{_ms(worst)} / {_ms(bound)} / {errors} ({served} served)")
        if t.name == "TDN":
            ok = worst <= bound and errors == 0 and served > 0
            verdicts.append(f"hang: slowest {_ms(worst)} ms vs bound {_ms(bound)} ms, "
                            f"{errors} errors — **{'met' if ok else 'missed'}**")
        out.append(f"| {t.name} | " + " | ".join(cells) + " |")
    out += ["", "TDN: " + "; ".join(verdicts) + ".", ""]
    return out


def soak_section(targets: Sequence[Target], budget: Budget, log: Callable[[str], None]
                 ) -> list[str]:
    proxies = [t for t in targets if t.name != "direct" and t.proc is not None]
    bodies = [chat_body("bench-d20"), chat_body("bench-d20"), chat_body("bench-d20"),
              chat_body(SSE_MODEL, stream=True, max_tokens=20)]
    samples: dict[str, list[tuple[float, int]]] = {t.name: [] for t in proxies}
    results: dict[str, WrkResult] = {}
    failures: dict[str, str] = {}

    def load(t: Target) -> None:
        try:
            results[t.name] = run_wrk(t.url(), bodies, connections=8, seconds=budget.soak_s,
                                      cpus=LOAD_CPU)
        except Exception as exc:  # reported in the table, the other proxies' soak goes on
            failures[t.name] = repr(exc)

    threads = [threading.Thread(target=load, args=(t,), daemon=True) for t in proxies]
    started = time.monotonic()
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads):
        now = time.monotonic() - started
        for t in proxies:
            assert t.proc is not None
            samples[t.name].append((now, t.proc.rss()))
        time.sleep(budget.soak_sample_s)
    for th in threads:
        th.join()
    log("soak done")
    minutes = budget.soak_s / 60
    out = [f"### Memory over a {minutes:g}-minute soak",
           "",
           f"All proxies at once, each with its own wrk (c=8, mixed: 3 of 4 requests "
           "non-streaming with a 20 ms upstream, 1 of 4 a 20-event stream). RSS of the "
           f"process tree sampled every {budget.soak_sample_s:g} s; the first 20% of the run is "
           "warm-up. Slope by least squares over the rest.",
           "",
           "| path | requests | errors | RSS after warm-up (MiB) | RSS at end (MiB) | "
           "max (MiB) | slope (MiB/min) |",
           "|---|---|---|---|---|---|---|"]
    for t in proxies:
        points = samples[t.name]
        steady = [(s, b / 2**20) for s, b in points if s >= budget.soak_s * 0.2] or \
            [(s, b / 2**20) for s, b in points]
        slope = _slope(steady) * 60
        res = results.get(t.name)
        served = f"{res.requests:,}" if res else f"failed: {failures.get(t.name, '?')}"
        errors = f"{res.errors}" if res else "—"
        out.append(f"| {t.name} | {served} | {errors} | {steady[0][1]:.1f} | "
                   f"{steady[-1][1]:.1f} | {max(b for _, b in steady):.1f} | {slope:+.3f} |")
    return [*out, ""]


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "?"


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points; 0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    var = sum((x - mx) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / var


# --- the run ----------------------------------------------------------------------------------


def _start_proxies(targets: list[Target], backends: Backends, work: Path,
                   notes: list[str]) -> None:
    """Start TDN, HAProxy and LiteLLM on the proxy core, appending each to ``targets`` as it
    starts (so that a failure still stops those already running); a missing peer is a note."""
    targets.append(start_tdn(backends.network, work, PROXY_CPU))
    if haproxy_available():
        targets.append(start_haproxy(backends.network, work, PROXY_CPU))
    else:
        notes.append("HAProxy not installed (Debian: apt-get install -y haproxy): "
                     "its column is missing.")
    try:
        targets.append(start_litellm(backends.network, work, PROXY_CPU, notes))
    except BenchSetupError as exc:
        notes.append(f"LiteLLM did not start, its column is missing: {exc}")


def run(quick: bool) -> str:
    if not wrk_available():
        raise BenchSetupError("wrk is not installed (Debian: apt-get install -y wrk)")
    budget = QUICK if quick else FULL
    notes: list[str] = []

    def log(message: str) -> None:
        print(f"  dataplane: {message}", flush=True)

    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="tdn-bench-dp-") as tmp:
        work = Path(tmp)
        backends = Backends(work)
        targets: list[Target] = [direct(backends.network)]
        try:
            _start_proxies(targets, backends, work, notes)
            log("started " + ", ".join(t.name for t in targets))
            body: list[str] = []
            body += latency_section(targets, budget, log)
            body += cpu_section(targets, backends, budget, log)
            body += sse_section(targets, budget, log)
            body += workers_section(backends.network, backends.upstream, work,
                                    rounds=budget.workers_rounds, seconds=budget.cpu_s, log=log)
            body += failover_section(targets, backends.network, budget, log)
            body += soak_section(targets, budget, log)
        finally:
            stop_all(targets)
            backends.stop()
    versions = [f"HAProxy {haproxy_version()}" if haproxy_available() else "",
                f"LiteLLM {litellm_version()}"]
    head = ["Command: `python -m bench dataplane" + (" --quick`" if quick else "`") +
            f" ({'about 3 minutes' if quick else 'about 20 minutes, 10 of them the soak'}). "
            f"Peers: {', '.join(v for v in versions if v)}; wrk 4.1. The sidecar is a real "
            "`tdn proxy` process routing from a static policy in its `--state-dir` with no "
            "control plane; its access log goes to /dev/null. HAProxy runs one thread with "
            "`option http-no-delay`, no logging; LiteLLM runs `litellm --config` with one "
            "worker and no key check (its cheapest setup).", ""]
    head += [f"Machine load average (1 min) at the start {load_before} and at the end "
             f"{_loadavg()}, on {cpu_count()} cores: other work shared the machine, which is why "
             "everything is compared side by side within rounds.", ""]
    head += [f"Note: {n}" for n in notes]
    text = "\n".join([*head, "", *body])
    # The runner records the section; printing it too means the figures are seen at once.
    print(text, flush=True)
    return text


# --- one section alone ------------------------------------------------------------------------

SECTIONS = ("workers", "failover")
FAILOVER_HEADING = "### Failover drills (simulated factories)"


def run_section(section: str, quick: bool) -> list[str]:
    """The Markdown lines of one section, measured on its own (backends started for it)."""
    if not wrk_available():
        raise BenchSetupError("wrk is not installed (Debian: apt-get install -y wrk)")
    budget = QUICK if quick else FULL

    def log(message: str) -> None:
        print(f"  dataplane: {message}", flush=True)

    assert section in SECTIONS
    with tempfile.TemporaryDirectory(prefix="tdn-bench-dp-") as tmp:
        work = Path(tmp)
        backends = Backends(work)
        targets: list[Target] = []
        try:
            if section == "workers":
                return workers_section(backends.network, backends.upstream, work,
                                       rounds=budget.workers_rounds, seconds=budget.cpu_s,
                                       log=log)
            notes: list[str] = []
            _start_proxies(targets, backends, work, notes)
            for note in notes:
                log(note)
            return failover_section(targets, backends.network, budget, log)
        finally:
            stop_all(targets)
            backends.stop()


def splice_subsection(doc: str, heading: str, lines: Sequence[str]) -> str:
    """``doc`` with the data-plane subsection under ``heading`` replaced by ``lines``.

    The subsection runs to the next ``### `` heading or the end of the data-plane block; the
    rest of the file, other subsections' figures included, is left as it was.
    """
    block = re.search(rf"<!-- bench:{NAME} -->\n.*?<!-- /bench:{NAME} -->", doc, re.S)
    if block is None:
        raise BenchSetupError(f"no {NAME} section in the file: run `python -m bench {NAME}` "
                              "once first")
    text = block.group(0)
    start = text.find(heading + "\n")
    if start < 0:
        raise BenchSetupError(f"no subsection {heading!r} in the {NAME} section")
    nxt = text.find("\n### ", start + len(heading))
    end = nxt + 1 if nxt >= 0 else text.rindex(f"<!-- /bench:{NAME} -->")
    new = "\n".join(lines).rstrip("\n") + "\n\n"
    return doc[:block.start()] + text[:start] + new + text[end:] + doc[block.end():]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.dataplane",
        description="Run one section of the data-plane benchmark and replace just that "
                    "subsection in docs/benchmarks.md (the whole benchmark: "
                    "python -m bench dataplane).")
    parser.add_argument("--only", choices=SECTIONS, required=True, help="the section to run")
    parser.add_argument("--quick", action="store_true", help="one short round, a smoke check")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    # The runner's own module: where the file is and how machines are described.
    from bench.__main__ import DOC, machine

    try:
        lines = run_section(args.only, args.quick)
    except BenchSetupError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    command = f"python -m bench.dataplane --only {args.only}" + (" --quick" if args.quick
                                                                  else "")
    dated = [*lines[:2], f"Measured {stamp} on {machine()} by `{command}`"
             f"{' (quick run)' if args.quick else ''}, on its own; the rest of this section "
             "comes from the run dated above.", "", *lines[2:]]
    print("\n".join(dated), flush=True)
    if not args.no_write:
        heading = WORKERS_HEADING if args.only == "workers" else FAILOVER_HEADING
        DOC.write_text(splice_subsection(DOC.read_text(), heading, dated))
        print(f"bench: wrote the {args.only} subsection into {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
