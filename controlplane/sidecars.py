"""Which sidecars are connected, which policy version each runs, and how far each lags behind.

Discovery streams report every send, ACK, NACK and disconnect here, keyed by node id; operators
read it through GetStatus and ``/api/status``. This is what makes convergence measurable: the
control plane knows, per sidecar, the version it acknowledged and how long the newest version has
been waiting for an answer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

# A disconnected sidecar stays visible this long (it is usually just reconnecting), then is
# forgotten so that churned node ids do not accumulate forever.
FORGET_AFTER_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class SidecarView:
    """One sidecar as operators see it."""

    node_id: str
    site: str
    build_version: str
    peer: str
    connected: bool
    acked_version: str
    last_nack: str
    # Seconds since the newest version was sent and not yet acknowledged; 0 when up to date.
    lag_seconds: float


@dataclass(slots=True)
class _Record:
    node_id: str
    site: str
    build_version: str
    peer: str
    stream: int
    connected: bool = True
    acked_version: str = ""
    last_nack: str = ""
    pending_version: str = ""
    pending_since: float | None = None
    disconnected_at: float = 0.0


class SidecarTracker:
    """Per-node discovery state, updated by the Discovery servicer."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._records: dict[str, _Record] = {}
        self._stream_ids = itertools.count(1)

    def connect(self, node_id: str, site: str, *, running_version: str, build_version: str = "",
                peer: str = "") -> int:
        """Record a new stream; return its id (a reconnect supersedes the older stream)."""
        now = self._clock()
        self._forget_old(now)
        stream = next(self._stream_ids)
        self._records[node_id] = _Record(node_id=node_id, site=site, build_version=build_version,
                                         peer=peer, stream=stream, acked_version=running_version)
        return stream

    def _current(self, node_id: str, stream: int) -> _Record | None:
        record = self._records.get(node_id)
        # A superseded stream (the node reconnected) must not overwrite the newer one's state.
        return record if record is not None and record.stream == stream else None

    def sent(self, node_id: str, stream: int, version: str) -> None:
        record = self._current(node_id, stream)
        if record is not None and version != record.pending_version:
            record.pending_version = version
            record.pending_since = self._clock()

    def acked(self, node_id: str, stream: int, version: str) -> None:
        record = self._current(node_id, stream)
        if record is None:
            return
        if version != record.acked_version:
            record.last_nack = ""  # the trouble it described is behind it
        record.acked_version = version
        if version == record.pending_version:
            record.pending_version, record.pending_since = "", None

    def nacked(self, node_id: str, stream: int, *, refused: str, running: str,
               message: str) -> None:
        record = self._current(node_id, stream)
        if record is None:
            return
        record.acked_version = running
        record.last_nack = f"version {refused} refused: {message}"

    def disconnect(self, node_id: str, stream: int) -> None:
        record = self._current(node_id, stream)
        if record is not None:
            record.connected = False
            record.disconnected_at = self._clock()

    def _forget_old(self, now: float) -> None:
        stale = [n for n, r in self._records.items()
                 if not r.connected and now - r.disconnected_at > FORGET_AFTER_SECONDS]
        for node_id in stale:
            del self._records[node_id]

    def views(self) -> tuple[SidecarView, ...]:
        now = self._clock()
        return tuple(
            SidecarView(
                node_id=r.node_id, site=r.site, build_version=r.build_version, peer=r.peer,
                connected=r.connected, acked_version=r.acked_version, last_nack=r.last_nack,
                lag_seconds=0.0 if r.pending_since is None else max(now - r.pending_since, 0.0),
            )
            for r in sorted(self._records.values(), key=lambda r: r.node_id)
        )
