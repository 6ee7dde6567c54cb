"""Built-in biventricular mesh, shipped data files and default electrodes."""

import sys
from pathlib import Path

import numpy as np
import pytest

from cdt_bayes import _meshgen
from cdt_bayes._errors import CdtBayesError
from cdt_bayes._geometry import BASE, EPI, INTERIOR, LV_ENDO, RV_ENDO, tet_volumes
from cdt_bayes._meshgen import (
    ELECTRODE_NAMES,
    default_electrodes,
    default_electrodes_table,
    default_mesh,
    generate_biventricular,
)

DATA = Path(_meshgen.__file__).parent / "data"


@pytest.fixture(scope="module")
def mesh():
    return default_mesh()


@pytest.fixture(scope="module")
def electrodes():
    return default_electrodes_table()


def boundary_node_mask(tets, n_nodes):
    faces = np.sort(
        np.concatenate(
            [tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]]
        ),
        axis=1,
    )
    uniq, cnt = np.unique(faces, axis=0, return_counts=True)
    mask = np.zeros(n_nodes, dtype=bool)
    mask[uniq[cnt == 1].ravel()] = True
    return mask


def long_axis(mesh):
    """LV axis from a PCA of the LV endocardium, pointing apex -> base; and the LV centre."""
    lv = mesh.nodes[mesh.surface == LV_ENDO]
    c = lv.mean(axis=0)
    _, _, vt = np.linalg.svd(lv - c, full_matrices=False)
    ax = vt[0]
    if (mesh.nodes[mesh.surface == BASE].mean(axis=0) - c) @ ax < 0:
        ax = -ax
    return ax, c


# --- shipped coarse mesh ---------------------------------------------------------------


def test_shipped_files_exist_and_small():
    vtu, csv = DATA / "biv_coarse.vtu", DATA / "biv_coarse_electrodes.csv"
    assert vtu.is_file() and csv.is_file()
    assert vtu.stat().st_size < 2_000_000
    assert csv.read_text().splitlines()[0] == "name,x_mm,y_mm,z_mm"


def test_shipped_vtu_point_data():
    import meshio

    m = meshio.read(DATA / "biv_coarse.vtu")
    assert [c.type for c in m.cells] == ["tetra"]
    for key in ("fiber", "sheet"):
        v = np.asarray(m.point_data[key])
        assert v.shape == (m.points.shape[0], 3) and v.dtype.kind == "f"
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert np.abs(np.einsum("ij,ij->i", m.point_data["fiber"], m.point_data["sheet"])).max() < 1e-6
    assert m.point_data["surface"].dtype == np.int32


def test_counts_orientation_labels(mesh):
    assert 4000 <= mesh.n_nodes <= 7000
    assert 12_000 <= mesh.n_tets <= 40_000
    assert mesh.nodes.shape == (mesh.n_nodes, 3) and mesh.tets.shape == (mesh.n_tets, 4)
    assert (tet_volumes(mesh.nodes, mesh.tets) > 0).all()
    assert set(np.unique(mesh.surface)) == {INTERIOR, LV_ENDO, RV_ENDO, EPI, BASE}
    # no orphan nodes
    assert np.array_equal(np.unique(mesh.tets), np.arange(mesh.n_nodes))
    assert mesh.fibres.shape == (mesh.n_tets, 3) and mesh.sheets.shape == (mesh.n_tets, 3)
    assert mesh.node_fibres.shape == (mesh.n_nodes, 3)


def test_labels_on_boundary(mesh):
    on_b = boundary_node_mask(np.asarray(mesh.tets), mesh.n_nodes)
    for lab in (LV_ENDO, RV_ENDO, EPI, BASE):
        assert on_b[mesh.surface == lab].all(), lab
    assert not on_b[mesh.surface == INTERIOR].any()
    # LV and RV endocardium are separated by the septum: no tet touches both
    s = mesh.surface[mesh.tets]
    assert not ((s == LV_ENDO).any(axis=1) & (s == RV_ENDO).any(axis=1)).any()


