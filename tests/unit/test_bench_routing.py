"""The routing benchmark's own logic: trace loading, the grid curve, the simulation's queueing and
failure model, and that each router picks what it claims to. No timings are asserted."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from bench.routing import GREEN_NAME, GREEN_POLICY, Outcome, goals
from bench.routing_routers import Baseline, LiteLlm, baselines
from bench.routing_sim import Failure, Req, Simulation, Summary, percentile, summarise
from bench.routing_tdn import SidecarModel, TdnRouter
from bench.routing_topology import (
    SITES,
    Topology,
    build_topology,
    fifo_slo_attainment,
    provision_sole_factories,
)
from bench.routing_trace import DataMissing, GridMonth, diurnal, load_trace, shared_data_dir
from tdn.domain import FactoryEndpoint, Route, SitePolicy, Tier, WeightedFactory
from tdn.policy import DEFAULT_POLICY
from tdn.policy_parse import parse_policy
from tdn.topology.options import options_from_policy

GRID = {c: GridMonth(c, "2023-11", g, 80.0)
        for c, g in (("SWE", 26.0), ("FRA", 43.0), ("DEU", 403.0), ("POL", 742.0))}


def topology(utilisation: float = 0.65, requests: int = 600) -> Topology:
    return build_topology(GRID, datetime(2023, 11, 16, 18, 15), [(1000, 200)] * requests,
                          600.0, utilisation)


def req(i: int, t: float, *, site: str = "de-berlin", cls: str = "chat", prompt: int = 1000,
        output: int = 100) -> Req:
    return Req(i, t, site, cls, prompt, output, 1.5)


class Fixed:
    """A router that always picks the same factories in order, for simulation tests."""

    name = "fixed"

    def __init__(self, order: list[str]) -> None:
        self.order = order
        self.failures: list[str] = []

    def start(self, sim: Simulation) -> None:
        pass

    def max_attempts(self, r: Req) -> int:
        return len(self.order)

    def choose(self, r: Req, now: float) -> str | None:
        return next((f for f in self.order if f not in r.tried), None)

    def on_failure(self, r: Req, factory_id: str, now: float) -> None:
        self.failures.append(factory_id)

    def on_success(self, r: Req, factory_id: str, now: float) -> None:
        pass


def test_trace_loader_reads_upstream_format_with_crlf_and_no_final_newline(tmp_path: Path
                                                                            ) -> None:
    path = tmp_path / "conv.csv"
    path.write_bytes(b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
                     b"2023-11-16 18:15:46.6805900,374,44\r\n"
                     b"2023-11-16 18:15:50.9951690,396,109\r\n"
                     b"2023-11-16 18:16:47.0000000,7,0")
    start, rows = load_trace(path)
    assert start == datetime(2023, 11, 16, 18, 15, 46, 680590)
    assert [(round(r.t, 6), r.prompt_tokens, r.output_tokens) for r in rows] == [
        (0.0, 374, 44), (4.314579, 396, 109), (60.31941, 7, 1)]  # no zero-length answers
    _, first_minute = load_trace(path, limit_s=60.0)
    assert len(first_minute) == 2


def test_missing_shared_data_fails_naming_where_it_looked(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    monkeypatch.setenv("TDN_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.setattr("bench.routing_trace.REPO", tmp_path / "repo")
    with pytest.raises(DataMissing, match="nowhere"):
        shared_data_dir()


def test_diurnal_curve_averages_to_the_monthly_mean_and_peaks_in_the_evening() -> None:
    values = [diurnal(400.0, 0.2, h / 10) for h in range(240)]
    assert sum(values) / len(values) == pytest.approx(400.0)
    assert max(range(240), key=lambda i: values[i]) / 10 == pytest.approx(18.4, abs=1.0)


def test_residency_keeps_confidential_code_on_its_own_premises() -> None:
    topo = topology()
    assert topo.eligible("de-office", "code") == ("onsite-de-office",)
    chat = topo.eligible("de-berlin", "chat")
    assert not any(f.startswith("onsite-") for f in chat)
    assert "onsite-pl-plant" in topo.eligible("pl-plant", "chat")


def test_slots_are_sized_for_the_requested_utilisation() -> None:
    half, quarter = topology(0.5, 20_000), topology(0.25, 20_000)
    assert half.total_slots() == pytest.approx(quarter.total_slots() / 2, rel=0.05)


def test_a_full_factory_queues_and_ttft_is_rtt_plus_wait_plus_prefill() -> None:
    topo = topology()
    f = topo.by_id["edge-de-1"]
    reqs = [req(i, 0.0) for i in range(f.slots + 1)]
    sim = Simulation(topo, reqs, Fixed(["edge-de-1"]))
    done = sim.run()
    rtt = topo.rtt_s("de-berlin", "edge-de-1")
    prefill = f.prefill_s(1000)
    assert done[0].ttft == pytest.approx(rtt + prefill)
    # The last one waits for the first slot to free: one whole request's duration.
    assert done[-1].ttft == pytest.approx(rtt + f.duration_s(1000, 100) + prefill)
    assert all(r.status == "ok" for r in done)


def test_a_dead_factory_refuses_and_the_request_is_served_elsewhere() -> None:
    topo = topology()
    router = Fixed(["center-se-1", "edge-de-1"])
    sim = Simulation(topo, [req(0, 10.0)], router, [Failure(5.0, 20.0, ("center-se-1",))])
    (done,) = sim.run()
    assert done.status == "ok" and done.factory == "edge-de-1"
    assert router.failures == ["center-se-1"]
    # The refusal cost one round trip to the dead factory.
    expected = (topo.rtt_s("de-berlin", "center-se-1") + topo.rtt_s("de-berlin", "edge-de-1")
                + topo.by_id["edge-de-1"].prefill_s(1000))
    assert done.ttft == pytest.approx(expected)


def test_a_factory_dying_mid_stream_breaks_that_stream_but_retries_queued_work() -> None:
    topo = topology()
    f = topo.by_id["edge-de-1"]
    reqs = [req(i, 0.0, output=1000) for i in range(f.slots + 1)]
    sim = Simulation(topo, reqs, Fixed(["edge-de-1", "edge-de-2"]),
                     [Failure(5.0, 100.0, ("edge-de-1",))])
    done = sim.run()
    assert {r.status for r in done[:-1]} == {"stream broken"}
    assert done[-1].status == "ok" and done[-1].factory == "edge-de-2"
    summary = summarise(done)
    assert summary.errors == f.slots and summary.requests == len(done)


class WithDeadline(Fixed):
    """Fixed order, with a first-byte deadline per attempt, as TDN's sidecar has."""

    def __init__(self, order: list[str], deadline_s: float) -> None:
        super().__init__(order)
        self.deadline_s = deadline_s
        self.missed: list[str] = []

    def deadline(self, r: Req, factory_id: str) -> float:
        return self.deadline_s

    def on_deadline(self, r: Req, factory_id: str, now: float) -> None:
        self.missed.append(factory_id)


