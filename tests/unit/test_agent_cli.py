"""``tdn agent`` arguments: a factory from a network entry, a factory file or flags (flags win),
and a precise one-line refusal, exit status 2, for anything that cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO

from tdn.agent.cli import agent_from_args, build_parser, main
from tdn.domain import Price, Tier

UP_YAML = REPO / "tdn" / "defaults" / "up.yaml"

FACTORY_YAML = """\
id: gpu-box-1
tier: edge
region: eu-west
compliance_zone: eu
endpoint: http://10.0.0.5:8000/v1
models: [llama-3.1-8b-instruct]
supports_prefill: true
price: {input_per_mtok: 0.3, output_per_mtok: 1.2}
energy: {watts: 1400, tokens_per_joule: 1.5}
"""

FLAGS = ["--id", "lab-1", "--tier", "on-site", "--site", "fra-office", "--region", "eu-west",
         "--compliance-zone", "on-site:fra-office", "--price-input", "0.05",
         "--price-output", "0.2"]


def parse(argv: list[str]):  # type: ignore[no-untyped-def]
    return agent_from_args(build_parser().parse_args(argv))


def test_a_network_entry_gives_the_factory_its_engine_and_control_plane() -> None:
    agent = parse(["--config", str(UP_YAML), "--factory", "edge-fra-1"])

    assert agent.spec.id == "edge-fra-1"
    assert agent.spec.tier is Tier.EDGE
    assert agent.spec.failure_domain == "rack-a"
    assert agent.spec.models == ("llama-3.1-8b-instruct", "bge-m3")
    # The simulator's port gives the endpoint, and the engine URL is derived from it.
    assert agent.spec.endpoint == "http://127.0.0.1:8103/v1"
    assert agent.settings.engine_base == "http://127.0.0.1:8103"
    assert agent.settings.controlplanes == ("127.0.0.1:50051",)
    assert "edge-fra-1" in agent.describe() and "127.0.0.1:8103" in agent.describe()


def test_flags_override_a_factory_files_values(tmp_path: Path) -> None:
    path = tmp_path / "factory.yaml"
    path.write_text(FACTORY_YAML)

    agent = parse(["--factory-file", str(path), "--engine-url", "http://127.0.0.1:8000",
                   "--price-output", "2.5", "--models", "a, b", "--no-supports-prefill",
                   "--watts", "900", "--controlplane", "cp-a:50051,cp-b:50051",
                   "--interval", "0.5"])

    assert agent.spec.price == Price(0.3, 2.5)
    assert agent.spec.models == ("a", "b")
    assert agent.spec.supports_prefill is False
    assert agent.spec.energy.watts == 900 and agent.spec.energy.tokens_per_joule == 1.5
    # The file's endpoint (what sidecars call) stays; the agent scrapes the engine URL given.
    assert agent.spec.endpoint == "http://10.0.0.5:8000/v1"
    assert agent.settings.engine_base == "http://127.0.0.1:8000"
    assert agent.settings.controlplanes == ("cp-a:50051", "cp-b:50051")
    assert agent.interval_s == 0.5


def test_flags_alone_describe_a_factory_whose_models_come_from_the_engine() -> None:
    agent = parse([*FLAGS, "--engine-url", "http://127.0.0.1:8105/v1"])

    assert agent.spec.tier is Tier.ON_SITE and agent.spec.site == "fra-office"
    assert agent.spec.models == ()  # discovered from /v1/models at each scrape
    assert agent.spec.endpoint == "http://127.0.0.1:8105/v1"
    assert agent.settings.controlplanes == ("127.0.0.1:50051",)


@pytest.mark.parametrize(("argv", "complaint"), [
    (["--engine-url", "http://127.0.0.1:1", "--id", "x"],
     "give --tier, --region, --compliance-zone, --price-input, --price-output"),
    (["--config", str(UP_YAML)], "--config and --factory go together"),
    (["--config", str(UP_YAML), "--factory", "nope"], "has no factory 'nope' (it has: center-se-1"),
    (["--factory-file", "/nonexistent/factory.yaml"], "cannot read /nonexistent/factory.yaml"),
    ([*FLAGS[:4], *FLAGS[6:], "--engine-url", "http://127.0.0.1:1"],
     "on-site factory lab-1 names no site"),
    ([*FLAGS], "give --engine-url"),
    ([*FLAGS, "--engine-url", "localhost:8000"], "is not an http(s) URL"),
    ([*FLAGS, "--engine-url", "http://h:1", "--controlplane", "nohost"], "not host:port"),
    ([*FLAGS, "--engine-url", "http://h:1", "--max-concurrency", "0"], "max_concurrency is 0"),
])
def test_arguments_that_cannot_run_are_refused_in_one_line(
        argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tdn agent: error: ")
    assert complaint in err
    assert len(err.strip().splitlines()) == 1


def test_a_bad_factory_file_is_refused_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "factory.yaml"
    path.write_text(FACTORY_YAML.replace("tier: edge", "tier: moon"))

    assert main(["--factory-file", str(path)]) == 2

    assert f"{path}:2: tier: 'moon' is not one of center, edge, on-site" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--price-input", "nan"], ["--interval", "0"],
                                  ["--tier", "moon"]])
def test_malformed_flag_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
