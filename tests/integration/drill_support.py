"""Shared by the drill tests (this module holds no tests): a local TDN network with Toxiproxy in
front of its links, started once per test module, and the checks every drill must leave true —
nothing left broken behind it."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tdn.chaos import report
from tdn.chaos.network import DrillNetwork
from tdn.chaos.runner import DrillResult

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "drills"


async def assert_restored(network: DrillNetwork) -> None:
    """Every proxy enabled and toxic-free, every component running, every simulator healthy."""
    proxies = await network.toxiproxy.proxies()
    ours = {name: p for name, p in proxies.items() if name in network.links()}
    assert ours, "the network has no proxies"
    for name, proxy in ours.items():
        assert proxy.enabled, f"{name} left disabled"
        assert not proxy.toxics, f"{name} left with toxics {proxy.toxics}"
    dead = [n for n in network.processes.names() if not network.processes.alive(n)]
    assert not dead, f"left dead: {dead}"
    async with aiohttp.ClientSession() as http:
        for node in network.factories.values():
            if node.sim_url:
                async with http.get(f"{node.sim_url}/admin/fault") as resp:
                    assert (await resp.json())["mode"] == "none", f"{node.id} left faulty"


# Checks that bound a time. `make test` never asserts a timing (these machines are shared and
# noisy): there a timed check must only show that the thing happened (a backup answered, the
# sidecars reconnected, a new leader took over); its bound is reported, and enforced where a
# drill gates a deploy: `tdn drill run` and `make drill`.
TIMED_CHECKS = ("added p99 ", "failover: ", "sidecars reconnect: ", "control-plane failover: ")
# What a timed check observes when the thing never happened at all.
NEVER_HAPPENED = ("no successful request", "not reconnected", "no surviving leader",
                  "first backup success n/a")


def failed_in_ci(result: DrillResult) -> list[str]:
    """The checks that fail a drill in `make test`: every behavioural check, and for timed
    checks only whether the thing happened."""
    if result.error:
        return [f"could not run: {result.error}"]
    assert result.analysis is not None
    failed = []
    for c in result.analysis.checks:
        if c.name.startswith(TIMED_CHECKS):
            if any(word in c.observed for word in NEVER_HAPPENED):
                failed.append(f"{c.name}: never happened ({c.observed})")
        elif not c.passed:
            failed.append(f"{c.name}: expected {c.expected}, saw {c.observed}")
    return failed


def explain(result: DrillResult) -> str:
    """Why a drill failed, for the assertion message, and where its report is."""
    paths = report.write(result, ARTIFACTS)
    lines = [f"drill {result.spec.name}: {report.verdict(result)} (report: {paths['md']})"]
    if result.error:
        lines.append(f"  could not run: {result.error}")
    if result.analysis is not None:
        lines += [f"  ✗ {c.name}: expected {c.expected}, saw {c.observed}"
                  for c in result.analysis.checks if not c.passed]
    return "\n".join(lines)