def test_a_request_queued_past_its_first_byte_deadline_moves_on_and_frees_its_place() -> None:
    topo = topology()
    f = topo.by_id["edge-de-1"]
    # Every slot busy for a long time; one more request queues behind them.
    reqs = [req(i, 0.0, output=1000) for i in range(f.slots)] + [req(f.slots, 0.1)]
    router = WithDeadline(["edge-de-1", "edge-de-2"], deadline_s=1.0)
    done = Simulation(topo, reqs, router).run()
    late = done[-1]
    assert late.status == "ok" and late.factory == "edge-de-2"
    assert late.tried == ["edge-de-1", "edge-de-2"] and router.missed == ["edge-de-1"]
    # It waited out the deadline, then went to the other factory.
    expected = 1.0 + topo.rtt_s("de-berlin", "edge-de-2") + f.prefill_s(1000)
    assert late.ttft == pytest.approx(expected)
    assert all(r.factory == "edge-de-1" for r in done[:-1])  # those that started stay


def test_percentile_is_nearest_rank() -> None:
    values = sorted(float(i) for i in range(1, 101))
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0


def _baseline(name: str) -> Baseline:
    topo = topology()
    router = next(b for b in baselines(topo, 1) if b.name == name)
    router.start(Simulation(topo, [], router))
    return router


def test_least_latency_prefers_the_near_edge_until_it_queues() -> None:
    b = _baseline("least-latency")
    r = req(0, 0.0, site="de-berlin")
    options = list(b.eligible[("de-berlin", "chat")])
    assert b.pick(b, r, options, 0.0) in ("edge-de-1", "edge-de-2")
    for fid in ("edge-de-1", "edge-de-2"):
        b.factory(fid).running = b.factory(fid).slots
        b.factory(fid).queue.extend(req(9, 0.0) for _ in range(50))
    assert b.pick(b, r, options, 0.0) not in ("edge-de-1", "edge-de-2")


def test_cheapest_first_fills_the_cheapest_then_spills() -> None:
    b = _baseline("cheapest-first")
    r = req(0, 0.0)
    options = list(b.eligible[("de-berlin", "chat")])
    assert b.pick(b, r, options, 0.0) == "center-se-1"
    for fid in ("center-se-1", "center-se-2"):
        b.factory(fid).running = b.factory(fid).slots
    assert b.pick(b, r, options, 0.0) == "center-fr-1"


