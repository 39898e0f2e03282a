"""The Discovery contract of proto/tdn/v1/discovery.proto, from the control plane's end: what a
sidecar is sent, when, and what its ACKs, NACKs and stale answers do."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from controlplane_support import (
    EU_1,
    EU_2,
    US_1,
    Agent,
    Sidecar,
    channel,
    report,
    report_all,
    routed_ids,
    running,
    sidecar_status,
    wait_for,
    wait_for_status,
)

from tdn.controlplane.server import ControlPlane


def stale_count(cp: ControlPlane, site: str) -> float:
    value = cp.metrics.registry.get_sample_value("tdn_discovery_stale_requests_total",
                                                 {"site": site})
    return value or 0.0


async def test_sidecar_gets_only_its_own_sites_policy_and_its_ack_shows_in_status(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        response = await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))
        assert all(r.policy.site == "fra" for r in sidecar.received)
        assert all(r.version_info == r.policy.version for r in sidecar.received)
        # The fra site may only be served in the EU: the US factory is not even shipped.
        assert "us-1" not in routed_ids(response)

        status = await wait_for_status(ch, "sc-fra",
                                       lambda s: s.acked_version == response.version_info)
        assert status.connected and status.site == "fra" and status.last_nack == ""
        assert status.lag_seconds == 0.0
        assert cp.metrics.registry.get_sample_value(
            "tdn_discovery_convergence_seconds_count", {"site": "fra"}) == len(sidecar.received)
        sidecar.close()


async def test_every_response_carries_a_fresh_nonce(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1,))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))
        await report_all(agent, (EU_2,))
        await sidecar.next_where(lambda r: "eu-2" in routed_ids(r))
        nonces = [r.nonce for r in sidecar.received]
        assert len(nonces) >= 2 and len(set(nonces)) == len(nonces) and all(nonces)
        sidecar.close()


async def test_unhealthy_factory_leads_to_a_new_version_without_it(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        before = await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))

        await agent.send(report(EU_1, seq=2, reachable=False))
        after = await sidecar.next_where(lambda r: "eu-1" not in routed_ids(r))
        assert int(after.version_info) > int(before.version_info)
        assert "eu-2" in routed_ids(after)
        sidecar.close()


async def test_a_nack_keeps_the_last_good_version_visible_and_is_not_resent(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1, US_1))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        good = await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))

        await report_all(agent, (EU_2,))
        refused = await sidecar.next()
        assert refused.version_info != good.version_info
        await sidecar.nack(refused, running=good.version_info, message="no room for eu-2")

        status = await wait_for_status(ch, "sc-fra", lambda s: s.last_nack != "")
        assert status.acked_version == good.version_info
        assert "no room for eu-2" in status.last_nack
        assert refused.version_info in status.last_nack
        assert cp.metrics.registry.get_sample_value(
            "tdn_discovery_nacks_total", {"site": "fra"}) == 1.0

        # The next thing on the stream is a newer version, never the refused one again.
        await agent.send(report(EU_2, seq=2, reachable=False))
        following = await sidecar.next()
        assert following.version_info != refused.version_info
        assert int(following.version_info) > int(refused.version_info)
        sidecar.close()


async def test_a_request_with_a_stale_nonce_is_ignored(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1,))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        first = await sidecar.next_where(lambda r: "eu-1" in routed_ids(r))
        await wait_for_status(ch, "sc-fra", lambda s: s.acked_version == first.version_info)

        await report_all(agent, (EU_2,))
        second = await sidecar.next()
        # Answering the new version with the old nonce is stale: it must not count as an ACK.
        await sidecar.ack(second, nonce=first.nonce)
        await wait_for(lambda: stale_count(cp, "fra") == 1.0, "the stale request to be seen")
        status = await sidecar_status(ch, "sc-fra")
        assert status is not None and status.acked_version == first.version_info
        assert status.lag_seconds > 0.0

        await sidecar.ack(second)
        await wait_for_status(ch, "sc-fra", lambda s: s.acked_version == second.version_info)
        sidecar.close()


async def test_a_sidecar_already_running_the_current_version_is_not_sent_it_again(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1,))
        first = Sidecar(ch, "sc-fra", "fra")
        await first.subscribe()
        current = await first.next_where(lambda r: "eu-1" in routed_ids(r))
        first.close()

        again = Sidecar(ch, "sc-fra", "fra")
        await again.subscribe(version=current.version_info)
        status = await wait_for_status(ch, "sc-fra", lambda s: s.connected)
        assert status.acked_version == current.version_info
        # Nothing is pending for it; the next response is the next version, not the current.
        await report_all(agent, (EU_2,))
        response = await again.next()
        assert int(response.version_info) > int(current.version_info)
        again.close()


async def test_a_change_at_one_site_gives_no_new_version_to_another(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent)
        nyc = Sidecar(ch, "sc-nyc", "nyc")
        await nyc.subscribe()
        nyc_policy = await nyc.next_where(lambda r: "us-1" in routed_ids(r))
        fra = Sidecar(ch, "sc-fra", "fra")
        await fra.subscribe()
        await fra.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))
        plan_before = cp.solve_loop.status().version

        await agent.send(report(EU_2, seq=2, reachable=False))
        fra_new = await fra.next_where(lambda r: "eu-2" not in routed_ids(r))
        assert int(fra_new.version_info) > plan_before
        nyc_now = cp.cache.get("nyc")
        assert nyc_now is not None and nyc_now.version == nyc_policy.version_info
        nyc.close()
        fra.close()


@pytest.mark.parametrize(("node_id", "site", "code"), [
    ("sc-1", "atlantis", grpc.StatusCode.NOT_FOUND),
    ("", "fra", grpc.StatusCode.INVALID_ARGUMENT),
])
async def test_a_sidecar_naming_no_node_or_an_unknown_site_is_refused_clearly(
        tmp_path: Path, node_id: str, site: str, code: grpc.StatusCode) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        sidecar = Sidecar(ch, node_id, site)
        await sidecar.subscribe()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sidecar.next()
        assert err.value.code() == code
        assert (site in (err.value.details() or "")) or code is grpc.StatusCode.INVALID_ARGUMENT


def histogram_count(cp: ControlPlane, name: str, site: str) -> float:
    return cp.metrics.registry.get_sample_value(f"{name}_count", {"site": site}) or 0.0


async def test_a_version_counts_as_converged_only_once_every_connected_sidecar_acked_it(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        agent = Agent(ch)
        await report_all(agent, (EU_1, EU_2))
        first, second = Sidecar(ch, "sc-1", "fra"), Sidecar(ch, "sc-2", "fra")
        for sidecar in (first, second):
            await sidecar.subscribe()
            await sidecar.next_where(lambda r: {"eu-1", "eu-2"} <= routed_ids(r))
        await wait_for_status(ch, "sc-2", lambda s: s.lag_seconds == 0.0)
        converged = histogram_count(cp, "tdn_policy_convergence_seconds", "fra")
        queued = histogram_count(cp, "tdn_discovery_queue_seconds", "fra")

        await agent.send(report(EU_1, seq=2, reachable=False))
        one = await first.next()
        two = await second.next()
        assert one.version_info == two.version_info and "eu-1" not in routed_ids(one)
        # Both streams were open when the version arrived: each waited in the push queue,
        # and each write was timed.
        assert histogram_count(cp, "tdn_discovery_queue_seconds", "fra") == queued + 2
        assert histogram_count(cp, "tdn_discovery_push_seconds", "fra") >= 2

        await first.ack(one)
        await wait_for_status(ch, "sc-1", lambda s: s.acked_version == one.version_info)
        assert histogram_count(cp, "tdn_policy_convergence_seconds", "fra") == converged
        await second.ack(two)
        await wait_for(lambda: histogram_count(cp, "tdn_policy_convergence_seconds", "fra")
                       == converged + 1, "the version to converge")
        first.close()
        second.close()
