"""Accuracy of the fast path (distance dictionary) against the full eikonal solver.

    python benchmarks/dictionary.py [--spacings 6:4,3:2] [--points 48] [--out benchmarks/RESULTS.md]

On the built-in default heart, for each ``site_spacing_mm:kernel_mm`` pair and each
interpolation of the residual travel times (``local_linear``, ``local_constant``):

- single sources at ``--points`` random positions inside admissible tetrahedra (not on
  nodes): RMSE of the travel time against the full solver started at that point, the same
  after removing each source's mean offset (which a PMJ time absorbs), and the largest error;
- the benchmark case of ``benchmarks/inference.py`` (8 known PMJs, 2% noise): activation
  RMSE at the true PMJs (exact minimum) and the RMS ECG residual there (best gain) against
  the noisy ECG, next to the noise sd.

Prints a markdown table and appends it to RESULTS.md. Units: mm, ms, mV.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from cdt_bayes._eikonal import activation_times
from cdt_bayes._model import admissible_nodes, dictionary_activation, load_spec, model_ecg

sys.path.insert(0, str(Path(__file__).parent))
from inference import _cpu, benchmark_truth, case_problem, emit, markdown_table  # noqa: E402

MODES = ("local_linear", "local_constant")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spacings", default="6:4,3:2", help="site_spacing_mm:kernel_mm pairs")
    ap.add_argument("--points", type=int, default=48, help="random single-source positions")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)

    case = benchmark_truth()
    mesh, geom, truth = case["mesh"], case["geom"], case["truth"]
    xyz, t, noise_sd = case["pmj_xyz"], case["pmj_t"], case["noise_sd"]

    rows = []
    for pair in args.spacings.split(","):
        spacing, kernel = (float(v) for v in pair.split(":"))
        spec = load_spec("default", n_pmj=8, site_spacing_mm=spacing, kernel_mm=kernel)
        prob, _ = case_problem(case, spec)
        data = prob.data
        # random points inside tetrahedra whose four nodes are all admissible
        adm = np.zeros(mesh.n_nodes, bool)
        adm[admissible_nodes(mesh, spec)] = True
        tets = np.asarray(mesh.tets)
        inside = np.flatnonzero(adm[tets].all(1))
        rng = np.random.default_rng(0)
        corners = np.asarray(mesh.nodes)[tets[rng.choice(inside, args.points, replace=False)]]
        bary = rng.dirichlet(np.ones(4), args.points)
        z = jnp.asarray(np.einsum("kj,kjd->kd", bary, corners), jnp.float32)
        exact = np.asarray(jax.vmap(lambda p: activation_times(geom, p[None], jnp.zeros(1)))(z))
        obs = np.asarray(prob.obs)
        for mode in MODES:
            fast = np.asarray(
                jax.vmap(lambda p, m=mode: dictionary_activation(p[None], jnp.zeros(1), 1.0, data, kernel, None, interpolation=m))(z)
            )
            e = fast - exact
            ec = e - e.mean(1, keepdims=True)
            act = np.asarray(
                dictionary_activation(
                    jnp.asarray(xyz, jnp.float32), jnp.asarray(t, jnp.float32), 1.0, data, kernel, None, interpolation=mode
                )
            )
            mu = np.asarray(model_ecg(jnp.asarray(act), 1.0, 0.0, data), np.float64)
            gain = float((mu * obs).sum() / (mu * mu).sum())
            rows.append(
                {
                    "spacing/kernel (mm)": f"{spacing:g} / {kernel:g}",
                    "sites": len(prob.site_nodes),
                    "interpolation": mode,
                    "point-source RMSE (ms)": f"{np.sqrt(np.mean(e**2)):.2f}",
                    "offset-free RMSE (ms)": f"{np.sqrt(np.mean(ec**2)):.2f}",
                    "largest error (ms)": f"{np.abs(e).max():.1f}",
                    "activation RMSE at true PMJs (ms)": f"{np.sqrt(np.mean((act - truth) ** 2)):.2f}",
                    "ECG residual at true PMJs (mV)": f"{np.sqrt(np.mean((obs - gain * mu) ** 2)):.4f}",
                }
            )
            print(rows[-1], flush=True)

    cols = list(rows[0])
    table = markdown_table(rows, cols)
    head = (
        f"\n## Dictionary accuracy — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
        f"Command: `python benchmarks/dictionary.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} cores, device {jax.default_backend()}, jax {jax.__version__}  \n"
        f"Case: built-in default mesh ({mesh.n_nodes} nodes), {args.points} random in-layer point sources; "
        f"true PMJs of the inference benchmark (8, full eikonal), ECG noise sd {noise_sd:.4f} mV.\n\n"
    )
    emit(head + table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
