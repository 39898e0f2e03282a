"""``python -m bench [NAME ...] [--quick]``: run benchmarks and record them in docs/benchmarks.md.

Sections of benchmarks that were not run this time are kept from the previous file, each with
the date and machine it was measured on.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import re
import sys
import time
from pathlib import Path

# name -> module; each module has NAME, TITLE and run(quick: bool) -> str.
BENCHMARKS: dict[str, str] = {
    "dataplane": "bench.dataplane",
    "routing": "bench.routing",
    "scale": "bench.scale",
    "convergence": "bench.convergence",
    "ui": "bench.ui",
}

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by `make bench` (`python -m bench [NAME ...] [--quick]`); each section says when and on
what machine it was measured. Figures are medians and ratios measured side by side in one run,
rounds interleaved, because these machines are shared and noisy. Nothing here is asserted by
`make test`.
"""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def _sections(text: str) -> dict[str, str]:
    """Split the previous file into its benchmark sections, keyed by name marker."""
    found: dict[str, str] = {}
    for match in re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->", text, re.S):
        found[match.group(1)] = match.group(2)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", default=[],
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="shorter runs, for a smoke check")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    previous = _sections(DOC.read_text()) if DOC.exists() else {}
    stamp = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}"
    failed = []
    for name in names:
        try:
            module = importlib.import_module(BENCHMARKS[name])
        except ModuleNotFoundError as exc:
            if exc.name == BENCHMARKS[name]:
                print(f"bench: {name} is not written yet", file=sys.stderr)
                continue
            raise
        print(f"== {module.TITLE} ==", flush=True)
        try:
            body: str = module.run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            failed.append(name)
            print(f"bench: {name} failed: {exc!r}", file=sys.stderr)
            continue
        quick = " (quick run)" if args.quick else ""
        previous[name] = f"## {module.TITLE}\n\nMeasured {stamp}{quick}.\n\n{body.strip()}\n\n"
    if not args.no_write:
        DOC.parent.mkdir(exist_ok=True)
        ordered = [n for n in BENCHMARKS if n in previous]
        parts = [HEADER] + [f"<!-- bench:{n} -->\n{previous[n]}<!-- /bench:{n} -->\n"
                            for n in ordered]
        DOC.write_text("\n".join(parts))
        print(f"bench: wrote {DOC}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
