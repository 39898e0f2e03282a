"""Policy YAML → :class:`~tdn.policy.Policy`, refusing anything doubtful with file, line and key.

The YAML is composed into nodes (never constructed into Python objects first) so that every
value keeps its line, duplicate keys are caught (a plain loader silently keeps the last one) and
every error in the file is reported at once, not just the first. Unknown keys, wrong types,
out-of-range numbers, undefined classes, alias clashes and fallback cycles are all refused; no
partial policy is ever returned. Checks that need the network (do a tenant's sites exist?) are
separate (:func:`check_sites`) so that a file can be validated offline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tdn.domain import DataPlaneSettings, OutlierDetection, Tier
from tdn.policy import (
    API_VERSION,
    DEFAULT_CLASS,
    KIND,
    ON_SITE_ZONE_PREFIX,
    BackupDomain,
    Backups,
    DemandSettings,
    ModelRule,
    Objective,
    Policy,
    ResolveThresholds,
    Slo,
    SolverSettings,
    Tenant,
    TrafficClass,
)

T = TypeVar("T")

# Deeper backup lists buy nothing a sidecar would reach in time and make every policy larger.
MAX_BACKUP_DEPTH = 5
MAX_TIME_LIMIT_S = 60.0
_NO_STRINGS: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyError:
    """One reason a policy is refused: where (file, line, dotted key) and why."""

    filename: str
    line: int
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.key or '<document>'}: {self.reason}"


class PolicyInvalid(ValueError):
    """A policy TDN refuses; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: Iterable[PolicyError]) -> None:
        self.errors = tuple(sorted(errors, key=lambda e: (e.line, e.key, e.reason)))
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A valid policy and the line of each key path, for checks made after parsing."""

    policy: Policy
    filename: str
    lines: Mapping[str, int]
    # "<list path>=<value>" -> (the item's key path, its line) for lists of names, and
    # "tenants=<name>" -> the tenant's key path: the policy keeps such lists sorted (their order
    # means nothing), so a later check must not report the sorted position as the file's.
    places: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def line(self, key: str) -> int:
        return self.lines.get(key, 0)

    def place(self, list_path: str, value: str) -> tuple[str, int]:
        """Where ``value`` of the list at ``list_path`` is written: key path and line."""
        return self.places.get(f"{list_path}={value}", (list_path, self.line(list_path)))

    def tenant_path(self, name: str) -> str:
        return self.places.get(f"tenants={name}", ("tenants", 0))[0]


class _Skip(Exception):
    """A value already reported as an error; parsing of the enclosing item stops."""


_Entries = dict[str, tuple[yaml.Node, yaml.Node]]
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Walker:
    """Reads typed values out of YAML nodes, collecting errors instead of stopping at one."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[PolicyError] = []
        self.lines: dict[str, int] = {}
        self.places: dict[str, tuple[str, int]] = {}

    def error(self, node: yaml.Node | None, key: str, reason: str) -> _Skip:
        self.errors.append(PolicyError(self.filename, _line(node) if node else 0, key, reason))
        return _Skip()

    def mapping(self, node: yaml.Node, path: str, allowed: set[str]) -> _Entries:
        """The entries of a mapping node; unknown and duplicate keys are reported (and dropped)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, path, f"expected a mapping, got {_kind(node)}")
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                self.error(key_node, path, f"keys must be strings, got {_kind(key_node)}")
                continue
            key = str(key_node.value)
            full = f"{path}.{key}" if path else key
            if key in entries:
                first = _line(entries[key][0])
                self.error(key_node, full, f"duplicate key (first on line {first})")
                continue
            if allowed and key not in allowed:
                self.error(key_node, full, f"unknown key (allowed: {', '.join(sorted(allowed))})")
                continue
            entries[key] = (key_node, value_node)
            self.lines[full] = _line(key_node)
        self.lines.setdefault(path, _line(node))
        return entries

    def open_mapping(self, node: yaml.Node, path: str) -> _Entries:
        """A mapping whose keys are names chosen by the operator (models, tiers)."""
        return self.mapping(node, path, set())

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, path, f"expected a list, got {_kind(node)}")
        return list(node.value)

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, path, f"expected a single value, got {_kind(node)}")
        return _CONSTRUCTOR.construct_object(node)

    def number(self, node: yaml.Node, path: str, *, low: float = 0.0,
               high: float = math.inf, low_open: bool = False, high_open: bool = False,
               ) -> float:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, path, f"expected a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self.error(node, path, f"expected a finite number, got {value!r}")
        below = number <= low if low_open else number < low
        above = number >= high if high_open else number > high
        if below or above:
            allowed = _range(low, high, low_open, high_open)
            raise self.error(node, path, f"{value!r} is out of range: {allowed}")
        return number

    def integer(self, node: yaml.Node, path: str, *, low: int = 0,
                high: int | None = None) -> int:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, path, f"expected a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            limit = f"{low}..{high}" if high is not None else f">= {low}"
            raise self.error(node, path, f"{value!r} is out of range: must be {limit}")
        return value

    def string(self, node: yaml.Node, path: str, *, empty: bool = False) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str):
            raise self.error(node, path, f"expected a string, got {value!r}")
        if not empty and not value.strip():
            raise self.error(node, path, "must not be empty")
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            raise self.error(node, path, f"expected true or false, got {value!r}")
        return value

    def strings(self, node: yaml.Node, path: str) -> tuple[str, ...]:
        out: list[str] = []
        for i, item in enumerate(self.sequence(node, path)):
            value = self.string(item, f"{path}[{i}]")
            if value in out:
                raise self.error(item, f"{path}[{i}]", f"{value!r} is listed twice")
            out.append(value)
            self.places[f"{path}={value}"] = (f"{path}[{i}]", _line(item))
        return tuple(out)

    def field(self, entries: _Entries, key: str, path: str, read: Callable[[yaml.Node, str], T],
              default: T) -> T:
        """``read`` the value at ``key`` if present; a bad value is reported and ``default``
        returned so that the rest of the file is still checked."""
        if key not in entries:
            return default
        full = f"{path}.{key}" if path else key
        try:
            return read(entries[key][1], full)
        except _Skip:
            return default

    def required(self, entries: _Entries, key: str, path: str, parent: yaml.Node,
                 read: Callable[[yaml.Node, str], T]) -> T:
        full = f"{path}.{key}" if path else key
        if key not in entries:
            raise self.error(parent, full, "required key is missing")
        return read(entries[key][1], full)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return repr(_CONSTRUCTOR.construct_object(node)) if isinstance(node, yaml.ScalarNode) else "?"


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    if math.isinf(high):
        return f"must be {lo}"
    hi = f"< {high:g}" if high_open else f"<= {high:g}"
    return f"must be {lo} and {hi}"


# --- sections ---------------------------------------------------------------------------------

_TOP_KEYS = {"apiVersion", "kind", "metadata", "objective", "tiers", "capacity", "churn",
             "backups", "solver", "demand", "classes", "tenants", "models", "dataplane"}
_SLO_KEYS = {"ttft_seconds", "per_token_seconds"}


def _objective(w: _Walker, node: yaml.Node, path: str) -> Objective:
    e = w.mapping(node, path, {"price", "latency", "carbon", "energy"})
    weights = {k: w.field(e, k, path, w.number, 1.0) for k in ("price", "latency", "carbon",
                                                                "energy")}
    if all(v == 0 for v in weights.values()):
        raise w.error(node, path, "every weight is 0: the solver would have nothing to weigh")
    return Objective(**weights)


def _tiers(w: _Walker, node: yaml.Node, path: str) -> tuple[tuple[Tier, float], ...]:
    out: dict[Tier, float] = {}
    names = ", ".join(t.value for t in Tier)
    for key, (key_node, value_node) in w.open_mapping(node, path).items():
        full = f"{path}.{key}"
        try:
            tier = Tier(key)
        except ValueError:
            w.error(key_node, full, f"unknown tier (allowed: {names})")
            continue
        try:
            out[tier] = w.number(value_node, full, low=0.0, low_open=True, high=100.0)
        except _Skip:
            continue
    return tuple(sorted(out.items()))


def _slo(w: _Walker, e: _Entries, path: str) -> Slo:
    def positive(node: yaml.Node, p: str) -> float:
        return w.number(node, p, low=0.0, low_open=True)

    return Slo(ttft_s=w.field(e, "ttft_seconds", path, positive, None),
               per_token_s=w.field(e, "per_token_seconds", path, positive, None))


def _price_cap(w: _Walker, e: _Entries, path: str) -> float | None:
    def positive(node: yaml.Node, p: str) -> float:
        return w.number(node, p, low=0.0, low_open=True)

    return w.field(e, "max_output_price_per_mtok", path, positive, None)


def _class(w: _Walker, node: yaml.Node, path: str) -> TrafficClass:
    e = w.mapping(node, path, {"name", "models", "max_output_price_per_mtok"} | _SLO_KEYS)
    name = w.required(e, "name", path, node, w.string)
    model_slos: list[tuple[str, Slo]] = []
    if "models" in e:
        mpath = f"{path}.models"
        try:
            for model, (_, slo_node) in w.open_mapping(e["models"][1], mpath).items():
                try:
                    slo_entries = w.mapping(slo_node, f"{mpath}.{model}", _SLO_KEYS)
                except _Skip:
                    continue
                model_slos.append((model, _slo(w, slo_entries, f"{mpath}.{model}")))
        except _Skip:
            pass
    return TrafficClass(name=name, slo=_slo(w, e, path), model_slos=tuple(sorted(model_slos)),
                        max_output_price_per_mtok=_price_cap(w, e, path))


def _zone(w: _Walker, node: yaml.Node, path: str) -> str:
    zone = w.string(node, path)
    list_path = path.rpartition("[")[0]
    w.places[f"{list_path}={zone}"] = (path, _line(node))
    if zone.startswith(ON_SITE_ZONE_PREFIX) and not zone.removeprefix(ON_SITE_ZONE_PREFIX):
        raise w.error(node, path, f"{zone!r} names no site (write on-site:<site id>)")
    return zone


def _tenant(w: _Walker, node: yaml.Node, path: str) -> Tenant:
    e = w.mapping(node, path, {"name", "zones", "sites", "classes", "max_output_price_per_mtok"})
    name = w.required(e, "name", path, node, w.string)
    w.places[f"tenants={name}"] = (path, _line(node))

    def zones(value: yaml.Node, p: str) -> tuple[str, ...]:
        items = w.sequence(value, p)
        if not items:
            raise w.error(value, p, "must list at least one zone (traffic must go somewhere)")
        out = [_zone(w, item, f"{p}[{i}]") for i, item in enumerate(items)]
        if len(set(out)) != len(out):
            raise w.error(value, p, "lists a zone twice")
        return tuple(out)

    # Order means nothing in these lists: sorted, two files that mean the same compare equal.
    return Tenant(
        name=name,
        zones=tuple(sorted(w.required(e, "zones", path, node, zones))),
        sites=tuple(sorted(w.field(e, "sites", path, w.strings, _NO_STRINGS))),
        classes=tuple(sorted(w.field(e, "classes", path, w.strings, _NO_STRINGS))),
        max_output_price_per_mtok=_price_cap(w, e, path),
    )


def _model(w: _Walker, node: yaml.Node, path: str) -> ModelRule:
    e = w.mapping(node, path, {"name", "aliases", "context_fallback",
                               "first_byte_timeout_seconds"})
    return ModelRule(
        name=w.required(e, "name", path, node, w.string),
        aliases=tuple(sorted(w.field(e, "aliases", path, w.strings, _NO_STRINGS))),
        context_fallback=w.field(e, "context_fallback", path, w.string, ""),
        first_byte_timeout_s=w.field(e, "first_byte_timeout_seconds", path, w.number, 0.0),
    )


def _items(w: _Walker, entries: _Entries, key: str,
           read: Callable[[_Walker, yaml.Node, str], T]) -> list[tuple[T, yaml.Node, str]]:
    """Each well-formed item of the list at ``key`` with its node and path."""
    if key not in entries:
        return []
    try:
        nodes = w.sequence(entries[key][1], key)
    except _Skip:
        return []
    out = []
    for i, node in enumerate(nodes):
        path = f"{key}[{i}]"
        try:
            out.append((read(w, node, path), node, path))
        except _Skip:
            continue
    return out


def _unique_names(w: _Walker, items: list[tuple[Any, yaml.Node, str]], what: str) -> None:
    seen: dict[str, str] = {}
    for item, node, path in items:
        if item.name in seen:
            w.error(node, f"{path}.name", f"{what} {item.name!r} is defined twice "
                                          f"(first at {seen[item.name]})")
        seen.setdefault(item.name, path)


def _dataplane(w: _Walker, node: yaml.Node, path: str) -> DataPlaneSettings:
    e = w.mapping(node, path, {"first_byte_timeout_seconds", "stream_idle_timeout_seconds",
                               "slow_first_byte_seconds", "continuation", "retry_budget",
                               "outlier_detection"})

    def percent(n: yaml.Node, p: str) -> float:
        return w.number(n, p, high=100.0)

    def share(n: yaml.Node, p: str) -> float:
        return w.number(n, p, high=1.0)

    budget_percent, budget_min = 0.0, 0
    if "retry_budget" in e:
        bpath = f"{path}.retry_budget"
        try:
            b = w.mapping(e["retry_budget"][1], bpath, {"percent", "min_concurrency"})
            budget_percent = w.field(b, "percent", bpath, percent, 0.0)
            budget_min = w.field(b, "min_concurrency", bpath, w.integer, 0)
        except _Skip:
            pass
    outlier = OutlierDetection()
    if "outlier_detection" in e:
        opath = f"{path}.outlier_detection"
        try:
            o = w.mapping(e["outlier_detection"][1], opath, {
                "consecutive_failures", "failure_rate_threshold", "minimum_requests",
                "interval_seconds", "base_ejection_seconds", "max_ejection_seconds",
                "max_ejection_percent", "panic_threshold_percent", "probe_interval_seconds"})
            outlier = OutlierDetection(
                consecutive_failures=w.field(o, "consecutive_failures", opath, w.integer, 0),
                failure_rate_threshold=w.field(o, "failure_rate_threshold", opath, share, 0.0),
                minimum_requests=w.field(o, "minimum_requests", opath, w.integer, 0),
                interval_s=w.field(o, "interval_seconds", opath, w.number, 0.0),
                base_ejection_s=w.field(o, "base_ejection_seconds", opath, w.number, 0.0),
                max_ejection_s=w.field(o, "max_ejection_seconds", opath, w.number, 0.0),
                max_ejection_percent=w.field(o, "max_ejection_percent", opath, percent, 0.0),
                panic_threshold_percent=w.field(o, "panic_threshold_percent", opath, percent,
                                                0.0),
                probe_interval_s=w.field(o, "probe_interval_seconds", opath, w.number, 0.0),
            )
            if 0 < outlier.max_ejection_s < outlier.base_ejection_s:
                w.error(o["max_ejection_seconds"][1] if "max_ejection_seconds" in o else None,
                        f"{opath}.max_ejection_seconds",
                        f"{outlier.max_ejection_s:g} is below base_ejection_seconds "
                        f"{outlier.base_ejection_s:g}")
        except _Skip:
            pass
    return DataPlaneSettings(
        first_byte_timeout_s=w.field(e, "first_byte_timeout_seconds", path, w.number, 0.0),
        stream_idle_timeout_s=w.field(e, "stream_idle_timeout_seconds", path, w.number, 0.0),
        slow_first_byte_s=w.field(e, "slow_first_byte_seconds", path, w.number, 0.0),
        continuation_enabled=w.field(e, "continuation", path, w.boolean, False),
        retry_budget_percent=budget_percent,
        retry_budget_min_concurrency=budget_min,
        outlier=outlier,
    )


def _check_models(w: _Walker, models: list[tuple[ModelRule, yaml.Node, str]]) -> None:
    """Aliases must name one model each and never shadow a model; fallbacks must not loop."""
    names = {m.name for m, _, _ in models}
    alias_of: dict[str, str] = {}

    def error(key: str, reason: str) -> None:
        w.errors.append(PolicyError(w.filename, w.lines.get(key, 0), key, reason))

    for rule, _, path in models:
        for alias in rule.aliases:
            where = f"{path}.aliases"
            if alias in names:
                error(where, f"alias {alias!r} is itself a model in this policy")
            elif alias in alias_of and alias_of[alias] != rule.name:
                error(where, f"alias {alias!r} already names model {alias_of[alias]!r}")
            alias_of.setdefault(alias, rule.name)
        fallback = rule.context_fallback
        if fallback == rule.name:
            error(f"{path}.context_fallback", "a model cannot fall back to itself")
        elif fallback not in names and any(fallback in m.aliases for m, _, _ in models):
            error(f"{path}.context_fallback", f"{fallback!r} is an alias; name the served model")
    fallback_of = {m.name: m.context_fallback for m, _, _ in models if m.context_fallback}
    for rule, _, path in models:
        seen = [rule.name]
        current = fallback_of.get(rule.name, "")
        while current and current not in seen:
            seen.append(current)
            current = fallback_of.get(current, "")
        if current == rule.name and len(seen) > 1:
            error(f"{path}.context_fallback",
                  f"context fallbacks loop: {' -> '.join([*seen, rule.name])}")


def _parse(w: _Walker, root: yaml.Node) -> Policy:
    top = w.mapping(root, "", _TOP_KEYS)
    for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
        try:
            value = w.required(top, key, "", root, w.string)
        except _Skip:
            continue
        if value != expected:
            w.error(top[key][1], key, f"{value!r} is not {expected!r}")

    name, description = "default", ""
    if "metadata" in top:
        try:
            meta = w.mapping(top["metadata"][1], "metadata", {"name", "description"})
            name = w.field(meta, "name", "metadata", w.string, "default")
            description = w.field(meta, "description", "metadata",
                                  lambda n, p: w.string(n, p, empty=True), "")
        except _Skip:
            pass

    headroom, steepness, churn = 0.2, 0.1, 0.1
    miss_target, max_share, reserve = 0.01, 0.34, True
    if "capacity" in top:
        try:
            cap = w.mapping(top["capacity"][1], "capacity",
                            {"headroom", "queueing_steepness", "slo_miss_target",
                             "max_primary_share", "reserve_sole_factories"})
            headroom = w.field(cap, "headroom", "capacity",
                               lambda n, p: w.number(n, p, high=1.0, high_open=True), 0.2)
            steepness = w.field(cap, "queueing_steepness", "capacity", w.number, 0.1)

            def share(n: yaml.Node, p: str) -> float:
                return w.number(n, p, low=0.0, high=1.0, low_open=True)

            miss_target = w.field(cap, "slo_miss_target", "capacity", share, 0.01)
            max_share = w.field(cap, "max_primary_share", "capacity", share, 0.34)
            reserve = w.field(cap, "reserve_sole_factories", "capacity", w.boolean, True)
        except _Skip:
            pass
    if "churn" in top:
        try:
            ch = w.mapping(top["churn"][1], "churn", {"penalty"})
            churn = w.field(ch, "penalty", "churn", w.number, 0.1)
        except _Skip:
            pass

    backups = Backups()
    if "backups" in top:
        try:
            b = w.mapping(top["backups"][1], "backups", {"depth", "failure_domain"})

            def domain(n: yaml.Node, p: str) -> BackupDomain:
                value = w.string(n, p)
                try:
                    return BackupDomain(value)
                except ValueError:
                    raise w.error(n, p, f"{value!r} is not one of "
                                        f"{', '.join(d.value for d in BackupDomain)}") from None

            backups = Backups(
                depth=w.field(b, "depth", "backups",
                              lambda n, p: w.integer(n, p, high=MAX_BACKUP_DEPTH), 2),
                domain=w.field(b, "failure_domain", "backups", domain,
                               BackupDomain.FAILURE_DOMAIN))
        except _Skip:
            pass

    solver = SolverSettings()
    if "solver" in top:
        try:
            s = w.mapping(top["solver"][1], "solver", {"time_limit_seconds", "resolve_on"})
            thresholds = ResolveThresholds()
            if "resolve_on" in s:
                try:
                    r = w.mapping(s["resolve_on"][1], "solver.resolve_on",
                                  {"price_change", "load_change", "demand_change"})
                    thresholds = ResolveThresholds(
                        price_change=w.field(r, "price_change", "solver.resolve_on", w.number,
                                             0.10),
                        load_change=w.field(r, "load_change", "solver.resolve_on", w.number,
                                            0.25),
                        demand_change=w.field(r, "demand_change", "solver.resolve_on",
                                              w.number, 0.25))
                except _Skip:
                    pass
            solver = SolverSettings(
                time_limit_s=w.field(
                    s, "time_limit_seconds", "solver",
                    lambda n, p: w.number(n, p, low=0.0, low_open=True, high=MAX_TIME_LIMIT_S),
                    2.0),
                resolve_on=thresholds)
        except _Skip:
            pass

    demand = DemandSettings()
    if "demand" in top:
        try:
            d = w.mapping(top["demand"][1], "demand", {"half_life_seconds"})
            demand = DemandSettings(half_life_s=w.field(
                d, "half_life_seconds", "demand",
                lambda n, p: w.number(n, p, low=0.0, low_open=True), 300.0))
        except _Skip:
            pass

    classes = _items(w, top, "classes", _class)
    _unique_names(w, classes, "class")
    tenants = _items(w, top, "tenants", _tenant)
    _unique_names(w, tenants, "tenant")
    class_names = {c.name for c, _, _ in classes} | {DEFAULT_CLASS}
    for tenant, node, path in tenants:
        for i, cls in enumerate(tenant.classes):
            if cls not in class_names:
                w.errors.append(PolicyError(
                    w.filename, w.lines.get(f"{path}.classes", _line(node)),
                    f"{path}.classes[{i}]",
                    f"class {cls!r} is not defined under classes "
                    f"(defined: {', '.join(sorted(class_names))})"))
    models = _items(w, top, "models", _model)
    _unique_names(w, models, "model")
    _check_models(w, models)

    return Policy(
        name=name,
        description=description,
        objective=w.field(top, "objective", "", _bind(w, _objective), Objective()),
        tier_factors=w.field(top, "tiers", "", _bind(w, _tiers), ()),
        capacity_headroom=headroom,
        queueing_steepness=steepness,
        slo_miss_target=miss_target,
        max_primary_share=max_share,
        reserve_sole_factories=reserve,
        churn_penalty=churn,
        backups=backups,
        solver=solver,
        demand=demand,
        classes=tuple(sorted((c for c, _, _ in classes), key=lambda c: c.name)),
        tenants=tuple(sorted((t for t, _, _ in tenants), key=lambda t: t.name)),
        models=tuple(sorted((m for m, _, _ in models), key=lambda m: m.name)),
        dataplane=w.field(top, "dataplane", "", _bind(w, _dataplane), DataPlaneSettings()),
    )


def _bind(w: _Walker, read: Callable[[_Walker, yaml.Node, str], T],
          ) -> Callable[[yaml.Node, str], T]:
    return lambda node, path: read(w, node, path)


def parse_policy(text: str, filename: str) -> ParsedPolicy:
    """Parse a policy document; raise :class:`PolicyInvalid` listing every problem."""
    w = _Walker(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = int(mark.line) + 1 if mark is not None else 0
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyInvalid([PolicyError(filename, line, "", f"not valid YAML: {problem}")],
                            ) from None
    if root is None:
        raise PolicyInvalid([PolicyError(filename, 1, "", "the document is empty")])
    try:
        policy = _parse(w, root)
    except _Skip:
        policy = None
    if w.errors or policy is None:
        raise PolicyInvalid(w.errors)
    return ParsedPolicy(policy=policy, filename=filename, lines=dict(w.lines),
                        places=dict(w.places))


def check_sites(parsed: ParsedPolicy, site_ids: Iterable[str]) -> tuple[PolicyError, ...]:
    """Errors for names of consumer sites the network does not have (tenants' sites, on-site
    zones): a typo there would silently leave a tenant's traffic unrestricted."""
    known = set(site_ids)
    listing = ", ".join(sorted(known)) or "none"
    errors = []
    for tenant in parsed.policy.tenants:
        path = parsed.tenant_path(tenant.name)
        for site in tenant.sites:
            if site not in known:
                key, line = parsed.place(f"{path}.sites", site)
                errors.append(PolicyError(parsed.filename, line, key,
                                          f"unknown site {site!r} (known: {listing})"))
        for zone in tenant.zones:
            site = zone.removeprefix(ON_SITE_ZONE_PREFIX)
            if zone.startswith(ON_SITE_ZONE_PREFIX) and site not in known:
                key, line = parsed.place(f"{path}.zones", zone)
                errors.append(PolicyError(parsed.filename, line, key,
                                          f"unknown site {site!r} in zone {zone!r} "
                                          f"(known: {listing})"))
    return tuple(sorted(errors, key=lambda e: (e.line, e.key, e.reason)))


def validate_policy(text: str, filename: str,
                    site_ids: Iterable[str] | None = None) -> tuple[PolicyError, ...]:
    """Every error in ``text`` (empty when valid); sites are checked when ``site_ids`` is given."""
    try:
        parsed = parse_policy(text, filename)
    except PolicyInvalid as exc:
        return exc.errors
    return check_sites(parsed, site_ids) if site_ids is not None else ()


def load_policy_file(path: str | Path) -> ParsedPolicy:
    p = Path(path)
    return parse_policy(p.read_text(), str(p))
