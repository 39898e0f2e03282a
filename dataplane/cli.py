"""``tdn proxy``: run one sidecar until SIGTERM or SIGINT, then stop gracefully and exit 0.

Settings come from flags, else from the ``sidecar:`` block of a network file (``--config``),
else from defaults. Access-log lines (JSON, one per request) go to stdout; diagnostics to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from tdn.config import ConfigError, load_network

from .credentials import Credentials, CredentialsError
from .sidecar import Sidecar, SidecarSettings, parse_address

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
    settings = SidecarSettings(site=site, node_id=node_id, listen=listen, admin=admin,
                               controlplane=addresses, state_dir=state_dir)
    return settings, credentials


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.getLogger("tdn.dataplane.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


async def _run(settings: SidecarSettings, credentials: Credentials) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Sidecar(settings, credentials):
        await stop.wait()
        log.info("stopping: finishing requests in flight (up to %.0fs)",
                 settings.shutdown_timeout_s)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, credentials = settings_from_args(args)
    except UsageError as exc:
        print(f"tdn proxy: {exc}", file=sys.stderr)
        return 2
    _configure_logging(args.log_level)
    try:
        asyncio.run(_run(settings, credentials))
    except OSError as exc:
        # Typically the address is in use: say which, without a traceback.
        print(f"tdn proxy: cannot listen on {settings.listen} / {settings.admin}: {exc}",
              file=sys.stderr)
        return 1
    return 0
