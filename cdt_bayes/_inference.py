"""Inference: multi-start MAP, SVI (low-rank MVN) and NUTS over the PMJ model.

Which path runs when
--------------------
* Always: the *distance dictionary* (travel times from ~6 mm-spaced admissible sites to
  every node, by the tetrahedral eikonal solver) is built once per mesh and velocity
  ratio and cached; every log-density gradient then costs one small matrix product, a
  soft minimum and the lead-field ECG (milliseconds), never an eikonal solve.
* ``map``: Adam from ``n_starts`` prior draws (the Geodesic-BP baseline: lr 0.75, 400
  iterations, with cosine decay), best start reported — a point estimate, sd = 0.
* ``svi``: low-rank multivariate normal in unconstrained space (captures correlations),
  initialised at the best MAP, one compiled program (:func:`svi_lowrank`).
* ``nuts``: each chain starts at a *different* MAP optimum (multi-start), with a fixed
  dense mass matrix from the Laplace approximation there; chains run one after another
  (vectorised chains cost ~10× one chain on a CPU), in chunks with a progress bar, a
  checkpoint after every chunk (``--resume`` continues a killed run) and an optional
  wall-time budget. When chains settle in different modes, R-hat on the order-free
  quantities shows it and the summary says so; nothing is averaged away.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.infer import MCMC, NUTS, Predictive  # noqa: F401
from numpyro.infer.util import constrain_fn, potential_energy

from ._coarsen import MeshMap
from ._errors import CdtBayesError
from ._geometry import Mesh
from ._model import (
    ModelData,
    ModelSpec,
    admissible_nodes,
    ar1_noise,
    baseline_basis,
    baseline_conditional,
    baseline_sd,
    cdt_model,
    dictionary_activation,
    dictionary_key,
    distance_dictionary,
    model_ecg,
    node_metric,
    pmj_arrival,
    pmj_groups,
    select_sites,
    straight_travel_time,
)
from ._progress import progress_bar
from ._summaries import MODE_SEPARATION_MS

__all__ = ["FitProblem", "build_problem", "find_map", "fit", "fit_command"]


def _memo(owner, key: tuple, build):
    """``build()`` once per ``(owner, key)``, kept in ``owner.__dict__`` (``owner``'s lifetime).

    Compiled helpers (jitted potentials, Hessians, Adam and NUTS programs) are built from
    closures over a problem's data. Built afresh on every call, each fit would compile
    them all again (~30-50 s per fit on a CPU, even for a problem fitted a moment ago); kept
    on the problem (or on the potential function derived from it), a second fit with the
    same settings reuses them. Objects without a ``__dict__`` are not cached.
    """
    store = getattr(owner, "__dict__", None)
    if store is None:
        return build()
    cache = store.setdefault("_cdt_compiled", {})
    if key not in cache:
        cache[key] = build()
    return cache[key]


def _tree_key(u: dict) -> tuple:
    """Hashable structure of a pytree of arrays: its treedef and leaf shapes/dtypes."""
    leaves, treedef = jax.tree.flatten(u)
    return (treedef, tuple((tuple(np.shape(x)), str(jnp.result_type(x))) for x in leaves))


LATENT_SITES = ("pmj_xyz_mm", "pmj_t_ms", "cv_scale", "gain", "shift_ms", "sigma_mV", "noise_rho")


@dataclasses.dataclass(frozen=True)
class FitProblem:
    """Everything a fit needs: mesh, spec, model data and observed ECG.

    Attributes
    ----------
    mesh : Mesh
    spec : ModelSpec
    data : ModelData
    obs : (n_leads, n_times) float32, mV
    lead_names : tuple of str
    site_nodes : (n_sites,) int
    cv_fiber, cv_cross : float, mm/ms (base velocities of the dictionary)
    display_mesh : Mesh or None
        The user's mesh when the fit runs on a coarser inference mesh (``mesh``);
        ``None`` when ``mesh`` is the user's mesh.
    to_display : MeshMap or None
        Interpolation from ``mesh``'s nodes to ``display_mesh``'s nodes.
    baseline : dict or None
        How the spec's ``baseline`` was settled (``summary.json`` ``ecg_baseline``):
        ``term``, ``source`` ("spec" or "auto") and, for "auto", the window's levels
        (:func:`cdt_bayes._qrs.window_levels`).
    pmj_times : dict or None
        The prior window of the PMJ initiation times (``summary.json`` ``pmj_time_prior``):
        ``qrs_onset_ms`` (detected onset, ms after the first sample), ``t_max_ms`` (upper
        bound used) and ``extended`` (whether it was raised by the onset).
    """

    mesh: Mesh
    spec: ModelSpec
    data: ModelData
    obs: np.ndarray
    lead_names: tuple[str, ...]
    site_nodes: np.ndarray
    cv_fiber: float
    cv_cross: float
    display_mesh: Mesh | None = None
    to_display: MeshMap | None = None
    baseline: dict | None = None
    pmj_times: dict | None = None

    @property
    def output_mesh(self) -> Mesh:
        """The mesh outputs are written on: the user's mesh."""
        return self.mesh if self.display_mesh is None else self.display_mesh

    def to_output_nodes(self, values) -> np.ndarray:
        """Nodal values ``(..., mesh.n_nodes)`` on :attr:`output_mesh`'s nodes."""
        return np.asarray(values) if self.to_display is None else self.to_display.apply(values)

    def model_args(self):
        """Positional and keyword arguments of :func:`cdt_model`."""
        return (self.data, self.spec), {"obs": jnp.asarray(self.obs)}


def build_problem(
    mesh: Mesh,
    ecg_time_ms: np.ndarray,
    ecg_names: list[str],
    ecg_values: np.ndarray,
    electrodes: dict | None,
    spec: ModelSpec,
    *,
    lead_field=None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    name: str = "mesh",
    inference_mesh="auto",
    qrs_onset_ms: float | None = None,
) -> FitProblem:
    """Assemble a :class:`FitProblem`: lead field, sites, distance dictionary, data scale.

    Parameters
    ----------
    mesh : Mesh
    ecg_time_ms : (n_t,) ms, 1 ms steps
    ecg_names : lead names of the rows of ``ecg_values``
    ecg_values : (n_leads, n_t) mV
    electrodes : dict name -> (3,) mm, or None when ``lead_field`` is given
    spec : ModelSpec
        ``spec.leads`` selects leads (``None``: all observed). ``baseline = "auto"`` is
        settled here from the ECG (:func:`cdt_bayes._qrs.window_levels`): ``"linear"`` when a
        lead starts or ends off zero, else ``"none"`` (always ``"none"`` with the Student-t
        likelihood); ``FitProblem.spec`` holds the result. When the QRS starts more than
        ``ONSET_SLACK_MS`` into the ECG (a lead-in), ``t_max_ms`` is raised by the detected
        onset (:func:`cdt_bayes._qrs.qrs_window`), so that the prior window of the PMJ
        initiation times, which starts at the first sample, still spans ``t_max_ms`` after
        the onset.
    lead_field : LeadField, optional
        User-supplied lead field (rows named by lead).
    cache_dir : path, optional
        Where the distance dictionary is cached (``dictionary-<hash>.npy``).
    inference_mesh : "auto", "full" or float
        Mesh the model runs on (:func:`cdt_bayes._coarsen.inference_mesh`): ``"auto"``
        carves a 3.5 mm inference mesh from meshes of more than 12,000 nodes, ``"full"``
        uses ``mesh`` itself, a number sets the spacing (mm). On a coarser inference mesh
        the lead field is still computed on ``mesh`` and pulled back through the
        interpolation, and posterior activation maps are interpolated back to ``mesh``
        (:meth:`FitProblem.to_output_nodes`) for the outputs.
    qrs_onset_ms : float, optional
        QRS onset, ms after the first sample, when it is known (``cdt-bayes fit`` passes the
        one found in the whole recording); ``None`` detects it in ``ecg_values``.
    """
    from ._coarsen import inference_mesh as _inference_mesh
    from ._ecg import LeadField

    given = mesh
    mesh, to_display = _inference_mesh(given, inference_mesh, name)
    display_mesh = None if to_display is None else given

    names = list(ecg_names)
    values = np.asarray(ecg_values, np.float64)
    if spec.leads is not None:
        unknown = [ld for ld in spec.leads if ld not in names]
        if unknown:
            raise CdtBayesError(f"spec leads: {', '.join(unknown)} not in the ECG (has {', '.join(names)})")
        keep = [names.index(ld) for ld in spec.leads]
        names, values = [names[i] for i in keep], values[keep]
    if lead_field is None:
        lead_field = LeadField.from_mesh(
            given,
            electrodes,
            leads=names,
            cv_fiber=spec.cv_fiber,
            cv_cross=spec.cv_cross,
        )
    else:
        lead_field = lead_field.select(names)
    if to_display is not None:
        if lead_field.n_nodes != to_display.n_target:
            raise CdtBayesError(
                f"lead field has {lead_field.n_nodes} nodes, the mesh {to_display.n_target}"
            )
        lead_field = LeadField(lead_field.names, to_display.pull_back(lead_field.matrix))
    spec, baseline = _settle_baseline(spec, values, names)
    spec, pmj_times = _settle_pmj_times(spec, np.asarray(ecg_time_ms, np.float64), values, qrs_onset_ms)
    step = int(round(spec.dt_ms))
    t = np.asarray(ecg_time_ms, np.float64)[::step]
    values = values[:, ::step]
    site_nodes = select_sites(mesh, spec, name=name)
    key = dictionary_key(mesh, site_nodes, spec.cv_fiber, spec.cv_cross)
    cache = Path(cache_dir) / f"dictionary-{key}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        dmat = np.load(cache)
    else:
        dmat = distance_dictionary(mesh, site_nodes, spec.cv_fiber, spec.cv_cross, progress=progress)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp.npy")  # unique: parallel fits may share a cache
            np.save(tmp, dmat)
            os.replace(tmp, cache)
    nodes = np.asarray(mesh.nodes, np.float64)
    admissible = admissible_nodes(mesh, spec, name)
    site_group, pmj_group = pmj_groups(mesh, spec, admissible, name)
    site_metric = node_metric(mesh, spec.cv_fiber, spec.cv_cross)[site_nodes]
    straight = np.asarray(
        straight_travel_time(jnp.asarray(nodes[site_nodes]), jnp.asarray(site_metric), jnp.asarray(nodes))
    )
    resid = (dmat - straight).astype(np.float32)
    lead = np.asarray(lead_field.matrix, np.float32)
    rms_obs = float(np.sqrt(np.mean(values**2)))
    if not rms_obs > 0:
        raise CdtBayesError("ECG: all-zero signal, nothing to fit")
    data = ModelData(
        sites=jnp.asarray(nodes[site_nodes], jnp.float32),
        dist=jnp.asarray(resid),
        site_metric=jnp.asarray(site_metric, jnp.float32),
        nodes=jnp.asarray(nodes, jnp.float32),
        prior_sites=jnp.asarray(nodes[admissible], jnp.float32),
        lead=jnp.asarray(lead),
        times=jnp.asarray(t, jnp.float32),
        gain0=jnp.asarray(1.0, jnp.float32),
        noise_scale=jnp.asarray(spec.noise_rel_scale * rms_obs, jnp.float32),
        prior_group=None if site_group is None else jnp.asarray(site_group),
        pmj_group=None if pmj_group is None else jnp.asarray(pmj_group),
    )
    data = data._replace(gain0=jnp.asarray(_gain_centre(data, spec, rms_obs), jnp.float32))
    return FitProblem(
        mesh,
        spec,
        data,
        values.astype(np.float32),
        tuple(names),
        site_nodes,
        spec.cv_fiber,
        spec.cv_cross,
        display_mesh,
        to_display,
        baseline,
        pmj_times,
    )


#: A detected QRS onset later than this (ms after the ECG's first sample) raises the upper
#: bound of the PMJ initiation times by the onset (see :func:`build_problem`).
ONSET_SLACK_MS = 5.0


def _settle_pmj_times(
    spec: ModelSpec, t: np.ndarray, values: np.ndarray, onset: float | None = None
) -> tuple[ModelSpec, dict | None]:
    """Raise ``t_max_ms`` by the QRS onset when the ECG has a lead-in; return the spec and a record."""
    from ._errors import InputFileError
    from ._qrs import qrs_window

    if onset is None:
        try:
            onset = float(qrs_window(t, values).onset_ms - t[0])
        except InputFileError:  # a flat ECG: build_problem reports it
            return spec, None
    onset = float(onset)
    rec = {"qrs_onset_ms": onset, "t_max_ms": spec.t_max_ms, "extended": False}
    if onset > ONSET_SLACK_MS:
        spec = spec.replace(t_max_ms=spec.t_max_ms + onset)
        rec.update(t_max_ms=spec.t_max_ms, extended=True)
    return spec, rec


def _settle_baseline(spec: ModelSpec, values: np.ndarray, names: list[str]) -> tuple[ModelSpec, dict]:
    """Resolve ``baseline = "auto"`` from the ECG window; return the spec and a record of it."""
    from ._qrs import window_levels

    if spec.baseline != "auto":
        return spec, {"term": spec.baseline, "source": "spec"}
    lv = window_levels(values)
    term = "linear" if lv["off_zero"] and spec.likelihood != "student_t" else "none"
    rec = {
        "term": term,
        "source": "auto",
        "off_zero": lv["off_zero"],
        "max_level_rel": round(lv["max_rel"], 4),
        "threshold_mV": round(lv["threshold_mV"], 5),
        "start_mV": {n: round(float(v), 4) for n, v in zip(names, lv["start_mV"])},
        "end_mV": {n: round(float(v), 4) for n, v in zip(names, lv["end_mV"])},
    }
    return spec.replace(baseline=term), rec


def _gain_centre(data: ModelData, spec: ModelSpec, rms_obs: float, n: int = 64) -> float:
    """Empirical-Bayes centre of the gain prior: RMS(observed) / median RMS(prior ECGs)."""
    key = jax.random.key(12345)
    prior = Predictive(cdt_model, num_samples=n, return_sites=["activation_ms"])
    unit = data._replace(gain0=jnp.asarray(1.0))
    act = jax.jit(lambda k: prior(k, unit, spec)["activation_ms"])(key)
    ecg = jax.vmap(lambda a: model_ecg(a, 1.0, 0.0, data))(act)
    rms = np.sqrt(np.mean(np.asarray(ecg) ** 2, axis=(1, 2)))
    return float(rms_obs / max(np.median(rms), 1e-12))


# --------------------------------------------------------------------------------------
# Unconstrained space helpers
# --------------------------------------------------------------------------------------
def _setup(problem: FitProblem, key):
    """``(z0, potential_fn, postprocess_fn, supports)`` of the problem's model.

    ``z0`` is one prior draw in unconstrained space. The model is traced once under
    ``jax.jit`` (run eagerly, as ``numpyro.infer.util.initialize_model`` does, every
    operation would be compiled on its own: ~200 small compilations, seconds per problem).
    """
    init, potential_fn, postprocess_fn, supports = _memo(problem, ("setup",), lambda: _model_fns(problem))
    return init(key), potential_fn, postprocess_fn, supports


def _model_fns(problem: FitProblem):
    """``(init, potential_fn, postprocess_fn, supports)``, built once per problem (:func:`_memo`)."""
    args, kwargs = problem.model_args()
    supports: dict = {}

    def init(key):
        tr = numpyro.handlers.trace(numpyro.handlers.seed(cdt_model, key)).get_trace(*args, **kwargs)
        latent = {k: s for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
        supports.update({k: s["fn"].support for k, s in latent.items()})  # static objects
        return {k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latent.items()}

    def potential_fn(u):
        return potential_energy(cdt_model, args, kwargs, u)

    def postprocess_fn(u):
        # constrained latents only: the deterministic sites (activation map, model ECG)
        # would make a vmap over all draws hold n_pmj x neighbours x n_nodes per draw
        return constrain_fn(cdt_model, args, kwargs, u, return_deterministic=False)

    return jax.jit(init), potential_fn, postprocess_fn, supports


def _prior_unconstrained(problem: FitProblem, key, n: int, supports) -> dict:
    def build():
        args, _ = problem.model_args()
        prior = Predictive(cdt_model, num_samples=n, return_sites=list(supports))
        return jax.jit(lambda k: prior(k, *args))  # traced once, not op by op

    draws = _memo(problem, ("prior", n, tuple(supports)), build)(key)
    return {k: biject_to(sup).inv(draws[k]) for k, sup in supports.items()}


def _tempered_potential(problem: FitProblem):
    """``U(u, β[, w, t_max])``: negative log joint in unconstrained space with likelihood power β.

    ``w`` (ms), when given, smooths model and observed ECG in time before the likelihood
    (``cdt_model``'s ``smooth_ms``: a search device, see :func:`find_map`). ``t_max`` (ms),
    when given, replaces the PMJ time prior's upper bound (``cdt_model``'s ``t_max_ms``), so
    that the same compiled search serves both bounds of :func:`select_time_prior`.
    """
    def build():
        args, kwargs = problem.model_args()

        def u_fn(u, beta, smooth_ms=None, t_max_ms=None):
            kw = {**kwargs, "temper": beta, "smooth_ms": smooth_ms, "t_max_ms": t_max_ms}
            return potential_energy(cdt_model, args, kw, u)

        return u_fn

    return _memo(problem, ("tempered",), build)


def _adam(u_fn, u0, steps: int, lr, anneal: float = 0.6, beta0: float = 0.02, smooth_ms: float = 0.0,
          t_max_ms: float | None = None):
    """Adam with cosine step decay and likelihood annealing, on a batch of starts.

    The likelihood power rises geometrically from ``beta0`` to 1 over the first
    ``anneal`` fraction of the steps (a flatter landscape first, fewer poor local optima).
    ``smooth_ms > 0`` also smooths the ECG misfit in time (``u_fn``'s third argument),
    the width falling linearly from ``smooth_ms`` to 0 over the same steps (coarse to
    fine); the returned losses are always the unsmoothed potential at β = 1.
    ``lr`` is a float or a dict of per-site step sizes (same keys as ``u0``).
    ``t_max_ms`` (given only to a ``u_fn`` of :func:`_tempered_potential`) is passed on as
    the PMJ time prior's upper bound, a traced argument: one compiled program for every bound.
    """
    rates = lr if isinstance(lr, dict) else jax.tree.map(lambda _: lr, jax.tree.map(lambda x: x[0], u0))
    rates = jax.tree.map(lambda r: jnp.asarray(r, jnp.float32), rates)  # an argument: no recompilation per value
    smooth = smooth_ms > 0
    bound = t_max_ms is not None
    run = _memo(u_fn, ("adam", steps, anneal, beta0, smooth, bound),
                lambda: _adam_program(u_fn, steps, anneal, beta0, smooth, bound))
    return run(u0, rates, jnp.asarray(smooth_ms, jnp.float32), jnp.asarray(t_max_ms if bound else 0.0, jnp.float32))


def _adam_program(u_fn, steps: int, anneal: float, beta0: float, smooth: bool = False, bound: bool = False):
    """The compiled Adam run of :func:`_adam`: ``(u0 batch, rates, w0, t_max) -> (u, loss, trace)``."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    n_anneal = max(1, int(anneal * steps))

    def one(u, rates, w0, tm):
        def fn(x, beta, w=None):  # the potential, with the time prior's bound when one is given
            return u_fn(x, beta, w, tm) if bound else (u_fn(x, beta) if w is None else u_fn(x, beta, w))

        vg = jax.value_and_grad(fn)

        def step(carry, i):
            u, m, v = carry
            beta = jnp.minimum(1.0, beta0 ** (1.0 - i / n_anneal))
            if smooth:
                val, g = vg(u, beta, w0 * jnp.maximum(0.0, 1.0 - i / n_anneal))
            else:
                val, g = vg(u, beta)
            g = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            m = jax.tree.map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
            v = jax.tree.map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
            k = i + 1.0
            decay = 0.01 + 0.99 * 0.5 * (1 + jnp.cos(jnp.pi * i / steps))
            u = jax.tree.map(
                lambda p, a, b, r: p - r * decay * (a / (1 - b1**k)) / (jnp.sqrt(b / (1 - b2**k)) + eps),
                u,
                m,
                v,
                rates,
            )
            return (u, m, v), val

        zeros = jax.tree.map(jnp.zeros_like, u)
        (u, _, _), trace = jax.lax.scan(step, (u, zeros, zeros), jnp.arange(steps, dtype=jnp.float32))
        return u, fn(u, 1.0), trace

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)))


def _screen(u_fn, u: dict, keep: int, batch: int = 8, t_max_ms: float | None = None) -> dict:
    """Evaluate the potential on many prior draws; keep the ``keep`` best.

    ``lax.map`` in small batches: a wide ``vmap`` would gather ``batch × n_pmj ×
    neighbours × n_nodes`` residual rows at once (gigabytes), for no gain on a CPU.
    ``t_max_ms``: as in :func:`_adam` (a traced bound of the PMJ time prior).
    """
    bound = t_max_ms is not None

    def build():
        def one(y, tm):
            return u_fn(y, 1.0, None, tm) if bound else u_fn(y, 1.0)

        return jax.jit(lambda x, tm: jax.lax.map(lambda y: one(y, tm), x, batch_size=batch))

    f = _memo(u_fn, ("screen", batch, bound), build)
    vals = np.asarray(f(u, jnp.asarray(t_max_ms if bound else 0.0, jnp.float32)))
    vals = np.where(np.isfinite(vals), vals, np.inf)
    best = np.argsort(vals)[:keep]
    return jax.tree.map(lambda x: x[best], u)


#: Basin-hopping rounds after the multi-start MAP, per method, when ``fit`` is not told
#: (``--search-rounds``); each costs about ``n_starts × 300`` gradient evaluations (~13 s on
#: the default heart). SVI runs 4 to stay within its 2-minute target there; NUTS, which
#: samples for far longer, 6. ``map`` is the published Geodesic-BP baseline: none.
SEARCH_ROUNDS = {"map": 0, "svi": 4, "nuts": 6}

#: Width (ms) of the time smoothing of the ECG misfit at the start of every MAP search
#: (``--search-smooth-ms``), falling to 0 over the annealing steps: coarse to fine, as in
#: waveform inversion. Off by default: on the benchmark case 4 ms raised the best of 8
#: multi-start optima by ~50 nats on average over 9 seeds, but did not lower their
#: activation error, and on the benchmark's own seed MAP, SVI and NUTS all came out worse
#: (benchmarks/RESULTS.md, Session 13).
SEARCH_SMOOTH_MS = 0.0

#: The search under the ECG window's time prior (:func:`select_time_prior`) smooths its
#: misfit at least this much (ms). That prior wins where a few sites activate the heart
#: slowly; there the smoothing raised the best of 8 optima in 7 of 8 searches (by 35–80
#: nats under keys 0–3) and, through ``fit`` on a 3-site case (seeds 0–3), lowered the mean
#: activation error from 16.6 to 12.8 ms (MAP) and from 16.9 to 12.1 ms (SVI). The search
#: under the spec's prior keeps ``search_smooth_ms``: smoothing it too left the maps' error
#: unchanged on both the 3-site and the benchmark case (benchmarks/RESULTS.md, Session 22).
WIDE_SEARCH_SMOOTH_MS = 4.0


def wide_search_smooth(smooth_ms: float) -> float:
    """The misfit smoothing (ms) of a search under the window's time prior: at least :data:`WIDE_SEARCH_SMOOTH_MS`."""
    return max(float(smooth_ms), WIDE_SEARCH_SMOOTH_MS)

#: :func:`select_time_prior` calls a choice between the two time priors close (nats of log
#: joint between their best multi-start optima) below this: both then hop before it. On the
#: 3-site case four hop rounds raised a prior's best optimum by 16–106 nats, enough to reverse
#: a lead of 44 nats (seed 1: the spec's −545 against the window's −502 became −561 against
#: −607, the true basin); on the benchmark case the spec's prior leads by 90–121 nats, and its
#: fits pay nothing (benchmarks/RESULTS.md, Session 23).
TIME_PRIOR_CLOSE_NATS = 75.0

#: Basin hops start from a good optimum: their smoothing starts at this fraction of it.
HOP_SMOOTH_FRACTION = 0.4


def find_map(
    problem: FitProblem,
    key,
    n_starts: int = 8,
    steps: int = 400,
    lr: float = 0.75,
    n_screen: int = 2048,
    progress: bool = True,
    search_rounds: int = 0,
    search_pmjs: int = 4,
    search_steps: int = 300,
    search_deadline: float | None = None,
    search_log: list | None = None,
    smooth_ms: float = SEARCH_SMOOTH_MS,
    initial: tuple | None = None,
    t_max_ms: float | None = None,
):
    """Multi-start MAP in the unconstrained space (Adam, the Geodesic-BP baseline).

    ``n_screen`` prior draws are scored, the ``n_starts`` best are optimised by Adam
    (``steps`` iterations, ``lr`` mm for PMJ positions, other sites scaled by their prior
    spread, likelihood annealed over the first 60%). While the likelihood is annealed, the
    model and observed ECG are also smoothed in time, by a Gaussian of sd ``smooth_ms``
    at first falling linearly to none (0, the default: none). With sharp QRS deflections a PMJ
    a few ms early or late otherwise sees a flat or misleading misfit, and Adam stops in a
    wrong basin; the smoothed misfit brings the deflections into line first. Returned
    losses are the unsmoothed negative log joint.

    ``search_rounds > 0`` then hops between basins (:func:`_basin_hops`): each round makes
    ``n_starts`` proposals from the best optimum so far, each with ``search_pmjs`` of its
    PMJs re-drawn from the prior (position and time), re-optimises them (``search_steps``
    Adam steps, the likelihood annealed from β = 0.2 over the first half), and keeps the
    ``n_starts`` best distinct optima of the old and new. Multi-start Adam alone stops in
    optima far below the posterior's main mode (on the benchmark case, ~170 nats below
    the optimum next to the truth), and the PMJs of a local optimum cannot cross the
    barriers between basins by small steps. No new round starts after ``search_deadline``
    (a ``time.time()`` value). ``search_log``, a list, receives the best loss before the
    rounds and after each round run. ``initial``, the ``(starts, losses)`` of an earlier
    call on the same problem with ``search_rounds=0``, skips the multi-start. ``t_max_ms``
    (ms) searches under the PMJ time prior ``Uniform(0, t_max_ms)`` instead of the spec's,
    with the same compiled programs (a traced bound; :func:`select_time_prior`); the starts
    and losses are then those of the problem with that bound, while the returned
    ``potential_fn`` and ``postprocess_fn`` stay the problem's own.

    Returns
    -------
    starts : dict of arrays with leading dim ``n_starts``, sorted best first
    losses : (n_starts,) negative log joint at each optimum
    potential_fn, postprocess_fn, supports
    """
    k1, k2 = jax.random.split(key)
    _, potential_fn, postprocess_fn, supports = _setup(problem, k1)
    u_fn = _tempered_potential(problem)
    u0 = _prior_unconstrained(problem, k2, max(n_screen, n_starts), supports)
    # Step sizes in each site's natural unit: lr is mm for PMJ positions (as in Geodesic-BP);
    # other sites move the same fraction of their prior spread per step.
    spread = {k: float(np.std(np.asarray(v))) + 1e-3 for k, v in u0.items()}
    rates = {k: lr * spread[k] / spread["pmj_xyz_mm"] for k in u0}
    # the time prior's bound, a traced argument of the search programs (one compilation for any bound)
    t_max = float(problem.spec.t_max_ms if t_max_ms is None else t_max_ms)
    if initial is not None:
        u, loss = initial
    else:
        with progress_bar(total=2, desc=f"MAP ({n_starts} starts x {steps} Adam steps)", disable=not progress) as bar:
            u0 = _screen(u_fn, u0, n_starts, t_max_ms=t_max)
            bar.update(1)
            u, loss, _ = _adam(u_fn, u0, steps, rates, smooth_ms=smooth_ms, t_max_ms=t_max)
            loss = np.asarray(loss)
            bar.update(1)
        loss = np.where(np.isfinite(loss), loss, np.inf)
        order = np.argsort(loss)
        u = jax.tree.map(lambda x: x[order], u)
        loss = loss[order]
    if search_rounds > 0:
        u, loss = _basin_hops(
            problem, u_fn, u, loss, rates, jax.random.fold_in(key, 1), supports,
            search_rounds, search_pmjs, search_steps, progress, search_deadline, search_log,
            smooth_ms=HOP_SMOOTH_FRACTION * smooth_ms, t_max_ms=t_max,
        )
    return u, loss, potential_fn, postprocess_fn, supports


def _basin_hops(
    problem, u_fn, u, loss, rates, key, supports, rounds: int, n_redraw: int, steps: int, progress: bool,
    deadline: float | None = None, log: list | None = None, smooth_ms: float = 0.0, t_max_ms: float | None = None,
):
    """Basin hopping from the best optimum: re-draw a few PMJs, re-optimise, keep the best.

    ``u`` (a batch of ``n`` optima, best first) and ``loss`` ``(n,)``; returns the ``n``
    best of all optima seen, best first. Proposals re-draw ``n_redraw`` PMJs (position and
    time, from prior draws) of the best optimum, at most half of them; the other sites
    keep their values. ``log`` (a list) gets the best loss first and after every round.
    ``smooth_ms``: the misfit smoothing at the start of each re-optimisation; ``t_max_ms``: the
    PMJ time prior's bound (both as in :func:`_adam`).
    """
    n = int(loss.shape[0])
    k_pmj = problem.spec.n_pmj
    m = min(max(int(n_redraw), 1), max(1, k_pmj // 2))  # at most half: a hop, not a restart
    if log is not None:
        log.append(float(loss[0]))
    pmj_sites = [k for k in ("pmj_xyz_mm", "pmj_t_ms") if k in u]
    desc = f"MAP basin hops ({n} proposals x {steps} steps)"
    with progress_bar(total=rounds, desc=desc, disable=not progress) as bar:
        for r in range(rounds):
            if deadline is not None and time.time() > deadline:
                break
            k_draw, k_pick = jax.random.split(jax.random.fold_in(key, r))
            fresh = _prior_unconstrained(problem, k_draw, n, supports)
            # which PMJs each proposal re-draws: the first m of a random permutation
            rng = np.random.default_rng(np.asarray(jax.random.key_data(k_pick)).ravel().tolist())
            redraw = np.stack([rng.permutation(k_pmj)[:m] for _ in range(n)])
            mask = np.zeros((n, k_pmj), bool)
            mask[np.arange(n)[:, None], redraw] = True
            prop = {}
            for name, v in u.items():
                base = np.broadcast_to(np.asarray(v[0]), (n,) + v.shape[1:])
                if name in pmj_sites:
                    sel = mask.reshape(mask.shape + (1,) * (v.ndim - 2))
                    base = np.where(sel, np.asarray(fresh[name]), base)
                prop[name] = jnp.asarray(base, v.dtype)
            u_new, l_new, _ = _adam(u_fn, prop, steps, rates, anneal=0.5, beta0=0.2, smooth_ms=smooth_ms,
                                    t_max_ms=t_max_ms)
            l_new = np.asarray(l_new)
            l_new = np.where(np.isfinite(l_new), l_new, np.inf)
            both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), u, u_new)
            l_both = np.concatenate([loss, l_new])
            order = np.argsort(l_both, kind="stable")
            # distinct optima: drop a proposal that fell back into an optimum already kept
            keep: list[int] = []
            for i in order:
                if all(abs(l_both[i] - l_both[j]) > 1e-3 for j in keep):
                    keep.append(int(i))
                if len(keep) == n:
                    break
            keep += [int(i) for i in order if int(i) not in keep][: n - len(keep)]
            keep_arr = np.asarray(keep)
            u = jax.tree.map(lambda x: x[keep_arr], both)
            loss = l_both[keep_arr]
            if log is not None:
                log.append(float(loss[0]))
            bar.update(1)
            bar.set_postfix_str(f"best -log p {loss[0]:.1f}")
    return u, loss


def _abs_eig_inverse(h: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """``(V |Λ|⁻¹ Vᵀ, Σ log |λ|)`` of a symmetric matrix, eigenvalues floored at ``floor``."""
    w, v = np.linalg.eigh(0.5 * (h + h.T))
    w = np.maximum(np.abs(w), floor)
    return (v / w) @ v.T, float(np.sum(np.log(w)))


#: Hessian-vector products computed at once when :func:`laplace_optima` builds a Hessian.
#: ``jax.hessian`` pushes all ``d`` directions through the model together, holding ``d``
#: copies of its largest intermediate (the ``n_pmj × neighbours × n_nodes`` residual gather):
#: at K = 300 on a 5k-node mesh, ~1,200 × 200 MB. In batches of this many the memory stays
#: that of a few gradients, at the same arithmetic.
HESSIAN_BATCH = 32


def _hessian_fn(potential_fn, u: dict, batch: int | None = None):
    """``(flat, hess)``: ``u`` flattened and a jitted ``hess(flat) -> (d, d)`` of the potential.

    The Hessian is assembled column block by column block, ``batch`` Hessian-vector products
    (forward over reverse) at a time (:data:`HESSIAN_BATCH`), so that its memory does not grow
    with the dimension ``d``.
    """
    flat, unravel = ravel_pytree(u)
    batch = int(batch or HESSIAN_BATCH)

    def build():
        grad = jax.grad(lambda f: potential_fn(unravel(f)))

        def hess(x):
            def hvp(v):
                return jax.jvp(grad, (x,), (v,))[1]

            eye = jnp.eye(x.size, dtype=x.dtype)
            h = jax.lax.map(hvp, eye, batch_size=min(batch, x.size))
            return 0.5 * (h + h.T)

        return jax.jit(hess)

    hess = _memo(potential_fn, ("hessian", _tree_key(u), batch), build)
    return flat, hess


def laplace_optima(potential_fn, u: dict, losses: np.ndarray, floor: float = 1e-2):
    """Laplace approximation at each MAP optimum: log evidence and inverse mass matrix.

    ``log Z_i ≈ −U_i − ½ log det |H_i|`` (the ``(2π)^{d/2}`` factor is common to all optima),
    with ``H_i`` the Hessian of the potential ``U`` at optimum ``i``. Its eigenvalues enter by
    absolute value, floored at ``floor``: Adam can stop on a saddle, and clipping a negative
    eigenvalue to the floor would claim sd 10 where the posterior sd is ~0.3 (measured: NUTS
    step 0.008 clipped vs 0.042 with ``|λ|``). The inverse is the chain's dense mass matrix.

    Parameters
    ----------
    potential_fn : callable, unconstrained dict → scalar
    u : dict of arrays with leading dim ``n_opt``
    losses : (n_opt,) potential at each optimum (``inf`` for failed starts)

    Returns
    -------
    log_evidence : (n_opt,) float, ``-inf`` where the optimum failed
    inv_masses : list of (d, d) arrays
    """
    n = len(losses)
    flat0, hess = _hessian_fn(potential_fn, jax.tree.map(lambda x: x[0], u))
    log_ev = np.full(n, -np.inf)
    inv_masses = []
    for i in range(n):
        flat = ravel_pytree(jax.tree.map(lambda x, i=i: x[i], u))[0]
        h = np.asarray(hess(flat), np.float64) if np.isfinite(losses[i]) else None
        if h is None or not np.all(np.isfinite(h)):
            inv_masses.append(np.eye(flat0.size))
            continue
        inv, logdet = _abs_eig_inverse(h, floor)
        inv_masses.append(inv)
        log_ev[i] = -float(losses[i]) - 0.5 * logdet
    return log_ev, inv_masses


def svi_lowrank(
    potential_fn,
    u0: dict,
    key,
    steps: int,
    *,
    rank: int,
    lr: float = 0.01,
    init_scale: float = 0.02,
    num_samples: int = 500,
    key_post=None,
    chunk: int = 100,
    progress: bool = False,
):
    """Variational fit of a low-rank multivariate normal in unconstrained space.

    ``q(u) = N(m, W Wᵀ + diag(d²))`` (``W`` is ``(dim, rank)``), the family of numpyro's
    ``AutoLowRankMultivariateNormal``, fitted by maximising the ELBO
    ``E_q[−U(u)] + H(q)`` — one reparametrised draw per step, the entropy exact (matrix
    determinant lemma) — with clipped Adam, its step size decayed (cosine) to 5 % of
    ``lr``. Everything is one compiled scan per chunk: no model is run eagerly (numpyro's
    guide set-up compiles each operation on its own, ~15 s per problem on a CPU).

    Parameters
    ----------
    potential_fn : callable, unconstrained dict → scalar ``U`` (negative log joint)
    u0 : dict, initial mean (e.g. the best MAP optimum)
    key : PRNG key of the optimisation
    steps : int, optimisation steps
    rank : int, columns of ``W``
    lr : float, Adam step size
    init_scale : float, initial ``d`` (``W`` starts at 0)
    num_samples : int, draws returned
    key_post : PRNG key of the draws (default: derived from ``key``)

    Returns
    -------
    draws : (num_samples, dim) unconstrained draws (flattened like ``ravel_pytree(u0)``)
    losses : (steps,) negative ELBO estimates
    """
    flat0, unravel = ravel_pytree(u0)
    dim = flat0.size
    rank = int(max(1, min(rank, dim)))
    opt, run = _memo(
        potential_fn, ("svi", _tree_key(u0), rank, lr, steps), lambda: _svi_program(potential_fn, u0, rank, lr, steps)
    )
    params = {
        "loc": flat0,
        "cov_factor": jnp.zeros((dim, rank), flat0.dtype),
        "scale_raw": jnp.full(dim, np.log(np.expm1(init_scale)), flat0.dtype),
    }
    state = opt.init(params)
    losses = []
    with progress_bar(total=steps, desc=f"SVI (low-rank normal, rank {rank})", disable=not progress) as bar:
        done = 0
        while done < steps:
            n = min(chunk, steps - done)
            state, vals = run(state, jax.random.fold_in(key, done), n)
            losses.append(np.asarray(vals))
            done += n
            bar.update(n)
    p = opt.get_params(state)
    kp = key_post if key_post is not None else jax.random.fold_in(key, 0x5EED)
    eps = jax.random.normal(kp, (num_samples, rank + dim), flat0.dtype)
    d = jax.nn.softplus(p["scale_raw"])
    draws = p["loc"] + eps[:, :rank] @ p["cov_factor"].T + d * eps[:, rank:]
    return np.asarray(draws), np.concatenate(losses) if losses else np.zeros(0)


def _svi_program(potential_fn, u0: dict, rank: int, lr: float, steps: int):
    """``(optimiser, compiled chunk of steps)`` of :func:`svi_lowrank`."""
    flat0, unravel = ravel_pytree(u0)
    dim = flat0.size

    def neg_elbo(params, eps):
        m, w, d = params["loc"], params["cov_factor"], jax.nn.softplus(params["scale_raw"])
        z = m + w @ eps[:rank] + d * eps[rank:]
        cap = jnp.eye(rank) + (w / d[:, None] ** 2).T @ w  # I + Wᵀ D⁻² W
        entropy = jnp.sum(jnp.log(d)) + 0.5 * jnp.linalg.slogdet(cap)[1]
        return potential_fn(unravel(z)) - entropy

    # cosine decay to 5 % of ``lr``: the last iterates settle instead of jittering by ~lr
    opt = numpyro.optim.ClippedAdam(lambda i: lr * (0.05 + 0.95 * 0.5 * (1 + jnp.cos(jnp.pi * i / max(steps, 1)))))
    vg = jax.value_and_grad(neg_elbo)

    @functools.partial(jax.jit, static_argnums=2)
    def run(state, key, n):
        def step(st, k):
            val, g = vg(opt.get_params(st), jax.random.normal(k, (rank + dim,), flat0.dtype))
            g = jax.tree.map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            return opt.update(g, st), val

        return jax.lax.scan(step, state, jax.random.split(key, n))

    return opt, run


def evidence_weights(log_evidence: np.ndarray) -> np.ndarray:
    """Normalised posterior weights of the optima from their Laplace log evidence."""
    le = np.asarray(log_evidence, np.float64)
    if not np.any(np.isfinite(le)):
        return np.zeros_like(le)
    w = np.exp(le - np.max(le[np.isfinite(le)]))
    w[~np.isfinite(le)] = 0.0
    return w / w.sum()


def allocate_chains(weights: np.ndarray, chains: int, min_weight: float = 1e-3) -> list[int]:
    """Optimum index for each chain, in proportion to the optima's posterior weights.

    Optima below ``min_weight`` get no chain: a chain started in a basin holding a
    negligible share of the posterior cannot leave it within a run, and would report that
    share as one chain's worth (R-hat then measures the optimiser, not the posterior).
    Each optimum above the threshold gets at least one chain while chains last (heaviest
    first); the rest go by largest remainder. Returns indices sorted by optimum.
    """
    w = np.asarray(weights, np.float64)
    order = [i for i in np.argsort(-w) if w[i] >= min_weight]
    if not order:
        raise CdtBayesError("MAP: every start failed (non-finite log density); check the ECG and mesh")
    kept = order[:chains]
    count = {i: 1 for i in kept}
    left = chains - len(kept)
    if left > 0:
        ws = np.array([w[i] for i in kept])
        share = ws / ws.sum() * chains - 1.0
        extra = np.floor(np.maximum(share, 0.0)).astype(int)
        while extra.sum() > left:
            extra[np.argmax(extra)] -= 1
        rem = np.maximum(share, 0.0) - extra
        for j in np.argsort(-rem)[: left - int(extra.sum())]:
            extra[j] += 1
        for j, i in enumerate(kept):
            count[i] += int(extra[j])
    return sorted(i for i, c in count.items() for _ in range(c))


def _dispersed_start(potential_fn, u: dict, inv_mass: np.ndarray, key, u_star: float, scale: float = 0.25) -> dict:
    """A chain's start: a draw from the shrunken Laplace approximation ``N(u, scale² inv_mass)``.

    Starts that differ are what R-hat needs to mean anything within a mode; but full Laplace
    draws are too wide here (measured on the default heart: 2 of 4 chains started from
    them ended in poor-fit, large-noise states and never came back, R-hat 4.9). The draw is
    accepted if its potential is within that Gaussian's typical set
    (``U ≤ U* + scale² (d/2 + 3 sqrt(d/2))``); otherwise the displacement is halved (up to
    6 times, then the optimum itself).
    """
    flat, unravel = ravel_pytree(u)
    d = flat.size
    chol = np.linalg.cholesky(inv_mass + 1e-9 * np.eye(d))
    eps = np.asarray(jax.random.normal(key, (d,)), np.float64)
    for _ in range(6):
        cand = unravel(jnp.asarray(np.asarray(flat, np.float64) + scale * chol @ eps, flat.dtype))
        val = float(potential_fn(cand))
        if np.isfinite(val) and val <= u_star + scale**2 * (0.5 * d + 3.0 * np.sqrt(0.5 * d)):
            return cand
        scale *= 0.5
    return u


# --------------------------------------------------------------------------------------
# NUTS with chunks, checkpoints and a time budget
# --------------------------------------------------------------------------------------
def _plan_iterations(
    done: int, num_warmup: int, num_samples: int, per_iter_s: float, seconds_left: float, n_chains: int
) -> tuple[int, int] | None:
    """Warm-up and sampling iterations per chain that fit in the time left, or None if all do.

    ``done`` iterations per chain are behind us (all in warm-up); the rest run round-robin at
    ``per_iter_s`` seconds each. The shortened schedule keeps the asked warm-up fraction, at
    least one more warm-up iteration and at least one draw.
    """
    total = num_warmup + num_samples
    fit_iters = done + int(max(seconds_left, 0.0) / (n_chains * max(per_iter_s, 1e-9)))
    if fit_iters >= total or done >= num_warmup:
        return None
    new_warmup = max(done + 1, int(round(num_warmup / total * fit_iters)))
    return new_warmup, max(1, fit_iters - new_warmup)


def _nuts_chains(
    potential_fn,
    starts: list[dict],
    inv_masses: list[np.ndarray],
    keys,
    num_warmup: int,
    num_samples: int,
    ckdir: Path | None,
    deadline: float | None,
    progress: bool,
    max_tree_depth: int = 8,
    chunk: int = 25,
    chain_method: str = "sequential",
):
    """Run NUTS chains in chunks of ``chunk`` iterations.

    ``chain_method="sequential"``: every chain advances one chunk in turn (round-robin), on
    one device. ``"vectorized"``: the chains advance together, one ``vmap``-ed chunk (one
    program, all chains; on a GPU this costs about one chain's time, on a CPU more than
    running them in turn: a vmapped tree is as deep as the deepest chain's); with several
    local devices and a number of chains divisible by their count, the chains are split
    across the devices (the stacked state is sharded along its chain axis). Either way a
    wall-time budget cuts all chains at (nearly) the same length and the between-chain
    diagnostics stay computable, and for the same keys both give the same draws. The
    inverse mass matrix (dense, fixed) and the adapted step size live in each chain's
    state, so one compiled chunk serves every chain. After each chunk the chain's state,
    draws and statistics are checkpointed (``ckdir/chain<c>.pkl``); an existing
    checkpoint is resumed (by either method).

    Returns
    -------
    draws : list (one per chain) of dicts of unconstrained draws ``(n_draws, ...)``, or None
    stats : list of dicts ``diverging, n_steps, acceptance_rate, lp, step_size``
    truncated : bool, True when the deadline stopped sampling early
    plan_note : str or None, set when a time budget shortened warm-up and sampling
    throughput : dict ``seconds, chain_steps, iterations`` over the chunks after the first
        (which compiles): wall time, leapfrog steps summed over chains, chain-iterations
    """
    if chain_method not in ("sequential", "vectorized"):
        raise ValueError(f"chain_method must be 'sequential' or 'vectorized', not {chain_method!r}")
    vectorized = chain_method == "vectorized"

    def make_kernel(inv_mass):
        return NUTS(
            potential_fn=potential_fn,
            inverse_mass_matrix=jnp.asarray(inv_mass, jnp.float32),
            adapt_mass_matrix=False,
            dense_mass=True,
            max_tree_depth=max_tree_depth,
            target_accept_prob=0.8,
        )

    n_chains = len(starts)
    # (warm-up, draws, iteration at which the kernels were initialised): a budget may have
    # replanned the schedule of a run being resumed, and its adaptation window with it
    schedule = (num_warmup, num_samples, 0)
    ck0 = ckdir / "chain0.pkl" if ckdir is not None else None
    if ck0 is not None and ck0.exists():
        with open(ck0, "rb") as fh:
            saved_schedule = tuple(pickle.load(fh).get("schedule", schedule))
        if saved_schedule[2] > 0:  # replanned by a budget: keep its kernels' schedule
            schedule = saved_schedule
    num_warmup, num_samples, wa_base = schedule

    def compile_chunk(kernel):
        def run_chunk(state, n):
            def body(s, _):
                s = kernel.sample(s, (), {})
                return s, (s.z, s.diverging, s.num_steps, s.accept_prob, s.potential_energy, s.adapt_state.step_size)

            return jax.lax.scan(body, state, None, length=n)

        if vectorized:
            return jax.jit(jax.vmap(run_chunk, in_axes=(0, None)), static_argnums=1)
        return jax.jit(run_chunk, static_argnums=1)

    def programs(warm: int):
        """``(init_state, run_chunk)`` of kernels adapting over ``warm`` iterations, built once.

        One compiled initialisation serves all chains (eagerly, every operation of the
        gradient would compile on its own): each chain's mass matrix is an argument, and the
        sampler reads it from the state, so one kernel's compiled chunk serves all chains.
        Both are kept on ``potential_fn`` (:func:`_memo`): a later run with the same settings
        compiles nothing.
        """

        def build():
            kernel = make_kernel(inv_masses[0])
            # ``kernel.init`` sets up its sample function; an abstract evaluation does that
            jax.eval_shape(lambda key, z: kernel.init(key, warm, init_params=z), keys[0], starts[0])
            init_state = jax.jit(lambda key, z, m: make_kernel(m).init(key, warm, init_params=z))
            return init_state, compile_chunk(kernel)

        return _memo(potential_fn, ("nuts", max_tree_depth, warm, vectorized, _tree_key(starts[0])), build)

    init_state, run_chunk = programs(num_warmup - wa_base)
    chains = []
    for c in range(n_chains):
        state = init_state(keys[c], starts[c], jnp.asarray(inv_masses[c], jnp.float32))
        rec = {"state": state, "done": 0, "samples": [], "stats": []}
        ckpt = ckdir / f"chain{c}.pkl" if ckdir is not None else None
        if ckpt is not None and ckpt.exists():
            with open(ckpt, "rb") as fh:
                saved = pickle.load(fh)
            rec = {**saved, "state": jax.tree.map(jnp.asarray, saved["state"])}
        rec["ckpt"] = ckpt
        chains.append(rec)

    # vectorized chains are split across the local devices when their number divides evenly
    n_dev = jax.local_device_count() if vectorized else 1
    chain_sharding = None
    if n_dev > 1:
        from jax.sharding import Mesh as DeviceMesh
        from jax.sharding import NamedSharding, PartitionSpec

        chain_sharding = NamedSharding(DeviceMesh(np.array(jax.local_devices()), ("chain",)), PartitionSpec("chain"))

    def advance(group: list[int], n: int):
        """One chunk of ``n`` iterations for the chains in ``group``; per-chain outputs."""
        if not vectorized:
            (c,) = group
            state, out = run_chunk(chains[c]["state"], n)
            jax.block_until_ready(state.z)
            return [state], [out], int(np.sum(out[2]))
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(chains[c]["state"] for c in group))
        if n_dev > 1 and len(group) % n_dev == 0:  # chains split across the devices (SPMD)
            stacked = jax.device_put(stacked, chain_sharding)
        state, out = run_chunk(stacked, n)
        jax.block_until_ready(state.z)
        states = [jax.tree.map(lambda x, j=j: x[j], state) for j in range(len(group))]
        outs = [jax.tree.map(lambda x, j=j: x[j], out) for j in range(len(group))]
        # a vmapped iteration lasts as long as its longest tree
        return states, outs, int(np.sum(np.max(np.asarray(out[2]), axis=0)))

    total = num_warmup + num_samples
    truncated = False
    replan = deadline is not None and all(r["done"] == 0 for r in chains)
    timings: list[float] = []  # seconds per leapfrog step (per lock-step step when vectorized)
    # compiled chunks only: wall seconds, leapfrog steps summed over chains, chain-iterations
    throughput = {"seconds": 0.0, "chain_steps": 0, "iterations": 0}
    max_steps = 1
    plan_note = None
    desc = f"NUTS {n_chains} chain{'s' if n_chains > 1 else ''} x {num_warmup}+{num_samples}"
    with progress_bar(total=n_chains * total, desc=desc, disable=not progress) as bar:
        bar.update(sum(r["done"] for r in chains))
        first_call = True
        while not truncated and any(r["done"] < total for r in chains):
            if vectorized:  # chains at the same point advance together (all of them, unless resumed unevenly)
                lag = min(r["done"] for r in chains)
                groups = [[c for c, r in enumerate(chains) if r["done"] == lag]]
            else:
                groups = [[c] for c, r in enumerate(chains) if r["done"] < total]
            for group in groups:
                done = chains[group[0]]["done"]
                if deadline is not None and time.time() > deadline:
                    truncated = True
                    break
                n = min(chunk, num_warmup - done if done < num_warmup else total - done)
                t_chunk = time.time()
                states, outs, steps = advance(group, n)
                if not first_call:  # seconds per leapfrog step, and the largest tree seen
                    dt = time.time() - t_chunk
                    timings.append(dt / max(steps, 1))
                    max_steps = max(max_steps, max(int(np.max(o[2])) for o in outs))
                    throughput["seconds"] += dt
                    throughput["chain_steps"] += int(sum(np.sum(o[2]) for o in outs))
                    throughput["iterations"] += n * len(group)
                first_call = False
                for c, state, (z, div, nst, acc, pe, eps) in zip(group, states, outs):
                    rec = chains[c]
                    rec["state"] = state
                    if done >= num_warmup:
                        rec["samples"].append(jax.device_get(z))
                        rec["stats"].append(jax.device_get((div, nst, acc, pe, eps)))
                    rec["done"] = done + n
                    if rec["ckpt"] is not None:
                        tmp = rec["ckpt"].with_suffix(".tmp")
                        keep = {k: rec[k] for k in ("done", "samples", "stats")}
                        with open(tmp, "wb") as fh:
                            pickle.dump({**keep, "state": jax.device_get(state), "schedule": schedule}, fh)
                        os.replace(tmp, rec["ckpt"])
                bar.update(n * len(group))
                who = f"chain {group[0] + 1}" if len(group) == 1 else f"{len(group)} chains"
                steps_now = max(int(np.max(o[2])) for o in outs)
                eps_now = float(np.mean([float(st.adapt_state.step_size) for st in states]))
                bar.set_postfix_str(f"{who}: step {eps_now:.3g}, tree {steps_now}")
            if replan and timings and all(r["done"] > 0 for r in chains):
                # Budget planning, once: if the requested iterations cannot all run before the
                # deadline, shorten warm-up and sampling alike (same proportions), so that every
                # chain still warms up and draws instead of the budget ending mid-warm-up.
                replan = False
                done = min(r["done"] for r in chains)
                # trees grow during warm-up: plan as if every later iteration were as long as
                # the longest seen so far (a plan that finishes beats one the deadline cuts)
                per_iter = float(np.median(timings)) * max_steps
                plan = _plan_iterations(
                    done, num_warmup, num_samples, per_iter, deadline - time.time(), 1 if vectorized else n_chains
                )
                if plan is not None:
                    new_warmup, new_samples = plan
                    for c, rec in enumerate(chains):
                        init_c, _ = programs(new_warmup - rec["done"])
                        key = jax.random.fold_in(keys[c], 1)
                        rec["state"] = init_c(key, rec["state"].z, jnp.asarray(inv_masses[c], jnp.float32))
                    _, run_chunk = programs(new_warmup - chains[0]["done"])
                    first_call = True
                    plan_note = (
                        f"time budget: {per_iter:.2f} s per iteration, so warm-up was shortened to "
                        f"{new_warmup} and sampling to {new_samples} iterations per chain "
                        f"(asked: {num_warmup} + {num_samples})"
                    )
                    num_warmup, num_samples, total = new_warmup, new_samples, new_warmup + new_samples
                    schedule = (num_warmup, num_samples, done)
                    bar.total = sum(r["done"] for r in chains) + n_chains * (total - done)
                    bar.refresh()
    draws, stats = [], []
    for rec in chains:
        if rec["samples"]:
            z = jax.tree.map(lambda *xs: np.concatenate(xs), *rec["samples"])
            div, nst, acc, pe, eps = (np.concatenate(x) for x in zip(*rec["stats"]))
        else:
            z = None
            div = nst = acc = pe = eps = np.zeros(0)
        draws.append(z)
        stats.append({"diverging": div, "n_steps": nst, "acceptance_rate": acc, "lp": -pe, "step_size": eps})
    return draws, stats, truncated, plan_note, throughput


# --------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class FitResult:
    """Raw fit output before summaries: constrained draws ``(chain, draw, ...)``."""

    method: str
    draws: dict
    sample_stats: dict | None
    seconds: float
    notes: list
    map_losses: np.ndarray
    optima: list = dataclasses.field(default_factory=list)
    chain_method: str | None = None  # NUTS: "sequential" or "vectorized"
    chain_optimum: list | None = None  # NUTS: index (into ``optima``) of each chain's start
    search_rounds: int = 0  # basin-hopping rounds run after the multi-start MAP
    search_smooth_ms: float = 0.0  # width of the MAP search's misfit smoothing at its start, ms
    #: wall seconds per stage: ``search`` (multi-start MAP and basin hops), then ``svi`` or
    #: ``laplace`` (Hessians at the optima) and ``sampling`` (NUTS warm-up and draws)
    stage_seconds: dict = dataclasses.field(default_factory=dict)
    #: NUTS: ``seconds, chain_steps, iterations`` over the compiled chunks (compilation left
    #: out): the sampler's rate, e.g. to extrapolate a run that a time budget cut short
    nuts_throughput: dict | None = None
    #: NUTS: the tree-depth cap the chains ran with (``2**max_tree_depth - 1`` leapfrog steps)
    max_tree_depth: int | None = None
    #: the problem actually fitted when it differs from the one given (the wider PMJ time
    #: prior of ``[pmj] t_max_select`` won, :func:`select_time_prior`); ``None``: the one given
    problem: FitProblem | None = None
    #: ``[pmj] t_max_select``: the record of :func:`select_time_prior` (``None``: no choice made)
    time_prior: dict | None = None


def select_time_prior(problem: FitProblem, key, n_starts: int = 8, steps: int = 400, lr: float = 0.75,
                      smooth_ms: float = SEARCH_SMOOTH_MS, progress: bool = False, search_rounds: int = 0,
                      search_deadline: float | None = None, search_log: list | None = None):
    """Choose the PMJ time prior's upper bound between the spec's and the ECG window's length.

    Under ``Uniform(0, t_max_ms)`` with a short ``t_max_ms`` (40 ms by default), a PMJ the
    data do not need can only stay silent (dormant) where the wave arrives before its
    time, i.e. near the early sites. When few sites activate the heart slowly, those
    regions are small and the search cannot park the surplus PMJs there: it settles in a
    wrong basin. Under ``Uniform(0, W)``, ``W`` the window's length, a surplus PMJ can start
    after the wave reaches it anywhere. Both priors run the same multi-start MAP; the one
    whose best optimum has the higher log joint is kept (an empirical-Bayes choice; the
    log joints include each prior's normalisation, ``−K log t_max``). The search under the
    window's prior smooths its misfit at first by at least :data:`WIDE_SEARCH_SMOOTH_MS`
    (:func:`wide_search_smooth`; the losses compared are unsmoothed).

    A close call is decided after the basin hops: when ``search_rounds > 0`` and the two
    best optima lie within :data:`TIME_PRIOR_CLOSE_NATS`, both searches run their
    ``search_rounds`` rounds of basin hopping (:func:`find_map`; no new round after
    ``search_deadline``, so under a tight time budget the window's search, which hops
    second, may run fewer rounds) before the choice. Multi-start optima stop far below the
    basins that hops reach, so a small lead after the multi-start says little about which
    prior explains the ECG better (benchmarks/RESULTS.md, Session 23). ``search_log`` then receives the
    chosen search's hop log.

    Returns
    -------
    problem : FitProblem (``problem`` itself, or its copy with the wider prior, built once
        per problem so that a later fit reuses its compiled programs)
    initial : (starts, losses) of the chosen problem's search (multi-start, and hops when
        both hopped), for :func:`find_map`
    record : dict or None (``None`` when the window is not longer than ``t_max_ms``):
        ``t_max_ms`` of both candidates, their best ``neg_log_joint`` and ``chosen``
        (``"spec"`` or ``"window"``); ``multi_start_neg_log_joint`` (before any hop) and
        ``hop_rounds``, the rounds each candidate ran before the choice (0: none)
    """
    spec = problem.spec
    window = float(problem.data.times[-1] - problem.data.times[0])
    if not spec.t_max_select or window <= spec.t_max_ms + 1.0:
        return problem, None, None

    def build_wide():  # one object per problem: its compiled programs are reused by later fits
        wide = dataclasses.replace(problem, spec=spec.replace(t_max_ms=window))
        if problem.pmj_times is not None:
            wide = dataclasses.replace(wide, pmj_times={**problem.pmj_times, "t_max_ms": window})
        return wide

    wide = _memo(problem, ("wide time prior", window), build_wide)
    out = {}
    smooth = {"spec": smooth_ms, "window": wide_search_smooth(smooth_ms)}
    for name, prob in (("spec", problem), ("window", wide)):
        # both searches run on the given problem's compiled programs, the bound a traced argument
        u, loss, *_ = find_map(problem, key, n_starts=n_starts, steps=steps, lr=lr, progress=progress,
                               search_rounds=0, smooth_ms=smooth[name], t_max_ms=prob.spec.t_max_ms)
        out[name] = (prob, (u, loss))
    first = {k: float(v[1][1][0]) for k, v in out.items()}
    hop_rounds = 0
    logs: dict[str, list] = {}
    if search_rounds > 0 and abs(first["spec"] - first["window"]) < TIME_PRIOR_CLOSE_NATS:
        for name, (prob, initial) in list(out.items()):
            logs[name] = []
            u, loss, *_ = find_map(problem, key, n_starts=n_starts, steps=steps, lr=lr, progress=progress,
                                   search_rounds=search_rounds, search_deadline=search_deadline,
                                   search_log=logs[name], smooth_ms=smooth[name], t_max_ms=prob.spec.t_max_ms,
                                   initial=initial)
            out[name] = (prob, (u, loss))
    best = {k: float(v[1][1][0]) for k, v in out.items()}
    chosen = "window" if best["window"] < best["spec"] else "spec"
    if logs:  # the rounds the chosen search ran (fewer than asked when the deadline came)
        hop_rounds = len(logs[chosen]) - 1
    record = {
        "t_max_ms": {"spec": float(spec.t_max_ms), "window": window},
        "neg_log_joint": best,
        "multi_start_neg_log_joint": first,
        "hop_rounds": hop_rounds,
        "chosen": chosen,
    }
    if search_log is not None and hop_rounds > 0:
        search_log.extend(logs[chosen])
    prob, initial = out[chosen]
    return prob, initial, record


def fit(
    problem: FitProblem,
    method: str = "nuts",
    *,
    chains: int = 4,
    num_warmup: int = 300,
    num_samples: int = 500,
    seed: int = 0,
    n_starts: int | None = None,
    map_steps: int = 400,
    map_lr: float = 0.75,
    svi_steps: int = 2000,
    svi_lr: float = 0.01,
    checkpoint_dir: str | Path | None = None,
    time_budget_s: float | None = None,
    chain_starts: str = "evidence",
    max_tree_depth: int = 8,
    chain_method: str = "auto",
    search_rounds: int | None = None,
    search_smooth_ms: float | None = None,
    progress: bool = True,
) -> FitResult:
    """Run MAP, SVI or NUTS on a :class:`FitProblem`.

    Parameters
    ----------
    problem : FitProblem
    method : {"nuts", "svi", "map"}
    chains, num_warmup, num_samples : int
        NUTS chains and iterations per chain (SVI: ``num_samples`` guide draws).
    seed : int
        Everything random derives from ``jax.random.key(seed)``.
    n_starts : int, optional
        MAP starts (default ``max(8, 2 * chains)``).
    checkpoint_dir : path, optional
        NUTS checkpoints (one file per chain); an existing one is resumed.
    time_budget_s : float, optional
        Wall-time budget for sampling; chains stop early (reported) when it is spent.
    chain_starts : {"evidence", "distinct"}
        Where NUTS chains start. ``"evidence"`` (default): the MAP optima get chains in
        proportion to their Laplace evidence (optima below 0.1 % get none), each start a
        draw from its optimum's Laplace approximation shrunk 4x. ``"distinct"``: one chain per
        optimum, best first, whatever its weight (shows how far apart the optimiser's
        basins are; R-hat then mostly measures that).
    max_tree_depth : int
        NUTS tree-depth cap: at most ``2**max_tree_depth - 1`` leapfrog steps per iteration.
    chain_method : {"auto", "sequential", "vectorized"}
        How NUTS chains share the device: in turn, chunk by chunk (``"sequential"``), or
        together in one ``vmap``-ed program (``"vectorized"``). ``"auto"``: vectorized on
        a GPU/TPU, sequential on a CPU (where one gradient already uses every core, and a
        vmapped iteration waits for the longest of the chains' trees).
    search_rounds : int, optional
        Basin-hopping rounds after the multi-start MAP (see :func:`find_map`). ``None``:
        :data:`SEARCH_ROUNDS` of the method (4 for ``svi``, 6 for ``nuts``, 0 for ``map``,
        the Geodesic-BP baseline as published).
    search_smooth_ms : float, optional
        Time smoothing (ms, Gaussian sd) of the ECG misfit at the start of the MAP search,
        falling to none (see :func:`find_map`; 0: none). ``None``: :data:`SEARCH_SMOOTH_MS`
        (0). A search under the ECG window's time prior (:func:`select_time_prior`) uses at
        least :data:`WIDE_SEARCH_SMOOTH_MS`. Only the search sees it: SVI, NUTS and every
        reported loss use the model as specified.

    Returns
    -------
    FitResult
    """
    if method not in ("nuts", "svi", "map"):
        raise CdtBayesError(f"--method {method}: must be nuts, svi or map")
    for opt, v in (("--chains", chains), ("--num-samples", num_samples)):
        if v < 1:
            raise CdtBayesError(f"{opt} {v}: must be >= 1")
    if num_warmup < 0:
        raise CdtBayesError(f"--num-warmup {num_warmup}: must be >= 0")
    if not 1 <= max_tree_depth <= 12:
        raise CdtBayesError(f"--max-tree-depth {max_tree_depth}: must be between 1 and 12")
    if chain_method not in ("auto", "sequential", "vectorized"):
        raise CdtBayesError(f"--chain-method {chain_method}: must be auto, sequential or vectorized")
    if chain_method == "auto":
        chain_method = "sequential" if jax.default_backend() == "cpu" else "vectorized"
    if chain_starts not in ("evidence", "distinct"):
        raise CdtBayesError(f"--chain-starts {chain_starts}: must be evidence or distinct")
    t0 = time.time()
    deadline = t0 + time_budget_s if time_budget_s else None
    key = jax.random.key(seed)
    k_map, k_run, k_post = jax.random.split(key, 3)
    n_starts = n_starts or max(8, 2 * chains)
    if search_rounds is None:
        search_rounds = SEARCH_ROUNDS[method]
    if search_rounds < 0:
        raise CdtBayesError(f"--search-rounds {search_rounds}: must be >= 0")
    if search_smooth_ms is None:
        search_smooth_ms = SEARCH_SMOOTH_MS
    if not (np.isfinite(search_smooth_ms) and 0 <= search_smooth_ms <= 50):
        raise CdtBayesError(f"--search-smooth-ms {search_smooth_ms}: must be between 0 and 50 ms")
    search_log: list[float] = []
    given = problem
    search_smooth_ms = float(search_smooth_ms)
    search_deadline = None if deadline is None else t0 + 0.25 * time_budget_s
    problem, initial, prior_choice = select_time_prior(
        problem, k_map, n_starts=n_starts, steps=map_steps, lr=map_lr, smooth_ms=search_smooth_ms,
        progress=progress, search_rounds=search_rounds, search_deadline=search_deadline, search_log=search_log,
    )
    if problem is not given:  # the window's time prior won: its search goes on as it started
        search_smooth_ms = wide_search_smooth(search_smooth_ms)
    hopped = prior_choice is not None and prior_choice["hop_rounds"] > 0  # a close call: both searches hopped
    u, losses, potential_fn, postprocess_fn, _ = find_map(
        problem, k_map, n_starts=n_starts, steps=map_steps, lr=map_lr, progress=progress,
        search_rounds=0 if hopped else search_rounds,
        search_deadline=search_deadline,
        search_log=search_log,
        smooth_ms=search_smooth_ms,
        initial=initial,
    )
    stage = {"search": time.time() - t0}
    notes: list[str] = []
    if prior_choice is not None:
        tm, nl = prior_choice["t_max_ms"], prior_choice["neg_log_joint"]
        gap = abs(nl["spec"] - nl["window"])
        if prior_choice["chosen"] == "window":
            notes.append(
                f"PMJ initiation times were given the prior Uniform(0, {tm['window']:.0f}) ms, the ECG window's "
                f"length, instead of Uniform(0, {tm['spec']:.0f}) ms: its {'search' if hopped else 'multi-start MAP'} "
                f"reached a log joint {gap:.0f} nats higher. PMJs the ECG does not need can then start after the "
                "wave reaches them, anywhere (few activation sites, or slow conduction); [pmj] t_max_select = false "
                "keeps the spec's"
            )
        if prior_choice["hop_rounds"] > 0:
            ms = prior_choice["multi_start_neg_log_joint"]
            notes.append(
                f"the PMJ time prior was a close call after the multi-start MAP (log joints {-ms['spec']:.0f} under "
                f"Uniform(0, {tm['spec']:.0f}) ms, {-ms['window']:.0f} under Uniform(0, {tm['window']:.0f}) ms), so "
                f"both searches ran the basin hops before the choice ({-nl['spec']:.0f} and {-nl['window']:.0f} after)"
            )
    rounds_run = max(len(search_log) - 1, 0)
    if search_rounds > 0:
        notes.append(
            f"basin hopping: {rounds_run} of {search_rounds} rounds after the multi-start MAP raised the best "
            f"log joint by {search_log[0] - search_log[-1]:.1f} nats"
            + ("" if rounds_run == search_rounds else " (stopped at a quarter of the time budget)")
        )
    optima: list[dict] = []
    post = _memo(postprocess_fn, ("vmap",), lambda: jax.jit(jax.vmap(postprocess_fn)))
    stats = None
    throughput = None
    rms_to_best = optima_distances(problem, {k: v for k, v in post(u).items() if k in LATENT_SITES}, losses)
    near = near_optima_note(losses, rms_to_best, method)
    if near:
        notes.append(near)
    if method in ("map", "svi"):
        optima = [{"neg_log_joint": float(losses[i]), "rms_to_best_ms": _finite_or_none(rms_to_best[i])}
                  for i in range(len(losses))]
    if method == "map":
        best = jax.tree.map(lambda x: x[:1], u)
        draws = jax.tree.map(lambda x: np.asarray(x)[None], post(best))
    elif method == "svi":
        best = jax.tree.map(lambda x: x[0], u)
        rank = min(20, 4 * problem.spec.n_pmj)
        flat_draws, losses_svi = svi_lowrank(
            potential_fn, best, k_run, svi_steps, rank=rank, lr=svi_lr, num_samples=num_samples,
            key_post=k_post, progress=progress,
        )
        unravel = ravel_pytree(best)[1]
        smp = post(jax.vmap(unravel)(flat_draws))
        draws = {k: np.asarray(v)[None] for k, v in smp.items() if k in LATENT_SITES}
        stats = {"elbo_loss": np.asarray(losses_svi)}
        stage["svi"] = time.time() - t0 - stage["search"]
    else:
        t_lap = time.time()
        log_ev, masses = laplace_optima(potential_fn, u, losses)
        stage["laplace"] = time.time() - t_lap
        t_nuts = time.time()
        weights = evidence_weights(log_ev)
        if chain_starts == "evidence":
            idx = allocate_chains(weights, chains)
        else:  # one chain per optimum, best first (cycled when there are fewer optima)
            finite = [i for i in range(len(losses)) if np.isfinite(losses[i])]
            if not finite:
                raise CdtBayesError("MAP: every start failed (non-finite log density); check the ECG and mesh")
            idx = [finite[c % len(finite)] for c in range(chains)]
        keys = jax.random.split(k_run, chains)
        ckdir = Path(checkpoint_dir) if checkpoint_dir else None
        if ckdir is not None:
            ckdir.mkdir(parents=True, exist_ok=True)
        k_disp = jax.random.split(jax.random.fold_in(k_run, 7), chains)
        pot_jit = _memo(potential_fn, ("jit",), lambda: jax.jit(potential_fn))
        starts = [
            _dispersed_start(pot_jit, jax.tree.map(lambda x, i=i: x[i], u), masses[i], k_disp[c], float(losses[i]))
            for c, i in enumerate(idx)
        ]
        inv_masses = [masses[i] for i in idx]
        optima = [
            {
                "neg_log_joint": float(losses[i]),
                "log_evidence_laplace": float(log_ev[i]),
                "weight": float(weights[i]),
                "chains": int(idx.count(i)),
                "rms_to_best_ms": _finite_or_none(rms_to_best[i]),
            }
            for i in range(len(losses))
        ]
        used = sorted(set(idx))
        if chain_starts == "evidence":
            gap = [
                float(log_ev[used[0]] - log_ev[i])
                for i in range(len(losses))
                if i not in used and np.isfinite(log_ev[i])
            ]
            notes.append(
                f"MAP found {len(losses)} optima; chains start in {len(used)} of them in proportion to their "
                f"Laplace evidence (weights {', '.join(f'{weights[i]:.3g}' for i in used)}), dispersed by draws "
                "from each optimum's Laplace approximation (sd / 4)"
                + (f"; the others hold a negligible share (log evidence at least {min(gap):.0f} below)" if gap else "")
            )
        all_z, all_stats, truncated, plan_note, throughput = _nuts_chains(
            potential_fn, starts, inv_masses, keys, num_warmup, num_samples, ckdir, deadline, progress,
            max_tree_depth=max_tree_depth,
            chain_method=chain_method,
        )
        stage["sampling"] = time.time() - t_nuts
        if plan_note:
            notes.append(plan_note)
        if truncated:
            notes.append("time budget reached")
        chain_z = [z for z in all_z if z is not None]
        chain_optimum = [int(i) for z, i in zip(all_z, idx) if z is not None]
        chain_stats = [st for z, st in zip(all_z, all_stats) if z is not None]
        if len(chain_z) < chains and chain_z:
            notes.append(f"only {len(chain_z)} of {chains} chains reached the sampling phase")
        if not chain_z:
            raise CdtBayesError("--time-budget: spent before any draw was taken; raise the budget")
        n = min(len(next(iter(z.values()))) for z in chain_z)
        if n < num_samples:
            notes.append(f"only {n} of {num_samples} draws per chain were taken")
        zc = {k: np.stack([z[k][:n] for z in chain_z]) for k in chain_z[0]}
        flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), zc)
        cons = post(flat)
        draws = {k: np.asarray(v).reshape((len(chain_z), n) + v.shape[1:]) for k, v in cons.items()}
        stats = {k: np.stack([s[k][:n] for s in chain_stats]) for k in chain_stats[0]}
    draws = {k: v for k, v in draws.items() if k in LATENT_SITES}
    return FitResult(
        method,
        draws,
        stats,
        time.time() - t0,
        notes,
        losses,
        optima,
        chain_method if method == "nuts" else None,
        chain_optimum if method == "nuts" else None,
        rounds_run,
        float(search_smooth_ms),
        {k: round(float(v), 3) for k, v in stage.items()},
        throughput,
        max_tree_depth if method == "nuts" else None,
        None if problem is given else problem,
        prior_choice,
    )


