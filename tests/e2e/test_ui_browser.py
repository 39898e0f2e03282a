"""The live topology page in a real browser (Debian's Chromium, driven by Playwright) against a
whole local network: every factory drawn, no console errors, routes and explanations on
selection, telemetry charts, and a killed factory shown as such within two seconds.

The network is the embedded default one, started component by component as `tdn up` would,
except that the control plane asks agents to report twice a second, so that a dead engine is
reported (and drawn) well inside the two seconds. Screenshots land in test-artifacts/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, Proc, find_service_binary, free_port, missing, wait_until

from tdn.config import load_network
from tdn.up import plan_components

pytestmark = pytest.mark.e2e

REPORT_INTERVAL = "0.5"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 960}
MODEL = "llama-3.1-8b-instruct"


@dataclass
class Network:
    http_url: str
    procs: dict[str, Proc]
    factories: list[str]
    logs: Path
    problems: list[str] = field(default_factory=list)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.http_url}{path}", timeout=5) as resp:
            return json.loads(resp.read())


def _write_network(path: Path) -> dict[str, Any]:
    net: dict[str, Any] = yaml.safe_load((REPO / "tdn" / "defaults" / "up.yaml").read_text())
    net["controlplane"] = {"grpc": f"127.0.0.1:{free_port()}",
                           "http": f"127.0.0.1:{free_port()}"}
    net["sidecar"]["listen"] = f"127.0.0.1:{free_port()}"
    net["sidecar"]["admin"] = f"127.0.0.1:{free_port()}"
    for factory in net["factories"]:
        factory["sim"]["port"] = free_port()
    path.write_text(yaml.safe_dump(net, sort_keys=False))
    return net


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("ui")
    net = _write_network(tmp / "network.yaml")
    config = load_network(tmp / "network.yaml")
    logs = tmp / "logs"
    logs.mkdir()
    procs: dict[str, Proc] = {}
    try:
        for comp in plan_components(config, str(tmp / "network.yaml"), tmp / "state"):
            args = list(comp.args)
            if comp.kind == "controlplane":
                args += ["--report-interval", REPORT_INTERVAL]
            procs[comp.name] = Proc.tdn(args, logs / f"{comp.name.replace('/', '-')}.log")
        found = Network(http_url=f"http://{net['controlplane']['http']}", procs=procs,
                        factories=[f["id"] for f in net["factories"]], logs=logs)

        def ready() -> bool:
            dead = [n for n, p in procs.items() if not p.alive()]
            assert not dead, f"exited: {dead}: {procs[dead[0]].log()}"
            status = found.get("/api/status")
            return bool(status["factories_healthy"] == len(found.factories)
                        and status["plan"]["version"] > 0
                        and any(s["acked_version"] for s in status["sidecars"]))

        wait_until(ready, timeout=60, interval=0.1, what="every factory healthy and a plan")
        yield found
    finally:
        for proc in reversed(procs.values()):
            proc.stop(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = find_service_binary(["chromium"], "TDN_CHROMIUM_BIN")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "playwright is not installed (the dev extra has it)"
        missing(message)
    with sync_playwright() as p:
        # Playwright gives every launch a new, empty profile (its own --user-data-dir).
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, network: Network) -> Iterator[Any]:
    page = browser.new_page(viewport=VIEWPORT)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in {"error", "warning"} else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(network.http_url + "/")
    page.wait_for_function("window.tdnUi && window.tdnUi.snapshots > 0", timeout=10_000)
    network.problems = problems
    yield page
    page.close()


def test_the_page_loads_without_console_errors_and_draws_every_factory(
        page: Any, network: Network, artifacts_dir: Path) -> None:
    page.wait_for_function(f"tdnUi.factoryCount() === {len(network.factories)}")
    for factory in network.factories:
        assert page.evaluate("id => tdnUi.health(id)", factory) == "healthy", factory
    tiers = page.eval_on_selector_all("g.factory", "els => els.map(e => e.dataset.tier)")
    assert sorted(set(tiers)) == ["center", "edge", "on-site"]
    zones = page.eval_on_selector_all("g.zone", "els => els.map(e => e.dataset.zone)")
    assert sorted(zones) == ["eu", "on-site:fra-office", "us"]
    assert page.locator("g.site").count() == 2
    page.wait_for_selector("g.site[data-id='fra-office'] g.sidecar.synced")
    assert page.locator("g.edge.primary").count() >= 1
    page.wait_for_function("document.querySelectorAll('ol.events li').length > 0")
    page.screenshot(path=str(artifacts_dir / "ui-topology.png"))
    assert network.problems == []


def test_hovering_a_factory_shows_its_load_price_and_carbon(page: Any) -> None:
    page.hover("g.factory[data-id='center-se-1']")
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    text = tooltip.inner_text()
    assert "center-se-1" in text and "load" in text
    assert "$0.10 in / $0.40 out" in text and "35 g/kWh" in text


def test_selecting_a_site_and_model_shows_its_route_and_the_explanation(
        page: Any, network: Network, artifacts_dir: Path) -> None:
    page.click("g.site[data-id='fra-office']")
    page.click(f".models button[data-model='{MODEL}']")
    page.wait_for_selector(".explain table tbody tr")
    explained = network.get(f"/api/explain?site=fra-office&model={MODEL}")
    rows = page.eval_on_selector_all(
        ".explain tbody tr",
        "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])")
    assert sorted(map(tuple, rows)) == sorted(
        (f["factory_id"], f["role"]) for f in explained["factories"])
    primaries = {f["factory_id"] for f in explained["factories"] if f["role"] == "primary"}
    drawn = set(page.eval_on_selector_all(
        "g.edge.primary", "els => els.map(e => e.dataset.factory)"))
    assert drawn == primaries
    page.screenshot(path=str(artifacts_dir / "ui-explain.png"))
    assert network.problems == []


def test_selecting_a_factory_shows_charts_of_its_recent_telemetry(
        page: Any, network: Network) -> None:
    page.click("g.factory[data-id='center-se-1']")
    page.wait_for_selector(".panel .charts figure >> nth=3")
    captions = page.eval_on_selector_all(".charts figcaption", "els => els.map(e => e.textContent)")
    assert any(c.startswith("health") for c in captions)
    assert any(c.startswith("time to first token") for c in captions)
    assert page.locator(".charts polyline").count() >= 4
    assert network.problems == []


def test_a_killed_factory_is_shown_unhealthy_within_two_seconds(
        page: Any, network: Network, artifacts_dir: Path) -> None:
    victim = "edge-fra-2"
    page.wait_for_function(f"tdnUi.health('{victim}') === 'healthy'")
    network.procs[f"sim/{victim}"].kill()
    killed = time.monotonic()
    # The bound: the page, not just the API, shows the dead factory within 2 s.
    page.wait_for_function(f"tdnUi.health('{victim}') === 'unhealthy'", timeout=2_000)
    assert time.monotonic() - killed < 2.0
    page.wait_for_selector(f"ol.events li[data-kind='factory-down'] >> text={victim}")
    page.screenshot(path=str(artifacts_dir / "ui-factory-down.png"))
    assert network.problems == []


@pytest.mark.parametrize("fmt", ["svg", "png", "json", "dot"])
def test_topology_export_writes_a_static_picture(network: Network, tmp_path: Path,
                                                 fmt: str) -> None:
    out = tmp_path / f"topology.{fmt}"
    done = subprocess.run([sys.executable, "-m", "tdn.cli", "topology", "export",
                           "--format", fmt, "-o", str(out), "--http", network.http_url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    data = out.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    elif fmt == "svg":
        assert data.startswith(b"<svg") and all(f.encode() in data for f in network.factories)
    elif fmt == "json":
        nodes = {n["id"] for n in json.loads(data)["nodes"]}
        assert {f"factory:{f}" for f in network.factories} <= nodes
    else:
        assert data.startswith(b"digraph") and all(f.encode() in data for f in network.factories)
