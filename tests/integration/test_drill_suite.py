"""The built-in drills, short (CI) variants, against one local TDN with a real Toxiproxy in front
of every link: each must meet its expectations and leave the network as it found it.

The network is started once for the module; drills run one after another on it, each settling
the network (and restarting a sidecar still holding an earlier drill's ejections) first. Reports
land in test-artifacts/drills/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from backing_services import start_toxiproxy
from drill_support import assert_restored, explain, failed_in_ci

from tdn.chaos.local import start_local
from tdn.chaos.network import DrillNetwork
from tdn.chaos.runner import run_drill
from tdn.chaos.spec import NetworkNeeds, parse_drill
from tdn.chaos.suite import builtin_names, load_builtin

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LOCAL_DRILLS = [n for n in builtin_names() if load_builtin(n).network == NetworkNeeds()]


@pytest.fixture(scope="module")
def toxiproxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_toxiproxy(tmp_path_factory.mktemp("toxiproxy"))
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def network(toxiproxy_url: str,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DrillNetwork]:
    net = await start_local(tmp_path_factory.mktemp("drill-network"), toxiproxy_url)
    try:
        yield net
    finally:
        await net.close()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name", LOCAL_DRILLS)
async def test_built_in_drill_meets_its_expectations(name: str, network: DrillNetwork) -> None:
    result = await run_drill(load_builtin(name), network, short=True)
    await assert_restored(network)
    assert not failed_in_ci(result), explain(result)


INTERRUPTED = """\
name: interrupted
load: {duration_s: 30, rate_rps: 4}
targets:
  victim: {factory: primary}
  backup: {factory: backup}
timeline:
  - {at: 0.5, target: victim, fault: kill}
  - {at: 0.5, target: backup, fault: latency, latency_ms: 500}
  - {at: 0.5, target: backup, fault: sim, mode: error, status: 503}
"""


@pytest.mark.timeout(150)
async def test_an_interrupted_drill_restores_everything(network: DrillNetwork) -> None:
    spec = parse_drill(INTERRUPTED, "interrupted.yaml")
    drill = asyncio.create_task(run_drill(spec, network))

    async def faults_in_force() -> bool:
        proxies = await network.toxiproxy.proxies()
        toxic = any(p.toxics for n, p in proxies.items() if n in network.links())
        dead = any(not network.processes.alive(n) for n in network.processes.names())
        return toxic and dead

    deadline = asyncio.get_running_loop().time() + 60
    while not await faults_in_force():
        if drill.done():
            pytest.fail(f"the drill ended before it was interrupted: {drill.result().error}")
        assert asyncio.get_running_loop().time() < deadline, "the faults never came into force"
        await asyncio.sleep(0.05)
    # Ctrl-C: the runner's task is cancelled in the middle of its faults.
    drill.cancel()
    with pytest.raises(asyncio.CancelledError):
        await drill
    # The runner settled the network before letting the cancellation through.
    await assert_restored(network)
