"""``tdn factory-sim`` on the command line: flags, network files, start-up line, clean stop."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import Proc, free_port, wait_until

from tdn.sim.cli import _parser, main, settings_from_args
from tdn.sim.faults import FaultMode
from tdn.sim.settings import DEFAULT_MODEL

NETWORK = """
sites:
  - {id: office, region: eu-west, compliance_zone: eu}
factories:
  - id: edge-a
    tier: edge
    region: eu-west
    compliance_zone: eu
    models: [model-a, model-b]
    price: {input_per_mtok: 0.3, output_per_mtok: 1.2}
    sim: {port: PORT, max_concurrency: 3, prefill_tokens_per_s: 5000, itl_ms: 0, base_latency_ms: 2}
  - id: onsite-a
    tier: on-site
    region: eu-west
    site: office
    compliance_zone: on-site:office
    supports_prefill: true
    models: [model-a]
    price: {input_per_mtok: 0.1, output_per_mtok: 0.2}
    endpoint: http://127.0.0.1:8199/v1
"""


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def test_flags_become_settings() -> None:
    args = _parser().parse_args([
        "--port", "0", "--id", "f1", "--models", "a, b", "--max-concurrency", "3",
        "--prefill-tokens-per-s", "100", "--itl-ms", "5", "--base-latency-ms", "7",
        "--kv-capacity-tokens", "999", "--max-model-len", "512", "--no-prefill",
        "--fault", "error:status=429", "--seed", "4"])
    s = settings_from_args(args)
    assert (s.id, s.models, s.port, s.max_concurrency) == ("f1", ("a", "b"), 0, 3)
    assert (s.prefill_tokens_per_s, s.itl_ms, s.base_latency_ms) == (100.0, 5.0, 7.0)
    assert (s.kv_capacity_tokens, s.max_model_len, s.supports_prefill, s.seed) == (
        999, 512, False, 4)
    assert (s.fault.mode, s.fault.status) == (FaultMode.ERROR, 429)


def test_defaults_serve_the_default_model_with_prefill() -> None:
    s = settings_from_args(_parser().parse_args([]))
    assert s.models == (DEFAULT_MODEL,)
    assert s.supports_prefill
    assert s.fault.mode is FaultMode.NONE


def test_network_file_supplies_the_factory_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace("PORT", "8123"))
    s = settings_from_args(_parser().parse_args(["--config", str(path), "--factory", "edge-a"]))
    assert (s.id, s.models, s.port, s.max_concurrency) == ("edge-a", ("model-a", "model-b"),
                                                           8123, 3)
    assert (s.prefill_tokens_per_s, s.itl_ms, s.base_latency_ms) == (5000.0, 0.0, 2.0)
    assert not s.supports_prefill  # the file does not say this factory supports prefill
    onsite = settings_from_args(_parser().parse_args(
        ["--config", str(path), "--factory", "onsite-a", "--port", "9000", "--itl-ms", "1"]))
    assert (onsite.port, onsite.itl_ms, onsite.supports_prefill) == (9000, 1.0, True)


@pytest.mark.parametrize(("argv", "message"), [
    (["--fault", "meltdown"], "unknown fault mode"),
    (["--fault", "error:status=200"], "400-599"),
    (["--max-concurrency", "0"], "max_concurrency"),
    (["--itl-ms", "-1"], "itl_ms"),
    (["--models", ","], "models"),
    (["--config", "net.yaml"], "--config needs --factory"),
    (["--config", "/nonexistent/net.yaml", "--factory", "x"], "No such file"),
])
def test_bad_flags_exit_2_with_a_clear_message(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tdn factory-sim: error:")
    assert message in err


def test_factory_without_config_comes_from_the_default_network() -> None:
    s = settings_from_args(_parser().parse_args(["--factory", "onsite-fra-office"]))
    assert (s.id, s.port, s.max_concurrency, s.supports_prefill) == (
        "onsite-fra-office", 8105, 4, True)


def test_unknown_factory_names_the_ones_the_file_has(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace("PORT", "8123"))
    assert main(["--config", str(path), "--factory", "nope"]) == 2
    assert "edge-a, onsite-a" in capsys.readouterr().err


def test_invalid_network_file_is_reported_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace("PORT", "'not-a-port'"))
    assert main(["--config", str(path), "--factory", "edge-a"]) == 2
    assert f"{path}:" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_subprocess_serves_logs_where_it_listens_and_stops_cleanly_on_signal(
        tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    proc = Proc.tdn(["factory-sim", "--port", str(port), "--id", "cli-sim",
                     "--models", "m1,m2", "--itl-ms", "0"], tmp_path / "sim.log")
    try:
        wait_until(lambda: healthy(port), what="factory-sim to answer /health")
        models = get_json(f"http://127.0.0.1:{port}/v1/models")
        assert [m["id"] for m in models["data"]] == ["m1", "m2"]  # type: ignore[index]
        assert f"listening on http://127.0.0.1:{port}" in proc.log()
        proc.popen.send_signal(sig)
        assert proc.popen.wait(10) == 0
    finally:
        proc.stop()


def test_subprocess_from_network_file_starts_with_its_fault(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "net.yaml"
    path.write_text(NETWORK.replace("PORT", str(port)))
    proc = Proc.tdn(["factory-sim", "--config", str(path), "--factory", "edge-a",
                     "--fault", "error:status=503,retry_after=2"], tmp_path / "sim.log")
    try:
        wait_until(lambda: healthy(port), what="factory-sim to answer /health")
        assert get_json(f"http://127.0.0.1:{port}/admin/fault") == {
            "mode": "error", "status": 503, "retry_after": 2.0, "probability": 1.0}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
            data=json.dumps({"model": "model-b", "messages": [{"role": "user",
                                                                "content": "hi"}]}).encode(),
            headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=2)
        with caught.value:
            assert caught.value.code == 503
            assert caught.value.headers["Retry-After"] == "2"
        assert proc.stop() == 0
    finally:
        proc.stop()


def test_port_in_use_exits_1_with_a_message(tmp_path: Path) -> None:
    port = free_port()
    first = Proc.tdn(["factory-sim", "--port", str(port)], tmp_path / "first.log")
    try:
        wait_until(lambda: healthy(port), what="the first simulator to start")
        second = Proc.tdn(["factory-sim", "--port", str(port)], tmp_path / "second.log")
        assert second.popen.wait(10) == 1
        assert "cannot listen" in second.log()
        second.stop()
    finally:
        first.stop()
