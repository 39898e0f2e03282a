"""The paths the data-plane benchmark compares, each started as a real process and configured alike.

* **direct**: the client calls the fixed-delay upstream itself (the floor every proxy adds to);
* **TDN**: ``tdn proxy`` with a static policy written into its ``--state-dir`` and no control
  plane, which is exactly how a sidecar routes during a control-plane outage (static stability);
* **HAProxy**: Debian's haproxy, one thread, ``option http-no-delay`` so streams are relayed
  as they come, keep-alive to the upstream (``http-reuse always``), no logging;
* **LiteLLM**: ``litellm --config`` (its proxy) with the upstream as an openai-compatible model.

All three proxies also carry the failover drills: per scenario, a primary that refuses, resets or
hangs, and a healthy simulated factory (``tdn factory-sim``) as the backup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.dataplane_procs import (
    Proc,
    ensure_litellm,
    pinned,
    python_module,
    wait_ready,
)
from tdn.chaos.services import free_port
from tdn.dataplane.policy_disk import PolicyDisk
from tdn.domain import (
    DataPlaneSettings,
    FactoryEndpoint,
    Route,
    SitePolicy,
    Tier,
    WeightedFactory,
)

SITE = "bench"
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Drill:
    """One failover scenario: its model name, and the primary's base URL (backup is healthy)."""

    name: str  # healthy, refused, reset, hang
    model: str
    primary_port: int


@dataclass(slots=True)
class Network:
    """Ports of everything behind the proxies: the upstream and the failover factories."""

    upstream_port: int
    models: tuple[str, ...]
    good_port: int = 0
    drills: tuple[Drill, ...] = ()
    first_byte_deadline_s: float = 0.5


@dataclass(slots=True)
class Target:
    """A running path under test: where to POST, per model or drill, and its process."""

    name: str
    proc: Proc | None
    base: str  # http://host:port
    drill_bases: dict[str, str] = field(default_factory=dict)

    def url(self) -> str:
        return self.base + CHAT_PATH

    def drill_url(self, drill: str) -> str:
        return self.drill_bases.get(drill, self.base) + CHAT_PATH

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


def direct(network: Network) -> Target:
    return Target("direct", None, f"http://127.0.0.1:{network.upstream_port}")


# --- TDN --------------------------------------------------------------------------------------


def tdn_policy(network: Network) -> SitePolicy:
    """One factory for the upstream and a route per benchmark model; the drills' routes."""

    def endpoint(fid: str, port: int, domain: str) -> FactoryEndpoint:
        return FactoryEndpoint(id=fid, tier=Tier.EDGE, region="local", failure_domain=domain,
                               base_url=f"http://127.0.0.1:{port}/v1", ttft_p99_s=0.05)

    factories = [endpoint("upstream", network.upstream_port, "local/a")]
    routes = [Route(model=m, traffic_class="default",
                    primary=(WeightedFactory("upstream", 1.0),)) for m in network.models]
    if network.drills:
        factories.append(endpoint("good", network.good_port, "local/b"))
        for drill in network.drills:
            if drill.name == "healthy":
                routes.append(Route(drill.model, "default", (WeightedFactory("good", 1.0),)))
                continue
            fid = f"primary-{drill.name}"
            factories.append(endpoint(fid, drill.primary_port, "local/c"))
            routes.append(Route(drill.model, "default", (WeightedFactory(fid, 1.0),),
                                backups=((WeightedFactory("good", 1.0),),),
                                first_byte_timeout_s=network.first_byte_deadline_s))
    return SitePolicy(site=SITE, version="bench-1", factories=tuple(factories),
                      routes=tuple(routes), plan_reason="static benchmark policy",
                      settings=DataPlaneSettings(
                          first_byte_timeout_s=network.first_byte_deadline_s))


def start_tdn(network: Network, work: Path, cpus: str | None, *, workers: int | None = None,
              name: str = "tdn") -> Target:
    state = work / f"{name}-state"
    PolicyDisk(state).save(tdn_policy(network))
    port = free_port()
    # Admin port 0: each process binds any free port itself. A fixed one would give worker i
    # the port + i, which on a busy machine an outgoing connection may already hold.
    args = ["tdn.cli", "proxy", "--listen", f"127.0.0.1:{port}",
            "--admin", "127.0.0.1:0", "--site", SITE, "--node-id", name,
            "--state-dir", str(state), "--controlplane", "", "--log-level", "WARNING"]
    if workers is not None:
        args += ["--workers", str(workers)]
    # Access-log lines (one per request, on stdout) are written, as in production, to a sink
    # that costs a write per line but no disk: /dev/null.
    proc = Proc(name, pinned(cpus, python_module(*args)), work, stdout_to_null=True)
    target = Target("TDN", proc, f"http://127.0.0.1:{port}")
    _wait_chat(proc, target, network)
    return target


