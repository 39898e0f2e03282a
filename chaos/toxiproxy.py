"""A small typed asyncio client for Toxiproxy's HTTP API, which chaos drills use to cut, slow
and break the links between TDN's processes.

Written here rather than taken from the ``toxiproxy-python`` package, which is unmaintained
(its ``destroy_all`` is broken). Every API error becomes a :class:`ToxiproxyError` carrying the
HTTP status and Toxiproxy's message, so a drill that mis-specifies a fault fails loudly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0


class ToxiproxyError(Exception):
    """The Toxiproxy API refused a request (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str, method: str = "", path: str = "") -> None:
        super().__init__(f"toxiproxy {method} {path} -> {status}: {message}".strip())
        self.status = status
        self.message = message


class ToxicType(StrEnum):
    """The faults Toxiproxy can inject (see its README for each one's attributes)."""

    LATENCY = "latency"  # latency, jitter (ms)
    TIMEOUT = "timeout"  # timeout (ms); 0 = blackhole: data is dropped, connection held open
    RESET_PEER = "reset_peer"  # timeout (ms) before the connection is reset with a TCP RST
    LIMIT_DATA = "limit_data"  # bytes, then the connection is closed
    SLICER = "slicer"  # average_size, size_variation (bytes), delay (us) between slices
    BANDWIDTH = "bandwidth"  # rate (KB/s)
    SLOW_CLOSE = "slow_close"  # delay (ms) before the close is passed on


class Stream(StrEnum):
    """Which direction a toxic acts on: client→upstream, or upstream→client."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


@dataclass(frozen=True, slots=True)
class Toxic:
    """A fault on a proxy. Leave ``name`` empty to get Toxiproxy's ``<type>_<stream>``."""

    type: ToxicType
    attributes: Mapping[str, int] = field(default_factory=dict)
    stream: Stream = Stream.DOWNSTREAM
    toxicity: float = 1.0  # probability that a connection is affected
    name: str = ""

    @classmethod
    def latency(cls, latency_ms: int, jitter_ms: int = 0, *, stream: Stream = Stream.DOWNSTREAM,
                toxicity: float = 1.0, name: str = "") -> Toxic:
        return cls(ToxicType.LATENCY, {"latency": latency_ms, "jitter": jitter_ms}, stream,
                   toxicity, name)

    @classmethod
    def blackhole(cls, timeout_ms: int = 0, *, stream: Stream = Stream.DOWNSTREAM,
                  toxicity: float = 1.0, name: str = "") -> Toxic:
        """Drop all data; close after ``timeout_ms`` (0: never) — a link that went silent."""
        return cls(ToxicType.TIMEOUT, {"timeout": timeout_ms}, stream, toxicity, name)

    @classmethod
    def reset_peer(cls, timeout_ms: int = 0, *, stream: Stream = Stream.DOWNSTREAM,
                   toxicity: float = 1.0, name: str = "") -> Toxic:
        return cls(ToxicType.RESET_PEER, {"timeout": timeout_ms}, stream, toxicity, name)

    @classmethod
    def limit_data(cls, max_bytes: int, *, stream: Stream = Stream.DOWNSTREAM,
                   toxicity: float = 1.0, name: str = "") -> Toxic:
        return cls(ToxicType.LIMIT_DATA, {"bytes": max_bytes}, stream, toxicity, name)

    @classmethod
    def slicer(cls, average_size: int, size_variation: int = 0, delay_us: int = 0, *,
               stream: Stream = Stream.DOWNSTREAM, toxicity: float = 1.0,
               name: str = "") -> Toxic:
        attributes = {"average_size": average_size, "size_variation": size_variation,
                      "delay": delay_us}
        return cls(ToxicType.SLICER, attributes, stream, toxicity, name)

    @classmethod
    def bandwidth(cls, rate_kb_per_second: int, *, stream: Stream = Stream.DOWNSTREAM,
                  toxicity: float = 1.0, name: str = "") -> Toxic:
        return cls(ToxicType.BANDWIDTH, {"rate": rate_kb_per_second}, stream, toxicity, name)

    @classmethod
    def slow_close(cls, delay_ms: int, *, stream: Stream = Stream.DOWNSTREAM,
                   toxicity: float = 1.0, name: str = "") -> Toxic:
        return cls(ToxicType.SLOW_CLOSE, {"delay": delay_ms}, stream, toxicity, name)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type.value,
            "stream": self.stream.value,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }
        if self.name:
            body["name"] = self.name
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Toxic:
        return cls(
            type=ToxicType(body["type"]),
            attributes={str(k): int(v) for k, v in (body.get("attributes") or {}).items()},
            stream=Stream(body.get("stream", Stream.DOWNSTREAM.value)),
            toxicity=float(body.get("toxicity", 1.0)),
            name=str(body.get("name", "")),
        )


