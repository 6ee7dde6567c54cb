"""Order-free diagnostics: R-hat within the groups of chains that share a MAP optimum."""

import numpy as np
import pytest

from cdt_bayes import _summaries as S


def _chains(means, n_draws=300, n_nodes=6, seed=0):
    rng = np.random.default_rng(seed)
    act = np.stack([m + rng.normal(size=(n_draws, n_nodes)) for m in means])
    ecg = np.stack([m + rng.normal(size=(n_draws, 2, 5)) for m in means])
    return act, ecg


def test_within_group_rhat_separates_modes_from_poor_mixing():
    # two modes, two chains each, every chain sampling its mode well
    act, ecg = _chains([0.0, 0.0, 8.0, 8.0])
    assert S.diagnostics(act, ecg)["max_rhat"] > 1.5
    res = S.rhat_within_groups(act, ecg, [0, 0, 1, 1])
    assert res["max_rhat"] < 1.05, res
    assert set(res["by_group"]) == {0, 1}
    # negative control: chains in one group that disagree
    bad = S.rhat_within_groups(act, ecg, [0, 1, 0, 1])
    assert bad["max_rhat"] > 1.5, bad


def test_within_group_rhat_needs_two_chains_per_group():
    act, ecg = _chains([0.0, 8.0, 16.0])
    assert np.isnan(S.rhat_within_groups(act, ecg, [0, 1, 2])["max_rhat"])
    with pytest.raises(ValueError, match="one label per chain"):
        S.rhat_within_groups(act, ecg, [0, 1])
