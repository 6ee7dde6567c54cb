"""The PMJ time prior's upper bound, chosen by the search (``[pmj] t_max_select``)."""

import jax
import numpy as np
import pytest
from inference_case import synthetic

from cdt_bayes._inference import build_problem, find_map, fit
from cdt_bayes._model import load_spec


def test_time_prior_selection_keeps_the_better_prior():
    """select_time_prior runs both priors' multi-start, keeps the higher log joint, and fit()
    and the outputs carry the choice (its accuracy on a heart: the slow test below)."""
    from cdt_bayes._inference import select_time_prior
    from cdt_bayes._outputs import summarise, to_inference_data

    mesh, el, t_act, tt, names, noisy, _ = synthetic(pmj_nodes=(0,), times=(0.0,))
    kw = dict(n_pmj=3, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, t_max_ms=2.0)
    prob = build_problem(mesh, tt, names, noisy, el, load_spec("default", **kw), progress=False)
    assert prob.spec.t_max_select  # the default spec's setting
    window = float(tt[-1] - tt[0])
    assert window > 10.0
    chosen, initial, rec = select_time_prior(prob, jax.random.key(0), n_starts=4, steps=200)
    assert rec["t_max_ms"] == {"spec": 2.0, "window": window}
    nl = rec["neg_log_joint"]
    assert rec["chosen"] == min(nl, key=nl.get)
    assert chosen.spec.t_max_ms == rec["t_max_ms"][rec["chosen"]]
    assert initial[1][0] == pytest.approx(nl[rec["chosen"]])
    assert (chosen is prob) == (rec["chosen"] == "spec")
    # the wider problem is built once: a second selection reuses it (and its compiled programs)
    again = select_time_prior(prob, jax.random.key(0), n_starts=4, steps=200)
    assert again[0] is chosen and again[2]["chosen"] == rec["chosen"]
    # both searches ran the given problem's compiled Adam programs, the bound a traced argument
    # (the window's with its misfit smoothed); nothing was compiled for the wider problem
    from cdt_bayes._inference import WIDE_SEARCH_SMOOTH_MS, _tempered_potential

    wide = vars(prob)["_cdt_compiled"][("wide time prior", window)]
    assert "_cdt_compiled" not in vars(wide)
    programs = vars(_tempered_potential(prob))["_cdt_compiled"]
    assert {k for k in programs if k[0] == "adam"} == {("adam", 200, 0.6, 0.02, s, True) for s in (False, True)}
    # each candidate's value is its own multi-start's best, the window's search smoothed
    import dataclasses

    smooth = {"spec": 0.0, "window": WIDE_SEARCH_SMOOTH_MS}
    for name, tm in rec["t_max_ms"].items():
        alt = dataclasses.replace(prob, spec=prob.spec.replace(t_max_ms=tm))
        _, losses, *_ = find_map(alt, jax.random.key(0), n_starts=4, steps=200, progress=False, smooth_ms=smooth[name])
        assert losses[0] == pytest.approx(nl[name], rel=1e-5)
    res = fit(prob, "map", n_starts=4, map_steps=200, seed=0, progress=False)
    assert res.time_prior["chosen"] == rec["chosen"] and (res.problem is None) == (rec["chosen"] == "spec")
    _, ex = to_inference_data(prob, res, n_prior=10, forward_error_draws=0)
    _, summ, _ = summarise(prob, res, ex)
    assert summ["pmj_time_prior"]["selection"]["chosen"] == rec["chosen"]
    assert summ["map_search_smooth_ms"] == smooth[rec["chosen"]]  # the smoothing the kept search used
    # a window no longer than t_max_ms, or the setting off: nothing to choose
    off = build_problem(mesh, tt, names, noisy, el, load_spec("default", t_max_select=False, **kw), progress=False)
    assert select_time_prior(off, jax.random.key(0))[2] is None
    short = build_problem(mesh, tt, names, noisy, el, load_spec("default", **{**kw, "t_max_ms": window}),
                          progress=False)
    assert select_time_prior(short, jax.random.key(0))[0] is short
    assert fit(off, "map", n_starts=2, map_steps=50, progress=False).problem is None


