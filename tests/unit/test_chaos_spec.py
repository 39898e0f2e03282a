"""Drill files: the built-in suite parses, every mistake is refused with file, line and key, and
the CI variant scales time but never the faults themselves."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tdn.chaos import cli
from tdn.chaos.spec import FAULTS, parse_drill, shortened
from tdn.chaos.suite import BUILTIN_ORDER, builtin_names, find_drill, load_builtin
from tdn.config import ConfigError

MINIMAL = """\
name: tiny
load: {duration_s: 10, rate_rps: 2}
targets:
  victim: {factory: primary}
timeline:
  - {at: 2, for: 3, target: victim, fault: blackhole}
"""


def _refused(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_drill(textwrap.dedent(text), "drill.yaml")
    return err.value


def test_every_issue_drill_is_built_in_and_parses() -> None:
    names = builtin_names()
    assert names == list(BUILTIN_ORDER)
    for name in names:
        spec = load_builtin(name)
        assert spec.name == name
        assert spec.description
        assert spec.timeline, name
        # What TDN must never do, in every drill.
        assert spec.expect.max_truncated_successes == 0


def test_ci_variants_of_the_built_in_drills_each_fit_in_thirty_seconds() -> None:
    for name in builtin_names():
        short = shortened(load_builtin(name))
        assert short.load.duration_s <= 30, name
        for event in short.timeline:
            last = event.occurrences()[-1]
            assert last[0] + (last[1] or 0) <= short.load.duration_s + 1e-9, name


def test_shortening_scales_times_but_not_fault_parameters() -> None:
    spec = parse_drill(MINIMAL.replace("duration_s: 10", "duration_s: 40")
                       .replace("fault: blackhole", "fault: latency, latency_ms: 700"),
                       "d.yaml")
    spec = shortened(spec)
    assert spec.load.duration_s == 24.0
    (event,) = spec.timeline
    assert event.at == pytest.approx(1.2)
    assert event.duration == pytest.approx(1.8)
    assert event.param("latency_ms") == 700


def test_fault_parameters_default_and_are_typed() -> None:
    (event,) = parse_drill(MINIMAL.replace("fault: blackhole", "fault: cut_stream, bytes: 900"),
                           "d.yaml").timeline
    assert event.param("bytes") == 900
    assert event.param("stream") == "downstream"
    assert set(FAULTS) >= {"latency", "blackhole", "reset_peer", "cut_stream", "slicer",
                           "bandwidth", "refuse", "kill", "sim", "bad_policy"}


def test_unknown_key_is_refused_with_its_line() -> None:
    err = _refused(MINIMAL + "expect: {max_error_rate: 0, max_eror_rate_after: 0}\n")
    assert err.line == 7
    assert err.key == "expect.max_eror_rate_after"
    assert "unknown key" in err.reason


def test_unknown_fault_and_unknown_target_are_refused() -> None:
    err = _refused(MINIMAL.replace("fault: blackhole", "fault: meteor"))
    assert err.key == "timeline[0].fault"
    assert "meteor" in err.reason and "blackhole" in err.reason
    err = _refused(MINIMAL.replace("target: victim", "target: vitcim"))
    assert err.key == "timeline[0].target" and "victim" in err.reason


def test_a_fault_must_suit_its_target() -> None:
    err = _refused(MINIMAL.replace("{factory: primary}", "{process: sim/edge-fra-1}"))
    assert err.key == "timeline[0].target"
    assert "links" in err.reason


def test_simulator_faults_are_checked_by_the_simulator_s_own_rules() -> None:
    err = _refused(MINIMAL.replace("fault: blackhole", "fault: sim, mode: stall_first_token, "
                                                       "after_tokens: 3"))
    assert "does not take after_tokens" in err.reason
    spec = parse_drill(MINIMAL.replace("fault: blackhole",
                                       "fault: sim, mode: error, status: 503"), "d.yaml")
    assert dict(spec.timeline[0].params) == {"mode": "error", "status": 503}


def test_a_fault_may_not_outlast_the_load() -> None:
    err = _refused(MINIMAL.replace("for: 3", "for: 9"))
    assert err.key == "timeline[0].for"
    assert "after the load" in err.reason


def test_repeats_need_a_window_shorter_than_their_period() -> None:
    err = _refused(MINIMAL.replace("for: 3,", "for: 3, repeat: {every: 2, count: 2},"))
    assert err.key == "timeline[0].repeat"
    spec = parse_drill(MINIMAL.replace("for: 3,", "for: 1, repeat: {every: 2, count: 3},"),
                       "d.yaml")
    assert spec.timeline[0].occurrences() == [(2, 1), (4, 1), (6, 1)]


def test_replicas_need_etcd() -> None:
    err = _refused(MINIMAL + "network: {controlplanes: 2}\n")
    assert err.key == "network.controlplanes"


def test_a_replay_takes_no_rate() -> None:
    err = _refused(MINIMAL.replace("rate_rps: 2", "rate_rps: 2, replay: {trace: azure-conv}"))
    assert err.key == "load.rate_rps"


def test_find_drill_takes_a_name_or_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    assert find_drill(str(path)).name == "tiny"
    assert find_drill("factory-crash").name == "factory-crash"
    with pytest.raises(KeyError, match="factory-crash"):
        find_drill("no-such-drill")


def test_validate_command_names_file_line_and_key(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(MINIMAL)
    bad.write_text(MINIMAL.replace("at: 2", "at: -2"))
    assert cli.main(["validate", str(good)]) == 0
    assert cli.main(["validate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:6: timeline[0].at:" in err


def test_run_without_drills_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run"]) == 2
    assert "--all" in capsys.readouterr().err
    assert cli.main(["run", "nope"]) == 2


def test_list_names_every_built_in_drill(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in BUILTIN_ORDER:
        assert name in out


def test_the_example_replay_drill_parses_and_finds_the_shared_azure_trace() -> None:
    from support import REPO, SHARED, missing

    from tdn.chaos.spec import load_drill
    from tdn.chaos.trace import find_trace, read_trace, replay_window

    spec = load_drill(REPO / "drills" / "azure-replay-crash.yaml")
    assert spec.load.replay is not None and spec.load.replay.trace == "azure-conv"
    if not (SHARED / "data" / "azure-llm-2023" / "conv.csv").exists():
        message = "the shared Azure trace is not beside this checkout"
        missing(message)
    trace = read_trace(find_trace("azure-conv"))
    assert len(trace) == 19366
    window = replay_window(trace, spec.load.replay, spec.load.duration_s)
    assert window and all(0 <= r.offset_s < spec.load.duration_s for r in window)
    assert max(r.output_tokens for r in window) <= 64


def test_show_prints_a_built_in_drill(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["show", "region-loss"]) == 0
    assert "name: region-loss" in capsys.readouterr().out
    assert cli.main(["show", "nope"]) == 2


def test_bad_policy_via_policy_apply_takes_a_file_or_inline_text_but_not_both() -> None:
    base = """\
        name: apply
        load: {model: m, rate_rps: 1, duration_s: 10}
        targets:
          cp: {controlplane: leader}
        timeline:
          - at: 2
            for: 3
            target: cp
            fault: bad_policy
            via: policy_apply
        """
    inline = parse_drill(textwrap.dedent(base) + "    policy: 'kind: Policy'\n", "d.yaml")
    assert inline.timeline[0].param("policy") == "kind: Policy"
    from_file = parse_drill(textwrap.dedent(base) + "    file: bad.yaml\n", "d.yaml")
    assert from_file.timeline[0].param("file") == "bad.yaml"
    neither = _refused(base)
    assert "exactly one of file and policy" in str(neither)
    both = _refused(textwrap.dedent(base) + "    file: bad.yaml\n    policy: x\n")
    assert "exactly one of file and policy" in str(both)
