"""One structured (JSON) line per proxied request, on the ``tdn.dataplane.access`` logger.

In ``tdn proxy`` the lines go straight to stdout (:func:`write_to`), gathered for at most
:data:`FLUSH_AFTER_S` (or :data:`FLUSH_LINES` lines) and written together: at a few thousand
requests per second the logging module's record, lock and handler per line, or one write per
line, cost more than everything else a request's bookkeeping does. Pending lines are written
when the sidecar stops. Elsewhere (tests, embedding) they go through the logger.

The line says what happened to a request (who answered, after how many attempts and which
failures, how long it took, its time to first byte, the sidecar's own overhead, the tokens
metered to which tenant) and nothing about what it said: no prompt, no body, no header values
except the request id, and never a key (tenants are named by the tenants file). The model name is
clipped, because clients choose it freely.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, fields
from typing import TextIO

import orjson

logger = logging.getLogger("tdn.dataplane.access")

_MAX_MODEL_CHARS = 128


@dataclass(slots=True)
class AccessRecord:
    """Filled in as a request proceeds and emitted once when it ends."""

    request_id: str
    method: str
    path: str
    model: str = ""
    traffic_class: str = ""
    factory: str = ""
    tier: str = ""
    attempts: int = 0
    # "factory:reason" of every attempt given up, in order.
    failovers: list[str] = field(default_factory=list)
    status: int = 0
    streamed: bool = False
    outcome: str = ""
    tenant: str = ""
    fallback_model: str = ""
    # Factories a broken stream was continued on, and why the stream broke.
    continued_on: list[str] = field(default_factory=list)
    stream_break: str = ""
    retry_budget_exhausted: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    overhead_ms: float = 0.0
    duration_ms: float = 0.0

    def to_json(self) -> str:
        # Spelled out rather than walked with fields(): this runs once per request.
        ttft = self.ttft_ms
        return orjson.dumps({
            "request_id": self.request_id, "method": self.method, "path": self.path,
            "model": self.model[:_MAX_MODEL_CHARS], "traffic_class": self.traffic_class,
            "factory": self.factory, "tier": self.tier, "attempts": self.attempts,
            "failovers": self.failovers, "status": self.status, "streamed": self.streamed,
            "outcome": self.outcome, "tenant": self.tenant,
            "fallback_model": self.fallback_model, "continued_on": self.continued_on,
            "stream_break": self.stream_break,
            "retry_budget_exhausted": self.retry_budget_exhausted,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "ttft_ms": round(ttft, 3) if ttft is not None else None,
            "overhead_ms": round(self.overhead_ms, 3), "duration_ms": round(self.duration_ms, 3),
        }).decode()


_FIELDS = tuple(f.name for f in fields(AccessRecord))


# A line waits at most this long, or until this many are pending, before it is written.
FLUSH_AFTER_S = 0.02
FLUSH_LINES = 256


class _LineWriter:
    """Access lines for one stream, written in batches (or at once outside an event loop)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.pending: list[str] = []

    def add(self, line: str) -> None:
        pending = self.pending
        if not pending:
            try:
                asyncio.get_running_loop().call_later(FLUSH_AFTER_S, self.flush)
            except RuntimeError:
                pending.append(line)
                self.flush()
                return
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        if not lines:
            return
        data = "\n".join(lines) + "\n"
        try:
            try:
                self.stream.write(data)
            except UnicodeEncodeError:
                # A model name a client made up, on a stream that is not UTF-8.
                self.stream.write(data.encode("ascii", "backslashreplace").decode("ascii"))
            self.stream.flush()
        except (OSError, ValueError):
            # stdout closed or full: the request was served; its line is lost, not the sidecar.
            pass


# The direct writer, when one is set (a list so that it can be swapped without a global).
_writers: list[_LineWriter] = []


def write_to(stream: TextIO | None) -> None:
    """Send access lines straight to ``stream`` (None: back to the logger)."""
    for writer in _writers:
        writer.flush()
    _writers[:] = [_LineWriter(stream)] if stream is not None else []


def emit(record: AccessRecord) -> None:
    if _writers:
        _writers[0].add(record.to_json())
        return
    # Serialising costs more than the rest of a small request's bookkeeping: skip it when the
    # line would be dropped anyway.
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", record.to_json())
