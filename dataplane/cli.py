"""``tdn proxy``: run one sidecar until SIGTERM or SIGINT, then stop gracefully and exit 0.

Settings come from flags, else from the ``sidecar:`` block of a network file (``--config``),
else from defaults. Access-log lines (JSON, one per request) go to stdout; diagnostics to stderr.
``--workers N`` runs N sidecar processes on one port (see :mod:`workers`); ``--tenants FILE``
names the tenants usage is metered to (see :mod:`tenants`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
import uvloop

from tdn.config import ConfigError, load_network
from tdn.tls import TlsError, add_client_flags, client_tls_from_args

from . import access_log as access_log_module
from .credentials import Credentials, CredentialsError
from .sidecar import Sidecar, SidecarSettings, parse_address
from .tenants import Tenants, TenantsError
from .workers import run_workers, worker_admin, worker_node_id

log = logging.getLogger(__name__)


class UsageError(Exception):
    """Flags or files that do not make a runnable sidecar."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tdn proxy",
        description="Run a TDN sidecar: an OpenAI-compatible proxy that routes by the policy "
                    "the control plane pushes and fails over locally.")
    # Defaults are None so that a flag given explicitly can override the --config file.
    p.add_argument("--listen", help="proxy address host:port (default 127.0.0.1:8080)")
    p.add_argument("--admin", help="admin address host:port for /healthz, /metrics, /policy "
                                   "(default 127.0.0.1:9901)")
    p.add_argument("--controlplane",
                   help="control-plane gRPC addresses, comma-separated, tried in turn "
                        "(default 127.0.0.1:50051)")
    p.add_argument("--site", help="the consumer site this sidecar serves")
    p.add_argument("--node-id", help="this sidecar's id (default sidecar-1)")
    p.add_argument("--state-dir", help="where the last good policy is kept "
                                       "(default .tdn/sidecar-<node-id>)")
    p.add_argument("--credentials", help="YAML file mapping credential_ref to upstream key "
                                         "(TDN_CREDENTIAL_<REF> environment variables also work)")
    p.add_argument("--config", help="network file (as for tdn up) whose sidecar: block gives "
                                    "site, node id, listen and admin")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--tenants", help="YAML file mapping client API key (or sha256:<digest>) to "
                                     "tenant name, for metering; other keys are 'anonymous'")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes sharing the proxy port (SO_REUSEPORT); worker i "
                        "serves admin on the --admin port + i (default 1)")
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--no-access-log", action="store_true",
                   help="do not write the per-request JSON access line (metrics still count)")
    add_client_flags(p)
    return p


def settings_from_args(args: argparse.Namespace,
                       environ: Mapping[str, str] | None = None,
                       ) -> tuple[SidecarSettings, Credentials]:
    """Resolve flags, network file and defaults; raise :class:`UsageError` with the reason."""
    site: str | None = args.site
    node_id: str | None = args.node_id
    listen: str | None = args.listen
    admin: str | None = args.admin
    controlplane: str | None = args.controlplane
    if args.config:
        try:
            network = load_network(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"{args.config}: {exc.strerror}") from None
        if network.sidecars:
            block = network.sidecars[0]
            site = site or block.site
            node_id = node_id or block.node_id
            listen = listen or block.listen
            admin = admin or block.admin
        controlplane = controlplane or network.grpc_address
    if not site:
        raise UsageError("--site is required (or --config with a sidecar: block)")
    node_id = node_id or "sidecar-1"
    listen = listen or "127.0.0.1:8080"
    admin = admin or "127.0.0.1:9901"
    controlplane = controlplane if controlplane is not None else "127.0.0.1:50051"
    addresses = tuple(a.strip() for a in controlplane.split(",") if a.strip())
    for name, value in (("--listen", listen), ("--admin", admin),
                        *(("--controlplane", a) for a in addresses)):
        try:
            parse_address(value)
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
    state_dir = Path(args.state_dir) if args.state_dir else Path(".tdn") / f"sidecar-{node_id}"
    env = os.environ if environ is None else environ
    try:
        credentials = (Credentials.from_file(args.credentials, env) if args.credentials
                       else Credentials(environ=env))
    except CredentialsError as exc:
        raise UsageError(str(exc)) from None
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and parse_address(listen)[1] == 0:
        raise UsageError("--workers shares one proxy port: --listen needs a fixed port, not 0")
    reuse_port = args.workers > 1 or args.worker_index is not None
    if args.worker_index is not None:
        node_id = worker_node_id(node_id, args.worker_index)
        admin = worker_admin(admin, args.worker_index)
    settings = SidecarSettings(site=site, node_id=node_id, listen=listen, admin=admin,
                               controlplane=addresses, state_dir=state_dir,
                               reuse_port=reuse_port)
    return settings, credentials


def _configure_logging(level: str, access_log: bool = True) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("tdn.dataplane.access")
    # The access lines go to stdout directly, batched per event-loop turn (see access_log);
    # with --no-access-log they are never even serialised.
    access_log_module.write_to(sys.stdout if access_log else None)
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    access.propagate = False


async def _run(settings: SidecarSettings, credentials: Credentials,
               channel_credentials: grpc.ChannelCredentials | None = None,
               tenants: Tenants | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Sidecar(settings, credentials, channel_credentials=channel_credentials,
                       tenants=tenants):
        # Everything allocated so far (modules, the policy, gRPC) lives as long as the process:
        # moved out of the collector's sight, a full collection no longer walks ~50,000 objects
        # (over 10 ms, a pause for every request in flight) every few hundred requests.
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("stopping: finishing requests in flight (up to %.0fs)",
                 settings.shutdown_timeout_s)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, credentials = settings_from_args(args)
        # TLS to the control plane (mutual with --tls-cert/--tls-key); None: plain text.
        tls = client_tls_from_args(args)
        channel_credentials = tls.credentials() if tls is not None else None
        tenants = Tenants.from_file(args.tenants) if args.tenants else None
    except (UsageError, TlsError, TenantsError) as exc:
        print(f"tdn proxy: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level, access_log=not args.no_access_log)
    if args.workers > 1 and args.worker_index is None:
        return run_workers(argv, args.workers)
    try:
        # uvloop: the event loop is the sidecar's hottest code (see docs/decisions.md).
        uvloop.run(_run(settings, credentials, channel_credentials, tenants))
    except OSError as exc:
        # Typically the address is in use: say which, without a traceback.
        print(f"tdn proxy: cannot listen on {settings.listen} / {settings.admin}: {exc}",
              file=sys.stderr)
        return 1
    finally:
        # Access lines still pending go out before the process ends.
        access_log_module.write_to(None)
    return 0
