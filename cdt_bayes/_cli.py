"""Command-line interface ``cdt-bayes`` (console script ``cdt_bayes._cli:main``).

The CLI parses arguments, calls the library and maps errors; it holds no numerics. Every
problem with user input ends with one line on stderr,
``cdt-bayes: error: <file or option>: <problem>``, and exit status 2 (never a traceback);
an unexpected exception also ends with one line (exit status 1) that says how to get the
traceback (``CDT_BAYES_DEBUG=1``). Output files are staged and moved into the ``--out``
directory only when complete (:func:`~cdt_bayes._io.atomic_output_dir`).

Progress and warnings go to stderr (``cdt-bayes: warning: ...``); stdout carries results only
(where the outputs are, or the JSON object of ``bench``).

Importing this module does no work: JAX, NumPy and the pipeline modules are imported inside the
command handlers.

Units everywhere: mm, ms, mm/ms, mV.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

from ._errors import CdtBayesError, InputFileError

__all__ = ["main", "build_parser"]

PROG = "cdt-bayes"
DEBUG_ENV = "CDT_BAYES_DEBUG"

#: Exit status for bad input (argparse uses 2 for usage errors too).
EXIT_INPUT = 2
#: Exit status for unexpected internal errors.
EXIT_INTERNAL = 1

_UNITS = ("m", "cm", "mm", "um")

_DEFAULT_MAX_SWEEPS = 2000

#: Directions (patient frame: x left, y anterior, z superior) of the sphere electrodes that
#: ``bench`` uses without ``--electrodes``.
_SPHERE_DIRECTIONS = {
    "RA": (-0.7, 0.0, 0.7),
    "LA": (0.7, 0.0, 0.7),
    "LL": (0.3, 0.0, -0.95),
    "V1": (-0.26, 0.97, 0.0),
    "V2": (0.26, 0.97, 0.0),
    "V3": (0.64, 0.77, 0.0),
    "V4": (0.87, 0.5, 0.0),
    "V5": (0.98, 0.17, 0.0),
    "V6": (0.98, -0.17, 0.0),
}


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def _one_line(msg: object) -> str:
    text = " ".join(str(msg).split())
    return text or type(msg).__name__


def _error(msg: object) -> None:
    print(f"{PROG}: error: {_one_line(msg)}", file=sys.stderr, flush=True)


def _warn(msg: object) -> None:
    print(f"{PROG}: warning: {_one_line(msg)}", file=sys.stderr, flush=True)


def _say(args: argparse.Namespace, msg: str) -> None:
    """Print a progress line to stderr unless ``--quiet``/``--no-progress``."""
    if not getattr(args, "quiet", False):
        print(f"{PROG} {args.command}: {msg}", file=sys.stderr, flush=True)


def _os_error_message(e: OSError) -> str:
    reason = e.strerror or _one_line(e)
    if e.filename is not None:
        target = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{target}: {reason}"
    return reason


@contextlib.contextmanager
def _warnings_to_stderr():
    """Show the package's own warnings as one line each on stderr; silence the rest."""

    def show(message, category, filename, lineno, file=None, line=None):
        _warn(message)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", category=UserWarning, module=r"cdt_bayes")
        warnings.showwarning = show
        yield


# --------------------------------------------------------------------------------------
# Argument types (each error names the option through argparse: "argument --x: ...")
# --------------------------------------------------------------------------------------


