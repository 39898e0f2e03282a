"""A drill, as declared in YAML: what network it needs, what load it drives, which targets it
hurts, the timeline of faults, and what TDN must still guarantee (the expectations).

Parsing goes through the same reader as the network file (:mod:`tdn.config`): unknown keys and
wrong types are refused with the file, the line and the key, and nothing partial is returned.
Parsed drills are frozen values; :func:`shortened` derives the CI variant by scaling time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdn.config import (
    ConfigError,
    _bool,
    _int,
    _list,
    _mapping,
    _number,
    _parse_yaml,
    _Reader,
    _str,
    _str_list,
)
from tdn.sim.faults import FaultError, fault_from_mapping

# --- targets ----------------------------------------------------------------------------------

# kind -> selectors that are not literal names (a literal factory id, region or node id is
# accepted for the kinds that have names).
TARGET_KINDS: dict[str, frozenset[str]] = {
    "factory": frozenset({"primary", "backup"}),  # the route's heaviest primary / first backup
    "region": frozenset({"primary", "site"}),  # the heaviest primary's region / the site's own
    "controlplane": frozenset({"all", "leader", "follower"}),
    "etcd": frozenset({"all"}),
    "sidecar": frozenset({"all"}),
    "process": frozenset(),  # an up.json component name, as is
}

# What a target kind can be hurt through.
_LINK_KINDS = frozenset({"factory", "region", "controlplane", "etcd"})
_SIM_KINDS = frozenset({"factory", "region"})


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A named thing to hurt: ``kind`` (factory, region, ...) and which one (``select``)."""

    name: str
    kind: str
    select: str


# --- faults -----------------------------------------------------------------------------------

# fault -> (what it acts on, parameters it takes with their defaults)
_TOXIC_COMMON: dict[str, Any] = {"stream": "downstream", "toxicity": 1.0}
FAULTS: dict[str, tuple[str, dict[str, Any]]] = {
    "latency": ("link", {"latency_ms": 1000, "jitter_ms": 0, **_TOXIC_COMMON}),
    # Toxiproxy's timeout toxic with timeout 0: data vanishes and the connection stays open.
    "blackhole": ("link", {"timeout_ms": 0, **_TOXIC_COMMON}),
    "reset_peer": ("link", {"timeout_ms": 0, **_TOXIC_COMMON}),
    # limit_data: the connection is closed after `bytes`, mid-answer for a long enough one.
    "cut_stream": ("link", {"bytes": 2048, **_TOXIC_COMMON}),
    "slicer": ("link", {"average_size": 16, "size_variation": 8, "delay_us": 2000,
                        **_TOXIC_COMMON}),
    "bandwidth": ("link", {"rate_kbps": 8, **_TOXIC_COMMON}),
    # A disabled proxy does not listen: connections are refused, open ones are closed.
    "refuse": ("link", {}),
    # SIGKILL, then the same command again when the window ends (or when the drill ends).
    "kill": ("process", {"restart": True}),
    # A simulator fault mode (POST /admin/fault); parameters are the simulator's own.
    "sim": ("simulator", {}),
    # A policy the sidecars must refuse reaches them through Discovery (see timeline.py).
    "bad_policy": ("policy", {"via": "rogue_factory"}),
}

