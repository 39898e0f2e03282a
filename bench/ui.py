"""The web UI at 1,000 factories: time to first render, and how soon a change shows.

A real control plane (in a thread of this process, embedded store in a temporary folder) is fed
a synthetic network: 1,000 factories in ten regions and two compliance zones, ten sites, two
models, telemetry applied straight to the registry, and a cheap deterministic solver (the
routing solver has its own benchmark). Debian's Chromium, driven by Playwright, opens the page:

* first render: from navigation start to the page's ``tdn:first-render`` mark (page, script,
  event stream, the 1,000-factory snapshot parsed and drawn), and the snapshot's own
  parse-and-draw time (the ``tdn:snapshot`` measure);
* update: a factory's health is changed in the registry; the time until the page has drawn it
  (the control plane's 4 Hz tick is part of it: 0 to 250 ms), and the patch's parse-and-draw;
* the server side: one live-view tick when every factory's figures changed, and the size of
  the snapshot a page receives.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tdn.config import NetworkConfig
from tdn.controlplane.server import ControlPlane, ControlPlaneSettings
from tdn.controlplane.ui.live import LiveView, sse_frame
from tdn.domain import (
    Demand,
    Energy,
    FactorySpec,
    FactoryState,
    Plan,
    Price,
    Route,
    Site,
    Tier,
    WeightedFactory,
)
from tdn.v1 import telemetry_pb2
from tdn.wire import energy_to_pb, price_to_pb, spec_to_identity

NAME = "ui"
TITLE = "Web UI: render and update at 1,000 factories"

FACTORIES = 1000
REGIONS = 10
MODELS = ("llama-3.1-8b-instruct", "llama-3.1-70b-instruct")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
T = TypeVar("T")


def _zone(region: int) -> str:
    return "eu" if region < 6 else "us"


def synthetic_network(n: int = FACTORIES) -> tuple[list[FactorySpec], list[Site], list[Demand]]:
    sites = [Site(id=f"site-{r}", region=f"region-{r}", compliance_zone=_zone(r),
                  rtt_ms=tuple((f"region-{o}", 4.0 + 9.0 * abs(o - r)) for o in range(REGIONS)))
             for r in range(REGIONS)]
    specs: list[FactorySpec] = []
    for i in range(n):
        r = i % REGIONS
        kind = i // REGIONS % 10
        tier = Tier.CENTER if kind == 0 else Tier.ON_SITE if kind >= 8 else Tier.EDGE
        site = f"site-{r}" if tier is Tier.ON_SITE else ""
        specs.append(FactorySpec(
            id=f"{tier.value}-{r}-{i:04d}", tier=tier, region=f"region-{r}",
            compliance_zone=f"on-site:{site}" if site else _zone(r),
            endpoint=f"http://127.0.0.1:9/{i}/v1", models=MODELS,
            price=Price(0.05 + (i % 17) / 100, 0.2 + (i % 13) / 20),
            energy=Energy(watts=1400, tokens_per_joule=1.5, grid_gco2_per_kwh=35 + (i % 9) * 40,
                          electricity_price_per_kwh=0.1),
            max_concurrency=16 if tier is not Tier.CENTER else 64, site=site,
            failure_domain=f"rack-{i % 4}"))
    demands = [Demand(site=s.id, model=m, rate_rps=2.0) for s in sites for m in MODELS]
    return specs, sites, demands


def synthetic_solver(factories: Sequence[FactoryState], sites: Sequence[Site],
                     demands: Sequence[Demand], *, version: int = 1, **_: Any) -> Plan:
    """Three cheapest routable factories the site may use as primaries, two more as backups."""
    by_site = {s.id: s for s in sites}
    routes: list[tuple[str, Route]] = []
    for d in demands:
        zones = by_site[d.site].zones()
        usable = sorted((f for f in factories if f.routable and d.model in f.spec.models
                         and f.spec.compliance_zone in zones),
                        key=lambda f: (f.spec.price.output_per_mtok, f.spec.id))
        primary = tuple(WeightedFactory(f.spec.id, w) for f, w in zip(usable, (0.5, 0.3, 0.2),
                                                                       strict=False))
        total = sum(w.weight for w in primary) or 1.0
        primary = tuple(WeightedFactory(w.factory_id, w.weight / total) for w in primary)
        backups = tuple((WeightedFactory(f.spec.id, 1.0),) for f in usable[3:5])
        routes.append((d.site, Route(model=d.model, traffic_class=d.traffic_class,
                                     primary=primary, backups=backups)))
    return Plan(version=version, routes=tuple(routes), status="synthetic")


def report(spec: FactorySpec, *, running: int = 2, reachable: bool = True,
           seq: int = 1) -> telemetry_pb2.TelemetryReport:
    return telemetry_pb2.TelemetryReport(
        identity=spec_to_identity(spec),
        capacity=telemetry_pb2.Capacity(max_concurrency=spec.max_concurrency,
                                        max_output_tokens_per_second=2000.0),
        load=telemetry_pb2.Load(running=running, waiting=0, kv_cache_usage=0.2),
        latency=telemetry_pb2.Latency(ttft_p50_seconds=0.08, ttft_p99_seconds=0.3,
                                      itl_p50_seconds=0.02, itl_p99_seconds=0.05),
        price=price_to_pb(spec.price), energy=energy_to_pb(spec.energy),
        engine_reachable=reachable, seq=seq)


class SyntheticControlPlane:
    """A control plane serving the synthetic network from a thread of its own."""

    def __init__(self, state_dir: Path, n: int = FACTORIES) -> None:
        self.specs, sites, demands = synthetic_network(n)
        network = NetworkConfig(filename="synthetic", sites=tuple(sites), demand=tuple(demands))
        self.settings = ControlPlaneSettings(
            network=network, grpc_address="127.0.0.1:0", http_address="127.0.0.1:0",
            state_dir=str(state_dir), ttl=3600.0, solve_interval=3600.0, solve_quiet=0.02,
            solve_max_delay=0.2, warmup=0.0, replica_id="bench-ui", shutdown_grace=0.2)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-ui-cp",
                                        daemon=True)
        self.cp = ControlPlane(self.settings, solver=synthetic_solver)
        self._seq = 1

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def __enter__(self) -> SyntheticControlPlane:
        self._thread.start()
        self.run(self.cp.start())
        self.apply_all()
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.cp.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return str(self.cp.http_url)

    def apply_all(self, running: int = 2) -> None:
        self._seq += 1

        def apply() -> None:
            for i, spec in enumerate(self.specs):
                self.cp.registry.apply_report(report(spec, running=(running + i) % 9,
                                                     seq=self._seq))

        self.call(apply)

    def set_reachable(self, spec: FactorySpec, reachable: bool) -> float:
        """Change one factory's health; return the wall-clock time it happened."""
        self._seq += 1

        def apply() -> float:
            self.cp.registry.apply_report(report(spec, reachable=reachable, seq=self._seq))
            return time.time()

        return self.call(apply)

    def live_view(self) -> LiveView:
        cp = self.cp
        return LiveView(registry=cp.registry, solve_loop=cp.solve_loop, cache=cp.cache,
                        status=cp.status, sites=self.settings.network.sites)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _server_side(server: SyntheticControlPlane, rounds: int) -> tuple[float, float, int]:
    """(median tick ms with every factory changed, median idle tick ms, snapshot bytes)."""
    live = server.live_view()
    server.call(live.tick)
    busy: list[float] = []
    idle: list[float] = []
    for r in range(rounds):
        server.apply_all(running=r + 3)
        started = time.perf_counter()
        server.call(live.tick)
        busy.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        server.call(live.tick)
        idle.append((time.perf_counter() - started) * 1000)
    size = len(server.call(lambda: sse_frame("snapshot", live.snapshot(), live.seq)))
    return _median(busy), _median(idle), size


