"""Fault modes the simulator can inject, how they are written down, and which request gets one.

A fault is a frozen value (:class:`Fault`) parsed either from the command line
(``--fault error:status=503,retry_after=2``) or from the admin endpoint's JSON
(``{"mode": "error", "status": 503}``); both go through the same validation, so a typo in a drill
is refused with a message rather than silently ignored. :class:`FaultSwitch` holds the fault in
force and decides, deterministically from the seed, which requests it applies to.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class FaultMode(StrEnum):
    """How a faulty factory misbehaves."""

    NONE = "none"
    ERROR = "error"  # answer with an HTTP error (status, optional Retry-After)
    HANG = "hang"  # accept the request, never answer
    STALL_FIRST_TOKEN = "stall_first_token"  # wait `seconds` before the first response byte
    STALL_MID_STREAM = "stall_mid_stream"  # go idle for `seconds` after `after_tokens` tokens
    CUT_STREAM = "cut_stream"  # close the connection after `after_tokens` tokens
    SLOW_TOKENS = "slow_tokens"  # inter-token latency becomes `itl_ms`
    MALFORMED_CHUNK = "malformed_chunk"  # one non-JSON `data:` line after `after_tokens` tokens


class FaultError(ValueError):
    """A fault description the simulator refuses."""


# Parameters each mode accepts, besides `mode` and `probability`.
_MODE_PARAMS: dict[FaultMode, frozenset[str]] = {
    FaultMode.NONE: frozenset(),
    FaultMode.ERROR: frozenset({"status", "retry_after"}),
    FaultMode.HANG: frozenset(),
    FaultMode.STALL_FIRST_TOKEN: frozenset({"seconds"}),
    FaultMode.STALL_MID_STREAM: frozenset({"after_tokens", "seconds"}),
    FaultMode.CUT_STREAM: frozenset({"after_tokens"}),
    FaultMode.SLOW_TOKENS: frozenset({"itl_ms"}),
    FaultMode.MALFORMED_CHUNK: frozenset({"after_tokens", "then"}),
}

MALFORMED_THEN = ("continue", "stop")


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault mode with its parameters; fields a mode does not use keep their defaults."""

    mode: FaultMode = FaultMode.NONE
    status: int = 503
    retry_after: float | None = None
    seconds: float = 5.0
    after_tokens: int = 3
    itl_ms: float = 200.0
    then: str = "continue"
    probability: float = 1.0

    def to_json(self) -> dict[str, object]:
        """The mode and the parameters it uses, as the admin endpoint shows them."""
        out: dict[str, object] = {"mode": self.mode.value}
        for name in sorted(_MODE_PARAMS[self.mode]):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.mode is not FaultMode.NONE:
            out["probability"] = self.probability
        return out


HEALTHY = Fault()


def _number(name: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise FaultError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _integer(name: str, value: object) -> int:
    number = _number(name, value)
    if not number.is_integer():
        raise FaultError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def fault_from_mapping(raw: Mapping[str, object]) -> Fault:
    """Build a :class:`Fault` from ``{"mode": ..., params...}``; raise FaultError when invalid."""
    mode_name = raw.get("mode")
    if not isinstance(mode_name, str):
        raise FaultError(f"'mode' is required and must be one of {', '.join(FaultMode)}")
    try:
        mode = FaultMode(mode_name)
    except ValueError:
        raise FaultError(
            f"unknown fault mode {mode_name!r} (known: {', '.join(FaultMode)})"
        ) from None
    allowed = _MODE_PARAMS[mode] | {"probability"}
    unknown = sorted(set(raw) - allowed - {"mode"})
    if unknown:
        accepted = ", ".join(sorted(allowed)) or "none"
        raise FaultError(f"mode {mode.value} does not take {', '.join(unknown)} "
                         f"(it takes: {accepted})")
    d = HEALTHY
    probability = _number("probability", raw.get("probability", d.probability))
    if not 0.0 <= probability <= 1.0:
        raise FaultError(f"probability must be between 0 and 1, got {probability}")
    status = _integer("status", raw.get("status", d.status))
    if not 400 <= status <= 599:
        raise FaultError(f"status must be an HTTP error status (400-599), got {status}")
    retry_after: float | None = None
    if raw.get("retry_after") is not None:
        retry_after = _number("retry_after", raw["retry_after"])
    seconds = _number("seconds", raw.get("seconds", d.seconds))
    after_tokens = _integer("after_tokens", raw.get("after_tokens", d.after_tokens))
    itl_ms = _number("itl_ms", raw.get("itl_ms", d.itl_ms))
    for name, value in (("retry_after", retry_after or 0.0), ("seconds", seconds),
                        ("after_tokens", after_tokens), ("itl_ms", itl_ms)):
        if value < 0:
            raise FaultError(f"{name} must not be negative, got {value}")
    then = raw.get("then", d.then)
    if then not in MALFORMED_THEN:
        raise FaultError(f"then must be one of {', '.join(MALFORMED_THEN)}, got {then!r}")
    return Fault(mode=mode, status=status, retry_after=retry_after, seconds=seconds,
                 after_tokens=after_tokens, itl_ms=itl_ms, then=str(then),
                 probability=probability)


def parse_fault_spec(spec: str) -> Fault:
    """Parse the command-line form ``MODE[:key=value,...]``."""
    mode, _, params = spec.strip().partition(":")
    raw: dict[str, object] = {"mode": mode}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise FaultError(f"fault parameter {item!r} is not key=value")
        raw[key.strip()] = value.strip()
    return fault_from_mapping(raw)


class FaultSwitch:
    """The fault in force, and the seeded draw that decides which requests it hits.

    With ``probability`` below 1 the same seed and the same request order give the same
    faulted requests, so a drill can be replayed.
    """

    def __init__(self, fault: Fault = HEALTHY, seed: int = 0) -> None:
        self._fault = fault
        self._rng = random.Random(seed)
        self.injected: dict[str, int] = {}

    @property
    def current(self) -> Fault:
        return self._fault

    def set(self, fault: Fault) -> None:
        self._fault = fault

    def draw(self) -> Fault:
        """The fault for the next request: the one in force, or HEALTHY when it is not drawn."""
        fault = self._fault
        if fault.mode is FaultMode.NONE:
            return HEALTHY
        if fault.probability < 1.0 and self._rng.random() >= fault.probability:
            return HEALTHY
        self.injected[fault.mode.value] = self.injected.get(fault.mode.value, 0) + 1
        return fault
