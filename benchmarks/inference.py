"""Inference benchmark on the built-in default (~5k nodes, 12 leads): MAP, SVI, NUTS.

    python benchmarks/inference.py [--n-pmj 20] [--chains 4] [--warmup 500] [--samples 500]
                                   [--nuts-budget SECONDS] [--methods map,svi,nuts]
                                   [--chain-starts evidence|distinct] [--spec default] [--seed 0]
                                   [--noise 0.02]
                                   [--out benchmarks/RESULTS.md]

Synthetic truth: 8 known PMJs (full eikonal solver), 2% noise (``--noise``: another level). Reports wall times (the
distance dictionary separately: it is built once per mesh and cached), time per
log-density gradient, posterior-mean activation RMSE vs truth, 90% coverage of the true
activation (``coverage90``: of the intervals ``fit`` writes, which include the fast path's
forward error; ``coverage90_draws``: of the draws alone; ``forward_error_ms``: that error's RMS
over nodes), ECG correlation, R-hat/ESS on order-free quantities, divergences and time per
effective sample, and per NUTS chain its tree size, step size, divergences, log density,
noise sd and error; appends the tables to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

from cdt_bayes import _summaries as S
from cdt_bayes._demo import demo_pmjs
from cdt_bayes._ecg import LeadField, ecg_time_grid, simulate_ecg
from cdt_bayes._eikonal import activation_times, eikonal_geometry
from cdt_bayes._inference import _setup, build_problem, fit
from cdt_bayes._meshgen import default_electrodes_table, default_mesh
from cdt_bayes._model import load_spec
from cdt_bayes._outputs import cache_dir, to_inference_data


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def emit(text: str, out: str) -> None:
    """Print a result block and append it to the results file ``out``."""
    print(text)
    with open(out, "a") as fh:
        fh.write(text)


def results_block(title: str, script: str, argv, case: str, rows: list[dict], cols: list[str]) -> str:
    """A RESULTS.md block: heading with the UTC time, command, machine, ``case`` line, table."""
    cmd = f"python benchmarks/{script} " + " ".join(argv if argv is not None else sys.argv[1:])
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M")
    return (
        f"\n## {title} — {now}\n\nCommand: `{cmd.strip()}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} logical CPUs, {platform.python_version()}, "
        f"jax {jax.__version__}, device {jax.devices()[0].platform}  \n"
        f"{case}\n\n" + markdown_table(rows, cols)
    )


def markdown_table(rows: list[dict], cols: list[str]) -> str:
    """Rows of dicts as a Markdown table (missing values left blank)."""
    out = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return out + "".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |\n" for r in rows)


def benchmark_truth(noise_rel: float = 0.02) -> dict:
    """The benchmarks' synthetic truth on the built-in heart: 8 PMJs, full eikonal, 12 leads, 2 % noise.

    ``noise_rel``: the white noise sd as a fraction of the clean ECG's peak (0.02: 2 %).

    Returns a dict: ``mesh``, ``electrodes``, ``geom`` (float32 eikonal geometry), ``pmj_xyz``
    (8, 3) mm, ``pmj_t`` (8,) ms, ``truth`` (n_nodes,) ms, ``lead_names``, ``times`` (n_t,) ms,
    ``ecg`` (12, n_t) mV clean, ``noise_sd`` mV and ``noisy`` (12, n_t) mV.
    """
    mesh = default_mesh()
    el = default_electrodes_table()
    geom = eikonal_geometry(mesh, np.float32)
    xyz, t = demo_pmjs(mesh)
    truth = np.asarray(activation_times(geom, xyz, t), np.float64)
    lf = LeadField.from_mesh(mesh, el)
    tt = ecg_time_grid(truth)
    ecg = np.asarray(simulate_ecg(truth, lf.matrix, tt), np.float64)
    noise_sd = noise_rel * np.abs(ecg).max()
    noisy = ecg + noise_sd * np.random.default_rng(1).normal(size=ecg.shape)
    return dict(mesh=mesh, electrodes=el, geom=geom, pmj_xyz=xyz, pmj_t=t, truth=truth,
                lead_names=list(lf.names), times=tt, ecg=ecg, noise_sd=noise_sd, noisy=noisy)


def gradient_ms(prob, repeat: int) -> float:
    """Median milliseconds of one log-density value + gradient of ``prob`` (after compiling)."""
    z, pot, _, _ = _setup(prob, jax.random.key(0))
    vg = jax.jit(jax.value_and_grad(pot))
    jax.block_until_ready(vg(z))
    ts = []
    for _ in range(repeat):
        a = time.perf_counter()
        jax.block_until_ready(vg(z))
        ts.append(time.perf_counter() - a)
    return 1e3 * float(np.median(ts))


def case_problem(case: dict, spec):
    """``(problem, seconds)``: the fit problem of :func:`benchmark_truth`'s noisy ECG under ``spec``."""
    t0 = time.time()
    prob = build_problem(case["mesh"], case["times"], case["lead_names"], case["noisy"], case["electrodes"],
                         spec, cache_dir=cache_dir(), progress=True)
    return prob, time.time() - t0


