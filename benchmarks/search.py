"""MAP-search benchmark: how close the multi-start search (and basin hopping) gets to the main mode.

    python benchmarks/search.py [--seeds 0,1,2] [--rounds 0,6] [--smooth-ms 0]
                                [--n-pmj 20] [--noise 0.02] [--out benchmarks/RESULTS.md]

On the inference benchmark's case (``benchmarks/inference.py``: the built-in heart, 8
known PMJs by the full eikonal, 12 leads, 2 % noise; model K = 20), every NUTS chain and
the SVI guide start from the optima of :func:`cdt_bayes._inference.find_map`, so a search
that misses the posterior's main mode decides the accuracy of every method. This runs
the search for each seed and setting and compares its best optimum with a reference: the
true PMJs as a start (each moved to the nearest admissible node, the surplus PMJs copies
of them fired at the end of the time prior, i.e. dormant), polished by Adam at β = 1.

Columns: ``seconds``; ``best_neg_log_p`` (the best optimum's negative log joint);
``gap_nats`` (how far that is above the reference's; > 0: the search missed the mode the
reference sits in); ``rmse_best_ms`` (posterior-activation error of the best optimum vs
the truth); ``rmse_mean_ms`` (mean over the kept optima); ``active_pmjs`` (PMJs of the best
optimum that fire first at some node). Appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.util import unconstrain_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import benchmark_truth, case_problem, emit, results_block  # noqa: E402

from cdt_bayes._inference import (  # noqa: E402
    LATENT_SITES,
    _adam_program,
    _prior_unconstrained,
    _setup,
    _tempered_potential,
    find_map,
    posterior_activation,
)
from cdt_bayes._model import cdt_model, load_spec, model_ecg  # noqa: E402


def _constrained(postf, u):
    smp = jax.jit(jax.vmap(postf))(u)
    return {k: np.asarray(v) for k, v in smp.items() if k in LATENT_SITES}


def _activation(prob, postf, u) -> np.ndarray:
    """(n_optima, n_nodes) ms: activation of each optimum in the batch ``u``."""
    d = {k: v[None] for k, v in _constrained(postf, u).items()}
    return posterior_activation(prob, d)[0]


def _active_pmjs(prob, draws: dict, i: int = 0) -> int:
    """PMJs of optimum ``i`` that are the earliest source at one node or more (fast path)."""
    from cdt_bayes._model import dictionary_activation

    data, spec = prob.data, prob.spec
    z, t = jnp.asarray(draws["pmj_xyz_mm"][i]), jnp.asarray(draws["pmj_t_ms"][i])
    s = float(draws["cv_scale"][i]) if "cv_scale" in draws else 1.0
    per = [
        np.asarray(dictionary_activation(z[k : k + 1], t[k : k + 1], s, data, spec.kernel_mm, 1e-3,
                                         spec.cone_smoothing_ms, interpolation=spec.interpolation))
        for k in range(spec.n_pmj)
    ]
    return int(np.unique(np.argmin(np.stack(per), 0)).size)


def reference(case, prob, postf, supports, key):
    """The truth as a start, polished by Adam at β = 1.

    Returns ``(neg_log_p, rmse_ms, seconds, active_pmjs, u)``; ``u`` is the polished point
    (unconstrained, leading dimension 1).
    """
    t0 = time.time()
    spec = prob.spec
    xyz, tt = np.asarray(case["pmj_xyz"]), np.asarray(case["pmj_t"])
    k = spec.n_pmj
    idx = np.arange(k) % len(tt)
    z = xyz[idx]
    t = np.where(np.arange(k) < len(tt), tt[idx], 0.98 * spec.t_max_ms)
    sites = np.asarray(prob.data.prior_sites)
    z = sites[np.argmin(((z[:, None] - sites[None]) ** 2).sum(-1), 1)]  # inside the layer
    vals = {
        "pmj_xyz_mm": jnp.asarray(z, jnp.float32),
        "pmj_t_ms": jnp.asarray(np.clip(t, 0.05, spec.t_max_ms - 0.05), jnp.float32),
        "cv_scale": jnp.float32(1.0),
        "gain": jnp.asarray(prob.data.gain0, jnp.float32),
        "sigma_mV": jnp.float32(0.1),
    }
    args, kw = prob.model_args()

    def unconstrained(v):
        u = unconstrain_fn(cdt_model, args, kw, {n: x for n, x in v.items() if n in supports})
        return jax.tree.map(lambda x: x[None], {n: u[n] for n in supports})

    # gain and noise sd by least squares at the true activation, so the polish starts in the basin
    act = _activation(prob, postf, unconstrained(vals))[0]
    mu = np.asarray(model_ecg(jnp.asarray(act, jnp.float32), 1.0, 0.0, prob.data))
    obs = np.asarray(prob.obs)
    g = float(np.sum(obs * mu) / np.sum(mu * mu))
    vals["gain"] = jnp.float32(g)
    vals["sigma_mV"] = jnp.float32(np.sqrt(np.mean((obs - g * mu) ** 2)))
    u = unconstrained(vals)
    u_fn = _tempered_potential(prob)
    draws = _prior_unconstrained(prob, key, 2048, supports)
    spread = {n: float(np.std(np.asarray(v))) + 1e-3 for n, v in draws.items()}
    loss = None
    for fac, steps in ((0.1, 400), (0.02, 800)):  # small steps: polish, do not leave the basin
        rates = {n: jnp.asarray(fac * 0.75 * spread[n] / spread["pmj_xyz_mm"], jnp.float32) for n in u}
        u, loss, _ = _adam_program(u_fn, steps, 1e-6, 1.0)(u, rates, jnp.float32(0.0))
    act = _activation(prob, postf, u)[0]
    rmse = float(np.sqrt(np.mean((act - case["truth"]) ** 2)))
    return float(np.asarray(loss)[0]), rmse, time.time() - t0, _active_pmjs(prob, _constrained(postf, u)), u


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", default="0,6", help="basin-hopping rounds to compare (comma-separated)")
    ap.add_argument("--smooth-ms", default="0", help="search misfit smoothing widths to compare (ms)")
    ap.add_argument("--n-pmj", type=int, default=20)
    ap.add_argument("--n-starts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--noise", type=float, default=0.02, help="noise sd as a fraction of the ECG peak (0.02: 2 %%)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)

    case = benchmark_truth(args.noise)
    prob, _ = case_problem(case, load_spec("default", n_pmj=args.n_pmj))
    truth = case["truth"]
    _, _, postf, supports = _setup(prob, jax.random.key(0))
    ref_loss, ref_rmse, ref_s, ref_active, _ = reference(case, prob, postf, supports, jax.random.key(0))
    print(f"reference (truth start, polished): -log p {ref_loss:.1f}, RMSE {ref_rmse:.2f} ms, {ref_s:.0f} s",
          flush=True)

    rows = []
    for smooth in [float(x) for x in args.smooth_ms.split(",")]:
        for rounds in [int(x) for x in args.rounds.split(",")]:
            for seed in [int(x) for x in args.seeds.split(",")]:
                t0 = time.time()
                u, loss, _, postf, _ = find_map(prob, jax.random.key(seed), n_starts=args.n_starts,
                                                steps=args.steps, progress=False, search_rounds=rounds,
                                                smooth_ms=smooth)
                sec = time.time() - t0
                rmse = np.sqrt(np.mean((_activation(prob, postf, u) - truth) ** 2, axis=1))
                row = {
                    "smooth_ms": smooth, "rounds": rounds, "seed": seed, "seconds": round(sec, 1),
                    "best_neg_log_p": round(float(loss[0]), 1), "gap_nats": round(float(loss[0]) - ref_loss, 1),
                    "rmse_best_ms": round(float(rmse[0]), 2), "rmse_mean_ms": round(float(np.mean(rmse)), 2),
                    "active_pmjs": _active_pmjs(prob, _constrained(postf, u)),
                }
                rows.append(row)
                print(row, flush=True)
    cols = ["smooth_ms", "rounds", "seed", "seconds", "best_neg_log_p", "gap_nats", "rmse_best_ms",
            "rmse_mean_ms", "active_pmjs"]
    case_text = (
        f"Case: the inference benchmark's (8 true PMJs, {100 * args.noise:g}% noise, K = {args.n_pmj}); search {args.n_starts} starts x "
        f"{args.steps} Adam steps, then `rounds` basin-hopping rounds.  \n"
        f"Reference, the truth as a start polished by Adam: **−log p {ref_loss:.1f}**, RMSE {ref_rmse:.2f} ms, "
        f"{ref_active} active PMJs."
    )
    emit(results_block("MAP search", "search.py", argv, case_text, rows, cols), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