@functools.partial(jax.jit, static_argnames=("kernel_mm", "tau_ms", "cone_ms", "interpolation"))
def _activation_batch(z, t, s, data: ModelData, kernel_mm: float, tau_ms, cone_ms: float, interpolation: str):
    """Activation maps of a batch of draws (``data`` is an argument: one compilation per shape)."""
    return jax.vmap(
        lambda z, t, s: dictionary_activation(z, t, s, data, kernel_mm, tau_ms, cone_ms, interpolation=interpolation)
    )(z, t, s)


@jax.jit
def _ecg_batch(act, gain, shift, data: ModelData):
    """Noise-free model ECGs of a batch of activation maps."""
    return jax.vmap(lambda a, g, s: model_ecg(a, g, s, data))(act, gain, shift)


def _batched(f, arrays, out_shape, batch: int) -> np.ndarray:
    """``f`` over leading-axis batches of ``arrays``, the last batch padded to ``batch`` (one shape)."""
    n = arrays[0].shape[0]
    out = np.empty((n,) + out_shape, np.float32)
    for i in range(0, n, batch):
        chunk = [a[i : i + batch] for a in arrays]
        m = chunk[0].shape[0]
        if m < batch and n > batch:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch - m, 0)]) for c in chunk]
        out[i : i + m] = np.asarray(f(*chunk))[:m]
    return out


