"""The OpenAI wire format as the simulator speaks it: request parsing, errors, bodies, SSE chunks.

Requests are checked here, at the edge, and turned into small frozen values; anything a client
can get wrong becomes an :class:`ApiError` carrying OpenAI's error shape
(``{"error": {"message", "type", "param", "code"}}``, as in tests/fixtures/openai-errors.json).
Streamed chunks are assembled from precomputed byte prefixes, so a token costs one bytes join
and no ``json.dumps`` of the whole chunk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tdn.sim.textgen import PIECE_JSON, chat_prompt_text, count_tokens

Kind = Literal["chat", "completion"]

DONE = b"data: [DONE]\n\n"

# Completions (the legacy endpoint) default to 16 tokens, as in OpenAI's API and in vLLM.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    """An error answered to the client in OpenAI's format."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def model_not_found(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist", param="model",
                    code="model_not_found")


def fault_error(status: int, factory_id: str, retry_after: float | None) -> ApiError:
    """The error an injected ``error`` fault answers, shaped like OpenAI's for that status."""
    headers = {}
    if retry_after is not None:
        # Retry-After takes whole seconds; round up so a client never retries early.
        headers["Retry-After"] = str(int(-(-retry_after // 1)))
    if status == 429:
        return ApiError(429, f"Rate limit reached for requests on factory {factory_id} "
                             "(simulated fault). Please try again later.",
                        type_="requests", code="rate_limit_exceeded", headers=headers)
    if status >= 500:
        message = ("The engine is currently overloaded, please try again later"
                   if status == 503 else
                   "The server had an error while processing your request. Sorry about that!")
        return ApiError(status, f"{message} (simulated fault on factory {factory_id})",
                        type_="server_error", headers=headers)
    return ApiError(status, f"Simulated client error on factory {factory_id}", headers=headers)


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A chat or completions request, reduced to what the simulated engine needs."""

    kind: Kind
    model: str
    prompt_text: str  # what is counted and what seeds the generated words
    prompt_tokens: int
    max_tokens: int | None  # None: up to the context length
    stream: bool
    include_usage: bool
    continuation: bool = False  # continue_final_message: the answer carries on the last message
    echo_prefix: str = ""  # vLLM's echo with continue_final_message: the prefix is repeated


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str
    inputs: tuple[str, ...]  # token-id inputs are rendered as text to seed their vector
    input_tokens: tuple[int, ...]
    dimensions: int
    base64: bool


def parse_json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _model(body: Mapping[str, Any], served: tuple[str, ...]) -> str:
    model = body.get("model")
    if model is None:
        # vLLM serves the first model when none is named; OpenAI would refuse.
        return served[0]
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.", param="model")
    if model not in served:
        raise model_not_found(model)
    return model


def _optional_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{name}' must be a boolean, got {value!r}.", param=name)
    return value


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, f"'{name}' must be an integer, got {value!r}.", param=name)
        if value < 1:
            raise ApiError(400, f"{value} is less than the minimum of 1 - '{name}'", param=name)
        return value
    return None


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = _optional_bool(body, "stream", False)
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' is "
                            "enabled.", param="stream_options")
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options")
    return stream, _optional_bool(options, "include_usage", False)


def _check_n(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise ApiError(400, f"The simulator only supports n=1, got {n!r}.", param="n")


def _check_context(prompt_tokens: int, max_tokens: int | None, max_model_len: int,
                   param: str, where: str) -> None:
    if prompt_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. "
                            f"However, your {where} resulted in {prompt_tokens} tokens. "
                            f"Please reduce the length of the {where}.",
                       param=param, code="context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. "
                            f"However, you requested {prompt_tokens + max_tokens} tokens "
                            f"({prompt_tokens} in the {where}, {max_tokens} in the completion). "
                            f"Please reduce the length of the {where} or completion.",
                       param=param, code="context_length_exceeded")


def _content_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ApiError(400, f"messages[{index}].content parts must be objects with "
                                    "a 'type'.", param=f"messages[{index}].content")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ApiError(400, f"messages[{index}].content text parts need a "
                                        "string 'text'.", param=f"messages[{index}].content")
                texts.append(text)
        return "".join(texts)
    raise ApiError(400, f"messages[{index}].content must be a string, a list of parts or null.",
                   param=f"messages[{index}].content")


def parse_chat(body: Mapping[str, Any], served: tuple[str, ...], max_model_len: int,
               supports_prefill: bool, factory_id: str) -> GenerationRequest:
    """Check a ``/v1/chat/completions`` body and reduce it to a :class:`GenerationRequest`."""
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array.", param="messages")
    rendered: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{i}] must be an object with a string 'role'.",
                           param=f"messages[{i}]")
        rendered.append((message["role"], _content_text(message.get("content"), i)))
    model = _model(body, served)
    _check_n(body)
    stream, include_usage = _stream_flags(body)
    max_tokens = _max_tokens(body)
    continuation = _optional_bool(body, "continue_final_message", False)
    add_generation_prompt = _optional_bool(body, "add_generation_prompt", True)
    echo = _optional_bool(body, "echo", False)
    if continuation and not supports_prefill:
        raise ApiError(400, f"continue_final_message (assistant prefill) is not supported by "
                            f"factory {factory_id}.", param="continue_final_message",
                       code="unsupported_parameter")
    if continuation and add_generation_prompt:
        # vLLM's own rule: add_generation_prompt defaults to true, so a prefill must turn it off.
        raise ApiError(400, "Cannot set both `continue_final_message` and "
                            "`add_generation_prompt` to True.", param="continue_final_message")
    prompt_text = chat_prompt_text(rendered)
    prompt_tokens = count_tokens(prompt_text)
    _check_context(prompt_tokens, max_tokens, max_model_len, "messages", "messages")
    return GenerationRequest(
        kind="chat", model=model, prompt_text=prompt_text, prompt_tokens=prompt_tokens,
        max_tokens=max_tokens, stream=stream, include_usage=include_usage,
        continuation=continuation,
        echo_prefix=rendered[-1][1] if continuation and echo else "",
    )


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _prompt(value: Any, param: str) -> tuple[str, int]:
    """(seed text, token count) of one prompt given as a string or as token ids."""
    if isinstance(value, str):
        return value, count_tokens(value)
    if _token_ids(value):
        return ",".join(map(str, value)), len(value)
    raise ApiError(400, f"'{param}' must be a string, an array of token ids, or an array of one "
                        "of those.", param=param)


def parse_completion(body: Mapping[str, Any], served: tuple[str, ...],
                     max_model_len: int) -> GenerationRequest:
    """Check a ``/v1/completions`` body (one prompt) and reduce it to a GenerationRequest."""
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt")
    if isinstance(prompt, list) and prompt and not _token_ids(prompt):
        if len(prompt) != 1:
            raise ApiError(400, "The simulator answers one prompt per request; got "
                                f"{len(prompt)}.", param="prompt")
        prompt = prompt[0]
    text, prompt_tokens = _prompt(prompt, "prompt")
    model = _model(body, served)
    _check_n(body)
    stream, include_usage = _stream_flags(body)
    max_tokens = _max_tokens(body)
    if max_tokens is None:
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    _check_context(prompt_tokens, max_tokens, max_model_len, "prompt", "prompt")
    return GenerationRequest(kind="completion", model=model, prompt_text=text,
                             prompt_tokens=prompt_tokens, max_tokens=max_tokens, stream=stream,
                             include_usage=include_usage)


def parse_embeddings(body: Mapping[str, Any], served: tuple[str, ...], max_model_len: int,
                     default_dimensions: int) -> EmbeddingRequest:
    """Check a ``/v1/embeddings`` body."""
    raw = body.get("input")
    if raw is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input")
    items: list[Any]
    if isinstance(raw, str) or _token_ids(raw):
        items = [raw]
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise ApiError(400, "'input' must be a string, an array of strings or of token arrays, "
                            "and not empty.", param="input")
    texts, counts = [], []
    for i, item in enumerate(items):
        text, tokens = _prompt(item, f"input[{i}]")
        if tokens > max_model_len:
            raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. "
                                f"However, input[{i}] resulted in {tokens} tokens. Please reduce "
                                "the length of the input.", param="input",
                           code="context_length_exceeded")
        texts.append(text)
        counts.append(tokens)
    model = _model(body, served)
    dimensions = body.get("dimensions")
    if dimensions is None:
        dimensions = default_dimensions
    elif isinstance(dimensions, bool) or not isinstance(dimensions, int):
        raise ApiError(400, f"'dimensions' must be an integer, got {dimensions!r}.",
                       param="dimensions")
    elif dimensions < 1:
        # OpenAI's own wording (and null param/code) for this mistake.
        raise ApiError(400, f"{dimensions} is less than the minimum of 1 - 'dimensions'")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}.",
                       param="encoding_format")
    return EmbeddingRequest(model=model, inputs=tuple(texts), input_tokens=tuple(counts),
                            dimensions=dimensions, base64=encoding == "base64")


# --- responses --------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(kind: Kind, *, response_id: str, created: int, model: str,
                    fingerprint: str, text: str, finish_reason: str, prompt_tokens: int,
                    completion_tokens: int) -> dict[str, object]:
    """The non-streamed response of a chat or completions request."""
    choice: dict[str, object]
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "logprobs": None, "finish_reason": finish_reason}
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {"id": response_id, "object": "chat.completion" if kind == "chat" else "text_completion",
            "created": created, "model": model, "system_fingerprint": fingerprint,
            "choices": [choice], "usage": usage(prompt_tokens, completion_tokens)}


def piece_json(piece: str) -> bytes:
    cached = PIECE_JSON.get(piece)
    return cached if cached is not None else json.dumps(piece).encode()


class ChunkRenderer:
    """Bytes of the SSE events of one streamed response."""

    __slots__ = ("_content_head", "_content_tail", "_envelope", "created", "kind",
                 "response_id")

    def __init__(self, kind: Kind, response_id: str, created: int, model: str,
                 fingerprint: str) -> None:
        self.kind = kind
        self.response_id = response_id
        self.created = created
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self._envelope = (
            f'data: {{"id":{json.dumps(response_id)},"object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},"system_fingerprint":{json.dumps(fingerprint)},'
        ).encode()
        if kind == "chat":
            self._content_head = self._envelope + b'"choices":[{"index":0,"delta":{"content":'
            self._content_tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._content_head = self._envelope + b'"choices":[{"index":0,"text":'
            self._content_tail = b',"logprobs":null,"finish_reason":null}]}\n\n'

    def opening(self) -> bytes:
        """The chat role chunk that precedes content (completions have none)."""
        if self.kind != "chat":
            return b""
        return self._envelope + (b'"choices":[{"index":0,"delta":{"role":"assistant",'
                                 b'"content":""},"logprobs":null,"finish_reason":null}]}\n\n')

    def content(self, piece: str) -> bytes:
        return self._content_head + piece_json(piece) + self._content_tail

    def finish(self, reason: str) -> bytes:
        if self.kind == "chat":
            choice = f'{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"{reason}"}}'
        else:
            choice = f'{{"index":0,"text":"","logprobs":null,"finish_reason":"{reason}"}}'
        return self._envelope + f'"choices":[{choice}]}}\n\n'.encode()

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        body = json.dumps(usage(prompt_tokens, completion_tokens), separators=(",", ":"))
        return self._envelope + f'"choices":[],"usage":{body}}}\n\n'.encode()

    def malformed(self) -> bytes:
        """A ``data:`` line that is not valid JSON: a chunk cut short inside an object."""
        return self._content_head + b'"trunc\n\n'
