"""Lead-field pseudo-ECG: electrode lead fields ``z_e^T K``, the tanh V_m template, lead algebra.

The forward model (``../shared/FORWARD_MODEL.md``): with the P1 stiffness matrix ``K`` of the
intracellular conductivity ``G_i = sigma_l f f^T + sigma_t (I - f f^T)`` and
``z_e[j] = 1 / |x_j - x_e|``, the potential at an electrode in an infinite homogeneous medium of
conductivity ``sigma_b`` is

    phi_e(t) = -(1 / (4 pi sigma_b)) z_e^T K V_m(t),
    V_m(x, t) = v0 + (v1 - v0)/2 * (1 + tanh((t - T(x)) / eps)).

Leads are linear combinations of electrode potentials (Wilson's central terminal
``W = (RA + LA + LL)/3``), so a set of leads is one matrix ``L`` of shape ``(n_leads, n_nodes)``
(a :class:`LeadField`) built once per mesh, and the ECG of an activation map is one matrix
product (:func:`simulate_ecg`).

Scale. Only ``sigma_t / sigma_b`` (and ``sigma_l / sigma_t = cv_fiber^2 / cv_cross^2``) enters,
as one overall dimensionless gain, unknown in practice, which fits infer or normalise. The default
:data:`DEFAULT_GAIN` = 2.0 is ``TORSO_FACTOR * sigma_t / sigma_b`` with

- ``sigma_t = 0.3 / 2.25 = 0.133 S/m`` (:data:`SIGMA_T_S_PER_M`): the cross-fibre value that makes
  the along-fibre conductivity ``sigma_l = 0.3 S/m`` at the default anisotropy
  ``(0.6 / 0.4)^2 = 2.25``;
- ``sigma_b = 0.2 S/m`` (:data:`SIGMA_B_S_PER_M`), a mean torso conductivity;
- ``TORSO_FACTOR = 3`` (:data:`TORSO_FACTOR`): the infinite-medium formula ignores the torso
  boundary, which raises body-surface potentials; for a dipole at the centre of a bounded
  sphere the surface potential is exactly 3 times its infinite-medium value.

Calibration: on the patient biventricular mesh ``../shared/data/dti004`` (36,871 nodes, 107 mL,
its own electrodes, fibres) activated from 6 endocardial sites with a fast (2 mm/ms) endocardial
layer and 0.6 mm/ms in the wall (QRS 58-67 ms), this gain gives peak |lead| of 0.2-1.1 mV in the
limb leads and 0.9-3.8 mV in V1-V6 (median over the 12 leads 0.8-1.5 mV), the order of that
patient's clinical QRS (limb 0.8-1.7 mV, precordial 0.3-1.6 mV). On the built-in coarse
biventricular mesh with its default electrodes and the same kind of activation (QRS 48-59 ms):
limb leads 0.2-1.5 mV, V1-V6 0.9-11 mV (V2-V4 there sit only 30-34 mm from the epicardium,
against 44-59 mm in the patient), median over the 12 leads 0.9-2.1 mV.
With the physical ratio alone (gain 0.67) amplitudes are about 3 times smaller.

Units: mm, ms, mm/ms, mV. ``K`` is in mm (gradients 1/mm squared times volumes mm^3) and ``z`` in
1/mm, so the lead field ``-(gain / 4 pi) z^T K`` is dimensionless and maps mV to mV.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from ._errors import CdtBayesError, InputFileError
from ._fem import conductivity_tensors, p1_gradients, stiffness_matrix

__all__ = [
    "STANDARD_LEADS",
    "LIMB_LEADS",
    "LIMB_ELECTRODES",
    "PRECORDIAL",
    "IGNORED_ELECTRODES",
    "SIGMA_T_S_PER_M",
    "SIGMA_B_S_PER_M",
    "TORSO_FACTOR",
    "DEFAULT_GAIN",
    "MIN_ELECTRODE_DISTANCE_MM",
    "DEFAULT_MARGIN_EPS",
    "lead_matrix",
    "electrode_lead_field",
    "LeadField",
    "load_lead_field",
    "transmembrane_potential",
    "simulate_ecg",
    "ecg_time_grid",
]

LIMB_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF")
PRECORDIAL = ("V1", "V2", "V3", "V4", "V5", "V6")
STANDARD_LEADS = LIMB_LEADS + PRECORDIAL
LIMB_ELECTRODES = ("RA", "LA", "LL")
IGNORED_ELECTRODES = ("RL",)  # right-leg drive: not part of any lead

SIGMA_T_S_PER_M = 0.3 / 2.25
"""Cross-fibre myocardial conductivity of the default scale (sigma_l = 0.3 S/m at the default
anisotropy 2.25), S/m."""
SIGMA_B_S_PER_M = 0.2
"""Conductivity of the (infinite, homogeneous) torso of the default scale, S/m."""
TORSO_FACTOR = 3.0
"""Boundary amplification of body-surface potentials (exact for a dipole centred in a sphere)."""
DEFAULT_GAIN = TORSO_FACTOR * SIGMA_T_S_PER_M / SIGMA_B_S_PER_M
"""Default overall gain ``TORSO_FACTOR * sigma_t / sigma_b`` = 2.0 (dimensionless)."""
MIN_ELECTRODE_DISTANCE_MM = 1.0
"""Electrodes closer than this to a mesh node are rejected (the 1/r kernel is singular), mm."""
DEFAULT_MARGIN_EPS = 10.0
"""Default margin of :func:`ecg_time_grid` after the last activation, in units of ``eps_ms``."""


# --------------------------------------------------------------------------------------------
# Lead algebra
# --------------------------------------------------------------------------------------------


def _check_names(names, what: str) -> list[str]:
    names = list(names)
    for n in names:
        if not isinstance(n, str) or not n:
            raise CdtBayesError(f"{what}: names must be non-empty strings, got {n!r}")
    seen = set()
    for n in names:
        if n in seen:
            raise CdtBayesError(f"{what}: duplicate name {n!r}")
        seen.add(n)
    return [str(n) for n in names]  # plain str (not numpy.str_) for static pytree metadata


def lead_matrix(
    electrode_names: Sequence[str], leads: Sequence[str] | None = None
) -> tuple[tuple[str, ...], np.ndarray]:
    """Linear map from electrode potentials to leads.

    With Wilson's central terminal ``W = (RA + LA + LL)/3``:
    ``I = LA - RA``, ``II = LL - RA``, ``III = LL - LA``, ``aVR = RA - (LA + LL)/2``,
    ``aVL = LA - (RA + LL)/2``, ``aVF = LL - (RA + LA)/2``, ``Vi = phi(Vi) - W``, and any other
    electrode ``E`` gives the unipolar lead ``E = phi(E) - W``. ``RL`` is ignored.

    Parameters
    ----------
    electrode_names : sequence of str, length n_electrodes
        Names of the electrodes, in the column order of the potentials.
    leads : sequence of str, optional
        Leads wanted, in this order. Default: the standard 12 leads that the electrodes allow
        (I, II, III, aVR, aVL, aVF, then the V1-V6 present), followed by every extra electrode
        in its given order.

    Returns
    -------
    lead_names : tuple of str, length n_leads
    W : (n_leads, n_electrodes) float64 ndarray
        ``leads = W @ potentials``; a column of zeros for ``RL``.

    Raises
    ------
    CdtBayesError
        Duplicate electrode names, an electrode named like a limb lead, an unknown lead name
        (the message lists the available leads), or a lead that needs the limb electrodes
        ``RA, LA, LL`` when one of them is missing.
    """
    names = _check_names(electrode_names, "electrodes")
    clash = [n for n in names if n in LIMB_LEADS]
    if clash:
        raise CdtBayesError(
            f"electrode {clash[0]!r} has the name of a limb lead; rename it "
            f"(limb electrodes are {', '.join(LIMB_ELECTRODES)})"
        )
    idx = {n: i for i, n in enumerate(names)}
    n_e = len(names)
    missing_limb = [e for e in LIMB_ELECTRODES if e not in idx]

    def unit(name):
        v = np.zeros(n_e)
        v[idx[name]] = 1.0
        return v

    rows: dict[str, np.ndarray] = {}
    extras = [n for n in names if n not in LIMB_ELECTRODES + PRECORDIAL + IGNORED_ELECTRODES]
    if not missing_limb:
        ra, la, ll = unit("RA"), unit("LA"), unit("LL")
        w = (ra + la + ll) / 3.0
        rows["I"] = la - ra
        rows["II"] = ll - ra
        rows["III"] = ll - la
        rows["aVR"] = ra - (la + ll) / 2.0
        rows["aVL"] = la - (ra + ll) / 2.0
        rows["aVF"] = ll - (ra + la) / 2.0
        for v in PRECORDIAL:
            if v in idx:
                rows[v] = unit(v) - w
        for e in extras:
            rows[e] = unit(e) - w

    if leads is None:
        if missing_limb:
            raise CdtBayesError(
                f"electrodes: Wilson's central terminal needs RA, LA and LL; missing "
                f"{', '.join(missing_limb)} (electrodes given: {', '.join(names) or 'none'})"
            )
        leads = list(rows)
    leads = _check_names(leads, "leads")
    for lead in leads:
        if lead in rows:
            continue
        if missing_limb and (lead in STANDARD_LEADS or lead in extras):
            raise CdtBayesError(
                f"lead {lead!r} needs the limb electrodes RA, LA, LL; missing "
                f"{', '.join(missing_limb)} (electrodes given: {', '.join(names) or 'none'})"
            )
        if lead in PRECORDIAL:
            raise CdtBayesError(
                f"lead {lead!r} needs electrode {lead!r}, which is not among the electrodes "
                f"({', '.join(names)})"
            )
        raise CdtBayesError(f"unknown lead {lead!r}; available leads: {', '.join(rows) or 'none'}")
    w_mat = np.stack([rows[lead] for lead in leads]) if leads else np.zeros((0, n_e))
    return tuple(leads), w_mat


# --------------------------------------------------------------------------------------------
# Electrode lead fields
# --------------------------------------------------------------------------------------------


def _check_velocity(name: str, v) -> float:
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise CdtBayesError(f"{name} must be a positive conduction velocity in mm/ms, got {v}")
    return v


def _electrodes_outside(nodes, tets, xyz, names, min_distance_mm) -> None:
    """Raise if an electrode is within ``min_distance_mm`` of a node or inside a tet."""
    tree = cKDTree(nodes)
    dist, node = tree.query(xyz)
    for k in range(xyz.shape[0]):
        if dist[k] < min_distance_mm:
            raise CdtBayesError(
                f"electrode {names[k]} at ({xyz[k, 0]:.4g}, {xyz[k, 1]:.4g}, {xyz[k, 2]:.4g}) mm "
                f"is {dist[k]:.3g} mm from mesh node {int(node[k])} (minimum "
                f"{min_distance_mm:g} mm): electrodes must lie outside the heart; check the "
                "electrode coordinates and units"
            )
    # point-in-tet test on the tets whose circumscribing ball (about the centroid) can hold xyz
    x = nodes[tets]
    centroid = x.mean(axis=1)
    radius = np.sqrt(((x - centroid[:, None, :]) ** 2).sum(-1)).max()
    ctree = cKDTree(centroid)
    for k, cand in enumerate(ctree.query_ball_point(xyz, r=radius * (1 + 1e-9))):
        if not cand:
            continue
        cand = np.asarray(cand)
        grads, _ = p1_gradients(nodes, tets[cand])
        lam = np.einsum("eaj,ej->ea", grads, xyz[k] - x[cand, 0])
        lam[:, 0] += 1.0
        if np.any(np.all(lam >= -1e-12, axis=1)):
            raise CdtBayesError(
                f"electrode {names[k]} at ({xyz[k, 0]:.4g}, {xyz[k, 1]:.4g}, {xyz[k, 2]:.4g}) mm "
                "lies inside the heart mesh: electrodes must lie outside the myocardium; check "
                "the electrode coordinates and units"
            )


def electrode_lead_field(
    nodes: np.ndarray,
    tets: np.ndarray,
    fibres: np.ndarray | None,
    electrodes_xyz: np.ndarray,
    cv_fiber: float = 0.6,
    cv_cross: float = 0.4,
    gain: float = DEFAULT_GAIN,
    *,
    names: Sequence[str] | None = None,
    min_distance_mm: float = MIN_ELECTRODE_DISTANCE_MM,
) -> np.ndarray:
    """Lead field of each electrode: ``phi_e = L[e] @ V_m``.

    ``L[e] = -(gain / 4 pi) z_e^T K`` with ``K`` the P1 stiffness matrix of the normalised
    conductivity ``G = r f f^T + (I - f f^T)``, ``r = cv_fiber^2 / cv_cross^2`` (so
    ``G_i = sigma_t G`` and ``gain = sigma_t / sigma_b``, times a torso factor by default),
    and ``z_e[j] = 1 / |x_j - x_e|``.

    Parameters
    ----------
    nodes : (n_nodes, 3) float
        Node coordinates, mm.
    tets : (n_tets, 4) int
        Tetrahedra (either orientation; volumes enter by absolute value).
    fibres : (n_tets, 3) float or None
        Fibre direction per tet (normalised here). ``None``: isotropic, ``G = I``.
    electrodes_xyz : (n_electrodes, 3) float
        Electrode positions, mm; outside the myocardium.
    cv_fiber, cv_cross : float
        Conduction velocities along and across the fibre, mm/ms; only their ratio enters
        (``sigma_l / sigma_t = cv_fiber^2 / cv_cross^2``).
    gain : float
        Overall scale, dimensionless: ``sigma_t / sigma_b`` times any torso-boundary factor;
        default :data:`DEFAULT_GAIN` (2.0, see the module notes).
    names : sequence of str, optional
        Electrode names, for error messages.
    min_distance_mm : float
        Smallest allowed distance from an electrode to a mesh node, mm.

    Returns
    -------
    (n_electrodes, n_nodes) float64 ndarray
        Dimensionless; maps nodal V_m in mV to the electrode potential in mV. Each row sums to
        zero up to rounding (a uniform V_m makes no current).

    Raises
    ------
    CdtBayesError
        Non-finite or badly shaped electrodes, non-positive velocities, or an electrode inside
        the mesh or closer than ``min_distance_mm`` to a node.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    tets = np.asarray(tets)
    xyz = np.asarray(electrodes_xyz, dtype=np.float64)
    if xyz.ndim == 1 and xyz.shape[0] == 3:
        xyz = xyz[None, :]
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise CdtBayesError(f"electrode positions must have shape (n, 3) in mm, got {xyz.shape}")
    names = [f"#{k}" for k in range(xyz.shape[0])] if names is None else list(names)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise CdtBayesError(f"electrode {names[int(np.argmax(bad))]} has non-finite coordinates")
    ratio = (_check_velocity("cv_fiber", cv_fiber) / _check_velocity("cv_cross", cv_cross)) ** 2
    gain = float(gain)
    if not math.isfinite(gain):
        raise CdtBayesError(f"gain must be finite, got {gain}")
    if xyz.shape[0] == 0:
        return np.zeros((0, nodes.shape[0]))
    _electrodes_outside(nodes, tets, xyz, names, float(min_distance_mm))

    if fibres is None:
        tensors = None
    else:
        f = np.asarray(fibres, dtype=np.float64)
        if f.shape != (tets.shape[0], 3):
            raise CdtBayesError(
                f"fibres must have one direction per tet, shape ({tets.shape[0]}, 3), got {f.shape}"
            )
        norm = np.linalg.norm(f, axis=1, keepdims=True)
        f = np.where(norm > 0, f / np.where(norm > 0, norm, 1.0), 0.0)
        tensors = conductivity_tensors(f, tets.shape[0], sigma_l=ratio, sigma_t=1.0)
    k = stiffness_matrix(nodes, tets, tensors)
    kt = k.T.tocsr()
    out = np.empty((xyz.shape[0], nodes.shape[0]))
    for e in range(xyz.shape[0]):  # one electrode at a time: O(n_nodes) memory
        z = 1.0 / np.linalg.norm(nodes - xyz[e], axis=1)  # 1/mm
        out[e] = kt @ z  # (K^T z_e) = z_e^T K
    return -(gain / (4.0 * np.pi)) * out