def test_volume_and_proportions(mesh):
    vol_ml = tet_volumes(mesh.nodes, mesh.tets).sum() / 1000.0
    assert 100.0 < vol_ml < 250.0
    ax, _ = long_axis(mesh)
    base = mesh.nodes[mesh.surface == BASE]
    base_c = base.mean(axis=0)
    lv = mesh.nodes[mesh.surface == LV_ENDO]
    # LV cavity ~70 mm long (base plane to endocardial apex)
    length = ((base_c - lv) @ ax).max()
    assert 60.0 < length < 80.0
    # LV cavity ~45-50 mm wide at the base
    rim = lv[np.abs((lv - base_c) @ ax) < 2.0]
    rc = rim.mean(axis=0)
    diam = 2.0 * np.linalg.norm((rim - rc) - np.outer((rim - rc) @ ax, ax), axis=1).mean()
    assert 40.0 < diam < 55.0


def test_patient_frame(mesh):
    # heart near the origin
    vol = tet_volumes(mesh.nodes, mesh.tets)
    c = (mesh.nodes[mesh.tets].mean(axis=1) * vol[:, None]).sum(axis=0) / vol.sum()
    assert np.linalg.norm(c) < 5.0
    # base -> apex: left, anterior, inferior; ~45 deg from sagittal, ~30 deg down
    ax, _ = long_axis(mesh)
    apex_dir = -ax
    assert apex_dir[0] > 0 and apex_dir[1] > 0 and apex_dir[2] < 0
    down = np.degrees(np.arcsin(-apex_dir[2]))
    azim = np.degrees(np.arctan2(apex_dir[0], apex_dir[1]))  # 0: anterior, 90: left
    assert 20.0 < down < 40.0
    assert 30.0 < azim < 60.0
    # RV right-anterior of LV
    d = mesh.nodes[mesh.surface == RV_ENDO].mean(axis=0) - mesh.nodes[mesh.surface == LV_ENDO].mean(
        axis=0
    )
    assert d[0] < -5.0 and d[1] > 5.0


# --- electrodes -------------------------------------------------------------------------


def test_electrode_table_names(electrodes):
    assert tuple(electrodes) == ELECTRODE_NAMES
    for p in electrodes.values():
        assert p.shape == (3,) and np.isfinite(p).all()


def test_electrodes_match_mesh(mesh, electrodes):
    placed = default_electrodes(mesh)
    for k in ELECTRODE_NAMES:
        np.testing.assert_allclose(placed[k], electrodes[k], atol=2e-3)


def test_precordial_outside_and_ordered(mesh, electrodes):
    from scipy.spatial import cKDTree

    tree = cKDTree(mesh.nodes)
    v = np.array([electrodes[f"V{i}"] for i in range(1, 7)])
    dist = tree.query(v)[0]
    assert (dist > 20.0).all()
    assert dist[:4].min() < 60.0  # the chest wall is close to the heart
    # outside the heart: farther from the heart centre than any node in that direction
    c = mesh.nodes.mean(axis=0)
    assert (np.linalg.norm(v - c, axis=1) > np.linalg.norm(mesh.nodes - c, axis=1).max()).all()
    # around the chest from the right sternal border to the midaxillary line
    az = np.unwrap(np.arctan2(v[:, 1] - c[1], v[:, 0] - c[0]))
    assert (np.diff(az) < 0).all()
    assert v[0, 0] < v[1, 0] < v[2, 0] < v[3, 0] < v[4, 0] < v[5, 0]
    assert v[0, 2] == pytest.approx(v[1, 2]) and v[3, 2] == pytest.approx(v[5, 2])
    assert v[3, 2] < v[1, 2]  # V4 (5th ICS) below V2 (4th ICS)
    # V1/V2 anterior of the heart, V6 lateral
    assert v[:2, 1].min() > mesh.nodes[:, 1].max()
    assert v[5, 0] > mesh.nodes[:, 0].max()


