"""NUTS inside the posterior's main mode: what makes the trees hit the depth cap.

    python benchmarks/mode_mixing.py [--configs 8:0,20:0,20:1,20:100] [--warmup 150]
                                     [--samples 300] [--out benchmarks/RESULTS.md]

On the inference benchmark's case (``benchmarks/inference.py``: the built-in heart, 8 known
PMJs by the full eikonal, 12 leads, 2 % noise) one NUTS chain starts at the reference point
of ``benchmarks/search.py`` (the true PMJs, surplus PMJs dormant, polished by Adam), with the
Laplace inverse mass ``|H|⁻¹`` of that point, as ``fit`` builds it. So the search plays no
part: this isolates the sampler inside the mode next to the truth.

Each config ``K:N`` fits ``K`` PMJs and holds fixed, at the reference point, every PMJ that is
the earliest source of fewer than ``N`` nodes there (``N = 0``: none held; ``N = 1``: the
dormant ones). The chain samples the rest (and velocity scale, gain, noise).

Columns: ``free_pmjs``; ``seconds`` (warm-up + draws, compilation included); ``steps``
(mean leapfrog steps per draw; 255 is the cap at depth 8); ``step_size``; ``rmse_ms``,
``coverage90``, ``mean_sd_ms`` of the posterior activation against the truth; split R-hat
(max and median over every 25th node's activation, from the chain's two halves);
``ess_min`` / ``ess_median`` the bulk ESS of those activations and ``s_per_ess`` the seconds
per effective draw of the worst of them;
``coverage90_fe`` the coverage of the intervals ``fit`` writes (with the fast path's forward
error folded in) and ``forward_error_ms`` that error's RMS over nodes. Appends the table to
RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import benchmark_truth, case_problem, emit, results_block  # noqa: E402
from search import _constrained, reference  # noqa: E402

from cdt_bayes import _summaries as S  # noqa: E402
from cdt_bayes._inference import (  # noqa: E402
    LATENT_SITES,
    _abs_eig_inverse,
    _hessian_fn,
    _setup,
    forward_error,
    posterior_activation,
)
from cdt_bayes._model import dictionary_activation, load_spec  # noqa: E402


def owned_nodes(prob, c: dict) -> np.ndarray:
    """(K,) nodes at which each PMJ of the constrained point ``c`` fires first (exact minimum)."""
    data, spec = prob.data, prob.spec
    s = float(c.get("cv_scale", 1.0))
    per = np.stack([
        np.asarray(dictionary_activation(jnp.asarray(c["pmj_xyz_mm"][k : k + 1]), jnp.asarray(c["pmj_t_ms"][k : k + 1]),
                                         s, data, spec.kernel_mm, 1e-3, spec.cone_smoothing_ms,
                                         interpolation=spec.interpolation))
        for k in range(spec.n_pmj)
    ])
    return np.bincount(np.argmin(per, 0), minlength=spec.n_pmj)


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat of one chain ``x`` (n_draws, n_quantities), from its two halves."""
    n = x.shape[0] // 2
    ch = np.stack([x[:n], x[n : 2 * n]])
    b = n * ch.mean(1).var(0, ddof=1)
    w = ch.var(1, ddof=1).mean(0)
    return np.sqrt(((n - 1) / n * w + b / n) / np.maximum(w, 1e-12))


