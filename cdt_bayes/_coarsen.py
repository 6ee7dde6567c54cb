"""A coarser inference mesh for a large patient mesh, and the map back to it.

The inference's cost grows with the mesh: the distance dictionary takes one eikonal solve
per site, and a solve's cost grows as (number of tets) × (number of sweeps) ~ h⁻⁴ in the
edge length h. On a 37k-node / 191k-tet patient mesh one solve takes ~3 s on a 2-core
CPU, so the ~1,000 sites of the default spacing take about an hour; on a ~5k-node mesh
the whole dictionary takes seconds. :func:`coarsen_mesh` therefore builds an inference
mesh at about the built-in default's resolution from the user's mesh, and
:class:`MeshMap` carries activation maps from it back to the user's nodes for display and
for the outputs of ``cdt-bayes fit``.

Construction (NumPy/SciPy only, deterministic):

1. Nodes: a subset of the mesh's own nodes, one per occupied ``spacing_mm`` voxel (the node
   nearest the voxel's mean), chosen separately on the boundary (so that the surfaces, and
   with them the endocardial labels, are sampled) and inside (interior picks within half a
   spacing of a boundary pick are dropped).
2. Tets: the Delaunay tetrahedralisation of those nodes, carved to the mesh: a tet is kept
   when its centroid lies inside the original mesh (tets spanning a cavity, or the groove
   between the ventricles, have their centroid outside). Flat tets (volume below 10⁻³ of the
   median) are dropped, all tets are oriented positively, and only the largest connected
   part is kept.
3. Data: ``surface`` labels and point fibres are those of the chosen nodes; each tet's fibre
   and sheet are those of the original tet holding its centroid.

Units: mm.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay, cKDTree

from ._errors import MeshError
from ._geometry import Mesh, boundary_faces, locate_points, tet_volumes

__all__ = ["MeshMap", "coarsen_mesh", "inference_mesh", "AUTO_MAX_NODES", "AUTO_SPACING_MM"]

#: ``inference_mesh("auto")`` coarsens meshes with more nodes than this.
AUTO_MAX_NODES = 12_000
#: Node spacing (mm) of the automatic inference mesh: the built-in default's resolution.
AUTO_SPACING_MM = 3.5


@dataclasses.dataclass(frozen=True)
class MeshMap:
    """Linear interpolation from the nodes of an inference mesh to those of a display mesh.

    Attributes
    ----------
    index : (n_display, 4) int
        Inference-mesh nodes (the vertices of one inference tet) for each display node.
    weight : (n_display, 4) float
        Their barycentric weights, float64 (non-negative, summing to 1; clipped for display nodes
        just outside the inference mesh).
    n_source : int
        Number of inference-mesh nodes.
    """

    index: np.ndarray
    weight: np.ndarray
    n_source: int

    @property
    def n_target(self) -> int:
        """Number of display-mesh nodes."""
        return int(self.index.shape[0])

    def apply(self, values, chunk: int = 64) -> np.ndarray:
        """Interpolate nodal values to the display nodes.

        Parameters
        ----------
        values : (..., n_source) array
            E.g. activation maps in ms, any leading batch shape (chains, draws).
        chunk : int
            Leading rows interpolated at a time (bounds the temporary memory).

        Returns
        -------
        (..., n_target) float32
        """
        v = np.asarray(values)
        if v.shape[-1] != self.n_source:
            raise ValueError(
                f"values have {v.shape[-1]} nodes on the last axis, expected {self.n_source}"
            )
        lead = v.shape[:-1]
        flat = v.reshape(-1, self.n_source)
        out = np.empty((flat.shape[0], self.n_target), np.float32)
        for i in range(0, flat.shape[0], chunk):
            out[i : i + chunk] = np.einsum(
                "rnk,nk->rn", flat[i : i + chunk][:, self.index], self.weight
            )
        return out.reshape(lead + (self.n_target,))

    def pull_back(self, matrix) -> np.ndarray:
        """The transpose map: a linear functional on display nodes as one on source nodes.

        For a lead field ``L`` (``ecg = L @ V``) on the display mesh, ``pull_back(L) @ V_c``
        equals ``L @ (P V_c)``, the lead applied to the interpolated source values. Rows
        that sum to zero keep summing to zero (the weights of each display node sum to 1).

        Parameters
        ----------
        matrix : (n_rows, n_target) array

        Returns
        -------
        (n_rows, n_source) float64
        """
        m = np.asarray(matrix, np.float64)
        if m.ndim != 2 or m.shape[1] != self.n_target:
            raise ValueError(f"matrix has shape {m.shape}, expected (n_rows, {self.n_target})")
        out = np.zeros((m.shape[0], self.n_source))
        for k in range(4):
            for r in range(m.shape[0]):
                out[r] += np.bincount(
                    self.index[:, k], weights=m[r] * self.weight[:, k], minlength=self.n_source
                )
        return out


def voxel_pick(x: np.ndarray, h: float, origin: np.ndarray) -> np.ndarray:
    """Per occupied voxel of size ``h``, the index of the point nearest the voxel's mean."""
    if x.shape[0] == 0:
        return np.zeros(0, np.int64)
    key = np.floor((x - origin) / h).astype(np.int64)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    n_vox = inv.max() + 1
    centre = np.zeros((n_vox, 3))
    np.add.at(centre, inv, x)
    centre /= np.bincount(inv, minlength=n_vox)[:, None]
    d = np.linalg.norm(x - centre[inv], axis=1)
    order = np.lexsort((d, inv))
    first = np.ones(order.size, bool)
    first[1:] = inv[order][1:] != inv[order][:-1]
    return np.sort(order[first])


