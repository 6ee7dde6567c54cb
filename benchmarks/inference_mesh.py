"""Fitting large meshes on a coarser inference mesh: accuracy and time.

    python benchmarks/inference_mesh.py [--cases dti004,medium] [--spacing 3.5]
                                        [--methods map,svi] [--out benchmarks/RESULTS.md]

Cases: ``dti004``, the 37k-node patient mesh of ``../shared/data`` (skipped when absent),
and ``medium``, the generated biventricular mesh at 2 mm (~20k nodes; needs gmsh). For each:

1. ``coarsen_mesh`` at ``--spacing``: seconds, nodes and tets, volume ratio.
2. Forward accuracy at 8 known PMJs (``demo_pmjs``, full eikonal on both meshes): the
   coarse activation interpolated to the mesh's nodes vs the full solve (RMSE, mean
   offset, 90th percentile and largest error), and the ECG of the coarse model (the mesh's
   lead field pulled back to the coarse nodes) vs the full ECG: mean and smallest Pearson r
   over the 12 leads.
3. Dictionary cost: one eikonal solve per site, timed on the first 32 sites of each mesh
   (after compilation) and extrapolated to all its sites. The full-mesh figure is an
   estimate; the coarse one is then measured by building the problem.
4. Recovery on a synthetic truth simulated on the *full* mesh (8 PMJs, full eikonal, full
   lead field, 2 % noise): ``fit`` on the inference mesh (``build_problem(...,
   inference_mesh=spacing)``, n_pmj 20, default spec), outputs interpolated back:
   activation RMSE against the truth on the mesh's nodes, 90 % coverage, ECG correlation
   with the clean ECG, seconds. With ``--control``, the same fits of a truth simulated on
   the inference mesh itself (its eikonal and the pulled-back lead field): the accuracy the
   fit has when coarsening adds no error, for comparison (RMSE then against that truth).

Prints a Markdown table and appends it to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from inference import _cpu, emit, markdown_table

import cdt_bayes as cb
from cdt_bayes._coarsen import coarsen_mesh
from cdt_bayes._demo import demo_pmjs
from cdt_bayes._ecg import LeadField, ecg_time_grid, simulate_ecg
from cdt_bayes._geometry import tet_volumes
from cdt_bayes._io import read_electrodes_csv
from cdt_bayes._model import distance_dictionary, select_sites

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_case(name: str):
    """(mesh, electrodes) of a case, or None when it is not available here."""
    if name == "dti004":
        d = SHARED / "dti004"
        if not (d / "heart.vtu").exists():
            return None
        return cb.load_mesh(d / "heart.vtu"), read_electrodes_csv(d / "electrodes.csv")
    if name == "medium":
        try:
            mesh, el = cb.generate_biventricular("medium")
        except Exception as e:  # gmsh missing
            print(f"medium: skipped ({e})", file=sys.stderr)
            return None
        return mesh, el
    raise SystemExit(f"unknown case {name!r}")


def per_site_seconds(mesh, sites, n=32) -> float:
    """Seconds per eikonal solve, over ``n`` sites solved after a first (compiling) pass."""
    distance_dictionary(mesh, sites[:n], 0.6, 0.4)
    t0 = time.perf_counter()
    distance_dictionary(mesh, sites[:n], 0.6, 0.4)
    return (time.perf_counter() - t0) / n


def corr(a, b):
    return np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)])


def run_case(name: str, args) -> list[dict]:
    got = load_case(name)
    if got is None:
        print(f"{name}: not available, skipped", file=sys.stderr)
        return []
    mesh, el = got
    t0 = time.perf_counter()
    coarse, to_mesh = coarsen_mesh(mesh, args.spacing, name=name)
    t_coarsen = time.perf_counter() - t0
    vol = tet_volumes(coarse.nodes, coarse.tets).sum() / tet_volumes(mesh.nodes, mesh.tets).sum()

    xyz, t = demo_pmjs(mesh)
    truth = np.asarray(cb.activation_times(cb.eikonal_geometry(mesh), xyz, t), np.float64)
    mapped = to_mesh.apply(np.asarray(cb.activation_times(cb.eikonal_geometry(coarse), xyz, t)))
    err = mapped - truth
    lf = LeadField.from_mesh(mesh, el)
    tt = ecg_time_grid(truth)
    ecg = np.asarray(simulate_ecg(truth, lf.matrix, tt), np.float64)
    # the model's ECG on the inference mesh: the pulled-back lead field on coarse activation
    act_c = np.asarray(cb.activation_times(cb.eikonal_geometry(coarse), xyz, t))
    ecg_coarse = np.asarray(simulate_ecg(act_c, to_mesh.pull_back(lf.matrix), tt), np.float64)
    r_fwd = corr(ecg, ecg_coarse)

    spec = cb.load_spec("default")
    s_full, s_coarse = select_sites(mesh, spec), select_sites(coarse, spec)
    full_site_s = per_site_seconds(mesh, s_full)
    coarse_site_s = per_site_seconds(coarse, s_coarse)

    rng = np.random.default_rng(0)
    noise_sd = 0.02 * np.abs(ecg).max()
    noisy = ecg + noise_sd * rng.normal(size=ecg.shape)
    base = {
        "case": name,
        "mesh nodes / tets": f"{mesh.n_nodes} / {mesh.n_tets}",
        "inference nodes / tets": f"{coarse.n_nodes} / {coarse.n_tets}",
        "coarsen s": round(t_coarsen, 1),
        "volume ratio": round(float(vol), 4),
        "fwd RMSE / offset / p90 / max (ms)": f"{np.sqrt(np.mean(err**2)):.2f} / {err.mean():.2f} / "
        f"{np.percentile(np.abs(err), 90):.2f} / {np.abs(err).max():.1f}",
        "fwd ECG r mean / min": f"{r_fwd.mean():.4f} / {r_fwd.min():.4f}",
        "dictionary s, full (estimated)": f"{full_site_s * len(s_full):.0f} ({len(s_full)} sites)",
    }
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        prob = cb.build_problem(
            mesh, tt, list(lf.names), noisy, el, spec, cache_dir=cache, progress=False,
            name=name, inference_mesh=args.spacing,
        )
        t_build = time.perf_counter() - t0
        base["dictionary s, inference (measured build)"] = (
            f"{t_build:.0f} ({len(prob.site_nodes)} sites; {coarse_site_s * len(s_coarse):.0f} est.)"
        )
        runs = [(m, "full mesh", prob, truth, ecg) for m in args.methods.split(",")]
        if args.control:
            # control: the truth simulated on the inference mesh itself (its eikonal, the
            # pulled-back lead field), so that no coarsening error is left between model
            # and data; same PMJs, noise level and fit. The dictionary is reused.
            t_c = np.asarray(cb.activation_times(cb.eikonal_geometry(prob.mesh), xyz, t), np.float64)
            lead_c = to_mesh.pull_back(lf.matrix)
            ecg_c = np.asarray(simulate_ecg(t_c, lead_c, tt), np.float64)
            noisy_c = ecg_c + noise_sd * rng.normal(size=ecg_c.shape)
            prob_c = cb.build_problem(
                prob.mesh, tt, list(lf.names), noisy_c, None, spec,
                lead_field=LeadField(tuple(lf.names), lead_c), cache_dir=cache,
                progress=False, name=name, inference_mesh="full",
            )
            runs += [(m, "inference mesh (control)", prob_c, t_c, ecg_c) for m in args.methods.split(",")]
        for method, truth_on, prob, truth, ecg in runs:
            res = cb.fit(prob, method, seed=0, progress=False)
            act = prob.to_output_nodes(cb.posterior_activation(prob, res.draws))
            flat = act.reshape(-1, act.shape[-1])
            mean = flat.mean(0)
            q05, q95 = np.quantile(flat, [0.05, 0.95], axis=0)
            cover = float(np.mean((truth >= q05) & (truth <= q95))) if flat.shape[0] > 1 else 0.0
            _, extras = cb.to_inference_data(prob, res)
            mu = extras["ecg_model"].reshape((-1,) + prob.obs.shape).mean(0)
            rows.append(
                {
                    **base,
                    "method": method,
                    "truth simulated on": truth_on,
                    "fit s": round(res.seconds, 1),
                    "rmse_ms": round(float(np.sqrt(np.mean((mean - truth) ** 2))), 2),
                    "coverage90": round(cover, 3),
                    "ecg_r_clean": round(float(np.nanmean(corr(ecg, mu))), 4),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="dti004,medium")
    ap.add_argument("--spacing", type=float, default=3.5)
    ap.add_argument("--methods", default="map,svi")
    ap.add_argument(
        "--control", action="store_true",
        help="also fit a truth simulated on the inference mesh itself (no coarsening error)",
    )
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    rows = []
    for name in args.cases.split(","):
        rows += run_case(name, args)
    if not rows:
        print("no case available", file=sys.stderr)
        return 1
    text = (
        f"\n## Inference mesh — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
        f"Command: `python benchmarks/inference_mesh.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} cores, device {jax.default_backend()}, "
        f"jax {jax.__version__}  \n"
        f"Inference mesh spacing {args.spacing:g} mm; truth: 8 PMJs (`demo_pmjs`), full eikonal "
        "and lead field on the given mesh, 2 % noise; fits: default spec, n_pmj 20, seed 0, "
        "outputs interpolated to the given mesh's nodes.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
