"""Posterior summaries of order-free quantities (NumPy core over ``(chain, draw, ...)``).

PMJs are exchangeable (label switching), so nothing here is indexed by PMJ: activation
time per node, the ECG, early-activation probabilities and clusters of whole activation
maps. Diagnostics (R-hat, ESS) are computed on activation times and model ECGs.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "activation_summary",
    "ecg_bands",
    "ecg_correlation",
    "rank_normalized_rhat",
    "ess",
    "diagnostics",
    "activation_modes",
    "identifiability",
    "stuck_chains",
    "loo_log_density",
    "stacking_weights",
    "pool_draws",
]


def activation_summary(act: np.ndarray, extra_sd: np.ndarray | None = None, seed: int = 0,
                       min_samples: int = 2000, chunk: int = 4096) -> dict[str, np.ndarray]:
    """Per-node posterior summaries.

    Parameters
    ----------
    act : (chain, draw, n_nodes) ms
    extra_sd : (n_nodes,) ms or None
        A per-node error to fold in: the summaries are then those of ``act + e``, with
        ``e ~ N(0, extra_sd²)`` independent of the draw (the fast path's forward error,
        :func:`cdt_bayes._inference.forward_error`). The mean is unchanged, the sd is
        ``sqrt(sd² + extra_sd²)`` exactly, and the quantiles are those of the Gaussian
        mixture, by Monte Carlo (each draw repeated up to ``min_samples`` samples, seeded).

    Returns
    -------
    dict of (n_nodes,) arrays: ``mean, sd, q05, q95, width90`` (ms).
    """
    flat = act.reshape(-1, act.shape[-1]).astype(np.float64)
    sd = flat.std(0, ddof=1) if flat.shape[0] > 1 else np.zeros(flat.shape[1])
    if extra_sd is None:
        q05, q95 = np.quantile(flat, [0.05, 0.95], axis=0)
    else:
        e = np.broadcast_to(np.asarray(extra_sd, np.float64), flat.shape[1:])
        if np.any(~np.isfinite(e)) or np.any(e < 0):
            raise ValueError("activation_summary: extra_sd must be finite and non-negative")
        rep = max(1, -(-min_samples // flat.shape[0]))
        rng = np.random.default_rng(seed)
        q05, q95 = np.empty(flat.shape[1]), np.empty(flat.shape[1])
        for a in range(0, flat.shape[1], chunk):  # node chunks keep the memory to ~rep n chunk
            b = min(a + chunk, flat.shape[1])
            x = np.repeat(flat[:, a:b], rep, axis=0)
            x += e[a:b] * rng.standard_normal(x.shape)
            q05[a:b], q95[a:b] = np.quantile(x, [0.05, 0.95], axis=0)
        sd = np.sqrt(sd**2 + e**2)
    return {"mean": flat.mean(0), "sd": sd, "q05": q05, "q95": q95, "width90": q95 - q05}


def stuck_chains(step_size: np.ndarray, ratio: float = 20.0) -> list[tuple[int, float, float]]:
    """NUTS chains whose adapted step is ``ratio`` times smaller than the other chains'.

    A chain whose step-size adaptation collapsed (e.g. to 1e-4 while the others use 1e-2)
    barely moves: its draws are nearly one point, so it adds a narrow clump to the pooled
    intervals and inflates R-hat without exploring anything.

    Parameters
    ----------
    step_size : (chain, draw) adapted leapfrog step sizes (``sample_stats.step_size``)
    ratio : float
        How many times smaller than the median of the other chains counts as stuck.

    Returns
    -------
    list of ``(chain, its median step, the other chains' median step)``, chain 0-based.
    """
    eps = np.median(np.asarray(step_size, np.float64).reshape(np.shape(step_size)[0], -1), axis=1)
    out = []
    for c in range(eps.size):
        others = np.delete(eps, c)
        if others.size and np.isfinite(eps[c]) and eps[c] * ratio < np.median(others):
            out.append((c, float(eps[c]), float(np.median(others))))
    return out


def tree_depth_saturation(n_steps: np.ndarray, max_tree_depth: int) -> float:
    """Fraction of NUTS iterations whose trajectory was cut at the tree-depth cap.

    A tree of depth ``D`` has at most ``2**D - 1`` leapfrog steps. An iteration that uses
    all of them stopped because of the cap, not because the trajectory turned back (the
    U-turn criterion): its draw is more correlated with the previous one than NUTS would
    make it, and the chain explores by shorter moves.

    Parameters
    ----------
    n_steps : (chain, draw) leapfrog steps per iteration (``sample_stats.n_steps``)
    max_tree_depth : int
        The cap the chains ran with.

    Returns
    -------
    float in [0, 1]; NaN for no iterations.
    """
    n = np.asarray(n_steps).ravel()
    if n.size == 0:
        return float("nan")
    return float(np.mean(n >= 2**int(max_tree_depth) - 1))


def ecg_bands(pp: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and 90% band of posterior-predictive ECGs ``(chain, draw, lead, time)``."""
    flat = pp.reshape((-1,) + pp.shape[2:]).astype(np.float64)
    q05, q95 = np.quantile(flat, [0.05, 0.95], axis=0)
    return {"mean": flat.mean(0), "q05": q05, "q95": q95}


def ecg_correlation(observed: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Pearson r per lead between ``(lead, time)`` arrays (NaN for flat leads)."""
    o = observed - observed.mean(1, keepdims=True)
    p = predicted - predicted.mean(1, keepdims=True)
    den = np.sqrt((o**2).sum(1) * (p**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (o * p).sum(1) / den, np.nan)


def _split_chains(x: np.ndarray) -> np.ndarray:
    c, n = x.shape[:2]
    half = n // 2
    return np.concatenate([x[:, :half], x[:, n - half :]], 0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank-normalise over (chain, draw), per trailing element."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    shape = x.shape
    flat = x.reshape(-1, int(np.prod(shape[2:], dtype=int)) if x.ndim > 2 else 1)
    r = rankdata(flat, axis=0, method="average")
    z = ndtri((r - 0.375) / (flat.shape[0] + 0.25))
    return z.reshape(shape)


def _rhat_basic(x: np.ndarray) -> np.ndarray:
    c, n = x.shape[:2]
    means = x.mean(1)
    w = x.var(1, ddof=1).mean(0)
    b = n * means.var(0, ddof=1)
    var = (n - 1) / n * w + b / n
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sqrt(var / w)
    return np.where(w > 0, r, np.where(b > 0, np.inf, 1.0))


def rank_normalized_rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat (Vehtari et al. 2021), per trailing element.

    Parameters
    ----------
    x : (chain, draw, ...) array; needs at least 4 draws.
    """
    s = _split_chains(np.asarray(x, np.float64))
    bulk = _rhat_basic(_z_scale(s))
    folded = np.abs(s - np.median(s.reshape(-1, *s.shape[2:]), axis=0))
    tail = _rhat_basic(_z_scale(folded))
    return np.maximum(bulk, tail)


def _autocov(x: np.ndarray) -> np.ndarray:
    n = x.shape[1]
    m = 2 ** int(np.ceil(np.log2(2 * n)))
    xc = x - x.mean(1, keepdims=True)
    f = np.fft.rfft(xc, n=m, axis=1)
    ac = np.fft.irfft(f * np.conj(f), n=m, axis=1)[:, :n]
    return ac / n


def ess(x: np.ndarray, kind: str = "bulk") -> np.ndarray:
    """Effective sample size (bulk: rank-normalised; tail: min of 5%/95% indicators).

    Parameters
    ----------
    x : (chain, draw, ...) array
    kind : {"bulk", "tail"}
    """
    x = np.asarray(x, np.float64)
    if kind == "tail":
        q05, q95 = np.quantile(x.reshape(-1, *x.shape[2:]), [0.05, 0.95], axis=0)
        return np.minimum(ess((x <= q05).astype(float), "raw"), ess((x <= q95).astype(float), "raw"))
    s = _split_chains(x)
    if kind == "bulk":
        s = _z_scale(s)
    c, n = s.shape[:2]
    tail_shape = s.shape[2:]
    s2 = s.reshape(c, n, -1)
    out = np.empty(s2.shape[2])
    for j in range(s2.shape[2]):  # loop over summarised quantities, not nodes of a mesh hot path
        out[j] = _ess_1d(s2[:, :, j])
    return out.reshape(tail_shape)


def _ess_1d(x: np.ndarray) -> float:
    c, n = x.shape
    if n < 4:
        return float("nan")
    acov = _autocov(x)
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean()
    var_plus = w * (n - 1) / n + (x.mean(1).var(ddof=1) if c > 1 else 0.0)
    if not var_plus > 0:
        return float(c * n)
    rho = 1 - (w - acov.mean(0)) / var_plus
    rho[0] = 1.0
    # Geyer's initial monotone sequence
    t = 0
    total = 0.0
    prev = np.inf
    while t + 1 < n:
        p = rho[t] + rho[t + 1]
        if p < 0:
            break
        p = min(p, prev)
        total += p
        prev = p
        t += 2
    tau = -1 + 2 * total
    tau = max(tau, 1 / np.log10(c * n))
    return float(c * n / tau)


def diagnostics(act: np.ndarray, ecg_model: np.ndarray, max_nodes: int = 2000, seed: int = 0) -> dict:
    """R-hat and ESS on order-free quantities.

    Parameters
    ----------
    act : (chain, draw, n_nodes) activation times
    ecg_model : (chain, draw, lead, time) noise-free model ECGs
    max_nodes : int
        ESS is computed on a fixed random subset of nodes (all when fewer).

    Returns
    -------
    dict with ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail`` over activation times and
    the ECG, and ``rhat_activation`` (n_nodes,) for maps.
    """
    c, d = act.shape[:2]
    if c * d < 8 or d < 4:
        return {"max_rhat": float("nan"), "min_ess_bulk": float("nan"), "min_ess_tail": float("nan"),
                "rhat_activation": np.full(act.shape[-1], np.nan)}
    rng = np.random.default_rng(seed)
    n = act.shape[-1]
    sub = np.sort(rng.choice(n, min(n, max_nodes), replace=False))
    r_act = rank_normalized_rhat(act)
    e = ecg_model.reshape(c, d, -1)
    esub = np.sort(rng.choice(e.shape[-1], min(e.shape[-1], 400), replace=False))
    r_ecg = rank_normalized_rhat(e[:, :, esub])
    ess_b = np.concatenate([ess(act[:, :, sub], "bulk"), ess(e[:, :, esub], "bulk")])
    ess_t = np.concatenate([ess(act[:, :, sub], "tail"), ess(e[:, :, esub], "tail")])
    finite = lambda a: a[np.isfinite(a)]  # noqa: E731
    rr = np.concatenate([finite(r_act), finite(r_ecg)])
    return {
        "max_rhat": float(rr.max()) if rr.size else float("nan"),
        "min_ess_bulk": float(np.nanmin(ess_b)),
        "min_ess_tail": float(np.nanmin(ess_t)),
        "rhat_activation": r_act,
    }


def rhat_within_groups(act: np.ndarray, ecg_model: np.ndarray, groups, max_nodes: int = 2000) -> dict:
    """Largest R-hat among chains that share a group (e.g. the MAP optimum they started in).

    Chains started in different optima can disagree because the posterior has several
    modes, or because no chain mixes at all; R-hat over the chains of *one* optimum tells
    the two apart (near 1: each basin is sampled well, the disagreement is between modes).

    Parameters
    ----------
    act : (chain, draw, n_nodes) activation times, ms
    ecg_model : (chain, draw, lead, time) noise-free model ECGs, mV
    groups : (chain,) group label of each chain

    Returns
    -------
    dict: ``max_rhat`` (float, over groups of at least 2 chains; NaN when none has 2) and
    ``by_group`` ({label: max R-hat} for those groups)
    """
    groups = np.asarray(groups)
    if groups.shape != (act.shape[0],):
        raise ValueError(f"groups must have one label per chain ({act.shape[0]}), got shape {groups.shape}")
    by = {}
    for g in np.unique(groups):
        sel = np.flatnonzero(groups == g)
        if sel.size >= 2:
            by[g.item()] = diagnostics(act[sel], ecg_model[sel], max_nodes=max_nodes)["max_rhat"]
    vals = [v for v in by.values() if np.isfinite(v)]
    return {"max_rhat": float(max(vals)) if vals else float("nan"), "by_group": by}


#: RMS difference (ms) between two activation maps beyond which they count as different
#: patterns: the cut of :func:`activation_modes`, and what makes a MAP optimum a rival of the
#: best (:func:`cdt_bayes._inference.near_optima_note`).
MODE_SEPARATION_MS = 5.0


def activation_modes(act: np.ndarray, threshold_ms: float = MODE_SEPARATION_MS, max_draws: int = 400,
                     seed: int = 0) -> dict:
    """Cluster posterior activation maps into distinct patterns.

    Average-linkage hierarchical clustering of (sub-sampled) draws by RMS difference of
    their maps, cut at ``threshold_ms``.

    Parameters
    ----------
    act : (chain, draw, n_nodes) ms

    Returns
    -------
    dict: ``labels`` (n_used,), ``draw_index`` (n_used,) flat indices of the used draws,
    ``weights`` (n_modes,) posterior probability of each mode (sorted, largest first),
    ``representative`` (n_modes,) flat draw index of each mode's medoid,
    ``n_effective`` = exp(entropy of the weights), ``mean_maps`` (n_modes, n_nodes).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    flat = act.reshape(-1, act.shape[-1]).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(flat.shape[0], min(max_draws, flat.shape[0]), replace=False))
    x = flat[idx]
    if x.shape[0] < 2:
        return {"labels": np.zeros(x.shape[0], int), "draw_index": idx, "weights": np.ones(1),
                "representative": idx[:1], "n_effective": 1.0, "mean_maps": x[:1]}
    dist = pdist(x) / np.sqrt(x.shape[1])
    z = linkage(dist, method="average")
    lab = fcluster(z, t=threshold_ms, criterion="distance") - 1
    counts = np.bincount(lab)
    order = np.argsort(-counts)
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    lab = remap[lab]
    counts = counts[order]
    w = counts / counts.sum()
    dm = squareform(dist)
    reps, maps = [], []
    for k in range(w.size):  # loop over the handful of modes
        members = np.flatnonzero(lab == k)
        reps.append(idx[members[np.argmin(dm[np.ix_(members, members)].sum(1))]])
        maps.append(x[members].mean(0))
    ent = -(w * np.log(w)).sum()
    return {"labels": lab, "draw_index": idx, "weights": w, "representative": np.asarray(reps),
            "n_effective": float(np.exp(ent)), "mean_maps": np.asarray(maps)}


def identifiability(act: np.ndarray, prior_act: np.ndarray | None = None, early_ms: float = 5.0) -> dict:
    """Per-node and overall identifiability measures.

    Parameters
    ----------
    act : (chain, draw, n_nodes) posterior activation maps, ms
    prior_act : (n_prior, n_nodes) prior activation maps, ms (for shrinkage)
    early_ms : float
        A node is an early-activation site in a draw when it activates within
        ``early_ms`` of that draw's first activation.

    Returns
    -------
    dict with per-node ``p_early`` (probability of being an early site), ``shrinkage``
    (1 − posterior var / prior var; NaN without prior) and scalars ``mean_sd_ms``,
    ``median_width90_ms``, ``mean_shrinkage``, ``total_activation_ms`` (mean, q05, q95).
    """
    flat = act.reshape(-1, act.shape[-1])
    first = flat.min(1, keepdims=True)
    p_early = (flat <= first + early_ms).mean(0)
    s = activation_summary(act)
    if prior_act is not None and prior_act.shape[0] > 1:
        pv = prior_act.var(0, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shrink = np.where(pv > 0, 1 - s["sd"] ** 2 / pv, np.nan)
    else:
        shrink = np.full(flat.shape[1], np.nan)
    tat = flat.max(1) - flat.min(1)
    return {
        "p_early": p_early,
        "shrinkage": shrink,
        "mean_sd_ms": float(s["sd"].mean()),
        "median_width90_ms": float(np.median(s["width90"])),
        "mean_shrinkage": float(np.nanmean(shrink)) if np.isfinite(shrink).any() else float("nan"),
        "total_activation_ms": {
            "mean": float(tat.mean()),
            "q05": float(np.quantile(tat, 0.05)),
            "q95": float(np.quantile(tat, 0.95)),
        },
    }


def loo_log_density(loglik: np.ndarray) -> np.ndarray:
    """Leave-one-out log predictive density of each observation, from one set of draws.

    Truncated importance sampling (Ionides 2008): the ratios ``1 / p(y_i | θ_s)`` are
    capped at ``√S`` times their mean, which bounds their variance at the cost of a small
    bias, so one draw far in the tail cannot dominate.

    Parameters
    ----------
    loglik : (draw, n_obs) log p(y_i | θ_s) of each observation under each draw

    Returns
    -------
    (n_obs,) log p(y_i | y_{-i}) estimates
    """
    from scipy.special import logsumexp

    ll = np.asarray(loglik, np.float64)
    if ll.ndim != 2 or ll.shape[0] < 2:
        raise ValueError(f"loo_log_density: loglik must be (draw >= 2, n_obs), got shape {ll.shape}")
    n = ll.shape[0]
    lr = -ll - np.max(-ll, axis=0)
    lw = np.minimum(lr, logsumexp(lr, axis=0) - np.log(n) + 0.5 * np.log(n))
    return logsumexp(lw + ll, axis=0) - logsumexp(lw, axis=0)


def stacking_weights(loglik: np.ndarray) -> dict:
    """Weights that combine chains which do not mix (Yao, Vehtari & Gelman 2022).

    When chains sit in different basins, pooling them with equal weights gives each basin
    the share of the chains that happened to start in it, not its posterior mass. Stacking
    weighs each chain by how well it predicts held-out data instead: it maximises the
    leave-one-out log score of the mixture ``Σ_k w_k p_k(y_i | y_{-i})`` over the simplex.
    Chains that predict equally well keep comparable weights; a chain in a basin the data
    disfavour falls towards 0.

    Parameters
    ----------
    loglik : (chain, draw, n_obs) pointwise log-likelihood of every draw

    Returns
    -------
    dict: ``weights`` (chain,) summing to 1, ``elpd_loo`` (chain,) each chain's LOO
    log score (nats), ``elpd_loo_stacked`` (float) the mixture's.
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp, softmax

    ll = np.asarray(loglik, np.float64)
    if ll.ndim != 3:
        raise ValueError(f"stacking_weights: loglik must be (chain, draw, n_obs), got shape {ll.shape}")
    if not np.all(np.isfinite(ll)):
        raise ValueError("stacking_weights: loglik has non-finite values")
    lpd = np.stack([loo_log_density(x) for x in ll])  # (chain, n_obs)
    k = lpd.shape[0]
    if k == 1:
        return {"weights": np.ones(1), "elpd_loo": lpd.sum(1), "elpd_loo_stacked": float(lpd.sum())}
    shift = lpd.max(0)
    dens = np.exp(lpd - shift)  # (chain, n_obs), the best chain at 1 per observation

    def objective(a):
        w = softmax(a)
        mix = w @ dens
        g_w = -(dens / mix).sum(1)
        return -np.log(mix).sum(), w * (g_w - w @ g_w)

    a0 = np.zeros(k)
    res = minimize(objective, a0, jac=True, method="L-BFGS-B", options={"ftol": 1e-12, "gtol": 1e-9})
    w = softmax(res.x)
    mix = logsumexp(lpd + np.log(np.maximum(w, 1e-300))[:, None], axis=0)
    return {"weights": w, "elpd_loo": lpd.sum(1), "elpd_loo_stacked": float(mix.sum())}


def pool_draws(n_chain: int, n_draw: int, weights) -> np.ndarray:
    """Flat draw indices that pool chains in the given proportions (deterministic).

    Chain ``k`` contributes ``≈ weights[k] · n_chain · n_draw`` of the ``n_chain · n_draw``
    pooled draws (largest remainder), taken evenly spaced through its draws (repeated in
    turn when its share exceeds its draws), so summaries of the pooled draws are those
    of the mixture ``Σ_k w_k p_k``.

    Parameters
    ----------
    n_chain, n_draw : int
    weights : (n_chain,) non-negative, summing to 1

    Returns
    -------
    (n_chain · n_draw,) indices into the draws flattened chain-major, ``chain · n_draw + draw``
    """
    w = np.asarray(weights, np.float64)
    if w.shape != (n_chain,) or np.any(~np.isfinite(w)) or np.any(w < 0) or not np.isclose(w.sum(), 1.0):
        raise ValueError(f"pool_draws: weights must be {n_chain} non-negative numbers summing to 1")
    total = n_chain * n_draw
    share = w * total
    count = np.floor(share).astype(int)
    for k in np.argsort(-(share - count))[: total - count.sum()]:
        count[k] += 1
    idx = [k * n_draw + (np.arange(m) * n_draw // m if m <= n_draw else np.arange(m) % n_draw)
           for k, m in enumerate(count) if m > 0]
    return np.concatenate(idx)
