"""Inference: MAP recovery, NUTS/SVI outputs, checkpoint resume, reproducibility, CLI fit."""

import contextlib
import json

import jax
import jax.numpy as jnp
import meshio
import numpy as np
import pytest
from inference_case import slab, synthetic

from cdt_bayes._errors import CdtBayesError
from cdt_bayes._inference import _setup, active_pmjs, build_problem, find_map, fit, forward_error
from cdt_bayes._model import dictionary_activation, load_spec, pmj_arrival
from cdt_bayes._outputs import write_fit_outputs
from cdt_bayes._summaries import ecg_correlation

_EVENTS: list | None = None


def _on_event(name, *_, **__):
    if _EVENTS is not None:
        _EVENTS.append(name)


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def _jax_events():
    """Names of the JAX monitoring events (tracing, compilation) inside the block."""
    global _EVENTS
    _EVENTS = []
    try:
        yield _EVENTS
    finally:
        _EVENTS = None


@pytest.fixture(scope="module")
def case():
    mesh, el, t_act, tt, names, noisy, clean = synthetic()
    # t_max_select off: these tests are about other things, and the choice costs a second
    # multi-start per fit (its own tests are below)
    spec = load_spec("default", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, t_max_select=False)
    prob = build_problem(mesh, tt, names, noisy, el, spec, progress=False)
    return prob, t_act, clean


def test_map_fits_the_ecg(case):
    prob, t_act, clean = case
    u, losses, _, post, _ = find_map(prob, jax.random.key(0), n_starts=4, steps=300, progress=False)
    assert np.all(np.diff(losses) >= 0)
    best = post(jax.tree.map(lambda x: x[0], u))
    act = dictionary_activation(best["pmj_xyz_mm"], best["pmj_t_ms"], best["cv_scale"], prob.data, prob.spec.kernel_mm, None)
    from cdt_bayes._model import model_ecg

    ecg = np.asarray(model_ecg(act, best["gain"], best.get("shift_ms", 0.0), prob.data))
    r = ecg_correlation(clean.astype(np.float32), ecg)
    assert np.nanmean(r) > 0.97, r


def test_basin_hops_keep_the_best_optima(case):
    """Basin hopping starts from the same multi-start optima and keeps only improvements:
    the returned optima are sorted, distinct, and none is worse than the plain multi-start's
    at the same rank (the plain set is among the candidates)."""
    prob, _, _ = case
    kw = dict(n_starts=4, steps=300, progress=False)
    _, plain, _, _, _ = find_map(prob, jax.random.key(0), **kw)
    log: list = []
    u, hopped, _, post, _ = find_map(prob, jax.random.key(0), search_rounds=2, search_steps=100, search_log=log, **kw)
    assert len(log) == 3 and log[0] == plain[0] and log[-1] == hopped[0]  # before, then after each round
    assert np.all(np.diff(log) <= 0)
    assert hopped.shape == plain.shape and np.all(np.isfinite(hopped))
    assert np.all(np.diff(hopped) > 1e-3)  # sorted and distinct
    distinct_plain = plain[np.concatenate([[True], np.diff(plain) > 1e-3])]
    np.testing.assert_array_less(hopped[: distinct_plain.size], distinct_plain + 1e-4)
    # the optima are real ones: the potential at each returned point is its reported loss
    _, potential_fn, _, _ = _setup(prob, jax.random.key(1))
    for i in range(hopped.size):
        np.testing.assert_allclose(float(potential_fn(jax.tree.map(lambda x: x[i], u))), hopped[i], rtol=1e-5, atol=1e-3)


