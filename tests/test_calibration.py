"""Statistical checks of the sampler (slow): SBC, interval coverage, recovery of a known truth.

SBC and coverage use data simulated from the model itself (no model error), on a small
slab with one PMJ and fixed velocities (a reduced model without label switching); all replicates are sampled in ONE NUTS run on the
joint (product) posterior, which is exact because the replicates are independent — one
compilation instead of twenty. Each check has a negative control that must fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from inference_case import synthetic
from numpyro import handlers
from numpyro.infer import NUTS, Predictive
from numpyro.infer.util import potential_energy
from scipy import stats

from cdt_bayes._inference import build_problem, fit, posterior_activation
from cdt_bayes._model import cdt_model, load_spec
from cdt_bayes._summaries import activation_summary, ecg_correlation

N_REP = 20
N_KEEP = 19  # thinned draws per replicate -> ranks 0..19


def _sbc_run():
    mesh, el, _, tt, names, noisy, _ = synthetic()
    spec = load_spec(
        "fixed_cv", n_pmj=1, site_spacing_mm=4.0, kernel_mm=2.5, layer_depth_mm=3.5, t_max_ms=10.0
    )
    prob = build_problem(mesh, tt, names, noisy, el, spec, progress=False)
    args, _ = prob.model_args()
    key = jax.random.key(42)
    k_prior, k_init, k_run = jax.random.split(key, 3)
    truth = jax.jit(lambda k: Predictive(cdt_model, num_samples=N_REP)(k, *args))(k_prior)
    obs = truth["ecg"]
    latent = ("pmj_xyz_mm", "pmj_t_ms", "gain", "sigma_mV")
    from numpyro.distributions.transforms import biject_to

    from cdt_bayes._inference import _adam

    n_start = 4
    init = jax.jit(lambda k: Predictive(cdt_model, num_samples=n_start * N_REP)(k, *args))(k_init)
    tr = handlers.trace(handlers.seed(cdt_model, 0)).get_trace(*args)
    u0 = {k: biject_to(tr[k]["fn"].support).inv(init[k]).reshape((n_start, N_REP) + init[k].shape[1:]) for k in latent}

    def one(u, o, beta=1.0):
        return potential_energy(cdt_model, args, {"obs": o, "temper": beta}, u)

    def joint(u):
        return jnp.sum(jax.vmap(one)(u, obs))

    # per-replicate multi-start MAP (Adam is per coordinate, so the joint run is independent
    # optimisations), then every replicate's chain starts at its best optimum
    spread = {k: float(np.std(np.asarray(v))) + 1e-3 for k, v in u0.items()}
    rates = {k: 0.5 * spread[k] / spread["pmj_xyz_mm"] for k in u0}
    u_opt, _, _ = _adam(lambda u, b: jnp.sum(jax.vmap(lambda a, o: one(a, o, b))(u, obs)), u0, 300, rates)
    per_rep = jax.jit(jax.vmap(lambda u: jax.vmap(one)(u, obs)))(u_opt)  # (n_start, N_REP)
    best = np.asarray(jnp.argmin(jnp.where(jnp.isfinite(per_rep), per_rep, jnp.inf), axis=0))
    u0 = {k: v[best, np.arange(N_REP)] for k, v in u_opt.items()}

    kernel = NUTS(potential_fn=joint, max_tree_depth=7, target_accept_prob=0.85)
    # 380 draws gave a median bulk ESS of ~380 per replicate (min ~20): 250 thinned to 19 suffice
    n_warm, n_samp = 250, 250
    jax.eval_shape(lambda k, u: kernel.init(k, n_warm, init_params=u), k_run, u0)  # sets up its sampler
    state = jax.jit(lambda k, u: kernel.init(k, n_warm, init_params=u))(k_run, u0)  # one compilation, not op by op

    def body(s, _):
        s = kernel.sample(s, (), {})
        return s, s.z

    _, zs = jax.jit(lambda s: jax.lax.scan(body, s, None, length=n_warm + n_samp))(state)
    zs = jax.tree.map(lambda x: np.asarray(x[n_warm:]), zs)
    cons = {k: np.asarray(biject_to(tr[k]["fn"].support)(jnp.asarray(zs[k]))) for k in latent}
    return prob, truth, cons


@pytest.fixture(scope="module")
def sbc_run():
    return _sbc_run()


def _activation(prob, draws_rep):
    """(n_draws, n_nodes) activation for one replicate's draws."""
    d = {k: v[None] for k, v in draws_rep.items()}
    return posterior_activation(prob, d)[0]


