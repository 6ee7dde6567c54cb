"""NUTS chain methods on this machine: sequential (chains in turn) vs vectorized (one vmap).

    python benchmarks/chains.py [--n-pmj 20] [--chains 4] [--iterations 75]
                                [--max-tree-depth 6] [--out benchmarks/RESULTS.md]

The benchmark case of ``benchmarks/inference.py`` (built-in heart, 8 true PMJs, 12 leads).
One multi-start MAP and Laplace approximation, then the same chains (same starts, mass
matrices and keys) are run by each method for ``--iterations`` warm-up iterations (a
multiple of 25) and 25 draws, in chunks of 25. The first chunk compiles and is not timed. Printed per method: wall seconds of the
timed chunks, chain-iterations per second, leapfrog steps (summed over chains) per second
and milliseconds per leapfrog step (both methods build the same trees). Appends the table to RESULTS.md. What ``--chain-method auto`` picks
on each device is meant to follow these figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import jax
from inference import _cpu, default_case, emit, markdown_table

from cdt_bayes._inference import _dispersed_start, _nuts_chains, find_map, laplace_optima


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-pmj", type=int, default=20)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=75)
    ap.add_argument("--max-tree-depth", type=int, default=6)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args(argv)
    if args.iterations < 25 or args.iterations % 25:
        ap.error("--iterations must be a positive multiple of 25")

    mesh, _, _, _, prob, _ = default_case("default", args.n_pmj)
    u, losses, pot, _, _ = find_map(prob, jax.random.key(0), n_starts=4, steps=300)
    _, masses = laplace_optima(pot, jax.tree.map(lambda x: x[:1], u), losses[:1])
    u0 = jax.tree.map(lambda x: x[0], u)
    pot_jit = jax.jit(pot)
    starts = [
        _dispersed_start(pot_jit, u0, masses[0], k, float(losses[0]))
        for k in jax.random.split(jax.random.key(1), args.chains)
    ]
    keys = jax.random.split(jax.random.key(2), args.chains)
    rows = []
    for method in ("sequential", "vectorized"):
        _, stats, _, _, tp = _nuts_chains(
            # every chunk 25 iterations (one compiled shape): warm-up then one chunk of draws
            pot, starts, [masses[0]] * args.chains, keys, args.iterations, 25, None, None, True,
            max_tree_depth=args.max_tree_depth, chain_method=method,
        )
        rows.append(
            {
                "method": method,
                "timed_s": round(tp["seconds"], 1),
                "chain_iter_per_s": round(tp["iterations"] / tp["seconds"], 2),
                "leapfrog_per_s": round(tp["chain_steps"] / tp["seconds"], 1),
                "ms_per_leapfrog": round(1e3 * tp["seconds"] / tp["chain_steps"], 2),
                "timed_chain_iterations": tp["iterations"],
            }
        )
        print(rows[-1], flush=True)
    cols = list(rows[0])
    text = (
        f"\n## NUTS chain methods — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
        f"Command: `python benchmarks/chains.py {' '.join(sys.argv[1:])}`  \n"
        f"Machine: {_cpu()}, {os.cpu_count()} cores, device {jax.default_backend()}, jax {jax.__version__}  \n"
        f"Case: built-in default mesh ({mesh.n_nodes} nodes), model n_pmj = {args.n_pmj}, {args.chains} chains from "
        f"the best MAP optimum, max tree depth {args.max_tree_depth}, {args.iterations} warm-up + 25 iterations per chain "
        "(first chunk of 25 compiles, not timed).\n\n"
        + markdown_table(rows, cols)
    )
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
