"""Reading an upstream's OpenAI SSE stream event by event while relaying it.

The sidecar relays a stream's bytes, but it must know a few things about them: whether the answer
finished (a ``finish_reason``, ``[DONE]``), whether an event is broken (not JSON: a cut or garbled
chunk), the usage chunk (to meter it, and to drop it when only the sidecar asked for it), how much
output the client has received, and, when the stream may have to be continued elsewhere, the text
itself. :class:`StreamScan` learns this with the cheapest test that answers each question: byte
searches on every event, a regular expression where JSON spacing may vary, and a full
``json.loads`` only for the first event of a stream, usage and error events, or every event when
the text must be kept (continuation possible) or rewritten (a continuation being spliced in).

Output tokens of a stream without usage are estimated as the number of events that carry output
(engines stream one token per event; OpenAI, vLLM and SGLang do).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
# An event that has not ended after this many bytes is not an SSE event of an OpenAI stream.
MAX_EVENT_BYTES = 1024 * 1024

_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')
# Output-bearing fields with a non-empty string value, or tool calls (which carry arguments).
_OUTPUT = re.compile(
    rb'"(?:content|text|reasoning_content|refusal)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')


@dataclass(frozen=True, slots=True)
class Break:
    """Why a stream stopped being relayable: ``reason`` is a metric label, ``detail`` a phrase
    that follows "factory X ..." (it never contains a key or any output)."""

    reason: str
    detail: str


@dataclass(slots=True)
class StreamTotals:
    """What a client stream has received so far, across every upstream spliced into it."""

    response_id: str = ""
    object: str = "chat.completion.chunk"
    created: int = 0
    model: str = ""
    output_events: int = 0
    text_parts: list[str] = field(default_factory=list)
    tool_calls: bool = False
    usage_sent: bool = False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def data_event(doc: Any) -> bytes:
    return b"data: " + _dumps(doc) + b"\n\n"


def _payload(event: bytes) -> bytes | None:
    """The data of one event (multi-line data joined), or None for a comment or data-less event."""
    if event[:6] == b"data: ":
        if b"\n" not in event:
            return event[6:]
    elif event[:1] == b":":
        return None
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
    return b"\n".join(lines) if lines else None


class StreamScan:
    """One upstream stream as it is relayed: feed it bytes, write what it returns.

    ``segment`` 0 is the stream that started the answer; a later segment is a continuation
    spliced in, whose events are rewritten to the first segment's response id, whose opening role
    chunk is dropped, and whose usage chunk is replaced by the whole answer's usage:
    ``splice_base`` (the original prompt's tokens, output tokens the client had before this
    segment) plus this segment's completion tokens.
    """

    def __init__(self, totals: StreamTotals, *, client_wants_usage: bool, choices: int = 1,
                 track_text: bool = False, segment: int = 0,
                 splice_base: tuple[int, int] = (0, 0)) -> None:
        self.totals = totals
        self.client_wants_usage = client_wants_usage
        self.choices = max(choices, 1)
        self.track_text = track_text
        self.segment = segment
        self.splice_base = splice_base
        self.held = b""
        self.done = False
        self.finishes = 0
        self.usage: dict[str, Any] | None = None
        self.output_events = 0
        self.substantive = False
        self.broken: Break | None = None
        self._first = True

    @property
    def finished(self) -> bool:
        """Every choice has a finish reason: the answer is complete even without ``[DONE]``."""
        return self.finishes >= self.choices

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from upstream; return the whole events to write to the client.

        An unfinished event is held until its end arrives. A broken event sets :attr:`broken`
        and it, and anything after it, is not returned.
        """
        data = self.held + chunk if self.held else chunk
        if b"\r" in data:
            # SSE allows CR and CRLF line ends; OpenAI-compatible engines send LF. Normalising
            # keeps one code path; the events mean the same to any SSE client.
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.held = data
            if len(data) > MAX_EVENT_BYTES:
                self.broken = Break("malformed_chunk", "sent an event that never ended")
            return b""
        block, self.held = data[: cut + 2], data[cut + 2:]
        events = block.split(b"\n\n")
        events.pop()
        out: list[bytes] | None = None
        for i, event in enumerate(events):
            kept = self._event(event) if event else event
            if kept is event and out is None:
                continue
            if out is None:
                # Something changed: from here on, events are copied one by one.
                out = [e + b"\n\n" for e in events[:i]]
            if self.broken is not None:
                self.held = b""
                break
            if kept is not None:
                out.append(kept + b"\n\n")
        return block if out is None else b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        """The event to relay (``event`` itself when unchanged), or None to drop it."""
        payload = _payload(event)
        if payload is None:
            return event
        if payload == b"[DONE]":
            self.done = True
            self.substantive = True
            return event
        body = payload.strip()
        if body[:1] != b"{" or body[-1:] != b"}":
            self.broken = Break("malformed_chunk", "sent a chunk that is not JSON")
            return None
        if (self._first or self.track_text or self.segment or b'"error"' in body
                or (b'"usage"' in body and _USAGE.search(body))):
            return self._parsed(event, body)
        if _FINISH.search(body):
            self.finishes += 1
            self.substantive = True
        if _OUTPUT.search(body):
            self.output_events += 1
            self.totals.output_events += 1
            self.substantive = True
        return event

    def _parsed(self, event: bytes, body: bytes) -> bytes | None:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.broken = Break("malformed_chunk", "sent a chunk that is not valid JSON")
            return None
        if not isinstance(doc, dict):
            self.broken = Break("malformed_chunk", "sent a chunk that is not a JSON object")
            return None
        error = doc.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else error
            self.broken = Break("stream_error", "sent an error event"
                                + (f" ({str(message)[:200]})" if message else ""))
            return None
        first, self._first = self._first, False
        totals = self.totals
        if first and self.segment == 0:
            totals.response_id = str(doc.get("id") or "")
            totals.object = str(doc.get("object") or totals.object)
            created = doc.get("created")
            totals.created = created if isinstance(created, int) else 0
            totals.model = str(doc.get("model") or "")
        changed = False
        choices = doc.get("choices")
        output = False
        opening = False
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if choice.get("finish_reason"):
                    self.finishes += 1
                    self.substantive = True
                delta = choice.get("delta")
                delta = delta if isinstance(delta, dict) else {}
                piece = delta.get("content")
                if piece is None:
                    piece = choice.get("text")
                if isinstance(piece, str) and piece:
                    output = True
                    if self.track_text:
                        totals.text_parts.append(piece)
                elif any(delta.get(k) for k in ("reasoning_content", "refusal")):
                    output = True
                if delta.get("tool_calls"):
                    output = True
                    totals.tool_calls = True
                if "role" in delta and not output and not choice.get("finish_reason"):
                    opening = True
        if output:
            self.output_events += 1
            totals.output_events += 1
            self.substantive = True
        usage = doc.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            self.substantive = True
            if not self.client_wants_usage:
                if not choices:
                    return None
                del doc["usage"]
                changed = True
            elif self.segment:
                doc["usage"] = spliced_usage(self.splice_base, usage)
                changed = True
            if self.client_wants_usage:
                totals.usage_sent = True
        if self.segment:
            if first and opening:
                # The client already has the answer's opening role chunk.
                return None
            if totals.response_id and doc.get("id") != totals.response_id:
                doc["id"] = totals.response_id
                changed = True
        return _dumps_event(doc) if changed else event


def _dumps_event(doc: Any) -> bytes:
    return b"data: " + _dumps(doc)


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) and value >= 0 else 0


def spliced_usage(base: tuple[int, int], segment_usage: dict[str, Any]) -> dict[str, int]:
    """The usage of an answer spliced from several streams, as the client was given it: the
    original prompt once, and every segment's output."""
    prompt, before = base
    completion = before + _count(segment_usage, "completion_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def usage_tokens(usage: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, completion, cached prompt) tokens of an OpenAI usage object, 0 where absent."""
    details = usage.get("prompt_tokens_details")
    cached = _count(details, "cached_tokens") if isinstance(details, dict) else 0
    return _count(usage, "prompt_tokens"), _count(usage, "completion_tokens"), cached


def usage_event(totals: StreamTotals, usage: dict[str, int]) -> bytes:
    """A usage-only chunk for ``totals``' response, as OpenAI sends with ``include_usage``."""
    return data_event({"id": totals.response_id, "object": totals.object,
                       "created": totals.created, "model": totals.model, "choices": [],
                       "usage": usage})


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
