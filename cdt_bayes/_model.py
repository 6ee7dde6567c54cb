"""The Bayesian model: PMJs in the subendocardial layer → activation → ECG (NumPyro).

Fast path ("distance dictionary", used inside every log-density gradient)
-------------------------------------------------------------------------
With the anisotropy ratio fixed, the activation from K PMJs is

    T(x) = softmin_k [ t_k + d(p_k, x) / s ]

where ``d(p, x)`` is the anisotropic geodesic travel time (ms at the base velocities
``cv_fiber, cv_cross``) and ``s`` a global velocity factor (exact: scaling both
velocities by ``s`` divides every travel time by ``s``). ``d`` is precomputed with the
tetrahedral eikonal solver (:mod:`cdt_bayes._eikonal`) from a set of *sites* — a
~``site_spacing_mm`` subsample of the admissible nodes — to every node, and evaluated at
a continuous PMJ position ``z`` by Gaussian-kernel interpolation over its 32 nearest sites,
``w = softmax(−|z − x_s|² / 2h²)``, in *factored* form:

    d(z, x) = ‖x − z‖_{M(z)} + Σ_s w_s(z) R[s, x],   R[s, x] = D[s, x] − ‖x − x_s‖_{M_s}

The straight-line term (metric ``M = D⁻¹`` of the sites, kernel-averaged) carries the
cone singularity at the PMJ exactly; only the smooth residual ``R`` (detours around the
cavities, fibre rotation) is interpolated — by default with local-linear weights
(:func:`local_linear_weights`: ``w`` corrected so that a residual varying linearly with the
site position is reproduced exactly; on the default heart this cut the activation error at
the true PMJs from 2.0 to 1.2 ms RMS), or with ``w`` itself (``interpolation =
"local_constant"``). This keeps the activation near each PMJ exact
on a coarse site set (~6 mm), smooth everywhere (sites beyond the 32 nearest weigh ~1e-5,
so the changing neighbour set leaves no visible kink). ``softmin`` with temperature ``τ`` is within ``τ log K`` of the
exact minimum. The full eikonal (exact min, inferred velocity fields) is kept for
precomputation and verification (``tests/test_model.py`` checks the two agree).

Prior on PMJ positions
----------------------
``z_k`` has the density of a Gaussian mixture centred on the admissible nodes (sd
``prior_kernel_mm``): a smooth
version of "uniform over the admissible layer" whose gradient never vanishes away from
it — what NUTS needs — and which is sampled exactly (prior predictive, SBC). The
constraint is therefore soft: PMJs sit within ~``layer_depth_mm + prior_kernel_mm`` of
the endocardium. With ``constrain_to_layer = false`` every node is admissible. With
``split_ventricles = true`` (the ``split_ventricles`` spec) each PMJ has the mixture over
one ventricle's layer only (:func:`pmj_groups`).

Sample sites: ``pmj_xyz_mm (n_pmj, 3)``, ``pmj_t_ms (n_pmj,)``, ``cv_scale`` (when
velocities are inferred), ``gain``, ``shift_ms`` (only when ``shift_sd_ms > 0``: a common
shift of all PMJ times is otherwise exactly confounded with it, a ridge that slows NUTS),
``sigma_mV`` (``()``, or ``(n_leads,)`` with ``[noise] per_lead = true``: one noise sd per
lead, for ECGs whose leads differ in noise or in how well the model can fit them),
``noise_rho`` (only with ``likelihood = "ar1"``: lag-one correlation of the
residual, which model error makes smooth in time) and the observed ``ecg (n_leads, n_times)``.
Deterministic sites: ``activation_ms (n_nodes,)`` (the activation map, soft minimum) and
``ecg_model_mV (n_leads, n_times)`` (the noise-free model ECG, gain and shift applied), so
``Predictive(cdt_model, posterior_samples)`` returns both for any draws. Inference keeps
them out of the stored draws (``n_nodes`` floats per draw) and recomputes them in batches
(:func:`cdt_bayes._inference.posterior_activation`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import math
import tomllib
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ._errors import SpecError
from ._geometry import Mesh, admissible_sites, endo_distance_by_side

__all__ = [
    "ModelSpec",
    "ModelData",
    "LayerPrior",
    "load_spec",
    "list_specs",
    "select_sites",
    "admissible_nodes",
    "pmj_groups",
    "distance_dictionary",
    "dictionary_activation",
    "time_smoother",
    "node_metric",
    "kernel_weights",
    "local_linear_weights",
    "KERNEL_NEIGHBOURS",
    "straight_travel_time",
    "cdt_model",
    "AR1Normal",
    "ar1_noise",
    "BaselineNormal",
    "baseline_basis",
    "baseline_conditional",
    "BASELINE_TERMS",
    "baseline_sd",
]


# --------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------
_SCHEMA: dict[str, dict[str, type | tuple]] = {
    "model": {"name": str, "description": str, "n_pmj": int, "likelihood": str, "student_nu": float},
    "pmj": {
        "constrain_to_layer": bool,
        "layer_depth_mm": float,
        "site_spacing_mm": float,
        "kernel_mm": float,
        "prior_kernel_mm": float,
        "t_max_ms": float,
        "t_max_select": bool,
        "interpolation": str,
        "split_ventricles": bool,
        "n_pmj_lv": int,
    },
    "conduction": {"cv_fiber": float, "cv_cross": float, "infer_scale": bool, "scale_log_sd": float},
    "ecg": {
        "leads": (str, list),
        "dt_ms": float,
        "softmin_tau_ms": float,
        "cone_smoothing_ms": float,
        "baseline": str,
        "baseline_rel_sd": float,
    },
    "noise": {"ar1_rho_max": float, "per_lead": bool},
    "priors": {"gain_log_sd": float, "shift_sd_ms": float, "noise_rel_scale": float},
}


#: TOML ``(section, key)`` → :class:`ModelSpec` field, where the names differ.
_FIELD = {("noise", "per_lead"): "noise_per_lead"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated model specification (see ``models/default.toml`` for meanings/units)."""

    name: str
    description: str
    n_pmj: int
    likelihood: str
    student_nu: float
    constrain_to_layer: bool
    layer_depth_mm: float
    site_spacing_mm: float
    kernel_mm: float
    prior_kernel_mm: float
    t_max_ms: float
    cv_fiber: float
    cv_cross: float
    infer_scale: bool
    scale_log_sd: float
    leads: tuple[str, ...] | None
    dt_ms: float
    softmin_tau_ms: float
    cone_smoothing_ms: float
    gain_log_sd: float
    shift_sd_ms: float
    noise_rel_scale: float
    ar1_rho_max: float = 0.98
    noise_per_lead: bool = False
    interpolation: str = "local_linear"
    split_ventricles: bool = False
    n_pmj_lv: int = -1
    baseline: str = "none"
    baseline_rel_sd: float = 0.2
    t_max_select: bool = False
    source: str = ""

    def replace(self, **kw) -> ModelSpec:
        """Copy with fields replaced (validated)."""
        return _validate(dataclasses.replace(self, **kw), self.source or "spec")

    def to_dict(self) -> dict:
        """Plain dict (for summary.json / NetCDF attributes)."""
        return dataclasses.asdict(self)


