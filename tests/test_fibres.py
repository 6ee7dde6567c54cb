"""Rule-based fibres: frames, helix angles, errors, degenerate input."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from cdt_bayes._errors import MeshError
from cdt_bayes._fibres import node_directions, rule_based_fibres
from cdt_bayes._geometry import BASE, EPI, LV_ENDO, RV_ENDO, Mesh, tet_volumes
from cdt_bayes._meshgen import default_mesh


@pytest.fixture(scope="module")
def mesh():
    return default_mesh()


@pytest.fixture(scope="module")
def fibred(mesh):
    return rule_based_fibres(mesh.replace(fibres=None, sheets=None, node_fibres=None))


def lv_frame(mesh):
    """Independent LV frame per tet: long axis (PCA of the LV endocardium), radial, circ."""
    lv = mesh.nodes[mesh.surface == LV_ENDO]
    c = lv.mean(axis=0)
    _, _, vt = np.linalg.svd(lv - c, full_matrices=False)
    ax = vt[0]
    if (mesh.nodes[mesh.surface == BASE].mean(axis=0) - c) @ ax < 0:
        ax = -ax  # apex -> base
    x = mesh.nodes[mesh.tets].mean(axis=1)
    rel = x - c
    h = rel @ ax
    r = rel - np.outer(h, ax)
    rad = r / np.linalg.norm(r, axis=1, keepdims=True)
    circ = np.cross(ax, rad)
    return x, ax, h, rad, circ, np.linalg.norm(r, axis=1)


def helix_deg(f, ax, circ):
    """Helix angle in degrees (sign-free fibre axis), in (-90, 90]."""
    return np.degrees(np.arctan(np.einsum("ij,j->i", f, ax) / np.einsum("ij,ij->i", f, circ)))


def test_matches_shipped_fibres(mesh, fibred):
    dots = np.abs(np.einsum("ij,ij->i", fibred.fibres, mesh.fibres))
    np.testing.assert_allclose(dots, 1.0, atol=1e-5)
    np.testing.assert_allclose(
        np.abs(np.einsum("ij,ij->i", fibred.sheets, mesh.sheets)), 1.0, atol=1e-5
    )


def test_unit_orthogonal_finite(fibred):
    f, s, nf = fibred.fibres, fibred.sheets, fibred.node_fibres
    assert f.shape == (fibred.n_tets, 3) and s.shape == f.shape
    assert nf.shape == (fibred.n_nodes, 3)
    for v in (f, s, nf):
        assert np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    assert np.abs(np.einsum("ij,ij->i", f, s)).max() < 1e-12


def test_helix_lv_free_wall(fibred):
    m = fibred
    x, ax, h, rad, circ, _ = lv_frame(m)
    to_rv = m.nodes[m.surface == RV_ENDO].mean(axis=0) - m.nodes[m.surface == LV_ENDO].mean(axis=0)
    to_rv -= (to_rv @ ax) * ax
    to_rv /= np.linalg.norm(to_rv)
    hmin, hmax = h.min(), h.max()
    sel = (rad @ to_rv < -0.3) & (h > hmin + 0.3 * (hmax - hmin)) & (h < hmin + 0.8 * (hmax - hmin))
    assert sel.sum() > 200
    d_endo = cKDTree(m.nodes[m.surface == LV_ENDO]).query(x[sel])[0]
    d_epi = cKDTree(m.nodes[m.surface == EPI]).query(x[sel])[0]
    depth = d_endo / (d_endo + d_epi)  # 0 endo, 1 epi (geometric, independent of phi)
    alpha = helix_deg(m.fibres[sel], ax, circ[sel])
    slope, icpt = np.polyfit(depth, alpha, 1)
    assert 45.0 < icpt < 80.0  # +60 at the endocardium
    assert -80.0 < icpt + slope < -45.0  # -60 at the epicardium
    # sheets are transmural (radial) in the LV free wall
    assert np.abs(np.einsum("ij,ij->i", m.sheets[sel], rad[sel])).mean() > 0.9
    # the same on the tets touching each surface (crude, no fit)
    s = m.surface[m.tets[sel]]
    assert alpha[(s == LV_ENDO).any(axis=1)].mean() > 20.0
    assert alpha[(s == EPI).any(axis=1)].mean() < -20.0


def test_helix_septum_rotates_smoothly(fibred):
    """Bayer-style septum: +60 at the LV endocardium to -60 (LV frame) at the RV side."""
    m = fibred
    x, ax, h, rad, circ, r = lv_frame(m)
    to_rv = m.nodes[m.surface == RV_ENDO].mean(axis=0) - m.nodes[m.surface == LV_ENDO].mean(axis=0)
    to_rv -= (to_rv @ ax) * ax
    to_rv /= np.linalg.norm(to_rv)
    hmin, hmax = h.min(), h.max()
    sel = (
        (rad @ to_rv > 0.8)
        & (h > hmin + 0.5 * (hmax - hmin))
        & (h < hmin + 0.85 * (hmax - hmin))
        & (r < 40.0)
    )
    assert sel.sum() > 100
    d_lv = cKDTree(m.nodes[m.surface == LV_ENDO]).query(x[sel])[0]
    d_rv = cKDTree(m.nodes[m.surface == RV_ENDO]).query(x[sel])[0]
    depth = d_lv / (d_lv + d_rv)
    alpha = helix_deg(m.fibres[sel], ax, circ[sel])
    slope, icpt = np.polyfit(depth, alpha, 1)
    assert 40.0 < icpt < 80.0
    assert -80.0 < icpt + slope < -40.0


def test_custom_angles(mesh):
    m = rule_based_fibres(mesh, alpha_endo_deg=0.0, alpha_epi_deg=0.0)
    x, ax, h, rad, circ, _ = lv_frame(m)
    # zero helix: fibres circumferential, orthogonal to the long axis
    assert np.median(np.abs(m.fibres @ ax)) < 0.15


def test_no_labels_raises(mesh):
    with pytest.raises(MeshError, match="no surface labels"):
        rule_based_fibres(mesh.replace(surface=None))
    s = np.where(mesh.surface == EPI, 0, mesh.surface)
    with pytest.raises(MeshError, match="epicardium"):
        rule_based_fibres(mesh.replace(surface=s))
    s = np.where(np.isin(mesh.surface, (LV_ENDO, RV_ENDO)), 0, mesh.surface)
    with pytest.raises(MeshError, match="endocardium"):
        rule_based_fibres(mesh.replace(surface=s))


def cube_mesh(n=4, size=10.0):
    """Structured cube [0, size]^3 split into 6 tets per cell, positively oriented."""
    g = np.linspace(0.0, size, n + 1)
    nodes = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    c = np.stack(
        [
            idx[:-1, :-1, :-1],
            idx[1:, :-1, :-1],
            idx[1:, 1:, :-1],
            idx[:-1, 1:, :-1],
            idx[:-1, :-1, 1:],
            idx[1:, :-1, 1:],
            idx[1:, 1:, 1:],
            idx[:-1, 1:, 1:],
        ],
        axis=-1,
    ).reshape(-1, 8)
    kuhn = [[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]]
    tets = np.concatenate([c[:, k] for k in kuhn])
    neg = tet_volumes(nodes, tets) < 0
    tets[neg] = tets[neg][:, [1, 0, 2, 3]]
    return nodes, tets


def test_slab_analytic():
    """Slab: endo x=0, epi x=10, base z=10 -> e_t = +x, helix linear in x."""
    nodes, tets = cube_mesh()
    surf = np.zeros(len(nodes), dtype=np.int32)
    surf[nodes[:, 2] == 10.0] = BASE
    surf[nodes[:, 0] == 10.0] = EPI
    surf[nodes[:, 0] == 0.0] = LV_ENDO
    m = rule_based_fibres(Mesh(nodes=nodes, tets=tets, surface=surf))
    np.testing.assert_allclose(
        m.sheets, np.broadcast_to([1.0, 0.0, 0.0], m.sheets.shape), atol=1e-9
    )
    assert np.isfinite(m.fibres).all()
    assert np.abs(np.einsum("ij,ij->i", m.fibres, m.sheets)).max() < 1e-12


def test_degenerate_gradients_finite():
    """Tets with all nodes on Dirichlet sets of equal value have zero gradient: no NaN."""
    nodes, tets = cube_mesh(n=3)
    surf = np.zeros(len(nodes), dtype=np.int32)
    surf[nodes[:, 2] == 10.0] = BASE
    surf[nodes[:, 0] == 10.0] = EPI
    surf[nodes[:, 0] < 4.0] = LV_ENDO  # two node layers: tets between them have phi == 0
    m = rule_based_fibres(Mesh(nodes=nodes, tets=tets, surface=surf))
    flat = (surf[tets] == LV_ENDO).all(axis=1)
    assert flat.any()  # the degenerate case is exercised
    for v in (m.fibres, m.sheets, m.node_fibres):
        assert np.isfinite(v).all()
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    assert np.abs(np.einsum("ij,ij->i", m.fibres, m.sheets)).max() < 1e-12


def test_node_directions_sign_free():
    tets = np.array([[0, 1, 2, 3], [0, 1, 2, 4]])
    d = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])  # same axis, opposite signs
    nd = node_directions(5, tets, d)
    np.testing.assert_allclose(np.abs(nd[:3, 2]), 1.0, atol=1e-12)