def test_smoothed_misfit_is_a_search_device_only(case):
    """The search's time smoothing (a) vanishes exactly as its width goes to zero, (b) really
    changes the misfit at a few ms, and (c) never reaches the reported losses: a MAP search
    with and without it reports the unsmoothed potential at its optima."""
    from cdt_bayes._inference import _tempered_potential
    from cdt_bayes._model import time_smoother

    prob, _, _ = case
    t = prob.data.times
    np.testing.assert_array_equal(np.asarray(time_smoother(t, 0.0)), np.eye(t.shape[0]))
    s4 = np.asarray(time_smoother(t, 4.0))
    np.testing.assert_allclose(s4.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s4 @ np.ones(t.shape[0]), 1.0, rtol=1e-6)  # a level stays a level
    assert s4[t.shape[0] // 2].max() < 0.2  # ~4 ms wide: spread over ~10 samples
    u_fn = _tempered_potential(prob)
    _, potential_fn, _, _ = _setup(prob, jax.random.key(1))
    z0 = _setup(prob, jax.random.key(2))[0]
    exact = float(potential_fn(z0))
    assert float(u_fn(z0, 1.0, 0.0)) == pytest.approx(exact, rel=1e-6)
    assert abs(float(u_fn(z0, 1.0, 4.0)) - exact) > 1.0
    for w in (0.0, 4.0):
        u, losses, _, _, _ = find_map(prob, jax.random.key(0), n_starts=2, steps=100, progress=False, smooth_ms=w)
        for i in range(2):
            np.testing.assert_allclose(float(potential_fn(jax.tree.map(lambda x: x[i], u))), losses[i], rtol=1e-5, atol=1e-3)


def test_disagreeing_chains_are_pooled_by_stacking_weights(case):
    from cdt_bayes._outputs import summarise, to_inference_data

    prob, _, _ = case
    r = fit(prob, "nuts", chains=2, num_warmup=20, num_samples=20, seed=3, n_starts=4, map_steps=150, progress=False)
    _, ex = to_inference_data(prob, r, n_prior=10, forward_error_draws=0)
    # chain 2 made to sit in another "basin": later activation, and a model ECG far off the data
    act = ex["activation"].copy()
    act[1] += 20.0
    mu = ex["ecg_model"].copy()
    mu[1] += 0.5 * np.abs(prob.obs).max()
    ex = {**ex, "activation": act, "ecg_model": mu}
    node, summ, _ = summarise(prob, r, ex, "stacking")
    st = summ["chain_stacking"]
    assert summ["max_rhat"] > 1.05 and st["applied"]
    assert st["weights"][1] < 0.01 and st["elpd_loo"][1] < st["elpd_loo"][0]
    np.testing.assert_allclose(node["mean"], act[0].mean(0), atol=0.05 * 20.0)
    assert any("stacking weights" in n for n in summ["notes"])
    # equal pooling (the default): the plain mean over both chains; the weights are still reported
    node_eq, summ_eq, _ = summarise(prob, r, ex)  # the default
    np.testing.assert_allclose(node_eq["mean"], act.reshape(-1, act.shape[-1]).mean(0), rtol=1e-6)
    assert not summ_eq["chain_stacking"]["applied"] and summ_eq["chain_stacking"]["weights"] == st["weights"]
    assert summ_eq["max_rhat"] == summ["max_rhat"]  # diagnostics see the chains as sampled
    with pytest.raises(CdtBayesError, match="combine-chains"):
        summarise(prob, r, ex, "bogus")


def test_nuts_outputs_and_reproducibility(case, tmp_path):
    prob, t_act, _ = case
    kw = dict(chains=2, num_warmup=20, num_samples=20, seed=3, n_starts=4, map_steps=150, progress=False)
    r1 = fit(prob, "nuts", **kw)
    with _jax_events() as events:
        jax.jit(lambda x: x + 1.0)(jnp.ones(3))  # positive control: a fresh function compiles
    assert any("compile" in e for e in events), events
    with _jax_events() as events:
        r2 = fit(prob, "nuts", **kw)
    # the second fit of the same problem and settings reuses every compiled program
    assert not [e for e in events if "compile" in e or "trace" in e], events
    for k in r1.draws:
        np.testing.assert_array_equal(r1.draws[k], r2.draws[k])
    assert r1.draws["pmj_xyz_mm"].shape == (2, 20, 2, 3)
    assert "activation_ms" not in r1.draws and "ecg_model_mV" not in r1.draws  # recomputed in batches
    assert r1.sample_stats["diverging"].shape == (2, 20)
    summary = write_fit_outputs(tmp_path, prob, r1)
    for f in ("posterior.nc", "activation_summary.vtu", "ecg_posterior.csv", "summary.json", "modes.npz"):
        assert (tmp_path / f).stat().st_size > 0
    j = json.loads((tmp_path / "summary.json").read_text())
    for k in ("method", "n_pmj", "seconds", "ecg_correlation", "max_rhat", "min_ess_bulk", "divergences",
              "max_rhat_within_optima", "chain_method"):
        assert k in j
    assert j == json.loads(json.dumps(summary, default=float))
    cap = 2 ** j["max_tree_depth"] - 1
    assert j["max_tree_depth"] == fit.__kwdefaults__["max_tree_depth"]
    assert j["map_optima"][0]["rms_to_best_ms"] == 0.0 and all("rms_to_best_ms" in o for o in j["map_optima"])
    assert j["tree_depth_saturation"] == pytest.approx(np.mean(r1.sample_stats["n_steps"] >= cap))
    assert any("tree-depth cap" in n for n in j["notes"]) == (j["tree_depth_saturation"] >= 0.5)
    # the stages' wall times: each positive, together no more than the whole fit
    st = j["stage_seconds"]
    assert set(st) == {"search", "laplace", "sampling"} and all(v > 0 for v in st.values())
    assert sum(st.values()) <= j["seconds"] + 0.05
    ap = j["identifiability"]["active_pmjs"]
    assert ap["of"] == 2 and 1 <= ap["q05"] <= ap["median"] <= ap["q95"] <= 2
    m = meshio.read(tmp_path / "activation_summary.vtu")
    q05, q95 = m.point_data["activation_q05_ms"], m.point_data["activation_q95_ms"]
    assert np.all(q05 <= m.point_data["activation_mean_ms"] + 1e-6) and np.all(q95 >= q05)
    # the fast path's forward error is measured and folded into the sd and the interval
    fe = j["forward_error"]
    assert fe["in_intervals"] and 0 < fe["n_draws"] <= 24 and fe["rms_ms"] > 0
    e = m.point_data["forward_error_ms"]
    assert e.shape == q05.shape and np.all(e >= 0)
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    bare = json.loads(json.dumps(write_fit_outputs(bare_dir, prob, r1, forward_error_draws=0), default=float))
    assert "forward_error" not in bare
    mb = meshio.read(bare_dir / "activation_summary.vtu")
    assert "forward_error_ms" not in mb.point_data
    sd, sd0 = m.point_data["activation_sd_ms"], mb.point_data["activation_sd_ms"]
    np.testing.assert_allclose(sd, np.sqrt(sd0**2 + e**2), rtol=1e-4, atol=1e-4)
    import arviz as az

    dt = az.from_netcdf(tmp_path / "posterior.nc")
    for g in ("posterior", "posterior_predictive", "observed_data", "sample_stats"):
        assert g in dt.children or hasattr(dt, g)
    attrs = dt["posterior"].attrs
    assert attrs["chain_method"] == "sequential" and len(json.loads(attrs["chain_optimum"])) == 2
    hdr = (tmp_path / "ecg_posterior.csv").read_text().splitlines()[0]
    assert hdr == "time_ms,lead,observed_mV,mean_mV,q05_mV,q95_mV"


def test_setup_matches_numpyro_initialize_model(case):
    """The jit-traced set-up gives numpyro's potential, supports and constrained values."""
    from numpyro.infer.util import initialize_model

    from cdt_bayes._inference import _setup
    from cdt_bayes._model import cdt_model

    prob, _, _ = case
    z0, pot, post, supports = _setup(prob, jax.random.key(3))
    args, kwargs = prob.model_args()
    info, pot_ref, post_ref, trace = initialize_model(
        jax.random.key(0), cdt_model, model_args=args, model_kwargs=kwargs, dynamic_args=False
    )
    latent = {k for k, s in trace.items() if s["type"] == "sample" and not s["is_observed"]}
    assert set(supports) == latent == set(z0)
    assert all(str(supports[k]) == str(trace[k]["fn"].support) for k in latent)
    for z in (z0, info.z):  # a prior draw and numpyro's own initial point
        assert np.isfinite(float(pot(z)))
        np.testing.assert_allclose(float(pot(z)), float(pot_ref(z)), rtol=1e-5)
        for k, v in post(z).items():
            np.testing.assert_allclose(np.asarray(v), np.asarray(post_ref(z)[k]), rtol=1e-5, atol=1e-6)
    z_other = _setup(prob, jax.random.key(4))[0]  # the key draws the point
    assert not np.allclose(np.asarray(z0["pmj_xyz_mm"]), np.asarray(z_other["pmj_xyz_mm"]))


def test_vectorized_chains_match_sequential(case):
    """The vmapped chains on the real log density build the same trees and draws as in turn."""
    from jax.flatten_util import ravel_pytree

    from cdt_bayes._inference import _nuts_chains, _setup

    prob, _, _ = case
    template, pot, _, _ = _setup(prob, jax.random.key(0))

    def start(seed):  # Uniform(-2, 2) in unconstrained space (numpyro's init_to_uniform)
        leaves, tree = jax.tree.flatten(template)
        keys = jax.random.split(jax.random.key(seed), len(leaves))
        return tree.unflatten([jax.random.uniform(k, x.shape, minval=-2.0, maxval=2.0) for k, x in zip(keys, leaves)])

    z0, z1 = start(0), start(1)
    d = ravel_pytree(z0)[0].size
    keys = jax.random.split(jax.random.key(4), 2)
    # a few transitions only (one chunk shape): vmapped float32 arithmetic differs in the last
    # bits, and NUTS trajectories amplify that (measured: ~1e-4 relative after 15 iterations)
    out = {
        m: _nuts_chains(pot, [z0, z1], [0.05 * np.eye(d)] * 2, keys, 3, 3, None, None, False, chain_method=m)
        for m in ("sequential", "vectorized")
    }
    (seq, st_seq, *_), (vec, st_vec, *_) = out["sequential"], out["vectorized"]
    moved = max(np.ptp(c["pmj_xyz_mm"], axis=0).max() for c in seq)
    assert moved > 0.05, moved  # the chains moved by more than the tolerance below
    for a, b in zip(seq, vec):
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=1e-3, atol=1e-2)
    for a, b in zip(st_seq, st_vec):
        np.testing.assert_array_equal(b["n_steps"], a["n_steps"])
    with pytest.raises(CdtBayesError, match="--chain-method"):
        fit(prob, "nuts", chain_method="pmap")