def test_round_robin_cycles_and_shortest_queue_picks_the_least_loaded() -> None:
    rr = _baseline("round-robin")
    r = req(0, 0.0)
    options = list(rr.eligible[("de-berlin", "chat")])
    picks = [rr.pick(rr, r, options, 0.0) for _ in range(len(options))]
    assert sorted(picks) == sorted(options)
    jsq = _baseline("join-shortest-queue")
    for fid in options:
        jsq.factory(fid).running = jsq.factory(fid).slots // 2
    jsq.factory("edge-pl-1").running = 0
    assert jsq.pick(jsq, r, options, 0.0) == "edge-pl-1"


def test_litellm_latency_routing_tries_unseen_deployments_then_the_fastest_ttft() -> None:
    topo = topology()
    router = LiteLlm(topo, "latency-based-routing", {f.id: 5.0 for f in topo.factories}, 3)
    eligible = topo.eligible("de-berlin", "chat")
    seen = set()
    for i, fid in enumerate(eligible):
        r = req(i, 0.0)
        r.ttft = 0.1 if fid == "edge-fr-1" else 0.9
        router.on_success(r, fid, 1.0)
        seen.add(fid)
    # Every deployment now has [0, x] latencies; the one with the lowest mean TTFT wins.
    assert router.choose(req(99, 2.0), 2.0) == "edge-fr-1"
    fresh = LiteLlm(topo, "latency-based-routing", {f.id: 5.0 for f in topo.factories}, 3)
    r = req(0, 0.0)
    r.ttft = 0.5
    fresh.on_success(r, "edge-de-1", 1.0)
    # Never-used deployments still average 0 and are preferred over a measured one.
    assert fresh.choose(req(1, 2.0), 2.0) != "edge-de-1"


def test_litellm_cost_routing_takes_the_lowest_per_token_price_under_its_rpm() -> None:
    topo = topology()
    router = LiteLlm(topo, "cost-based-routing", {f.id: 60.0 for f in topo.factories})
    assert router.choose(req(0, 0.0), 0.0) == "center-se-1"
    limit = router.rpm_limit["center-se-1"]
    for i in range(limit):
        router.on_success(req(i, 0.0), "center-se-1", 1.0)
    assert router.choose(req(0, 2.0), 2.0) == "center-se-2"
    # A new minute resets the count.
    assert router.choose(req(0, 61.0), 61.0) == "center-se-1"


def test_litellm_cools_down_a_deployment_failing_most_of_five_requests() -> None:
    topo = topology()
    router = LiteLlm(topo, "cost-based-routing", {f.id: 60.0 for f in topo.factories})
    for i in range(5):
        router.on_failure(req(i, 0.0), "center-se-1", 1.0)
    assert router.choose(req(9, 2.0), 2.0) == "center-se-2"
    assert router.choose(req(9, 7.0), 7.0) == "center-se-1"


def test_tdn_sidecar_sends_an_ejected_primarys_share_to_the_backup_as_the_balancer_does() -> None:
    # dataplane/balancer.py: the weighted pick, then the backup levels, then the other
    # primaries. So with "a" ejected its half goes to the backup "c", and "b" keeps its half.
    endpoints = tuple(FactoryEndpoint(fid, Tier.CENTER, "se", domain, f"http://{fid}/v1")
                      for fid, domain in (("a", "se/a"), ("b", "se/b"), ("c", "fr/a")))
    route = Route("llama-3.1-70b-instruct", "chat",
                  primary=(WeightedFactory("a", 0.5), WeightedFactory("b", 0.5)),
                  backups=((WeightedFactory("c", 1.0),),))
    sidecar = SidecarModel()
    sidecar.set_policy(SitePolicy("de-berlin", "1", endpoints, (route,)))
    sidecar.eject("a", 0.0)
    picks = [sidecar.choose(req(i, 1.0), 1.0) for i in range(8)]
    assert picks.count("b") == 4 and picks.count("c") == 4
    # A request whose attempt at "b" failed moves on to the backup, another failure domain.
    retried = req(99, 2.0)
    first = sidecar.choose(retried, 2.0)
    assert first is not None
    retried.tried.append(first)
    assert sidecar.choose(retried, 2.0) == ("c" if first == "b" else "b")


def test_tdn_sidecar_passes_over_a_primary_slow_to_start_its_streams_until_the_wait_ends(
        ) -> None:
    endpoints = tuple(FactoryEndpoint(fid, Tier.CENTER, "se", domain, f"http://{fid}/v1")
                      for fid, domain in (("a", "se/a"), ("b", "se/b"), ("c", "fr/a")))
    route = Route("llama-3.1-70b-instruct", "chat",
                  primary=(WeightedFactory("a", 0.9), WeightedFactory("b", 0.1)),
                  backups=((WeightedFactory("c", 1.0),),))
    sidecar = SidecarModel()
    sidecar.set_policy(SitePolicy("de-berlin", "1", endpoints, (route,)))
    waiting = req(0, 0.0)
    assert sidecar.choose(waiting, 0.0) == "a"
    # 0.6 s later its first token has not come: the next stream goes to the other primary.
    assert sidecar.choose(req(1, 0.6), 0.6) == "b"
    sidecar.attempt_over(waiting)  # its first token
    assert sidecar.choose(req(2, 0.7), 0.7) == "a"


