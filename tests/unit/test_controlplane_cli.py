"""``tdn controlplane`` as an operator runs it: a real process, its flags, signals and errors."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

from support import Proc, free_port, wait_until


def healthz(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
        body: dict[str, object] = json.loads(resp.read())
        return body


def test_controlplane_serves_until_sigterm_then_exits_zero(tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    proc = Proc.tdn(["controlplane", "--grpc", f"127.0.0.1:{grpc_port}",
                     "--http", f"127.0.0.1:{http_port}", "--state-dir", str(tmp_path / "state"),
                     "--replica-id", "cli-test"], tmp_path / "controlplane.log")
    try:
        wait_until(lambda: healthz(http_port).get("status") == "ok", timeout=20,
                   what="the control plane to answer /healthz")
        # /healthz answers a moment before start-up finishes and the line is logged.
        wait_until(lambda: f"grpc 127.0.0.1:{grpc_port}" in proc.log(), timeout=10,
                   what="the start-up log line")
        assert healthz(http_port)["replica_id"] == "cli-test"
    finally:
        code = proc.stop()
    assert code == 0, proc.log()
    assert (tmp_path / "state").is_dir()


def run_tdn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tdn.cli", "controlplane", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_bad_network_file_exits_two_naming_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "network.yaml"
    bad.write_text("sites:\n  - id: fra\n    region: eu-west\n    compliance_zone: eu\n"
                   "    colour: blue\n")
    done = run_tdn("--config", str(bad), "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2
    assert f"{bad}:5: sites[0].colour: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_network_file_or_a_bad_address_exits_two_with_one_line(
        tmp_path: Path) -> None:
    missing = run_tdn("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad_address = run_tdn("--grpc", "no-port-here", "--state-dir", str(tmp_path / "state"))
    assert bad_address.returncode == 2
    assert "grpc address 'no-port-here' is not host:port" in bad_address.stderr
