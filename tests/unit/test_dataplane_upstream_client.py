"""The sidecar's client towards factories: connections reused only when safe, every failure a
typed error failover can classify, deadlines and read timeouts enforced, bodies framed by length,
chunks or the connection's end. Factories here are raw asyncio servers scripted per test."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from dataplane_support import reserved_port

from tdn.dataplane.failover import classify
from tdn.dataplane.upstream_client import (
    BadUrl,
    ConnectError,
    DeadlineExceeded,
    Disconnected,
    ProtocolError,
    ReadTimeout,
    UpstreamPool,
    split_url,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Factory:
    """A raw server: each connection runs ``script``; counts connections and requests."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def factory(script: Script) -> AsyncIterator[Factory]:
    f = Factory(script)
    server = await asyncio.start_server(f._serve, "127.0.0.1", 0)
    f.port = server.sockets[0].getsockname()[1]
    try:
        yield f
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def keep_answering(answer: bytes = OK) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
    return script


def url(f: Factory) -> str:
    return f"http://127.0.0.1:{f.port}/v1/chat/completions"


async def fetch(pool: UpstreamPool, target: str, deadline_s: float | None = 5.0) -> bytes:
    response = await pool.request(b"POST", target, b"Content-Type: application/json\r\n",
                                  b"{}", deadline_s)
    response.deadline_at = None
    body = await response.read()
    response.release()
    return body


async def test_a_keep_alive_connection_is_reused_for_the_next_request() -> None:
    async with factory(keep_answering()) as f:
        pool = UpstreamPool()
        for _ in range(3):
            assert await fetch(pool, url(f)) == b"{}"
        assert f.connections == 1
        assert pool.idle_connections() == 1
        await pool.close()


async def test_a_connection_the_factory_closes_after_answering_is_not_reused() -> None:
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(closing)
        await writer.drain()

    async with factory(once) as f:
        pool = UpstreamPool()
        assert await fetch(pool, url(f)) == b"{}"
        assert await fetch(pool, url(f)) == b"{}"
        assert f.connections == 2
        await pool.close()


async def test_an_answer_released_unread_does_not_go_back_to_the_pool() -> None:
    async with factory(keep_answering()) as f:
        pool = UpstreamPool()
        response = await pool.request(b"POST", url(f), b"", b"{}", 5.0)
        response.close()
        assert pool.idle_connections() == 0
        assert await fetch(pool, url(f)) == b"{}"
        assert f.connections == 2
        await pool.close()


async def test_the_request_carries_host_length_and_the_given_headers_only() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    async with factory(record) as f:
        pool = UpstreamPool()
        await fetch(pool, url(f))
        head, _, body = seen[0].partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/chat/completions HTTP/1.1"
        assert sorted(lines[1:]) == sorted([f"Host: 127.0.0.1:{f.port}".encode(),
                                            b"Content-Length: 2",
                                            b"Content-Type: application/json"])
        assert body == b"{}"
        await pool.close()


async def test_chunked_and_connection_delimited_bodies_are_read_whole() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    until_close = b"HTTP/1.0 200 OK\r\n\r\nall of it"

    def answer_once(answer: bytes) -> Script:
        async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(answer)
            await writer.drain()
        return script

    pool = UpstreamPool()
    async with factory(answer_once(chunked)) as f:
        assert await fetch(pool, url(f)) == b"abcde"
    async with factory(answer_once(until_close)) as f:
        assert await fetch(pool, url(f)) == b"all of it"
    await pool.close()


async def test_a_refused_connection_is_a_connect_error_failover_calls_refused() -> None:
    pool = UpstreamPool()
    with reserved_port() as port, pytest.raises(ConnectError) as caught:
        await pool.request(b"POST", f"http://127.0.0.1:{port}/v1/x", b"", b"{}", 5.0)
    assert caught.value.os_error.errno == errno.ECONNREFUSED
    assert classify(caught.value)[0] == "refused"
    assert pool.open_connections == 0


