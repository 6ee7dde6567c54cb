"""Model: specs, layer prior, distance dictionary (fast path) vs the full eikonal solver."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from inference_case import slab, synthetic

from cdt_bayes._eikonal import activation_times, eikonal_geometry
from cdt_bayes._errors import SpecError
from cdt_bayes._inference import build_problem
from cdt_bayes._model import LayerPrior, dictionary_activation, list_specs, load_spec


def test_shipped_specs_load():
    names = list_specs()
    assert {"default", "unconstrained", "fixed_cv", "student_t"} <= set(names)
    for n in names:
        s = load_spec(n)
        assert s.name == n
    assert not load_spec("unconstrained").constrain_to_layer
    assert not load_spec("fixed_cv").infer_scale
    assert load_spec("default", n_pmj=3).n_pmj == 3


@pytest.mark.parametrize(
    "text, match",
    [
        ("[model]\nn_pmj = 0\n", "n_pmj"),
        ("[model]\nbogus = 1\n", "unknown key 'bogus'"),
        ("[nonsense]\nx = 1\n", "unknown section"),
        ("[pmj]\nkernel_mm = -1.0\n", "kernel_mm"),
        ("[model]\nlikelihood = 'cauchy'\n", "likelihood"),
        ("[model]\nn_pmj = 'many'\n", "wrong type"),
        ("[model\n", "not valid TOML"),
        ("[pmj]\nn_pmj_lv = 99\n", "n_pmj_lv"),
        ("[ecg]\nbaseline = 'quadratic'\n", "baseline"),
        ("[ecg]\nbaseline_rel_sd = 0.0\n", "baseline_rel_sd"),
        ("[model]\nlikelihood = 'student_t'\n[ecg]\nbaseline = 'offset'\n", "needs likelihood"),
    ],
)
def test_spec_errors_name_file_and_key(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text('extends = "default"\n' + text if not text.startswith("[model\n") else text)
    with pytest.raises(SpecError, match=match) as e:
        load_spec(p)
    assert "bad.toml" in str(e.value)


def test_unknown_spec_name():
    with pytest.raises(SpecError, match="unknown model spec"):
        load_spec("no_such_spec")


def test_layer_prior_sample_matches_log_prob():
    """Samples come from the density: mean log_prob on samples ≈ −entropy estimate, and the
    density integrates to one (importance check with a wide Gaussian proposal)."""
    sites = jnp.asarray(np.random.default_rng(0).uniform(0, 10, (30, 3)), jnp.float32)
    d = LayerPrior(sites, 1.0)
    x = d.sample(jax.random.key(0), (4000,))
    assert x.shape == (4000, 3)
    # normalisation by importance sampling from N(mean, 6^2)
    key = jax.random.key(1)
    q = 5.0 + 6.0 * jax.random.normal(key, (200000, 3))
    logq = jax.scipy.stats.norm.logpdf(q, 5.0, 6.0).sum(-1)
    z = jnp.mean(jnp.exp(d.log_prob(q) - logq))
    assert abs(float(z) - 1.0) < 0.03
    # samples concentrate within ~3 sd of some site
    dmin = np.sqrt(((np.asarray(x)[:, None] - np.asarray(sites)[None]) ** 2).sum(-1)).min(1)
    assert np.quantile(dmin, 0.99) < 4.0


def test_grouped_layer_prior_is_each_pmjs_own_mixture():
    """With groups, PMJ k's density is the mixture over its group's sites only (normalised),
    and its draws sit on that group's sites."""
    rng = np.random.default_rng(0)
    lv, rv = rng.uniform(0, 5, (20, 3)), rng.uniform(20, 25, (30, 3))
    sites = jnp.asarray(np.concatenate([lv, rv]), jnp.float32)
    site_group = np.repeat([0, 1], [20, 30])
    pmj_group = np.array([0, 1, 1])
    d = LayerPrior(sites, 1.0, site_group, pmj_group)
    assert d.batch_shape == (3,)
    z = jnp.asarray(rng.uniform(0, 25, (3, 3)), jnp.float32)
    for k, g in enumerate(pmj_group):
        own = LayerPrior(sites[site_group == g], 1.0)
        np.testing.assert_allclose(float(d.log_prob(z)[k]), float(own.log_prob(z[k])), rtol=1e-5)
    x = np.asarray(d.sample(jax.random.key(0), (2000,)))
    assert x.shape == (2000, 3, 3)
    assert np.all(x[:, 0].mean(0) < 10) and np.all(x[:, 1:].mean((0, 1)) > 15)
    g = jax.grad(lambda z: d.log_prob(z).sum())(z)
    assert np.isfinite(np.asarray(g)).all()
    with pytest.raises(ValueError, match="both"):
        LayerPrior(sites, 1.0, site_group, None)


