"""``tdn agent``: attach an OpenAI-compatible engine (vLLM, SGLang, the simulator) to TDN.

The factory is described by a YAML file holding one ``factories:`` entry (``--factory-file``),
by an entry of a network file (``--config NETWORK.yaml --factory ID``), or by flags alone; flags
given with a file override the file's values. Bad input is answered with one precise line on
stderr and exit status 2; SIGTERM or SIGINT stop the agent cleanly with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import signal
import sys
from pathlib import Path
from typing import Any

from tdn.agent.agent import FactoryAgent
from tdn.agent.settings import (
    AgentSettings,
    MtlsFiles,
    SettingsError,
    engine_base,
    split_addresses,
)
from tdn.config import ConfigError, load_factory_file, load_network
from tdn.domain import FactorySpec, Price, Tier, ValidationFailure
from tdn.tls import add_client_flags

log = logging.getLogger("tdn.agent")

DEFAULT_CONTROLPLANE = "127.0.0.1:50051"


class UsageError(ValueError):
    """Command-line arguments that do not describe a runnable agent."""


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive(text: str) -> float:
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _tier(text: str) -> Tier:
    try:
        return Tier(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(t.value for t in Tier)}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tdn agent",
        description="Scrape an OpenAI-compatible engine's /metrics and /v1/models and stream "
                    "its telemetry to the TDN control plane.",
    )
    p.add_argument("--engine-url", help="engine base URL, e.g. http://127.0.0.1:8101 (with or "
                   "without /v1); default: derived from the factory's endpoint")
    p.add_argument("--controlplane", help="control-plane gRPC address(es), comma-separated; "
                   "the agent rotates through them on failure (default: the network file's "
                   f"controlplane.grpc, else {DEFAULT_CONTROLPLANE})")
    p.add_argument("--interval", type=_positive, default=1.0,
                   help="seconds between reports until the control plane says otherwise "
                        "(default 1)")
    p.add_argument("--scrape-timeout", type=_positive, default=2.0,
                   help="seconds allowed for one scrape of the engine (default 2)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_client_flags(p)

    src = p.add_argument_group("factory description (a file, a network entry, or flags)")
    src.add_argument("--factory-file", metavar="FILE",
                     help="YAML file with the keys of one factories: entry")
    src.add_argument("--config", metavar="NETWORK.yaml", help="network file (as for tdn up)")
    src.add_argument("--factory", metavar="ID", help="which factory of --config this is")

    f = p.add_argument_group("factory flags (override the file's values)")
    f.add_argument("--id")
    f.add_argument("--tier", type=_tier, help="center, edge or on-site")
    f.add_argument("--region")
    f.add_argument("--compliance-zone")
    f.add_argument("--site", help="the consumer site holding an on-site factory")
    f.add_argument("--models", help="comma-separated model names (default: what the engine's "
                   "/v1/models lists)")
    f.add_argument("--endpoint", help="OpenAI base URL sidecars call (default: engine URL + /v1)")
    f.add_argument("--price-input", type=_finite, help="price per 1M input tokens")
    f.add_argument("--price-output", type=_finite, help="price per 1M output tokens")
    f.add_argument("--price-cached", type=_finite, help="price per 1M cached input tokens")
    f.add_argument("--watts", type=_finite)
    f.add_argument("--tokens-per-joule", type=_finite)
    f.add_argument("--grid-gco2-per-kwh", type=_finite)
    f.add_argument("--electricity-price-per-kwh", type=_finite)
    f.add_argument("--max-concurrency", type=int)
    f.add_argument("--supports-prefill", action=argparse.BooleanOptionalAction, default=None)
    f.add_argument("--failure-domain")
    return p


def _base_spec(args: argparse.Namespace) -> tuple[FactorySpec | None, str | None]:
    """The spec from a file, if one was named, and the network's control-plane address."""
    if args.factory_file and (args.config or args.factory):
        raise UsageError("give --factory-file or --config/--factory, not both")
    if args.factory_file:
        return load_factory_file(args.factory_file).spec, None
    if args.config or args.factory:
        if not (args.config and args.factory):
            raise UsageError("--config and --factory go together")
        network = load_network(args.config)
        for entry in network.factories:
            if entry.spec.id == args.factory:
                return entry.spec, network.grpc_address
        known = ", ".join(e.spec.id for e in network.factories) or "none"
        raise UsageError(f"{args.config} has no factory {args.factory!r} (it has: {known})")
    return None, None


