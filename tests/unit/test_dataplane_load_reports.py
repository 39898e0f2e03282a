"""Factories' ORCA load reports as the sidecar reads them: the header's formats, what counts as
busy and for how long, and the reordering a busy first candidate causes."""

from __future__ import annotations

import pytest
from dataplane_support import endpoint

from tdn.dataplane.first_byte_watch import FirstByteWatch, prefer_fast
from tdn.dataplane.load_reports import MAX_AGE_S, LoadReports, waiting_requests

A, B, C = (endpoint(f, f"http://{f}.invalid") for f in ("a", "b", "c"))


@pytest.mark.parametrize(("value", "expected"), [
    # vLLM's own output (vllm/entrypoints/openai/orca_metrics.py), both formats.
    (b"TEXT named_metrics.kv_cache_usage_perc=0.4, named_metrics.num_requests_waiting=3.0", 3.0),
    (b"TEXT named_metrics.num_requests_waiting=0.0", 0.0),
    (b' JSON {"named_metrics": {"num_requests_waiting": 2.0, "kv_cache_usage_perc": 0.9}}', 2.0),
    (b"text named_metrics.num_requests_waiting=1", 1.0),
])
def test_the_waiting_count_is_read_from_either_format(value: bytes, expected: float) -> None:
    assert waiting_requests(value) == expected


@pytest.mark.parametrize("value", [
    b"", b"TEXT", b"TEXT named_metrics.kv_cache_usage_perc=0.4",
    b"TEXT named_metrics.num_requests_waiting=lots", b"TEXT named_metrics.num_requests_waiting=-1",
    b"TEXT named_metrics.num_requests_waiting=nan", b"JSON {", b'JSON {"named_metrics": 3}',
    b'JSON {"named_metrics": {"num_requests_waiting": "x"}}', b"BIN AAAA", b"\xff\xfe",
])
def test_an_unreadable_report_is_refused_and_counted_never_busy(value: bytes) -> None:
    assert waiting_requests(value) is None
    loads = LoadReports()
    assert not loads.observe("a", value, 0.0)
    assert loads.rejected == 1
    assert not loads.busy("a", 0.0)


def test_a_queue_makes_a_factory_busy_for_a_second_then_the_next_report_decides() -> None:
    loads = LoadReports()
    assert not loads.busy("a", 0.0)  # no report: never busy
    assert loads.observe("a", b"TEXT named_metrics.num_requests_waiting=1.0", 10.0)
    assert loads.busy("a", 10.0) and loads.busy("a", 10.0 + MAX_AGE_S)
    assert not loads.busy("a", 10.0 + MAX_AGE_S + 0.01)
    loads.observe("a", b"TEXT named_metrics.num_requests_waiting=0.0", 10.5)
    assert not loads.busy("a", 10.5)
    loads.record("b", 4.0, 11.0)
    loads.forget_except({"a"})
    assert not loads.busy("b", 11.0)


def test_a_busy_first_candidate_goes_behind_the_other_primaries_then_the_backups() -> None:
    loads = LoadReports()
    watch = FirstByteWatch()
    loads.record("a", 2.0, 5.0)
    order, passed = prefer_fast([A, C, B], {"a", "b"}, watch, 5.5, 0.5, loads=loads)
    assert ([c.id for c in order], passed) == (["b", "c", "a"], "a")
    # Every candidate busy: the plan's order stands.
    loads.record("b", 1.0, 5.0)
    loads.record("c", 1.0, 5.0)
    order, passed = prefer_fast([A, C, B], {"a", "b"}, watch, 5.5, 0.5, loads=loads)
    assert ([c.id for c in order], passed) == (["a", "c", "b"], "")
    # Without load reports only the watch decides.
    order, passed = prefer_fast([A, C, B], {"a", "b"}, watch, 5.5, 0.5)
    assert passed == ""