def list_specs() -> list[str]:
    """Names of the specs shipped in ``models/``."""
    return sorted(
        p.name[:-5] for p in importlib.resources.files("cdt_bayes.models").iterdir() if p.name.endswith(".toml")
    )


def _read_toml(name_or_path: str | Path, seen: tuple = ()) -> tuple[dict, str]:
    p = Path(str(name_or_path))
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SpecError(f"{p}: model spec not found")
        text, src = p.read_text(), str(p)
    else:
        res = importlib.resources.files("cdt_bayes.models").joinpath(f"{name_or_path}.toml")
        if not res.is_file():
            raise SpecError(f"--spec {name_or_path}: unknown model spec (shipped: {', '.join(list_specs())})")
        text, src = res.read_text(), f"models/{name_or_path}.toml"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{src}: not valid TOML ({exc})") from None
    base = raw.pop("extends", None)
    if base is not None:
        if base in seen:
            raise SpecError(f"{src}: circular 'extends = {base!r}'")
        parent, _ = _read_toml(base, (*seen, base))
        for sec, vals in raw.items():
            if isinstance(vals, dict) and isinstance(parent.get(sec), dict):
                parent[sec] = {**parent[sec], **vals}
            else:
                parent[sec] = vals
        raw = parent
    return raw, src


def load_spec(name_or_path: str | Path = "default", **overrides) -> ModelSpec:
    """Load and validate a model spec.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped spec name (``default``, ``unconstrained``, ``fixed_cv``, ``student_t``)
        or a path to a TOML file (which may ``extends = "default"``).
    **overrides
        Field values that replace the file's (e.g. ``n_pmj=8``).

    Raises
    ------
    SpecError
        Unknown section/key, wrong type or out-of-range value, naming the file and key.
    """
    raw, src = _read_toml(name_or_path)
    flat: dict = {}
    for sec, vals in raw.items():
        if sec not in _SCHEMA:
            raise SpecError(f"{src}: unknown section [{sec}] (allowed: {', '.join(_SCHEMA)})")
        if not isinstance(vals, dict):
            raise SpecError(f"{src}: [{sec}] must be a table")
        for key, val in vals.items():
            typ = _SCHEMA[sec].get(key)
            if typ is None:
                raise SpecError(f"{src}: unknown key '{key}' in [{sec}] (allowed: {', '.join(_SCHEMA[sec])})")
            if typ is float and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                raise SpecError(f"{src}: [{sec}] {key} = {val!r} has the wrong type")
            flat[_FIELD.get((sec, key), key)] = val
    # keys with a default (added after specs were shipped)
    optional = {
        "source", "ar1_rho_max", "noise_per_lead", "interpolation", "split_ventricles", "n_pmj_lv", "baseline",
        "baseline_rel_sd",
    }
    missing = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in flat and f.name not in optional]
    missing = [m for m in missing if m not in overrides]
    if missing:
        raise SpecError(f"{src}: missing keys {', '.join(missing)}")
    flat.update({k: v for k, v in overrides.items() if v is not None})
    leads = flat["leads"]
    flat["leads"] = None if leads == "all" else tuple(leads if isinstance(leads, list) else [leads])
    return _validate(ModelSpec(**flat, source=src), src)


def _validate(spec: ModelSpec, src: str) -> ModelSpec:
    def bad(key, why):
        raise SpecError(f"{src}: {key} = {getattr(spec, key)!r}: {why}")

    if spec.n_pmj < 1:
        bad("n_pmj", "must be >= 1")
    if spec.n_pmj_lv < -1 or spec.n_pmj_lv > spec.n_pmj:
        bad("n_pmj_lv", f"must be -1 (by layer size) or 0..n_pmj ({spec.n_pmj})")
    if spec.likelihood not in ("normal", "student_t", "ar1"):
        bad("likelihood", "must be 'normal', 'student_t' or 'ar1'")
    if spec.interpolation not in ("local_linear", "local_constant"):
        bad("interpolation", "must be 'local_linear' or 'local_constant'")
    if spec.baseline not in ("auto", *BASELINE_TERMS):
        bad("baseline", f"must be one of {', '.join(repr(b) for b in ('auto', *BASELINE_TERMS))}")
    if spec.baseline not in ("none", "auto") and spec.likelihood == "student_t":
        bad("baseline", "a baseline term needs likelihood 'normal' or 'ar1' (it is integrated out in closed form)")
    if not (0.0 < spec.ar1_rho_max < 1.0):
        bad("ar1_rho_max", "must be in (0, 1)")
    for key in (
        "student_nu",
        "layer_depth_mm",
        "site_spacing_mm",
        "kernel_mm",
        "prior_kernel_mm",
        "t_max_ms",
        "cv_fiber",
        "cv_cross",
        "scale_log_sd",
        "dt_ms",
        "softmin_tau_ms",
        "gain_log_sd",
        "noise_rel_scale",
        "baseline_rel_sd",
    ):
        v = getattr(spec, key)
        if not (math.isfinite(v) and v > 0):
            bad(key, "must be positive and finite")
    for key in ("cone_smoothing_ms", "shift_sd_ms"):
        v = getattr(spec, key)
        if not (math.isfinite(v) and v >= 0):
            bad(key, "must be >= 0 and finite")
    if spec.dt_ms not in (1.0, 2.0, 3.0, 4.0):
        bad("dt_ms", "must be 1, 2, 3 or 4 ms")
    return spec


