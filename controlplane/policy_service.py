"""Operator policies in force: validated, stored with history in the Store, rolled back, and
served as the Operator service's six policy RPCs.

A policy is refused with every error (file, line, key, reason) and counted in
``tdn_policy_rejected_total``; the last good one stays in force. An accepted policy becomes a new
revision under ``/tdn/policy/revisions/<revision>`` (the YAML exactly as applied, its filename,
who applied it and when), and ``/tdn/policy/current`` then points at it: the revision is written
before the pointer, so the pointer never names a revision that is not there. Every replica
watches the pointer and puts each new revision in force (the solve loop re-solves with it), and
at start the control plane loads it from the store, so the policy survives restarts and
follows leader changes. Applying a policy identical in meaning (same canonical form) to the one in
force is a no-op that answers with the current revision. A rollback re-applies an earlier
revision's YAML as a new revision, after validating it against today's network.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import Counter, Gauge

from tdn.controlplane.metrics import ControlPlaneMetrics
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.policy_canonical import canonical_yaml, unified_diff
from tdn.policy_parse import ParsedPolicy, PolicyError, PolicyInvalid, check_sites, parse_policy
from tdn.store.base import Store
from tdn.store.errors import StoreError
from tdn.v1 import operator_pb2

log = logging.getLogger(__name__)

REVISION_PREFIX = "/tdn/policy/revisions/"
CURRENT_KEY = "/tdn/policy/current"
# How long to wait before watching the store again after it failed.
_REWATCH_S = 1.0
DEFAULT_HISTORY = 20

Context = grpc.aio.ServicerContext[object, object]


def revision_key(revision: int) -> str:
    # Zero-padded so that the store's key order is revision order.
    return f"{REVISION_PREFIX}{revision:012d}"


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """One applied revision as kept in the store."""

    revision: int
    applied_at: float
    filename: str
    yaml: str
    applied_by: str

    def encode(self) -> bytes:
        return json.dumps({"revision": self.revision, "applied_at": self.applied_at,
                           "filename": self.filename, "yaml": self.yaml,
                           "applied_by": self.applied_by}, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PolicyRecord:
        data = json.loads(raw)
        return cls(revision=int(data["revision"]), applied_at=float(data["applied_at"]),
                   filename=str(data["filename"]), yaml=str(data["yaml"]),
                   applied_by=str(data.get("applied_by", "")))

    def to_pb(self) -> operator_pb2.PolicyRevision:
        ts = Timestamp()
        ts.FromNanoseconds(int(self.applied_at * 1e9))
        return operator_pb2.PolicyRevision(revision=self.revision, applied_at=ts,
                                           filename=self.filename, yaml=self.yaml,
                                           applied_by=self.applied_by)


def errors_to_pb(errors: Iterable[PolicyError]) -> list[operator_pb2.ValidationError]:
    return [operator_pb2.ValidationError(filename=e.filename, line=e.line, key=e.key,
                                         reason=e.reason) for e in errors]


class PolicyService:
    """The policy in force on this replica, and the policy half of the Operator service."""

    def __init__(self, store: Store, metrics: ControlPlaneMetrics, *, site_ids: Iterable[str],
                 on_change: Callable[[Policy, int], None],
                 not_leader: Callable[[], str | None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._site_ids = frozenset(site_ids)
        self._on_change = on_change
        self._not_leader = not_leader
        self._clock = clock
        self._lock = asyncio.Lock()
        self.policy: Policy = DEFAULT_POLICY
        self.revision = 0
        self.record: PolicyRecord | None = None
        # Why the stored policy could not be put in force at the last load, "" when it was.
        self.load_error = ""
        r = metrics.registry
        self.rejected = Counter(
            "tdn_policy_rejected_total",
            "Policies refused, by reason (invalid: by apply or rollback; stored: a stored "
            "revision that no longer validates at load).", ["reason"], registry=r)
        self.applied = Counter("tdn_policy_applied_total",
                               "Policy revisions applied (rollbacks included).", registry=r)
        self.revision_gauge = Gauge("tdn_policy_revision", "Revision of the policy in force.",
                                    registry=r)

    # --- the policy in force -------------------------------------------------------------------

    def _validate(self, text: str, filename: str) -> tuple[ParsedPolicy | None,
                                                           tuple[PolicyError, ...]]:
        try:
            parsed = parse_policy(text, filename)
        except PolicyInvalid as exc:
            return None, exc.errors
        errors = check_sites(parsed, self._site_ids) if self._site_ids else ()
        return (None, errors) if errors else (parsed, ())

    def _put_in_force(self, record: PolicyRecord, policy: Policy) -> None:
        if record.revision == self.revision:
            return
        self.policy, self.revision, self.record = policy, record.revision, record
        self.revision_gauge.set(record.revision)
        log.info("policy revision %d (%s) in force", record.revision, record.filename)
        self._on_change(policy, record.revision)

    async def load(self) -> None:
        """Put the stored current revision in force (at start, and when the pointer moves)."""
        entry = await self._store.get(CURRENT_KEY)
        if entry is None:
            return
        revision = int(json.loads(entry.value)["revision"])
        if revision == self.revision:
            return
        stored = await self._store.get(revision_key(revision))
        if stored is None:
            self.load_error = f"current policy revision {revision} is missing from the store"
            log.error("%s; revision %d stays in force", self.load_error, self.revision)
            return
        record = PolicyRecord.decode(stored.value)
        parsed, errors = self._validate(record.yaml, record.filename)
        if parsed is None:
            # A revision valid when applied but refused now (the network lost a site it
            # names): the policy in force stays, and operators are told why.
            self.load_error = (f"stored policy revision {revision} no longer validates: "
                               + "; ".join(str(e) for e in errors))
            self.rejected.labels(reason="stored").inc()
            log.error("%s", self.load_error)
            return
        self.load_error = ""
        self._put_in_force(record, parsed.policy)

    async def watch(self) -> None:
        """Follow the current-revision pointer forever (every replica runs this)."""
        while True:
            try:
                async with self._store.watch_prefix(CURRENT_KEY) as events:
                    await self.load()  # after the watch is in place: nothing is missed
                    async for _ in events:
                        await self.load()
            except StoreError as exc:
                log.warning("watching the policy pointer failed (%s); retrying", exc)
            except (ValueError, KeyError) as exc:
                log.error("unreadable policy pointer: %s", exc)
            await asyncio.sleep(_REWATCH_S)

    async def _history(self) -> list[PolicyRecord]:
        entries = await self._store.get_prefix(REVISION_PREFIX)
        return sorted((PolicyRecord.decode(e.value) for e in entries),
                      key=lambda r: r.revision)

    async def _store_revision(self, text: str, filename: str, applied_by: str,
                              policy: Policy) -> PolicyRecord:
        """Write a new revision, then point at it; raise StoreError when the store refuses."""
        history = await self._history()
        revision = max((r.revision for r in history), default=0) + 1
        record = PolicyRecord(revision=revision, applied_at=self._clock(), filename=filename,
                              yaml=text, applied_by=applied_by)
        if not await self._store.compare_and_put(revision_key(revision), record.encode(), 0):
            raise StoreError(f"policy revision {revision} was written concurrently")
        await self._store.put(CURRENT_KEY, json.dumps({"revision": revision}).encode())
        self.applied.inc()
        self._put_in_force(record, policy)
        return record

    async def apply_text(self, text: str, filename: str, applied_by: str,
                         ) -> tuple[int, tuple[PolicyError, ...]]:
        """Validate and apply; (revision in force, errors). Errors mean nothing changed."""
        parsed, errors = self._validate(text, filename)
        if parsed is None:
            self.rejected.labels(reason="invalid").inc()
            log.warning("policy %s refused: %s", filename, "; ".join(str(e) for e in errors))
            return self.revision, errors
        async with self._lock:
            if self.revision and canonical_yaml(parsed.policy) == canonical_yaml(self.policy):
                return self.revision, ()
            record = await self._store_revision(text, filename, applied_by, parsed.policy)
            return record.revision, ()

    # --- gRPC ----------------------------------------------------------------------------------

    async def _leader_only(self, context: Context) -> None:
        elsewhere = self._not_leader()
        if elsewhere is not None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, elsewhere)

    @staticmethod
    def _who(context: Context) -> str:
        for key, value in context.invocation_metadata() or ():
            if key == "x-tdn-user" and value:
                return str(value)
        return str(context.peer() or "")

    async def _unavailable(self, context: Context, exc: StoreError) -> NoReturn:
        await context.abort(grpc.StatusCode.UNAVAILABLE,
                            f"store unavailable, policy not changed: {exc}")
        raise AssertionError("abort returned")

    async def ValidatePolicy(self, request: operator_pb2.PolicyDocument,
                             context: Context) -> operator_pb2.ValidatePolicyResponse:
        _, errors = self._validate(request.yaml, request.filename or "policy.yaml")
        return operator_pb2.ValidatePolicyResponse(valid=not errors, errors=errors_to_pb(errors))

    async def ApplyPolicy(self, request: operator_pb2.PolicyDocument,
                          context: Context) -> operator_pb2.ApplyPolicyResponse:
        await self._leader_only(context)
        try:
            revision, errors = await self.apply_text(
                request.yaml, request.filename or "policy.yaml", self._who(context))
        except StoreError as exc:
            await self._unavailable(context, exc)
        return operator_pb2.ApplyPolicyResponse(applied=not errors, revision=revision,
                                                errors=errors_to_pb(errors))

    async def DiffPolicy(self, request: operator_pb2.PolicyDocument,
                         context: Context) -> operator_pb2.DiffPolicyResponse:
        filename = request.filename or "policy.yaml"
        parsed, errors = self._validate(request.yaml, filename)
        if parsed is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "\n".join(str(e) for e in errors))
        current = (f"revision {self.revision} ({self.record.filename})" if self.record
                   else "built-in default policy")
        diff = unified_diff(canonical_yaml(self.policy), canonical_yaml(parsed.policy),
                            current, filename)
        return operator_pb2.DiffPolicyResponse(diff=diff, current_revision=self.revision)

    async def GetPolicy(self, request: operator_pb2.GetPolicyRequest,
                        context: Context) -> operator_pb2.PolicyRevision:
        wanted = request.revision or self.revision
        if wanted == 0:
            return operator_pb2.PolicyRevision(revision=0, filename="<built-in default>",
                                               yaml=canonical_yaml(DEFAULT_POLICY))
        try:
            entry = await self._store.get(revision_key(wanted))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
        if entry is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no policy revision {wanted} (current: {self.revision})")
        return PolicyRecord.decode(entry.value).to_pb()

    async def PolicyHistory(self, request: operator_pb2.PolicyHistoryRequest,
                            context: Context) -> operator_pb2.PolicyHistoryResponse:
        try:
            history = await self._history()
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {exc}")
        limit = request.limit if request.limit > 0 else DEFAULT_HISTORY
        return operator_pb2.PolicyHistoryResponse(
            revisions=[r.to_pb() for r in reversed(history[-limit:])])

    async def RollbackPolicy(self, request: operator_pb2.RollbackPolicyRequest,
                             context: Context) -> operator_pb2.ApplyPolicyResponse:
        await self._leader_only(context)
        try:
            history = {r.revision: r for r in await self._history()}
        except StoreError as exc:
            await self._unavailable(context, exc)
        target = request.to_revision or max((r for r in history if r < self.revision),
                                            default=0)
        if target not in history:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no policy revision {target} to roll back to (current: {self.revision}; "
                f"stored: {', '.join(str(r) for r in sorted(history)) or 'none'})")
        record = history[target]
        try:
            revision, errors = await self.apply_text(
                record.yaml, record.filename,
                f"{self._who(context)} (rollback to revision {target})")
        except StoreError as exc:
            await self._unavailable(context, exc)
        return operator_pb2.ApplyPolicyResponse(applied=not errors, revision=revision,
                                                errors=errors_to_pb(errors))

