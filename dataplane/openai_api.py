"""The OpenAI endpoints the sidecar proxies, and the little it must read from a request body.

The sidecar reads only what routing needs (``model``, the endpoint's required input) and forwards
the client's bytes unchanged: it is not an OpenAI validator, the factory is. What it does check
is checked so that a bad request gets a precise 400 here instead of a confusing upstream error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import api_errors


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied OpenAI endpoint: where clients call it and what it requires."""

    name: str
    path: str
    # Appended to a factory's base_url (which ends in /v1); the only part of the upstream URL
    # that depends on the request, and it depends on the path, never on the body.
    upstream_suffix: str
    required: str


CHAT = Endpoint("chat", "/v1/chat/completions", "/chat/completions", "messages")
COMPLETIONS = Endpoint("completions", "/v1/completions", "/completions", "prompt")
EMBEDDINGS = Endpoint("embeddings", "/v1/embeddings", "/embeddings", "input")
ENDPOINTS: tuple[Endpoint, ...] = (CHAT, COMPLETIONS, EMBEDDINGS)


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """A request body the sidecar accepted: the raw bytes to forward plus what it routes on."""

    endpoint: Endpoint
    model: str
    stream: bool
    body: bytes


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def parse_request(endpoint: Endpoint, raw: bytes) -> ProxiedRequest:
    """Check a client body for ``endpoint``; raise :class:`api_errors.ApiError` when it is bad."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise api_errors.invalid_json() from None
    if not isinstance(doc, dict):
        raise api_errors.not_an_object(_kind(doc))
    if "model" not in doc or doc["model"] is None:
        raise api_errors.missing_param("model")
    model = doc["model"]
    if not isinstance(model, str):
        raise api_errors.invalid_param("model", "a string")
    if not model:
        raise api_errors.missing_param("model")
    if endpoint.required not in doc or doc[endpoint.required] is None:
        raise api_errors.missing_param(endpoint.required)
    stream = doc.get("stream", False)
    return ProxiedRequest(endpoint=endpoint, model=model, stream=stream is True, body=raw)