# --------------------------------------------------------------------------------------------
# LeadField container
# --------------------------------------------------------------------------------------------


def _as_matrix(matrix, what: str) -> np.ndarray:
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CdtBayesError(f"{what}: not a numeric matrix ({err})") from None
    if m.ndim != 2:
        raise CdtBayesError(
            f"{what}: a lead field must be 2-D (rows = leads or electrodes, columns = nodes), "
            f"got shape {m.shape}"
        )
    if not np.isfinite(m).all():
        n_bad = int((~np.isfinite(m)).sum())
        raise CdtBayesError(f"{what}: {n_bad} non-finite (NaN/inf) entries")
    return m


@dataclasses.dataclass(frozen=True)
class LeadField:
    """Leads as linear functionals of nodal V_m: ``ecg = matrix @ V_m`` (a JAX pytree).

    Parameters
    ----------
    names : tuple of str, length n_leads
        Lead names (static pytree metadata).
    matrix : (n_leads, n_nodes) float array
        Dimensionless; maps V_m in mV to lead voltages in mV. Rows should sum to zero
        (a uniform V_m gives no ECG): :func:`simulate_ecg` relies on it.

    Build with :meth:`from_mesh`, :meth:`from_matrix`, :meth:`from_electrode_field` or
    :func:`load_lead_field`.
    """

    names: tuple[str, ...]
    matrix: np.ndarray

    @property
    def n_leads(self) -> int:
        """Number of leads."""
        return len(self.names)

    @property
    def n_nodes(self) -> int:
        """Number of mesh nodes (columns)."""
        return int(self.matrix.shape[1])

    def select(self, leads: Sequence[str]) -> LeadField:
        """Return the lead field restricted to ``leads`` (in that order).

        Raises
        ------
        CdtBayesError
            A lead not in :attr:`names`.
        """
        leads = _check_names(leads, "leads")
        pos = {n: i for i, n in enumerate(self.names)}
        for lead in leads:
            if lead not in pos:
                raise CdtBayesError(
                    f"unknown lead {lead!r}; available leads: {', '.join(self.names)}"
                )
        rows = np.asarray([pos[n] for n in leads], dtype=np.int64)
        return LeadField(tuple(leads), self.matrix[rows])

    @classmethod
    def from_matrix(cls, names: Sequence[str], matrix, n_nodes: int | None = None) -> LeadField:
        """Wrap a user-supplied lead matrix (rows = leads, columns = nodes).

        Parameters
        ----------
        names : sequence of str, length n_leads
        matrix : (n_leads, n_nodes) array_like
            Dimensionless, V_m (mV) -> lead (mV); rows should sum to zero.
        n_nodes : int, optional
            Expected number of mesh nodes, checked.

        Raises
        ------
        CdtBayesError
            Wrong shape, non-finite entries, duplicate names or a node-count mismatch.
        """
        names = tuple(_check_names(names, "lead field"))
        m = _as_matrix(matrix, "lead field")
        if m.shape[0] != len(names):
            raise CdtBayesError(
                f"lead field: {len(names)} names but {m.shape[0]} rows (rows = leads, "
                "columns = nodes)"
            )
        if n_nodes is not None and m.shape[1] != int(n_nodes):
            raise CdtBayesError(
                f"lead field: {m.shape[1]} columns but the mesh has {int(n_nodes)} nodes "
                "(rows = leads, columns = nodes)"
            )
        return cls(names, m)

    @classmethod
    def from_electrode_field(
        cls,
        electrode_names: Sequence[str],
        field,
        leads: Sequence[str] | None = None,
        n_nodes: int | None = None,
    ) -> LeadField:
        """Leads from per-electrode lead fields (rows = electrodes, columns = nodes).

        Parameters
        ----------
        electrode_names : sequence of str, length n_electrodes
        field : (n_electrodes, n_nodes) array_like
            ``phi_e = field[e] @ V_m``, dimensionless.
        leads : sequence of str, optional
            As in :func:`lead_matrix`.
        n_nodes : int, optional
            Expected number of mesh nodes, checked.
        """
        m = _as_matrix(field, "electrode lead field")
        names = _check_names(electrode_names, "electrodes")
        if m.shape[0] != len(names):
            raise CdtBayesError(
                f"electrode lead field: {len(names)} names but {m.shape[0]} rows "
                "(rows = electrodes, columns = nodes)"
            )
        lead_names, w = lead_matrix(names, leads)
        return cls.from_matrix(lead_names, w @ m, n_nodes=n_nodes)

    @classmethod
    def from_mesh(
        cls,
        mesh,
        electrodes: Mapping[str, Sequence[float]],
        leads: Sequence[str] | None = None,
        cv_fiber: float = 0.6,
        cv_cross: float = 0.4,
        gain: float = DEFAULT_GAIN,
    ) -> LeadField:
        """Lead field of a :class:`~cdt_bayes._geometry.Mesh` and named electrodes.

        Parameters
        ----------
        mesh : Mesh
            Uses ``nodes`` (mm), ``tets`` and ``fibres`` (per tet; ``None``: isotropic).
        electrodes : mapping name -> (3,) float
            Electrode positions, mm (``RA, LA, LL, V1..V6`` for the 12 leads; ``RL`` ignored;
            other names are unipolar leads against Wilson's terminal).
        leads : sequence of str, optional
            As in :func:`lead_matrix` (default: the 12 leads available, then extras).
        cv_fiber, cv_cross : float
            Conduction velocities, mm/ms (their ratio sets the conductivity anisotropy).
        gain : float
            ``sigma_t / sigma_b``, see :func:`electrode_lead_field`.

        Returns
        -------
        LeadField
            ``matrix`` (n_leads, n_nodes) float64.
        """
        names = _check_names(electrodes, "electrodes")
        lead_names, w = lead_matrix(names, leads)  # fail fast on lead errors
        used = [i for i in range(len(names)) if np.any(w[:, i] != 0)]
        if used:
            xyz = np.asarray([np.asarray(electrodes[names[i]], dtype=np.float64) for i in used])
            field = electrode_lead_field(
                mesh.nodes,
                mesh.tets,
                mesh.fibres,
                xyz,
                cv_fiber=cv_fiber,
                cv_cross=cv_cross,
                gain=gain,
                names=[names[i] for i in used],
            )
            matrix = w[:, used] @ field
        else:
            matrix = np.zeros((len(lead_names), int(np.asarray(mesh.nodes).shape[0])))
        return cls(lead_names, matrix)


