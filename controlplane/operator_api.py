"""The Operator service: what the ``tdn`` CLI and the web UI ask of the control plane.

Reads (topology, plan, status, explain) come from the live components; SetFactoryState persists
the operator's word in the Store, applies it to the registry and so triggers a re-solve. The
policy-file methods are :class:`~tdn.controlplane.policy_service.PolicyService`'s; Explain asks
the pure core (:mod:`tdn.topology.explain`) with the inputs the plan was solved from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tdn.controlplane.durable_state import save_admin_state
from tdn.controlplane.policy_service import PolicyService
from tdn.controlplane.registry import FactoryRegistry, UnknownFactory
from tdn.controlplane.snapshot_cache import SnapshotCache
from tdn.controlplane.solve_loop import SolveLoop
from tdn.controlplane.status import StatusSource
from tdn.domain import AdminState, Demand, FactoryState, Health, Site
from tdn.store.base import Store
from tdn.store.errors import StoreError
from tdn.topology.explain import NoSuchRoute, RouteExplanation, explain
from tdn.v1 import operator_pb2, operator_pb2_grpc, telemetry_pb2
from tdn.wire import energy_to_pb, price_to_pb, site_policy_to_pb, spec_to_identity

log = logging.getLogger(__name__)

POLICY_UNIMPLEMENTED = "policy files arrive with issue #4"

_HEALTH_TO_PB = {
    Health.HEALTHY: operator_pb2.FACTORY_HEALTH_HEALTHY,
    Health.UNHEALTHY: operator_pb2.FACTORY_HEALTH_UNHEALTHY,
    Health.UNKNOWN: operator_pb2.FACTORY_HEALTH_UNKNOWN,
}
_ADMIN_TO_PB = {
    AdminState.ACTIVE: operator_pb2.FACTORY_ADMIN_STATE_ACTIVE,
    AdminState.CORDONED: operator_pb2.FACTORY_ADMIN_STATE_CORDONED,
    AdminState.DRAINED: operator_pb2.FACTORY_ADMIN_STATE_DRAINED,
}
_ADMIN_FROM_PB = {v: k for k, v in _ADMIN_TO_PB.items()}

Context = grpc.aio.ServicerContext[object, object]


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def factory_status_to_pb(state: FactoryState) -> operator_pb2.FactoryStatus:
    spec, load = state.spec, state.load
    return operator_pb2.FactoryStatus(
        identity=spec_to_identity(spec),
        health=_HEALTH_TO_PB[state.health],
        admin_state=_ADMIN_TO_PB[state.admin],
        capacity=telemetry_pb2.Capacity(
            max_concurrency=spec.max_concurrency,
            max_output_tokens_per_second=spec.max_output_tokens_per_second),
        load=telemetry_pb2.Load(
            running=load.running, waiting=load.waiting, kv_cache_usage=load.kv_cache_usage,
            prompt_tokens_total=load.prompt_tokens_total,
            generation_tokens_total=load.generation_tokens_total),
        latency=telemetry_pb2.Latency(
            ttft_p50_seconds=load.ttft_p50_s, ttft_p99_seconds=load.ttft_p99_s,
            itl_p50_seconds=load.itl_p50_s, itl_p99_seconds=load.itl_p99_s),
        price=price_to_pb(spec.price),
        energy=energy_to_pb(spec.energy),
        last_report=_timestamp(state.last_report),
        reason=state.reason,
    )


def explanation_to_pb(answer: RouteExplanation, exact: bool) -> operator_pb2.ExplainResponse:
    """The explanation as the wire carries it: one row per factory, and the group's rules,
    its failure protection and notes in fields of their own."""
    rows = [operator_pb2.ExplainedFactory(
        factory_id=f.factory_id, role=f.role, weight=f.weight, excluded_by=f.excluded_by,
        costs=[operator_pb2.CostTerm(name=n, value=v) for n, v in f.costs])
        for f in answer.factories]
    notes = list(answer.notes)
    if not exact:
        notes.append("explained with this replica's current view: the plan was solved by the "
                     "leader")
    return operator_pb2.ExplainResponse(site=answer.site, model=answer.model,
                                        traffic_class=answer.traffic_class,
                                        plan_version=answer.plan_version, factories=rows,
                                        requirements=list(answer.requirements),
                                        protection=list(answer.protection), notes=notes,
                                        exact=exact)


class OperatorService(operator_pb2_grpc.OperatorServicer):
    """grpc.aio servicer for ``tdn.v1.Operator``."""

    def __init__(self, *, registry: FactoryRegistry, solve_loop: SolveLoop, cache: SnapshotCache,
                 store: Store, status: StatusSource, sites: Sequence[Site],
                 demands: Sequence[Demand], policies: PolicyService | None = None) -> None:
        self._registry = registry
        self._policies = policies
        self._loop = solve_loop
        self._cache = cache
        self._store = store
        self._status = status
        self._sites = {s.id: s for s in sites}
        self._demands = tuple(demands)

    # --- policy files (tdn.controlplane.policy_service) ---------------------------------------

    async def _no_policies(self, context: Context) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, POLICY_UNIMPLEMENTED)
        raise AssertionError("abort returned")

    async def ValidatePolicy(self, request: operator_pb2.PolicyDocument,
                             context: Context) -> operator_pb2.ValidatePolicyResponse:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.ValidatePolicy(request, context)

    async def ApplyPolicy(self, request: operator_pb2.PolicyDocument,
                          context: Context) -> operator_pb2.ApplyPolicyResponse:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.ApplyPolicy(request, context)

    async def DiffPolicy(self, request: operator_pb2.PolicyDocument,
                         context: Context) -> operator_pb2.DiffPolicyResponse:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.DiffPolicy(request, context)

    async def GetPolicy(self, request: operator_pb2.GetPolicyRequest,
                        context: Context) -> operator_pb2.PolicyRevision:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.GetPolicy(request, context)

    async def PolicyHistory(self, request: operator_pb2.PolicyHistoryRequest,
                            context: Context) -> operator_pb2.PolicyHistoryResponse:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.PolicyHistory(request, context)

    async def RollbackPolicy(self, request: operator_pb2.RollbackPolicyRequest,
                             context: Context) -> operator_pb2.ApplyPolicyResponse:
        if self._policies is None:
            await self._no_policies(context)
        return await self._policies.RollbackPolicy(request, context)

    # --- factories -----------------------------------------------------------------------------

    async def SetFactoryState(self, request: operator_pb2.SetFactoryStateRequest,
                              context: Context) -> operator_pb2.SetFactoryStateResponse:
        state = _ADMIN_FROM_PB.get(request.state)
        if state is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "state must be ACTIVE, CORDONED or DRAINED")
        elsewhere = self._status.not_leader()
        if elsewhere is not None:
            # operator.proto: writes go to the leader; the message says where it is.
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, elsewhere)
        if self._registry.get(request.factory_id) is None:
            known = [f.spec.id for f in self._registry.states()]
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                str(UnknownFactory(request.factory_id, known)))
        try:
            # Persist first: an admin state that would be forgotten by a restart is not set.
            await save_admin_state(self._store, request.factory_id, state)
        except StoreError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"store unavailable, admin state not changed: {exc}")
        self._registry.set_admin(request.factory_id, state)
        return operator_pb2.SetFactoryStateResponse(factory_id=request.factory_id,
                                                    state=_ADMIN_TO_PB[state])

    async def GetTopology(self, request: operator_pb2.GetTopologyRequest,
                          context: Context) -> operator_pb2.Topology:
        return operator_pb2.Topology(
            factories=[factory_status_to_pb(f) for f in self._registry.states()],
            sites=[operator_pb2.ConsumerSite(id=s.id, region=s.region,
                                             compliance_zone=s.compliance_zone)
                   for s in self._sites.values()],
        )

    # --- plan ----------------------------------------------------------------------------------

    async def GetPlan(self, request: operator_pb2.GetPlanRequest,
                      context: Context) -> operator_pb2.Plan:
        if request.site and request.site not in self._sites:
            await context.abort(grpc.StatusCode.NOT_FOUND, self._unknown_site(request.site))
        status = self._loop.status()
        snapshots = [s for s in self._cache.snapshots()
                     if not request.site or s.policy.site == request.site]
        return operator_pb2.Plan(
            version=status.version,
            solved_at=_timestamp(status.solved_at),
            status=status.summary,
            objective=status.objective,
            solve_seconds=status.solve_seconds,
            sites=[site_policy_to_pb(s.policy) for s in snapshots],
        )

    async def GetStatus(self, request: operator_pb2.GetStatusRequest,
                        context: Context) -> operator_pb2.StatusResponse:
        view = self._status.status()
        return operator_pb2.StatusResponse(
            replica_id=view.replica_id,
            leader=view.leader,
            store=view.store,
            read_only=view.read_only,
            plan_version=view.plan.version,
            plan_status=view.plan.summary,
            sidecars=[
                operator_pb2.SidecarStatus(
                    node_id=s.node_id, site=s.site, acked_version=s.acked_version,
                    last_nack=s.last_nack, lag_seconds=s.lag_seconds, connected=s.connected)
                for s in view.sidecars
            ],
            factories_healthy=view.factories_healthy,
            factories_total=view.factories_total,
            policy_revision=self._loop.policy[1],
            plan_policy_revision=view.plan.policy_revision,
        )

    async def Explain(self, request: operator_pb2.ExplainRequest,
                      context: Context) -> operator_pb2.ExplainResponse:
        if not request.site or not request.model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "site and model are required")
        site = self._sites.get(request.site)
        if site is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, self._unknown_site(request.site))
        plan = self._loop.plan
        if plan is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no plan yet")
        inputs, exact = self._loop.explain_inputs()
        try:
            # Pure but not free at a thousand factories: off the event loop.
            answer = await asyncio.to_thread(explain, inputs, plan, site.id, request.model,
                                             request.traffic_class or "default")
        except NoSuchRoute as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return explanation_to_pb(answer, exact)

    def _unknown_site(self, site: str) -> str:
        return f"unknown site {site!r} (known: {', '.join(sorted(self._sites)) or 'none'})"
