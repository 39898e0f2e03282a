"""``tdn controlplane``: run one control-plane replica until SIGTERM or SIGINT.

Exit codes: 0 after a graceful stop, 2 for bad flags or a bad network file (one line naming
file:line: key: reason), 1 when the replica cannot start (port taken, store unreadable) or its
background work fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tdn.config import ConfigError, NetworkConfig, load_network
from tdn.controlplane.durable_state import CorruptState
from tdn.controlplane.server import (
    DEFAULT_STATE_DIR,
    ControlPlane,
    ControlPlaneSettings,
    SettingsError,
)
from tdn.store.errors import StoreError

log = logging.getLogger("tdn.controlplane")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tdn controlplane", description="Run a control-plane replica.")
    p.add_argument("--grpc", default="127.0.0.1:50051", metavar="HOST:PORT",
                   help="gRPC address for agents, sidecars and operators (default %(default)s)")
    p.add_argument("--http", default="127.0.0.1:8081", metavar="HOST:PORT",
                   help="HTTP address for /healthz, /metrics and /api (default %(default)s)")
    p.add_argument("--config", metavar="NETWORK.yaml",
                   help="network description (sites, demand); default: the embedded network")
    p.add_argument("--store", default="", metavar="URL",
                   help="embedded:///dir or etcd://host:port (default: embedded in --state-dir)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help="folder of the embedded store (default %(default)s)")
    p.add_argument("--report-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often agents report; silence for 3 intervals makes a factory "
                        "unknown (default %(default)s)")
    p.add_argument("--solve-interval", type=float, default=5.0, metavar="SECONDS",
                   help="periodic solve interval; changes trigger earlier solves "
                        "(default %(default)s)")
    p.add_argument("--replica-id", default="", help="name in status and logs (default host-pid)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="(default %(default)s)")
    return p


async def _serve(settings: ControlPlaneSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    control_plane = ControlPlane(settings)
    try:
        await control_plane.start()
    except (OSError, StoreError, CorruptState) as exc:
        print(f"tdn controlplane: cannot start: {exc}", file=sys.stderr)
        return 1
    log.info("control plane %s listening: grpc %s, http %s, store %s",
             control_plane.replica_id, control_plane.grpc_target, control_plane.http_url,
             settings.effective_store_url)
    stopped = asyncio.create_task(stop.wait(), name="signal")
    failed = asyncio.create_task(control_plane.wait(), name="background")
    try:
        await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopped, failed):
            task.cancel()
        await asyncio.wait([stopped, failed])
        await control_plane.stop()
    if stop.is_set():
        log.info("control plane %s stopped", control_plane.replica_id)
        return 0
    error = None if failed.cancelled() else failed.exception()
    print(f"tdn controlplane: background work ended: {error!r}", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        network: NetworkConfig = load_network(args.config)
    except ConfigError as exc:
        print(f"tdn controlplane: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tdn controlplane: cannot read {args.config}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    settings = ControlPlaneSettings(
        network=network, grpc_address=args.grpc, http_address=args.http,
        store_url=args.store, state_dir=args.state_dir, report_interval=args.report_interval,
        solve_interval=args.solve_interval, replica_id=args.replica_id)
    try:
        settings.validate()
    except (SettingsError, ValueError) as exc:
        print(f"tdn controlplane: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings))
