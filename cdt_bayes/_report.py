"""``cdt-bayes report``: a self-contained uncertainty report of a fit directory.

The report reads only the files that ``cdt-bayes fit`` writes (``summary.json``,
``activation_summary.vtu``, ``ecg_posterior.csv``, ``modes.npz`` and, for a few small
per-chain traces, ``posterior.nc``); it needs no JAX and re-runs nothing. It is written
for a clinician who is not a modeller, in six sections:

1. the case (inputs and a one-paragraph plain-language summary generated from the numbers),
2. posterior activation maps (mean, uncertainty, AHA bull's-eyes, early-activation sites,
   total activation time),
3. the 12-lead ECG (observed vs posterior-predictive mean and 90% band),
4. identifiability (the distinct activation patterns that fit the ECG; sd and shrinkage),
5. diagnostics as traffic lights with what to do about each amber/red light,
6. caveats.

Output: one HTML file with inline CSS and every image embedded as a base64 PNG (no
scripts, no links: it opens offline and can be e-mailed). With ``pdf=...`` the same
content is also written as a PDF with matplotlib's ``PdfPages`` (no extra dependency, works
everywhere; one or more A4 pages per section, the same figures and the text wrapped). A
print of the HTML itself can instead be made with a headless browser where one exists, e.g.
``chromium --headless --no-sandbox --print-to-pdf=report.pdf report.html``; the report does
not depend on it. Both outputs are written atomically (temporary file in the same
directory, then ``os.replace``), readable by all (0644).

Files ``summary.json``, ``activation_summary.vtu`` and ``ecg_posterior.csv`` are required;
``modes.npz`` and ``posterior.nc`` are optional (the report says what is missing). A
missing or unreadable required file raises :class:`~cdt_bayes._errors.CdtBayesError`
with a one-line message naming it.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import datetime
import html
import io
import json
import math
import os
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from . import _plots as P
from ._errors import CdtBayesError

__all__ = [
    "FitData",
    "Light",
    "load_fit_dir",
    "traffic_lights",
    "plain_summary",
    "write_report",
    "report_command",
]

_DPI = 100
_METHOD_NAMES = {
    "nuts": "NUTS (Markov chain Monte Carlo sampling of the posterior)",
    "map": "MAP (the single best-fitting parameter set: a point estimate, no uncertainty)",
    "svi": "SVI (variational approximation of the posterior)",
}
_LIGHT_WORD = {"green": "OK", "amber": "caution", "red": "problem", "grey": "n/a"}


def _say(msg: str) -> None:
    print(f"report: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Reading a fit directory
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FitData:
    """Everything the report reads from a fit directory (NumPy arrays; units mm, ms, mV).

    Attributes
    ----------
    path : Path
        The fit directory.
    summary : dict
        ``summary.json``.
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
    surface : (n_nodes,) int or None
        Labels 0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base.
    point_data : dict of str -> (n_nodes,) float
        Per-node summaries of ``activation_summary.vtu`` (``activation_mean_ms``, ...).
    time_ms : (n_times,) float
    leads : list of str
    ecg : dict of str -> (n_leads, n_times) float, mV
        ``observed``, ``mean``, ``q05``, ``q95`` from ``ecg_posterior.csv``.
    modes : dict or None
        ``modes.npz`` (``weights``, ``mean_maps``, ``ecg``, ...) or None when absent.
    traces : dict of str -> (chain, draw) array
        Small per-chain scalars from ``posterior.nc`` (empty when unavailable).
    notes : list of str
        What could not be read (shown in the report).
    """

    path: Path
    summary: dict
    nodes: np.ndarray
    tets: np.ndarray
    surface: np.ndarray | None
    point_data: dict
    time_ms: np.ndarray
    leads: list
    ecg: dict
    modes: dict | None
    traces: dict
    notes: list

    @property
    def method(self) -> str:
        """Inference method (``nuts``, ``svi``, ``map``)."""
        return str(self.summary.get("method", "?")).lower()

    @property
    def is_point_estimate(self) -> bool:
        """True for MAP fits (a single parameter set)."""
        return self.method == "map"


def _missing(path: Path) -> CdtBayesError:
    return CdtBayesError(f"{path}: missing — is this a 'cdt-bayes fit' output directory?")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_summary(p: Path) -> dict:
    if not p.is_file():
        raise _missing(p)
    try:
        s = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CdtBayesError(f"{p}: not a valid JSON file ({_one_line(e)})") from None
    if not isinstance(s, dict) or not isinstance(s.get("method"), str):
        raise CdtBayesError(f"{p}: not a fit summary (no 'method' field)")
    return s


def _read_vtu(p: Path):
    import meshio

    if not p.is_file():
        raise _missing(p)
    buf = io.StringIO()
    try:  # meshio prints reader errors and calls sys.exit(1) when no reader succeeds
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            m = meshio.read(str(p))
    except (Exception, SystemExit) as e:
        detail = _one_line(buf.getvalue()) if isinstance(e, SystemExit) else _one_line(e)
        detail = detail.replace("Error: ", "").replace(str(p), p.name)
        raise CdtBayesError(f"{p}: unreadable ({detail or 'not a VTU file'})") from None
    tets = [c.data for c in m.cells if c.type == "tetra"]
    if not tets or m.points.shape[0] == 0:
        raise CdtBayesError(f"{p}: no tetrahedra")
    tets = np.concatenate(tets).astype(np.int64)
    nodes = np.asarray(m.points, np.float64)[:, :3]
    pd = {}
    for k, v in m.point_data.items():
        v = np.asarray(v)
        if v.ndim == 1 or (v.ndim == 2 and v.shape[1] == 1):
            pd[k] = v.reshape(-1).astype(np.float64)
    for need in ("activation_mean_ms", "activation_sd_ms"):
        if need not in pd:
            raise CdtBayesError(f"{p}: no point data '{need}' (not a fit output?)")
    surface = pd.pop("surface", None)
    if surface is not None:
        surface = np.rint(surface).astype(np.int64)
    if not np.isfinite(nodes).all():
        raise CdtBayesError(f"{p}: NaN coordinates")
    if tets.min() < 0 or tets.max() >= nodes.shape[0]:
        raise CdtBayesError(f"{p}: tet node index out of range")
    return nodes, tets, surface, pd


_ECG_COLS = ("time_ms", "lead", "observed_mV", "mean_mV", "q05_mV", "q95_mV")


def _read_ecg_long(p: Path):
    if not p.is_file():
        raise _missing(p)
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise CdtBayesError(f"{p}: unreadable ({_one_line(e)})") from None
    if not rows:
        raise CdtBayesError(f"{p}: empty file")
    head = [h.strip() for h in rows[0]]
    miss = [c for c in _ECG_COLS if c not in head]
    if miss:
        raise CdtBayesError(
            f"{p}: missing column(s) {', '.join(miss)} (expected {','.join(_ECG_COLS)})"
        )
    col = {c: head.index(c) for c in _ECG_COLS}
    leads: list[str] = []
    data: dict[str, list] = {}
    try:
        for i, r in enumerate(rows[1:], start=2):
            if not r or all(not x.strip() for x in r):
                continue
            ld = r[col["lead"]].strip()
            if ld not in data:
                leads.append(ld)
                data[ld] = []
            data[ld].append([float(r[col[c]]) for c in _ECG_COLS if c != "lead"])
    except (ValueError, IndexError):
        raise CdtBayesError(f"{p}: line {i}: not a number or too few columns") from None
    if not leads:
        raise CdtBayesError(f"{p}: no data rows")
    times = np.unique(np.concatenate([np.asarray(v)[:, 0] for v in data.values()]))
    if not np.isfinite(times).all():
        raise CdtBayesError(f"{p}: non-finite time_ms")
    out = {k: np.full((len(leads), times.size), np.nan) for k in ("observed", "mean", "q05", "q95")}
    for li, ld in enumerate(leads):
        a = np.asarray(data[ld])
        ti = np.searchsorted(times, a[:, 0])
        for j, k in enumerate(("observed", "mean", "q05", "q95")):
            out[k][li, ti] = a[:, j + 1]
    return times, leads, out


def _read_modes(p: Path, n_nodes: int, n_leads: int, n_times: int) -> dict | None:
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            m = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # zipfile/pickle/value errors on corrupt files
        raise CdtBayesError(f"{p}: unreadable ({_one_line(e)})") from None
    for k in ("weights", "mean_maps", "ecg"):
        if k not in m:
            raise CdtBayesError(f"{p}: no array '{k}'")
    w, maps, ecg = m["weights"].reshape(-1), m["mean_maps"], m["ecg"]
    if maps.ndim != 2 or maps.shape[1] != n_nodes or maps.shape[0] != w.size:
        raise CdtBayesError(
            f"{p}: mean_maps has shape {maps.shape}, expected ({w.size}, {n_nodes}) for this mesh"
        )
    if ecg.ndim != 3 or ecg.shape[0] != w.size or ecg.shape[1:] != (n_leads, n_times):
        raise CdtBayesError(
            f"{p}: ecg has shape {ecg.shape}, expected ({w.size}, {n_leads}, {n_times})"
        )
    return m


_TRACE_VARS = (
    ("sample_stats", "lp", "log density"),
    ("posterior", "cv_scale", "velocity scale"),
    ("posterior", "sigma_mV", "noise sd (mV)"),
    ("posterior", "gain", "ECG gain"),
)


def _read_traces(p: Path, notes: list) -> tuple[dict, dict]:
    """Small (chain, draw) scalars and group attributes from ``posterior.nc``."""
    if not p.is_file():
        notes.append(f"{p.name} not found: no per-chain traces")
        return {}, {}
    traces, attrs = {}, {}
    try:
        import h5py
    except ImportError:
        notes.append(f"{p.name}: h5py not installed, no per-chain traces")
        return {}, {}
    try:
        with h5py.File(p, "r") as f:
            for grp in ("posterior", ""):
                g = f[grp] if grp else f
                for k in ("method", "spec", "seconds"):
                    if k in g.attrs and k not in attrs:
                        v = g.attrs[k]
                        attrs[k] = v.decode() if isinstance(v, bytes) else v
            for grp, var, label in _TRACE_VARS:
                if grp in f and var in f[grp]:
                    d = f[grp][var]
                    if d.ndim == 2 and d.size <= 200_000:
                        traces[label] = np.asarray(d[()], np.float64)
    except Exception as e:  # h5py raises OSError and others on corrupt files
        raise CdtBayesError(f"{p}: unreadable ({_one_line(e)})") from None
    return traces, attrs


def load_fit_dir(fit_dir: str | os.PathLike) -> FitData:
    """Read and check the files of a ``cdt-bayes fit`` output directory.

    Parameters
    ----------
    fit_dir : str or os.PathLike

    Returns
    -------
    FitData

    Raises
    ------
    CdtBayesError
        The directory or a required file is missing or unreadable, or the files do not
        belong together (node or lead counts differ).
    """
    d = Path(fit_dir)
    if not d.is_dir():
        raise CdtBayesError(
            f"{fit_dir}: not a directory (give the --out directory of 'cdt-bayes fit')"
        )
    summary = _read_summary(d / "summary.json")
    nodes, tets, surface, pd = _read_vtu(d / "activation_summary.vtu")
    n = nodes.shape[0]
    if "n_nodes" in summary and int(summary["n_nodes"]) != n:
        raise CdtBayesError(
            f"{d / 'activation_summary.vtu'}: {n} nodes but summary.json says {summary['n_nodes']}"
        )
    times, leads, ecg = _read_ecg_long(d / "ecg_posterior.csv")
    notes: list[str] = []
    modes = _read_modes(d / "modes.npz", n, len(leads), times.size)
    if modes is None:
        notes.append("modes.npz not found: the distinct activation patterns are not shown")
    traces, attrs = _read_traces(d / "posterior.nc", notes)
    if attrs.get("spec") and "spec" not in summary:
        summary = {**summary, "spec": attrs["spec"]}
    return FitData(d, summary, nodes, tets, surface, pd, times, leads, ecg, modes, traces, notes)


# --------------------------------------------------------------------------------------
# Numbers -> words
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Light:
    """One traffic light: ``level`` is ``green``, ``amber``, ``red`` or ``grey`` (n/a)."""

    name: str
    value: str
    level: str
    meaning: str
    advice: str = ""


def _num(x, default=float("nan")) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v


_ADVICE = {
    "rhat_nan": "Run at least 2 chains with 100+ draws each (--chains, --num-samples).",
    "rhat": (
        "Run longer (e.g. --num-warmup and --num-samples x2-4) and with more chains "
        "(--chains 4). If R-hat stays high and the Identifiability section shows several "
        "patterns, the ECG genuinely allows more than one answer."
    ),
    "ess": (
        "Too few independent draws for stable {what}: increase --num-samples "
        "(ESS grows roughly in proportion) and/or --chains."
    ),
    "div": (
        "Check the ECG for artefacts and the QRS window (--qrs), try fewer PMJs "
        "(--n-pmj), and run a longer warm-up (--num-warmup) so the step size adapts."
    ),
    "one_chain": "Run 4 chains (--chains 4).",
    "tree_cap": (
        "Most trajectories stopped at the tree-depth cap, not where they turned back: draws are "
        "more correlated than they need be (the effective sample size shows how much). This does "
        "not bias them. If the ESS is too small, run longer (--num-samples) or raise the cap "
        "(--max-tree-depth, each step up doubles the cost per draw)."
    ),
    "within": (
        "Even chains that started in the same MAP optimum disagree: the sampler has not "
        "mixed, and the intervals are too narrow. Run longer (--num-warmup, --num-samples, "
        "--time-budget); fewer PMJs (--n-pmj) make the posterior easier to sample."
    ),
    "stacking": (
        "The maps and intervals pool the chains by these weights. A chain near 0 sits in a "
        "pattern that predicts the ECG worse than the others; --combine-chains equal counts "
        "every chain the same, for comparison."
    ),
    "agree": (
        "The chains found different answers: run more and longer chains; compare the "
        "patterns in the Identifiability section before trusting any single map."
    ),
    "ecg": (
        "Check the ECG (noise, baseline wander, lead names, electrode positions) and the "
        "QRS window (--qrs); consider more PMJs (--n-pmj) or letting velocities be inferred "
        "(omit --cv-fiber/--cv-cross). A poor fit means the maps may be wrong, not only "
        "uncertain."
    ),
}


def _level(x: float, green: float, amber: float, higher_is_better: bool = True) -> str:
    if higher_is_better:
        return "green" if x >= green else "amber" if x >= amber else "red"
    return "green" if x <= green else "amber" if x <= amber else "red"


def traffic_lights(summary: dict) -> list[Light]:
    """Grade the diagnostics of a fit summary as traffic lights, with advice for amber/red.

    Thresholds: R-hat <= 1.01 green, <= 1.05 amber, else red; bulk/tail ESS >= 400 green,
    >= 100 amber, else red; divergences 0 green, < 1% of draws amber, else red; trajectories
    at the tree-depth cap < 10% green, else amber; chains agree green, else red; ECG
    correlation >= 0.95 green, >= 0.9 amber, else red. MCMC lights only for
    ``method == "nuts"``.

    Parameters
    ----------
    summary : dict
        ``summary.json`` of a fit.

    Returns
    -------
    list of Light
    """
    out: list[Light] = []

    def add(name, value, level, meaning, advice):
        out.append(Light(name, value, level, meaning, "" if level == "green" else advice))

    if str(summary.get("method", "")).lower() == "nuts":
        rh = _num(summary.get("max_rhat"))
        if not math.isfinite(rh):
            add(
                "R-hat (do the chains agree?)",
                "not computable",
                "amber",
                "too few draws or chains to compare",
                _ADVICE["rhat_nan"],
            )
        else:
            add(
                "R-hat (do the chains agree?)",
                f"{rh:.3f}",
                _level(rh, 1.01, 1.05, False),
                "largest over activation times and model ECG; 1.00 means the chains agree",
                _ADVICE["rhat"],
            )
        for key, label in (("min_ess_bulk", "bulk"), ("min_ess_tail", "tail")):
            e = _num(summary.get(key))
            if math.isfinite(e):
                what = "averages (means, sd)" if label == "bulk" else "the 90% intervals"
                add(
                    f"effective sample size, {label}",
                    f"{e:.0f}",
                    _level(e, 400, 100),
                    f"effectively independent draws behind {what} (smallest over the map)",
                    _ADVICE["ess"].format(what=what),
                )
        if "divergences" in summary:
            dv = int(_num(summary.get("divergences"), 0))
            n_ch, n_dr = (int(_num(summary.get(k), 1)) for k in ("n_chains", "n_draws"))
            frac = dv / max(1, n_ch * n_dr)
            lvl = "green" if dv == 0 else "amber" if frac < 0.01 else "red"
            add(
                "divergent transitions",
                f"{dv} ({frac:.1%} of draws)",
                lvl,
                "places where the sampler could not follow the posterior; they bias results",
                _ADVICE["div"],
            )
        sat = _num(summary.get("tree_depth_saturation"))
        if math.isfinite(sat):
            depth = int(_num(summary.get("max_tree_depth"), 0))
            add(
                "trajectories cut at the tree-depth cap",
                f"{sat:.0%} of iterations" + (f" (depth {depth})" if depth else ""),
                "green" if sat < 0.1 else "amber",
                "NUTS trajectories that hit the step limit instead of turning back; more of them "
                "means more correlated draws (never red: it costs efficiency, not correctness)",
                _ADVICE["tree_cap"],
            )
        if "chains_agree" in summary:
            if int(_num(summary.get("n_chains"), 1)) < 2:
                add(
                    "chains agree",
                    "one chain only",
                    "amber",
                    "agreement between chains cannot be checked with one chain",
                    _ADVICE["one_chain"],
                )
            else:
                ok = bool(summary.get("chains_agree"))
                add(
                    "chains agree",
                    "yes" if ok else "no",
                    "green" if ok else "red",
                    "independent chains found the same activation patterns",
                    _ADVICE["agree"],
                )
                within = _num(summary.get("max_rhat_within_optima"))
                if not ok and math.isfinite(within):
                    add(
                        "R-hat within one starting optimum",
                        f"{within:.3f}",
                        _level(within, 1.01, 1.05, False),
                        "chains that started in the same MAP optimum; near 1 means the chains "
                        "disagree because the posterior has separate modes, not because they failed to mix",
                        _ADVICE["within"],
                    )
                stack = summary.get("chain_stacking")
                if not ok and isinstance(stack, dict) and stack.get("applied"):
                    ws = [_num(w) for w in stack.get("weights", [])]
                    add(
                        "chains weighted by stacking",
                        ", ".join(f"{w:.2f}" for w in ws),
                        "amber",
                        "each chain's share of the summaries, by how well it predicts ECG samples left "
                        "out of the fit (leave-one-out stacking) rather than one share per chain",
                        _ADVICE["stacking"],
                    )
    r = _num(summary.get("ecg_correlation"))
    if math.isfinite(r):
        add(
            "ECG fit (mean correlation over leads)",
            f"{r:.3f}",
            _level(r, 0.95, 0.9),
            "how closely the model's ECG follows the measured one (1 = perfect shape match)",
            _ADVICE["ecg"],
        )
    return out


def _regions(fit: FitData, frame: dict | None, seg: np.ndarray | None) -> np.ndarray | None:
    """Name a plain anatomical region per node (AHA segment, RV septal side, RV free wall)."""
    if frame is None or seg is None:
        return None
    lv_names = [f"{n} LV wall (segment {k + 1})" for k, n in enumerate(P.AHA_NAMES[:16])]
    names = np.array(
        lv_names
        + ["LV apex (segment 17)", "RV side of the septum"]
        + [f"{lv} RV free wall" for lv in ("basal", "mid", "apical")],
        dtype=object,
    )
    idx = np.where(seg >= 0, seg, -1)
    nonlv = seg < 0
    sept = nonlv & (frame["dist_lv"] <= 1.6 * frame["wall_mm"])
    idx[sept] = 17
    free = nonlv & ~sept
    h, cap = frame["height"], frame["cap"]
    lev = np.where(h < cap / 3, 0, np.where(h < 2 * cap / 3, 1, 2))
    idx[free] = 18 + lev[free]
    return names[idx]


def _join(items: list[str], conj: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _bracket(name: str, extra: str) -> str:
    """``name (extra)``, merged into a trailing bracket: ``wall (segment 3; extra)``."""
    return f"{name[:-1]}; {extra})" if name.endswith(")") else f"{name} ({extra})"


def _early_sentence(fit: FitData, regions) -> str:
    p = fit.point_data.get("p_early")
    if p is None or regions is None:
        return ""
    ok = np.isfinite(p)
    names = np.unique(regions[ok])
    prob = {n: float(np.max(p[ok & (regions == n)])) for n in names}
    ranked = sorted(prob.items(), key=lambda kv: -kv[1])
    if fit.is_point_estimate:
        top = [n for n, v in ranked if v >= 0.5][:3]
        return (
            (
                f"The point estimate places the earliest activation in the {_join(top)}; a MAP fit "
                "cannot say how certain this is."
            )
            if top
            else ""
        )
    strong = [(n, v) for n, v in ranked if v >= 0.8][:3]
    weak = [(n, v) for n, v in ranked if 0.2 <= v < 0.8][:3]

    def fmt(lst, pct=True, conj="and"):
        return _join([f"the {_bracket(n, f'{v:.0%}') if pct else n}" for n, v in lst], conj)

    if strong and not weak:
        return (
            f"The earliest activation is well localised: it lies in {fmt(strong, False)} in "
            "at least 80% of the activation patterns that fit the ECG."
        )
    if strong:
        return (
            f"The earliest activation is well localised in {fmt(strong, False)}; further early "
            f"sites in {fmt(weak)} are possible but uncertain (probabilities in brackets)."
        )
    if weak:
        return (
            f"Where activation starts is uncertain: it may be {fmt(weak, conj='or')} — the ECG "
            "does not decide between these (probabilities in brackets)."
        )
    return (
        "Where activation starts is poorly determined: no region is among the earliest-activated "
        "in more than 20% of the patterns."
    )


def plain_summary(fit: FitData, regions=None, lights: list[Light] | None = None) -> str:
    """One paragraph, in plain language, of what the data determine and leave open.

    Parameters
    ----------
    fit : FitData
    regions : (n_nodes,) object array of region names, optional
    lights : list of Light, optional
        Diagnostics (a red light adds a warning).

    Returns
    -------
    str
    """
    s = fit.summary
    ident = s.get("identifiability") or {}
    tat = ident.get("total_activation_ms") or {}
    parts = []
    lights = lights if lights is not None else traffic_lights(s)
    if fit.is_point_estimate:
        parts.append(
            "This is a point estimate (MAP): it shows the single activation pattern that "
            "fits the ECG best and carries no information about uncertainty."
        )
    if tat:
        m, lo, hi = (_num(tat.get(k)) for k in ("mean", "q05", "q95"))
        if fit.is_point_estimate or not (hi > lo):
            parts.append(f"Total ventricular activation time is {m:.0f} ms.")
        else:
            parts.append(
                f"Total ventricular activation time is {m:.0f} ms (90% interval "
                f"{lo:.0f}–{hi:.0f} ms)."
            )
    early = _early_sentence(fit, regions)
    if early:
        parts.append(early)
    mean = fit.point_data["activation_mean_ms"]
    if regions is not None and np.isfinite(mean).any():
        late = regions[int(np.nanargmax(mean))]
        parts.append(f"The last region to activate is the {late}.")
    if not fit.is_point_estimate:
        w = ident.get("mode_weights") or []
        n_eff = _num(ident.get("n_modes_effective"))
        n_modes = int(_num(ident.get("n_modes"), len(w)))
        if n_modes <= 1:
            parts.append("All posterior draws share one activation pattern.")
        elif math.isfinite(n_eff):
            ws = ", ".join(f"{x:.0%}" for x in w[:4])
            parts.append(
                f"About {n_eff:.1f} distinct activation patterns fit the ECG comparably "
                f"well ({n_modes} found; probabilities {ws}"
                f"{', ...' if len(w) > 4 else ''}), so the map should be read together "
                "with its uncertainty."
            )
        wid = _num(ident.get("median_width90_ms"))
        if math.isfinite(wid):
            sd = fit.point_data["activation_sd_ms"]
            where = ""
            if regions is not None:
                names = np.unique(regions)
                msd = {
                    n: float(np.nanmean(sd[regions == n]))
                    for n in names
                    if np.sum(regions == n) >= 10
                }
                if msd:
                    worst = max(msd, key=msd.get)
                    where = (
                        f"; it is least certain in the {_bracket(worst, f'sd {msd[worst]:.0f} ms')}"
                    )
            parts.append(
                f"At a typical point of the heart the local activation time is known to "
                f"within a 90% interval {wid:.0f} ms wide{where}."
            )
    r = _num(s.get("ecg_correlation"))
    per = s.get("ecg_correlation_per_lead") or {}
    if math.isfinite(r):
        weak = sorted(
            ((k, _num(v)) for k, v in per.items() if math.isfinite(_num(v))), key=lambda kv: kv[1]
        )
        wtxt = f" (weakest lead {weak[0][0]}, r = {weak[0][1]:.2f})" if weak else ""
        quality = "closely" if r >= 0.95 else "reasonably" if r >= 0.9 else "only approximately"
        parts.append(
            f"The model reproduces the measured ECG {quality}: mean correlation {r:.2f}{wtxt}."
        )
    reds = [
        x
        for x in lights
        if x.level == "red" and x.name.startswith(("R-hat", "chains", "effective", "divergent"))
    ]
    if reds:
        parts.append(
            "Warning: the sampler diagnostics are red, so these numbers are provisional "
            "(see Diagnostics)."
        )
    return " ".join(parts)


# --------------------------------------------------------------------------------------
# Report content (format-neutral blocks rendered to HTML and PDF)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Fig:
    png: bytes
    caption: str
    width: float = 1.0  # fraction of the page width


@dataclasses.dataclass
class _Section:
    key: str
    title: str
    blocks: list = dataclasses.field(default_factory=list)


def _png(fig) -> bytes:
    data = P.fig_to_png(fig, _DPI)
    fig.clear()
    return data


def _fmt_seconds(x: float) -> str:
    if not math.isfinite(x):
        return "?"
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x:.0f} s ({x / 60:.1f} min)"
    return f"{x:.0f} s ({x / 3600:.1f} h)"


def _time_prior_text(tp: dict) -> str:
    """The PMJ start-time prior in words (``summary.json`` ``pmj_time_prior``), or ``""``."""
    sel = tp.get("selection") or {}
    bounds, nl = sel.get("t_max_ms") or {}, sel.get("neg_log_joint") or {}
    if sel.get("chosen") in ("spec", "window") and {"spec", "window"} <= set(bounds) and {"spec", "window"} <= set(nl):
        gap = abs(_num(nl["spec"]) - _num(nl["window"]))
        spec_b, win_b = _num(bounds["spec"]), _num(bounds["window"])
        h = _num(sel.get("hop_rounds"), 0.0)
        hops = int(h) if math.isfinite(h) else 0
        close = f"; a close call, decided after {hops} rounds of basin hops under each" if hops > 0 else ""
        if sel["chosen"] == "window":
            return (
                f"uniform over 0–{win_b:.0f} ms, the whole ECG window, chosen over 0–{spec_b:.0f} ms: its best fit "
                f"was {gap:.0f} nats more probable (PMJs the ECG does not need may then start late, anywhere){close}"
            )
        return (
            f"uniform over 0–{spec_b:.0f} ms{_lead_in_text(tp)}, kept over 0–{win_b:.0f} ms (the whole ECG window), "
            f"whose best fit was {gap:.0f} nats less probable{close}"
        )
    t_max = _num(tp.get("t_max_ms"))
    if not math.isfinite(t_max):
        return ""
    return f"uniform over 0–{t_max:.0f} ms{_lead_in_text(tp)}"


def _lead_in_text(tp: dict) -> str:
    """`` (raised by the QRS onset, … ms into the window)`` when a lead-in raised the bound, else ``""``."""
    if not tp.get("extended"):
        return ""
    return f" (raised by the QRS onset, {_num(tp.get('qrs_onset_ms')):.0f} ms into the window)"


def _case_section(fit: FitData, summary_text: str) -> _Section:
    s = fit.summary
    sec = _Section("case", "1. The case")
    t = fit.time_ms
    rows = [
        ("fit directory", str(fit.path)),
        ("method", _METHOD_NAMES.get(fit.method, fit.method)),
        ("model specification", str(s.get("spec", "?"))),
        ("ECG leads used", f"{', '.join(fit.leads)} ({len(fit.leads)})"),
        ("QRS window analysed", f"{t[0]:.0f}–{t[-1]:.0f} ms ({t.size} samples)"),
        ("heart mesh", f"{fit.nodes.shape[0]} nodes, {fit.tets.shape[0]} tetrahedra"),
        (
            "Purkinje-muscle junctions (PMJs)",
            str(s.get("n_pmj", "?"))
            + (f" (from {s['n_sites']} candidate sites)" if "n_sites" in s else ""),
        ),
    ]
    if fit.method != "map":
        rows.append(("chains x draws", f"{s.get('n_chains', '?')} x {s.get('n_draws', '?')}"))
    vi = s.get("velocities_inferred")
    pm = s.get("posterior_means") or {}
    if vi is not None:
        txt = "inferred" if vi else "fixed"
        if vi and "cv_scale" in pm:
            txt += f" (estimated scale x{_num(pm['cv_scale']):.2f} of the reference velocities)"
        rows.append(("conduction velocities", txt))
    bl = s.get("ecg_baseline") or {}
    if bl.get("term"):
        what = {
            "none": "none (the model ECG starts and ends at zero)",
            "offset": "a level per lead",
            "linear": "a level and a ramp per lead",
        }.get(bl["term"], str(bl["term"]))
        if bl.get("source") == "auto":
            why = "it starts or ends off zero" if bl.get("off_zero") else "it starts and ends near zero"
            what += f" (chosen from the ECG: {why})"
        rows.append(("ECG baseline fitted", what))
    tp = _time_prior_text(s.get("pmj_time_prior") or {})
    if tp:
        rows.append(("prior on PMJ start times", tp))
    search = []
    if s.get("map_search_smooth_ms"):
        search.append(
            f"a coarse-to-fine fit (the ECG smoothed over ~{float(s['map_search_smooth_ms']):g} ms at first, "
            "then sharp)"
        )
    if s.get("map_search_rounds"):
        search.append(
            f"{int(s['map_search_rounds'])} rounds of basin hopping after the multi-start optimisation "
            "(a few PMJs re-placed at random and re-fitted, kept when the fit improves)"
        )
    if search:
        rows.append(("search for the best fit", "; ".join(search)))
    run_time = _fmt_seconds(_num(s.get("seconds")))
    stages = {k: _num(v) for k, v in (s.get("stage_seconds") or {}).items()}
    names = {"search": "search for the best fit", "svi": "SVI", "laplace": "curvature at the optima",
             "sampling": "NUTS sampling"}
    if stages:
        run_time += "; " + ", ".join(f"{names.get(k, k)} {v:.{0 if v >= 10 else 1}f} s" for k, v in stages.items())
    rows.append(("run time", run_time))
    unit = {"cv_scale": "", "gain": "", "shift_ms": " ms", "sigma_mV": " mV"}
    if pm:
        kind = "point estimate" if fit.is_point_estimate else "posterior mean"
        values = ", ".join(f"{k} = {_num(v):.3g}{unit.get(k, '')}" for k, v in pm.items())
        rows.append((f"global parameters ({kind})", values))
    per_lead = s.get("sigma_mV_per_lead") or {}
    if per_lead:
        rows.append((
            "noise sd per lead (" + ("point estimate" if fit.is_point_estimate else "posterior mean") + ")",
            ", ".join(f"{k} {_num(v):.3g} mV" for k, v in per_lead.items()),
        ))
    sec.blocks.append(("table", ("input", "value"), rows))
    sec.blocks.append(("h3", "Summary in plain language"))
    sec.blocks.append(("lead", summary_text))
    ident = s.get("identifiability") or {}
    tat = ident.get("total_activation_ms") or {}
    cards = []
    if tat:
        m, lo, hi = (_num(tat.get(k)) for k in ("mean", "q05", "q95"))
        sub = (
            "point estimate"
            if fit.is_point_estimate or not hi > lo
            else f"90% interval {lo:.0f}–{hi:.0f} ms"
        )
        cards.append(("total activation time", f"{m:.0f} ms", sub))
    r = _num(s.get("ecg_correlation"))
    if math.isfinite(r):
        cards.append(("ECG fit (mean r)", f"{r:.2f}", "1 = perfect shape match"))
    if not fit.is_point_estimate:
        w = _num(ident.get("median_width90_ms"))
        if math.isfinite(w):
            cards.append(
                ("typical uncertainty", f"{w:.0f} ms", "median 90% interval width per point")
            )
        ne = _num(ident.get("n_modes_effective"))
        if math.isfinite(ne):
            cards.append(
                (
                    "activation patterns",
                    f"{ne:.1f}",
                    f"effective number ({ident.get('n_modes', '?')} found)",
                )
            )
    if cards:
        sec.blocks.append(("cards", cards))
    for n in list(s.get("notes") or []) + fit.notes:
        sec.blocks.append(("note", str(n)))
    return sec


def _maps_section(fit: FitData, faces, frame, seg) -> _Section:
    sec = _Section("maps", "2. Posterior activation maps")
    pd = fit.point_data
    mean = pd["activation_mean_ms"]
    width = pd.get("activation_width90_ms")
    unc_name = "width of the 90% interval"
    if width is None:
        width = pd["activation_sd_ms"]
        unc_name = "posterior sd"
    lo, hi = float(np.nanmin(mean)), float(np.nanmax(mean))
    pe = fit.is_point_estimate
    sec.blocks.append(
        (
            "p",
            "Local activation time is the moment (ms after the first activation "
            "of the model) at which each point of the ventricles is depolarised. Red is "
            "early, blue/purple late, as in clinical electro-anatomical maps. Views are "
            "from the front (anterior: the patient's left on the right of the picture) "
            "and from the back (posterior).",
        )
    )
    _say("plotting activation maps")
    what = "Activation time (MAP point estimate)" if pe else "Posterior mean activation time"
    fig = P.plot_activation_views(
        fit.nodes,
        fit.tets,
        mean,
        faces=faces,
        surface=fit.surface,
        vmin=lo,
        vmax=hi,
        title=what,
        label="activation time (ms)",
        panel_size=4.4,
    )
    sec.blocks.append(_Fig(_png(fig), f"{what} (ms), outer (epicardial) surface."))
    if fit.surface is not None and frame is not None:
        fig = P.plot_endocardial_views(
            fit.nodes,
            fit.tets,
            mean,
            fit.surface,
            frame=frame,
            faces=faces,
            vmin=lo,
            vmax=hi,
            panel_size=2.3,
            title=f"{what}, inner surfaces",
        )
        sec.blocks.append(
            _Fig(
                _png(fig),
                "The same map on the inner (endocardial) surfaces, seen "
                "from inside each cavity with the opposite wall removed; base at the top.",
            )
        )
    if fit.is_point_estimate:
        sec.blocks.append(
            (
                "note",
                "MAP point estimate: there is no uncertainty map (the sd and the "
                "interval width are zero everywhere by construction, not because the "
                "activation is known exactly).",
            )
        )
    else:
        umax = float(np.nanpercentile(width, 99)) if np.isfinite(width).any() else 1.0
        fig = P.plot_activation_views(
            fit.nodes,
            fit.tets,
            width,
            faces=faces,
            surface=fit.surface,
            vmin=0.0,
            vmax=max(umax, 1e-6),
            cmap="viridis",
            title=f"Uncertainty: {unc_name} of the activation time",
            label=f"{unc_name} (ms)",
            panel_size=4.4,
        )
        sec.blocks.append(
            _Fig(
                _png(fig),
                f"Uncertainty of the local activation time ({unc_name}, ms): "
                "dark = well determined by the ECG, yellow = poorly determined.",
            )
        )
    if seg is not None:
        _say("plotting AHA bull's-eyes")
        n = 1 if pe else 2
        fig = P._figure((4.6 * n, 3.8))
        ax = fig.add_axes((0.01, 0.02, 0.80 / n, 0.88))
        v_mean = P.segment_values(mean, seg)
        v_w = P.segment_values(width, seg)
        P.plot_bullseye(
            v_mean,
            "activation time (ms)" if pe else "mean activation time (ms)",
            "ms",
            vmin=lo,
            vmax=hi,
            ax=ax,
        )
        if n == 2:
            ax2 = fig.add_axes((0.51, 0.02, 0.40, 0.88))
            umax = float(np.nanpercentile(width, 99)) if np.isfinite(width).any() else 1.0
            P.plot_bullseye(
                v_w,
                f"uncertainty: {unc_name} (ms)",
                "ms",
                cmap="viridis",
                vmin=0.0,
                vmax=max(umax, 1e-6),
                ax=ax2,
            )
        sec.blocks.append(
            _Fig(
                _png(fig),
                "AHA 17-segment bull's-eye of the left ventricle (segment "
                "means over the LV wall), seen from the apex: anterior at the top, "
                "septum on the left. Rings from outside: basal, mid, apical, apex.",
            )
        )
        rows = []
        for k in range(17):
            row = (f"{k + 1}", P.AHA_NAMES[k], _fmt(v_mean[k]))
            if not fit.is_point_estimate:
                row = row + (_fmt(v_w[k]),)
            rows.append(row)
        head = ("segment", "name", "activation (ms)" if pe else "mean activation (ms)") + (
            () if fit.is_point_estimate else (f"{unc_name} (ms)",)
        )
        sec.blocks.append(("table", head, rows))
        sec.blocks.append(
            (
                "small",
                "Segments are assigned on the mesh by a simple LV long-axis "
                "frame: the axis runs from the centroid of the LV base to the LV apex "
                "(the LV node farthest from the base plane); basal, mid and apical "
                "thirds of the base-to-cavity-tip distance, the apical cap beyond the "
                "cavity tip; angles measured from the direction of the RV (septum), "
                "with the anterior side taken from the patient frame (+y). LV nodes are "
                "those closer (through the wall) to the LV than to the RV endocardium, "
                "so the septum is split at mid-wall. An approximation, not a clinical "
                "segmentation.",
            )
        )
    else:
        sec.blocks.append(
            (
                "note",
                "No surface labels (LV/RV endocardium, base) in the mesh: the "
                "AHA bull's-eye and region names are not available.",
            )
        )
    p_early = pd.get("p_early")
    if p_early is not None and fit.surface is not None and frame is not None:
        fig = P.plot_endocardial_views(
            fit.nodes,
            fit.tets,
            p_early,
            fit.surface,
            frame=frame,
            faces=faces,
            vmin=0.0,
            vmax=1.0,
            cmap="YlOrRd",
            label="probability",
            panel_size=2.3,
            title=(
                "Earliest-activated region (point estimate)"
                if fit.is_point_estimate
                else "Probability that a point is among the earliest activated"
            ),
        )
        sec.blocks.append(
            _Fig(
                _png(fig),
                "Probability that each point activates within 5 ms of the "
                "first activation (early-activation sites), on the inner surfaces "
                "where activation starts in this model."
                + (" For a MAP fit this is 1 or 0." if fit.is_point_estimate else ""),
            )
        )
    ident = fit.summary.get("identifiability") or {}
    tat = ident.get("total_activation_ms") or {}
    if tat:
        m, lo_, hi_ = (_num(tat.get(k)) for k in ("mean", "q05", "q95"))
        txt = (
            f"Total activation time (last minus first activation): {m:.0f} ms"
            + (
                ""
                if fit.is_point_estimate or not hi_ > lo_
                else f", 90% interval {lo_:.0f}–{hi_:.0f} ms"
            )
            + "."
        )
        sec.blocks.append(("p", txt))
    return sec


def _fmt(x, f="{:.0f}") -> str:
    return "–" if x is None or not np.isfinite(x) else f.format(x)


def _ecg_model_curves(fit: FitData):
    """Model mean and band to draw; a MAP fit uses its noise-free model ECG (modes.npz)."""
    mean, q05, q95 = fit.ecg["mean"], fit.ecg["q05"], fit.ecg["q95"]
    degenerate = np.allclose(q05, q95, equal_nan=True)
    if fit.is_point_estimate and fit.modes is not None:
        mean = np.asarray(fit.modes["ecg"][0], np.float64)
    if degenerate:
        q05 = q95 = None
    return mean, q05, q95


def _ecg_section(fit: FitData) -> _Section:
    sec = _Section("ecg", "3. The ECG: measured vs model")
    _say("plotting the 12-lead ECG")
    mean, q05, q95 = _ecg_model_curves(fit)
    per = fit.summary.get("ecg_correlation_per_lead") or None
    r = {k: _num(v) for k, v in per.items()} if per else None
    fig = P.plot_ecg_12lead(
        fit.time_ms,
        fit.leads,
        fit.ecg["observed"],
        mean,
        q05,
        q95,
        r=r,
        mean_label="model (point estimate)" if fit.is_point_estimate else "model (posterior mean)",
    )
    cap = "Black: the measured ECG (QRS complex). Red: the model's ECG" + (
        " (MAP point estimate)."
        if fit.is_point_estimate
        else " averaged over the posterior; shaded: the 90% range of ECGs the fitted model "
        "predicts, measurement noise included."
    )
    cap += (
        " The limb leads share one mV scale and the chest leads another; r is the "
        "correlation between measured and model ECG in each lead."
    )
    sec.blocks.append(_Fig(_png(fig), cap))
    if r:
        weak = sorted(((k, v) for k, v in r.items() if math.isfinite(v)), key=lambda kv: kv[1])[:3]
        if weak:
            sec.blocks.append(
                (
                    "p",
                    "Weakest leads: "
                    + ", ".join(f"{k} (r = {v:.2f})" for k, v in weak)
                    + ". A lead fitted poorly may point to a wrong lead label or "
                    "electrode position, noise, or a part of the activation the model "
                    "cannot represent.",
                )
            )
    return sec


def _ident_section(fit: FitData, faces) -> _Section:
    sec = _Section("ident", "4. Identifiability: what the ECG determines and what it leaves open")
    s = fit.summary
    ident = s.get("identifiability") or {}
    if fit.is_point_estimate:
        sec.blocks.append(
            (
                "note",
                "A MAP fit is a single point: there is one activation pattern by "
                "construction, the sd is zero everywhere and the shrinkage is not "
                "meaningful. Run '--method nuts' to learn which parts of the map the "
                "ECG actually determines.",
            )
        )
    else:
        sec.blocks.append(
            (
                "p",
                "Several quite different activation sequences can produce nearly "
                "the same body-surface ECG. The posterior draws were grouped into "
                "distinct activation patterns (maps differing by less than 5 ms RMS "
                "are one pattern). Each pattern is shown with its probability, its "
                "mean map and its ECG over the measured one. If two patterns with "
                "clearly different maps both have substantial probability, the ECG "
                "alone cannot tell them apart.",
            )
        )
        if s.get("method") == "svi":
            sec.blocks.append(
                (
                    "note",
                    "SVI approximates the posterior with a simple distribution; it "
                    "tends to under-state uncertainty and may miss patterns.",
                )
            )
    if fit.modes is not None and not fit.is_point_estimate:
        _say("plotting activation patterns")
        m = fit.modes
        fig = P.plot_modes(
            fit.nodes,
            fit.tets,
            m["weights"],
            m["mean_maps"],
            fit.time_ms,
            fit.leads,
            fit.ecg["observed"],
            m["ecg"],
            top=4,
            surface=fit.surface,
            faces=faces,
        )
        k = min(4, int(np.size(m["weights"])))
        sec.blocks.append(
            _Fig(
                _png(fig),
                f"The {k} most probable of {np.size(m['weights'])} "
                "activation patterns: mean map (one colour scale shared by the "
                "patterns) and a representative model ECG (red) over the measured ECG "
                "(black), leads side by side.",
            )
        )
    if not fit.is_point_estimate:
        sd = fit.point_data["activation_sd_ms"]
        shr = fit.point_data.get("shrinkage")
        fig = P.plot_uncertainty_histograms(sd, shr)
        sec.blocks.append(
            _Fig(
                _png(fig),
                "Left: posterior sd of the activation time over all mesh "
                "points. Right: shrinkage, the fraction of the prior uncertainty "
                "removed by the ECG (1: fully determined by the data; 0: the ECG "
                "taught nothing; negative: more spread than the prior, usually "
                "poor mixing).",
                0.85,
            )
        )
        rows = [
            (
                "mean posterior sd of activation time",
                _fmt(_num(ident.get("mean_sd_ms")), "{:.1f}") + " ms",
            ),
            (
                "median width of the 90% interval",
                _fmt(_num(ident.get("median_width90_ms")), "{:.1f}") + " ms",
            ),
            ("mean shrinkage", _fmt(_num(ident.get("mean_shrinkage")), "{:.2f}")),
            (
                "distinct patterns (found / effective number)",
                f"{ident.get('n_modes', '?')} / "
                + _fmt(_num(ident.get("n_modes_effective")), "{:.1f}"),
            ),
        ]
        act_pmj = ident.get("active_pmjs")
        if isinstance(act_pmj, dict):  # older fits have none
            rows.append(
                (
                    "PMJs that activate some tissue (median, 90% of draws)",
                    f"{_fmt(_num(act_pmj.get('median')), '{:.0f}')} of {act_pmj.get('of', '?')} "
                    f"({_fmt(_num(act_pmj.get('q05')), '{:.0f}')}–{_fmt(_num(act_pmj.get('q95')), '{:.0f}')})",
                )
            )
        fe = s.get("forward_error")
        if isinstance(fe, dict) and fe.get("in_intervals"):  # older fits have none
            rows.append(
                (
                    "simulator error folded into the sd and intervals (RMS over nodes)",
                    _fmt(_num(fe.get("rms_ms")), "{:.1f}") + f" ms (full solver at {fe.get('n_draws', '?')} draws)",
                )
            )
        sec.blocks.append(("table", ("measure", "value"), rows))
    return sec


def _diag_section(fit: FitData, lights: list[Light]) -> _Section:
    sec = _Section("diag", "5. Diagnostics")
    if fit.method == "nuts":
        sec.blocks.append(
            (
                "p",
                "The posterior was explored by Markov chain Monte Carlo. The checks "
                "below say whether the sampler ran long enough for the maps and "
                "intervals to be trusted. Green: fine. Amber: usable with care. Red: do "
                "not rely on the numbers yet.",
            )
        )
    elif fit.is_point_estimate:
        sec.blocks.append(
            (
                "note",
                "This is a MAP point estimate: an optimiser found the single best "
                "fitting parameter set. There are no MCMC diagnostics (no chains to "
                "compare), and the report shows no uncertainty: every sd is 0 and every "
                "interval has zero width. The optimiser may also have stopped in a "
                "local optimum. Use '--method nuts' for uncertainty.",
            )
        )
    else:
        sec.blocks.append(
            (
                "note",
                f"Method '{fit.method}': an approximate posterior without MCMC "
                "diagnostics (no R-hat or effective sample size). Its uncertainty is "
                "usually too narrow; confirm important conclusions with '--method nuts'.",
            )
        )
    sec.blocks.append(("lights", lights))
    if fit.traces and fit.method == "nuts":
        tr = {k: v for k, v in fit.traces.items() if v.ndim == 2 and v.shape[1] >= 2}
        note = _stuck_chain_note(tr.get("log density"))
        if note:
            sec.blocks.append(("note", note))
        if tr:
            fig = P.plot_traces(tr)
            sec.blocks.append(
                _Fig(
                    _png(fig),
                    "Per-chain traces of a few global quantities. Chains "
                    "that wander in separate bands have not mixed.",
                    0.85,
                )
            )
    return sec


def _stuck_chain_note(lp) -> str:
    """Warn when some chains sit at a much lower log density than the best one."""
    if lp is None or lp.shape[0] < 2 or lp.shape[1] < 4:
        return ""
    m = lp.mean(1)
    sd = float(np.median(lp.std(1))) + 1e-9
    best = int(np.argmax(m))
    low = [c for c in range(lp.shape[0]) if m[best] - m[c] > max(10.0, 5 * sd)]
    if not low:
        return ""
    which = _join([str(c + 1) for c in low])
    return (
        f"Chain{'s' if len(low) > 1 else ''} {which} sit{'' if len(low) > 1 else 's'} at a much "
        f"lower log density than chain {best + 1} (mean {np.mean(m[low]):.0f} vs "
        f"{m[best]:.0f}): {'they are' if len(low) > 1 else 'it is'} probably stuck in a worse "
        "fit, and the pooled maps mix good and poor solutions. Run longer with more chains; "
        "compare the patterns in Section 4."
    )


_CAVEATS = [
    "Model: activation spreads from a small number of Purkinje-muscle junctions (PMJs) as an "
    "eikonal wavefront through the ventricular wall; the rest of the conduction system is not "
    "modelled explicitly.",
    "Conduction is anisotropic with a fixed ratio of cross-fibre to along-fibre velocity and "
    "the fibre directions of the mesh (rule-based for the built-in geometry); a single "
    "global velocity scale is inferred (or fixed) for the "
    "whole heart, so local scar or slow conduction is represented only through activation times.",
    "The ECG is computed with a homogeneous lead field (infinite, homogeneous medium: no torso, "
    "lungs or blood-pool inhomogeneities) and an idealised action potential upstroke; the overall "
    "ECG gain is unknown and inferred, so absolute amplitudes carry little information.",
    "Only the QRS complex (depolarisation) is modelled; repolarisation (ST/T) is not used.",
    "Results depend on the heart geometry, the electrode positions and the lead labels given as "
    "inputs; errors in these produce confident but wrong maps.",
    "Uncertainty is conditional on the model: the intervals say what is uncertain if the model "
    "is right, not how wrong the model may be.",
    "Units: lengths in mm, times in ms (from the first activation of the model), velocities in "
    "mm/ms, voltages in mV.",
    "Not a diagnosis. For research use only; not a medical device.",
]


def _caveat_section() -> _Section:
    sec = _Section("caveats", "6. Caveats")
    sec.blocks.append(("list", _CAVEATS))
    return sec


def build_sections(fit: FitData) -> list[_Section]:
    """All report sections (figures rendered to PNG) for a loaded fit."""
    faces = P.surface_triangles(fit.nodes, fit.tets)
    frame = seg = None
    if fit.surface is not None:
        try:
            frame = P.aha_frame(fit.nodes, fit.surface, fit.tets)
            seg = P.aha_segments(fit.nodes, fit.surface, frame=frame)
        except ValueError as e:
            fit.notes.append(f"AHA segments not available ({e})")
    regions = _regions(fit, frame, seg)
    lights = traffic_lights(fit.summary)
    text = plain_summary(fit, regions, lights)
    sections = [_case_section(fit, text)]
    sections.append(_maps_section(fit, faces, frame, seg))
    sections.append(_ecg_section(fit))
    sections.append(_ident_section(fit, faces))
    sections.append(_diag_section(fit, lights))
    sections.append(_caveat_section())
    return sections


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;margin:0;
background:#f4f5f7;line-height:1.45}
main{max-width:1120px;margin:0 auto;background:#fff;padding:24px 40px 40px}
h1{font-size:26px;margin:8px 0 2px}
h2{font-size:21px;border-bottom:2px solid #c0392b;padding-bottom:4px;margin-top:38px}
h3{font-size:16px;margin:22px 0 6px}
.sub{color:#666;font-size:13px}
.banner{background:#fdecea;border:1px solid #e6a39b;color:#7a1f14;padding:8px 12px;
border-radius:6px;font-size:14px;margin:12px 0}
.lead{font-size:16px;background:#f7f9fc;border-left:4px solid #2c6fbb;padding:10px 14px;
margin:8px 0}
.note{background:#fff8e1;border-left:4px solid #e0a800;padding:8px 12px;margin:10px 0;
font-size:14px}
.small{font-size:12px;color:#555}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
td,th{border-bottom:1px solid #e3e3e3;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5}
figure{margin:14px 0}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{font-size:13px;color:#444;margin-top:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{flex:1 1 200px;border:1px solid #dde2ea;border-radius:8px;padding:10px 14px;
background:#fbfcfe}
.card .k{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:26px;font-weight:600}
.card .s{font-size:12px;color:#666}
.light{display:inline-block;width:16px;height:16px;border-radius:50%;vertical-align:middle;
margin-right:6px;border:1px solid rgba(0,0,0,.25)}
.green{background:#2e9d3f}.amber{background:#f0a500}.red{background:#d0312d}.grey{background:#aaa}
.lw{font-weight:600;font-size:13px}
nav{font-size:14px;margin:10px 0}
nav a{margin-right:14px;color:#2c6fbb;text-decoration:none}
footer{margin-top:30px;font-size:12px;color:#777}
@media print{body{background:#fff}main{padding:0}h2{page-break-before:auto}
figure{page-break-inside:avoid}}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _block_html(b) -> str:
    if isinstance(b, _Fig):
        b64 = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img alt="{_e(b.caption)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{_e(b.caption)}</figcaption></figure>'
        )
    kind = b[0]
    if kind == "p":
        return f"<p>{_e(b[1])}</p>"
    if kind == "lead":
        return f'<p class="lead">{_e(b[1])}</p>'
    if kind == "note":
        return f'<p class="note">{_e(b[1])}</p>'
    if kind == "small":
        return f'<p class="small">{_e(b[1])}</p>'
    if kind == "h3":
        return f"<h3>{_e(b[1])}</h3>"
    if kind == "list":
        return "<ul>" + "".join(f"<li>{_e(x)}</li>" for x in b[1]) + "</ul>"
    if kind == "table":
        head = "".join(f"<th>{_e(h)}</th>" for h in b[1])
        body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in b[2])
        return f"<table><tr>{head}</tr>{body}</table>"
    if kind == "cards":
        return (
            '<div class="cards">'
            + "".join(
                f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div>'
                f'<div class="s">{_e(s)}</div></div>'
                for k, v, s in b[1]
            )
            + "</div>"
        )
    if kind == "lights":
        rows = []
        for lt in b[1]:
            rows.append(
                f'<tr><td><span class="light {lt.level}" title="{lt.level}"></span>'
                f'<span class="lw">{_e(_LIGHT_WORD[lt.level])}</span></td>'
                f'<td>{_e(lt.name)}<br><span class="small">{_e(lt.meaning)}</span></td>'
                f"<td>{_e(lt.value)}</td><td>{_e(lt.advice) if lt.advice else '—'}</td></tr>"
            )
        return (
            '<table class="lights"><tr><th>status</th><th>check</th><th>value</th>'
            "<th>what to do</th></tr>" + "".join(rows) + "</table>"
        )
    raise ValueError(f"unknown block {kind!r}")


def render_html(fit: FitData, sections: list[_Section]) -> str:
    """Render the report as one self-contained HTML document (inline CSS, embedded PNGs)."""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    banner = ""
    if fit.is_point_estimate:
        banner = (
            '<div class="banner">Point estimate (MAP): this report shows one best-fitting '
            "activation pattern and no uncertainty.</div>"
        )
    elif any(
        lt.level == "red" for lt in traffic_lights(fit.summary) if not lt.name.startswith("ECG")
    ):
        banner = (
            '<div class="banner">The sampler diagnostics are red: treat the maps and '
            "intervals as provisional (see Diagnostics).</div>"
        )
    nav = "".join(f'<a href="#{s.key}">{_e(s.title)}</a>' for s in sections)
    body = []
    for s in sections:
        body.append(f'<section id="{s.key}"><h2>{_e(s.title)}</h2>')
        body.extend(_block_html(b) for b in s.blocks)
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Cardiac digital twin report: {_e(fit.path.name)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        "<h1>Cardiac digital twin: ventricular activation from the ECG</h1>"
        f'<div class="sub">Fit: {_e(fit.path.name)} · method {_e(fit.method.upper())} · '
        f"report generated {_e(now)} by cdt_bayes · research use only, not a diagnosis</div>"
        f"{banner}<nav>{nav}</nav>"
        + "\n".join(body)
        + "<footer>Self-contained report (no external resources). Units: mm, ms, mm/ms, mV."
        "</footer></main></body></html>\n"
    )


# --------------------------------------------------------------------------------------
# PDF (matplotlib PdfPages: A4 pages with the same text and figures)
# --------------------------------------------------------------------------------------


class _PdfLayout:
    """Flow text, tables and images down A4 portrait pages of a ``PdfPages``."""

    W, H, M = 8.27, 11.69, 0.55  # inches

    def __init__(self, pdf, header: str):
        self.pdf, self.header, self.fig, self.y, self.page = pdf, header, None, 0.0, 0

    def new_page(self):
        self.flush()
        self.fig = P._figure((self.W, self.H))
        self.page += 1
        self.fig.text(self.M / self.W, 1 - 0.3 / self.H, self.header, fontsize=7, color="0.45")
        self.fig.text(
            1 - self.M / self.W,
            0.3 / self.H,
            f"page {self.page}",
            fontsize=7,
            color="0.45",
            ha="right",
        )
        self.y = self.M + 0.1

    def flush(self):
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig.clear()
            self.fig = None

    def need(self, h: float):
        if self.fig is None or self.y + h > self.H - self.M:
            self.new_page()

    def text(
        self, s: str, size=9.0, weight="normal", color="black", width=None, indent=0.0, gap=0.08
    ):
        chars = width or int((self.W - 2 * self.M - indent) * 72 / (size * 0.54))
        lines = textwrap.wrap(s, chars) or [""]
        lh = size * 1.45 / 72
        for ln in lines:
            self.need(lh)
            self.fig.text(
                (self.M + indent) / self.W,
                1 - (self.y + lh * 0.8) / self.H,
                ln,
                fontsize=size,
                weight=weight,
                color=color,
            )
            self.y += lh
        self.y += gap

    def image(self, png: bytes, width_frac: float, caption: str):
        import matplotlib.image as mpimg

        arr = mpimg.imread(io.BytesIO(png), format="png")
        h_px, w_px = arr.shape[:2]
        avail_w = (self.W - 2 * self.M) * width_frac
        w = min(avail_w, w_px / _DPI)
        h = w * h_px / w_px
        max_h = self.H - 2 * self.M - 0.6
        if h > max_h:
            h, w = max_h, max_h * w_px / h_px
        self.need(h + 0.3)
        x0 = (self.W - w) / 2
        ax = self.fig.add_axes((x0 / self.W, 1 - (self.y + h) / self.H, w / self.W, h / self.H))
        ax.imshow(arr, interpolation="lanczos")
        ax.set_axis_off()
        self.y += h + 0.05
        self.text(caption, size=7.5, color="0.25", gap=0.15)

    def table(self, head, rows, size=8.0):
        ncol = len(head)
        total = self.W - 2 * self.M
        if ncol == 2:
            fr = (0.35, 0.65)
        elif ncol == 4 and head[0] == "status":
            fr = (0.11, 0.34, 0.13, 0.42)
        else:
            fr = (0.1, 0.35, 0.27, 0.28)[:ncol]
            fr = tuple(f / sum(fr) for f in fr)
        widths = [f * total for f in fr]
        lh = size * 1.4 / 72
        for ri, r in enumerate([head] + list(rows)):
            cells = [
                textwrap.wrap(str(c), max(8, int(w * 72 / (size * 0.55)))) or [""]
                for c, w in zip(r, widths)
            ]
            nl = max(len(c) for c in cells)
            self.need(nl * lh + 0.04)
            x = self.M
            for ci, (c, w) in enumerate(zip(cells, widths)):
                colour = None
                if ri > 0 and head[0] == "status" and ci == 0:
                    colour = {"OK": "#2e9d3f", "caution": "#f0a500", "problem": "#d0312d"}.get(c[0])
                for li, ln in enumerate(c):
                    self.fig.text(
                        x / self.W,
                        1 - (self.y + lh * (li + 0.8)) / self.H,
                        ln,
                        fontsize=size,
                        weight="bold" if ri == 0 or colour else "normal",
                        color=colour or "black",
                    )
                x += w
            self.y += nl * lh + 0.04
            from matplotlib.lines import Line2D

            self.fig.add_artist(
                Line2D(
                    [self.M / self.W, 1 - self.M / self.W],
                    [1 - (self.y - 0.02) / self.H] * 2,
                    lw=0.4,
                    color="0.8",
                )
            )
        self.y += 0.1


def render_pdf(fit: FitData, sections: list[_Section], path: Path) -> None:
    """Write the report as a PDF (A4 pages; each section starts a new page)."""
    from matplotlib.backends.backend_pdf import PdfPages

    header = f"Cardiac digital twin report — {fit.path.name} — research use only, not a diagnosis"
    with PdfPages(
        path, metadata={"Title": f"cdt_bayes report: {fit.path.name}", "Creator": "cdt_bayes"}
    ) as pdf:
        lay = _PdfLayout(pdf, header)
        for i, sec in enumerate(sections):
            lay.new_page()
            if i == 0:
                lay.text(
                    "Cardiac digital twin: ventricular activation from the ECG",
                    size=15,
                    weight="bold",
                )
                if fit.is_point_estimate:
                    lay.text(
                        "Point estimate (MAP): one best-fitting activation pattern, no "
                        "uncertainty.",
                        size=9.5,
                        color="#7a1f14",
                    )
            lay.text(sec.title, size=13, weight="bold", gap=0.12)
            for b in sec.blocks:
                if isinstance(b, _Fig):
                    lay.image(b.png, b.width, b.caption)
                    continue
                kind = b[0]
                if kind in ("p", "small"):
                    lay.text(b[1], size=9 if kind == "p" else 7.5)
                elif kind == "lead":
                    lay.text(b[1], size=10, color="#173f6b", gap=0.15)
                elif kind == "note":
                    lay.text("Note: " + b[1], size=9, color="#7a5a00")
                elif kind == "h3":
                    lay.text(b[1], size=11, weight="bold")
                elif kind == "list":
                    for x in b[1]:
                        lay.text("•  " + x, size=9)
                elif kind == "table":
                    lay.table(b[1], b[2])
                elif kind == "cards":
                    lay.table(("key number", "value"), [(k, f"{v} — {s}") for k, v, s in b[1]])
                elif kind == "lights":
                    lay.table(
                        ("status", "check", "value", "what to do"),
                        [(_LIGHT_WORD[x.level], x.name, x.value, x.advice or "—") for x in b[1]],
                    )
        lay.flush()


# --------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------


def _tmp_next_to(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
    return Path(tmp)


def _check_parent(path: Path, opt: str) -> None:
    parent = path.absolute().parent
    if not parent.is_dir():
        raise CdtBayesError(f"{opt} {path}: directory {parent} does not exist")
    if path.is_dir():
        raise CdtBayesError(f"{opt} {path}: is a directory")


def write_report(
    fit_dir: str | os.PathLike,
    out_html: str | os.PathLike | None = None,
    pdf: str | os.PathLike | None = None,
) -> Path:
    """Write the self-contained HTML report (and optionally a PDF) of a fit directory.

    Parameters
    ----------
    fit_dir : str or os.PathLike
        Output directory of ``cdt-bayes fit``.
    out_html : str or os.PathLike, optional
        Report file; default ``fit_dir/report.html``.
    pdf : str or os.PathLike, optional
        Also write the report as a PDF (matplotlib ``PdfPages``; A4, one or more pages per
        section).

    Returns
    -------
    pathlib.Path
        The HTML file.

    Raises
    ------
    CdtBayesError
        A required file of the fit directory is missing or unreadable, or an output
        directory does not exist.

    Notes
    -----
    Outputs are written to a temporary file in the same directory and renamed into place
    only when complete; nothing is written when an error occurs.
    """
    out = Path(out_html) if out_html is not None else Path(fit_dir) / "report.html"
    _check_parent(out, "--out")
    pdf_path = Path(pdf) if pdf is not None else None
    if pdf_path is not None:
        _check_parent(pdf_path, "--pdf")
    _say(f"reading {fit_dir}")
    fit = load_fit_dir(fit_dir)
    sections = build_sections(fit)
    _say("writing HTML")
    text = render_html(fit, sections)
    tmp_pdf = None
    try:
        if pdf_path is not None:
            _say("writing PDF")
            tmp_pdf = _tmp_next_to(pdf_path)
            render_pdf(fit, sections, tmp_pdf)
        tmp = _tmp_next_to(out)
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if tmp_pdf is not None:
            os.replace(tmp_pdf, pdf_path)
            tmp_pdf = None
    except OSError as e:
        raise CdtBayesError(f"{out}: cannot write ({_one_line(e)})") from None
    finally:
        if tmp_pdf is not None:
            tmp_pdf.unlink(missing_ok=True)
    _say(f"done ({len(text) / 1e6:.1f} MB HTML)")
    return out


def report_command(args) -> int:
    """Run ``cdt-bayes report DIR --out HTML [--pdf PDF]`` (called by the CLI).

    Prints the written file(s) on stdout, progress on stderr; returns 0.
    """
    out = write_report(args.dir, getattr(args, "out", None), getattr(args, "pdf", None))
    print(out)
    if getattr(args, "pdf", None):
        print(args.pdf)
    return 0
