"""What a drill watches besides its own requests: which policy version each sidecar runs, what
the control planes say (leader, connected sidecars, NACKs), and the sidecars' usage metering.

:class:`Observer` samples all of it a few times a second into :class:`Sample` values; the
measurements in :mod:`tdn.chaos.measure` read the samples, never the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tdn.chaos.network import DrillNetwork

SAMPLE_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class SidecarSample:
    node_id: str
    healthy: bool
    policy_version: str


@dataclass(frozen=True, slots=True)
class SidecarView:
    """One sidecar as a control plane sees it; ``peer`` changes when it reconnects."""

    node_id: str
    connected: bool
    acked_version: str
    last_nack: str
    peer: str


@dataclass(frozen=True, slots=True)
class ControlPlaneSample:
    name: str
    up: bool
    leader: bool
    sidecars: tuple[SidecarView, ...] = ()


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    sidecars: tuple[SidecarSample, ...]
    controlplanes: tuple[ControlPlaneSample, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with http.get(url) as resp:
            if resp.status != 200:
                return None
            body = await resp.json()
            return body if isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return None


async def controlplane_statuses(http: aiohttp.ClientSession,
                                network: DrillNetwork) -> dict[str, dict[str, Any]]:
    """Each answering replica's /api/status, by component name."""
    out: dict[str, dict[str, Any]] = {}
    for cp in network.controlplanes:
        body = await _get_json(http, f"{cp.http_url}/api/status")
        if body is not None:
            out[cp.name] = body
    return out


async def sidecar_policy(http: aiohttp.ClientSession, admin_url: str) -> dict[str, Any] | None:
    return await _get_json(http, f"{admin_url}/policy")


async def take_sample(http: aiohttp.ClientSession, network: DrillNetwork, t: float) -> Sample:
    sidecars = []
    for sc in network.sidecars:
        body = await _get_json(http, f"{sc.admin_url}/healthz")
        sidecars.append(SidecarSample(sc.node_id, body is not None,
                                      str((body or {}).get("policy_version", ""))))
    cps = []
    statuses = await controlplane_statuses(http, network)
    for cp in network.controlplanes:
        status = statuses.get(cp.name)
        if status is None:
            cps.append(ControlPlaneSample(cp.name, up=False, leader=False))
            continue
        cps.append(ControlPlaneSample(
            cp.name, up=True, leader=bool(status.get("leader")),
            sidecars=tuple(SidecarView(str(v.get("node_id")), bool(v.get("connected")),
                                       str(v.get("acked_version", "")),
                                       str(v.get("last_nack", "")), str(v.get("peer", "")))
                           for v in status.get("sidecars", []))))
    return Sample(t, tuple(sidecars), tuple(cps))


@dataclass
class Observer:
    """Samples the network every ``interval`` seconds while :meth:`run` runs (an owned task)."""

    network: DrillNetwork
    clock: Callable[[], float]
    interval: float = SAMPLE_INTERVAL_S
    samples: list[Sample] = field(default_factory=list)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=max(self.interval * 2, 0.5))
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    self.samples.append(await take_sample(http, self.network, self.clock()))
                await asyncio.sleep(self.interval)


# --- usage metering ---------------------------------------------------------------------------

_PROMPT = re.compile(r"prompt|input")
_COMPLETION = re.compile(r"completion|output|generat")
_KIND_LABELS = ("kind", "direction", "type", "token_type")


@dataclass(frozen=True, slots=True)
class Metered:
    """Tokens a sidecar's /metrics counted, or ``exposed=False`` when it counts none."""

    exposed: bool
    prompt: float = 0.0
    completion: float = 0.0
    families: tuple[str, ...] = ()


def parse_metering(text: str) -> Metered:
    """Sum the sidecar's token counters (``tdn_sidecar_*token*``, counters only), split into
    prompt and completion by metric name or by a kind/direction/type label."""
    prompt = completion = 0.0
    names: list[str] = []
    for family in text_string_to_metric_families(text):
        if family.type != "counter" or not family.name.startswith("tdn_sidecar_"):
            continue
        if "token" not in family.name:
            continue
        names.append(family.name)
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            label = next((sample.labels[k] for k in _KIND_LABELS if k in sample.labels), "")
            what = label or family.name
            if _COMPLETION.search(what):
                completion += sample.value
            elif _PROMPT.search(what):
                prompt += sample.value
    return Metered(bool(names), prompt, completion, tuple(names))


async def scrape_metering(admin_url: str) -> Metered:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3.0)) as http:
        try:
            async with http.get(f"{admin_url}/metrics") as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return Metered(False)
    return parse_metering(text)
