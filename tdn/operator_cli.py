"""Operator commands: ``tdn status``, ``topology``, ``plan``, ``explain``, ``factory``, ``policy``.

Thin clients of the control plane's Operator gRPC service. Each prints a short human table by
default and the full message as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from tdn import policy_cli
from tdn.tls import TlsError, add_client_flags, client_tls_from_args, secure_or_insecure_channel
from tdn.v1 import operator_pb2, operator_pb2_grpc

Metadata = tuple[tuple[str, str | bytes], ...]

_HEALTH = {
    operator_pb2.FACTORY_HEALTH_HEALTHY: "healthy",
    operator_pb2.FACTORY_HEALTH_UNHEALTHY: "unhealthy",
    operator_pb2.FACTORY_HEALTH_UNKNOWN: "unknown",
}
_ADMIN = {
    operator_pb2.FACTORY_ADMIN_STATE_ACTIVE: "active",
    operator_pb2.FACTORY_ADMIN_STATE_CORDONED: "cordoned",
    operator_pb2.FACTORY_ADMIN_STATE_DRAINED: "drained",
}
_ADMIN_BY_NAME = {
    "activate": operator_pb2.FACTORY_ADMIN_STATE_ACTIVE,
    "cordon": operator_pb2.FACTORY_ADMIN_STATE_CORDONED,
    "drain": operator_pb2.FACTORY_ADMIN_STATE_DRAINED,
}


def _print_json(msg: Message) -> None:
    print(json_format.MessageToJson(msg, preserving_proto_field_name=True))


def _table(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def cmd_status(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
               meta: Metadata) -> int:
    st: operator_pb2.StatusResponse = stub.GetStatus(operator_pb2.GetStatusRequest(),
                                                     metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(st)
        return 0
    role = "leader" if st.leader else "follower"
    ro = " (read-only: store unreachable)" if st.read_only else ""
    print(f"replica {st.replica_id} ({role}), store {st.store}{ro}")
    print(f"plan v{st.plan_version}: {st.plan_status}")
    print(f"policy: revision {st.policy_revision or '0 (built-in default)'}")
    if st.plan_version and st.plan_policy_revision != st.policy_revision:
        print(f"  the plan in force was solved under revision {st.plan_policy_revision}; "
              "the next plan follows the policy in force")
    print(f"factories: {st.factories_healthy}/{st.factories_total} healthy")
    rows = [["SIDECAR", "SITE", "ACKED", "LAG(s)", "CONNECTED", "LAST NACK"]]
    for s in st.sidecars:
        rows.append([s.node_id, s.site, s.acked_version or "-", f"{s.lag_seconds:.3f}",
                     "yes" if s.connected else "no", s.last_nack or "-"])
    print(_table(rows))
    return 0


def cmd_topology(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
                 meta: Metadata) -> int:
    if args.action == "export":
        from tdn.topology_export import run_export

        return run_export(args)
    topo: operator_pb2.Topology = stub.GetTopology(operator_pb2.GetTopologyRequest(),
                                                   metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(topo)
        return 0
    rows = [["FACTORY", "TIER", "REGION", "ZONE", "HEALTH", "ADMIN", "RUN/WAIT", "$IN/$OUT",
             "gCO2/kWh"]]
    tiers = {1: "center", 2: "edge", 3: "on-site"}
    for f in topo.factories:
        i = f.identity
        rows.append([i.id, tiers.get(i.tier, "?"), i.region, i.compliance_zone,
                     _HEALTH.get(f.health, "?") + (f" ({f.reason})" if f.reason else ""),
                     _ADMIN.get(f.admin_state, "?"), f"{f.load.running}/{f.load.waiting}",
                     f"{f.price.input_per_mtok:g}/{f.price.output_per_mtok:g}",
                     f"{f.energy.grid_gco2_per_kwh:g}"])
    print(_table(rows))
    return 0


def cmd_plan(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
             meta: Metadata) -> int:
    plan: operator_pb2.Plan = stub.GetPlan(operator_pb2.GetPlanRequest(site=args.site or ""),
                                           metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(plan)
        return 0
    print(f"plan v{plan.version}: {plan.status} (objective {plan.objective:.4g}, "
          f"solved in {plan.solve_seconds * 1000:.1f} ms)")
    rows = [["SITE", "MODEL", "CLASS", "PRIMARY", "BACKUPS"]]
    for sp in plan.sites:
        for r in sp.routes:
            primary = ", ".join(f"{w.factory_id}:{w.weight:.2f}" for w in r.primary) or "-"
            backups = " | ".join(",".join(w.factory_id for w in b.factories) for b in r.backups)
            rows.append([sp.site, r.model, r.traffic_class, primary, backups or "-"])
    print(_table(rows))
    return 0


def cmd_explain(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
                meta: Metadata) -> int:
    req = operator_pb2.ExplainRequest(site=args.site, model=args.model,
                                      traffic_class=args.traffic_class)
    ex: operator_pb2.ExplainResponse = stub.Explain(req, metadata=meta, timeout=args.timeout)
    if args.json:
        _print_json(ex)
        return 0
    print(explain_text(ex))
    return 0


# Cost columns of `tdn explain`, in the solver's order; the last two are the queueing price at
# the planned fill and the sum the solver compared.
_COST_COLUMNS = ("price", "latency", "carbon", "energy", "tier", "queueing", "total")


def explain_text(ex: operator_pb2.ExplainResponse) -> str:
    """The explanation for people: a cost table of the factories that can carry the traffic,
    then what excluded the others, the group's rules and its failure protection."""
    usable = [f for f in ex.factories if f.role != "excluded"]
    excluded = [f for f in ex.factories if f.role == "excluded"]
    lines = [f"{ex.site} / {ex.model} / {ex.traffic_class}   (plan v{ex.plan_version})"]
    if ex.requirements:
        lines.append(f"rules: {'; '.join(ex.requirements)}")
    lines.append("")
    rows = [["ROLE", "FACTORY", "WEIGHT", *(c.upper() for c in _COST_COLUMNS)]]
    for f in usable:
        costs = {c.name: c.value for c in f.costs}
        rows.append([f.role, f.factory_id, f"{f.weight:.2f}" if f.weight else "-",
                     *(f"{costs[c]:.3g}" if c in costs else "-" for c in _COST_COLUMNS)])
    lines.append(_table(rows))
    lines.append("costs per request in cost units ($0.001, 100 ms, 0.1 gCO2, $0.001 of "
                 "electricity), as weighted by the policy")
    unchosen = [f for f in usable if f.role == "eligible" and f.excluded_by]
    if unchosen:
        lines += ["", "not chosen:"]
        lines.append(_table([["  " + f.factory_id, f.excluded_by] for f in unchosen]))
    if excluded:
        lines += ["", "excluded:"]
        lines.append(_table([["  " + f.factory_id, f.excluded_by] for f in excluded]))
    if ex.protection:
        lines += ["", "failure protection (pre-computed backups, no re-solve):"]
        lines += [f"  {p}" for p in ex.protection]
    if ex.notes:
        lines += ["", *ex.notes]
    return "\n".join(lines)


