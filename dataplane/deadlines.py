"""First-byte deadlines: how long one attempt may wait for a factory's first answer byte before the
sidecar abandons it for the next candidate.

Where a deadline comes from, first match wins:

1. the route's ``first_byte_timeout_seconds``;
2. the site's ``DataPlaneSettings.first_byte_timeout_seconds``;
3. derived from the factory's observed TTFT p99: ``3 x p99``, bounded to [0.5 s, 30 s]. Three
   times the p99 leaves room for a long prompt's prefill without waiting on a factory that has
   stopped answering; the floor keeps a very fast factory from being abandoned over a hiccup,
   the cap is where waiting stops being better than a backup. A factory with no TTFT
   observation gets the cap: the sidecar does not know how slow it normally is.

A derived deadline exists to move a request to a better candidate, so the **last candidate** a
request has (the only factory residency allows it, or the last backup after the others failed)
gets the cap instead (:func:`last_resort_deadline`): abandoning it early buys no failover, only
an error for a request that was merely queued (in the routing benchmark, a burst at an office's
on-site factory turned 54 requests into errors that way). A deadline the operator set (route or
site) is kept as set, and a client's header still lowers it.

A client may lower its own deadline with ``x-tdn-first-byte-timeout-ms`` (never raise it above the
policy's). For a stream, "first byte" means the first event that carries output (see
:func:`tdn.dataplane.sse.is_substantive`), since engines send an empty role chunk before prefill.
A non-streamed answer has no early byte at all: its first byte is the whole answer, so its
deadline adds a generation allowance of 50 ms per requested ``max_tokens`` (60 s when the request
sets no limit). Clients that want fast failover on non-streamed requests set ``max_tokens`` or the
header.

The **stream idle timeout** (how long a stream that has started may stay silent before it is
broken) lives here too, because it comes from the same observation. The site's
``stream_idle_timeout_seconds`` when set; else ``3 x ttft_p99`` of the factory bounded to
[2 s, 10 s], and 10 s when the p99 is unknown. Why TTFT and not the inter-token latency: the
policy carries only the TTFT p99, and a healthy engine's longest silence mid-answer is not one
token's time but a preemption (the sequence goes back to the queue and is prefilled again),
which takes about as long as a first token does. The floor keeps a fast factory from losing
answers over a hiccup (2 s is dozens of tokens); the cap is about a client's patience: a stream
caught by a blackhole must end with an error the client sees before the client gives up on it,
which the old 30 s default never did. The idle timeout governs only a stream that has
committed; before that the first-byte deadline does (see :mod:`exchange`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from tdn.domain import FactoryEndpoint, Route

from . import api_errors
from .effective_settings import EffectiveSettings

TTFT_MULTIPLIER = 3.0
MIN_DERIVED_S = 0.5
MAX_DERIVED_S = 30.0
# A non-streamed answer is assumed to come at 20 tokens/s or better.
ALLOWANCE_PER_TOKEN_S = 0.05
ALLOWANCE_WITHOUT_LIMIT_S = 60.0
CLIENT_HEADER = "x-tdn-first-byte-timeout-ms"
# Below this a deadline cannot be met by any factory; a client asking for less gets a 400.
MIN_CLIENT_MS = 1
MIN_IDLE_S = 2.0
MAX_IDLE_S = 10.0


def derived_from_ttft(ttft_p99_s: float) -> float:
    """The deadline for a factory whose TTFT p99 is ``ttft_p99_s`` (0: unknown)."""
    if not math.isfinite(ttft_p99_s) or ttft_p99_s <= 0:
        return MAX_DERIVED_S
    return min(MAX_DERIVED_S, max(MIN_DERIVED_S, TTFT_MULTIPLIER * ttft_p99_s))


def idle_from_ttft(ttft_p99_s: float) -> float:
    """The stream idle timeout for a factory whose TTFT p99 is ``ttft_p99_s`` (0: unknown)."""
    if not math.isfinite(ttft_p99_s) or ttft_p99_s <= 0:
        return MAX_IDLE_S
    return min(MAX_IDLE_S, max(MIN_IDLE_S, TTFT_MULTIPLIER * ttft_p99_s))


def stream_idle_timeout(settings: EffectiveSettings, factory: FactoryEndpoint) -> float:
    """The policy's idle timeout for streams from ``factory``."""
    if settings.stream_idle_timeout_s > 0:
        return settings.stream_idle_timeout_s
    return idle_from_ttft(factory.ttft_p99_s)


def first_byte_deadline(route: Route, settings: EffectiveSettings,
                        factory: FactoryEndpoint) -> float:
    """The policy's first-byte deadline for sending ``route`` traffic to ``factory``."""
    if route.first_byte_timeout_s > 0:
        return route.first_byte_timeout_s
    if settings.first_byte_timeout_s > 0:
        return settings.first_byte_timeout_s
    return derived_from_ttft(factory.ttft_p99_s)


def last_resort_deadline(route: Route, settings: EffectiveSettings,
                         factory: FactoryEndpoint) -> float:
    """The policy's first-byte deadline at ``factory`` when no candidate is left after it:
    the operator's when set, else the derived deadline's cap (see the module's docstring)."""
    if route.first_byte_timeout_s > 0 or settings.first_byte_timeout_s > 0:
        return first_byte_deadline(route, settings, factory)
    return MAX_DERIVED_S


def client_limit_s(headers: Mapping[str, str]) -> float | None:
    """The client's own cap from ``x-tdn-first-byte-timeout-ms``; None when absent.

    Raises :class:`api_errors.ApiError` (400) for a value that is not a positive whole number.
    """
    return parse_client_limit(headers.get(CLIENT_HEADER))


def parse_client_limit(raw: str | None) -> float | None:
    """:func:`client_limit_s` for the header's value (None: not sent)."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or int(text) < MIN_CLIENT_MS:
        raise api_errors.ApiError(
            400, f"Header {CLIENT_HEADER} must be a whole number of milliseconds, at least "
                 f"{MIN_CLIENT_MS}; got {raw[:32]!r}.", code="invalid_header")
    return int(text) / 1000.0


def generation_allowance(stream: bool, max_tokens: int | None) -> float:
    """Extra time a non-streamed generation gets, since its first byte is its last."""
    if stream:
        return 0.0
    if max_tokens is None:
        return ALLOWANCE_WITHOUT_LIMIT_S
    return max_tokens * ALLOWANCE_PER_TOKEN_S


def attempt_deadline(policy_deadline: float, allowance: float, client_limit: float | None) -> float:
    """One attempt's deadline: the policy's plus the allowance, lowered by the client's."""
    deadline = policy_deadline + allowance
    return deadline if client_limit is None else min(deadline, client_limit)
