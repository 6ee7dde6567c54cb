"""Matplotlib figures of a fit: activation maps, AHA bull's-eye, 12-lead ECG, modes, diagnostics.

Every ``plot_*`` function returns a :class:`matplotlib.figure.Figure` built without
``pyplot`` (no global state, no backend switch, nothing shown), so the same figures serve
the HTML/PDF report (:mod:`cdt_bayes._report`) and notebooks (a returned figure displays
inline). Importing this module does no work and does not import matplotlib.

Coordinates are the patient frame of the package (x = patient's left, y = anterior,
z = superior, mm): the *anterior* view looks at the heart from the front (patient's left
on the right of the picture, like a chest X-ray), the *posterior* view from the back.
Surfaces are drawn with an orthographic projection, back-face culling and a painter's
sort of the boundary triangles (a 2-D ``PolyCollection``: fast and light, no 3-D axes).

Units: mm, ms, mV. Colours: activation times use ``turbo_r`` (red = early, blue/purple =
late, as in clinical electro-anatomical maps); uncertainties use ``viridis``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LEAD_GRID",
    "AHA_NAMES",
    "surface_triangles",
    "aha_frame",
    "aha_segments",
    "segment_values",
    "draw_surface_map",
    "plot_activation_views",
    "plot_endocardial_views",
    "plot_bullseye",
    "plot_ecg_12lead",
    "plot_modes",
    "plot_uncertainty_histograms",
    "plot_traces",
    "fig_to_png",
]

#: Standard clinical 3 x 4 layout of the 12-lead ECG (rows of the printed page).
LEAD_GRID = (
    ("I", "aVR", "V1", "V4"),
    ("II", "aVL", "V2", "V5"),
    ("III", "aVF", "V3", "V6"),
)

#: Names of the 17 AHA segments (index = segment number - 1).
AHA_NAMES = (
    "basal anterior",
    "basal anteroseptal",
    "basal inferoseptal",
    "basal inferior",
    "basal inferolateral",
    "basal anterolateral",
    "mid anterior",
    "mid anteroseptal",
    "mid inferoseptal",
    "mid inferior",
    "mid inferolateral",
    "mid anterolateral",
    "apical anterior",
    "apical septal",
    "apical inferior",
    "apical lateral",
    "apex",
)

_LV_ENDO, _RV_ENDO, _EPI, _BASE = 1, 2, 3, 4
_VIEWS = {
    "anterior": (0.0, 1.0, 0.0),
    "posterior": (0.0, -1.0, 0.0),
    "left": (1.0, 0.0, 0.0),
    "right": (-1.0, 0.0, 0.0),
    "inferior": (0.0, 0.0, -1.0),
}
_NAN_GREY = (0.78, 0.78, 0.78, 1.0)


def _unit(v):
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


def _figure(figsize, dpi=100):
    """Return a pyplot-free Figure (Agg canvas attached for rendering)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def fig_to_png(fig, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes (Agg), without touching pyplot state."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Surface geometry
# --------------------------------------------------------------------------------------


def surface_triangles(nodes: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Boundary triangles of a tet mesh, oriented with outward normals.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
        Any vertex order (orientation is fixed per face from the opposite vertex).

    Returns
    -------
    (n_faces, 3) int64
        Triangles used by exactly one tet; their right-hand normal points out of the mesh.
    """
    nodes = np.asarray(nodes, np.float64)
    tets = np.asarray(tets, np.int64)
    local = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])
    faces = tets[:, local].reshape(-1, 3)
    opposite = tets.reshape(-1)  # face 4 e + a is opposite vertex a of tet e
    s = np.sort(faces, axis=1)
    n = int(max(nodes.shape[0], tets.max() + 1 if tets.size else 1))
    if n < 2**20:  # one int64 key per face
        key = (s[:, 0] * n + s[:, 1]) * n + s[:, 2]
        _, inv, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:
        _, inv, counts = np.unique(s, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    keep = counts[inv] == 1
    f = faces[keep]
    opp = opposite[keep]
    x = nodes[f]
    n = np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
    flip = np.einsum("ij,ij->i", n, nodes[opp] - x[:, 0]) > 0
    f[flip] = f[flip][:, [0, 2, 1]]
    return f


def _view_basis(view, elev_deg: float = 10.0, up=None):
    """Return unit vectors (right, up, towards viewer) of an orthographic camera."""
    d = np.asarray(_VIEWS[view] if isinstance(view, str) else view, np.float64)
    d = d / np.linalg.norm(d)
    up_world = np.array([0.0, 0.0, 1.0]) if up is None else _unit(np.asarray(up, np.float64))
    up_world = _unit(up_world - (up_world @ d) * d) if abs(up_world @ d) < 0.99 else up_world
    if abs(d @ up_world) > 0.99:
        up_world = np.array([0.0, 1.0, 0.0])
    right = np.cross(d, up_world)
    right /= np.linalg.norm(right)
    if elev_deg:
        e = math.radians(elev_deg)
        d = math.cos(e) * d + math.sin(e) * up_world
        d /= np.linalg.norm(d)
    up = np.cross(right, d)
    return right, up, d


def draw_surface_map(
    ax,
    nodes: np.ndarray,
    faces: np.ndarray,
    values: np.ndarray,
    *,
    cmap="turbo_r",
    vmin: float | None = None,
    vmax: float | None = None,
    view="anterior",
    elev_deg: float = 10.0,
    shade: float = 0.35,
    labels: dict | None = None,
    title: str | None = None,
    up=None,
):
    """Draw one view of a per-node field on the boundary surface into ``ax``.

    Parameters
    ----------
    ax : matplotlib Axes (2-D)
    nodes : (n_nodes, 3) float, mm (patient frame)
    faces : (n_faces, 3) int
        Outward-oriented boundary triangles (:func:`surface_triangles`).
    values : (n_nodes,) float
        Field per node (e.g. ms); a face is coloured by the mean of its 3 nodes; NaN is grey.
    cmap, vmin, vmax
        Colour map and limits (shared between views for a consistent scale).
    view : {"anterior", "posterior", "left", "right", "inferior"} or (3,) vector
        Direction from the heart towards the viewer.
    elev_deg : float
        Camera elevation above the horizontal, degrees.
    shade : float
        Strength of Lambert shading in [0, 1) (0: flat colours).
    labels : dict, optional
        ``{text: (3,) xyz}`` annotations (e.g. ``{"LV": ..., "RV": ...}``).
    title : str, optional
    up : (3,) float, optional
        World direction drawn upwards (default: superior, ``+z``).

    Returns
    -------
    matplotlib.cm.ScalarMappable
        For a colour bar.
    """
    import matplotlib as mpl
    from matplotlib import patheffects
    from matplotlib.collections import PolyCollection

    nodes = np.asarray(nodes, np.float64)
    values = np.asarray(values, np.float64)
    right, up, d = _view_basis(view, elev_deg, up)
    x = nodes[faces]  # (f, 3, 3)
    n = np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
    nn = np.linalg.norm(n, axis=1)
    n = n / np.where(nn > 0, nn, 1.0)[:, None]
    facing = n @ d
    vis = facing > 0
    xv = x[vis]
    depth = xv.mean(1) @ d
    order = np.argsort(depth)  # far first (painter's algorithm)
    xv = xv[order]
    uv = np.stack([xv @ right, xv @ up], axis=-1)  # (f, 3, 2)
    fv = values[faces[vis][order]].mean(1)
    cm = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    finite = values[np.isfinite(values)]
    lo = (
        float(np.min(finite))
        if vmin is None and finite.size
        else (vmin if vmin is not None else 0.0)
    )
    hi = (
        float(np.max(finite))
        if vmax is None and finite.size
        else (vmax if vmax is not None else 1.0)
    )
    if not hi > lo:
        hi = lo + 1.0
    norm = mpl.colors.Normalize(lo, hi)
    rgba = cm(norm(np.where(np.isfinite(fv), fv, lo)))
    rgba[~np.isfinite(fv)] = _NAN_GREY
    light = (1.0 - shade) + shade * facing[vis][order]
    rgba[:, :3] *= light[:, None]
    pc = PolyCollection(uv, facecolors=rgba, edgecolors=rgba, linewidths=0.3, antialiaseds=False)
    ax.add_collection(pc)
    used = nodes[np.unique(faces)] if len(faces) else nodes
    all_uv = np.stack([used @ right, used @ up], axis=-1)
    pad = 0.03 * np.ptp(all_uv, axis=0).max()
    ax.set_xlim(all_uv[:, 0].min() - pad, all_uv[:, 0].max() + pad)
    ax.set_ylim(all_uv[:, 1].min() - pad, all_uv[:, 1].max() + pad)
    ax.set_aspect("equal")
    ax.set_axis_off()
    for text, xyz in (labels or {}).items():
        p = np.asarray(xyz, np.float64)
        ax.text(
            p @ right,
            p @ up,
            text,
            ha="center",
            va="center",
            fontsize=9,
            weight="bold",
            color="black",
            path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
        )
    if title:
        ax.set_title(title, fontsize=10)
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
    sm.set_array([])
    return sm


def _chamber_labels(nodes, surface):
    """``{"LV": xyz, "RV": xyz}`` centroids of the endocardia (for annotations)."""
    if surface is None:
        return {}
    out = {}
    for name, lab in (("LV", _LV_ENDO), ("RV", _RV_ENDO)):
        sel = surface == lab
        if sel.any():
            out[name] = nodes[sel].mean(0)
    return out


def plot_activation_views(
    nodes: np.ndarray,
    tets: np.ndarray,
    values: np.ndarray,
    *,
    label: str = "activation time (ms)",
    title: str | None = None,
    cmap="turbo_r",
    vmin: float | None = None,
    vmax: float | None = None,
    views=("anterior", "posterior"),
    surface: np.ndarray | None = None,
    faces: np.ndarray | None = None,
    elev_deg: float = 10.0,
    panel_size: float = 3.4,
):
    """Draw a per-node field on the ventricles seen from several sides, with one colour bar.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm (patient frame: x left, y anterior, z superior)
    tets : (n_tets, 4) int
    values : (n_nodes,) float
        The field (e.g. posterior mean activation time, ms).
    label : str
        Colour-bar label, with its unit.
    title : str, optional
    cmap, vmin, vmax
        Colour map and limits; give the same limits to figures that should be compared.
    views : sequence of str
        Views to draw, left to right (see :func:`draw_surface_map`).
    surface : (n_nodes,) int, optional
        Surface labels; when given, "LV"/"RV" are written at the endocardial centroids.
    faces : (n_faces, 3) int, optional
        Precomputed :func:`surface_triangles` (saves time when plotting several fields).
    elev_deg, panel_size
        Camera elevation (degrees) and panel width (inches).

    Returns
    -------
    matplotlib.figure.Figure
    """
    nodes = np.asarray(nodes, np.float64)
    if faces is None:
        faces = surface_triangles(nodes, tets)
    nv = len(views)
    height = panel_size * 0.9 + 0.3 + (0.35 if title else 0.0)
    fig = _figure((panel_size * nv + 0.9, height))
    gs = fig.add_gridspec(1, nv + 1, width_ratios=[1.0] * nv + [0.06], wspace=0.05)
    labels = _chamber_labels(nodes, surface)
    sm = None
    for i, v in enumerate(views):
        ax = fig.add_subplot(gs[0, i])
        sm = draw_surface_map(
            ax,
            nodes,
            faces,
            values,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            view=v,
            elev_deg=elev_deg,
            labels=labels,
            title=f"{v} view",
        )
    cax = fig.add_subplot(gs[0, nv])
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label(label, fontsize=9)
    cb.ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(
        left=0.01, right=0.93, top=1 - (0.6 if title else 0.3) / height, bottom=0.03
    )
    return fig


def plot_endocardial_views(
    nodes: np.ndarray,
    tets: np.ndarray,
    values: np.ndarray,
    surface: np.ndarray,
    *,
    frame: dict | None = None,
    label: str = "activation time (ms)",
    title: str | None = None,
    cmap="turbo_r",
    vmin: float | None = None,
    vmax: float | None = None,
    faces: np.ndarray | None = None,
    panel_size: float = 2.6,
):
    """Draw a per-node field on the endocardial surfaces, seen from inside the cavities.

    Four panels, base at the top: the LV septum and the LV free wall seen from inside
    the LV, the RV septal surface and the RV free wall seen from inside the RV (only the
    endocardial triangles are drawn, so the opposite walls do not hide them). Early
    activation in this model starts on these surfaces (Purkinje-muscle junctions lie in
    the subendocardial layer), so this is where early sites show.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
    values : (n_nodes,) float
    surface : (n_nodes,) int
        Labels 1 LV endo and 2 RV endo are used.
    frame : dict, optional
        :func:`aha_frame` (long axis and septal direction); computed when omitted.
    label, title, cmap, vmin, vmax, faces, panel_size
        As in :func:`plot_activation_views`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    nodes = np.asarray(nodes, np.float64)
    surface = np.asarray(surface).astype(np.int64).reshape(-1)
    if faces is None:
        faces = surface_triangles(nodes, tets)
    if frame is None:
        frame = aha_frame(nodes, surface, tets)
    axis, e1 = frame["axis"], frame["septal"]
    lab = surface[faces]
    panels = []
    for name, code, d in (
        ("LV septum\n(from inside the LV)", _LV_ENDO, -e1),
        ("LV free wall\n(from inside the LV)", _LV_ENDO, e1),
        ("RV septal surface\n(from inside the RV)", _RV_ENDO, e1),
        ("RV free wall\n(from inside the RV)", _RV_ENDO, -e1),
    ):
        sel = np.all(lab == code, axis=1)
        if sel.any():
            panels.append((name, faces[sel], d))
    nv = max(1, len(panels))
    height = panel_size * 1.1 + 0.45 + (0.35 if title else 0.0)
    fig = _figure((panel_size * nv + 0.9, height))
    gs = fig.add_gridspec(1, nv + 1, width_ratios=[1.0] * nv + [0.06], wspace=0.08)
    sm = None
    for i, (name, f, d) in enumerate(panels):
        ax = fig.add_subplot(gs[0, i])
        sm = draw_surface_map(
            ax,
            nodes,
            f,
            values,
            cmap=cmap,
            vmin=vmin,
            vmax=vmax,
            view=d,
            elev_deg=0.0,
            up=-axis,
            title=name,
            shade=0.25,
        )
        ax.title.set_fontsize(9)
    if sm is not None:
        cb = fig.colorbar(sm, cax=fig.add_subplot(gs[0, nv]))
        cb.set_label(label, fontsize=9)
        cb.ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(
        left=0.01, right=0.92, top=1 - (0.8 if title else 0.45) / height, bottom=0.03
    )
    return fig


# --------------------------------------------------------------------------------------
# AHA 17 segments
# --------------------------------------------------------------------------------------


def aha_frame(
    nodes: np.ndarray,
    surface: np.ndarray,
    tets: np.ndarray | None = None,
    anterior=(0.0, 1.0, 0.0),
) -> dict:
    """Compute a simple LV long-axis frame and the LV node set (an approximation, see Notes).

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    surface : (n_nodes,) int
        Labels 0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base.
    tets : (n_tets, 4) int, optional
        When given, distances to the endocardia are measured along mesh edges (through the
        myocardium); otherwise straight-line distances are used.
    anterior : (3,) float
        Anterior direction of the patient frame; fixes the handedness of the angle.

    Returns
    -------
    dict with ``lv`` (n_nodes,) bool, ``height`` (n_nodes,) fraction of the base-to-apex
    distance (0 base plane, 1 apex), ``angle_deg`` (n_nodes,) bull's-eye angle (90 anterior,
    180 septal, 270 inferior, 0 lateral), ``cap`` (height where the apical cap begins),
    ``apex`` (3,), ``base`` (3,), ``axis`` (3,), ``septal`` (3,), ``dist_lv``, ``dist_rv``
    (n_nodes,) mm, ``wall_mm`` typical LV wall thickness.

    Notes
    -----
    * LV nodes: LV endocardium, and every other non-RV-endocardial node closer to the LV
      endocardium than to the RV endocardium. The septum is therefore split at its
      mid-wall (its RV half is not in the LV segments).
    * Long axis: from the centroid of the LV base nodes (label 4) to the LV apex, the LV
      endocardial/epicardial node farthest from the least-squares base plane.
    * Height: basal / mid / apical thirds of the distance from the base to the tip of the
      LV cavity (the farthest LV endocardial node); beyond it is the apical cap (17).
    * Angle: 180 deg (septal) is the direction of the RV endocardial centroid; the anterior
      side is the one facing ``anterior``.
    """
    from scipy.spatial import cKDTree

    nodes = np.asarray(nodes, np.float64)
    surface = np.asarray(surface).astype(np.int64).reshape(-1)
    n = nodes.shape[0]
    lv_e, rv_e, base = (np.flatnonzero(surface == k) for k in (_LV_ENDO, _RV_ENDO, _BASE))
    if lv_e.size < 3 or base.size < 3:
        raise ValueError("surface labels: need LV endocardium (1) and base (4) nodes")
    if tets is not None:
        d_lv, d_rv = _graph_distance(nodes, tets, lv_e), _graph_distance(nodes, tets, rv_e)
    else:
        d_lv = cKDTree(nodes[lv_e]).query(nodes)[0]
        d_rv = cKDTree(nodes[rv_e]).query(nodes)[0] if rv_e.size else np.full(n, np.inf)
    lv = ((d_lv < d_rv) | (surface == _LV_ENDO)) & (surface != _RV_ENDO)
    # base plane and its normal, towards the apex
    bx = nodes[base]
    c_all = bx.mean(0)
    _, _, vt = np.linalg.svd(bx - c_all, full_matrices=False)
    normal = vt[-1]
    if (nodes.mean(0) - c_all) @ normal < 0:
        normal = -normal
    lv_base = base[lv[base]]
    c_base = nodes[lv_base].mean(0) if lv_base.size >= 3 else c_all
    cand = np.flatnonzero(lv & np.isin(surface, (_LV_ENDO, _EPI)))
    if cand.size == 0:
        cand = np.flatnonzero(lv)
    apex = nodes[cand[np.argmax((nodes[cand] - c_all) @ normal)]]
    axis = apex - c_base
    length = float(np.linalg.norm(axis))
    axis = _unit(axis)
    rel = nodes - c_base
    h = rel @ axis / length
    radial = rel - np.outer(rel @ axis, axis)
    if rv_e.size:
        rc = nodes[rv_e].mean(0) - c_base
        e1 = _unit(rc - (rc @ axis) * axis)
    else:  # no RV: use the anterior direction as the septal reference (documented fallback)
        a = np.asarray(anterior, np.float64)
        e1 = _unit(a - (a @ axis) * axis)
    e2 = np.cross(axis, e1)
    if e2 @ np.asarray(anterior, np.float64) < 0:
        e2 = -e2
    phi = np.degrees(np.arctan2(radial @ e2, radial @ e1))  # 0 septal, +90 anterior
    angle = np.mod(180.0 - phi, 360.0)
    tip = float(h[lv_e].max())
    cap = float(np.clip(tip, 0.75, 0.95))
    epi_lv = lv & (surface == _EPI)
    wall = float(np.median(d_lv[epi_lv])) if epi_lv.any() else float(np.median(d_lv[lv]))
    return {
        "lv": lv,
        "height": h,
        "angle_deg": angle,
        "cap": cap,
        "apex": apex,
        "base": c_base,
        "axis": axis,
        "septal": e1,
        "dist_lv": d_lv,
        "dist_rv": d_rv,
        "wall_mm": wall,
    }


def _graph_distance(nodes, tets, sources) -> np.ndarray:
    """Shortest edge-path distance (mm) from any of ``sources`` to every node."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import dijkstra

    n = nodes.shape[0]
    if np.size(sources) == 0:
        return np.full(n, np.inf)
    t = np.asarray(tets, np.int64)
    pairs = np.concatenate([t[:, [i, j]] for i in range(4) for j in range(i + 1, 4)])
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    w = np.linalg.norm(nodes[pairs[:, 0]] - nodes[pairs[:, 1]], axis=1)
    # a virtual source node n joined to every source by a zero-length (tiny) edge
    src = np.asarray(sources, np.int64)
    rows = np.concatenate([pairs[:, 0], np.full(src.size, n)])
    cols = np.concatenate([pairs[:, 1], src])
    ww = np.concatenate([w, np.full(src.size, 1e-9)])
    g = sp.coo_matrix((ww, (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    return dijkstra(g, directed=False, indices=n)[:n]


def aha_segments(
    nodes: np.ndarray,
    surface: np.ndarray,
    tets: np.ndarray | None = None,
    anterior=(0.0, 1.0, 0.0),
    frame: dict | None = None,
) -> np.ndarray:
    """AHA 17-segment id of every node (0..16 = segment 1..17), -1 outside the LV.

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    surface : (n_nodes,) int
        Labels 0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base.
    tets : (n_tets, 4) int, optional
        See :func:`aha_frame`.
    anterior : (3,) float
        Anterior direction (patient frame default ``+y``).
    frame : dict, optional
        A precomputed :func:`aha_frame`.

    Returns
    -------
    (n_nodes,) int64
        Basal 0-5 (1 anterior, 2 anteroseptal, 3 inferoseptal, 4 inferior,
        5 inferolateral, 6 anterolateral: 60 deg each), mid 6-11 (same), apical 12-15
        (13 anterior, 14 septal, 15 inferior, 16 lateral: 90 deg each), apex 16.

    Notes
    -----
    The approximations are those of :func:`aha_frame`.
    """
    f = frame if frame is not None else aha_frame(nodes, surface, tets, anterior)
    h, ang, cap = f["height"], f["angle_deg"], f["cap"]
    seg = np.full(h.shape, -1, np.int64)
    six = (np.floor(np.mod(ang - 60.0, 360.0) / 60.0).astype(np.int64)) % 6  # 0 = anterior
    four = (np.floor(np.mod(ang - 45.0, 360.0) / 90.0).astype(np.int64)) % 4
    level = np.where(h < cap / 3, 0, np.where(h < 2 * cap / 3, 1, np.where(h < cap, 2, 3)))
    lv = f["lv"]
    seg[lv & (level == 0)] = six[lv & (level == 0)]
    seg[lv & (level == 1)] = 6 + six[lv & (level == 1)]
    seg[lv & (level == 2)] = 12 + four[lv & (level == 2)]
    seg[lv & (level == 3)] = 16
    return seg


def segment_values(values: np.ndarray, seg: np.ndarray, reduce=np.mean) -> np.ndarray:
    """Summarise (default: mean) a per-node field over each AHA segment: ``(17,)``, NaN if empty."""
    values = np.asarray(values, np.float64)
    out = np.full(17, np.nan)
    for k in range(17):  # 17 segments
        v = values[(seg == k) & np.isfinite(values)]
        if v.size:
            out[k] = float(reduce(v))
    return out


def plot_bullseye(
    values17,
    title: str = "",
    unit: str = "ms",
    *,
    cmap="turbo_r",
    vmin: float | None = None,
    vmax: float | None = None,
    fmt: str = "{:.0f}",
    ax=None,
    colorbar: bool = True,
):
    """AHA 17-segment bull's-eye plot (as seen from the apex).

    Anterior at the top, septum on the left, inferior at the bottom, lateral on the right;
    rings from the outside in: basal (1-6), mid (7-12), apical (13-16), apex (17). Each
    segment shows its value; NaN segments are grey.

    Parameters
    ----------
    values17 : (17,) float
    title : str
    unit : str
        Unit written on the colour bar.
    cmap, vmin, vmax
        Colour map and limits.
    fmt : str
        Format of the values written in the segments.
    ax : matplotlib Axes, optional
        Draw into this axes (no colour bar is added to the figure when ``colorbar`` is False).
    colorbar : bool

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib as mpl
    from matplotlib import patheffects
    from matplotlib.patches import Wedge

    v = np.asarray(values17, np.float64).reshape(17)
    if ax is None:
        fig = _figure((4.4, 3.6))
        ax = fig.add_axes((0.02, 0.03, 0.76, 0.87))
    else:
        fig = ax.figure
    cm = mpl.colormaps[cmap] if isinstance(cmap, str) else cmap
    fin = v[np.isfinite(v)]
    lo = vmin if vmin is not None else (float(fin.min()) if fin.size else 0.0)
    hi = vmax if vmax is not None else (float(fin.max()) if fin.size else 1.0)
    if not hi > lo:
        hi = lo + 1.0
    norm = mpl.colors.Normalize(lo, hi)

    def colour(x):
        return _NAN_GREY if not np.isfinite(x) else cm(norm(x))

    def put(r, th, k):
        txt = "–" if not np.isfinite(v[k]) else fmt.format(v[k])
        ax.text(
            r * math.cos(math.radians(th)),
            r * math.sin(math.radians(th)),
            txt,
            ha="center",
            va="center",
            fontsize=8,
            path_effects=[patheffects.withStroke(linewidth=2.2, foreground="white")],
        )

    rings = ((0.75, 1.0, 0), (0.5, 0.75, 6))
    for r0, r1, off in rings:
        for i in range(6):
            th1 = 60.0 + 60.0 * i
            ax.add_patch(
                Wedge(
                    (0, 0),
                    r1,
                    th1,
                    th1 + 60.0,
                    width=r1 - r0,
                    facecolor=colour(v[off + i]),
                    edgecolor="white",
                    lw=1.2,
                )
            )
            put((r0 + r1) / 2, th1 + 30.0, off + i)
    for i in range(4):
        th1 = 45.0 + 90.0 * i
        ax.add_patch(
            Wedge(
                (0, 0),
                0.5,
                th1,
                th1 + 90.0,
                width=0.25,
                facecolor=colour(v[12 + i]),
                edgecolor="white",
                lw=1.2,
            )
        )
        put(0.375, th1 + 45.0, 12 + i)
    ax.add_patch(Wedge((0, 0), 0.25, 0, 360, facecolor=colour(v[16]), edgecolor="white", lw=1.2))
    put(0.0, 0.0, 16)
    for txt, (x, y, ha, va) in {
        "anterior": (0, 1.04, "center", "bottom"),
        "inferior": (0, -1.04, "center", "top"),
        "septal": (-1.04, 0, "right", "center"),
        "lateral": (1.04, 0, "left", "center"),
    }.items():
        ax.text(x, y, txt, ha=ha, va=va, fontsize=7.5, color="0.3")
    ax.set_xlim(-1.38, 1.38)
    ax.set_ylim(-1.22, 1.22)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cm)
        sm.set_array([])
        cax = ax.inset_axes((1.02, 0.1, 0.045, 0.8))
        cb = fig.colorbar(sm, cax=cax)
        cb.set_label(unit, fontsize=9)
        cb.ax.tick_params(labelsize=8)
    return fig


# --------------------------------------------------------------------------------------
# ECG
# --------------------------------------------------------------------------------------


def _lead_layout(leads) -> list[list[str | None]]:
    """Rows of 4 lead names: the standard 3 x 4 grid for the 12 leads, then extra leads."""
    leads = list(leads)
    rows: list[list[str | None]] = []
    std = {n for row in LEAD_GRID for n in row}
    if any(ld in std for ld in leads):
        rows = [[n if n in leads else None for n in row] for row in LEAD_GRID]
    extra = [ld for ld in leads if ld not in std]
    for i in range(0, len(extra), 4):
        chunk = extra[i : i + 4]
        rows.append(chunk + [None] * (4 - len(chunk)))
    return rows


def plot_ecg_12lead(
    time_ms: np.ndarray,
    leads,
    observed: np.ndarray,
    mean: np.ndarray | None = None,
    q05: np.ndarray | None = None,
    q95: np.ndarray | None = None,
    *,
    r: dict | None = None,
    title: str | None = None,
    band_label: str = "90% posterior-predictive band",
    mean_label: str = "model (posterior mean)",
    scale: str = "groups",
):
    """Plot the ECG in the standard clinical 3 x 4 layout: observed vs model with its band.

    Rows: I, aVR, V1, V4 / II, aVL, V2, V5 / III, aVF, V3, V6 (only leads present are
    drawn; further non-standard leads follow in extra rows). By default the limb leads
    share one mV scale and the chest leads another (see ``scale``).

    Parameters
    ----------
    time_ms : (n_times,) float, ms
    leads : sequence of str, length n_leads
    observed : (n_leads, n_times) float, mV (black)
    mean, q05, q95 : (n_leads, n_times) float, mV, optional
        Model mean (red) and 90% band (shaded).
    r : dict, optional
        Per-lead correlation written in each panel (computed from ``observed`` and
        ``mean`` when omitted).
    title : str, optional
    band_label, mean_label : str
        Legend entries.
    scale : {"groups", "all", "lead"}
        Shared mV axis: one for the limb leads and one for the chest (and extra) leads
        (default), one for all leads (ECG paper), or one per lead.

    Returns
    -------
    matplotlib.figure.Figure
    """
    t = np.asarray(time_ms, np.float64)
    obs = np.asarray(observed, np.float64)
    leads = [str(x) for x in leads]
    idx = {ld: i for i, ld in enumerate(leads)}
    rows = _lead_layout(leads)
    if r is None and mean is not None:
        r = {}
        for ld, i in idx.items():
            a, b = obs[i], np.asarray(mean[i], np.float64)
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() > 2 and a[ok].std() > 0 and b[ok].std() > 0:
                r[ld] = float(np.corrcoef(a[ok], b[ok])[0, 1])
    stack = [obs] + [np.asarray(a, np.float64) for a in (mean, q05, q95) if a is not None]
    limb = {"I", "II", "III", "aVR", "aVL", "aVF"}

    def group(ld):
        return (
            "all"
            if scale == "all"
            else ld
            if scale == "lead"
            else ("limb" if ld in limb else "chest")
        )

    ylim = {}
    for g in {group(ld) for ld in leads}:
        rows_g = [idx[ld] for ld in leads if group(ld) == g]
        v = np.concatenate([a[rows_g][np.isfinite(a[rows_g])] for a in stack])
        lo, hi = (float(v.min()), float(v.max())) if v.size else (-1.0, 1.0)
        pad = 0.08 * (hi - lo if hi > lo else 1.0)
        ylim[g] = (lo - pad, hi + pad)
    nr = len(rows)
    std_rows = (
        3 if any(ld in limb or ld in {n for r_ in LEAD_GRID for n in r_} for ld in leads) else 0
    )
    fig = _figure((11.0, 1.95 * nr + 0.75))
    split = scale == "groups" and std_rows > 0  # a gap between limb and chest columns
    gs = fig.add_gridspec(
        nr,
        5,
        hspace=0.12,
        wspace=0.06,
        width_ratios=[1, 1, 0.16 if split or scale == "lead" else 0.001, 1, 1],
    )
    gcol = (0, 1, 3, 4)
    axes = []
    for ri, row in enumerate(rows):
        for ci, ld in enumerate(row):
            ax = fig.add_subplot(gs[ri, gcol[ci]])
            axes.append(ax)
            ax.set_xlim(t[0], t[-1])
            if ld is not None:
                g = group(ld)
            else:
                g = group(LEAD_GRID[ri][ci]) if ri < std_rows else group(leads[-1])
            ax.set_ylim(*ylim.get(g, next(iter(ylim.values()))))
            ax.grid(True, color="#f3c1c1", lw=0.5)
            ax.tick_params(labelsize=7, length=2)
            first_of_group = (
                ci == 0 or scale == "lead" or (scale == "groups" and ri < std_rows and ci == 2)
            )
            if not first_of_group:
                ax.tick_params(labelleft=False)
            else:
                ax.set_ylabel("mV", fontsize=8, labelpad=1)
            if ri < nr - 1:
                ax.tick_params(labelbottom=False)
            else:
                ax.set_xlabel("time (ms)", fontsize=8)
            if ld is None:
                ax.text(
                    0.5,
                    0.5,
                    "(lead not used)",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="0.6",
                )
                continue
            i = idx[ld]
            if q05 is not None and q95 is not None:
                ax.fill_between(
                    t, q05[i], q95[i], color="tab:red", alpha=0.22, lw=0, label=band_label
                )
            ax.plot(t, obs[i], color="black", lw=1.1, label="observed")
            if mean is not None:
                ax.plot(t, mean[i], color="tab:red", lw=1.0, label=mean_label)
            ax.text(
                0.03,
                0.95,
                ld,
                transform=ax.transAxes,
                ha="left",
                va="top",
                fontsize=10,
                weight="bold",
            )
            if r is not None and ld in r and np.isfinite(r[ld]):
                ax.text(
                    0.97,
                    0.95,
                    f"r = {r[ld]:.2f}",
                    transform=ax.transAxes,
                    ha="right",
                    va="top",
                    fontsize=8,
                    color="0.25",
                )
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        if h:
            handles, labels = h, lab
            break
    if handles:
        fig.legend(
            handles,
            labels,
            loc="upper center",
            ncol=3,
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, 0.995),
        )
    if title:
        fig.suptitle(title, fontsize=11, y=0.995, x=0.01, ha="left")
    fig.subplots_adjust(
        left=0.06,
        right=0.99,
        top=1.0 - 0.5 / fig.get_figheight(),
        bottom=0.45 / fig.get_figheight(),
    )
    return fig


