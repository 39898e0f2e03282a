"""A drill's reports: the picture is valid SVG that shows what happened (dots, red crosses, the
shaded fault window), the JSON and Markdown carry the verdict, and the suite summary says which
check failed."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from tdn.chaos import report
from tdn.chaos.load import RequestRecord
from tdn.chaos.measure import analyse
from tdn.chaos.observe import parse_metering
from tdn.chaos.runner import DrillResult
from tdn.chaos.spec import parse_drill
from tdn.chaos.svg import ERROR_COLOUR, TRUNCATED_COLOUR, WINDOW_COLOUR, render
from tdn.chaos.timeline import Window
from tdn.chaos.trace import find_trace, read_trace, replay_window

SVG = "{http://www.w3.org/2000/svg}"

SPEC = parse_drill("""\
name: crash
description: The primary dies.
load: {duration_s: 30}
targets:
  victim: {factory: primary}
timeline:
  - {at: 10, for: 10, target: victim, fault: kill, label: primary killed}
expect: {max_error_rate: 0, min_requests: 1}
""", "crash.yaml")


def _records() -> list[RequestRecord]:
    out = []
    for i in range(30):
        out.append(RequestRecord(id=i, t_start=i * 1.0, streamed=True, max_tokens=8,
                                 prompt_words=5, status=200, kind="ok", factory="edge-fra-1",
                                 attempts=2 if i == 11 else 1, ttft_s=0.05, total_s=0.3,
                                 complete=True, tokens=8, usage_completion=8))
    out[12].kind, out[12].ttft_s, out[12].detail = "http_5xx", None, "retry budget exhausted"
    out[13].kind, out[13].complete = "truncated_success", False
    return out


def _result() -> DrillResult:
    windows = [Window(0, 0, "primary killed", "kill", "victim", ("center-se-1",), 10.0, 20.0)]
    records = _records()
    analysis = analyse(SPEC, records, windows, [], sidecars=["sc"], drill_end=30.0)
    return DrillResult(spec=SPEC, short=True, network={"description": "test"},
                       started_at=0.0, windows=windows, records=records, analysis=analysis,
                       drill_end=30.0)


def test_the_picture_shows_dots_errors_truncations_and_the_fault_window() -> None:
    result = _result()
    svg = render("crash", "FAIL", result.records, result.windows, drill_end=30.0)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("fill") == WINDOW_COLOUR]
    shaded = [r for r in rects if r.get("fill-opacity")]
    assert len(shaded) == 1
    x, width = float(shaded[0].get("x", 0)), float(shaded[0].get("width", 0))
    # 10-20 s of a 30 s plot, 64 px left margin, 872 px wide.
    assert (round(x), round(width)) == (64 + round(872 / 3), round(872 / 3))
    assert len(list(root.iter(f"{SVG}circle"))) == 28
    crosses = [p for p in root.iter(f"{SVG}path") if p.get("stroke") == ERROR_COLOUR]
    assert len(crosses) == 1
    assert "retry budget exhausted" in "".join(crosses[0].itertext())
    assert [p for p in root.iter(f"{SVG}path") if p.get("fill") == TRUNCATED_COLOUR]
    assert "primary killed" in svg


def test_the_picture_is_deterministic() -> None:
    result = _result()
    first = render("crash", "FAIL", result.records, result.windows, drill_end=30.0)
    assert first == render("crash", "FAIL", result.records, result.windows, drill_end=30.0)


def test_reports_carry_the_verdict_and_the_failing_checks(tmp_path: Path) -> None:
    result = _result()
    assert not result.passed
    paths = report.write(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["verdict"] == "FAIL" and data["passed"] is False
    assert len(data["records"]) == 30
    failing = {c["name"] for c in data["analysis"]["checks"] if not c["passed"]}
    assert failing == {"error rate", "no truncated successes"}
    md = paths["md"].read_text()
    assert md.startswith("# Drill `crash`: FAIL")
    assert "![timeline](crash.svg)" in md
    assert "❌ | error rate" in md
    ET.fromstring(paths["svg"].read_text())
    summary = report.summary_markdown([result])
    assert "| crash | FAIL | 30 | 1 | 1 |" in summary
    assert "error rate" in summary


def test_a_drill_that_could_not_run_is_an_error_not_a_pass() -> None:
    result = DrillResult(spec=SPEC, short=False, network={}, started_at=0.0,
                         error="TargetError: no factory")
    assert not result.passed
    assert report.verdict(result) == "ERROR"
    assert "could not run" in report.to_markdown(result)


def test_metering_is_read_from_the_sidecar_token_counters() -> None:
    text = """\
# HELP tdn_sidecar_tokens_total Tokens metered.
# TYPE tdn_sidecar_tokens_total counter
tdn_sidecar_tokens_total{site="s",factory="a",kind="prompt"} 120.0
tdn_sidecar_tokens_total{site="s",factory="a",kind="completion"} 30.0
tdn_sidecar_tokens_total{site="s",factory="b",kind="completion"} 12.0
# TYPE tdn_sidecar_requests_total counter
tdn_sidecar_requests_total{site="s"} 5.0
"""
    metered = parse_metering(text)
    assert metered.exposed
    assert (metered.prompt, metered.completion) == (120.0, 42.0)
    assert not parse_metering("# TYPE tdn_sidecar_requests_total counter\n"
                              "tdn_sidecar_requests_total 1\n").exposed


def test_a_trace_replays_its_window_compressed_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                    "2023-11-16 18:15:46.6805900,374,44\r\n"
                    "2023-11-16 18:15:50.9951690,396,109\r\n"
                    "2023-11-16 18:15:51.2224670,5000,2\r\n"
                    "2023-11-16 18:16:51.0000000,1,1")
    trace = read_trace(find_trace(str(path)))
    assert [round(r.offset_s, 4) for r in trace[:3]] == [0.0, 4.3146, 4.5419]
    from tdn.chaos.spec import ReplaySpec
    window = replay_window(trace, ReplaySpec(trace="x", speedup=2.0, start_s=1.0,
                                             max_tokens_cap=64, max_prompt_words=1000), 5.0)
    assert [(round(r.offset_s, 4), r.prompt_tokens, r.output_tokens) for r in window] == [
        (1.6573, 396, 64), (1.7709, 1000, 2)]