def _wait_chat(proc: Proc, target: Target, network: Network, timeout: float = 60.0) -> None:
    body = json.dumps({"model": network.models[0],
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    wait_ready(proc, target.url(), timeout, method="POST", body=body, accept_status=300)


# --- HAProxy ----------------------------------------------------------------------------------


def haproxy_config(network: Network, port: int, drill_ports: dict[str, int]) -> str:
    lines = [
        "global",
        "  nbthread 1",
        "  maxconn 4096",
        "defaults",
        "  mode http",
        "  timeout connect 1s",
        "  timeout client 120s",
        "  timeout server 120s",
        "  option http-keep-alive",
        "  http-reuse always",
        "frontend bench",
        f"  bind 127.0.0.1:{port}",
        "  option http-no-delay",
        "  default_backend upstream",
        "backend upstream",
        "  option http-no-delay",
        f"  server upstream 127.0.0.1:{network.upstream_port} maxconn 2000",
    ]
    for drill in network.drills:
        lines += [
            f"frontend fo_{drill.name}",
            f"  bind 127.0.0.1:{drill_ports[drill.name]}",
            "  option http-no-delay",
            f"  default_backend fo_{drill.name}",
            f"backend fo_{drill.name}",
            "  option http-no-delay",
            # L7 retries need the request body buffered; the first server takes all traffic
            # while it is usable, the second is tried on retry (redispatch), as TDN's backup is.
            "  option http-buffer-request",
            "  balance first",
            "  retries 2",
            "  option redispatch 1",
            "  retry-on all-retryable-errors",
        ]
        if drill.name == "hang":
            # HAProxy has no first-byte deadline apart from its server timeout: the same value.
            lines.append(f"  timeout server {int(network.first_byte_deadline_s * 1000)}ms")
        if drill.name == "healthy":
            lines.append(f"  server good 127.0.0.1:{network.good_port} maxconn 2000")
        else:
            lines += [f"  server primary 127.0.0.1:{drill.primary_port} maxconn 2000",
                      f"  server good 127.0.0.1:{network.good_port} maxconn 2000"]
    return "\n".join(lines) + "\n"


def start_haproxy(network: Network, work: Path, cpus: str | None) -> Target:
    port = free_port()
    drill_ports = {d.name: free_port() for d in network.drills}
    config = work / "haproxy.cfg"
    config.write_text(haproxy_config(network, port, drill_ports))
    proc = Proc("haproxy", pinned(cpus, ["haproxy", "-db", "-f", str(config)]), work)
    target = Target("HAProxy", proc, f"http://127.0.0.1:{port}",
                    {name: f"http://127.0.0.1:{p}" for name, p in drill_ports.items()})
    _wait_chat(proc, target, network)
    return target


# --- LiteLLM ----------------------------------------------------------------------------------


def litellm_config(network: Network) -> dict[str, object]:
    model_list: list[dict[str, object]] = [
        {"model_name": m, "litellm_params": {
            "model": f"openai/{m}", "api_base": f"http://127.0.0.1:{network.upstream_port}/v1",
            "api_key": "sk-bench"}}
        for m in network.models
    ]
    for drill in network.drills:
        good = {"model": f"openai/{drill.model}", "api_key": "sk-bench",
                "api_base": f"http://127.0.0.1:{network.good_port}/v1"}
        if drill.name == "healthy":
            model_list.append({"model_name": drill.model, "litellm_params": good})
            continue
        primary: dict[str, object] = {
            "model": f"openai/{drill.model}", "api_key": "sk-bench",
            "api_base": f"http://127.0.0.1:{drill.primary_port}/v1", "order": 1}
        if drill.name == "hang":
            primary["timeout"] = network.first_byte_deadline_s
            primary["stream_timeout"] = network.first_byte_deadline_s
        # LiteLLM's documented failover: deployment priority ("order"), retries to the next.
        model_list += [{"model_name": drill.model, "litellm_params": primary},
                       {"model_name": drill.model, "litellm_params": {**good, "order": 2}}]
    return {
        "model_list": model_list,
        "router_settings": {"num_retries": 2, "retry_after": 0},
        "litellm_settings": {"drop_params": True, "set_verbose": False,
                             "turn_off_message_logging": True},
        # No key check, as the TDN sidecar and HAProxy here do none: LiteLLM's cheapest
        # configuration (a real deployment adds a master-key or virtual-key lookup).
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def start_litellm(network: Network, work: Path, cpus: str | None, notes: list[str]) -> Target:
    binary = ensure_litellm(notes)
    port = free_port()
    config = work / "litellm.yaml"
    config.write_text(yaml.safe_dump(litellm_config(network), sort_keys=False))
    env = {
        # Never reach for the network: the cost map ships with the package.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "DISABLE_SCHEMA_UPDATE": "True",
    }
    args = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    proc = Proc("litellm", pinned(cpus, args), work, env=env)
    target = Target("LiteLLM", proc, f"http://127.0.0.1:{port}")
    _wait_chat(proc, target, network, timeout=180.0)
    return target


def stop_all(targets: Sequence[Target]) -> None:
    for target in targets:
        target.stop()


def settle(targets: Sequence[Target], limit_s: float = 10.0) -> None:
    """Wait until no proxy is still working off the last run's abandoned requests.

    wrk stops with requests in flight; a slow proxy (LiteLLM) keeps serving them, and that
    backlog must not be billed to the next run or the next path.
    """
    deadline = time.monotonic() + limit_s
    procs = [t.proc for t in targets if t.proc is not None]
    while time.monotonic() < deadline:
        before = [p.cpu() for p in procs]
        time.sleep(0.2)
        busy = [p.cpu() - b for p, b in zip(procs, before, strict=True)]
        if all(b < 0.03 for b in busy):  # under 15% of a core
            return
