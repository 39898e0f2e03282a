"""Relaying a committed upstream stream to the client, event by event, as the bytes arrive.

Nothing is buffered beyond the unfinished tail of an SSE event, which is held until its blank line
arrives (usually in the same read): SSE clients act on an event only at its end, so this delays
nothing a client could use, and it is what lets a broken stream end cleanly, right after the last
whole event.

:func:`pump` returns how the stream ended. ``None`` means the answer is complete: ``[DONE]``, or
every choice has a finish reason and the stream then ended, broke or stayed silent for
:data:`FINISH_GRACE_S` (such a stream is finalised promptly by the caller instead of hanging until
the idle timeout). A :class:`~tdn.dataplane.sse.Break` means the answer is incomplete: the stream
was cut without a finish reason, stayed silent past the idle timeout, or sent a garbled or error
event. The caller then continues the answer elsewhere or ends the client's stream with an error
event, never with ``[DONE]``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from time import perf_counter

from .failover import TRANSPORT_ERRORS, classify
from .overhead import OverheadClock
from .sse import Break, StreamScan
from .upstream_client import UpstreamResponse

# After the last finish reason, how long to wait for the usage chunk and [DONE].
FINISH_GRACE_S = 1.0

Write = Callable[[bytes], Awaitable[None]]


async def pump(upstream: UpstreamResponse, scan: StreamScan, write: Write,
               clock: OverheadClock, idle_timeout_s: float) -> Break | None:
    """Relay ``upstream`` through ``scan`` to ``write`` until it ends; see the module doc."""
    read = upstream.readany
    while not scan.done:
        started = perf_counter()
        try:
            if scan.finished:
                async with asyncio.timeout(min(FINISH_GRACE_S, idle_timeout_s)):
                    chunk = await read()
            else:
                # The idle timeout is the response's read timeout (see exchange).
                chunk = await read()
        except TimeoutError:
            if scan.finished:
                return None
            return Break("stream_idle", f"went silent mid-stream for longer than the "
                                        f"{idle_timeout_s:g} s idle timeout")
        except TRANSPORT_ERRORS as exc:
            if scan.finished:
                return None
            return Break("stream_cut", f"cut the stream without a finish reason "
                                       f"({classify(exc)[1]})")
        finally:
            clock.waiting += perf_counter() - started
        if not chunk:
            if scan.finished:
                return None
            return Break("stream_cut", "cut the stream without a finish reason")
        out = scan.feed(chunk)
        if out:
            await write(out)
        if scan.broken is not None:
            return scan.broken
    return None