def _flat_pmj_draws(draws: dict):
    """The draws' PMJs flattened over chains: ``(c, d, z, t, s)``.

    ``c`` chains, ``d`` draws per chain; positions ``z`` ``(c d, K, 3)`` mm, times ``t``
    ``(c d, K)`` ms and velocity factors ``s`` ``(c d,)`` (1 when not inferred).
    """
    z = np.asarray(draws["pmj_xyz_mm"])
    c, d = z.shape[:2]
    t = np.asarray(draws["pmj_t_ms"]).reshape(c * d, -1)
    s = np.asarray(draws["cv_scale"]).reshape(-1) if "cv_scale" in draws else np.ones(c * d, z.dtype)
    return c, d, z.reshape(c * d, -1, 3), t, s


#: Optima whose negative log joint is within this many nats of the best count as rivals of
#: it (:func:`near_optima_note`).
NEAR_OPTIMUM_NATS = 10.0

#: ... when their activation maps differ from the best's by more than this RMS (ms), the
#: threshold that also separates the posterior's activation modes (:func:`_summaries.activation_modes`).
NEAR_OPTIMUM_RMS_MS = MODE_SEPARATION_MS


def _finite_or_none(x) -> float | None:
    """``float(x)``, or ``None`` (JSON ``null``) when it is NaN or infinite."""
    return float(x) if np.isfinite(x) else None


