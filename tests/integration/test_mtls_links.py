"""Mutual TLS on the control plane's gRPC links, with test CAs generated here: a client without
a certificate (or with one from another CA) is refused, one with a certificate works — for raw
Telemetry and Discovery streams, and for the real agent, sidecar and operator CLI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from controlplane_support import EU_1, Sidecar, report, running
from ha_support import (
    NETWORK_YAML,
    SITE,
    agents,
    sidecar,
    simulators,
    wait_until_routed,
    write_network,
)
from pki_support import Pki, make_pki
from support import Proc, async_wait_until, free_port

from tdn import operator_cli
from tdn.agent.settings import AgentSettings, MtlsFiles
from tdn.config import parse_network
from tdn.tls import ClientTls, ServerTls
from tdn.v1 import telemetry_pb2, telemetry_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    yield make_pki(tmp_path_factory.mktemp("pki"))


def server_credentials(pki: Pki) -> grpc.ServerCredentials:
    return ServerTls(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca).credentials()


def client(pki: Pki, *, cert: Path | None, key: Path | None) -> grpc.ChannelCredentials:
    return ClientTls(ca=pki.ca, cert=cert, key=key).credentials()


# Every test channel gets its own connection: gRPC would otherwise share one between channels
# to the same target, and a refused handshake would be blamed on the next client.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def telemetry_works(target: str, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(target, credentials, options=OWN_CONNECTION) as ch:
        call = telemetry_pb2_grpc.TelemetryStub(ch).Report()
        await call.write(report(EU_1))
        async with asyncio.timeout(10):
            ack = await call.read()
        call.cancel()
        return isinstance(ack, telemetry_pb2.TelemetryAck) and ack.accepted


async def discovery_works(target: str, credentials: grpc.ChannelCredentials) -> bool:
    async with grpc.aio.secure_channel(target, credentials, options=OWN_CONNECTION) as ch:
        sidecar = Sidecar(ch, "sc-tls", "fra")
        await sidecar.subscribe()
        response = await sidecar.next()
        sidecar.close()
        return response.policy.site == "fra"


Check = Callable[[str, grpc.ChannelCredentials], Awaitable[bool]]


@pytest.mark.parametrize("rpc", [telemetry_works, discovery_works], ids=["telemetry", "discovery"])
async def test_only_clients_with_a_certificate_from_the_trusted_ca_get_through(
        tmp_path: Path, pki: Pki, rpc: Check) -> None:
    check = rpc
    async with running(tmp_path, server_credentials=server_credentials(pki)) as cp:
        if check is discovery_works:
            # Something to send: a factory reports (over mutual TLS as well).
            good = client(pki, cert=pki.client_cert, key=pki.client_key)
            assert await telemetry_works(cp.grpc_target, good)
        refused = [client(pki, cert=None, key=None),
                   client(pki, cert=pki.stranger_cert, key=pki.stranger_key)]
        for credentials in refused:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await check(cp.grpc_target, credentials)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plain text is not spoken at all.
        async with grpc.aio.insecure_channel(cp.grpc_target, options=OWN_CONNECTION) as ch:
            call = telemetry_pb2_grpc.TelemetryStub(ch).Report()
            with pytest.raises(grpc.aio.AioRpcError):
                await call.write(report(EU_1))
                await call.read()
        assert await check(cp.grpc_target,
                           client(pki, cert=pki.client_cert, key=pki.client_key))


async def test_the_real_agent_sidecar_and_cli_work_over_mutual_tls(
        tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]) -> None:
    def with_tls(settings: AgentSettings) -> AgentSettings:
        return AgentSettings(**{**{f: getattr(settings, f) for f in settings.__slots__},
                                "tls": MtlsFiles(pki.ca, pki.client_cert, pki.client_key)})

    async with running(tmp_path, server_credentials=server_credentials(pki),
                       network=parse_network(NETWORK_YAML, "ha-network")) as cp:
        target = cp.grpc_target
        credentials = client(pki, cert=pki.client_cert, key=pki.client_key)
        async with simulators() as sims, agents(sims, [target], settings=with_tls), \
                sidecar(tmp_path, [target], channel_credentials=credentials) as proxy:
            await wait_until_routed(proxy, lambda ids: ids == {"eu-1", "eu-2", "eu-3"},
                                    "a policy pushed over mutual TLS")
            assert proxy.policy is not None and proxy.policy.site == SITE
        tls_flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                     "--tls-key", str(pki.client_key)]
        assert await asyncio.to_thread(
            operator_cli.main, ["status", "--controlplane", target, *tls_flags]) == 0
        assert "factories: 3/3 healthy" in capsys.readouterr().out
        assert await asyncio.to_thread(
            operator_cli.main, ["status", "--controlplane", target, "--tls-ca", str(pki.ca),
                                "--timeout", "3"]) == 1
        assert "UNAVAILABLE" in capsys.readouterr().err



async def test_every_command_takes_its_tls_flags_and_the_operator_token(
        tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The flags as an operator types them: ``tdn controlplane``, ``tdn agent`` and ``tdn proxy``
    as processes, ``tdn status`` with the token from the environment."""
    token_file = tmp_path / "operator-token"
    token_file.write_text("s3cr3t-operator-token\n")
    network = write_network(tmp_path)
    grpc_port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    client_flags = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                    "--tls-key", str(pki.client_key)]
    procs = [Proc.tdn(["controlplane", "--grpc", target, "--http", f"127.0.0.1:{http_port}",
                       "--config", str(network), "--state-dir", str(tmp_path / "cp"),
                       "--report-interval", "0.5", "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
                       "--operator-token-file", str(token_file)], tmp_path / "cp.log")]
    try:
        async with simulators(("eu-1",)) as sims:
            sim = sims["eu-1"]
            procs.append(Proc.tdn(["agent", "--engine-url", sim.base_url, "--controlplane",
                                   target, "--id", "eu-1", "--tier", "edge", "--region",
                                   "eu-west", "--compliance-zone", "eu", "--price-input", "0.1",
                                   "--price-output", "0.4", *client_flags],
                                  tmp_path / "agent.log"))
            procs.append(Proc.tdn(["proxy", "--site", SITE, "--node-id", "sc-cli",
                                   "--listen", f"127.0.0.1:{free_port()}",
                                   "--admin", f"127.0.0.1:{free_port()}",
                                   "--controlplane", target,
                                   "--state-dir", str(tmp_path / "sc"), *client_flags],
                                  tmp_path / "proxy.log"))
            monkeypatch.setenv("TDN_OPERATOR_TOKEN", "s3cr3t-operator-token")
            status_args = ["status", "--controlplane", target, "--json", *client_flags]

            async def converged() -> bool:
                for proc in procs:
                    assert proc.alive(), proc.log()[-2000:]
                if await asyncio.to_thread(operator_cli.main, status_args) != 0:
                    return False
                answer = json.loads(capsys.readouterr().out)
                return (answer.get("factories_healthy") == 1 and any(
                    s.get("connected") and s.get("acked_version")
                    for s in answer.get("sidecars", [])))

            await async_wait_until(converged, timeout=30, interval=0.2,
                                   what="agent and sidecar over mutual TLS")
            monkeypatch.delenv("TDN_OPERATOR_TOKEN")
            assert await asyncio.to_thread(operator_cli.main, status_args) == 1
            assert "UNAUTHENTICATED" in capsys.readouterr().err
    finally:
        for proc in reversed(procs):
            proc.stop()
    logs = "".join(proc.log() for proc in procs)
    assert "s3cr3t-operator-token" not in logs
    assert "PRIVATE KEY" not in logs
