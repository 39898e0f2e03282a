"""Policy files: parsed into frozen values, every error named by file, line, key and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support import REPO

from tdn.config import load_network
from tdn.domain import DataPlaneSettings, OutlierDetection, Tier
from tdn.policy import DEFAULT_POLICY, BackupDomain, Policy, Slo
from tdn.policy_canonical import canonical_yaml, unified_diff
from tdn.policy_parse import (
    PolicyError,
    PolicyInvalid,
    check_sites,
    load_policy_file,
    parse_policy,
    validate_policy,
)

EXAMPLE = REPO / "docs" / "policy-example.yaml"
HEADER = "apiVersion: tdn/v1\nkind: Policy\n"


def errors_of(body: str, filename: str = "p.yaml") -> list[tuple[int, str, str]]:
    """(line, key, reason) of every error in a policy whose body follows the two header lines."""
    with pytest.raises(PolicyInvalid) as err:
        parse_policy(HEADER + textwrap.dedent(body), filename)
    assert all(e.filename == filename for e in err.value.errors)
    return [(e.line, e.key, e.reason) for e in err.value.errors]


def parsed(body: str) -> Policy:
    return parse_policy(HEADER + textwrap.dedent(body), "p.yaml").policy


def test_an_empty_policy_means_every_default() -> None:
    assert parsed("") == DEFAULT_POLICY


def test_the_documented_example_is_valid_against_the_local_network() -> None:
    sites = [s.id for s in load_network().sites]
    assert validate_policy(EXAMPLE.read_text(), str(EXAMPLE), sites) == ()
    policy = load_policy_file(EXAMPLE).policy
    assert policy.objective.latency == 0.5
    assert policy.tier_factor(Tier.ON_SITE) == 0.8
    assert policy.capacity_headroom == 0.25
    assert policy.resolve_model("llama-8b") == "llama-3.1-8b-instruct"
    assert policy.slo("default", "llama-3.1-70b-instruct") == Slo(ttft_s=4.0, per_token_s=0.08)
    assert policy.slo("default", "llama-3.1-8b-instruct") == Slo(ttft_s=2.0, per_token_s=0.05)
    assert [t.name for t in policy.tenants_for("fra-office", "confidential")] == [
        "acme-confidential", "acme-eu"]
    assert policy.dataplane == DataPlaneSettings(
        first_byte_timeout_s=0.0, stream_idle_timeout_s=30.0, continuation_enabled=True,
        retry_budget_percent=20.0, retry_budget_min_concurrency=3, slow_first_byte_s=0.5,
        outlier=OutlierDetection(consecutive_failures=5, failure_rate_threshold=0.5,
                                 minimum_requests=20, interval_s=10.0, base_ejection_s=30.0,
                                 max_ejection_s=300.0, max_ejection_percent=50.0,
                                 panic_threshold_percent=50.0, probe_interval_s=5.0))


def test_policies_are_frozen_hashable_and_equal_when_they_mean_the_same() -> None:
    one = parsed("""\
        tenants:
          - {name: b, zones: [us, eu]}
          - {name: a, zones: [eu]}
        """)
    two = parsed("""\
        tenants:
          - name: a
            zones: [eu]
          - name: b
            zones: [eu, us]
        """)
    assert one == two and hash(one) == hash(two)
    with pytest.raises(AttributeError):
        one.churn_penalty = 0.5  # type: ignore[misc]


def test_the_canonical_form_parses_back_to_the_same_policy() -> None:
    policy = load_policy_file(EXAMPLE).policy
    text = canonical_yaml(policy)
    assert parse_policy(text, "canonical.yaml").policy == policy
    assert canonical_yaml(DEFAULT_POLICY) != text


def test_diff_of_canonical_forms_shows_only_what_changes_in_force() -> None:
    base = parsed("churn: {penalty: 0.1}\n")
    changed = parsed("churn: {penalty: 0.3}\nobjective: {price: 1.0}\n")
    diff = unified_diff(canonical_yaml(base), canonical_yaml(changed), "revision 1", "new.yaml")
    lines = [line for line in diff.splitlines() if line[:1] in "+-"]
    assert lines == ["--- revision 1", "+++ new.yaml", "-  penalty: 0.1", "+  penalty: 0.3"]


def test_every_error_is_reported_at_once_with_its_line_and_key() -> None:
    assert errors_of("""\
        objective: {price: cheap}
        capacity:
          headroom: 1.5
        churn: {penalty: 0.1, speed: 3}
        """) == [
        (3, "objective.price", "expected a number, got 'cheap'"),
        (5, "capacity.headroom", "1.5 is out of range: must be >= 0 and < 1"),
        (6, "churn.speed", "unknown key (allowed: penalty)"),
    ]


def test_wrong_api_version_and_kind_are_refused() -> None:
    with pytest.raises(PolicyInvalid) as err:
        parse_policy("apiVersion: tdn/v2\nkind: Policies\n", "p.yaml")
    assert [(e.line, e.key) for e in err.value.errors] == [(1, "apiVersion"), (2, "kind")]
    with pytest.raises(PolicyInvalid) as err:
        parse_policy("kind: Policy\n", "p.yaml")
    assert [(e.key, e.reason) for e in err.value.errors] == [
        ("apiVersion", "required key is missing")]


def test_unknown_keys_are_refused_naming_the_allowed_ones() -> None:
    assert errors_of("objective: {price: 1, co2: 2}\nbackup: {depth: 1}\n") == [
        (3, "objective.co2", "unknown key (allowed: carbon, energy, latency, price)"),
        (4, "backup", "unknown key (allowed: apiVersion, backups, capacity, churn, classes, "
                      "dataplane, demand, kind, metadata, models, objective, solver, tenants, "
                      "tiers)"),
    ]


def test_a_key_given_twice_is_refused_rather_than_silently_overridden() -> None:
    assert errors_of("churn: {penalty: 0.1}\nchurn: {penalty: 0.9}\n") == [
        (4, "churn", "duplicate key (first on line 3)")]


def test_wrong_types_are_refused() -> None:
    assert errors_of("""\
        backups: {depth: 1.5, failure_domain: rack}
        dataplane: {continuation: "yes", slow_first_byte_seconds: -1}
        tenants: {name: a}
        """) == [
        (3, "backups.depth", "expected a whole number, got 1.5"),
        (3, "backups.failure_domain", "'rack' is not one of region, failure_domain"),
        (4, "dataplane.continuation", "expected true or false, got 'yes'"),
        (4, "dataplane.slow_first_byte_seconds", "-1 is out of range: must be >= 0"),
        (5, "tenants", "expected a list, got a mapping"),
    ]


def test_booleans_are_not_numbers_and_infinity_is_not_finite() -> None:
    assert errors_of("objective: {price: true, latency: .inf}\n") == [
        (3, "objective.latency", "expected a finite number, got inf"),
        (3, "objective.price", "expected a number, got True"),
    ]


def test_weights_that_are_all_zero_leave_nothing_to_optimise() -> None:
    assert errors_of("objective: {price: 0, latency: 0, carbon: 0, energy: 0}\n") == [
        (3, "objective", "every weight is 0: the solver would have nothing to weigh")]


def test_tiers_must_be_known_and_their_factors_positive() -> None:
    assert errors_of("tiers: {gpu: 1.0, edge: 0}\n") == [
        (3, "tiers.edge", "0 is out of range: must be > 0 and <= 100"),
        (3, "tiers.gpu", "unknown tier (allowed: center, edge, on-site)"),
    ]
    assert parsed("tiers: {on-site: 0.5}\n").tier_factors == ((Tier.ON_SITE, 0.5),)


def test_class_slos_must_be_positive_and_names_unique() -> None:
    assert errors_of("""\
        classes:
          - {name: fast, ttft_seconds: 0}
          - name: fast
            models:
              big: {ttft_seconds: 4, p99: 1}
        """) == [
        (4, "classes[0].ttft_seconds", "0 is out of range: must be > 0"),
        (5, "classes[1].name", "class 'fast' is defined twice (first at classes[0])"),
        (7, "classes[1].models.big.p99",
         "unknown key (allowed: per_token_seconds, ttft_seconds)"),
    ]


def test_tenants_need_zones_and_may_only_name_defined_classes() -> None:
    assert errors_of("""\
        classes: [{name: batch}]
        tenants:
          - name: acme
            zones: []
          - name: globex
            zones: [eu, "on-site:"]
          - name: initech
            zones: [eu]
            classes: [batch, bulk]
          - zones: [us]
        """) == [
        (6, "tenants[0].zones", "must list at least one zone (traffic must go somewhere)"),
        (8, "tenants[1].zones[1]", "'on-site:' names no site (write on-site:<site id>)"),
        (11, "tenants[2].classes[1]",
         "class 'bulk' is not defined under classes (defined: batch, default)"),
        (12, "tenants[3].name", "required key is missing"),
    ]


def test_tenant_sites_and_on_site_zones_are_checked_against_the_network() -> None:
    p = parse_policy(HEADER + textwrap.dedent("""\
        tenants:
          - name: acme
            sites: [fra-office, frankfurt]
            zones: [eu, "on-site:frankfurt"]
        """), "p.yaml")
    assert check_sites(p, ["fra-office", "nyc-office"]) == (
        PolicyError("p.yaml", 5, "tenants[0].sites[1]",
                    "unknown site 'frankfurt' (known: fra-office, nyc-office)"),
        PolicyError("p.yaml", 6, "tenants[0].zones[1]",
                    "unknown site 'frankfurt' in zone 'on-site:frankfurt' "
                    "(known: fra-office, nyc-office)"),
    )


def test_aliases_may_not_shadow_models_and_fallbacks_may_not_loop() -> None:
    assert errors_of("""\
        models:
          - name: small
            aliases: [chat, big]
            context_fallback: big
          - name: big
            aliases: [chat]
            context_fallback: small
          - name: solo
            context_fallback: solo
        """) == [
        (5, "models[0].aliases", "alias 'big' is itself a model in this policy"),
        (6, "models[0].context_fallback", "context fallbacks loop: small -> big -> small"),
        (8, "models[1].aliases", "alias 'chat' already names model 'small'"),
        (9, "models[1].context_fallback", "context fallbacks loop: big -> small -> big"),
        (11, "models[2].context_fallback", "a model cannot fall back to itself"),
    ]


def test_dataplane_settings_map_onto_what_sidecars_receive() -> None:
    policy = parsed("""\
        dataplane:
          first_byte_timeout_seconds: 4
          retry_budget: {percent: 15}
          outlier_detection: {failure_rate_threshold: 0.3, base_ejection_seconds: 10}
        """)
    assert policy.dataplane.first_byte_timeout_s == 4.0
    assert policy.dataplane.retry_budget_percent == 15.0
    assert policy.dataplane.outlier.failure_rate_threshold == 0.3
    assert errors_of("""\
        dataplane:
          retry_budget: {percent: 150}
          outlier_detection: {base_ejection_seconds: 10, max_ejection_seconds: 5}
        """) == [
        (4, "dataplane.retry_budget.percent", "150 is out of range: must be >= 0 and <= 100"),
        (5, "dataplane.outlier_detection.max_ejection_seconds",
         "5 is below base_ejection_seconds 10"),
    ]


def test_yaml_syntax_errors_and_empty_documents_name_the_line() -> None:
    with pytest.raises(PolicyInvalid) as err:
        parse_policy(HEADER + "objective: {price: 1\n", "broken.yaml")
    (error,) = err.value.errors
    assert error.filename == "broken.yaml" and error.line == 4
    assert error.reason.startswith("not valid YAML")
    with pytest.raises(PolicyInvalid) as err:
        parse_policy("", "empty.yaml")
    assert str(err.value) == "empty.yaml:1: <document>: the document is empty"


def test_backups_and_solver_settings_are_read() -> None:
    policy = parsed("""\
        backups: {depth: 3, failure_domain: region}
        solver:
          time_limit_seconds: 0.5
          resolve_on: {price_change: 0.05}
        demand: {half_life_seconds: 60}
        """)
    assert (policy.backups.depth, policy.backups.domain) == (3, BackupDomain.REGION)
    assert policy.solver.time_limit_s == 0.5
    assert policy.solver.resolve_on.price_change == 0.05
    assert policy.solver.resolve_on.load_change == 0.25
    assert policy.demand.half_life_s == 60.0


def test_a_policy_file_is_loaded_with_its_path_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEADER + "churn: {penalty: -1}\n")
    with pytest.raises(PolicyInvalid) as err:
        load_policy_file(path)
    assert str(err.value) == f"{path}:3: churn.penalty: -1 is out of range: must be >= 0"


def test_errors_found_after_parsing_name_the_place_in_the_file_not_the_sorted_one() -> None:
    # Tenants, sites and zones are kept sorted; an error must still point at what was written.
    p = parse_policy(HEADER + textwrap.dedent("""\
        tenants:
          - name: zeta
            sites: [nyc-office, fra-office]
            zones: [eu]
          - name: acme
            sites: [fra-office, atlantis]
            zones: ["on-site:frankfurt", eu]
        """), "p.yaml")
    assert check_sites(p, ["fra-office", "nyc-office"]) == (
        PolicyError("p.yaml", 8, "tenants[1].sites[1]",
                    "unknown site 'atlantis' (known: fra-office, nyc-office)"),
        PolicyError("p.yaml", 9, "tenants[1].zones[0]",
                    "unknown site 'frankfurt' in zone 'on-site:frankfurt' "
                    "(known: fra-office, nyc-office)"),
    )


def test_slo_miss_target_and_max_primary_share_reach_the_solver() -> None:
    from tdn.topology.options import options_from_policy

    policy = parsed("""\
        capacity: {slo_miss_target: 0.05, max_primary_share: 0.5}
        """)
    assert (policy.slo_miss_target, policy.max_primary_share) == (0.05, 0.5)
    options = options_from_policy(policy)
    assert (options.slo_miss_target, options.max_primary_share) == (0.05, 0.5)
    defaults = options_from_policy(DEFAULT_POLICY)
    assert (defaults.slo_miss_target, defaults.max_primary_share) == (0.01, 0.34)
    assert parse_policy(canonical_yaml(policy), "c.yaml").policy == policy


def test_slo_miss_target_and_max_primary_share_must_be_shares_above_zero() -> None:
    assert errors_of("""\
        capacity:
          slo_miss_target: 0
          max_primary_share: 1.5
        """) == [
        (4, "capacity.slo_miss_target", "0 is out of range: must be > 0 and <= 1"),
        (5, "capacity.max_primary_share", "1.5 is out of range: must be > 0 and <= 1"),
    ]
    assert errors_of("capacity: {slo_miss_target: often}\n") == [
        (3, "capacity.slo_miss_target", "expected a number, got 'often'")]


def test_reserving_sole_factories_is_on_by_default_and_may_be_turned_off() -> None:
    from tdn.topology.options import options_from_policy

    assert DEFAULT_POLICY.reserve_sole_factories is True
    assert options_from_policy(DEFAULT_POLICY).reserve_sole_factories is True
    off = parsed("capacity: {reserve_sole_factories: false}\n")
    assert options_from_policy(off).reserve_sole_factories is False
    assert parse_policy(canonical_yaml(off), "c.yaml").policy == off
    [(line, key, reason)] = errors_of("capacity: {reserve_sole_factories: 1}\n")
    assert (line, key) == (3, "capacity.reserve_sole_factories")
    assert "boolean" in reason or "true" in reason