def optima_distances(problem: FitProblem, optima: dict, losses: np.ndarray) -> np.ndarray:
    """RMS difference (ms, over nodes) between each MAP optimum's activation map and the best's.

    ``optima``: constrained latents with leading dim ``n_opt`` (best first); ``losses``: their
    negative log joint (``inf``: a failed start, given NaN). Returns ``(n_opt,)``.
    """
    act = posterior_activation(problem, {k: np.asarray(v)[None] for k, v in optima.items()})[0]
    rms = np.sqrt(np.mean((act - act[:1]) ** 2, axis=1))
    return np.where(np.isfinite(np.asarray(losses)), rms, np.nan)


def near_optima_note(losses: np.ndarray, rms_to_best: np.ndarray, method: str) -> str | None:
    """A note when the search found rivals of the best optimum: nearly as probable, another map.

    A rival is within :data:`NEAR_OPTIMUM_NATS` of the best's negative log joint and its
    activation map differs from the best's by more than :data:`NEAR_OPTIMUM_RMS_MS` RMS. The ECG
    then barely tells the maps apart, and a method that describes one basin (MAP, SVI) or only
    the basins its chains start in (NUTS) understates the uncertainty. ``None`` without rivals.
    """
    losses = np.asarray(losses, np.float64)
    rms = np.asarray(rms_to_best, np.float64)
    rivals = [i for i in range(1, losses.size)
              if np.isfinite(losses[i]) and losses[i] - losses[0] <= NEAR_OPTIMUM_NATS
              and np.isfinite(rms[i]) and rms[i] > NEAR_OPTIMUM_RMS_MS]
    if not rivals:
        return None
    gaps = ", ".join(f"{losses[i] - losses[0]:.1f}" for i in rivals)
    what = {
        "map": "a point estimate shows one of them only; --method nuts --chain-starts distinct samples several",
        "svi": "SVI describes the best one's basin only, so its intervals leave the others out; "
        "--method nuts --chain-starts distinct samples several",
        "nuts": "NUTS chains sample only the basins they start in (see the weights and chains in map_optima); "
        "--chain-starts distinct puts one chain in each of the best optima",
    }.get(method, "")
    lo, hi = min(rms[i] for i in rivals), max(rms[i] for i in rivals)
    return (
        f"the MAP search found {len(rivals)} other optim{'um' if len(rivals) == 1 else 'a'} within "
        f"{NEAR_OPTIMUM_NATS:.0f} nats of the best (log joint {gaps} below it) whose activation maps differ "
        f"from the best's by {lo:.0f}-{hi:.0f} ms RMS: the ECG barely tells these maps apart; " + what
    )


