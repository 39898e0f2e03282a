"""The leader-kill drill, short (CI) variant: two control-plane replicas on a real etcd (reached
through Toxiproxy), the leader SIGKILLed under load; sidecars keep serving, move to the
survivor, and the survivor takes the lead."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from backing_services import etcd_binary, start_toxiproxy
from drill_support import assert_restored, explain, failed_in_ci

from tdn.chaos.local import start_local
from tdn.chaos.network import DrillNetwork
from tdn.chaos.runner import run_drill
from tdn.chaos.suite import load_builtin

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def toxiproxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    etcd_binary()  # skips (or fails under CI) before anything starts when etcd is missing
    server = start_toxiproxy(tmp_path_factory.mktemp("toxiproxy"))
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicated(toxiproxy_url: str,
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DrillNetwork]:
    needs = load_builtin("leader-kill").network
    assert needs.controlplanes == 2 and needs.store == "etcd"
    net = await start_local(tmp_path_factory.mktemp("drill-ha"), toxiproxy_url, needs=needs)
    try:
        yield net
    finally:
        await net.close()


@pytest.mark.timeout(150)
async def test_leader_kill_drill_meets_its_expectations(replicated: DrillNetwork) -> None:
    assert all(cp.etcd_link for cp in replicated.controlplanes)
    result = await run_drill(load_builtin("leader-kill"), replicated, short=True)
    await assert_restored(replicated)
    assert not failed_in_ci(result), explain(result)
    (target,) = result.targets.values()
    assert len(target.controlplanes) == 1, "exactly one replica leads"
