"""The built-in drills (``chaos/drills/*.yaml``, shipped with the package) and running several
drills in a row: one Toxiproxy, and one network per kind of network the drills need, started
once and shared by the drills that need it, each drill restoring it for the next.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tdn.chaos import report
from tdn.chaos.attach import attach
from tdn.chaos.local import start_local
from tdn.chaos.network import DrillNetwork
from tdn.chaos.runner import DrillResult, run_drill
from tdn.chaos.services import ServiceError, start_toxiproxy
from tdn.chaos.spec import DrillSpec, NetworkNeeds, load_drill, parse_drill
from tdn.config import ConfigError

log = logging.getLogger(__name__)

# The order a full run takes: data-plane faults first, the control plane last.
BUILTIN_ORDER = (
    "factory-crash", "factory-blackhole", "slow-first-token", "stream-cut", "flapping-factory",
    "region-loss", "controlplane-cut", "bad-policy", "bad-policy-apply", "leader-kill",
)


def _drills_dir() -> resources.abc.Traversable:
    return resources.files("tdn.chaos").joinpath("drills")


def builtin_names() -> list[str]:
    folder = _drills_dir()
    if not folder.is_dir():
        # Package data missing from an install: a packaging bug, said plainly.
        raise RuntimeError("the built-in drills (tdn/chaos/drills/*.yaml) are not installed")
    present = {p.name.removesuffix(".yaml") for p in folder.iterdir()
               if p.name.endswith(".yaml")}
    return [n for n in BUILTIN_ORDER if n in present] + sorted(present - set(BUILTIN_ORDER))


def builtin_text(name: str) -> str:
    if name not in builtin_names():
        raise KeyError(f"no built-in drill {name!r} (built in: {', '.join(builtin_names())})")
    return _drills_dir().joinpath(f"{name}.yaml").read_text()


def load_builtin(name: str) -> DrillSpec:
    return parse_drill(builtin_text(name), f"tdn/chaos/drills/{name}.yaml")


def find_drill(name_or_path: str) -> DrillSpec:
    """A built-in drill by name, or a drill file by path. Raises KeyError, ConfigError or
    OSError with a message for the user."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.exists():
        return load_drill(path)
    return load_builtin(name_or_path)


@dataclass(frozen=True, slots=True)
class SuiteOptions:
    out_dir: Path
    short: bool = False
    toxiproxy_url: str = ""  # empty: start one
    base_network: Path | None = None  # for local networks; None: the embedded network
    attach: Path | None = None  # a `tdn up` state dir to drill instead of local networks


def _groups(specs: Sequence[DrillSpec]) -> list[tuple[NetworkNeeds, list[DrillSpec]]]:
    groups: dict[NetworkNeeds, list[DrillSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.network, []).append(spec)
    return list(groups.items())


async def run_suite(specs: Sequence[DrillSpec], options: SuiteOptions,
                    on_result: Callable[[DrillResult, dict[str, Path]], None] | None = None,
                    on_progress: Callable[[str], None] | None = None) -> list[DrillResult]:
    """Run ``specs`` in order of need, writing each drill's reports as it ends."""
    say = on_progress or (lambda _msg: None)
    results: list[DrillResult] = []
    options.out_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        tox_url = options.toxiproxy_url
        if not tox_url:
            tox = await start_toxiproxy(options.out_dir)
            stack.callback(tox.stop)
            tox_url = tox.api_url
        for n, (needs, group) in enumerate(_groups(specs)):
            network: DrillNetwork | None = None
            try:
                if options.attach is not None:
                    say(f"attaching to the network in {options.attach}")
                    network = await attach(options.attach, tox_url, options.out_dir / "attached")
                else:
                    say(f"starting a local network ({needs.controlplanes} control plane(s), "
                        f"{needs.store} store)")
                    network = await start_local(options.out_dir / f"network-{n + 1}", tox_url,
                                                base_network=options.base_network, needs=needs)
            except (ServiceError, ConfigError, OSError) as exc:
                for spec in group:
                    result = DrillResult(spec=spec, short=options.short, network={},
                                         started_at=0.0, error=f"network: {exc}")
                    _finish(result, options, results, on_result)
                continue
            try:
                for spec in group:
                    say(f"drill {spec.name}: running")
                    result = await run_drill(spec, network, short=options.short)
                    _finish(result, options, results, on_result)
            finally:
                await network.close()
    (options.out_dir / "summary.md").write_text(report.summary_markdown(results))
    return results


def _finish(result: DrillResult, options: SuiteOptions, results: list[DrillResult],
            on_result: Callable[[DrillResult, dict[str, Path]], None] | None) -> None:
    paths = report.write(result, options.out_dir)
    results.append(result)
    if on_result is not None:
        on_result(result, paths)
