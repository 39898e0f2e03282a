"""The pieces the request path was made cheap with still say what they said before: request
headers read in one pass, metrics kept in dictionaries but exposed as Prometheus would, the
access line with every field, usage found in small and large answers."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tdn.dataplane import access_log
from tdn.dataplane.access_log import AccessRecord
from tdn.dataplane.fast_metrics import FastCounter, FastHistogram
from tdn.dataplane.headers import scan_request
from tdn.dataplane.metering import usage_from_body


def test_request_headers_are_read_once_and_sidecar_only_headers_never_forwarded() -> None:
    scanned = scan_request([
        (b"Host", b"sidecar:8080"), (b"Authorization", b"Bearer sk-tenant"),
        (b"api-key", b"azure-style"), (b"X-Request-Id", b"req-1"), (b"x-tdn-class", b"batch"),
        (b"X-TDN-First-Byte-Timeout-Ms", b"250"), (b"Connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"), (b"Cookie", b"a=b"), (b"Content-Length", b"2"),
        (b"OpenAI-Organization", b"org-1"), (b"Accept-Encoding", b"gzip"),
        (b"Endpoint-Load-Metrics-Format", b"json"),
    ])
    assert scanned.request_id == "req-1"
    assert scanned.traffic_class == "batch"
    assert scanned.first_byte_timeout_ms == "250"
    assert (scanned.authorization, scanned.api_key) == ("Bearer sk-tenant", "azure-style")
    lines = scanned.upstream().decode().split("\r\n")
    assert sorted(line for line in lines if line) == sorted([
        "OpenAI-Organization: org-1", "Content-Type: application/json",
        "Accept-Encoding: identity", "x-request-id: req-1",
        # The sidecar's own ask for the factory's load report, never the client's.
        "endpoint-load-metrics-format: text"])


def test_an_insane_request_id_or_class_is_replaced() -> None:
    scanned = scan_request([(b"x-request-id", b"bad id with spaces"),
                            (b"x-tdn-class", b"no/slashes")])
    assert len(scanned.request_id) == 32 and scanned.request_id.isalnum()
    assert scanned.traffic_class == "default"
    assert scan_request([]).request_id != scan_request([]).request_id


def test_fast_metrics_expose_what_prometheus_client_would() -> None:
    fast, slow = CollectorRegistry(), CollectorRegistry()
    counter = FastCounter("t_requests", "doc", ["site", "outcome"], fast)
    histogram = FastHistogram("t_seconds", "doc", ["site"], (0.1, 1.0), fast)
    reference_counter = Counter("t_requests", "doc", ["site", "outcome"], registry=slow)
    reference_histogram = Histogram("t_seconds", "doc", ["site"], buckets=(0.1, 1.0),
                                    registry=slow)
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("s",), value)
        reference_histogram.labels("s").observe(value)
    counter.inc(("s", "ok"))
    counter.inc(("s", "ok"), 2)
    reference_counter.labels("s", "ok").inc(3)

    def samples(registry: CollectorRegistry) -> list[str]:
        return sorted(line for line in generate_latest(registry).decode().splitlines()
                      if line and not line.startswith("#") and "_created" not in line)

    assert samples(fast) == samples(slow)
    assert histogram.count(("s",)) == 4
    assert counter.value(("s", "ok")) == 3


def test_the_access_line_has_every_field_and_goes_straight_to_its_stream() -> None:
    record = AccessRecord(request_id="r1", method="POST", path="/v1/chat/completions",
                          model="m" * 200, ttft_ms=1.23456, duration_ms=2.0)
    doc = json.loads(record.to_json())
    assert list(doc) == [f for f in access_log._FIELDS]
    assert doc["model"] == "m" * 128 and doc["ttft_ms"] == 1.235
    out = io.StringIO()
    access_log.write_to(out)
    try:
        access_log.emit(record)  # no event loop running: written at once
    finally:
        access_log.write_to(None)
    assert json.loads(out.getvalue())["request_id"] == "r1"


def test_usage_is_found_in_small_answers_whole_and_in_large_ones_from_the_end() -> None:
    small = json.dumps({"choices": [{"message": {"content": '"usage": {"x": 1}'}}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    assert usage_from_body(small) == {"prompt_tokens": 3, "completion_tokens": 4}
    large = json.dumps({"data": [{"embedding": [0.125] * 5000}],
                        "usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode()
    assert len(large) > 16 * 1024
    assert usage_from_body(large) == {"prompt_tokens": 7, "total_tokens": 7}
    assert usage_from_body(b"not json") is None
