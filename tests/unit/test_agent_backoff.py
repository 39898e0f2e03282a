"""Reconnect pacing and agent settings: doubling, capped, jittered delays; normalised URLs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tdn.agent.backoff import Backoff
from tdn.agent.settings import AgentSettings, MtlsFiles, SettingsError, engine_base


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling


def test_backoff_spreads_agents_that_fail_together() -> None:
    delays = {Backoff(1.0, 5.0, random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20


def test_backoff_reset_starts_from_the_initial_delay_again() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(1))
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(1))
    for _ in range(5000):
        assert backoff.next_delay() <= 5.0


@pytest.mark.parametrize(("url", "base"), [
    ("http://127.0.0.1:8101", "http://127.0.0.1:8101"),
    ("http://127.0.0.1:8101/", "http://127.0.0.1:8101"),
    ("http://127.0.0.1:8101/v1", "http://127.0.0.1:8101"),
    ("http://127.0.0.1:8101/v1/", "http://127.0.0.1:8101"),
    ("https://gpu.example/vllm/v1", "https://gpu.example/vllm"),
])
def test_engine_url_is_accepted_with_or_without_v1(url: str, base: str) -> None:
    assert engine_base(url) == base


@pytest.mark.parametrize("url", ["127.0.0.1:8101", "ftp://x/", "http://", "http://h/?a=1"])
def test_unusable_engine_url_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match="engine URL"):
        engine_base(url)


@pytest.mark.parametrize(("changes", "complaint"), [
    ({"controlplanes": ()}, "no control-plane address"),
    ({"controlplanes": ("localhost",)}, "not host:port"),
    ({"interval_s": 0.0}, "interval_s must be a positive number"),
    ({"interval_s": float("nan")}, "interval_s must be a positive number"),
    ({"backoff_initial_s": 3.0, "backoff_max_s": 1.0}, "backoff_max_s"),
    ({"tls": MtlsFiles(Path("ca.pem"), Path("c.pem"), Path("k.pem"))}, "ca.pem is not a file"),
])
def test_settings_an_agent_cannot_run_with_are_refused(changes: dict[str, object],
                                                       complaint: str) -> None:
    settings = AgentSettings(**{"engine_url": "http://127.0.0.1:1",  # type: ignore[arg-type]
                                "controlplanes": ("127.0.0.1:2",), **changes})
    with pytest.raises(SettingsError, match=complaint):
        settings.validate()
