"""The attempt loop: walk the candidates until one gives a first response byte, at once, no sleep.

Failover is a local decision measured in milliseconds. A candidate counts as failed while nothing
has reached the client: connection refused or reset, a timeout, a 5xx status, or a connection
that breaks before the first body byte. The loop stops at the first candidate that delivers that
first byte ("the commit point"); from then on the relay owns the response and never retries.

Later work slots in here: 429 with Retry-After, first-byte deadlines from ``ttft_p99_s``, retry
budgets and outlier reports all act on one attempt at a time, inside this loop.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp

from tdn.domain import FactoryEndpoint


@dataclass(frozen=True, slots=True)
class AttemptFailure:
    """Why one candidate was given up: ``reason`` is a short metric label, ``detail`` a sentence.

    Neither ever holds a key: details are built from factory ids and error classes only.
    """

    factory_id: str
    tier: str
    reason: str
    detail: str


class CandidateUnusable(Exception):
    """Raised by a sender for a candidate it cannot even try (for example: no credential here)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class AllAttemptsFailed(Exception):
    """Every candidate failed before the commit point."""

    def __init__(self, failures: Sequence[AttemptFailure]) -> None:
        self.failures = tuple(failures)
        last = self.failures[-1].detail if self.failures else "no candidate"
        super().__init__(f"{len(self.failures)} attempts failed; last: {last}")

    @property
    def attempts(self) -> int:
        return len(self.failures)


@dataclass(slots=True)
class OpenedUpstream:
    """A response the client will get: its factory, the upstream response and its first bytes."""

    endpoint: FactoryEndpoint
    response: aiohttp.ClientResponse
    first_chunk: bytes
    failures: tuple[AttemptFailure, ...]

    @property
    def attempts(self) -> int:
        return len(self.failures) + 1


Send = Callable[[FactoryEndpoint], Awaitable[aiohttp.ClientResponse]]
OnFailure = Callable[[AttemptFailure], None]

# What can go wrong on the way to a first byte: aiohttp's own errors, timeouts, and OS errors the
# transport lets through unwrapped.
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason label, phrase) for a transport error; the phrase names no address and no key."""
    if isinstance(exc, aiohttp.InvalidURL):
        return "bad_endpoint", "its base_url is not a valid URL"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout", "connecting timed out"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout", "timed out waiting for the response"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", "its host name did not resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            return "refused", "refused the connection"
        return "connect_error", "could not be connected to"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError |
                  ConnectionResetError):
        return "reset", "closed the connection before answering"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "protocol_error", "sent a response that is not valid HTTP"
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "reset", "reset the connection"
    return "transport_error", f"failed ({type(exc).__name__})"


async def open_first_response(candidates: Sequence[FactoryEndpoint], send: Send,
                              on_failure: OnFailure | None = None) -> OpenedUpstream:
    """Try ``candidates`` in order; return the first that produces a first body byte (or EOF).

    Raises :class:`AllAttemptsFailed` when none does. Any status below 500 is an answer for the
    client (a 4xx is the client's problem, passed on as it is), so it ends the loop.
    """
    failures: list[AttemptFailure] = []

    def fail(endpoint: FactoryEndpoint, reason: str, phrase: str) -> None:
        failure = AttemptFailure(endpoint.id, endpoint.tier.value, reason,
                                 f"factory {endpoint.id} {phrase}")
        failures.append(failure)
        if on_failure is not None:
            on_failure(failure)

    for endpoint in candidates:
        try:
            response = await send(endpoint)
        except CandidateUnusable as exc:
            failures.append(AttemptFailure(endpoint.id, endpoint.tier.value, exc.reason,
                                           exc.detail))
            if on_failure is not None:
                on_failure(failures[-1])
            continue
        except TRANSPORT_ERRORS as exc:
            fail(endpoint, *classify(exc))
            continue
        try:
            if response.status >= 500:
                # Nothing was relayed, so the next candidate can still give a whole answer.
                response.close()
                fail(endpoint, "status_5xx", f"answered HTTP {response.status}")
                continue
            try:
                first = await response.content.readany()
            except TRANSPORT_ERRORS as exc:
                response.close()
                fail(endpoint, *classify(exc))
                continue
        except BaseException:
            # Cancelled (client gone, shutdown): the connection must not go back to the pool
            # with an unread body.
            response.close()
            raise
        return OpenedUpstream(endpoint, response, first, tuple(failures))
    raise AllAttemptsFailed(failures)
