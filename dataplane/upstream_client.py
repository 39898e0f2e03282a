"""The sidecar's HTTP/1.1 client towards factories: a keep-alive connection pool on asyncio
protocols, with httptools (llhttp, C) parsing the responses.

Why not ``aiohttp.ClientSession``: a proxied request through it cost the sidecar about 150 µs of
CPU on its own (request and response objects, payload registry, cookie and redirect handling,
timer objects, header multidicts), three times the data plane's whole budget per request (see
docs/decisions.md, "Sidecar hot path"). This client does only what the sidecar needs: send one
request whose bytes are already rendered, hand back the status and headers, and let the caller
read the body as it arrives. What it keeps from a full client, because failover depends on it:

* every failure is a typed :class:`UpstreamError` that :func:`tdn.dataplane.failover.classify`
  turns into a reason: refused, connect error or timeout, DNS, a connection closed or reset
  before the answer was complete, an answer that is not HTTP, a read that stayed silent past
  its timeout;
* connections are reused only when the previous answer was read to its end and both sides keep
  it alive; idle ones are closed after ``keepalive_timeout_s``, and one the factory closed is
  never handed out again;
* a response is buffered only up to :data:`HIGH_WATER_BYTES` before the socket stops being
  read, so a fast factory and a slow client cannot fill the sidecar's memory;
* no redirect is ever followed and no cookie kept: the URL is always the policy's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

from .load_reports import REPORT_HEADER

# Stop reading a factory's socket while this much of its answer waits for the client.
HIGH_WATER_BYTES = 256 * 1024
LOW_WATER_BYTES = 64 * 1024
# Bodies up to this size are sent in the same write as the request head.
_JOIN_LIMIT = 64 * 1024
_REPORT_SIZE = len(REPORT_HEADER)


class UpstreamError(Exception):
    """A transport failure talking to a factory; the message never holds an address or a key."""


class BadUrl(UpstreamError):
    """A base URL the client cannot use (not http(s), no host, a bad port)."""


class DnsError(UpstreamError):
    """The factory's host name did not resolve."""


class ConnectError(UpstreamError):
    """Connecting failed; ``os_error`` says how (ECONNREFUSED: nothing listens)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(f"connect failed ({type(os_error).__name__})")
        self.os_error = os_error


class ConnectTimeout(UpstreamError):
    """Connecting took longer than the connect timeout."""


class Disconnected(UpstreamError):
    """The factory closed or reset the connection before its answer was complete."""


class ProtocolError(UpstreamError):
    """The factory sent bytes that are not a valid HTTP/1.1 response."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The factory sent nothing for longer than the read (idle) timeout."""


class DeadlineExceeded(UpstreamError, TimeoutError):
    """The request's deadline (its first-byte deadline) passed before what was awaited came."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go: scheme, host and port, and the ``Host`` header they carry."""

    host: str
    port: int
    tls: bool
    host_header: bytes