def coarsen_mesh(
    mesh: Mesh, spacing_mm: float = AUTO_SPACING_MM, name: str = "mesh"
) -> tuple[Mesh, MeshMap]:
    """An inference mesh with node spacing ``spacing_mm`` carved from ``mesh``, and its map back.

    Parameters
    ----------
    mesh : Mesh
        Validated mesh, mm.
    spacing_mm : float
        Target node spacing of the inference mesh, mm (the built-in default mesh has 3.5).
    name : str
        Used in error messages.

    Returns
    -------
    coarse : Mesh
        Nodes are a subset of ``mesh.nodes``; fibres, sheets, surface labels carried over.
    to_mesh : MeshMap
        Interpolation from ``coarse``'s nodes to ``mesh``'s nodes.

    Raises
    ------
    MeshError
        When the spacing leaves fewer than 4 nodes or no tetrahedron inside the mesh.
    """
    if not spacing_mm > 0:
        raise ValueError(f"spacing_mm must be positive, got {spacing_mm}")
    nodes = np.asarray(mesh.nodes, np.float64)
    tets = np.asarray(mesh.tets, np.int64)
    on_boundary = np.zeros(mesh.n_nodes, bool)
    on_boundary[boundary_faces(tets).ravel()] = True
    origin = nodes.min(0)
    b_idx = np.nonzero(on_boundary)[0]
    i_idx = np.nonzero(~on_boundary)[0]
    pick_b = b_idx[voxel_pick(nodes[b_idx], spacing_mm, origin)]
    pick_i = i_idx[voxel_pick(nodes[i_idx], spacing_mm, origin + 0.5 * spacing_mm)]
    if pick_b.size and pick_i.size:
        d, _ = cKDTree(nodes[pick_b]).query(nodes[pick_i])
        pick_i = pick_i[d >= 0.5 * spacing_mm]
    keep = np.sort(np.concatenate([pick_b, pick_i]))
    if keep.size < 4:
        raise MeshError(
            f"{name}: an inference mesh at {spacing_mm:g} mm spacing has {keep.size} nodes; use a smaller spacing"
        )
    x = nodes[keep]
    simp = Delaunay(x).simplices.astype(np.int64)
    cen = x[simp].mean(1)
    host, _, inside = locate_points(mesh, cen)
    vol = tet_volumes(x, simp)
    big = np.abs(vol) > 1e-3 * np.median(np.abs(vol))
    sel = inside & big
    if not sel.any():
        raise MeshError(
            f"{name}: no tetrahedron of the {spacing_mm:g} mm inference mesh lies inside the mesh"
        )
    simp, host, vol = simp[sel], host[sel], vol[sel]
    neg = vol < 0
    simp[neg] = simp[neg][:, [0, 2, 1, 3]]
    # largest connected part (tets sharing a node)
    n = keep.size
    rows = np.repeat(np.arange(simp.shape[0]), 4)
    inc = coo_matrix((np.ones(rows.size), (rows, simp.ravel())), shape=(simp.shape[0], n)).tocsr()
    n_comp, lab = connected_components(inc.T @ inc, directed=False)
    used = np.zeros(n, bool)
    used[simp.ravel()] = True
    if n_comp > 1:
        sizes = np.bincount(lab[used], minlength=n_comp)
        main = int(np.argmax(sizes))
        dropped = int(used.sum() - sizes[main])
        part = lab[simp[:, 0]] == main
        simp, host = simp[part], host[part]
        if dropped:
            warnings.warn(
                f"{name}: the {spacing_mm:g} mm inference mesh dropped {dropped} nodes in "
                f"{n_comp - 1} small disconnected pieces",
                stacklevel=2,
            )
    used = np.zeros(n, bool)
    used[simp.ravel()] = True
    renum = np.full(n, -1, np.int64)
    renum[used] = np.arange(used.sum())
    chosen = keep[used]
    coarse = Mesh(
        nodes=nodes[chosen],
        tets=renum[simp],
        fibres=None if mesh.fibres is None else np.asarray(mesh.fibres)[host],
        sheets=None if mesh.sheets is None else np.asarray(mesh.sheets)[host],
        surface=None if mesh.surface is None else np.asarray(mesh.surface)[chosen],
        node_fibres=None if mesh.node_fibres is None else np.asarray(mesh.node_fibres)[chosen],
    )
    t_idx, bary, _ = locate_points(coarse, nodes)
    w = np.clip(bary, 0.0, None)
    w /= w.sum(1, keepdims=True)
    return coarse, MeshMap(coarse.tets[t_idx], w, coarse.n_nodes)


def inference_mesh(mesh: Mesh, setting="auto", name: str = "mesh") -> tuple[Mesh, MeshMap | None]:
    """The mesh a fit runs on, for ``cdt-bayes fit --inference-mesh``.

    Parameters
    ----------
    mesh : Mesh
    setting : "auto", "full" or float
        ``"full"``: ``mesh`` itself. A number: :func:`coarsen_mesh` at that spacing (mm).
        ``"auto"``: :func:`coarsen_mesh` at :data:`AUTO_SPACING_MM` when ``mesh`` has more
        than :data:`AUTO_MAX_NODES` nodes and coarsening reduces them, else ``mesh``.

    Returns
    -------
    (inference mesh, map to ``mesh``'s nodes or None when it is ``mesh`` itself)
    """
    if setting == "full":
        return mesh, None
    if setting == "auto":
        if mesh.n_nodes <= AUTO_MAX_NODES:
            return mesh, None
        spacing = AUTO_SPACING_MM
    else:
        spacing = float(setting)
    coarse, to_mesh = coarsen_mesh(mesh, spacing, name=name)
    if setting == "auto" and coarse.n_nodes >= mesh.n_nodes:
        return mesh, None
    return coarse, to_mesh
