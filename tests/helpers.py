"""Small meshes and utilities shared by the tests."""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["box_mesh", "box_surface_labels", "write_opencarp"]

# The 6 permutations of the axes; each gives one tet of the Kuhn (Freudenthal) split of a
# unit cube: 000 -> +e_p0 -> +e_p1 -> +e_p2 = 111, all sharing the main diagonal.
_PERMS = np.array(list(itertools.permutations(range(3))))
_PARITY = np.array([1, -1, -1, 1, 1, -1])  # sign of each permutation above


def box_mesh(n=(4, 4, 4), size=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Tetrahedral mesh of the box ``[0, size_x] x [0, size_y] x [0, size_z]`` (mm).

    Parameters
    ----------
    n : int or (3,) int
        Number of cells along x, y, z (the grid has ``(n_x+1)(n_y+1)(n_z+1)`` nodes).
    size : float or (3,) float
        Box edge lengths, mm.

    Returns
    -------
    nodes : (n_nodes, 3) float64
        Grid nodes, x varying fastest: node ``i + (n_x+1) (j + (n_y+1) k)`` is at
        ``(i h_x, j h_y, k h_z)``.
    tets : (6 n_x n_y n_z, 4) int64
        Kuhn split of every cell into 6 tets around its main diagonal; conforming and
        positively oriented.
    """
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), (3,))
    size = np.broadcast_to(np.asarray(size, dtype=np.float64), (3,))
    nx, ny, nz = (int(v) for v in n)
    ax = [np.linspace(0.0, float(size[d]), int(n[d]) + 1) for d in range(3)]
    z, y, x = np.meshgrid(ax[2], ax[1], ax[0], indexing="ij")
    nodes = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    stride = np.array([1, nx + 1, (nx + 1) * (ny + 1)])
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    base = i.ravel() * stride[0] + j.ravel() * stride[1] + k.ravel() * stride[2]  # (cells,)
    steps = stride[_PERMS]  # (6, 3): node offset of each step
    offs = np.concatenate([np.zeros((6, 1), np.int64), np.cumsum(steps, axis=1)], axis=1)
    tets = (base[:, None, None] + offs[None]).reshape(-1, 4)
    odd = np.tile(_PARITY < 0, base.size)
    tets[odd] = tets[odd][:, [0, 2, 1, 3]]
    return nodes, tets.astype(np.int64)


def box_surface_labels(nodes: np.ndarray, axis: int = 0, value: float = 0.0, label: int = 1):
    """Surface labels ``(n_nodes,)`` int32: ``label`` where ``nodes[:, axis] == value``, else 0."""
    lab = np.zeros(nodes.shape[0], np.int32)
    lab[np.isclose(nodes[:, axis], value)] = label
    return lab


def write_opencarp(base, nodes_um, tets, fibres=None, sheets=None, region=True):
    """Write ``base.pts`` (µm), ``base.elem`` and optionally ``base.lon`` (openCARP formats)."""
    base = str(base)
    with open(base + ".pts", "w") as f:
        f.write(f"{len(nodes_um)}\n")
        np.savetxt(f, nodes_um, fmt="%.6f")
    with open(base + ".elem", "w") as f:
        f.write(f"{len(tets)}\n")
        for e, t in enumerate(tets):
            f.write("Tt " + " ".join(map(str, t)) + (f" {e % 3}" if region else "") + "\n")
    if fibres is not None:
        vec = fibres if sheets is None else np.concatenate([fibres, sheets], axis=1)
        with open(base + ".lon", "w") as f:
            f.write(f"{1 if sheets is None else 2}\n")
            np.savetxt(f, vec, fmt="%.8f")
