"""Which factories a request tries, and in which order, for a given policy (no network)."""

from __future__ import annotations

from collections import Counter

import pytest
from dataplane_support import make_policy

from tdn.dataplane.balancer import Balancer, SmoothWeightedRoundRobin
from tdn.dataplane.live_policy import check_acceptable
from tdn.dataplane.routing_table import RoutingTable
from tdn.domain import DataPlaneSettings, Route, WeightedFactory

URL = "http://127.0.0.1:9/v1"


def firsts(balancer: Balancer, policy_version: str, urls: dict[str, str],
           primary: list[tuple[str, float]], n: int) -> list[str]:
    policy = make_policy(policy_version, urls, primary)
    return [balancer.candidates(policy, policy.routes[0])[0].id for _ in range(n)]


def test_first_picks_follow_the_weights_exactly_over_whole_cycles() -> None:
    urls = {"a": URL, "b": URL, "c": URL}
    picks = firsts(Balancer(), "v1", urls, [("a", 0.5), ("b", 0.3), ("c", 0.2)], 1000)
    assert Counter(picks) == {"a": 500, "b": 300, "c": 200}


def test_picks_are_interleaved_rather_than_bursty() -> None:
    picks = firsts(Balancer(), "v1", {"a": URL, "b": URL}, [("a", 0.75), ("b", 0.25)], 8)
    assert picks == ["a", "a", "b", "a", "a", "a", "b", "a"]


def test_order_is_pick_then_backup_levels_in_order_then_other_primaries() -> None:
    # The solver reserves capacity on backup level 0 for a failed primary's share, none on the
    # other primaries (topology/failover.py), so the backups come before them.
    urls = {f: URL for f in ("p1", "p2", "p3", "b1", "b2", "c1")}
    policy = make_policy("v1", urls, [("p1", 0.2), ("p2", 0.5), ("p3", 0.3)],
                         [[("b1", 0.4), ("b2", 0.6)], [("c1", 1.0)]])
    balancer = Balancer()
    orders = [[e.id for e in balancer.candidates(policy, policy.routes[0])] for _ in range(2)]
    # Each level picks by its own weights first, then the rest of it, heaviest first.
    assert orders == [["p2", "b2", "b1", "c1", "p3", "p1"], ["p3", "b1", "b2", "c1", "p2", "p1"]]


def test_a_dead_primarys_share_goes_to_the_backup_the_others_keep_their_own() -> None:
    # The failover model the solver's backups are built for, replayed with the health filter a
    # request applies: center (86 %) dead, onsite keeps its 14 %, the backup takes the rest.
    urls = {f: URL for f in ("center", "onsite", "edge")}
    policy = make_policy("v1", urls, [("center", 0.86), ("onsite", 0.14)], [[("edge", 1.0)]])
    balancer = Balancer()
    served = Counter(next(e.id for e in balancer.candidates(policy, policy.routes[0])
                          if e.id != "center") for _ in range(100))
    assert served == {"edge": 86, "onsite": 14}


def test_a_factory_listed_twice_is_tried_once() -> None:
    policy = make_policy("v1", {"a": URL, "b": URL}, [("a", 1.0)], [[("a", 0.5), ("b", 0.5)]])
    assert [e.id for e in Balancer().candidates(policy, policy.routes[0])] == ["a", "b"]


def test_zero_weight_primary_is_never_picked_first_but_remains_a_fallback() -> None:
    balancer = Balancer()
    policy = make_policy("v1", {"a": URL, "z": URL}, [("a", 1.0), ("z", 0.0)])
    orders = [[e.id for e in balancer.candidates(policy, policy.routes[0])] for _ in range(5)]
    assert orders == [["a", "z"]] * 5


def test_new_policy_version_restarts_the_rotation() -> None:
    balancer = Balancer()
    urls = {"a": URL, "b": URL}
    assert firsts(balancer, "v1", urls, [("a", 0.5), ("b", 0.5)], 1) == ["a"]
    assert firsts(balancer, "v2", urls, [("a", 0.5), ("b", 0.5)], 1) == ["a"]


def test_group_without_any_positive_weight_picks_nothing() -> None:
    group = SmoothWeightedRoundRobin([WeightedFactory("a", 0.0), WeightedFactory("b", -1.0)])
    assert group.pick() is None


def test_routing_table_finds_routes_as_the_policy_does_and_compiles_deadlines_once() -> None:
    batch = Route("m", "batch", (WeightedFactory("a", 1.0),), first_byte_timeout_s=9.0)
    default = Route("m", "default", (WeightedFactory("b", 1.0),))
    policy = make_policy("v1", {"a": URL, "b": URL}, [("a", 1.0)], model="other",
                         extra_routes=(batch, default),
                         settings=DataPlaneSettings(continuation_enabled=True),
                         prefill={"b"}, ttft_p99_s={"b": 1.0})
    table = RoutingTable(policy)
    for model, cls in (("m", "batch"), ("m", "interactive"), ("m", "default"),
                       ("other", "default"), ("nope", "default")):
        entry = table.route(model, cls)
        expected = policy.route_for(model, cls)
        assert (entry.plan.route if entry else None) == expected
    batch_entry = table.route("m", "batch")
    default_entry = table.route("m")
    assert batch_entry is not None and default_entry is not None
    assert batch_entry.deadlines == {"a": 9.0}
    assert default_entry.deadlines == {"b": 3.0}
    assert (batch_entry.continuation_possible, default_entry.continuation_possible) == (
        False, True)
    assert table.models == ("m", "other")


def test_a_policy_with_unusable_data_plane_settings_is_refused_like_a_nack() -> None:
    bad = make_policy("v1", {"a": URL}, [("a", 1.0)],
                      settings=DataPlaneSettings(stream_idle_timeout_s=-1.0))
    with pytest.raises(ValueError, match="stream_idle_timeout_seconds"):
        check_acceptable(bad, "fra-office")
    worse = make_policy("v1", {"a": URL}, [("a", 1.0)], first_byte_timeout_s=float("inf"))
    with pytest.raises(ValueError, match="first_byte_timeout_seconds"):
        check_acceptable(worse, "fra-office")
    slow = make_policy("v1", {"a": URL}, [("a", 1.0)],
                       settings=DataPlaneSettings(slow_first_byte_s=float("nan")))
    with pytest.raises(ValueError, match="slow_first_byte_seconds"):
        check_acceptable(slow, "fra-office")