def test_pmj_groups_split_by_ventricle():
    from cdt_bayes._geometry import endo_distance_by_side
    from cdt_bayes._meshgen import default_mesh
    from cdt_bayes._model import admissible_nodes, pmj_groups

    mesh = default_mesh()
    spec = load_spec("split_ventricles")
    assert spec.split_ventricles and not load_spec("default").split_ventricles
    adm = admissible_nodes(mesh, spec)
    site_group, pmj_group = pmj_groups(mesh, spec, adm)
    d_lv, d_rv = endo_distance_by_side(mesh)
    np.testing.assert_array_equal(site_group, (d_rv[adm] < d_lv[adm]).astype(int))
    share = np.mean(site_group == 0)
    assert pmj_group.shape == (spec.n_pmj,) and set(pmj_group) == {0, 1}
    assert abs(np.sum(pmj_group == 0) - share * spec.n_pmj) <= 0.5
    _, pg = pmj_groups(mesh, spec.replace(n_pmj_lv=4), adm)
    assert np.sum(pg == 0) == 4
    _, pg = pmj_groups(mesh, spec.replace(n_pmj=2), adm)  # at least one per ventricle
    assert list(pg) == [0, 1]
    assert pmj_groups(mesh, spec.replace(split_ventricles=False), adm) == (None, None)
    assert pmj_groups(mesh, load_spec("unconstrained"), np.arange(mesh.n_nodes)) == (None, None)


def test_split_ventricles_in_the_fitted_model():
    """A two-ventricle slab (LV endocardium at z = 0, RV at z = max): with the split, prior
    draws of LV PMJs sit by the LV layer and of RV PMJs by the RV layer, and the log
    density has a finite gradient."""
    from numpyro.infer import Predictive

    from cdt_bayes._inference import _setup
    from cdt_bayes._model import cdt_model

    mesh, el, _, tt, names, noisy, _ = synthetic()
    surf = np.asarray(mesh.surface).copy()
    surf[surf == 3] = 2  # the far face becomes an RV endocardium
    mesh2 = mesh.replace(surface=surf)
    spec = load_spec("split_ventricles", n_pmj=4, site_spacing_mm=4.0, kernel_mm=2.7)
    prob = build_problem(mesh2, tt, names, noisy, el, spec, progress=False)
    assert list(np.asarray(prob.data.pmj_group)) == [0, 0, 1, 1]
    args = prob.model_args()[0]
    z = np.asarray(Predictive(cdt_model, num_samples=300)(jax.random.key(0), *args)["pmj_xyz_mm"])
    depth = float(np.asarray(mesh.nodes)[:, 2].max())
    med = np.median(z[..., 2], 0)
    assert np.all(med[:2] < 3.0) and np.all(med[2:] > depth - 3.0)
    u0, pot, _, _ = _setup(prob, jax.random.key(1))
    g = jax.grad(pot)(u0)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(g))


def test_layer_prior_gradient_never_vanishes_far_away():
    sites = jnp.zeros((5, 3))
    g = jax.grad(lambda z: LayerPrior(sites, 2.0).log_prob(z))(jnp.array([100.0, 0.0, 0.0]))
    assert np.isfinite(np.asarray(g)).all() and float(g[0]) < -1.0


def _problem(spacing=3.0, kernel=2.0, n_pmj=2):
    mesh, el, t_act, tt, names, noisy, _ = synthetic()
    spec = load_spec("default", n_pmj=n_pmj, site_spacing_mm=spacing, kernel_mm=kernel, layer_depth_mm=3.5)
    return build_problem(mesh, tt, names, noisy, el, spec, progress=False), t_act, mesh