def split_url(url: str) -> tuple[Origin, bytes]:
    """(origin, path) of an absolute http(s) URL; raise :class:`BadUrl`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadUrl("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUrl("not an http(s) URL with a host")
    tls = parts.scheme == "https"
    host = parts.hostname
    port = port if port is not None else (443 if tls else 80)
    netloc = f"[{host}]" if ":" in host else host
    default = 443 if tls else 80
    host_header = (netloc if port == default else f"{netloc}:{port}").encode("idna")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Origin(host, port, tls, host_header), path.encode("ascii", "strict")


class UpstreamResponse:
    """A factory's answer: status and headers at once, the body read as it arrives.

    ``headers`` maps lower-case names to the first value; ``raw_headers`` keeps every header as
    sent. Finish with :meth:`release` (the connection may be reused once the body was read to its
    end) or :meth:`close` (the connection is dropped).
    """

    __slots__ = ("_chunks", "_conn", "_done", "_exc", "_headers", "_paused", "_size",
                 "_waiter", "content_length", "content_type", "deadline_at", "delimited",
                 "keep_alive", "load_report", "raw_headers", "read_timeout", "reason", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.reason = ""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._headers: dict[str, str] | None = None
        self.content_type = ""
        self.content_length: int | None = None
        # The body's end is marked (a length or chunked framing), not the connection's close.
        self.delimited = False
        self.keep_alive = False
        # The factory's ORCA load report (endpoint-load-metrics), when it sent one.
        self.load_report: bytes | None = None
        # Seconds a read may wait for bytes (None: no limit).
        self.read_timeout: float | None = None
        # The request's deadline (event-loop time), until the caller clears it: reads raise
        # DeadlineExceeded past it.
        self.deadline_at: float | None = None
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case name to the first value (decoded on first use: few answers need it)."""
        if self._headers is None:
            by_name: dict[str, str] = {}
            for name, value in self.raw_headers:
                key = name.decode("latin-1").lower()
                if key not in by_name:
                    by_name[key] = value.decode("latin-1")
            self._headers = by_name
        return self._headers

    # --- fed by the connection -----------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER_BYTES and not self._paused:
            self._paused = True
            self._conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._exc is None:
            self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # --- read by the sidecar -------------------------------------------------------------------

    def is_eof(self) -> bool:
        """The whole body has arrived and has been read."""
        return self._done and not self._chunks

    async def readany(self) -> bytes:
        """What has arrived since the last read, waiting for something; ``b""`` at the end.

        Raises :class:`ReadTimeout` after ``read_timeout`` seconds without a byte, or the
        :class:`UpstreamError` that broke the connection.
        """
        while not self._chunks:
            if self._done:
                return b""
            if self._exc is not None:
                raise self._exc
            await self._wait()
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        if len(chunks) > 0:
            chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            self._conn.resume_reading()
        return data

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timeout = self.read_timeout
        error: type[UpstreamError] = ReadTimeout
        if self.deadline_at is not None:
            left = max(self.deadline_at - loop.time(), 0.0)
            if timeout is None or left < timeout:
                timeout, error = left, DeadlineExceeded
        if timeout is None:
            await waiter
            return
        timer = loop.call_later(timeout, self._timed_out, waiter, error)
        try:
            await waiter
        finally:
            timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[None], error: type[UpstreamError]) -> None:
        if not waiter.done():
            self._waiter = None
            waiter.set_exception(error("nothing arrived in time"))

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body (raise :class:`ProtocolError` when it exceeds ``limit``)."""
        parts: list[bytes] = []
        size = 0
        while True:
            chunk = await self.readany()
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise ProtocolError("answer larger than the sidecar holds")

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can be reused."""
        conn = self._conn
        if self._done and not self._chunks and self.keep_alive and self._exc is None:
            conn.reusable()
        else:
            conn.drop()

    def close(self) -> None:
        """Done with the answer, which may be unread: drop its connection."""
        self._conn.drop()
        self._fail(Disconnected("closed by the sidecar"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a factory; carries one request at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: UpstreamResponse | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reason = b""
        self._interim = False
        self._head: asyncio.Future[None] | None = None
        # connection_made was called (so connection_lost will be, and will count it closed).
        self.made = False
        # Bytes came after the answer was complete: the connection cannot be reused.
        self._extra = False
        # The sidecar dropped the connection (its end is not the end of a body).
        self._dropped = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.made = True

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None or response._done:
            # Bytes nobody asked for: the connection cannot carry a request any more.
            self.drop()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._broken(ProtocolError("switched protocols"))
        except httptools.HttpParserError:
            self._broken(ProtocolError("not a valid HTTP response"))
        if self._extra:
            # A second answer nobody asked for, after this one: keep this one, drop the rest.
            self.drop()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.pool._closed(self)
        response = self.response
        if response is None:
            return
        if (not response._done and self._head is None and not response.delimited
                and exc is None and response._exc is None and not self._dropped):
            # A body delimited by the end of the connection (HTTP/1.0 style) ends here (when the
            # factory ended it: not when the sidecar dropped the connection or saw an error).
            response._finish()
            return
        error = Disconnected("closed the connection before the answer was complete")
        self._fail_head(error)
        response._fail(error)

    # --- httptools callbacks -------------------------------------------------------------------

    def on_status(self, status: bytes) -> None:
        response = self.response
        if response is None or response._done:
            self._extra = True
            return
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is None or response._done:
            self._extra = True
        elif not self._interim:
            response.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None or response._done:
            self._extra = True
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # 100 Continue, 103 Early Hints: not the answer; the real one follows.
            self._interim = True
            self._reason = b""
            return
        response.status = status
        response.reason = self._reason.decode("latin-1")
        content_type = None
        for name, value in response.raw_headers:
            size = len(name)
            if size == 12 and content_type is None and name.lower() == b"content-type":
                content_type = value
            elif size == 14 and name.lower() == b"content-length":
                response.delimited = True
                if response.content_length is None and value.isdigit():
                    response.content_length = int(value)
            elif size == 17 and name.lower() == b"transfer-encoding":
                response.delimited = True
            elif size == _REPORT_SIZE and name.lower() == REPORT_HEADER:
                response.load_report = value
        if content_type is not None:
            response.content_type = content_type.decode("latin-1")
        response.keep_alive = self.parser.should_keep_alive()
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is None or response._done:
            self._extra = True
        else:
            response._feed(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        response = self.response
        if response is None or response._done:
            self._extra = True
        else:
            response._finish()

    # --- used by the pool and the response -----------------------------------------------------

    def send(self, data: bytes, body: bytes) -> tuple[UpstreamResponse, asyncio.Future[None]]:
        transport = self.transport
        if transport is None or self.closed:
            raise Disconnected("connection closed before the request was sent")
        response = self.response = UpstreamResponse(self)
        self._reason = b""
        self._interim = False
        head = self._head = asyncio.get_running_loop().create_future()
        if len(body) <= _JOIN_LIMIT:
            transport.write(data + body)
        else:
            transport.write(data)
            transport.write(body)
        return response, head

    def _broken(self, exc: UpstreamError) -> None:
        self._fail_head(exc)
        if self.response is not None:
            self.response._fail(exc)
        self.drop()

    def _fail_head(self, exc: BaseException) -> None:
        head, self._head = self._head, None
        if head is not None and not head.done():
            head.set_exception(exc)

    def head_deadline(self) -> None:
        """The request's deadline passed before the answer's head came."""
        head = self._head
        if head is not None and not head.done():
            head.set_exception(DeadlineExceeded("no answer within the deadline"))

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def reusable(self) -> None:
        self.response = None
        if self.closed or self.transport is None:
            return
        self.pool._put(self)

    def drop(self) -> None:
        self._dropped = True
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to factories, at most ``limit`` open at once."""

    def __init__(self, *, connect_timeout_s: float = 1.0, limit: int = 1024,
                 keepalive_timeout_s: float = 30.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.limit = limit
        self.keepalive_timeout_s = keepalive_timeout_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._urls: dict[str, tuple[Origin, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closing = False

    def target(self, url: str) -> tuple[Origin, bytes]:
        """(origin, path) of ``url``, parsed once per distinct URL; raise :class:`BadUrl`."""
        found = self._urls.get(url)
        if found is None:
            found = split_url(url)
            if len(self._urls) >= 4096:  # URLs come from policies: bounded, but be safe
                self._urls.clear()
            self._urls[url] = found
        return found

    async def request(self, method: bytes, url: str, headers: bytes, body: bytes = b"",
                      deadline_s: float | None = None, *,
                      read_timeout: float | None = None) -> UpstreamResponse:
        """Send a request and wait for the answer's status and headers.

        ``headers`` are whole header lines (``Name: value\r\n`` each) without ``Host`` and
        ``Content-Length``, which are added here. ``deadline_s`` bounds connecting, the wait for
        the head and then every read of the response until the caller clears its
        ``deadline_at``: :class:`DeadlineExceeded` (a TimeoutError). One timer does what an
        ``asyncio.timeout`` block around the whole would, at a fraction of its cost on the
        request path. ``read_timeout`` bounds each silence of the answer after that (see
        :attr:`UpstreamResponse.read_timeout`). Cancelling the caller drops the connection.
        """
        origin, path = self.target(url)
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + deadline_s if deadline_s is not None else None
        conn = await self._acquire(origin, deadline_at)
        data = b"".join((method, b" ", path, b" HTTP/1.1\r\nHost: ", origin.host_header,
                         b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n", headers,
                         b"\r\n"))
        timer = None
        try:
            response, head = conn.send(data, body)
            response.deadline_at = deadline_at
            response.read_timeout = read_timeout
            if deadline_at is not None:
                timer = loop.call_at(deadline_at, conn.head_deadline)
            await head
        except BaseException:
            conn.drop()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return response

    async def _acquire(self, origin: Origin, deadline_at: float | None) -> _Connection:
        while True:
            conn = self._take_idle(origin)
            if conn is not None:
                return conn
            if self._open < self.limit:
                return await self._connect(origin, deadline_at)
            # At the limit: free an idle connection to another factory if there is one, then
            # wait for a connection to close or come back.
            self._evict_other(origin)
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()
            self._waiters.append(waiter)
            left = None if deadline_at is None else max(deadline_at - loop.time(), 0.0)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                raise DeadlineExceeded("no connection free within the deadline") from None
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        expired = time.monotonic() - self.keepalive_timeout_s
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if conn.idle_since < expired:
                conn.drop()
                continue
            return conn
        return None

    def _evict_other(self, origin: Origin) -> bool:
        for other, idle in self._idle.items():
            if other != origin and idle:
                idle.pop(0).drop()
                return True
        return False

    async def _connect(self, origin: Origin, deadline_at: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout_s
        by_deadline = False
        if deadline_at is not None and deadline_at - loop.time() < timeout:
            timeout, by_deadline = max(deadline_at - loop.time(), 0.0), True
        conn = _Connection(self, origin)
        self._open += 1
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: conn, origin.host, origin.port,
                    ssl=self._ssl_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None)
        except BaseException as exc:
            if not conn.made:
                # Never connected: nothing will report it closed, so it is uncounted here.
                self._open -= 1
                self._wake_one()
            else:
                conn.drop()
            if isinstance(exc, TimeoutError):
                if by_deadline:
                    raise DeadlineExceeded("not connected within the deadline") from None
                raise ConnectTimeout("connecting timed out") from None
            if isinstance(exc, socket.gaierror):
                raise DnsError("the host name did not resolve") from None
            if isinstance(exc, OSError):
                raise ConnectError(exc) from None
            raise
        return conn

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _put(self, conn: _Connection) -> None:
        if self._closing:
            conn.drop()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)
        self._wake_one()

    def _closed(self, conn: _Connection) -> None:
        self._open -= 1
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @property
    def open_connections(self) -> int:
        return self._open

    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def close(self) -> None:
        """Drop every idle connection; connections in use are dropped when released."""
        self._closing = True
        for idle in self._idle.values():
            for conn in idle:
                conn.drop()
            idle.clear()
        # Let the transports report connection_lost before the loop goes away.
        await asyncio.sleep(0)

