"""The backing services a drill starts when it is not given them: a Toxiproxy server, and an
etcd for drills that need control-plane replicas. Each runs as a child process on free loopback
ports, logs to the drill's folder, and is stopped by its owner (``stop()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path


class ServiceError(RuntimeError):
    """A backing service could not be found or started."""


_ISSUED_PORTS: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that was free a moment ago and not handed out before.

    The kernel may give the port it just released to the next ``bind(0)``, so two calls in a row
    can return the same number (CI saw an etcd member's client and peer URL collide), and a
    server told to take port 0 may get a port chosen here for another that has not bound it
    yet. Ports already handed out by this process are never handed out again; drills, tests
    and benchmarks all take theirs from here, and give Toxiproxy one too.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED_PORTS:
            _ISSUED_PORTS.add(port)
            return port


def find_binary(names: list[str], env_var: str, extra: list[Path] | None = None) -> str:
    """The first of: ``$env_var``, ``names`` on PATH, ``extra`` paths; ServiceError if none."""
    explicit = os.environ.get(env_var)
    if explicit:
        if Path(explicit).exists():
            return explicit
        raise ServiceError(f"{env_var}={explicit} does not exist")
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for path in extra or []:
        if path.exists():
            return str(path)
    raise ServiceError(f"{names[0]} not found: put it on PATH or set {env_var}")


def toxiproxy_binary() -> str:
    # .ci/run builds Toxiproxy with `go install`, which names the binary "server".
    built = sorted(Path.home().glob(".cache/tdn/toxiproxy-*/server"))
    return find_binary(["toxiproxy-server", "toxiproxy"], "TDN_TOXIPROXY_BIN", built[::-1])


def etcd_binary() -> str:
    return find_binary(["etcd"], "TDN_ETCD_BIN")


@dataclass
class ServiceProcess:
    """A child process in its own session, so that a Ctrl-C reaches only the drill runner."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, args: list[str], log: Path) -> ServiceProcess:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(name, popen, log)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def tail(self, size: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


async def _wait(proc: ServiceProcess, url: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise ServiceError(f"{proc.name} exited during start-up:\n{proc.tail()}")
        if await asyncio.to_thread(_get_ok, url):
            return
        await asyncio.sleep(0.05)
    proc.stop()
    raise ServiceError(f"{proc.name} did not answer {url} within {within_s:.0f}s")


@dataclass
class ToxiproxyService:
    process: ServiceProcess
    port: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.stop()


async def start_toxiproxy(folder: Path, attempts: int = 3) -> ToxiproxyService:
    """A Toxiproxy server on a free port; a port taken meanwhile is retried on another."""
    binary = toxiproxy_binary()
    last: ServiceError | None = None
    for _ in range(attempts):
        port = free_port()
        proc = ServiceProcess.start("toxiproxy", [binary, "-host", "127.0.0.1", "-port",
                                                  str(port)], folder / f"toxiproxy-{port}.log")
        try:
            await _wait(proc, f"http://127.0.0.1:{port}/version", 10.0)
        except ServiceError as exc:
            proc.stop()
            last = exc
            continue
        return ToxiproxyService(proc, port)
    raise ServiceError(f"toxiproxy did not start in {attempts} attempts: {last}")


@dataclass
class EtcdService:
    process: ServiceProcess
    client_port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def stop(self) -> None:
        self.process.stop()


async def start_etcd(folder: Path, attempts: int = 3) -> EtcdService:
    """A single-member etcd with a fresh data folder, on free ports."""
    binary = etcd_binary()
    last: ServiceError | None = None
    for _ in range(attempts):
        client, peer = free_port(), free_port()
        data = folder / f"etcd-{uuid.uuid4().hex[:8]}"
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        args = [binary, "--name", "drill", "--data-dir", str(data),
                "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"drill={peer_url}",
                "--initial-cluster-token", f"tdn-drill-{uuid.uuid4().hex[:8]}",
                "--initial-cluster-state", "new",
                # Short raft timings allow short leases, so that a killed leader's lease runs
                # out within a drill.
                "--heartbeat-interval", "50", "--election-timeout", "500",
                "--logger", "zap", "--log-outputs", "stderr"]
        proc = ServiceProcess.start("etcd", args, folder / f"etcd-{client}.log")
        try:
            await _wait(proc, f"{client_url}/health", 20.0)
        except ServiceError as exc:
            proc.stop()
            last = exc
            continue
        return EtcdService(proc, client)
    raise ServiceError(f"etcd did not start in {attempts} attempts: {last}")
