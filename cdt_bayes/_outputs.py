"""From a :class:`FitResult` to ArviZ data and the files of ``cdt-bayes fit``.

Files (../shared/CONTRACT.md): ``posterior.nc`` (ArviZ groups posterior,
posterior_predictive, observed_data, sample_stats, prior), ``activation_summary.vtu``,
``ecg_posterior.csv`` (long format), ``summary.json``; plus ``modes.npz`` (the distinct
activation patterns with their probabilities and ECGs) for the report.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from . import _summaries as S
from ._errors import CdtBayesError
from ._inference import (
    FORWARD_ERROR_DRAWS,
    FitProblem,
    FitResult,
    active_pmjs,
    fit,
    forward_error,
    pointwise_log_likelihood,
    posterior_activation,
    posterior_ecg,
)

__all__ = ["to_inference_data", "write_fit_outputs", "prior_activation", "run_fit_cli", "cache_dir"]

#: How ``fit`` pools NUTS chains that disagree (``--combine-chains``). ``"equal"``: one share
#: per chain. ``"stacking"`` weights each chain by how well it predicts held-out ECG samples;
#: on the benchmark case (10 % noise, chains in 3-4 basins, 2 seeds) it cut the coverage of
#: the true activation from 0.79 to 0.74 / 0.56 and raised the RMSE in one seed (10.6 to
#: 12.5 ms): the chains that predict the ECG best were not the ones nearest the truth
#: (benchmarks/RESULTS.md, session 20). So it is opt-in; the weights are always reported.
COMBINE_CHAINS = "equal"


def cache_dir() -> Path:
    """Distance-dictionary cache: ``$CDT_BAYES_CACHE`` or ``~/.cache/cdt_bayes``."""
    env = os.environ.get("CDT_BAYES_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdt_bayes"


def prior_activation(problem: FitProblem, key, n: int = 200) -> np.ndarray:
    """Activation maps ``(n, n_nodes)`` ms under the prior (for shrinkage)."""
    from numpyro.infer import Predictive

    from ._model import cdt_model

    args, _ = problem.model_args()
    return np.asarray(Predictive(cdt_model, num_samples=n, return_sites=["activation_ms"])(key, *args)["activation_ms"])


def to_inference_data(problem: FitProblem, result: FitResult, seed: int = 0, n_prior: int = 200,
                      forward_error_draws: int = FORWARD_ERROR_DRAWS, progress: bool = False):
    """Build ArviZ data (posterior, posterior_predictive, observed_data, sample_stats, prior).

    ``forward_error_draws`` posterior draws are re-solved by the full eikonal solver to
    measure the fast path's error (:func:`cdt_bayes._inference.forward_error`); 0, or a MAP
    fit, skips it. The draws in ``data`` stay the fast path's.

    Returns
    -------
    (data, extras) where ``data`` is an ArviZ DataTree/InferenceData and ``extras`` a dict
    of NumPy arrays (``activation``, ``ecg_model``, ``ecg_pp``, ``prior_activation``) and
    ``forward_error`` (the dict of :func:`~cdt_bayes._inference.forward_error`, or ``None``).
    """
    import arviz as az

    if result.problem is not None:  # the fit widened the PMJ time prior (select_time_prior)
        problem = result.problem

    key = jax.random.key(seed + 7919)
    k1, k2 = jax.random.split(key)
    act = posterior_activation(problem, result.draws)
    point = result.method == "map"
    mu, pp, baseline = posterior_ecg(problem, result.draws, act, k1, point=point, return_baseline=True)
    if result.method == "map":  # a point estimate: no predictive noise draws
        pp = mu.copy()
    prior_act = prior_activation(problem, k2, n_prior)
    # activation maps on the user's nodes (interpolated from a coarser inference mesh)
    act, prior_act = problem.to_output_nodes(act), problem.to_output_nodes(prior_act)
    times = np.asarray(problem.data.times, np.float64)
    coords = {
        "pmj": np.arange(problem.spec.n_pmj),
        "xyz": ["x", "y", "z"],
        "node": np.arange(act.shape[-1]),
        "lead": list(problem.lead_names),
        "time_ms": times,
    }
    dims = {
        "pmj_xyz_mm": ["pmj", "xyz"],
        "pmj_t_ms": ["pmj"],
        "activation_ms": ["node"],
        "ecg_model_mV": ["lead", "time_ms"],
        "ecg": ["lead", "time_ms"],
        "ecg_baseline_mV": ["lead", "baseline_term"],
    }
    post = {k: np.asarray(v) for k, v in result.draws.items()}
    if post["sigma_mV"].ndim == 3:  # [noise] per_lead: one noise sd per lead
        dims["sigma_mV"] = ["lead"]
    post["activation_ms"] = act
    post["ecg_model_mV"] = mu
    if baseline is not None:  # coefficients of the per-lead baseline (level, ramp), mV
        post["ecg_baseline_mV"] = baseline
        coords["baseline_term"] = ["level", "ramp"][: baseline.shape[-1]]
    groups = {
        "posterior": post,
        "posterior_predictive": {"ecg": pp},
        "observed_data": {"ecg": problem.obs},
        "prior": {"activation_ms": prior_act[None]},
    }
    if result.sample_stats is not None and "diverging" in result.sample_stats:
        groups["sample_stats"] = {k: np.asarray(v) for k, v in result.sample_stats.items()}
    attrs = {
        "method": result.method,
        "spec": json.dumps(problem.spec.to_dict()),
        "seconds": float(result.seconds),
        "inference_library": "numpyro",
        "cdt_bayes_units": "mm, ms, mm/ms, mV",
    }
    if result.chain_method is not None:
        attrs["chain_method"] = result.chain_method
    if problem.to_display is not None:
        attrs["inference_mesh"] = json.dumps({"n_nodes": problem.mesh.n_nodes, "n_tets": problem.mesh.n_tets})
    if result.chain_optimum is not None:  # which MAP optimum (summary.json map_optima) each chain started in
        attrs["chain_optimum"] = json.dumps([int(i) for i in result.chain_optimum])
    fe = None
    if forward_error_draws > 0 and result.method != "map":
        fe = forward_error(problem, result.draws, forward_error_draws, seed, progress)
        attrs["forward_error_rms_ms"] = fe["overall_rms_ms"]
    data = az.from_dict(groups, coords=coords, dims=dims, attrs={"posterior": attrs})
    return data, {"activation": act, "ecg_model": mu, "ecg_pp": pp, "prior_activation": prior_act, "forward_error": fe}


def summarise(problem: FitProblem, result: FitResult, extras: dict,
              combine_chains: str = COMBINE_CHAINS) -> tuple[dict, dict, dict]:
    """Per-node arrays, the summary dict and the modes (order-free quantities only).

    ``combine_chains``: how NUTS chains that disagree (R-hat > 1.05) are pooled into the
    summaries. ``"equal"`` (:data:`COMBINE_CHAINS`): each chain counts the same.
    ``"stacking"``: weighted by their stacking weights
    (:func:`cdt_bayes._summaries.stacking_weights`). Chains that agree are always pooled
    equally; diagnostics always use the chains as sampled. The stacking weights are
    computed and reported (``chain_stacking``) either way.
    """
    if combine_chains not in ("stacking", "equal"):
        raise CdtBayesError(f"--combine-chains {combine_chains}: must be stacking or equal")
    if result.problem is not None:  # the fit widened the PMJ time prior (select_time_prior)
        problem = result.problem
    act_chains = extras["activation"]
    n_chain, n_draw = act_chains.shape[:2]
    fe = extras.get("forward_error")
    diag = stack = None
    pool = None  # flat draw indices of the weighted pool (None: every draw once)
    chains_agree = True
    if result.method == "nuts":
        diag = S.diagnostics(act_chains, extras["ecg_model"])
        chains_agree = bool(np.isfinite(diag["max_rhat"]) and diag["max_rhat"] <= 1.05)
        if n_chain > 1:
            ll = pointwise_log_likelihood(problem, result.draws, extras["ecg_model"])
            stack = S.stacking_weights(ll)
            if not chains_agree and combine_chains == "stacking":
                pool = S.pool_draws(n_chain, n_draw, stack["weights"])

    def pooled(x):
        x = np.asarray(x)
        return x if pool is None else x.reshape((n_chain * n_draw,) + x.shape[2:])[pool][None]

    act = pooled(act_chains)
    draws = {k: pooled(v) for k, v in result.draws.items()}
    node = S.activation_summary(act, None if fe is None else fe["rms_ms"])
    ident = S.identifiability(act, extras["prior_activation"])
    bands = S.ecg_bands(pooled(extras["ecg_pp"]))
    mean_model = pooled(extras["ecg_model"]).reshape((-1,) + problem.obs.shape).mean(0)
    bands["mean"] = mean_model  # posterior mean of the noise-free ECG (= predictive mean)
    r = S.ecg_correlation(problem.obs, mean_model)
    modes = S.activation_modes(act)
    if pool is not None:  # medoids as indices into the draws as sampled
        modes["representative"] = pool[modes["representative"]]
        modes["draw_index"] = pool[modes["draw_index"]]
    n_active = active_pmjs(problem, draws)
    n_pmj = problem.spec.n_pmj
    summary = {
        "method": result.method,
        "n_pmj": problem.spec.n_pmj,
        "seconds": round(float(result.seconds), 2),
        "stage_seconds": {k: round(float(v), 2) for k, v in result.stage_seconds.items()},
        "ecg_correlation": float(np.nanmean(r)),
        "ecg_correlation_per_lead": {ld: float(v) for ld, v in zip(problem.lead_names, r)},
        "leads": list(problem.lead_names),
        "n_chains": int(n_chain),
        "n_draws": int(n_draw),
        "spec": problem.spec.name,
        "n_nodes": int(act.shape[-1]),
        "n_sites": int(len(problem.site_nodes)),
        "inference_mesh": {
            "n_nodes": problem.mesh.n_nodes,
            "n_tets": problem.mesh.n_tets,
            "coarsened": problem.to_display is not None,
        },
        "velocities_inferred": bool(problem.spec.infer_scale),
        "identifiability": {
            "mean_sd_ms": ident["mean_sd_ms"],
            "median_width90_ms": ident["median_width90_ms"],
            "mean_shrinkage": ident["mean_shrinkage"],
            "n_modes": int(modes["weights"].size),
            "n_modes_effective": modes["n_effective"],
            "mode_weights": [float(w) for w in modes["weights"][:10]],
            "total_activation_ms": ident["total_activation_ms"],
            "active_pmjs": {
                "median": float(np.median(n_active)),
                "q05": float(np.quantile(n_active, 0.05)),
                "q95": float(np.quantile(n_active, 0.95)),
                "of": int(n_pmj),
            },
        },
        "posterior_means": {
            k: float(np.mean(v)) for k, v in draws.items() if np.asarray(v).ndim == 2
        },
        "notes": list(result.notes),
    }
    if fe is not None:
        rms = fe["overall_rms_ms"]
        summary["forward_error"] = {
            "rms_ms": rms,
            "max_ms": float(np.max(fe["rms_ms"])),
            "mean_bias_ms": float(np.mean(fe["bias_ms"])),
            "n_draws": fe["n_draws"],
            "seconds": round(float(fe["seconds"]), 2),
            "in_intervals": True,
        }
        summary["notes"].append(
            f"the fast path is {rms:.1f} ms RMS off the full eikonal solver at {fe['n_draws']} posterior draws "
            f"(posterior sd alone: {ident['mean_sd_ms']:.1f} ms on average); activation_sd_ms, activation_q05_ms and "
            "activation_q95_ms include that error (forward_error_ms per node)"
        )
    if n_pmj > 1 and np.median(n_active) <= 0.75 * n_pmj:
        summary["notes"].append(
            f"the posterior activates the heart from about {np.median(n_active):.0f} of the {n_pmj} PMJs "
            f"(90 % of draws: {np.quantile(n_active, 0.05):.0f}-{np.quantile(n_active, 0.95):.0f}); the others "
            "fire after the wave has reached them (dormant) and shape nothing"
            + ("; they are free to roam the layer, which makes NUTS trees long" if result.method == "nuts" else "")
        )
    sig = np.asarray(draws["sigma_mV"])
    if sig.ndim == 3:  # [noise] per_lead: the posterior mean noise sd of each lead, mV
        summary["sigma_mV_per_lead"] = {n: float(v) for n, v in zip(problem.lead_names, sig.mean((0, 1)))}
    if result.optima:
        summary["map_optima"] = result.optima
    summary["map_search_rounds"] = int(result.search_rounds)
    summary["map_search_smooth_ms"] = float(result.search_smooth_ms)
    if problem.baseline is not None:
        summary["ecg_baseline"] = problem.baseline
        if problem.baseline["source"] == "auto" and problem.baseline["off_zero"]:
            pct = 100 * problem.baseline["max_level_rel"]
            summary["notes"].append(
                f"the ECG window starts or ends off zero (a lead's level up to {pct:.0f} % of the peak): "
                + (
                    "a per-lead baseline (level and ramp) was fitted and integrated out (ecg_baseline; "
                    "set [ecg] baseline in the spec to override)"
                    if problem.baseline["term"] != "none"
                    else "the Student-t likelihood has no baseline term, so the levels are fitted by the model ECG"
                )
            )
    if problem.pmj_times is not None:
        summary["pmj_time_prior"] = dict(problem.pmj_times)
        if result.time_prior is not None:
            summary["pmj_time_prior"]["selection"] = result.time_prior
        widened = result.time_prior is not None and result.time_prior["chosen"] == "window"
        if problem.pmj_times["extended"] and not widened:
            on = problem.pmj_times["qrs_onset_ms"]
            summary["notes"].append(
                f"the QRS starts {on:.0f} ms into the fitted ECG: PMJ initiation times were given the prior "
                f"Uniform(0, {problem.pmj_times['t_max_ms']:.0f}) ms (t_max_ms raised by the onset)"
            )
    if problem.to_display is not None:
        summary["notes"].append(
            f"the fit ran on an inference mesh of {problem.mesh.n_nodes} nodes carved from the "
            f"{problem.output_mesh.n_nodes}-node mesh (--inference-mesh); activation maps are "
            "interpolated back to the mesh's nodes"
        )
    if result.method == "nuts":
        div = int(np.sum(result.sample_stats["diverging"]))
        summary.update(
            {
                "max_rhat": diag["max_rhat"],
                "min_ess_bulk": diag["min_ess_bulk"],
                "min_ess_tail": diag["min_ess_tail"],
                "divergences": div,
                "chains_agree": chains_agree,
                "mean_tree_steps": float(np.mean(result.sample_stats["n_steps"])),
                "chain_method": result.chain_method,
                "seconds_per_ess": float(result.seconds / max(diag["min_ess_bulk"], 1e-9)),
            }
        )
        node["rhat"] = diag["rhat_activation"]
        if stack is not None:
            w = stack["weights"]
            summary["chain_stacking"] = {
                "weights": [round(float(x), 4) for x in w],
                "elpd_loo": [float(x) for x in stack["elpd_loo"]],
                "elpd_loo_stacked": stack["elpd_loo_stacked"],
                "applied": pool is not None,
            }
            if pool is not None:
                summary["notes"].append(
                    "the chains disagree, so the summaries pool them by stacking weights ("
                    + ", ".join(f"{x:.2f}" for x in w)
                    + "): each chain counts by how well it predicts ECG samples left out of the fit, not by "
                    "how many chains started in its basin (chain_stacking; --combine-chains equal pools them "
                    "equally; posterior.nc holds the chains as sampled)"
                )
        if result.max_tree_depth is not None:
            sat = S.tree_depth_saturation(result.sample_stats["n_steps"], result.max_tree_depth)
            summary["max_tree_depth"] = int(result.max_tree_depth)
            summary["tree_depth_saturation"] = sat
            if np.isfinite(sat) and sat >= TREE_CAP_NOTE:
                d = int(result.max_tree_depth)
                deeper = (
                    f"--max-tree-depth {d + 2} lets trajectories run 4 times longer, at up to 4 times the cost "
                    "per draw" if d + 2 <= 12 else "more draws (--num-samples) make up for it"
                )
                summary["notes"].append(
                    f"{100 * sat:.0f}% of NUTS iterations stopped at the tree-depth cap ({2**d - 1} leapfrog "
                    f"steps, --max-tree-depth {d}): the trajectories were cut short, so successive draws are "
                    "more correlated (see min_ess_bulk). PMJs that shape no node (dormant) are flat directions "
                    f"that cause this; {deeper}"
                )
        for c, eps, others in S.stuck_chains(result.sample_stats["step_size"]):
            summary["notes"].append(
                f"chain {c + 1} adapted a leapfrog step of {eps:.2g}, over 20 times smaller than the other "
                f"chains' ({others:.2g}): it barely moved, so its draws are nearly one point; rerun with "
                "another --seed or drop that chain"
            )
        within = float("nan")
        if result.chain_optimum is not None and len(result.chain_optimum) == n_chain:
            within = S.rhat_within_groups(act_chains, extras["ecg_model"], result.chain_optimum)["max_rhat"]
        summary["max_rhat_within_optima"] = within if np.isfinite(within) else None
        if not chains_agree:
            if len(set(result.chain_optimum or [])) > 1 and np.isfinite(within) and within <= 1.05:
                summary["notes"].append(
                    f"chains disagree (R-hat {diag['max_rhat']:.2f} on activation times) but agree within "
                    f"each MAP optimum they started in (R-hat {within:.2f}): the posterior has several "
                    "modes, weighted by their Laplace evidence (map_optima)"
                )
            elif np.isfinite(within):
                summary["notes"].append(
                    f"chains disagree (R-hat {diag['max_rhat']:.2f} on activation times), even those "
                    f"started in the same MAP optimum (R-hat {within:.2f}): not yet mixed; run longer, "
                    "and read the intervals as too narrow"
                )
            else:
                summary["notes"].append(
                    "chains disagree (R-hat > 1.05 on activation times): the posterior is multimodal "
                    "or not yet mixed; see the modes and run longer/more chains"
                )
    node["p_early"] = ident["p_early"]
    node["shrinkage"] = ident["shrinkage"]
    return node, summary, {"bands": bands, "modes": modes}


def _ecg_csv_text(problem: FitProblem, bands: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["time_ms", "lead", "observed_mV", "mean_mV", "q05_mV", "q95_mV"])
    t = np.asarray(problem.data.times)
    for li, ld in enumerate(problem.lead_names):
        for ti in range(t.size):
            w.writerow(
                [f"{t[ti]:g}", ld]
                + [f"{v[li, ti]:.6g}" for v in (problem.obs, bands["mean"], bands["q05"], bands["q95"])]
            )
    return buf.getvalue()


_WINDOW_SOURCE = {"auto": "found automatically", "given": "as given by --qrs", "whole": "the whole recording"}


#: A note in summary.json when at least this fraction of NUTS iterations hit the tree-depth cap.
TREE_CAP_NOTE = 0.5

#: Mantissa bits kept of the stored activation draws (of float32's 23): a relative error
#: ≤ 2^-17, i.e. ≤ 0.001 ms below 131 ms, far below the fast path's ~1 ms accuracy, and
#: the gzip-compressed file of a patient-mesh fit shrinks by ~40 % (benchmarks/RESULTS.md).
ACTIVATION_MANTISSA_BITS = 16


def _bitround(a: np.ndarray, keep: int) -> np.ndarray:
    """Round float32 values to ``keep`` mantissa bits (round half up on the bit pattern)."""
    a = np.ascontiguousarray(a, np.float32)
    drop = 23 - keep
    u = a.view(np.uint32)
    out = ((u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)).view(np.float32)
    return np.where(np.isfinite(a), out, a)


def write_posterior_netcdf(data, path: Path) -> None:
    """Write the fit's ArviZ data to NetCDF, compressed.

    Float arrays over 1 MB are stored gzip-compressed (level 4, byte shuffle), losslessly,
    except the activation draws (``activation_ms`` of ``posterior`` and ``prior``), which
    keep :data:`ACTIVATION_MANTISSA_BITS` mantissa bits first. Readers need nothing special
    (``arviz.from_netcdf``, ``xarray.open_datatree``).

    Parameters
    ----------
    data : arviz DataTree (or InferenceData)
        From :func:`to_inference_data`; not modified.
    path : path
        The ``.nc`` file to write.
    """
    import xarray as xr

    if not hasattr(data, "subtree"):  # arviz < 1: InferenceData compresses on its own
        data.to_netcdf(str(path))
        return
    data = data.copy()
    encoding: dict = {}
    for node in data.subtree:
        if not node.has_data or node.is_root:
            continue
        ds = node.to_dataset()
        changed = False
        enc = {}
        for name, var in ds.data_vars.items():
            if name == "activation_ms" and var.dtype == np.float32:
                ds[name] = var.copy(data=_bitround(var.values, ACTIVATION_MANTISSA_BITS))
                changed = True
            if np.issubdtype(var.dtype, np.floating) and var.nbytes > 1 << 20:
                enc[name] = {"zlib": True, "complevel": 4, "shuffle": True}
        if changed:
            data[node.path] = xr.DataTree(ds)
        if enc:
            encoding[node.path] = enc
    data.to_netcdf(str(path), encoding=encoding)


def write_fit_outputs(
    out: Path,
    problem: FitProblem,
    result: FitResult,
    seed: int = 0,
    ecg_window: dict | None = None,
    forward_error_draws: int = FORWARD_ERROR_DRAWS,
    progress: bool = False,
    combine_chains: str = COMBINE_CHAINS,
) -> dict:
    """Write posterior.nc, activation_summary.vtu, ecg_posterior.csv, summary.json, modes.npz.

    ``out`` should be a staging directory (see :func:`cdt_bayes._io.atomic_output_dir`).
    ``ecg_window`` (which part of the recording was fitted, in its own times, ms) goes into
    ``summary.json`` as ``ecg_window``, with a note when the recording was cut.
    ``forward_error_draws`` draws are re-solved by the full eikonal solver
    (:func:`cdt_bayes._inference.forward_error`); the activation sd and 90 % interval
    then include the fast path's error, ``forward_error_ms`` is written per node and
    ``summary.json`` gets ``forward_error``. 0 (or a MAP fit) leaves them out.
    ``combine_chains`` (``"stacking"`` or ``"equal"``): how NUTS chains that disagree are
    pooled into the summaries (:func:`summarise`); ``posterior.nc`` keeps them as sampled.
    """
    from ._io import save_mesh_vtu

    data, extras = to_inference_data(problem, result, seed, forward_error_draws=forward_error_draws, progress=progress)
    node, summary, more = summarise(problem, result, extras, combine_chains)
    write_posterior_netcdf(data, out / "posterior.nc")
    pd = {
        "activation_mean_ms": node["mean"],
        "activation_sd_ms": node["sd"],
        "activation_q05_ms": node["q05"],
        "activation_q95_ms": node["q95"],
        "activation_width90_ms": node["width90"],
        "p_early": node["p_early"],
        "shrinkage": node["shrinkage"],
    }
    if extras["forward_error"] is not None:
        pd["forward_error_ms"] = extras["forward_error"]["rms_ms"]
    if "rhat" in node:
        pd["rhat"] = node["rhat"]
    pd = {k: np.asarray(v, np.float64) for k, v in pd.items()}
    save_mesh_vtu(out / "activation_summary.vtu", problem.output_mesh, pd)
    (out / "ecg_posterior.csv").write_text(_ecg_csv_text(problem, more["bands"]))
    modes = more["modes"]
    flat_mu = extras["ecg_model"].reshape((-1,) + problem.obs.shape)
    np.savez_compressed(
        out / "modes.npz",
        weights=modes["weights"],
        mean_maps=modes["mean_maps"].astype(np.float32),
        representative=modes["representative"],
        ecg=flat_mu[modes["representative"]].astype(np.float32),
        time_ms=np.asarray(problem.data.times),
        leads=np.asarray(problem.lead_names),
        n_effective=modes["n_effective"],
    )
    if ecg_window is not None:
        summary["ecg_window"] = {k: v for k, v in ecg_window.items() if k != "message"}
        cut = ecg_window.get("cut", ecg_window.get("source") == "given")
        if cut or ecg_window.get("offset_ms", 0.0) != 0.0:
            summary["notes"].append(
                f"The fitted ECG is {ecg_window['start_ms']:g}-{ecg_window['end_ms']:g} ms of the recording "
                f"({_WINDOW_SOURCE.get(ecg_window['source'], ecg_window['source'])}); "
                "its times, and those of ecg_posterior.csv, start at 0 at the window's start."
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def _read_ecg(path: str, qrs="auto"):
    """Read the ECG of ``cdt-bayes fit`` and keep the window to fit.

    ``qrs``: ``"auto"`` (:func:`cdt_bayes._qrs.qrs_window`), ``"whole"``/``None`` (all of
    it) or ``(start_ms, end_ms)``. Returns ``time_ms, lead_names, values, window``, where
    ``window`` (for ``summary.json``) says which part of the recording was kept, in its own
    times; the returned times start at 0 at the window's start.
    """
    from ._io import read_ecg_csv, read_wfdb_ecg
    from ._qrs import crop_ecg, qrs_window

    p = Path(path)
    given = None
    if qrs is not None and not isinstance(qrs, str):
        given = {"source": "given", "start_ms": float(qrs[0]), "end_ms": float(qrs[1])}
    if p.suffix.lower() in (".hea", ".dat") or (not p.exists() and p.with_suffix(".hea").exists()):
        t, names, vals = read_wfdb_ecg(str(p.with_suffix("")), qrs=qrs if given else None)
        if given:  # the reader cut and re-timed the window already
            return t, list(names), vals, given | {"offset_ms": given["start_ms"]}
    else:
        t, names, vals = read_ecg_csv(path)
    names = list(names)
    window = given or {"source": "whole", "start_ms": float(t[0]), "end_ms": float(t[-1])}
    if qrs == "auto":
        found = qrs_window(t, vals, name=str(path))
        window = {
            "source": "auto",
            "start_ms": found.start_ms,
            "end_ms": found.end_ms,
            "qrs_onset_ms": found.onset_ms,
            "qrs_end_ms": found.end_qrs_ms,
            "n_beats": found.n_beats,
            "cut": found.cut,
            "message": found.reason,
        }
    t, vals, offset = crop_ecg(t, vals, window["start_ms"], window["end_ms"], name=f"{path} (QRS window)")
    return t, names, vals, window | {"offset_ms": offset}


#: An ECG peak above this (mV) is most likely in µV: real QRS complexes peak at 0.5-5 mV.
ECG_PEAK_WARN_MV = 50.0


def warn_ecg_scale(name: str, values) -> bool:
    """Warn (and return True) when an ECG peaks above :data:`ECG_PEAK_WARN_MV`, likely µV."""
    import warnings

    v = np.asarray(values, np.float64)
    peak = float(np.nanmax(np.abs(v))) if v.size else 0.0
    if peak <= ECG_PEAK_WARN_MV:
        return False
    warnings.warn(
        f"{name}: the ECG peaks at {peak:.4g}, over {ECG_PEAK_WARN_MV:g} mV: are the values in µV? "
        "The fit infers the gain, so it runs, but the noise sd and the ECG outputs are in the file's units",
        UserWarning,
        stacklevel=2,
    )
    return True


def _check_ecg_leads(args, names, electrodes) -> None:
    """The ECG's leads must be computable from the electrodes; the error names both files.

    With ``--leads`` only those leads are fitted, and the model checks them itself.
    """
    from ._ecg import lead_matrix
    from ._errors import InputFileError

    if getattr(args, "leads", None):
        return
    try:
        lead_matrix(list(electrodes), list(names))
    except CdtBayesError as e:
        msg = " ".join(str(e).split())
        raise InputFileError(f"{args.ecg}: {msg} (electrodes from {args.electrodes})") from None


def run_fit_cli(args) -> int:
    """Implementation of ``cdt-bayes fit`` (called by the CLI layer)."""
    from ._io import atomic_output_dir, check_length_units, load_mesh, read_electrodes_csv
    from ._model import load_spec

    progress = not getattr(args, "no_progress", False)
    mesh = load_mesh(args.mesh, units=args.units, endo_lv=args.endo_lv, endo_rv=args.endo_rv)
    t, names, vals, window = _read_ecg(args.ecg, getattr(args, "qrs", "auto"))
    electrodes = read_electrodes_csv(args.electrodes)
    check_length_units(mesh, electrodes, args.mesh, args.electrodes)
    _check_ecg_leads(args, names, electrodes)
    if progress and window["source"] == "auto":
        print(window["message"] + " (--qrs START END or --qrs whole to choose)", file=sys.stderr)
    warn_ecg_scale(args.ecg, vals)
    overrides = {"n_pmj": args.n_pmj}
    if args.cv_fiber is not None or args.cv_cross is not None:
        base = load_spec(args.spec or "default")
        overrides.update(
            infer_scale=False,
            cv_fiber=args.cv_fiber or base.cv_fiber,
            cv_cross=args.cv_cross or base.cv_cross,
        )
    if args.leads:
        overrides["leads"] = tuple(args.leads)
    if getattr(args, "baseline", None):
        overrides["baseline"] = args.baseline
    spec = load_spec(args.spec or "default", **overrides)
    # the onset found in the whole recording, in the window's times (re-detecting it in the
    # cut window is unreliable: the window starts only MARGIN_START_MS before it)
    onset = window["qrs_onset_ms"] - window["start_ms"] if window["source"] == "auto" else None
    problem = build_problem_cli(
        mesh, t, names, vals, electrodes, spec, progress, args.mesh, getattr(args, "inference_mesh", "auto"),
        qrs_onset_ms=onset,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / ".checkpoint"
    if not args.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    result = fit(
        problem,
        args.method,
        chains=args.chains,
        num_warmup=args.num_warmup,
        num_samples=args.num_samples,
        seed=args.seed,
        checkpoint_dir=ckpt,
        time_budget_s=args.time_budget,
        chain_starts=getattr(args, "chain_starts", "evidence"),
        max_tree_depth=getattr(args, "max_tree_depth", 8),
        chain_method=getattr(args, "chain_method", "auto"),
        search_rounds=getattr(args, "search_rounds", None),
        search_smooth_ms=getattr(args, "search_smooth_ms", None),
        progress=progress,
    )
    with atomic_output_dir(out) as stage:
        summary = write_fit_outputs(
            Path(stage), problem, result, args.seed, ecg_window=window,
            forward_error_draws=getattr(args, "forward_error_draws", FORWARD_ERROR_DRAWS), progress=progress,
            combine_chains=getattr(args, "combine_chains", COMBINE_CHAINS),
        )
    shutil.rmtree(ckpt, ignore_errors=True)
    msg = f"fit ({summary['method']}, {summary['seconds']:.0f} s): ECG correlation {summary['ecg_correlation']:.3f}"
    if "max_rhat" in summary:
        msg += (
            f", max R-hat {summary['max_rhat']:.3f}, min bulk ESS {summary['min_ess_bulk']:.0f}, "
            f"divergences {summary['divergences']}"
        )
    if "forward_error" in summary:
        msg += f", forward error {summary['forward_error']['rms_ms']:.1f} ms RMS (in the intervals)"
    print(msg, file=sys.stderr)
    for f in ("posterior.nc", "activation_summary.vtu", "ecg_posterior.csv", "summary.json"):
        print(out / f)
    return 0


def build_problem_cli(mesh, t, names, vals, electrodes, spec, progress, name, inference_mesh="auto", qrs_onset_ms=None):
    """:func:`build_problem` with the user cache directory."""
    from ._inference import build_problem

    problem = build_problem(
        mesh, t, names, vals, electrodes, spec,
        cache_dir=cache_dir(), progress=progress, name=name, inference_mesh=inference_mesh,
        qrs_onset_ms=qrs_onset_ms,
    )
    if progress and problem.to_display is not None:
        print(
            f"{name}: {mesh.n_nodes} nodes; fitted on an inference mesh of {problem.mesh.n_nodes} "
            f"nodes, {problem.mesh.n_tets} tets (--inference-mesh {inference_mesh})",
            file=sys.stderr,
        )
    return problem
