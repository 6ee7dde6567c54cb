import os
from pathlib import Path

import jax.numpy as jnp
import meshio
import numpy as np
import pytest
from helpers import box_mesh, box_surface_labels, write_opencarp

from cdt_bayes._errors import CdtBayesError, InputFileError, MeshError
from cdt_bayes._geometry import Mesh, tet_volumes
from cdt_bayes._io import (
    STANDARD_LEADS,
    atomic_output_dir,
    load_mesh,
    read_ecg_csv,
    read_electrodes_csv,
    read_pmj_csv,
    read_wfdb_ecg,
    resample_1ms,
    save_mesh_vtu,
    validate_mesh,
    write_ecg_csv,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _need(path: Path):
    if not path.exists():
        if os.environ.get("CDT_REQUIRE_ALL"):
            pytest.fail(f"{path} missing and CDT_REQUIRE_ALL is set")
        pytest.skip(f"{path} not available")


def _write(path, text):
    path.write_text(text)
    return path


def _fibres_x(n_tets):
    return np.tile([1.0, 0.0, 0.0], (n_tets, 1))


def _mesh(n=(2, 2, 2), size=(1, 1, 1), **kw):
    nodes, tets = box_mesh(n, size)
    return Mesh(nodes=nodes, tets=tets, fibres=kw.pop("fibres", _fibres_x(len(tets))), **kw)


def _vtu(path, nodes, tets, point_data=None, cell_data=None):
    meshio.write(
        path,
        meshio.Mesh(
            nodes, [("tetra", tets)], point_data=point_data or {}, cell_data=cell_data or {}
        ),
    )
    return path


# ---------------------------------------------------------------------------------- CSV


def test_pmj_roundtrip(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n1,2,3,0\n4.5,5,6,10.5\n")
    xyz, t = read_pmj_csv(f)
    np.testing.assert_array_equal(xyz, [[1, 2, 3], [4.5, 5, 6]])
    np.testing.assert_array_equal(t, [0, 10.5])
    assert xyz.dtype == np.float64 and t.shape == (2,)


@pytest.mark.parametrize("reader", [read_pmj_csv, read_electrodes_csv, read_ecg_csv])
def test_csv_missing_file(tmp_path, reader):
    with pytest.raises(InputFileError, match=r"nope\.csv: file not found"):
        reader(tmp_path / "nope.csv")


@pytest.mark.parametrize("reader", [read_pmj_csv, read_electrodes_csv, read_ecg_csv])
def test_csv_empty_file(tmp_path, reader):
    f = _write(tmp_path / "empty.csv", "")
    with pytest.raises(InputFileError, match=r"empty\.csv: file is empty"):
        reader(f)


def test_csv_header_only(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n")
    with pytest.raises(InputFileError, match="no data rows"):
        read_pmj_csv(f)


def test_csv_wrong_columns(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x,y,z,t\n1,2,3,0\n")
    with pytest.raises(
        InputFileError, match=r"pmj\.csv: missing column\(s\) x_mm, y_mm, z_mm, t_ms"
    ):
        read_pmj_csv(f)


def test_csv_wrong_unit_column_hint(tmp_path):
    f = _write(tmp_path / "el.csv", "name,x_cm,y_cm,z_cm\nV1,1,2,3\n")
    with pytest.raises(InputFileError, match="wrong unit: convert to"):
        read_electrodes_csv(f)


def test_csv_nan(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n1,2,3,0\n1,nan,3,0\n")
    with pytest.raises(
        InputFileError, match=r"pmj\.csv: row 2, column y_mm: nan \(NaN or infinite"
    ):
        read_pmj_csv(f)


def test_csv_inf(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n1,2,3,inf\n")
    with pytest.raises(InputFileError, match="NaN or infinite"):
        read_pmj_csv(f)


def test_csv_non_numeric(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n1,2,3,0\n1,2,abc,0\n")
    with pytest.raises(InputFileError, match=r"row 2, column z_mm: 'abc' is not a number"):
        read_pmj_csv(f)


def test_csv_empty_cell_and_ragged(tmp_path):
    f = _write(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n1,,3,0\n")
    with pytest.raises(InputFileError, match="empty value"):
        read_pmj_csv(f)
    f = _write(tmp_path / "pmj2.csv", "x_mm,y_mm,z_mm,t_ms\n1,2,3\n")
    with pytest.raises(InputFileError, match="row 1: 3 fields"):
        read_pmj_csv(f)


def test_electrodes(tmp_path):
    f = _write(
        tmp_path / "el.csv",
        "name,x_mm,y_mm,z_mm\nra,0,0,0\nLA,1,0,0\nLL,0,1,0\nRL,0,0,1\nV1,1,1,1\nBSM7,2,2,2\n",
    )
    el = read_electrodes_csv(f)
    assert list(el) == ["RA", "LA", "LL", "RL", "V1", "BSM7"]
    np.testing.assert_array_equal(el["V1"], [1, 1, 1])


def test_electrodes_duplicate(tmp_path):
    f = _write(tmp_path / "el.csv", "name,x_mm,y_mm,z_mm\nV1,0,0,0\nV2,1,0,0\nv1,0,1,0\n")
    with pytest.raises(
        InputFileError, match=r"el\.csv: duplicate electrode name 'V1' \(rows 1 and 3\)"
    ):
        read_electrodes_csv(f)


def test_ecg_roundtrip(tmp_path):
    t = np.arange(0.0, 5.0)
    v = np.stack([np.sin(t), np.cos(t)])
    write_ecg_csv(tmp_path / "ecg.csv", t, ["I", "V1"], v)
    assert os.listdir(tmp_path) == ["ecg.csv"]
    t2, names, v2 = read_ecg_csv(tmp_path / "ecg.csv", allowed_leads=STANDARD_LEADS)
    assert names == ["I", "V1"]
    np.testing.assert_allclose(t2, t)
    np.testing.assert_allclose(v2, v, rtol=1e-8)


def test_ecg_unknown_lead(tmp_path):
    f = _write(tmp_path / "ecg.csv", "time_ms,I,V7\n0,0,0\n1,0,0\n")
    with pytest.raises(InputFileError, match=r"ecg\.csv: unknown lead\(s\) V7"):
        read_ecg_csv(f, allowed_leads=STANDARD_LEADS)
    assert read_ecg_csv(f)[1] == ["I", "V7"]  # no restriction given


def test_ecg_case_insensitive_standard_names(tmp_path):
    f = _write(tmp_path / "ecg.csv", "time_ms,avr,v1\n0,0,0\n1,0,0\n")
    assert read_ecg_csv(f, allowed_leads=STANDARD_LEADS)[1] == ["aVR", "V1"]


def test_ecg_first_column_and_time_order(tmp_path):
    f = _write(tmp_path / "ecg.csv", "I,time_ms\n0,0\n1,1\n")
    with pytest.raises(InputFileError, match="first column must be time_ms"):
        read_ecg_csv(f)
    f = _write(tmp_path / "ecg2.csv", "time_ms,I\n0,0\n1,0\n1,0\n")
    with pytest.raises(InputFileError, match="strictly increasing"):
        read_ecg_csv(f)
    f = _write(tmp_path / "ecg3.csv", "time_ms,I,I\n0,0,0\n1,0,0\n")
    with pytest.raises(InputFileError, match="duplicate"):
        read_ecg_csv(f)


@pytest.mark.parametrize("dt", [2.0, 0.5, 0.7])
def test_ecg_resampled_to_1ms(tmp_path, dt):
    t = np.arange(0.0, 40.0 + 1e-9, dt)
    v = np.stack([3.0 * t - 1.0, np.sin(t / 7.0)])
    write_ecg_csv(tmp_path / "ecg.csv", t, ["II", "V2"], v)
    t2, names, v2 = read_ecg_csv(tmp_path / "ecg.csv")
    n = int(np.floor(t[-1])) + 1
    np.testing.assert_allclose(t2, np.arange(n, dtype=float))
    np.testing.assert_allclose(v2[0], 3.0 * t2 - 1.0, atol=1e-6)  # linear: exact
    np.testing.assert_allclose(v2[1], np.interp(t2, t, v[1]), atol=1e-7)
    assert v2.shape == (2, n)


def test_ecg_time_in_seconds_rejected(tmp_path):
    f = _write(tmp_path / "ecg.csv", "time_ms,I\n0,0\n0.001,1\n0.002,0\n")
    with pytest.raises(InputFileError, match="are the times in seconds"):
        read_ecg_csv(f)


def test_resample_keeps_1ms_offset_grid():
    t = np.array([0.5, 1.5, 2.5])
    tt, vv = resample_1ms(t, np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(tt, t)
    np.testing.assert_array_equal(vv, [[1.0, 2.0, 3.0]])


def test_write_ecg_csv_no_partial_on_failure(tmp_path):
    with pytest.raises(ValueError):
        write_ecg_csv(tmp_path / "ecg.csv", np.arange(3.0), ["I"], np.zeros((2, 3)))
    assert os.listdir(tmp_path) == []


def test_wfdb_ptb():
    pytest.importorskip("wfdb")
    rec = SHARED / "ptb_s0010" / "s0010_re"
    _need(rec.with_suffix(".hea"))
    import wfdb

    raw = wfdb.rdrecord(str(rec))
    t, names, v = read_wfdb_ecg(rec)
    assert names == list(STANDARD_LEADS)
    assert v.shape == (12, raw.sig_len)
    np.testing.assert_allclose(np.diff(t), 1.0)
    col = [s.lower() for s in raw.sig_name].index("avr")
    np.testing.assert_allclose(v[3], raw.p_signal[:, col])  # record is in mV at 1 kHz
    t, names, v = read_wfdb_ecg(str(rec) + ".hea", qrs=(1000.0, 1120.0))
    assert t[0] == 0.0 and t[-1] == 120.0 and v.shape == (12, 121)
    np.testing.assert_allclose(v[0], raw.p_signal[1000:1121, 0])
    # Einthoven: III = II - I (same digitisation, to ~1 LSB)
    assert np.abs(v[2] - (v[1] - v[0])).max() < 0.01
    with pytest.raises(InputFileError, match="outside the record"):
        read_wfdb_ecg(rec, qrs=(0.0, 1e9))


def test_wfdb_record_of_several_beats_fits_one_qrs(tmp_path):
    """``fit``'s default ``--qrs auto`` on a multi-beat WFDB record (500 Hz) keeps one QRS."""
    pytest.importorskip("wfdb")
    import wfdb
    from test_qrs import beat

    from cdt_bayes._outputs import _read_ecg

    _, one = beat(n_leads=12, n_t=800, qrs_on=100.0)
    sig = np.tile(one, 6)[:, ::2].T  # 6 beats of 800 ms at 500 Hz, mV
    names = [x.lower() for x in STANDARD_LEADS]
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=names, p_signal=sig, fmt=["16"] * 12, write_dir=str(tmp_path))
    t, leads, v, window = _read_ecg(str(tmp_path / "rec.hea"), "auto")
    assert leads == list(STANDARD_LEADS) and window["source"] == "auto" and window["n_beats"] == 6
    assert window["cut"] and t[0] == 0.0 and np.allclose(np.diff(t), 1.0)
    k = round(window["start_ms"] / 800)
    assert 800 * k + 80 <= window["start_ms"] <= 800 * k + 105 and 40 < t[-1] < 260
    t, _, v, window = _read_ecg(str(tmp_path / "rec"), (900.0, 1000.0))
    assert window["source"] == "given" and t[-1] == 100.0 and v.shape == (12, 101)


def test_wfdb_missing(tmp_path):
    pytest.importorskip("wfdb")
    with pytest.raises(InputFileError, match="file not found"):
        read_wfdb_ecg(tmp_path / "rec")


# ---------------------------------------------------------------------------------- meshes


def test_vtu_roundtrip(tmp_path):
    nodes, tets = box_mesh((3, 2, 2), (3.0, 2.0, 2.0))
    surf = box_surface_labels(nodes, 0, 0.0, 1)
    nf = np.tile([0.0, 0.0, 2.0**-0.5], (len(nodes), 1))
    nf[:, 1] = 2.0**-0.5
    nf[::2] *= -1  # axial directions: signs must not cancel in the tet average
    f = _vtu(tmp_path / "h.vtu", nodes, tets, {"fiber": nf, "surface": surf})
    m = load_mesh(f)
    np.testing.assert_array_equal(m.surface, surf)
    assert m.fibres.shape == (len(tets), 3)
    np.testing.assert_allclose(np.abs(m.fibres @ nf[1]), 1.0)
    np.testing.assert_allclose(m.node_fibres, nf)
    save_mesh_vtu(tmp_path / "out.vtu", m, {"activation_ms": nodes[:, 0] * 2})
    assert sorted(os.listdir(tmp_path)) == ["h.vtu", "out.vtu"]
    back = meshio.read(tmp_path / "out.vtu")
    np.testing.assert_allclose(back.point_data["activation_ms"], nodes[:, 0] * 2)
    np.testing.assert_array_equal(back.point_data["surface"], surf)
    m2 = load_mesh(tmp_path / "out.vtu")
    np.testing.assert_allclose(m2.fibres, m.fibres)
    np.testing.assert_array_equal(m2.tets, m.tets)


def test_cell_fibres_and_sheets(tmp_path):
    nodes, tets = box_mesh((2, 2, 2))
    fib = np.tile([0.0, 2.0, 0.0], (len(tets), 1)) * 0.5
    she = np.tile([1.0, 0.3, 0.0], (len(tets), 1))
    she /= np.linalg.norm(she, axis=1, keepdims=True)
    f = _vtu(tmp_path / "h.vtu", nodes, tets, cell_data={"fiber": [fib], "sheet": [she]})
    m = load_mesh(f)
    np.testing.assert_allclose(m.fibres, np.tile([0, 1, 0], (len(tets), 1)))
    np.testing.assert_allclose(m.sheets, np.tile([1, 0, 0], (len(tets), 1)), atol=1e-12)
    assert m.node_fibres is None


def test_missing_fibres_warns(tmp_path):
    nodes, tets = box_mesh((2, 2, 2))
    f = _vtu(tmp_path / "h.vtu", nodes, tets)
    with pytest.warns(UserWarning, match=r"h\.vtu: no 'fiber' data; conduction will be isotropic"):
        m = load_mesh(f)
    assert m.fibres is None


def test_mesh_missing_file(tmp_path):
    with pytest.raises(MeshError, match=r"heart\.vtu: file not found"):
        load_mesh(tmp_path / "heart.vtu")
    with pytest.raises(MeshError, match=r"heart: file not found"):
        load_mesh(tmp_path / "heart")


def test_mesh_unreadable(tmp_path):
    f = _write(tmp_path / "h.vtu", "this is not xml")
    with pytest.raises(MeshError, match=r"h\.vtu: cannot read mesh"):
        load_mesh(f)


def test_mesh_no_tets(tmp_path):
    nodes = np.eye(3)
    f = tmp_path / "tri.vtu"
    meshio.write(f, meshio.Mesh(nodes, [("triangle", np.array([[0, 1, 2]]))]))
    with pytest.raises(MeshError, match=r"tri\.vtu: no tetrahedra \(cell types: triangle\)"):
        load_mesh(f)
    with pytest.raises(MeshError, match="m: no tetrahedra"):
        validate_mesh(Mesh(nodes=nodes, tets=np.zeros((0, 4), int)), "m")


def test_mesh_nan_coordinates():
    m = _mesh()
    nodes = m.nodes.copy()
    nodes[5, 1] = np.nan
    with pytest.raises(
        MeshError, match=r"h\.vtu: 1 nodes have NaN or infinite coordinates \(first: node 5\)"
    ):
        validate_mesh(m.replace(nodes=nodes), "h.vtu")


def test_mesh_index_out_of_range():
    m = _mesh()
    tets = m.tets.copy()
    tets[0, 0] = m.n_nodes
    with pytest.raises(MeshError, match=r"tets reference node 27 but the mesh has 27 nodes"):
        validate_mesh(m.replace(tets=tets), "h.vtu")


def test_mesh_inverted_mixed():
    m = _mesh()
    tets = m.tets.copy()
    tets[[3, 10, 20]] = tets[[3, 10, 20]][:, [1, 0, 2, 3]]
    with pytest.raises(MeshError, match=r"h\.vtu: 3 inverted tets \(of 48; first: tet 3\)"):
        validate_mesh(m.replace(tets=tets), "h.vtu")


def test_mesh_folded_by_moved_node():
    nodes, tets = box_mesh((2, 2, 2))
    nodes = nodes.copy()
    nodes[13] += [0.8, 0.0, 0.0]  # centre node pushed through its neighbours
    with pytest.raises(MeshError, match="inverted tets"):
        validate_mesh(Mesh(nodes=nodes, tets=tets, fibres=_fibres_x(len(tets))), "f.vtu")


def test_mesh_all_reversed_reoriented(tmp_path):
    nodes, tets = box_mesh((2, 2, 2))
    rev = tets[:, [1, 0, 2, 3]]
    assert (tet_volumes(nodes, rev) < 0).all()
    f = _vtu(tmp_path / "h.vtu", nodes, rev, cell_data={"fiber": [_fibres_x(len(tets))]})
    m = load_mesh(f)
    assert (tet_volumes(m.nodes, m.tets) > 0).all()
    np.testing.assert_array_equal(np.sort(m.tets, 1), np.sort(tets, 1))


def test_mesh_degenerate():
    m = _mesh()
    nodes = np.concatenate([m.nodes, [[0.25, 0.25, 0.0]]])  # coplanar with face z = 0
    tets = np.concatenate([m.tets, [[0, 1, 3, 27]]])
    with pytest.raises(
        MeshError, match=r"h\.vtu: 1 degenerate tets with zero volume \(first: tet 48\)"
    ):
        validate_mesh(m.replace(nodes=nodes, tets=tets, fibres=_fibres_x(49)), "h.vtu")
    tets = m.tets.copy()
    tets[7, 3] = tets[7, 0]  # repeated vertex
    with pytest.raises(MeshError, match="degenerate"):
        validate_mesh(m.replace(tets=tets), "h.vtu")


def test_mesh_sliver_is_valid():
    # a thin but valid tet (height 1e-6 of its edge) glued on the box: not an error
    m = _mesh((1, 1, 1))
    nodes = np.concatenate([m.nodes, [[0.5, 0.5, -1e-6]]])
    tets = np.concatenate([m.tets, [[0, 3, 1, 8]]])
    assert tet_volumes(nodes, tets)[-1] > 0
    out = validate_mesh(m.replace(nodes=nodes, tets=tets, fibres=_fibres_x(7)), "s.vtu")
    assert out.n_tets == 7


def test_mesh_disconnected():
    n1, t1 = box_mesh((1, 1, 1))
    nodes = np.concatenate([n1, n1 + 5.0, n1 + 10.0])
    tets = np.concatenate([t1, t1 + 8, t1 + 16])
    with pytest.raises(MeshError, match=r"h\.vtu: 3 disconnected parts"):
        validate_mesh(Mesh(nodes=nodes, tets=tets, fibres=_fibres_x(18)), "h.vtu")


def test_mesh_duplicated_tets():
    m = _mesh()
    with pytest.raises(MeshError, match="shared by more than two tets"):
        validate_mesh(
            m.replace(tets=np.concatenate([m.tets, m.tets[:1]]), fibres=_fibres_x(49)), "h.vtu"
        )


def test_mesh_orphan_nodes_dropped():
    m = _mesh()
    nodes = np.concatenate([[[9.0, 9.0, 9.0]], m.nodes])
    surf = np.arange(28) % 3
    out = validate_mesh(m.replace(nodes=nodes, tets=m.tets + 1, surface=surf), "h.vtu")
    assert out.n_nodes == 27
    np.testing.assert_array_equal(out.nodes, m.nodes)
    np.testing.assert_array_equal(out.tets, m.tets)
    np.testing.assert_array_equal(out.surface, surf[1:])


def test_mesh_non_unit_fibres():
    m = _mesh()
    fib = m.fibres.copy()
    fib[4] *= 1.5
    with pytest.raises(MeshError, match=r"h\.vtu: non-unit fibres: 1 'fiber' vectors .* tet 4"):
        validate_mesh(m.replace(fibres=fib), "h.vtu")
    fib = m.fibres * 1.05  # within 10 %: normalised
    np.testing.assert_allclose(validate_mesh(m.replace(fibres=fib), "h.vtu").fibres, m.fibres)


def test_mesh_nan_fibres_are_errors(tmp_path):
    m = _mesh()
    fib = m.fibres.copy()
    fib[2] = np.nan
    with pytest.raises(MeshError, match="NaN, infinite or zero"):
        validate_mesh(m.replace(fibres=fib), "h.vtu")
    nf = np.tile([1.0, 0, 0], (m.n_nodes, 1))
    nf[3] = np.inf
    f = _vtu(tmp_path / "h.vtu", m.nodes, m.tets, {"fiber": nf})
    with pytest.raises(
        MeshError, match=r"1 'fiber' vectors are NaN, infinite or zero \(first: node 3\)"
    ):
        load_mesh(f)


def test_zero_fibres_mean_isotropic_conduction_there(tmp_path):
    """Real meshes leave some fibre directions undefined (zero): kept as zero, with a warning."""
    m = _mesh()
    fib = m.fibres.copy()
    fib[[2, 5]] = 0.0
    with pytest.warns(UserWarning, match=r"h\.vtu: 2 of \d+ 'fiber' vectors are zero \(first: tet 2\).*isotropic"):
        out = validate_mesh(m.replace(fibres=fib), "h.vtu")
    assert np.all(out.fibres[[2, 5]] == 0.0)
    np.testing.assert_allclose(np.linalg.norm(np.delete(out.fibres, [2, 5], 0), axis=1), 1.0)
    # the eikonal metric of a zero fibre is the isotropic cross-fibre one
    from cdt_bayes._eikonal import conduction_metric

    d = np.asarray(conduction_metric(jnp.asarray(out.fibres[[1, 2]]), 0.6, 0.4))
    np.testing.assert_allclose(d[1], np.eye(3) * d[1, 0, 0], atol=1e-7)
    assert not np.allclose(d[0], np.eye(3) * d[0, 0, 0])
    with pytest.raises(MeshError, match="every 'fiber' vector is zero"):
        validate_mesh(m.replace(fibres=np.zeros_like(fib)), "h.vtu")
    # zero node fibres: a tet keeps the mean of its other nodes' directions
    nf = np.tile([1.0, 0, 0], (m.n_nodes, 1))
    nf[3] = 0.0
    f = _vtu(tmp_path / "h.vtu", m.nodes, m.tets, {"fiber": nf})
    with pytest.warns(UserWarning, match="1 of .* 'fiber' vectors are zero .first: node 3"):
        loaded = load_mesh(f)
    np.testing.assert_allclose(loaded.fibres, np.tile([1.0, 0, 0], (m.n_tets, 1)))


def test_mesh_bad_surface_labels():
    m = _mesh()
    with pytest.raises(MeshError, match="label 7"):
        validate_mesh(m.replace(surface=np.full(m.n_nodes, 7)), "h.vtu")


@pytest.mark.parametrize(
    ("units", "scale"), [("m", 1000.0), ("cm", 10.0), ("mm", 1.0), ("um", 1e-3)]
)
def test_units_scaling(tmp_path, units, scale):
    nodes, tets = box_mesh((1, 1, 1), (2.0, 3.0, 4.0))
    f = _vtu(tmp_path / "h.vtu", nodes, tets, cell_data={"fiber": [_fibres_x(6)]})
    m = load_mesh(f, units=units)
    np.testing.assert_allclose(m.nodes, nodes * scale)


def test_units_unknown(tmp_path):
    nodes, tets = box_mesh((1, 1, 1))
    f = _vtu(tmp_path / "h.vtu", nodes, tets, cell_data={"fiber": [_fibres_x(6)]})
    with pytest.raises(CdtBayesError, match="--units: unknown length unit 'inch'"):
        load_mesh(f, units="inch")


def test_opencarp_roundtrip(tmp_path):
    nodes, tets = box_mesh((2, 2, 1), (2.0, 2.0, 1.0))
    fib = np.tile([0.0, 0.0, 1.0], (len(tets), 1))
    she = np.tile([1.0, 0.0, 0.0], (len(tets), 1))
    write_opencarp(tmp_path / "heart", nodes * 1000.0, tets, fib, she)
    for arg in ("heart", "heart.pts", "heart.elem"):
        m = load_mesh(tmp_path / arg)
        np.testing.assert_allclose(m.nodes, nodes)  # µm -> mm
        np.testing.assert_array_equal(m.tets, tets)
        np.testing.assert_allclose(m.fibres, fib)
        np.testing.assert_allclose(m.sheets, she)
    m = load_mesh(tmp_path / "heart", units="mm")  # explicit unit overrides µm
    np.testing.assert_allclose(m.nodes, nodes * 1000.0)


def test_opencarp_no_lon_no_region(tmp_path):
    nodes, tets = box_mesh((1, 1, 1))
    write_opencarp(tmp_path / "h", nodes * 1000.0, tets, region=False)
    with pytest.warns(UserWarning, match="isotropic"):
        m = load_mesh(tmp_path / "h")
    assert m.n_tets == 6 and m.fibres is None


def test_opencarp_bad_files(tmp_path):
    nodes, tets = box_mesh((1, 1, 1))
    write_opencarp(tmp_path / "h", nodes * 1000.0, tets, _fibres_x(6))
    _write(tmp_path / "h.pts", "9\n" + "0 0 0\n" * 8)
    with pytest.raises(MeshError, match=r"h\.pts: header says 9 points but the file holds 8"):
        load_mesh(tmp_path / "h")
    write_opencarp(tmp_path / "h", nodes * 1000.0, tets, _fibres_x(6))
    _write(tmp_path / "h.elem", "2\nTt 0 1 2 3 0\nTr 0 1 2 0\n")
    with pytest.raises(MeshError, match=r"h\.elem: element types Tr not supported"):
        load_mesh(tmp_path / "h")
    write_opencarp(tmp_path / "h", nodes * 1000.0, tets, _fibres_x(6))
    _write(tmp_path / "h.lon", "1\n1 0 0\n")
    with pytest.raises(MeshError, match=r"h\.lon: expected a header"):
        load_mesh(tmp_path / "h")
    (tmp_path / "h.elem").unlink()
    with pytest.raises(MeshError, match=r"h\.elem: file not found"):
        load_mesh(tmp_path / "h")


def test_endo_node_list_and_surface_mesh(tmp_path):
    nodes, tets = box_mesh((2, 2, 2), (2.0, 2.0, 2.0))
    f = _vtu(tmp_path / "h.vtu", nodes, tets, cell_data={"fiber": [_fibres_x(len(tets))]})
    lv = np.nonzero(nodes[:, 0] == 0)[0]
    _write(tmp_path / "lv.txt", "\n".join(map(str, lv)))
    rv_nodes = np.nonzero(nodes[:, 0] == 2.0)[0]
    surf = meshio.Mesh(nodes[rv_nodes] + 1e-5, [("triangle", np.array([[0, 1, 3]]))])
    meshio.write(tmp_path / "rv.vtk", surf)
    m = load_mesh(f, endo_lv=tmp_path / "lv.txt", endo_rv=tmp_path / "rv.vtk")
    expect = np.zeros(len(nodes), int)
    expect[lv] = 1
    expect[rv_nodes] = 2
    np.testing.assert_array_equal(m.surface, expect)


def test_endo_bad_files(tmp_path):
    nodes, tets = box_mesh((1, 1, 1))
    f = _vtu(tmp_path / "h.vtu", nodes, tets, cell_data={"fiber": [_fibres_x(6)]})
    _write(tmp_path / "lv.txt", "0 1 99\n")
    with pytest.raises(
        MeshError, match=r"lv\.txt: node index 99 out of range: the mesh has 8 nodes"
    ):
        load_mesh(f, endo_lv=tmp_path / "lv.txt")
    _write(tmp_path / "lv.txt", "0 1 x\n")
    with pytest.raises(MeshError, match=r"lv\.txt: 'x' is not an integer node index"):
        load_mesh(f, endo_lv=tmp_path / "lv.txt")
    with pytest.raises(MeshError, match=r"rv\.txt: file not found"):
        load_mesh(f, endo_rv=tmp_path / "rv.txt")
    meshio.write(
        tmp_path / "rv.vtk", meshio.Mesh(nodes[:3] + 0.5, [("triangle", np.array([[0, 1, 2]]))])
    )
    with pytest.raises(MeshError, match=r"rv\.vtk: 3 of 3 surface points are not mesh nodes"):
        load_mesh(f, endo_rv=tmp_path / "rv.vtk")
    _write(tmp_path / "rv.ply", "garbage")
    with pytest.raises(MeshError, match=r"rv\.ply: cannot read surface mesh"):
        load_mesh(f, endo_rv=tmp_path / "rv.ply")


def test_dti004_loads():
    path = SHARED / "dti004" / "heart.vtu"
    _need(path)
    m = load_mesh(path)
    assert (m.n_nodes, m.n_tets) == (36871, 191498)
    assert (tet_volumes(m.nodes, m.tets) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(m.fibres, axis=1), 1.0)
    assert (m.surface == 1).sum() == 3204 and (m.surface == 2).sum() == 3458


# ---------------------------------------------------------------------------------- atomic dir


def test_atomic_output_dir_success(tmp_path):
    out = tmp_path / "run"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
        assert not (out / "a.txt").exists()
    assert (out / "a.txt").read_text() == "a" and (out / "sub" / "b.txt").read_text() == "b"
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_atomic_output_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out) as tmp:
            write_ecg_csv(tmp / "ecg.csv", np.arange(2.0), ["I"], np.zeros((1, 2)))
            raise RuntimeError("boom")
    assert os.listdir(out) == ["old.txt"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_atomic_output_dir_not_creatable(tmp_path):
    blocker = _write(tmp_path / "file", "x")
    with pytest.raises(CdtBayesError, match="exists and is not a directory"):
        with atomic_output_dir(blocker):
            pass
    with pytest.raises(CdtBayesError, match="cannot create output directory"):
        with atomic_output_dir(blocker / "sub"):
            pass
