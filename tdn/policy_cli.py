"""``tdn policy validate | apply | diff | get | history | rollback``: operator policies from the
command line.

Exit codes: 0 done; 1 refused or invalid (each error printed as ``file:line: key: reason``) or
the control plane answered with an error; 2 a usage error. ``validate --offline`` needs no
control plane: it checks the file alone, and against a network file's sites with ``--network``.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from tdn.v1 import operator_pb2, operator_pb2_grpc

Metadata = tuple[tuple[str, str | bytes], ...]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    policy = sub.add_parser("policy", help="validate, apply, diff, show, list or roll back "
                                           "routing policies")
    actions = policy.add_subparsers(dest="policy_action", required=True)
    validate = actions.add_parser("validate", parents=[common], help="check a policy file")
    validate.add_argument("file")
    validate.add_argument("--offline", action="store_true",
                          help="check locally, without a control plane")
    validate.add_argument("--network", help="with --offline: also check site names against "
                                            "this network file")
    apply = actions.add_parser("apply", parents=[common], help="validate and put in force")
    apply.add_argument("file")
    diff = actions.add_parser("diff", parents=[common],
                              help="what applying the file would change (canonical form)")
    diff.add_argument("file")
    get = actions.add_parser("get", parents=[common], help="print the policy in force")
    get.add_argument("--revision", type=int, default=0, help="an earlier revision instead")
    history = actions.add_parser("history", parents=[common], help="list applied revisions")
    history.add_argument("--limit", type=int, default=20)
    rollback = actions.add_parser("rollback", parents=[common],
                                  help="re-apply an earlier revision (default: the previous)")
    rollback.add_argument("--to", dest="to_revision", type=int, default=0)


def _print_errors(errors: Iterable[operator_pb2.ValidationError]) -> None:
    for e in errors:
        print(f"{e.filename}:{e.line}: {e.key or '<document>'}: {e.reason}")


def _read(path: str) -> operator_pb2.PolicyDocument | None:
    try:
        return operator_pb2.PolicyDocument(filename=path, yaml=Path(path).read_text())
    except OSError as exc:
        print(f"tdn policy: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return None


def _when(revision: operator_pb2.PolicyRevision) -> str:
    if not revision.HasField("applied_at") or not revision.applied_at.seconds:
        return "-"
    return datetime.fromtimestamp(revision.applied_at.ToNanoseconds() / 1e9, UTC).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def validate_offline(args: argparse.Namespace) -> int:
    from tdn.config import ConfigError, load_network
    from tdn.policy_parse import validate_policy

    site_ids = None
    if args.network:
        try:
            site_ids = [s.id for s in load_network(args.network).sites]
        except (OSError, ConfigError) as exc:
            print(f"tdn policy: cannot use network {args.network}: {exc}", file=sys.stderr)
            return 2
    try:
        text = Path(args.file).read_text()
    except OSError as exc:
        print(f"tdn policy: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    errors = validate_policy(text, args.file, site_ids)
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"{args.file}: valid")
    return 0


def cmd_policy(stub: operator_pb2_grpc.OperatorStub, args: argparse.Namespace,
               meta: Metadata) -> int:
    """Run one ``tdn policy`` action against the control plane behind ``stub``."""
    action = args.policy_action
    if action == "validate" and args.offline:
        return validate_offline(args)
    if action == "validate" and args.network:
        print("tdn policy: --network only applies with --offline (the control plane checks "
              "against its own network)", file=sys.stderr)
        return 2
    # Who applied a revision, for its history (the operator token says only "an operator").
    meta = (*meta, ("x-tdn-user", getpass.getuser()))
    timeout = args.timeout
    if action in ("validate", "apply", "diff"):
        doc = _read(args.file)
        if doc is None:
            return 2
        if action == "validate":
            result = stub.ValidatePolicy(doc, metadata=meta, timeout=timeout)
            _print_errors(result.errors)
            if not result.valid:
                return 1
            print(f"{args.file}: valid")
            return 0
        if action == "apply":
            applied = stub.ApplyPolicy(doc, metadata=meta, timeout=timeout)
            if not applied.applied:
                _print_errors(applied.errors)
                print(f"refused: revision {applied.revision} stays in force", file=sys.stderr)
                return 1
            print(f"{args.file}: in force as revision {applied.revision}")
            return 0
        diff = stub.DiffPolicy(doc, metadata=meta, timeout=timeout)
        print(diff.diff.rstrip("\n") if diff.diff
              else f"no change against revision {diff.current_revision}")
        return 0
    if action == "get":
        revision = stub.GetPolicy(operator_pb2.GetPolicyRequest(revision=args.revision),
                                  metadata=meta, timeout=timeout)
        if args.json:
            from google.protobuf import json_format

            print(json_format.MessageToJson(revision, preserving_proto_field_name=True))
            return 0
        print(f"# revision {revision.revision} from {revision.filename}, applied "
              f"{_when(revision)} by {revision.applied_by or '-'}")
        print(revision.yaml.rstrip("\n"))
        return 0
    if action == "history":
        history = stub.PolicyHistory(operator_pb2.PolicyHistoryRequest(limit=args.limit),
                                     metadata=meta, timeout=timeout)
        rows = [["REVISION", "APPLIED AT", "FILE", "APPLIED BY"]]
        rows += [[str(r.revision), _when(r), r.filename, r.applied_by or "-"]
                 for r in history.revisions]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    rolled = stub.RollbackPolicy(
        operator_pb2.RollbackPolicyRequest(to_revision=args.to_revision), metadata=meta,
        timeout=timeout)
    if not rolled.applied:
        _print_errors(rolled.errors)
        print(f"refused: revision {rolled.revision} stays in force", file=sys.stderr)
        return 1
    print(f"rolled back: in force as revision {rolled.revision}")
    return 0
