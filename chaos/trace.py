"""Request traces a drill can replay: the Azure LLM inference trace 2023 (``TIMESTAMP,
ContextTokens,GeneratedTokens`` per request; see ``shared/data/azure-llm-2023/README.md``).

``azure-conv`` and ``azure-code`` name the two files of the shared copy, which lives in
``shared/data`` beside the repository; any other value is a path to a file in the same format.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tdn.chaos.spec import AZURE_TRACES, ReplaySpec

_TRACE_DIR = Path("shared") / "data" / "azure-llm-2023"


class TraceError(ValueError):
    """A trace that cannot be found or read."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: seconds after the first one, and its token counts."""

    offset_s: float
    prompt_tokens: int
    output_tokens: int


def find_trace(name: str, relative_to: Path | None = None) -> Path:
    """The file ``name`` stands for (see the module docstring)."""
    if name not in AZURE_TRACES:
        path = Path(name)
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.exists():
            raise TraceError(f"trace file {path} does not exist")
        return path
    filename = AZURE_TRACES[name]
    roots: list[Path] = []
    if os.environ.get("TDN_TRACE_DIR"):
        roots.append(Path(os.environ["TDN_TRACE_DIR"]))
    here = Path.cwd().resolve()
    package = Path(__file__).resolve()
    for base in (here, *here.parents, *package.parents):
        roots.append(base / _TRACE_DIR)
    for root in roots:
        if (root / filename).exists():
            return root / filename
    raise TraceError(f"trace {name} ({filename}) not found in shared/data/azure-llm-2023 beside "
                     "the repository; set TDN_TRACE_DIR to the folder holding it")


def _timestamp(text: str) -> float:
    # Seven fractional digits (100 ns): more than datetime takes, so cut to microseconds.
    whole, _, fraction = text.strip().partition(".")
    parsed = datetime.strptime(whole, "%Y-%m-%d %H:%M:%S")
    return parsed.timestamp() + float(f"0.{fraction or '0'}")


def read_trace(path: Path) -> list[TraceRequest]:
    """Every request of the file, in arrival order, offsets from the first one."""
    rows: list[tuple[float, int, int]] = []
    with path.open(newline="") as f:
        header = f.readline().strip()
        if header.split(",")[:3] != ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]:
            raise TraceError(f"{path}: not an Azure LLM trace (header {header!r})")
        for number, raw in enumerate(f, start=2):
            line = raw.strip()
            if not line:
                continue
            try:
                stamp, prompt, output = line.split(",")[:3]
                rows.append((_timestamp(stamp), int(prompt), int(output)))
            except ValueError:
                raise TraceError(f"{path}:{number}: cannot read {line!r}") from None
    if not rows:
        raise TraceError(f"{path}: no requests")
    first = rows[0][0]
    return [TraceRequest(t - first, p, o) for t, p, o in rows]


def replay_window(requests: list[TraceRequest], replay: ReplaySpec,
                  duration_s: float) -> list[TraceRequest]:
    """The requests a drill of ``duration_s`` replays: from ``start_s`` of the trace, time
    compressed by ``speedup``, prompts and outputs capped."""
    span = duration_s * replay.speedup
    out = []
    for req in requests:
        if req.offset_s < replay.start_s:
            continue
        if req.offset_s >= replay.start_s + span:
            break
        out.append(TraceRequest((req.offset_s - replay.start_s) / replay.speedup,
                                min(req.prompt_tokens, replay.max_prompt_words),
                                max(1, min(req.output_tokens, replay.max_tokens_cap))))
    return out
