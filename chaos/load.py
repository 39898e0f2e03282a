"""The drill's traffic: OpenAI chat completions sent through a sidecar on an open-loop schedule,
and what each one looked like to the client.

Every request becomes a :class:`RequestRecord`: when it started, its status, the factory and
attempt count the sidecar reported, time to first token and in total, and — the point of a drill
— whether it ended complete (a ``finish_reason`` and, for a stream, ``[DONE]``), ended with an
error the client could see, or ended looking like a success while incomplete (a truncated
success, the one outcome TDN must never produce).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from tdn.chaos.spec import LoadSpec
from tdn.chaos.trace import TraceRequest

OK = "ok"
TRUNCATED = "truncated_success"


@dataclass(slots=True)
class RequestRecord:
    """One request's outcome; times are seconds from the drill's start."""

    id: int
    t_start: float
    streamed: bool
    max_tokens: int
    prompt_words: int
    status: int = 0  # 0: no HTTP response at all
    kind: str = ""  # ok, truncated_success, or an error kind (spec.ERROR_KINDS)
    factory: str = ""
    attempts: int = 0
    ttft_s: float | None = None
    total_s: float | None = None
    complete: bool = False
    tokens: int = 0  # content pieces the client received
    usage_prompt: int | None = None
    usage_completion: int | None = None
    queued_s: float = 0.0
    detail: str = ""
    # Set by the analysis: an error TDN's guarantees allow (see measure.excuse_in_flight).
    excused: bool = False

    @property
    def ok(self) -> bool:
        return self.kind == OK

    @property
    def error(self) -> bool:
        return self.kind not in (OK, TRUNCATED, "")

    @property
    def failed(self) -> bool:
        """An error that counts against the drill."""
        return self.error and not self.excused

    @property
    def t_end(self) -> float:
        return self.t_start + (self.total_s or 0.0)

    @property
    def t_first_byte(self) -> float | None:
        return None if self.ttft_s is None else self.t_start + self.ttft_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    streamed: bool
    prompt_words: int
    max_tokens: int


def synthetic_arrivals(spec: LoadSpec) -> list[Arrival]:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``, seeded: a drill replays exactly."""
    rng = random.Random(spec.seed)
    out: list[Arrival] = []
    t = rng.expovariate(spec.rate_rps)
    while t < spec.duration_s:
        out.append(Arrival(t, rng.random() < spec.streaming_share, spec.prompt_words,
                           spec.max_tokens))
        t += rng.expovariate(spec.rate_rps)
    return out


def replay_arrivals(spec: LoadSpec, requests: Sequence[TraceRequest]) -> list[Arrival]:
    rng = random.Random(spec.seed)
    return [Arrival(r.offset_s, rng.random() < spec.streaming_share, max(r.prompt_tokens, 1),
                    r.output_tokens) for r in requests]


def _prompt(i: int, words: int) -> str:
    # Words the simulator counts one token each; the request number makes prompts differ.
    return f"drill request {i}: " + " ".join(["token"] * max(words - 3, 0))


def _error_kind_for_status(status: int) -> str:
    if status == 429:
        return "http_429"
    return "http_5xx" if status >= 500 else "http_4xx"


