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
from pathlib import Path

import grpc

from tdn.config import ConfigError, NetworkConfig, load_network
from tdn.controlplane.durable_state import CorruptState
from tdn.controlplane.operator_auth import read_token_file
from tdn.controlplane.server import (
    DEFAULT_STATE_DIR,
    ControlPlane,
    ControlPlaneSettings,
    SettingsError,
)
from tdn.store.errors import StoreError
from tdn.tls import ServerTls, TlsError

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
                   help="embedded:///dir, or etcd://host:port[,host:port...] to share state "
                        "with other replicas (default: embedded in --state-dir)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help="folder of the embedded store (default %(default)s)")
    p.add_argument("--report-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often agents report; silence for 3 intervals makes a factory "
                        "unknown (default %(default)s)")
    p.add_argument("--solve-interval", type=float, default=5.0, metavar="SECONDS",
                   help="periodic solve interval; changes trigger earlier solves "
                        "(default %(default)s)")
    p.add_argument("--solve-quiet", type=float, default=0.1, metavar="SECONDS",
                   help="debounce: solve once changes have been quiet this long "
                        "(default %(default)s)")
    p.add_argument("--solve-max-delay", type=float, default=1.0, metavar="SECONDS",
                   help="debounce: but never later than this after the first change "
                        "(default %(default)s)")
    p.add_argument("--warmup", type=float, default=None, metavar="SECONDS",
                   help="wait before the first solve after start, for agents to reconnect "
                        "(default: one telemetry TTL)")
    p.add_argument("--replica-id", default="", help="name in status and logs (default host-pid)")
    p.add_argument("--lease-ttl", type=int, default=5, metavar="SECONDS",
                   help="leader election lease on etcd: a dead leader is replaced within it "
                        "(default %(default)s)")
    tls = p.add_argument_group("security (default: plain text, no token)")
    tls.add_argument("--tls-cert", metavar="PEM", help="server certificate; turns TLS on")
    tls.add_argument("--tls-key", metavar="PEM", help="server private key")
    tls.add_argument("--tls-client-ca", metavar="PEM",
                     help="CA that must have signed every client's certificate (mutual TLS)")
    tls.add_argument("--operator-token-file", metavar="FILE",
                     help="file holding the bearer token every Operator call must carry")
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


def _security(args: argparse.Namespace) -> tuple[grpc.ServerCredentials | None, str]:
    """Server credentials and operator token from the flags; raises TlsError/TokenFileError
    (both ValueErrors) naming the flag or file, never the secret."""
    if args.tls_client_ca and not args.tls_cert:
        raise TlsError("--tls-client-ca needs --tls-cert and --tls-key")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise TlsError("--tls-cert and --tls-key go together")
    credentials = None
    if args.tls_cert:
        credentials = ServerTls(
            cert=Path(args.tls_cert), key=Path(args.tls_key),
            client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None).credentials()
    token = read_token_file(args.operator_token_file) if args.operator_token_file else ""
    return credentials, token


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
    try:
        server_credentials, token = _security(args)
        settings = ControlPlaneSettings(
            network=network, grpc_address=args.grpc, http_address=args.http,
            store_url=args.store, state_dir=args.state_dir,
            report_interval=args.report_interval, solve_interval=args.solve_interval,
            solve_quiet=args.solve_quiet, solve_max_delay=args.solve_max_delay,
            warmup=args.warmup, replica_id=args.replica_id, lease_ttl=args.lease_ttl,
            server_credentials=server_credentials, operator_token=token)
        settings.validate()
    except (SettingsError, ValueError) as exc:
        print(f"tdn controlplane: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings))
