"""The coarser inference mesh (cdt_bayes._coarsen) and its map back to the user's mesh."""

import json

import numpy as np
import pytest
from helpers import box_mesh
from inference_case import slab, synthetic

from cdt_bayes._coarsen import AUTO_MAX_NODES, MeshMap, coarsen_mesh, inference_mesh
from cdt_bayes._eikonal import activation_times, eikonal_geometry
from cdt_bayes._geometry import Mesh, tet_volumes
from cdt_bayes._io import validate_mesh
from cdt_bayes._meshgen import default_mesh


@pytest.fixture(scope="module")
def heart():
    mesh = default_mesh()
    coarse, to_mesh = coarsen_mesh(mesh, 6.0)
    return mesh, coarse, to_mesh


def test_coarse_mesh_is_a_valid_carved_subset(heart):
    mesh, coarse, _ = heart
    assert 0.2 * mesh.n_nodes < coarse.n_nodes < 0.5 * mesh.n_nodes
    # nodes are mesh nodes, with their labels and point fibres
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(mesh.nodes).query(coarse.nodes)
    np.testing.assert_array_equal(dist, 0.0)
    np.testing.assert_array_equal(coarse.surface, mesh.surface[idx])
    # positively oriented, valid (validate_mesh raises on folds, degenerate tets, pieces)
    assert (tet_volumes(coarse.nodes, coarse.tets) > 0).all()
    v = validate_mesh(coarse, "coarse", warn_missing_fibres=False)
    assert v.n_tets == coarse.n_tets and v.n_nodes == coarse.n_nodes
    # the carving keeps the myocardium: volume within 3 %, both endocardia labelled
    ratio = tet_volumes(coarse.nodes, coarse.tets).sum() / tet_volumes(mesh.nodes, mesh.tets).sum()
    assert 0.97 < ratio < 1.03
    assert (coarse.surface == 1).sum() > 100 and (coarse.surface == 2).sum() > 100
    # per-tet fibres are unit vectors of the original field
    np.testing.assert_allclose(np.linalg.norm(coarse.fibres, axis=1), 1.0, atol=1e-6)


def test_map_interpolates_affine_fields_and_pull_back_is_its_transpose(heart):
    mesh, coarse, m = heart
    assert m.n_source == coarse.n_nodes and m.n_target == mesh.n_nodes
    np.testing.assert_allclose(m.weight.sum(1), 1.0, atol=1e-6)
    assert (m.weight >= 0).all()
    a, b = np.array([0.3, -0.2, 0.5]), 4.0
    f = m.apply(coarse.nodes @ a + b)
    exact = mesh.nodes @ a + b
    # exact inside the inference mesh; display nodes just outside it are clipped onto it
    from cdt_bayes._geometry import locate_points

    _, _, inside = locate_points(coarse, mesh.nodes)
    assert inside.mean() > 0.6
    np.testing.assert_allclose(f[inside], exact[inside], atol=1e-3)
    assert np.sqrt(np.mean((f - exact) ** 2)) < 0.2  # mm-scale field, clipped nodes included
    # batch shapes pass through
    assert m.apply(np.zeros((2, 3, coarse.n_nodes))).shape == (2, 3, mesh.n_nodes)
    with pytest.raises(ValueError, match="expected"):
        m.apply(np.zeros(mesh.n_nodes))
    # pull_back(L) @ v == L @ apply(v), and zero row sums survive
    rng = np.random.default_rng(0)
    lead = rng.normal(size=(3, mesh.n_nodes))
    lead -= lead.mean(1, keepdims=True)
    v = rng.normal(size=coarse.n_nodes)
    pb = m.pull_back(lead)
    np.testing.assert_allclose(pb @ v, lead @ m.apply(v), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pb.sum(1), 0.0, atol=1e-8)


def test_activation_on_the_coarse_mesh_tracks_the_full_mesh(heart):
    """The eikonal solution on a 6 mm inference mesh, interpolated back, vs the 3.5 mm mesh."""
    from cdt_bayes._demo import demo_pmjs

    mesh, coarse, m = heart
    xyz, t = demo_pmjs(mesh)
    full = np.asarray(activation_times(eikonal_geometry(mesh), xyz, t))
    mapped = m.apply(np.asarray(activation_times(eikonal_geometry(coarse), xyz, t)))
    err = mapped - full
    # measured: RMSE 2.9 ms, bias 0.8 ms, 90th percentile 4.8 ms over a 0-~110 ms map
    assert np.sqrt(np.mean(err**2)) < 4.0
    assert np.percentile(np.abs(err), 90) < 6.5
    assert np.corrcoef(mapped, full)[0, 1] > 0.98


