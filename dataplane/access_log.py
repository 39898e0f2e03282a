"""One structured (JSON) line per proxied request, on the ``tdn.dataplane.access`` logger.

The line says what happened to a request (who answered, after how many attempts and which
failures, how long it took, its time to first byte, the sidecar's own overhead, the tokens
metered to which tenant) and nothing about what it said: no prompt, no body, no header values
except the request id, and never a key (tenants are named by the tenants file). The model name is
clipped, because clients choose it freely.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, fields

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
        doc = {name: getattr(self, name) for name in _FIELDS}
        doc["model"] = self.model[:_MAX_MODEL_CHARS]
        doc["duration_ms"] = round(self.duration_ms, 3)
        doc["overhead_ms"] = round(self.overhead_ms, 3)
        if self.ttft_ms is not None:
            doc["ttft_ms"] = round(self.ttft_ms, 3)
        return json.dumps(doc, separators=(",", ":"))


_FIELDS = tuple(f.name for f in fields(AccessRecord))


def emit(record: AccessRecord) -> None:
    # Serialising costs more than the rest of a small request's bookkeeping: skip it when the
    # line would be dropped anyway.
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s", record.to_json())