def test_a_close_call_is_decided_after_both_searches_hop(monkeypatch):
    """When the two priors' best multi-start optima lie within TIME_PRIOR_CLOSE_NATS and hops
    are asked for, both searches hop before the choice; each value is then its own find_map
    with the hops, and fit goes on from the chosen one without hopping again."""
    import dataclasses

    import cdt_bayes._inference as inf
    from cdt_bayes._inference import select_time_prior

    mesh, el, t_act, tt, names, noisy, _ = synthetic(pmj_nodes=(0,), times=(0.0,))
    kw = dict(n_pmj=3, site_spacing_mm=3.0, kernel_mm=2.0, layer_depth_mm=3.5, t_max_ms=2.0)
    prob = build_problem(mesh, tt, names, noisy, el, load_spec("default", **kw), progress=False)
    key = jax.random.key(0)
    opts = dict(n_starts=4, steps=200)
    plain = select_time_prior(prob, key, **opts)[2]  # no rounds asked: no hops, however close
    assert plain["hop_rounds"] == 0 and plain["neg_log_joint"] == plain["multi_start_neg_log_joint"]
    monkeypatch.setattr(inf, "TIME_PRIOR_CLOSE_NATS", 0.0)  # never a close call
    far = select_time_prior(prob, key, search_rounds=1, **opts)[2]
    assert far["hop_rounds"] == 0 and far["neg_log_joint"] == plain["neg_log_joint"]
    monkeypatch.setattr(inf, "TIME_PRIOR_CLOSE_NATS", float("inf"))  # always one
    log: list = []
    _, (u, loss), rec = select_time_prior(prob, key, search_rounds=1, search_log=log, **opts)
    nl, ms = rec["neg_log_joint"], rec["multi_start_neg_log_joint"]
    assert rec["hop_rounds"] == 1 and ms == plain["neg_log_joint"]
    assert rec["chosen"] == min(nl, key=nl.get) and loss[0] == pytest.approx(nl[rec["chosen"]])
    assert log == pytest.approx([ms[rec["chosen"]], nl[rec["chosen"]]])  # the chosen search's hop log
    smooth = {"spec": 0.0, "window": inf.WIDE_SEARCH_SMOOTH_MS}
    for name, tm in rec["t_max_ms"].items():
        assert nl[name] <= ms[name] + 1e-3  # hops keep the best optimum
        alt = dataclasses.replace(prob, spec=prob.spec.replace(t_max_ms=tm))
        _, losses, *_ = find_map(alt, key, progress=False, smooth_ms=smooth[name], search_rounds=1, **opts)
        assert losses[0] == pytest.approx(nl[name], rel=1e-5)
    res = fit(prob, "map", n_starts=4, map_steps=200, search_rounds=1, seed=0, progress=False)
    tp = res.time_prior
    assert tp["hop_rounds"] == 1 and res.map_losses[0] == pytest.approx(tp["neg_log_joint"][tp["chosen"]])
    assert any("close call" in n for n in res.notes), res.notes
    assert any("basin hopping: 1 of 1 rounds" in n for n in res.notes), res.notes


@pytest.mark.slow
def test_time_prior_widened_for_a_slow_few_site_activation():
    """Three sites on the default heart, noise-free ECG, 20 PMJs: under Uniform(0, 40 ms) the
    17 surplus PMJs can stay silent only near the three sites and the search fails (robustness
    sweep of session 20: activation correlation 0.13); the window-long prior is chosen and
    recovers the map."""
    from cdt_bayes._demo import demo_pmjs  # noqa: F401  (the demo's heart)
    from cdt_bayes._ecg import LeadField, ecg_time_grid, simulate_ecg
    from cdt_bayes._eikonal import activation_times, eikonal_geometry
    from cdt_bayes._meshgen import default_electrodes_table, default_mesh
    from cdt_bayes._outputs import summarise, to_inference_data

    mesh = default_mesh()
    el = default_electrodes_table()
    lv, rv = np.flatnonzero(mesh.surface == 1), np.flatnonzero(mesh.surface == 2)
    xyz = mesh.nodes[[lv[len(lv) // 3], lv[2 * len(lv) // 3], rv[len(rv) // 2]]]
    truth = np.asarray(activation_times(eikonal_geometry(mesh, np.float32), xyz, np.array([0.0, 5.0, 3.0])), np.float64)
    lf = LeadField.from_mesh(mesh, el)
    tt = ecg_time_grid(truth)
    ecg = np.asarray(simulate_ecg(truth, lf.matrix, tt), np.float64)
    prob = build_problem(mesh, tt, list(lf.names), ecg, el, load_spec("default"), progress=False)
    res = fit(prob, "map", seed=0, n_starts=4, map_steps=300, progress=False)
    _, ex = to_inference_data(prob, res, n_prior=10, forward_error_draws=0)
    node, summ, _ = summarise(prob, res, ex)
    sel = summ["pmj_time_prior"]["selection"]
    assert sel["chosen"] == "window", sel
    assert sel["neg_log_joint"]["window"] < sel["neg_log_joint"]["spec"] - 100, sel
    assert summ["map_search_smooth_ms"] == 4.0  # the window prior's search is smoothed (WIDE_SEARCH_SMOOTH_MS)
    rmse = float(np.sqrt(np.mean((node["mean"] - truth) ** 2)))
    assert np.corrcoef(node["mean"], truth)[0, 1] > 0.9 and rmse < 10.0, rmse