def test_vectorized_resume_from_uneven_checkpoints(tmp_path):
    """Chains resumed at different points catch up one group at a time, then run together."""
    import jax.numpy as jnp

    from cdt_bayes._inference import _nuts_chains

    sd = jnp.array([1.0, 2.0, 0.5])

    def pot(u):
        return 0.5 * jnp.sum((u["x"] / sd) ** 2)

    starts = [{"x": jnp.full(3, 0.3 * c)} for c in range(2)]
    inv = [np.diag(np.asarray(sd, np.float64) ** 2)] * 2
    keys = jax.random.split(jax.random.key(0), 2)
    args = (4, 8, tmp_path, None, False)
    ref, *_ = _nuts_chains(pot, starts, inv, keys, *args[:2], None, None, False, chunk=4)
    # a run killed after chain 0 finished and before chain 1 started: only chain0.pkl exists
    _nuts_chains(pot, starts[:1], inv[:1], keys[:1], *args, chunk=4)
    assert (tmp_path / "chain0.pkl").exists() and not (tmp_path / "chain1.pkl").exists()
    # mark chain 0's stored draws, to see that they come from the checkpoint, not a rerun
    import pickle

    ck = pickle.loads((tmp_path / "chain0.pkl").read_bytes())
    ck["samples"] = [jax.tree.map(lambda x: np.full_like(x, 7.0), z) for z in ck["samples"]]
    (tmp_path / "chain0.pkl").write_bytes(pickle.dumps(ck))
    out, *_ = _nuts_chains(pot, starts, inv, keys, *args, chunk=4, chain_method="vectorized")
    assert out[0]["x"].shape == out[1]["x"].shape == (8, 3)
    np.testing.assert_array_equal(out[0]["x"], 7.0)
    np.testing.assert_allclose(out[1]["x"], ref[1]["x"], rtol=1e-4, atol=1e-4)


_TWO_DEVICE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from cdt_bayes._inference import _nuts_chains
assert jax.local_device_count() == 2, jax.devices()
sd = jnp.array([1.0, 2.0, 0.5])
pot = lambda u: 0.5 * jnp.sum((u["x"] / sd) ** 2)
starts = [{"x": jnp.full(3, 0.3 * c)} for c in range(4)]
inv = [np.diag(np.asarray(sd, np.float64) ** 2)] * 4
keys = jax.random.split(jax.random.key(0), 4)
out = {m: _nuts_chains(pot, starts, inv, keys, 30, 20, None, None, False, chain_method=m)[0]
       for m in ("sequential", "vectorized")}
a = np.stack([d["x"] for d in out["sequential"]]); b = np.stack([d["x"] for d in out["vectorized"]])
assert np.ptp(a, axis=1).min() > 0.1
np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
print("OK", a.shape)
"""


def test_vectorized_chains_split_across_two_devices():
    """With 2 (forced host) devices the vmapped chains are sharded across them, same draws."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK (4, 20, 3)" in r.stdout, r.stderr[-3000:]


