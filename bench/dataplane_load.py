"""The load generator of the data-plane benchmark: wrk, driven by a generated Lua script.

wrk (C, epoll) is used for every path alike (direct, TDN, HAProxy, LiteLLM), pinned to its own
core, so the generator is never what is being measured. The script POSTs OpenAI chat bodies
(cycling through several when given more than one) and prints wrk's own latency percentiles
(microsecond resolution) and error counts on one line that :func:`parse_wrk` reads.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.dataplane_procs import pinned

MARKER = "TDNBENCH"


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: counts, errors and latency percentiles in microseconds."""

    requests: int
    duration_s: float
    errors: int  # connect + read + write + timeout + HTTP status >= 400
    timeouts: int
    status_errors: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def median(values: Sequence[float]) -> float:
    """Median over rounds, leaving out runs that served nothing (nan); nan if none is left."""
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def ratio(a: float, b: float) -> str:
    """``a / b`` as ``1.23x``, or a dash when either side is missing."""
    if b <= 0 or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.2f}x"


def chat_body(model: str, *, stream: bool = False, max_tokens: int | None = None,
              content: str = "Say something short.") -> str:
    doc: dict[str, object] = {"model": model,
                              "messages": [{"role": "user", "content": content}]}
    if stream:
        doc["stream"] = True
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    return json.dumps(doc, separators=(",", ":"))


def lua_script(bodies: Sequence[str]) -> str:
    """A wrk script that POSTs ``bodies`` in turn and reports in one parseable line."""
    quoted = ", ".join(_lua_string(b) for b in bodies)
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local bodies = {{ {quoted} }}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, bodies[(n % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{MARKER} %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f %.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""


def _lua_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_wrk(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(MARKER):
            f = line.split()[1:]
            requests, duration_us = int(f[0]), int(f[1])
            connect, read, write, status, timeout = (int(x) for x in f[2:7])
            p50, p90, p99, mx, mean = (float(x) for x in f[7:12])
            return WrkResult(requests=requests, duration_s=duration_us / 1e6,
                             errors=connect + read + write + status + timeout,
                             timeouts=timeout, status_errors=status, p50_us=p50, p90_us=p90,
                             p99_us=p99, max_us=mx, mean_us=mean)
    raise RuntimeError(f"wrk printed no result line:\n{output[-2000:]}")


def run_wrk(url: str, bodies: Sequence[str], *, connections: int, seconds: int,
            cpus: str | None, threads: int = 1, timeout_s: int = 10) -> WrkResult:
    """Run wrk against ``url`` for ``seconds`` with ``connections`` keep-alive connections."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(bodies))
        script = Path(f.name)
    try:
        args = pinned(cpus, ["wrk", f"-t{min(threads, connections)}", f"-c{connections}",
                             f"-d{seconds}s", f"--timeout={timeout_s}s", "-s", str(script), url])
        done = subprocess.run(args, capture_output=True, text=True, check=False,
                              timeout=seconds + timeout_s + 30)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-1000:]}")
        return parse_wrk(done.stdout)
    finally:
        script.unlink(missing_ok=True)
