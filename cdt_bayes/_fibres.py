"""Rule-based myocardial fibres (after Bayer et al. 2012, simplified).

Three Laplace problems are solved once per mesh with P1 finite elements
(NumPy/SciPy): two transmural ones, from which the transmural coordinate ``phi``
(0 on the LV and RV endocardium, 1 on the epicardium) and its direction are
taken, and an apicobasal one ``psi`` (0 at the apex, 1 on the base). Per
tetrahedron the orthonormal frame

- ``e_t = grad phi / |grad phi|`` (transmural, endo -> epi),
- ``e_l = normalise(grad psi - (grad psi . e_t) e_t)`` (longitudinal, apex -> base),
- ``e_c = e_l x e_t`` (circumferential),

gives the fibre ``f = cos(alpha) e_c + sin(alpha) e_l`` with the helix angle
``alpha = alpha_endo + (alpha_epi - alpha_endo) * phi`` and the sheet ``s = e_t``.

The septum follows Bayer et al.: it is treated as LV wall running from the LV
endocardium (``alpha_endo``) to the RV endocardium (``alpha_epi`` in the LV frame,
which is the same fibre axis as ``alpha_endo`` in the RV frame), so fibres rotate
smoothly through the septum instead of folding at its mid-plane.

Reference: J. D. Bayer, R. C. Blake, G. Plank, N. A. Trayanova, "A novel
rule-based algorithm for assigning myocardial fiber orientation to computational
heart models", Ann. Biomed. Eng. 40 (2012) 2243-2254.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ._errors import MeshError
from ._fem import p1_gradients, stiffness_matrix
from ._geometry import BASE, EPI, LV_ENDO, RV_ENDO, Mesh

__all__ = ["rule_based_fibres", "node_directions", "apex_node"]

_TINY = 1e-12
_REL_TINY = 1e-9  # a direction whose norm is below this fraction of the largest is degenerate
_ABS_TINY = 1e-30


def _normalise(v: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalise ``v`` (shape ``(k, 3)``); rows with (near) zero norm take ``fallback``.

    Returns the normalised rows and a boolean mask of the rows that were degenerate.
    """
    n = np.linalg.norm(v, axis=1, keepdims=True)
    bad = (n[:, 0] <= _REL_TINY * float(np.max(n, initial=0.0))) | (n[:, 0] < _ABS_TINY)
    safe = np.where(bad[:, None], 1.0, n)
    out = np.where(bad[:, None], fallback, v / safe)
    return out, bad


def _any_perpendicular(t: np.ndarray) -> np.ndarray:
    """Return unit vectors perpendicular to the unit rows of ``t`` (shape ``(k, 3)``)."""
    # Cross with the coordinate axis least aligned with t: never degenerate.
    axis = np.eye(3)[np.argmin(np.abs(t), axis=1)]
    p = np.cross(t, axis)
    return p / np.linalg.norm(p, axis=1, keepdims=True)