BAD_POLICY_VIA = ("rogue_factory", "policy_apply")


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One entry of the timeline: ``fault`` on ``target`` from ``at`` for ``duration`` seconds
    (None: until the load ends), optionally repeated ``repeat_count`` times every
    ``repeat_every`` seconds (a flapping link)."""

    index: int
    at: float
    duration: float | None
    target: str
    fault: str
    params: tuple[tuple[str, Any], ...] = ()
    repeat_every: float = 0.0
    repeat_count: int = 1
    label: str = ""

    def param(self, name: str) -> Any:
        defaults = FAULTS[self.fault][1]
        return dict(self.params).get(name, defaults.get(name))

    @property
    def title(self) -> str:
        return self.label or f"{self.fault} {self.target}"

    def occurrences(self) -> list[tuple[float, float | None]]:
        """(start, duration) of each repetition."""
        return [(self.at + i * self.repeat_every, self.duration)
                for i in range(self.repeat_count)]


# --- load -------------------------------------------------------------------------------------

AZURE_TRACES = {"azure-conv": "conv.csv", "azure-code": "code.csv"}


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """Replay of a request trace (Azure LLM 2023 format): arrival times and token counts."""

    trace: str
    speedup: float = 1.0
    start_s: float = 0.0
    max_tokens_cap: int = 64
    max_prompt_words: int = 2000


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """Traffic the drill drives through a sidecar, as OpenAI chat completions."""

    model: str = "llama-3.1-8b-instruct"
    rate_rps: float = 10.0
    concurrency: int = 64
    streaming_share: float = 0.5
    duration_s: float = 20.0
    max_tokens: int = 24
    prompt_words: int = 40
    # A client's own patience: a request unanswered this long is an error the user saw.
    timeout_s: float = 10.0
    seed: int = 1
    sidecar: str = ""  # node id; empty: the network's first sidecar
    replay: ReplaySpec | None = None


# --- expectations -----------------------------------------------------------------------------

ERROR_KINDS = (
    "http_5xx", "http_429", "http_4xx", "refused", "connect_error", "timeout", "reset",
    "stream_error_event", "stream_broken", "bad_body",
)


@dataclass(frozen=True, slots=True)
class Expectations:
    """What TDN must guarantee during the drill; None means "not checked"."""

    max_error_rate: float | None = None
    max_truncated_successes: int = 0
    max_added_p99_s: float | None = None
    latency: str = "ttft"  # which latency max_added_p99_s compares: ttft or total
    max_failover_s: float | None = None
    max_error_rate_after: float | None = None
    error_kinds: tuple[str, ...] | None = None  # the only error kinds allowed to occur
    sidecars_keep_policy: bool = False
    nack_reported: bool = False
    # A policy applied through `tdn policy apply` is refused with file, line and reason, and
    # the policy in force does not change.
    policy_refused: bool = False
    # After the control plane is reachable again (the window's end), sidecars are connected.
    max_reconnect_s: float | None = None
    # From a replica's loss, sidecars are connected to a surviving replica that leads.
    max_controlplane_failover_s: float | None = None
    usage_accounted: bool = True
    min_requests: int = 20


@dataclass(frozen=True, slots=True)
class NetworkNeeds:
    """What the local network a drill runs on must have."""

    controlplanes: int = 1
    store: str = "embedded"  # embedded | etcd


@dataclass(frozen=True, slots=True)
class DrillSpec:
    name: str
    description: str
    load: LoadSpec
    targets: tuple[TargetSpec, ...]
    timeline: tuple[FaultEvent, ...]
    expect: Expectations
    network: NetworkNeeds = field(default_factory=NetworkNeeds)
    short_duration_s: float = 24.0
    filename: str = ""

    def target(self, name: str) -> TargetSpec:
        for target in self.targets:
            if target.name == name:
                return target
        raise KeyError(name)


def shortened(spec: DrillSpec) -> DrillSpec:
    """The CI variant: every time in the drill scaled so that the load lasts
    ``short_duration_s`` (never lengthened). Fault parameters (latencies, byte counts) stay."""
    factor = min(1.0, spec.short_duration_s / spec.load.duration_s)
    if factor >= 1.0:
        return spec
    timeline = tuple(
        dataclasses.replace(
            e, at=round(e.at * factor, 3),
            duration=None if e.duration is None else round(e.duration * factor, 3),
            repeat_every=round(e.repeat_every * factor, 3))
        for e in spec.timeline)
    load = dataclasses.replace(spec.load, duration_s=round(spec.load.duration_s * factor, 3))
    return dataclasses.replace(spec, load=load, timeline=timeline)


# --- parsing ----------------------------------------------------------------------------------


def _fail(r: _Reader, where: Mapping[str, Any], path: str, key: str,
          reason: str) -> ConfigError:
    """A ConfigError at ``key`` of ``where``, named with its full path."""
    error = r.fail(where, key, reason)
    return ConfigError(error.filename, error.line, f"{path}{key}", reason)


def _positive(value: Any) -> float:
    number = _number(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def _non_negative(value: Any) -> float:
    number = _number(value)
    if number < 0:
        raise ValueError("must not be negative")
    return number


def _share(value: Any) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError("must be between 0 and 1")
    return number


def _positive_int(value: Any) -> int:
    number = _int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number


def _parse_targets(r: _Reader, raw: Mapping[str, Any]) -> tuple[TargetSpec, ...]:
    targets = []
    for name in raw:
        path = f"targets.{name}."
        body = r.get(raw, name, _mapping, "targets.")
        r.check_keys(body, set(TARGET_KINDS), path)
        if len(body) != 1:
            raise _fail(r, raw, "targets.", name, "a target names exactly one of "
                                    f"{', '.join(sorted(TARGET_KINDS))}")
        (kind,) = body
        select = r.get(body, kind, _str, path)
        if not select:
            raise _fail(r, body, path, kind, "must not be empty")
        if kind in {"controlplane", "etcd"} and select not in TARGET_KINDS[kind]:
            choices = ", ".join(sorted(TARGET_KINDS[kind]))
            raise _fail(r, body, path, kind, f"must be one of {choices}")
        targets.append(TargetSpec(name=str(name), kind=kind, select=select))
    return tuple(targets)


def _parse_event(r: _Reader, raw: Mapping[str, Any], index: int,
                 targets: Mapping[str, TargetSpec], duration: float) -> FaultEvent:
    path = f"timeline[{index}]."
    fault = r.get(raw, "fault", _str, path)
    if fault not in FAULTS:
        raise _fail(r, raw, path, "fault", f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    acts_on, defaults = FAULTS[fault]
    common = {"at", "for", "target", "fault", "repeat", "label"}
    if fault == "sim":
        allowed = common | {"mode", "status", "retry_after", "seconds", "after_tokens",
                            "itl_ms", "then", "probability"}
    else:
        allowed = common | set(defaults)
        if fault == "bad_policy":
            allowed |= {"file", "policy"}
    r.check_keys(raw, allowed, path)
    target_name = r.get(raw, "target", _str, path)
    target = targets.get(target_name)
    if target is None:
        raise _fail(r, raw, path, "target", f"unknown target {target_name!r} "
                                    f"(declared: {', '.join(targets) or 'none'})")
    if acts_on == "link" and target.kind not in _LINK_KINDS:
        raise _fail(r, raw, path, "target",
                    f"{fault} acts on links; a {target.kind} target has none "
                    "(use a factory, region, controlplane or etcd target)")
    if acts_on == "simulator" and target.kind not in _SIM_KINDS:
        raise _fail(r, raw, path, "target", f"sim faults act on factories' simulators; "
                                    f"{target_name!r} is a {target.kind} target")
    at = r.get(raw, "at", _non_negative, path)
    if at >= duration:
        raise _fail(r, raw, path, "at", f"{at} is not before the end of the load ({duration} s)")
    length = r.get(raw, "for", _positive, path, None)
    params: dict[str, Any] = {}
    if fault == "sim":
        sim_raw = {k: raw[k] for k in raw if k not in common}
        try:
            fault_from_mapping(sim_raw)
        except FaultError as exc:
            raise _fail(r, raw, path, "mode" if "mode" in raw else "fault", str(exc)) from None
        params = sim_raw
    else:
        for key, default in defaults.items():
            if key not in raw:
                continue
            if isinstance(default, bool):
                params[key] = r.get(raw, key, _bool, path)
            elif isinstance(default, int):
                params[key] = r.get(raw, key, _int, path)
                if params[key] < 0:
                    raise _fail(r, raw, path, key, "must not be negative")
            elif isinstance(default, float):
                params[key] = r.get(raw, key, _share, path)
            else:
                params[key] = r.get(raw, key, _str, path)
        if params.get("stream", "downstream") not in {"upstream", "downstream"}:
            raise _fail(r, raw, path, "stream", "must be upstream or downstream")
        if fault == "bad_policy":
            via = params.get("via", defaults["via"])
            if via not in BAD_POLICY_VIA:
                raise _fail(r, raw, path, "via", f"must be one of {', '.join(BAD_POLICY_VIA)}")
            if via == "policy_apply":
                # The policy an operator applies by mistake: a file (relative to the drill
                # file's folder) or inline text; `tdn policy apply` must refuse it.
                if ("file" in raw) == ("policy" in raw):
                    raise _fail(r, raw, path, "via",
                                "policy_apply needs exactly one of file and policy")
                for key in ("file", "policy"):
                    if key in raw:
                        params[key] = r.get(raw, key, _str, path)
                if target.kind != "controlplane":
                    raise _fail(r, raw, path, "target", "policy_apply needs a controlplane target")
            elif target.kind != "factory":
                raise _fail(r, raw, path, "target",
                            "rogue_factory copies a factory: give a factory target")
    every, count = 0.0, 1
    if "repeat" in raw:
        rep = r.get(raw, "repeat", _mapping, path)
        r.check_keys(rep, {"every", "count"}, f"{path}repeat.")
        every = r.get(rep, "every", _positive, f"{path}repeat.")
        count = r.get(rep, "count", _positive_int, f"{path}repeat.")
        if length is None or length >= every:
            raise _fail(r, raw, path, "repeat",
                        "a repeated fault needs a `for` shorter than `every`")
    last_end = at + (count - 1) * every + (length or 0.0)
    if last_end > duration + 1e-9:
        raise _fail(r, raw, path, "for" if "for" in raw else "at",
                     f"the fault ends at {last_end:g} s, after the load ({duration:g} s)")
    return FaultEvent(index=index, at=at, duration=length, target=target_name, fault=fault,
                      params=tuple(sorted(params.items())), repeat_every=every,
                      repeat_count=count, label=r.get(raw, "label", _str, path, ""))


def _parse_load(r: _Reader, raw: Mapping[str, Any]) -> LoadSpec:
    p = "load."
    r.check_keys(raw, {f.name for f in dataclasses.fields(LoadSpec)}, p)
    d = LoadSpec()
    replay = None
    if "replay" in raw:
        rr = r.get(raw, "replay", _mapping, p)
        rp = "load.replay."
        r.check_keys(rr, {f.name for f in dataclasses.fields(ReplaySpec)}, rp)
        replay = ReplaySpec(
            trace=r.get(rr, "trace", _str, rp),
            speedup=r.get(rr, "speedup", _positive, rp, 1.0),
            start_s=r.get(rr, "start_s", _non_negative, rp, 0.0),
            max_tokens_cap=r.get(rr, "max_tokens_cap", _positive_int, rp, 64),
            max_prompt_words=r.get(rr, "max_prompt_words", _positive_int, rp, 2000),
        )
        if "rate_rps" in raw:
            raise _fail(r, raw, p, "rate_rps", "a replay takes its arrival times from the trace")
    return LoadSpec(
        model=r.get(raw, "model", _str, p, d.model),
        rate_rps=r.get(raw, "rate_rps", _positive, p, d.rate_rps),
        concurrency=r.get(raw, "concurrency", _positive_int, p, d.concurrency),
        streaming_share=r.get(raw, "streaming_share", _share, p, d.streaming_share),
        duration_s=r.get(raw, "duration_s", _positive, p, d.duration_s),
        max_tokens=r.get(raw, "max_tokens", _positive_int, p, d.max_tokens),
        prompt_words=r.get(raw, "prompt_words", _positive_int, p, d.prompt_words),
        timeout_s=r.get(raw, "timeout_s", _positive, p, d.timeout_s),
        seed=r.get(raw, "seed", _int, p, d.seed),
        sidecar=r.get(raw, "sidecar", _str, p, d.sidecar),
        replay=replay,
    )


def _parse_expect(r: _Reader, raw: Mapping[str, Any]) -> Expectations:
    p = "expect."
    r.check_keys(raw, {f.name for f in dataclasses.fields(Expectations)}, p)
    d = Expectations()
    kinds = None
    if "error_kinds" in raw:
        kinds = r.get(raw, "error_kinds", _str_list, p)
        unknown = sorted(set(kinds) - set(ERROR_KINDS))
        if unknown:
            raise _fail(r, raw, p, "error_kinds", f"unknown kinds {unknown} "
                                             f"(known: {', '.join(ERROR_KINDS)})")
    latency = r.get(raw, "latency", _str, p, d.latency)
    if latency not in {"ttft", "total"}:
        raise _fail(r, raw, p, "latency", "must be ttft or total")
    return Expectations(
        max_error_rate=r.get(raw, "max_error_rate", _share, p, None),
        max_truncated_successes=r.get(raw, "max_truncated_successes", _int, p, 0),
        max_added_p99_s=r.get(raw, "max_added_p99_s", _non_negative, p, None),
        latency=latency,
        max_failover_s=r.get(raw, "max_failover_s", _non_negative, p, None),
        max_error_rate_after=r.get(raw, "max_error_rate_after", _share, p, None),
        error_kinds=kinds,
        sidecars_keep_policy=r.get(raw, "sidecars_keep_policy", _bool, p, False),
        nack_reported=r.get(raw, "nack_reported", _bool, p, False),
        policy_refused=r.get(raw, "policy_refused", _bool, p, False),
        max_reconnect_s=r.get(raw, "max_reconnect_s", _non_negative, p, None),
        max_controlplane_failover_s=r.get(raw, "max_controlplane_failover_s", _non_negative, p,
                                          None),
        usage_accounted=r.get(raw, "usage_accounted", _bool, p, True),
        min_requests=r.get(raw, "min_requests", _int, p, d.min_requests),
    )


def parse_drill(text: str, filename: str) -> DrillSpec:
    """Parse one drill; raise :class:`ConfigError` naming file, line and key."""
    raw = _parse_yaml(text, filename)
    r = _Reader(filename)
    if not isinstance(raw, dict):
        raise ConfigError(filename, 1, "", "expected a mapping at the top level")
    r.check_keys(raw, {"name", "description", "network", "load", "targets", "timeline",
                       "expect", "short"}, "")
    empty: Mapping[str, Any] = {}
    net_raw = r.get(raw, "network", _mapping, "", empty)
    r.check_keys(net_raw, {"controlplanes", "store"}, "network.")
    needs = NetworkNeeds(
        controlplanes=r.get(net_raw, "controlplanes", _positive_int, "network.", 1),
        store=r.get(net_raw, "store", _str, "network.", "embedded"))
    if needs.store not in {"embedded", "etcd"}:
        raise _fail(r, net_raw, "network.", "store", "must be embedded or etcd")
    if needs.controlplanes > 1 and needs.store != "etcd":
        raise _fail(r, net_raw, "network.", "controlplanes",
                    "several replicas share state only on etcd: set store: etcd")
    load = _parse_load(r, r.get(raw, "load", _mapping, "", empty))
    targets = _parse_targets(r, r.get(raw, "targets", _mapping, "", empty))
    by_name = {t.name: t for t in targets}
    events = []
    for i, item in enumerate(r.get(raw, "timeline", _list, "")):
        if not isinstance(item, dict):
            raise ConfigError(filename, getattr(raw, "key_lines", {}).get("timeline", 0),
                              f"timeline[{i}]", "expected a mapping")
        events.append(_parse_event(r, item, i, by_name, load.duration_s))
    short = r.get(raw, "short", _mapping, "", empty)
    r.check_keys(short, {"duration_s"}, "short.")
    return DrillSpec(
        name=r.get(raw, "name", _str, ""),
        description=r.get(raw, "description", _str, "", ""),
        load=load,
        targets=targets,
        timeline=tuple(events),
        expect=_parse_expect(r, r.get(raw, "expect", _mapping, "", empty)),
        network=needs,
        short_duration_s=r.get(short, "duration_s", _positive, "short.", 24.0),
        filename=filename,
    )


def load_drill(path: str | Path) -> DrillSpec:
    p = Path(path)
    return parse_drill(p.read_text(), str(p))
