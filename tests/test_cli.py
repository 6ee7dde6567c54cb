"""The ``cdt-bayes`` command line, run in-process through ``main([...])``.

Contract (../shared/CONTRACT.md): output files and columns, and bad input ending with exactly one
line ``cdt-bayes: error: <file or option>: <problem>`` on stderr, a non-zero exit status, no
traceback and no output file left behind.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import sys
import types
import warnings
from pathlib import Path

import meshio
import numpy as np
import pytest
from helpers import box_mesh

from cdt_bayes import _cli
from cdt_bayes._cli import main
from cdt_bayes._errors import CdtBayesError

CONTRACT_HEADER = ["time_ms", "I", "II", "III", "aVR", "aVL", "aVF"] + [
    f"V{i}" for i in range(1, 7)
]
OUTPUTS = ("activation.vtu", "ecg.csv")

# Electrodes ~60 mm around the 10 mm box (centre (5, 5, 5)).
BOX_ELECTRODES = {
    "RA": (-40.0, 5.0, 50.0),
    "LA": (50.0, 5.0, 50.0),
    "LL": (20.0, 5.0, -50.0),
    "V1": (-10.0, 65.0, 5.0),
    "V2": (10.0, 65.0, 5.0),
    "V3": (30.0, 60.0, 5.0),
    "V4": (45.0, 50.0, 5.0),
    "V5": (60.0, 30.0, 5.0),
    "V6": (65.0, 5.0, 5.0),
}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def write_vtu(path, nodes, tets, fibres=True, surface=True):
    point_data = {}
    if fibres:
        point_data["fiber"] = np.tile([1.0, 0.0, 0.0], (len(nodes), 1))
    if surface:
        lab = np.zeros(len(nodes), np.int32)
        lab[np.isclose(nodes[:, 0], 0.0)] = 1
        point_data["surface"] = lab
    meshio.write(path, meshio.Mesh(nodes, [("tetra", tets)], point_data=point_data))
    return path


def write_electrodes(path, electrodes=BOX_ELECTRODES, extra=None):
    rows = dict(electrodes, **(extra or {}))
    with open(path, "w") as fh:
        fh.write("name,x_mm,y_mm,z_mm\n")
        for name, (x, y, z) in rows.items():
            fh.write(f"{name},{x},{y},{z}\n")
    return path


def write_text(path, text):
    Path(path).write_text(text)
    return path


@pytest.fixture
def box(tmp_path):
    """A 10 mm box mesh with x fibres, its electrodes, PMJs and an output dir (not created)."""
    nodes, tets = box_mesh((5, 5, 5), (10.0, 10.0, 10.0))
    d = types.SimpleNamespace(nodes=nodes, tets=tets)
    d.mesh = write_vtu(tmp_path / "box.vtu", nodes, tets)
    d.electrodes = write_electrodes(tmp_path / "electrodes.csv")
    d.pmj = write_text(tmp_path / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n2,2,2,0\n8,8,8,5\n")
    d.out = tmp_path / "out"
    return d


def simulate_args(b, **over):
    opts = {"--mesh": b.mesh, "--pmj": b.pmj, "--electrodes": b.electrodes, "--out": b.out}
    opts.update(over)
    argv = ["simulate"]
    for k, v in opts.items():
        argv += [k, *(v if isinstance(v, list) else [v])]
    return argv


def assert_one_line_error(rc, err, *needles, out_dir=None):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cdt-bayes: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])
    if out_dir is not None:
        for f in OUTPUTS:
            assert not (Path(out_dir) / f).exists()
        if Path(out_dir).is_dir():
            assert not [p for p in Path(out_dir).iterdir() if not p.name.startswith(".")]


def read_ecg(path):
    with open(path) as fh:
        header = next(csv.reader(fh))
    data = np.loadtxt(path, delimiter=",", skiprows=1)
    return header, data


def check_lead_algebra(header, data):
    col = {h: data[:, i] for i, h in enumerate(header)}
    scale = max(1e-6, float(np.abs(data[:, 1:]).max()))
    np.testing.assert_allclose(col["I"] + col["III"], col["II"], atol=1e-5 * scale)
    np.testing.assert_allclose(col["aVR"] + col["aVL"] + col["aVF"], 0.0, atol=1e-5 * scale)
    np.testing.assert_array_equal(np.diff(col["time_ms"]), 1.0)
    assert col["time_ms"][0] == 0.0


# ------------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """``cdt-bayes geometry`` output (shipped coarse mesh) plus 3 endocardial PMJs."""
    g = tmp_path_factory.mktemp("geometry") / "g"
    assert main(["geometry", "--out", str(g), "--quiet"]) == 0
    m = meshio.read(g / "heart.vtu")
    s = np.asarray(m.point_data["surface"]).ravel()
    idx = [*np.flatnonzero(s == 1)[[0, 300]], np.flatnonzero(s == 2)[0]]
    rows = "".join(f"{x},{y},{z},{5.0 * i}\n" for i, (x, y, z) in enumerate(m.points[idx]))
    write_text(g / "pmj.csv", "x_mm,y_mm,z_mm,t_ms\n" + rows)
    return g


def test_geometry_coarse_writes_mesh_and_electrodes(coarse):
    m = meshio.read(coarse / "heart.vtu")
    assert [c.type for c in m.cells] == ["tetra"]
    n = len(m.points)
    for key in ("fiber", "sheet"):
        a = np.asarray(m.point_data[key])
        assert a.shape == (n, 3)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    s = np.asarray(m.point_data["surface"]).ravel()
    assert set(np.unique(s)) == {0, 1, 2, 3, 4}
    with open(coarse / "electrodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["name", "x_mm", "y_mm", "z_mm"]
    names = [r["name"] for r in rows]
    assert {"RA", "LA", "LL", "V1", "V2", "V3", "V4", "V5", "V6"} <= set(names)
    xyz = np.array([[float(r[k]) for k in ("x_mm", "y_mm", "z_mm")] for r in rows])
    assert np.isfinite(xyz).all()
    # electrodes lie outside the heart: farther from the centre than every node
    centre = m.points.mean(axis=0)
    assert (
        np.linalg.norm(xyz - centre, axis=1).min()
        > np.linalg.norm(m.points - centre, axis=1).max() * 0.5
    )


def test_geometry_prints_outputs_and_is_idempotent(tmp_path, capsys):
    rc, out, err = run(capsys, "geometry", "--out", tmp_path / "g")
    assert rc == 0
    assert str(tmp_path / "g" / "heart.vtu") in out and "electrodes.csv" in out
    assert "Traceback" not in err
    rc, _, _ = run(capsys, "geometry", "--out", tmp_path / "g", "--quiet")
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["electrodes.csv", "heart.vtu"]


def test_geometry_bad_seed_and_out(tmp_path, capsys):
    rc, _, err = run(capsys, "geometry", "--out", tmp_path / "g", "--seed", "-1")
    assert_one_line_error(rc, err, "--seed")
    f = write_text(tmp_path / "file.txt", "x")
    rc, _, err = run(capsys, "geometry", "--out", f)
    assert_one_line_error(rc, err, "--out", "file.txt")


# ------------------------------------------------------------------------------- simulate


def test_simulate_box_end_to_end(box, capsys):
    rc, out, err = run(capsys, *simulate_args(box))
    assert rc == 0, err
    assert "activation.vtu" in out and "ecg.csv" in out
    m = meshio.read(box.out / "activation.vtu")
    act = np.asarray(m.point_data["activation_ms"]).ravel()
    assert act.shape == (len(box.nodes),) and np.isfinite(act).all()
    # PMJ 0 sits on a node at t = 0; the farthest corner is < 20 mm / 0.4 mm/ms away
    assert act.min() == pytest.approx(0.0, abs=1e-4)
    assert 5.0 < act.max() < 50.0
    assert "fiber" in m.point_data and "surface" in m.point_data
    header, data = read_ecg(box.out / "ecg.csv")
    assert header == CONTRACT_HEADER
    assert data[-1, 0] >= act.max()
    check_lead_algebra(header, data)
    assert np.abs(data[:, 1:]).max() > 0
    assert not [p for p in box.out.iterdir() if p.name.startswith(".")]


def test_simulate_default_coarse_mesh(coarse, tmp_path, capsys):
    out_dir = tmp_path / "s"
    rc, out, err = run(
        capsys,
        "simulate",
        "--mesh",
        coarse / "heart.vtu",
        "--pmj",
        coarse / "pmj.csv",
        "--electrodes",
        coarse / "electrodes.csv",
        "--out",
        out_dir,
    )
    assert rc == 0, err
    assert "warning" not in err  # the default mesh has fibres and labels
    m = meshio.read(out_dir / "activation.vtu")
    act = np.asarray(m.point_data["activation_ms"]).ravel()
    assert np.isfinite(act).all() and act.min() >= -1e-6
    assert 30.0 < act.max() < 400.0
    header, data = read_ecg(out_dir / "ecg.csv")
    assert header == CONTRACT_HEADER
    check_lead_algebra(header, data)
    # QRS: the ECG returns to (near) zero by the last sample
    peak = np.abs(data[:, 1:]).max()
    assert np.abs(data[-1, 1:]).max() < 1e-3 * peak


def test_simulate_extra_electrodes_and_lead_subset(box, capsys):
    box.electrodes = write_electrodes(box.electrodes, extra={"BSM1": (5.0, -60.0, 5.0)})
    rc, _, err = run(capsys, *simulate_args(box))
    assert rc == 0, err
    header, _ = read_ecg(box.out / "ecg.csv")
    assert header == CONTRACT_HEADER + ["BSM1"]
    rc, _, err = run(capsys, *simulate_args(box, **{"--leads": ["ii,v1", "avr"]}))
    assert rc == 0, err
    header, _ = read_ecg(box.out / "ecg.csv")
    assert header == ["time_ms", "II", "V1", "aVR"]


def test_simulate_velocity_scales_activation(box, capsys):
    rc, _, _ = run(capsys, *simulate_args(box, **{"--cv-fiber": "0.6", "--cv-cross": "0.6"}))
    assert rc == 0
    slow = np.asarray(meshio.read(box.out / "activation.vtu").point_data["activation_ms"]).ravel()
    rc, _, _ = run(capsys, *simulate_args(box, **{"--cv-fiber": "1.2", "--cv-cross": "1.2"}))
    assert rc == 0
    fast = np.asarray(meshio.read(box.out / "activation.vtu").point_data["activation_ms"]).ravel()
    # isotropic: T(v) - t0 scales as 1/v; PMJ times are 0 and 5 ms, so compare the near region
    near = slow < 5.0
    np.testing.assert_allclose(fast[near], slow[near] / 2.0, atol=1e-3)


def test_simulate_reversed_mesh_is_reoriented(box, capsys):
    write_vtu(box.mesh, box.nodes, box.tets[:, [0, 2, 1, 3]])
    rc, _, err = run(capsys, *simulate_args(box))
    assert rc == 0, err
    assert (box.out / "activation.vtu").exists()


def test_simulate_without_fibres_warns_isotropic(box, capsys):
    write_vtu(box.mesh, box.nodes, box.tets, fibres=False)
    rc, _, err = run(capsys, *simulate_args(box))
    assert rc == 0
    lines = err.strip().splitlines()
    warn = [ln for ln in lines if ln.startswith("cdt-bayes: warning:")]
    assert len(warn) == 1 and "isotropic" in warn[0] and "--fibres rule-based" in warn[0]
    assert (box.out / "ecg.csv").exists()


def test_simulate_rule_based_fibres_need_labels(box, capsys):
    write_vtu(box.mesh, box.nodes, box.tets, fibres=False)
    rc, _, err = run(capsys, *simulate_args(box, **{"--fibres": "rule-based"}))
    assert_one_line_error(rc, err, "box.vtu", "rule-based", out_dir=box.out)


def test_simulate_quiet_keeps_stderr_empty(box, capsys):
    rc, out, err = run(capsys, *simulate_args(box), "--quiet")
    assert rc == 0 and err == ""
    assert out.count("\n") == 2


# ------------------------------------------------------------------------------- bench


def test_bench_prints_one_json_object(box, capsys):
    rc, out, err = run(capsys, "bench", "--mesh", box.mesh, "--pmj", box.pmj, "--repeat", "1")
    assert rc == 0, err
    j = json.loads(out)  # stdout holds the JSON object only
    for k in ("n_nodes", "n_tets", "eikonal_s", "ecg_s", "grad_s", "device"):
        assert k in j
    assert j["n_nodes"] == len(box.nodes) and j["n_tets"] == len(box.tets)
    for k in ("eikonal_s", "ecg_s", "grad_s"):
        assert isinstance(j[k], float) and j[k] > 0
    assert j["device"] in ("cpu", "gpu", "cuda", "rocm", "tpu", "METAL")
    assert j["grad_finite"] is True and j["converged"] is True
    assert j["electrodes"] == "sphere electrodes"


def test_bench_bad_repeat(box, capsys):
    rc, out, err = run(capsys, "bench", "--mesh", box.mesh, "--pmj", box.pmj, "--repeat", "0")
    assert_one_line_error(rc, err, "--repeat")
    assert out == ""


# ------------------------------------------------------------------------------- bad input


def _bad_pmj(box, text):
    box.pmj = write_text(box.pmj, text)
    return box.pmj


@pytest.mark.parametrize(
    "case, text, needle",
    [
        ("empty", "", "empty"),
        ("columns", "x,y,z,t\n1,1,1,0\n", "x_mm"),
        ("nan", "x_mm,y_mm,z_mm,t_ms\n2,2,2,0\n2,nan,2,1\n", "NaN"),
        ("non-numeric", "x_mm,y_mm,z_mm,t_ms\n2,2,abc,0\n", "abc"),
        ("outside", "x_mm,y_mm,z_mm,t_ms\n2,2,2,0\n50,2,2,1\n", "outside"),
        ("negative time", "x_mm,y_mm,z_mm,t_ms\n2,2,2,-3\n", "t_ms"),
    ],
)
def test_bad_pmj_file(box, capsys, case, text, needle):
    pmj = _bad_pmj(box, text)
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, pmj, needle, out_dir=box.out)


def test_missing_mesh_file(box, tmp_path, capsys):
    box.mesh = tmp_path / "nope.vtu"
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "nope.vtu", "not found", out_dir=box.out)


def test_inverted_tets(box, capsys):
    tets = box.tets.copy()
    tets[:3] = tets[:3][:, [0, 2, 1, 3]]  # 3 tets of opposite orientation
    write_vtu(box.mesh, box.nodes, tets)
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "box.vtu", "inverted", out_dir=box.out)


def test_folded_mesh(box, capsys):
    nodes = box.nodes.copy()
    i = int(np.argmin(np.linalg.norm(nodes - [4.0, 4.0, 4.0], axis=1)))
    nodes[i] += [5.0, 0.0, 0.0]  # push an interior node through its neighbours
    write_vtu(box.mesh, nodes, box.tets)
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "box.vtu", "inverted", out_dir=box.out)


def test_degenerate_tet(box, capsys):
    nodes = box.nodes
    flat = [
        int(np.argmin(np.linalg.norm(nodes - p, axis=1)))
        for p in ([0, 0, 0], [2, 0, 0], [0, 2, 0], [2, 2, 0])
    ]  # 4 coplanar nodes: zero volume
    write_vtu(box.mesh, nodes, np.vstack([box.tets, flat]))
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "box.vtu", "degenerate", out_dir=box.out)


@pytest.mark.parametrize("value", ["0", "-0.6", "nan", "fast"])
def test_non_positive_cv_fiber(box, capsys, value):
    rc, _, err = run(capsys, *simulate_args(box, **{"--cv-fiber": value}))
    assert_one_line_error(rc, err, "--cv-fiber", out_dir=box.out)


def test_non_positive_cv_cross(box, capsys):
    rc, _, err = run(capsys, *simulate_args(box, **{"--cv-cross": "0"}))
    assert_one_line_error(rc, err, "--cv-cross", out_dir=box.out)


def test_unknown_lead_name(box, capsys):
    rc, _, err = run(capsys, *simulate_args(box, **{"--leads": ["I", "V7"]}))
    assert_one_line_error(rc, err, "--leads", "V7", out_dir=box.out)


def test_unwritable_output_dir(box, tmp_path, capsys):
    blocker = write_text(tmp_path / "blocker", "not a directory")
    box.out = blocker / "out"
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "--out", "blocker")
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_read_only_output_dir(box, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        box.out = ro / "out"
        rc, _, err = run(capsys, *simulate_args(box))
        assert_one_line_error(rc, err, "--out", "not writable")
    finally:
        ro.chmod(0o700)


def test_bad_electrodes(box, capsys):
    write_text(box.electrodes, "name,x,y,z\nRA,1,2,3\n")
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "electrodes.csv", "x_mm", out_dir=box.out)
    write_electrodes(box.electrodes, extra={"V6": (5.0, 5.0, 5.0)})  # inside the heart
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "electrodes.csv", "V6", out_dir=box.out)


def test_bad_units_and_usage(box, capsys):
    rc, _, err = run(capsys, *simulate_args(box, **{"--units": "inch"}))
    assert_one_line_error(rc, err, "--units", out_dir=box.out)
    rc, _, err = run(capsys, "simulate", "--mesh", box.mesh)
    assert_one_line_error(rc, err, "--pmj", "--out")
    rc, _, err = run(capsys, "frobnicate")
    assert_one_line_error(rc, err, "frobnicate")


def test_units_mismatch_is_an_error(box, capsys):
    # a mesh read as um is 0.017 mm across: too small for a heart, whatever the PMJs
    rc, _, err = run(capsys, *simulate_args(box, **{"--units": "um"}))
    assert_one_line_error(rc, err, "box.vtu", "0.0173 mm", "--units")
    # PMJs in another frame than a plausible mesh lie outside it
    write_text(box.pmj, "x_mm,y_mm,z_mm,t_ms\n2000,2000,2000,0\n")
    rc, _, err = run(capsys, *simulate_args(box))
    assert_one_line_error(rc, err, "pmj.csv", "outside")


# ------------------------------------------------------------------------------- help, dispatch


@pytest.mark.parametrize("command", ["geometry", "simulate", "fit", "report", "bench", "demo"])
def test_help_shows_defaults_and_units(capsys, command):
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0
    out = " ".join(out.split())
    assert "usage: cdt-bayes " + command in out
    if command in ("simulate", "bench"):
        assert "mm/ms" in out and "(default: 0.6)" in out and "(default: 0.4)" in out
    if command == "simulate":
        assert "(default: 0.0)" in out and "mm" in out and "--source-radius" in out
    if command == "fit":
        for opt in (
            "--method",
            "--n-pmj",
            "--chains",
            "--num-warmup",
            "--num-samples",
            "--seed",
            "--cv-fiber",
            "--cv-cross",
            "--units",
            "--spec",
            "--qrs",
            "--resume",
            "--time-budget",
            "--leads",
            "--endo-lv",
            "--endo-rv",
            "--no-progress",
        ):
            assert opt in out, opt
        assert "(default: nuts)" in out
    if command == "bench":
        assert "(default: 5)" in out and "sphere" in out


def test_fit_report_demo_dispatch(monkeypatch, tmp_path, capsys):
    seen = {}
    for mod, fn in (
        ("_inference", "fit_command"),
        ("_report", "report_command"),
        ("_demo", "demo_command"),
    ):
        fake = types.ModuleType(f"cdt_bayes.{mod}")
        setattr(fake, fn, lambda args, fn=fn: seen.setdefault(fn, args) and 0)
        monkeypatch.setitem(sys.modules, f"cdt_bayes.{mod}", fake)
    rc, _, err = run(
        capsys,
        "fit",
        "--mesh",
        "m.vtu",
        "--ecg",
        "e.csv",
        "--electrodes",
        "el.csv",
        "--out",
        tmp_path / "f",
        "--method",
        "map",
        "--n-pmj",
        "3",
        "--chains",
        "2",
        "--num-warmup",
        "10",
        "--num-samples",
        "20",
        "--seed",
        "7",
        "--cv-fiber",
        "0.7",
        "--units",
        "cm",
        "--spec",
        "s.toml",
        "--qrs",
        "10",
        "110",
        "--resume",
        "--time-budget",
        "60",
        "--leads",
        "I,II",
        "V1",
        "--endo-lv",
        "lv.txt",
        "--forward-error-draws",
        "5",
        "--no-progress",
    )
    assert rc == 0, err
    a = seen["fit_command"]
    assert a.forward_error_draws == 5
    assert (a.method, a.n_pmj, a.chains, a.num_warmup, a.num_samples, a.seed) == (
        "map",
        3,
        2,
        10,
        20,
        7,
    )
    assert a.cv_fiber == 0.7 and a.cv_cross is None and a.units == "cm" and a.spec == "s.toml"
    assert a.qrs == [10.0, 110.0] and a.resume and a.time_budget == 60.0 and a.no_progress
    assert a.leads == ["I", "II", "V1"] and a.endo_lv == "lv.txt" and a.endo_rv is None
    (tmp_path / "fitdir").mkdir()
    rc, _, err = run(capsys, "report", tmp_path / "fitdir", "--pdf", tmp_path / "r.pdf")
    assert rc == 0, err
    assert seen["report_command"].out == str(tmp_path / "fitdir" / "report.html")
    for given, parsed in ((["whole"], "whole"), (["AUTO"], "auto"), ([], "auto")):
        qrs = ["--qrs", *given] if given else []
        seen.pop("fit_command")
        rc, _, err = run(capsys, "fit", "--mesh", "m.vtu", "--ecg", "e.csv", "--electrodes", "el.csv", "--out", tmp_path / "f2", *qrs)
        assert rc == 0, err
        assert seen["fit_command"].qrs == parsed
        assert seen["fit_command"].baseline is None  # the spec decides
    seen.pop("fit_command")
    rc, _, err = run(capsys, "fit", "--mesh", "m.vtu", "--ecg", "e.csv", "--electrodes", "el.csv", "--out", tmp_path / "f3", "--baseline", "linear")
    assert rc == 0, err
    assert seen["fit_command"].baseline == "linear"
    rc, _, err = run(capsys, "demo", "--out", tmp_path / "demo", "--fast")
    assert rc == 0, err
    assert seen["demo_command"].fast is True


def test_fit_bad_options(tmp_path, capsys):
    base = [
        "fit",
        "--mesh",
        "m.vtu",
        "--ecg",
        "e.csv",
        "--electrodes",
        "el.csv",
        "--out",
        tmp_path / "f",
    ]
    rc, _, err = run(capsys, *base, "--qrs", "100", "20")
    assert_one_line_error(rc, err, "--qrs")
    for bad in (["1", "2", "3"], ["nope"], ["10", "x"]):
        rc, _, err = run(capsys, *base, "--qrs", *bad)
        assert_one_line_error(rc, err, "--qrs")
    rc, _, err = run(capsys, *base, "--chains", "0")
    assert_one_line_error(rc, err, "--chains")
    rc, _, err = run(capsys, *base, "--method", "gibbs")
    assert_one_line_error(rc, err, "--method")
    rc, _, err = run(capsys, *base, "--time-budget", "-5")
    assert_one_line_error(rc, err, "--time-budget")
    rc, _, err = run(capsys, *base, "--baseline", "quadratic")
    assert_one_line_error(rc, err, "--baseline")


def test_missing_module_is_not_available_yet(tmp_path, capsys):
    args = types.SimpleNamespace(command="fit")
    with pytest.raises(CdtBayesError, match="not available yet"):
        _cli._dispatch(args, "_no_such_module_here", "fit_command")


def test_report_missing_dir(tmp_path, capsys):
    rc, _, err = run(capsys, "report", tmp_path / "nofit", "--out", tmp_path / "r.html")
    assert_one_line_error(rc, err, "nofit")


def test_unexpected_error_is_one_line_with_debug_hint(monkeypatch, tmp_path, capsys):
    def boom(args):
        raise RuntimeError("kaboom\nsecond line")

    fake = types.ModuleType("cdt_bayes._demo")
    fake.demo_command = boom
    monkeypatch.setitem(sys.modules, "cdt_bayes._demo", fake)
    monkeypatch.delenv("CDT_BAYES_DEBUG", raising=False)
    rc, _, err = run(capsys, "demo", "--out", tmp_path / "d")
    assert_one_line_error(rc, err, "kaboom second line", "CDT_BAYES_DEBUG=1")
    monkeypatch.setenv("CDT_BAYES_DEBUG", "1")
    rc, _, err = run(capsys, "demo", "--out", tmp_path / "d")
    assert rc != 0 and "Traceback" in err and "RuntimeError: kaboom" in err


def test_cli_module_imports_nothing_heavy():
    tree = ast.parse(Path(_cli.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add("." * node.level + (node.module or ""))
    assert top <= {
        "__future__",
        "argparse",
        "contextlib",
        "os",
        "sys",
        "time",
        "traceback",
        "warnings",
        "pathlib",
        "._errors",
    }, top


def test_geometry_generated_with_gmsh(tmp_path, capsys):
    import importlib.util

    from conftest import require

    require(importlib.util.find_spec("gmsh") is not None, "gmsh not installed")
    rc, out, err = run(capsys, "geometry", "--out", tmp_path / "g", "--seed", "1")
    assert rc == 0, err
    m = meshio.read(tmp_path / "g" / "heart.vtu")
    shipped = meshio.read(_shipped_coarse())
    assert len(m.points) != len(shipped.points) or not np.allclose(m.points, shipped.points)
    for key in ("fiber", "sheet", "surface"):
        assert key in m.point_data
    assert {1, 2, 3, 4} <= set(np.unique(np.asarray(m.point_data["surface"])).tolist())
    assert (tmp_path / "g" / "electrodes.csv").exists()


def _shipped_coarse():
    from cdt_bayes import _meshgen

    return Path(str(_meshgen._data_file(_meshgen._COARSE_VTU)))


def test_geometry_without_gmsh_is_one_line(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gmsh" else real(name, *a)
    )
    rc, _, err = run(capsys, "geometry", "--out", tmp_path / "g", "--resolution", "medium")
    assert_one_line_error(rc, err, "--resolution medium", "gmsh")
    assert not (tmp_path / "g").exists()


def test_non_convergence_is_an_error(box, capsys):
    rc, _, err = run(capsys, *simulate_args(box, **{"--max-sweeps": "2"}), "--quiet")
    assert_one_line_error(rc, err, "box.vtu", "did not converge", "--max-sweeps", out_dir=box.out)


def test_fit_forward_error_default_is_the_librarys():
    from cdt_bayes._cli import build_parser
    from cdt_bayes._inference import FORWARD_ERROR_DRAWS

    plain = build_parser().parse_args(["fit", "--mesh", "m", "--ecg", "e", "--electrodes", "el", "--out", "o"])
    assert plain.forward_error_draws == FORWARD_ERROR_DRAWS


def test_fit_combine_chains_option():
    from cdt_bayes._cli import build_parser
    from cdt_bayes._outputs import COMBINE_CHAINS

    base = ["fit", "--mesh", "m", "--ecg", "e", "--electrodes", "el", "--out", "o"]
    assert build_parser().parse_args(base).combine_chains == COMBINE_CHAINS == "equal"
    assert build_parser().parse_args(base + ["--combine-chains", "stacking"]).combine_chains == "stacking"
    from cdt_bayes._cli import _UsageError

    with pytest.raises(_UsageError, match="combine-chains"):
        build_parser().parse_args(base + ["--combine-chains", "bogus"])


def _fit_args(mesh, ecg, electrodes, out):
    return ["fit", "--mesh", mesh, "--ecg", ecg, "--electrodes", electrodes, "--out", out, "--method", "map"]


def test_lengths_in_another_unit_are_errors(box, tmp_path, capsys):
    ecg = write_text(tmp_path / "ecg.csv", "time_ms,I,II\n" + "".join(f"{t},{t / 40},{t / 30}\n" for t in range(40)))
    # a mesh in metres, read as mm: 0.017 mm across
    metres = write_vtu(tmp_path / "box_m.vtu", box.nodes / 1000.0, box.tets)
    rc, _, err = run(capsys, *_fit_args(metres, ecg, box.electrodes, box.out))
    assert_one_line_error(rc, err, "box_m.vtu", "--units m", out_dir=box.out)
    rc, _, err = run(capsys, *simulate_args(box, **{"--mesh": metres}))
    assert_one_line_error(rc, err, "box_m.vtu", "--units", out_dir=box.out)
    # a small mesh (3 mm across a side) far inside a torso-sized lead set: a heart in cm
    cm = write_vtu(tmp_path / "box_cm.vtu", box.nodes * 0.3, box.tets)
    rc, _, err = run(capsys, *_fit_args(cm, ecg, box.electrodes, box.out))
    assert_one_line_error(rc, err, "box_cm.vtu", "another unit", out_dir=box.out)
    # electrodes in metres around a mesh in mm
    el_m = write_electrodes(tmp_path / "el_m.csv", {k: tuple(np.asarray(v) / 1000.0) for k, v in BOX_ELECTRODES.items()})
    rc, _, err = run(capsys, *_fit_args(box.mesh, ecg, el_m, box.out))
    assert_one_line_error(rc, err, "el_m.csv", "m or cm", out_dir=box.out)
    # the same box and electrodes in mm pass
    from cdt_bayes._io import check_length_units, load_mesh, read_electrodes_csv

    check_length_units(load_mesh(box.mesh), read_electrodes_csv(box.electrodes), "box.vtu", "electrodes.csv")


def test_fit_lead_errors_name_the_files(box, tmp_path, capsys):
    ecg = write_text(tmp_path / "bspm.csv", "time_ms,I,E1\n" + "".join(f"{t},{t / 40},{t / 30}\n" for t in range(40)))
    rc, _, err = run(capsys, *_fit_args(box.mesh, ecg, box.electrodes, box.out))
    assert_one_line_error(rc, err, "bspm.csv", "E1", "electrodes.csv", out_dir=box.out)


def test_an_ecg_in_microvolts_is_warned_about():
    from cdt_bayes._outputs import ECG_PEAK_WARN_MV, warn_ecg_scale

    with pytest.warns(UserWarning, match=r"ecg\.csv: the ECG peaks at 1200.*µV"):
        assert warn_ecg_scale("ecg.csv", np.array([[0.0, -1200.0, 300.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_ecg_scale("ecg.csv", np.array([[0.0, -0.9 * ECG_PEAK_WARN_MV, 2.5]]))
