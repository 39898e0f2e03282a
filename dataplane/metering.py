"""Metered usage: tokens per (tenant, factory, model, traffic class) for the window being
reported (the class lets the control plane estimate demand per class), and reading
the usage out of a non-streamed answer.

Only the attempts that produced what the client received are metered (proto/tdn/v1/usage.proto):
a failed attempt never is. The counts are the answering factory's own (its ``usage``), priced at
that factory's prices from the policy.

Streams: the sidecar asks every factory for the usage chunk (``stream_options.include_usage``)
even when the client did not, so that every stream can be metered; it then drops that chunk
before the client sees it (:mod:`sse`). Adding the option is a byte splice at the front of the
JSON body when the client sent no ``stream_options``, so the body is never re-serialised for it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from tdn.domain import FactoryEndpoint

# Answers up to this size are parsed whole to find their usage (an embedding's can be megabytes).
_PARSE_WHOLE_BYTES = 16 * 1024
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*(?=\{)')
_DECODER = json.JSONDecoder()


def usage_from_body(body: bytes) -> dict[str, Any] | None:
    """The top-level ``usage`` object of a JSON answer, read without parsing the whole body.

    The last ``"usage":`` key followed by an object is taken: OpenAI and vLLM put usage near the
    end (so it is searched for from the end), and a quoted ``"usage"`` inside a string value
    would have its quotes escaped.
    """
    if len(body) <= _PARSE_WHOLE_BYTES:
        # A small answer is parsed whole: orjson does it faster than the search below, and
        # finds exactly the top-level member.
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        usage = doc.get("usage") if isinstance(doc, dict) else None
        return usage if isinstance(usage, dict) else None
    end = len(body)
    while True:
        at = body.rfind(b'"usage"', 0, end)
        if at < 0:
            return None
        match = _USAGE_KEY.match(body, at)
        if match is not None:
            break
        end = at
    try:
        usage, _ = _DECODER.raw_decode(body[match.end():].decode("utf-8", "replace"))
    except ValueError:
        return None
    return usage if isinstance(usage, dict) else None


@dataclass(slots=True)
class UsageTotals:
    """Totals of one (tenant, factory, model, traffic class) in a window."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cost: float = 0.0


class Meter:
    """The current window's usage; :meth:`take` hands it over and starts the next window."""

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str, str], UsageTotals] = {}
        self.window_start = time.time()

    def record(self, tenant: str, factory: FactoryEndpoint, model: str, *, prompt_tokens: int,
               completion_tokens: int, cached_prompt_tokens: int = 0,
               requests: int = 1, traffic_class: str = "default") -> None:
        key = (tenant, factory.id, model, traffic_class)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = UsageTotals()
        totals.requests += requests
        totals.prompt_tokens += prompt_tokens
        totals.completion_tokens += completion_tokens
        totals.cached_prompt_tokens += cached_prompt_tokens
        totals.cost += factory.price.cost(prompt_tokens, completion_tokens, cached_prompt_tokens)

    def peek(self) -> dict[tuple[str, str, str, str], UsageTotals]:
        return self._totals

    def take(self) -> tuple[float, float, dict[tuple[str, str, str, str], UsageTotals]]:
        """(window start, window end, totals) of the window now ending."""
        start, end = self.window_start, time.time()
        totals, self._totals = self._totals, {}
        self.window_start = end
        return start, end, totals
