"""Fixed CPU budgets for the ``--workers`` benchmark: cgroup-v1 ``cpu`` groups and core pinning.

On a machine with few cores, the sidecar's workers, wrk and the upstream all share them, so
"more workers" also means "more contention" and the throughput measures the machine as much as
the sidecar. Giving each worker a fixed budget instead (a CFS quota: at most ``cores`` of CPU per
period, and a high weight so that it also gets that much whenever it is runnable) makes N workers
comparable to one: with no per-worker loss, N budgets serve N times the requests.

Only the cgroup-v1 ``cpu`` controller is handled (``cpu.cfs_quota_us``, ``cpu.shares``,
``cpu.stat``), and only as root; :func:`budgets_unavailable` says why not otherwise, and the
benchmark then measures unbudgeted only.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
GROUP_PREFIX = "tdn-bench"
# Short periods keep a throttled worker's pauses short (at most period minus quota), so its
# connections stall briefly and often rather than for tens of milliseconds at a time.
PERIOD_US = 20_000
# Eight times the default weight of 1024: a budgeted group gets its quota whenever it is
# runnable, even with a few other busy processes on its core.
HIGH_SHARES = 8192


def budgets_unavailable(root: Path = CPU_ROOT) -> str | None:
    """Why CPU budgets cannot be set on this machine; None when they can."""
    if not (root / "cpu.cfs_quota_us").exists():
        return f"no cgroup-v1 cpu controller at {root}"
    probe = root / f"{GROUP_PREFIX}-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create a cgroup under {root} ({exc.strerror or exc}; needs root)"
    return None


@dataclass(frozen=True, slots=True)
class Throttling:
    """A group's ``cpu.stat`` counters: CFS periods, periods throttled, time throttled."""

    periods: int
    throttled: int
    throttled_s: float

    def __sub__(self, before: Throttling) -> Throttling:
        return Throttling(self.periods - before.periods, self.throttled - before.throttled,
                          self.throttled_s - before.throttled_s)

    @property
    def share(self) -> float:
        """Share of the periods in which the group used up its quota (nan: no period ran)."""
        return self.throttled / self.periods if self.periods else float("nan")


def parse_cpu_stat(text: str) -> Throttling:
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return Throttling(values.get("nr_periods", 0), values.get("nr_throttled", 0),
                      values.get("throttled_time", 0) / 1e9)


class CpuGroup:
    """One cgroup under the cpu controller: a quota of ``cores`` (None: no cap) and a weight.

    Processes added are moved whole (every thread, and threads they start later); :meth:`close`
    removes the group once they have ended.
    """

    def __init__(self, name: str, cores: float | None, *, shares: int = HIGH_SHARES,
                 period_us: int = PERIOD_US, root: Path = CPU_ROOT) -> None:
        self.root = root
        self.path = root / f"{GROUP_PREFIX}-{os.getpid()}-{name}"
        self.cores = cores
        self.path.mkdir(exist_ok=True)
        (self.path / "cpu.cfs_period_us").write_text(str(period_us))
        quota = -1 if cores is None else max(1000, round(cores * period_us))
        (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        (self.path / "cpu.shares").write_text(str(shares))

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttling(self) -> Throttling:
        return parse_cpu_stat((self.path / "cpu.stat").read_text())

    def close(self) -> None:
        """Remove the group, once its processes have ended."""
        try:
            self.path.rmdir()
        except OSError as exc:
            # Not fatal to the benchmark, but a stray group must be seen to be removed.
            print(f"  dataplane: could not remove {self.path}: {exc}", flush=True)


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus``; threads it starts later inherit the affinity."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(tid), cpus)


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))
