"""``tdn factory-sim``: run one simulated token factory until SIGTERM or SIGINT.

Settings come from flags, or from a network file's factory entry (``--config FILE --factory ID``;
``--factory ID`` alone uses the default network of ``tdn up``), with flags given explicitly
taking precedence. Bad flags or files are reported on stderr with exit status 2; a port that
cannot be bound exits with 1; a signal stops the server cleanly with 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from typing import Any

from tdn.config import ConfigError, load_network
from tdn.sim.faults import FaultError, parse_fault_spec
from tdn.sim.server import run_simulator
from tdn.sim.settings import SettingsError, SimSettings

log = logging.getLogger("tdn.sim")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tdn factory-sim",
        description="Run a simulated token factory: an OpenAI-compatible server with a "
                    "token-timing model, vLLM-named Prometheus metrics and injectable faults.")
    d = SimSettings()
    # Defaults are None so that a network file's values apply unless a flag is given.
    p.add_argument("--host", help=f"address to listen on (default {d.host})")
    p.add_argument("--port", type=int, help=f"port to listen on, 0 for any (default {d.port})")
    p.add_argument("--id", help=f"factory id (default {d.id})")
    p.add_argument("--models", help=f"comma-separated served models (default {d.models[0]})")
    p.add_argument("--max-concurrency", type=int,
                   help=f"requests run at once; more wait in a FIFO queue "
                        f"(default {d.max_concurrency})")
    p.add_argument("--prefill-tokens-per-s", type=float,
                   help=f"prompt tokens prefilled per second (default {d.prefill_tokens_per_s:g})")
    p.add_argument("--itl-ms", type=float,
                   help=f"inter-token latency in ms, 0 for as fast as possible "
                        f"(default {d.itl_ms:g})")
    p.add_argument("--itl-jitter", type=float,
                   help="inter-token latency jitter as a fraction of --itl-ms, seeded by the "
                        "prompt (default 0)")
    p.add_argument("--base-latency-ms", type=float,
                   help=f"fixed latency before queueing (default {d.base_latency_ms:g})")
    p.add_argument("--kv-capacity-tokens", type=int,
                   help=f"KV-cache size in tokens (default {d.kv_capacity_tokens})")
    p.add_argument("--max-model-len", type=int,
                   help=f"context length in tokens (default {d.max_model_len})")
    p.add_argument("--no-prefill", action="store_true",
                   help="reject continue_final_message (assistant prefill) with 400")
    p.add_argument("--fault", metavar="MODE[:k=v,...]",
                   help="start with a fault, e.g. error:status=503,retry_after=2 "
                        "(modes: none, error, hang, stall_first_token, stall_mid_stream, "
                        "cut_stream, slow_tokens, malformed_chunk; all take probability=P)")
    p.add_argument("--seed", type=int, help="seed of the probabilistic fault draw (default 0)")
    p.add_argument("--config", metavar="FILE", help="network file to take the factory from")
    p.add_argument("--factory", metavar="ID",
                   help="factory id in --config (or, without it, in the default network)")
    return p


_FLAG_FIELDS = ("host", "port", "id", "max_concurrency", "prefill_tokens_per_s", "itl_ms",
                "itl_jitter", "base_latency_ms", "kv_capacity_tokens", "max_model_len", "seed")


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """Build settings from parsed flags; raise ConfigError, FaultError or SettingsError."""
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in _FLAG_FIELDS if getattr(args, name) is not None
    }
    if args.models is not None:
        overrides["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if args.no_prefill:
        overrides["supports_prefill"] = False
    if args.fault is not None:
        overrides["fault"] = parse_fault_spec(args.fault)
    if args.config is not None and args.factory is None:
        raise SettingsError("--config needs --factory ID to say which factory to simulate")
    if args.factory is not None:
        # Without --config, the factory is looked up in the network `tdn up` runs by default.
        network = load_network(args.config)
        factory = next((f for f in network.factories if f.spec.id == args.factory), None)
        if factory is None:
            known = ", ".join(f.spec.id for f in network.factories) or "none"
            raise SettingsError(f"{network.filename} has no factory {args.factory!r} "
                                f"(it has: {known})")
        settings = SimSettings.from_factory(factory, **overrides)
    else:
        settings = replace(SimSettings(), **overrides)
    settings.check()
    return settings


async def _serve(settings: SimSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with run_simulator(settings) as running:
            log.info("factory-sim %s listening on %s (OpenAI API at %s; models: %s; fault: %s)",
                     settings.id, running.base_url, running.url, ", ".join(settings.models),
                     settings.fault.mode.value)
            await stop.wait()
            log.info("factory-sim %s stopping", settings.id)
    except OSError as exc:
        log.error("factory-sim %s cannot listen on %s:%s: %s", settings.id, settings.host,
                  settings.port, exc)
        return 1
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except (ConfigError, FaultError, SettingsError, OSError) as exc:
        print(f"tdn factory-sim: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(settings))
