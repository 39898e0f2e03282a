"""The ``--workers`` section of the data-plane benchmark: which configurations it compares, how it
sets CPU budgets (against a fake cgroup tree) and how it replaces only its own subsection of
docs/benchmarks.md. No process is started and no timing is asserted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.dataplane import splice_subsection
from bench.dataplane_cgroups import CpuGroup, Throttling, budgets_unavailable, parse_cpu_stat
from bench.dataplane_load import WrkResult, median, ratio
from bench.dataplane_procs import BenchSetupError, involuntary_switches, rw_syscalls
from bench.dataplane_workers import (
    HEADING,
    Config,
    Sample,
    _budgeted_table,
    _unpinned_table,
    budgeted_configs,
)


def _fake_cpu_root(tmp_path: Path) -> Path:
    root = tmp_path / "cpu"
    root.mkdir()
    for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares", "cgroup.procs"):
        (root / name).write_text("")
    return root


def test_two_cores_compare_one_and_two_budgeted_workers_and_one_worker_with_both_budgets(
) -> None:
    assert budgeted_configs(2, 0.4) == [Config(1, 0.4), Config(2, 0.4), Config(1, 0.8)]


def test_budgets_leave_half_the_machine_to_the_load_side_and_one_process_at_most_a_core(
) -> None:
    # Four workers at 0.4 is 1.6 of 4 cores: measured; one process cannot use 1.6 cores.
    assert budgeted_configs(4, 0.4) == [Config(1, 0.4), Config(2, 0.4), Config(4, 0.4),
                                        Config(1, 0.8)]
    # Two workers at 0.6 would take more than half of two cores: only one worker is budgeted.
    assert budgeted_configs(2, 0.6) == [Config(1, 0.6)]


def test_a_budget_group_caps_its_processes_and_gives_them_a_high_weight(tmp_path: Path) -> None:
    root = _fake_cpu_root(tmp_path)
    group = CpuGroup("w0", 0.4, root=root, period_us=20_000, shares=8192)
    assert (group.path / "cpu.cfs_period_us").read_text() == "20000"
    assert (group.path / "cpu.cfs_quota_us").read_text() == "8000"
    assert (group.path / "cpu.shares").read_text() == "8192"
    uncapped = CpuGroup("load", None, root=root)
    assert (uncapped.path / "cpu.cfs_quota_us").read_text() == "-1"


def test_budgets_are_reported_unavailable_without_a_cgroup_v1_cpu_controller(
        tmp_path: Path) -> None:
    reason = budgets_unavailable(tmp_path / "absent")
    assert reason is not None and "no cgroup-v1 cpu controller" in reason
    assert budgets_unavailable(_fake_cpu_root(tmp_path)) is None


def test_throttling_is_the_share_of_periods_over_the_run() -> None:
    before = parse_cpu_stat("nr_periods 100\nnr_throttled 40\nthrottled_time 2000000000\n")
    after = parse_cpu_stat("nr_periods 300\nnr_throttled 230\nthrottled_time 5000000000\n"
                           "nr_bursts 0\n")
    run = after - before
    assert run == Throttling(periods=200, throttled=190, throttled_s=3.0)
    assert run.share == pytest.approx(0.95)
    assert Throttling(0, 0, 0.0).share != Throttling(0, 0, 0.0).share  # nan: no period ran


def test_preemptions_and_read_write_calls_are_read_for_a_live_process() -> None:
    assert involuntary_switches(os.getpid()) >= 0
    assert rw_syscalls(os.getpid()) > 0  # this process has read files
    assert involuntary_switches(2**22 + 1) == 0 and rw_syscalls(2**22 + 1) == 0


def test_ratios_and_medians_skip_what_is_missing() -> None:
    assert median([1.0, float("nan"), 3.0]) == 2.0
    assert ratio(6.0, 3.0) == "2.00x"
    assert ratio(1.0, 0.0) == "—"


DOC = f"""# Benchmarks

<!-- bench:dataplane -->
## Data plane

Measured yesterday.

### CPU per request

| a | b |

{HEADING}

old workers table

### Failover drills

kept
<!-- /bench:dataplane -->

<!-- bench:routing -->
{HEADING}
not the data plane's
<!-- /bench:routing -->
"""


def test_only_the_workers_subsection_of_the_data_plane_section_is_replaced() -> None:
    new = splice_subsection(DOC, HEADING, [HEADING, "", "new workers table", ""])
    assert "old workers table" not in new and "new workers table" in new
    assert new.replace("new workers table", "old workers table") == DOC
    assert "not the data plane's" in new


def test_a_subsection_at_the_end_of_the_section_is_replaced_up_to_the_end_marker() -> None:
    doc = DOC.replace("### Failover drills\n\nkept\n", "")
    new = splice_subsection(doc, HEADING, [HEADING, "", "new"])
    assert new.replace(f"{HEADING}\n\nnew\n\n", f"{HEADING}\n\nold workers table\n\n") == doc


def test_splicing_into_a_file_without_the_subsection_is_refused() -> None:
    with pytest.raises(BenchSetupError):
        splice_subsection("# Benchmarks\n", HEADING, [HEADING])
    with pytest.raises(BenchSetupError):
        splice_subsection(DOC.replace(HEADING, "### Something else", 1), HEADING, [HEADING])


def _sample(rps: float, cores: float, *, preemptions: int = 0, throttled: float = 1.0) -> Sample:
    requests = int(rps * 4)
    res = WrkResult(requests=requests, duration_s=4.0, errors=0, timeouts=0, status_errors=0,
                    p50_us=1.0, p90_us=1.0, p99_us=1.0, max_us=1.0, mean_us=1.0)
    return Sample(result=res, cpu_s=cores * 4.0, busiest=float("nan"),
                  preemptions=preemptions, rw_calls=requests * 4, throttled=throttled)


def test_two_budgeted_workers_doing_twice_the_work_of_one_are_reported_as_scaling() -> None:
    # Round 2 is slow for every configuration alike: ratios are taken within the round.
    samples = {
        Config(1, 0.4): [_sample(3000, 0.4), _sample(1500, 0.4), _sample(3100, 0.4)],
        Config(2, 0.4): [_sample(6000, 0.8), _sample(3000, 0.8), _sample(6200, 0.8)],
        Config(1, 0.8): [_sample(7000, 0.8), _sample(3500, 0.8), _sample(7200, 0.8)],
    }
    text = "\n".join(_budgeted_table(samples, list(samples), rounds=3, seconds=4))
    assert "serve **2.00x** the requests of one" in text and "**1.00x** its requests" in text
    assert "**scales**" in text and "Caution" not in text
    assert "the budget per process" in text  # the control worker is cheaper per request


def test_budgeted_workers_that_lose_per_core_or_were_not_held_by_their_budget_are_flagged(
) -> None:
    samples = {
        Config(1, 0.4): [_sample(3000, 0.4)],
        Config(2, 0.4): [_sample(4500, 0.8, throttled=0.5)],
    }
    text = "\n".join(_budgeted_table(samples, list(samples), rounds=1, seconds=4))
    assert "**1.50x**" in text and "**does not scale**" in text
    assert "Caution" in text and "2 worker(s) at 0.40 core (50%)" in text


def test_unpinned_loss_with_the_same_calls_per_request_is_put_down_to_sharing_cores() -> None:
    samples = {Config(1): [_sample(8000, 0.8, preemptions=100)],
               Config(2): [_sample(9000, 1.1, preemptions=30000)]}
    text = "\n".join(_unpinned_table(samples, list(samples), cpus=2))
    assert "2 workers got 0.82x the requests per core of one" in text
    assert "no extra work per request" in text
