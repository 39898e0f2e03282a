"""A fixed-delay OpenAI-compatible upstream for the data-plane benchmark, as cheap as Python allows.

``python -m bench.dataplane_upstream --port P`` serves ``POST .../chat/completions`` with a canned
answer on a raw asyncio :class:`~asyncio.Protocol` (no framework, no JSON parsing): the benchmark
measures what a proxy *adds*, so the upstream must cost as little per request as possible and be
measured directly in the same run. It runs in its own process so its CPU is never the proxy's.

What a request gets is chosen by its ``model`` name, which every proxy under test forwards
unchanged (unlike custom headers, which LiteLLM drops): ``bench-d<ms>`` answers after ``<ms>``
milliseconds; ``bench-sse-i<ms>`` (with ``"stream": true``) streams ``max_tokens`` chunks
``<ms>`` apart. Any other model answers at once. Streams end with a finish chunk, a usage chunk
and ``data: [DONE]`` as OpenAI's do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
from collections import deque

_MODEL = re.compile(rb'"model"\s*:\s*"([^"]{1,100})"')
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_MAX_TOKENS = re.compile(rb'"max_tokens"\s*:\s*(\d{1,7})')
_DELAY = re.compile(r"-d(\d+(?:\.\d+)?)")
_INTERVAL = re.compile(r"-i(\d+(?:\.\d+)?)")
DEFAULT_STREAM_CHUNKS = 16
MAX_HEADER_BYTES = 64 * 1024


def completion_body(model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1727346168,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "The answer is 42."}}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
    }, separators=(",", ":")).encode()


def _chunk(model: str, delta: dict[str, str], finish: str | None) -> bytes:
    doc = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1727346168,
           "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    # Each SSE event is one HTTP/1.1 chunk, so a proxy sees one event per read when they are
    # spaced in time, as tokens from an engine are.
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Plan:
    """What to answer for one model name: delay, and for streams the chunk interval."""

    def __init__(self, model: str) -> None:
        delay = _DELAY.search(model)
        interval = _INTERVAL.search(model)
        self.delay_s = float(delay.group(1)) / 1000.0 if delay else 0.0
        self.interval_s = float(interval.group(1)) / 1000.0 if interval else 0.0
        body = completion_body(model)
        self.response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.stream_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + _http_chunk(_chunk(model, {"role": "assistant", "content": ""},
                                                 None)))
        self.token = _http_chunk(_chunk(model, {"content": " tok"}, None))
        usage = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                 "created": 1727346168, "model": model, "choices": [],
                 "usage": {"prompt_tokens": 12, "completion_tokens": 0, "total_tokens": 12}}
        self.tail = (_http_chunk(_chunk(model, {}, "stop"))
                     + _http_chunk(b"data: " + json.dumps(usage, separators=(",", ":")).encode()
                                   + b"\n\n")
                     + _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


_PLANS: dict[bytes, _Plan] = {}


def _plan_for(model: bytes) -> _Plan:
    plan = _PLANS.get(model)
    if plan is None:
        plan = _PLANS[model] = _Plan(model.decode(errors="replace"))
    return plan


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests by Content-Length, answer them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.pending: deque[tuple[_Plan, bool, int]] = deque()
        self.busy = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES and self.transport is not None:
                    self.transport.close()
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15: stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[end + 4: total]
            self.buffer = self.buffer[total:]
            if b"connection: close" in head:
                self.close_after = True
            model = _MODEL.search(body)
            plan = _plan_for(model.group(1) if model else b"bench")
            stream = _STREAM.search(body) is not None
            chunks = DEFAULT_STREAM_CHUNKS
            if stream:
                found = _MAX_TOKENS.search(body)
                if found:
                    chunks = int(found.group(1))
            self.pending.append((plan, stream, chunks))
            if not self.busy:
                self._next()

    def _next(self) -> None:
        if not self.pending or self.transport is None:
            self.busy = False
            if self.close_after and self.transport is not None:
                self.transport.close()
            return
        self.busy = True
        plan, stream, chunks = self.pending.popleft()
        if plan.delay_s > 0:
            asyncio.get_running_loop().call_later(plan.delay_s, self._answer, plan, stream,
                                                  chunks)
        else:
            self._answer(plan, stream, chunks)

    def _answer(self, plan: _Plan, stream: bool, chunks: int) -> None:
        if self.transport is None:
            return
        if not stream:
            self.transport.write(plan.response)
            self._next()
            return
        self.transport.write(plan.stream_head)
        if plan.interval_s <= 0:
            self.transport.write(plan.token * chunks + plan.tail)
            self._next()
            return
        self._tick(plan, chunks)

    def _tick(self, plan: _Plan, left: int) -> None:
        if self.transport is None:
            return
        if left <= 0:
            self.transport.write(plan.tail)
            self._next()
            return
        self.transport.write(plan.token)
        asyncio.get_running_loop().call_later(plan.interval_s, self._tick, plan, left - 1)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024,
                                      reuse_address=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane_upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
