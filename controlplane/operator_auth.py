"""Bearer-token authentication for the Operator service (operator.proto's contract).

With a token configured (``tdn controlplane --operator-token-file``), every Operator call must
carry the metadata ``authorization: Bearer <token>``; anything else is answered UNAUTHENTICATED
before the handler runs. The other services (Telemetry, Discovery, Usage) are not affected: they
are authenticated by mutual TLS, and their clients are machines, not operators.

The token is compared in constant time and is never logged, not even in part.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from tdn.v1 import operator_pb2

log = logging.getLogger(__name__)

OPERATOR_METHOD_PREFIX = (
    "/" + operator_pb2.DESCRIPTOR.services_by_name["Operator"].full_name + "/")


class TokenFileError(ValueError):
    """An operator token file that cannot be used; the message names the file, not the token."""


def read_token_file(path: str | Path) -> str:
    """The token in ``path`` (surrounding whitespace removed); refuse an empty or unreadable
    file so that a typo never silently turns authentication off."""
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TokenFileError(f"cannot read operator token file {path}: {reason}") from None
    if not token:
        raise TokenFileError(f"operator token file {path} is empty")
    if any(c.isspace() for c in token):
        raise TokenFileError(f"operator token in {path} contains whitespace")
    return token


def bearer_credential(value: str | bytes) -> bytes:
    """The credential of an ``Authorization: Bearer <token>`` value; empty for any other."""
    raw = value.encode() if isinstance(value, str) else value
    scheme, _, credential = raw.partition(b" ")
    return credential.strip() if scheme.lower() == b"bearer" else b""


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> bytes:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            credential = bearer_credential(value)
            if credential:
                return credential
    return b""


class OperatorTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses Operator calls without the right bearer token; passes every other call through."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an operator token must not be empty")
        self._token = token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        if not method.startswith(OPERATOR_METHOD_PREFIX):
            return await continuation(handler_call_details)
        # compare_digest takes time independent of where the strings differ.
        if hmac.compare_digest(_bearer(handler_call_details.invocation_metadata), self._token):
            return await continuation(handler_call_details)
        log.warning("refused %s: missing or wrong operator token", method)
        return _refusal()


def _refusal() -> grpc.RpcMethodHandler[Any, Any]:
    async def refuse(request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "the operator API requires metadata 'authorization: Bearer <token>' "
                            "(the tdn CLI reads TDN_OPERATOR_TOKEN)")

    # Every Operator method is unary-unary; the request is not even deserialised.
    return grpc.unary_unary_rpc_method_handler(refuse)
