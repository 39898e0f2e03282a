"""Continuing a broken stream on a backup: the request that carries the answer on, and the token
counts the spliced answer reports.

When a stream breaks mid-answer (cut, idle, garbled) and the policy enables continuation, the
sidecar asks a backup that declares prefill support to carry on: the original messages plus the
partial output as a final assistant message, with ``continue_final_message: true`` and
``add_generation_prompt: false`` (vLLM's and SGLang's assistant prefill, as in
tests/fixtures/vllm-continue-final-message.json). Its deltas are spliced into the same client
stream (:mod:`sse`), so the client receives one complete answer with one response id.

Only chat streams with one choice whose output so far is plain text can be continued: a tool
call or several choices cannot be prefilled. A ``max_tokens`` limit is lowered by what was already
produced, so the whole answer keeps to the client's limit.

Token counts. A broken stream never sent its usage, so the original prompt's tokens are
estimated with OpenAI's rule of thumb, four characters per token, counting each message as
``role: content`` plus a line end; the output the client already had is counted as its
output-bearing events (one token each). The spliced answer's usage chunk reports that prompt
estimate, and the output of every segment; each factory is metered for what it did.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content
                       if isinstance(p, dict) and p.get("type") == "text")
    return ""


def estimate_prompt_tokens(doc: dict[str, Any]) -> int:
    """Approximate prompt tokens of a chat or completions request (at least 1)."""
    chars = 0
    messages = doc.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                role = message.get("role")
                chars += len(role if isinstance(role, str) else "") + 3
                chars += len(_text_of(message.get("content")))
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        if all(isinstance(t, int) for t in prompt):
            return max(1, len(prompt))
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    return max(1, math.ceil(chars / 4))


def continuation_body(doc: dict[str, Any], partial: str, output_so_far: int) -> bytes | None:
    """The request that continues ``doc``'s answer after ``partial``; None when it cannot be
    continued (not chat, several choices, nothing to continue, or no output budget left)."""
    messages = doc.get("messages")
    if not isinstance(messages, list) or not partial:
        return None
    if doc.get("n") not in (None, 1):
        return None
    body = dict(doc)
    body["messages"] = [*messages, {"role": "assistant", "content": partial}]
    body["continue_final_message"] = True
    body["add_generation_prompt"] = False
    body.pop("echo", None)
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    for key in ("max_completion_tokens", "max_tokens"):
        limit = body.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            left = limit - output_so_far
            if left < 1:
                return None
            body[key] = left
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