def posterior_activation(problem: FitProblem, draws: dict, exact_min: bool = False, batch: int = 64) -> np.ndarray:
    """Activation maps ``(chain, draw, n_nodes)`` ms for every draw (chunked vmap)."""
    spec, data = problem.spec, problem.data
    c, d, z, t, s = _flat_pmj_draws(draws)
    tau = None if exact_min else float(spec.softmin_tau_ms)
    cone = 0.0 if exact_min else float(spec.cone_smoothing_ms)

    def f(z, t, s):
        return _activation_batch(z, t, s, data, float(spec.kernel_mm), tau, cone, spec.interpolation)

    out = _batched(f, [z, t, s], (data.dist.shape[1],), batch)
    return out.reshape(c, d, -1)


#: Posterior draws re-solved by the full eikonal solver to measure the fast path's error.
FORWARD_ERROR_DRAWS = 24


def forward_error(problem: FitProblem, draws: dict, n_draws: int = FORWARD_ERROR_DRAWS, seed: int = 0,
                  progress: bool = False) -> dict:
    """The fast path's activation error against the full eikonal solver, per output node.

    The posterior's activation maps come from the fast path (the distance dictionary with
    a soft minimum, on the inference mesh), which is not exact: at the benchmark's true
    PMJs it is 1.2 ms RMSE off the full solver. When the ECG was made by an exact solver,
    that error is model error that no posterior draw can absorb, and intervals that leave
    it out cover the true activation too rarely. This re-solves ``n_draws`` draws (evenly
    thinned over all chains, seeded) with the full anisotropic eikonal solver on the
    user's mesh (:attr:`FitProblem.output_mesh`, same PMJs, velocities and velocity
    factor) and compares them with the fast path's maps at the same nodes.

    Parameters
    ----------
    problem : FitProblem
    draws : dict of constrained draws ``(chain, draw, ...)`` (``pmj_xyz_mm``, ``pmj_t_ms``,
        optionally ``cv_scale``)
    n_draws : int
        Draws to re-solve (fewer if there are fewer draws).
    seed : int
        Picks the draws (a random offset of the even thinning).

    Returns
    -------
    dict
        ``rms_ms`` ``(n_out_nodes,)``: root mean square over the draws of full − fast, ms;
        ``bias_ms`` ``(n_out_nodes,)``: its mean, ms; ``overall_rms_ms``: the RMS over nodes
        and draws, ms; ``n_draws``; ``seconds``.
    """
    from ._eikonal import activation_times, eikonal_geometry

    t0 = time.time()
    c, d, z, t, s = _flat_pmj_draws(draws)
    n = max(1, min(int(n_draws), c * d))
    off = int(np.random.default_rng(seed).integers(0, max(1, (c * d) // n)))
    idx = np.unique(np.minimum(off + np.floor(np.arange(n) * (c * d) / n).astype(int), c * d - 1))
    sub = {"pmj_xyz_mm": z[idx][None], "pmj_t_ms": t[idx][None], "cv_scale": s[idx][None]}
    fast = problem.to_output_nodes(posterior_activation(problem, sub)[0]).astype(np.float64)
    mesh = problem.output_mesh
    geom = _memo(problem, ("full_eikonal_geometry",), lambda: eikonal_geometry(mesh, np.float32))
    solve = _memo(
        problem,
        ("full_eikonal_solve",),
        lambda: jax.jit(lambda z, t, s: activation_times(geom, z, t, problem.cv_fiber, problem.cv_cross, s)),
    )
    full = np.empty_like(fast)
    with progress_bar(total=len(idx), desc="forward error (full eikonal)", disable=not progress) as bar:
        for j, i in enumerate(idx):
            full[j] = np.asarray(solve(jnp.asarray(z[i], jnp.float32), jnp.asarray(t[i], jnp.float32),
                                       jnp.float32(s[i])))
            bar.update(1)
    diff = full - fast
    return {
        "rms_ms": np.sqrt(np.mean(diff**2, axis=0)),
        "overall_rms_ms": float(np.sqrt(np.mean(diff**2))),
        "bias_ms": diff.mean(axis=0),
        "n_draws": int(len(idx)),
        "seconds": time.time() - t0,
    }


@functools.partial(jax.jit, static_argnames=("kernel_mm", "cone_ms", "interpolation"))
def _owner_batch(z, t, s, data: ModelData, kernel_mm: float, cone_ms: float, interpolation: str):
    """Index of the PMJ whose wave reaches each node first, for a batch of draws ``(batch, n_nodes)``."""
    return jax.vmap(
        lambda z, t, s: jnp.argmin(pmj_arrival(z, t, s, data, kernel_mm, cone_ms, interpolation=interpolation), 0)
    )(z, t, s)


def active_pmjs(problem: FitProblem, draws: dict, max_draws: int = 200, seed: int = 0) -> np.ndarray:
    """PMJs that activate at least one node, per draw: ``(n,)`` counts over ≤ ``max_draws`` draws.

    A PMJ whose wave arrives everywhere after another's (its initiation time later than the
    activation at its own site) shapes nothing: it is *dormant*. The number of PMJs that are
    the earliest source at some node (exact minimum) says how many the data use of the
    model's ``n_pmj``; it does not depend on the PMJs' order, so it is a valid posterior
    summary under label switching. Draws are thinned at random (``seed``) to ``max_draws``.
    """
    spec, data = problem.spec, problem.data
    c, d, z, t, s = _flat_pmj_draws(draws)
    if c * d > max_draws:
        pick = np.sort(np.random.default_rng(seed).choice(c * d, max_draws, replace=False))
        z, t, s = z[pick], t[pick], s[pick]

    def f(z, t, s):
        return _owner_batch(z, t, s, data, float(spec.kernel_mm), float(spec.cone_smoothing_ms), spec.interpolation)

    owner = _batched(f, [z, t, s], (data.dist.shape[1],), 16).astype(np.int64)
    k = z.shape[1]
    return np.array([np.count_nonzero(np.bincount(o, minlength=k)) for o in owner])


def pointwise_log_likelihood(problem: FitProblem, draws: dict, ecg_model: np.ndarray) -> np.ndarray:
    """Log-likelihood of each ECG sample under each draw: ``(chain, draw, n_leads * n_times)``.

    The observations of leave-one-out scores and stacking
    (:func:`cdt_bayes._summaries.stacking_weights`). ``ecg_model`` is the noise-free model
    ECG of each draw as :func:`posterior_ecg` returns it: with a baseline term it carries the
    draw's baseline, so each sample's density is conditional on it. Normal and Student-t
    noise are independent across samples; with AR(1) noise each sample is scored given the
    one before it (the innovations form), so the terms still sum to the model's likelihood.

    Parameters
    ----------
    problem : FitProblem (its ``obs`` (n_leads, n_times) mV and spec's likelihood)
    draws : dict of constrained draws, ``sigma_mV`` (chain, draw[, n_leads]) mV and, for
        AR(1) noise, ``noise_rho`` (chain, draw)
    ecg_model : (chain, draw, n_leads, n_times) mV

    Returns
    -------
    (chain, draw, n_leads * n_times) nats
    """
    spec = problem.spec
    y = np.asarray(problem.obs, np.float64)
    mu = np.asarray(ecg_model, np.float64)
    c, d, n_lead, _ = mu.shape
    s = np.broadcast_to(np.asarray(draws["sigma_mV"], np.float64).reshape(c, d, -1), (c, d, n_lead))[..., None]
    e = y - mu
    if spec.likelihood == "student_t":
        from scipy.stats import t as student_t

        ll = student_t.logpdf(e / s, spec.student_nu) - np.log(s)
    elif spec.likelihood == "ar1":
        rho = np.asarray(draws["noise_rho"], np.float64).reshape(c, d, 1, 1)
        innov = np.concatenate([e[..., :1], e[..., 1:] - rho * e[..., :-1]], axis=-1)
        var = np.concatenate(
            [np.broadcast_to(s**2, e[..., :1].shape), np.broadcast_to(s**2 * (1.0 - rho**2), e[..., 1:].shape)],
            axis=-1,
        )
        ll = -0.5 * innov**2 / var - 0.5 * np.log(2 * np.pi * var)
    else:
        ll = -0.5 * (e / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
    return ll.reshape(c, d, -1)


def posterior_ecg(
    problem: FitProblem,
    draws: dict,
    activation: np.ndarray,
    key,
    batch: int = 64,
    *,
    point: bool = False,
    return_baseline: bool = False,
):
    """Noise-free model ECGs and posterior-predictive ECGs, each ``(chain, draw, lead, time)``.

    With a baseline term in the spec (``[ecg] baseline``), the model ECG of each draw
    includes a per-lead baseline drawn from its conditional posterior given that draw
    (:func:`cdt_bayes._model.baseline_conditional`): the likelihood integrates the baseline
    out, so this is its exact posterior, and the bands sit on the observed levels.
    ``point=True`` (a MAP estimate) takes the conditional mean instead of a draw.
    ``return_baseline=True`` also returns the coefficients ``(chain, draw, lead, p)`` mV
    (``None`` without a baseline term).
    """
    data, spec = problem.data, problem.spec
    c, d = activation.shape[:2]
    act = activation.reshape(c * d, -1)
    g = np.asarray(draws["gain"]).reshape(-1)
    sh = np.asarray(draws["shift_ms"]).reshape(-1) if "shift_ms" in draws else np.zeros(c * d)
    sig = np.asarray(draws["sigma_mV"]).reshape(c * d, -1)  # (n, 1), or (n, n_leads): [noise] per_lead
    rho = np.asarray(draws["noise_rho"]).reshape(-1) if spec.likelihood == "ar1" else np.zeros(c * d)
    mu = _batched(lambda a, g, s: _ecg_batch(a, g, s, data), [act, g, sh], tuple(problem.obs.shape), batch)
    k_noise, k_base = jax.random.split(key)
    coef = None
    if spec.baseline != "none":
        coef, level = _baseline_draws(k_base, problem, mu, sig, rho, point)
        mu = mu + level
        coef = coef.reshape((c, d) + coef.shape[1:])
    noise = np.asarray(jax.random.normal(k_noise, mu.shape))
    if spec.likelihood == "student_t":
        noise = np.asarray(jax.random.t(k_noise, spec.student_nu, mu.shape))
    elif spec.likelihood == "ar1":
        noise = np.asarray(ar1_noise(k_noise, mu.shape, jnp.asarray(rho)))
    pp = mu + sig[:, :, None] * noise
    out = mu.reshape((c, d) + mu.shape[1:]), pp.reshape((c, d) + pp.shape[1:])
    return (*out, coef) if return_baseline else out


@functools.partial(jax.jit, static_argnames=("point",))
def _baseline_batch(keys, mu, sigma, rho, obs, basis, tau, point: bool):
    """Baseline coefficients and levels of a batch of draws (arrays as arguments: one compilation per shape)."""

    def one(k, m, s, r):
        mean, chol = baseline_conditional(obs - m, s, tau, basis, r)
        z = jax.random.normal(k, mean.shape, mean.dtype)
        b = mean if point else mean + jnp.einsum("lpq,lq->lp", chol, z)
        return b, b @ basis.T

    return jax.vmap(one)(keys, mu, sigma, rho)


def _baseline_draws(key, problem: FitProblem, mu: np.ndarray, sigma: np.ndarray, rho: np.ndarray, point: bool):
    """Baseline coefficients ``(n, lead, p)`` and levels ``(n, lead, time)`` mV given ``obs − mu``."""
    basis = baseline_basis(problem.data.times, problem.spec.baseline)
    tau = baseline_sd(problem.data, problem.spec)
    keys = jax.random.split(key, mu.shape[0])
    b, level = _baseline_batch(
        keys, jnp.asarray(mu), jnp.asarray(sigma, mu.dtype), jnp.asarray(rho, mu.dtype),
        jnp.asarray(problem.obs), basis, tau, point,
    )
    return np.asarray(b), np.asarray(level)


def fit_command(args) -> int:
    """``cdt-bayes fit``: read inputs, fit, write posterior.nc and the contract outputs."""
    from ._outputs import run_fit_cli

    return run_fit_cli(args)


def save_json(path: Path, obj) -> None:
    """Write JSON atomically."""
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)
