"""One proxied request from its body to its last byte.

The request is read and checked once (:mod:`openai_api`), routed by the live routing table
(:mod:`routing_table`), narrowed by factory health (:mod:`health`: ejections, cooldowns, panic),
sent to candidates until one commits (:mod:`failover`), and delivered: a whole body, a client
error passed on unchanged, or a stream relayed event by event (:mod:`stream_relay`).

Two paths go beyond one attempt loop. A ``context_length_exceeded`` answer is re-sent to the
route's ``context_fallback_model`` when the policy names one (the response then carries
``x-tdn-fallback-model``); without one it reaches the client unchanged, and it is never retried
on the same model. A stream that breaks after output reached the client is continued on a
prefill-capable backup when the policy allows (:mod:`continuation`), else ended with an error
event. What the client was given is metered, per answering factory (:mod:`metering`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from time import perf_counter

from tdn.domain import FactoryEndpoint

from . import api_errors, headers, openai_api
from .access_log import AccessRecord
from .continuation import continuation_body, estimate_prompt_tokens
from .credentials import Credentials
from .deadlines import MAX_IDLE_S, attempt_deadline, generation_allowance, parse_client_limit
from .failover import (
    AllAttemptsFailed,
    AttemptFailure,
    AttemptLoop,
    CandidateUnusable,
    ClientError,
    Committed,
    RetryTicket,
)
from .health import FactoryHealth
from .http_server import Reply, Request, Responder
from .metering import Meter, usage_from_body
from .metrics import SidecarMetrics
from .outlier import Kind
from .overhead import OverheadClock
from .relay import relay_large_body, whole_response
from .routing_table import RoutingTable
from .sse import DONE, Break, StreamScan, StreamTotals, usage_event, usage_tokens
from .stream_relay import Write, pump
from .tenants import Tenants
from .upstream_client import UpstreamPool, UpstreamResponse


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Connection handling towards factories and limits towards clients."""

    # Connecting to a healthy factory takes well under a second; past that, the next one is
    # likelier to answer sooner.
    connect_timeout_s: float = 1.0
    max_body_bytes: int = 32 * 1024 * 1024
    pool_limit: int = 1024
    keepalive_timeout_s: float = 30.0


@dataclass(slots=True)
class Shared:
    """What every exchange of one sidecar uses."""

    pool: UpstreamPool
    credentials: Credentials
    metrics: SidecarMetrics
    health: FactoryHealth
    tenants: Tenants
    meter: Meter
    settings: ProxySettings


def _is_context_length(err: ClientError) -> bool:
    if err.status != 400:
        return False
    try:
        doc = json.loads(err.body)
    except (ValueError, RecursionError):
        return False
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        # vLLM answers {"object": "error", "message": ..., "code": 400} at the top level.
        error = doc if isinstance(doc, dict) else {}
    if error.get("code") == "context_length_exceeded":
        return True
    message = error.get("message")
    return isinstance(message, str) and "maximum context length" in message.lower()


def _arm_idle(upstream: UpstreamResponse, idle_s: float) -> None:
    """From a stream's commit on, a silence longer than ``idle_s`` breaks it.

    Until the commit the read timeout was at least the first-byte deadline (see
    ``Exchange._send``), so a slow prefill is judged by the deadline, not the idle timeout.
    """
    upstream.read_timeout = idle_s


