"""``tdn drill run`` exits non-zero when a drill's expectations fail (so it can gate a deploy),
and prints which check failed; the suite itself is faked here (the real one runs in
tests/integration/test_drill_suite.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tdn.chaos import cli
from tdn.chaos.measure import Analysis, Check
from tdn.chaos.runner import DrillResult
from tdn.chaos.spec import DrillSpec
from tdn.chaos.suite import SuiteOptions


def _result(spec: DrillSpec, passed: bool) -> DrillResult:
    check = Check("error rate", passed, "<= 0.00%", "0.00%" if passed else "3.10% (9 of 290)")
    analysis = Analysis(requests=290, errors=0 if passed else 9, excused=0, continuation=False,
                        truncated=0, error_rate=0.0, errors_by_kind={}, served_by={},
                        phases=(), events=(), usage=None, checks=(check,))
    return DrillResult(spec=spec, short=True, network={}, started_at=0.0, analysis=analysis)


def _fake_suite(passed: dict[str, bool], seen: list[SuiteOptions]) -> Callable[..., object]:
    async def run_suite(specs: Sequence[DrillSpec], options: SuiteOptions,
                        on_result: Callable[[DrillResult, dict[str, Path]], None],
                        on_progress: Callable[[str], None]) -> list[DrillResult]:
        seen.append(options)
        results = []
        for spec in specs:
            result = _result(spec, passed[spec.name])
            on_result(result, {"md": options.out_dir / f"{spec.name}.md"})
            results.append(result)
        return results
    return run_suite


def test_a_failed_expectation_makes_the_exit_status_non_zero(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[SuiteOptions] = []
    monkeypatch.setattr(cli, "_run_suite", _fake_suite(
        {"factory-crash": True, "factory-blackhole": False}, seen))
    code = cli.main(["run", "factory-crash", "factory-blackhole", "--short",
                     "--out", str(tmp_path)])
    assert code == 1
    out = capsys.readouterr().out
    assert "PASS   factory-crash" in out
    assert "FAIL   factory-blackhole" in out
    assert "✗ error rate: expected <= 0.00%, saw 3.10% (9 of 290)" in out
    assert seen[0].short and seen[0].out_dir == tmp_path.resolve()


def test_every_expectation_met_exits_zero(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    seen: list[SuiteOptions] = []
    monkeypatch.setattr(cli, "_run_suite", _fake_suite({"region-loss": True}, seen))
    assert cli.main(["run", "region-loss", "--out", str(tmp_path)]) == 0


def test_all_runs_every_built_in_drill(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tdn.chaos.suite import builtin_names
    seen: list[SuiteOptions] = []
    monkeypatch.setattr(cli, "_run_suite", _fake_suite(dict.fromkeys(builtin_names(), True),
                                                       seen))
    assert cli.main(["run", "--all", "--out", str(tmp_path)]) == 0


def test_attach_needs_the_toxiproxy_in_front_of_the_links(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["run", "factory-crash", "--attach", str(tmp_path)]) == 2
    assert "--toxiproxy" in capsys.readouterr().err
