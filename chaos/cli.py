"""``tdn drill``: list, show, validate and run failover drills.

``tdn drill run factory-crash`` brings up a local TDN with Toxiproxy in front of its links, runs
the drill and writes its report (JSON, Markdown, SVG); ``--all`` runs the built-in suite;
``--attach STATE_DIR --toxiproxy URL`` drills a running ``tdn up`` network instead. The exit
status is 0 when every expectation held, 1 when one failed or a drill could not run, 2 for a bad
command line or drill file — so a drill can gate a deploy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from tdn.chaos import report
from tdn.chaos.runner import DrillResult
from tdn.chaos.services import ServiceError
from tdn.chaos.spec import DrillSpec, load_drill
from tdn.chaos.suite import SuiteOptions, builtin_names, builtin_text, find_drill, load_builtin
from tdn.chaos.suite import run_suite as _run_suite
from tdn.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdn drill", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the built-in drills")
    show = sub.add_parser("show", help="print a built-in drill's YAML")
    show.add_argument("name")
    check = sub.add_parser("validate", help="check drill files (file:line: key: reason)")
    check.add_argument("files", nargs="+")
    run = sub.add_parser("run", help="run drills by name or file")
    run.add_argument("drills", nargs="*", metavar="NAME|FILE")
    run.add_argument("--all", action="store_true", help="every built-in drill")
    run.add_argument("--short", action="store_true",
                     help="the CI variant: each drill's time scaled to its short duration")
    run.add_argument("--network", type=Path, metavar="NETWORK.yaml",
                     help="network file for the local networks (default: the embedded one)")
    run.add_argument("--attach", type=Path, metavar="STATE_DIR",
                     help="drill the network `tdn up --state-dir STATE_DIR` runs (needs "
                          "--toxiproxy with proxies in front of its links)")
    run.add_argument("--toxiproxy", default="", metavar="URL",
                     help="Toxiproxy API to use (default: start one)")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="where reports go (default .tdn/drills/<time>)")
    run.add_argument("--log-level", default="WARNING",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _list() -> int:
    rows = []
    for name in builtin_names():
        spec = load_builtin(name)
        first = " ".join(spec.description.split()).split(". ")[0].rstrip(".")
        rows.append((name, f"{spec.load.duration_s:g}s (CI {spec.short_duration_s:g}s)", first))
    width = max(len(r[0]) for r in rows)
    span = max(len(r[1]) for r in rows)
    for name, duration, first in rows:
        print(f"{name:<{width}}  {duration:<{span}}  {first}")
    return 0


def _validate(files: list[str]) -> int:
    code = 0
    for f in files:
        try:
            spec = load_drill(f)
        except ConfigError as exc:
            print(f"tdn drill: {exc}", file=sys.stderr)
            code = 2
        except OSError as exc:
            print(f"tdn drill: cannot read {f}: {exc.strerror or exc}", file=sys.stderr)
            code = 2
        else:
            print(f"{f}: drill {spec.name} is valid ({len(spec.timeline)} faults)")
    return code


def _specs(args: argparse.Namespace) -> list[DrillSpec]:
    if args.all and args.drills:
        raise ValueError("give drill names or --all, not both")
    if args.all:
        return [load_builtin(n) for n in builtin_names()]
    if not args.drills:
        raise ValueError("name a drill (tdn drill list) or give --all")
    return [find_drill(d) for d in args.drills]


async def _run(specs: list[DrillSpec], options: SuiteOptions) -> list[DrillResult]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            print("\ntdn drill: interrupted; restoring the network before stopping ...",
                  file=sys.stderr, flush=True)
            main.cancel()
        else:
            print("tdn drill: still restoring (faults reverted, processes restarted) ...",
                  file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def on_result(result: DrillResult, paths: dict[str, Path]) -> None:
        failing = [c for c in (result.analysis.checks if result.analysis else ()) if not c.passed]
        print(f"{report.verdict(result):5}  {result.spec.name}  ->  {paths['md']}", flush=True)
        if result.error:
            print(f"       {result.error}", flush=True)
        for note in result.notes:
            print(f"       note: {note}", flush=True)
        for c in failing:
            print(f"       ✗ {c.name}: expected {c.expected}, saw {c.observed}", flush=True)

    def on_progress(message: str) -> None:
        print(f"tdn drill: {message}", file=sys.stderr, flush=True)

    return await _run_suite(specs, options, on_result, on_progress)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action == "list":
        return _list()
    if args.action == "show":
        try:
            print(builtin_text(args.name), end="")
        except KeyError as exc:
            print(f"tdn drill: {exc.args[0]}", file=sys.stderr)
            return 2
        return 0
    if args.action == "validate":
        return _validate(args.files)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        specs = _specs(args)
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else str(exc)
        print(f"tdn drill: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tdn drill: {exc}", file=sys.stderr)
        return 2
    if args.attach is not None and not args.toxiproxy:
        print("tdn drill: --attach needs --toxiproxy (the proxies in front of its links)",
              file=sys.stderr)
        return 2
    out = args.out or Path(".tdn") / "drills" / time.strftime("%Y%m%d-%H%M%S")
    options = SuiteOptions(out_dir=out.resolve(), short=args.short,
                           toxiproxy_url=args.toxiproxy, base_network=args.network,
                           attach=args.attach)
    try:
        results = asyncio.run(_run(specs, options))
    except asyncio.CancelledError:
        print("tdn drill: interrupted; the network was restored and stopped.", file=sys.stderr)
        return 130
    except ServiceError as exc:
        print(f"tdn drill: {exc}", file=sys.stderr)
        return 1
    print()
    print(report.summary_text(results), end="")
    print(f"\nReports: {out}/", flush=True)
    return 0 if results and all(r.passed for r in results) else 1