def test_resume_continues_a_stopped_run(case, tmp_path):
    prob, _, _ = case
    kw = dict(chains=1, num_warmup=25, num_samples=50, seed=5, n_starts=2, map_steps=50, progress=False)
    full = fit(prob, "nuts", **kw)
    # a run that stopped after 25 of the 50 draws (its checkpoint is what a killed run leaves)
    part = fit(prob, "nuts", checkpoint_dir=tmp_path, **{**kw, "num_samples": 25})
    assert (tmp_path / "chain0.pkl").exists()
    resumed = fit(prob, "nuts", checkpoint_dir=tmp_path, **kw)
    np.testing.assert_allclose(part.draws["pmj_t_ms"], full.draws["pmj_t_ms"][:, :25], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resumed.draws["pmj_t_ms"], full.draws["pmj_t_ms"], rtol=1e-5, atol=1e-5)
    with pytest.raises(CdtBayesError, match="time-budget"):
        fit(prob, "nuts", time_budget_s=1e-9, **kw)


def test_svi_and_map_methods(case, tmp_path):
    prob, _, _ = case
    r = fit(prob, "svi", num_samples=50, svi_steps=200, n_starts=2, map_steps=50, progress=False)
    assert r.draws["pmj_t_ms"].shape == (1, 50, 2)
    assert np.std(r.draws["pmj_t_ms"]) > 0
    m = fit(prob, "map", n_starts=2, map_steps=50, progress=False)
    assert m.draws["pmj_t_ms"].shape == (1, 1, 2)
    for res in (r, m):  # every method lists the search's optima, with their maps' distance to the best's
        assert len(res.optima) == 2 and res.optima[0]["rms_to_best_ms"] == 0.0
        assert res.optima[0]["neg_log_joint"] <= res.optima[1]["neg_log_joint"]
        assert np.isfinite(res.optima[1]["rms_to_best_ms"]) and res.optima[1]["rms_to_best_ms"] >= 0
        assert (res.optima[1]["rms_to_best_ms"] > 5 and res.optima[1]["neg_log_joint"] - res.optima[0]["neg_log_joint"]
                <= 10) == any("other optimum within" in n for n in res.notes)


def test_near_optima_note_names_rivals_only():
    from cdt_bayes._inference import near_optima_note

    losses = np.array([-100.0, -95.0, -99.0, -80.0, np.inf])
    rms = np.array([0.0, 8.0, 2.0, 12.0, np.nan])  # rival: 5 nats and 8 ms; the others too alike or too poor
    note = near_optima_note(losses, rms, "svi")
    assert "found 1 other optimum within 10 nats" in note and "(log joint 5.0 below it)" in note
    assert "by 8-8 ms RMS" in note and "SVI describes" in note
    assert near_optima_note(losses, np.array([0.0, 4.9, 2.0, 12.0, np.nan]), "map") is None
    two = near_optima_note(losses, np.array([0.0, 8.0, 6.0, 12.0, np.nan]), "nuts")
    assert "found 2 other optima" in two and "by 6-8 ms RMS" in two and "map_optima" in two


def test_svi_lowrank_recovers_a_correlated_gaussian():
    """On a Gaussian target the low-rank normal finds its mean and (rank-1 + diagonal) covariance."""
    from cdt_bayes._inference import svi_lowrank

    rng = np.random.default_rng(0)
    dim = 5
    v = rng.normal(size=dim)
    cov = 0.5 * np.outer(v, v) + np.diag(rng.uniform(0.05, 0.3, dim) ** 2)  # exactly rank 1 + diagonal
    mean = rng.normal(size=dim)
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)

    def pot(u):
        e = jnp.concatenate([u["a"], u["b"]]) - mean
        return 0.5 * e @ prec @ e

    u0 = {"a": jnp.zeros(2), "b": jnp.zeros(3)}
    draws, losses = svi_lowrank(pot, u0, jax.random.key(0), 4000, rank=1, lr=0.02, num_samples=20000)
    assert draws.shape == (20000, dim) and losses.shape == (4000,)
    err = draws.mean(0) - mean
    assert err @ np.linalg.inv(cov) @ err < 0.06  # mean within ~0.25 posterior sd (5 seeds: <= 0.042)
    c = np.cov(draws.T)
    assert np.abs(c - cov).max() < 0.2 * np.abs(cov).max()  # 5 seeds: 0.05-0.13
    np.testing.assert_allclose(np.sqrt(np.diag(c) / np.diag(cov)), 1.0, atol=0.12)
    # negative control: the start (zero mean, sd 0.02) is far from the target
    assert np.abs(mean).max() > 0.3 and losses[:50].mean() > losses[-200:].mean() + 1.0
    assert np.diag(c).min() > 100 * 0.02**2  # grew from the initial sd 0.02


def test_a_capped_run_says_so(case, tmp_path):
    """Depth 1 (one leapfrog step per iteration) stops every trajectory at the cap."""
    prob, _, _ = case
    r = fit(prob, "nuts", chains=1, num_warmup=10, num_samples=10, seed=0, n_starts=2, map_steps=50,
            max_tree_depth=1, search_rounds=0, progress=False)
    assert r.max_tree_depth == 1 and np.all(r.sample_stats["n_steps"] == 1)
    summary = write_fit_outputs(tmp_path, prob, r, forward_error_draws=0)
    assert summary["max_tree_depth"] == 1 and summary["tree_depth_saturation"] == 1.0
    (note,) = [n for n in summary["notes"] if "tree-depth cap" in n]
    assert "100%" in note and "--max-tree-depth 3" in note


def test_bad_options(case):
    prob, _, _ = case
    with pytest.raises(CdtBayesError, match="--method"):
        fit(prob, "hmc")
    with pytest.raises(CdtBayesError, match="--chains"):
        fit(prob, "nuts", chains=0)
    with pytest.raises(CdtBayesError, match="--max-tree-depth"):
        fit(prob, "nuts", max_tree_depth=0)
    with pytest.raises(CdtBayesError, match="--search-rounds"):
        fit(prob, "svi", search_rounds=-1)
    with pytest.raises(CdtBayesError, match="--search-smooth-ms"):
        fit(prob, "map", search_smooth_ms=-1.0)


