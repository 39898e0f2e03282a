"""A policy's canonical YAML: every default spelled out, keys in one fixed order, lists sorted
where order means nothing. Two files that mean the same policy have the same canonical form, so
``tdn policy diff`` shows what would change in force, not how the file was written, and
``parse(canonical(p)) == p`` for every valid policy ``p``.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml

from tdn.domain import DataPlaneSettings
from tdn.policy import API_VERSION, KIND, Policy, Slo


def _slo(slo: Slo) -> dict[str, float]:
    out: dict[str, float] = {}
    if slo.ttft_s is not None:
        out["ttft_seconds"] = slo.ttft_s
    if slo.per_token_s is not None:
        out["per_token_seconds"] = slo.per_token_s
    return out


def _dataplane(s: DataPlaneSettings) -> dict[str, Any]:
    o = s.outlier
    return {
        "first_byte_timeout_seconds": s.first_byte_timeout_s,
        "stream_idle_timeout_seconds": s.stream_idle_timeout_s,
        "slow_first_byte_seconds": s.slow_first_byte_s,
        "continuation": s.continuation_enabled,
        "retry_budget": {"percent": s.retry_budget_percent,
                         "min_concurrency": s.retry_budget_min_concurrency},
        "outlier_detection": {
            "consecutive_failures": o.consecutive_failures,
            "failure_rate_threshold": o.failure_rate_threshold,
            "minimum_requests": o.minimum_requests,
            "interval_seconds": o.interval_s,
            "base_ejection_seconds": o.base_ejection_s,
            "max_ejection_seconds": o.max_ejection_s,
            "max_ejection_percent": o.max_ejection_percent,
            "panic_threshold_percent": o.panic_threshold_percent,
            "probe_interval_seconds": o.probe_interval_s,
        },
    }


def policy_document(policy: Policy) -> dict[str, Any]:
    """The canonical document as plain data, in the order the reference documents it."""
    classes = []
    for c in sorted(policy.classes, key=lambda c: c.name):
        entry: dict[str, Any] = {"name": c.name, **_slo(c.slo)}
        if c.max_output_price_per_mtok is not None:
            entry["max_output_price_per_mtok"] = c.max_output_price_per_mtok
        if c.model_slos:
            entry["models"] = {m: _slo(s) for m, s in c.model_slos}
        classes.append(entry)
    tenants = []
    for t in sorted(policy.tenants, key=lambda t: t.name):
        tenant: dict[str, Any] = {"name": t.name, "zones": sorted(t.zones)}
        if t.sites:
            tenant["sites"] = sorted(t.sites)
        if t.classes:
            tenant["classes"] = sorted(t.classes)
        if t.max_output_price_per_mtok is not None:
            tenant["max_output_price_per_mtok"] = t.max_output_price_per_mtok
        tenants.append(tenant)
    models = []
    for m in sorted(policy.models, key=lambda m: m.name):
        model: dict[str, Any] = {"name": m.name}
        if m.aliases:
            model["aliases"] = sorted(m.aliases)
        if m.context_fallback:
            model["context_fallback"] = m.context_fallback
        if m.first_byte_timeout_s:
            model["first_byte_timeout_seconds"] = m.first_byte_timeout_s
        models.append(model)
    thresholds = policy.solver.resolve_on
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": policy.name, "description": policy.description},
        "objective": {"price": policy.objective.price, "latency": policy.objective.latency,
                      "carbon": policy.objective.carbon, "energy": policy.objective.energy},
        "tiers": {tier.value: factor for tier, factor in policy.tier_factors},
        "capacity": {"headroom": policy.capacity_headroom,
                     "queueing_steepness": policy.queueing_steepness,
                     "slo_miss_target": policy.slo_miss_target,
                     "max_primary_share": policy.max_primary_share,
                     "reserve_sole_factories": policy.reserve_sole_factories},
        "churn": {"penalty": policy.churn_penalty},
        "backups": {"depth": policy.backups.depth,
                    "failure_domain": policy.backups.domain.value},
        "solver": {"time_limit_seconds": policy.solver.time_limit_s,
                   "resolve_on": {"price_change": thresholds.price_change,
                                  "load_change": thresholds.load_change,
                                  "demand_change": thresholds.demand_change}},
        "demand": {"half_life_seconds": policy.demand.half_life_s},
        "classes": classes,
        "tenants": tenants,
        "models": models,
        "dataplane": _dataplane(policy.dataplane),
    }


def canonical_yaml(policy: Policy) -> str:
    return yaml.safe_dump(policy_document(policy), sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=100)


def unified_diff(current: str, proposed: str, current_name: str, proposed_name: str) -> str:
    """A unified diff of two canonical forms; empty when they are the same."""
    return "".join(difflib.unified_diff(
        current.splitlines(keepends=True), proposed.splitlines(keepends=True),
        fromfile=current_name, tofile=proposed_name))
