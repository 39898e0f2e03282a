"""What an agent puts on the wire, checked by the control plane's own decoder (tdn.wire)."""

from __future__ import annotations

import pytest

from tdn.agent.report import build_report
from tdn.domain import Energy, FactoryLoad, FactorySpec, Price, Tier
from tdn.wire import report_to_domain

SPEC = FactorySpec(
    id="edge-fra-1", tier=Tier.EDGE, region="eu-west", compliance_zone="eu",
    endpoint="http://10.0.0.5:8000/v1", models=("llama-3.1-8b-instruct", "bge-m3"),
    price=Price(0.3, 1.2, 0.1), energy=Energy(1400, 1.5, 360, 0.18), max_concurrency=16,
    failure_domain="rack-a", supports_prefill=True,
)
LOAD = FactoryLoad(running=8, waiting=3, kv_cache_usage=0.0847, ttft_p50_s=0.03,
                   ttft_p99_s=0.086, itl_p50_s=0.037, itl_p99_s=0.049,
                   prompt_tokens_total=78894, generation_tokens_total=27453)


def test_report_round_trips_through_the_control_planes_decoder() -> None:
    report = build_report(SPEC, LOAD, seq=7, observed_at=1_700_000_000.25)

    spec, load = report_to_domain(report)

    assert spec == SPEC
    assert load == LOAD
    assert report.engine_reachable
    assert report.seq == 7
    assert report.observed_at.ToNanoseconds() == 1_700_000_000_250_000_000


def test_unreachable_engine_is_reported_with_identity_and_zero_load() -> None:
    report = build_report(SPEC, None, seq=1, observed_at=1.0)

    spec, load = report_to_domain(report)

    assert not report.engine_reachable
    assert spec == SPEC
    assert load == FactoryLoad()


@pytest.mark.parametrize("seq", [1, 2**40])
def test_seq_is_carried_verbatim(seq: int) -> None:
    assert build_report(SPEC, LOAD, seq=seq, observed_at=0.0).seq == seq
