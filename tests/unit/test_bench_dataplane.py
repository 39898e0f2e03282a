"""The data-plane and scale benchmarks' own logic: the fixed-delay upstream's answers, wrk's result
parsing, the configurations given to each proxy, the soak's slope and the scale instances. No
process is started and no timing is asserted."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.dataplane import _median, _slope
from bench.dataplane_load import chat_body, lua_script, parse_wrk
from bench.dataplane_targets import Drill, Network, haproxy_config, litellm_config, tdn_policy
from bench.dataplane_upstream import UpstreamProtocol
from bench.scale_worker import instance


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def _post(body: str, extra: str = "") -> bytes:
    raw = body.encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n{extra}"
            f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


def test_upstream_answers_a_chat_completion_with_its_model_and_keeps_the_connection() -> None:
    proto = UpstreamProtocol()
    transport = FakeTransport()
    proto.connection_made(transport)
    request = _post(chat_body("bench-d0"))
    # Split across reads, then two requests back to back on one connection.
    proto.data_received(request[:10])
    proto.data_received(request[10:] + request)
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert transport.written.count(b"HTTP/1.1 200 OK") == 2
    first = body[: body.index(b"HTTP/1.1")]
    assert json.loads(first)["model"] == "bench-d0"
    assert not transport.closed


def test_upstream_streams_max_tokens_chunks_then_finish_usage_and_done() -> None:
    proto = UpstreamProtocol()
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(_post(chat_body("bench-sse-i0", stream=True, max_tokens=5)))
    out = transport.written
    assert b"Transfer-Encoding: chunked" in out
    assert out.count(b'"content":" tok"') == 5
    assert out.index(b'"finish_reason":"stop"') < out.index(b'"usage"') < out.index(b"[DONE]")
    assert out.endswith(b"0\r\n\r\n")


def test_upstream_closes_after_a_request_asking_for_it() -> None:
    proto = UpstreamProtocol()
    transport = FakeTransport()
    proto.connection_made(transport)
    proto.data_received(_post(chat_body("x"), "Connection: close\r\n"))
    assert transport.closed


def test_wrk_result_line_is_parsed_with_errors_summed() -> None:
    out = "Running 1s test\nTDNBENCH 100 2000000 1 2 3 4 5 250.0 300.0 900.5 1200.0 260.1\n"
    res = parse_wrk(out)
    assert res.requests == 100 and res.duration_s == 2.0 and res.rps == 50.0
    assert res.errors == 15 and res.timeouts == 5 and res.status_errors == 4
    assert (res.p50_us, res.p99_us, res.max_us) == (250.0, 900.5, 1200.0)
    with pytest.raises(RuntimeError):
        parse_wrk("no result")


def test_lua_script_posts_every_body_in_turn_with_quotes_escaped() -> None:
    script = lua_script(['{"a":"it\'s"}', '{"b":1}'])
    assert "it\\'s" in script and '{"b":1}' in script
    assert 'wrk.method = "POST"' in script and "TDNBENCH" in script


def test_static_policy_routes_every_model_and_each_drill_to_its_backup() -> None:
    drills = (Drill("healthy", "fo-healthy", 2), Drill("refused", "fo-refused", 3))
    network = Network(upstream_port=1, models=("bench-d0", "bench-d20"), good_port=2,
                      drills=drills, first_byte_deadline_s=0.5)
    policy = tdn_policy(network)
    policy.check()
    assert policy.route_for("bench-d20") is not None
    refused = policy.route_for("fo-refused")
    assert refused is not None
    assert [w.factory_id for w in refused.primary] == ["primary-refused"]
    assert [w.factory_id for level in refused.backups for w in level] == ["good"]


def test_haproxy_relays_without_delay_and_retries_drills_on_the_second_server() -> None:
    drills = (Drill("hang", "fo-hang", 3),)
    network = Network(upstream_port=1, models=("m",), good_port=2, drills=drills,
                      first_byte_deadline_s=0.5)
    cfg = haproxy_config(network, 10, {"hang": 11})
    assert cfg.count("option http-no-delay") >= 2
    assert "retry-on all-retryable-errors" in cfg and "timeout server 500ms" in cfg
    assert "server primary 127.0.0.1:3" in cfg and "server good 127.0.0.1:2" in cfg


def test_litellm_gets_the_upstream_as_an_openai_compatible_model() -> None:
    network = Network(upstream_port=7, models=("bench-d0",))
    cfg = litellm_config(network)
    (entry,) = cfg["model_list"]  # type: ignore[misc]
    assert entry["litellm_params"]["model"] == "openai/bench-d0"
    assert entry["litellm_params"]["api_base"] == "http://127.0.0.1:7/v1"


def test_soak_slope_and_median_ignore_what_they_should() -> None:
    assert _slope([(0.0, 10.0), (60.0, 10.0), (120.0, 10.0)]) == 0.0
    assert _slope([(0.0, 10.0), (60.0, 11.0), (120.0, 12.0)]) == pytest.approx(1 / 60)
    assert _median([1.0, float("nan"), 3.0]) == 2.0


def test_scale_instances_have_the_requested_size_and_are_deterministic() -> None:
    factories, sites, demands = instance(30, 100)
    assert len(factories) == 30 and len(demands) == 100
    assert len({(d.site, d.model, d.traffic_class) for d in demands}) == 100
    assert {d.site for d in demands} <= {s.id for s in sites}
    again = instance(30, 100)
    assert again[0] == factories and again[2] == demands
