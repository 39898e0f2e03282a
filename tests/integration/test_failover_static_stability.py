"""Static stability: a sidecar restarted while no control plane is reachable routes real traffic to
a real simulator from the policy it persisted before, failover included."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from dataplane_support import (
    CHAT_BODY,
    make_policy,
    read_stream,
    requests_seen,
    reserved_port,
    running_sidecar,
    simulators,
)

from tdn.sim.faults import Fault, FaultMode


async def test_restarted_sidecar_routes_from_its_persisted_policy_while_no_control_plane_answers(
        tmp_path: Path) -> None:
    with reserved_port() as no_controlplane:
        controlplane = (f"127.0.0.1:{no_controlplane}",)
        async with simulators("edge-1", "edge-2") as sims:
            policy = make_policy("v7", {"edge-1": sims["edge-1"].url,
                                        "edge-2": sims["edge-2"].url},
                                 [("edge-1", 1.0)], [[("edge-2", 1.0)]])
            async with running_sidecar(policy, tmp=tmp_path, controlplane=controlplane):
                pass  # ran it once: the policy is on disk
            sims["edge-1"].set_fault(Fault(FaultMode.ERROR, status=503))
            async with running_sidecar(tmp=tmp_path, controlplane=controlplane) as restarted:
                assert restarted.policy is not None and restarted.policy.version == "v7"
                assert restarted.policy_client is not None
                assert not restarted.policy_client.connected
                async with aiohttp.ClientSession() as s, s.post(
                        f"{restarted.proxy_url}/chat/completions", json=CHAT_BODY) as r:
                    status, factory = r.status, r.headers["x-tdn-factory"]
                    body = await r.json()
                streamed = await read_stream(f"{restarted.proxy_url}/chat/completions",
                                             {**CHAT_BODY, "stream": True})
    assert (status, factory) == (200, "edge-2")
    assert body["choices"][0]["message"]["content"]
    assert (streamed.status, streamed.done, streamed.error) == (200, True, None)
    assert streamed.headers["x-tdn-factory"] == "edge-2"
    assert requests_seen(sims["edge-1"]) == 2  # tried, failed over from, as the policy says
