"""Geometry: the :class:`Mesh` container and the subendocardial layer.

Units: millimetres everywhere. Surface labels (point data ``surface``):
0 interior, 1 LV endocardium, 2 RV endocardium, 3 epicardium, 4 base.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from scipy.spatial import cKDTree

from ._errors import InputFileError, MeshError

__all__ = [
    "INTERIOR",
    "LV_ENDO",
    "RV_ENDO",
    "EPI",
    "BASE",
    "Mesh",
    "tet_volumes",
    "boundary_faces",
    "closest_point_on_triangles",
    "points_to_triangles",
    "endo_distance",
    "endo_distance_by_side",
    "admissible_sites",
    "locate_points",
    "check_points_inside",
    "refine_mesh",
]

INTERIOR, LV_ENDO, RV_ENDO, EPI, BASE = 0, 1, 2, 3, 4


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mesh:
    """A tetrahedral ventricular mesh (a JAX pytree; all arrays are NumPy or JAX).

    Parameters
    ----------
    nodes : (n_nodes, 3) float
        Node coordinates, mm.
    tets : (n_tets, 4) int
        Vertex indices of each tetrahedron, positively oriented (volume > 0).
    fibres : (n_tets, 3) float or None
        Unit fibre direction per tetrahedron. ``None``: isotropic conduction.
    sheets : (n_tets, 3) float or None
        Unit sheet direction per tetrahedron (optional).
    surface : (n_nodes,) int or None
        Surface label per node (0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base).
    node_fibres : (n_nodes, 3) float or None
        Fibre direction per node, as read from point data (kept for output).
    """

    nodes: np.ndarray
    tets: np.ndarray
    fibres: np.ndarray | None = None
    sheets: np.ndarray | None = None
    surface: np.ndarray | None = None
    node_fibres: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        """Number of nodes."""
        return int(self.nodes.shape[0])

    @property
    def n_tets(self) -> int:
        """Number of tetrahedra."""
        return int(self.tets.shape[0])

    def replace(self, **kw) -> Mesh:
        """Return a copy with some fields replaced."""
        return dataclasses.replace(self, **kw)


def tet_volumes(nodes: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Signed volumes of tetrahedra, mm^3, shape ``(n_tets,)``."""
    x = np.asarray(nodes)[np.asarray(tets)]
    e = x[:, 1:] - x[:, :1]
    return np.einsum("ij,ij->i", e[:, 0], np.cross(e[:, 1], e[:, 2])) / 6.0


def _raise(name: str, msg: str):
    raise MeshError(f"{name}: {msg}")


# --------------------------------------------------------------------------------------
# Faces and boundary
# --------------------------------------------------------------------------------------

# Local faces of a tet, each opposite local vertex 0, 1, 2, 3 and ordered so that its
# right-hand normal points out of a positively oriented tet.
_LOCAL_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])


