"""``cdt-bayes demo``: the whole path on the built-in geometry.

geometry → a known activation (full eikonal from known PMJs) → its noisy 12-lead ECG →
Bayesian fit (multi-start MAP, then NUTS) → uncertainty report, printing where each
output is. ``--fast`` uses tiny settings (for smoke tests).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run_demo", "demo_command", "demo_pmjs"]


def demo_pmjs(mesh, n_lv: int = 5, n_rv: int = 3, seed: int = 0):
    """Known PMJs for the demo: endocardial nodes spread over LV and RV, early times.

    Returns positions ``(n, 3)`` mm and times ``(n,)`` ms.
    """
    rng = np.random.default_rng(seed)
    surf = np.asarray(mesh.surface)
    nodes = np.asarray(mesh.nodes)
    picks = []
    for label, n in ((1, n_lv), (2, n_rv)):
        cand = np.flatnonzero(surf == label)
        # farthest-point sampling from a random start: well spread sites
        chosen = [int(rng.choice(cand))]
        d = np.linalg.norm(nodes[cand] - nodes[chosen[0]], axis=1)
        for _ in range(n - 1):
            j = int(cand[np.argmax(d)])
            chosen.append(j)
            d = np.minimum(d, np.linalg.norm(nodes[cand] - nodes[j], axis=1))
        picks.extend(chosen)
    picks = np.asarray(picks)
    times = np.round(rng.uniform(0.0, 12.0, picks.size), 1)
    times[0] = 0.0
    return nodes[picks], times


def run_demo(out: str | Path = "demo_out", fast: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Run the demo and return the paths of its outputs."""
    from ._ecg import LeadField, ecg_time_grid, simulate_ecg
    from ._eikonal import eikonal_geometry, eikonal_params, solve_eikonal
    from ._inference import build_problem, fit
    from ._io import atomic_output_dir, save_mesh_vtu, write_ecg_csv
    from ._meshgen import default_electrodes_table, default_mesh, write_electrodes_csv
    from ._model import load_spec
    from ._outputs import cache_dir, write_fit_outputs

    out = Path(out)
    t_start = time.time()

    def say(msg: str) -> None:
        if progress:
            print(f"[demo {time.time() - t_start:5.0f} s] {msg}", file=sys.stderr)

    paths: dict[str, Path] = {}

    say("1/5 geometry: built-in biventricular mesh")
    mesh = default_mesh("coarse")
    electrodes = default_electrodes_table("coarse")
    with atomic_output_dir(out / "geometry") as st:
        save_mesh_vtu(Path(st) / "heart.vtu", mesh)
        write_electrodes_csv(Path(st) / "electrodes.csv", electrodes)
    paths["mesh"] = out / "geometry" / "heart.vtu"
    paths["electrodes"] = out / "geometry" / "electrodes.csv"

    say("2/5 known activation: full eikonal from 8 PMJs")
    xyz, t = demo_pmjs(mesh, seed=seed)
    geom = eikonal_geometry(mesh, np.float32)
    act, info = solve_eikonal(geom, eikonal_params(xyz.astype(np.float32), t.astype(np.float32)))
    act = np.asarray(act, np.float64)
    lf = LeadField.from_mesh(mesh, electrodes)
    times = ecg_time_grid(act)
    ecg = np.asarray(simulate_ecg(act, lf.matrix, times), np.float64)
    rng = np.random.default_rng(seed + 1)
    noise_mV = 0.02 * np.abs(ecg).max()
    ecg_noisy = ecg + noise_mV * rng.normal(size=ecg.shape)
    with atomic_output_dir(out / "truth") as st:
        st = Path(st)
        save_mesh_vtu(st / "activation.vtu", mesh, {"activation_ms": act})
        write_ecg_csv(st / "ecg.csv", times, list(lf.names), ecg)
        write_ecg_csv(st / "ecg_noisy.csv", times, list(lf.names), ecg_noisy)
        (st / "pmj.csv").write_text(
            "x_mm,y_mm,z_mm,t_ms\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{d:.2f}\n" for (a, b, c), d in zip(xyz, t))
        )
    paths["truth"] = out / "truth"

    say("3/5 Bayesian fit: distance dictionary, multi-start MAP, NUTS")
    if fast:
        spec = load_spec("default", n_pmj=4, site_spacing_mm=14.0, kernel_mm=9.0)
        settings = dict(chains=2, num_warmup=15, num_samples=15, map_steps=100, n_starts=4)
    else:
        spec = load_spec("default", n_pmj=8)
        settings = dict(chains=4, num_warmup=150, num_samples=150, time_budget_s=330.0)
    problem = build_problem(
        mesh, times, list(lf.names), ecg_noisy, electrodes, spec, cache_dir=cache_dir(), progress=progress
    )
    result = fit(problem, "nuts", seed=seed, progress=progress, **settings)
    fit_dir = out / "fit"
    with atomic_output_dir(fit_dir) as st:
        summary = write_fit_outputs(Path(st), problem, result, seed)
    paths["fit"] = fit_dir
    post = np.asarray(
        __import__("meshio").read(fit_dir / "activation_summary.vtu").point_data["activation_mean_ms"], np.float64
    ).ravel()
    rmse = float(np.sqrt(np.mean((post - act) ** 2)))
    say(
        f"   ECG correlation {summary['ecg_correlation']:.3f}, max R-hat {summary.get('max_rhat', float('nan')):.3f}, "
        f"posterior-mean activation RMSE vs truth {rmse:.1f} ms"
    )

    say("4/5 uncertainty report")
    from ._report import write_report

    paths["report"] = write_report(fit_dir, out / "report.html")

    say("5/5 done")
    return paths


def demo_command(args) -> int:
    """CLI entry: ``cdt-bayes demo [--out DIR] [--fast]``."""
    out = Path(args.out)
    paths = run_demo(out, fast=getattr(args, "fast", False), progress=not getattr(args, "quiet", False))
    print("cdt-bayes demo outputs:")
    labels = {
        "mesh": "mesh (ParaView)",
        "electrodes": "12-lead electrodes",
        "truth": "known activation, PMJs and ECG",
        "fit": "posterior (posterior.nc, activation_summary.vtu, ecg_posterior.csv, summary.json)",
        "report": "uncertainty report (open in a browser)",
    }
    for k, p in paths.items():
        print(f"  {labels[k]:<80} {p}")
    return 0
