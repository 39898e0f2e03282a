"""Building the TelemetryReport an agent sends, from its factory's spec and the latest scrape.

Kept apart from the stream handling so that what goes on the wire can be checked without a
network: every report carries the full identity (the contract in telemetry.proto), and a report
for an unreachable engine carries zero load so nothing stale is mistaken for live.
"""

from __future__ import annotations

import math

from tdn.domain import FactoryLoad, FactorySpec
from tdn.v1 import telemetry_pb2
from tdn.wire import energy_to_pb, price_to_pb, spec_to_identity


def build_report(spec: FactorySpec, load: FactoryLoad | None, seq: int,
                 observed_at: float) -> telemetry_pb2.TelemetryReport:
    """The report for one scrape; ``load`` None means the engine could not be read.

    ``observed_at`` is wall-clock seconds (time.time()) of the scrape.
    """
    reachable = load is not None
    current = load if load is not None else FactoryLoad()
    report = telemetry_pb2.TelemetryReport(
        identity=spec_to_identity(spec),
        capacity=telemetry_pb2.Capacity(
            max_concurrency=spec.max_concurrency,
            max_output_tokens_per_second=spec.max_output_tokens_per_second,
        ),
        load=telemetry_pb2.Load(
            running=current.running,
            waiting=current.waiting,
            kv_cache_usage=current.kv_cache_usage,
            prompt_tokens_total=current.prompt_tokens_total,
            generation_tokens_total=current.generation_tokens_total,
        ),
        latency=telemetry_pb2.Latency(
            ttft_p50_seconds=current.ttft_p50_s,
            ttft_p99_seconds=current.ttft_p99_s,
            itl_p50_seconds=current.itl_p50_s,
            itl_p99_seconds=current.itl_p99_s,
        ),
        price=price_to_pb(spec.price),
        energy=energy_to_pb(spec.energy),
        engine_reachable=reachable,
        seq=seq,
    )
    # Split before scaling: seconds-since-1970 times 1e9 exceeds a double's exact integers.
    seconds = math.floor(observed_at)
    report.observed_at.seconds = seconds
    report.observed_at.nanos = min(round((observed_at - seconds) * 1e9), 999_999_999)
    return report
