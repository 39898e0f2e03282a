"""Settings of one simulated factory: identity, served models, timing model, limits, faults.

One frozen value describes a simulator completely, whether it was built from command-line flags,
from a network file's ``factories[].sim`` block or directly by a test; :meth:`SimSettings.check`
refuses nonsense before a port is opened.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from tdn.config import FactoryConfig
from tdn.sim.faults import HEALTHY, Fault
from tdn.sim.timing import TimingModel

DEFAULT_MODEL = "llama-3.1-8b-instruct"


class SettingsError(ValueError):
    """Simulator settings that cannot work."""


@dataclass(frozen=True, slots=True)
class SimSettings:
    """Everything that defines a simulated factory. ``port=0`` picks a free port."""

    id: str = "factory-sim"
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    host: str = "127.0.0.1"
    port: int = 8000
    max_concurrency: int = 16
    prefill_tokens_per_s: float = 8000.0
    itl_ms: float = 15.0
    itl_jitter: float = 0.0
    base_latency_ms: float = 0.0
    kv_capacity_tokens: int = 131072
    max_model_len: int = 8192
    supports_prefill: bool = True
    fault: Fault = field(default=HEALTHY)
    seed: int = 0
    # Natural answer lengths (before max_tokens) are drawn per prompt from this range.
    min_output_tokens: int = 16
    max_output_tokens: int = 64
    embedding_dimensions: int = 64
    # How long a stopping server lets in-flight responses finish before closing connections.
    shutdown_grace_s: float = 0.5

    @property
    def timing(self) -> TimingModel:
        return TimingModel(base_latency_ms=self.base_latency_ms,
                           prefill_tokens_per_s=self.prefill_tokens_per_s,
                           itl_ms=self.itl_ms, itl_jitter=self.itl_jitter)

    def check(self) -> None:
        """Raise :class:`SettingsError` naming the first setting that cannot work."""
        if not self.id:
            raise SettingsError("id must not be empty")
        if not self.models or any(not m for m in self.models):
            raise SettingsError("models must name at least one model, none empty")
        if len(set(self.models)) != len(self.models):
            raise SettingsError(f"models are listed twice: {', '.join(self.models)}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, got {self.port}")
        for name in ("max_concurrency", "kv_capacity_tokens", "max_model_len",
                     "min_output_tokens", "embedding_dimensions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_output_tokens < self.min_output_tokens:
            raise SettingsError("max_output_tokens must not be below min_output_tokens")
        for name in ("prefill_tokens_per_s",):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(f"{name} must be a positive number, got {value}")
        for name in ("itl_ms", "base_latency_ms", "shutdown_grace_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise SettingsError(f"{name} must be a non-negative number, got {value}")
        if not 0.0 <= self.itl_jitter < 1.0:
            raise SettingsError(f"itl_jitter must be in [0, 1), got {self.itl_jitter}")

    @classmethod
    def from_factory(cls, factory: FactoryConfig, **overrides: Any) -> SimSettings:
        """Settings for a factory of a network file; ``overrides`` win over the file.

        Prefill support follows the factory's ``supports_prefill``, so a simulated network
        refuses assistant prefill exactly where its description says it would.
        """
        spec, sim = factory.spec, factory.sim
        base = cls(id=spec.id, models=spec.models, supports_prefill=spec.supports_prefill)
        if sim is not None:
            base = replace(base, port=sim.port, max_concurrency=sim.max_concurrency,
                           prefill_tokens_per_s=sim.prefill_tokens_per_s, itl_ms=sim.itl_ms,
                           base_latency_ms=sim.base_latency_ms)
        return replace(base, **overrides)
