"""Chain starts from MAP optima weighted by their Laplace evidence."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cdt_bayes._errors import CdtBayesError
from cdt_bayes._inference import _dispersed_start, allocate_chains, evidence_weights, laplace_optima


def _quadratic(m, a, c):
    """U(x) = c + ½ (x − m)ᵀ A (x − m) on a dict site ``x`` of shape (2,)."""
    m, a = jnp.asarray(m), jnp.asarray(a)
    return lambda u: c + 0.5 * (u["x"] - m) @ a @ (u["x"] - m)


def test_laplace_evidence_is_exact_for_gaussian_basins():
    a1 = np.array([[4.0, 1.0], [1.0, 2.0]])
    a2 = np.array([[0.5, 0.0], [0.0, 0.25]])
    u1, u2 = _quadratic([0, 0], a1, 3.0), _quadratic([5, 5], a2, 4.0)

    # a potential whose two basins are far apart: each optimum sees only its own quadratic
    def pot(u):
        return jnp.minimum(u1(u), u2(u))

    u = {"x": jnp.array([[0.0, 0.0], [5.0, 5.0]])}
    log_ev, masses = laplace_optima(pot, u, np.array([3.0, 4.0]))
    # ∫ exp(−U) over basin i = exp(−c_i) (2π)^{d/2} det(A_i)^{-1/2}; the (2π) factor is shared
    expect = np.array([-3.0 - 0.5 * np.log(np.linalg.det(a1)), -4.0 - 0.5 * np.log(np.linalg.det(a2))])
    np.testing.assert_allclose(log_ev, expect, rtol=1e-5)
    np.testing.assert_allclose(masses[0], np.linalg.inv(a1), rtol=1e-4)
    # the wide basin wins despite its higher potential at the optimum: mass, not height
    w = evidence_weights(log_ev)
    ratio = np.exp(-1.0) * np.sqrt(np.linalg.det(a1) / np.linalg.det(a2))
    np.testing.assert_allclose(w[1] / w[0], ratio, rtol=1e-4)
    assert w[1] > w[0]


def test_saddle_enters_by_absolute_curvature():
    a = np.diag([2.0, -0.5])
    log_ev, masses = laplace_optima(_quadratic([0, 0], a, 0.0), {"x": jnp.zeros((1, 2))}, np.zeros(1))
    np.testing.assert_allclose(np.diag(masses[0]), [0.5, 2.0], rtol=1e-5)
    np.testing.assert_allclose(log_ev[0], -0.5 * np.log(1.0), atol=1e-6)


def test_failed_optima_get_no_weight():
    w = evidence_weights(np.array([-np.inf, 2.0, 0.0]))
    assert w[0] == 0.0 and np.isclose(w.sum(), 1.0) and w[1] > w[2]
    with pytest.raises(CdtBayesError):
        allocate_chains(evidence_weights(np.array([-np.inf, -np.inf])), 4)


@pytest.mark.parametrize(
    ("weights", "chains", "expect"),
    [
        ([0.7, 0.3, 1e-5], 4, [0, 0, 0, 1]),  # proportional, negligible optimum skipped
        ([1.0, 1e-40, 1e-60], 4, [0, 0, 0, 0]),  # one basin holds everything
        ([0.2] * 5, 4, [0, 1, 2, 3]),  # more optima than chains: heaviest first, one each
        ([0.5, 0.5], 3, [0, 0, 1]),
        ([0.05, 0.9, 0.05], 4, [0, 1, 1, 2]),  # every non-negligible optimum gets a chain
    ],
)
def test_allocate_chains(weights, chains, expect):
    assert allocate_chains(np.array(weights), chains) == expect


def test_dispersed_starts_differ_and_stay_typical():
    a = np.diag([100.0, 1.0, 1.0])
    pot = lambda u: 0.5 * u["x"] @ jnp.asarray(a) @ u["x"]  # noqa: E731
    u = {"x": jnp.zeros(3)}
    starts = [_dispersed_start(pot, u, np.linalg.inv(a), k, 0.0) for k in jax.random.split(jax.random.key(0), 8)]
    xs = np.stack([np.asarray(s["x"]) for s in starts])
    assert len({tuple(x) for x in xs}) == 8  # all distinct
    limit = 0.25**2 * (1.5 + 3 * np.sqrt(1.5))
    assert all(float(pot(s)) <= limit for s in starts)
    # spread follows the Laplace scale / 4: sd 0.025 along x0, 0.25 along the others
    assert np.abs(xs[:, 0]).max() < 0.125 and np.abs(xs[:, 1:]).max() > 0.1
    assert np.std(xs[:, 1:]) > 3 * np.std(xs[:, 0])


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_hessian_in_batches_matches_jax_hessian(batch):
    from jax.flatten_util import ravel_pytree

    from cdt_bayes._inference import _hessian_fn

    def pot(u):  # non-quadratic, couples both sites
        return jnp.sum(jnp.sin(u["a"]) * u["b"][0]) + jnp.sum(u["a"] ** 4) + jnp.exp(u["b"] @ u["b"])

    u = {"a": jnp.array([0.3, -1.2, 0.7, 2.0]), "b": jnp.array([0.1, -0.4])}
    flat, hess = _hessian_fn(pot, u, batch)
    unravel = ravel_pytree(u)[1]
    expect = jax.hessian(lambda f: pot(unravel(f)))(flat)
    np.testing.assert_allclose(np.asarray(hess(flat)), np.asarray(expect), rtol=1e-5, atol=1e-5)
