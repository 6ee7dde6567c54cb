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


def test_activation_summary_folds_in_a_per_node_error():
    """sd adds in quadrature; quantiles are those of draws + N(0, e²); e = 0 changes nothing."""
    rng = np.random.default_rng(0)
    act = rng.normal(10.0, 1.0, size=(2, 500, 3))
    bare = S.activation_summary(act)
    same = S.activation_summary(act, np.zeros(3))
    for k in bare:
        np.testing.assert_allclose(same[k], bare[k], atol=1e-12)
    e = np.array([0.0, 1.0, 3.0])
    out = S.activation_summary(act, e, min_samples=20000)
    np.testing.assert_allclose(out["mean"], bare["mean"])
    np.testing.assert_allclose(out["sd"], np.sqrt(bare["sd"] ** 2 + e**2))
    # draws ~ N(10, 1): the widened 90 % interval is that of N(10, 1 + e²)
    np.testing.assert_allclose(out["q95"] - out["mean"], 1.645 * np.sqrt(1 + e**2), rtol=0.06)
    np.testing.assert_allclose(out["mean"] - out["q05"], 1.645 * np.sqrt(1 + e**2), rtol=0.06)
    # one draw (a point estimate): the interval is the error's alone
    one = S.activation_summary(act[:1, :1], e, min_samples=20000)
    np.testing.assert_allclose(one["width90"][1:], 2 * 1.645 * e[1:], rtol=0.05)
    assert one["width90"][0] == 0.0
    with pytest.raises(ValueError, match="extra_sd"):
        S.activation_summary(act, np.array([1.0, -1.0, 0.0]))


def test_tree_depth_saturation_counts_iterations_at_the_cap():
    steps = np.array([[63, 63, 31, 63], [7, 63, 63, 62]])  # depth 6: the cap is 63 steps
    assert S.tree_depth_saturation(steps, 6) == pytest.approx(5 / 8)
    assert S.tree_depth_saturation(steps, 8) == 0.0  # none reach 255
    assert S.tree_depth_saturation(steps, 3) == 1.0  # every tree has at least 7 steps
    assert np.isnan(S.tree_depth_saturation(np.zeros((2, 0)), 6))


def test_stuck_chains_flags_a_collapsed_step_size():
    """The 4-chain benchmark at depth 6 had one chain at step 0.00013 against 0.011-0.019."""
    rng = np.random.default_rng(0)
    eps = np.array([0.0179, 0.0107, 0.0193, 0.000132])[:, None] * rng.uniform(0.9, 1.1, (4, 50))
    out = S.stuck_chains(eps)
    assert [c for c, _, _ in out] == [3]
    c, mine, others = out[0]
    assert mine == pytest.approx(0.000132, rel=0.11) and others == pytest.approx(0.0179, rel=0.11)
    assert S.stuck_chains(eps[:3]) == []  # spread within 2x: nothing flagged
    assert S.stuck_chains(eps[:1]) == []  # one chain: nothing to compare with


def test_loo_log_density_matches_the_conjugate_normal_model():
    # y_i ~ N(m, 1), m ~ N(0, 10^2): the exact leave-one-out predictive is
    # N(y_i; mean of m given y_{-i}, 1 + var of m given y_{-i}).
    rng = np.random.default_rng(0)
    y = rng.normal(0.7, 1.0, 30)
    prec = 1 / 100 + y.size
    m = rng.normal(y.sum() / prec, 1 / np.sqrt(prec), 20000)
    ll = -0.5 * (y[None] - m[:, None]) ** 2 - 0.5 * np.log(2 * np.pi)
    prec_i = 1 / 100 + y.size - 1
    mean_i = (y.sum() - y) / prec_i
    var_i = 1 + 1 / prec_i
    exact = -0.5 * (y - mean_i) ** 2 / var_i - 0.5 * np.log(2 * np.pi * var_i)
    np.testing.assert_allclose(S.loo_log_density(ll), exact, atol=0.01)
    # LOO is not the in-sample fit: that would score every point higher
    assert np.all(np.log(np.exp(ll).mean(0)) > exact)


def _chain_loglik(rng, y, centre, n=400):
    m = rng.normal(centre, 0.05, n)
    return -0.5 * (y[None] - m[:, None]) ** 2 - 0.5 * np.log(2 * np.pi)


def test_stacking_drops_a_chain_the_data_disfavour():
    rng = np.random.default_rng(1)
    y = rng.normal(0.0, 1.0, 200)
    ll = np.stack([_chain_loglik(rng, y, 0.0), _chain_loglik(rng, y, 0.0), _chain_loglik(rng, y, 1.5)])
    out = S.stacking_weights(ll)
    assert out["weights"].shape == (3,)
    assert out["weights"].sum() == pytest.approx(1.0)
    assert out["weights"][2] < 0.02
    assert out["elpd_loo"][2] < out["elpd_loo"][0] - 50
    assert out["elpd_loo_stacked"] >= out["elpd_loo"].max() - 1e-4  # the optimum is at least the best chain


def test_stacking_keeps_two_chains_that_each_explain_half_the_data():
    # two groups of observations, each predicted well by one chain only: the mixture needs both
    rng = np.random.default_rng(2)
    y = np.concatenate([rng.normal(-2.0, 0.3, 100), rng.normal(2.0, 0.3, 100)])

    def chain(c):
        m = rng.normal(c, 0.05, 400)
        return -0.5 * ((y[None] - m[:, None]) / 0.3) ** 2 - np.log(0.3) - 0.5 * np.log(2 * np.pi)

    out = S.stacking_weights(np.stack([chain(-2.0), chain(2.0)]))
    np.testing.assert_allclose(out["weights"], [0.5, 0.5], atol=0.02)
    assert out["elpd_loo_stacked"] > out["elpd_loo"].max() + 100


def test_stacking_rejects_bad_input():
    with pytest.raises(ValueError, match="chain, draw, n_obs"):
        S.stacking_weights(np.zeros((4, 10)))
    with pytest.raises(ValueError, match="non-finite"):
        S.stacking_weights(np.full((2, 10, 3), np.nan))
    with pytest.raises(ValueError, match="draw >= 2"):
        S.loo_log_density(np.zeros((1, 5)))


def test_pool_draws_follows_the_weights():
    idx = S.pool_draws(3, 100, [0.5, 0.5, 0.0])
    assert idx.shape == (300,)
    chain = idx // 100
    assert np.bincount(chain, minlength=3).tolist() == [150, 150, 0]
    # a chain's share is spread over all its draws, not its first ones
    assert set(idx[chain == 1] % 100) == set(range(100))
    # equal weights give every draw exactly once
    assert sorted(S.pool_draws(4, 10, np.full(4, 0.25))) == list(range(40))
    x = np.stack([np.zeros(100), np.ones(100), np.full(100, 2.0)]).reshape(-1)
    assert x[S.pool_draws(3, 100, [0.2, 0.0, 0.8])].mean() == pytest.approx(0.2 * 0 + 0.8 * 2)
    with pytest.raises(ValueError, match="summing to 1"):
        S.pool_draws(2, 10, [0.3, 0.3])
