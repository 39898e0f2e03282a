"""Operator policies through a real control plane (free ports, embedded store): apply, refuse,
diff, history, rollback, restart; what sidecars receive; and the `tdn policy` commands."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import grpc
import pytest
from controlplane_support import (
    EU_1,
    MODEL,
    Agent,
    Sidecar,
    channel,
    operator,
    report,
    report_all,
    routed_ids,
    running,
    wait_for,
)

from tdn import operator_cli
from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.controlplane.policy_service import PolicyService
from tdn.domain import Price
from tdn.policy import Policy
from tdn.store.base import open_store
from tdn.v1 import discovery_pb2, operator_pb2, usage_pb2, usage_pb2_grpc

USER = (("x-tdn-user", "alice"),)

# eu-2 charges 0.6 per 1M output tokens: the cap keeps fra's traffic off it.
GOOD = textwrap.dedent(f"""\
    apiVersion: tdn/v1
    kind: Policy
    tenants:
      - name: acme
        sites: [fra]
        zones: [eu]
        max_output_price_per_mtok: 0.55
    models:
      - name: {MODEL}
        aliases: [chat]
    dataplane:
      continuation: true
      stream_idle_timeout_seconds: 20
    """)
OTHER = GOOD.replace("stream_idle_timeout_seconds: 20", "stream_idle_timeout_seconds: 40")
BAD = textwrap.dedent("""\
    apiVersion: tdn/v1
    kind: Policy
    capacity:
      headroom: 2
    tenants:
      - name: acme
        sites: [atlantis]
        zones: [eu]
    """)


def doc(text: str, filename: str = "policy.yaml") -> operator_pb2.PolicyDocument:
    return operator_pb2.PolicyDocument(filename=filename, yaml=text)


def follows_good(response: discovery_pb2.DiscoveryResponse) -> bool:
    policy = response.policy
    return (policy.settings.continuation_enabled and "eu-2" not in routed_ids(response)
            and any(r.model == "chat" for r in policy.routes))


async def test_an_applied_policy_reaches_sidecars_and_is_kept_as_a_revision(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        await sidecar.next_where(lambda r: "eu-2" in routed_ids(r))

        answer = await operator(ch).ApplyPolicy(doc(GOOD), metadata=USER)
        assert answer.applied and answer.revision == 1 and not answer.errors
        pushed = await sidecar.next_where(follows_good)
        assert pushed.policy.settings.stream_idle_timeout_seconds == 20.0
        chat = next(r for r in pushed.policy.routes if r.model == "chat")
        model = next(r for r in pushed.policy.routes if r.model == MODEL)
        assert chat.primary == model.primary

        current = await operator(ch).GetPolicy(operator_pb2.GetPolicyRequest())
        assert (current.revision, current.filename, current.yaml) == (1, "policy.yaml", GOOD)
        assert current.applied_by == "alice" and current.applied_at.seconds > 0
        status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
        assert status.policy_revision == 1
        assert cp.metrics.registry.get_sample_value("tdn_policy_revision") == 1.0
        sidecar.close()


async def test_a_bad_policy_is_refused_with_every_error_and_the_last_good_one_stays(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        assert (await operator(ch).ApplyPolicy(doc(GOOD))).revision == 1
        refused = await operator(ch).ApplyPolicy(doc(BAD, "bad.yaml"))
        assert not refused.applied and refused.revision == 1
        assert [(e.filename, e.line, e.key, e.reason) for e in refused.errors] == [
            ("bad.yaml", 4, "capacity.headroom", "2 is out of range: must be >= 0 and < 1")]
        # Once it parses, the sites it names are checked against the network.
        unknown = await operator(ch).ApplyPolicy(doc(BAD.replace("headroom: 2", "headroom: 0.3"),
                                                     "bad.yaml"))
        assert [(e.line, e.key, e.reason) for e in unknown.errors] == [
            (7, "tenants[0].sites[0]", "unknown site 'atlantis' (known: fra, nyc)")]
        assert cp.metrics.registry.get_sample_value(
            "tdn_policy_rejected_total", {"reason": "invalid"}) == 2.0
        assert (await operator(ch).GetPolicy(operator_pb2.GetPolicyRequest())).revision == 1
        policy, revision = cp.solve_loop.policy
        assert revision == 1 and policy.tenants[0].max_output_price_per_mtok == 0.55
        history = await operator(ch).PolicyHistory(operator_pb2.PolicyHistoryRequest())
        assert [r.revision for r in history.revisions] == [1]


async def test_validate_answers_without_changing_anything(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        valid = await operator(ch).ValidatePolicy(doc(GOOD))
        assert valid.valid and not valid.errors
        invalid = await operator(ch).ValidatePolicy(doc(BAD, "bad.yaml"))
        assert not invalid.valid and invalid.errors[0].key == "capacity.headroom"
        assert cp.solve_loop.policy[1] == 0
        assert not (await operator(ch).PolicyHistory(
            operator_pb2.PolicyHistoryRequest())).revisions


async def test_the_policy_in_force_survives_a_restart(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        assert (await operator(ch).ApplyPolicy(doc(GOOD))).applied
        # Applying answers once the policy is stored; the plan under it follows (debounced).
        await wait_for(lambda: cp.solve_loop.status().policy_revision == 1,
                       "a plan solved under revision 1")
    async with running(tmp_path) as cp, channel(cp) as ch:
        assert cp.solve_loop.policy[1] == 1
        status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
        assert (status.policy_revision, status.plan_policy_revision) == (1, 1)
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        # The first thing a sidecar gets after the restart is the stored plan, made under the
        # stored policy, before any agent has reported again.
        assert follows_good(await sidecar.next())
        sidecar.close()


async def test_a_plan_records_the_policy_revision_it_was_solved_under(tmp_path: Path) -> None:
    # Stopped between the apply and the next plan, a control plane comes back serving the plan
    # of the earlier revision, and says so, until its first solve.
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await wait_for(lambda: cp.solve_loop.plan, "a first plan")
        assert cp.solve_loop.status().policy_revision == 0
        cp.solve_loop.notify = lambda change=None: None  # type: ignore[method-assign]
        assert (await operator(ch).ApplyPolicy(doc(GOOD))).applied
        assert cp.solve_loop.status().policy_revision == 0
    async with running(tmp_path, warmup=30.0) as cp, channel(cp) as ch:
        status = await operator(ch).GetStatus(operator_pb2.GetStatusRequest())
        assert (status.policy_revision, status.plan_policy_revision) == (1, 0)
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()
        assert not follows_good(await sidecar.next())
        sidecar.close()


async def test_diff_shows_what_would_change_in_canonical_form(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await operator(ch).ApplyPolicy(doc(GOOD, "good.yaml"))
        diff = await operator(ch).DiffPolicy(doc(OTHER, "other.yaml"))
        assert diff.current_revision == 1
        changed = [line for line in diff.diff.splitlines() if line[:1] in "+-"]
        assert changed == ["--- revision 1 (good.yaml)", "+++ other.yaml",
                           "-  stream_idle_timeout_seconds: 20.0",
                           "+  stream_idle_timeout_seconds: 40.0"]
        # Same meaning, other spelling: nothing to apply, and applying it is a no-op.
        respelled = GOOD.replace("zones: [eu]", "zones:\n      - eu")
        assert (await operator(ch).DiffPolicy(doc(respelled))).diff == ""
        assert (await operator(ch).ApplyPolicy(doc(respelled))).revision == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await operator(ch).DiffPolicy(doc(BAD, "bad.yaml"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad.yaml:4: capacity.headroom" in (err.value.details() or "")
        assert cp.solve_loop.policy[1] == 1


async def test_rollback_re_applies_an_earlier_revision_as_a_new_one(tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        stub = operator(ch)
        assert (await stub.ApplyPolicy(doc(GOOD, "a.yaml"))).revision == 1
        assert (await stub.ApplyPolicy(doc(OTHER, "b.yaml"))).revision == 2
        back = await stub.RollbackPolicy(operator_pb2.RollbackPolicyRequest(), metadata=USER)
        assert back.applied and back.revision == 3
        current = await stub.GetPolicy(operator_pb2.GetPolicyRequest())
        assert (current.yaml, current.filename) == (GOOD, "a.yaml")
        assert current.applied_by == "alice (rollback to revision 1)"
        assert cp.solve_loop.policy[0].dataplane.stream_idle_timeout_s == 20.0
        again = await stub.RollbackPolicy(operator_pb2.RollbackPolicyRequest(to_revision=2))
        assert again.revision == 4 and cp.solve_loop.policy[0].dataplane.stream_idle_timeout_s \
            == 40.0
        old = await stub.GetPolicy(operator_pb2.GetPolicyRequest(revision=1))
        assert old.yaml == GOOD
        history = await stub.PolicyHistory(operator_pb2.PolicyHistoryRequest(limit=3))
        assert [r.revision for r in history.revisions] == [4, 3, 2]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RollbackPolicy(operator_pb2.RollbackPolicyRequest(to_revision=9))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetPolicy(operator_pb2.GetPolicyRequest(revision=9))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_every_replica_follows_the_policy_pointer_in_the_store(tmp_path: Path) -> None:
    store = await open_store(str(tmp_path / "store"))
    seen: list[int] = []
    try:
        writer = PolicyService(store, ControlPlaneMetrics(), site_ids=["fra"],
                               on_change=lambda policy, revision: None)
        reader = PolicyService(store, ControlPlaneMetrics(), site_ids=["fra"],
                               on_change=lambda policy, revision: seen.append(revision))
        watching = asyncio.create_task(reader.watch())
        try:
            assert (await writer.apply_text(GOOD, "p.yaml",
                                            "bob")) == (1, ())
            await wait_for(lambda: reader.revision == 1, "the reader to follow revision 1")
            assert reader.policy == writer.policy != Policy()
            assert seen == [1]
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
    finally:
        await store.close()


async def test_the_tdn_policy_commands_apply_validate_and_list(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(BAD)

    async def tdn(*args: str) -> int:
        return await asyncio.to_thread(operator_cli.main, ["policy", *args])

    async with running(tmp_path) as cp:
        target = ("--controlplane", cp.grpc_target)
        assert await tdn("validate", str(bad), *target) == 1
        assert capsys.readouterr().out.splitlines() == [
            f"{bad}:4: capacity.headroom: 2 is out of range: must be >= 0 and < 1"]
        assert await tdn("apply", str(good), *target) == 0
        assert capsys.readouterr().out == f"{good}: in force as revision 1\n"
        assert await tdn("apply", str(bad), *target) == 1
        out = capsys.readouterr()
        assert out.err == "refused: revision 1 stays in force\n"
        assert await tdn("history", *target) == 0
        rows = capsys.readouterr().out.splitlines()
        assert rows[0].split() == ["REVISION", "APPLIED", "AT", "FILE", "APPLIED", "BY"]
        assert rows[1].split()[0] == "1" and str(good) in rows[1]
        assert await tdn("get", *target) == 0
        assert capsys.readouterr().out.splitlines()[1:] == GOOD.splitlines()
        assert await tdn("diff", str(good), *target) == 0
        assert capsys.readouterr().out == "no change against revision 1\n"
        assert await tdn("rollback", "--to", "7", *target) == 1
        assert "NOT_FOUND" in capsys.readouterr().err
    assert await tdn("validate", "--offline", str(good)) == 0
    assert capsys.readouterr().out == f"{good}: valid\n"
    assert await tdn("validate", "--offline", str(bad)) == 1


async def test_observed_usage_becomes_the_demand_the_next_solve_plans_for(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        await report_all(Agent(ch))
        await wait_for(lambda: cp.solve_loop.inputs is not None, "a first plan")
        usage = usage_pb2_grpc.UsageStub(ch)
        record = usage_pb2.UsageRecord(tenant="t", factory_id="eu-1", model=MODEL,
                                       requests=400, prompt_tokens=400_000,
                                       completion_tokens=80_000)
        message = usage_pb2.UsageReport(node_id="sc", site="fra", report_id="1",
                                        records=[record])
        message.window_start.FromSeconds(0)
        message.window_end.FromSeconds(10)
        assert (await usage.Report(message)).counted

        def fra_rate() -> float:
            inputs = cp.solve_loop.inputs
            return sum(d.rate_rps for d in (inputs.demands if inputs else ())
                       if d.site == "fra")

        # 40 rps observed against 2 configured: drift asks for a solve well before the tick.
        # (The estimate decays from 40 with a 300 s half-life while the solve happens.)
        await wait_for(lambda: 35.0 < fra_rate() <= 40.0 + 1e-9,
                       "a plan for the observed demand")


async def test_a_price_jump_is_significant_drift_and_re_routes_without_waiting(
        tmp_path: Path) -> None:
    async with running(tmp_path) as cp, channel(cp) as ch:
        # The default policy spreads fra's traffic evenly over its two eu factories (share
        # cap); without the cap the whole route follows the price. Applied before any plan, so
        # no churn penalty holds an earlier split in place.
        uncapped = "apiVersion: tdn/v1\nkind: Policy\ncapacity:\n  max_primary_share: 1\n"
        assert (await operator(ch).ApplyPolicy(doc(uncapped), metadata=USER)).applied
        agent = Agent(ch)
        await report_all(agent)
        sidecar = Sidecar(ch, "sc-fra", "fra")
        await sidecar.subscribe()

        def share(r: discovery_pb2.DiscoveryResponse, factory: str) -> float:
            return sum(w.weight for route in r.policy.routes if route.model == MODEL
                       for w in route.primary if w.factory_id == factory)

        # eu-1 is the cheaper: it carries most of the route (the rest is what its SLO-safe
        # load leaves to eu-2).
        await sidecar.next_where(lambda r: share(r, "eu-1") > share(r, "eu-2"))
        # No health, admin or membership change: only the drift check can ask for this solve
        # (the periodic one is 30 s away).
        dearer = Price(input_per_mtok=1.0, output_per_mtok=5.0)
        assert (await agent.send(report(EU_1, seq=2, price=dearer))).accepted
        await sidecar.next_where(lambda r: share(r, "eu-2") > share(r, "eu-1"))
        sidecar.close()
