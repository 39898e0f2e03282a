"""The Toxiproxy client against a real Toxiproxy server, with a proxy in front of a local TCP
echo server: faults injected through the client must change what traffic actually does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from support import free_port

from tdn.chaos.toxiproxy import Proxy, Stream, Toxic, ToxicType, ToxiproxyClient, ToxiproxyError

pytestmark = pytest.mark.integration

DEADLINE = 5.0


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP server on loopback that sends back whatever it receives."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield int(server.sockets[0].getsockname()[1])
        # Connections a toxic holds open (a blackhole) would outlive the test otherwise.
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@pytest.fixture
async def toxiproxy(toxiproxy_server: str) -> AsyncIterator[ToxiproxyClient]:
    async with ToxiproxyClient(toxiproxy_server) as client:
        yield client


@pytest.fixture
async def proxy(toxiproxy: ToxiproxyClient, echo_port: int) -> Proxy:
    return await toxiproxy.create_proxy("echo", "127.0.0.1:0", f"127.0.0.1:{echo_port}")


async def round_trip(port: int, payload: bytes = b"hello through the proxy") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(DEADLINE):
            writer.write(payload)
            await writer.drain()
            return await reader.readexactly(len(payload))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_the_server_reports_its_version(toxiproxy: ToxiproxyClient) -> None:
    assert await toxiproxy.version()


async def test_traffic_passes_through_a_proxy_unchanged(
    toxiproxy: ToxiproxyClient, proxy: Proxy, echo_port: int
) -> None:
    assert proxy.enabled and proxy.listen_port != 0
    assert proxy.upstream == f"127.0.0.1:{echo_port}"
    assert await round_trip(proxy.listen_port) == b"hello through the proxy"
    assert list(await toxiproxy.proxies()) == ["echo"]


async def test_a_latency_toxic_delays_answers_by_at_least_its_latency(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    added = await toxiproxy.add_toxic("echo", Toxic.latency(200))
    assert (added.name, added.type, added.stream) == (
        "latency_downstream", ToxicType.LATENCY, Stream.DOWNSTREAM,
    )
    started = time.monotonic()
    assert await round_trip(proxy.listen_port) == b"hello through the proxy"
    # A lower bound of the injected fault, not a benchmark: the toxic holds data >= 200 ms.
    assert time.monotonic() - started >= 0.2


async def test_a_disabled_proxy_refuses_connections_until_enabled_again(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    disabled = await toxiproxy.disable("echo")
    assert not disabled.enabled
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    assert (await toxiproxy.enable("echo")).enabled
    assert await round_trip(proxy.listen_port) == b"hello through the proxy"


async def test_a_reset_peer_toxic_resets_connections(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    await toxiproxy.add_toxic("echo", Toxic.reset_peer(0, stream=Stream.UPSTREAM))
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await round_trip(proxy.listen_port)


async def test_a_blackhole_toxic_swallows_data_without_closing_the_connection(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    await toxiproxy.add_toxic("echo", Toxic.blackhole(0))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_port)
    try:
        writer.write(b"anyone there?")
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        assert not reader.at_eof()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_reset_enables_every_proxy_and_removes_every_toxic(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    await toxiproxy.add_toxic("echo", Toxic.latency(1000))
    await toxiproxy.add_toxic("echo", Toxic.limit_data(1, stream=Stream.UPSTREAM))
    await toxiproxy.disable("echo")
    await toxiproxy.reset()
    restored = await toxiproxy.get_proxy("echo")
    assert restored.enabled and restored.toxics == ()
    assert await toxiproxy.toxics("echo") == []
    assert await round_trip(proxy.listen_port) == b"hello through the proxy"


async def test_toxics_can_be_read_updated_and_scoped_to_a_block(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    async with toxiproxy.toxic("echo", Toxic.bandwidth(100, name="thin-link")) as added:
        assert added.name == "thin-link"
        updated = await toxiproxy.update_toxic("echo", "thin-link", attributes={"rate": 5},
                                               toxicity=0.5)
        assert (updated.attributes["rate"], updated.toxicity) == (5, 0.5)
        assert await toxiproxy.get_toxic("echo", "thin-link") == updated
        assert [t.name for t in (await toxiproxy.get_proxy("echo")).toxics] == ["thin-link"]
    assert await toxiproxy.toxics("echo") == []


async def test_every_toxic_type_is_accepted_by_the_server(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    toxics = [
        Toxic.latency(10, 5), Toxic.blackhole(100), Toxic.reset_peer(100),
        Toxic.limit_data(1000), Toxic.slicer(10, 2, 100), Toxic.bandwidth(1000),
        Toxic.slow_close(10),
    ]
    for toxic in toxics:
        added = await toxiproxy.add_toxic("echo", toxic)
        assert (added.type, dict(added.attributes)) == (toxic.type, dict(toxic.attributes))
        await toxiproxy.remove_toxic("echo", added.name)


async def test_api_errors_carry_the_status_and_toxiproxys_message(
    toxiproxy: ToxiproxyClient, proxy: Proxy
) -> None:
    with pytest.raises(ToxiproxyError) as duplicate:
        await toxiproxy.create_proxy("echo", "127.0.0.1:0", proxy.upstream)
    assert (duplicate.value.status, duplicate.value.message) == (409, "proxy already exists")
    with pytest.raises(ToxiproxyError) as missing:
        await toxiproxy.get_proxy("nope")
    assert (missing.value.status, missing.value.message) == (404, "proxy not found")
    with pytest.raises(ToxiproxyError) as no_toxic:
        await toxiproxy.remove_toxic("echo", "nope")
    assert no_toxic.value.status == 404


async def test_a_deleted_proxy_stops_listening(toxiproxy: ToxiproxyClient, proxy: Proxy) -> None:
    await toxiproxy.delete_proxy("echo")
    assert await toxiproxy.proxies() == {}
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.listen_port)


async def test_an_unreachable_api_is_a_toxiproxy_error_with_status_zero() -> None:
    async with ToxiproxyClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ToxiproxyError) as unreachable:
            await client.version()
    assert unreachable.value.status == 0