def test_fast_path_agrees_with_full_solver():
    """Dictionary activation (exact min) vs the full eikonal from the same PMJs."""
    prob, _, mesh = _problem()
    rng = np.random.default_rng(3)
    g = eikonal_geometry(mesh, np.float32)
    sites = np.asarray(prob.data.sites)
    errs = []
    for _ in range(3):
        z = sites[rng.choice(len(sites), 2, replace=False)] + rng.normal(scale=0.5, size=(2, 3))
        z[:, 2] = np.clip(z[:, 2], 0.1, 2.0)
        t = rng.uniform(0, 5, 2)
        full = np.asarray(activation_times(g, z, t))
        fast = np.asarray(dictionary_activation(jnp.asarray(z, jnp.float32), jnp.asarray(t, jnp.float32), 1.0, prob.data, prob.spec.kernel_mm, None))
        errs.append(fast - full)
    e = np.concatenate(errs)
    assert abs(e.mean()) < 1.0 and np.sqrt((e**2).mean()) < 1.5, (e.mean(), np.sqrt((e**2).mean()))


def test_softmin_within_tau_log_k_of_min():
    prob, _, _ = _problem(n_pmj=3)
    z = prob.data.sites[:3]
    t = jnp.array([0.0, 1.0, 2.0])
    exact = dictionary_activation(z, t, 1.0, prob.data, prob.spec.kernel_mm, None)
    soft = dictionary_activation(z, t, 1.0, prob.data, prob.spec.kernel_mm, 0.5)
    diff = np.asarray(exact - soft)
    assert diff.min() >= -1e-4 and diff.max() <= 0.5 * np.log(3) + 1e-4


def test_velocity_scale_is_exact():
    prob, _, _ = _problem()
    z, t = prob.data.sites[:2], jnp.zeros(2)
    a1 = dictionary_activation(z, t, 1.0, prob.data, prob.spec.kernel_mm, None)
    a2 = dictionary_activation(z, t, 2.0, prob.data, prob.spec.kernel_mm, None)
    np.testing.assert_allclose(np.asarray(a2), np.asarray(a1) / 2, rtol=1e-5, atol=1e-5)


def test_log_density_gradient_finite_and_matches_fd():
    from numpyro.infer.util import initialize_model

    from cdt_bayes._model import cdt_model

    prob, _, _ = _problem()
    args, kwargs = prob.model_args()
    info, pot, _, _ = initialize_model(jax.random.key(0), cdt_model, model_args=args, model_kwargs=kwargs)
    u = info.z
    g = jax.grad(pot)(u)
    for k, v in g.items():
        assert np.isfinite(np.asarray(v)).all(), k
    # directional finite difference (float32: relative tolerance)
    d = jax.tree.map(lambda x: jnp.ones_like(x) * 0.01, u)
    up = jax.tree.map(lambda a, b: a + b, u, d)
    dn = jax.tree.map(lambda a, b: a - b, u, d)
    fd = (pot(up) - pot(dn)) / 2
    an = sum(float(jnp.sum(gv * dv)) for gv, dv in zip(jax.tree.leaves(g), jax.tree.leaves(d)))
    assert abs(float(fd) - an) < 0.05 * abs(an) + 0.05


def test_slab_case_is_small():
    mesh, _ = slab()
    assert mesh.n_nodes < 400


def test_nearest_site_kernel_matches_all_sites():
    """The fast path interpolates over the KERNEL_NEIGHBOURS nearest sites only: activation and
    its gradient agree with the all-sites kernel (the slab has 162 sites, so truncation is real)."""
    from cdt_bayes._model import KERNEL_NEIGHBOURS

    prob, _, _ = _problem()
    assert prob.data.sites.shape[0] > 4 * KERNEL_NEIGHBOURS
    rng = np.random.default_rng(5)
    sites = np.asarray(prob.data.sites)
    z = jnp.asarray(sites[rng.choice(len(sites), 2, replace=False)] + rng.normal(scale=0.7, size=(2, 3)), jnp.float32)
    t = jnp.asarray([0.0, 2.0])

    def act(z, m):
        return dictionary_activation(z, t, 1.0, prob.data, prob.spec.kernel_mm, 0.5, neighbours=m)

    np.testing.assert_allclose(np.asarray(act(z, KERNEL_NEIGHBOURS)), np.asarray(act(z, None)), atol=1e-2)
    w = jnp.asarray(rng.normal(size=prob.data.nodes.shape[0]), jnp.float32)
    g_near = jax.grad(lambda z: jnp.dot(w, act(z, KERNEL_NEIGHBOURS)))(z)
    g_all = jax.grad(lambda z: jnp.dot(w, act(z, None)))(z)
    np.testing.assert_allclose(np.asarray(g_near), np.asarray(g_all), rtol=1e-3, atol=1e-3 * float(jnp.abs(g_all).max()))
    # too few neighbours is measurably different: the check above can fail
    assert float(jnp.abs(act(z, 2) - act(z, None)).max()) > 1e-2