def test_deterministic_sites_match_the_batched_postprocessing(case):
    """``activation_ms`` / ``ecg_model_mV`` of the model equal what fit outputs are built from."""
    from numpyro.infer import Predictive

    from cdt_bayes._inference import LATENT_SITES, posterior_activation, posterior_ecg
    from cdt_bayes._model import cdt_model

    prob, _, _ = case
    (data, spec), _ = prob.model_args()
    prior = Predictive(cdt_model, num_samples=5)(jax.random.key(1), data, spec)
    n_leads, n_times = prob.obs.shape
    assert prior["activation_ms"].shape == (5, prob.mesh.n_nodes)
    assert prior["ecg_model_mV"].shape == (5, n_leads, n_times)
    latents = {k: np.asarray(v) for k, v in prior.items() if k in LATENT_SITES}
    act = posterior_activation(prob, {k: v[None] for k, v in latents.items()})
    np.testing.assert_allclose(act[0], prior["activation_ms"], rtol=1e-5, atol=1e-3)
    mu, _ = posterior_ecg(prob, {k: v[None] for k, v in latents.items()}, act, jax.random.key(2))
    scale = float(np.abs(mu).max())
    np.testing.assert_allclose(mu[0], prior["ecg_model_mV"], rtol=1e-4, atol=1e-4 * scale)
    # on given draws (a posterior), Predictive recomputes both from the latents
    pred = Predictive(cdt_model, posterior_samples=latents, return_sites=["activation_ms"])(jax.random.key(3), data, spec)
    np.testing.assert_allclose(pred["activation_ms"], prior["activation_ms"], rtol=1e-5, atol=1e-3)


def test_baseline_term_absorbs_lead_offsets():
    """An ECG whose leads start off zero (levels and ramps, as clinical QRS windows do): with
    the ``linear`` baseline the MAP fits it to the noise level, the posterior ECG carries the
    levels, and the fitted coefficients recover them; without the term the fit is far worse."""
    from cdt_bayes._model import baseline_basis
    from cdt_bayes._outputs import to_inference_data

    mesh, el, t_act, tt, names, noisy, clean = synthetic()
    rng = np.random.default_rng(5)
    amp = np.abs(clean).max()
    coef = 0.15 * amp * rng.normal(size=(len(names), 2))
    basis = np.asarray(baseline_basis(jnp.asarray(tt, jnp.float32), "linear"))
    obs = noisy + coef @ basis.T
    noise_sd = 0.02 * amp
    resid = {}
    for kind in ("none", "linear"):
        spec = load_spec("default", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, baseline=kind, t_max_select=False)
        prob = build_problem(mesh, tt, names, obs, el, spec, progress=False)
        res = fit(prob, "map", n_starts=4, map_steps=300, progress=False)
        idata, ex = to_inference_data(prob, res, n_prior=4)
        mu = ex["ecg_model"][0, 0]
        resid[kind] = float(np.sqrt(np.mean((prob.obs - mu) ** 2)))
        if kind == "linear":
            fitted = np.asarray(idata.posterior["ecg_baseline_mV"])[0, 0]
            assert fitted.shape == (len(names), 2)
            np.testing.assert_allclose(fitted, coef, atol=0.1 * np.abs(coef).max())
            assert float(np.nanmean(ecg_correlation(clean.astype(np.float32), mu - fitted @ basis.T))) > 0.97
        else:
            assert "ecg_baseline_mV" not in idata.posterior
    assert resid["linear"] < 1.5 * noise_sd, resid
    assert resid["none"] > 2.0 * resid["linear"], resid
    # with AR(1) noise the posterior ECG draws the baseline given each draw's noise_rho
    spec = load_spec("ar1", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, baseline="linear", t_max_select=False)
    prob = build_problem(mesh, tt, names, obs, el, spec, progress=False)
    res = fit(prob, "svi", num_samples=20, svi_steps=100, n_starts=2, map_steps=150, progress=False)
    idata, ex = to_inference_data(prob, res, n_prior=4)
    assert ex["ecg_model"].shape == (1, 20) + prob.obs.shape and np.all(np.isfinite(ex["ecg_pp"]))
    fitted = np.asarray(idata.posterior["ecg_baseline_mV"]).mean((0, 1))
    assert np.corrcoef(fitted.ravel(), coef.ravel())[0, 1] > 0.95
    mu = ex["ecg_model"].mean((0, 1))
    assert np.sqrt(np.mean((prob.obs - mu) ** 2)) < 2.0 * noise_sd