def _ranks(prob, truth, cons, bias_sd=0.0):
    """SBC ranks of order-free statistics (mean activation, activation at two nodes, gain)."""
    n_draws = cons["gain"].shape[0]
    keep = np.linspace(0, n_draws - 1, N_KEEP).astype(int)
    ranks = []
    for r in range(N_REP):
        rep = {k: v[keep, r] for k, v in cons.items()}
        act = _activation(prob, rep)
        true_act = _activation(prob, {k: np.asarray(truth[k][r])[None] for k in cons})[0]
        stats_post = np.stack([act.mean(1), act[:, 0], act[:, -1], np.log(rep["gain"])], 1)
        stats_true = np.array([true_act.mean(), true_act[0], true_act[-1], np.log(float(truth["gain"][r]))])
        if bias_sd:
            stats_post = stats_post + bias_sd * stats_post.std(0, keepdims=True) + 1e-6
        ranks.append((stats_post < stats_true).sum(0))
    return np.asarray(ranks)  # (N_REP, n_stats), values 0..N_KEEP


def _uniform_p(ranks):
    bins = np.histogram(ranks.ravel(), bins=5, range=(-0.5, N_KEEP + 0.5))[0]
    return stats.chisquare(bins).pvalue


@pytest.mark.slow
def test_sbc_ranks_uniform_and_negative_control(sbc_run):
    prob, truth, cons = sbc_run
    p_ok = _uniform_p(_ranks(prob, truth, cons))
    p_bad = _uniform_p(_ranks(prob, truth, cons, bias_sd=1.5))
    assert p_ok > 1e-3, p_ok
    assert p_bad < 1e-3, p_bad


@pytest.mark.slow
def test_interval_coverage_across_replicates(sbc_run):
    """90% intervals of the activation at every node cover the truth ~90% of the time."""
    prob, truth, cons = sbc_run
    cover, cover_narrow = [], []
    for r in range(N_REP):
        rep = {k: v[:, r] for k, v in cons.items()}
        act = _activation(prob, rep)[None]
        s = activation_summary(act)
        true_act = _activation(prob, {k: np.asarray(truth[k][r])[None] for k in cons})[0]
        cover.append(np.mean((s["q05"] <= true_act) & (true_act <= s["q95"])))
        # negative control: intervals shrunk 4x around the mean must under-cover
        lo = s["mean"] + (s["q05"] - s["mean"]) / 4
        hi = s["mean"] + (s["q95"] - s["mean"]) / 4
        cover_narrow.append(np.mean((lo <= true_act) & (true_act <= hi)))
    assert 0.75 <= np.mean(cover) <= 0.99, np.mean(cover)
    assert np.mean(cover_narrow) < 0.7, np.mean(cover_narrow)


@pytest.mark.slow
def test_recovery_of_full_solver_truth():
    """Truth from the full eikonal (model error included): ECG fit, activation error, R-hat."""
    mesh, el, t_act, tt, names, noisy, clean = synthetic(seed=1)
    spec = load_spec("default", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5)
    prob = build_problem(mesh, tt, names, noisy, el, spec, progress=False)
    res = fit(prob, "nuts", chains=2, num_warmup=150, num_samples=150, n_starts=4, map_steps=300, seed=0, progress=False)
    act = posterior_activation(prob, res.draws)
    s = activation_summary(act)
    rmse = np.sqrt(np.mean((s["mean"] - t_act) ** 2))
    cov = np.mean((s["q05"] - 1.0 <= t_act) & (t_act <= s["q95"] + 1.0))
    from cdt_bayes._inference import posterior_ecg

    mu, _ = posterior_ecg(prob, res.draws, act, jax.random.key(0))
    r = np.nanmean(ecg_correlation(clean.astype(np.float32), mu.reshape((-1,) + prob.obs.shape).mean(0)))
    assert r > 0.98, r
    assert rmse < 3.0, rmse
    assert cov > 0.6, cov
