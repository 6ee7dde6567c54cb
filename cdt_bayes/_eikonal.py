"""Anisotropic eikonal solver on tetrahedra, in JAX, with implicit-adjoint gradients.

Solves ``sqrt(∇Tᵀ D ∇T) = 1`` with ``D = v_f² f fᵀ + v_c² (I − f fᵀ)`` per tetrahedron,
``T = t_k`` at the Purkinje–muscle junctions (PMJs), on P1 nodal values, by the fast
iterative method (Fu, Kirby & Whitaker 2013) in its fully parallel (Jacobi) form: every
sweep applies the local tetrahedral update (face, edge and vertex candidates) to all four
vertices of all tetrahedra at once and scatters the minimum into the nodes, inside a
``lax.while_loop`` until nothing changes.

Gradients
---------
The converged solution is a fixed point ``T = Φ(T, θ)`` of the local update. At that
point each node has one *winning* candidate: either a PMJ source or an update from a face,
edge or vertex of an incident tet, ``T_i = Σ_j λ_ij T_j + ‖x_i − Σ_j λ_ij x_j‖_M``. By the
envelope theorem ``∂T_i/∂T_j = λ_ij`` and ``∂T_i/∂θ`` is the derivative of the distance
term at fixed ``λ``. The backward pass of :func:`activation_times` (a ``jax.custom_vjp``)
therefore solves the sparse adjoint system ``(I − Λᵀ) a = ḡ`` by fixed-point iteration
(exact after as many iterations as the dependency chain is long; ≤ 3 parents per node)
and applies one vector–Jacobian product of the distance terms. Memory is ``O(n_nodes)``
beyond the forward solve; no iteration is unrolled. Ties (a node equidistant from two
PMJs) pick one winner, giving a valid finite subgradient.

Units: mm, ms, mm/ms.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import CdtBayesError

__all__ = [
    "EikonalGeometry",
    "EikonalParams",
    "EikonalInfo",
    "eikonal_geometry",
    "eikonal_params",
    "activation_times",
    "solve_eikonal",
    "conduction_metric",
]

# Stand-in for +inf that keeps arithmetic finite (inf − inf would give NaN).
_BIG = 1.0e6

# For local vertex i, the other three local vertices (a, b, c).
_OTHERS = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
# Edges of the opposite face as (p, r) pairs in "others" index space; r is the reference.
_EDGES = np.array([[0, 2], [1, 2], [0, 1]])


class EikonalGeometry(NamedTuple):
    """Mesh arrays the solver needs, precomputed once per mesh (a pytree).

    Attributes
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
    fibres : (n_tets, 3) float
        Unit fibre direction per tet (zeros for isotropic conduction).
    edge_inv : (n_tets, 3, 3) float
        Inverse of the edge matrix ``[x1−x0, x2−x0, x3−x0]ᵀ`` for point location, 1/mm.
    """

    nodes: jax.Array
    tets: jax.Array
    fibres: jax.Array
    edge_inv: jax.Array


class EikonalParams(NamedTuple):
    """Parameters the activation map is differentiable in (a pytree; vmap over it).

    Attributes
    ----------
    pmj_xyz : (n_pmj, 3) float, mm
        PMJ positions (anywhere inside the mesh, not only nodes).
    pmj_t : (n_pmj,) float, ms
        PMJ initiation times.
    cv_fiber : float or (n_tets,) float, mm/ms
        Conduction velocity along the fibre.
    cv_cross : float or (n_tets,) float, mm/ms
        Conduction velocity across the fibre (sheet and normal directions).
    cv_scale : float or (n_tets,) float
        Fibre-independent velocity scaling (1 = none).
    """

    pmj_xyz: jax.Array
    pmj_t: jax.Array
    cv_fiber: jax.Array
    cv_cross: jax.Array
    cv_scale: jax.Array


class EikonalInfo(NamedTuple):
    """Diagnostics of a solve.

    Attributes
    ----------
    n_sweeps : int
        Jacobi sweeps until no node changed by more than the tolerance.
    converged : bool
        False when ``max_sweeps`` was hit first.
    """

    n_sweeps: jax.Array
    converged: jax.Array


def eikonal_geometry(mesh, dtype=None) -> EikonalGeometry:
    """Precompute the solver's view of a :class:`~cdt_bayes.Mesh`.

    Parameters
    ----------
    mesh : Mesh
        Tetrahedral mesh, mm; ``mesh.fibres`` per tet or ``None`` (isotropic).
    dtype : numpy dtype, optional
        Floating dtype (default: float32, or float64 when ``jax_enable_x64`` is on).

    Returns
    -------
    EikonalGeometry
    """
    if dtype is None:
        dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    tets = np.asarray(mesh.tets, dtype=np.int32)
    x = nodes[tets]
    emat = x[:, 1:] - x[:, :1]
    edge_inv = np.linalg.inv(emat)
    if mesh.fibres is None:
        fib = np.zeros((tets.shape[0], 3))
    else:
        fib = np.asarray(mesh.fibres, dtype=np.float64)
    return EikonalGeometry(
        nodes=jnp.asarray(nodes, dtype=dtype),
        tets=jnp.asarray(tets),
        fibres=jnp.asarray(fib, dtype=dtype),
        edge_inv=jnp.asarray(edge_inv, dtype=dtype),
    )


def eikonal_params(pmj_xyz, pmj_t, cv_fiber=0.6, cv_cross=0.4, cv_scale=1.0) -> EikonalParams:
    """Build :class:`EikonalParams` with validation of the velocities.

    Parameters
    ----------
    pmj_xyz : (n_pmj, 3) array, mm
    pmj_t : (n_pmj,) array, ms
    cv_fiber, cv_cross : float or (n_tets,) array, mm/ms
        Must be positive.
    cv_scale : float or (n_tets,) array
        Positive fibre-independent velocity factor.

    Raises
    ------
    CdtBayesError
        On non-positive or non-finite velocities or mismatched PMJ shapes.
    """
    for name, v in (("--cv-fiber", cv_fiber), ("--cv-cross", cv_cross), ("cv_scale", cv_scale)):
        if not isinstance(v, jax.core.Tracer):
            a = np.asarray(v)
            if not np.all(np.isfinite(a)) or np.any(a <= 0):
                raise CdtBayesError(f"{name}: conduction velocity must be positive and finite")
    xyz = jnp.asarray(pmj_xyz)
    t = jnp.asarray(pmj_t)
    if xyz.ndim != 2 or xyz.shape[-1] != 3 or t.shape != xyz.shape[:1]:
        raise CdtBayesError(f"PMJs: expected positions (n_pmj, 3) and times (n_pmj,), got {xyz.shape}, {t.shape}")
    dt = xyz.dtype
    return EikonalParams(
        xyz, t.astype(dt), jnp.asarray(cv_fiber, dt), jnp.asarray(cv_cross, dt), jnp.asarray(cv_scale, dt)
    )


def conduction_metric(fibres, cv_fiber, cv_cross, cv_scale=1.0):
    """Metric ``M = D⁻¹`` per tet, (ms/mm)².

    Parameters
    ----------
    fibres : (n_tets, 3) unit vectors (zeros: isotropic with ``cv_cross``)
    cv_fiber, cv_cross, cv_scale : scalar or (n_tets,)

    Returns
    -------
    (n_tets, 3, 3) array
        ``M = (f fᵀ / v_f² + (I − f fᵀ) / v_c²) / s²``.
    """
    ff = fibres[:, :, None] * fibres[:, None, :]
    eye = jnp.eye(3, dtype=fibres.dtype)
    vf = jnp.broadcast_to(cv_fiber * cv_scale, fibres.shape[:1])[:, None, None]
    vc = jnp.broadcast_to(cv_cross * cv_scale, fibres.shape[:1])[:, None, None]
    return ff / vf**2 + (eye - ff) / vc**2


def _safe_sqrt(q):
    """Sqrt with a finite (zero) gradient at q <= 0."""
    pos = q > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, q, 1.0)), 0.0)


def _mnorm2(v, m):
    """vᵀ M v for v (..., 3) and M broadcastable (..., 3, 3)."""
    return jnp.einsum("...i,...ij,...j->...", v, m, v)


class _Local(NamedTuple):
    """Velocity-dependent per-(tet, local vertex) constants of the local update.

    Component-first layout (every array ends in ``(n_tets, 4)``) so that the sweep is one
    fused elementwise loop.
    """

    a00: jax.Array  # (m, 4): symmetric inverse of A = EᵀME for the opposite face
    a01: jax.Array
    a11: jax.Array
    w0: jax.Array  # (m, 4): A⁻¹ b
    w1: jax.Array
    r: jax.Array  # (m, 4): c − bᵀA⁻¹b, squared M-distance to the face plane
    face_ok: jax.Array  # (m, 4) bool
    e_inva: jax.Array  # (3, m, 4): 1/A for the three edges
    e_mu0: jax.Array  # (3, m, 4): b/A
    e_r: jax.Array  # (3, m, 4): c − b²/A
    vnorm: jax.Array  # (3, m, 4): ‖x_i − x_j‖_M


def _local_constants(geom: EikonalGeometry, metric) -> _Local:
    x = geom.nodes[geom.tets]  # (m, 4, 3)
    xo = x[:, _OTHERS]  # (m, 4, 3, 3)
    e = x[:, :, None, :] - xo  # x_i − x_j
    m = metric[:, None]  # (m, 1, 3, 3)
    mm = metric[:, None, None]
    # Face (a, b, c), reference c: y(λ) = e_c − E λ, E = [e_c − e_a, e_c − e_b].
    ec = e[:, :, 2]
    emat = jnp.stack([ec - e[:, :, 0], ec - e[:, :, 1]], axis=-1)  # (m, 4, 3, 2)
    me = jnp.einsum("tij,tljb->tlib", metric, emat)
    a = jnp.einsum("tlia,tlib->tlab", emat, me)  # (m, 4, 2, 2)
    b = jnp.einsum("tlia,tli->tla", me, ec)  # (m, 4, 2)
    c = _mnorm2(ec, m)
    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    face_ok = det > 1e-6 * a[..., 0, 0] * a[..., 1, 1]
    det_safe = jnp.where(face_ok, det, 1.0)
    a00 = a[..., 1, 1] / det_safe
    a01 = -a[..., 0, 1] / det_safe
    a11 = a[..., 0, 0] / det_safe
    w0 = a00 * b[..., 0] + a01 * b[..., 1]
    w1 = a01 * b[..., 0] + a11 * b[..., 1]
    r = jnp.maximum(c - b[..., 0] * w0 - b[..., 1] * w1, 0.0)
    # Edges (p, r): y(μ) = e_r − μ (e_r − e_p).
    ep = e[:, :, _EDGES[:, 0]]  # (m, 4, 3, 3)
    er = e[:, :, _EDGES[:, 1]]
    d = er - ep
    a1 = _mnorm2(d, mm)
    b1 = jnp.einsum("tlei,tij,tlej->tle", d, metric, er)
    c1 = _mnorm2(er, mm)
    inva = 1.0 / jnp.maximum(a1, 1e-30)
    mu0 = b1 * inva
    r1 = jnp.maximum(c1 - b1 * mu0, 0.0)
    vnorm = _safe_sqrt(_mnorm2(e, mm))
    cf = lambda v: jnp.moveaxis(v, -1, 0)  # noqa: E731
    return _Local(a00, a01, a11, w0, w1, r, face_ok, cf(inva), cf(mu0), cf(r1), cf(vnorm))


def _gather_others(geom: EikonalGeometry, t):
    """Times of the three other vertices of every (tet, local vertex): (3, n_tets, 4)."""
    tt = t[geom.tets]
    return jnp.stack([tt[:, _OTHERS[:, j]] for j in range(3)])


def _candidates(loc: _Local, t_oth, with_weights: bool = True):
    """All 7 candidate values per (tet, local vertex) and their interpolation weights.

    Written with explicit component arithmetic (no small einsums) so that XLA fuses
    the whole update into one elementwise loop.

    Parameters
    ----------
    loc : _Local
    t_oth : (3, n_tets, 4)
        Current times of the three other vertices (a, b, c).
    with_weights : bool
        Also return the weights (only needed to build the adjoint).

    Returns
    -------
    vals : (7, n_tets, 4)
        Face, 3 edges, 3 vertices; invalid candidates are ``_BIG``.
    lam : (7, 3, n_tets, 4), only when ``with_weights``
        Weights of the other three vertices in each candidate.
    """
    big = jnp.asarray(_BIG, t_oth.dtype)
    ta, tb, tc = t_oth[0], t_oth[1], t_oth[2]
    # Face.
    d0, d1 = ta - tc, tb - tc
    u0 = loc.a00 * d0 + loc.a01 * d1
    u1 = loc.a01 * d0 + loc.a11 * d1
    s = d0 * u0 + d1 * u1
    ok = loc.face_ok & (s < 1.0)
    sq = _safe_sqrt(loc.r / jnp.where(ok, 1.0 - s, 1.0))
    l0 = loc.w0 - sq * u0
    l1 = loc.w1 - sq * u1
    lc = 1.0 - l0 - l1
    ok = ok & (l0 >= 0) & (l1 >= 0) & (lc >= 0)
    fval = jnp.where(ok, tc + l0 * d0 + l1 * d1 + sq, big)
    # Edges (a, c), (b, c), (a, b).
    tp = jnp.stack([ta, tb, ta])
    tr = jnp.stack([tc, tc, tb])
    de = tp - tr
    s1 = de * de * loc.e_inva
    ok1 = s1 < 1.0
    sq1 = _safe_sqrt(loc.e_r / jnp.where(ok1, 1.0 - s1, 1.0))
    mu = loc.e_mu0 - sq1 * de * loc.e_inva
    ok1 = ok1 & (mu >= 0) & (mu <= 1)
    evals = jnp.where(ok1, tr + mu * de + sq1, big)
    # Vertices.
    vvals = t_oth + loc.vnorm
    vals = jnp.minimum(jnp.concatenate([fval[None], evals, vvals]), big)
    if not with_weights:
        return vals
    zero = jnp.zeros_like(l0)
    one = jnp.ones_like(l0)
    lam = jnp.stack(
        [
            jnp.stack([l0, l1, lc]),
            jnp.stack([mu[0], zero, 1.0 - mu[0]]),
            jnp.stack([zero, mu[1], 1.0 - mu[1]]),
            jnp.stack([mu[2], 1.0 - mu[2], zero]),
            jnp.stack([one, zero, zero]),
            jnp.stack([zero, one, zero]),
            jnp.stack([zero, zero, one]),
        ]
    )
    return vals, lam


def _locate(geom: EikonalGeometry, pts):
    """Tet containing each point (or the nearest in barycentric terms), brute force.

    Returns tet indices (n_pmj,).
    """
    x0 = geom.nodes[geom.tets[:, 0]]  # (m, 3)
    rel = pts[:, None, :] - x0[None]  # (k, m, 3)
    bary = jnp.einsum("kmi,mij->kmj", rel, geom.edge_inv)  # (k, m, 3)
    b0 = 1.0 - bary.sum(-1)
    score = jnp.minimum(b0, bary.min(-1))
    return jnp.argmax(score, axis=1)


def _sources(geom, params, metric, radius=0.0):
    """Initial values ``t_k + ‖x − p_k‖_M`` near each PMJ (metric of the PMJ's tet).

    They are set at the nodes of each PMJ's tet, and, when ``radius > 0``, at every node
    within ``radius`` mm of it.

    Returns node indices (n_pmj, n_src), values (n_pmj, n_src), tets (n_pmj,).
    """
    tet = _locate(geom, jax.lax.stop_gradient(params.pmj_xyz))
    idx = geom.tets[tet]  # (k, 4)
    if radius > 0:
        n = geom.nodes.shape[0]
        d2 = jnp.sum((geom.nodes[None] - jax.lax.stop_gradient(params.pmj_xyz)[:, None]) ** 2, -1)
        near = d2 <= radius**2
        idx = jnp.concatenate([idx, jnp.broadcast_to(jnp.arange(n), d2.shape)], 1)
    r = geom.nodes[idx] - params.pmj_xyz[:, None, :]
    val = params.pmj_t[:, None] + _safe_sqrt(_mnorm2(r, metric[tet][:, None]))
    if radius > 0:
        val = val.at[:, 4:].set(jnp.where(near, val[:, 4:], _BIG))
    return idx, val, tet


def _sweep(geom, loc, t):
    best = _candidates(loc, _gather_others(geom, t), with_weights=False).min(0)
    return t.at[geom.tets].min(best)


def _forward(geom, params, max_sweeps: int, tol: float, radius: float):
    metric = conduction_metric(geom.fibres, params.cv_fiber, params.cv_cross, params.cv_scale)
    loc = _local_constants(geom, metric)
    sidx, sval, _ = _sources(geom, params, metric, radius)
    n = geom.nodes.shape[0]
    t0 = jnp.full((n,), _BIG, geom.nodes.dtype).at[sidx].min(sval)

    def cond(state):
        _, it, changed = state
        return changed & (it < max_sweeps)

    def body(state):
        t, it, _ = state
        t1 = _sweep(geom, loc, t)
        t2 = _sweep(geom, loc, t1)
        changed = jnp.any(t2 < t - tol)
        return t2, it + 2, changed

    t, it, changed = jax.lax.while_loop(cond, body, (t0, jnp.asarray(0), jnp.asarray(True)))
    return t, EikonalInfo(it, ~changed), loc, metric


class _Winners(NamedTuple):
    parents: jax.Array  # (n, 3) node indices (0 where unused)
    weights: jax.Array  # (n, 3) λ (0 for sources)
    y: jax.Array  # (n, 3) x_i − Σ λ_j x_j (tet winners) or x_i (sources)
    tet: jax.Array  # (n,) tet whose metric is used
    src: jax.Array  # (n,) PMJ index for source winners, −1 otherwise


def _winners(geom, params, loc, metric, t, radius):
    """Identify the winning candidate of every node at the converged solution."""
    m = geom.tets.shape[0]
    n = geom.nodes.shape[0]
    k = params.pmj_t.shape[0]
    vals, lam = _candidates(loc, _gather_others(geom, t))
    kind = jnp.argmin(vals, 0)  # (m, 4)
    best = jnp.take_along_axis(vals, kind[None], 0)[0]
    blam = jnp.moveaxis(jnp.take_along_axis(lam, kind[None, None], 0)[0], 0, -1)  # (m, 4, 3)
    sidx, sval, stet = _sources(geom, params, metric, radius)
    n_src = sidx.shape[1]
    entry_node = jnp.concatenate([geom.tets.reshape(-1), sidx.reshape(-1)])
    entry_val = jnp.concatenate([best.reshape(-1), sval.reshape(-1)])
    node_min = jnp.full((n,), jnp.inf, t.dtype).at[entry_node].min(entry_val)
    n_entries = entry_val.shape[0]
    eid = jnp.arange(n_entries, dtype=jnp.int32)
    is_min = entry_val <= node_min[entry_node]
    win = jnp.full((n,), n_entries, jnp.int32).at[entry_node].min(jnp.where(is_min, eid, jnp.int32(n_entries)))
    win = jnp.minimum(win, n_entries - 1)
    from_tet = win < 4 * m
    wt = jnp.where(from_tet, win, 0)
    e_t, e_l = wt // 4, wt % 4
    parents = geom.tets[e_t[:, None], jnp.asarray(_OTHERS, jnp.int32)[e_l]]  # (n, 3)
    weights = jnp.where(from_tet[:, None], blam[e_t, e_l], 0.0)
    ws = jnp.where(from_tet, 0, win - 4 * m)
    src = jnp.where(from_tet, -1, ws // n_src)
    xo = geom.nodes[parents]
    y_tet = geom.nodes - jnp.einsum("nj,nji->ni", weights, xo)
    y = jnp.where(from_tet[:, None], y_tet, geom.nodes)
    tet = jnp.where(from_tet, e_t, stet[jnp.clip(src, 0, max(k - 1, 0))])
    return _Winners(parents, weights, y, tet, src)


def _local_terms(geom, params, wn: _Winners):
    """θ-dependent part of every node's winning candidate at fixed λ (envelope theorem)."""
    metric = conduction_metric(geom.fibres, params.cv_fiber, params.cv_cross, params.cv_scale)
    is_src = wn.src >= 0
    sk = jnp.clip(wn.src, 0, None)
    r = jnp.where(is_src[:, None], wn.y - params.pmj_xyz[sk], wn.y)
    dist = _safe_sqrt(_mnorm2(r, metric[wn.tet]))
    return dist + jnp.where(is_src, params.pmj_t[sk], 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _solve(geom, params, max_sweeps, tol, adj_tol, radius):
    t, info, _, _ = _forward(geom, params, max_sweeps, tol, radius)
    return t, info


def _solve_fwd(geom, params, max_sweeps, tol, adj_tol, radius):
    t, info, loc, metric = _forward(geom, params, max_sweeps, tol, radius)
    wn = _winners(geom, params, loc, metric, t, radius)
    return (t, info), (geom, params, wn)


def _solve_bwd(max_sweeps, tol, adj_tol, radius, res, cot):
    geom, params, wn = res
    gbar = cot[0]
    n = gbar.shape[0]
    flat_parents = wn.parents.reshape(-1)

    def step(a):
        return gbar + jnp.zeros((n,), a.dtype).at[flat_parents].add((wn.weights * a[:, None]).reshape(-1))

    def cond(state):
        _, it, err = state
        return (err > 0) & (it < 4 * max_sweeps)

    def body(state):
        a, it, _ = state
        a1 = step(a)
        err = jnp.max(jnp.abs(a1 - a)) - adj_tol * (1.0 + jnp.max(jnp.abs(a1)))
        return a1, it + 1, err

    a, _, _ = jax.lax.while_loop(cond, body, (gbar, jnp.asarray(0), jnp.asarray(1.0, gbar.dtype)))
    _, vjp = jax.vjp(lambda p: _local_terms(geom, p, wn), params)
    (pbar,) = vjp(a)
    return None, pbar


_solve.defvjp(_solve_fwd, _solve_bwd)


def solve_eikonal(
    geom: EikonalGeometry,
    params: EikonalParams,
    max_sweeps: int = 2000,
    tol: float | None = None,
    adj_tol: float | None = None,
    source_radius: float = 0.0,
) -> tuple[jax.Array, EikonalInfo]:
    """Activation times and solver diagnostics (differentiable in ``params``).

    Parameters
    ----------
    geom : EikonalGeometry
        From :func:`eikonal_geometry`.
    params : EikonalParams
        PMJs and velocities, see :func:`eikonal_params`.
    max_sweeps : int
        Upper bound on Jacobi sweeps.
    tol : float, optional
        A sweep that lowers no node by more than ``tol`` ms ends the iteration
        (default 1e-4 ms in float32, 1e-10 ms in float64).
    adj_tol : float, optional
        Relative tolerance of the adjoint fixed-point iteration.
    source_radius : float
        mm. 0 (default, as in FORWARD_MODEL.md): a PMJ initialises the nodes of its
        tet. > 0: also every node within this radius, with the homogeneous solution of
        the PMJ's tet (removes the point-source error; costs ``n_pmj × n_nodes``).

    Returns
    -------
    T : (n_nodes,) array, ms
        Activation time at each node.
    info : EikonalInfo
    """
    f64 = geom.nodes.dtype == jnp.float64
    if tol is None:
        tol = 1e-10 if f64 else 1e-4
    if adj_tol is None:
        adj_tol = 1e-12 if f64 else 1e-6
    return _solve(geom, params, int(max_sweeps), float(tol), float(adj_tol), float(source_radius))


def activation_times(
    geom: EikonalGeometry,
    pmj_xyz,
    pmj_t,
    cv_fiber=0.6,
    cv_cross=0.4,
    cv_scale=1.0,
    **kw,
) -> jax.Array:
    """Activation time at each node from PMJs (differentiable; jit- and vmap-able).

    Parameters
    ----------
    geom : EikonalGeometry
    pmj_xyz : (n_pmj, 3) array, mm
    pmj_t : (n_pmj,) array, ms
    cv_fiber, cv_cross : float or (n_tets,) array, mm/ms
    cv_scale : float or (n_tets,) array
    **kw
        Passed to :func:`solve_eikonal`.

    Returns
    -------
    (n_nodes,) array, ms

    Examples
    --------
    >>> geom = eikonal_geometry(mesh)                      # doctest: +SKIP
    >>> T = activation_times(geom, xyz, t)                 # doctest: +SKIP
    >>> g = jax.grad(lambda t: activation_times(geom, xyz, t).mean())(t)  # doctest: +SKIP
    """
    dt = geom.nodes.dtype
    params = EikonalParams(
        jnp.asarray(pmj_xyz, dt),
        jnp.asarray(pmj_t, dt),
        jnp.asarray(cv_fiber, dt),
        jnp.asarray(cv_cross, dt),
        jnp.asarray(cv_scale, dt),
    )
    return solve_eikonal(geom, params, **kw)[0]