class Exchange:
    """Serves one request; :meth:`run` returns the response or raises ApiError."""

    def __init__(self, shared: Shared, request: Request, responder: Responder,
                 endpoint: openai_api.Endpoint, client: headers.ClientHeaders, *,
                 record: AccessRecord, clock: OverheadClock, ticket: RetryTicket) -> None:
        self.shared = shared
        self.request = request
        self.responder = responder
        self.client = client
        self.endpoint = endpoint
        self.record = record
        self.clock = clock
        self.ticket = ticket
        self._unmetered: tuple[FactoryEndpoint, bytes] | None = None

    def close(self) -> None:
        """The request has ended: break the reference cycle with its attempt loop."""
        loop = getattr(self, "loop", None)
        if loop is not None:
            loop.detach()

    # --- routing and attempts ------------------------------------------------------------------

    async def run(self, table: RoutingTable | None) -> Reply | None:
        """Serve the request: a whole reply to send, or None when a stream was answered."""
        record, clock = self.record, self.clock
        # The server read the body whole before the request started (and refused one too large).
        parsed = openai_api.parse_request(self.endpoint, self.request.body)
        self.parsed = parsed
        record.model = parsed.model
        record.streamed = parsed.stream
        client = self.client
        record.traffic_class = client.traffic_class
        if table is None:
            record.outcome = "no_policy"
            raise api_errors.no_policy()
        self.table = table
        entry = table.route(parsed.model, record.traffic_class)
        if entry is None:
            record.outcome = "unknown_model"
            raise api_errors.model_not_found(parsed.model)
        self.entry = entry
        self.client_limit = parse_client_limit(client.first_byte_timeout_ms)
        self.allowance = generation_allowance(parsed.stream or self.endpoint is
                                              openai_api.EMBEDDINGS, parsed.max_tokens)
        record.tenant = self.shared.tenants.tenant_of(client.authorization, client.api_key)
        self.doc = parsed.doc
        self.body = parsed.upstream_body()
        self.totals: StreamTotals | None = None  # made for the first stream (_new_scan)
        self.base_headers = client.upstream()
        self.loop = AttemptLoop(send=self._send, health=self.shared.health, ticket=self.ticket,
                                deadline_for=self._deadline, new_scan=self._new_scan,
                                clock=clock, on_failure=self._on_failure,
                                buffer_limit=self.shared.settings.max_body_bytes,
                                watch_first_byte=parsed.stream)
        result = await self._open()
        record.attempts = self.loop.sent
        record.factory = result.endpoint.id
        record.tier = result.endpoint.tier
        if isinstance(result, ClientError):
            record.status = result.status
            record.outcome = "upstream_4xx"
            response = whole_response(result.status, result.reason, result.headers,
                                      result.body, self._client_headers(result.endpoint))
            self._first_byte(result.endpoint)
            return response
        record.status = result.response.status
        if result.sse:
            await self._deliver_stream(result)
            return None
        return await self._deliver_body(result)

    def _new_scan(self) -> StreamScan:
        totals = self.totals
        if totals is None:
            totals = self.totals = StreamTotals()
        return StreamScan(totals, client_wants_usage=self.parsed.include_usage,
                          choices=self.parsed.choices,
                          track_text=self.entry.continuation_possible and self.parsed.stream)

    def _deadline(self, factory: FactoryEndpoint, last: bool) -> float:
        deadlines = self.entry.last_resort if last else self.entry.deadlines
        policy = deadlines.get(factory.id)
        if policy is None:  # a continuation candidate of the same route always has one
            policy = min(deadlines.values(), default=30.0)
        return attempt_deadline(policy, self.allowance, self.client_limit)

    def _send(self, factory: FactoryEndpoint, body: bytes,
              deadline: float) -> Awaitable[UpstreamResponse]:
        """Start one attempt (what to await for the answer's head); a plain function so that
        the request's coroutine chain is one level shorter."""
        up_headers = self.base_headers
        if factory.credential_ref:
            authorization = self.shared.credentials.authorization(factory.credential_ref)
            line = None
            if authorization is not None:
                try:
                    line = headers.authorization_line(authorization)
                except ValueError:
                    line = None
            if line is None:
                raise CandidateUnusable(
                    "no_credential", f"factory {factory.id} needs credential "
                    f"{factory.credential_ref!r}, which this sidecar does not hold (or holds "
                    f"in a form that cannot be sent)")
            up_headers += line
        # The URL is the policy's base_url and the endpoint's fixed suffix, nothing else; the
        # client follows no redirect, so an upstream cannot send the request (and its
        # credential) anywhere the policy did not name.
        url = factory.base_url.rstrip("/") + self.endpoint.upstream_suffix
        # Until an answer commits, the first-byte deadline governs: a non-streamed answer is
        # silent until it is whole, a stream until its first output, and the socket may stay
        # quiet that long. A committed stream's silences are bounded by the idle timeout
        # (armed at the commit, see _arm_idle).
        read_timeout = max(self.table.idle_timeouts.get(factory.id, MAX_IDLE_S), deadline)
        return self.shared.pool.request(b"POST", url, up_headers, body, deadline,
                                        read_timeout=read_timeout)

    def _on_failure(self, failure: AttemptFailure) -> None:
        self.shared.metrics.failover(failure.factory_id, failure.tier, self.entry.model,
                                     failure.reason)
        self.record.failovers.append(f"{failure.factory_id}:{failure.reason}")

    async def _open(self) -> Committed | ClientError:
        """The first answer, after a fallback to a larger-context model if needed."""
        entry = self.entry
        tried_models = {entry.model}
        while True:
            # The first candidate may be passed over if it is slow to start streams now or
            # busy by its own load report.
            candidates, panic, wait = self.shared.health.select(
                entry.plan.order(), entry.plan.primary_ids)
            if panic:
                self.shared.metrics.panicked(entry.model)
            if not candidates:
                if wait > 0:
                    self.record.outcome = "rate_limited"
                    err = api_errors.rate_limited(entry.model, wait)
                    err.headers["Retry-After"] = str(math.ceil(wait))
                    raise err
                self.record.outcome = "no_route"
                raise api_errors.no_candidates(entry.model)
            try:
                result = await self.loop.run(candidates, self.body, panic=panic)
            except AllAttemptsFailed as exc:
                raise self._failed(exc) from None
            fallback = entry.fallback_model
            if (not isinstance(result, ClientError) or not fallback
                    or fallback in tried_models or not _is_context_length(result)):
                return result
            next_entry = self.table.route(fallback, self.record.traffic_class)
            if next_entry is None:
                return result
            if not self.ticket.acquire():
                self._budget_exhausted()
                return result
            # The same request, for the larger model; never again for the model that refused.
            self.shared.metrics.fell_back(entry.model, fallback)
            self.record.fallback_model = fallback
            self.record.failovers.append(f"{result.endpoint.id}:context_length_exceeded")
            tried_models.add(fallback)
            self.doc = {**self.doc, "model": fallback}
            self.body = self.parsed.with_changes(model=fallback)
            self.entry = entry = next_entry

    def _budget_exhausted(self) -> None:
        self.record.retry_budget_exhausted = True
        self.shared.metrics.budget_exhausted(self.entry.model)

    def _failed(self, exc: AllAttemptsFailed) -> api_errors.ApiError:
        record, model = self.record, self.entry.model
        record.attempts = self.loop.sent
        last = exc.failures[-1] if exc.failures else None
        last_detail = last.detail if last is not None else "no attempt was allowed"
        if exc.budget_exhausted:
            record.outcome = "retry_budget_exhausted"
            self._budget_exhausted()
            status = last.status if last is not None and (last.status >= 500
                                                          or last.status == 429) else 502
            err = api_errors.retry_budget_exhausted(model, status, exc.attempts, last_detail)
            err.headers[headers.RETRY_BUDGET] = "exhausted"
            return err
        if exc.retry_after_s > 0 and all(f.reason in ("rate_limited", "no_credential")
                                         for f in exc.failures):
            record.outcome = "rate_limited"
            err = api_errors.rate_limited(model, exc.retry_after_s)
            err.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
            return err
        record.outcome = "all_failed"
        return api_errors.all_attempts_failed(model, exc.attempts, last_detail)

    # --- delivery ------------------------------------------------------------------------------

    def _client_headers(self, factory: FactoryEndpoint) -> list[tuple[bytes, bytes]]:
        record = self.record
        out = [
            (b"x-request-id", record.request_id.encode()),
            (b"x-tdn-factory", factory.id.encode("latin-1", "replace")),
            (b"x-tdn-tier", factory.tier.encode()),
            (b"x-tdn-attempts", b"%d" % self.loop.sent),
            (b"x-tdn-overhead-ms", b"%.3f" % (self.clock.own_s() * 1000.0)),
        ]
        if record.fallback_model:
            out.append((b"x-tdn-fallback-model",
                        record.fallback_model.encode("latin-1", "replace")))
        if record.retry_budget_exhausted:
            out.append((b"x-tdn-retry-budget", b"exhausted"))
        return out

    def _first_byte(self, factory: FactoryEndpoint) -> None:
        elapsed = self.clock.elapsed_s()
        self.record.ttft_ms = elapsed * 1000.0
        # Tier is a StrEnum: the member is its value, without the enum property's cost.
        self.shared.metrics.first_byte(factory.id, factory.tier, self.entry.model, elapsed)

    def _meter(self, factory: FactoryEndpoint, prompt: int, completion: int,
               cached: int = 0) -> None:
        model = self.entry.model
        self.shared.meter.record(self.record.tenant, factory, model, prompt_tokens=prompt,
                                 completion_tokens=completion, cached_prompt_tokens=cached,
                                 traffic_class=self.record.traffic_class)
        self.shared.metrics.metered(factory.id, factory.tier, model, self.record.tenant,
                                    prompt_tokens=prompt, completion_tokens=completion)
        self.record.prompt_tokens += prompt
        self.record.completion_tokens += completion

    async def _deliver_body(self, committed: Committed) -> Reply | None:
        upstream = committed.response
        extra = self._client_headers(committed.endpoint)
        ok = 200 <= upstream.status < 300
        if committed.body is not None:
            self.record.outcome = "ok" if ok else "upstream_status"
            if ok:
                # Metered once the answer is on its way (finish): the client need not wait.
                self._unmetered = (committed.endpoint, committed.body)
            self._first_byte(committed.endpoint)
            return whole_response(upstream.status, upstream.reason, upstream.raw_headers,
                                  committed.body, extra)
        self._first_byte(committed.endpoint)
        outcome, tail = await relay_large_body(self.responder, upstream, committed.first_out,
                                               extra, self.clock)
        self.record.outcome = outcome
        if outcome == "ok" and ok:
            self._meter_body(committed.endpoint, tail)
        return None

    def finish(self) -> None:
        """After the answer was handed to the client: meter a whole body it was given."""
        unmetered = self._unmetered
        if unmetered is not None:
            self._unmetered = None
            self._meter_body(*unmetered)

    def _meter_body(self, factory: FactoryEndpoint, body: bytes) -> None:
        usage = usage_from_body(body)
        if usage is not None:
            self._meter(factory, *usage_tokens(usage))

    async def _deliver_stream(self, committed: Committed) -> None:
        record, clock = self.record, self.clock
        upstream = committed.response
        out_headers = headers.client_response_headers(upstream.raw_headers)
        out_headers += self._client_headers(committed.endpoint)
        response = self.responder
        response.start(upstream.status, upstream.reason, out_headers)

        async def write(data: bytes) -> None:
            started = perf_counter()
            try:
                await response.write(data)
            finally:
                clock.waiting += perf_counter() - started

        endpoint = committed.endpoint
        scan = committed.scan
        assert scan is not None  # a committed stream always has its scan
        segments: list[tuple[FactoryEndpoint, StreamScan]] = [(endpoint, scan)]
        original: tuple[FactoryEndpoint, Break] | None = None
        health = self.shared.health
        try:
            if committed.first_out:
                await write(committed.first_out)
            self._first_byte(endpoint)
            while True:
                idle = self.table.idle_timeouts.get(endpoint.id, MAX_IDLE_S)
                _arm_idle(upstream, idle)
                broken = await pump(upstream, scan, write, clock, idle)
                if broken is None:
                    upstream.release()
                    break
                upstream.close()
                health.failed(endpoint, Kind.BROKEN)
                self.shared.metrics.stream_broke(endpoint.id, endpoint.tier.value,
                                                 self.entry.model, broken.reason)
                if original is None:
                    original = (endpoint, broken)
                    record.stream_break = broken.reason
                nxt, why = await self._continue(segments, endpoint)
                record.attempts = self.loop.sent
                if nxt is None:
                    record.outcome = "stream_broken"
                    await write(api_errors.stream_broken_event(original[0].id,
                                                               original[1].detail, why))
                    await response.write_eof()
                    return
                endpoint, upstream, scan = nxt.endpoint, nxt.response, nxt.scan
                assert scan is not None
                segments.append((endpoint, scan))
                if nxt.first_out:
                    await write(nxt.first_out)
            await self._finish_stream(write, scan, segments)
            await response.write_eof()
            record.attempts = self.loop.sent
        except ConnectionResetError:
            upstream.close()
            record.outcome = "client_gone"
            response.abort()
            return
        except BaseException:
            upstream.close()
            raise
        record.outcome = "continued" if len(segments) > 1 else "ok"

    def _prompt_tokens(self, segments: list[tuple[FactoryEndpoint, StreamScan]]) -> int:
        first_usage = segments[0][1].usage
        if first_usage is not None:
            return usage_tokens(first_usage)[0]
        return estimate_prompt_tokens(self.doc)

    async def _continue(self, segments: list[tuple[FactoryEndpoint, StreamScan]],
                        broken: FactoryEndpoint) -> tuple[Committed | None, str]:
        """Carry a broken stream on elsewhere: (the new segment, "") or (None, why not)."""
        totals = self.totals
        assert totals is not None  # a stream broke, so it had its totals
        if not self.entry.continuation_possible:
            return None, ""
        metrics = self.shared.metrics
        body = None
        if (self.endpoint is openai_api.CHAT and self.parsed.choices == 1
                and not totals.tool_calls):
            body = continuation_body(self.doc, totals.text, totals.output_events)
        if body is None:
            metrics.continued(broken.id, broken.tier.value, self.entry.model, "impossible")
            return None, "it could not be continued elsewhere"
        used = {e.id for e, _ in segments} | {f.factory_id for f in self.loop.failures}
        prefill = [e for e in self.entry.plan.endpoints
                   if e.supports_prefill and e.id not in used]
        candidates, panic, _ = self.shared.health.select(prefill)
        # Another failure domain first: whatever broke the stream may have broken its neighbours.
        broken_domain = broken.failure_domain or broken.region
        candidates = sorted(candidates,
                            key=lambda e: (e.failure_domain or e.region) == broken_domain)
        if not candidates:
            metrics.continued(broken.id, broken.tier.value, self.entry.model, "impossible")
            return None, "no backup that supports prefill could continue it"
        segment = len(segments)
        base = (self._prompt_tokens(segments), totals.output_events)

        def new_scan() -> StreamScan:
            return StreamScan(totals, client_wants_usage=self.parsed.include_usage,
                              track_text=True, segment=segment, splice_base=base)

        self.loop.new_scan = new_scan
        try:
            result = await self.loop.run(candidates, body, client_errors_final=False,
                                         retry=True, panic=panic)
        except AllAttemptsFailed as exc:
            metrics.continued(broken.id, broken.tier.value, self.entry.model, "failed")
            if exc.budget_exhausted:
                self._budget_exhausted()
                return None, "the retry budget did not allow continuing it elsewhere"
            return None, "continuing it on a backup failed too"
        if isinstance(result, ClientError) or not result.sse:
            if isinstance(result, Committed):
                result.response.close()
            metrics.continued(broken.id, broken.tier.value, self.entry.model, "failed")
            return None, "continuing it on a backup failed too"
        metrics.continued(result.endpoint.id, result.endpoint.tier.value, self.entry.model,
                          "spliced")
        self.record.continued_on.append(result.endpoint.id)
        return result, ""

    async def _finish_stream(self, write: Write, scan: StreamScan,
                             segments: list[tuple[FactoryEndpoint, StreamScan]]) -> None:
        """End a complete stream: finalise it if the factory did not, and meter it."""
        totals = scan.totals
        prompt = self._prompt_tokens(segments)
        completion = 0
        for _, seg in segments:
            completion += usage_tokens(seg.usage)[1] if seg.usage is not None else \
                seg.output_events
        if not scan.done:
            # Every choice finished but the factory sent no [DONE]: finish for it, promptly.
            if self.parsed.include_usage and not totals.usage_sent:
                await write(usage_event(totals, {"prompt_tokens": prompt,
                                                 "completion_tokens": completion,
                                                 "total_tokens": prompt + completion}))
                totals.usage_sent = True
            await write(DONE)
        before = 0
        for i, (factory, seg) in enumerate(segments):
            if seg.usage is not None:
                self._meter(factory, *usage_tokens(seg.usage))
            else:
                # No usage from this factory: what the client got from it, and (for a
                # continuation) the prompt it was given, the original plus the output before.
                self._meter(factory, prompt + before if i else prompt, seg.output_events)
            before += seg.output_events