def run(quick: bool) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium not found (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    loads = 2 if quick else 5
    rounds = 4 if quick else 16
    first: list[float] = []
    snapshot_ms: list[float] = []
    latency: list[float] = []
    pushed: list[float] = []
    patch_ms: list[float] = []
    # Changes land at random moments of the 250 ms tick, as real ones do (changing right after
    # the page drew the previous one would always wait most of a tick).
    jitter = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="tdn-bench-ui-") as tmp, \
            SyntheticControlPlane(Path(tmp) / "state") as server:
        server.run(_wait_for_plan(server))
        tick_busy, tick_idle, snapshot_bytes = _server_side(server, rounds)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            for _ in range(loads):
                page = browser.new_page(viewport={"width": 1600, "height": 960})
                page.goto(server.url + "/")
                page.wait_for_function(f"window.tdnUi && tdnUi.factoryCount() === {FACTORIES}",
                                       timeout=60_000)
                first.append(page.evaluate(
                    "performance.getEntriesByName('tdn:first-render')[0].startTime"))
                snapshot_ms.append(page.evaluate(
                    "performance.getEntriesByName('tdn:snapshot')[0].duration"))
                page.close()
            page = browser.new_page(viewport={"width": 1600, "height": 960})
            page.goto(server.url + "/")
            page.wait_for_function(f"window.tdnUi && tdnUi.factoryCount() === {FACTORIES}",
                                   timeout=60_000)
            for r in range(rounds):
                spec = server.specs[(r * 37) % len(server.specs)]
                for reachable, health in ((False, "unhealthy"), (True, "healthy")):
                    time.sleep(jitter.uniform(0.0, 0.25))
                    changed = server.set_reachable(spec, reachable)
                    page.wait_for_function(f"tdnUi.health('{spec.id}') === '{health}'",
                                           timeout=10_000)
                    shown = page.evaluate("tdnUi.rendered")
                    latency.append((shown["at"] / 1000 - changed) * 1000)
                    pushed.append(shown["at"] - shown["serverAt"] * 1000)
                    patch_ms.append(shown["renderMs"])
            browser.close()
    return "\n".join([
        f"{FACTORIES} factories in {REGIONS} regions, {REGIONS} sites, {len(MODELS)} models; "
        f"{loads} page loads, {2 * rounds} health changes (median figures).",
        "",
        "| measure | median |",
        "|---|---|",
        f"| first render: navigation start to the whole network drawn | {_median(first):.0f} ms |",
        f"| of which the snapshot's parse and draw | {_median(snapshot_ms):.0f} ms |",
        f"| update: health change in the registry to drawn on the page | "
        f"{_median(latency):.0f} ms |",
        f"| of which from the control plane's tick to drawn (push, parse, draw) | "
        f"{_median(pushed):.0f} ms |",
        f"| of which the patch's parse and draw | {_median(patch_ms):.1f} ms |",
        f"| server: one live-view tick, every factory's figures changed | {tick_busy:.1f} ms |",
        f"| server: one live-view tick, nothing changed | {tick_idle:.1f} ms |",
        f"| snapshot sent to a new page | {snapshot_bytes / 1024:.0f} KiB |",
        "",
        "The update figure includes the wait for the control plane's next tick (every 250 ms, "
        "so 125 ms on average); changes are made at random moments of it.",
    ])


async def _wait_for_plan(server: SyntheticControlPlane) -> None:
    loop = server.cp.solve_loop
    async with asyncio.timeout(60):
        while loop.plan is None or not all(r.primary for _, r in loop.plan.routes):
            loop.notify()
            await asyncio.sleep(0.05)
