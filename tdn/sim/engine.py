"""The simulated engine: its state, and the life of one request from arrival to last byte.

A generation request is parsed, may draw a fault, pays the base latency, waits for a place in the
batch (:mod:`tdn.sim.scheduler`), prefills, and then emits its deterministic words on the
schedule of the timing model (:mod:`tdn.sim.timing`). Tokens due within a few milliseconds of
each other are written in one ``write`` (and a non-streamed answer wakes up rarely), so
``itl_ms=0`` streams as fast as the socket takes it and thousands of requests per second stay
cheap; a token is never written later than its schedule because of this, at most a tick early.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from tdn.sim.faults import Fault, FaultMode, FaultSwitch
from tdn.sim.metrics import EngineMetrics
from tdn.sim.protocol import (
    DONE,
    ApiError,
    ChunkRenderer,
    EmbeddingRequest,
    GenerationRequest,
    Kind,
    completion_body,
    fault_error,
    parse_chat,
    parse_completion,
    parse_embeddings,
    parse_json_body,
)
from tdn.sim.scheduler import Admission, EngineGate, EngineSlot
from tdn.sim.settings import SimSettings
from tdn.sim.textgen import GeneratedText, embed, generate, pack_float32, text_seed

# Tokens due within this window are written together instead of waking up for each one.
STREAM_TICK_S = 0.004
# A non-streamed answer has nobody watching its tokens; wake rarely (KV use still grows).
BUFFERED_TICK_S = 0.05

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# ORCA load reports, as vLLM sends them (vllm/entrypoints/openai/orca_metrics.py).
LOAD_REPORT_FORMAT_HEADER = "endpoint-load-metrics-format"
LOAD_REPORT_HEADER = "endpoint-load-metrics"


@dataclass(slots=True)
class SimStats:
    """Counters a test (or an operator) reads through ``GET /admin/stats``."""

    requests_total: int = 0  # inference requests received (chat, completions, embeddings)
    in_flight: int = 0
    completed: int = 0
    errors: int = 0  # answered with an error status, injected or not
    aborted: int = 0  # client left, or the stream was cut by a fault


def json_response(body: object, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers,
                        content_type="application/json")


def error_response(err: ApiError) -> web.Response:
    return json_response(err.body(), status=err.status, headers=err.headers or None)


class Simulator:
    """One simulated factory's engine state: scheduler, metrics, fault switch and counters."""

    def __init__(self, settings: SimSettings) -> None:
        settings.check()
        self.settings = settings
        self.timing = settings.timing
        self.gate = EngineGate(Admission(settings.max_concurrency, settings.kv_capacity_tokens))
        self.faults = FaultSwitch(settings.fault, settings.seed)
        self.stats = SimStats()
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = EngineMetrics(settings.models[0], self._load)
        self.registry.register(self.metrics)
        self.fingerprint = "fp_" + hashlib.blake2b(settings.id.encode(),
                                                   digest_size=5).hexdigest()
        self.started = int(time.time())

    def _load(self) -> tuple[int, int, float]:
        admission = self.gate.admission
        return admission.running, admission.waiting, admission.kv_usage

    def load_report(self, report_format: str) -> dict[str, str]:
        """vLLM's ORCA load report header (``endpoint-load-metrics``) in the format the request
        asked for with ``endpoint-load-metrics-format`` (text or json; none when not asked):
        KV-cache usage and requests waiting, as its Prometheus gauges read now."""
        kind = report_format.strip().lower()
        if kind not in ("text", "json"):
            return {}
        admission = self.gate.admission
        metrics = (("kv_cache_usage_perc", float(admission.kv_usage)),
                   ("num_requests_waiting", float(admission.waiting)))
        if kind == "text":
            value = "TEXT " + ", ".join(f"named_metrics.{k}={v}" for k, v in metrics)
        else:
            value = "JSON " + json.dumps({"named_metrics": dict(metrics)})
        return {LOAD_REPORT_HEADER: value}

    def stats_json(self) -> dict[str, object]:
        admission = self.gate.admission
        return {
            "id": self.settings.id,
            "requests_total": self.stats.requests_total,
            "in_flight": self.stats.in_flight,
            "completed": self.stats.completed,
            "errors": self.stats.errors,
            "aborted": self.stats.aborted,
            "running": admission.running,
            "waiting": admission.waiting,
            "kv_cache_usage": admission.kv_usage,
            "faults_injected": dict(self.faults.injected),
            "fault": self.faults.current.to_json(),
        }

    # --- request entry points ---------------------------------------------------------------

    async def handle_generation(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        arrival = asyncio.get_running_loop().time()
        self.stats.requests_total += 1
        self.stats.in_flight += 1
        try:
            body = parse_json_body(await request.read())
            s = self.settings
            req = (parse_chat(body, s.models, s.max_model_len, s.supports_prefill, s.id)
                   if kind == "chat" else parse_completion(body, s.models, s.max_model_len))
            fault = self.faults.draw()
            await self._before_engine(fault)
            return await self._generate(request, req, fault, arrival)
        except ApiError as err:
            self.stats.errors += 1
            return error_response(err)
        finally:
            self.stats.in_flight -= 1

    async def handle_embeddings(self, request: web.Request) -> web.Response:
        arrival = asyncio.get_running_loop().time()
        self.stats.requests_total += 1
        self.stats.in_flight += 1
        try:
            body = parse_json_body(await request.read())
            s = self.settings
            req = parse_embeddings(body, s.models, s.max_model_len, s.embedding_dimensions)
            await self._before_engine(self.faults.draw())
            return await self._embed(req, arrival)
        except ApiError as err:
            self.stats.errors += 1
            return error_response(err)
        finally:
            self.stats.in_flight -= 1

    async def _before_engine(self, fault: Fault) -> None:
        """Faults that strike before the engine sees the request, then the base latency."""
        if fault.mode is FaultMode.ERROR:
            raise fault_error(fault.status, self.settings.id, fault.retry_after)
        if fault.mode is FaultMode.HANG:
            # Never answers; aiohttp cancels this when the client leaves or the server stops.
            await asyncio.Event().wait()
        if fault.mode is FaultMode.STALL_FIRST_TOKEN:
            await asyncio.sleep(fault.seconds)
        if self.timing.base_latency_ms > 0:
            await asyncio.sleep(self.timing.base_latency_ms / 1000.0)

    # --- embeddings ---------------------------------------------------------------------------

    async def _embed(self, req: EmbeddingRequest, arrival: float) -> web.Response:
        loop = asyncio.get_running_loop()
        prompt_tokens = sum(req.input_tokens)
        async with self.gate.slot(prompt_tokens) as slot:
            await asyncio.sleep(self.timing.prefill_seconds(prompt_tokens))
            data: list[dict[str, object]] = []
            for i, text in enumerate(req.inputs):
                vector = embed(text, req.dimensions)
                encoded: object = vector
                if req.base64:
                    encoded = base64.b64encode(pack_float32(vector)).decode()
                data.append({"object": "embedding", "index": i, "embedding": encoded})
            self.metrics.queue_time.observe(slot.queue_wait_s)
        self.metrics.e2e.observe(loop.time() - arrival)
        self.metrics.finished("stop", prompt_tokens, 0)
        self.stats.completed += 1
        return json_response({"id": f"embd-{uuid.uuid4().hex}", "object": "list",
                              "created": int(time.time()), "model": req.model, "data": data,
                              "usage": {"prompt_tokens": prompt_tokens,
                                        "total_tokens": prompt_tokens}})

    # --- generation ---------------------------------------------------------------------------

    async def _generate(self, request: web.Request, req: GenerationRequest, fault: Fault,
                        arrival: float) -> web.StreamResponse:
        s = self.settings
        budget = req.max_tokens
        if budget is None:
            budget = s.max_model_len - req.prompt_tokens
        output = generate(req.prompt_text, budget, s.min_output_tokens, s.max_output_tokens,
                          continuation=req.continuation)
        prefix = "chatcmpl" if req.kind == "chat" else "cmpl"
        renderer = ChunkRenderer(req.kind, f"{prefix}-{uuid.uuid4().hex}", int(time.time()),
                                 req.model, self.fingerprint)
        resp: web.StreamResponse | None = None
        report_format = request.headers.get(LOAD_REPORT_FORMAT_HEADER, "")
        if req.stream:
            # As vLLM: a stream's headers (and its load report) go out before it is admitted.
            resp = web.StreamResponse(headers={**SSE_HEADERS,
                                               **self.load_report(report_format)})
            await resp.prepare(request)
        run = _Run(self, request=request, req=req, fault=fault, output=output,
                   renderer=renderer, resp=resp, arrival=arrival)
        async with self.gate.slot(req.prompt_tokens) as slot:
            try:
                answer = await run.execute(slot)
                if resp is None:
                    answer.headers.update(self.load_report(report_format))
                return answer
            except asyncio.CancelledError:
                # The client left (aiohttp cancels its handler) or the server is stopping.
                self.record_abort(req, run.emitted)
                raise
            except ConnectionError:
                # A write found the client gone before the cancellation did.
                self.record_abort(req, run.emitted)
                return resp or web.Response()

    def record_abort(self, req: GenerationRequest, emitted: int) -> None:
        """Count a generation that ended before its answer was delivered."""
        self.metrics.finished("abort", req.prompt_tokens, emitted)
        self.stats.aborted += 1


class _Run:
    """One generation in progress: emits tokens on schedule, applying the drawn fault."""

    def __init__(self, sim: Simulator, *, request: web.Request, req: GenerationRequest,
                 fault: Fault, output: GeneratedText, renderer: ChunkRenderer,
                 resp: web.StreamResponse | None, arrival: float) -> None:
        self.sim = sim
        self.request = request
        self.req = req
        self.fault = fault
        self.output = output
        self.renderer = renderer
        self.resp = resp
        self.arrival = arrival
        self.emitted = 0
        self.buffer: list[bytes] = []

    async def _flush(self) -> None:
        if self.resp is not None and self.buffer:
            data = b"".join(self.buffer)
            self.buffer.clear()
            await self.resp.write(data)

    def _cut(self) -> None:
        """Close the connection as a crashing engine would: no finish, no [DONE]."""
        transport = self.request.transport
        if transport is not None:
            transport.close()

    async def execute(self, slot: EngineSlot) -> web.StreamResponse:
        sim, req, fault, output = self.sim, self.req, self.fault, self.output
        loop = asyncio.get_running_loop()
        metrics = sim.metrics
        metrics.queue_time.observe(slot.queue_wait_s)
        await asyncio.sleep(sim.timing.prefill_seconds(req.prompt_tokens))

        pieces = output.pieces
        n = len(pieces)
        itl_override = fault.itl_ms if fault.mode is FaultMode.SLOW_TOKENS else None
        gaps = sim.timing.token_gaps(n, text_seed(req.prompt_text), itl_override)
        trigger = -1
        if fault.mode in (FaultMode.STALL_MID_STREAM, FaultMode.CUT_STREAM,
                          FaultMode.MALFORMED_CHUNK):
            # An answer shorter than after_tokens still gets the fault, after its last token.
            trigger = min(fault.after_tokens, n)
        if fault.mode is FaultMode.STALL_MID_STREAM and 0 < trigger < n:
            gaps[trigger - 1] += fault.seconds
        tick = STREAM_TICK_S if self.resp is not None else BUFFERED_TICK_S
        render = self.renderer.content
        if self.resp is not None:
            self.buffer.append(self.renderer.opening())
            if req.echo_prefix:
                self.buffer.append(render(req.echo_prefix))

        due = loop.time()
        first_token_at = due
        for i in range(n + 1):
            if i == trigger:
                if fault.mode is FaultMode.STALL_MID_STREAM:
                    if i in (0, n):  # otherwise the stall is already in gaps[i - 1]
                        due += fault.seconds
                else:
                    ended = await self._break_stream(due)
                    if ended is not None:
                        return ended
            if i == n:
                break
            if i > 0:
                due += gaps[i - 1]
            wait = due - loop.time()
            # Wake up only for tokens due beyond the tick; the last one is never early.
            if wait > tick or (i == n - 1 and wait > 0):
                await self._flush()
                await asyncio.sleep(wait)
            if i == 0:
                first_token_at = loop.time()
            if self.resp is not None:
                self.buffer.append(render(pieces[i]))
            self.emitted += 1
            slot.grow(1)
        await self._sleep_until(due)

        metrics.ttft.observe(first_token_at - self.arrival)
        metrics.observe_gaps(gaps)
        metrics.e2e.observe(loop.time() - self.arrival)
        metrics.finished(output.finish_reason, req.prompt_tokens, n)
        sim.stats.completed += 1
        if self.resp is None:
            return json_response(self._body(req.echo_prefix + output.text))
        self.buffer.append(self.renderer.finish(output.finish_reason))
        if req.include_usage:
            self.buffer.append(self.renderer.usage(req.prompt_tokens, n))
        self.buffer.append(DONE)
        await self._flush()
        await self.resp.write_eof()
        return self.resp

    async def _break_stream(self, due: float) -> web.StreamResponse | None:
        """Apply a cut_stream or malformed_chunk fault; the response it ends with, if it does."""
        fault, resp = self.fault, self.resp
        if fault.mode is FaultMode.CUT_STREAM:
            await self._sleep_until(due)
            self._cut()
            self.sim.record_abort(self.req, self.emitted)
            return resp or web.Response()
        # malformed_chunk
        if resp is None:
            return self._malformed_body()
        self.buffer.append(self.renderer.malformed())
        if fault.then != "stop":
            return None
        await self._sleep_until(due)
        await self._flush()
        await resp.write_eof()
        self.sim.record_abort(self.req, self.emitted)
        return resp

    def _body(self, text: str) -> dict[str, object]:
        return completion_body(
            self.req.kind, response_id=self.renderer.response_id, created=self.renderer.created,
            model=self.req.model, fingerprint=self.sim.fingerprint, text=text,
            finish_reason=self.output.finish_reason, prompt_tokens=self.req.prompt_tokens,
            completion_tokens=self.output.tokens)

    async def _sleep_until(self, due: float) -> None:
        """Write what is buffered, then wait until ``due`` (loop time)."""
        await self._flush()
        wait = due - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)

    def _malformed_body(self) -> web.Response:
        """A 200 whose JSON body is cut short, as a broken engine or proxy might send."""
        body = json.dumps(self._body(self.output.text))
        # The engine finished; only the wire format broke, so it counts as served.
        self.sim.metrics.finished(self.output.finish_reason, self.req.prompt_tokens,
                                  self.output.tokens)
        self.sim.stats.completed += 1
        return web.Response(body=body[: len(body) // 2].encode(), content_type="application/json")