def test_cli_fit_end_to_end(tmp_path):
    from cdt_bayes._cli import main
    from cdt_bayes._io import save_mesh_vtu, write_ecg_csv

    mesh, el, t_act, tt, names, noisy, _ = synthetic()
    save_mesh_vtu(tmp_path / "m.vtu", mesh)
    # a recording as another simulator might write it: 100 ms of baseline before the QRS,
    # then an ST segment and a broad T wave (--qrs auto must cut both off)
    n_q = tt.size
    rng = np.random.default_rng(5)
    amp = np.abs(noisy).max()
    rec = 0.02 * amp * rng.normal(size=(len(names), 100 + n_q + 300))
    rec[:, 100 : 100 + n_q] = noisy
    after = np.arange(300.0)
    rec[:, 100 + n_q :] += 0.25 * amp * np.sign(noisy[:, -40:].mean(1))[:, None] * np.exp(-0.5 * ((after - 180) / 40) ** 2)
    write_ecg_csv(tmp_path / "ecg.csv", np.arange(float(rec.shape[1])), names, rec)
    (tmp_path / "el.csv").write_text("name,x_mm,y_mm,z_mm\n" + "".join(f"{k},{v[0]},{v[1]},{v[2]}\n" for k, v in el.items()))
    spec = tmp_path / "small.toml"
    spec.write_text('extends = "default"\n[pmj]\nsite_spacing_mm = 4.0\nkernel_mm = 2.5\nlayer_depth_mm = 3.5\n')
    rc = main(["fit", "--mesh", str(tmp_path / "m.vtu"), "--ecg", str(tmp_path / "ecg.csv"), "--electrodes", str(tmp_path / "el.csv"),
               "--out", str(tmp_path / "fit"), "--method", "map", "--n-pmj", "2", "--spec", str(spec), "--no-progress"])
    assert rc == 0
    j = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert j["method"] == "map" and j["n_pmj"] == 2 and j["ecg_correlation"] > 0.9
    assert j["map_search_rounds"] == 0  # MAP is the published baseline: no basin hops
    assert j["map_search_smooth_ms"] == 0.0  # ... and no coarse-to-fine misfit unless asked
    assert not (tmp_path / "fit" / ".checkpoint").exists()
    w = j["ecg_window"]
    assert w["source"] == "auto" and w["cut"] and 80 <= w["start_ms"] <= 100 <= w["qrs_onset_ms"]
    assert 100 + tt[-1] - 15 <= w["end_ms"] <= 100 + tt[-1] + 60 and w["offset_ms"] == w["start_ms"]
    assert any("found automatically" in n for n in j["notes"])
    assert j["ecg_baseline"]["source"] == "auto" and j["ecg_baseline"]["term"] == "none", j["ecg_baseline"]
    # cut to 15 ms before the detected onset: the PMJ time prior is widened by that lead-in
    p = j["pmj_time_prior"]
    assert p["extended"] and 5 < p["qrs_onset_ms"] < 40 and p["t_max_ms"] == 40.0 + p["qrs_onset_ms"], p
    assert any("PMJ initiation times" in n for n in j["notes"])
    fitted = np.loadtxt(tmp_path / "fit" / "ecg_posterior.csv", delimiter=",", skiprows=1, usecols=0)
    assert fitted.min() == 0.0 and fitted.max() == w["end_ms"] - w["start_ms"]


def test_budget_planning_keeps_proportions():
    from cdt_bayes._inference import _plan_iterations

    # everything fits: no change
    assert _plan_iterations(25, 300, 500, 0.1, 1e6, 4) is None
    # 4 chains, 1 s per iteration, 400 s left: 100 more iterations per chain, 125 in all
    w, n = _plan_iterations(25, 300, 500, 1.0, 400.0, 4)
    assert w + n == 125 and w == round(300 / 800 * 125)
    # budget nearly spent: still one more warm-up iteration and one draw
    assert _plan_iterations(25, 300, 500, 1.0, 0.0, 4) == (26, 1)
    # already sampling: no replanning
    assert _plan_iterations(350, 300, 500, 1.0, 10.0, 4) is None


def test_time_budget_cuts_chains_alike(case):
    """Round-robin chunks: a budget that ends mid-run leaves every chain with as many draws."""
    prob, _, _ = case
    kw = dict(chains=2, num_warmup=25, num_samples=100000, seed=1, n_starts=2, map_steps=50, progress=False)
    import time

    t0 = time.time()
    r = fit(prob, "nuts", time_budget_s=1e6, **{**kw, "num_samples": 25})
    one = time.time() - t0  # MAP + compile + 2 x 50 iterations
    r = fit(prob, "nuts", time_budget_s=one + 5.0, **kw)
    assert r.draws["pmj_t_ms"].shape[0] == 2
    n = r.draws["pmj_t_ms"].shape[1]
    assert 0 < n < 100000
    assert any("budget" in s for s in r.notes)


def test_chain_starts_follow_laplace_weights(case):
    prob, _, _ = case
    kw = dict(chains=3, num_warmup=5, num_samples=5, seed=1, n_starts=4, map_steps=60, progress=False)
    with pytest.raises(CdtBayesError, match="chain-starts"):
        fit(prob, "nuts", chain_starts="bogus", **kw)
    ev = fit(prob, "nuts", **kw)
    assert sum(o["chains"] for o in ev.optima) == 3
    assert np.isclose(sum(o["weight"] for o in ev.optima), 1.0)
    # no chain in an optimum holding < 0.1 % of the evidence; the heaviest always has one
    assert all(o["chains"] == 0 for o in ev.optima if o["weight"] < 1e-3)
    assert max(ev.optima, key=lambda o: o["weight"])["chains"] >= 1
    assert any("Laplace evidence" in n for n in ev.notes)
    # dispersed starts: chains sharing an optimum still differ from their first draw on
    first = ev.draws["pmj_xyz_mm"][:, 0]
    assert len({first[c].tobytes() for c in range(3)}) == 3
    di = fit(prob, "nuts", chain_starts="distinct", **kw)
    assert [o["chains"] for o in di.optima] == [1, 1, 1, 0]


def test_auto_baseline_is_settled_from_the_ecg():
    """``baseline = "auto"`` (the default) becomes ``none`` for a simulated QRS, ``linear`` for
    one shifted off zero, ``none`` with the Student-t likelihood; the choice is recorded."""
    mesh, el, t_act, tt, names, noisy, clean = synthetic()
    kw = dict(n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5)
    spec = load_spec("default", **kw)
    assert spec.baseline == "auto"
    shifted = noisy + 0.15 * np.abs(clean).max() * np.linspace(-1, 1, len(names))[:, None]
    for ecg, spec_, term in [(noisy, spec, "none"), (shifted, spec, "linear"), (shifted, spec.replace(likelihood="student_t"), "none")]:
        prob = build_problem(mesh, tt, names, ecg, el, spec_, progress=False)
        assert prob.spec.baseline == term and prob.baseline["term"] == term and prob.baseline["source"] == "auto"
        assert prob.baseline["off_zero"] == (ecg is shifted)
        assert set(prob.baseline["start_mV"]) == set(names)
    given = build_problem(mesh, tt, names, shifted, el, spec.replace(baseline="offset"), progress=False)
    assert given.baseline == {"term": "offset", "source": "spec"}
    from numpyro.infer import Predictive

    from cdt_bayes._errors import SpecError
    from cdt_bayes._model import cdt_model

    with pytest.raises(SpecError, match="build_problem"):
        Predictive(cdt_model, num_samples=1)(jax.random.key(0), given.data, spec)