def test_straight_travel_time_is_the_metric_norm():
    from cdt_bayes._model import straight_travel_time

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3, 3))
    metric = np.einsum("kij,klj->kil", a, a) + 0.1 * np.eye(3)  # SPD, non-diagonal
    z, nodes = rng.normal(size=(3, 3)) * 5, rng.normal(size=(50, 3)) * 10
    r = nodes[None] - z[:, None]
    ref = np.sqrt(np.einsum("kni,kij,knj->kn", r, metric, r))
    got = np.asarray(straight_travel_time(jnp.asarray(z), jnp.asarray(metric), jnp.asarray(nodes)))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-3)


def test_ar1_likelihood_matches_dense_gaussian():
    """AR(1) innovations log density vs the multivariate normal with cov σ² ρ^|i−j|."""
    from scipy.stats import multivariate_normal

    from cdt_bayes._model import AR1Normal

    rng = np.random.default_rng(0)
    n_lead, n_t, sigma, rho = 3, 40, 0.3, 0.85
    loc = rng.normal(size=(n_lead, n_t))
    x = loc + rng.normal(scale=0.4, size=(n_lead, n_t))
    lag = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t)))
    cov = sigma**2 * rho**lag
    dense = sum(multivariate_normal(loc[i], cov).logpdf(x[i]) for i in range(n_lead))
    with jax.enable_x64(True):
        ours = float(AR1Normal(jnp.asarray(loc), jnp.float64(sigma), jnp.float64(rho)).log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(ours, dense, rtol=1e-10)
    # ρ = 0 is the independent normal; a wrong ρ gives a different density (negative control)
    iid = float(dist.Normal(jnp.asarray(loc), sigma).to_event(2).log_prob(jnp.asarray(x)))
    np.testing.assert_allclose(float(AR1Normal(jnp.asarray(loc), sigma, 0.0).log_prob(jnp.asarray(x))), iid, rtol=1e-5)
    assert abs(float(AR1Normal(jnp.asarray(loc), sigma, 0.5).log_prob(jnp.asarray(x))) - dense) > 1.0


def test_ar1_samples_have_the_stated_sd_and_correlation():
    from cdt_bayes._model import AR1Normal

    d = AR1Normal(jnp.zeros((2, 200)), 0.5, 0.9)
    x = np.asarray(d.sample(jax.random.key(0), (400,)))
    assert x.shape == (400, 2, 200)
    np.testing.assert_allclose(x.std(), 0.5, rtol=0.03)
    r1 = np.mean(x[..., 1:] * x[..., :-1]) / np.mean(x**2)
    np.testing.assert_allclose(r1, 0.9, atol=0.01)
    np.testing.assert_allclose(x[..., 0].std(), 0.5, rtol=0.05)  # stationary from the first sample


@pytest.mark.parametrize("kind", ["offset", "linear"])
@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_baseline_likelihood_matches_dense_gaussian(kind, rho):
    """The baseline integrated out in closed form equals the multivariate normal with
    covariance σ² ρ^|i−j| + τ² B Bᵀ; its conditional posterior equals the dense GLS one."""
    from scipy.stats import multivariate_normal

    from cdt_bayes._model import AR1Normal, BaselineNormal, baseline_basis, baseline_conditional

    rng = np.random.default_rng(3)
    n_lead, n_t, sigma, tau = 3, 40, 0.3, 0.8
    times = 10.0 + 2.0 * np.arange(n_t)
    with jax.enable_x64(True):
        basis = np.asarray(baseline_basis(jnp.asarray(times), kind))
        np.testing.assert_allclose(basis.T @ basis / n_t, np.eye(basis.shape[1]), atol=1e-12)  # RMS 1, orthogonal
        lag = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t)))
        noise_cov = sigma**2 * rho**lag
        loc = rng.normal(size=(n_lead, n_t))
        x = loc + rng.normal(scale=0.4, size=(n_lead, n_t)) + rng.normal(size=(n_lead, 1))
        dense = sum(multivariate_normal(loc[i], noise_cov + tau**2 * basis @ basis.T).logpdf(x[i]) for i in range(n_lead))
        d = BaselineNormal(jnp.asarray(loc), jnp.float64(sigma), jnp.float64(tau), basis, jnp.float64(rho))
        np.testing.assert_allclose(float(d.log_prob(jnp.asarray(x))), dense, rtol=1e-10)
        prec = np.linalg.inv(noise_cov)
        post_prec = np.eye(basis.shape[1]) / tau**2 + basis.T @ prec @ basis
        mean_ref = np.linalg.solve(post_prec, basis.T @ prec @ (x - loc).T).T
        mean, chol = baseline_conditional(jnp.asarray(x - loc), sigma, tau, basis, rho)
        np.testing.assert_allclose(np.asarray(mean), mean_ref, rtol=1e-9, atol=1e-12)
        assert chol.shape == (n_lead,) + post_prec.shape  # one factor per lead (here all equal)
        np.testing.assert_allclose(np.asarray(chol[1] @ chol[1].T), np.linalg.inv(post_prec), rtol=1e-9, atol=1e-15)
        # negative control: without the baseline term the density of data with offsets is far lower
        plain = float(AR1Normal(jnp.asarray(loc), jnp.float64(sigma), jnp.float64(rho)).log_prob(jnp.asarray(x)))
    assert plain < dense - 10.0


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_baseline_conditional_intervals_cover(rho):
    """Frequentist check of the conditional posterior over 4,000 replicates: b ~ prior, noise
    added, the 90 % intervals of both coefficients cover the true b at the nominal rate."""
    from cdt_bayes._model import ar1_noise, baseline_basis, baseline_conditional

    n_rep, n_t, sigma, tau = 4000, 60, 0.1, 0.2
    basis = baseline_basis(jnp.arange(n_t, dtype=jnp.float32), "linear")
    k1, k2 = jax.random.split(jax.random.key(7))
    b = tau * jax.random.normal(k1, (n_rep, 1, 2))
    resid = jnp.einsum("tp,...p->...t", basis, b) + ar1_noise(k2, (n_rep, 1, n_t), rho, sigma)
    mean, chol = baseline_conditional(resid, sigma, tau, basis, rho)
    sd = jnp.sqrt(jnp.diag(chol[0] @ chol[0].T))
    z = np.asarray((b - mean) / sd)
    cover = np.mean(np.abs(z) < 1.6449, axis=(0, 1))
    # binomial sd of a coverage over 4,000 replicates: 0.0047
    np.testing.assert_allclose(cover, 0.9, atol=0.02)
    np.testing.assert_allclose(np.std(z, axis=(0, 1)), 1.0, atol=0.05)


