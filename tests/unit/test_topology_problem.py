"""How the problem orders a group's candidates: by cost, ties by factory, whichever way the
sort is computed."""

from __future__ import annotations

import numpy as np
import pytest

import tdn.topology.problem as problem_module
from tdn.topology.problem import _sorted_within_groups


@pytest.mark.parametrize("many_lengths", [False, True])
def test_each_groups_candidates_are_sorted_by_cost_then_factory_as_one_three_key_sort_would(
        monkeypatch: pytest.MonkeyPatch, many_lengths: bool) -> None:
    if many_lengths:  # past the limit, one sort over all pairs is taken instead
        monkeypatch.setattr(problem_module, "_MAX_RUN_LENGTHS", 2)
    rng = np.random.default_rng(3)
    lengths = rng.choice([0, 1, 2, 7, 30], size=400)
    group = np.repeat(np.arange(len(lengths)), lengths)
    # Candidates arrive in factory order within a group; costs are coarse, so ties abound.
    factory = np.concatenate([np.sort(rng.choice(100, n, replace=False)) for n in lengths])
    cost = np.round(rng.uniform(0.0, 1.0, len(group)), 1)
    start = np.concatenate(([0], np.cumsum(lengths)))
    np.testing.assert_array_equal(_sorted_within_groups(start, lengths, cost),
                                  np.lexsort((factory, cost, group)))