async def test_a_connection_closed_before_the_answer_is_a_reset() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with factory(hang_up) as f:
        pool = UpstreamPool()
        with pytest.raises(Disconnected) as caught:
            await fetch(pool, url(f))
        assert classify(caught.value)[0] == "reset"
        await pool.close()


async def test_a_body_cut_short_is_a_disconnect_not_a_short_success() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with factory(cut) as f:
        pool = UpstreamPool()
        with pytest.raises(Disconnected):
            await fetch(pool, url(f))
        await pool.close()


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async with factory(keep_answering(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")) as f:
        pool = UpstreamPool()
        with pytest.raises(ProtocolError) as caught:
            await fetch(pool, url(f))
        assert classify(caught.value)[0] == "protocol_error"
        await pool.close()


async def test_a_silent_factory_raises_deadline_exceeded_at_the_deadline() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.Event().wait()

    async with factory(silent) as f:
        pool = UpstreamPool()
        with pytest.raises(DeadlineExceeded):
            await pool.request(b"POST", url(f), b"", b"{}", 0.1)
        assert isinstance(DeadlineExceeded("x"), TimeoutError)
        await pool.close()


async def test_a_body_that_stalls_after_the_head_raises_read_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.Event().wait()

    async with factory(stall) as f:
        pool = UpstreamPool()
        response = await pool.request(b"POST", url(f), b"", b"{}", 5.0, read_timeout=0.1)
        response.deadline_at = None
        assert await response.readany() == b"abc"
        with pytest.raises(ReadTimeout) as caught:
            await response.readany()
        assert classify(caught.value)[0] == "stream_idle"
        response.close()
        await pool.close()


async def test_the_deadline_also_bounds_reads_until_it_is_cleared() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        await writer.drain()
        await asyncio.Event().wait()

    async with factory(stall) as f:
        pool = UpstreamPool()
        response = await pool.request(b"POST", url(f), b"", b"{}", 0.2, read_timeout=30.0)
        with pytest.raises(DeadlineExceeded):
            await response.readany()
        response.close()
        await pool.close()


@pytest.mark.parametrize("bad", ["ftp://h/v1", "http:///v1", "http://h:99999/v1", "not a url"])
def test_a_base_url_that_is_not_http_with_a_host_is_refused(bad: str) -> None:
    with pytest.raises(BadUrl):
        split_url(bad)
    assert classify(BadUrl("x"))[0] == "bad_endpoint"


def test_split_url_keeps_the_path_and_writes_the_host_header() -> None:
    origin, path = split_url("https://factory.example:8443/v1/chat/completions?x=1")
    assert (origin.host, origin.port, origin.tls) == ("factory.example", 8443, True)
    assert origin.host_header == b"factory.example:8443"
    assert path == b"/v1/chat/completions?x=1"
    origin, _ = split_url("http://[::1]/v1")
    assert origin.host_header == b"[::1]" and origin.port == 80


async def test_the_pool_limit_makes_a_request_wait_for_a_free_connection() -> None:
    release = asyncio.Event()

    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await release.wait()
            writer.write(OK)
            await writer.drain()

    async with factory(held) as f:
        pool = UpstreamPool(limit=1)
        first = asyncio.create_task(fetch(pool, url(f)))
        second = asyncio.create_task(fetch(pool, url(f)))
        await asyncio.sleep(0)
        assert pool.open_connections == 1
        release.set()
        assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [b"{}", b"{}"]
        assert f.connections == 1
        await pool.close()


async def test_a_second_answer_nobody_asked_for_leaves_the_first_intact_and_unpooled() -> None:
    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with factory(twice) as f:
        pool = UpstreamPool()
        response = await pool.request(b"POST", url(f), b"", b"{}", 5.0)
        assert response.status == 200
        assert await response.read() == b"{}"
        response.release()
        assert pool.idle_connections() == 0
        await pool.close()
