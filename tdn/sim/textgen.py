"""Deterministic stand-ins for a model: token counting, generated words and embedding vectors.

The simulator has no tokenizer and no weights. Everything here is a pure function of the text it
is given, so two simulators (or two runs) answer the same prompt with the same words, which is
what failover and end-to-end tests compare.

Token counting approximation: ``count_tokens(text) = max(1, ceil(len(text) / 4))`` (about four
characters per token, as OpenAI's rule of thumb says for English). A chat prompt is rendered as
one ``role: content`` line per message (see :func:`chat_prompt_text`) and counted the same way.
Generated output is counted differently: every generated word is exactly one token.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from dataclasses import dataclass

# Short, plain words: each is one generated token and needs no JSON escaping beyond quotes.
_VOCABULARY: tuple[str, ...] = (
    "the", "a", "token", "factory", "routes", "traffic", "to", "an", "edge", "center", "site",
    "model", "answer", "is", "and", "of", "with", "low", "latency", "price", "energy", "green",
    "network", "request", "stream", "fast", "safe", "local", "region", "plan", "policy", "keeps",
    "serving", "when", "links", "fail", "over", "in", "milliseconds", "data", "stays", "on",
    "premises", "every", "second", "health", "changes", "capacity", "queue", "grows", "cache",
    "warm", "cheap", "far", "near", "quiet", "busy", "solver", "weights", "backup", "primary",
    "sidecar", "control", "plane",
)

# JSON string literals for every piece the generator can emit, computed once: streaming then
# needs no json.dumps per token.
PIECE_JSON: dict[str, bytes] = {}
for _word in _VOCABULARY:
    for _piece in (_word, " " + _word):
        PIECE_JSON[_piece] = json.dumps(_piece).encode()


def count_tokens(text: str) -> int:
    """Approximate token count of ``text``: about four characters per token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def chat_prompt_text(messages: list[tuple[str, str]]) -> str:
    """Render (role, content) pairs the way the simulator counts and seeds them."""
    return "".join(f"{role}: {content}\n" for role, content in messages)


def text_seed(text: str) -> int:
    """A stable 64-bit seed for ``text`` (independent of PYTHONHASHSEED and of the process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class GeneratedText:
    """What the simulated model says: one piece per token, and why it stopped."""

    pieces: tuple[str, ...]
    finish_reason: str  # "stop" or "length"

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def tokens(self) -> int:
        return len(self.pieces)


def target_length(seed: int, min_tokens: int, max_tokens: int) -> int:
    """The length the model "wants" to answer with, before any ``max_tokens`` cap."""
    span = max(max_tokens - min_tokens, 0) + 1
    return min_tokens + seed % span


def generate(prompt_text: str, max_tokens: int | None, min_len: int, max_len: int,
             continuation: bool = False) -> GeneratedText:
    """Deterministic words for ``prompt_text``.

    The natural length is drawn from [min_len, max_len] by the prompt's seed; when ``max_tokens``
    is smaller the answer is cut there with finish_reason "length", as an engine would. A
    ``continuation`` starts with a space, because it carries on from text already written.
    """
    seed = text_seed(prompt_text)
    natural = target_length(seed, min_len, max_len)
    if max_tokens is not None and max_tokens < natural:
        count, reason = max_tokens, "length"
    else:
        count, reason = natural, "stop"
    words = random.Random(seed).choices(_VOCABULARY, k=count)
    pieces = [" " + w for w in words]
    if pieces and not continuation:
        pieces[0] = words[0]
    return GeneratedText(tuple(pieces), reason)


def embed(text: str, dimensions: int) -> list[float]:
    """A unit-length vector seeded by ``text``: equal texts embed equally, others differ."""
    rng = random.Random(text_seed(text))
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def pack_float32(vector: list[float]) -> bytes:
    """Little-endian float32 bytes, the payload of ``encoding_format: "base64"`` embeddings."""
    return struct.pack(f"<{len(vector)}f", *vector)