# --------------------------------------------------------------------------------------
# Modes, uncertainty, chains
# --------------------------------------------------------------------------------------


def plot_modes(
    nodes: np.ndarray,
    tets: np.ndarray,
    weights: np.ndarray,
    mean_maps: np.ndarray,
    time_ms: np.ndarray,
    leads,
    observed: np.ndarray,
    ecg: np.ndarray,
    *,
    top: int = 4,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap="turbo_r",
    surface: np.ndarray | None = None,
    faces: np.ndarray | None = None,
):
    """Plot the distinct activation patterns: probability, mean map and ECG, one row per mode.

    Each row shows the mode's mean activation map (anterior and posterior views, shared
    colour scale) and its ECG (leads side by side, red) over the observed ECG (black).

    Parameters
    ----------
    nodes : (n_nodes, 3) float, mm
    tets : (n_tets, 4) int
    weights : (n_modes,) float
        Posterior probability of each mode (largest first).
    mean_maps : (n_modes, n_nodes) float, ms
    time_ms : (n_times,) float, ms
    leads : sequence of str (n_leads)
    observed : (n_leads, n_times) float, mV
    ecg : (n_modes, n_leads, n_times) float, mV
        A representative model ECG of each mode.
    top : int
        Number of modes drawn.
    vmin, vmax, cmap
        Activation colour scale (share it with the mean map).
    surface, faces
        See :func:`plot_activation_views`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib as mpl

    nodes = np.asarray(nodes, np.float64)
    w = np.asarray(weights, np.float64).reshape(-1)
    maps = np.asarray(mean_maps, np.float64)
    ecg = np.asarray(ecg, np.float64)
    obs = np.asarray(observed, np.float64)
    t = np.asarray(time_ms, np.float64)
    leads = [str(x) for x in leads]
    k = int(min(top, w.size, maps.shape[0], ecg.shape[0]))
    if faces is None:
        faces = surface_triangles(nodes, tets)
    if vmin is None:
        vmin = float(np.nanmin(maps[:k]))
    if vmax is None:
        vmax = float(np.nanmax(maps[:k]))
    labels = _chamber_labels(nodes, surface)
    fig = _figure((11.0, 2.3 * k + 0.9))
    gs = fig.add_gridspec(
        k + 1,
        4,
        width_ratios=[1.0, 1.0, 0.12, 4.2],
        height_ratios=[1.0] * k + [0.07],
        wspace=0.05,
        hspace=0.32,
    )
    n_l, n_t = obs.shape
    gap = max(3, n_t // 8)
    span = n_t + gap
    sm = None
    for m in range(k):
        for j, v in enumerate(("anterior", "posterior")):
            ax = fig.add_subplot(gs[m, j])
            sm = draw_surface_map(
                ax, nodes, faces, maps[m], cmap=cmap, vmin=vmin, vmax=vmax, view=v, labels=labels
            )
            if m == 0:
                ax.set_title(f"{v} view", fontsize=9)
        ax = fig.add_subplot(gs[m, 3])
        x = np.arange(n_t)
        good = []
        for li in range(n_l):
            xs = x + li * span
            ax.plot(xs, obs[li], color="black", lw=0.9, label="observed" if li == 0 else None)
            ax.plot(
                xs,
                ecg[m, li],
                color="tab:red",
                lw=0.9,
                label="this pattern's model ECG" if li == 0 else None,
            )
            a, b = obs[li], ecg[m, li]
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.sum() > 2 and a[ok].std() > 0 and b[ok].std() > 0:
                good.append(np.corrcoef(a[ok], b[ok])[0, 1])
        for li in range(1, n_l):
            ax.axvline(li * span - gap / 2, color="0.85", lw=0.6)
        ax.set_xlim(-gap / 2, n_l * span - gap / 2)
        ax.set_xticks(np.arange(n_l) * span + n_t / 2, leads[:n_l])
        ax.tick_params(axis="x", length=0, labelsize=7.5, pad=2)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("mV", fontsize=8, labelpad=1)
        for s_ in ("top", "right"):
            ax.spines[s_].set_visible(False)
        rtxt = f", mean r = {np.mean(good):.2f} over leads" if good else ""
        ax.set_title(f"pattern {m + 1}: probability {w[m]:.0%}{rtxt}", fontsize=9.5, loc="left")
        if m == 0:
            ax.legend(
                loc="lower right",
                fontsize=7.5,
                frameon=False,
                ncol=2,
                bbox_to_anchor=(1.0, 1.0),
                borderaxespad=0.1,
            )
        if m == k - 1:
            ax.set_xlabel(f"leads side by side, {t[-1] - t[0]:.0f} ms each", fontsize=8)
    cax = fig.add_subplot(gs[k, 0:2])
    if sm is None:
        sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
    cb.set_label("activation time (ms)", fontsize=8, labelpad=1)
    cb.ax.tick_params(labelsize=7)
    fig.subplots_adjust(
        left=0.01, right=0.99, top=1 - 0.4 / fig.get_figheight(), bottom=0.42 / fig.get_figheight()
    )
    return fig


def plot_uncertainty_histograms(sd_ms: np.ndarray, shrinkage: np.ndarray | None = None):
    """Histograms of the per-node posterior sd (ms) and of the shrinkage.

    Parameters
    ----------
    sd_ms : (n_nodes,) float
        Posterior sd of the activation time per node, ms.
    shrinkage : (n_nodes,) float, optional
        ``1 - posterior variance / prior variance`` per node (1: fully determined by the
        data, 0: nothing learnt; negative values are clipped to -1 for display).

    Returns
    -------
    matplotlib.figure.Figure
    """
    sd = np.asarray(sd_ms, np.float64)
    sd = sd[np.isfinite(sd)]
    has_s = shrinkage is not None and np.isfinite(np.asarray(shrinkage, float)).any()
    fig = _figure((9.0 if has_s else 4.6, 2.7))
    axs = [fig.add_subplot(1, 2 if has_s else 1, 1)]
    if has_s:
        axs.append(fig.add_subplot(1, 2, 2))
    ax = axs[0]
    if sd.size:
        ax.hist(sd, bins=40, color="tab:blue", alpha=0.8)
        med = float(np.median(sd))
        ax.axvline(med, color="black", lw=1, ls="--")
        ax.text(
            med,
            0.97,
            f" median {med:.1f} ms",
            transform=ax.get_xaxis_transform(),
            va="top",
            fontsize=8,
        )
    ax.set_xlabel("posterior sd of local activation time (ms)", fontsize=8.5)
    ax.set_ylabel("number of mesh nodes", fontsize=8.5)
    ax.set_title("uncertainty per node", fontsize=9.5)
    if has_s:
        s = np.asarray(shrinkage, np.float64)
        s = np.clip(s[np.isfinite(s)], -1.0, 1.0)
        ax = axs[1]
        ax.hist(s, bins=np.linspace(-1, 1, 41), color="tab:green", alpha=0.8)
        mean = float(np.mean(s))
        ax.axvline(mean, color="black", lw=1, ls="--")
        ax.text(
            mean,
            0.97,
            f" mean {mean:.2f} ",
            transform=ax.get_xaxis_transform(),
            va="top",
            ha="right" if mean > 0.5 else "left",
            fontsize=8,
        )
        ax.set_xlabel("shrinkage = 1 − posterior var / prior var", fontsize=8.5)
        ax.set_title("how much the ECG narrowed the prior", fontsize=9.5)
    for a in axs:
        a.tick_params(labelsize=7.5)
        for sp_ in ("top", "right"):
            a.spines[sp_].set_visible(False)
    fig.subplots_adjust(
        left=0.09 if has_s else 0.16, right=0.98, top=0.88, bottom=0.19, wspace=0.25
    )
    return fig


def plot_traces(traces: dict, units: dict | None = None):
    """Per-chain traces of a few scalars (e.g. log density, velocity scale, noise).

    Parameters
    ----------
    traces : dict of name -> (chain, draw) array
    units : dict of name -> str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    names = [k for k, v in traces.items() if np.asarray(v).ndim == 2]
    units = units or {}
    n = max(1, len(names))
    fig = _figure((9.0, 1.45 * n + 0.5))
    for i, name in enumerate(names):
        v = np.asarray(traces[name], np.float64)
        ax = fig.add_subplot(n, 1, i + 1)
        for c in range(v.shape[0]):
            ax.plot(np.arange(v.shape[1]), v[c], lw=0.8, label=f"chain {c + 1}")
        u = units.get(name)
        ax.set_ylabel(f"{name}\n({u})" if u else name, fontsize=8)
        ax.tick_params(labelsize=7)
        for sp_ in ("top", "right"):
            ax.spines[sp_].set_visible(False)
        if i == 0:
            ax.legend(
                fontsize=7,
                ncol=min(v.shape[0], 8),
                frameon=False,
                loc="lower right",
                bbox_to_anchor=(1.0, 1.0),
            )
        if i == n - 1:
            ax.set_xlabel("draw (after warm-up)", fontsize=8)
        else:
            ax.tick_params(labelbottom=False)
    fig.subplots_adjust(
        left=0.12,
        right=0.99,
        top=1 - 0.35 / fig.get_figheight(),
        bottom=0.45 / fig.get_figheight(),
        hspace=0.12,
    )
    return fig