@pytest.mark.parametrize("baseline", ["none", "linear"])
@pytest.mark.parametrize("rho", [0.0, 0.6])
def test_per_lead_noise_sd_matches_dense_gaussian(baseline, rho):
    """One noise sd per lead: the AR(1) and baseline likelihoods equal the dense multivariate
    normal of each lead with its own σ_l, and the baseline's conditional posterior the dense
    GLS one per lead; equal σ_l reproduce the shared-σ density exactly."""
    from scipy.stats import multivariate_normal

    from cdt_bayes._model import AR1Normal, BaselineNormal, baseline_basis, baseline_conditional

    rng = np.random.default_rng(5)
    n_lead, n_t, tau = 3, 30, 0.5
    sig = np.array([0.1, 0.3, 0.6])
    lag = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t)))
    with jax.enable_x64(True):
        basis = np.asarray(baseline_basis(jnp.arange(n_t, dtype=jnp.float64), "linear"))
        extra = tau**2 * basis @ basis.T if baseline != "none" else 0.0
        loc = rng.normal(size=(n_lead, n_t))
        x = loc + sig[:, None] * rng.normal(size=(n_lead, n_t)) + rng.normal(scale=0.3, size=(n_lead, 1))

        def make(scale):
            if baseline == "none":
                return AR1Normal(jnp.asarray(loc), jnp.asarray(scale), jnp.float64(rho))
            return BaselineNormal(jnp.asarray(loc), jnp.asarray(scale), jnp.float64(tau), basis, jnp.float64(rho))

        dense = sum(
            multivariate_normal(loc[i], sig[i] ** 2 * rho**lag + extra).logpdf(x[i]) for i in range(n_lead)
        )
        np.testing.assert_allclose(float(make(sig).log_prob(jnp.asarray(x))), dense, rtol=1e-10)
        shared = float(make(np.float64(0.3)).log_prob(jnp.asarray(x)))
        np.testing.assert_allclose(float(make(np.full(n_lead, 0.3)).log_prob(jnp.asarray(x))), shared, rtol=1e-12)
        assert abs(shared - dense) > 10.0  # the per-lead sd matters here (negative control)
        if baseline != "none":
            mean, chol = baseline_conditional(jnp.asarray(x - loc), jnp.asarray(sig), tau, basis, rho)
            for i in range(n_lead):
                prec = np.linalg.inv(sig[i] ** 2 * rho**lag)
                post_prec = np.eye(2) / tau**2 + basis.T @ prec @ basis
                ref = np.linalg.solve(post_prec, basis.T @ prec @ (x[i] - loc[i]))
                np.testing.assert_allclose(np.asarray(mean[i]), ref, rtol=1e-9, atol=1e-12)
                np.testing.assert_allclose(np.asarray(chol[i] @ chol[i].T), np.linalg.inv(post_prec), rtol=1e-9, atol=1e-15)
        # samples carry each lead's own sd
        xs = np.asarray(make(sig).sample(jax.random.key(1), (3000,)))
    resid = xs - loc
    if baseline != "none":
        resid = resid - np.einsum("tp,nlp->nlt", basis, np.einsum("tp,nlt->nlp", basis, resid) / n_t)
    ratio = resid.std(axis=(0, 2)) / sig  # the projection removes the same share of every lead's noise
    np.testing.assert_allclose(ratio / ratio.mean(), 1.0, atol=0.03)
    if baseline == "none":
        np.testing.assert_allclose(ratio, 1.0, atol=0.03)


