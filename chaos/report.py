"""A drill's report in three forms: JSON (everything, for machines), Markdown (for people and
pull requests) and the SVG picture; and the one-table summary of a suite."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tdn.chaos.measure import Analysis, EventResult, LatencyStats
from tdn.chaos.runner import DrillResult
from tdn.chaos.svg import render


def verdict(result: DrillResult) -> str:
    if result.error:
        return "ERROR"
    return "PASS" if result.passed else "FAIL"


def to_json(result: DrillResult) -> dict[str, Any]:
    spec = result.spec
    return {
        "drill": spec.name,
        "description": spec.description,
        "file": spec.filename,
        "short": result.short,
        "verdict": verdict(result),
        "passed": result.passed,
        "error": result.error,
        "started_at": result.started_at,
        "duration_s": result.drill_end,
        "notes": result.notes,
        "load": dataclasses.asdict(spec.load),
        "expect": dataclasses.asdict(spec.expect),
        "timeline": [dataclasses.asdict(e) for e in spec.timeline],
        "targets": {n: dataclasses.asdict(t) for n, t in result.targets.items()},
        "policy_version": result.policy_version,
        "route": result.route,
        "network": result.network,
        "windows": [w.to_json() for w in result.windows],
        "analysis": result.analysis.to_json() if result.analysis else None,
        "restore_problems": result.restore_problems,
        "records": [r.to_json() for r in result.records],
        "samples": [s.to_json() for s in result.samples],
    }


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _stats(stats: LatencyStats) -> str:
    return f"{_s(stats.p50)} / {_s(stats.p99)}"


def _event_row(ev: EventResult) -> str:
    extra = []
    if ev.reconnect_s is not None:
        extra.append(f"sidecars reconnected {_s(ev.reconnect_s)} after")
    if ev.controlplane_failover_s is not None:
        extra.append(f"control-plane failover {_s(ev.controlplane_failover_s)}")
    if ev.nacked is not None:
        extra.append("NACK seen" if ev.nacked else "no NACK seen")
    if ev.policy_kept is not None:
        extra.append("policy kept" if ev.policy_kept else "policy changed")
    if ev.policy_refused is not None:
        extra.append("refused by the control plane" if ev.policy_refused
                     else "NOT refused by the control plane")
    return (f"| {ev.title} | {ev.start:.2f}-{ev.end:.2f} s x{ev.occurrences} | "
            f"{_s(ev.failover_s) if ev.exercised else 'not needed'} | "
            f"{_s(ev.errors_cleared_s)} | {_s(ev.added_p99_s)} | "
            f"{'; '.join(extra) or '-'} | {ev.note or '-'} |")


def _analysis_md(a: Analysis, metric: str) -> list[str]:
    lines = ["## Expectations", "", "| | check | expected | observed |", "|---|---|---|---|"]
    lines += [f"| {'✅' if c.passed else '❌'} | {c.name} | {c.expected} | {c.observed} |"
              for c in a.checks]
    excused = (f" ({a.excused} on streams already running when a fault hit, reported to the "
               "client)" if a.excused else "")
    lines += ["", "## Requests", "",
              f"{a.requests} requests, {a.errors} errors{excused}, {a.truncated} truncated "
              f"successes; error rate counted {a.error_rate:.2%}. Mid-stream continuation "
              f"{'on' if a.continuation else 'off'} in the policy.", ""]
    if a.errors_by_kind:
        lines.append("Errors by kind: " + ", ".join(f"{k} {n}"
                                                     for k, n in a.errors_by_kind.items()))
        lines.append("")
    if a.served_by:
        lines.append("Served by: " + ", ".join(f"{k or '?'} {n}" for k, n in a.served_by.items()))
        lines.append("")
    lines += ["## Phases", "",
              "| phase | from-to | requests | errors | truncated | failed over | "
              "TTFT p50 / p99 | total p50 / p99 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {p.name} | {p.start:.1f}-{p.end:.1f} s | {p.requests} | {p.errors}"
              f"{f' ({p.excused} excused)' if p.excused else ''} | {p.truncated} | "
              f"{p.failed_over} | {_stats(p.ttft)} | {_stats(p.total)} |" for p in a.phases]
    if a.events:
        lines += ["", "## Faults", "",
                  f"| fault | window | → first backup success | → errors cleared | "
                  f"added p99 {metric} | control plane | target |",
                  "|---|---|---|---|---|---|---|"]
        lines += [_event_row(ev) for ev in a.events]
    if a.usage is not None:
        u = a.usage
        lines += ["", "## Usage accounting", "",
                  f"Clients received {u.client_completion} completion tokens in complete "
                  f"answers (+{u.client_partial} in answers cut short) and {u.client_prompt} "
                  f"prompt tokens; the sidecar metered {u.metered_completion:g} completion and "
                  f"{u.metered_prompt:g} prompt tokens ({', '.join(u.families)})."]
    else:
        lines += ["", "## Usage accounting", "",
                  "The sidecar exposes no token counters in its /metrics: not checked."]
    return lines


def to_markdown(result: DrillResult, picture: str = "") -> str:
    spec = result.spec
    lines = [f"# Drill `{spec.name}`: {verdict(result)}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    load = spec.load
    shape = (f"replay of {load.replay.trace} x{load.replay.speedup:g}" if load.replay
             else f"{load.rate_rps:g} req/s")
    lines += [f"Load: {shape} of `{load.model}` for {load.duration_s:g} s, "
              f"{load.streaming_share:.0%} streamed, at most {load.concurrency} at once"
              f"{' (short CI variant)' if result.short else ''}. "
              f"Policy version {result.policy_version or '?'}.", ""]
    if result.route:
        prim = ", ".join(f"{w['factory_id']} {w['weight']:.2f}" for w in result.route["primary"])
        backups = " → ".join(",".join(w["factory_id"] for w in level)
                             for level in result.route.get("backups", []))
        lines += [f"Route at the start: primary {prim}; backups {backups or 'none'}.", ""]
    for name, target in result.targets.items():
        lines.append(f"- target `{name}`: {target.description}")
    if result.targets:
        lines.append("")
    for note in result.notes:
        lines += [f"> {note}", ""]
    if result.error:
        lines += [f"**The drill could not run:** {result.error}", ""]
    if picture:
        lines += [f"![timeline]({picture})", ""]
    if result.analysis is not None:
        lines += _analysis_md(result.analysis, spec.expect.latency)
    if result.restore_problems:
        lines += ["", "## Restore problems", ""] + [f"- {p}" for p in result.restore_problems]
    return "\n".join(lines) + "\n"


def write(result: DrillResult, folder: Path) -> dict[str, Path]:
    """Write ``<drill>.json``, ``.md`` and ``.svg`` into ``folder``; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    name = result.spec.name
    paths = {"json": folder / f"{name}.json", "md": folder / f"{name}.md",
             "svg": folder / f"{name}.svg"}
    paths["json"].write_text(json.dumps(to_json(result), indent=1, default=str))
    paths["svg"].write_text(render(name, verdict(result), result.records, result.windows,
                                   drill_end=result.drill_end,
                                   metric=result.spec.expect.latency))
    paths["md"].write_text(to_markdown(result, paths["svg"].name))
    return paths