jax.tree_util.register_dataclass(LeadField, data_fields=["matrix"], meta_fields=["names"])


def _read_csv_field(path: str) -> tuple[list[str], np.ndarray]:
    names: list[str] = []
    rows: list[list[float]] = []
    with open(path, newline="") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if line_no == 1 and row[0].strip().lower() in ("name", "lead", "electrode"):
                continue  # optional header
            if len(row) < 2:
                raise InputFileError(
                    f"{path}: line {line_no}: expected 'name,v_0,...,v_(n_nodes-1)', got one column"
                )
            try:
                vals = [float(c) for c in row[1:]]
            except ValueError:
                bad = next(c for c in row[1:] if not _is_float(c))
                raise InputFileError(
                    f"{path}: line {line_no}: non-numeric value {bad.strip()!r} (each row is "
                    "a name followed by one number per node)"
                ) from None
            if rows and len(vals) != len(rows[0]):
                raise InputFileError(
                    f"{path}: line {line_no}: {len(vals)} values, previous rows have "
                    f"{len(rows[0])} (one per node)"
                )
            names.append(row[0].strip())
            rows.append(vals)
    if not rows:
        raise InputFileError(f"{path}: no lead-field rows")
    return names, np.asarray(rows, dtype=np.float64)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_lead_field(
    path: str | os.PathLike,
    names: Sequence[str] | None = None,
    kind: str = "auto",
    leads: Sequence[str] | None = None,
    n_nodes: int | None = None,
) -> LeadField:
    """Read a user-supplied lead field (e.g. from a torso model): ``.npz``, ``.npy`` or ``.csv``.

    Format: a matrix whose rows are electrodes or leads and whose columns are mesh nodes (in
    the mesh's node order), dimensionless: ``row @ V_m`` (mV) is that electrode's potential or
    that lead (mV). Rows should sum to zero (a uniform V_m makes no ECG).

    - ``.npz``: array ``matrix`` (n_rows, n_nodes), array ``names`` (n_rows,) of str
      (optional when ``names`` is passed), optional scalar ``kind`` (``"electrodes"`` or
      ``"leads"``).
    - ``.npy``: the matrix alone; pass ``names``.
    - ``.csv``: one row per electrode/lead, ``name,v_0,v_1,...,v_(n_nodes-1)``; an optional
      first header line starting with ``name``.

    Parameters
    ----------
    path : str or path-like
    names : sequence of str, optional
        Row names (override those stored in the file).
    kind : {"auto", "electrodes", "leads"}
        ``"electrodes"``: rows are electrode potentials, combined into leads with
        :func:`lead_matrix`. ``"leads"``: rows are leads already. ``"auto"``: electrodes when the
        rows include ``RA, LA, LL`` and none of the limb leads ``I .. aVF``, else leads.
    leads : sequence of str, optional
        Leads to keep, in order (default: all).
    n_nodes : int, optional
        Number of mesh nodes, checked against the number of columns.

    Returns
    -------
    LeadField

    Raises
    ------
    InputFileError
        Missing or unreadable file, unknown extension, missing names, bad shape or values,
        unknown leads; the message names the file.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise InputFileError(f"{p}: lead-field file not found")
    ext = os.path.splitext(p)[1].lower()
    file_kind = None
    try:
        if ext == ".npz":
            with np.load(p, allow_pickle=False) as data:
                if "matrix" not in data:
                    raise InputFileError(
                        f"{p}: no array 'matrix' (found {', '.join(data.files) or 'none'}); "
                        "expected 'matrix' (rows x nodes) and 'names'"
                    )
                matrix = data["matrix"]
                stored = [str(s) for s in data["names"].tolist()] if "names" in data else None
                if "kind" in data:
                    file_kind = str(data["kind"])
        elif ext == ".npy":
            matrix = np.load(p, allow_pickle=False)
            stored = None
        elif ext == ".csv":
            stored, matrix = _read_csv_field(p)
        else:
            raise InputFileError(f"{p}: unknown lead-field format {ext!r}; use .npz, .npy or .csv")
    except (OSError, ValueError) as err:
        if isinstance(err, CdtBayesError):
            raise
        raise InputFileError(f"{p}: cannot read lead field ({err})") from None
    row_names = list(names) if names is not None else stored
    if row_names is None:
        raise InputFileError(
            f"{p}: the file has no row names; pass names=[...] or use .npz with arrays 'matrix' "
            "and 'names', or a .csv"
        )
    kind = file_kind if (kind == "auto" and file_kind is not None) else kind
    if kind == "auto":
        is_el = all(e in row_names for e in LIMB_ELECTRODES) and not any(
            n in LIMB_LEADS for n in row_names
        )
        kind = "electrodes" if is_el else "leads"
    try:
        if kind == "electrodes":
            return LeadField.from_electrode_field(row_names, matrix, leads=leads, n_nodes=n_nodes)
        if kind == "leads":
            lf = LeadField.from_matrix(row_names, matrix, n_nodes=n_nodes)
            return lf if leads is None else lf.select(leads)
    except CdtBayesError as err:
        raise InputFileError(f"{p}: {err}") from None
    raise InputFileError(f"{p}: kind must be 'auto', 'electrodes' or 'leads', got {kind!r}")


# --------------------------------------------------------------------------------------------
# V_m template and ECG (JAX)
# --------------------------------------------------------------------------------------------


def transmembrane_potential(T, t, v0: float = -80.0, v1: float = 20.0, eps: float = 1.0):
    """Tanh action-potential upstroke ``V_m = v0 + (v1 - v0)/2 (1 + tanh((t - T)/eps))``.

    Parameters
    ----------
    T : (n_nodes,) float
        Activation times, ms.
    t : (n_times,) float
        Sample times, ms.
    v0, v1 : float
        Resting and plateau potentials, mV.
    eps : float
        Upstroke time scale, ms.

    Returns
    -------
    (n_nodes, n_times) jax.Array
        Transmembrane potential, mV.
    """
    T = jnp.asarray(T)
    t = jnp.asarray(t)
    s = jnp.tanh((t[None, :] - T[:, None]) / eps)
    return v0 + 0.5 * (v1 - v0) * (1.0 + s)


def simulate_ecg(
    activation_ms,
    lead_matrix,
    times_ms,
    eps_ms: float = 1.0,
    v0: float = -80.0,
    v1: float = 20.0,
):
    """ECG of an activation map: ``(v1 - v0)/2 * L @ tanh((t - T) / eps)``.

    Since ``L @ 1 = 0`` (constants are in the kernel of ``K``), the constant part
    ``v0 + (v1 - v0)/2`` of the V_m template contributes nothing and is dropped exactly:
    ``L @ V_m(t) = (v1 - v0)/2 * L @ tanh((t - T)/eps)``. Working with ``tanh`` (values in
    [-1, 1], saturating without overflow, derivative ``1 - tanh^2`` finite everywhere) instead
    of V_m (magnitudes ~80 mV that cancel to ~1 mV) avoids float32 cancellation. The whole ECG
    is one ``(n_leads, n_nodes) @ (n_nodes, n_times)`` product at full float32 precision
    (``Precision.HIGHEST``: no TF32/bf16 on GPUs). Pure JAX: jit-able, vmap-able over
    activation maps, differentiable in every argument.

    Parameters
    ----------
    activation_ms : (n_nodes,) float
        Activation time T of every node, ms.
    lead_matrix : (n_leads, n_nodes) float array or LeadField
        Lead field (rows summing to zero), dimensionless.
    times_ms : (n_times,) float
        Sample times, ms (e.g. :func:`ecg_time_grid`).
    eps_ms : float
        Upstroke time scale, ms.
    v0, v1 : float
        Resting and plateau transmembrane potentials, mV.

    Returns
    -------
    (n_leads, n_times) jax.Array
        Lead voltages, mV; float32 unless an input is float64 (with x64 enabled).
    """
    if isinstance(lead_matrix, LeadField):
        lead_matrix = lead_matrix.matrix
    T = jnp.asarray(activation_ms)
    L = jnp.asarray(lead_matrix)
    t = jnp.asarray(times_ms)
    dtype = jnp.result_type(T.dtype, L.dtype, t.dtype, jnp.float32)
    T, L, t = T.astype(dtype), L.astype(dtype), t.astype(dtype)
    s = jnp.tanh((t[None, :] - T[:, None]) / eps_ms)  # (n_nodes, n_times)
    ecg = jnp.matmul(L, s, precision=jax.lax.Precision.HIGHEST)
    return (0.5 * (v1 - v0)) * ecg


def ecg_time_grid(
    activation_ms,
    margin_ms: float | None = None,
    eps_ms: float = 1.0,
    dt_ms: float = 1.0,
) -> np.ndarray:
    """Sample times from 0 to the end of the QRS complex.

    The last sample is ``ceil(max T) + margin_ms``; the default margin, ``10 * eps_ms``
    (:data:`DEFAULT_MARGIN_EPS`), lets the slowest upstroke settle: ``1 - tanh(10)`` is 4e-9,
    so the ECG has returned to zero (relative to its peak) by the last sample.

    Parameters
    ----------
    activation_ms : (n_nodes,) float
        Activation times, ms (concrete values, not traced).
    margin_ms : float, optional
        Time after the last activation, ms. Default ``10 * eps_ms``.
    eps_ms : float
        Upstroke time scale of the template, ms.
    dt_ms : float
        Sampling step, ms.

    Returns
    -------
    (n_times,) float64 ndarray
        ``0, dt, 2 dt, ..., ceil(max T) + margin`` in ms.

    Raises
    ------
    CdtBayesError
        Non-finite activation times or a non-positive step.
    """
    T = np.asarray(activation_ms, dtype=np.float64)
    if T.size == 0 or not np.isfinite(T).all():
        raise CdtBayesError("activation times must be a non-empty array of finite values (ms)")
    if not dt_ms > 0:
        raise CdtBayesError(f"dt_ms must be positive, got {dt_ms}")
    margin = DEFAULT_MARGIN_EPS * float(eps_ms) if margin_ms is None else float(margin_ms)
    end = max(math.ceil(float(T.max())), 0) + margin
    return np.arange(0.0, end + 0.5 * dt_ms, dt_ms)
