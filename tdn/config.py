"""The network description file (sites, demand, factories, addresses), loaded into frozen values.

``tdn up`` starts what such a file describes; the control plane reads its sites and initial
demand; an agent reads one factory entry. Errors name the file, the line and the key, and no
partial result is ever returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tdn.domain import Demand, Energy, FactorySpec, Price, Site, Tier, ValidationFailure

T = TypeVar("T")


class _Required:
    """Marks a key with no default."""


_REQUIRED = _Required()


class ConfigError(ValueError):
    """A configuration file TDN refuses, with where and why."""

    def __init__(self, filename: str, line: int, key: str, reason: str) -> None:
        super().__init__(f"{filename}:{line}: {key}: {reason}")
        self.filename = filename
        self.line = line
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SimParams:
    """How ``tdn up`` runs a simulated factory: port and token-timing model."""

    port: int
    max_concurrency: int = 16
    prefill_tokens_per_s: float = 8000.0
    itl_ms: float = 15.0
    base_latency_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class FactoryConfig:
    spec: FactorySpec
    sim: SimParams | None = None


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    node_id: str = "sidecar-1"
    site: str = ""
    listen: str = "127.0.0.1:8080"
    admin: str = "127.0.0.1:9901"


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    filename: str
    grpc_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:8081"
    sites: tuple[Site, ...] = ()
    demand: tuple[Demand, ...] = ()
    factories: tuple[FactoryConfig, ...] = ()
    sidecars: tuple[SidecarConfig, ...] = field(default_factory=tuple)

    def site(self, site_id: str) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)


# --- YAML with line numbers -------------------------------------------------------------------


class _LineLoader(yaml.SafeLoader):
    """A safe loader that remembers the line of every mapping, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = _LineDict({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {
        str(k.value): k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.Node)
    }
    return mapping


class _LineDict(dict[str, Any]):
    line: int = 0
    key_lines: dict[str, int]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Reads typed values out of a parsed mapping, raising ConfigError with file and line."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def fail(self, where: Mapping[str, Any], key: str, reason: str) -> ConfigError:
        line = getattr(where, "key_lines", {}).get(key, getattr(where, "line", 0))
        return ConfigError(self.filename, line, key, reason)

    def check_keys(self, where: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in where:
            if key not in allowed:
                raise ConfigError(self.filename, getattr(where, "key_lines", {}).get(key, 0),
                                  f"{path}{key}",
                                  f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def get(self, where: Mapping[str, Any], key: str, kind: Callable[[Any], T], path: str,
               default: T | _Required = _REQUIRED) -> T:
        if key not in where:
            if isinstance(default, _Required):
                raise ConfigError(self.filename, getattr(where, "line", 0), f"{path}{key}",
                                  "required key is missing")
            return default
        value = where[key]
        try:
            converted = kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(self.filename, getattr(where, "key_lines", {}).get(key, 0),
                              f"{path}{key}", f"{value!r} is not valid: {exc}") from None
        if isinstance(converted, float) and not math.isfinite(converted):
            raise ConfigError(self.filename, getattr(where, "key_lines", {}).get(key, 0),
                              f"{path}{key}", f"{value!r} is not a finite number")
        return converted


def _mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("expected a mapping")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return float(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected true or false")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("expected a list of strings")
    return tuple(value)


_FACTORY_KEYS = {
    "id", "tier", "region", "compliance_zone", "models", "endpoint", "price", "energy", "site",
    "supports_prefill", "failure_domain", "max_concurrency", "max_output_tokens_per_second", "sim",
}


def parse_factory(r: _Reader, raw: Mapping[str, Any], path: str,
                  endpoint_default: str = "") -> FactoryConfig:
    """Read one factory entry (as in the ``factories:`` list, or a file holding just one)."""
    r.check_keys(raw, _FACTORY_KEYS, path)
    sim_raw = raw.get("sim")
    sim: SimParams | None = None
    if sim_raw is not None:
        sim_map = r.get(raw, "sim", _mapping, path)
        r.check_keys(sim_map, {"port", "max_concurrency", "prefill_tokens_per_s", "itl_ms",
                               "base_latency_ms"}, f"{path}sim.")
        sp = f"{path}sim."
        sim = SimParams(
            port=r.get(sim_map, "port", _int, sp),
            max_concurrency=r.get(sim_map, "max_concurrency", _int, sp, 16),
            prefill_tokens_per_s=r.get(sim_map, "prefill_tokens_per_s", _number, sp, 8000.0),
            itl_ms=r.get(sim_map, "itl_ms", _number, sp, 15.0),
            base_latency_ms=r.get(sim_map, "base_latency_ms", _number, sp, 0.0),
        )
    price_map = r.get(raw, "price", _mapping, path)
    r.check_keys(price_map, {"input_per_mtok", "output_per_mtok", "cached_input_per_mtok",
                             "currency"}, f"{path}price.")
    pp = f"{path}price."
    price = Price(
        input_per_mtok=r.get(price_map, "input_per_mtok", _number, pp),
        output_per_mtok=r.get(price_map, "output_per_mtok", _number, pp),
        cached_input_per_mtok=r.get(price_map, "cached_input_per_mtok", _number, pp, 0.0),
        currency=r.get(price_map, "currency", _str, pp, "USD"),
    )
    energy = Energy()
    if "energy" in raw:
        em = r.get(raw, "energy", _mapping, path)
        ep = f"{path}energy."
        r.check_keys(em, {"watts", "tokens_per_joule", "grid_gco2_per_kwh",
                          "electricity_price_per_kwh"}, ep)
        energy = Energy(
            watts=r.get(em, "watts", _number, ep, 0.0),
            tokens_per_joule=r.get(em, "tokens_per_joule", _number, ep, 0.0),
            grid_gco2_per_kwh=r.get(em, "grid_gco2_per_kwh", _number, ep, 0.0),
            electricity_price_per_kwh=r.get(em, "electricity_price_per_kwh", _number, ep, 0.0),
        )
    tier_name = r.get(raw, "tier", _str, path)
    try:
        tier = Tier(tier_name)
    except ValueError:
        raise ConfigError(r.filename, getattr(raw, "key_lines", {}).get("tier", 0), f"{path}tier",
                          f"{tier_name!r} is not one of center, edge, on-site") from None
    endpoint = r.get(raw, "endpoint", _str, path, endpoint_default)
    if not endpoint and sim is not None:
        endpoint = f"http://127.0.0.1:{sim.port}/v1"
    max_conc_default = sim.max_concurrency if sim else 64
    spec = FactorySpec(
        id=r.get(raw, "id", _str, path),
        tier=tier,
        region=r.get(raw, "region", _str, path),
        compliance_zone=r.get(raw, "compliance_zone", _str, path),
        endpoint=endpoint or "",
        models=r.get(raw, "models", _str_list, path),
        price=price,
        energy=energy,
        max_concurrency=r.get(raw, "max_concurrency", _int, path, max_conc_default),
        max_output_tokens_per_second=r.get(raw, "max_output_tokens_per_second", _number, path,
                                           0.0),
        site=r.get(raw, "site", _str, path, ""),
        supports_prefill=r.get(raw, "supports_prefill", _bool, path, False),
        failure_domain=r.get(raw, "failure_domain", _str, path, ""),
    )
    try:
        spec.validate()
    except ValidationFailure as exc:
        raise ConfigError(r.filename, getattr(raw, "line", 0), path.rstrip("."),
                          exc.detail) from None
    return FactoryConfig(spec=spec, sim=sim)


def _parse_yaml(text: str, filename: str) -> Any:
    try:
        return yaml.load(text, Loader=_LineLoader)  # _LineLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise ConfigError(filename, line, "", f"not valid YAML: {exc}") from None


def load_factory_file(path: str | Path) -> FactoryConfig:
    """Load a file describing one factory (the keys of one ``factories:`` entry)."""
    p = Path(path)
    raw = _parse_yaml(p.read_text(), str(p))
    if not isinstance(raw, dict):
        raise ConfigError(str(p), 1, "", "expected a mapping describing one factory")
    return parse_factory(_Reader(str(p)), raw, "")


def parse_network(text: str, filename: str) -> NetworkConfig:
    """Parse a network description; raise ConfigError naming file, line and key."""
    raw = _parse_yaml(text, filename)
    r = _Reader(filename)
    if not isinstance(raw, dict):
        raise ConfigError(filename, 1, "", "expected a mapping at the top level")
    r.check_keys(raw, {"controlplane", "sites", "sidecar", "demand", "factories"}, "")
    empty: Mapping[str, Any] = {}
    no_items: list[Any] = []
    cp = r.get(raw, "controlplane", _mapping, "", empty)
    r.check_keys(cp, {"grpc", "http"}, "controlplane.")
    sites = []
    for i, site_raw in enumerate(r.get(raw, "sites", _list, "", no_items)):
        path = f"sites[{i}]."
        s = _mapping(site_raw)
        r.check_keys(s, {"id", "region", "compliance_zone", "rtt_ms", "allowed_zones"}, path)
        rtt = r.get(s, "rtt_ms", _mapping, path, empty)
        sites.append(Site(
            id=r.get(s, "id", _str, path),
            region=r.get(s, "region", _str, path),
            compliance_zone=r.get(s, "compliance_zone", _str, path),
            rtt_ms=tuple(sorted((str(k), r.get(rtt, k, _number, f"{path}rtt_ms."))
                                for k in rtt)),
            allowed_zones=r.get(s, "allowed_zones", _str_list, path, ()),
        ))
    site_ids = {s.id for s in sites}
    demand = []
    for i, demand_raw in enumerate(r.get(raw, "demand", _list, "", no_items)):
        path = f"demand[{i}]."
        d = _mapping(demand_raw)
        r.check_keys(d, {"site", "model", "traffic_class", "rate_rps", "prompt_tokens",
                         "output_tokens", "ttft_slo_s"}, path)
        site = r.get(d, "site", _str, path)
        if site not in site_ids:
            raise r.fail(d, "site", f"unknown site {site!r}")
        demand.append(Demand(
            site=site,
            model=r.get(d, "model", _str, path),
            traffic_class=r.get(d, "traffic_class", _str, path, "default"),
            rate_rps=r.get(d, "rate_rps", _number, path, 1.0),
            prompt_tokens=r.get(d, "prompt_tokens", _number, path, 1000.0),
            output_tokens=r.get(d, "output_tokens", _number, path, 200.0),
            ttft_slo_s=r.get(d, "ttft_slo_s", _number, path, 2.0),
        ))
    factories = []
    seen: set[str] = set()
    for i, factory_raw in enumerate(r.get(raw, "factories", _list, "", no_items)):
        f = _mapping(factory_raw)
        fc = parse_factory(r, f, f"factories[{i}].")
        if fc.spec.id in seen:
            raise r.fail(f, "id", f"duplicate factory id {fc.spec.id!r}")
        seen.add(fc.spec.id)
        factories.append(fc)
    sidecars = []
    if "sidecar" in raw:
        sc = r.get(raw, "sidecar", _mapping, "")
        r.check_keys(sc, {"node_id", "site", "listen", "admin"}, "sidecar.")
        site = r.get(sc, "site", _str, "sidecar.")
        if site not in site_ids:
            raise r.fail(sc, "site", f"unknown site {site!r}")
        sidecars.append(SidecarConfig(
            node_id=r.get(sc, "node_id", _str, "sidecar.", "sidecar-1"),
            site=site,
            listen=r.get(sc, "listen", _str, "sidecar.", "127.0.0.1:8080"),
            admin=r.get(sc, "admin", _str, "sidecar.", "127.0.0.1:9901"),
        ))
    return NetworkConfig(
        filename=filename,
        grpc_address=r.get(cp, "grpc", _str, "controlplane.", "127.0.0.1:50051"),
        http_address=r.get(cp, "http", _str, "controlplane.", "127.0.0.1:8081"),
        sites=tuple(sites),
        demand=tuple(demand),
        factories=tuple(factories),
        sidecars=tuple(sidecars),
    )


def load_network(path: str | Path | None = None) -> NetworkConfig:
    """Load a network file, or the embedded default network when ``path`` is None."""
    if path is None:
        text = resources.files("tdn").joinpath("defaults/up.yaml").read_text()
        return parse_network(text, "tdn/defaults/up.yaml")
    p = Path(path)
    return parse_network(p.read_text(), str(p))
