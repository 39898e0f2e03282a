"""Errors the sidecar answers itself, in OpenAI's shape ``{"error": {message, type, param, code}}``.

OpenAI clients parse this body to raise typed exceptions, so every refusal the sidecar makes (bad
JSON, unknown model, no policy yet, every factory down) uses it, and so does the error event that
ends a stream broken mid-way. Messages never carry an upstream key or any part of a prompt.
"""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """A request the sidecar refuses or cannot serve, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        # Response headers that belong to this refusal (Retry-After, x-tdn-retry-budget...).
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def json(self) -> bytes:
        """The body to answer with (see :func:`tdn.dataplane.http_server.error_reply`)."""
        return json.dumps(self.body()).encode()


def invalid_json() -> ApiError:
    return ApiError(400, "We could not parse the JSON body of your request. The TDN sidecar "
                         "expects a JSON object, as the OpenAI API does.")


def not_an_object(kind: str) -> ApiError:
    return ApiError(400, f"The request body must be a JSON object, not {kind}.")


def missing_param(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                    code="missing_required_parameter")


def invalid_param(name: str, expected: str) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}.", param=name,
                    code="invalid_type")


def body_too_large(limit_bytes: int) -> ApiError:
    return ApiError(413, f"The request body is larger than this sidecar accepts "
                         f"({limit_bytes} bytes).", code="request_too_large")


def model_not_found(model: str) -> ApiError:
    # Same wording and code as OpenAI's own answer, so clients map it to NotFoundError.
    return ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                    code="model_not_found")


def no_policy() -> ApiError:
    return ApiError(503, "The TDN sidecar has no routing policy yet: it has not reached the "
                         "control plane and holds no saved policy. Retry shortly.",
                    type_="service_unavailable", code="no_policy")


def no_candidates(model: str) -> ApiError:
    return ApiError(503, f"The routing policy names no factory for model `{model}`.",
                    type_="service_unavailable", code="no_route")


def rate_limited(model: str, retry_after_s: float) -> ApiError:
    return ApiError(429, f"Every factory routed for model `{model}` is rate limited; the first "
                         f"takes requests again in {retry_after_s:.1f} s.",
                    type_="requests", code="rate_limit_exceeded")


def retry_budget_exhausted(model: str, status: int, attempts: int, last: str) -> ApiError:
    plural = "attempt" if attempts == 1 else "attempts"
    return ApiError(status, f"A factory routed for model `{model}` failed ({attempts} {plural}; "
                            f"last: {last}) and the sidecar's retry budget is exhausted, so it "
                            f"was not retried.", type_="server_error",
                    code="retry_budget_exhausted")


def all_attempts_failed(model: str, attempts: int, last: str) -> ApiError:
    plural = "attempt" if attempts == 1 else "attempts"
    return ApiError(502, f"Every factory routed for model `{model}` failed ({attempts} {plural}; "
                         f"last: {last}).", type_="server_error", code="upstream_unavailable")


def not_found(path: str) -> ApiError:
    return ApiError(404, f"Unknown path {path!r}: this sidecar serves /v1/chat/completions, "
                         f"/v1/completions, /v1/embeddings and /v1/models.",
                    code="unknown_url")


def method_not_allowed(method: str, path: str) -> ApiError:
    return ApiError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")


def stream_broken_event(factory_id: str, detail: str, continuation: str = "") -> bytes:
    """The SSE event that ends a client stream whose upstream broke after bytes were relayed.

    OpenAI's SDKs raise on a ``data:`` event carrying an ``error`` object, so the client learns the
    answer is incomplete instead of taking a truncated answer for a finished one. It names the
    original failure; ``continuation`` may add, in a few words, why carrying on elsewhere failed
    (never a backup's own error text, which would mask the real failure).
    """
    tail = f"; {continuation}" if continuation else ""
    err = ApiError(502, f"The stream from factory {factory_id} broke before it finished "
                        f"({detail}){tail}; the answer is incomplete.",
                   type_="server_error", code="upstream_stream_broken")
    return b"data: " + json.dumps(err.body()).encode() + b"\n\n"
