"""``tdn proxy``: settings from flags and network files, refusals with clear messages, credentials
that never leak, and a graceful stop with exit code 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from dataplane_support import make_policy, sim_settings
from support import REPO, Proc, async_wait_until, free_port, wait_until

from tdn.dataplane import cli
from tdn.dataplane.credentials import Credentials, CredentialsError, env_name
from tdn.dataplane.policy_disk import PolicyDisk
from tdn.dataplane.sidecar import SidecarSettings
from tdn.sim.server import run_simulator


def resolve(argv: list[str],
            environ: dict[str, str] | None = None) -> tuple[SidecarSettings, Credentials]:
    return cli.settings_from_args(cli.build_parser().parse_args(argv), environ or {})


def test_network_file_gives_site_node_addresses_and_control_plane() -> None:
    settings, _ = resolve(["--config", str(REPO / "tdn/defaults/up.yaml")])
    assert settings == SidecarSettings(
        site="fra-office", node_id="sidecar-fra-1", listen="127.0.0.1:8080",
        admin="127.0.0.1:9901", controlplane=("127.0.0.1:50051",),
        state_dir=Path(".tdn/sidecar-sidecar-fra-1"))


def test_flags_override_the_network_file_and_control_planes_are_a_comma_list() -> None:
    settings, _ = resolve(["--config", str(REPO / "tdn/defaults/up.yaml"), "--site", "nyc-office",
                           "--listen", "127.0.0.1:18080", "--state-dir", "/tmp/x",
                           "--controlplane", "10.0.0.1:50051, 10.0.0.2:50051"])
    assert settings.site == "nyc-office"
    assert settings.listen == "127.0.0.1:18080"
    assert settings.controlplane == ("10.0.0.1:50051", "10.0.0.2:50051")
    assert settings.state_dir == Path("/tmp/x")


@pytest.mark.parametrize(("argv", "message"), [
    ([], "--site is required"),
    (["--site", "s", "--listen", "8080"], "--listen: '8080' is not host:port"),
    (["--site", "s", "--admin", "127.0.0.1:http"], "--admin: '127.0.0.1:http': port"),
    (["--site", "s", "--controlplane", "a:1,b"], "--controlplane: 'b' is not host:port"),
    (["--config", "/nonexistent/net.yaml"], "/nonexistent/net.yaml"),
])
def test_bad_flags_exit_2_with_a_clear_message(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_network_file_is_refused_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "net.yaml"
    bad.write_text("sites: []\nsidecar:\n  site: nowhere\n")
    assert cli.main(["--config", str(bad)]) == 2
    assert f"{bad}:3: site: unknown site 'nowhere'" in capsys.readouterr().err


def test_bad_credentials_file_is_refused_without_printing_any_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "creds.yaml"
    bad.write_text("eu-pool: sk-secret-1\nus-pool: [sk-secret-2\n")
    assert cli.main(["--site", "s", "--credentials", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML" in err
    assert "sk-secret" not in err


def test_credentials_come_from_the_file_first_then_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text("eu-pool: sk-file\n")
    creds = Credentials.from_file(path, environ={"TDN_CREDENTIAL_EU_POOL": "sk-env-eu",
                                                 "TDN_CREDENTIAL_ON_SITE_1": "sk-env-onsite"})
    assert creds.authorization("eu-pool") == "Bearer sk-file"
    assert creds.authorization("on-site.1") == "Bearer sk-env-onsite"
    assert creds.authorization("missing") is None
    assert "sk-" not in repr(creds)
    assert env_name("on-site.1") == "TDN_CREDENTIAL_ON_SITE_1"


def test_credentials_file_with_a_non_string_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text("eu-pool: 12345\n")
    with pytest.raises(CredentialsError, match="'eu-pool' must be a non-empty string"):
        Credentials.from_file(path, environ={})


def test_sigterm_stops_tdn_proxy_gracefully_with_exit_code_0(tmp_path: Path) -> None:
    admin = free_port()
    proc = Proc.tdn(["proxy", "--site", "fra-office", "--listen", f"127.0.0.1:{free_port()}",
                     "--admin", f"127.0.0.1:{admin}", "--state-dir", str(tmp_path / "state"),
                     "--controlplane", f"127.0.0.1:{free_port()}"], tmp_path / "proxy.log")
    try:
        def health() -> dict[str, str] | None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=1)
            except urllib.error.HTTPError as exc:  # 503 until a policy arrives
                body: dict[str, str] = json.loads(exc.read())
                return body
            return None

        assert wait_until(health, timeout=30, what="the admin server") == {
            "status": "no policy", "node_id": "sidecar-1", "site": "fra-office"}
        # It is trying the (absent) control plane before it is told to stop.
        wait_until(lambda: "policy stream to" in proc.log(), timeout=30,
                   what="a policy stream attempt")
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(20) == 0
        log = proc.log()
    finally:
        proc.stop()
    assert "Traceback" not in log


def _two_free_ports_in_a_row() -> int:
    """A port p such that p and p + 1 were both free a moment ago."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two consecutive free ports")


def test_workers_refuse_a_proxy_port_of_0_and_a_count_below_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--site", "s", "--workers", "2", "--listen", "127.0.0.1:0"]) == 2
    assert "--listen needs a fixed port" in capsys.readouterr().err
    assert cli.main(["--site", "s", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_worker_settings_share_the_proxy_port_and_state_but_not_node_id_or_admin_port() -> None:
    settings, _ = resolve(["--site", "s", "--listen", "127.0.0.1:8080", "--admin",
                           "127.0.0.1:9901", "--workers", "4", "--worker-index", "2"])
    assert (settings.listen, settings.admin, settings.node_id, settings.reuse_port) == (
        "127.0.0.1:8080", "127.0.0.1:9903", "sidecar-1-w2", True)
    assert settings.state_dir == Path(".tdn/sidecar-sidecar-1")


async def test_tdn_proxy_workers_share_one_port_and_each_routes_from_the_saved_policy(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    listen, admin = free_port(), _two_free_ports_in_a_row()
    async with run_simulator(sim_settings("edge-1")) as sim:
        PolicyDisk(state).save(make_policy("v1", {"edge-1": sim.url}, [("edge-1", 1.0)]))
        proc = Proc.tdn(["proxy", "--site", "fra-office", "--workers", "2",
                         "--listen", f"127.0.0.1:{listen}", "--admin", f"127.0.0.1:{admin}",
                         "--state-dir", str(state), "--controlplane", f"127.0.0.1:{free_port()}",
                         "--log-level", "WARNING"], tmp_path / "proxy.log")
        try:
            async with aiohttp.ClientSession() as s:
                async def healthy() -> list[str]:
                    ids = []
                    for port in (admin, admin + 1):
                        async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                            ids.append((await r.json())["node_id"])
                    return ids

                node_ids = await async_wait_until(healthy, timeout=30, what="both workers")
                assert node_ids == ["sidecar-1-w0", "sidecar-1-w1"]
                for _ in range(40):
                    # A new connection each time, so the kernel spreads them over the workers.
                    async with aiohttp.ClientSession() as fresh, fresh.post(
                            f"http://127.0.0.1:{listen}/v1/chat/completions",
                            json={"model": "llama-3.1-8b-instruct",
                                  "messages": [{"role": "user", "content": "hi"}]}) as r:
                        assert r.status == 200
                served = []
                for port in (admin, admin + 1):
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                        served.append('outcome="ok"' in await r.text())
            assert served == [True, True]
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 30) == 0
            log = proc.log()
        finally:
            proc.stop()
    assert "Traceback" not in log
