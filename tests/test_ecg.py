"""Tests of cdt_bayes._ecg: lead algebra, lead fields, the tanh template and the ECG."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers_ecg import box_mesh, plane_wave, reference_stiffness, swap_xy_permutation

from cdt_bayes._ecg import (
    DEFAULT_GAIN,
    LIMB_ELECTRODES,
    PRECORDIAL,
    STANDARD_LEADS,
    LeadField,
    ecg_time_grid,
    electrode_lead_field,
    lead_matrix,
    load_lead_field,
    simulate_ecg,
    transmembrane_potential,
)
from cdt_bayes._errors import CdtBayesError, InputFileError
from cdt_bayes._geometry import Mesh

# a 10 mm cube of tissue centred at the origin and electrodes on a 60 mm "torso" around it
SIZE = 10.0
ELECTRODES = {
    "RA": (-60.0, 30.0, 40.0),
    "LA": (60.0, 30.0, 40.0),
    "LL": (20.0, -10.0, -70.0),
    "RL": (0.0, 0.0, 0.0),  # inside the tissue on purpose: RL is ignored
    "V1": (-10.0, -50.0, 5.0),
    "V2": (5.0, -50.0, 5.0),
    "V3": (20.0, -45.0, 0.0),
    "V4": (35.0, -38.0, -5.0),
    "V5": (45.0, -25.0, -5.0),
    "V6": (55.0, 0.0, -5.0),
    "B1": (0.0, 45.0, 20.0),  # an extra body-surface electrode
}


def _box(n=4, fibres=None):
    nodes, tets = box_mesh(n, SIZE, origin=(-SIZE / 2,) * 3)
    if fibres is not None:
        fibres = np.broadcast_to(np.asarray(fibres, dtype=np.float64), (tets.shape[0], 3)).copy()
    return Mesh(nodes=nodes, tets=tets, fibres=fibres)


def _twisted_fibres(mesh):
    c = mesh.nodes[mesh.tets].mean(axis=1)
    ang = np.pi / 3 * c[:, 2] / SIZE
    return np.stack([np.cos(ang), np.sin(ang), 0.3 * np.ones_like(ang)], axis=1)


@pytest.fixture(scope="module")
def mesh():
    m = _box(4)
    return m.replace(fibres=_twisted_fibres(m))


@pytest.fixture(scope="module")
def lead_field(mesh):
    return LeadField.from_mesh(mesh, ELECTRODES)


# ------------------------------------------------------------------------------- lead algebra


def test_lead_matrix_standard_rows():
    names = ["LA", "RA", "LL", "RL", "V1", "V2", "V3", "V4", "V5", "V6", "X1"]
    leads, w = lead_matrix(names)
    assert leads == STANDARD_LEADS + ("X1",)
    assert w.shape == (13, len(names))
    phi = np.arange(1.0, len(names) + 1) ** 1.5  # arbitrary potentials
    p = dict(zip(names, phi))
    wct = (p["RA"] + p["LA"] + p["LL"]) / 3
    got = dict(zip(leads, w @ phi))
    np.testing.assert_allclose(got["I"], p["LA"] - p["RA"])
    np.testing.assert_allclose(got["II"], p["LL"] - p["RA"])
    np.testing.assert_allclose(got["III"], p["LL"] - p["LA"])
    np.testing.assert_allclose(got["aVR"], p["RA"] - (p["LA"] + p["LL"]) / 2)
    np.testing.assert_allclose(got["aVL"], p["LA"] - (p["RA"] + p["LL"]) / 2)
    np.testing.assert_allclose(got["aVF"], p["LL"] - (p["RA"] + p["LA"]) / 2)
    for v in PRECORDIAL + ("X1",):
        np.testing.assert_allclose(got[v], p[v] - wct)
    np.testing.assert_array_equal(w[:, names.index("RL")], 0.0)
    # every lead is blind to a common offset of all electrodes
    np.testing.assert_allclose(w.sum(axis=1), 0.0, atol=1e-15)


def test_lead_matrix_subset_and_order():
    leads, w = lead_matrix(["RA", "LA", "LL", "V2"], leads=["V2", "I"])
    assert leads == ("V2", "I")
    np.testing.assert_allclose(w, [[-1 / 3, -1 / 3, -1 / 3, 1.0], [-1.0, 1.0, 0.0, 0.0]])
    # default with only some precordials: limb leads, the present V's, nothing else
    leads, _ = lead_matrix(["RA", "LA", "LL", "V4", "V1"])
    assert leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V4")


def test_lead_matrix_errors():
    twelve = list(LIMB_ELECTRODES) + list(PRECORDIAL)
    with pytest.raises(CdtBayesError, match=r"unknown lead 'V7'.*available leads: I, II"):
        lead_matrix(twelve, leads=["I", "V7"])
    with pytest.raises(CdtBayesError, match="needs the limb electrodes.*missing LL"):
        lead_matrix(["RA", "LA", "V1"], leads=["I"])
    with pytest.raises(CdtBayesError, match="missing LL"):
        lead_matrix(["RA", "LA", "V1"], leads=["V1"])
    with pytest.raises(CdtBayesError, match="Wilson's central terminal needs RA, LA and LL"):
        lead_matrix(["V1", "V2"])
    with pytest.raises(CdtBayesError, match="lead 'V3' needs electrode 'V3'"):
        lead_matrix(["RA", "LA", "LL", "V1", "V2"], leads=list(STANDARD_LEADS))
    with pytest.raises(CdtBayesError, match="duplicate name 'RA'"):
        lead_matrix(["RA", "LA", "LL", "RA"])


# ------------------------------------------------------------------------------- lead fields


def test_box_mesh_is_valid_and_mirror_symmetric():
    nodes, tets = box_mesh(3, SIZE)
    x = nodes[tets]
    vol = np.einsum("ij,ij->i", x[:, 1] - x[:, 0], np.cross(x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]))
    assert np.all(vol > 0)
    np.testing.assert_allclose(vol.sum() / 6, SIZE**3)
    perm = swap_xy_permutation(3)
    np.testing.assert_allclose(nodes[perm], nodes[:, [1, 0, 2]])
    assert {tuple(sorted(t)) for t in perm[tets]} == {tuple(sorted(t)) for t in tets}


def test_lead_field_matches_independent_assembly(mesh):
    xyz = np.array([ELECTRODES["V1"], ELECTRODES["LA"], [3.0, 2.0, 9.0]])
    cv_f, cv_c, gain = 0.7, 0.35, 1.3
    got = electrode_lead_field(mesh.nodes, mesh.tets, mesh.fibres, xyz, cv_f, cv_c, gain)
    f = mesh.fibres / np.linalg.norm(mesh.fibres, axis=1, keepdims=True)
    r = (cv_f / cv_c) ** 2
    tensors = r * f[:, :, None] * f[:, None, :] + (np.eye(3) - f[:, :, None] * f[:, None, :])
    k = reference_stiffness(mesh.nodes, mesh.tets, tensors)
    z = 1.0 / np.linalg.norm(mesh.nodes[None] - xyz[:, None], axis=-1)
    want = -gain / (4 * np.pi) * z @ k
    assert got.shape == (3, mesh.n_nodes) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13 * np.abs(want).max())
    # rows sum to zero: a uniform V_m makes no potential
    np.testing.assert_allclose(got.sum(axis=1), 0.0, atol=1e-13 * np.abs(got).max())
    # isotropic when fibres is None: equals anisotropic with cv_fiber == cv_cross
    iso = electrode_lead_field(mesh.nodes, mesh.tets, None, xyz, gain=gain)
    iso2 = electrode_lead_field(mesh.nodes, mesh.tets, mesh.fibres, xyz, 0.5, 0.5, gain=gain)
    np.testing.assert_allclose(iso, iso2, rtol=1e-10, atol=1e-14)


def _gauss_box_integral(fun, lo, hi, n_pts=16):
    """Tensor Gauss-Legendre quadrature of ``fun(x (m, 3)) -> (m,)`` over a box."""
    g, w = np.polynomial.legendre.leggauss(n_pts)
    pts = [(lo[a] + hi[a]) / 2 + (hi[a] - lo[a]) / 2 * g for a in range(3)]
    wts = [(hi[a] - lo[a]) / 2 * w for a in range(3)]
    x = np.stack(np.meshgrid(*pts, indexing="ij"), axis=-1).reshape(-1, 3)
    ww = np.einsum("i,j,k->ijk", *wts).ravel()
    return np.sum(ww * fun(x))


def test_lead_field_against_volume_quadrature():
    # linear V_m = a.x in a homogeneous anisotropic block: z^T K V is a P1 approximation of
    # int G a . grad(1/|x - x_e|) dx; compare with Gauss quadrature of the exact integrand.
    f = np.array([1.0, 2.0, 2.0]) / 3.0
    ratio = (0.6 / 0.4) ** 2
    g = ratio * np.outer(f, f) + (np.eye(3) - np.outer(f, f))
    a = np.array([0.3, -1.0, 0.7])  # mV/mm
    xe = np.array([18.0, -7.0, 11.0])
    lo, hi = np.full(3, -SIZE / 2), np.full(3, SIZE / 2)

    def integrand(x):
        d = x - xe
        grad_inv_r = -d / np.linalg.norm(d, axis=1, keepdims=True) ** 3
        return grad_inv_r @ (g @ a)

    exact = -DEFAULT_GAIN / (4 * np.pi) * _gauss_box_integral(integrand, lo, hi)
    errors = []
    for n in (2, 4, 8):
        m = _box(n, fibres=f)
        row = electrode_lead_field(m.nodes, m.tets, m.fibres, xe[None])[0]
        errors.append(abs(row @ (m.nodes @ a) - exact) / abs(exact))
    assert errors[-1] < 2e-3
    order = np.polyfit(np.log([2.0, 4.0, 8.0]), np.log(errors), 1)[0]
    assert order < -1.7, (errors, order)  # second order in h


def test_electrode_inside_or_too_close_to_mesh():
    m = _box(3)
    with pytest.raises(CdtBayesError, match="electrode #0 .* inside the heart mesh"):
        electrode_lead_field(m.nodes, m.tets, None, np.array([[1.2, 0.3, -0.4]]))
    with pytest.raises(CdtBayesError, match=r"V2 .* 0\.5 mm from mesh node"):
        bad = dict(ELECTRODES, V2=(SIZE / 2 + 0.5, 0.0, 0.0))
        LeadField.from_mesh(_box(4), bad)  # node (5, 0, 0); RL inside is ignored
    with pytest.raises(CdtBayesError, match="positive conduction velocity"):
        electrode_lead_field(m.nodes, m.tets, None, np.array([[40.0, 0, 0]]), cv_cross=0.0)
    # just outside (1.5 mm from the surface) is fine
    row = electrode_lead_field(m.nodes, m.tets, None, np.array([[SIZE / 2 + 1.5, 0.1, 0.2]]))
    assert np.isfinite(row).all()


# ------------------------------------------------------------------------------- template, ECG


def test_transmembrane_potential_and_ecg_identity(lead_field):
    T = np.array([5.0, 12.0, 30.0])
    t = np.array([-20.0, 5.0, 12.0, 80.0])
    vm = np.asarray(transmembrane_potential(T, t, v0=-85.0, v1=25.0, eps=2.0))
    assert vm.shape == (3, 4)
    np.testing.assert_allclose(vm[:, 0], -85.0, atol=1e-4)
    np.testing.assert_allclose(vm[:, -1], 25.0, atol=1e-4)
    np.testing.assert_allclose([vm[0, 1], vm[1, 2]], -30.0, atol=1e-5)
    # ECG = L @ V_m with the constant part dropped exactly
    rng = np.random.default_rng(1)
    T = rng.uniform(10, 40, lead_field.n_nodes)
    t = np.arange(0.0, 60.0)
    vm = np.asarray(transmembrane_potential(T, t), dtype=np.float64)
    want = lead_field.matrix @ vm
    got = np.asarray(simulate_ecg(T, lead_field, t))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


def test_ecg_zero_before_and_after_qrs(mesh, lead_field):
    T = plane_wave(mesh.nodes, [1.0, 0.4, -0.2], t0=25.0)
    t = ecg_time_grid(T)
    assert t[0] == 0.0 and np.all(np.diff(t) == 1.0)
    assert t[-1] == np.ceil(T.max()) + 10.0
    ecg = np.asarray(simulate_ecg(T, lead_field.matrix, t))
    assert ecg.shape == (lead_field.n_leads, t.size)
    peak = np.abs(ecg).max()
    assert peak > 0
    early = t < T.min() - 8.0
    assert early.sum() >= 10
    assert np.abs(ecg[:, early]).max() < 1e-4 * peak
    assert np.abs(ecg[:, -3:]).max() < 1e-4 * peak


def test_lead_algebra_on_simulated_ecg(mesh, lead_field):
    T = plane_wave(mesh.nodes, [0.2, 1.0, 0.5], t0=5.0)
    t = ecg_time_grid(T)
    ecg = dict(zip(lead_field.names, np.asarray(simulate_ecg(T, lead_field, t))))
    assert tuple(lead_field.names) == STANDARD_LEADS + ("B1",)
    peak = max(np.abs(v).max() for v in ecg.values())
    np.testing.assert_allclose(ecg["I"] + ecg["III"], ecg["II"], atol=1e-5 * peak)
    np.testing.assert_allclose(ecg["aVR"] + ecg["aVL"] + ecg["aVF"], 0.0, atol=1e-5 * peak)
    np.testing.assert_allclose(ecg["aVR"], -(ecg["I"] + ecg["II"]) / 2, atol=1e-5 * peak)


def test_ecg_sign_wave_towards_electrode_is_positive():
    m = _box(4)
    T = plane_wave(m.nodes, [1.0, 0.0, 0.0], t0=10.0)  # travels along +x
    xyz = np.array([[60.0, 0.0, 0.0], [-60.0, 0.0, 0.0]])
    lf = electrode_lead_field(m.nodes, m.tets, None, xyz)
    phi = np.asarray(simulate_ecg(T, lf, ecg_time_grid(T)))
    mid = np.argmin(np.abs(ecg_time_grid(T) - (T.min() + T.max()) / 2))
    assert phi[0, mid] > 0 > phi[1, mid]


def test_mirror_symmetry():
    # the Kuhn split of a cube is invariant under x <-> y; fibres along (1, 1, 0.5) and a
    # point-source activation on the plane x = y are too, so mirrored electrodes agree
    n = 4
    sym = _box(n, fibres=np.array([1.0, 1.0, 0.5]) / 1.5)
    perm = swap_xy_permutation(n)
    src = np.array([1.0, 1.0, -SIZE / 2])
    T = 3.0 + np.linalg.norm(sym.nodes - src, axis=1) / 0.6
    np.testing.assert_allclose(T[perm], T, rtol=1e-12)
    xyz = np.array([[25.0, 4.0, 6.0], [4.0, 25.0, 6.0]])
    lf = electrode_lead_field(sym.nodes, sym.tets, sym.fibres, xyz)
    np.testing.assert_allclose(lf[0][perm], lf[1], rtol=1e-10, atol=1e-14)
    t = ecg_time_grid(T)
    phi = np.asarray(simulate_ecg(T, lf, t))
    np.testing.assert_allclose(phi[0], phi[1], atol=1e-5 * np.abs(phi).max())
    # negative control: fibres along x break the symmetry, and the test above would fail
    asym = sym.replace(fibres=np.broadcast_to([1.0, 0.0, 0.0], sym.fibres.shape))
    lf = electrode_lead_field(asym.nodes, asym.tets, asym.fibres, xyz)
    phi = np.asarray(simulate_ecg(T, lf, t))
    assert np.abs(phi[0] - phi[1]).max() > 0.05 * np.abs(phi).max()


def test_grad_matches_finite_differences_x64(lead_field):
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        n = lead_field.n_nodes
        T = jnp.asarray(rng.uniform(10.0, 40.0, n))
        t = jnp.asarray(ecg_time_grid(np.asarray(T)))
        target = simulate_ecg(T + rng.normal(0.0, 2.0, n), lead_field, t)
        L = jnp.asarray(lead_field.matrix)

        def loss(T):
            return jnp.sum((simulate_ecg(T, L, t, eps_ms=1.5) - target) ** 2)

        g = np.asarray(jax.jit(jax.grad(loss))(T))
        assert g.dtype == np.float64 and np.isfinite(g).all()
        h = 1e-5
        idx = rng.choice(n, 12, replace=False)
        fd = []
        for i in idx:
            e = jnp.zeros(n).at[i].set(h)
            fd.append((loss(T + e) - loss(T - e)) / (2 * h))
        np.testing.assert_allclose(g[idx], np.asarray(fd), rtol=1e-6, atol=1e-8 * np.abs(g).max())
        assert np.abs(g).max() > 0


def test_grad_finite_far_from_activation(lead_field):
    # saturated tanh far before/after T: gradient zero, not NaN (float32 default)
    T = jnp.full(lead_field.n_nodes, 500.0).at[0].set(-500.0)
    t = jnp.arange(0.0, 50.0)
    g = jax.grad(lambda T: jnp.sum(simulate_ecg(T, lead_field, t) ** 2))(T)
    assert np.isfinite(np.asarray(g)).all()


def test_vmap_and_jit_match_loop(mesh, lead_field):
    rng = np.random.default_rng(3)
    batch = np.stack(
        [plane_wave(mesh.nodes, rng.normal(size=3), t0=rng.uniform(0, 10)) for _ in range(4)]
    )
    t = np.arange(0.0, 60.0)
    f = jax.jit(jax.vmap(simulate_ecg, in_axes=(0, None, None)))
    got = np.asarray(f(batch, lead_field, t))
    want = np.stack([np.asarray(simulate_ecg(T, lead_field.matrix, t)) for T in batch])
    assert got.shape == (4, lead_field.n_leads, t.size)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_lead_field_is_pytree(lead_field):
    leaves, treedef = jax.tree_util.tree_flatten(lead_field)
    assert len(leaves) == 1 and leaves[0] is lead_field.matrix
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert back.names == lead_field.names

    @jax.jit
    def first_lead(lf, T):
        return simulate_ecg(T, lf, jnp.arange(0.0, 40.0))[0]

    T = jnp.linspace(5.0, 20.0, lead_field.n_nodes)
    assert first_lead(lead_field, T).shape == (40,)


# ------------------------------------------------------------------------------- user matrices


def test_from_matrix_and_select(lead_field):
    lf = LeadField.from_matrix(lead_field.names, lead_field.matrix, n_nodes=lead_field.n_nodes)
    np.testing.assert_array_equal(lf.matrix, lead_field.matrix)
    sub = lf.select(["V2", "I"])
    np.testing.assert_array_equal(sub.matrix, lead_field.matrix[[7, 0]])
    with pytest.raises(CdtBayesError, match="3 names but 13 rows"):
        LeadField.from_matrix(["a", "b", "c"], lead_field.matrix)
    with pytest.raises(CdtBayesError, match="mesh has 7 nodes"):
        LeadField.from_matrix(lead_field.names, lead_field.matrix, n_nodes=7)
    with pytest.raises(CdtBayesError, match="must be 2-D"):
        LeadField.from_matrix(["a"], np.zeros(5))
    with pytest.raises(CdtBayesError, match="non-finite"):
        LeadField.from_matrix(["a"], np.array([[0.0, np.nan]]))
    with pytest.raises(CdtBayesError, match="unknown lead 'aVX'"):
        lf.select(["aVX"])


def test_load_lead_field_files(tmp_path, mesh, lead_field):
    names = [k for k in ELECTRODES if k != "RL"]
    xyz = np.array([ELECTRODES[k] for k in names])
    field = electrode_lead_field(mesh.nodes, mesh.tets, mesh.fibres, xyz)
    # electrode rows in .npz -> leads combined with Wilson's terminal
    np.savez(tmp_path / "el.npz", matrix=field, names=np.array(names))
    lf = load_lead_field(tmp_path / "el.npz", n_nodes=mesh.n_nodes)
    assert lf.names == lead_field.names
    np.testing.assert_allclose(lf.matrix, lead_field.matrix, rtol=1e-12, atol=1e-15)
    # lead rows in .csv with a header, selecting leads
    with open(tmp_path / "leads.csv", "w") as fh:
        fh.write("name," + ",".join(str(j) for j in range(mesh.n_nodes)) + "\n")
        for n, row in zip(lead_field.names, lead_field.matrix):
            fh.write(n + "," + ",".join(repr(float(v)) for v in row) + "\n")
    lf = load_lead_field(tmp_path / "leads.csv", leads=["II", "V1"])
    assert lf.names == ("II", "V1")
    np.testing.assert_allclose(lf.matrix, lead_field.matrix[[1, 6]], rtol=1e-15)
    # bare .npy needs names
    np.save(tmp_path / "m.npy", lead_field.matrix)
    with pytest.raises(InputFileError, match="m.npy: the file has no row names"):
        load_lead_field(tmp_path / "m.npy")
    lf = load_lead_field(tmp_path / "m.npy", names=lead_field.names)
    np.testing.assert_array_equal(lf.matrix, lead_field.matrix)


def test_load_lead_field_errors(tmp_path, lead_field):
    with pytest.raises(InputFileError, match="nope.npz: lead-field file not found"):
        load_lead_field(tmp_path / "nope.npz")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(InputFileError, match="unknown lead-field format '.txt'"):
        load_lead_field(tmp_path / "x.txt")
    (tmp_path / "bad.csv").write_text("I,0.1,0.2\nII,0.3,abc\n")
    with pytest.raises(InputFileError, match=r"bad.csv: line 2: non-numeric value 'abc'"):
        load_lead_field(tmp_path / "bad.csv")
    (tmp_path / "ragged.csv").write_text("I,0.1,0.2\nII,0.3\n")
    with pytest.raises(InputFileError, match="ragged.csv: line 2: 1 values"):
        load_lead_field(tmp_path / "ragged.csv")
    np.savez(tmp_path / "m.npz", matrix=lead_field.matrix, names=np.array(lead_field.names))
    with pytest.raises(InputFileError, match="m.npz: unknown lead 'V9'"):
        load_lead_field(tmp_path / "m.npz", leads=["V9"])
    with pytest.raises(InputFileError, match="m.npz: lead field: 125 columns but the mesh has 3"):
        load_lead_field(tmp_path / "m.npz", n_nodes=3)
    np.savez(tmp_path / "el.npz", matrix=np.zeros((2, 5)), names=np.array(["V1", "V2"]))
    with pytest.raises(InputFileError, match="el.npz: .*needs the limb electrodes"):
        load_lead_field(tmp_path / "el.npz", kind="electrodes", leads=["V1"])
