"""NUTS on the PMJ position prior alone (no ECG): one mixture over both layers vs one per ventricle.

    python benchmarks/prior_mixing.py [--n-pmj 20] [--warmup 500] [--samples 500]
                                      [--out benchmarks/RESULTS.md]

The prior of ``pmj_xyz_mm`` on the built-in heart (``LayerPrior``: Gaussian mixture, sd
``prior_kernel_mm``, over the admissible nodes, as in the ``default`` spec). One NUTS chain
(NumPyro, adapted diagonal mass, max tree depth 8, seed 0) per variant:

- ``both layers``: every PMJ has the mixture over the LV and RV layers (``default``);
- ``split``: the first PMJs on the LV layer, the rest on the RV layer (``split_ventricles``).

Printed per variant: wall seconds, mean and largest leapfrog steps per iteration, and the
bulk effective sample size (ArviZ) of each PMJ coordinate, smallest and median, out of
``--samples`` draws. The prior is sampled exactly elsewhere (prior predictive, SBC); this
measures how the sampler copes with the geometry the prior alone gives the posterior of
PMJs the ECG does not pin down. Appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import arviz as az
import jax
import numpy as np
import numpyro
from inference import _cpu, emit, markdown_table
from numpyro.infer import MCMC, NUTS

from cdt_bayes._meshgen import default_mesh
from cdt_bayes._model import LayerPrior, admissible_nodes, load_spec, pmj_groups


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pmj", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)

    mesh = default_mesh()
    spec = load_spec("split_ventricles", n_pmj=args.n_pmj)
    adm = admissible_nodes(mesh, spec)
    sites = np.asarray(mesh.nodes, np.float32)[adm]
    site_group, pmj_group = pmj_groups(mesh, spec, adm)
    rows = []
    for variant, groups in (("both layers", (None, None)), ("split", (site_group, pmj_group))):
        prior = LayerPrior(sites, spec.prior_kernel_mm, *groups)

        def model(prior=prior):
            with numpyro.plate("pmj", args.n_pmj):
                numpyro.sample("z", prior)

        mcmc = MCMC(
            NUTS(model, max_tree_depth=8),
            num_warmup=args.warmup,
            num_samples=args.samples,
            progress_bar=False,
        )
        t0 = time.perf_counter()
        mcmc.run(jax.random.key(0), extra_fields=("num_steps",))
        z = np.asarray(mcmc.get_samples()["z"])
        seconds = time.perf_counter() - t0
        steps = np.asarray(mcmc.get_extra_fields()["num_steps"])
        ess = np.array(
            [float(az.ess(z[None, :, k, j])) for k in range(args.n_pmj) for j in range(3)]
        )
        if groups[1] is None:
            pmjs = f"{args.n_pmj}, either layer"
        else:
            pmjs = f"{int(np.sum(groups[1] == 0))} LV + {int(np.sum(groups[1] == 1))} RV"
        rows.append(
            {
                "variant": variant,
                "pmjs": pmjs,
                "seconds": round(seconds, 1),
                "mean_steps": round(float(steps.mean()), 1),
                "max_steps": int(steps.max()),
                "ess_min": round(float(ess.min()), 1),
                "ess_median": round(float(np.median(ess)), 1),
            }
        )
        print(rows[-1], flush=True)
    text = (
        f"\n## Prior mixing — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
        f"Command: `python benchmarks/prior_mixing.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} cores, device {jax.default_backend()}, "
        f"jax {jax.__version__}  \n"
        f"Case: built-in default mesh ({mesh.n_nodes} nodes, {len(adm)} admissible nodes, "
        f"{int(np.sum(site_group == 0))} nearer the LV), prior of `pmj_xyz_mm` only, "
        f"n_pmj = {args.n_pmj}, kernel {spec.prior_kernel_mm:g} mm; one NUTS chain, "
        f"{args.warmup} warm-up + {args.samples} draws, diagonal mass, max tree depth 8; "
        "ESS = bulk ESS per PMJ coordinate.\n\n"
        + markdown_table(rows, list(rows[0]))
    )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
