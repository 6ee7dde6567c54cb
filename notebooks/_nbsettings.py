"""Settings and small helpers shared by the example notebooks (not part of the package).

``CDT_NB_FAST=1`` (set by ``tests/test_notebooks.py``) selects tiny problem sizes so that
all notebooks run in a few minutes on a laptop CPU; without it they use realistic sizes.

Environment variables
---------------------
CDT_NB_FAST
    ``1``: tiny settings (smoke test). Anything else: realistic settings.
CDT_BAYES_CACHE
    Cache of distance dictionaries (default ``~/.cache/cdt_bayes``, as the CLI).
CDT_NB_OUT
    Where notebooks write files (VTU, CSV); default ``<tmp>/cdt_bayes_notebooks``.
CDT_SHARED_DATA
    The real data folder (default ``../shared/data`` next to the repository).
CDT_NB_PATIENT_FIT
    ``1``: fit the 37k-node patient mesh in notebook 04 also in fast mode.
CDT_BAYES_NO_PROGRESS
    ``1``: no progress bars.

Units: mm, ms, mm/ms, mV.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _ensure_importable() -> None:
    """Put the source checkout first on ``sys.path`` when ``cdt_bayes`` is not a regular package.

    An editable install can resolve ``cdt_bayes`` to an empty namespace package when Python
    is started outside the repository root (the notebooks run in ``notebooks/``).
    """
    spec = importlib.util.find_spec("cdt_bayes")
    broken = spec is None or spec.origin is None
    if broken and (REPO / "cdt_bayes" / "__init__.py").exists() and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


_ensure_importable()

FAST = os.environ.get("CDT_NB_FAST") == "1"
PROGRESS = os.environ.get("CDT_BAYES_NO_PROGRESS") != "1"

#: Problem sizes. Fast: ~1.5k-node mesh, ~360 dictionary sites, a few dozen NUTS draws.
#: Full: the 5k-node default mesh, ~700 sites (~3 min of eikonal solves, cached), real chains.
SETTINGS = (
    dict(
        mesh_size_mm=6.0,
        site_spacing_mm=8.0,
        kernel_mm=5.6,
        n_pmj=3,
        map_steps=200,
        n_starts=8,
        search_rounds=0,  # no basin hops after the multi-start
        chains=2,
        num_warmup=20,
        num_samples=20,
        svi_steps=200,
        svi_samples=50,
    )
    if FAST
    else dict(
        mesh_size_mm=None,
        site_spacing_mm=6.0,
        kernel_mm=4.0,
        n_pmj=6,
        map_steps=400,
        n_starts=16,
        search_rounds=None,  # fit's default basin hops
        chains=4,
        num_warmup=300,
        num_samples=300,
        svi_steps=2000,
        svi_samples=400,
    )
)


def cache_dir() -> Path:
    """Distance-dictionary cache: ``$CDT_BAYES_CACHE`` or ``~/.cache/cdt_bayes``."""
    env = os.environ.get("CDT_BAYES_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cdt_bayes"


def out_dir(name: str) -> Path:
    """Return (and create) the folder for a notebook's files."""
    base = Path(os.environ.get("CDT_NB_OUT", Path(tempfile.gettempdir()) / "cdt_bayes_notebooks"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data() -> Path | None:
    """Return the real-data folder (``$CDT_SHARED_DATA`` or ``../shared/data``), or None."""
    env = os.environ.get("CDT_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def demo_geometry():
    """Return the biventricular geometry of the examples, ``(mesh, electrodes)``.

    Fast mode: generated with 6 mm elements (~1.5k nodes; needs gmsh, else the default mesh).
    Full mode: the shipped 5k-node default mesh and its electrodes.
    """
    import cdt_bayes as cb

    if SETTINGS["mesh_size_mm"] is not None:
        try:
            return cb.generate_biventricular(resolution=SETTINGS["mesh_size_mm"])
        except cb.CdtBayesError as err:  # gmsh not installed
            print(f"({err}; using the 5k-node default mesh instead)")
    return cb.default_mesh(), cb.default_electrodes_table()


def endocardial_pmjs(mesh, n_lv: int, n_rv: int, seed: int = 0):
    """Well-separated PMJ positions on the LV/RV endocardium, ``(n_lv + n_rv, 3)`` mm.

    Farthest-point picks among the nodes labelled LV (1) / RV (2) endocardium (inside the
    subendocardial layer by construction), the first one random (``seed``).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    nodes = np.asarray(mesh.nodes, np.float64)
    surface = np.asarray(mesh.surface)
    out = []
    for label, n in ((1, n_lv), (2, n_rv)):
        if n == 0:
            continue
        cand = np.flatnonzero(surface == label)
        pick = [int(rng.choice(cand))]
        for _ in range(n - 1):
            gap = np.min(np.linalg.norm(nodes[cand, None] - nodes[pick][None], axis=-1), axis=1)
            pick.append(int(cand[np.argmax(gap)]))
        out.append(nodes[pick])
    return np.concatenate(out)


def synthetic_case(
    mesh,
    electrodes,
    n_lv: int,
    n_rv: int,
    seed: int = 0,
    noise_rel: float = 0.05,
    t_spread_ms: float = 12.0,
):
    """Simulate a truth: PMJs on the endocardium, full-eikonal activation, noisy ECG.

    Returns a dict with ``pmj_xyz`` (K, 3) mm, ``pmj_t`` (K,) ms, ``activation`` (n_nodes,) ms,
    ``times`` (n_times,) ms, ``leads`` (names), ``ecg_clean`` / ``ecg_obs`` (n_leads, n_times) mV
    and ``noise_sd`` mV (``noise_rel`` times the RMS of the 12-lead ECG, the same for every lead).
    All electrodes given become leads (12 standard leads first, then extra electrodes).
    """
    import numpy as np

    import cdt_bayes as cb

    xyz = endocardial_pmjs(mesh, n_lv, n_rv, seed=seed)
    t = np.linspace(0.0, t_spread_ms, len(xyz))
    act = np.asarray(
        cb.activation_times(cb.eikonal_geometry(mesh), xyz, t, cv_fiber=0.6, cv_cross=0.4),
        np.float64,
    )
    lead_field = cb.LeadField.from_mesh(mesh, electrodes)
    times = cb.ecg_time_grid(act)
    clean = np.asarray(cb.simulate_ecg(act, lead_field, times), np.float64)
    n12 = sum(
        name in ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
        for name in lead_field.names
    )
    noise_sd = noise_rel * float(np.sqrt(np.mean(clean[: max(n12, 1)] ** 2)))
    obs = clean + noise_sd * np.random.default_rng(seed).standard_normal(clean.shape)
    return dict(
        pmj_xyz=xyz,
        pmj_t=t,
        activation=act,
        times=times,
        leads=list(lead_field.names),
        ecg_clean=clean,
        ecg_obs=obs,
        noise_sd=noise_sd,
    )


# --------------------------------------------------------------------------------------
# Figures: cdt_bayes._plots when available, otherwise a plain matplotlib fallback
# --------------------------------------------------------------------------------------
def _plots():
    try:
        from cdt_bayes import _plots

        return _plots
    except ImportError:
        return None


def activation_figure(mesh, values, title=None, label="activation time (ms)", **kw):
    """Draw a per-node field on the heart surface (anterior and posterior views)."""
    import numpy as np

    p = _plots()
    if p is not None and hasattr(p, "plot_activation_views"):
        return p.plot_activation_views(
            np.asarray(mesh.nodes),
            np.asarray(mesh.tets),
            np.asarray(values),
            label=label,
            title=title,
            surface=None if mesh.surface is None else np.asarray(mesh.surface),
            **kw,
        )
    import matplotlib.pyplot as plt

    nodes = np.asarray(mesh.nodes)
    on = np.asarray(mesh.surface) > 0 if mesh.surface is not None else np.ones(len(nodes), bool)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, (name, sgn) in zip(axes, (("anterior", 1), ("posterior", -1))):
        order = np.argsort(sgn * nodes[on, 1])
        sc = ax.scatter(
            sgn * nodes[on, 0][order],
            nodes[on, 2][order],
            c=np.asarray(values)[on][order],
            s=6,
            cmap=kw.get("cmap", "turbo_r"),
            vmin=kw.get("vmin"),
            vmax=kw.get("vmax"),
        )
        ax.set_title(name)
        ax.set_aspect("equal")
        ax.set_axis_off()
    fig.colorbar(sc, ax=axes, label=label)
    if title:
        fig.suptitle(title)
    plt.close(fig)
    return fig


def ecg_figure(time_ms, leads, observed, mean=None, q05=None, q95=None, title=None, **kw):
    """ECG leads in the clinical 3 x 4 layout (observed black, model red, band shaded)."""
    import numpy as np

    p = _plots()
    if p is not None and hasattr(p, "plot_ecg_12lead"):
        return p.plot_ecg_12lead(time_ms, list(leads), observed, mean, q05, q95, title=title, **kw)
    import matplotlib.pyplot as plt

    leads = list(leads)
    ncol = 4
    nrow = -(-len(leads) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(11, 2.0 * nrow), sharex=True, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(leads):
            ax.set_axis_off()
            continue
        if q05 is not None:
            ax.fill_between(time_ms, q05[i], q95[i], color="tab:red", alpha=0.25, lw=0)
        ax.plot(time_ms, np.asarray(observed)[i], "k", lw=1)
        if mean is not None:
            ax.plot(time_ms, np.asarray(mean)[i], "tab:red", lw=1)
        ax.set_title(leads[i], fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (ms)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)
    return fig


def activation_grid(
    mesh,
    maps,
    titles,
    vmin=None,
    vmax=None,
    label="activation time (ms)",
    cmap="turbo_r",
    views=("anterior", "posterior"),
    suptitle=None,
    panel=2.3,
):
    """Several per-node maps side by side (columns), one row per view, one shared colour bar."""
    import matplotlib as mpl
    import matplotlib.pyplot as plt
    import numpy as np

    maps = [np.asarray(m, np.float64) for m in maps]
    finite = np.concatenate([m[np.isfinite(m)] for m in maps])
    vmin = float(finite.min()) if vmin is None else vmin
    vmax = float(finite.max()) if vmax is None else vmax
    nodes = np.asarray(mesh.nodes, np.float64)
    fig, axes = plt.subplots(
        len(views),
        len(maps),
        figsize=(panel * len(maps) + 0.8, panel * len(views) + 0.4),
        squeeze=False,
    )
    p = _plots()
    use = p is not None and hasattr(p, "draw_surface_map") and hasattr(p, "surface_triangles")
    faces = p.surface_triangles(nodes, np.asarray(mesh.tets)) if use else None
    for j, m in enumerate(maps):
        for i, view in enumerate(views):
            ax = axes[i, j]
            title = f"{titles[j]}\n({view})" if i == 0 else f"({view})"
            if use:
                p.draw_surface_map(
                    ax, nodes, faces, m, cmap=cmap, vmin=vmin, vmax=vmax, view=view, title=title
                )
            else:  # fallback: boundary nodes projected on the x-z plane
                on = np.asarray(mesh.surface) > 0
                sgn = 1.0 if view == "anterior" else -1.0
                order = np.argsort(sgn * nodes[on, 1])
                ax.scatter(
                    sgn * nodes[on, 0][order],
                    nodes[on, 2][order],
                    c=m[on][order],
                    s=3,
                    cmap=cmap,
                    vmin=vmin,
                    vmax=vmax,
                )
                ax.set_aspect("equal")
                ax.set_axis_off()
                ax.set_title(title, fontsize=9)
    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    fig.colorbar(sm, ax=axes, label=label, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    plt.close(fig)  # returned for display, not shown twice by the inline backend
    return fig
