"""Test helpers for the ECG module: a structured box mesh and an independent lead-field assembly."""

from __future__ import annotations

import itertools

import numpy as np


def box_mesh(n, size, origin=(0.0, 0.0, 0.0)):
    """Structured tet mesh of a box: each cube split into 6 tets (Freudenthal/Kuhn).

    Cube with corner ``c`` and axis permutation ``p``: tet ``c, c+e_p0, c+e_p0+e_p1, c+1``.
    The split is invariant under every permutation of the axes, so the mesh of a cube
    (equal ``n`` and ``size`` on all axes) is mirror-symmetric about the planes ``x = y``,
    ``y = z``, ``x = z`` (node ``(i, j, k)`` maps to the node with swapped indices).

    Parameters
    ----------
    n : int or (3,) int
        Cells per axis.
    size : float or (3,) float
        Box edge lengths, mm.
    origin : (3,) float
        Lower corner, mm.

    Returns
    -------
    nodes : (n_nodes, 3) float64, mm
        Node ``(i, j, k)`` has index ``(i * (ny + 1) + j) * (nz + 1) + k``.
    tets : (n_tets, 4) int64, all positively oriented.
    """
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), (3,))
    size = np.broadcast_to(np.asarray(size, dtype=np.float64), (3,))
    axes = [np.linspace(0.0, size[a], n[a] + 1) + origin[a] for a in range(3)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    nodes = np.stack([gx.ravel(), gy.ravel(), gz.ravel()], axis=1)

    def index(i, j, k):
        return (i * (n[1] + 1) + j) * (n[2] + 1) + k

    ci, cj, ck = np.meshgrid(*(np.arange(n[a]) for a in range(3)), indexing="ij")
    ci, cj, ck = ci.ravel(), cj.ravel(), ck.ravel()
    tets = []
    for perm in itertools.permutations(range(3)):
        step = np.zeros(3, dtype=np.int64)
        verts = [index(ci, cj, ck)]
        for a in perm:
            step[a] += 1
            verts.append(index(ci + step[0], cj + step[1], ck + step[2]))
        # orientation = sign of the permutation; swap two vertices for odd ones
        sign = np.linalg.det(np.eye(3)[list(perm)])
        if sign < 0:
            verts[2], verts[3] = verts[3], verts[2]
        tets.append(np.stack(verts, axis=1))
    return nodes, np.concatenate(tets).astype(np.int64)


def swap_xy_permutation(n):
    """Node permutation of ``box_mesh(n, size)`` (cube) for the mirror ``x <-> y``.

    ``perm[j]`` is the index of the mirror image of node ``j``.
    """
    i, j, k = np.meshgrid(np.arange(n + 1), np.arange(n + 1), np.arange(n + 1), indexing="ij")
    return ((j * (n + 1) + i) * (n + 1) + k).ravel()


def reference_stiffness(nodes, tets, tensors):
    """Dense stiffness matrix built element by element from the 4x4 systems ``[1 x y z] c = e_a``.

    Independent of ``cdt_bayes._fem``: the hat function of vertex ``a`` of a tet is
    ``c0 + c . x`` with the coefficients solving ``[1 x_b y_b z_b] c = delta_ab``.
    """
    n_nodes = nodes.shape[0]
    k = np.zeros((n_nodes, n_nodes))
    for e, tet in enumerate(tets):
        x = nodes[tet]
        m = np.hstack([np.ones((4, 1)), x])
        coef = np.linalg.solve(m, np.eye(4))  # column a: coefficients of hat a
        grads = coef[1:].T  # (4, 3)
        vol = abs(np.linalg.det(x[1:] - x[0])) / 6.0
        ke = vol * grads @ tensors[e] @ grads.T
        k[np.ix_(tet, tet)] += ke
    return k


def plane_wave(nodes, direction, speed=0.6, t0=10.0):
    """Activation ``T = t0 + (x - min x) . d / speed`` of a plane wave along ``direction``, ms."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    s = nodes @ d
    return t0 + (s - s.min()) / speed
