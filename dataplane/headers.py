"""Which HTTP headers cross the sidecar, in each direction, and which never do.

A proxy that copies headers blindly leaks the tenant's key to a factory (``Authorization``), lets
a client steer connection handling (hop-by-hop headers, RFC 9110 section 7.6.1), or relays an
encoding it cannot frame an error event into. This module is the one place that decides.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .load_reports import FORMAT_REQUEST_LINE

REQUEST_ID = "x-request-id"
TRAFFIC_CLASS = "x-tdn-class"
FACTORY = "x-tdn-factory"
TIER = "x-tdn-tier"
ATTEMPTS = "x-tdn-attempts"
UPSTREAM_REQUEST_ID = "x-tdn-upstream-request-id"
# The sidecar's own time until the headers were sent, in milliseconds (see overhead.py).
OVERHEAD_MS = "x-tdn-overhead-ms"
# Set when a context-length error was answered by re-sending to the route's fallback model.
FALLBACK_MODEL = "x-tdn-fallback-model"
# "exhausted" when a failed attempt was not retried because the retry budget was used up.
RETRY_BUDGET = "x-tdn-retry-budget"

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

# Client headers that are for the sidecar, not the factory: the tenant's credentials, TDN's own
# steering headers, and what the sidecar's client computes itself for the bytes it sends.
_NOT_FORWARDED_UP = frozenset(n.encode() for n in HOP_BY_HOP | {
    "authorization", "cookie", "host", "content-length", "accept-encoding", "expect",
    REQUEST_ID, "api-key", "endpoint-load-metrics-format",
})

# Upstream headers the client must not see: framing is redone by the sidecar, cookies and the
# server banner belong to a factory the next request may not go to.
_NOT_RELAYED_DOWN = frozenset(n.encode() for n in HOP_BY_HOP | {
    "content-length", "server", "set-cookie", "date", REQUEST_ID, "endpoint-load-metrics",
})

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_REQUEST_ID_BYTES_OK = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_CLASS_OK = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_CLASS_BYTES_OK = re.compile(rb"^[A-Za-z0-9._\-]{1,64}$")
_TDN_PREFIX = b"x-tdn-"
_UPSTREAM_REQUEST_ID = UPSTREAM_REQUEST_ID.encode()


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
    tokens: set[bytes] = set()
    for key, value in headers:
        if len(key) == 10 and key.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


# Fresh request ids: 16 random hex digits per process, then a counter (32 hex digits in all, as a
# uuid4's hex was). Unique across processes and restarts by the random part, in order within one
# sidecar, and without a uuid object and an os.urandom call per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id(client_headers: Mapping[str, str]) -> str:
    """The client's request id when it is sane, else a fresh one (never an arbitrary string)."""
    given = client_headers.get(REQUEST_ID)
    return given if given and _REQUEST_ID_OK.match(given) else new_request_id()


def traffic_class(client_headers: Mapping[str, str]) -> str:
    """The traffic class the client asked for; an unusable value means the default class."""
    given = (client_headers.get(TRAFFIC_CLASS) or "").strip()
    return given if _CLASS_OK.match(given) else "default"


@dataclass(slots=True)
class ClientHeaders:
    """What the sidecar reads from a request's headers, and the lines it forwards, found in one
    pass over them (the first of repeated headers wins, as for any lookup). Made once per
    request and never changed (not frozen: that costs a setattr call per field)."""

    # Header lines for the factory, minus the request id (see with_request_id).
    forward: bytes
    request_id: str
    traffic_class: str
    # The raw x-tdn-first-byte-timeout-ms value (checked by deadlines.client_limit).
    first_byte_timeout_ms: str | None
    # The tenant's key as sent, for the tenants file: never logged, never forwarded.
    authorization: str | None
    api_key: str | None

    def upstream(self) -> bytes:
        """Header lines for the factory: the forwarded ones, the request id, and the ask for
        the factory's load report (:mod:`load_reports`)."""
        return (self.forward + b"x-request-id: " + self.request_id.encode() + b"\r\n"
                + FORMAT_REQUEST_LINE)


