"""Delivering an answer that is not a stream: a whole body, a passed-through client error, or
(rarely) a body too large to hold, relayed as it arrives.

A body the sidecar holds whole is sent with its length, so a client can never take part of it
for all of it. A body too large to hold is relayed as it comes; should it break, the connection
is dropped, the only way left to tell an HTTP/1.1 client that a body whose headers were sent is
incomplete (it sees a short body or a missing last chunk).
"""

from __future__ import annotations

import logging
from time import perf_counter

from . import headers
from .failover import TRANSPORT_ERRORS, classify
from .http_server import Reply, Responder
from .overhead import OverheadClock
from .upstream_client import UpstreamResponse

log = logging.getLogger(__name__)

# How much of a large body's end is kept to read its usage from.
TAIL_BYTES = 64 * 1024


def whole_response(status: int, reason: str, upstream_headers: list[tuple[bytes, bytes]],
                   body: bytes, extra: list[tuple[bytes, bytes]]) -> Reply:
    out = headers.client_response_headers(upstream_headers)
    out += extra
    return Reply(status, body, out, reason)


async def relay_large_body(responder: Responder, upstream: UpstreamResponse,
                           first: bytes, extra: list[tuple[bytes, bytes]],
                           clock: OverheadClock) -> tuple[str, bytes]:
    """Relay a body too large to hold; (outcome, last bytes) - outcome is ok, stream_broken or
    client_gone. Always releases or closes ``upstream``."""
    out_headers = headers.client_response_headers(upstream.raw_headers)
    out_headers += extra
    responder.start(upstream.status, upstream.reason, out_headers)
    tail = first[-TAIL_BYTES:]
    try:
        await responder.write(first)
        while True:
            started = perf_counter()
            try:
                chunk = await upstream.readany()
            except TRANSPORT_ERRORS as exc:
                upstream.close()
                log.warning("factory broke off a large body after headers were sent (%s); "
                            "dropping the client connection", classify(exc)[1])
                responder.abort()
                return "stream_broken", tail
            finally:
                clock.waiting += perf_counter() - started
            if not chunk:
                break
            await responder.write(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
        await responder.write_eof()
    except ConnectionResetError:
        upstream.close()
        return "client_gone", tail
    except BaseException:
        upstream.close()
        raise
    upstream.release()
    return "ok", tail
