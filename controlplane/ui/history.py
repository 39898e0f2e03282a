"""A few minutes of telemetry per factory, for the small charts the web UI draws on selection.

Samples are kept in one fixed-size ring of doubles per factory (no per-sample Python objects), so
a thousand factories over five minutes at one sample a second cost about 20 MB at most. At most
one sample per ``resolution_s`` is kept, except that a change of health always gets its own
sample: the moment a factory went down must show on its chart even between two reports.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Any

from tdn.domain import FactoryState, Health

FIELDS = ("t", "load", "running", "waiting", "kv_cache", "ttft_p50_s", "ttft_p99_s",
          "price_in", "price_out", "health")
HEALTH_VALUE = {Health.HEALTHY: 1.0, Health.UNKNOWN: 0.5, Health.UNHEALTHY: 0.0}
_HEALTH_INDEX = FIELDS.index("health")
_WIDTH = len(FIELDS)


def sample(state: FactoryState, now: float) -> tuple[float, ...]:
    spec, load = state.spec, state.load
    return (now, load.running / spec.max_concurrency, float(load.running), float(load.waiting),
            load.kv_cache_usage, load.ttft_p50_s, load.ttft_p99_s, spec.price.input_per_mtok,
            spec.price.output_per_mtok, HEALTH_VALUE[state.health])


class _Ring:
    """``capacity`` samples of ``_WIDTH`` doubles, oldest overwritten first."""

    __slots__ = ("capacity", "data", "size", "start")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = array("d", bytes(8 * capacity * _WIDTH))
        self.start = 0
        self.size = 0

    def _slot(self, index: int) -> int:
        return ((self.start + index) % self.capacity) * _WIDTH

    def last(self) -> tuple[float, ...] | None:
        if not self.size:
            return None
        at = self._slot(self.size - 1)
        return tuple(self.data[at:at + _WIDTH])

    def append(self, values: tuple[float, ...]) -> None:
        if self.size < self.capacity:
            at = self._slot(self.size)
            self.size += 1
        else:
            at = self._slot(0)
            self.start = (self.start + 1) % self.capacity
        self.data[at:at + _WIDTH] = array("d", values)

    def replace_last(self, values: tuple[float, ...]) -> None:
        at = self._slot(self.size - 1)
        self.data[at:at + _WIDTH] = array("d", values)

    def rows(self) -> list[tuple[float, ...]]:
        return [tuple(self.data[self._slot(i):self._slot(i) + _WIDTH]) for i in range(self.size)]


@dataclass(frozen=True, slots=True)
class Series:
    """One factory's recent samples, column by column."""

    factory_id: str
    window_s: float
    columns: dict[str, list[float]]

    def to_json(self) -> dict[str, Any]:
        return {"factory": self.factory_id, "window_s": self.window_s,
                "fields": list(FIELDS), "samples": self.columns}


class TelemetryHistory:
    """Per-factory rings of recent samples."""

    def __init__(self, window_s: float = 300.0, resolution_s: float = 1.0) -> None:
        if window_s <= 0 or resolution_s <= 0:
            raise ValueError("window_s and resolution_s must be positive")
        self.window_s = window_s
        self.resolution_s = resolution_s
        # Slack for the extra samples health changes add within one resolution step.
        self._capacity = math.ceil(window_s / resolution_s * 1.25) + 4
        self._rings: dict[str, _Ring] = {}

    def record(self, state: FactoryState, now: float) -> None:
        values = sample(state, now)
        ring = self._rings.get(state.spec.id)
        if ring is None:
            ring = self._rings[state.spec.id] = _Ring(self._capacity)
        last = ring.last()
        if (last is not None and now - last[0] < self.resolution_s
                and last[_HEALTH_INDEX] == values[_HEALTH_INDEX]):
            # The newest figures win, at the step's first time: moving the time along would
            # let reports just under one step apart replace each other forever.
            ring.replace_last((last[0], *values[1:]))
        else:
            ring.append(values)

    def forget(self, factory_id: str) -> None:
        self._rings.pop(factory_id, None)

    def series(self, factory_id: str, now: float) -> Series | None:
        ring = self._rings.get(factory_id)
        if ring is None:
            return None
        rows = [r for r in ring.rows() if r[0] >= now - self.window_s]
        columns = {name: [round(r[i], 6) for r in rows] for i, name in enumerate(FIELDS)}
        return Series(factory_id, self.window_s, columns)
