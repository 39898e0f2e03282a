"""Operator commands: ``tdn status``, ``topology``, ``plan``, ``explain`` and ``factory``.

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
    print(f"factories: {st.factories_healthy}/{st.factories_total} healthy")
    rows = [["SIDECAR", "SITE", "ACKED", "LAG(s)", "CONNECTED", "LAST NACK"]]
    for s in st.sidecars:
        rows.append([s.node_id, s.site, s.acked_version or "-", f"{s.lag_seconds:.3f}",
                     "yes" if s.connected else "no", s.last_nack or "-"])
    print(_table(rows))
    return 0


def cmd_topology(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
                 meta: Metadata) -> int:
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
    print(f"{ex.site} / {ex.model} / {ex.traffic_class} (plan v{ex.plan_version})")
    rows = [["FACTORY", "ROLE", "WEIGHT", "COSTS / EXCLUDED BY"]]
    for f in ex.factories:
        detail = f.excluded_by or ", ".join(f"{c.name}={c.value:.4g}" for c in f.costs)
        rows.append([f.factory_id, f.role, f"{f.weight:.2f}" if f.weight else "-", detail])
    print(_table(rows))
    return 0


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
                        help="control-plane gRPC address (env TDN_CONTROLPLANE)")
    common.add_argument("--json", action="store_true", help="print the full answer as JSON")
    common.add_argument("--timeout", type=float, default=5.0)
    parser = argparse.ArgumentParser(prog="tdn")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", parents=[common], help="plan, factories and sidecars")
    topo = sub.add_parser("topology", parents=[common], help="factories and their state")
    topo.add_argument("action", nargs="?", default="show", choices=["show"])
    plan = sub.add_parser("plan", parents=[common], help="the current plan")
    plan.add_argument("--site")
    ex = sub.add_parser("explain", parents=[common], help="why a route was chosen")
    ex.add_argument("--site", required=True)
    ex.add_argument("--model", required=True)
    ex.add_argument("--class", dest="traffic_class", default="default")
    fac = sub.add_parser("factory", parents=[common], help="cordon, drain or activate a factory")
    fac.add_argument("action", choices=sorted(_ADMIN_BY_NAME))
    fac.add_argument("factory_id")
    return parser


_COMMANDS: dict[str, Command] = {
    "status": cmd_status,
    "topology": cmd_topology,
    "plan": cmd_plan,
    "explain": cmd_explain,
    "factory": cmd_factory,
}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    token = os.environ.get("TDN_OPERATOR_TOKEN", "")
    meta: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(args.controlplane) as channel:
        stub = operator_pb2_grpc.OperatorStub(channel)
        try:
            return _COMMANDS[args.command](stub, args, meta)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "ERROR"
            print(f"tdn {args.command}: {name}: {details} ({args.controlplane})",
                  file=sys.stderr)
            return 1
