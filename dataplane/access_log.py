"""One structured (JSON) line per proxied request, on the ``tdn.dataplane.access`` logger.

The line says what happened to a request (who answered, after how many attempts, how long it
took) and nothing about what it said: no prompt, no body, no header values except the request id,
and never a key. The model name is clipped, because clients choose it freely.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

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
    status: int = 0
    streamed: bool = False
    outcome: str = ""
    duration_ms: float = 0.0

    def to_json(self) -> str:
        doc = asdict(self)
        doc["model"] = self.model[:_MAX_MODEL_CHARS]
        doc["duration_ms"] = round(self.duration_ms, 3)
        return json.dumps(doc, separators=(",", ":"))


def emit(record: AccessRecord) -> None:
    logger.info("%s", record.to_json())
