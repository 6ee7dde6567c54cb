"""Benchmarks of the forward model: eikonal, ECG, value+gradient, memory, fim-python.

One command::

    python benchmarks/run.py [--sizes small,large] [--repeat 3] [--out benchmarks/RESULTS.md]

For each mesh size it builds the built-in biventricular mesh with gmsh (or, without gmsh, a
structured box with a rotating fibre field), puts 20 PMJs on the endocardium (farthest-point
sampled endocardial nodes, initiation times uniform in 0-15 ms, seed 0) and measures, each in a
fresh subprocess (``benchmarks/forward.py``) so that peak memory is per measurement:

- the eikonal solve (JAX float32, median wall time after compilation);
- the ECG of an activation map;
- the scalar ECG loss (eikonal + ECG) and its value + gradient with respect to PMJ positions
  and times, their ratio, and the peak resident memory (VmHWM) of the value + gradient process;
- fim-python (CPU, active list, float32 for the timing and float64 as the accuracy reference)
  on the same mesh, tensors ``D = v_f^2 f f^T + v_c^2 (I - f f^T)`` and sources (the PMJs sit
  on nodes), with the speed-up and ``max |T_ours - T_fim|``.

It prints a markdown table and appends it, with the command, date, machine, versions and
device, to ``--out``. Sizes: ``small`` (~10k nodes: gmsh size 2.6 mm), ``medium`` (~20k: the
generator's "medium"), ``large`` (~44k nodes / ~205k tets: the generator's "fine").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_PMJ = 20
CV_FIBER, CV_CROSS = 0.6, 0.4

# size -> (gmsh mesh size in mm, structured-box cells per axis without gmsh)
SIZES = {"small": (2.6, 20), "medium": (2.0, 27), "large": (1.5, 33)}

TARGET_SPEEDUP = 5.0
TARGET_GRAD_RATIO = 3.0
TARGET_PEAK_MB = 2048.0
TARGET_PEAK_TETS = 150_000  # the memory target is stated for the ~200k-tet mesh


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------


def box_case(n: int, size_mm: float = 40.0):
    """Structured box (Kuhn split, 6 tets per cell), helix fibres rotating across x.

    The face ``x = 0`` is the "endocardium" (label 1), ``x = size`` the "epicardium" (3). The
    fibre lies in the y-z plane at angle +60 deg (x = 0) to -60 deg (x = size) from y.
    """
    import itertools

    from cdt_bayes._geometry import Mesh, tet_volumes

    ax = np.linspace(0.0, size_mm, n + 1)
    z, y, x = np.meshgrid(ax, ax, ax, indexing="ij")
    nodes = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    stride = np.array([1, n + 1, (n + 1) ** 2])
    k, j, i = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    base = (i * stride[0] + j * stride[1] + k * stride[2]).ravel()
    tets = []
    for perm in itertools.permutations(range(3)):
        offs = np.concatenate([[0], np.cumsum(stride[list(perm)])])
        tets.append(base[:, None] + offs[None])
    tets = np.concatenate(tets).astype(np.int64)
    neg = tet_volumes(nodes, tets) < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    xc = nodes[tets].mean(axis=1)[:, 0] / size_mm
    a = np.deg2rad(60.0 - 120.0 * xc)
    fib = np.stack([np.zeros_like(a), np.cos(a), np.sin(a)], axis=1)
    surface = np.zeros(len(nodes), np.int32)
    surface[np.isclose(nodes[:, 0], size_mm)] = 3
    surface[np.isclose(nodes[:, 0], 0.0)] = 1
    mesh = Mesh(nodes=nodes, tets=tets, fibres=fib, surface=surface)
    centre = nodes.mean(axis=0)
    r = 2.0 * float(np.linalg.norm(nodes - centre, axis=1).max()) + 10.0
    dirs = {
        "RA": (-0.7, 0.0, 0.7), "LA": (0.7, 0.0, 0.7), "LL": (0.3, 0.0, -0.95),
        "V1": (-0.26, 0.97, 0.0), "V2": (0.26, 0.97, 0.0), "V3": (0.64, 0.77, 0.0),
        "V4": (0.87, 0.5, 0.0), "V5": (0.98, 0.17, 0.0), "V6": (0.98, -0.17, 0.0),
    }  # fmt: skip
    el = {k: centre + r * np.asarray(v) / np.linalg.norm(v) for k, v in dirs.items()}
    return mesh, el, f"box {n}^3 cells, {size_mm:g} mm"


def gmsh_case(h: float):
    """The built-in biventricle meshed at size ``h`` mm (generate_biventricular)."""
    from cdt_bayes import _meshgen

    name = {v: k for k, v in _meshgen.RESOLUTIONS.items()}.get(h)
    if name is None:  # a size between the generator's presets, e.g. ~10k nodes
        name = f"h{h:g}"
        with mock.patch.dict(_meshgen.RESOLUTIONS, {name: h}):
            mesh, el = _meshgen.generate_biventricular(name, seed=0)
        return mesh, el, f"biventricle, gmsh h={h:g} mm"
    mesh, el = _meshgen.generate_biventricular(name, seed=0)
    return mesh, el, f"biventricle '{name}' (h={h:g} mm)"


def have_gmsh() -> bool:
    try:
        import gmsh  # noqa: F401
    except ImportError:
        return False
    return True


def pick_pmjs(mesh, n: int = N_PMJ, seed: int = 0):
    """``n`` endocardial nodes by farthest-point sampling, and times uniform in 0-15 ms."""
    surface = np.asarray(mesh.surface)
    endo = np.flatnonzero((surface == 1) | (surface == 2))
    x = np.asarray(mesh.nodes)[endo]
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(endo)))]
    d = np.linalg.norm(x - x[chosen[0]], axis=1)
    for _ in range(n - 1):
        j = int(np.argmax(d))
        chosen.append(j)
        d = np.minimum(d, np.linalg.norm(x - x[j], axis=1))
    nodes = endo[chosen]
    return nodes, rng.uniform(0.0, 15.0, n)


def prepare(size: str, workdir: Path, use_gmsh: bool) -> dict:
    from cdt_bayes._ecg import LeadField

    h, n_box = SIZES[size]
    t0 = time.perf_counter()
    mesh, electrodes, desc = gmsh_case(h) if use_gmsh else box_case(n_box)
    log(
        f"{size}: {desc}: {mesh.n_nodes} nodes, {mesh.n_tets} tets "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    pmj_nodes, pmj_t = pick_pmjs(mesh)
    lf = LeadField.from_mesh(mesh, electrodes, cv_fiber=CV_FIBER, cv_cross=CV_CROSS)
    path = workdir / f"{size}.npz"
    np.savez(
        path,
        nodes=np.asarray(mesh.nodes, np.float64),
        tets=np.asarray(mesh.tets, np.int64),
        fibres=np.asarray(mesh.fibres, np.float64),
        pmj_nodes=pmj_nodes.astype(np.int64),
        pmj_xyz=np.asarray(mesh.nodes)[pmj_nodes],
        pmj_t=pmj_t,
        lead_matrix=np.asarray(lf.matrix, np.float64),
        cv_fiber=CV_FIBER,
        cv_cross=CV_CROSS,
    )
    return {
        "size": size,
        "desc": desc,
        "n_nodes": mesh.n_nodes,
        "n_tets": mesh.n_tets,
        "data": path,
        "n_leads": lf.n_leads,
    }


# --------------------------------------------------------------------------------------
# Measurements (one subprocess each)
# --------------------------------------------------------------------------------------


def measure(
    what: str,
    data: Path,
    repeat: int,
    timeout: float,
    save: Path | None = None,
    precision: str | None = None,
) -> dict:
    cmd = [sys.executable, str(HERE / "forward.py"), what, str(data), "--repeat", str(repeat)]
    if save is not None:
        cmd += ["--save", str(save)]
    if precision is not None:
        cmd += ["--precision", precision]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"{what} on {data.name} failed (exit {p.returncode}): " + " | ".join(tail)
        )
    res = json.loads(lines[-1])
    res["process_wall_s"] = wall
    log(f"  {what:8s} {res['seconds'] * 1e3:10.2f} ms   peak RSS {res['peak_rss_mb']:7.0f} MB")
    return res


def run_size(case: dict, args, workdir: Path) -> dict:
    d, r, to = case["data"], args.repeat, args.timeout
    out = dict(case)
    t_ours = workdir / f"{case['size']}_ours.npy"
    out["eikonal"] = measure("eikonal", d, r, to, save=t_ours)
    out["ecg"] = measure("ecg", d, r, to)
    out["forward"] = measure("forward", d, r, to)
    out["grad"] = measure("grad", d, r, to)
    if not args.no_fim:
        t32, t64 = workdir / f"{case['size']}_fim32.npy", workdir / f"{case['size']}_fim64.npy"
        out["fim32"] = measure("fim", d, args.fim_repeat, to, save=t32, precision="float32")
        out["fim64"] = measure("fim", d, 1, to, save=t64, precision="float64")
        ours = np.load(t_ours)
        out["max_dT_ms"] = float(np.abs(ours - np.load(t64)).max())
        out["mean_dT_ms"] = float(np.abs(ours - np.load(t64)).mean())
        out["max_dT32_ms"] = float(np.abs(ours - np.load(t32)).max())
        out["T_max_ms"] = float(np.load(t64).max())
    return out


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("jax", "jaxlib", "fim-python", "cdt_bayes"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def fmt_ms(s: float) -> str:
    ms = s * 1e3
    if ms >= 10_000:
        return f"{s:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.3f} ms"


def fim_seconds(r: dict) -> float:
    """fim-python's time for the speed-up: the faster of its float32 and float64 runs."""
    return min(r["fim32"]["seconds"], r["fim64"]["seconds"])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: list[dict], args, load: tuple[float, float], started: dt.datetime) -> str:
    v = versions()
    device = results[0]["eikonal"].get("device", "?") if results else "?"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = mem_total_gib()
    cmd = "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `{cmd.strip()}`",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs ({usable} usable)"
        + (f", {mem:.1f} GiB RAM" if mem else "")
        + f", {platform.system()} {platform.release()} {platform.machine()}",
        f"- software: Python {v['python']}, jax {v['jax']} (jaxlib {v['jaxlib']}), device "
        f"**{device}**, numpy {v['numpy']}, fim-python {v['fim-python']}",
        f"- load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}",
        f"- ours: JAX float32 Jacobi FIM with implicit-adjoint gradient, medians of "
        f"{args.repeat} calls after compilation; fim-python: CPU active list, median of "
        f"{args.fim_repeat} call(s) in float32 and one in float64 (the accuracy reference); the "
        "speed-up uses the faster of the two; solver set-up not timed; each measurement in "
        "its own process.",
        f"- {N_PMJ} PMJs on endocardial nodes, times 0-15 ms; cv {CV_FIBER}/{CV_CROSS} mm/ms; "
        "loss = mean squared ECG error, gradient w.r.t. PMJ positions and times.",
        "",
        "| mesh | nodes | tets | eikonal (sweeps) | fim-python f32 / f64 | speed-up | "
        "max abs dT vs f64 (vs f32) | ECG | forward loss | value+grad | v+g / forward | "
        "v+g peak RSS (baseline) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        e, g, f = r["eikonal"], r["grad"], r["forward"]
        fim = "n/a"
        speed = dT = "n/a"
        if "fim32" in r:
            fim = f"{fmt_ms(r['fim32']['seconds'])} / {fmt_ms(r['fim64']['seconds'])}"
            speed = f"{fim_seconds(r) / e['seconds']:.0f}x"
            dT = f"{r['max_dT_ms']:.2g} ms ({r['max_dT32_ms']:.2g}) of {r['T_max_ms']:.0f} ms"
        lines.append(
            f"| {r['size']}: {r['desc']} | {r['n_nodes']:,} | {r['n_tets']:,} | "
            f"{fmt_ms(e['seconds'])} ({e['n_sweeps']}) | {fim} | {speed} | {dT} | "
            f"{fmt_ms(r['ecg']['seconds'])} | {fmt_ms(f['seconds'])} | {fmt_ms(g['seconds'])} | "
            f"{g['seconds'] / f['seconds']:.2f}x | {g['peak_rss_mb']:.0f} MB "
            f"({g['baseline_rss_mb']:.0f} MB) |"
        )
    lines += [
        "",
        "| target | " + " | ".join(r["size"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    row = []
    for r in results:
        if "fim32" in r:
            s = fim_seconds(r) / r["eikonal"]["seconds"]
            row.append(f"{s:.0f}x {verdict(s >= TARGET_SPEEDUP)}")
        else:
            row.append("not run")
    lines.append(
        f"| eikonal >= {TARGET_SPEEDUP:g}x faster than fim-python | " + " | ".join(row) + " |"
    )
    row = []
    for r in results:
        q = r["grad"]["seconds"] / r["forward"]["seconds"]
        row.append(f"{q:.2f}x {verdict(q <= TARGET_GRAD_RATIO)}")
    lines.append(f"| value+gradient <= {TARGET_GRAD_RATIO:g}x forward | " + " | ".join(row) + " |")
    row = []
    for r in results:
        mb = r["grad"]["peak_rss_mb"]
        tag = verdict(mb <= TARGET_PEAK_MB) if r["n_tets"] >= TARGET_PEAK_TETS else "(info)"
        row.append(f"{mb:.0f} MB {tag}")
    lines.append("| value+gradient peak memory <= 2 GB at ~200k tets | " + " | ".join(row) + " |")
    notes = []
    if max(load) > 0.5 * (os.cpu_count() or 1):
        notes.append(
            f"Other processes shared the {os.cpu_count()} cores during this run (load average up "
            f"to {max(load):.1f}): timings are noisy, ratios within a row are more reliable than "
            "absolute times."
        )
    notes.append(
        "Peak RSS is the whole process (Python, JAX runtime, XLA compilation, data), from "
        "/proc/self/status VmHWM; the baseline is the RSS after imports and loading the mesh."
    )
    for r in results:
        xt = r["grad"].get("xla_temp_mb")
        if xt is not None:
            notes.append(
                f"{r['size']}: XLA temporary buffers of the compiled value+gradient "
                f"{xt:.0f} MB (forward loss "
                f"{r['forward'].get('xla_temp_mb', float('nan')):.0f} MB)."
            )
    lines += ["", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--sizes",
        default="small,large",
        help=f"comma-separated subset of {', '.join(SIZES)} (default: small,large)",
    )
    p.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (median)")
    p.add_argument(
        "--fim-repeat", type=int, default=2, help="fim-python float32 calls (median; it is slow)"
    )
    p.add_argument("--out", default=str(HERE / "RESULTS.md"), help="markdown file to append to")
    p.add_argument("--no-fim", action="store_true", help="skip fim-python")
    p.add_argument("--box", action="store_true", help="structured box meshes even with gmsh")
    p.add_argument("--timeout", type=float, default=1800.0, help="per measurement, s")
    args = p.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    bad = [s for s in sizes if s not in SIZES]
    if bad or args.repeat < 1 or args.fim_repeat < 1:
        p.error(f"unknown sizes {bad}" if bad else "--repeat and --fim-repeat must be >= 1")
    if not args.no_fim:
        import contextlib
        import io

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # fimpy prints when CuPy is absent
                import fimpy  # noqa: F401
        except ImportError:
            log("fim-python is not installed: skipping the comparison (pip install fim-python)")
            args.no_fim = True
    use_gmsh = have_gmsh() and not args.box
    if not use_gmsh:
        log("gmsh not available (or --box): structured box meshes")
    started = dt.datetime.now(dt.UTC)
    load0 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="cdt_bench_") as tmp:
        work = Path(tmp)
        for size in sizes:
            case = prepare(size, work, use_gmsh)
            results.append(run_size(case, args, work))
    load1 = os.getloadavg()[0]
    text = report(results, args, (load0, load1), started)
    print(text)
    out = Path(args.out)
    header = (
        ""
        if out.exists()
        else (
            "# Benchmark results\n\nAppended by `python benchmarks/run.py` (`make bench`); see "
            "`benchmarks/README.md`.\n\n"
        )
    )
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(header + text + "\n")
    log(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
