"""The attempt loop: walk the candidates until one commits, at once, without sleeping.

Failover is a local decision measured in milliseconds. Nothing has reached the client while an
attempt runs, so a candidate that fails is simply replaced by the next one:

* connection refused or reset, DNS, connect timeout, a response that is not HTTP;
* no first byte within the first-byte deadline (:mod:`deadlines`), whether the factory is silent
  or slow;
* an answer the sidecar must not pass on: 5xx (overloaded), 429 (rate limited: the factory goes
  into cooldown, :mod:`cooldowns`), 408, and 401/403/404, which mean this factory refuses the
  sidecar's credential or does not serve the model, not that the request is wrong;
* a stream that ends, breaks or sends an error or a garbled event before any output, or a
  non-streamed body that breaks before it is complete (it is read whole before the client gets
  a byte, so it can still be retried).

After a failure the next candidate comes preferably from another failure domain than any that
failed, since a second factory in a broken rack or region is likely broken too. Other 4xx answers
(400, 413, 422...) are the client's: they end the loop and are passed on as they are (a
context-length error may first be re-sent to a larger model, see :mod:`exchange`). The loop stops
at the first candidate that commits: for a stream, the first event carrying output; otherwise the
whole body. From then on the relay owns the answer.

**Which next attempts are retries** (and need a retry-budget token, :mod:`retry_budget`). The
budget exists so that a sick fleet is not sent more work than it was asked for; an attempt that
follows one where the factory may have worked on the request (it answered 5xx, it missed its
first-byte deadline, it broke a body or a stream, it reset the connection after the request was
sent) is such extra work. Two kinds of next attempt are not, and need no token:

* after a failure where the factory did no work at all: it was never reached (refused, connect
  error or timeout, DNS, an unusable URL), the sidecar holds no credential for it, or it
  declined with a 429 (its cooldown keeps the next requests away from it);
* after a failure at a factory that outlier detection has now taken out of rotation (ejected or
  suspected, see :mod:`outlier`), unless the route was in panic. Moving that request is a
  re-route: a request that arrived a moment later would have gone to the backup first, without
  any retry. This is what lets every request already in flight on a factory that dies, however
  many, fail over, while outlier detection's own cap (at most half the factories out) and panic
  keep it from becoming a fleet-wide retry storm: beyond them, failures are charged again.

A mid-stream continuation is always a retry (the broken factory did work).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import perf_counter

from tdn.domain import FactoryEndpoint

from .cooldowns import parse_retry_after
from .health import FactoryHealth
from .outlier import Kind
from .overhead import OverheadClock
from .retry_budget import RetryBudget
from .sse import StreamScan, is_event_stream
from .upstream_client import (
    BadUrl,
    ConnectError,
    ConnectTimeout,
    Disconnected,
    DnsError,
    ProtocolError,
    ReadTimeout,
    UpstreamError,
    UpstreamResponse,
)

# A stream that has sent this much without any output is committed anyway (keep-alives).
PRECOMMIT_LIMIT_BYTES = 64 * 1024
# A small error body is read so that the connection can be reused.
DRAIN_LIMIT_BYTES = 64 * 1024

# What can go wrong on the way to a first byte: the client's own errors, timeouts, and OS errors
# the transport lets through unwrapped.
TRANSPORT_ERRORS = (UpstreamError, asyncio.TimeoutError, OSError)

# Statuses below 500 that mean "this factory cannot serve it", not "the request is wrong".
_FACTORY_STATUSES = {401: "auth_rejected", 403: "auth_rejected", 404: "not_served",
                     408: "request_timeout"}
# Transport failures that mean the factory was never reached (before any answer).
_UNREACHABLE = frozenset({"refused", "connect_error", "connect_timeout", "dns",
                          "bad_endpoint"})


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """Why one candidate was given up: ``reason`` is a short metric label, ``detail`` a sentence.

    Neither ever holds a key: details are built from factory ids and error classes only.
    """

    factory_id: str
    tier: str
    reason: str
    detail: str
    status: int = 0


class CandidateUnusable(Exception):
    """Raised by a sender for a candidate it cannot even try (for example: no credential here)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class AllAttemptsFailed(Exception):
    """No candidate committed: all failed, or the retry budget stopped the loop."""

    def __init__(self, failures: Sequence[AttemptFailure], *, budget_exhausted: bool = False,
                 retry_after_s: float = 0.0) -> None:
        self.failures = tuple(failures)
        self.budget_exhausted = budget_exhausted
        self.retry_after_s = retry_after_s
        last = self.failures[-1].detail if self.failures else "no candidate"
        super().__init__(f"{len(self.failures)} attempts failed; last: {last}")

    @property
    def attempts(self) -> int:
        return len(self.failures)


