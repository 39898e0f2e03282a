"""End to end: `tdn up` brings the whole local network up, the official `openai` package talks to
the sidecar unchanged, and a killed factory does not cost the client a request."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from support import REPO, Proc, free_port, wait_until

pytestmark = pytest.mark.e2e

MODEL = "llama-3.1-8b-instruct"


@dataclass
class LocalTdn:
    proc: Proc
    state_dir: Path
    base_url: str
    admin_url: str
    http_url: str
    grpc_address: str

    def components(self) -> dict[str, dict[str, Any]]:
        data = json.loads((self.state_dir / "up.json").read_text())
        return {c["name"]: c for c in data["components"]}

    def sidecar_policy(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.admin_url}/policy", timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body


def _network_on_free_ports(path: Path) -> dict[str, Any]:
    """The embedded default network, every port moved to a free one."""
    net: dict[str, Any] = yaml.safe_load((REPO / "tdn" / "defaults" / "up.yaml").read_text())
    net["controlplane"] = {"grpc": f"127.0.0.1:{free_port()}",
                           "http": f"127.0.0.1:{free_port()}"}
    net["sidecar"]["listen"] = f"127.0.0.1:{free_port()}"
    net["sidecar"]["admin"] = f"127.0.0.1:{free_port()}"
    for factory in net["factories"]:
        factory["sim"]["port"] = free_port()
        # Fast tokens keep the suite quick; the timing model is the simulator's own tests' job.
        factory["sim"]["itl_ms"] = 2
    path.write_text(yaml.safe_dump(net, sort_keys=False))
    return net


@pytest.fixture(scope="module")
def local_tdn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTdn]:
    tmp = tmp_path_factory.mktemp("up")
    net = _network_on_free_ports(tmp / "network.yaml")
    state = tmp / "state"
    proc = Proc.tdn(["up", "--config", str(tmp / "network.yaml"), "--state-dir", str(state)],
                    tmp / "up.log")
    try:
        wait_until(lambda: "TDN is up." in proc.log() or not proc.alive(), timeout=90,
                   what="tdn up to print its banner")
        assert proc.alive(), f"tdn up exited:\n{proc.log()}"
        yield LocalTdn(
            proc=proc,
            state_dir=state,
            base_url=f"http://{net['sidecar']['listen']}/v1",
            admin_url=f"http://{net['sidecar']['admin']}",
            http_url=f"http://{net['controlplane']['http']}",
            grpc_address=net["controlplane"]["grpc"],
        )
    finally:
        code = proc.stop(timeout=20)
        log = proc.log_path.read_text(errors="replace")
        assert code == 0, f"tdn up did not stop cleanly (exit {code}):\n{log}"
        assert "tdn up: stopped." in log


def _client(tdn: LocalTdn) -> openai.OpenAI:
    return openai.OpenAI(base_url=tdn.base_url, api_key="tenant-key-not-a-secret",
                         max_retries=0, timeout=20)


def test_up_prints_where_to_point_an_openai_client(local_tdn: LocalTdn) -> None:
    banner = local_tdn.proc.log()
    assert f"OPENAI_BASE_URL={local_tdn.base_url}" in banner
    names = set(local_tdn.components())
    assert "controlplane" in names
    assert {n for n in names if n.startswith("sim/")} >= {
        "sim/center-se-1", "sim/edge-fra-1", "sim/onsite-fra-office"}


def test_non_streamed_chat_completion_through_the_sidecar_has_usage(local_tdn: LocalTdn) -> None:
    raw = _client(local_tdn).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello to TDN."}], max_tokens=12)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 12
    assert raw.headers["x-tdn-factory"]


def test_streamed_chat_completion_through_the_sidecar_ends_with_usage(local_tdn: LocalTdn) -> None:
    stream = _client(local_tdn).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Stream to me."}], max_tokens=10,
        stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert text
    assert finish in {"stop", "length"}
    assert usage is not None and usage.completion_tokens > 0


def test_bad_requests_get_openai_style_errors(local_tdn: LocalTdn) -> None:
    client = _client(local_tdn)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model",
                                       messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in not_found.value.message
    with pytest.raises(openai.BadRequestError) as missing:
        client.chat.completions.create(model=MODEL, messages=None)  # type: ignore[arg-type]
    assert missing.value.param == "messages" or "messages" in missing.value.message
    req = urllib.request.Request(f"{local_tdn.base_url}/chat/completions", data=b"{not json",
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("malformed JSON was accepted")
    except urllib.error.HTTPError as err:
        assert err.code == 400
        body = json.loads(err.read())
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["message"]


def test_killed_factory_is_failed_over_and_the_next_request_succeeds(local_tdn: LocalTdn) -> None:
    client = _client(local_tdn)
    first = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "who serves me?"}], max_tokens=5)
    victim = first.headers["x-tdn-factory"]

    # Make the victim the route's only primary (the others stay as backups), through the
    # operator CLI, so that the next request is sure to try it first.
    others = {f["factory_id"] for r in local_tdn.sidecar_policy()["routes"] if r["model"] == MODEL
              for f in [*r["primary"], *[w for level in r["backups"] for w in level]]} - {victim}
    for factory in sorted(others):
        out = subprocess.run([sys.executable, "-m", "tdn.cli", "factory", "cordon", factory,
                              "--controlplane", local_tdn.grpc_address],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert f"{factory}: cordoned" in out.stdout

    def victim_is_sole_primary() -> bool:
        route = _route(local_tdn.sidecar_policy(), MODEL)
        return [w["factory_id"] for w in route["primary"]] == [victim] and bool(route["backups"])

    wait_until(victim_is_sole_primary, timeout=15, what=f"{victim} as the only primary")
    version_before = local_tdn.sidecar_policy()["version"]

    # The machine dies: engine and agent at once. The control plane cannot know before the
    # telemetry TTL runs out, so the sidecar must fail over on its own.
    components = local_tdn.components()
    for name in (f"agent/{victim}", f"sim/{victim}"):
        os.kill(components[name]["pid"], signal.SIGKILL)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "still there?"}], max_tokens=5)
    assert raw.parse().choices[0].message.content
    assert local_tdn.sidecar_policy()["version"] == version_before
    assert raw.headers["x-tdn-factory"] != victim
    assert raw.headers["x-tdn-factory"] in others
    assert raw.headers["x-tdn-attempts"] == "2"

    # And the control plane notices (telemetry TTL): a policy without the dead factory.
    def victim_gone() -> bool:
        route = _route(local_tdn.sidecar_policy(), MODEL)
        return victim not in [w["factory_id"] for w in route["primary"]]

    wait_until(victim_gone, timeout=20, what="a policy without the dead factory")
    again = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "and now?"}], max_tokens=5)
    assert again.headers["x-tdn-factory"] != victim


def _route(policy: dict[str, Any], model: str) -> dict[str, Any]:
    return next(r for r in policy["routes"] if r["model"] == model
                and r.get("traffic_class", "default") == "default")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0; read its state to be sure.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
