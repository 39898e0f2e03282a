"""Helpers shared by the test suite: free ports, waiting on conditions with deadlines, and
starting real processes (TDN's own commands, etcd, Toxiproxy) on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

# Re-exported: the tests take their ports from here (one issuer for tests, drills, benchmarks).
from tdn.chaos.services import free_port  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
FIXTURES = REPO / "tests" / "fixtures"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               what: str = "condition") -> object:
    """Poll ``predicate`` until it returns a truthy value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the condition may not be checkable yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


async def async_wait_until(predicate: Callable[[], Awaitable[object]], timeout: float = 10.0,
                           interval: float = 0.02, what: str = "condition") -> object:
    """Async twin of :func:`wait_until`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = await predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """A child process whose output goes to a log file, stopped by SIGTERM (then SIGKILL)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                      env=full_env, cwd=cwd, start_new_session=True)

    @classmethod
    def tdn(cls, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
        """Start a ``tdn`` subcommand with this interpreter."""
        return cls([sys.executable, "-m", "tdn.cli", *args], log_path, env=env)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: the process dies without any chance to clean up (a crash)."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


def find_service_binary(names: list[str], env_var: str) -> str:
    """Locate etcd or Toxiproxy. Under CI a missing binary fails the test; elsewhere it skips."""
    explicit = os.environ.get(env_var)
    if explicit and Path(explicit).exists():
        return explicit
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    # Where .ci/run builds Toxiproxy (go install names the binary "server").
    if "toxiproxy-server" in names:
        built = sorted(Path.home().glob(".cache/tdn/toxiproxy-*/server"))
        if built:
            return str(built[-1])
    missing(f"{names[0]} not found (set {env_var} or run .ci/run to install it)")
    raise AssertionError("unreachable")


def missing(message: str) -> None:
    """Something a test needs is absent: under CI that is a failure, elsewhere a skip."""
    if os.environ.get("CI"):
        pytest.fail(message + "; CI is set, so this is a failure, not a skip")
    pytest.skip(message)
