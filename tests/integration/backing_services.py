"""Real etcd and Toxiproxy processes for tests: started on loopback with free ports and
temporary data folders, waited on until they answer, and stopped by their owner.

The fixtures in this folder's conftest.py use these; tests elsewhere (end to end, HA drills)
import them as ``integration.backing_services`` to build clusters of their own.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from support import Proc, find_service_binary, free_port

ETCD_START_TIMEOUT = 20.0


def _wait_for_process(proc: Proc | None, ready: Callable[[], bool], timeout: float,
                      what: str) -> None:
    """Poll ``ready`` until it holds; fail at once (with the log) if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is None or not proc.alive():
            log = proc.log()[-3000:] if proc is not None else ""
            raise AssertionError(f"process exited while waiting for {what}:\n{log}")
        if ready():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=1.0) as response:
        return json.loads(response.read())


def etcd_binary() -> str:
    return find_service_binary(["etcd"], "TDN_ETCD_BIN")


def toxiproxy_binary() -> str:
    return find_service_binary(["toxiproxy-server", "toxiproxy"], "TDN_TOXIPROXY_BIN")


@dataclass
class EtcdMember:
    """One etcd process. ``start()`` again after ``stop()``/``kill()`` restarts it on its data."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    initial_cluster: str
    cluster_token: str
    binary: str
    heartbeat_ms: int = 50
    election_ms: int = 500
    proc: Proc | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """``host:port`` of the client API, as the etcd store URL lists it."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self) -> None:
        args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            # Short raft timings make elections and lease expiry fast enough for tests: etcd's
            # minimum lease TTL is 1.5 election timeouts, so 500 ms allows a 1 s TTL.
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.proc = Proc(args, self.data_dir.parent / f"{self.name}.log")

    def healthy(self) -> bool:
        if self.proc is None or not self.proc.alive():
            return False
        try:
            body = _http_json(f"{self.client_url}/health")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"

    def wait_healthy(self, timeout: float = ETCD_START_TIMEOUT) -> None:
        _wait_for_process(self.proc, self.healthy, timeout, f"etcd {self.name} to report healthy")

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        """SIGKILL: what a crashed member looks like to the others."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.stop()


@dataclass
class EtcdCluster:
    """Several etcd members forming one cluster; ``url`` is the TDN store URL for all of them."""

    members: list[EtcdMember]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def wait_healthy(self, timeout: float = ETCD_START_TIMEOUT) -> None:
        for member in self.members:
            member.wait_healthy(timeout)

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def _new_members(root: Path, n: int, heartbeat_ms: int, election_ms: int) -> list[EtcdMember]:
    binary = etcd_binary()
    token = f"tdn-test-{uuid.uuid4().hex[:12]}"
    ports = [(free_port(), free_port()) for _ in range(n)]
    names = [f"n{i}" for i in range(n)]
    initial = ",".join(
        f"{name}=http://127.0.0.1:{peer}" for name, (_, peer) in zip(names, ports, strict=True)
    )
    return [
        EtcdMember(name, root / name, client, peer, initial, token, binary, heartbeat_ms,
                   election_ms)
        for name, (client, peer) in zip(names, ports, strict=True)
    ]


def start_etcd_cluster(tmp_path: Path, n: int = 3, *, heartbeat_ms: int = 100,
                       election_ms: int = 1000, attempts: int = 3) -> EtcdCluster:
    """Start ``n`` etcd members as one cluster under ``tmp_path``; wait until all are healthy.

    The caller stops it (``cluster.stop()``). Default raft timings are etcd's own, which are
    sturdier than the single-member fixture's on a busy CI machine. Like ``start_etcd``, a
    cluster with a member that dies during startup is started again on new ports.
    """
    last_error: AssertionError | None = None
    for _ in range(attempts):
        root = tmp_path / f"etcd-cluster-{uuid.uuid4().hex[:8]}"
        cluster = EtcdCluster(_new_members(root, n, heartbeat_ms, election_ms))
        for member in cluster.members:
            member.start()
        try:
            cluster.wait_healthy()
        except AssertionError as exc:  # a port taken between choosing and binding: new ports
            cluster.stop()
            last_error = exc
            continue
        except BaseException:
            cluster.stop()
            raise
        return cluster
    raise AssertionError(f"etcd cluster did not start in {attempts} attempts") from last_error


def start_etcd(tmp_path: Path, attempts: int = 3) -> EtcdMember:
    """Start one etcd member under ``tmp_path`` and wait until it is healthy.

    A free port can be taken between choosing it and etcd binding it, so a member that dies
    during startup is retried on new ports.
    """
    last_error: AssertionError | None = None
    for _ in range(attempts):
        root = tmp_path / f"etcd-{uuid.uuid4().hex[:8]}"
        (member,) = _new_members(root, 1, heartbeat_ms=50, election_ms=500)
        member.start()
        try:
            member.wait_healthy()
        except AssertionError as exc:
            member.stop()
            last_error = exc
            continue
        return member
    raise AssertionError(f"etcd did not start in {attempts} attempts") from last_error


@dataclass
class ToxiproxyServer:
    """A Toxiproxy server process; ``api_url`` is its HTTP API base."""

    port: int
    proc: Proc

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.stop()


def start_toxiproxy(tmp_path: Path, attempts: int = 3) -> ToxiproxyServer:
    """Start Toxiproxy's server on a free loopback port and wait until GET /version answers."""
    binary = toxiproxy_binary()
    last_error: AssertionError | None = None
    for attempt in range(attempts):
        port = free_port()
        proc = Proc([binary, "-host", "127.0.0.1", "-port", str(port)],
                    tmp_path / f"toxiproxy-{port}-{attempt}.log")
        server = ToxiproxyServer(port, proc)

        def answers(server: ToxiproxyServer = server) -> bool:
            try:
                body = _http_json(f"{server.api_url}/version")
            except (OSError, ValueError):
                return False
            return isinstance(body, dict) and "version" in body

        try:
            _wait_for_process(proc, answers, 10.0, "toxiproxy to answer GET /version")
        except AssertionError as exc:
            proc.stop()
            last_error = exc
            continue
        return server
    raise AssertionError(f"toxiproxy did not start in {attempts} attempts") from last_error