# --------------------------------------------------------------------------------------
# Distance dictionary
# --------------------------------------------------------------------------------------
def admissible_nodes(mesh: Mesh, spec: ModelSpec, name: str = "mesh") -> np.ndarray:
    """Node indices where a PMJ may sit: the subendocardial layer, or all nodes."""
    if spec.constrain_to_layer:
        return admissible_sites(mesh, spec.layer_depth_mm, name=name)
    return np.arange(mesh.n_nodes)


def pmj_groups(mesh: Mesh, spec: ModelSpec, admissible: np.ndarray, name: str = "mesh"):
    """Ventricle of each admissible node and of each PMJ, or ``(None, None)``.

    With ``split_ventricles`` (spec ``split_ventricles``) and a layer on both ventricles,
    each admissible node belongs to the nearer endocardium (0 LV, 1 RV) and the first
    ``n_pmj_lv`` PMJs are LV PMJs, the others RV PMJs. ``n_pmj_lv = -1`` takes the LV
    share of the admissible nodes (rounded, at least one PMJ per ventricle when
    ``n_pmj >= 2``). Without the split, or on a mesh with one labelled ventricle or an
    unconstrained layer, every PMJ may sit anywhere in the admissible set.

    Returns
    -------
    site_group : (n_admissible,) int32 or None
    pmj_group : (n_pmj,) int32 or None
    """
    if not (spec.split_ventricles and spec.constrain_to_layer):
        return None, None
    d_lv, d_rv = endo_distance_by_side(mesh, name)
    if not (np.isfinite(d_lv).any() and np.isfinite(d_rv).any()):
        return None, None
    site_group = (d_rv[admissible] < d_lv[admissible]).astype(np.int32)
    k = spec.n_pmj
    if spec.n_pmj_lv >= 0:
        k_lv = spec.n_pmj_lv
    else:
        k_lv = int(round(k * float(np.mean(site_group == 0))))
        if k >= 2:
            k_lv = min(max(k_lv, 1), k - 1)
    return site_group, (np.arange(k) >= k_lv).astype(np.int32)


def select_sites(mesh: Mesh, spec: ModelSpec, name: str = "mesh") -> np.ndarray:
    """Node indices of the distance-field sites, shape ``(n_sites,)``.

    The admissible nodes (within ``layer_depth_mm`` of the endocardium, or all nodes when
    ``constrain_to_layer`` is false), thinned on a ``site_spacing_mm`` voxel grid: per
    occupied voxel the node closest to the voxel's mean. Deterministic.
    """
    from ._coarsen import voxel_pick

    cand = admissible_nodes(mesh, spec, name)
    x = np.asarray(mesh.nodes)[cand]
    return cand[voxel_pick(x, spec.site_spacing_mm, x.min(0))]


def distance_dictionary(
    mesh: Mesh,
    site_nodes: np.ndarray,
    cv_fiber: float,
    cv_cross: float,
    batch: int = 32,
    progress: bool = False,
) -> np.ndarray:
    """Travel times ``D[s, x]`` (ms) from every site to every node, by the eikonal solver.

    Parameters
    ----------
    mesh : Mesh
    site_nodes : (n_sites,) int
    cv_fiber, cv_cross : float, mm/ms
    batch : int
        Sites solved together (``vmap``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    (n_sites, n_nodes) float32
    """
    from ._eikonal import activation_times, eikonal_geometry
    from ._progress import progress_bar

    geom = eikonal_geometry(mesh, np.float32)
    nodes = np.asarray(mesh.nodes, np.float32)

    @jax.jit
    def solve(xyz):
        return jax.vmap(lambda p: activation_times(geom, p[None], jnp.zeros(1), cv_fiber, cv_cross))(xyz)

    n = len(site_nodes)
    pad = (-n) % batch
    idx = np.concatenate([site_nodes, np.repeat(site_nodes[-1:], pad)])
    out = np.empty((idx.size, mesh.n_nodes), np.float32)
    with progress_bar(total=n, desc="distance fields", disable=not progress) as bar:
        for i in range(0, idx.size, batch):
            out[i : i + batch] = np.asarray(solve(nodes[idx[i : i + batch]]))
            bar.update(min(batch, n - i))
    return out[:n]