def _error_message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
        return str(parsed["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


class _StreamState:
    """What a client learns from an SSE body, event by event."""

    def __init__(self) -> None:
        self.done = False
        self.finish_reason = ""
        self.error = ""
        self.malformed = False
        self.tokens = 0
        self.usage: dict[str, Any] | None = None

    def feed(self, data: str) -> bool:
        """Take one ``data:`` payload; True when it carried the first content."""
        if data == "[DONE]":
            self.done = True
            return False
        try:
            event = json.loads(data)
        except ValueError:
            self.malformed = True
            return False
        if not isinstance(event, dict):
            self.malformed = True
            return False
        if event.get("error"):
            error = event["error"]
            self.error = str(error.get("message", error) if isinstance(error, dict) else error)
            return False
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        first = False
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
            if piece:
                first = self.tokens == 0
                self.tokens += 1
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return first


async def _read_stream(resp: aiohttp.ClientResponse, rec: RequestRecord, started: float) -> None:
    loop = asyncio.get_running_loop()
    state = _StreamState()
    try:
        async for raw_line in resp.content:
            line = raw_line.decode(errors="replace").rstrip("\r\n")
            first = line.startswith("data:") and state.feed(line[5:].strip())
            if first and rec.ttft_s is None:
                rec.ttft_s = loop.time() - started
    finally:
        rec.tokens = state.tokens
        if state.usage:
            rec.usage_prompt = state.usage.get("prompt_tokens")
            rec.usage_completion = state.usage.get("completion_tokens")
    rec.complete = state.done and bool(state.finish_reason)
    if state.error:
        rec.kind, rec.detail = "stream_error_event", state.error[:200]
    elif state.malformed:
        rec.kind, rec.detail = "bad_body", "a data: line that is not JSON"
    elif rec.complete:
        rec.kind = OK
    else:
        # The body ended cleanly, no error in sight: a client takes this for the whole answer.
        rec.kind = TRUNCATED
        rec.detail = ("no [DONE]" if not state.done else "") + \
            (" no finish_reason" if not state.finish_reason else "")


async def _read_body(resp: aiohttp.ClientResponse, rec: RequestRecord) -> None:
    body = await resp.read()
    try:
        parsed = json.loads(body)
    except ValueError:
        rec.kind, rec.detail = "bad_body", "the body is not JSON"
        return
    if not isinstance(parsed, dict) or parsed.get("error"):
        rec.kind, rec.detail = "bad_body", _error_message(body)
        return
    usage = parsed.get("usage") or {}
    rec.usage_prompt = usage.get("prompt_tokens")
    rec.usage_completion = usage.get("completion_tokens")
    choices = parsed.get("choices") or [{}]
    rec.tokens = int(rec.usage_completion or 0)
    rec.complete = bool(choices[0].get("finish_reason"))
    rec.kind = OK if rec.complete else TRUNCATED


async def send_one(session: aiohttp.ClientSession, url: str, model: str, arrival: Arrival,
                   rec: RequestRecord, *, timeout_s: float) -> None:
    """Send one request and fill ``rec`` with what the client saw."""
    loop = asyncio.get_running_loop()
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": _prompt(rec.id, arrival.prompt_words)}],
        "max_tokens": arrival.max_tokens,
        "stream": arrival.streamed,
    }
    if arrival.streamed:
        body["stream_options"] = {"include_usage": True}
    started = loop.time()
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json=body,
                                    headers={"x-request-id": f"drill-{rec.id}"}) as resp:
                rec.status = resp.status
                rec.factory = resp.headers.get("x-tdn-factory", "")
                try:
                    rec.attempts = int(resp.headers.get("x-tdn-attempts", "0"))
                except ValueError:
                    rec.attempts = 0
                if resp.status >= 400:
                    rec.kind = _error_kind_for_status(resp.status)
                    rec.detail = _error_message(await resp.read())
                elif arrival.streamed:
                    await _read_stream(resp, rec, started)
                else:
                    await _read_body(resp, rec)
    except TimeoutError:
        rec.kind = "timeout"
        rec.detail = f"no {'end' if rec.status else 'answer'} within {timeout_s:g}s"
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        rec.kind = "refused" if refused else "connect_error"
        rec.detail = str(exc)[:200]
    except (aiohttp.ClientError, OSError) as exc:
        # Broken after the status line: the client saw a cut body (and knows it).
        rec.kind = "stream_broken" if rec.status else "reset"
        rec.detail = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        rec.total_s = loop.time() - started
        if not arrival.streamed and rec.kind == OK:
            # A plain body arrives whole: its first token comes with its last.
            rec.ttft_s = rec.total_s


async def run_load(spec: LoadSpec, base_url: str, arrivals: Sequence[Arrival], t0: float,
                   records: list[RequestRecord]) -> None:
    """Send ``arrivals`` (offsets from ``t0``, the loop-time start of the drill) to
    ``base_url``; append a record per request to ``records`` as it is sent, so that an
    interrupted drill keeps what it saw. Returns when every request has ended."""
    loop = asyncio.get_running_loop()
    url = base_url.rstrip("/") + "/chat/completions"
    slots = asyncio.Semaphore(spec.concurrency)
    connector = aiohttp.TCPConnector(limit=spec.concurrency, force_close=False)

    async def one(i: int, arrival: Arrival, due: float) -> None:
        async with slots:
            now = loop.time()
            rec = RequestRecord(id=i, t_start=now - t0, streamed=arrival.streamed,
                                max_tokens=arrival.max_tokens, prompt_words=arrival.prompt_words,
                                queued_s=max(now - due, 0.0))
            records.append(rec)
            await send_one(session, url, spec.model, arrival, rec, timeout_s=spec.timeout_s)

    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
        for i, arrival in enumerate(arrivals):
            due = t0 + arrival.at
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tg.create_task(one(i, arrival, due), name=f"drill-request-{i}")