def default_case(spec_name: str = "default", n_pmj: int = 20, noise_rel: float = 0.02):
    """The benchmark case and its problem for spec ``spec_name`` with ``n_pmj`` PMJs (noise: ``benchmark_truth``).

    Returns ``mesh, truth (n_nodes,) ms, times (n_t,) ms, clean ECG (12, n_t) mV, problem,
    seconds to build the problem`` (the distance dictionary, cached per mesh).
    """
    case = benchmark_truth(noise_rel)
    prob, seconds = case_problem(case, load_spec(spec_name, n_pmj=n_pmj))
    return case["mesh"], case["truth"], case["times"], case["ecg"], prob, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pmj", type=int, default=20)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--nuts-budget", type=float, default=None, help="s; NUTS stops early when spent")
    ap.add_argument("--methods", default="map,svi,nuts")
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--chain-starts", default="evidence", choices=("evidence", "distinct"))
    ap.add_argument("--spec", default="default", help="model spec (name in models/ or a TOML path)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fits (the case's noise is fixed)")
    ap.add_argument("--noise", type=float, default=0.02, help="noise sd as a fraction of the ECG peak (0.02: 2 %%)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)

    mesh, truth, tt, ecg, prob, t_dict = default_case(args.spec, args.n_pmj, args.noise)
    spec = prob.spec

    grad_ms = gradient_ms(prob, 30)

    rows = []
    per_chain: list[str] = []
    for method in args.methods.split(","):
        kw = dict(chains=args.chains, num_warmup=args.warmup, num_samples=args.samples, seed=args.seed, progress=True)
        if method == "nuts":
            kw["chain_starts"] = args.chain_starts
            kw["max_tree_depth"] = args.max_tree_depth
            if args.nuts_budget:
                kw["time_budget_s"] = args.nuts_budget
        res = fit(prob, method, **kw)
        _, ex = to_inference_data(prob, res, n_prior=50)
        act = ex["activation"]
        fe = ex["forward_error"]
        node = S.activation_summary(act, None if fe is None else fe["rms_ms"])  # as fit's outputs
        bare = S.activation_summary(act)  # the draws alone
        mu = ex["ecg_model"].reshape((-1,) + prob.obs.shape).mean(0)
        row = {
            "method": method,
            "seconds": round(res.seconds, 1),
            "rmse_ms": round(float(np.sqrt(np.mean((node["mean"] - truth) ** 2))), 2),
            "coverage90": round(float(np.mean((node["q05"] <= truth) & (truth <= node["q95"]))), 3),
            "coverage90_draws": round(float(np.mean((bare["q05"] <= truth) & (truth <= bare["q95"]))), 3),
            "forward_error_ms": "" if fe is None else round(fe["overall_rms_ms"], 2),
            "mean_sd_ms": round(float(node["sd"].mean()), 2),
            "ecg_r": round(float(np.nanmean(S.ecg_correlation(prob.obs, mu))), 4),
            "ecg_r_clean": round(float(np.nanmean(S.ecg_correlation(ecg.astype(np.float32), mu))), 4),
            "draws": f"{act.shape[0]}x{act.shape[1]}",
        }
        if method == "nuts":
            d = S.diagnostics(act, ex["ecg_model"])
            row.update(
                max_rhat=round(d["max_rhat"], 3),
                rhat_within_optima=(
                    round(S.rhat_within_groups(act, ex["ecg_model"], res.chain_optimum)["max_rhat"], 3)
                    if res.chain_optimum and len(res.chain_optimum) == act.shape[0]
                    else ""
                ),
                min_ess_bulk=round(d["min_ess_bulk"], 1),
                divergences=int(np.sum(res.sample_stats["diverging"])),
                mean_tree_steps=round(float(np.mean(res.sample_stats["n_steps"])), 1),
                step_size=round(float(np.mean(res.sample_stats["step_size"])), 4),
                s_per_ess=round(res.seconds / max(d["min_ess_bulk"], 1e-9), 2),
                notes="; ".join(res.notes),
            )
            st = res.sample_stats
            sig = np.asarray(res.draws["sigma_mV"])
            opt = res.chain_optimum if res.chain_optimum and len(res.chain_optimum) == act.shape[0] else ["?"] * act.shape[0]
            per_chain.extend(
                f"| {c + 1} | {opt[c]} | {np.mean(st['n_steps'][c]):.0f} | {np.mean(st['step_size'][c]):.3g} | "
                f"{int(np.sum(st['diverging'][c]))} | {np.mean(st['lp'][c]):.1f} | {sig[c].mean():.4f} | "
                f"{np.sqrt(np.mean((act[c].mean(0) - truth) ** 2)):.2f} |"
                for c in range(act.shape[0])
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    head = (
        f"\n## Inference benchmark — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
        f"Command: `python benchmarks/inference.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} cores, device {jax.default_backend()}, jax {jax.__version__}  \n"
        f"Case: built-in default mesh ({mesh.n_nodes} nodes, {mesh.n_tets} tets), 12 leads, "
        f"{len(tt)} time steps, truth = 8 PMJs (full eikonal), {100 * args.noise:g}% noise; model n_pmj = {args.n_pmj}, spec {spec.name}, "
        f"{len(prob.site_nodes)} dictionary sites.  \n"
        f"Distance dictionary: {t_dict:.0f} s (once per mesh, cached). "
        f"Log-density value+gradient: {grad_ms:.1f} ms (median of 30).\n\n"
    )
    cols = ["method", "seconds", "draws", "rmse_ms", "coverage90", "coverage90_draws", "forward_error_ms",
            "mean_sd_ms", "ecg_r", "ecg_r_clean",
            "max_rhat", "rhat_within_optima", "min_ess_bulk", "divergences", "mean_tree_steps", "step_size", "s_per_ess", "notes"]
    table = markdown_table(rows, cols)
    text = head + table
    if per_chain:
        text += (
            "\nNUTS per chain (sampling phase; start optimum: the MAP optimum the chain started in, "
            "0 = best; rmse of the chain's mean activation vs truth):\n\n"
            "| chain | start optimum | mean tree steps | step size | divergences | mean log density | mean sigma_mV | rmse_ms |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(per_chain) + "\n"
        )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