def test_baseline_samples_have_the_marginal_covariance():
    from cdt_bayes._model import BaselineNormal, baseline_basis

    n_t, sigma, tau, rho = 30, 0.2, 0.5, 0.3
    basis = np.asarray(baseline_basis(jnp.arange(n_t, dtype=jnp.float32), "linear"))
    x = np.asarray(BaselineNormal(jnp.zeros((4, n_t)), sigma, tau, basis, rho).sample(jax.random.key(0), (5000,)))
    assert x.shape == (5000, 4, n_t)
    lag = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t)))
    cov = sigma**2 * rho**lag + tau**2 * basis @ basis.T
    emp = np.einsum("nlt,nls->ts", x, x) / (x.shape[0] * x.shape[1])
    # Monte Carlo sd of a covariance entry ≈ sqrt((c_tt c_ss + c_ts²) / 20000) ≈ 0.007 mV²
    np.testing.assert_allclose(emp, cov, atol=0.04)
    assert np.abs(emp - sigma**2 * rho**lag).max() > 0.3  # the baseline part is there


def test_ar1_spec_samples_noise_rho():
    spec = load_spec("ar1")
    assert spec.likelihood == "ar1" and spec.ar1_rho_max == 0.98
    with pytest.raises(SpecError, match="ar1_rho_max"):
        load_spec("default", ar1_rho_max=1.0)


def test_local_linear_weights_reproduce_affine_fields():
    """Local-linear weights sum to one and interpolate an affine function of the site position
    exactly (ridge 0), also off-centre where the kernel average is biased by the gradient."""
    from cdt_bayes._model import kernel_weights, local_linear_weights

    rng = np.random.default_rng(11)
    sites = jnp.asarray(rng.uniform(0, 30, size=(80, 3)).astype(np.float64))
    z = jnp.asarray(np.array([[15.0, 15.0, 15.0], [2.0, 3.0, 28.0], [29.0, 1.0, 1.0]]))  # centre, corners
    w, idx = kernel_weights(z, sites, 4.0, neighbours=None)
    ll = local_linear_weights(w, sites[idx] - z[:, None, :], 0.0)
    np.testing.assert_allclose(np.asarray(ll.sum(1)), 1.0, rtol=1e-5)  # float32
    a, b = 2.5, np.array([0.3, -0.7, 1.1])
    f = a + np.asarray(sites) @ b  # the field's value at each site
    exact = a + np.asarray(z) @ b
    np.testing.assert_allclose(np.asarray(ll, np.float64) @ f, exact, rtol=1e-4, atol=1e-3)
    # negative control: the kernel average misses at the corners by a gradient-sized amount
    assert np.abs(np.asarray(w, np.float64) @ f - exact)[1:].min() > 0.2  # vs < 1e-3 above
    # the closed-form 3 x 3 solve behind the weights
    from cdt_bayes._model import _solve_spd3

    a3 = rng.normal(size=(4, 3, 3))
    m3 = a3 @ a3.transpose(0, 2, 1) + 0.5 * np.eye(3)
    b3 = rng.normal(size=(4, 3))
    np.testing.assert_allclose(np.asarray(_solve_spd3(jnp.asarray(m3), jnp.asarray(b3))),
                               np.linalg.solve(m3, b3[..., None])[..., 0], rtol=1e-4, atol=1e-4)
    # a ridge shrinks the correction towards the kernel average, smoothly
    ll_r = local_linear_weights(w, sites[idx] - z[:, None, :], 1e6)
    np.testing.assert_allclose(np.asarray(ll_r), np.asarray(w), atol=1e-4)


