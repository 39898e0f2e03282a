"""The proxy port's HTTP/1.1 server: an asyncio protocol with httptools (llhttp, C) parsing.

Why not aiohttp's server here (the admin port still uses it): on the proxy port its request
object, router, middleware and response writer cost the sidecar about 120 µs of CPU per request,
more than the data plane's whole budget (see docs/decisions.md, "Sidecar hot path"). This server
does what an OpenAI client needs and what a proxy facing applications must survive:

* keep-alive (HTTP/1.1; HTTP/1.0 closes after each answer), ``Content-Length`` and chunked
  request bodies, ``Expect: 100-continue``;
* pipelined requests are answered in order, one at a time; reading stops while a few wait;
* bodies over ``max_body_bytes`` get a 413 before they are read, headers over
  :data:`MAX_HEADER_BYTES` a 431, bytes that are not HTTP a 400: all OpenAI-shaped, and the
  connection is closed after them (its framing can no longer be trusted);
* slow or stalled clients are cut off: a request's headers must arrive within
  ``header_timeout_s`` of its first byte, and its body may not stall longer than
  ``body_idle_timeout_s``; an idle keep-alive connection is closed after
  ``keepalive_timeout_s``. One sweeper task checks every connection once a second, so requests
  pay for no timer of their own;
* a client that disconnects cancels its request's task, which closes the upstream request at
  once (a factory should not generate tokens nobody will read);
* answers are written with ``Content-Length`` when whole, chunked when streamed, and writes wait
  while the client's socket buffer is full (a slow reader slows its stream, not the sidecar).

Handlers answer through a :class:`Responder`; the server answers 500 (OpenAI-shaped) for a
handler that fails before it started its answer, and drops the connection for one that fails
after.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from time import perf_counter
from typing import cast

import httptools

from . import api_errors

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_URL_BYTES = 16 * 1024
# Requests read ahead of the one being answered before the socket stops being read.
PIPELINE_DEPTH = 8
SWEEP_INTERVAL_S = 1.0

_IDLE, _HEAD, _BODY, _BUSY, _CLOSED = range(5)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Reply:
    """A whole answer: status, headers (without framing headers) and body."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reason: str = ""