def _worst(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def summary_rows(results: Sequence[DrillResult]) -> list[list[str]]:
    rows = []
    for r in results:
        a = r.analysis
        if a is None:
            rows.append([r.spec.name, verdict(r), "-", "-", "-", "-", "-", r.error[:80]])
            continue
        failing = "; ".join(c.name for c in a.checks if not c.passed)
        rows.append([
            r.spec.name, verdict(r), str(a.requests),
            f"{a.errors - a.excused}" + (f" (+{a.excused})" if a.excused else ""),
            str(a.truncated),
            _s(_worst([ev.failover_s for ev in a.events])),
            _s(_worst([ev.added_p99_s for ev in a.events])),
            failing or "-"])
    return rows


SUMMARY_HEADER = ["drill", "result", "requests", "errors", "truncated", "failover",
                  "added p99", "failing checks"]


def summary_markdown(results: Sequence[DrillResult]) -> str:
    lines = ["| " + " | ".join(SUMMARY_HEADER) + " |",
             "|" + "---|" * len(SUMMARY_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    return "\n".join(lines) + "\n"


def summary_text(results: Sequence[DrillResult]) -> str:
    rows = [SUMMARY_HEADER, *summary_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(SUMMARY_HEADER) - 1)]
    out = []
    for row in rows:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                   + "  " + row[-1])
    return "\n".join(out) + "\n"