def _laplace(k: sp.csr_matrix, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Solve ``K u = 0`` with Dirichlet values on ``fixed`` nodes.

    Parameters
    ----------
    k : (n_nodes, n_nodes) sparse
        P1 stiffness matrix (Laplacian).
    fixed : (n_fixed,) int
        Indices of the Dirichlet nodes (unique).
    values : (n_fixed,) float
        Prescribed values on them.

    Returns
    -------
    (n_nodes,) float
        The discrete harmonic function. Parts of the mesh not connected to any
        Dirichlet node get 0 (a tiny diagonal shift keeps the system regular).
    """
    n = k.shape[0]
    is_free = np.ones(n, dtype=bool)
    is_free[fixed] = False
    free = np.flatnonzero(is_free)
    u = np.zeros(n)
    u[fixed] = values
    if free.size == 0:
        return u
    k = k.tocsr()
    kff = k[free][:, free]
    rhs = -(k[free][:, fixed] @ values)
    shift = 1e-12 * float(np.abs(kff.diagonal()).max(initial=1.0))
    kff = (kff + shift * sp.identity(free.size, format="csr")).tocsc()
    u[free] = spla.spsolve(kff, rhs)
    return u


def apex_node(nodes: np.ndarray, surface: np.ndarray) -> int:
    """Index of the apex: the epicardial node farthest from the base.

    The base is the least-squares plane through the base nodes (label 4); when the
    base nodes are (nearly) collinear, the distance to their centroid is used.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    surface : (n_nodes,) int
        Surface labels (0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base).

    Returns
    -------
    int
        Node index of the apex.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    surface = np.asarray(surface)
    base = nodes[surface == BASE]
    epi = np.flatnonzero(surface == EPI)
    centre = base.mean(axis=0)
    _, s, vt = np.linalg.svd(base - centre, full_matrices=False)
    d = nodes[epi] - centre
    if s.size == 3 and s[1] > 1e-6 * s[0]:
        dist = np.abs(d @ vt[2])
    else:
        dist = np.linalg.norm(d, axis=1)
    return int(epi[np.argmax(dist)])


def node_directions(
    n_nodes: int, tets: np.ndarray, dirs: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Average per-tet directions (axes, sign-free) onto the nodes.

    The weighted sum of ``d d^T`` over the tets incident to each node is
    diagonalised; its principal eigenvector, signed to agree with the plain
    weighted sum of ``d``, is the node direction. Sign flips between neighbouring
    tets therefore do not cancel.

    Parameters
    ----------
    n_nodes : int
    tets : (n_tets, 4) int
    dirs : (n_tets, 3) float
        Unit directions per tet.
    weights : (n_tets,) float, optional
        Weights (e.g. tet volumes, mm^3); uniform when omitted.

    Returns
    -------
    (n_nodes, 3) float
        Unit direction per node (nodes without tets get ``(1, 0, 0)``).
    """
    tets = np.asarray(tets)
    dirs = np.asarray(dirs, dtype=np.float64)
    m = tets.shape[0]
    w = np.ones(m) if weights is None else np.abs(np.asarray(weights, dtype=np.float64))
    rows = tets.ravel()
    cols = np.repeat(np.arange(m), 4)
    p = sp.csr_matrix((np.repeat(w, 4), (rows, cols)), shape=(n_nodes, m))
    dd = (dirs[:, :, None] * dirs[:, None, :]).reshape(m, 9)
    t = np.asarray(p @ dd).reshape(n_nodes, 3, 3)
    s = np.asarray(p @ dirs)
    _, vecs = np.linalg.eigh(t)
    v = vecs[:, :, 2]
    sign = np.where(np.einsum("ij,ij->i", v, s) < 0.0, -1.0, 1.0)
    v = v * sign[:, None]
    out, _ = _normalise(v, np.array([1.0, 0.0, 0.0]))
    return out


def rule_based_fibres(
    mesh: Mesh,
    alpha_endo_deg: float = 60.0,
    alpha_epi_deg: float = -60.0,
    name: str = "mesh",
) -> Mesh:
    """Assign rule-based fibres and sheets to a labelled biventricular mesh.

    Parameters
    ----------
    mesh : Mesh
        Tetrahedral mesh (nodes in mm) with point labels ``surface``
        (1 LV endo, 2 RV endo, 3 epi, 4 base; 0 interior). RV labels are optional
        (an LV-only mesh works); LV/RV endocardium, epicardium and base must be labelled.
    alpha_endo_deg : float
        Helix angle on the endocardium, degrees (measured from the circumferential
        direction ``e_c = e_l x e_t`` towards the apex-to-base direction ``e_l``).
    alpha_epi_deg : float
        Helix angle on the epicardium, degrees.
    name : str
        How error messages name the mesh (e.g. its file name).

    Returns
    -------
    Mesh
        A copy with ``fibres`` (n_tets, 3), ``sheets`` (n_tets, 3) and
        ``node_fibres`` (n_nodes, 3) set: unit vectors, fibres orthogonal to sheets,
        all finite.

    Raises
    ------
    MeshError
        If the mesh has no endocardial, epicardial or base labels.

    Notes
    -----
    Two transmural solves: ``phi_l`` (0 on LV endo, 1 on epi and RV endo) and
    ``phi_r`` (0 on RV endo, 1 on epi and LV endo). Each tet takes the one with the
    larger gradient (``phi_l`` in the LV free wall, ``phi_r`` in the RV free wall;
    in the septum both give the same fibre axis since ``phi_r ~ 1 - phi_l``).
    On the free walls this is the transmural coordinate that is 0 on the LV and RV
    endocardium and 1 on the epicardium. Degenerate gradients (e.g. at the apex
    node, where ``grad psi`` is parallel to ``e_t``) fall back to the global
    apex-to-base axis or any perpendicular direction; no NaN is produced.
    """
    if mesh.surface is None:
        raise MeshError(
            f"{name}: no surface labels; supply point data 'surface' or --endo-lv/--endo-rv "
            "(rule-based fibres need the endocardium, epicardium and base)"
        )
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    tets = np.asarray(mesh.tets)
    surface = np.asarray(mesh.surface)
    lv, rv, epi, base = (surface == lab for lab in (LV_ENDO, RV_ENDO, EPI, BASE))
    missing = [
        what
        for what, mask in (
            ("endocardium (1 or 2)", lv | rv),
            ("epicardium (3)", epi),
            ("base (4)", base),
        )
        if not mask.any()
    ]
    if missing:
        raise MeshError(
            f"{name}: no surface labels for the {', '.join(missing)}; supply point data "
            "'surface' (1 LV endo, 2 RV endo, 3 epi, 4 base) or --endo-lv/--endo-rv"
        )

    n = nodes.shape[0]
    k = stiffness_matrix(nodes, tets)
    grads, vol = p1_gradients(nodes, tets)

    def solve(zero: np.ndarray, one: np.ndarray) -> np.ndarray:
        fixed = np.concatenate([np.flatnonzero(zero), np.flatnonzero(one & ~zero)])
        vals = np.concatenate([np.zeros(int(zero.sum())), np.ones(int((one & ~zero).sum()))])
        return _laplace(k, fixed, vals)

    def tet_grad(u: np.ndarray) -> np.ndarray:
        return np.einsum("eai,ea->ei", grads, u[tets])

    # transmural fields (Bayer-style septum), apicobasal field
    fields = []
    if lv.any():
        fields.append(solve(lv, epi | rv))
    if rv.any():
        fields.append(solve(rv, epi | lv))
    apex = apex_node(nodes, surface)
    apex_mask = np.zeros(n, dtype=bool)
    apex_mask[apex] = True
    psi = solve(apex_mask, base & ~apex_mask)

    tg = np.stack([tet_grad(u) for u in fields])  # (n_fields, n_tets, 3)
    tphi = np.stack([u[tets].mean(axis=1) for u in fields])  # (n_fields, n_tets)
    gnorm = np.linalg.norm(tg, axis=2)
    pick = np.argmax(gnorm, axis=0)
    idx = np.arange(tets.shape[0])
    g_t = tg[pick, idx]
    phi = np.clip(tphi[pick, idx], 0.0, 1.0)

    centroids = nodes[tets].mean(axis=1)
    base_centre = nodes[base].mean(axis=0)
    axis_ab = base_centre - nodes[apex]
    axis_ab = axis_ab / max(np.linalg.norm(axis_ab), _TINY)
    # fallback transmural direction: radial from the long axis
    rel = centroids - nodes[apex]
    radial = rel - (rel @ axis_ab)[:, None] * axis_ab
    radial_fb = _any_perpendicular(np.broadcast_to(axis_ab, radial.shape))
    radial, _ = _normalise(radial, radial_fb)
    e_t, _ = _normalise(g_t, radial)

    g_l = tet_grad(psi)
    g_l = g_l - np.einsum("ei,ei->e", g_l, e_t)[:, None] * e_t
    ax = np.broadcast_to(axis_ab, e_t.shape)
    ax_perp = ax - np.einsum("ei,ei->e", ax, e_t)[:, None] * e_t
    ax_perp, _ = _normalise(ax_perp, _any_perpendicular(e_t))
    e_l, _ = _normalise(g_l, ax_perp)
    e_c = np.cross(e_l, e_t)

    alpha = np.deg2rad(alpha_endo_deg + (alpha_epi_deg - alpha_endo_deg) * phi)
    fib = np.cos(alpha)[:, None] * e_c + np.sin(alpha)[:, None] * e_l
    fib = fib / np.linalg.norm(fib, axis=1, keepdims=True)
    node_fib = node_directions(n, tets, fib, vol)
    return mesh.replace(fibres=fib, sheets=e_t, node_fibres=node_fib)