def test_limb_electrodes_far(mesh, electrodes):
    c = mesh.nodes.mean(axis=0)
    for k in ("RA", "LA", "LL", "RL"):
        assert np.linalg.norm(electrodes[k] - c) > 200.0, k
    assert electrodes["RA"][0] < c[0] < electrodes["LA"][0]
    assert electrodes["RA"][2] > c[2] + 150 and electrodes["LA"][2] > c[2] + 150
    assert electrodes["LL"][2] < c[2] - 150 and electrodes["LL"][0] > electrodes["RL"][0]


# --- generator ---------------------------------------------------------------------------


def test_unknown_resolution():
    with pytest.raises(CdtBayesError, match="unknown resolution"):
        generate_biventricular("huge")
    with pytest.raises(CdtBayesError, match="out of range"):
        generate_biventricular(0.01)


def test_missing_gmsh_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gmsh", None)  # makes `import gmsh` fail
    with pytest.raises(CdtBayesError, match=r"pip install 'cdt_bayes\[mesh\]'"):
        generate_biventricular("coarse")


def test_generator_reproduces_shipped_mesh(mesh, electrodes):
    pytest.importorskip("gmsh")
    g, el = generate_biventricular("coarse", seed=0)
    assert g.n_nodes == mesh.n_nodes and g.n_tets == mesh.n_tets
    np.testing.assert_allclose(g.nodes, mesh.nodes, atol=1e-9)
    assert np.array_equal(g.tets, mesh.tets)
    assert np.array_equal(g.surface, mesh.surface)
    np.testing.assert_allclose(np.abs(np.einsum("ij,ij->i", g.fibres, mesh.fibres)), 1.0, atol=1e-6)
    for k in ELECTRODE_NAMES:
        np.testing.assert_allclose(el[k], electrodes[k], atol=2e-3)


def test_generator_seed_deterministic_and_perturbed():
    pytest.importorskip("gmsh")
    a, _ = generate_biventricular(7.0, seed=1)
    b, _ = generate_biventricular(7.0, seed=1)
    c, _ = generate_biventricular(7.0, seed=0)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.tets, b.tets)
    assert np.array_equal(a.fibres, b.fibres)
    va, vc = (tet_volumes(m.nodes, m.tets).sum() for m in (a, c))
    assert va != vc and abs(va / vc - 1.0) < 0.2
    assert (tet_volumes(a.nodes, a.tets) > 0).all()
    assert {1, 2, 3, 4} <= set(np.unique(a.surface).tolist())
    assert np.isfinite(a.fibres).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "resolution, nodes, tets",
    [
        ("medium", (15_000, 25_000), (60_000, 130_000)),
        ("fine", (40_000, 60_000), (170_000, 280_000)),
    ],
)
def test_generator_resolutions(resolution, nodes, tets):
    pytest.importorskip("gmsh")
    m, _ = generate_biventricular(resolution)
    assert nodes[0] <= m.n_nodes <= nodes[1]
    assert tets[0] <= m.n_tets <= tets[1]
    assert (tet_volumes(m.nodes, m.tets) > 0).all()
    assert 100.0 < tet_volumes(m.nodes, m.tets).sum() / 1000.0 < 250.0
    assert set(np.unique(m.surface)) == {0, 1, 2, 3, 4}


def test_write_default_files(tmp_path):
    pytest.importorskip("gmsh")
    vtu, csv = _meshgen.write_default_files(tmp_path, resolution=8.0)
    m = _meshgen._read_vtu(vtu)
    assert (tet_volumes(m.nodes, m.tets) > 0).all()
    assert np.isfinite(m.fibres).all()
    assert csv.read_text().splitlines()[0] == "name,x_mm,y_mm,z_mm"
    assert len(csv.read_text().splitlines()) == 1 + len(ELECTRODE_NAMES)