def test_posterior_netcdf_is_compressed_and_faithful(tmp_path):
    """``posterior.nc``: activation draws kept to 2^-17 relative (≤ 0.001 ms below 131 ms),
    everything else bit for bit, the file well under the raw size; the caller's data untouched."""
    import arviz as az

    from cdt_bayes._outputs import ACTIVATION_MANTISSA_BITS, write_posterior_netcdf

    rng = np.random.default_rng(0)
    nodes = np.linspace(0, 1, 3000)
    act = (120 * nodes[None, None] + rng.normal(size=(2, 100, 1)) * 5 + 3 * np.sin(40 * nodes)).astype(np.float32)
    sig = rng.gamma(2.0, size=(2, 100)).astype(np.float32)
    ecg = rng.normal(size=(2, 100, 8, 600)).astype(np.float32)  # noise: incompressible, must stay exact
    data = az.from_dict(
        {"posterior": {"activation_ms": act, "sigma_mV": sig}, "posterior_predictive": {"ecg": ecg},
         "prior": {"activation_ms": act[:1]}},
        dims={"activation_ms": ["node"], "ecg": ["lead", "time_ms"]},
        attrs={"posterior": {"method": "nuts"}},
    )
    write_posterior_netcdf(data, tmp_path / "p.nc")
    back = az.from_netcdf(tmp_path / "p.nc")
    got = back["posterior"]["activation_ms"].values
    assert got.dtype == np.float32
    rel = np.abs(got - act) / np.abs(act)
    assert rel.max() <= 2.0 ** -(ACTIVATION_MANTISSA_BITS + 1) and rel.max() > 0  # rounded, within half an ulp
    np.testing.assert_array_equal(back["posterior"]["sigma_mV"].values, sig)
    np.testing.assert_array_equal(back["posterior_predictive"]["ecg"].values, ecg)
    np.testing.assert_allclose(back["prior"]["activation_ms"].values, act[:1], rtol=2.0**-16)
    assert back["posterior"].attrs["method"] == "nuts"
    np.testing.assert_array_equal(data["posterior"]["activation_ms"].values, act)  # not modified in place
    # the noise ECG cannot shrink much; the smooth activation draws (1.5 x act.nbytes) must
    size = (tmp_path / "p.nc").stat().st_size
    assert size < ecg.nbytes + 0.75 * act.nbytes, size


def test_a_lead_in_widens_the_pmj_time_prior():
    """A QRS that starts 30 ms into the ECG raises t_max_ms by the detected onset (so the
    earliest PMJ can fire at the onset); a QRS at the start leaves it alone; recorded."""
    mesh, el, t_act, tt, names, noisy, clean = synthetic()
    spec = load_spec("default", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5)
    prob = build_problem(mesh, tt, names, noisy, el, spec, progress=False)
    assert prob.spec.t_max_ms == spec.t_max_ms and not prob.pmj_times["extended"]
    assert prob.pmj_times["qrs_onset_ms"] <= 5.0
    lead = 30
    sd = 0.02 * np.abs(clean).max()
    rec = np.concatenate([sd * np.random.default_rng(2).normal(size=(len(names), lead)), noisy], 1)
    late = build_problem(mesh, np.arange(float(rec.shape[1])), names, rec, el, spec, progress=False)
    on = late.pmj_times["qrs_onset_ms"]
    assert late.pmj_times["extended"] and lead - 2 <= on <= lead + 10, late.pmj_times
    assert late.spec.t_max_ms == late.pmj_times["t_max_ms"] == spec.t_max_ms + on