def json_reply(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> Reply:
    out = [(b"Content-Type", b"application/json; charset=utf-8")]
    if headers:
        out += [(k.encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers.items()]
    return Reply(status, body, out)


def error_reply(err: api_errors.ApiError, headers: Mapping[str, str] | None = None) -> Reply:
    """An :class:`api_errors.ApiError` as a reply in OpenAI's error shape."""
    merged = {**err.headers, **(headers or {})}
    return json_reply(err.status, err.json(), merged)


class HeaderView(Mapping[str, str]):
    """A request's headers by case-insensitive name; the first of repeated headers wins."""

    __slots__ = ("_by_name",)

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        by_name: dict[str, str] = {}
        for name, value in raw:
            key = name.decode("latin-1").lower()
            if key not in by_name:
                by_name[key] = value.decode("latin-1")
        self._by_name = by_name

    def __getitem__(self, key: str) -> str:
        return self._by_name[key.lower()]

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._by_name.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


class Request:
    """One request, its body received whole."""

    __slots__ = ("_headers", "body", "keep_alive", "method", "path", "raw_headers",
                 "received_at")

    def __init__(self, method: str, path: str, raw_headers: list[tuple[bytes, bytes]],
                 body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.raw_headers = raw_headers
        self.body = body
        self.keep_alive = keep_alive
        # When the last byte of the request arrived (perf_counter): the sidecar's clock starts.
        self.received_at = perf_counter()
        self._headers: HeaderView | None = None

    @property
    def headers(self) -> HeaderView:
        if self._headers is None:
            self._headers = HeaderView(self.raw_headers)
        return self._headers


_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def _status_line(status: int, reason: str) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        if reason:
            phrase = reason.encode("latin-1", "replace")
        else:
            try:
                phrase = HTTPStatus(status).phrase.encode()
            except ValueError:
                phrase = b"Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
        if len(_STATUS_LINES) < 256:  # reasons come from factories: keep the cache bounded
            _STATUS_LINES[(status, reason)] = line
    return line


def render_head(status: int, reason: str, headers: Iterable[tuple[bytes, bytes]], *,
                length: int | None, chunked: bool, keep_alive: bool) -> bytes:
    parts = [_status_line(status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if length is not None:
        parts.append(b"Content-Length: %d\r\n" % length)
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if not keep_alive:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Responder:
    """How a handler answers one request: :meth:`send` a whole reply, or :meth:`start` a stream
    and :meth:`write` it. Writes raise ConnectionResetError once the client is gone."""

    __slots__ = ("_chunked", "_head", "_proto", "finished", "keep_alive", "started")

    def __init__(self, proto: _HttpProtocol, keep_alive: bool, http11: bool) -> None:
        self._proto = proto
        self.keep_alive = keep_alive
        self._chunked = http11
        self.started = False
        self.finished = False
        self._head = b""

    def send(self, reply: Reply) -> None:
        transport = self._proto.transport
        if self.started:
            raise RuntimeError("the answer was started already")
        self.started = self.finished = True
        if transport is None:
            return
        if self._proto.server.closing:
            self.keep_alive = False  # stopping: this is the connection's last answer
        head = render_head(reply.status, reply.reason, reply.headers, length=len(reply.body),
                           chunked=False, keep_alive=self.keep_alive)
        transport.write(head + reply.body)

    def start(self, status: int, reason: str, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Begin a streamed answer (sent with the first write)."""
        if self.started:
            raise RuntimeError("the answer was started already")
        self.started = True
        if not self._chunked or self._proto.server.closing:
            # HTTP/1.0: the end of the connection ends the body; stopping: the last answer.
            self.keep_alive = False
        self._head = render_head(status, reason, headers, length=None, chunked=self._chunked,
                                 keep_alive=self.keep_alive)

    async def write(self, data: bytes) -> None:
        proto = self._proto
        transport = proto.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        if not data and not self._head:
            return
        framed = (b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data) if data \
            else b""
        if self._head:
            framed, self._head = self._head + framed, b""
        transport.write(framed)
        if proto.write_paused:
            await proto.drain()

    async def write_eof(self) -> None:
        if self.finished:
            return
        self.finished = True
        transport = self._proto.transport
        if transport is None:
            raise ConnectionResetError("the client went away")
        tail = b"0\r\n\r\n" if self._chunked else b""
        if self._head or tail:
            transport.write(self._head + tail)
            self._head = b""

    def abort(self) -> None:
        """Drop the client connection: the only way left to say a started body is incomplete."""
        self.finished = True
        self.keep_alive = False
        transport = self._proto.transport
        if transport is not None:
            transport.abort()


# A handler answers at once and returns None, or returns what to await until it has answered
# (a plain function rather than a coroutine, so the common answer is one coroutine level
# shallower: every level costs each time the request's task is resumed).
Handler = Callable[[Request, Responder], Awaitable[None] | None]


class _Reject(Exception):
    """Raised inside a parser callback: answer ``reply`` and close the connection."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class _HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.phase = _IDLE
        self.since = time.monotonic()
        self.last_data = self.since
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._reject: Reply | None = None
        self._reading_paused = False
        # A request has begun arriving and is not complete yet; its headers are complete.
        self._in_message = False
        self._head_done = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.phase = _CLOSED
        self.server._connections.discard(self)
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("the client went away")
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_future()
        await self._drain

    def data_received(self, data: bytes) -> None:
        if self._reject is not None or self.phase == _CLOSED:
            return
        self.last_data = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._refuse(cause.reply)
            else:
                log.error("bug: parsing a request failed", exc_info=cause)
                self._refuse(error_reply(api_errors.ApiError(
                    500, "The TDN sidecar failed to read this request.", type_="server_error",
                    code="internal_error")))
        except httptools.HttpParserUpgrade:
            self._refuse(error_reply(api_errors.ApiError(
                400, "Protocol upgrades are not supported by the TDN sidecar.",
                code="upgrade_not_supported")))
        except httptools.HttpParserError:
            self._refuse(error_reply(api_errors.ApiError(
                400, "The request is not valid HTTP/1.1.", code="malformed_request")))

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._head_done = False
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        if self.phase == _IDLE:
            self.phase = _HEAD
            self.since = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            raise _Reject(error_reply(api_errors.ApiError(
                414, "The request URL is too long.", code="url_too_long")))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) > MAX_HEADERS:
            raise _Reject(error_reply(api_errors.ApiError(
                431, "The request headers are too large.", code="headers_too_large")))

    def on_headers_complete(self) -> None:
        self._head_done = True
        expect = False
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == b"content-length":
                if value.strip().isdigit() and int(value) > self.server.max_body_bytes:
                    raise _Reject(error_reply(api_errors.body_too_large(
                        self.server.max_body_bytes)))
            elif len(name) == 6 and name.lower() == b"expect":
                expect = value.strip().lower() == b"100-continue"
        if self.phase == _HEAD:
            self.phase = _BODY
        if expect and self._task is None and not self._queue and self.transport is not None:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.server.max_body_bytes:
            raise _Reject(error_reply(api_errors.body_too_large(self.server.max_body_bytes)))
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        body = self._body
        url = self._url
        if b"?" in url or not url.startswith(b"/"):
            try:
                path = httptools.parse_url(url).path or b"/"
            except httptools.HttpParserInvalidURLError:
                raise _Reject(error_reply(api_errors.ApiError(
                    400, "The request URL is not valid.", code="malformed_request"))) from None
        else:
            path = url
        request = Request(self.parser.get_method().decode("ascii", "replace"),
                          path.decode("utf-8", "replace"), self._headers,
                          body[0] if len(body) == 1 else b"".join(body),
                          self.parser.should_keep_alive())
        self._queue.append(request)
        if self._task is None:
            self._next()
        elif len(self._queue) >= PIPELINE_DEPTH and not self._reading_paused:
            self._pause_reading()

    # --- serving -------------------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _refuse(self, reply: Reply) -> None:
        """Answer ``reply`` and close: now, or after the requests already read are answered."""
        self._reject = reply
        if self._task is None:
            self._send_reject()
        else:
            self._pause_reading()

    def _send_reject(self) -> None:
        reply, self._reject = self._reject, None
        transport = self.transport
        if reply is None or transport is None:
            return
        transport.write(render_head(reply.status, reply.reason, reply.headers,
                                    length=len(reply.body), chunked=False, keep_alive=False)
                        + reply.body)
        self.phase = _CLOSED
        transport.close()

    def _next(self) -> None:
        request = self._queue.popleft()
        self.phase = _BUSY
        keep_alive = request.keep_alive and not self.server.closing
        responder = Responder(self, keep_alive, self.parser.get_http_version() != "1.0")
        self._task = asyncio.get_running_loop().create_task(self._serve(request, responder))

    async def _serve(self, request: Request, responder: Responder) -> None:
        try:
            pending = self.server.handler(request, responder)
            if pending is not None:
                await pending
        except asyncio.CancelledError:
            # The client went away, or the server is stopping past its grace period.
            responder.abort()
        except Exception:
            log.exception("bug: unhandled error serving %s %s", request.method, request.path)
            if not responder.started:
                responder.send(error_reply(api_errors.ApiError(
                    500, "The TDN sidecar failed to handle this request.", type_="server_error",
                    code="internal_error")))
            else:
                responder.abort()
        self._task = None
        self._answered(responder)

    def _answered(self, responder: Responder) -> None:
        transport = self.transport
        if transport is None:
            return
        if not responder.finished:
            # A handler that returned with its answer unfinished: the framing is unknowable.
            responder.abort()
            return
        if not responder.keep_alive:
            self.phase = _CLOSED
            transport.close()
            return
        if self._queue:
            self._next()
            if len(self._queue) < PIPELINE_DEPTH and self._reject is None:
                self._resume_reading()
            return
        if self._reject is not None:
            self._send_reject()
            return
        # A pipelined request partly read meanwhile is timed from now as any other.
        self.phase = (_BODY if self._head_done else _HEAD) if self._in_message else _IDLE
        self.since = self.last_data = time.monotonic()
        self._resume_reading()

    # --- housekeeping --------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        server = self.server
        transport = self.transport
        if transport is None:
            return
        phase = self.phase
        if phase == _IDLE and (server.closing or now - self.since > server.keepalive_timeout_s):
            self.phase = _CLOSED
            transport.close()
            return
        stalled_head = phase == _HEAD and now - self.since > server.header_timeout_s
        stalled_body = phase == _BODY and now - self.last_data > server.body_idle_timeout_s
        if stalled_head or stalled_body:
            # A client this slow is broken or hostile (slowloris): no answer, just the end.
            self.phase = _CLOSED
            transport.abort()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.transport is not None:
            self.transport.abort()


class HttpServer:
    """Serves ``handler`` on one listening socket; :meth:`stop` lets requests in flight end."""

    def __init__(self, handler: Handler, *, max_body_bytes: int,
                 keepalive_timeout_s: float = 75.0, header_timeout_s: float = 10.0,
                 body_idle_timeout_s: float = 30.0) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.header_timeout_s = header_timeout_s
        self.body_idle_timeout_s = body_idle_timeout_s
        self.closing = False
        self._connections: set[_HttpProtocol] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``host:port`` (0: any free port); the port bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HttpProtocol(self), host, port,
                                                reuse_port=reuse_port or None, backlog=1024)
        self._sweeper = loop.create_task(self._sweep(), name="tdn-http-sweeper")
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            for conn in list(self._connections):
                conn.sweep(now)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def stop(self, grace_s: float) -> None:
        """Stop listening, close idle connections, give requests in flight ``grace_s`` to end,
        then cancel what is left."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        now = time.monotonic()
        for conn in list(self._connections):
            conn.sweep(now)
        deadline = now + grace_s
        while True:
            # Pipelined requests already read start when the one before them ends, so wait
            # for whichever tasks are running now, again, until none is or time is up.
            tasks = [c.task for c in self._connections if c.task is not None]
            left = deadline - time.monotonic()
            if not tasks or left <= 0:
                break
            await asyncio.wait(tasks, timeout=left)
        for conn in list(self._connections):
            conn.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.wait([self._sweeper])
            self._sweeper = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # Let the cancelled handlers run their cleanup (closing upstream requests).
        await asyncio.sleep(0)