class _QrsAction(argparse.Action):
    """``--qrs auto``, ``--qrs whole`` or ``--qrs START_MS END_MS`` (two numbers)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and values[0].lower() in ("auto", "whole"):
            setattr(namespace, self.dest, values[0].lower())
            return
        if len(values) != 2:
            parser.error(f"{option_string}: give 'auto', 'whole' or START_MS END_MS, got {' '.join(values)}")
        try:
            setattr(namespace, self.dest, [_number(v) for v in values])
        except argparse.ArgumentTypeError as e:
            parser.error(f"{option_string}: {e}")


def _number(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{s!r}: NaN or infinite values are not allowed")
    return v


def _positive(unit: str):
    def parse(s: str) -> float:
        v = _number(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be a positive number in {unit}, got {s}")
        return v

    parse.__name__ = "positive number"
    return parse


def _non_negative(unit: str):
    def parse(s: str) -> float:
        v = _number(s)
        if v < 0:
            raise argparse.ArgumentTypeError(f"must be a number >= 0 in {unit}, got {s}")
        return v

    parse.__name__ = "non-negative number"
    return parse


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {s}")
        return v

    parse.__name__ = f"integer >= {lo}"
    return parse


# --------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------


class _UsageError(Exception):
    """A command-line usage error (printed as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (``cdt-bayes: error: ...``), not a usage dump."""

    def error(self, message: str):  # noqa: D102 - argparse API
        sub = self.prog[len(PROG) :].strip()
        where = f"{sub}: " if sub else ""
        raise _UsageError(f"{where}{message} (see '{self.prog} --help')")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: X)`` except for unset (None) options and flags."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or not action.help:
            return action.help
        return super()._get_help_string(action)


def _add_velocities(p: argparse.ArgumentParser, fixed: bool) -> None:
    """``--cv-fiber``/``--cv-cross``: defaults 0.6/0.4 mm/ms, or (``fixed=False``) inferred."""
    for opt, default, what in (
        ("--cv-fiber", 0.6, "along the fibre"),
        ("--cv-cross", 0.4, "across the fibre (sheet and normal)"),
    ):
        p.add_argument(
            opt,
            type=_positive("mm/ms"),
            default=default if fixed else None,
            metavar="V",
            help=f"conduction velocity {what}, mm/ms"
            + ("" if fixed else " (given: fixed; default: inferred under its prior)"),
        )


def _add_units(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--units",
        choices=_UNITS,
        default=None,
        help="length unit of the mesh coordinates, scaled to mm "
        "(default: mm, or um for openCARP .pts)",
    )


def _inference_mesh_arg(text: str):
    if text in ("auto", "full"):
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, full or a spacing in mm, got {text!r}") from None
    if not 0 < v < float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"the inference-mesh spacing must be a positive number of mm, got {text}")
    return v


def _add_endo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endo-lv",
        metavar="FILE",
        help="LV endocardium: 0-based node list or surface mesh (replaces surface label 1)",
    )
    p.add_argument(
        "--endo-rv",
        metavar="FILE",
        help="RV endocardium: 0-based node list or surface mesh (replaces surface label 2)",
    )


def _add_leads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--leads",
        nargs="+",
        metavar="LEAD",
        help="leads to use, space or comma separated (e.g. I II V1 V2); default: the 12 "
        "standard leads the electrodes allow, then one unipolar lead per extra electrode",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the ``cdt-bayes`` argument parser (all subcommands of the contract).

    Returns
    -------
    argparse.ArgumentParser
        Parser whose namespace has ``command`` and ``handler`` (the function to call).
    """
    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
        description="Bayesian cardiac digital twin: tetrahedral mesh -> anisotropic eikonal "
        "activation -> 12-lead ECG -> posterior over Purkinje-muscle junctions (PMJs). "
        "Units: mm, ms, mm/ms, mV.",
        epilog=f"Errors end with one line '{PROG}: error: ...' and exit status 2; set "
        f"{DEBUG_ENV}=1 to see tracebacks of unexpected errors.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # geometry -----------------------------------------------------------------------
    p = sub.add_parser(
        "geometry",
        formatter_class=_Formatter,
        help="write the built-in biventricular mesh and 12-lead electrodes",
        description="Write DIR/heart.vtu (tetrahedra; point data fiber, sheet, surface: "
        "0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base; coordinates in mm, patient frame "
        "x left, y anterior, z superior) and DIR/electrodes.csv (name,x_mm,y_mm,z_mm). "
        "'coarse' with seed 0 is the shipped default (no gmsh needed); other resolutions "
        "or seeds are generated with gmsh.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--resolution",
        choices=("coarse", "medium", "fine"),
        default="coarse",
        help="mesh size: coarse ~5k nodes (3.5 mm), medium ~20k (2 mm), fine ~50k (1.5 mm)",
    )
    p.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="shape seed: 0 is the canonical shape, others perturb proportions by a few percent",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(handler=_cmd_geometry)

    # simulate -----------------------------------------------------------------------
    p = sub.add_parser(
        "simulate",
        formatter_class=_Formatter,
        help="activation map and ECG from PMJs",
        description="Anisotropic eikonal activation from PMJs (float32 fast iterative "
        "method) and the lead-field pseudo-ECG. Writes DIR/activation.vtu (the mesh with "
        "point data activation_ms, plus fiber/surface when present) and DIR/ecg.csv "
        "(time_ms, then I, II, III, aVR, aVL, aVF, V1-V6, then extra electrodes, in mV, at "
        "1 ms steps from 0 ms to the end of the QRS complex).",
    )
    p.add_argument(
        "--mesh", required=True, metavar="M", help="tetrahedral mesh (meshio or openCARP basename)"
    )
    p.add_argument("--pmj", required=True, metavar="P", help="PMJ CSV x_mm,y_mm,z_mm,t_ms")
    p.add_argument(
        "--electrodes", required=True, metavar="E", help="electrode CSV name,x_mm,y_mm,z_mm"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    _add_velocities(p, fixed=True)
    _add_units(p)
    _add_endo(p)
    p.add_argument(
        "--fibres",
        choices=("file", "rule-based"),
        default="file",
        help="'file': the mesh's fiber data (none: isotropic, with a warning); 'rule-based': "
        "compute helix fibres (+60 to -60 deg) from the surface labels",
    )
    _add_leads(p)
    p.add_argument(
        "--source-radius",
        type=_non_negative("mm"),
        default=0.0,
        metavar="MM",
        help="also initialise nodes within this distance of a PMJ, mm "
        "(0: only the nodes of the PMJ's tet)",
    )
    p.add_argument(
        "--max-sweeps",
        type=_int_at_least(1),
        default=_DEFAULT_MAX_SWEEPS,
        metavar="N",
        help="maximum eikonal sweeps before reporting non-convergence",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(handler=_cmd_simulate)

    # fit ----------------------------------------------------------------------------
    p = sub.add_parser(
        "fit",
        formatter_class=_Formatter,
        help="Bayesian inversion of an ECG for PMJ positions and times",
        description="Posterior over PMJ positions and times (and the other model "
        "parameters) given an ECG. Writes DIR/posterior.nc, DIR/activation_summary.vtu, "
        "DIR/ecg_posterior.csv and DIR/summary.json.",
    )
    p.add_argument(
        "--mesh", required=True, metavar="M", help="tetrahedral mesh with surface labels"
    )
    p.add_argument(
        "--ecg",
        required=True,
        metavar="ECG",
        help="ECG CSV (time_ms then leads in mV) or WFDB record (.hea)",
    )
    p.add_argument(
        "--electrodes", required=True, metavar="E", help="electrode CSV name,x_mm,y_mm,z_mm"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--method",
        choices=("nuts", "svi", "map"),
        default="nuts",
        help="NUTS (MCMC), SVI (low-rank variational) or MAP (point estimate, no uncertainty)",
    )
    p.add_argument(
        "--n-pmj",
        type=_int_at_least(1),
        default=None,
        metavar="K",
        help="number of PMJs (default: n_pmj of the spec)",
    )
    p.add_argument("--chains", type=_int_at_least(1), default=4, metavar="C", help="MCMC chains")
    p.add_argument(
        "--num-warmup",
        type=_int_at_least(0),
        default=500,
        metavar="W",
        help="warm-up iterations per chain (SVI: optimisation steps)",
    )
    p.add_argument(
        "--num-samples",
        type=_int_at_least(1),
        default=500,
        metavar="S",
        help="posterior draws per chain",
    )
    p.add_argument("--seed", type=_int_at_least(0), default=0, metavar="N", help="random seed")
    _add_velocities(p, fixed=False)
    _add_units(p)
    p.add_argument(
        "--spec",
        metavar="FILE",
        default=None,
        help="model specification TOML (default: models/default.toml)",
    )
    p.add_argument(
        "--qrs",
        nargs="+",
        action=_QrsAction,
        metavar="WINDOW",
        default="auto",
        help="part of the ECG to fit: 'auto' (default: the QRS complex found in the ECG; a "
        "recording with an ST-T segment, a long lead-in or several beats is cut to one QRS), "
        "'whole', or START_MS END_MS (ms from the start of the ECG)",
    )
    p.add_argument(
        "--baseline",
        choices=("auto", "none", "offset", "linear"),
        default=None,
        help="per-lead ECG baseline fitted alongside (integrated out): 'linear' a level and a ramp, "
        "'offset' a level, 'none'; 'auto' (the default spec's) fits 'linear' only when the window "
        "starts or ends off zero (default: baseline of the spec)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the checkpoint in DIR when one exists"
    )
    p.add_argument(
        "--time-budget",
        type=_positive("s"),
        default=None,
        metavar="SECONDS",
        help="wall-time budget of the fit, s: NUTS shortens warm-up and draws alike to fit it, "
        "and stops there (the draws so far are kept)",
    )
    p.add_argument(
        "--forward-error-draws",
        type=_int_at_least(0),
        default=24,
        metavar="N",
        help="posterior draws re-solved by the full eikonal solver to measure the fast path's error; "
        "the activation sd and 90%% interval then include it (forward_error_ms per node). "
        "0: leave it out (default: 24; MAP fits never include it)",
    )
    p.add_argument(
        "--chain-starts",
        choices=("evidence", "distinct"),
        default="evidence",
        help="NUTS chain starts: 'evidence' (default) shares chains among the MAP optima by "
        "their Laplace evidence, skipping optima with < 0.1%% of it; 'distinct' puts one chain "
        "in each optimum, best first, whatever its weight",
    )
    p.add_argument(
        "--combine-chains",
        choices=("equal", "stacking"),
        default="equal",
        help="how NUTS chains that disagree (R-hat > 1.05) are pooled into the summaries: "
        "'equal' (default) counts every chain the same; 'stacking' weights each chain by how "
        "well it predicts ECG samples left out (leave-one-out stacking). posterior.nc keeps the "
        "chains as sampled; summary.json chain_stacking has the weights either way",
    )
    p.add_argument(
        "--max-tree-depth",
        type=_int_at_least(1),
        default=8,
        metavar="D",
        help="NUTS tree-depth cap (at most 2^D - 1 leapfrog steps per iteration; default 8)",
    )
    p.add_argument(
        "--chain-method",
        choices=("auto", "sequential", "vectorized"),
        default="auto",
        help="NUTS chains in turn on one device ('sequential') or together in one vmapped "
        "program ('vectorized'); 'auto' (default): vectorized on a GPU, sequential on a CPU",
    )
    p.add_argument(
        "--search-rounds",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help="basin-hopping rounds after the multi-start MAP: each re-draws a few PMJs of the best "
        "optimum and re-optimises (default: 6 for nuts, 4 for svi, 0 for map, the Geodesic-BP baseline)",
    )
    p.add_argument(
        "--search-smooth-ms",
        type=_non_negative("ms"),
        default=None,
        metavar="MS",
        help="time smoothing (Gaussian sd, ms) of the ECG misfit at the start of the MAP search, "
        "falling to none as it goes: coarse to fine (default 0: none; try 4). Only the search sees it",
    )
    p.add_argument(
        "--inference-mesh",
        type=_inference_mesh_arg,
        default="auto",
        metavar="auto|full|MM",
        help="mesh the model runs on: 'auto' (default) carves a 3.5 mm inference mesh from "
        "meshes of more than 12,000 nodes (the outputs stay on the given mesh, interpolated); "
        "'full' fits on the given mesh itself (slow on large meshes: one eikonal solve per "
        "dictionary site); a number sets the inference mesh's node spacing in mm",
    )
    _add_leads(p)
    _add_endo(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(handler=_cmd_fit)

    # report -------------------------------------------------------------------------
    p = sub.add_parser(
        "report",
        formatter_class=_Formatter,
        help="HTML uncertainty report of a fit directory",
        description="Self-contained report from a 'fit' output directory: activation maps "
        "(mean and uncertainty), ECG fit bands, identifiability, diagnostics and caveats.",
    )
    p.add_argument("dir", metavar="DIR", help="output directory of 'cdt-bayes fit'")
    p.add_argument(
        "--out", metavar="HTML", default=None, help="report file (default: DIR/report.html)"
    )
    p.add_argument("--pdf", metavar="PDF", default=None, help="also write a PDF")
    p.set_defaults(handler=_cmd_report)

    # bench --------------------------------------------------------------------------
    p = sub.add_parser(
        "bench",
        formatter_class=_Formatter,
        help="time the eikonal, the ECG and the gradient; print one JSON object",
        description="Prints one JSON object on stdout: n_nodes, n_tets, eikonal_s (median "
        "wall time, s, of one activation solve after compilation), ecg_s (ECG from an "
        "activation map), grad_s (value and gradient of a mean-squared ECG loss with "
        "respect to PMJ positions and times), device (jax.default_backend()), and extras. "
        "Without --electrodes, RA, LA, LL and V1-V6 are placed on a sphere of radius "
        "2 R + 10 mm around the mesh's bounding-box centre, R being the largest distance "
        "from that centre to a node (patient frame: x left, y anterior, "
        "z superior; limb electrodes up-right, up-left and down, V1-V6 on the anterior-left "
        "equator).",
    )
    p.add_argument("--mesh", required=True, metavar="M", help="tetrahedral mesh")
    p.add_argument("--pmj", required=True, metavar="P", help="PMJ CSV x_mm,y_mm,z_mm,t_ms")
    p.add_argument(
        "--repeat",
        type=_int_at_least(1),
        default=5,
        metavar="N",
        help="timed calls per measurement (the median is reported)",
    )
    _add_velocities(p, fixed=True)
    p.add_argument(
        "--electrodes",
        metavar="E",
        default=None,
        help="electrode CSV name,x_mm,y_mm,z_mm (default: on a sphere, see above)",
    )
    _add_units(p)
    p.add_argument(
        "--max-sweeps",
        type=_int_at_least(1),
        default=_DEFAULT_MAX_SWEEPS,
        metavar="N",
        help="maximum eikonal sweeps",
    )
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(handler=_cmd_bench, fibres="file", endo_lv=None, endo_rv=None, leads=None)

    # demo ---------------------------------------------------------------------------
    p = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="the whole path on the built-in geometry",
        description="Geometry, a known activation, its ECG, the Bayesian fit and the report "
        "on the built-in default; prints where each output is.",
    )
    p.add_argument("--out", metavar="DIR", default="demo_out", help="output directory")
    p.add_argument(
        "--fast",
        action="store_true",
        help="tiny sampler settings (a smoke run, not a usable posterior)",
    )
    p.set_defaults(handler=_cmd_demo)
    return parser


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------


XLA_CACHE_ENV = "CDT_BAYES_XLA_CACHE"


def _enable_compilation_cache() -> None:
    """Keep compiled XLA programs on disk, in ``<cache>/xla`` (see :func:`cache_dir`).

    A fit compiles its log density, the optimiser and the sampler afresh in every process;
    with the persistent cache a second run on the same mesh and settings loads them
    instead. Programs that compile in under a second are not stored. ``CDT_BAYES_XLA_CACHE=0``
    turns it off; a compilation cache the caller configured already is left alone.
    """
    if os.environ.get(XLA_CACHE_ENV, "1") == "0":
        return
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    from ._outputs import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    """Run ``cdt-bayes`` with ``argv`` (default ``sys.argv[1:]``).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name.

    Returns
    -------
    int
        Exit status: 0 success, 2 bad input or usage, 1 unexpected error, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        _error(e)
        return EXIT_INPUT
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_INPUT
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{PROG} {version('cdt_bayes')}")
        except PackageNotFoundError:
            print(f"{PROG} (version unknown: package not installed)")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_INPUT
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _enable_compilation_cache()
    try:
        with _warnings_to_stderr():
            rc = args.handler(args)
        return 0 if rc is None else int(rc)
    except CdtBayesError as e:
        if debug:
            traceback.print_exc()
        _error(e)
        return EXIT_INPUT
    except OSError as e:
        if debug:
            traceback.print_exc()
        _error(_os_error_message(e))
        return EXIT_INPUT
    except KeyboardInterrupt:
        _error("interrupted (no outputs were left partially written)")
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        _error(f"{args.command}: out of memory; try a coarser mesh or fewer leads/PMJs")
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001 - the one place that turns bugs into one line
        if debug:
            traceback.print_exc()
        _error(
            f"{args.command}: unexpected {type(e).__name__}: {_one_line(e)[:400]} "
            f"(this is a bug; rerun with {DEBUG_ENV}=1 for the traceback)"
        )
        return EXIT_INTERNAL


# --------------------------------------------------------------------------------------
# Shared steps
# --------------------------------------------------------------------------------------


def _precheck_out(path: str, option: str = "--out") -> Path:
    """Fail early (before any computation) when ``path`` cannot become an output directory."""
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CdtBayesError(f"{option} {path}: exists and is not a directory")
        if not os.access(p, os.W_OK | os.X_OK):
            raise CdtBayesError(f"{option} {path}: directory is not writable")
        return p
    anc = p.absolute().parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise CdtBayesError(
            f"{option} {path}: cannot create the directory: {anc} is not a directory"
        )
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CdtBayesError(f"{option} {path}: cannot create the directory: {anc} is not writable")
    return p


def _split_leads(leads: list[str] | None) -> list[str] | None:
    if leads is None:
        return None
    from ._io import STANDARD_LEADS

    canon = {n.lower(): n for n in STANDARD_LEADS}
    out = [canon.get(x.strip().lower(), x.strip()) for item in leads for x in item.split(",")]
    out = [x for x in out if x]
    if not out:
        raise CdtBayesError("--leads: no lead names given")
    return out


def _load_mesh(args: argparse.Namespace):
    """Read and validate ``--mesh`` (with ``--units``, ``--endo-*``, ``--fibres``)."""
    from ._io import load_mesh

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = load_mesh(args.mesh, units=args.units, endo_lv=args.endo_lv, endo_rv=args.endo_rv)
    fibres = getattr(args, "fibres", "file")
    for w in caught:
        msg = str(w.message)
        if "no 'fiber'" in msg:
            if fibres == "rule-based":
                continue
            msg += " (pass --fibres rule-based to compute fibres from the surface labels)"
        if issubclass(w.category, UserWarning):
            _warn(msg)
    if fibres == "rule-based":
        from ._fibres import rule_based_fibres

        try:
            mesh = rule_based_fibres(mesh)
        except CdtBayesError as e:
            raise type(e)(f"{args.mesh}: --fibres rule-based: {_one_line(e)}") from None
    return mesh


def _read_pmjs(args: argparse.Namespace, mesh):
    """Read ``--pmj``, reject NaN/negative times and points outside the mesh, snap near ones."""
    import numpy as np

    from ._geometry import check_points_inside
    from ._io import read_pmj_csv

    xyz, t = read_pmj_csv(args.pmj)
    neg = np.nonzero(t < 0)[0]
    if neg.size:
        r = int(neg[0])
        raise InputFileError(
            f"{args.pmj}: row {r + 1}, column t_ms: {t[r]:g} is negative; initiation times are "
            "ms after QRS onset (>= 0)"
        )
    tet, bary, inside = check_points_inside(mesh, xyz, args.pmj)
    if not inside.all():  # within the tolerance: snap onto the mesh
        b = np.clip(bary, 0.0, None)
        b /= b.sum(axis=1, keepdims=True)
        snapped = np.einsum("ka,kai->ki", b, np.asarray(mesh.nodes)[np.asarray(mesh.tets)[tet]])
        out = ~inside
        xyz = np.where(out[:, None], snapped, xyz)
        _warn(f"{args.pmj}: {int(out.sum())} PMJs just outside the mesh moved onto its surface")
    return xyz, t


def _lead_field(args: argparse.Namespace, mesh, electrodes: dict, source: str):
    """Lead field of ``electrodes`` for ``--leads``; errors name the option or the file."""
    from ._ecg import LeadField, lead_matrix

    leads = _split_leads(getattr(args, "leads", None))
    names = list(electrodes)
    if leads is not None:
        try:
            lead_matrix(names, leads)
        except CdtBayesError as e:
            raise CdtBayesError(f"--leads: {_one_line(e)} (electrodes from {source})") from None
    try:
        return LeadField.from_mesh(
            mesh, electrodes, leads=leads, cv_fiber=args.cv_fiber, cv_cross=args.cv_cross
        )
    except CdtBayesError as e:
        raise InputFileError(f"{source}: {_one_line(e)}") from None


def _eikonal_solver():
    import jax

    from ._eikonal import solve_eikonal

    return jax.jit(solve_eikonal, static_argnames=("max_sweeps", "tol", "adj_tol", "source_radius"))


def _eikonal_inputs(mesh, xyz, t, args):
    """Float32 solver geometry and parameters (float32 whatever ``jax_enable_x64`` says)."""
    import numpy as np

    from ._eikonal import eikonal_geometry, eikonal_params

    geom = eikonal_geometry(mesh, dtype=np.float32)
    params = eikonal_params(
        np.asarray(xyz, np.float32), np.asarray(t, np.float32), args.cv_fiber, args.cv_cross
    )
    return geom, params


def _check_solution(T, info, args, max_sweeps: int) -> None:
    import numpy as np

    n = int(info.n_sweeps)
    if not bool(info.converged):
        raise CdtBayesError(
            f"{args.mesh}: the eikonal solver did not converge within {max_sweeps} sweeps "
            f"({n} done); raise --max-sweeps or check the mesh and velocities"
        )
    T = np.asarray(T)
    bad = ~np.isfinite(T) | (T >= 1.0e5)
    if bad.any():
        raise CdtBayesError(
            f"{args.mesh}: {int(bad.sum())} nodes were not reached by the activation "
            f"(first: node {int(np.nonzero(bad)[0][0])})"
        )


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


def _cmd_geometry(args: argparse.Namespace) -> int:
    import importlib.resources
    import shutil

    from . import _meshgen
    from ._io import atomic_output_dir

    out = _precheck_out(args.out)
    shipped = args.resolution == "coarse" and args.seed == 0
    if not shipped:
        import importlib.util

        if importlib.util.find_spec("gmsh") is None:
            raise CdtBayesError(
                f"--resolution {args.resolution} --seed {args.seed}: generating a mesh needs "
                "gmsh (pip install 'cdt_bayes[mesh]'); only the coarse mesh with seed 0 ships "
                "with the package"
            )
        _say(args, f"generating the {args.resolution} mesh (seed {args.seed}) with gmsh ...")
        t0 = time.perf_counter()
        mesh, electrodes = _meshgen.generate_biventricular(args.resolution, args.seed)
        _say(
            args,
            f"{mesh.n_nodes} nodes, {mesh.n_tets} tets in {time.perf_counter() - t0:.1f} s",
        )
    with atomic_output_dir(out) as tmp:
        if shipped:
            for src, dst in (
                (_meshgen._COARSE_VTU, "heart.vtu"),
                (_meshgen._COARSE_CSV, "electrodes.csv"),
            ):
                with importlib.resources.as_file(_meshgen._data_file(src)) as f:
                    shutil.copyfile(f, tmp / dst)
        else:
            _meshgen.write_mesh_vtu(tmp / "heart.vtu", mesh)
            _meshgen.write_electrodes_csv(tmp / "electrodes.csv", electrodes)
    print(f"mesh: {out / 'heart.vtu'}")
    print(f"electrodes: {out / 'electrodes.csv'}")
    return 0


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from ._ecg import ecg_time_grid, simulate_ecg
    from ._io import atomic_output_dir, check_length_units, read_electrodes_csv, save_mesh_vtu, write_ecg_csv

    out = _precheck_out(args.out)
    # All input checks first, silently: a bad input ends with exactly one line.
    mesh = _load_mesh(args)
    electrodes = read_electrodes_csv(args.electrodes)
    check_length_units(mesh, electrodes, args.mesh, args.electrodes)  # before the PMJs: the likelier cause
    xyz, t = _read_pmjs(args, mesh)
    lf = _lead_field(args, mesh, electrodes, args.electrodes)
    aniso = "isotropic" if mesh.fibres is None else "anisotropic"
    _say(
        args,
        f"{args.mesh}: {mesh.n_nodes} nodes, {mesh.n_tets} tets ({aniso}); {len(t)} PMJs; "
        f"{lf.n_leads} leads",
    )
    geom, params = _eikonal_inputs(mesh, xyz, t, args)
    solve = _eikonal_solver()
    t0 = time.perf_counter()
    T, info = solve(geom, params, max_sweeps=args.max_sweeps, source_radius=args.source_radius)
    T = np.asarray(T, dtype=np.float64)
    _check_solution(T, info, args, args.max_sweeps)
    _say(
        args,
        f"activation {T.min():.1f}-{T.max():.1f} ms ({int(info.n_sweeps)} sweeps, "
        f"{time.perf_counter() - t0:.2f} s incl. compilation)",
    )
    times = ecg_time_grid(T)
    ecg = np.asarray(simulate_ecg(T, lf.matrix, times), dtype=np.float64)
    if not np.isfinite(ecg).all():
        raise CdtBayesError(f"{args.electrodes}: the simulated ECG has non-finite values")
    with atomic_output_dir(out) as tmp:
        save_mesh_vtu(tmp / "activation.vtu", mesh, {"activation_ms": T})
        write_ecg_csv(tmp / "ecg.csv", times, lf.names, ecg)
    print(f"activation map: {out / 'activation.vtu'}")
    print(f"ECG ({lf.n_leads} leads, 0-{times[-1]:g} ms): {out / 'ecg.csv'}")
    return 0


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------


def _sphere_electrodes(mesh) -> dict:
    """RA, LA, LL, V1-V6 on a sphere of radius ``2 R + 10`` mm around the bounding-box centre."""
    import numpy as np

    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    centre = 0.5 * (nodes.min(axis=0) + nodes.max(axis=0))
    radius = 2.0 * float(np.linalg.norm(nodes - centre, axis=1).max()) + 10.0
    out = {}
    for name, d in _SPHERE_DIRECTIONS.items():
        d = np.asarray(d, dtype=np.float64)
        out[name] = centre + radius * d / np.linalg.norm(d)
    return out


def _median_wall(fn, repeat: int) -> float:
    """Median wall time, s, of ``fn()`` (its result blocked on) over ``repeat`` calls."""
    import statistics

    import jax

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


def _cmd_bench(args: argparse.Namespace) -> int:
    import json
    import platform

    import jax
    import jax.numpy as jnp
    import numpy as np

    from ._ecg import ecg_time_grid, simulate_ecg
    from ._eikonal import solve_eikonal
    from ._io import check_length_units, read_electrodes_csv

    mesh = _load_mesh(args)
    xyz, t = _read_pmjs(args, mesh)
    if args.electrodes is not None:
        electrodes, source = read_electrodes_csv(args.electrodes), args.electrodes
        check_length_units(mesh, electrodes, args.mesh, args.electrodes)
    else:
        electrodes, source = _sphere_electrodes(mesh), "sphere electrodes"
    lf = _lead_field(args, mesh, electrodes, source)
    geom, params = _eikonal_inputs(mesh, xyz, t, args)
    ms = args.max_sweeps
    _say(args, f"{mesh.n_nodes} nodes, {mesh.n_tets} tets, {len(t)} PMJs, {lf.n_leads} leads")

    solve = _eikonal_solver()
    t0 = time.perf_counter()
    T, info = jax.block_until_ready(solve(geom, params, max_sweeps=ms))
    compile_eik = time.perf_counter() - t0
    _check_solution(T, info, args, ms)
    eikonal_s = _median_wall(lambda: solve(geom, params, max_sweeps=ms)[0], args.repeat)
    _say(args, f"eikonal {eikonal_s * 1e3:.1f} ms ({int(info.n_sweeps)} sweeps)")

    L = jnp.asarray(lf.matrix, jnp.float32)
    times = jnp.asarray(ecg_time_grid(np.asarray(T)), jnp.float32)
    ecg_fn = jax.jit(simulate_ecg)
    target = jax.block_until_ready(ecg_fn(T, L, times))
    ecg_s = _median_wall(lambda: ecg_fn(T, L, times), args.repeat)
    _say(args, f"ECG {ecg_s * 1e3:.2f} ms ({lf.n_leads} leads x {times.shape[0]} samples)")

    def loss(pmj_xyz, pmj_t, geom, params, L, times, target):
        p = params._replace(pmj_xyz=pmj_xyz, pmj_t=pmj_t)
        act = solve_eikonal(geom, p, max_sweeps=ms)[0]
        return jnp.mean((simulate_ecg(act, L, times) - target) ** 2)

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    fwd = jax.jit(loss)
    t_eval = params.pmj_t + 1.0  # a non-zero residual
    operands = (params.pmj_xyz, t_eval, geom, params, L, times, target)
    t0 = time.perf_counter()
    val, (g_xyz, g_t) = jax.block_until_ready(vg(*operands))
    compile_grad = time.perf_counter() - t0
    jax.block_until_ready(fwd(*operands))
    grad_s = _median_wall(lambda: vg(*operands), args.repeat)
    forward_s = _median_wall(lambda: fwd(*operands), args.repeat)
    grad_finite = bool(np.isfinite(np.asarray(g_xyz)).all() and np.isfinite(np.asarray(g_t)).all())
    _say(args, f"value+gradient {grad_s * 1e3:.1f} ms ({grad_s / forward_s:.2f}x the forward loss)")

    result = {
        "n_nodes": mesh.n_nodes,
        "n_tets": mesh.n_tets,
        "eikonal_s": eikonal_s,
        "ecg_s": ecg_s,
        "grad_s": grad_s,
        "device": jax.default_backend(),
        "forward_loss_s": forward_s,
        "grad_over_forward": grad_s / forward_s,
        "grad_finite": grad_finite,
        "loss_mV2": float(val),
        "n_pmj": int(len(t)),
        "n_leads": lf.n_leads,
        "n_times": int(times.shape[0]),
        "n_sweeps": int(info.n_sweeps),
        "converged": bool(info.converged),
        "activation_max_ms": float(np.asarray(T).max()),
        "eikonal_compile_s": compile_eik,
        "grad_compile_s": compile_grad,
        "repeat": args.repeat,
        "dtype": "float32",
        "anisotropic": mesh.fibres is not None,
        "electrodes": source,
        "jax_version": jax.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# fit, report, demo: dispatched to the library
# --------------------------------------------------------------------------------------


def _dispatch(args: argparse.Namespace, module: str, function: str) -> int:
    """Call ``cdt_bayes.<module>.<function>(args)``; a missing module is a one-line error."""
    import importlib

    full = f"cdt_bayes.{module}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name and (e.name == full or e.name.startswith("cdt_bayes.")):
            raise CdtBayesError(
                f"{args.command}: not available yet ({e.name} is missing from this installation)"
            ) from None
        raise
    fn = getattr(mod, function, None)
    if fn is None:
        raise CdtBayesError(f"{args.command}: not available yet ({full}.{function} is missing)")
    try:
        rc = fn(args)
    except ModuleNotFoundError as e:  # a pipeline module imported lazily inside the command
        if e.name and e.name.startswith("cdt_bayes."):
            raise CdtBayesError(
                f"{args.command}: not available yet ({e.name} is missing from this installation)"
            ) from None
        raise
    return 0 if rc is None else int(rc)


def _cmd_fit(args: argparse.Namespace) -> int:
    if not isinstance(args.qrs, str) and not args.qrs[1] > args.qrs[0]:
        raise CdtBayesError(
            f"--qrs: END_MS must be greater than START_MS, got {args.qrs[0]:g} {args.qrs[1]:g}"
        )
    args.leads = _split_leads(args.leads)
    args.quiet = args.no_progress
    _precheck_out(args.out)
    return _dispatch(args, "_inference", "fit_command")


def _cmd_report(args: argparse.Namespace) -> int:
    d = Path(args.dir).expanduser()
    if not d.is_dir():
        raise CdtBayesError(
            f"{args.dir}: not a directory (give the --out directory of 'cdt-bayes fit')"
        )
    if args.out is None:
        args.out = str(d / "report.html")
    for opt, f in (("--out", args.out), ("--pdf", args.pdf)):
        if f is not None:
            parent = Path(f).expanduser().absolute().parent
            if not parent.is_dir():
                raise CdtBayesError(f"{opt} {f}: directory {parent} does not exist")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CdtBayesError(f"{opt} {f}: directory {parent} is not writable")
    return _dispatch(args, "_report", "report_command")


def _cmd_demo(args: argparse.Namespace) -> int:
    _precheck_out(args.out)
    return _dispatch(args, "_demo", "demo_command")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
