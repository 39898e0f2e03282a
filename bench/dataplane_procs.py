"""Processes of the data-plane benchmark: the upstream, the sidecar, HAProxy, LiteLLM, simulators.

Every server under test runs as its own process (pinned with ``taskset`` where the benchmark
asks for one core) so that its CPU time and memory can be read from ``/proc`` alone, for the
process and its children: no psutil, nothing installed into TDN's venv. LiteLLM lives in a venv
of its own under ``~/.cache/tdn/bench-litellm``, created on first use, so ``make bench`` works on a
fresh machine and ``make test`` never sees it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LITELLM_VENV = Path.home() / ".cache" / "tdn" / "bench-litellm"
LITELLM_REQUIREMENT = "litellm[proxy]>=1.108.4,<1.108.10"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchSetupError(RuntimeError):
    """Something the benchmark needs is missing or did not start; the message says what."""


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(cpus: str | None, args: Sequence[str]) -> list[str]:
    """``args`` under ``taskset -c cpus`` (unchanged when cpus is None or taskset is absent)."""
    if cpus is None or shutil.which("taskset") is None:
        return list(args)
    return ["taskset", "-c", cpus, *args]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers, LiteLLM's uvicorn children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live descendants, from /proc/<pid>/stat."""
    total = 0
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which may itself hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def involuntary_switches(pid: int) -> int:
    """Times the threads of ``pid`` were preempted (``nonvoluntary_ctxt_switches``): a busy
    process preempted often is sharing its core, and pays for it in cache misses."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                total += int(line.split()[1])
    return total


def rw_syscalls(pid: int) -> int:
    """read- and write-family system calls ``pid`` made (``syscr + syscw`` in /proc/<pid>/io):
    a count of the work done per request that no amount of contention changes."""
    try:
        fields = dict(line.split(": ", 1) for line in
                      Path(f"/proc/{pid}/io").read_text().splitlines())
        return int(fields["syscr"]) + int(fields["syscw"])
    except (OSError, KeyError, ValueError):
        return 0


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, from /proc/<pid>/statm."""
    total = 0
    for p in process_tree(pid):
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


class Proc:
    """A server process with its output in a log file; stopped by SIGTERM, then SIGKILL."""

    def __init__(self, name: str, args: Sequence[str], log_dir: Path, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 stdout_to_null: bool = False) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        stdout = subprocess.DEVNULL if stdout_to_null else self._log
        self.popen = subprocess.Popen(self.args, stdout=stdout, stderr=self._log, env=full_env,
                                      cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self._log.close()


def wait_ready(proc: Proc, url: str, timeout: float, *, method: str = "GET",
               body: bytes | None = None, accept_status: int = 500) -> None:
    """Poll ``url`` until it answers below ``accept_status``; raise with the log tail if not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchSetupError(f"{proc.name} exited with {proc.popen.returncode}:\n"
                                  f"{proc.log_tail()}")
        request = urllib.request.Request(url, data=body, method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer sk-bench"})
        try:
            with urllib.request.urlopen(request, timeout=2.0) as response:
                if response.status < accept_status:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code < accept_status:
                return
            last = f"HTTP {exc.code}"
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchSetupError(f"{proc.name} not ready at {url} after {timeout:.0f}s ({last}):\n"
                          f"{proc.log_tail()}")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# --- LiteLLM, in a venv of its own ---------------------------------------------------------------


def litellm_binary() -> Path:
    return LITELLM_VENV / "bin" / "litellm"


def ensure_litellm(log: list[str]) -> Path:
    """The ``litellm`` proxy command, installing it into its own venv on first use.

    The venv is outside the repository and outside TDN's venv: LiteLLM brings dozens of
    packages (and pins of its own) that TDN's tests must never import.
    """
    binary = litellm_binary()
    if binary.exists():
        return binary
    log.append(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (first run only)")
    LITELLM_VENV.parent.mkdir(parents=True, exist_ok=True)
    base = shutil.which("python3.11") or shutil.which("python3") or sys.executable
    try:
        subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True,
                       capture_output=True, timeout=300)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q",
                        LITELLM_REQUIREMENT], check=True, capture_output=True, timeout=1800)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        stderr = getattr(exc, "stderr", b"") or b""
        raise BenchSetupError(f"cannot install LiteLLM: {stderr.decode(errors='replace')[-800:]}"
                              ) from None
    if not binary.exists():
        raise BenchSetupError(f"LiteLLM installed but {binary} is missing")
    return binary


def litellm_version() -> str:
    dist = sorted((LITELLM_VENV / "lib").glob("python*/site-packages/litellm-*.dist-info"))
    return dist[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if dist else "?"


def haproxy_version() -> str:
    try:
        out = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.stdout.splitlines()[0] if out.stdout else ""
    return first.split(" - ")[0].removeprefix("HAProxy version ").strip() or "?"


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def haproxy_available() -> bool:
    return shutil.which("haproxy") is not None