def dictionary_key(mesh: Mesh, site_nodes: np.ndarray, cv_fiber: float, cv_cross: float) -> str:
    """Content hash identifying a distance dictionary (for caching)."""
    h = hashlib.sha256()
    for a in (mesh.nodes, mesh.tets, mesh.fibres if mesh.fibres is not None else np.zeros(0), site_nodes):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(np.asarray([cv_fiber, cv_cross], np.float64).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------
# Distributions and the model
# --------------------------------------------------------------------------------------
class LayerPrior(dist.Distribution):
    """Gaussian mixture over sites: a smooth density on the admissible layer.

    Without groups every PMJ has the same density, the equal-weight mixture over all
    sites. With groups (one per ventricle), PMJ ``k`` has the mixture over the sites of
    its own group ``pmj_group[k]`` only: an LV PMJ stays on the LV layer, an RV one on the
    RV layer. (One mixture over both layers is bimodal for every PMJ — the septum and the
    cavities lie between the two layers — and NUTS on that prior alone gave a smallest
    effective sample size of 6 in 500 draws; one layer per PMJ gave 101:
    ``benchmarks/prior_mixing.py``.)

    Parameters
    ----------
    sites : (n_sites, 3) array, mm
    kernel_mm : float
        Standard deviation of each component, mm.
    site_group : (n_sites,) int or None
        Group of each site (0 LV, 1 RV).
    pmj_group : (n_pmj,) int or None
        Group of each PMJ; gives the distribution ``batch_shape (n_pmj,)``.
    """

    arg_constraints = {}
    support = constraints.real_vector
    reparametrized_params = []

    def __init__(self, sites, kernel_mm, site_group=None, pmj_group=None, *, validate_args=None):
        self.sites = jnp.asarray(sites)
        self.kernel_mm = kernel_mm
        if (site_group is None) != (pmj_group is None):
            raise ValueError("LayerPrior: give both site_group and pmj_group, or neither")
        self.site_group = None if site_group is None else jnp.asarray(site_group, jnp.int32)
        self.pmj_group = None if pmj_group is None else jnp.asarray(pmj_group, jnp.int32)
        batch = () if pmj_group is None else tuple(self.pmj_group.shape)
        super().__init__(batch_shape=batch, event_shape=(3,), validate_args=validate_args)

    def _mask(self):
        """(n_pmj, n_sites) bool: the sites each PMJ's mixture uses."""
        return self.pmj_group[:, None] == self.site_group[None, :]

    def sample(self, key, sample_shape=()):
        """Draw a site uniformly (from the PMJ's group), then add noise of sd ``kernel_mm``."""
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        if self.pmj_group is None:
            i = jax.random.randint(k1, shape, 0, self.sites.shape[0])
        else:
            logits = jnp.where(self._mask(), 0.0, -jnp.inf)
            i = jax.random.categorical(k1, logits, shape=shape)
        return self.sites[i] + self.kernel_mm * jax.random.normal(k2, shape + (3,), self.sites.dtype)

    def log_prob(self, value):
        """Log density, shape ``value.shape[:-1]``."""
        h2 = self.kernel_mm**2
        d2 = jnp.sum((value[..., None, :] - self.sites) ** 2, -1)
        norm = -1.5 * jnp.log(2 * jnp.pi * h2)
        if self.pmj_group is None:
            return jax.nn.logsumexp(-0.5 * d2 / h2, -1) - jnp.log(self.sites.shape[0]) + norm
        mask = self._mask()
        n = mask.sum(-1).astype(d2.dtype)
        return jax.nn.logsumexp(jnp.where(mask, -0.5 * d2 / h2, -jnp.inf), -1) - jnp.log(n) + norm


class AR1Normal(dist.Distribution):
    """Stationary Gaussian AR(1) noise around a mean, independent between leads.

    ``e = x − loc``; per lead ``e_0 ~ N(0, σ²)`` and ``e_t = ρ e_{t−1} + sqrt(1 − ρ²) σ ξ_t``
    with ``ξ_t ~ N(0, 1)``: marginal sd ``σ`` at every sample, correlation ``ρ^|i−j|`` between
    samples ``|i − j|`` steps apart.

    Parameters
    ----------
    loc : (..., n_leads, n_times) mean, mV
    scale : () or (n_leads,) marginal sd ``σ``, mV (one per lead: ``[noise] per_lead``)
    rho : () lag-one correlation, ``0 ≤ ρ < 1``

    Event shape ``(n_leads, n_times)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "rho": constraints.unit_interval}
    support = constraints.independent(constraints.real, 2)
    reparametrized_params = ["loc", "scale", "rho"]

    def __init__(self, loc, scale, rho, *, validate_args=None):
        self.loc = jnp.asarray(loc)
        self.scale = jnp.asarray(scale)
        self.rho = jnp.asarray(rho)
        batch = self.loc.shape[:-2]
        super().__init__(batch_shape=batch, event_shape=self.loc.shape[-2:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws of shape ``sample_shape + batch_shape + (n_leads, n_times)``."""
        shape = sample_shape + self.batch_shape + self.event_shape
        return self.loc + ar1_noise(key, shape, self.rho) * lead_scale(self.scale, self.event_shape[0])[:, None]

    def log_prob(self, value):
        """Exact log density (the innovations form of the AR(1) likelihood)."""
        e = value - self.loc
        n_lead, n_t = self.event_shape
        s2 = lead_scale(self.scale, n_lead) ** 2  # (n_leads,)
        inn_var = s2 * (1.0 - self.rho**2)
        innov = e[..., 1:] - self.rho * e[..., :-1]
        lp0 = -0.5 * jnp.sum(e[..., 0] ** 2 / s2, -1) - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * s2))
        lp1 = -0.5 * jnp.sum(jnp.sum(innov**2, -1) / inn_var, -1) - 0.5 * (n_t - 1) * jnp.sum(
            jnp.log(2 * jnp.pi * inn_var)
        )
        return lp0 + lp1


def lead_scale(scale, n_leads: int):
    """A noise sd shared by all leads (``()``) or one per lead, as ``(n_leads,)``."""
    scale = jnp.asarray(scale)
    if scale.ndim > 1 or (scale.ndim == 1 and scale.shape[0] not in (1, n_leads)):
        raise ValueError(f"noise scale has shape {scale.shape}: expected () or ({n_leads},)")
    return jnp.broadcast_to(scale, (n_leads,))


def ar1_noise(key, shape, rho, scale=1.0):
    """Stationary AR(1) noise along the last axis: marginal sd ``scale``, lag-one corr ``rho``.

    ``rho`` and ``scale`` broadcast against ``shape[:-2]`` (e.g. one value per draw).
    """
    xi = jax.random.normal(key, shape)
    rho = jnp.asarray(rho)[..., None]
    c = jnp.sqrt(1.0 - rho**2)

    def step(prev, x):
        cur = rho * prev + c * x
        return cur, cur

    first = xi[..., 0]
    _, rest = jax.lax.scan(step, first, jnp.moveaxis(xi[..., 1:], -1, 0))
    out = jnp.concatenate([first[..., None], jnp.moveaxis(rest, 0, -1)], axis=-1)
    return jnp.asarray(scale)[..., None, None] * out if jnp.ndim(scale) else scale * out