def test_inference_mesh_settings():
    mesh = default_mesh()
    assert mesh.n_nodes <= AUTO_MAX_NODES
    same, none = inference_mesh(mesh, "auto")
    assert same is mesh and none is None
    same, none = inference_mesh(mesh, "full")
    assert same is mesh and none is None
    coarse, m = inference_mesh(mesh, 6.0)
    assert isinstance(m, MeshMap) and coarse.n_nodes < mesh.n_nodes
    with pytest.raises(ValueError, match="positive"):
        coarsen_mesh(mesh, 0.0)


def test_auto_coarsens_a_large_mesh():
    nodes, tets = box_mesh((28, 28, 16), (42.0, 42.0, 24.0))
    assert len(nodes) > AUTO_MAX_NODES
    surf = np.zeros(len(nodes), np.int32)
    surf[np.isclose(nodes[:, 2], 0.0)] = 1
    big = Mesh(
        nodes.astype(np.float64),
        tets,
        fibres=np.tile([1.0, 0.0, 0.0], (len(tets), 1)),
        surface=surf,
    )
    coarse, m = inference_mesh(big, "auto")
    assert m is not None and coarse.n_nodes < big.n_nodes / 3
    # a box is convex, so nothing is carved away; but the voxel picks miss its corners and
    # edges (each voxel's pick is the node nearest the voxel's mean), which shaves a strip
    # of up to half a spacing off the 12 edges (measured: 2.5 % of this box's volume)
    ratio = tet_volumes(coarse.nodes, coarse.tets).sum() / tet_volumes(big.nodes, big.tets).sum()
    assert 0.96 < ratio <= 1.0 + 1e-9


def test_cli_fit_on_an_inference_mesh_writes_outputs_on_the_given_mesh(tmp_path):
    """Truth simulated on a fine slab; `fit --inference-mesh 3` runs on a coarser one."""
    import meshio

    from cdt_bayes._cli import main
    from cdt_bayes._io import save_mesh_vtu, write_ecg_csv

    fine = slab(n=(16, 16, 6))
    mesh, el, t_act, tt, names, noisy, _ = synthetic(pmj_nodes=(0, 150), mesh_el=fine)
    save_mesh_vtu(tmp_path / "m.vtu", mesh)
    write_ecg_csv(tmp_path / "ecg.csv", tt, names, noisy)
    (tmp_path / "el.csv").write_text(
        "name,x_mm,y_mm,z_mm\n" + "".join(f"{k},{v[0]},{v[1]},{v[2]}\n" for k, v in el.items())
    )
    spec = tmp_path / "small.toml"
    spec.write_text(
        'extends = "default"\n[pmj]\nsite_spacing_mm = 4.0\nkernel_mm = 2.5\nlayer_depth_mm = 3.5\n'
    )
    out = tmp_path / "fit"
    rc = main(
        [
            "fit",
            "--mesh",
            str(tmp_path / "m.vtu"),
            "--ecg",
            str(tmp_path / "ecg.csv"),
            "--electrodes",
            str(tmp_path / "el.csv"),
            "--out",
            str(out),
            "--method",
            "map",
            "--n-pmj",
            "2",
            "--spec",
            str(spec),
            "--inference-mesh",
            "3",
            "--no-progress",
        ]
    )
    assert rc == 0
    j = json.loads((out / "summary.json").read_text())
    assert j["inference_mesh"]["coarsened"] and j["inference_mesh"]["n_nodes"] < mesh.n_nodes / 2
    assert j["n_nodes"] == mesh.n_nodes and any("inference mesh" in s for s in j["notes"])
    assert j["ecg_correlation"] > 0.9
    vtu = meshio.read(out / "activation_summary.vtu")
    assert vtu.points.shape[0] == mesh.n_nodes
    mean = vtu.point_data["activation_mean_ms"]
    assert np.sqrt(np.mean((mean - t_act) ** 2)) < 0.25 * np.ptp(t_act)


def test_cli_rejects_a_bad_inference_mesh_option(tmp_path, capsys):
    from cdt_bayes._cli import main

    rc = main(
        [
            "fit",
            "--mesh",
            "m.vtu",
            "--ecg",
            "e.csv",
            "--electrodes",
            "el.csv",
            "--out",
            str(tmp_path / "o"),
            "--inference-mesh",
            "coarse",
        ]
    )
    assert rc != 0
    assert "auto, full or a spacing" in capsys.readouterr().err
