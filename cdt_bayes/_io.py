"""File boundary: mesh readers and validation, VTU writer, CSV/WFDB readers, atomic outputs.

All unit conversions of the package happen here: everything returned is in mm, ms and mV.
Every problem with user input raises a subclass of :class:`~cdt_bayes._errors.CdtBayesError`
whose message is one line starting with the file (or option) name.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ._errors import CdtBayesError, InputFileError, MeshError
from ._geometry import BASE, LV_ENDO, RV_ENDO, Mesh, _face_ids, tet_volumes

__all__ = [
    "UNITS_TO_MM",
    "STANDARD_LEADS",
    "load_mesh",
    "validate_mesh",
    "save_mesh_vtu",
    "read_pmj_csv",
    "read_electrodes_csv",
    "read_ecg_csv",
    "write_ecg_csv",
    "read_wfdb_ecg",
    "resample_1ms",
    "atomic_output_dir",
    "atomic_write_text",
]

#: Scale factor from each accepted length unit to mm.
UNITS_TO_MM = {"m": 1000.0, "cm": 10.0, "mm": 1.0, "um": 1e-3, "µm": 1e-3}

#: The 12 standard lead names, in the conventional order.
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_LEAD_CANON = {n.lower(): n for n in STANDARD_LEADS}
_ELECTRODE_CANON = {
    n.lower(): n for n in ("RA", "LA", "LL", "RL", "V1", "V2", "V3", "V4", "V5", "V6")
}

_FIBRE_NAMES = ("fiber", "fibre", "fibers", "fibres")
_SHEET_NAMES = ("sheet", "sheets")
_INDEX_SUFFIXES = {"", ".txt", ".csv", ".dat", ".vtx", ".ids", ".idx", ".list"}

_DEGENERATE_REL = 1e-12  # |vol| <= this * median |vol| is a zero-volume tet
_UNIT_TOL = 0.1  # fibre norms must lie in [0.9, 1.1] before normalisation
_ZERO_VEC = 1e-6  # fibre norms below this are missing directions
_MATCH_REL = 1e-3  # surface-mesh points must lie within this * bbox diagonal of a node


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return msg or type(exc).__name__


# --------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------


def _tmp_sibling(path: Path) -> Path:
    """Create a unique hidden file next to ``path``, keeping its suffix (meshio uses it)."""
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    # mkstemp creates 0600 files; give the published file the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _check_out_dir(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise CdtBayesError(f"{path}: cannot write: directory {parent} does not exist")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same directory, ``os.replace``)."""
    path = Path(path)
    _check_out_dir(path)
    try:
        tmp = _tmp_sibling(path)
    except OSError as e:
        raise CdtBayesError(f"{path}: cannot write ({_one_line(e)})") from e
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Stage the files of a command in a hidden directory and publish them only on success.

    ``DIR`` is created if needed. The body writes into the yielded staging directory (a
    hidden sibling ``.DIR.*.partial`` of ``DIR``, or a hidden directory inside ``DIR`` when
    the parent is not writable, so ``os.replace`` never crosses file systems). When the body
    succeeds every staged file is moved into ``DIR`` with ``os.replace`` (replacing files of
    the same name, merging sub-directories); when it raises, the staging directory is
    removed and ``DIR`` holds nothing new.

    Parameters
    ----------
    path : str or os.PathLike
        The output directory ``DIR``.

    Yields
    ------
    pathlib.Path
        The staging directory to write into.

    Raises
    ------
    CdtBayesError
        If ``DIR`` cannot be created or is not a writable directory.

    Examples
    --------
    >>> with atomic_output_dir("out") as tmp:  # doctest: +SKIP
    ...     write_ecg_csv(tmp / "ecg.csv", t, names, values)
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CdtBayesError(f"{out}: exists and is not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or _one_line(e)
        raise CdtBayesError(f"{out}: cannot create output directory ({reason})") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise CdtBayesError(f"{out}: output directory is not writable")
    try:
        staging = Path(
            tempfile.mkdtemp(
                prefix=f".{out.resolve().name}.", suffix=".partial", dir=out.resolve().parent
            )
        )
    except OSError:
        try:
            staging = Path(tempfile.mkdtemp(prefix=".staging.", suffix=".partial", dir=out))
        except OSError as e:
            raise CdtBayesError(f"{out}: output directory is not writable ({_one_line(e)})") from e
    try:
        yield staging
        _merge_into(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _merge_into(src: Path, dst: Path) -> None:
    for entry in sorted(src.iterdir()):
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink():
            if target.is_dir():
                _merge_into(entry, target)
            else:
                if target.exists():
                    target.unlink()
                os.replace(entry, target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)


# --------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------


def _units_scale(units: str, option: str = "--units") -> float:
    key = str(units).strip().lower().replace("μ", "µ")
    if key not in UNITS_TO_MM:
        raise CdtBayesError(f"{option}: unknown length unit {units!r}; use one of m, cm, mm, um")
    return UNITS_TO_MM[key]


def _opencarp_base(path: Path) -> Path | None:
    """Return the openCARP basename of ``path`` (``heart``, ``heart.pts``, ...) or None."""
    if path.suffix in (".pts", ".elem", ".lon"):
        return path.with_suffix("")
    if not path.exists() and Path(str(path) + ".pts").exists():
        return path
    return None


def load_mesh(
    path: str | os.PathLike,
    units: str | None = None,
    endo_lv: str | os.PathLike | None = None,
    endo_rv: str | os.PathLike | None = None,
) -> Mesh:
    """Read, scale and validate a tetrahedral mesh.

    Parameters
    ----------
    path : str or os.PathLike
        Any mesh meshio reads (``.vtu``, ``.vtk``, ``.msh``, ``.xdmf``, ...) holding
        tetrahedra, or an openCARP basename: ``heart`` (or ``heart.pts``/``heart.elem``)
        means ``heart.pts`` (µm; first line: point count), ``heart.elem`` (first line: count,
        then ``Tt i j k l [region]``, 0-based) and optional ``heart.lon`` (first line: 1 or
        2 vectors per element, then ``f_x f_y f_z [s_x s_y s_z]`` per tet).
    units : {"m", "cm", "mm", "um"} or None
        Length unit of the file's coordinates, scaled to mm. ``None`` (default): mm for
        meshio files, µm for openCARP ``.pts`` (their definition).
    endo_lv, endo_rv : str or os.PathLike, optional
        LV/RV endocardium: a text file of 0-based node indices (whitespace or comma
        separated; openCARP ``.vtx`` also accepted) or a surface mesh (``.stl``, ``.vtk``,
        ``.vtp``, ``.ply``, ``.obj``, ...) in the same units as the mesh whose points are
        matched to the nearest mesh node (within 1e-3 of the bounding-box diagonal). Given
        files replace any LV (1) / RV (2) labels of the mesh; other labels are kept and
        unlabelled nodes are 0. RV is applied after LV.

    Returns
    -------
    Mesh
        Validated (see :func:`validate_mesh`): nodes in mm (float64), positively oriented
        tets, unit per-tet fibres/sheets (point data averaged over each tet's 4 nodes after
        aligning their signs; cell data used as is and preferred when both exist), node
        fibres kept in ``node_fibres``, ``surface`` labels. Orphan nodes are dropped and the
        remaining nodes renumbered (node lists in ``endo_lv``/``endo_rv`` use the file's
        original numbering).

    Raises
    ------
    MeshError
        Missing/unreadable file, no tetrahedra, NaN coordinates, inverted/degenerate tets,
        disconnected parts, bad fibres, bad endocardium files.

    Warns
    -----
    UserWarning
        When the mesh holds no fibres (conduction will be isotropic).
    """
    p = Path(path).expanduser()
    name = str(path)
    base = _opencarp_base(p)
    if base is not None:
        scale = _units_scale(units) if units is not None else 1e-3
        nodes, tets, cfib, cshe = _read_opencarp(base)
        pfib = pshe = surface = None
        name = str(base)
    else:
        if not p.exists():
            raise MeshError(
                f"{name}: file not found (give a mesh file, e.g. heart.vtu, or an openCARP "
                "basename with heart.pts and heart.elem)"
            )
        if p.is_dir():
            raise MeshError(f"{name}: is a directory, expected a mesh file")
        scale = _units_scale(units) if units is not None else 1.0
        nodes, tets, pfib, pshe, cfib, cshe, surface = _read_meshio(p, name)
    nodes = nodes * scale
    if endo_lv is not None or endo_rv is not None:
        if surface is None:
            surface = np.zeros(nodes.shape[0], np.int64)
        surface = np.array(surface, dtype=np.int64)
        for f, lab in ((endo_lv, LV_ENDO), (endo_rv, RV_ENDO)):
            if f is not None:
                idx = _read_endo(f, nodes, scale)
                surface[surface == lab] = 0
                surface[idx] = lab
    fibres, sheets = cfib, cshe
    if fibres is None and pfib is not None:
        fibres = _node_to_tet(pfib, tets, name, "fiber")
    if sheets is None and pshe is not None:
        sheets = _node_to_tet(pshe, tets, name, "sheet")
    mesh = Mesh(
        nodes=nodes, tets=tets, fibres=fibres, sheets=sheets, surface=surface, node_fibres=pfib
    )
    return validate_mesh(mesh, name)


def _meshio_read(p: Path, name: str, what: str = "mesh"):
    """``meshio.read`` with its console output captured and every failure a MeshError.

    meshio prints reader errors and calls ``sys.exit(1)`` when no reader succeeds; both
    are turned into one-line :class:`MeshError` messages here.
    """
    import meshio

    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            return meshio.read(p)
    except (Exception, SystemExit) as e:  # ReadError, KeyError, ValueError, SystemExit, ...
        detail = _one_line(buf.getvalue()) if isinstance(e, SystemExit) else _one_line(e)
        detail = detail.replace("Error: ", "").replace(str(p), p.name)
        raise MeshError(f"{name}: cannot read {what} ({detail or 'unreadable file'})") from None


def _read_meshio(p: Path, name: str):
    m = _meshio_read(p, name)
    nodes = np.asarray(m.points, dtype=np.float64)
    if nodes.ndim != 2 or nodes.shape[1] != 3:
        raise MeshError(f"{name}: points must be 3-D, got shape {nodes.shape}")
    blocks = [i for i, c in enumerate(m.cells) if c.type in ("tetra", "tetra10")]
    if not blocks:
        types = ", ".join(sorted({c.type for c in m.cells})) or "none"
        raise MeshError(f"{name}: no tetrahedra (cell types: {types}); a volume mesh is needed")
    tets = np.concatenate([np.asarray(m.cells[i].data)[:, :4] for i in blocks]).astype(np.int64)

    def point(names, ncomp):
        for key in names:
            if key in m.point_data:
                a = np.asarray(m.point_data[key], dtype=np.float64)
                a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
                if a.shape != (nodes.shape[0], ncomp):
                    raise MeshError(
                        f"{name}: point data '{key}' has shape {a.shape}, expected "
                        f"({nodes.shape[0]}, {ncomp})"
                    )
                return a if ncomp > 1 else a[:, 0]
        return None

    def cell(names):
        for key in names:
            if key in m.cell_data:
                parts = [np.asarray(m.cell_data[key][i], dtype=np.float64) for i in blocks]
                a = np.concatenate([q.reshape(q.shape[0], -1) for q in parts])
                if a.shape != (tets.shape[0], 3):
                    raise MeshError(
                        f"{name}: cell data '{key}' has shape {a.shape}, expected "
                        f"({tets.shape[0]}, 3)"
                    )
                return a
        return None

    surface = point(("surface",), 1)
    if surface is not None:
        if not np.isfinite(surface).all() or (surface != np.round(surface)).any():
            raise MeshError(f"{name}: point data 'surface' must hold integer labels 0-4")
        surface = surface.astype(np.int64)
    return (
        nodes,
        tets,
        point(_FIBRE_NAMES, 3),
        point(_SHEET_NAMES, 3),
        cell(_FIBRE_NAMES),
        cell(_SHEET_NAMES),
        surface,
    )


def _read_tokens(path: Path, what: str) -> list[str]:
    if not path.exists():
        raise MeshError(f"{path}: file not found (openCARP {what} file)")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise MeshError(f"{path}: cannot read ({_one_line(e)})") from e
    tok = text.split()
    if not tok:
        raise MeshError(f"{path}: file is empty")
    return tok


def _count(tok: list[str], path: Path) -> int:
    try:
        n = int(tok[0])
    except ValueError:
        raise MeshError(f"{path}: first line must be the count, got {tok[0]!r}") from None
    if n < 0:
        raise MeshError(f"{path}: negative count {n}")
    return n


def _read_opencarp(base: Path):
    pts_path, elem_path, lon_path = (Path(str(base) + s) for s in (".pts", ".elem", ".lon"))
    tok = _read_tokens(pts_path, "points")
    n = _count(tok, pts_path)
    if len(tok) - 1 != 3 * n:
        raise MeshError(
            f"{pts_path}: header says {n} points but the file holds "
            f"{(len(tok) - 1) / 3:g} (3 coordinates per line)"
        )
    try:
        nodes = np.array(tok[1:], dtype=np.float64).reshape(n, 3)
    except ValueError:
        raise MeshError(f"{pts_path}: non-numeric coordinate") from None

    tok = _read_tokens(elem_path, "elements")
    m = _count(tok, elem_path)
    body = np.array(tok[1:])
    if m == 0 and body.size == 0:
        return nodes, np.zeros((0, 4), np.int64), None, None  # validate_mesh: "no tetrahedra"
    if m == 0 or body.size not in (5 * m, 6 * m):
        kinds = sorted(set(body[np.char.isalpha(body)].tolist()) - {"Tt"})
        if kinds:
            raise MeshError(
                f"{elem_path}: element types {', '.join(kinds)} not supported; only "
                "tetrahedra (Tt) are"
            )
        raise MeshError(
            f"{elem_path}: header says {m} elements but the body does not hold {m} "
            "lines of 'Tt i j k l [region]'"
        )
    rows = body.reshape(m, -1)
    if (rows[:, 0] != "Tt").any():
        bad = rows[rows[:, 0] != "Tt", 0][0]
        raise MeshError(
            f"{elem_path}: element type {bad!r} not supported; only tetrahedra (Tt) are"
        )
    try:
        tets = rows[:, 1:5].astype(np.int64)
    except ValueError:
        raise MeshError(f"{elem_path}: non-integer node index") from None

    fib = she = None
    if lon_path.exists():
        tok = _read_tokens(lon_path, "fibres")
        try:
            vals = np.array(tok, dtype=np.float64)
        except ValueError:
            raise MeshError(f"{lon_path}: non-numeric value") from None
        if tok[0].strip() in ("1", "2") and vals.size - 1 in (3 * m * int(tok[0]),):
            k = int(tok[0])
            vals = vals[1:]
        elif vals.size in (3 * m, 6 * m):  # legacy file without a header line
            k = vals.size // (3 * m)
        else:
            raise MeshError(
                f"{lon_path}: expected a header (1 or 2) and {m} lines of 3 or 6 "
                f"values (one per element), got {vals.size} values"
            )
        vals = vals.reshape(m, 3 * k)
        fib = vals[:, :3]
        she = vals[:, 3:6] if k == 2 else None
    return nodes, tets, fib, she


def _node_to_tet(v: np.ndarray, tets: np.ndarray, name: str, what: str) -> np.ndarray | None:
    """Average node vectors over each tet (signs aligned to its longest; directions are axial).

    Zero node fibres (undefined directions) add nothing; a tet whose four are all zero
    keeps a zero fibre, i.e. isotropic conduction (see :func:`_check_vectors`).
    """
    v = np.asarray(v, dtype=np.float64)
    nrm = np.linalg.norm(v, axis=1)
    zero = np.isfinite(nrm) & (nrm < _ZERO_VEC)
    bad = ~np.isfinite(v).all(axis=1) | (zero if what != "fiber" else False)
    if bad.any():
        raise MeshError(
            f"{name}: {int(bad.sum())} '{what}' vectors are NaN, infinite or zero "
            f"(first: node {int(np.nonzero(bad)[0][0])})"
        )
    _check_unit(v[~zero], name, what, "node")
    if tets.size and (tets.min() < 0 or tets.max() >= v.shape[0]):
        return None  # validate_mesh reports the bad indices
    x = np.where(zero[:, None], 0.0, v)[tets]  # (m, 4, 3)
    ref = np.take_along_axis(x, np.argmax(np.linalg.norm(x, axis=2), axis=1)[:, None, None], axis=1)[:, 0]
    sign = np.where(np.einsum("mai,mi->ma", x, ref) < 0, -1.0, 1.0)
    mean = (x * sign[..., None]).sum(axis=1)
    mn = np.linalg.norm(mean, axis=1, keepdims=True)
    return np.where(mn < _ZERO_VEC, 0.0, mean / np.where(mn < _ZERO_VEC, 1.0, mn))


def _check_unit(v: np.ndarray, name: str, what: str, where: str) -> None:
    norm = np.linalg.norm(v, axis=1)
    off = np.abs(norm - 1.0) > _UNIT_TOL
    if off.any():
        i = int(np.nonzero(off)[0][0])
        raise MeshError(
            f"{name}: non-unit fibres: {int(off.sum())} '{what}' vectors have norm outside "
            f"[{1 - _UNIT_TOL:g}, {1 + _UNIT_TOL:g}] (first: {where} {i}, norm {norm[i]:.3g}); "
            "store unit direction vectors"
        )


def _read_endo(f, nodes: np.ndarray, scale: float) -> np.ndarray:
    """Node indices of an endocardium given as an index list or a surface mesh."""
    p = Path(f).expanduser()
    fname = str(f)
    if not p.exists():
        raise MeshError(f"{fname}: file not found (endocardium: node index list or surface mesh)")
    if p.is_dir():
        raise MeshError(f"{fname}: is a directory, expected a node list or surface mesh")
    n = nodes.shape[0]
    if p.suffix.lower() in _INDEX_SUFFIXES:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MeshError(f"{fname}: cannot read ({_one_line(e)})") from e
        tok = text.replace(",", " ").split()
        if p.suffix.lower() == ".vtx" and len(tok) >= 2 and tok[1] in ("intra", "extra"):
            tok = tok[2:]
        if not tok:
            raise MeshError(f"{fname}: file is empty (expected 0-based node indices)")
        try:
            idx = np.array(tok, dtype=np.int64)
        except ValueError:
            bad = next(t for t in tok if not t.lstrip("+-").isdigit())
            raise MeshError(
                f"{fname}: {bad!r} is not an integer node index (expected 0-based "
                "node indices, whitespace separated)"
            ) from None
        out = (idx < 0) | (idx >= n)
        if out.any():
            raise MeshError(
                f"{fname}: node index {int(idx[out][0])} out of range: the mesh has "
                f"{n} nodes (indices are 0-based)"
            )
        return np.unique(idx)
    surf = _meshio_read(p, fname, "surface mesh")
    pts = np.asarray(surf.points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
        raise MeshError(f"{fname}: surface mesh has no 3-D points")
    pts = pts * scale
    d, idx = cKDTree(nodes).query(pts)
    tol = _MATCH_REL * float(np.linalg.norm(nodes.max(axis=0) - nodes.min(axis=0)))
    far = d > tol
    if far.any():
        raise MeshError(
            f"{fname}: {int(far.sum())} of {len(pts)} surface points are not mesh nodes "
            f"(farthest {d.max():.3g} mm away, tolerance {tol:.3g} mm); the surface must use "
            "the mesh's nodes, frame and units"
        )
    return np.unique(idx)


def validate_mesh(mesh: Mesh, name: str, warn_missing_fibres: bool = True) -> Mesh:
    """Check a mesh and return a cleaned copy.

    Checks, in order: coordinates finite, 3-D; tets ``(n_tets, 4)`` integer, at least one,
    indices in range, no repeated vertex; no degenerate tet (``|vol| <= 1e-12 *
    median|vol|``; thin slivers are valid); orientation (all negative: re-oriented by
    swapping two vertices; mixed: error naming the count of inverted tets, the minority
    sign); no face shared by more than two tets; one connected part (over shared nodes);
    fibres/sheets finite, non-zero and within 10% of unit norm (then normalised; sheets
    are also made orthogonal to fibres); ``surface`` labels in 0-4. Nodes used by no tet
    are dropped and the rest renumbered (``surface``/``node_fibres`` follow).

    Parameters
    ----------
    mesh : Mesh
        Mesh in mm.
    name : str
        File name used at the start of error messages.
    warn_missing_fibres : bool
        Warn (``UserWarning``) when the mesh has no fibres.

    Returns
    -------
    Mesh
        NumPy arrays: nodes float64 mm, tets int64 positively oriented, unit fibres/sheets.

    Raises
    ------
    MeshError
        On any failed check (one-line message starting with ``name``).
    """
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    if nodes.ndim != 2 or nodes.shape[1] != 3:
        raise MeshError(f"{name}: nodes must have shape (n_nodes, 3), got {nodes.shape}")
    bad = ~np.isfinite(nodes).all(axis=1)
    if bad.any():
        raise MeshError(
            f"{name}: {int(bad.sum())} nodes have NaN or infinite coordinates "
            f"(first: node {int(np.nonzero(bad)[0][0])})"
        )
    tets = np.asarray(mesh.tets)
    if tets.size == 0:
        raise MeshError(f"{name}: no tetrahedra")
    if tets.ndim != 2 or tets.shape[1] != 4:
        raise MeshError(f"{name}: tets must have shape (n_tets, 4), got {tets.shape}")
    if not np.issubdtype(tets.dtype, np.integer):
        if not np.isfinite(tets).all() or (tets != np.round(tets)).any():
            raise MeshError(f"{name}: tet node indices must be integers")
    tets = tets.astype(np.int64)
    n, m = nodes.shape[0], tets.shape[0]
    out = (tets < 0) | (tets >= n)
    if out.any():
        raise MeshError(
            f"{name}: tets reference node {int(tets[out][0])} but the mesh has {n} "
            "nodes (indices are 0-based)"
        )

    vol = tet_volumes(nodes, tets)
    absv = np.abs(vol)
    s = np.sort(tets, axis=1)
    repeated = (s[:, 1:] == s[:, :-1]).any(axis=1)
    degenerate = repeated | (absv <= _DEGENERATE_REL * np.median(absv)) | (vol == 0)
    if degenerate.any():
        raise MeshError(
            f"{name}: {int(degenerate.sum())} degenerate tets with zero volume "
            f"(first: tet {int(np.nonzero(degenerate)[0][0])}); remove or remesh them"
        )
    neg = vol < 0
    n_neg = int(neg.sum())
    if n_neg == m:  # consistently reversed vertex order: valid, re-orient
        tets = tets[:, [0, 2, 1, 3]]
    elif n_neg:
        minority = neg if n_neg <= m - n_neg else ~neg
        raise MeshError(
            f"{name}: {int(minority.sum())} inverted tets (of {m}; first: tet "
            f"{int(np.nonzero(minority)[0][0])}): mixed orientation means a folded mesh or "
            "inconsistent vertex order"
        )

    _, inverse = _face_ids(tets, n)
    counts = np.bincount(inverse)
    if (counts > 2).any():
        raise MeshError(
            f"{name}: {int((counts > 2).sum())} faces are shared by more than two "
            "tets (overlapping or duplicated tets)"
        )

    used = np.zeros(n, dtype=bool)
    used[tets] = True
    graph = sp.coo_matrix(
        (np.ones(3 * m, dtype=np.int8), (np.repeat(tets[:, 0], 3), tets[:, 1:].ravel())),
        shape=(n, n),
    )
    _, comp = connected_components(graph, directed=False)
    tet_comp = comp[tets[:, 0]]
    parts, sizes = np.unique(tet_comp, return_counts=True)
    if parts.size > 1:
        order = np.sort(sizes)[::-1]
        listed = ", ".join(map(str, order[:5])) + (", ..." if order.size > 5 else "")
        raise MeshError(
            f"{name}: {parts.size} disconnected parts (tets per part: {listed}); "
            "keep one connected ventricular mesh"
        )

    fibres = _check_vectors(mesh.fibres, m, name, "fiber")
    sheets = _check_vectors(mesh.sheets, m, name, "sheet")
    if fibres is not None and sheets is not None:
        sheets = sheets - np.einsum("mi,mi->m", sheets, fibres)[:, None] * fibres
        nrm = np.linalg.norm(sheets, axis=1)
        if (nrm < 1e-3).any():
            raise MeshError(
                f"{name}: {int((nrm < 1e-3).sum())} 'sheet' vectors are parallel to the fibre"
            )
        sheets = sheets / nrm[:, None]
    if fibres is None and warn_missing_fibres:
        warnings.warn(
            f"{name}: no 'fiber' data; conduction will be isotropic", UserWarning, stacklevel=2
        )

    surface = mesh.surface
    if surface is not None:
        surface = np.asarray(surface)
        if surface.shape != (n,):
            raise MeshError(
                f"{name}: point data 'surface' has shape {surface.shape}, expected ({n},)"
            )
        surface = surface.astype(np.int64)
        if ((surface < 0) | (surface > BASE)).any():
            bad = surface[(surface < 0) | (surface > BASE)][0]
            raise MeshError(
                f"{name}: point data 'surface' holds label {bad}; allowed: 0 interior, "
                "1 LV endo, 2 RV endo, 3 epi, 4 base"
            )
        surface = surface.astype(np.int32)
    node_fibres = mesh.node_fibres
    if node_fibres is not None:
        node_fibres = _check_vectors(node_fibres, n, name, "fiber", "node")

    if not used.all():
        remap = np.cumsum(used) - 1
        tets = remap[tets]
        nodes = nodes[used]
        surface = None if surface is None else surface[used]
        node_fibres = None if node_fibres is None else node_fibres[used]
    return Mesh(
        nodes=nodes,
        tets=tets,
        fibres=fibres,
        sheets=sheets,
        surface=surface,
        node_fibres=node_fibres,
    )


def _check_vectors(v, m: int, name: str, what: str, where: str = "tet") -> np.ndarray | None:
    """Unit vectors, one per tet (or node): NaN is an error; zero fibres are kept as zero.

    A zero fibre is a direction the mesh's fibre method left undefined (at a singularity of
    a rule-based field, say): conduction there is isotropic at the cross-fibre velocity
    (the metric of :func:`cdt_bayes._eikonal.conduction_metric`), with a warning. A zero
    sheet is an error.
    """
    if v is None:
        return None
    v = np.asarray(v, dtype=np.float64)
    if v.shape != (m, 3):
        raise MeshError(f"{name}: '{what}' must have shape ({m}, 3) (one per {where}), got {v.shape}")
    nan = ~np.isfinite(v).all(axis=1)
    zero = ~nan & (np.linalg.norm(np.where(nan[:, None], 0.0, v), axis=1) < _ZERO_VEC)
    bad = nan | (zero if what != "fiber" else False)
    if bad.any():
        raise MeshError(
            f"{name}: {int(bad.sum())} '{what}' vectors are NaN, infinite or zero "
            f"(first: {where} {int(np.nonzero(bad)[0][0])})"
        )
    if zero.all():
        raise MeshError(f"{name}: every '{what}' vector is zero; leave the field out for isotropic conduction")
    if zero.any():
        warnings.warn(
            f"{name}: {int(zero.sum())} of {m} '{what}' vectors are zero (first: {where} "
            f"{int(np.nonzero(zero)[0][0])}); conduction there is isotropic at the cross-fibre velocity",
            UserWarning,
            stacklevel=3,
        )
    _check_unit(v[~zero], name, what, where)
    nrm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.where(zero[:, None], 0.0, v / np.where(zero[:, None], 1.0, nrm))


def save_mesh_vtu(
    path: str | os.PathLike, mesh: Mesh, point_data: Mapping[str, np.ndarray] | None = None
) -> None:
    """Write a mesh and point data as VTU, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.vtu`` file. Written to a hidden temp name in the same directory and
        renamed into place, so an existing file is replaced only by a complete one.
    mesh : Mesh
        Mesh to write (nodes mm). Its ``surface`` (point data ``surface``), ``node_fibres``
        (point data ``fiber``), ``fibres``/``sheets`` (cell data ``fiber``/``sheet``) are
        written when present.
    point_data : mapping of str to array, optional
        Extra point data, each with leading dimension ``n_nodes`` (e.g.
        ``{"activation_ms": t}``); overrides the mesh's own arrays of the same name.

    Raises
    ------
    ValueError
        If a point data array does not have ``n_nodes`` rows.
    CdtBayesError
        If the file cannot be written.
    """
    import meshio

    path = Path(path)
    n = mesh.n_nodes
    pdata: dict[str, np.ndarray] = {}
    if mesh.surface is not None:
        pdata["surface"] = np.asarray(mesh.surface, dtype=np.int32)
    if mesh.node_fibres is not None:
        pdata["fiber"] = np.asarray(mesh.node_fibres, dtype=np.float64)
    for key, val in (point_data or {}).items():
        a = np.asarray(val)
        if a.shape[:1] != (n,):
            raise ValueError(f"point data {key!r} has shape {a.shape}, expected ({n}, ...)")
        if a.dtype == bool:
            a = a.astype(np.int8)
        pdata[key] = a
    cdata = {}
    if mesh.fibres is not None:
        cdata["fiber"] = [np.asarray(mesh.fibres, dtype=np.float64)]
    if mesh.sheets is not None:
        cdata["sheet"] = [np.asarray(mesh.sheets, dtype=np.float64)]
    out = meshio.Mesh(
        np.asarray(mesh.nodes, dtype=np.float64),
        [("tetra", np.asarray(mesh.tets, dtype=np.int64))],
        point_data=pdata,
        cell_data=cdata,
    )
    _check_out_dir(path)
    try:
        tmp = _tmp_sibling(path)
    except OSError as e:
        raise CdtBayesError(f"{path}: cannot write ({_one_line(e)})") from e
    try:
        meshio.write(tmp, out, file_format="vtu")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------


def _read_csv(path, kind: str) -> tuple[str, list[str], list[tuple[int, list[str]]]]:
    """Read a CSV into (name, header, [(row number, fields)]); rows are 1-based data rows."""
    name = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"{name}: file not found ({kind} CSV)")
    if p.is_dir():
        raise InputFileError(f"{name}: is a directory, expected a {kind} CSV file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputFileError(f"{name}: not a text CSV file (cannot decode as UTF-8)") from None
    except OSError as e:
        raise InputFileError(f"{name}: cannot read ({e.strerror or _one_line(e)})") from e
    if not text.strip():
        raise InputFileError(f"{name}: file is empty (expected a {kind} CSV with a header row)")
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as e:
        raise InputFileError(f"{name}: malformed CSV ({_one_line(e)})") from e
    rows = [(i, r) for i, r in enumerate(lines) if any(c.strip() for c in r)]
    header = [c.strip() for c in rows[0][1]]
    first = rows[0][0]
    # Data rows are numbered from 1 after the header (row r is file line header + r).
    data = [(i - first, [c.strip() for c in r]) for i, r in rows[1:]]
    seen = set()
    for col in header:
        if col == "":
            raise InputFileError(f"{name}: header has an empty column name")
        if col in seen:
            raise InputFileError(f"{name}: duplicate column '{col}' in the header")
        seen.add(col)
    for r, fields in data:
        if len(fields) != len(header):
            raise InputFileError(
                f"{name}: row {r}: {len(fields)} fields, but the header has {len(header)} columns"
            )
    if not data:
        raise InputFileError(f"{name}: no data rows after the header")
    return name, header, data


def _require(name: str, header: list[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        hint = ""
        lower = {h.lower() for h in header}
        for c in missing:
            stem = c.rsplit("_", 1)[0]
            for u in ("m", "cm", "um", "s", "us", "v", "uv"):
                if f"{stem}_{u}" in lower:
                    hint = f"; column {stem}_{u} has the wrong unit: convert to {c}"
        raise InputFileError(
            f"{name}: missing column(s) {', '.join(missing)} (header: {','.join(header)}; "
            f"expected {','.join(required)}){hint}"
        )


def _numeric(name: str, header: list[str], data, cols: Sequence[str]) -> np.ndarray:
    """Parse the given columns into a float64 array ``(n_rows, len(cols))``, strictly."""
    j = [header.index(c) for c in cols]
    out = np.empty((len(data), len(cols)))
    for a, (r, fields) in enumerate(data):  # rows of small CSV tables, not mesh nodes
        for b, (c, jj) in enumerate(zip(cols, j, strict=True)):
            s = fields[jj]
            if s == "":
                raise InputFileError(f"{name}: row {r}, column {c}: empty value")
            try:
                v = float(s)
            except ValueError:
                raise InputFileError(
                    f"{name}: row {r}, column {c}: {s!r} is not a number"
                ) from None
            if not math.isfinite(v):
                raise InputFileError(
                    f"{name}: row {r}, column {c}: {s} (NaN or infinite values are not allowed)"
                )
            out[a, b] = v
    return out


def read_pmj_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read Purkinje–muscle junctions from ``x_mm,y_mm,z_mm,t_ms`` CSV.

    Parameters
    ----------
    path : str or os.PathLike
        CSV with header ``x_mm,y_mm,z_mm,t_ms`` (extra columns ignored), one PMJ per row.

    Returns
    -------
    xyz : (n_pmj, 3) float64
        Positions, mm.
    t : (n_pmj,) float64
        Initiation times, ms.

    Raises
    ------
    InputFileError
        Missing/empty/unreadable file, missing columns, non-numeric or NaN/inf values.
    """
    name, header, data = _read_csv(path, "PMJ")
    cols = ("x_mm", "y_mm", "z_mm", "t_ms")
    _require(name, header, cols)
    a = _numeric(name, header, data, cols)
    return a[:, :3].copy(), a[:, 3].copy()


#: Plausible ratio of the electrodes' spread to the mesh's bounding-box diagonal. A torso
#: lead set spans 3-3.5 times the ventricles (the default heart, dti004); outside these
#: bounds one of the two files is almost surely in another length unit (m, cm or µm read
#: as mm). Between the middle and the upper bound only a small mesh is suspect (a heart
#: in cm spans ~16 "mm", ratio ~30), not a test slab of 20-40 mm.
ELECTRODE_SPREAD_RATIO = (0.5, 20.0, 100.0)
#: A mesh smaller than this (bounding-box diagonal, mm) is suspect when the electrodes
#: span over ``ELECTRODE_SPREAD_RATIO[1]`` times it.
SMALL_MESH_DIAGONAL_MM = 40.0
#: Smallest plausible bounding-box diagonal of a mesh, mm (a heart in metres spans ~0.1).
MIN_MESH_DIAGONAL_MM = 2.0


def check_length_units(mesh: Mesh, electrodes: Mapping[str, np.ndarray], mesh_name: str,
                       electrodes_name: str) -> None:
    """Raise when the mesh and the electrodes cannot both be in millimetres.

    A mesh in metres read as millimetres runs, but every travel time is 1,000 times too
    short, so a fit explains nothing while looking complete. Checked: the mesh's
    bounding-box diagonal (at least :data:`MIN_MESH_DIAGONAL_MM`) and the ratio of the
    electrodes' largest pairwise distance to it (:data:`ELECTRODE_SPREAD_RATIO`: at least
    0.5; at most 100, and at most 20 for a mesh under :data:`SMALL_MESH_DIAGONAL_MM`).

    Raises
    ------
    InputFileError
        Naming the file(s) and the ``--units`` option or the electrode columns to fix.
    """
    nodes = np.asarray(mesh.nodes, np.float64)
    diag = float(np.linalg.norm(nodes.max(0) - nodes.min(0)))
    if diag < MIN_MESH_DIAGONAL_MM:
        raise InputFileError(
            f"{mesh_name}: the mesh spans only {diag:.3g} mm (bounding-box diagonal); a heart spans about "
            "100 mm: if its coordinates are in m or cm, pass --units m or --units cm"
        )
    xyz = np.asarray([np.asarray(v, np.float64) for v in electrodes.values()])
    if xyz.shape[0] < 2:
        return
    spread = float(np.max(np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)))
    lo, mid, hi = ELECTRODE_SPREAD_RATIO
    if spread < lo * diag:
        raise InputFileError(
            f"{electrodes_name}: the electrodes span {spread:.3g} mm but the mesh {mesh_name} spans {diag:.3g} mm: "
            "electrodes sit on the torso, around the heart; are their coordinates in m or cm? (the columns "
            "x_mm,y_mm,z_mm are millimetres; the mesh's unit is set by --units)"
        )
    if spread > hi * diag or (spread > mid * diag and diag < SMALL_MESH_DIAGONAL_MM):
        raise InputFileError(
            f"{mesh_name}: the mesh spans only {diag:.3g} mm but the electrodes in {electrodes_name} span "
            f"{spread:.3g} mm: is the mesh in another unit? (pass --units m, cm or um)"
        )


def read_electrodes_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read electrode positions from ``name,x_mm,y_mm,z_mm`` CSV.

    Standard names (``RA LA LL RL V1``–``V6``) are matched case-insensitively and returned
    in canonical case; other names are kept as written (extra unipolar leads).

    Parameters
    ----------
    path : str or os.PathLike
        CSV with header ``name,x_mm,y_mm,z_mm``.

    Returns
    -------
    dict of str to (3,) float64
        Position of each electrode, mm, in file order.

    Raises
    ------
    InputFileError
        Missing/empty/unreadable file, missing columns, empty or duplicate names,
        non-numeric or NaN/inf coordinates.
    """
    name, header, data = _read_csv(path, "electrode")
    _require(name, header, ("name", "x_mm", "y_mm", "z_mm"))
    xyz = _numeric(name, header, data, ("x_mm", "y_mm", "z_mm"))
    j = header.index("name")
    out: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    for a, (r, fields) in enumerate(data):
        e = fields[j]
        if not e:
            raise InputFileError(f"{name}: row {r}: empty electrode name")
        e = _ELECTRODE_CANON.get(e.lower(), e)
        if e in out:
            raise InputFileError(f"{name}: duplicate electrode name '{e}' (rows {rows[e]} and {r})")
        out[e], rows[e] = xyz[a].copy(), r
    return out


def resample_1ms(
    time_ms: np.ndarray, values: np.ndarray, name: str = "ECG"
) -> tuple[np.ndarray, np.ndarray]:
    """Resample signals to a 1 ms grid by linear interpolation.

    The grid starts at ``time_ms[0]`` and runs in 1 ms steps up to ``time_ms[-1]``. Signals
    already on it are returned unchanged; otherwise each lead is linearly interpolated
    (no anti-aliasing filter: downsampling keeps the nearest-in-time content, which is
    adequate for QRS bandwidths well below 500 Hz).

    Parameters
    ----------
    time_ms : (n_in,) float
        Strictly increasing sample times, ms.
    values : (n_leads, n_in) float
        Signals.
    name : str
        Used in error messages.

    Returns
    -------
    time_ms : (n_t,) float64
        ``time_ms[0] + arange(n_t)``, ms.
    values : (n_leads, n_t) float64
    """
    t = np.asarray(time_ms, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    d = np.diff(t)
    if (d <= 0).any():
        i = int(np.nonzero(d <= 0)[0][0])
        raise InputFileError(
            f"{name}: time_ms must be strictly increasing (row {i + 2}: "
            f"{t[i + 1]:g} after {t[i]:g})"
        )
    n_t = int(np.floor(t[-1] - t[0] + 1e-9)) + 1
    if n_t < 2:
        raise InputFileError(
            f"{name}: time_ms spans only {t[-1] - t[0]:g} ms (less than 2 samples at 1 ms); "
            "are the times in seconds? times must be in ms"
        )
    grid = t[0] + np.arange(n_t, dtype=np.float64)
    if t.size == n_t and np.allclose(t, grid, rtol=0, atol=1e-6):
        return grid, v.copy()
    j = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, t.size - 2)
    w = np.clip((grid - t[j]) / (t[j + 1] - t[j]), 0.0, 1.0)
    return grid, v[:, j] * (1.0 - w) + v[:, j + 1] * w


def read_ecg_csv(
    path: str | os.PathLike, allowed_leads: Sequence[str] | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read an ECG CSV (``time_ms`` then one column per lead, mV), resampled to 1 ms.

    Parameters
    ----------
    path : str or os.PathLike
        CSV whose first column is ``time_ms`` (strictly increasing, any sampling rate) and
        whose other columns are leads in mV. The 12 standard names (``I, II, III, aVR, aVL,
        aVF, V1``–``V6``) are matched case-insensitively and returned in canonical case.
    allowed_leads : sequence of str, optional
        Accepted lead names (e.g. the 12 standard leads plus extra electrode names); any
        other column is an error. ``None``: accept all.

    Returns
    -------
    time_ms : (n_times,) float64
        1 ms grid from the first sample time, ms (see :func:`resample_1ms`).
    lead_names : list of str
        Lead names in file order.
    values : (n_leads, n_times) float64
        Signals, mV.

    Raises
    ------
    InputFileError
        Missing/empty/unreadable file, first column not ``time_ms``, no lead columns,
        fewer than 2 rows, non-numeric/NaN values, duplicate or unknown lead names, time
        not strictly increasing.
    """
    name, header, data = _read_csv(path, "ECG")
    if header[0] != "time_ms":
        hint = ""
        if header[0].lower() in ("time_s", "t_s", "time_us", "t_us"):
            hint = "; times must be in ms"
        elif "time_ms" in header:
            hint = "; move time_ms to the first column"
        raise InputFileError(f"{name}: first column must be time_ms, found '{header[0]}'{hint}")
    leads = [_LEAD_CANON.get(h.lower(), h) for h in header[1:]]
    if not leads:
        raise InputFileError(f"{name}: no lead columns after time_ms")
    dup = sorted({x for x in leads if leads.count(x) > 1})
    if dup:
        raise InputFileError(f"{name}: duplicate lead column(s) {', '.join(dup)}")
    if allowed_leads is not None:
        allowed = [_LEAD_CANON.get(str(a).lower(), str(a)) for a in allowed_leads]
        unknown = [x for x in leads if x not in allowed]
        if unknown:
            raise InputFileError(
                f"{name}: unknown lead(s) {', '.join(unknown)}; allowed: {', '.join(allowed)} "
                "(12-lead names are I, II, III, aVR, aVL, aVF, V1-V6; other leads must be "
                "electrode names)"
            )
    if len(data) < 2:
        raise InputFileError(f"{name}: at least 2 samples are needed, found {len(data)}")
    a = _numeric(name, header, data, header)
    t, v = resample_1ms(a[:, 0], a[:, 1:].T, name)
    return t, leads, v


def write_ecg_csv(
    path: str | os.PathLike,
    time_ms: np.ndarray,
    lead_names: Sequence[str],
    values: np.ndarray,
) -> None:
    """Write an ECG as CSV ``time_ms,<lead>,...`` (mV), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (temp file in the same directory, then ``os.replace``).
    time_ms : (n_times,) float
        Sample times, ms.
    lead_names : sequence of str, length n_leads
        Column names.
    values : (n_leads, n_times) float
        Signals, mV.
    """
    t = np.asarray(time_ms, dtype=np.float64).reshape(-1)
    v = np.asarray(values, dtype=np.float64)
    names = [str(x) for x in lead_names]
    if v.ndim != 2 or v.shape != (len(names), t.size):
        raise ValueError(f"values must have shape ({len(names)}, {t.size}), got {v.shape}")
    table = np.concatenate([t[:, None], v.T], axis=1)
    buf = io.StringIO()
    buf.write(",".join(["time_ms", *names]) + "\n")
    np.savetxt(buf, table, fmt="%.9g", delimiter=",")
    atomic_write_text(path, buf.getvalue())


# --------------------------------------------------------------------------------------
# WFDB
# --------------------------------------------------------------------------------------

_WFDB_UNITS = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}


def read_wfdb_ecg(
    path_or_record: str | os.PathLike, qrs: tuple[float, float] | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read the 12 standard leads of a WFDB (PhysioNet) record, in mV at 1 ms steps.

    Parameters
    ----------
    path_or_record : str or os.PathLike
        Record path with or without ``.hea``/``.dat`` (e.g. ``data/s0010_re``).
    qrs : (start_ms, end_ms), optional
        Window to keep, in ms from the start of the record; the returned times then start
        at 0 (= ``start_ms``).

    Returns
    -------
    time_ms : (n_times,) float64
        1 ms grid, ms (linear interpolation when the record is not sampled at 1 kHz).
    lead_names : list of str
        Standard names found (channel names matched case-insensitively: ``i, ii, iii, avr,
        avl, avf, v1``–``v6``), in the order ``I, II, III, aVR, aVL, aVF, V1``–``V6``;
        other channels (e.g. Frank ``vx``) are ignored.
    values : (n_leads, n_times) float64
        Signals converted to mV from the record's units (mV, uV, V).

    Raises
    ------
    CdtBayesError
        If ``wfdb`` is not installed.
    InputFileError
        Missing or unreadable record, no standard leads, unknown units, missing samples
        (NaN) in the kept window, window outside the record.
    """
    p = Path(path_or_record).expanduser()
    if p.suffix in (".hea", ".dat"):
        p = p.with_suffix("")
    name = str(path_or_record)
    try:
        import wfdb
    except ImportError:
        raise CdtBayesError(
            f"{name}: reading WFDB records needs the optional package wfdb "
            "(pip install 'cdt_bayes[wfdb]')"
        ) from None
    hea = Path(str(p) + ".hea")
    if not hea.exists():
        raise InputFileError(f"{hea}: file not found (WFDB header of record {p.name})")
    try:
        rec = wfdb.rdrecord(str(p))
    except Exception as e:
        raise InputFileError(f"{name}: cannot read WFDB record ({_one_line(e)})") from e
    sig = rec.p_signal
    if sig is None or rec.fs is None or rec.fs <= 0:
        raise InputFileError(f"{name}: WFDB record has no physical signal or sampling rate")
    chan = {}
    for j, (ch, unit) in enumerate(zip(rec.sig_name, rec.units, strict=True)):
        lead = _LEAD_CANON.get(str(ch).strip().lower())
        if lead is None or lead in chan:
            continue
        u = str(unit).strip().lower().replace("μ", "µ")
        if u not in _WFDB_UNITS:
            raise InputFileError(
                f"{name}: channel {ch} has unknown units {unit!r} (expected mV, uV or V)"
            )
        chan[lead] = (j, _WFDB_UNITS[u])
    if not chan:
        raise InputFileError(
            f"{name}: no standard ECG leads among channels {', '.join(map(str, rec.sig_name))}"
        )
    leads = [x for x in STANDARD_LEADS if x in chan]
    cols = [chan[x][0] for x in leads]
    v = (
        np.asarray(sig, dtype=np.float64)[:, cols].T
        * np.array([chan[x][1] for x in leads])[:, None]
    )
    t = np.arange(v.shape[1], dtype=np.float64) * (1000.0 / float(rec.fs))
    if qrs is not None:
        start, end = (float(q) for q in qrs)
        if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
            raise CdtBayesError(
                f"qrs: window must be (start_ms, end_ms) with start < end, got {qrs}"
            )
        if start < t[0] or end > t[-1]:
            raise InputFileError(
                f"{name}: qrs window {start:g}-{end:g} ms lies outside the record (0-{t[-1]:g} ms)"
            )
        grid = np.arange(start, end + 1e-9, 1.0)
        j = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, t.size - 2)
        w = np.clip((grid - t[j]) / (t[j + 1] - t[j]), 0.0, 1.0)
        v = v[:, j] * (1.0 - w) + v[:, j + 1] * w
        t = grid - start
    else:
        t, v = resample_1ms(t, v, name)
    nan = ~np.isfinite(v)
    if nan.any():
        lead = leads[int(np.nonzero(nan.any(axis=1))[0][0])]
        raise InputFileError(f"{name}: lead {lead} has {int(nan.sum())} missing (NaN) samples")
    return t, leads, v
