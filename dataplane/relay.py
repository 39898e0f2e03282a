"""Relaying a committed upstream response to the client, byte for byte, as the bytes arrive.

Nothing is buffered: each chunk the factory sends is written to the client before the next one is
read, so a token reaches the client as soon as it reaches the sidecar. The one exception is the
unfinished tail of an SSE event: it is held until its blank line arrives (usually in the same
read), which delays nothing a client could use, since SSE clients act on an event only at its
end. It is what lets a broken stream end cleanly: when the factory breaks off after bytes were
relayed, retrying is no longer possible, so an SSE stream ends with a whole OpenAI error event
right after the last whole event, and any other body ends with a dropped connection. The client
never takes a truncated answer for a complete one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from . import api_errors, headers
from .failover import TRANSPORT_ERRORS, OpenedUpstream, classify

log = logging.getLogger(__name__)

# A blank line ends an SSE event; lines end in \n, \r\n or \r.
_EVENT_BOUNDARIES = (b"\n\n", b"\r\n\r\n", b"\r\r", b"\n\r\n")
# An "event" this long without an end is not one: relay it rather than hold it.
MAX_HELD_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RelayResult:
    """How a relay ended: ``outcome`` is ok, stream_broken or client_gone."""

    status: int
    streamed: bool
    outcome: str
    bytes_relayed: int


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _at_event_boundary(tail: bytes) -> bool:
    return not tail or tail.endswith(_EVENT_BOUNDARIES)


def complete_events_end(data: bytes) -> int:
    """Length of the prefix of ``data`` made of whole SSE events (0 when there is none)."""
    end = 0
    for boundary in _EVENT_BOUNDARIES:
        at = data.rfind(boundary)
        if at >= 0:
            end = max(end, at + len(boundary))
    return end


def _abort(request: web.Request) -> None:
    # Dropping the connection is the only way left to tell an HTTP/1.1 client that a body whose
    # headers were already sent is incomplete: it sees a short body or a missing last chunk.
    if request.transport is not None:
        request.transport.abort()


async def relay(request: web.Request, opened: OpenedUpstream,
                extra_headers: Mapping[str, str]) -> tuple[web.StreamResponse, RelayResult]:
    """Send ``opened`` to the client; always releases the upstream response."""
    upstream = opened.response
    sse = is_event_stream(upstream.headers.get("Content-Type", ""))
    out_headers = headers.client_response_headers(upstream.headers.items())
    out_headers.update(extra_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=out_headers)
    if not sse and upstream.content_length is not None:
        response.content_length = upstream.content_length
    relayed = 0
    tail = b""
    held = b""
    broken: str | None = None
    try:
        try:
            await response.prepare(request)
            chunk = opened.first_chunk
            while chunk:
                if sse:
                    held += chunk
                    cut = complete_events_end(held)
                    if cut == 0 and len(held) >= MAX_HELD_BYTES:
                        cut = len(held)
                    chunk, held = held[:cut], held[cut:]
                if chunk:
                    await response.write(chunk)
                    relayed += len(chunk)
                    tail = (tail + chunk)[-4:]
                try:
                    chunk = await upstream.content.readany()
                except TRANSPORT_ERRORS as exc:
                    broken = classify(exc)[1]
                    break
            if broken is None and held:
                # The factory ended cleanly without a final blank line: relay what it sent.
                await response.write(held)
                relayed += len(held)
        except ConnectionResetError:
            upstream.close()
            return response, RelayResult(upstream.status, sse, "client_gone", relayed)
        if broken is None:
            await response.write_eof()
            upstream.release()
            return response, RelayResult(upstream.status, sse, "ok", relayed)
        upstream.close()
        log.warning("factory %s broke off a response after %d bytes (%d of an unfinished event "
                    "not relayed): %s", opened.endpoint.id, relayed, len(held), broken)
        if not sse:
            _abort(request)
            return response, RelayResult(upstream.status, sse, "stream_broken", relayed)
        try:
            # Only an oversized non-event can leave a line open; close it so that the error is
            # an event of its own.
            prefix = b"" if _at_event_boundary(tail) else b"\n\n"
            await response.write(prefix + api_errors.stream_broken_event(opened.endpoint.id,
                                                                         broken))
            await response.write_eof()
        except ConnectionResetError:
            return response, RelayResult(upstream.status, sse, "client_gone", relayed)
        return response, RelayResult(upstream.status, sse, "stream_broken", relayed)
    except BaseException:
        upstream.close()
        raise
