"""``tdn proxy --workers N``: N sidecar processes sharing one proxy port, to use N cores.

One Python process serves one core. With ``--workers N`` the ``tdn proxy`` process becomes a small
supervisor that starts N worker processes (``tdn proxy ... --worker-index i``), each a complete
sidecar listening on the same proxy address with ``SO_REUSEPORT``, so the kernel spreads incoming
connections across them. What each worker has of its own, and why:

* **its own policy client** and node id ``<node-id>-w<i>``: each is a sidecar the control plane
  can see converge, and no worker depends on another to keep routing;
* **the shared state directory**: the last good policy is written atomically (temp file and
  rename), so workers saving the same version concurrently are safe, and a restarted worker
  routes from it at once;
* **its own admin port**: ``--admin`` port + i (a port of 0 stays 0: any free port), so that
  ``/metrics`` and ``/healthz`` describe one process each; scrape all N;
* its own health, retry budget and meter (usage reports carry the worker's node id, so report
  ids stay unique).

The supervisor forwards SIGTERM and SIGINT to every worker and exits 0 once they have stopped.
A worker that dies on its own is restarted, unless it dies within :data:`MIN_UPTIME_S` of
starting (a bad flag, a port in use): then the supervisor stops the others and exits 1 rather
than restart it in a loop.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

log = logging.getLogger(__name__)

MIN_UPTIME_S = 5.0
POLL_S = 0.2
STOP_GRACE_S = 30.0


def worker_node_id(node_id: str, index: int) -> str:
    return f"{node_id}-w{index}"


def worker_admin(admin: str, index: int) -> str:
    host, _, port = admin.rpartition(":")
    return admin if int(port) == 0 else f"{host}:{int(port) + index}"


class _Worker:
    def __init__(self, argv: Sequence[str], index: int) -> None:
        self.argv = [*argv, "--worker-index", str(index)]
        self.index = index
        self.started = 0.0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        # The workers inherit stdout and stderr: access lines are whole lines, written at once.
        self.process = subprocess.Popen([sys.executable, "-m", "tdn.cli", "proxy", *self.argv])

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)


def run_workers(argv: Sequence[str], count: int) -> int:
    """Supervise ``count`` workers of ``tdn proxy <argv>`` until told to stop; the exit code."""
    workers = [_Worker(argv, i) for i in range(count)]
    stopping: list[int] = []

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.append(sig)
        for worker in workers:
            worker.signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.start()
    log.info("started %d workers sharing the proxy port", count)
    code = 0
    while not stopping:
        time.sleep(POLL_S)
        for worker in workers:
            assert worker.process is not None
            exit_code = worker.process.poll()
            if exit_code is None or stopping:
                continue
            if time.monotonic() - worker.started < MIN_UPTIME_S:
                log.error("worker %d exited with %s right after starting; stopping all",
                          worker.index, exit_code)
                code = 1
                forward(signal.SIGTERM, None)
                break
            log.warning("worker %d exited with %s; restarting it", worker.index, exit_code)
            worker.start()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        assert worker.process is not None
        try:
            worker.process.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", worker.index)
            worker.process.kill()
            worker.process.wait()
    return code
