"""Geometry: the :class:`Mesh` container and the subendocardial layer.

Units: millimetres everywhere. Surface labels (point data ``surface``):
0 interior, 1 LV endocardium, 2 RV endocardium, 3 epicardium, 4 base.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from ._errors import MeshError

__all__ = [
    "INTERIOR",
    "LV_ENDO",
    "RV_ENDO",
    "EPI",
    "BASE",
    "Mesh",
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
