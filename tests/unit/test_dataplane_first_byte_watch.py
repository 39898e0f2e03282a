"""The first-byte watch and the reordering it drives: a first candidate slow to start streams
right now goes behind the route's other primaries, then its backups; nothing else moves."""

from __future__ import annotations

from dataplane_support import endpoint

from tdn.dataplane.first_byte_watch import FirstByteWatch, prefer_fast

A, B, C, D = (endpoint(f, f"http://{f}.invalid") for f in ("a", "b", "c", "d"))
PRIMARIES = {"a", "b"}


def ids(candidates: object) -> list[str]:
    return [c.id for c in candidates]  # type: ignore[attr-defined]


def test_the_oldest_stream_still_waiting_sets_the_wait_and_ending_it_clears_it() -> None:
    watch = FirstByteWatch()
    assert watch.waiting_s("a", 10.0) == 0.0
    first = watch.begin("a", 1.0)
    second = watch.begin("a", 2.0)
    assert watch.waiting_s("a", 3.0) == 2.0
    watch.end("a", first)
    assert watch.waiting_s("a", 3.0) == 1.0
    watch.end("a", second)
    watch.end("a", second)  # a second end (failure after a deadline) is harmless
    assert watch.waiting_s("a", 3.0) == 0.0


def test_a_new_policy_forgets_factories_it_no_longer_has() -> None:
    watch = FirstByteWatch()
    watch.begin("a", 0.0)
    watch.begin("gone", 0.0)
    watch.forget_except({"a", "b"})
    assert (watch.waiting_s("a", 1.0), watch.waiting_s("gone", 1.0)) == (1.0, 0.0)


def test_order_stands_while_the_first_candidate_is_not_slow() -> None:
    watch = FirstByteWatch()
    watch.begin("a", 9.6)  # 0.4 s: under the limit
    watch.begin("b", 0.0)  # b is slow, but it is not first
    order, passed = prefer_fast([A, C, B], PRIMARIES, watch, 10.0, 0.5)
    assert (ids(order), passed) == (["a", "c", "b"], "")


def test_a_slow_first_candidate_goes_behind_the_other_primaries_then_the_backups() -> None:
    watch = FirstByteWatch()
    watch.begin("a", 9.0)
    # The balancer's order: the primary pick, the backup level, the other primaries.
    order, passed = prefer_fast([A, C, D, B], PRIMARIES, watch, 10.0, 0.5)
    assert (ids(order), passed) == (["b", "c", "d", "a"], "a")
    # Slow candidates behind it keep their relative order at the end.
    watch.begin("b", 9.0)
    order, _ = prefer_fast([A, C, D, B], PRIMARIES, watch, 10.0, 0.5)
    assert ids(order) == ["c", "d", "a", "b"]


def test_when_every_candidate_is_slow_the_plan_order_stands() -> None:
    watch = FirstByteWatch()
    for fid in "abc":
        watch.begin(fid, 0.0)
    order, passed = prefer_fast([A, C, B], PRIMARIES, watch, 10.0, 0.5)
    assert (ids(order), passed) == (["a", "c", "b"], "")
    assert prefer_fast([], PRIMARIES, watch, 10.0, 0.5) == ([], "")
