"""The operator token (operator.proto): every Operator call needs the bearer token when one is
configured, the other services do not, and the token is never printed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import grpc
import pytest
from controlplane_support import EU_1, Agent, channel, operator, report_all, running

from tdn import operator_cli
from tdn.controlplane.http_auth import COOKIE
from tdn.controlplane.operator_auth import TokenFileError, read_token_file
from tdn.v1 import operator_pb2

TOKEN = "tdn-test-token-8f3a1c"


async def test_operator_calls_without_the_right_token_are_unauthenticated(
        tmp_path: Path) -> None:
    async with running(tmp_path, operator_token=TOKEN) as cp, channel(cp) as ch:
        stub = operator(ch)
        for metadata in ((), (("authorization", "Bearer wrong"),),
                         (("authorization", TOKEN),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetStatus(operator_pb2.GetStatusRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in (err.value.details() or "")
        status = await stub.GetStatus(operator_pb2.GetStatusRequest(),
                                      metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert status.replica_id == "test-replica"
        # Factories and sidecars are machines authenticated by mutual TLS, not operators.
        await report_all(Agent(ch), (EU_1,))


async def test_the_cli_sends_the_token_from_the_environment_and_never_prints_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with running(tmp_path, operator_token=TOKEN) as cp:
        args = ["status", "--controlplane", cp.grpc_target]
        monkeypatch.delenv("TDN_OPERATOR_TOKEN", raising=False)
        assert await asyncio.to_thread(operator_cli.main, args) == 1
        refused = capsys.readouterr()
        assert "UNAUTHENTICATED" in refused.err

        monkeypatch.setenv("TDN_OPERATOR_TOKEN", TOKEN)
        assert await asyncio.to_thread(operator_cli.main, args) == 0
        allowed = capsys.readouterr()
        assert "replica test-replica" in allowed.out
        assert TOKEN not in refused.out + refused.err + allowed.out + allowed.err


async def test_the_cli_moves_on_to_the_next_control_plane_when_one_is_down(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support import free_port

    async with running(tmp_path) as cp:
        args = ["status", "--controlplane", f"127.0.0.1:{free_port()},{cp.grpc_target}",
                "--timeout", "2"]
        assert await asyncio.to_thread(operator_cli.main, args) == 0
        assert "replica test-replica" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "complaint"), [
    ("", "is empty"), ("two words\n", "contains whitespace")])
def test_a_token_file_that_would_disable_or_garble_the_token_is_refused(
        tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=complaint):
        read_token_file(path)
    with pytest.raises(TokenFileError, match="cannot read"):
        read_token_file(tmp_path / "missing")
    path.write_text(f"  {TOKEN}\n")
    assert read_token_file(path) == TOKEN


async def test_the_http_api_and_ui_need_the_token_but_probes_and_metrics_do_not(
        tmp_path: Path) -> None:
    # unsafe: aiohttp's jar otherwise keeps no cookie for an IP address such as 127.0.0.1.
    async with (running(tmp_path, operator_token=TOKEN) as cp,
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http):
        base = f"http://127.0.0.1:{cp.http_port}"
        for path in ("/healthz", "/metrics"):
            async with http.get(base + path) as resp:
                assert resp.status == 200, path
        for path in ("/api/status", "/api/plan", "/api/topology", "/api/timeline"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.get(base + path, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    body = await resp.json()
                    assert body["error"]["type"] == "unauthenticated"
                    assert TOKEN not in json.dumps(body)
            async with http.get(base + path,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 200, path
        # The page sends a browser to the login form, which sets a session cookie that is not
        # the token, and then lets it through.
        async with http.get(base + "/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        async with http.post(base + "/login", data={"token": "wrong", "next": "/"},
                             allow_redirects=False) as resp:
            assert resp.status == 401 and "set-cookie" not in resp.headers
        async with http.post(base + "/login",
                             data={"token": TOKEN, "next": "https://evil.example/"},
                             allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
            cookie = resp.cookies[COOKIE]
            assert cookie.value and TOKEN not in cookie.value and cookie["httponly"]
        async with http.get(base + "/", allow_redirects=False) as resp:
            assert resp.status == 200 and "/static/app.js" in await resp.text()
        async with http.get(base + "/api/status") as resp:
            assert resp.status == 200


async def test_without_a_token_the_http_side_is_open(tmp_path: Path) -> None:
    async with (running(tmp_path) as cp, aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{cp.http_port}/api/status") as resp):
        assert resp.status == 200
