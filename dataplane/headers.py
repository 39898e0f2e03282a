"""Which HTTP headers cross the sidecar, in each direction, and which never do.

A proxy that copies headers blindly leaks the tenant's key to a factory (``Authorization``), lets
a client steer connection handling (hop-by-hop headers, RFC 9110 section 7.6.1), or relays an
encoding it cannot frame an error event into. This module is the one place that decides.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

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
# steering headers, and what aiohttp must compute itself for the bytes it sends.
_NOT_FORWARDED_UP = HOP_BY_HOP | {
    "authorization", "cookie", "host", "content-length", "accept-encoding", "expect",
}

# Upstream headers the client must not see: framing is redone by the sidecar, cookies and the
# server banner belong to a factory the next request may not go to.
_NOT_RELAYED_DOWN = HOP_BY_HOP | {"content-length", "server", "set-cookie", "date", "x-request-id"}

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CLASS_OK = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
    tokens: set[str] = set()
    for key, value in headers.items():
        if key.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def request_id(client_headers: Mapping[str, str]) -> str:
    """The client's request id when it is sane, else a fresh one (never an arbitrary string)."""
    given = client_headers.get(REQUEST_ID, "")
    return given if _REQUEST_ID_OK.match(given) else uuid.uuid4().hex


def traffic_class(client_headers: Mapping[str, str]) -> str:
    """The traffic class the client asked for; an unusable value means the default class."""
    given = client_headers.get(TRAFFIC_CLASS, "").strip()
    return given if _CLASS_OK.match(given) else "default"


def upstream_request_headers(client_headers: Iterable[tuple[str, str]], request_id_: str,
                             authorization: str | None) -> CIMultiDict[str]:
    """Headers for the factory: the client's end-to-end headers, minus anything sidecar-only."""
    items = list(client_headers)
    named = _connection_tokens(dict(items))
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in items:
        lower = key.lower()
        if lower in _NOT_FORWARDED_UP or lower in named or lower.startswith("x-tdn-"):
            continue
        if lower == REQUEST_ID:
            continue
        out.add(key, value)
    out[REQUEST_ID] = request_id_
    # The sidecar relays bytes as they arrive and may append an SSE error event: it must see
    # them uncompressed.
    out["Accept-Encoding"] = "identity"
    if authorization is not None:
        out["Authorization"] = authorization
    return out


def client_response_headers(upstream_headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Headers to relay to the client from the factory's response."""
    items = list(upstream_headers)
    named = _connection_tokens(dict(items))
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in items:
        lower = key.lower()
        if lower in _NOT_RELAYED_DOWN or lower in named or lower.startswith("x-tdn-"):
            continue
        out.add(key, value)
    upstream_id = dict((k.lower(), v) for k, v in items).get(REQUEST_ID)
    if upstream_id and _REQUEST_ID_OK.match(upstream_id):
        out[UPSTREAM_REQUEST_ID] = upstream_id
    return out