def test_tdn_routes_every_group_by_a_real_solve_and_fails_over_without_one() -> None:
    topo = topology(0.3)
    reqs = [req(i, float(i), site=s.id, cls=c) for i, (s, c) in
            enumerate((s, c) for s in SITES for c in ("chat", "code"))]
    router = TdnRouter(topo, reqs)
    sim = Simulation(topo, reqs, router)
    done = sim.run()
    assert all(r.status == "ok" for r in done)
    assert router.solves and router.plan is not None
    assert next(r for r in done if r.site == "de-office" and r.cls == "code").factory == \
        "onsite-de-office"
    # With its primaries ejected, a sidecar still has somewhere to go.
    sidecar = router.sidecars["de-berlin"]
    route = sidecar.policy.route_for("llama-3.1-70b-instruct", "chat") if sidecar.policy else None
    assert route is not None
    for w in route.primary:
        sidecar.eject(w.factory_id, 0.0)
    fallback = sidecar.choose(req(100, 1.0), 1.0)
    if route.backups:
        assert fallback in {w.factory_id for level in route.backups for w in level}


def _summary(slo: float, cost: float, gco2: float) -> Summary:
    return Summary(requests=100, errors=0, cost_per_mtok=cost, ttft_p50_s=0.1, ttft_p99_s=1.0,
                   slo_attainment=slo, gco2_per_mtok=gco2, utilisation=0.6)


def test_the_green_policy_is_parsed_as_an_operator_would_write_it() -> None:
    options = options_from_policy(parse_policy(GREEN_POLICY, "green.yaml").policy)
    default = options_from_policy(DEFAULT_POLICY)
    assert (options.carbon_weight, options.latency_weight) == (3.0, 0.25)
    # Everything else (SLO machinery, share cap, headroom) is the default policy's.
    assert options.max_primary_share == default.max_primary_share
    assert options.capacity_headroom == default.capacity_headroom


def test_goals_judge_carbon_per_policy_and_only_at_equal_or_better_slo() -> None:
    def outcome(slo: float, cost: float, gco2: float, choice: float = 0.95) -> Outcome:
        s = _summary(slo, cost, gco2)
        return Outcome(s, s, s, 0, "", factory_choice=choice)

    outcomes = {
        "TDN": outcome(0.97, 0.67, 17.3, choice=0.981),
        GREEN_NAME: outcome(0.9732, 0.663, 17.0),
        "least-latency": outcome(0.9692, 0.859, 24.4, choice=0.998),
    }
    text = "\n".join(goals(outcomes))
    default_line, green_line = (line for line in text.splitlines() if "carbon ≥ 30%" in line)
    assert "29.1% lower" in default_line and "**missed**" in default_line
    assert "30.3% lower" in green_line and "**met**" in green_line
    assert "on the traffic that had a choice of factory 98.10% (least-latency 99.80%)" in text
    # Lower carbon bought with a worse SLO than the router compared with is not a win.
    outcomes[GREEN_NAME] = outcome(0.96, 0.663, 10.0)
    green_line = next(line for line in goals(outcomes) if "green policy" in line)
    assert "**missed**" in green_line


def test_a_sole_factory_is_provisioned_for_its_traffic_bursts() -> None:
    topo = topology()
    office = topo.by_id["onsite-de-office"]
    # 40 code requests at once, 2,000-token prompts (0.27 s of prefill each): the office's code
    # may only use its on-site factory, so it needs a slot for nearly every one of them.
    burst = [(10.0, "de-office", "code", 2000, 100)] * 40
    burst += [(10.0, "de-berlin", "code", 2000, 100)] * 40  # has a choice: sizes nothing
    sized = provision_sole_factories(topo, burst, target=0.99)
    slots = sized.by_id["onsite-de-office"].slots
    mine = [(t, p, o) for t, site, _, p, o in burst if site == "de-office"]
    rtt = topo.rtt_s("de-office", office.id)
    assert fifo_slo_attainment(office, rtt, 1.0, slots, mine) >= 0.99
    assert fifo_slo_attainment(office, rtt, 1.0, slots - 1, mine) < 0.99
    assert slots > office.slots
    unchanged = [f for f in sized.factories if f.id != office.id]
    assert unchanged == [f for f in topo.factories if f.id != office.id]
    # Already big enough: left as it is.
    assert provision_sole_factories(topo, burst[:2], target=0.99).by_id[office.id].slots == \
        office.slots