@dataclass(frozen=True, slots=True)
class Proxy:
    """A TCP proxy between ``listen`` and ``upstream`` (both ``host:port``).

    A disabled proxy does not listen: connections to it are refused.
    """

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Toxic, ...] = ()

    @property
    def listen_port(self) -> int:
        """The port clients connect to (Toxiproxy fills it in when created with port 0)."""
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Proxy:
        return cls(
            name=str(body["name"]),
            listen=str(body["listen"]),
            upstream=str(body["upstream"]),
            enabled=bool(body["enabled"]),
            toxics=tuple(Toxic.from_json(t) for t in body.get("toxics") or ()),
        )


class ToxiproxyClient:
    """Toxiproxy's HTTP API at ``base_url`` (``http://host:port``). Close it, or use
    ``async with``; it owns one aiohttp session."""

    def __init__(self, base_url: str, *,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: object = None) -> Any:
        if self._session is None:
            # Created on first use so that it belongs to the running event loop.
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, self.base_url + path, json=body) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ToxiproxyError(0, f"unreachable: {exc!r}", method, path) from exc
        if status >= 400:
            raise ToxiproxyError(status, _error_message(text), method, path)
        if status == 204 or not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            # GET /version answered plain text before Toxiproxy 2.6.
            return text

    # --- server ---------------------------------------------------------------------------------

    async def version(self) -> str:
        answer = await self._request("GET", "/version")
        return str(answer["version"]) if isinstance(answer, dict) else str(answer).strip()

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        await self._request("POST", "/reset")

    # --- proxies --------------------------------------------------------------------------------

    async def proxies(self) -> dict[str, Proxy]:
        answer = await self._request("GET", "/proxies")
        return {name: Proxy.from_json(body) for name, body in (answer or {}).items()}

    async def create_proxy(self, name: str, listen: str, upstream: str,
                           enabled: bool = True) -> Proxy:
        """Create a proxy; ``listen`` may use port 0, and the returned proxy has the real one."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy.from_json(await self._request("POST", "/proxies", body))

    async def get_proxy(self, name: str) -> Proxy:
        return Proxy.from_json(await self._request("GET", _proxy_path(name)))

    async def update_proxy(self, name: str, *, listen: str | None = None,
                           upstream: str | None = None, enabled: bool | None = None) -> Proxy:
        body: dict[str, object] = {}
        if listen is not None:
            body["listen"] = listen
        if upstream is not None:
            body["upstream"] = upstream
        if enabled is not None:
            body["enabled"] = enabled
        return Proxy.from_json(await self._request("POST", _proxy_path(name), body))

    async def enable(self, name: str) -> Proxy:
        return await self.update_proxy(name, enabled=True)

    async def disable(self, name: str) -> Proxy:
        """Stop listening: new connections are refused and open ones are closed."""
        return await self.update_proxy(name, enabled=False)

    async def delete_proxy(self, name: str) -> None:
        await self._request("DELETE", _proxy_path(name))

    # --- toxics ---------------------------------------------------------------------------------

    async def toxics(self, proxy: str) -> list[Toxic]:
        answer = await self._request("GET", _proxy_path(proxy) + "/toxics")
        return [Toxic.from_json(body) for body in answer or ()]

    async def add_toxic(self, proxy: str, toxic: Toxic) -> Toxic:
        """Add ``toxic``; the returned one carries the name Toxiproxy gave it."""
        answer = await self._request("POST", _proxy_path(proxy) + "/toxics", toxic.to_json())
        return Toxic.from_json(answer)

    async def get_toxic(self, proxy: str, name: str) -> Toxic:
        return Toxic.from_json(await self._request("GET", _toxic_path(proxy, name)))

    async def update_toxic(self, proxy: str, name: str, *,
                           attributes: Mapping[str, int] | None = None,
                           toxicity: float | None = None) -> Toxic:
        body: dict[str, object] = {}
        if attributes is not None:
            body["attributes"] = dict(attributes)
        if toxicity is not None:
            body["toxicity"] = toxicity
        return Toxic.from_json(await self._request("POST", _toxic_path(proxy, name), body))

    async def remove_toxic(self, proxy: str, name: str) -> None:
        await self._request("DELETE", _toxic_path(proxy, name))

    @asynccontextmanager
    async def toxic(self, proxy: str, toxic: Toxic) -> AsyncIterator[Toxic]:
        """Hold ``toxic`` on ``proxy`` for the block: a fault with a scope."""
        added = await self.add_toxic(proxy, toxic)
        try:
            yield added
        finally:
            await self.remove_toxic(proxy, added.name)


def _proxy_path(name: str) -> str:
    return "/proxies/" + quote(name, safe="")


def _toxic_path(proxy: str, name: str) -> str:
    return _proxy_path(proxy) + "/toxics/" + quote(name, safe="")


def _error_message(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip() or "(no message)"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return text.strip()
