"""P1 finite-element building blocks on tetrahedra (NumPy/SciPy, assembled once per mesh)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["p1_gradients", "stiffness_matrix", "conductivity_tensors"]


def p1_gradients(nodes: np.ndarray, tets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the P1 hat functions and tet volumes.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int

    Returns
    -------
    grads : (n_tets, 4, 3) float
        ``grads[e, a]`` is the (constant) gradient of the hat function of local
        vertex ``a`` in tet ``e``, 1/mm.
    volumes : (n_tets,) float
        Signed volumes, mm^3.
    """
    x = np.asarray(nodes, dtype=np.float64)[np.asarray(tets)]
    e = x[:, 1:] - x[:, :1]  # (n_tets, 3, 3): rows are edges from vertex 0
    det = np.linalg.det(e)
    inv = np.linalg.inv(e)  # columns of inv are gradients of barycentrics 1..3
    g123 = np.transpose(inv, (0, 2, 1))
    g0 = -g123.sum(axis=1, keepdims=True)
    return np.concatenate([g0, g123], axis=1), det / 6.0


def conductivity_tensors(
    fibres: np.ndarray | None, n_tets: int, sigma_l: float = 1.0, sigma_t: float = 1.0
) -> np.ndarray:
    """Per-tet tensors ``sigma_l f f^T + sigma_t (I - f f^T)``, shape ``(n_tets, 3, 3)``."""
    eye = np.broadcast_to(np.eye(3), (n_tets, 3, 3))
    if fibres is None:
        return sigma_t * eye.copy()
    f = np.asarray(fibres, dtype=np.float64)
    ff = f[:, :, None] * f[:, None, :]
    return sigma_l * ff + sigma_t * (eye - ff)


def stiffness_matrix(
    nodes: np.ndarray, tets: np.ndarray, tensors: np.ndarray | None = None
) -> sp.csr_matrix:
    """Assemble ``K_ij = sum_e |e| grad(phi_i)^T G_e grad(phi_j)``.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
    tensors : (n_tets, 3, 3) float, optional
        Conductivity tensor per tet; identity when omitted.

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n_nodes, n_nodes)
        Symmetric, rows sum to zero (constants are in the kernel).
    """
    tets = np.asarray(tets)
    grads, vol = p1_gradients(nodes, tets)
    vol = np.abs(vol)
    if tensors is None:
        gg = grads
    else:
        gg = np.einsum("eij,eaj->eai", tensors, grads)
    ke = np.einsum("eai,ebi->eab", grads, gg) * vol[:, None, None]
    rows = np.repeat(tets, 4, axis=1).ravel()
    cols = np.tile(tets, (1, 4)).ravel()
    n = int(np.asarray(nodes).shape[0])
    return sp.coo_matrix((ke.ravel(), (rows, cols)), shape=(n, n)).tocsr()