#: Baseline terms per lead and their number of basis functions.
BASELINE_TERMS = {"none": 0, "offset": 1, "linear": 2}


def baseline_basis(times, kind: str):
    """Basis of the per-lead baseline over the fitted window, ``(n_times, p)``.

    Columns are orthogonal with RMS 1 over ``times``: a constant (``"offset"``), and for
    ``"linear"`` also a centred ramp (values ``±√3`` at the window ends). A coefficient
    ``b ~ N(0, τ²)`` on each column is then a level (or a ramp) of RMS ``τ`` mV.

    Parameters
    ----------
    times : (n_times,) array
        Sample times of the fitted window, ms.
    kind : {"offset", "linear"}
        The baseline term.
    """
    p = BASELINE_TERMS[kind]
    if p == 0:
        raise ValueError(f"baseline_basis: kind must be 'offset' or 'linear', got {kind!r}")
    t = jnp.asarray(times)
    cols = [jnp.ones_like(t)]
    if p > 1:
        c = t - jnp.mean(t)
        cols.append(c / jnp.maximum(jnp.sqrt(jnp.mean(c**2)), 1e-12))
    return jnp.stack(cols[:p], -1)


def _whiten(e, rho):
    """AR(1) innovations along the last axis: i.i.d. with variance ``σ²(1 − ρ²)``."""
    first = e[..., :1] * jnp.sqrt(1.0 - rho**2)
    return jnp.concatenate([first, e[..., 1:] - rho * e[..., :-1]], -1)


def _baseline_terms(resid, scale, tau, basis, rho):
    """Whitened residual ``u``, projections ``Gᵀu``, per-lead precisions ``M`` and variances ``v``.

    ``resid`` ``(..., n_leads, n_times)``; ``scale`` ``()`` or ``(n_leads,)``. Returns ``u``
    like ``resid``, ``Gᵀu`` ``(..., n_leads, p)``, ``M`` ``(n_leads, p, p)`` (the posterior
    precision of each lead's coefficients) and ``v`` ``(n_leads,)`` (innovation variances).
    """
    v = lead_scale(scale, resid.shape[-2]) ** 2 * (1.0 - rho**2)
    u = _whiten(resid, rho)
    g = _whiten(basis.T, rho).T  # (n_times, p)
    gtu = jnp.einsum("tp,...t->...p", g, u)
    m = jnp.eye(basis.shape[1], dtype=u.dtype) / tau**2 + (g.T @ g)[None] / v[:, None, None]
    return u, gtu, m, v


def baseline_conditional(resid, scale, tau, basis, rho=0.0):
    """Posterior of the baseline coefficients given a residual (Gaussian, per lead).

    Parameters
    ----------
    resid : (..., n_leads, n_times) array
        ``observed − model ECG`` (without baseline), mV.
    scale : float or (n_leads,) array
        Noise sd ``σ``, mV (shared, or one per lead).
    tau : float
        Prior sd of each coefficient, mV.
    basis : (n_times, p) array
        From :func:`baseline_basis`.
    rho : float
        AR(1) lag-one correlation of the noise (0: white).

    Returns
    -------
    mean : (..., n_leads, p) array
        Posterior mean of the coefficients, mV.
    chol : (n_leads, p, p) array
        Cholesky factor of each lead's posterior covariance, mV.
    """
    _, gtu, m, v = _baseline_terms(resid, scale, tau, basis, rho)
    cov = jnp.linalg.inv(m)
    return jnp.einsum("lpq,...lq->...lp", cov, gtu) / v[:, None], jnp.linalg.cholesky(cov)


