"""A tiny inference problem shared by the model/inference tests (a slab with one endo face)."""

from __future__ import annotations

import functools

import numpy as np
from helpers import box_mesh

from cdt_bayes._ecg import LeadField, ecg_time_grid, simulate_ecg
from cdt_bayes._eikonal import activation_times, eikonal_geometry
from cdt_bayes._geometry import Mesh


@functools.cache
def slab(n=(8, 8, 3), size=(24.0, 24.0, 9.0)):
    """Slab mesh (mm) with LV endocardium at z = 0, epicardium at z = max; fibres along x."""
    nodes, tets = box_mesh(n, size)
    surf = np.zeros(len(nodes), np.int32)
    surf[np.isclose(nodes[:, 2], size[2])] = 3
    surf[np.isclose(nodes[:, 2], 0.0)] = 1
    fib = np.tile([1.0, 0.0, 0.0], (len(tets), 1))
    mesh = Mesh(nodes.astype(np.float64), tets, fibres=fib, surface=surf)
    c = nodes.mean(0)
    ang = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    el = {
        "RA": c + [-150.0, 60.0, 80.0],
        "LA": c + [150.0, 60.0, 80.0],
        "LL": c + [60.0, 40.0, -200.0],
    }
    for i, a in enumerate(ang):
        el[f"V{i + 1}"] = c + [60 * np.cos(a), 60 * np.sin(a), -40.0]
    return mesh, el


def synthetic(pmj_nodes=(0, 40), times=(0.0, 3.0), noise_rel=0.02, seed=0, mesh_el=None):
    """Truth by the full eikonal solver; returns mesh, electrodes, T, times, lead names, noisy ECG."""
    mesh, el = mesh_el or slab()
    endo = np.flatnonzero(mesh.surface == 1)
    p = mesh.nodes[endo[list(pmj_nodes)]]
    g = eikonal_geometry(mesh, np.float32)
    t_act = np.asarray(activation_times(g, p, np.asarray(times)), np.float64)
    lf = LeadField.from_mesh(mesh, el)
    tt = ecg_time_grid(t_act)
    ecg = np.asarray(simulate_ecg(t_act, lf.matrix, tt), np.float64)
    rng = np.random.default_rng(seed)
    noisy = ecg + noise_rel * np.abs(ecg).max() * rng.normal(size=ecg.shape)
    return mesh, el, t_act, tt, list(lf.names), noisy, ecg
