"""The fallback when the LP cannot answer: cheapest eligible factory with spare capacity first.

It honours the same eligibility and capacities as the LP (it reads the same
:class:`~tdn.topology.problem.Problem`) but ignores queueing and churn, so its plans are safe,
not good. Groups are filled in sorted order, which makes the result deterministic.
"""

from __future__ import annotations

from tdn.topology.problem import Assignment, GroupKey, Problem, unserved_penalty


def assign_greedily(problem: Problem, status: str) -> Assignment:
    spare = dict(problem.capacity)
    spare_tokens = dict(problem.output_capacity)
    shares: dict[GroupKey, dict[str, float]] = {}
    unserved: dict[GroupKey, float] = {}
    objective = 0.0
    for group in problem.groups:
        remaining = 1.0
        tokens_per_s = group.demand.rate_rps * group.demand.output_tokens
        for c in group.primaries:
            if remaining <= 0.0:
                break
            take = remaining
            if c.concurrency > 0:
                take = min(take, spare[c.factory_id] / c.concurrency)
            if c.factory_id in spare_tokens and tokens_per_s > 0:
                take = min(take, spare_tokens[c.factory_id] / tokens_per_s)
            if take <= 0.0:
                continue
            shares.setdefault(group.key, {})[c.factory_id] = take
            spare[c.factory_id] -= take * c.concurrency
            if c.factory_id in spare_tokens:
                spare_tokens[c.factory_id] -= take * tokens_per_s
            remaining -= take
            objective += group.objective_rate * c.cost * take
        unserved[group.key] = max(remaining, 0.0)
        objective += group.objective_rate * unserved_penalty(group, problem.options) * remaining
    return Assignment(shares=shares, unserved=unserved, objective=objective, status=status)
