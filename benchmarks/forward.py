"""One benchmark measurement in a fresh process (run by ``benchmarks/run.py``).

Usage::

    python benchmarks/forward.py WHAT DATA.npz [--repeat N] [--save T.npy] [--precision P]

``WHAT`` is one of

- ``eikonal``: activation solve from the PMJs (ours: JAX float32 FIM, jit, after compilation);
- ``ecg``: pseudo-ECG of an activation map (``simulate_ecg``, jit);
- ``forward``: scalar ECG loss ``mean((ECG(T(p, t)) - ECG_ref)^2)`` (eikonal + ECG + loss);
- ``grad``: value and gradient of that loss with respect to PMJ positions and times;
- ``fim``: fim-python (CPU, active list) on the same mesh, tensors and sources (AGPL: used here
  only, never by ``cdt_bayes``).

Prints one JSON line: ``seconds`` (median wall time over ``--repeat`` calls, after a first
call that compiles), ``first_s`` (the first call), the peak resident memory of this process
``peak_rss_mb`` (VmHWM) and ``baseline_rss_mb`` (VmRSS after imports and loading the data,
before the first call), plus extras. Units: mm, ms, mm/ms, mV; times in the JSON in s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np


def _proc_status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    v = _proc_status_mb("VmHWM")
    if v is not None:
        return v
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def rss_mb() -> float:
    v = _proc_status_mb("VmRSS")
    return v if v is not None else peak_rss_mb()


def timed(fn, repeat, block=lambda x: x):
    """First call (compilation) and median of ``repeat`` further calls, s."""
    t0 = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    med = float(statistics.median(times)) if times else first
    return out, first, med, times


def run_fim(data, args):
    from fimpy.solver import create_fim_solver

    prec = {"float32": np.float32, "float64": np.float64}[args.precision]
    fib = data["fibres"]
    ff = fib[:, :, None] * fib[:, None, :]
    vf, vc = float(data["cv_fiber"]), float(data["cv_cross"])
    d = vf**2 * ff + vc**2 * (np.eye(3) - ff)  # D = v_f^2 f f^T + v_c^2 (I - f f^T)
    src = data["pmj_nodes"]
    t0 = data["pmj_t"]
    base = rss_mb()
    c0 = time.perf_counter()
    solver = create_fim_solver(
        data["nodes"], data["tets"], d, precision=prec, device="cpu", use_active_list=True
    )
    create_s = time.perf_counter() - c0
    T, first, med, times = timed(lambda: solver.comp_fim(src, t0), max(args.repeat - 1, 0))
    return T, {
        "seconds": med,
        "first_s": first,
        "times_s": [first, *times],
        "setup_s": create_s,
        "baseline_rss_mb": base,
        "precision": args.precision,
    }


def run_ours(data, args):
    import jax
    import jax.numpy as jnp

    from cdt_bayes._ecg import ecg_time_grid, simulate_ecg
    from cdt_bayes._eikonal import eikonal_geometry, eikonal_params, solve_eikonal
    from cdt_bayes._geometry import Mesh

    mesh = Mesh(nodes=data["nodes"], tets=data["tets"], fibres=data["fibres"])
    geom = eikonal_geometry(mesh, dtype=np.float32)
    params = eikonal_params(
        data["pmj_xyz"].astype(np.float32),
        data["pmj_t"].astype(np.float32),
        float(data["cv_fiber"]),
        float(data["cv_cross"]),
    )
    L = jnp.asarray(data["lead_matrix"], jnp.float32)
    solve = jax.jit(solve_eikonal)
    block = jax.block_until_ready
    extra = {"device": jax.default_backend(), "jax_version": jax.__version__}
    base = rss_mb()

    if args.what == "eikonal":
        (T, info), first, med, times = timed(lambda: solve(geom, params), args.repeat, block)
        extra.update(n_sweeps=int(info.n_sweeps), converged=bool(info.converged))
        return np.asarray(T), {
            "seconds": med,
            "first_s": first,
            "times_s": times,
            "baseline_rss_mb": base,
            **extra,
        }

    T_ref = solve(geom, params)[0]
    times_ms = jnp.asarray(ecg_time_grid(np.asarray(T_ref)), jnp.float32)
    extra["n_times"] = int(times_ms.shape[0])
    extra["n_leads"] = int(L.shape[0])
    if args.what == "ecg":
        f = jax.jit(simulate_ecg)
        _, first, med, times = timed(lambda: f(T_ref, L, times_ms), args.repeat, block)
        return None, {
            "seconds": med,
            "first_s": first,
            "times_s": times,
            "baseline_rss_mb": base,
            **extra,
        }

    target = jax.jit(simulate_ecg)(T_ref, L, times_ms)

    def loss(pmj_xyz, pmj_t, geom, params, L, times_ms, target):
        p = params._replace(pmj_xyz=pmj_xyz, pmj_t=pmj_t)
        act = solve_eikonal(geom, p)[0]
        return jnp.mean((simulate_ecg(act, L, times_ms) - target) ** 2)

    operands = (params.pmj_xyz, params.pmj_t + 1.0, geom, params, L, times_ms, target)
    base = rss_mb()
    if args.what == "forward":
        f = jax.jit(loss)
    elif args.what == "grad":
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    else:
        raise SystemExit(f"unknown measurement {args.what!r}")
    out, first, med, times = timed(lambda: f(*operands), args.repeat, block)
    if args.what == "grad":
        val, (gx, gt) = out
        extra["grad_finite"] = bool(
            np.isfinite(np.asarray(gx)).all() and np.isfinite(np.asarray(gt)).all()
        )
        extra["loss_mV2"] = float(val)
    try:  # XLA's own estimate of the buffers of the compiled computation
        ma = f.lower(*operands).compile().memory_analysis()
        extra["xla_temp_mb"] = float(ma.temp_size_in_bytes) / 2**20
        extra["xla_args_mb"] = float(ma.argument_size_in_bytes) / 2**20
    except Exception:  # noqa: BLE001 - optional, backend-dependent
        pass
    return None, {
        "seconds": med,
        "first_s": first,
        "times_s": times,
        "baseline_rss_mb": base,
        **extra,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("eikonal", "ecg", "forward", "grad", "fim"))
    p.add_argument("data", help="npz written by benchmarks/run.py")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--save", default=None, help="save the activation map (.npy), ms")
    p.add_argument("--precision", default="float32", choices=("float32", "float64"))
    args = p.parse_args(argv)
    with np.load(args.data, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    if args.what == "fim":
        T, res = run_fim(data, args)
    else:
        T, res = run_ours(data, args)
    if args.save and T is not None:
        np.save(args.save, np.asarray(T, dtype=np.float64))
    res.update(what=args.what, peak_rss_mb=peak_rss_mb(), pid=os.getpid())
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