@dataclass(slots=True)
class Committed:
    """An answer the client will get.

    A stream carries the events read so far (``first_out``, ready to write) and its ``scan``; any
    other answer carries its whole ``body``, or, when it was too large to hold, its first bytes
    in ``first_out`` with ``body`` None and the rest still to be read from ``response``.
    """

    endpoint: FactoryEndpoint
    response: UpstreamResponse
    sse: bool
    first_out: bytes
    scan: StreamScan | None
    body: bytes | None
    failures: tuple[AttemptFailure, ...]


@dataclass(slots=True)
class ClientError:
    """A 4xx answer that is the client's to see (its body already read; connection released)."""

    endpoint: FactoryEndpoint
    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    failures: tuple[AttemptFailure, ...]


class RetryTicket:
    """A request's retry-budget token: taken at its first retry, given back when it ends."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self.held = False

    def acquire(self) -> bool:
        if not self.held:
            self.held = self.budget.try_acquire()
        return self.held

    def release(self) -> None:
        self.budget.request_ended(self.held)
        self.held = False


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason label, phrase) for a transport error; the phrase names no address and no key."""
    if isinstance(exc, BadUrl):
        return "bad_endpoint", "its base_url is not a valid URL"
    if isinstance(exc, ConnectTimeout):
        return "connect_timeout", "connecting timed out"
    if isinstance(exc, ReadTimeout):
        return "stream_idle", "sent nothing for longer than the idle timeout"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout", "timed out waiting for the response"
    if isinstance(exc, DnsError):
        return "dns", "its host name did not resolve"
    if isinstance(exc, ConnectError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return "refused", "refused the connection"
        return "connect_error", "could not be connected to"
    if isinstance(exc, Disconnected | ConnectionResetError):
        return "reset", "closed the connection before answering"
    if isinstance(exc, ProtocolError):
        return "protocol_error", "sent a response that is not valid HTTP"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "reset", "reset the connection"
    return "transport_error", f"failed ({type(exc).__name__})"


class _Failed(Exception):
    """One attempt's failure; ``kind`` is how outlier detection weighs it (None: not at all)."""

    def __init__(self, reason: str, phrase: str, status: int = 0,
                 retry_after_s: float | None = None, kind: Kind | None = Kind.ERROR) -> None:
        super().__init__(phrase)
        self.reason = reason
        self.phrase = phrase
        self.status = status
        self.retry_after_s = retry_after_s
        self.kind = kind

    @property
    def no_work(self) -> bool:
        """The factory cannot have worked on the request: never reached, or declined (429)."""
        return self.kind is Kind.UNREACHABLE or self.reason == "rate_limited"


def _transport_failure(exc: BaseException, answered: bool) -> _Failed:
    """A transport error as an attempt failure; ``answered``: a status line had arrived."""
    reason, phrase = classify(exc)
    if answered:
        kind = Kind.ERROR
    elif reason in _UNREACHABLE:
        kind = Kind.UNREACHABLE
    elif reason == "reset":
        kind = Kind.RESET
    else:
        kind = Kind.ERROR
    return _Failed(reason, phrase, kind=kind)


# (factory, request body, attempt deadline) -> the upstream response (headers read)
Send = Callable[[FactoryEndpoint, bytes, float], Awaitable[UpstreamResponse]]
OnFailure = Callable[[AttemptFailure], None]


def _domain(endpoint: FactoryEndpoint) -> str:
    return endpoint.failure_domain or endpoint.region


def _next(remaining: list[FactoryEndpoint], failed_domains: set[str]) -> FactoryEndpoint:
    if failed_domains:
        for i, candidate in enumerate(remaining):
            if _domain(candidate) not in failed_domains:
                return remaining.pop(i)
    return remaining.pop(0)


async def _drain(response: UpstreamResponse) -> None:
    """Finish with a response the client will not see, keeping the connection when cheap."""
    length = response.content_length
    if length is not None and length <= DRAIN_LIMIT_BYTES:
        try:
            await response.read()
        except TRANSPORT_ERRORS:
            response.close()
            return
        response.release()
    else:
        response.close()


def _detached_send(endpoint: FactoryEndpoint, body: bytes,
                   deadline: float) -> Awaitable[UpstreamResponse]:
    raise RuntimeError("the request this attempt loop served has ended")


def _detached_deadline(endpoint: FactoryEndpoint, last: bool) -> float:
    raise RuntimeError("the request this attempt loop served has ended")


def _detached_scan() -> StreamScan:
    raise RuntimeError("the request this attempt loop served has ended")


class AttemptLoop:
    """The attempts of one client request (the first answer, a fallback, continuations)."""

    def __init__(self, *, send: Send, health: FactoryHealth, ticket: RetryTicket,
                 deadline_for: Callable[[FactoryEndpoint, bool], float],
                 new_scan: Callable[[], StreamScan], clock: OverheadClock,
                 on_failure: OnFailure | None = None,
                 buffer_limit: int = 32 * 1024 * 1024, watch_first_byte: bool = False) -> None:
        self.send = send
        self.health = health
        self.ticket = ticket
        self.deadline_for = deadline_for
        self.new_scan = new_scan
        self.clock = clock
        self.on_failure = on_failure
        self.buffer_limit = buffer_limit
        # A stream's attempts are registered with the health's first-byte watch until they
        # commit or fail, so that new streams can pass over a factory slow to start them.
        self.watch_first_byte = watch_first_byte
        self.sent = 0
        self.failures: list[AttemptFailure] = []

    def detach(self) -> None:
        """Drop the callbacks into the request that owns this loop.

        They are its bound methods, so owner and loop form a reference cycle that only the
        cyclic garbage collector would free; breaking it at the request's end lets reference
        counting free both at once (at thousands of requests per second, cycles make the
        collector run often, and each run pauses every request in flight).
        """
        self.send = _detached_send
        self.deadline_for = _detached_deadline
        self.new_scan = _detached_scan
        self.on_failure = None

    def _fail(self, endpoint: FactoryEndpoint, reason: str, detail: str, status: int = 0,
              *, kind: Kind | None, retry_after_s: float | None = None) -> bool:
        """Record a failed attempt; whether ``endpoint`` is now out of rotation."""
        failure = AttemptFailure(endpoint.id, endpoint.tier.value, reason, detail, status)
        self.failures.append(failure)
        if reason == "rate_limited" or retry_after_s is not None:
            self.health.rate_limited(endpoint, retry_after_s)
        out = self.health.failed(endpoint, kind) if kind is not None else False
        if self.on_failure is not None:
            self.on_failure(failure)
        return out

    async def run(self, candidates: Sequence[FactoryEndpoint], body: bytes, *,
                  client_errors_final: bool = True, retry: bool = False,
                  panic: bool = False) -> Committed | ClientError:
        """Try ``candidates`` (in order, preferring new failure domains after a failure).

        Raises :class:`AllAttemptsFailed` when none commits. With ``client_errors_final`` False
        (a continuation), a 4xx is that candidate's failure, not an answer for the client.
        ``retry``: even the first attempt is a retry (a continuation). ``panic``: the route was
        in panic when the candidates were chosen, so no failure is a free re-route.
        """
        remaining = list(candidates)
        failed_domains: set[str] = set()
        charged = retry
        while remaining:
            endpoint = _next(remaining, failed_domains)
            if charged and not self.ticket.acquire():
                raise AllAttemptsFailed(self.failures, budget_exhausted=True)
            try:
                result = await self._attempt(endpoint, body, client_errors_final,
                                             not remaining)
            except CandidateUnusable as exc:
                self._fail(endpoint, exc.reason, exc.detail, kind=None)
                continue
            except _Failed as exc:
                detail = f"factory {endpoint.id} {exc.phrase}"
                out = self._fail(endpoint, exc.reason, detail, exc.status, kind=exc.kind,
                                 retry_after_s=exc.retry_after_s)
                if exc.reason != "rate_limited":
                    failed_domains.add(_domain(endpoint))
                if not (exc.no_work or (out and not panic)):
                    charged = True
                continue
            # A stream that breaks later is that attempt's failure too (exchange).
            self.health.succeeded(endpoint, panic=panic)
            return result
        raise AllAttemptsFailed(self.failures, retry_after_s=self._retry_after(candidates))

    def _retry_after(self, candidates: Sequence[FactoryEndpoint]) -> float:
        now = self.health.clock()
        waits = [w for c in candidates
                 if (w := self.health.cooldowns.remaining(c.id, now)) > 0]
        return min(waits) if waits else 0.0

    async def _attempt(self, endpoint: FactoryEndpoint, body: bytes,
                       client_errors_final: bool, last: bool) -> Committed | ClientError:
        # ``last``: no candidate is left after this one, so a derived first-byte deadline
        # would buy no failover (deadlines.last_resort_deadline).
        deadline = self.deadline_for(endpoint, last)
        response: UpstreamResponse | None = None
        clock = self.clock
        started = perf_counter()
        watch = self.health.first_bytes if self.watch_first_byte else None
        token = watch.begin(endpoint.id, self.health.clock()) if watch is not None else 0
        try:
            try:
                # The deadline bounds connecting, the answer's head and, before the commit,
                # every read (the client enforces it: see UpstreamPool.request).
                self.sent += 1
                response = await self.send(endpoint, body, deadline)
                if response.load_report is not None:
                    self.health.load_reported(endpoint, response.load_report)
                status = response.status
                if status >= 500 or status == 429 or status in _FACTORY_STATUSES:
                    retry_after = None
                    if status in (429, 503):
                        retry_after = parse_retry_after(response.headers.get("retry-after"))
                    await _drain(response)
                    if status == 429:
                        raise _Failed("rate_limited", f"answered HTTP {status}", status,
                                      retry_after, kind=None)
                    raise _Failed(_FACTORY_STATUSES.get(status, "status_5xx"),
                                  f"answered HTTP {status}", status, retry_after)
                if status >= 400:
                    raw = await response.read()
                    response.release()
                    if not client_errors_final:
                        raise _Failed("client_rejected" if status == 400 else
                                      f"client_{status}", f"answered HTTP {status}", status,
                                      kind=None)
                    return ClientError(endpoint, status, response.reason or "",
                                       response.raw_headers, raw, tuple(self.failures))
                sse = is_event_stream(response.content_type)
                if sse:
                    committed = await self._open_stream(endpoint, response)
                    response.deadline_at = None
                    return committed
                first = await response.readany()
                response.deadline_at = None
            except TimeoutError:
                if response is not None:
                    response.close()
                raise _Failed("first_byte_timeout", f"sent no first byte within its "
                              f"{deadline:g} s first-byte deadline",
                              kind=Kind.DEADLINE) from None
            except TRANSPORT_ERRORS as exc:
                if response is not None:
                    response.close()
                raise _transport_failure(exc, answered=response is not None) from None
            # Outside the deadline: the first byte came in time; the rest of the body is bounded
            # by the idle timeout only. It is read whole before the client sees any of it, so a
            # body that breaks now can still go to the next candidate.
            return await self._read_body(endpoint, response, first)
        except BaseException as exc:
            if response is not None and not isinstance(exc, _Failed):
                # Cancelled (client gone, shutdown): the connection must not go back to the pool
                # with an unread body.
                response.close()
            raise
        finally:
            clock.waiting += perf_counter() - started
            if watch is not None:
                watch.end(endpoint.id, token)

    async def _open_stream(self, endpoint: FactoryEndpoint,
                           response: UpstreamResponse) -> Committed:
        scan = self.new_scan()
        out: list[bytes] = []
        size = 0
        while not scan.substantive and size < PRECOMMIT_LIMIT_BYTES:
            chunk = await response.readany()
            if not chunk:
                response.close()
                raise _Failed("empty_stream", "ended its stream before any output")
            size += len(chunk)
            piece = scan.feed(chunk)
            if scan.broken is not None:
                response.close()
                raise _Failed(scan.broken.reason, scan.broken.detail)
            if piece:
                out.append(piece)
        return Committed(endpoint, response, True, b"".join(out), scan, None,
                         tuple(self.failures))

    async def _read_body(self, endpoint: FactoryEndpoint, response: UpstreamResponse,
                         first: bytes) -> Committed:
        if response.is_eof():
            # The usual case: the whole answer came with its head.
            response.release()
            return Committed(endpoint, response, False, b"", None, first,
                             tuple(self.failures))
        chunks = [first]
        size = len(first)
        try:
            while first:
                if size > self.buffer_limit:
                    # Too large to hold: relay it as it comes (a break then drops the connection).
                    return Committed(endpoint, response, False, b"".join(chunks), None, None,
                                     tuple(self.failures))
                chunk = await response.readany()
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except TRANSPORT_ERRORS as exc:
            response.close()
            reason, phrase = classify(exc)
            raise _Failed(reason, f"broke off its answer: {phrase}") from None
        response.release()
        return Committed(endpoint, response, False, b"", None, b"".join(chunks),
                         tuple(self.failures))
