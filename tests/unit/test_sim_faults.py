"""Fault descriptions: parsing from flags and JSON, validation, and the seeded draw."""

from __future__ import annotations

import pytest

from tdn.sim.faults import (
    HEALTHY,
    Fault,
    FaultError,
    FaultMode,
    FaultSwitch,
    fault_from_mapping,
    parse_fault_spec,
)


def test_command_line_spec_parses_mode_and_typed_parameters() -> None:
    fault = parse_fault_spec("error:status=503,retry_after=2")
    assert fault.mode is FaultMode.ERROR
    assert fault.status == 503
    assert fault.retry_after == 2.0
    assert parse_fault_spec("hang") == Fault(mode=FaultMode.HANG)
    assert parse_fault_spec("none") == HEALTHY


def test_spec_and_json_forms_give_the_same_fault() -> None:
    from_flag = parse_fault_spec("stall_mid_stream:after_tokens=4,seconds=1.5,probability=0.5")
    from_json = fault_from_mapping({"mode": "stall_mid_stream", "after_tokens": 4,
                                    "seconds": 1.5, "probability": 0.5})
    assert from_flag == from_json


def test_to_json_shows_only_the_parameters_the_mode_uses_and_round_trips() -> None:
    fault = fault_from_mapping({"mode": "cut_stream", "after_tokens": 7})
    assert fault.to_json() == {"mode": "cut_stream", "after_tokens": 7, "probability": 1.0}
    assert fault_from_mapping(fault.to_json()) == fault
    assert HEALTHY.to_json() == {"mode": "none"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"mode": "explode"}, "unknown fault mode 'explode'"),
    ({}, "'mode' is required"),
    ({"mode": "hang", "seconds": 3}, "does not take seconds"),
    ({"mode": "error", "status": 200}, "400-599"),
    ({"mode": "error", "status": "abc"}, "must be a number"),
    ({"mode": "error", "status": 503.5}, "whole number"),
    ({"mode": "error", "probability": 1.5}, "between 0 and 1"),
    ({"mode": "stall_first_token", "seconds": -1}, "must not be negative"),
    ({"mode": "malformed_chunk", "then": "explode"}, "then must be one of"),
    ({"mode": "slow_tokens", "itl_ms": True}, "finite number"),
])
def test_invalid_faults_are_refused_with_a_precise_message(raw: dict[str, object],
                                                           message: str) -> None:
    with pytest.raises(FaultError, match=message):
        fault_from_mapping(raw)


def test_spec_items_must_be_key_value_pairs() -> None:
    with pytest.raises(FaultError, match="not key=value"):
        parse_fault_spec("error:503")


def test_probability_selects_the_same_requests_for_the_same_seed() -> None:
    fault = Fault(mode=FaultMode.ERROR, probability=0.5)

    def pattern(seed: int) -> list[bool]:
        switch = FaultSwitch(fault, seed)
        return [switch.draw().mode is FaultMode.ERROR for _ in range(64)]

    first = pattern(11)
    assert first == pattern(11)
    assert first != pattern(12)
    assert 10 < sum(first) < 54


def test_a_healthy_switch_never_injects_and_counts_injections_by_mode() -> None:
    switch = FaultSwitch()
    assert switch.draw() is HEALTHY
    switch.set(Fault(mode=FaultMode.HANG))
    switch.draw()
    switch.draw()
    assert switch.injected == {"hang": 2}