def run_config(case, prob, pot, postf, u0: dict, min_nodes: int, warmup: int, samples: int, depth: int, seed: int):
    own = owned_nodes(prob, {k: np.asarray(v) for k, v in postf(u0).items()})
    free = np.where(own >= min_nodes)[0]

    def merge(v):
        u = {k: x for k, x in v.items() if k not in ("xyz", "t")}
        u["pmj_xyz_mm"] = u0["pmj_xyz_mm"].at[free].set(v["xyz"])
        u["pmj_t_ms"] = u0["pmj_t_ms"].at[free].set(v["t"])
        return u

    v0 = {k: x for k, x in u0.items() if k not in ("pmj_xyz_mm", "pmj_t_ms")}
    v0["xyz"], v0["t"] = u0["pmj_xyz_mm"][free], u0["pmj_t_ms"][free]
    pot_free = jax.jit(lambda v: pot(merge(v)))
    flat, hess = _hessian_fn(pot_free, v0)
    inv, _ = _abs_eig_inverse(np.asarray(hess(flat), np.float64), 1e-2)
    kernel = NUTS(potential_fn=pot_free, inverse_mass_matrix=jnp.asarray(inv, jnp.float32), dense_mass=True,
                  adapt_mass_matrix=False, max_tree_depth=depth)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, progress_bar=False)
    t0 = time.time()
    mcmc.run(jax.random.key(seed), init_params=v0, extra_fields=("num_steps", "adapt_state.step_size"))
    jax.block_until_ready(mcmc.get_samples())  # the run is dispatched asynchronously
    sec = time.time() - t0
    extra = mcmc.get_extra_fields()
    full = jax.vmap(merge)(mcmc.get_samples())
    draws = {k: v[None] for k, v in _constrained(postf, full).items() if k in LATENT_SITES}
    act = posterior_activation(prob, draws)[0]
    truth = case["truth"]
    lo, hi = np.percentile(act, [5, 95], axis=0)
    rh = split_rhat(act[:, ::25])
    ess = S.ess(act[None, :, ::25], "bulk")
    fe = forward_error(prob, draws)  # what fit folds into its intervals
    node = S.activation_summary(act[None], fe["rms_ms"])
    return {
        "free_pmjs": int(free.size), "seconds": round(sec, 1), "steps": round(float(np.mean(extra["num_steps"])), 1),
        "step_size": round(float(np.asarray(extra["adapt_state.step_size"])[-1]), 4),
        "rmse_ms": round(float(np.sqrt(np.mean((act.mean(0) - truth) ** 2))), 2),
        "coverage90": round(float(np.mean((truth >= lo) & (truth <= hi))), 2),
        "coverage90_fe": round(float(np.mean((node["q05"] <= truth) & (truth <= node["q95"]))), 2),
        "forward_error_ms": round(fe["overall_rms_ms"], 2),
        "mean_sd_ms": round(float(act.std(0).mean()), 2),
        "rhat_max": round(float(np.nanmax(rh)), 3), "rhat_median": round(float(np.nanmedian(rh)), 3),
        "ess_min": round(float(np.nanmin(ess)), 1), "ess_median": round(float(np.nanmedian(ess)), 1),
        "s_per_ess": round(sec / max(float(np.nanmin(ess)), 1e-9), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="8:0,20:0,20:1,20:100",
                    help="K:N pairs: K PMJs, those owning fewer than N nodes at the start held fixed")
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)

    case = benchmark_truth()
    rows, refs = [], {}
    for item in args.configs.split(","):
        k, n = (int(x) for x in item.split(":"))
        if k not in refs:
            prob, _ = case_problem(case, load_spec("default", n_pmj=k))
            _, pot, postf, supports = _setup(prob, jax.random.key(0))
            loss, rmse, _, active, u = reference(case, prob, postf, supports, jax.random.key(0))
            refs[k] = (prob, pot, postf, jax.tree.map(lambda x: x[0], u), loss, active)
            print(f"K = {k}: reference −log p {loss:.1f}, RMSE {rmse:.2f} ms, {active} active PMJs", flush=True)
        prob, pot, postf, u0, loss, active = refs[k]
        row = {"n_pmj": k, "held_below_nodes": n, "ref_neg_log_p": round(loss, 1)}
        row.update(run_config(case, prob, pot, postf, u0, n, args.warmup, args.samples, args.max_tree_depth, args.seed))
        rows.append(row)
        print(row, flush=True)
    cols = ["n_pmj", "held_below_nodes", "free_pmjs", "ref_neg_log_p", "seconds", "steps", "step_size", "rmse_ms",
            "coverage90", "coverage90_fe", "forward_error_ms", "mean_sd_ms", "rhat_max", "rhat_median",
            "ess_min", "ess_median", "s_per_ess"]
    case_text = (
        f"Case: the inference benchmark's (8 true PMJs); one chain, {args.warmup} warm-up + {args.samples} draws, "
        f"depth {args.max_tree_depth}, from the truth-start reference of `benchmarks/search.py`."
    )
    emit(results_block("NUTS inside the main mode", "mode_mixing.py", argv, case_text, rows, cols), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
