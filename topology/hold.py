"""Fail static: a route the control plane can no longer see is held, not emptied.

When a new plan would leave a route with no factory at all, and every factory that route used
was excluded only for what telemetry says about it (health unknown — its reports stopped —,
unhealthy, at capacity), the plan keeps the previous route for it instead. The control plane's
view is then the likeliest thing to be wrong: a partition between agents and the control plane
makes every factory "unknown" while the factories serve on, and an empty route would turn that
blindness into an outage at every sidecar. A held route costs little when the factories really
are down: sidecars find that out per request in milliseconds (outlier detection, panic), and an
empty route would have refused those requests anyway.

What an operator or the policy decided is never overridden: each factory of a held route is
judged again as if it were healthy and idle (:func:`~tdn.topology.eligibility.judge` under the
policy in force), so one drained, outside a zone the site or tenant may use, above a price cap
or too slow for the SLO leaves the held route — the eligibility checks name health first, so a
"health unknown" exclusion alone does not prove the rest would pass. A route whose factories all
left stays empty, as does one whose (site, model, class) has no demand any more. A factory the
new plan does not mention (removed from the network, no longer serving the model) leaves it too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from tdn.domain import Demand, FactoryLoad, FactoryState, Health, Plan, Route, Site
from tdn.policy import DEFAULT_POLICY, Policy
from tdn.topology.compile import restrict_route
from tdn.topology.eligibility import AT_CAPACITY, HEALTH_UNKNOWN, UNHEALTHY, Check, judge
from tdn.topology.requirements import requirement

# Exclusions that come from telemetry, which a blind or lagging control plane gets wrong.
HOLDABLE_REASONS = frozenset({HEALTH_UNKNOWN, UNHEALTHY, AT_CAPACITY})

HELD_NOTE = "held (fail static)"

_Key = tuple[str, str, str]  # (site, model, traffic class)


def _is_empty(route: Route) -> bool:
    return not route.primary and not any(route.backups)


def _held(route: Route, holdable: set[str]) -> Route | None:
    """``route`` with only the factories in ``holdable``, or None when none are left."""
    kept = restrict_route(route, holdable)
    if kept.primary:
        return kept
    if not kept.backups:
        return None
    # The first backup level carries what the primaries did.
    return dataclasses.replace(kept, primary=kept.backups[0], backups=kept.backups[1:])


def _policy_allows(key: _Key, factory: FactoryState, demands: Sequence[Demand],
                   site: Site | None, policy: Policy) -> bool:
    """Whether the factory could serve every demand of ``key`` were it healthy and idle."""
    if site is None or not demands:
        return False
    idle = dataclasses.replace(factory, health=Health.HEALTHY, load=FactoryLoad())
    return all(judge(d, idle, site, requirement(d, site, policy)).check
               in (Check.OK, Check.CORDONED) for d in demands)


def hold_lost_routes(plan: Plan, previous: Plan | None, factories: Sequence[FactoryState],
                     sites: Sequence[Site], demands: Sequence[Demand], *,
                     policy: Policy = DEFAULT_POLICY) -> tuple[Plan, tuple[_Key, ...]]:
    """``plan`` with the previous plan's route kept wherever the new one lost every factory to
    telemetry-derived exclusions; and the (site, model, class) keys that were held."""
    if previous is None:
        return plan, ()
    new: dict[_Key, Route] = {(s, r.model, r.traffic_class): r for s, r in plan.routes}
    by_id = {f.spec.id: f for f in factories}
    site_by_id = {s.id: s for s in sites}
    by_key: dict[_Key, list[Demand]] = {}
    for d in demands:
        by_key.setdefault((d.site, d.model, d.traffic_class), []).append(d)
    holdable: dict[_Key, set[str]] = {}
    for site, model, traffic_class, factory_id, reason in plan.exclusions:
        key = (site, model, traffic_class)
        factory = by_id.get(factory_id)
        if (reason in HOLDABLE_REASONS and factory is not None
                and _policy_allows(key, factory, by_key.get(key, ()), site_by_id.get(site),
                                   policy)):
            holdable.setdefault(key, set()).add(factory_id)
    held: list[_Key] = []
    replaced: dict[_Key, Route] = {}
    for site, old in previous.routes:
        key = (site, old.model, old.traffic_class)
        current = new.get(key)
        if (current is not None and not _is_empty(current)) or _is_empty(old):
            continue
        kept = _held(old, holdable.get(key, set()))
        if kept is None:
            continue
        replaced[key] = kept
        held.append(key)
    if not held:
        return plan, ()
    routes: list[tuple[str, Route]] = []
    for site, route in plan.routes:
        key = (site, route.model, route.traffic_class)
        routes.append((site, replaced.pop(key, route)))
    routes.extend((key[0], route) for key, route in replaced.items())  # routes the plan dropped
    status = f"{plan.status}; {len(held)} route(s) {HELD_NOTE}"
    return dataclasses.replace(plan, routes=tuple(routes), status=status), tuple(held)


def held_sites(keys: Iterable[_Key]) -> tuple[str, ...]:
    """The sites among held route keys, sorted (for logs and status)."""
    return tuple(sorted({site for site, _, _ in keys}))
