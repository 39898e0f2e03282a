"""The network file: the embedded default loads, and every bad file is refused with file, line,
key and reason (never a partial result)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdn.config import ConfigError, load_factory_file, load_network, parse_network
from tdn.domain import Tier

DEFAULT = (Path(__file__).resolve().parents[2] / "tdn" / "defaults" / "up.yaml").read_text()


def test_embedded_network_spans_three_tiers_and_at_least_two_regions() -> None:
    net = load_network()
    tiers = {f.spec.tier for f in net.factories}
    regions = {f.spec.region for f in net.factories}
    assert tiers == {Tier.CENTER, Tier.EDGE, Tier.ON_SITE}
    assert len(regions) >= 2
    assert len(net.factories) >= 5
    assert len({f.spec.price.output_per_mtok for f in net.factories}) > 1
    assert len({f.spec.energy.grid_gco2_per_kwh for f in net.factories}) > 1
    assert net.grpc_address == "127.0.0.1:50051"
    assert net.http_address == "127.0.0.1:8081"
    assert net.sidecars[0].listen == "127.0.0.1:8080"
    # A simulated factory's endpoint is derived from its port.
    assert all(f.spec.endpoint == f"http://127.0.0.1:{f.sim.port}/v1"
               for f in net.factories if f.sim)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ("tier: edge", "tier: edgy", "factories[2].tier", "not one of center, edge, on-site"),
        ("output_per_mtok: 0.40", "output_per_mtok: .nan", "factories[0].price.output_per_mtok",
         "not a finite number"),
        ("    region: eu-north", "    regio: eu-north", "factories[0].regio", "unknown key"),
        ("port: 8101", "port: eighty", "factories[0].sim.port", "expected an integer"),
    ],
)
def test_bad_value_is_refused_with_file_line_key_and_reason(old: str, new: str, key: str,
                                                            reason: str) -> None:
    text = DEFAULT.replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        parse_network(text, "net.yaml")
    assert err.value.filename == "net.yaml"
    assert err.value.key == key
    assert reason in err.value.reason
    assert err.value.line == _line_of(text, new.strip())
    assert str(err.value).startswith(f"net.yaml:{err.value.line}: {key}:")


def test_negative_capacity_is_refused() -> None:
    text = DEFAULT.replace("max_concurrency: 64", "max_concurrency: -1", 1)
    with pytest.raises(ConfigError) as err:
        parse_network(text, "net.yaml")
    assert "max_concurrency is -1" in err.value.reason


def test_demand_for_an_unknown_site_is_refused() -> None:
    text = DEFAULT.replace("{site: nyc-office,", "{site: lon-office,", 1)
    with pytest.raises(ConfigError) as err:
        parse_network(text, "net.yaml")
    assert err.value.key == "site" and "lon-office" in err.value.reason


def test_duplicate_factory_id_is_refused() -> None:
    text = DEFAULT.replace("id: center-us-1", "id: center-se-1", 1)
    with pytest.raises(ConfigError) as err:
        parse_network(text, "net.yaml")
    assert "duplicate factory id" in err.value.reason


def test_yaml_syntax_error_names_the_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_network("sites:\n  - id: [unclosed\n", "broken.yaml")
    assert err.value.filename == "broken.yaml"
    assert err.value.line >= 2
    assert "not valid YAML" in err.value.reason


def test_factory_file_holds_one_factory(tmp_path: Path) -> None:
    path = tmp_path / "factory.yaml"
    path.write_text(
        "id: gpu-box-1\ntier: on-site\nregion: eu-west\nsite: fra-office\n"
        "compliance_zone: on-site:fra-office\nmodels: [m1]\nendpoint: http://10.1.2.3:8000/v1\n"
        "price: {input_per_mtok: 0.1, output_per_mtok: 0.2}\n"
    )
    fc = load_factory_file(path)
    assert fc.spec.id == "gpu-box-1"
    assert fc.spec.tier is Tier.ON_SITE
    assert fc.sim is None
    path.write_text(path.read_text().replace("site: fra-office\n", ""))
    with pytest.raises(ConfigError) as err:
        load_factory_file(path)
    assert "names no site" in err.value.reason
