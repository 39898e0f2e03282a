"""``tdn up``: a complete local TDN from one command.

Starts, as separate processes so that each can die alone as in production: a control plane on
the embedded store, one simulated factory and one agent per factory of the network file, and
the sidecars. It waits until the sidecar holds a policy, prints what runs where and where to
point an OpenAI client, and on Ctrl-C (or SIGTERM) stops everything, sidecar first.

It also writes ``<state-dir>/up.json`` (every component's pid, address and log file), so that
operators and drills can find, watch and kill single components.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from tdn.config import ConfigError, NetworkConfig, load_network


@dataclass(frozen=True, slots=True)
class Component:
    """One process ``tdn up`` runs."""

    name: str
    kind: str  # controlplane | factory-sim | agent | proxy
    args: tuple[str, ...]
    address: str = ""
    log: str = ""


def plan_components(net: NetworkConfig, config_path: str, state_dir: Path) -> list[Component]:
    """The processes to start for a network, in start order (stop order is the reverse)."""
    cfg = ["--config", config_path]
    logs = state_dir / "logs"
    comps = [
        Component(
            name="controlplane",
            kind="controlplane",
            args=("controlplane", "--grpc", net.grpc_address, "--http", net.http_address,
                  "--state-dir", str(state_dir / "controlplane"), *cfg),
            address=f"grpc {net.grpc_address}, http http://{net.http_address}",
            log=str(logs / "controlplane.log"),
        )
    ]
    for fc in net.factories:
        if fc.sim is None:
            continue  # a real engine someone else runs; `tdn agent` is still started for it
        sim = fc.sim
        comps.append(Component(
            name=f"sim/{fc.spec.id}",
            kind="factory-sim",
            args=("factory-sim", "--port", str(sim.port), "--id", fc.spec.id,
                  "--models", ",".join(fc.spec.models),
                  "--max-concurrency", str(sim.max_concurrency),
                  "--prefill-tokens-per-s", str(sim.prefill_tokens_per_s),
                  "--itl-ms", str(sim.itl_ms), "--base-latency-ms", str(sim.base_latency_ms),
                  *(() if fc.spec.supports_prefill else ("--no-prefill",))),
            address=fc.spec.endpoint,
            log=str(logs / f"sim-{fc.spec.id}.log"),
        ))
    for fc in net.factories:
        # The agent sits beside its engine: it scrapes the simulator directly, even when the
        # endpoint sidecars use goes through something else (a drill's Toxiproxy, say).
        engine = (f"http://127.0.0.1:{fc.sim.port}" if fc.sim
                  else fc.spec.endpoint.removesuffix("/v1"))
        comps.append(Component(
            name=f"agent/{fc.spec.id}",
            kind="agent",
            args=("agent", "--engine-url", engine, "--controlplane", net.grpc_address,
                  *cfg, "--factory", fc.spec.id),
            address=f"{fc.spec.tier} {fc.spec.region} -> {net.grpc_address}",
            log=str(logs / f"agent-{fc.spec.id}.log"),
        ))
    for sc in net.sidecars:
        comps.append(Component(
            name=f"proxy/{sc.node_id}",
            kind="proxy",
            args=("proxy", "--listen", sc.listen, "--admin", sc.admin,
                  "--controlplane", net.grpc_address, "--site", sc.site,
                  "--node-id", sc.node_id, "--state-dir", str(state_dir / f"sidecar-{sc.node_id}")),
            address=f"http://{sc.listen}/v1 (admin http://{sc.admin})",
            log=str(logs / f"proxy-{sc.node_id}.log"),
        ))
    return comps


class Supervisor:
    """Owns the child processes: starts them in order, stops them in reverse, never leaks one."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.procs: list[tuple[Component, subprocess.Popen[bytes]]] = []

    def start(self, comp: Component) -> None:
        Path(comp.log).parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(comp.log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tdn.cli", *comp.args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            )
        self.procs.append((comp, proc))
        self.write_state()

    def write_state(self) -> None:
        state = {
            "components": [
                {**asdict(c), "pid": p.pid, "running": p.poll() is None} for c, p in self.procs
            ]
        }
        tmp = self.state_dir / "up.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_dir / "up.json")

    def dead(self) -> list[Component]:
        return [c for c, p in self.procs if p.poll() is not None]

    def _index(self, name: str) -> int:
        for i, (comp, _) in enumerate(self.procs):
            if comp.name == name:
                return i
        raise KeyError(f"no component named {name!r}")

    def alive(self, name: str) -> bool:
        return self.procs[self._index(name)][1].poll() is None

    def pid(self, name: str) -> int:
        return self.procs[self._index(name)][1].pid

    def kill(self, name: str) -> None:
        """SIGKILL one component (a crash: no clean-up, no goodbye), and reap it."""
        _, proc = self.procs[self._index(name)]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self.write_state()

    def restart(self, name: str) -> None:
        """Start a stopped or killed component again with the same command, in its old place
        (so that stop order is kept); a running one is left alone."""
        index = self._index(name)
        comp, proc = self.procs[index]
        if proc.poll() is None:
            return
        self.start(comp)
        self.procs[index] = self.procs.pop()
        self.write_state()

    def stop_all(self, timeout: float = 10.0) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, proc in reversed(self.procs):
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.write_state()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _wait_ready(sup: Supervisor, net: NetworkConfig, timeout: float) -> str | None:
    """Wait until every sidecar holds a policy; return an error message on failure."""
    urls = [f"http://{sc.admin}/healthz" for sc in net.sidecars]
    urls.append(f"http://{net.http_address}/healthz")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = sup.dead()
        if dead:
            names = ", ".join(f"{c.name} (log: {c.log})" for c in dead)
            return f"exited during start-up: {names}"
        if all(_http_ok(u) for u in urls):
            return None
        time.sleep(0.1)
    return f"not ready after {timeout:.0f}s (waiting for {', '.join(urls)})"


def _banner(net: NetworkConfig, comps: list[Component], state_dir: Path) -> str:
    width = max(len(c.name) for c in comps)
    lines = ["", "TDN is up.", ""]
    lines += [f"  {c.name:<{width}}  {c.address}" for c in comps]
    lines.append("")
    for sc in net.sidecars:
        lines.append(f"Point an OpenAI client at:  OPENAI_BASE_URL=http://{sc.listen}/v1"
                     f"  (site {sc.site}; any API key)")
    lines += [
        f"Control plane:             http://{net.http_address}/  (status: tdn status)",
        f"Logs and pids:             {state_dir}/logs, {state_dir}/up.json",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tdn up", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="network file (default: the embedded local network)")
    parser.add_argument("--state-dir", default=".tdn", help="state, logs and up.json (.tdn)")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        net = load_network(args.config)
    except ConfigError as exc:
        print(f"tdn up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tdn up: cannot read {args.config}: {exc.strerror}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # Every component reads the same file; the embedded default is written out so that it can.
    if args.config:
        config_path = Path(args.config).resolve()
    else:
        config_path = state_dir / "network.yaml"
        config_path.write_text(resources.files("tdn").joinpath("defaults/up.yaml").read_text())
    comps = plan_components(net, str(config_path), state_dir)
    sup = Supervisor(state_dir)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        for comp in comps:
            sup.start(comp)
        error = _wait_ready(sup, net, args.ready_timeout)
        if error:
            print(f"tdn up: {error}", file=sys.stderr)
            return 1
        print(_banner(net, comps, state_dir), flush=True)
        reported: set[str] = set()
        while not stopping:
            for comp in sup.dead():
                if comp.name not in reported:
                    reported.add(comp.name)
                    print(f"tdn up: {comp.name} exited (log: {comp.log})", flush=True)
                    sup.write_state()
            time.sleep(0.2)
        print("tdn up: stopping ...", flush=True)
        return 0
    finally:
        sup.stop_all()
        print("tdn up: stopped.", flush=True)