def test_per_lead_noise_sd_follows_each_lead(tmp_path):
    """``[noise] per_lead``: on an ECG whose first three leads are 12x noisier, the fitted noise
    sd of each lead tracks its own misfit (noise plus the fast path's model error; the shared
    one cannot), the predictive bands widen on the noisy leads only, and summary.json,
    posterior.nc and the report carry it per lead."""
    from cdt_bayes._cli import main
    from cdt_bayes._io import save_mesh_vtu, write_ecg_csv
    from cdt_bayes._outputs import to_inference_data

    mesh, el, t_act, tt, names, _, clean = synthetic()
    amp = np.abs(clean).max()
    sd = np.where(np.arange(len(names)) < 3, 0.12, 0.01) * amp
    obs = clean + sd[:, None] * np.random.default_rng(11).normal(size=clean.shape)
    small = dict(n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, t_max_select=False)
    spec = load_spec("per_lead_noise", **small)
    assert spec.noise_per_lead and not load_spec("default").noise_per_lead
    prob = build_problem(mesh, tt, names, obs, el, spec, progress=False)
    res = fit(prob, "svi", num_samples=40, svi_steps=200, n_starts=4, map_steps=300, progress=False)
    sig = res.draws["sigma_mV"]
    assert sig.shape == (1, 40, len(names))
    ratio = sig.mean((0, 1))[:3] / sd[:3]
    assert np.all((ratio > 0.6) & (ratio < 1.6)), ratio  # the noisy leads: their noise level
    idata, ex = to_inference_data(prob, res, n_prior=4)
    assert idata.posterior["sigma_mV"].dims == ("chain", "draw", "lead")
    misfit = np.sqrt(np.mean((obs - ex["ecg_model"]) ** 2, axis=(0, 1, 3)))  # per lead, over the draws
    fit_ratio = sig.mean((0, 1)) / misfit
    assert np.all((fit_ratio > 0.7) & (fit_ratio < 1.4)), fit_ratio  # every lead: its own misfit
    spread = (ex["ecg_pp"] - ex["ecg_model"]).std(axis=(0, 1, 3))
    assert spread[:3].min() > 2.0 * spread[3:].max(), spread  # bands follow each lead's noise
    # negative control: one shared sd sits between the two levels, wrong for both
    shared = fit(build_problem(mesh, tt, names, obs, el, load_spec("default", **small), progress=False), "map",
                 n_starts=4, map_steps=300, progress=False)
    s0 = float(shared.draws["sigma_mV"].ravel()[0])
    assert 1.2 * misfit[3:].max() < s0 < 0.8 * misfit[:3].min(), (s0, misfit)

    # the CLI path: summary.json and the report name each lead's noise sd
    save_mesh_vtu(tmp_path / "m.vtu", mesh)
    write_ecg_csv(tmp_path / "ecg.csv", np.asarray(tt, float), names, obs)
    (tmp_path / "el.csv").write_text("name,x_mm,y_mm,z_mm\n" + "".join(f"{k},{v[0]},{v[1]},{v[2]}\n" for k, v in el.items()))
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('extends = "per_lead_noise"\n[pmj]\nsite_spacing_mm = 4.0\nkernel_mm = 2.5\nlayer_depth_mm = 3.5\n')
    rc = main(["fit", "--mesh", str(tmp_path / "m.vtu"), "--ecg", str(tmp_path / "ecg.csv"), "--electrodes",
               str(tmp_path / "el.csv"), "--out", str(tmp_path / "fit"), "--method", "map", "--n-pmj", "2",
               "--spec", str(spec_file), "--qrs", "whole", "--no-progress"])
    assert rc == 0
    j = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert list(j["sigma_mV_per_lead"]) == list(names)
    per = np.array(list(j["sigma_mV_per_lead"].values()))
    assert per[:3].min() > 2.0 * per[3:].max(), per
    assert main(["report", str(tmp_path / "fit"), "--out", str(tmp_path / "r.html")]) == 0
    assert "noise sd per lead" in (tmp_path / "r.html").read_text()


def test_active_pmjs_counts_the_pmjs_that_shape_the_map(case):
    prob, _, _ = case
    data, spec = prob.data, prob.spec
    sites = np.asarray(data.sites)
    a, b = sites[0], sites[np.argmax(((sites - sites[0]) ** 2).sum(1))]  # far apart on the layer
    z = np.array([[a, b], [a, a + 0.1], [a, b]], np.float32)  # 3 draws of 2 PMJs
    t = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 200.0]], np.float32)
    draws = {"pmj_xyz_mm": z[None], "pmj_t_ms": t[None], "cv_scale": np.ones((1, 3), np.float32)}
    # both fire; the second fires 5 ms after the first's wave passes its site (dormant); the
    # second is so late that the first's wave has reached everywhere
    far = float(np.max(dictionary_activation(jnp.asarray(z[0, :1]), jnp.asarray(t[0, :1]), 1.0, data,
                                             spec.kernel_mm, None)))
    assert far < 200.0
    np.testing.assert_array_equal(active_pmjs(prob, draws), [2, 1, 1])
    # the activation map is the minimum of the PMJs' arrival times
    arr = pmj_arrival(jnp.asarray(z[0]), jnp.asarray(t[0]), 1.0, data, spec.kernel_mm)
    np.testing.assert_allclose(np.asarray(arr).min(0),
                               dictionary_activation(jnp.asarray(z[0]), jnp.asarray(t[0]), 1.0, data,
                                                     spec.kernel_mm, None), rtol=1e-6)
    # thinned to max_draws at random, reproducibly
    many = {k: np.repeat(v, 10, axis=1) for k, v in draws.items()}
    n = active_pmjs(prob, many, max_draws=7, seed=1)
    assert n.shape == (7,) and set(n) <= {1, 2}
    np.testing.assert_array_equal(n, active_pmjs(prob, many, max_draws=7, seed=1))


def test_forward_error_shrinks_as_the_mesh_is_refined():
    """Fast path and full solver converge to the same activation: their gap falls on a finer mesh.

    (Velocity factors other than 1 in the draws: a factor dropped on either side would leave
    a gap of ~10 % of the activation times on both meshes.)
    """
    draws = {  # 3 draws of 2 PMJs 1 mm under the endocardium (z = 0), between the sites
        "pmj_xyz_mm": np.array([[[[5.1, 7.3, 1.0], [17.7, 15.2, 1.0]],
                                 [[11.9, 3.4, 1.0], [6.2, 19.8, 1.0]],
                                 [[20.3, 20.6, 1.0], [13.1, 10.5, 1.0]]]], np.float32),
        "pmj_t_ms": np.array([[[0.0, 4.0], [2.0, 0.0], [0.0, 1.0]]], np.float32),
        "cv_scale": np.array([[1.0, 1.1, 0.9]], np.float32),
    }
    rms = {}
    for name, shape in (("coarse", (8, 8, 3)), ("fine", (17, 17, 7))):
        mesh, el, t_act, tt, names, noisy, clean = synthetic(mesh_el=slab(shape))
        spec = load_spec("default", n_pmj=2, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5)
        prob = build_problem(mesh, tt, names, noisy, el, spec, progress=False)
        fe = forward_error(prob, draws, n_draws=10)
        assert fe["n_draws"] == 3 and fe["rms_ms"].shape == (mesh.n_nodes,)
        assert np.all(fe["rms_ms"] >= np.abs(fe["bias_ms"]) - 1e-9)
        rms[name] = fe["overall_rms_ms"]
        assert rms[name] == pytest.approx(float(np.sqrt(np.mean(fe["rms_ms"] ** 2))), rel=1e-6)
    assert rms["fine"] < 0.5 * rms["coarse"] and rms["fine"] < 1.0, rms