def _face_ids(tets: np.ndarray, n_nodes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All ``4 n_tets`` oriented faces and an integer id shared by coincident faces.

    Returns
    -------
    faces : (4 n_tets, 3) int64
        Faces in tet-major order (``faces[4 e + a]`` is opposite local vertex ``a`` of tet ``e``).
    inverse : (4 n_tets,) int64
        ``inverse[i] == inverse[j]`` iff faces ``i`` and ``j`` have the same three nodes.
    """
    tets = np.asarray(tets, dtype=np.int64)
    faces = tets[:, _LOCAL_FACES].reshape(-1, 3)
    s = np.sort(faces, axis=1)
    n = int(n_nodes if n_nodes is not None else (tets.max() + 1 if tets.size else 1))
    if n < 2**20:  # n^3 < 2^60: one int64 key per face
        keys = (s[:, 0] * n + s[:, 1]) * n + s[:, 2]
        _, inverse = np.unique(keys, return_inverse=True)
    else:
        _, inverse = np.unique(s, axis=0, return_inverse=True)
    return faces, inverse.reshape(-1)


def boundary_faces(tets: np.ndarray, return_tets: bool = False):
    """Faces used by exactly one tetrahedron.

    Parameters
    ----------
    tets : (n_tets, 4) int
        Vertex indices, positively oriented.
    return_tets : bool
        Also return the index of the tet that owns each face.

    Returns
    -------
    faces : (n_faces, 3) int64
        Boundary triangles, oriented with outward right-hand normals (for positively
        oriented tets).
    owner : (n_faces,) int64
        Only when ``return_tets``: the tet each face belongs to.
    """
    faces, inverse = _face_ids(tets)
    counts = np.bincount(inverse)
    mask = counts[inverse] == 1
    if return_tets:
        return faces[mask], np.nonzero(mask)[0] // 4
    return faces[mask]


# --------------------------------------------------------------------------------------
# Uniform refinement
# --------------------------------------------------------------------------------------

# The eight children of a tet (v0, v1, v2, v3) in the local numbering 0-3 (vertices) and
# 4-9 (midpoints of edges 01, 02, 03, 12, 13, 23): four corner tets, then the inner
# octahedron cut along its diagonal 02-13 (midpoints 5 and 8).
_EDGES = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
_CHILDREN = np.array(
    [
        [0, 4, 5, 6], [4, 1, 7, 8], [5, 7, 2, 9], [6, 8, 9, 3],
        [5, 8, 4, 7], [5, 8, 7, 9], [5, 8, 9, 6], [5, 8, 6, 4],
    ]
)


def refine_mesh(mesh: Mesh, levels: int = 1) -> Mesh:
    """Uniform (red) refinement: every tet split into 8 by its edge midpoints.

    Each level adds one node per edge and multiplies the tets by 8, halving the edge
    length ``h``: the built-in coarse heart (5,097 nodes) has 32,838 nodes after one level
    and 230,267 after two. The geometry is unchanged (children fill their parent exactly),
    so the refined mesh is for convergence studies of the solvers and for benchmarks at
    patient-mesh sizes.

    Data: children keep their parent's fibre and sheet; a new node's point fibre is the
    normalised sum of its edge's end fibres (sign-aligned: fibres are axes). A new node's
    ``surface`` label: on a boundary edge, the ends' label when they agree, the smaller
    one when both are labelled but differ (a rim, e.g. endocardium and base), else 0; on an
    interior edge, 0 (interior).

    Parameters
    ----------
    mesh : Mesh
    levels : int
        Number of refinements (≥ 0).

    Returns
    -------
    Mesh
        Positively oriented tets; nodes are the old ones followed by the new midpoints.
    """
    if int(levels) != levels or levels < 0:
        raise ValueError(f"levels must be a non-negative integer, got {levels!r}")
    for _ in range(int(levels)):
        mesh = _refine_once(mesh)
    return mesh


def _refine_once(mesh: Mesh) -> Mesh:
    nodes = np.asarray(mesh.nodes, np.float64)
    tets = np.asarray(mesh.tets, np.int64)
    n = nodes.shape[0]
    ends = np.sort(tets[:, _EDGES].reshape(-1, 2), axis=1)  # (6 n_tets, 2)
    edges, inverse = np.unique(ends[:, 0] * n + ends[:, 1], return_inverse=True)
    a, b = edges // n, edges % n
    new_nodes = np.concatenate([nodes, 0.5 * (nodes[a] + nodes[b])])
    local = np.concatenate([tets, n + inverse.reshape(-1, 6)], axis=1)  # (n_tets, 10)
    children = local[:, _CHILDREN].reshape(-1, 4)
    flip = tet_volumes(new_nodes, children) < 0
    children[flip] = children[flip][:, [0, 2, 1, 3]]

    def per_child(x):
        return None if x is None else np.repeat(np.asarray(x), 8, axis=0)

    surface = None
    if mesh.surface is not None:
        lab = np.asarray(mesh.surface)
        la, lb = lab[a], lab[b]
        bf = np.sort(boundary_faces(tets), axis=1)
        bedge = np.unique(np.concatenate([bf[:, [0, 1]], bf[:, [0, 2]], bf[:, [1, 2]]]) @ np.array([n, 1]))
        on_boundary = np.isin(edges, bedge)
        mid = np.where(la == lb, la, np.where((la > 0) & (lb > 0), np.minimum(la, lb), 0))
        surface = np.concatenate([lab, np.where(on_boundary, mid, 0).astype(lab.dtype)])
    node_fibres = None
    if mesh.node_fibres is not None:
        f = np.asarray(mesh.node_fibres, np.float64)
        fa, fb = f[a], f[b]
        s = np.where(np.einsum("ij,ij->i", fa, fb) < 0, -1.0, 1.0)[:, None]
        m = fa + s * fb
        norm = np.linalg.norm(m, axis=1, keepdims=True)
        m = np.where(norm > 1e-12, m / np.maximum(norm, 1e-12), fa)
        node_fibres = np.concatenate([f, m]).astype(np.asarray(mesh.node_fibres).dtype)
    return Mesh(
        nodes=new_nodes.astype(np.asarray(mesh.nodes).dtype),
        tets=children.astype(np.asarray(mesh.tets).dtype),
        fibres=per_child(mesh.fibres),
        sheets=per_child(mesh.sheets),
        surface=surface,
        node_fibres=node_fibres,
    )


# --------------------------------------------------------------------------------------
# Exact point-to-triangle distances
# --------------------------------------------------------------------------------------


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def closest_point_on_triangles(
    p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray
) -> np.ndarray:
    """Closest point to ``p`` on triangle ``(a, b, c)``, elementwise (Ericson, RTCD 5.1.5).

    Parameters
    ----------
    p, a, b, c : (..., 3) float
        Query points and triangle vertices (broadcast together), mm.

    Returns
    -------
    (..., 3) float
        The closest point of each (closed) triangle, mm. Degenerate triangles are handled
        by the vertex/edge regions.
    """
    p, a, b, c = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (p, a, b, c)))
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe(num, den):
        ok = den != 0
        return np.where(ok, num / np.where(ok, den, 1.0), 0.0)[..., None]

    # Interior (face region), then override by edge/vertex regions in reverse priority.
    den = va + vb + vc
    res = a + ab * safe(vb, den) + ac * safe(vc, den)
    e43, e56 = d4 - d3, d5 - d6
    m = (va <= 0) & (e43 >= 0) & (e56 >= 0)  # edge BC
    res = np.where(m[..., None], b + (c - b) * safe(e43, e43 + e56), res)
    m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)  # edge AC
    res = np.where(m[..., None], a + ac * safe(d2, d2 - d6), res)
    m = (d6 >= 0) & (d5 <= d6)  # vertex C
    res = np.where(m[..., None], c, res)
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)  # edge AB
    res = np.where(m[..., None], a + ab * safe(d1, d1 - d3), res)
    m = (d3 >= 0) & (d4 <= d3)  # vertex B
    res = np.where(m[..., None], b, res)
    m = (d1 <= 0) & (d2 <= 0)  # vertex A
    res = np.where(m[..., None], a, res)
    return res


_MAX_PAIRS = 1 << 19  # (point, candidate) pairs evaluated per chunk


def _chunks(n_rows: int, k: int):
    step = max(1, _MAX_PAIRS // max(k, 1))
    for i in range(0, n_rows, step):
        yield slice(i, min(i + step, n_rows))


def points_to_triangles(points: np.ndarray, tri_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean distance from each point to a set of triangles.

    Candidates are the triangles with the ``k`` nearest centroids (``scipy.spatial.cKDTree``);
    ``k`` doubles for the points whose result is not yet provably exact, i.e. while the best
    distance found exceeds ``|p - c_k| - R`` (``c_k``: the k-th nearest centroid, ``R``: the
    largest centroid-to-vertex distance of any triangle).

    Parameters
    ----------
    points : (n_points, 3) float
        Query points, mm.
    tri_xyz : (n_tri, 3, 3) float
        Triangle vertex coordinates, mm.

    Returns
    -------
    dist : (n_points,) float64
        Distance to the nearest triangle, mm.
    tri : (n_points,) int64
        Index of a nearest triangle.
    """
    p_all = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    tri_xyz = np.asarray(tri_xyz, dtype=np.float64).reshape(-1, 3, 3)
    n_p, n_t = p_all.shape[0], tri_xyz.shape[0]
    if n_t == 0:
        raise ValueError("points_to_triangles: no triangles")
    cen = tri_xyz.mean(axis=1)
    r_max = float(np.linalg.norm(tri_xyz - cen[:, None], axis=-1).max())
    tree = cKDTree(cen)
    best = np.full(n_p, np.inf)
    best_t = np.zeros(n_p, dtype=np.int64)
    active = np.arange(n_p)
    k = min(16, n_t)
    while active.size:
        d_c, idx = tree.query(p_all[active], k=k)
        d_c, idx = d_c.reshape(active.size, k), idx.reshape(active.size, k)
        for sl in _chunks(active.size, k):
            rows = active[sl]
            t = tri_xyz[idx[sl]]  # (r, k, 3, 3)
            q = closest_point_on_triangles(p_all[rows][:, None], t[:, :, 0], t[:, :, 1], t[:, :, 2])
            d = np.linalg.norm(q - p_all[rows][:, None], axis=-1)
            j = np.argmin(d, axis=1)
            dj = d[np.arange(len(rows)), j]
            better = dj < best[rows]
            best[rows[better]] = dj[better]
            best_t[rows[better]] = idx[sl][np.arange(len(rows)), j][better]
        done = (best[active] <= d_c[:, -1] - r_max) | (k >= n_t)
        active = active[~done]
        k = min(2 * k, n_t)
    return best, best_t


# --------------------------------------------------------------------------------------
# Subendocardial layer
# --------------------------------------------------------------------------------------

_SIDES = {"both": (LV_ENDO, RV_ENDO), "lv": (LV_ENDO,), "rv": (RV_ENDO,)}


def _endo_labels(mesh: Mesh, side: str, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    if side not in _SIDES:
        raise ValueError(f"side must be one of {sorted(_SIDES)}, got {side!r}")
    labels = _SIDES[side]
    how = (
        "supply point data 'surface' (1 LV endocardium, 2 RV endocardium) in the mesh file "
        "or pass --endo-lv FILE / --endo-rv FILE (node lists or surface meshes)"
    )
    if mesh.surface is None:
        _raise(name, f"the mesh has no endocardial labels; {how}")
    surface = np.asarray(mesh.surface)
    is_endo = np.isin(surface, labels)
    if not is_endo.any():
        what = {"both": "endocardial", "lv": "LV endocardial", "rv": "RV endocardial"}[side]
        _raise(
            name,
            f"the mesh has no {what} nodes (point data 'surface' == "
            f"{' or '.join(map(str, labels))}); {how}",
        )
    return is_endo, labels


def endo_distance(mesh: Mesh, side: str = "both", name: str = "mesh") -> np.ndarray:
    """Euclidean distance from each node to the endocardial surface.

    The endocardium is the set of boundary triangles whose three nodes carry endocardial
    labels (``surface`` 1 = LV, 2 = RV), plus any labelled nodes not on such a triangle.
    Distances are exact point-to-triangle distances (not graph or node distances).

    Parameters
    ----------
    mesh : Mesh
        Validated mesh with ``surface`` labels.
    side : {"both", "lv", "rv"}
        Which endocardium: both ventricles, LV only or RV only.
    name : str
        Mesh name used in error messages (e.g. the file name).

    Returns
    -------
    (n_nodes,) float64
        Distance, mm (0 on labelled nodes).

    Raises
    ------
    MeshError
        If the mesh has no labels for the requested side.
    """
    is_endo, labels = _endo_labels(mesh, side, name)
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    dist, _ = cKDTree(nodes[is_endo]).query(nodes)
    faces = boundary_faces(np.asarray(mesh.tets))
    tri = faces[is_endo[faces].all(axis=1)]
    if tri.shape[0]:
        dist = np.minimum(dist, points_to_triangles(nodes, nodes[tri])[0])
    dist[is_endo] = 0.0
    return dist


def endo_distance_by_side(mesh: Mesh, name: str = "mesh") -> tuple[np.ndarray, np.ndarray]:
    """Distances to the LV and to the RV endocardium, each ``(n_nodes,)`` mm.

    A side without labelled nodes gives an array of ``inf``.
    """
    surface = None if mesh.surface is None else np.asarray(mesh.surface)
    _endo_labels(mesh, "both", name)  # at least one side must be labelled
    out = []
    for side, lab in (("lv", LV_ENDO), ("rv", RV_ENDO)):
        if (surface == lab).any():
            out.append(endo_distance(mesh, side, name))
        else:
            out.append(np.full(mesh.n_nodes, np.inf))
    return out[0], out[1]


def admissible_sites(
    mesh: Mesh, depth_mm: float = 2.5, side: str = "both", name: str = "mesh"
) -> np.ndarray:
    """Nodes of the subendocardial layer: within ``depth_mm`` of the endocardium.

    Parameters
    ----------
    mesh : Mesh
        Mesh with ``surface`` labels (1 LV endo, 2 RV endo).
    depth_mm : float
        Layer depth, mm (>= 0).
    side : {"both", "lv", "rv"}
        Which endocardium.
    name : str
        Mesh name used in error messages.

    Returns
    -------
    (n_sites,) int64
        Sorted node indices.

    Raises
    ------
    MeshError
        If the mesh has no endocardial labels; the message says how to supply them
        (point data ``surface`` or ``--endo-lv`` / ``--endo-rv``).
    """
    if not np.isfinite(depth_mm) or depth_mm < 0:
        raise MeshError(f"depth_mm: must be a finite number >= 0, got {depth_mm!r}")
    d = endo_distance(mesh, side, name)
    return np.nonzero(d <= depth_mm)[0].astype(np.int64)


# --------------------------------------------------------------------------------------
# Point location
# --------------------------------------------------------------------------------------


def locate_points(
    mesh: Mesh, points: np.ndarray, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Find the tetrahedron containing each point and its barycentric coordinates.

    Candidate tets are those with the ``k`` nearest centroids (``cKDTree``); ``k`` doubles
    for unresolved points until a containing tet is found or every tet whose centroid lies
    within the largest tet radius has been checked, so the search is exact.

    Parameters
    ----------
    mesh : Mesh
        Mesh with positively oriented, non-degenerate tets.
    points : (k, 3) float
        Query points, mm.
    tol : float
        Tolerance on barycentric coordinates (dimensionless): a point is inside when all
        four are ``>= -tol``.

    Returns
    -------
    tet_index : (k,) int64
        Containing tet; for points outside, the candidate tet with the largest minimum
        barycentric coordinate.
    bary : (k, 4) float64
        Barycentric coordinates in that tet (sum to 1; negative entries when outside).
    inside : (k,) bool
        Whether the point lies in the mesh (within ``tol``).
    """
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    tets = np.asarray(mesh.tets, dtype=np.int64)
    p_all = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n_p, n_t = p_all.shape[0], tets.shape[0]
    x = nodes[tets]
    cen = x.mean(axis=1)
    r_max = float(np.linalg.norm(x - cen[:, None], axis=-1).max())
    tinv = np.linalg.inv(np.transpose(x[:, 1:] - x[:, :1], (0, 2, 1)))  # (n_tets, 3, 3)
    x0 = x[:, 0]
    tree = cKDTree(cen)
    best_min = np.full(n_p, -np.inf)
    best_t = np.zeros(n_p, dtype=np.int64)
    best_l = np.zeros((n_p, 4))
    active = np.arange(n_p)
    k = min(8, n_t)
    while active.size:
        d_c, idx = tree.query(p_all[active], k=k)
        d_c, idx = d_c.reshape(active.size, k), idx.reshape(active.size, k)
        for sl in _chunks(active.size, k):
            rows, cand = active[sl], idx[sl]
            rel = p_all[rows][:, None] - x0[cand]
            l123 = np.einsum("rkij,rkj->rki", tinv[cand], rel)
            lam = np.concatenate([1.0 - l123.sum(-1, keepdims=True), l123], axis=-1)
            mins = lam.min(-1)
            j = np.argmax(mins, axis=1)
            r = np.arange(len(rows))
            better = mins[r, j] > best_min[rows]
            best_min[rows[better]] = mins[r, j][better]
            best_t[rows[better]] = cand[r, j][better]
            best_l[rows[better]] = lam[r, j][better]
        done = (best_min[active] >= -tol) | (d_c[:, -1] > r_max) | (k >= n_t)
        active = active[~done]
        k = min(2 * k, n_t)
    return best_t, best_l, best_min >= -tol


def check_points_inside(
    mesh: Mesh, points: np.ndarray, name: str, tol_mm: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Locate points and reject those farther than ``tol_mm`` from the mesh.

    Parameters
    ----------
    mesh : Mesh
        Validated mesh.
    points : (k, 3) float
        Points, mm (e.g. PMJ positions read from ``name``).
    name : str
        File or option the points came from, used in the error message.
    tol_mm : float
        Largest accepted distance outside the mesh, mm.

    Returns
    -------
    tet_index, bary, inside
        As :func:`locate_points`. Points outside but within ``tol_mm`` have
        ``inside == False`` and slightly negative barycentric coordinates; clip them
        to ``[0, 1]`` and renormalise to snap onto the mesh.

    Raises
    ------
    InputFileError
        ``"name: row r: point (x, y, z) mm lies outside the mesh (d mm away)"``; rows are
        1-based data rows. The first offending row is named, with the count of others.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(p).all():
        r = int(np.nonzero(~np.isfinite(p).all(axis=1))[0][0])
        raise InputFileError(f"{name}: row {r + 1}: point coordinates are NaN or infinite")
    tet, bary, inside = locate_points(mesh, p)
    out = np.nonzero(~inside)[0]
    if out.size:
        nodes = np.asarray(mesh.nodes, dtype=np.float64)
        faces = boundary_faces(np.asarray(mesh.tets))
        d, _ = points_to_triangles(p[out], nodes[faces])
        bad = out[d > tol_mm]
        if bad.size:
            r = int(bad[0])
            dist = float(d[d > tol_mm][0])
            x, y, z = p[r]
            more = f"; {bad.size - 1} more rows are outside too" if bad.size > 1 else ""
            raise InputFileError(
                f"{name}: row {r + 1}: point ({x:.3f}, {y:.3f}, {z:.3f}) mm lies outside the "
                f"mesh ({dist:.3g} mm away; tolerance {tol_mm:g} mm){more}; check that it uses "
                "mm and the mesh's coordinate frame"
            )
    return tet, bary, inside
