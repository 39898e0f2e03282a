"""The ``tdn`` command: one entry point whose subcommands live next to the code they run.

Each subcommand module is imported only when it is used, so ``tdn proxy`` never loads the
solver and ``tdn agent`` never loads aiohttp's server.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with main(argv) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("tdn.up", "run a complete local TDN (control plane, factories, agents, sidecar)"),
    "controlplane": ("tdn.controlplane.cli", "run a control-plane replica"),
    "proxy": ("tdn.dataplane.cli", "run a sidecar: the OpenAI-compatible routing proxy"),
    "agent": ("tdn.agent.cli", "attach an OpenAI-compatible engine and stream its telemetry"),
    "factory-sim": ("tdn.sim.cli", "run a simulated token factory (OpenAI API + vLLM metrics)"),
    "status": ("tdn.operator_cli", "show the control plane's view: plan, factories, sidecars"),
    "topology": ("tdn.operator_cli", "print the topology (tdn topology show)"),
    "plan": ("tdn.operator_cli", "print the current plan"),
    "explain": ("tdn.operator_cli", "explain why a route was chosen"),
    "factory": ("tdn.operator_cli", "cordon, drain or activate a factory"),
    "policy": ("tdn.operator_cli", "validate, apply, diff, get, history or roll back a policy"),
    "drill": ("tdn.chaos.cli", "run failover drills: inject faults, drive load, check and report"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tdn <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "tdn <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] == "--version":
        from tdn import __version__

        print(f"tdn {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"tdn: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if COMMANDS[name][0] == "tdn.operator_cli":
        rest = [name, *rest]
    code: int = module.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
