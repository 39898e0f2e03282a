"""The OpenAI endpoints the sidecar proxies, and the little it must read from a request body.

The sidecar reads only what routing needs (``model``, the endpoint's required input, ``stream``
and its options, the output limit) and forwards the client's bytes: it is not an OpenAI
validator, the factory is. What it does check is checked so that a bad request gets a precise 400
here instead of a confusing upstream error. The body is parsed once; the parsed object is kept
for the rare paths that must write a new body (a fallback model, a continuation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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


@dataclass(slots=True)
class ProxiedRequest:
    """A request body the sidecar accepted: the raw bytes to forward plus what it routes on.

    Not frozen only because a frozen dataclass pays one object.__setattr__ per field when it
    is made, once per request; nothing changes it after parse_request.
    """

    endpoint: Endpoint
    model: str
    stream: bool
    body: bytes
    doc: dict[str, Any]
    # The client asked for the usage chunk (stream_options.include_usage).
    include_usage: bool = False
    # max_completion_tokens, else max_tokens, when the client set a whole number.
    max_tokens: int | None = None
    choices: int = 1

    def upstream_body(self) -> bytes:
        """The body to send: the client's bytes, except that a stream always asks for its usage
        chunk (the sidecar meters every stream; see :mod:`metering`)."""
        if not self.stream or self.include_usage or self.endpoint is EMBEDDINGS:
            return self.body
        stripped = self.body.lstrip()
        if "stream_options" not in self.doc and stripped[:1] == b"{":
            # A byte splice, not a re-serialisation: the body is a JSON object with members
            # (checked), so one more can go right after its opening brace.
            at = len(self.body) - len(stripped) + 1
            return self.body[:at] + b'"stream_options":{"include_usage":true},' + self.body[at:]
        return self.with_changes()

    def with_changes(self, **members: Any) -> bytes:
        """A new body: the client's with ``members`` set (and the usage chunk asked for)."""
        doc = {**self.doc, **members}
        if self.stream and self.endpoint is not EMBEDDINGS:
            options = doc.get("stream_options")
            doc["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
        return orjson.dumps(doc)  # compact UTF-8, as the body was parsed


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
        # orjson: a fifth of json's time on a chat body, and it reads the bytes as they came
        # (UTF-8, as the OpenAI API is; NaN, Infinity and integers beyond 64 bits are refused).
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
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
    stream = doc.get("stream", False) is True
    options = doc.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    max_tokens: int | None = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            max_tokens = value
            break
    n = doc.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return ProxiedRequest(endpoint=endpoint, model=model, stream=stream, body=raw, doc=doc,
                          include_usage=include_usage, max_tokens=max_tokens, choices=choices)
