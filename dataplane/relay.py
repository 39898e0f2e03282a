"""Delivering an answer that is not a stream: a whole body, a passed-through client error, or
(rarely) a body too large to hold, relayed as it arrives.

A body the sidecar holds whole is sent with its length, so a client can never take part of it
for all of it. A body too large to hold is relayed as it comes; should it break, the connection
is dropped, the only way left to tell an HTTP/1.1 client that a body whose headers were sent is
incomplete (it sees a short body or a missing last chunk).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from time import perf_counter

import aiohttp
from aiohttp import web

from . import headers
from .failover import TRANSPORT_ERRORS, classify
from .overhead import OverheadClock

log = logging.getLogger(__name__)

# How much of a large body's end is kept to read its usage from.
TAIL_BYTES = 64 * 1024


def whole_response(status: int, reason: str, upstream_headers: Iterable[tuple[str, str]],
                   body: bytes, extra: Mapping[str, str]) -> web.Response:
    out = headers.client_response_headers(upstream_headers)
    out.update(extra)
    return web.Response(status=status, reason=reason or None, body=body, headers=out)


async def relay_large_body(request: web.Request, upstream: aiohttp.ClientResponse,
                           first: bytes, extra: Mapping[str, str],
                           clock: OverheadClock) -> tuple[web.StreamResponse, str, bytes]:
    """Relay a body too large to hold; (response, outcome, last bytes) - outcome is ok,
    stream_broken or client_gone. Always releases or closes ``upstream``."""
    out_headers = headers.client_response_headers(upstream.headers.items())
    out_headers.update(extra)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=out_headers)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    tail = first[-TAIL_BYTES:]
    try:
        await response.prepare(request)
        await response.write(first)
        while True:
            started = perf_counter()
            try:
                chunk = await upstream.content.readany()
            except TRANSPORT_ERRORS as exc:
                upstream.close()
                log.warning("factory broke off a large body after headers were sent (%s); "
                            "dropping the client connection", classify(exc)[1])
                if request.transport is not None:
                    request.transport.abort()
                return response, "stream_broken", tail
            finally:
                clock.waiting += perf_counter() - started
            if not chunk:
                break
            await response.write(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
        await response.write_eof()
    except ConnectionResetError:
        upstream.close()
        return response, "client_gone", tail
    except BaseException:
        upstream.close()
        raise
    upstream.release()
    return response, "ok", tail
