"""``tdn topology export``: a static picture of the network for reports and drills.

Reads the live graph and plan from the control plane's HTTP API (``/api/topology`` and
``/api/plan``: the same values the web UI draws) and writes SVG, PNG, JSON or Graphviz DOT.
The drawing itself is :mod:`tdn.topology.export` (pure, deterministic). PNG is converted from
the SVG by ``rsvg-convert`` (Debian's ``librsvg2-bin``), or by headless Chromium when that is
missing; neither is needed for the other formats.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

FORMATS = ("svg", "png", "json", "dot")
DEFAULT_HTTP = "http://127.0.0.1:8081"


class ExportError(RuntimeError):
    """The picture could not be made; the message says why and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="svg",
                        help="export format (default %(default)s)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write here (default: stdout; png needs a file)")
    parser.add_argument("--http", default=os.environ.get("TDN_CONTROLPLANE_HTTP", DEFAULT_HTTP),
                        help="control-plane HTTP URL (env TDN_CONTROLPLANE_HTTP, "
                             "default %(default)s)")


def _get(url: str, timeout: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ExportError(f"{url} answered {exc.code}: {exc.read().decode(errors='replace')}"
                          ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ExportError(f"cannot reach the control plane at {url}: {reason}") from None


def render(fmt: str, topology: dict[str, Any], plan: dict[str, Any]) -> str:
    """The text of an svg, json or dot export from the two API answers."""
    from tdn.topology.export import to_dot, to_svg

    graph = topology["graph"]
    routes = plan.get("routes", [])
    title = f"TDN topology · plan v{plan.get('version', 0)} · {plan.get('summary', '')}"
    if fmt == "json":
        return json.dumps(graph, indent=2, sort_keys=True) + "\n"
    if fmt == "dot":
        return to_dot(graph, routes, title=title)
    return to_svg(graph, routes, title=title)


def svg_to_png(svg: str, output: Path) -> None:
    """Convert with rsvg-convert, else headless Chromium; raise :class:`ExportError`."""
    rsvg = shutil.which("rsvg-convert")
    if rsvg is not None:
        done = subprocess.run([rsvg, "--format", "png", "--output", str(output)],
                              input=svg.encode(), capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise ExportError(f"rsvg-convert failed: {done.stderr.decode(errors='replace')}")
        return
    chromium = os.environ.get("TDN_CHROMIUM_BIN") or shutil.which("chromium")
    if chromium is None:
        raise ExportError("png needs rsvg-convert (apt-get install librsvg2-bin) or chromium")
    size = re.search(r'width="([\d.]+)" height="([\d.]+)"', svg)
    width, height = (int(float(size.group(1))), int(float(size.group(2)))) if size else (1200, 800)
    with tempfile.TemporaryDirectory(prefix="tdn-export-") as tmp:
        page = Path(tmp) / "topology.svg"
        page.write_text(svg)
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", "--hide-scrollbars",
             f"--window-size={width},{height}", f"--screenshot={output.resolve()}",
             page.as_uri()], capture_output=True, timeout=60, check=False)
        if done.returncode != 0 or not output.exists():
            raise ExportError(f"chromium failed: {done.stderr.decode(errors='replace')[-500:]}")


def run_export(args: argparse.Namespace) -> int:
    base = args.http.rstrip("/")
    if "://" not in base:
        base = f"http://{base}"
    try:
        topology = _get(f"{base}/api/topology", args.timeout)
        plan = _get(f"{base}/api/plan", args.timeout)
        if args.format == "png":
            if not args.output:
                raise ExportError("png is binary: give a file with -o")
            svg_to_png(render("svg", topology, plan), Path(args.output))
        else:
            text = render(args.format, topology, plan)
            if args.output:
                Path(args.output).write_text(text)
            else:
                sys.stdout.write(text)
    except ExportError as exc:
        print(f"tdn topology export: {exc}", file=sys.stderr)
        return 1
    if args.output:
        print(f"wrote {args.output} ({args.format})", file=sys.stderr)
    return 0