def cmd_factory(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
                meta: Metadata) -> int:
    req = operator_pb2.SetFactoryStateRequest(factory_id=args.factory_id,
                                              state=_ADMIN_BY_NAME[args.action])
    resp: operator_pb2.SetFactoryStateResponse = stub.SetFactoryState(
        req, metadata=meta, timeout=args.timeout)
    print(f"{resp.factory_id}: {_ADMIN.get(resp.state, '?')}")
    return 0


Command = Callable[[operator_pb2_grpc.OperatorStub, argparse.Namespace, Metadata],
                   int]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--controlplane",
                        default=os.environ.get("TDN_CONTROLPLANE", "127.0.0.1:50051"),
                        help="control-plane gRPC address(es), comma-separated: the next is "
                             "tried when one is unreachable (env TDN_CONTROLPLANE)")
    common.add_argument("--json", action="store_true", help="print the full answer as JSON")
    common.add_argument("--timeout", type=float, default=5.0)
    add_client_flags(common)
    parser = argparse.ArgumentParser(prog="tdn")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="plan, factories and sidecars")
    topo = sub.add_parser("topology", parents=[common], help="factories and their state")
    topo.add_argument("action", nargs="?", default="show", choices=["show", "export"],
                      help="show: a table; export: a picture (see --format)")
    from tdn.topology_export import add_arguments as add_export_arguments

    add_export_arguments(topo)
    plan = sub.add_parser("plan", parents=[common], help="the current plan")
    plan.add_argument("--site")
    ex = sub.add_parser("explain", parents=[common], help="why a route was chosen")
    ex.add_argument("--site", required=True)
    ex.add_argument("--model", required=True)
    ex.add_argument("--class", dest="traffic_class", default="default")
    fac = sub.add_parser("factory", parents=[common], help="cordon, drain or activate a factory")
    fac.add_argument("action", choices=sorted(_ADMIN_BY_NAME))
    fac.add_argument("factory_id")
    policy_cli.add_parser(sub, common)
    return parser


_COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "topology": cmd_topology,
    "plan": cmd_plan,
    "explain": cmd_explain,
    "factory": cmd_factory,
    "policy": policy_cli.cmd_policy,
}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    token = os.environ.get("TDN_OPERATOR_TOKEN", "")
    meta: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        tls = client_tls_from_args(args)
        credentials = tls.credentials() if tls is not None else None
    except TlsError as exc:
        print(f"tdn {args.command}: {exc}", file=sys.stderr)
        return 2
    addresses = [a.strip() for a in args.controlplane.split(",") if a.strip()]
    for index, address in enumerate(addresses):
        with secure_or_insecure_channel(address, credentials) as channel:
            stub = operator_pb2_grpc.OperatorStub(channel)
            try:
                return _COMMANDS[args.command](stub, args, meta)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code is grpc.StatusCode.UNAVAILABLE and index + 1 < len(addresses):
                    continue  # that replica is down: any other answers reads alike
                details = exc.details() if hasattr(exc, "details") else str(exc)
                name = code.name if code is not None else "ERROR"
                print(f"tdn {args.command}: {name}: {details} ({address})", file=sys.stderr)
                return 1
    print(f"tdn {args.command}: no control-plane address given", file=sys.stderr)
    return 2
