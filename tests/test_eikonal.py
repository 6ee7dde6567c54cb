"""Eikonal solver: analytic solutions, convergence order, fim-python reference, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import box_mesh

from cdt_bayes import _eikonal as E
from cdt_bayes._errors import CdtBayesError
from cdt_bayes._geometry import Mesh


def _tensor(f, vf=0.6, vc=0.4):
    ff = np.outer(f, f)
    return vf**2 * ff + vc**2 * (np.eye(3) - ff)


def _exact(nodes, p, t0, d):
    r = nodes - p
    return t0 + np.sqrt(np.einsum("ni,ij,nj->n", r, np.linalg.inv(d), r))


def _geom(n, size=10.0, f=(1.0, 1.0, 0.0), dtype=None):
    nodes, tets = box_mesh((n, n, n), (size, size, size))
    f = np.asarray(f, float) / np.linalg.norm(f)
    return nodes, E.eikonal_geometry(Mesh(nodes, tets, fibres=np.tile(f, (len(tets), 1))), dtype), f


def test_plane_wave_is_exact():
    """A linear (plane-wave) solution is reproduced exactly by the local update."""
    nodes, g, f = _geom(6)
    metric = E.conduction_metric(g.fibres, 0.6, 0.4)
    loc = E._local_constants(g, metric)
    a = np.array([0.3, 0.5, 0.7])
    a = a / np.sqrt(a @ _tensor(f) @ a)  # ‖∇T‖_D = 1
    exact = nodes @ a
    t = jnp.where(nodes.min(1) < 1e-9, exact, E._BIG).astype(g.nodes.dtype)
    for _ in range(40):
        t = E._sweep(g, loc, t)
    np.testing.assert_allclose(np.asarray(t), exact, atol=2e-4)


def test_point_source_homogeneous_anisotropic():
    nodes, g, f = _geom(16)
    p, t0 = np.array([[5.03, 4.98, 5.01]]), np.array([2.0])
    t, info = E.solve_eikonal(g, E.eikonal_params(p, t0), source_radius=3.0)
    assert bool(info.converged)
    exact = _exact(nodes, p, t0, _tensor(f))
    err = np.abs(np.asarray(t) - exact)
    # first-order scheme, h = 0.625 mm on Kuhn-split cubes (strongly obtuse tets)
    assert err.mean() < 0.35 and err.max() < 0.06 * (exact.max() - t0[0]), (err.mean(), err.max())


def test_convergence_order_first():
    """Error at h, h/2, h/4 against the analytic solution: fitted order ~ 1."""
    errs, hs = [], []
    for n in (6, 12, 24):
        nodes, g, f = _geom(n)
        p, t0 = np.array([[5.03, 4.98, 5.01]]), np.array([0.0])
        t, _ = E.solve_eikonal(g, E.eikonal_params(p, t0), source_radius=3.0)
        errs.append(np.abs(np.asarray(t) - _exact(nodes, p, t0, _tensor(f))).max())
        hs.append(10.0 / n)
    order = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    assert 0.8 < order < 1.6, (errs, order)


def test_invariances():
    """Translation of the mesh and PMJs, and a common time shift of all PMJs."""
    nodes, tets = box_mesh((6, 6, 6), (10, 10, 10))
    rng = np.random.default_rng(1)
    fib = rng.normal(size=(len(tets), 3))
    fib /= np.linalg.norm(fib, axis=1, keepdims=True)
    p = np.array([[2.1, 3.3, 4.2], [7.7, 6.1, 5.3]])
    t0 = np.array([0.0, 4.0])
    g = E.eikonal_geometry(Mesh(nodes, tets, fibres=fib))
    base = np.asarray(E.activation_times(g, p, t0))
    shift = np.array([13.0, -7.0, 2.5])
    g2 = E.eikonal_geometry(Mesh(nodes + shift, tets, fibres=fib))
    np.testing.assert_allclose(np.asarray(E.activation_times(g2, p + shift, t0)), base, atol=2e-3)
    np.testing.assert_allclose(np.asarray(E.activation_times(g, p, t0 + 5.0)), base + 5.0, atol=2e-3)
    # doubling all velocities halves the travel time
    t_fast = np.asarray(E.activation_times(g, p, np.zeros(2), 1.2, 0.8))
    t_slow = np.asarray(E.activation_times(g, p, np.zeros(2), 0.6, 0.4))
    np.testing.assert_allclose(t_fast, t_slow / 2, rtol=1e-4, atol=1e-4)


def test_earliest_pmj_wins():
    nodes, g, _ = _geom(6)
    p = np.array([[2.0, 2.0, 2.0], [8.0, 8.0, 8.0]])
    t_both = np.asarray(E.activation_times(g, p, np.array([0.0, 0.0])))
    t_late = np.asarray(E.activation_times(g, p, np.array([0.0, 1000.0])))
    t_one = np.asarray(E.activation_times(g, p[:1], np.array([0.0])))
    np.testing.assert_allclose(t_late, t_one, atol=1e-4)
    assert np.all(t_both <= t_one + 1e-4)


def test_agrees_with_fim_python():
    """Independent reference: fim-python (AGPL, test-only) on the same mesh and sources."""
    fimpy = pytest.importorskip("fimpy.solver")
    nodes, tets = box_mesh((8, 8, 8), (20, 20, 20))
    rng = np.random.default_rng(2)
    fib = rng.normal(size=(len(tets), 3))
    fib /= np.linalg.norm(fib, axis=1, keepdims=True)
    src = np.array([10, 200, 600])
    t0 = np.array([0.0, 3.0, 7.0])
    g = E.eikonal_geometry(Mesh(nodes, tets, fibres=fib))
    ours = np.asarray(E.activation_times(g, nodes[src], t0))
    ff = fib[:, :, None] * fib[:, None, :]
    d = 0.36 * ff + 0.16 * (np.eye(3) - ff)
    ref = fimpy.create_fim_solver(nodes, tets, d, device="cpu", use_active_list=False).comp_fim(src, t0)
    np.testing.assert_allclose(ours, ref, atol=1e-3 * ref.max())


def test_vmap_over_parameter_sets():
    nodes, g, _ = _geom(5)
    rng = np.random.default_rng(3)
    xyz = rng.uniform(1, 9, size=(4, 3, 3))
    t = rng.uniform(0, 5, size=(4, 3))
    batched = jax.vmap(lambda x, s: E.activation_times(g, x, s))(xyz, t)
    for i in range(4):
        np.testing.assert_allclose(
            np.asarray(batched[i]), np.asarray(E.activation_times(g, xyz[i], t[i])), atol=1e-4
        )


def test_jit_compiles_once():
    nodes, g, _ = _geom(4)
    traces = []

    @jax.jit
    def f(x, t):
        traces.append(1)
        return E.activation_times(g, x, t)

    for s in range(3):
        f(np.array([[3.0 + s, 4.0, 5.0]]), np.array([float(s)])).block_until_ready()
    assert len(traces) == 1


def _grad_case():
    nodes, tets = box_mesh((5, 5, 5), (10, 10, 10))
    rng = np.random.default_rng(0)
    fib = rng.normal(size=(len(tets), 3))
    fib /= np.linalg.norm(fib, axis=1, keepdims=True)
    g = E.eikonal_geometry(Mesh(nodes, tets, fibres=fib))
    p = np.array([[2.1, 3.3, 4.2], [7.7, 6.1, 5.3], [4.4, 8.1, 2.2]])
    t0 = np.array([0.0, 3.0, 5.0])
    w = rng.normal(size=len(nodes))
    return g, p, t0, w


def _fd_check_x64():
    """Gradients of a weighted sum of activation times vs central differences (float64)."""
    g, p, t0, w = _grad_case()

    def loss(p, t0, vf, vc, s):
        return jnp.sum(w * E.activation_times(g, p, t0, vf, vc, s))

    args = [jnp.asarray(p), jnp.asarray(t0), 0.6, 0.4, 1.0]
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*args)
    eps = 1e-6
    for i, a in enumerate(args):
        a = np.asarray(a, float)
        fd = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            d = np.zeros_like(a)
            d[j] = eps
            hi = [*args[:i], a + d, *args[i + 1 :]]
            lo = [*args[:i], a - d, *args[i + 1 :]]
            fd[j] = (loss(*hi) - loss(*lo)) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grads[i]), fd, rtol=1e-5, atol=1e-6)


def test_gradients_match_finite_differences_x64():
    """Run in a fresh interpreter with JAX_ENABLE_X64=1 (global float64, no state leaks)."""
    if jax.config.jax_enable_x64:
        _fd_check_x64()
        return
    import os
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_eikonal as T; T._fd_check_x64()"
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def test_gradient_finite_at_ties_and_nodes():
    g, p, t0, w = _grad_case()
    nodes = np.asarray(g.nodes)
    # two PMJs at the same place and time (a tie everywhere), one exactly on a node
    p_tie = np.array([nodes[40], nodes[40], [5.0, 5.0, 5.0]])
    t_tie = np.array([1.0, 1.0, 1.0])
    gp, gt = jax.grad(lambda p, t: jnp.sum(w * E.activation_times(g, p, t)), argnums=(0, 1))(p_tie, t_tie)
    assert np.all(np.isfinite(np.asarray(gp))) and np.all(np.isfinite(np.asarray(gt)))
    # d(sum T)/d(t_k) counts the nodes each PMJ activates: total = n_nodes
    gt1 = jax.grad(lambda t: jnp.sum(E.activation_times(g, p, t)))(t0)
    assert abs(float(gt1.sum()) - nodes.shape[0]) < 1e-3


def test_invalid_velocities_raise():
    with pytest.raises(CdtBayesError, match="cv-fiber"):
        E.eikonal_params(np.zeros((1, 3)), np.zeros(1), cv_fiber=-0.6)
    with pytest.raises(CdtBayesError, match="cv-cross"):
        E.eikonal_params(np.zeros((1, 3)), np.zeros(1), cv_cross=np.nan)