class BaselineNormal(dist.Distribution):
    """Gaussian (white or AR(1)) noise plus a per-lead baseline, the baseline integrated out.

    ``x = loc + B b + e`` per lead, with ``b ~ N(0, τ² I_p)`` on the columns of ``B``
    (:func:`baseline_basis`: a level, or a level and a ramp) and ``e`` white (``ρ = 0``) or
    AR(1) noise of marginal sd ``σ``. ``log_prob`` is the exact marginal
    ``N(loc, σ² R_ρ + τ² B Bᵀ)``, by the Woodbury identity in the AR(1)-whitened space
    (``p ≤ 2``, so it costs a few passes over the residual): clinical QRS windows start off
    zero and end on a displaced ST level, and without this term the PMJs would bend the
    activation to mimic an offset. The coefficients' conditional posterior is
    :func:`baseline_conditional`.

    Parameters
    ----------
    loc : (..., n_leads, n_times) array
        Mean without the baseline, mV.
    scale : float or (n_leads,) array
        Noise sd ``σ``, mV (shared, or one per lead).
    tau : float
        Prior sd of each baseline coefficient, mV.
    basis : (n_times, p) array
        From :func:`baseline_basis`.
    rho : float
        Lag-one noise correlation, ``0 ≤ ρ < 1`` (0: white).

    Event shape ``(n_leads, n_times)``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive, "tau": constraints.positive}
    support = constraints.independent(constraints.real, 2)
    reparametrized_params = ["loc", "scale", "tau"]

    def __init__(self, loc, scale, tau, basis, rho=0.0, *, validate_args=None):
        self.loc = jnp.asarray(loc)
        self.scale = jnp.asarray(scale)
        self.tau = jnp.asarray(tau)
        self.basis = jnp.asarray(basis, self.loc.dtype)
        self.rho = jnp.asarray(rho)
        batch = self.loc.shape[:-2]
        super().__init__(batch_shape=batch, event_shape=self.loc.shape[-2:], validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        """Draws of shape ``sample_shape + batch_shape + (n_leads, n_times)``."""
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape + self.event_shape
        b = self.tau * jax.random.normal(k1, shape[:-1] + (self.basis.shape[1],), self.loc.dtype)
        noise = ar1_noise(k2, shape, self.rho) * lead_scale(self.scale, self.event_shape[0])[:, None]
        return self.loc + jnp.einsum("tp,...p->...t", self.basis, b) + noise

    def log_prob(self, value):
        """Exact marginal log density, shape ``batch_shape``."""
        u, gtu, m, v = _baseline_terms(value - self.loc, self.scale, self.tau, self.basis, self.rho)
        n_lead, n_t = self.event_shape
        p = self.basis.shape[1]
        chol = jnp.linalg.cholesky(m)  # (n_leads, p, p)
        # w = L⁻¹ Gᵀu per lead; p ≤ 2, so the explicit inverse of the small factor is exact enough
        w = jnp.einsum("lpq,...lq->...lp", jnp.linalg.inv(chol), gtu)
        quad = jnp.sum(jnp.sum(u**2, -1) / v, -1) - jnp.sum(jnp.sum(w**2, -1) / v**2, -1)
        logdet = n_t * jnp.log(v) + p * jnp.log(self.tau**2) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, 0, -2, -1)), -1)
        log_jac = 0.5 * n_lead * jnp.log(1.0 - self.rho**2)
        return -0.5 * quad - 0.5 * (jnp.sum(logdet) + n_lead * n_t * jnp.log(2 * jnp.pi)) + log_jac


def baseline_sd(data: ModelData, spec: ModelSpec):
    """Prior sd ``τ`` (mV) of each baseline coefficient: ``baseline_rel_sd × RMS(observed ECG)``.

    ``data.noise_scale`` is ``noise_rel_scale × RMS(observed ECG)``, so both priors share
    the data scale.
    """
    return data.noise_scale * (spec.baseline_rel_sd / spec.noise_rel_scale)


class ModelData(NamedTuple):
    """Arrays the model needs (a pytree).

    Attributes
    ----------
    sites : (n_sites, 3) mm
    dist : (n_sites, n_nodes) ms, residual travel times ``R`` at the base velocities
    site_metric : (n_sites, 3, 3) (ms/mm)², metric D⁻¹ at each site
    nodes : (n_nodes, 3) mm
    prior_sites : (n_admissible, 3) mm, every admissible node (prior mixture centres)
    lead : (n_leads, n_nodes) lead-field matrix
    times : (n_times,) ms, where the ECG is compared
    gain0 : () prior median of the ECG gain
    noise_scale : () mV, HalfNormal scale of sigma
    prior_group : (n_admissible,) int32 or None, ventricle of each prior site (0 LV, 1 RV)
    pmj_group : (n_pmj,) int32 or None, ventricle of each PMJ (see :func:`pmj_groups`)
    """

    sites: jax.Array
    dist: jax.Array
    site_metric: jax.Array
    nodes: jax.Array
    prior_sites: jax.Array
    lead: jax.Array
    times: jax.Array
    gain0: jax.Array
    noise_scale: jax.Array
    prior_group: jax.Array | None = None
    pmj_group: jax.Array | None = None


#: Sites entering the kernel interpolation of one PMJ (its nearest ones). With sites
#: ``site_spacing_mm`` apart on the endocardial layer and ``kernel_mm`` about 2/3 of that,
#: the 32nd-nearest site weighs ~1e-5 of the nearest: dropping the others changes travel
#: times by < 1e-2 ms, and the cost no longer grows with the number of sites.
KERNEL_NEIGHBOURS = 32


def kernel_weights(z, sites, kernel_mm, neighbours: int | None = KERNEL_NEIGHBOURS):
    """Interpolation weights of continuous PMJ positions over their nearest sites.

    Parameters
    ----------
    z : (n_pmj, 3) mm
    sites : (n_sites, 3) mm
    kernel_mm : float
        Gaussian kernel sd ``h``: ``w ∝ exp(−|z − x_s|² / 2h²)``.
    neighbours : int or None
        Keep the ``m`` nearest sites (``None``, or ``m ≥ n_sites``: all of them).

    Returns
    -------
    w : (n_pmj, m) weights summing to one
    idx : (n_pmj, m) int32 site indices
    """
    n_sites = sites.shape[0]
    d2 = jnp.sum((z[:, None, :] - sites[None]) ** 2, -1)
    if neighbours is None or neighbours >= n_sites:
        idx = jnp.broadcast_to(jnp.arange(n_sites, dtype=jnp.int32), d2.shape)
    else:
        # the neighbour set is picked without gradient; the weights are recomputed from z
        _, idx = jax.lax.top_k(-jax.lax.stop_gradient(d2), neighbours)
        d2 = jnp.sum((z[:, None, :] - sites[idx]) ** 2, -1)
    return jax.nn.softmax(-0.5 * d2 / kernel_mm**2, axis=-1), idx


def local_linear_weights(w, offsets, ridge_mm2: float):
    """Local-linear (equivalent-kernel) weights from Gaussian kernel weights.

    A kernel average ``Σ_s w_s f(x_s)`` (local-constant regression) is biased by the
    gradient of ``f`` wherever the sites are not balanced around the query point ``z``
    (between sites, at the edge of the layer). Fitting ``f(x) ≈ a + bᵀ(x − z)`` by
    weighted least squares instead and keeping ``a`` gives ``Σ_s ℓ_s f(x_s)`` with

        ℓ_s = w_s [1 − Δ̄ᵀ (C + λI)⁻¹ (Δ_s − Δ̄)],   Δ_s = x_s − z,  Δ̄ = Σ w Δ,
        C = Σ_s w_s (Δ_s − Δ̄)(Δ_s − Δ̄)ᵀ,

    which sum to one and, for ``λ = 0``, reproduce every affine ``f`` exactly. The ridge
    ``λ`` (mm²) keeps directions in which the sites barely spread (across the thin
    subendocardial layer) close to the kernel average instead of extrapolating. Smooth
    in ``z``; weights may be negative.

    Parameters
    ----------
    w : (n_pmj, m) kernel weights summing to one
    offsets : (n_pmj, m, 3) mm, ``x_s − z``
    ridge_mm2 : float, ``λ``

    Returns
    -------
    (n_pmj, m) weights summing to one
    """
    mean = jnp.einsum("km,kmi->ki", w, offsets)
    centred = offsets - mean[:, None, :]
    cov = jnp.einsum("km,kmi,kmj->kij", w, centred, centred) + ridge_mm2 * jnp.eye(3, dtype=w.dtype)
    a = _solve_spd3(cov, mean)
    return w * (1.0 - jnp.einsum("ki,kmi->km", a, centred))


def _solve_spd3(m, b):
    """``m⁻¹ b`` for a batch of symmetric positive definite 3 × 3 matrices, by the adjugate.

    Elementwise arithmetic only (no LAPACK call): cheap to compile and to differentiate.
    ``m`` is ``(..., 3, 3)``, ``b`` is ``(..., 3)``.
    """
    a, b_, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 1], m[..., 1, 2], m[..., 2, 2]
    c00 = d * f - e * e
    c01 = c * e - b_ * f
    c02 = b_ * e - c * d
    c11 = a * f - c * c
    c12 = b_ * c - a * e
    c22 = a * d - b_ * b_
    det = a * c00 + b_ * c01 + c * c02
    x, y, z = b[..., 0], b[..., 1], b[..., 2]
    return jnp.stack(
        [c00 * x + c01 * y + c02 * z, c01 * x + c11 * y + c12 * z, c02 * x + c12 * y + c22 * z], -1
    ) / det[..., None]


def straight_travel_time(z, metric, nodes, smoothing_ms: float = 0.0):
    """``‖x − z‖_M`` for every node, ``(n_pmj, n_nodes)`` ms.

    The cone apex is rounded, ``sqrt(q + δ²) − δ`` with ``δ = smoothing_ms`` (at most ``δ``
    below the exact value, ≈ ``δ²/2d`` at distance ``d``): a PMJ passing close to a node
    then bends the log density gently, which keeps NUTS step sizes large.

    Parameters
    ----------
    z : (n_pmj, 3) mm
    metric : (n_pmj, 3, 3) (ms/mm)²
    nodes : (n_nodes, 3) mm
    smoothing_ms : float
        ``δ``, ms (0: exact, with a 1e-3 ms floor keeping the gradient finite).
    """
    r = nodes[None] - z[:, None, :]
    r0, r1, r2 = r[..., 0], r[..., 1], r[..., 2]
    m = metric[:, None]
    # the quadratic form written out: fused elementwise work (~10x faster than an einsum)
    q = (
        m[..., 0, 0] * r0 * r0
        + m[..., 1, 1] * r1 * r1
        + m[..., 2, 2] * r2 * r2
        + 2.0 * (m[..., 0, 1] * r0 * r1 + m[..., 0, 2] * r0 * r2 + m[..., 1, 2] * r1 * r2)
    )
    d = max(float(smoothing_ms), 1e-3)
    return jnp.sqrt(jnp.maximum(q, 0.0) + d * d) - d


def dictionary_activation(
    z,
    t,
    scale,
    data: ModelData,
    kernel_mm: float,
    tau_ms: float | None,
    cone_ms: float = 0.0,
    neighbours: int | None = KERNEL_NEIGHBOURS,
    interpolation: str = "local_linear",
):
    """Activation times ``(n_nodes,)`` ms from PMJs by the factored distance dictionary.

    Parameters
    ----------
    z : (n_pmj, 3) mm
    t : (n_pmj,) ms
    scale : () velocity factor s (travel times are divided by it)
    data : ModelData
    kernel_mm : float
    tau_ms : float or None
        Softmin temperature; ``None`` gives the exact minimum.
    cone_ms : float
        Rounding of the straight-line cone at each PMJ (see :func:`straight_travel_time`).
    neighbours : int or None
        Sites interpolated per PMJ, its nearest (see :data:`KERNEL_NEIGHBOURS`; ``None``: all).
    interpolation : {"local_linear", "local_constant"}
        How the residual ``R`` is interpolated between sites: local-linear weights
        (:func:`local_linear_weights`, ridge ``(kernel_mm / 2)²``; exact for residuals
        that vary linearly with the site position) or the plain kernel average.
        The straight-line metric is always the kernel average (it stays positive definite).

    Cost per call: ``n_pmj × neighbours × n_nodes`` for the residual plus ``n_pmj × n_nodes``
    for the cone and the soft minimum — independent of the number of sites.
    """
    arrival = pmj_arrival(z, t, scale, data, kernel_mm, cone_ms, neighbours, interpolation)
    if tau_ms is None:
        return arrival.min(0)
    return -tau_ms * jax.nn.logsumexp(-arrival / tau_ms, axis=0)


def pmj_arrival(
    z,
    t,
    scale,
    data: ModelData,
    kernel_mm: float,
    cone_ms: float = 0.0,
    neighbours: int | None = KERNEL_NEIGHBOURS,
    interpolation: str = "local_linear",
):
    """Arrival time of each PMJ's wave at every node, ``(n_pmj, n_nodes)`` ms.

    The activation map is its minimum over PMJs (soft or exact, :func:`dictionary_activation`);
    the PMJ at which the minimum is reached is the one that activates the node. Arguments as
    for :func:`dictionary_activation`.
    """
    w, idx = kernel_weights(z, data.sites, kernel_mm, neighbours)
    metric = jnp.einsum("km,kmij->kij", w, data.site_metric[idx])
    if interpolation == "local_linear":
        wr = local_linear_weights(w, data.sites[idx] - z[:, None, :], (0.5 * kernel_mm) ** 2)
    elif interpolation == "local_constant":
        wr = w
    else:
        raise ValueError(f"interpolation must be 'local_linear' or 'local_constant', not {interpolation!r}")
    resid = jnp.einsum("km,kmn->kn", wr, data.dist[idx])
    travel = straight_travel_time(z, metric, data.nodes, cone_ms) + resid
    return t[:, None] + travel / scale


def node_metric(mesh: Mesh, cv_fiber: float, cv_cross: float) -> np.ndarray:
    """Metric ``D⁻¹`` per node, ``(n_nodes, 3, 3)``: mean over the incident tets."""
    tets = np.asarray(mesh.tets)
    eye = np.eye(3)
    if mesh.fibres is None:
        m = np.broadcast_to(eye / cv_cross**2, (tets.shape[0], 3, 3))
    else:
        f = np.asarray(mesh.fibres, np.float64)
        ff = f[:, :, None] * f[:, None, :]
        m = ff / cv_fiber**2 + (eye - ff) / cv_cross**2
    out = np.zeros((mesh.n_nodes, 3, 3))
    cnt = np.zeros(mesh.n_nodes)
    for j in range(4):
        np.add.at(out, tets[:, j], m)
        np.add.at(cnt, tets[:, j], 1.0)
    return out / np.maximum(cnt, 1.0)[:, None, None]


def model_ecg(act, gain, shift, data: ModelData, eps_ms: float = 1.0):
    """Noise-free model ECG ``(n_leads, n_times)`` mV for an activation map."""
    from ._ecg import simulate_ecg

    return gain * simulate_ecg(act + shift, data.lead, data.times, eps_ms)


def time_smoother(times, width_ms):
    """Row-normalised Gaussian smoothing matrix ``(n_times, n_times)`` over the sample times.

    ``S[i, j] ∝ exp(−(t_i − t_j)² / 2w²)``, each row summing to one, with ``w = width_ms``
    (ms; floored at 1e-3 ms, where ``S`` is the identity to float precision: samples are
    ≥ 1 ms apart). ``x @ S.T`` smooths signals ``(..., n_times)`` in time. ``width_ms`` may
    be a traced value (one compiled program for every width).
    """
    w = jnp.maximum(jnp.asarray(width_ms, times.dtype), 1e-3)
    s = jnp.exp(-0.5 * ((times[:, None] - times[None, :]) / w) ** 2)
    return s / jnp.sum(s, axis=1, keepdims=True)


def cdt_model(data: ModelData, spec: ModelSpec, obs=None, temper=1.0, smooth_ms=None, t_max_ms=None):
    """NumPyro model: PMJs, velocities, gain, shift, noise → ECG.

    Parameters
    ----------
    data : ModelData
    spec : ModelSpec
    obs : (n_leads, n_times) array or None
        Observed ECG, mV (``None`` samples from the prior predictive).
    temper : float
        Likelihood power ``β`` (1 = the posterior; < 1 flattens it, used to anneal the
        multi-start MAP optimisation).
    smooth_ms : float or None
        ``None``: the model as specified. A width ``w`` (ms; may be traced): the model and
        the observed ECG are both smoothed in time by :func:`time_smoother` before the
        likelihood (same family). A search device only, never the posterior: with
        ``w`` of a few ms, a deflection that is a few ms early or late costs gradually
        instead of trapping the optimiser in a wrong basin (the coarse-to-fine misfit of
        waveform inversion); ``w`` → 0 recovers the model exactly.
    t_max_ms : float or None
        ``None``: the PMJ time prior is ``Uniform(0, spec.t_max_ms)``. A value (ms; may be
        traced) replaces that upper bound, so that one compiled program serves several
        bounds (the choice of ``[pmj] t_max_select``, :func:`cdt_bayes.select_time_prior`).
    """
    if spec.baseline == "auto":
        raise SpecError(
            "baseline = 'auto' is decided from the observed ECG: build the problem with build_problem() "
            "and use problem.spec (or set baseline to 'none', 'offset' or 'linear')"
        )
    with numpyro.plate("pmj", spec.n_pmj):
        prior = LayerPrior(data.prior_sites, spec.prior_kernel_mm, data.prior_group, data.pmj_group)
        z = numpyro.sample("pmj_xyz_mm", prior)
        t = numpyro.sample("pmj_t_ms", dist.Uniform(0.0, spec.t_max_ms if t_max_ms is None else t_max_ms))
    if spec.infer_scale:
        scale = numpyro.sample("cv_scale", dist.LogNormal(0.0, spec.scale_log_sd))
    else:
        scale = 1.0
    gain = numpyro.sample("gain", dist.LogNormal(jnp.log(data.gain0), spec.gain_log_sd))
    if spec.shift_sd_ms > 0:
        shift = numpyro.sample("shift_ms", dist.Normal(0.0, spec.shift_sd_ms))
    else:  # PMJ times already absorb a (positive) offset of the QRS onset
        shift = 0.0
    noise_prior = dist.HalfNormal(data.noise_scale)
    if spec.noise_per_lead:  # one noise sd per lead, the same prior for each
        noise_prior = noise_prior.expand([data.lead.shape[0]]).to_event(1)
    sigma = numpyro.sample("sigma_mV", noise_prior)
    act = dictionary_activation(
        z, t, scale, data, spec.kernel_mm, spec.softmin_tau_ms, spec.cone_smoothing_ms, interpolation=spec.interpolation
    )
    numpyro.deterministic("activation_ms", act)
    mu = numpyro.deterministic("ecg_model_mV", model_ecg(act, gain, shift, data))
    if smooth_ms is not None:
        smoother = time_smoother(data.times, smooth_ms)
        mu = mu @ smoother.T
        if obs is not None:
            obs = obs @ smoother.T
    rho = numpyro.sample("noise_rho", dist.Uniform(0.0, spec.ar1_rho_max)) if spec.likelihood == "ar1" else None
    if spec.baseline != "none":
        basis = baseline_basis(data.times, spec.baseline)
        like = BaselineNormal(mu, sigma, baseline_sd(data, spec), basis, 0.0 if rho is None else rho)
    elif spec.likelihood == "student_t":
        like = dist.StudentT(spec.student_nu, mu, lead_scale(sigma, mu.shape[-2])[:, None]).to_event(2)
    elif spec.likelihood == "ar1":
        like = AR1Normal(mu, sigma, rho)
    else:
        like = dist.Normal(mu, lead_scale(sigma, mu.shape[-2])[:, None]).to_event(2)
    with numpyro.handlers.scale(scale=temper):
        numpyro.sample("ecg", like, obs=obs)