def spec_from_args(args: argparse.Namespace) -> tuple[FactorySpec, str | None]:
    """The factory this agent reports (flags over file), and the network's control plane."""
    base, network_cp = _base_spec(args)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else None
    if base is None:
        missing = [flag for flag, value in (
            ("--id", args.id), ("--tier", args.tier), ("--region", args.region),
            ("--compliance-zone", args.compliance_zone), ("--price-input", args.price_input),
            ("--price-output", args.price_output)) if value is None]
        if missing:
            raise UsageError(f"without --factory-file or --config, give {', '.join(missing)}")
        base = FactorySpec(id=args.id, tier=args.tier, region=args.region,
                           compliance_zone=args.compliance_zone, endpoint="", models=(),
                           price=Price(args.price_input, args.price_output))
    price = dataclasses.replace(base.price, **_given(
        input_per_mtok=args.price_input, output_per_mtok=args.price_output,
        cached_input_per_mtok=args.price_cached))
    energy = dataclasses.replace(base.energy, **_given(
        watts=args.watts, tokens_per_joule=args.tokens_per_joule,
        grid_gco2_per_kwh=args.grid_gco2_per_kwh,
        electricity_price_per_kwh=args.electricity_price_per_kwh))
    spec = dataclasses.replace(base, price=price, energy=energy, **_given(
        id=args.id, tier=args.tier, region=args.region, compliance_zone=args.compliance_zone,
        site=args.site, models=models, endpoint=args.endpoint,
        max_concurrency=args.max_concurrency, supports_prefill=args.supports_prefill,
        failure_domain=args.failure_domain))
    return spec, network_cp


def _given(**changes: Any) -> dict[str, Any]:
    """The flags that were actually given (argparse leaves the others None)."""
    return {k: v for k, v in changes.items() if v is not None}


def settings_from_args(args: argparse.Namespace, spec: FactorySpec,
                       network_cp: str | None) -> AgentSettings:
    engine_url = args.engine_url
    if not engine_url:
        if not spec.endpoint:
            raise UsageError("give --engine-url (the factory has no endpoint to derive it from)")
        engine_url = engine_base(spec.endpoint)
    addresses = split_addresses(args.controlplane or network_cp or DEFAULT_CONTROLPLANE)
    return AgentSettings(engine_url=engine_url, controlplanes=addresses,
                         interval_s=args.interval, scrape_timeout_s=args.scrape_timeout,
                         tls=_mtls(args))


def _mtls(args: argparse.Namespace) -> MtlsFiles | None:
    """The agent's mutual-TLS files; an agent that presents no certificate is refused by a
    control plane that asks for one, so all three flags are required together."""
    given = [getattr(args, n, None) for n in ("tls_ca", "tls_cert", "tls_key")]
    if not any(given):
        return None
    if not all(given):
        raise UsageError("--tls-ca, --tls-cert and --tls-key go together")
    ca, cert, key = (Path(str(g)) for g in given)
    return MtlsFiles(ca_cert=ca, cert_chain=cert, private_key=key)


def agent_from_args(args: argparse.Namespace) -> FactoryAgent:
    """The agent parsed arguments describe; raises UsageError, ConfigError, ValidationFailure,
    SettingsError or OSError saying what is wrong."""
    spec, network_cp = spec_from_args(args)
    return FactoryAgent(spec, settings_from_args(args, spec, network_cp))


async def run_until_signalled(agent: FactoryAgent) -> int:
    """Run ``agent`` until SIGTERM or SIGINT; then stop it and return 0."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(agent.run(), name=f"agent-{agent.spec.id}")
    received: list[str] = []

    def stop(sig: signal.Signals) -> None:
        received.append(sig.name)
        task.cancel()

    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop, sig)
    try:
        await task
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped on %s after %d reports (%d accepted, %d rejected)", received[0],
             agent.stats.reports_sent, agent.stats.acks_accepted, agent.stats.acks_rejected)
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        agent = agent_from_args(args)
    except (UsageError, ConfigError, ValidationFailure, SettingsError) as exc:
        print(f"tdn agent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tdn agent: error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    log.info("attaching %s", agent.describe())
    return asyncio.run(run_until_signalled(agent))
