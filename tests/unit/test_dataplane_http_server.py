"""The proxy port's HTTP/1.1 server on its own: what it does with well-formed, odd and hostile
clients (keep-alive, pipelining, chunked bodies, Expect: 100-continue, garbage, oversized or
stalled requests, clients that leave), independent of the proxy logic behind it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from tdn.dataplane.http_server import HttpServer, Reply, Request, Responder

Handler = Callable[[Request, Responder], Awaitable[None] | None]


def echo(request: Request, responder: Responder) -> None:
    """Answers at once with what it got: method, path, body and one header."""
    responder.send(Reply(200, json.dumps({
        "method": request.method, "path": request.path, "body": request.body.decode(),
        "x-test": request.headers.get("x-test"),
    }).encode(), [(b"Content-Type", b"application/json")]))


@asynccontextmanager
async def serving(handler: Handler = echo, **settings: float) -> AsyncIterator[HttpServer]:
    server = HttpServer(handler, max_body_bytes=int(settings.pop("max_body_bytes", 1024)),
                        **settings)
    server.port = await server.start("127.0.0.1", 0)  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        await server.stop(1.0)


async def connect(server: HttpServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)  # type: ignore[attr-defined]


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and its body, as a client reads it."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    pairs = (line.partition(":") for line in lines[1:] if line)
    found = {k.lower(): v.strip() for k, _, v in pairs}
    if "content-length" in found:
        body = await asyncio.wait_for(reader.readexactly(int(found["content-length"])), 5)
    elif found.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), 5)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return status, found, body


def post(body: bytes, path: str = "/p", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def test_keep_alive_answers_several_requests_on_one_connection_in_order() -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        for i in range(3):
            writer.write(post(f"body-{i}".encode(), extra="x-test: yes\r\n"))
            status, headers, body = await read_response(reader)
            assert status == 200
            assert "connection" not in headers
            assert json.loads(body) == {"method": "POST", "path": "/p", "body": f"body-{i}",
                                        "x-test": "yes"}
        writer.close()


async def test_pipelined_requests_are_answered_in_the_order_they_were_sent() -> None:
    release = asyncio.Event()

    async def slow_first(request: Request, responder: Responder) -> None:
        if request.body == b"first":
            await release.wait()
        echo(request, responder)

    async with serving(slow_first) as server:
        reader, writer = await connect(server)
        writer.write(post(b"first") + post(b"second") + post(b"third"))
        await writer.drain()
        release.set()
        bodies = [json.loads((await read_response(reader))[2])["body"] for _ in range(3)]
        assert bodies == ["first", "second", "third"]
        writer.close()


async def test_http_1_0_gets_its_answer_and_then_the_connection_closes() -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        status, headers, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "hi"
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_chunked_request_body_is_reassembled_before_the_handler_sees_it() -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200
        assert json.loads(body)["body"] == "hello world"
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"body")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "body"
        writer.close()


async def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read() -> None:
    async with serving(max_body_bytes=16) as server:
        reader, writer = await connect(server)
        # Only the head: the server must answer without waiting for the 10 MB it announces.
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 413
        assert json.loads(body)["error"]["code"] == "request_too_large"
        assert headers["connection"] == "close"


async def test_a_chunked_body_growing_over_the_limit_is_refused_with_413() -> None:
    async with serving(max_body_bytes=16) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"20\r\n" + b"x" * 32 + b"\r\n")
        status, _, body = await read_response(reader)
        assert status == 413
        assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # a TLS hello
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"POST /p HTTP/1.1\r\nBad Header Line\r\n\r\n",
])
async def test_bytes_that_are_not_http_get_an_openai_400_and_the_connection_closes(
        garbage: bytes) -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        writer.write(garbage)
        status, headers, body = await read_response(reader)
        assert status == 400
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
        assert headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_headers_over_the_limit_get_431() -> None:
    async with serving() as server:
        reader, writer = await connect(server)
        writer.write(b"GET / HTTP/1.1\r\n" + b"".join(
            b"x-filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(100)) + b"\r\n")
        status, _, body = await read_response(reader)
        assert status == 431
        assert json.loads(body)["error"]["code"] == "headers_too_large"


async def test_a_client_stalling_in_its_headers_is_disconnected() -> None:
    async with serving(header_timeout_s=0.2) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        # The sweeper looks once a second: the connection ends well within the wait.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        assert server.connections == 0


async def test_a_client_stalling_in_its_body_is_disconnected() -> None:
    async with serving(body_idle_timeout_s=0.2) as server:
        reader, writer = await connect(server)
        writer.write(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart")
        assert await asyncio.wait_for(reader.read(), 10) == b""


async def test_an_idle_keep_alive_connection_is_closed_after_its_timeout() -> None:
    async with serving(keepalive_timeout_s=0.2) as server:
        reader, writer = await connect(server)
        writer.write(post(b"x"))
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 10) == b""


async def test_a_handler_bug_gets_an_openai_500_and_the_server_goes_on() -> None:
    def broken(request: Request, responder: Responder) -> None:
        if request.body == b"boom":
            raise KeyError("bug")
        echo(request, responder)

    async with serving(broken) as server:
        reader, writer = await connect(server)
        writer.write(post(b"boom"))
        status, _, body = await read_response(reader)
        assert status == 500
        assert json.loads(body)["error"]["code"] == "internal_error"
        writer.write(post(b"fine"))
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_a_client_that_goes_away_cancels_its_request() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(request: Request, responder: Responder) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serving(forever) as server:
        _, writer = await connect(server)
        writer.write(post(b"x"))
        await asyncio.wait_for(started.wait(), 5)
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)


async def test_a_streamed_answer_is_chunked_and_ends_with_the_last_chunk() -> None:
    async def stream(request: Request, responder: Responder) -> None:
        responder.start(200, "", [(b"Content-Type", b"text/event-stream")])
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            await responder.write(piece)
        await responder.write_eof()

    async with serving(stream) as server:
        reader, writer = await connect(server)
        writer.write(post(b"x"))
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert body == b"data: 1\n\ndata: 2\n\n"
        writer.write(post(b"again"))  # the connection is still usable
        assert (await read_response(reader))[0] == 200
        writer.close()


async def test_stop_lets_a_request_in_flight_finish_and_closes_idle_connections() -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(request: Request, responder: Responder) -> None:
        started.set()
        await release.wait()
        echo(request, responder)

    server = HttpServer(slow, max_body_bytes=1024)
    port = await server.start("127.0.0.1", 0)
    busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
    idle_reader, _ = await asyncio.open_connection("127.0.0.1", port)
    busy_writer.write(post(b"in flight"))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(server.stop(5.0))
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""
    release.set()
    status, headers, body = await read_response(busy_reader)
    assert status == 200 and json.loads(body)["body"] == "in flight"
    assert headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)


async def test_a_pipelined_request_left_unfinished_is_cut_off_like_any_stalled_one() -> None:
    async with serving(header_timeout_s=0.2) as server:
        reader, writer = await connect(server)
        writer.write(post(b"whole") + b"POST /p HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 10) == b""