def test_local_linear_interpolation_beats_kernel_average():
    """Against the full solver at off-site PMJ positions, local-linear interpolation of the
    residual has a smaller error than the plain kernel average (and both stay close)."""
    prob, _, mesh = _problem()
    rng = np.random.default_rng(4)
    g = eikonal_geometry(mesh, np.float32)
    sites = np.asarray(prob.data.sites)
    z = sites[rng.choice(len(sites), 6, replace=False)] + rng.normal(scale=0.8, size=(6, 3))
    z[:, 2] = np.clip(z[:, 2], 0.1, 2.0)
    full = np.stack([np.asarray(activation_times(g, zk[None], np.zeros(1))) for zk in z])
    err = {}
    for mode in ("local_linear", "local_constant"):
        fast = np.stack([
            np.asarray(dictionary_activation(jnp.asarray(zk[None], jnp.float32), jnp.zeros(1), 1.0, prob.data,
                                             prob.spec.kernel_mm, None, interpolation=mode))
            for zk in z
        ])
        e = fast - full
        err[mode] = np.sqrt(np.mean((e - e.mean(1, keepdims=True)) ** 2))  # per-source offsets aside
    assert err["local_linear"] < err["local_constant"], err
    assert err["local_linear"] < 1.0, err


@pytest.mark.parametrize("likelihood", ["normal", "student_t", "ar1"])
@pytest.mark.parametrize("per_lead", [False, True])
def test_pointwise_log_likelihood_sums_to_the_likelihood(likelihood, per_lead):
    """Each draw's pointwise terms add up to its full log-likelihood (dense Gaussian / scipy t)."""
    from types import SimpleNamespace

    from scipy.stats import multivariate_normal
    from scipy.stats import t as student_t

    from cdt_bayes._inference import pointwise_log_likelihood

    rng = np.random.default_rng(3)
    c, d, n_lead, n_t, nu = 2, 3, 3, 25, 4.0
    obs = rng.normal(size=(n_lead, n_t))
    mu = obs + rng.normal(scale=0.3, size=(c, d, n_lead, n_t))
    sigma = rng.uniform(0.2, 0.5, (c, d, n_lead) if per_lead else (c, d))
    rho = rng.uniform(0.1, 0.9, (c, d))
    problem = SimpleNamespace(obs=obs, spec=SimpleNamespace(likelihood=likelihood, student_nu=nu))
    ll = pointwise_log_likelihood(problem, {"sigma_mV": sigma, "noise_rho": rho}, mu)
    assert ll.shape == (c, d, n_lead * n_t)
    lag = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t)))
    for i in range(c):
        for j in range(d):
            s = np.broadcast_to(sigma[i, j], (n_lead,))
            if likelihood == "normal":
                full = sum(multivariate_normal(mu[i, j, k], s[k] ** 2 * np.eye(n_t)).logpdf(obs[k]) for k in range(n_lead))
            elif likelihood == "ar1":
                full = sum(
                    multivariate_normal(mu[i, j, k], s[k] ** 2 * rho[i, j] ** lag).logpdf(obs[k]) for k in range(n_lead)
                )
            else:
                full = sum(student_t.logpdf(obs[k], nu, mu[i, j, k], s[k]).sum() for k in range(n_lead))
            np.testing.assert_allclose(ll[i, j].sum(), full, rtol=1e-9)