_READ = {
    REQUEST_ID.encode(): 0, TRAFFIC_CLASS.encode(): 1, b"x-tdn-first-byte-timeout-ms": 2,
    b"authorization": 3, b"api-key": 4,
}


def scan_request(raw: Sequence[tuple[bytes, bytes]]) -> ClientHeaders:
    """Read a client request's headers once: what the sidecar uses, and what it forwards (the
    client's end-to-end headers, minus anything sidecar-only; a ``Content-Type`` is always
    there, and ``Accept-Encoding: identity``)."""
    found: list[bytes | None] = [None, None, None, None, None]
    out: list[bytes] = []
    connection = False
    content_type = False
    read = _READ
    dropped = _NOT_FORWARDED_UP
    for key, value in raw:
        lower = key.lower()
        slot = read.get(lower)
        if slot is not None:
            if found[slot] is None:
                found[slot] = value
        elif lower in dropped:
            connection = connection or lower == b"connection"
        elif not lower.startswith(_TDN_PREFIX):
            content_type = content_type or lower == b"content-type"
            out += (key, b": ", value, b"\r\n")
    if connection:
        out = _without_connection_named(raw)
    if not content_type:
        out.append(b"Content-Type: application/json\r\n")
    # The sidecar relays bytes as they arrive and may append an SSE error event: it must see
    # them uncompressed.
    out.append(b"Accept-Encoding: identity\r\n")
    given, klass, limit, authorization, api_key = found
    klass = (klass or b"").strip()
    return ClientHeaders(
        forward=b"".join(out),
        request_id=(given.decode("latin-1") if given is not None
                    and _REQUEST_ID_BYTES_OK.match(given) else new_request_id()),
        traffic_class=klass.decode("latin-1") if _CLASS_BYTES_OK.match(klass) else "default",
        first_byte_timeout_ms=limit.decode("latin-1") if limit is not None else None,
        authorization=authorization.decode("latin-1") if authorization is not None else None,
        api_key=api_key.decode("latin-1") if api_key is not None else None)


def _without_connection_named(raw: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The forwarded lines when a Connection header names more hop-by-hop headers (RFC 9110
    section 7.6.1): rare, so done in a second pass."""
    items = list(raw)
    named = _connection_tokens(items)
    out: list[bytes] = []
    for key, value in items:
        lower = key.lower()
        if (lower in _READ or lower in _NOT_FORWARDED_UP or lower.startswith(_TDN_PREFIX)
                or lower in named):
            continue
        out += (key, b": ", value, b"\r\n")
    return out


def authorization_line(authorization: str) -> bytes:
    """The ``Authorization`` header line for a factory's credential.

    Raises ValueError for a key that would break the header (a line break in a credentials
    file): never sent, never echoed.
    """
    if "\r" in authorization or "\n" in authorization:
        raise ValueError("the credential contains a line break")
    return b"Authorization: " + authorization.encode("latin-1") + b"\r\n"


def client_response_headers(upstream_headers: Iterable[tuple[bytes, bytes]]
                            ) -> list[tuple[bytes, bytes]]:
    """Headers to relay to the client from the factory's response."""
    items = upstream_headers if isinstance(upstream_headers, list) else list(upstream_headers)
    named = _connection_tokens(items)
    out: list[tuple[bytes, bytes]] = []
    upstream_id = b""
    for key, value in items:
        lower = key.lower()
        if lower == b"x-request-id" and not upstream_id:
            upstream_id = value
        if lower in _NOT_RELAYED_DOWN or lower.startswith(_TDN_PREFIX) or (
                named and lower in named):
            continue
        out.append((key, value))
    if upstream_id and _REQUEST_ID_BYTES_OK.match(upstream_id):
        out.append((_UPSTREAM_REQUEST_ID, upstream_id))
    return out


def encode_extra(extra: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """The sidecar's own response headers as header pairs."""
    return [(k.encode(), v.encode("latin-1", "replace")) for k, v in extra.items()]
