"""Plan → one :class:`SitePolicy` per site: what each site's sidecars are sent.

Each policy ships exactly the factories its routes name (make before break: a policy never
refers to a factory it does not carry) and passes :meth:`SitePolicy.check`. Values that jitter
with telemetry are quantised here so that an unchanged plan compiles to an unchanged policy and
the control plane can skip pushing it (:func:`site_policies_equal_ignoring_version`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Container, Mapping, Sequence

from tdn.domain import FactoryEndpoint, FactoryState, Plan, Route, Site, SitePolicy
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.topology.weights import rounded_weights


def ceil_two_significant(value: float) -> float:
    """Round up to two significant figures (0.314 → 0.32): a deadline basis that is never
    tighter than observed and does not change with every telemetry report."""
    if value <= 0 or not math.isfinite(value):
        return 0.0
    quantum = 10.0 ** (math.floor(math.log10(value)) - 1)
    # The small slack keeps exact values (0.3) from rounding up through float error.
    return round(math.ceil(value / quantum - 1e-9) * quantum, 12)


def _endpoint(factory: FactoryState, credential_ref: str) -> FactoryEndpoint:
    spec = factory.spec
    return FactoryEndpoint(
        id=spec.id,
        tier=spec.tier,
        region=spec.region,
        failure_domain=spec.domain,
        base_url=spec.endpoint,
        supports_prefill=spec.supports_prefill,
        ttft_p99_s=ceil_two_significant(factory.load.ttft_p99_s),
        credential_ref=credential_ref,
        price=spec.price,
    )


def restrict_route(route: Route, keep: Container[str]) -> Route:
    """The route with only the factories in ``keep``: primaries and each backup level
    renormalised, empty backup levels dropped (the route itself when nothing goes)."""
    if all(fid in keep for fid in route.factory_ids()):
        return route
    primary = rounded_weights({w.factory_id: w.weight for w in route.primary
                               if w.factory_id in keep})
    backups = []
    for level in route.backups:
        kept = rounded_weights({w.factory_id: w.weight for w in level if w.factory_id in keep})
        if kept:
            backups.append(kept)
    return dataclasses.replace(route, primary=primary, backups=tuple(backups))


def _decorated(routes: tuple[Route, ...], policy: Policy) -> tuple[Route, ...]:
    """The site's routes with the policy's per-model settings, plus one route per alias.

    A context fallback is only set when the fallback model is routed at this site too (a
    sidecar cannot fall back to a model it has no route for); an alias route is a copy of its
    model's route under the alias's name, unless the site routes a model of that name itself.
    """
    routed = {r.model for r in routes}
    out = []
    for route in routes:
        rule = policy.model_rule(route.model)
        out.append(route if rule is None else dataclasses.replace(
            route,
            context_fallback_model=(rule.context_fallback
                                    if rule.context_fallback in routed else ""),
            first_byte_timeout_s=rule.first_byte_timeout_s))
    aliases = [dataclasses.replace(route, model=alias) for route in out
               for rule in [policy.model_rule(route.model)] if rule is not None
               for alias in rule.aliases if alias not in routed]
    return tuple(out + aliases)


def compile_site_policies(plan: Plan, factories: Sequence[FactoryState], sites: Sequence[Site],
                          *, credential_refs: Mapping[str, str] | None = None,
                          generated_at: float = 0.0,
                          policy: Policy = DEFAULT_POLICY) -> dict[str, SitePolicy]:
    """One policy per site (those given and those the plan routes), version ``str(plan.version)``.

    ``credential_refs`` maps a factory id to the name of the credential sidecars use for it;
    ``generated_at`` is wall-clock seconds supplied by the caller (this core reads no clock).
    The operator's ``policy`` supplies the data-plane settings of every site, each model's
    context fallback and first-byte deadline, and the routes of model aliases.
    """
    refs = credential_refs or {}
    by_id = {f.spec.id: f for f in factories}
    # One pass over the plan's routes (Plan.routes_for_site scans them all, once per site).
    by_site: dict[str, list[Route]] = {s.id: [] for s in sites}
    for site, route in plan.routes:
        by_site.setdefault(site, []).append(route)
    policies: dict[str, SitePolicy] = {}
    for site in sorted(by_site):
        routes = _decorated(tuple(restrict_route(r, by_id) for r in by_site[site]), policy)
        referenced = sorted({fid for r in routes for fid in r.factory_ids()})
        site_policy = SitePolicy(
            site=site,
            version=str(plan.version),
            factories=tuple(_endpoint(by_id[fid], refs.get(fid, "")) for fid in referenced),
            routes=routes,
            generated_at=generated_at,
            plan_reason=plan.status,
            settings=policy.dataplane,
        )
        site_policy.check()  # a failure here is a bug in this module, never to be shipped
        policies[site] = site_policy
    return policies


def site_policies_equal_ignoring_version(a: SitePolicy, b: SitePolicy) -> bool:
    """Whether a sidecar would route identically under ``a`` and ``b``.

    Ignores ``version``, ``generated_at`` and ``plan_reason``: the plan status is global (a note
    about another site changes it), and pushing every site for it would be churn, not news.
    """
    return (a.site == b.site and a.factories == b.factories and a.routes == b.routes
            and a.settings == b.settings)
