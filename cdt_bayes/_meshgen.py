"""Built-in biventricular geometry, the shipped default mesh and default electrodes.

The geometry is the classic idealised biventricle: the LV a truncated ellipsoidal
shell, the RV a thinner ellipsoidal shell fused to the right/anterior side of the
LV (the septum is the LV wall between the two cavities), all cut by a flat base
plane. It is meshed with gmsh (OCC kernel; optional dependency, ``pip install
'cdt_bayes[mesh]'``), labelled, given rule-based fibres and placed in a torso
("patient") frame: x = patient's left, y = anterior, z = superior (head), mm.

The coarse default (``seed=0``) ships in the package (``data/biv_coarse.vtu``,
``data/biv_coarse_electrodes.csv``), so :func:`default_mesh` needs no gmsh.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
from pathlib import Path

import numpy as np

from ._errors import CdtBayesError, MeshError
from ._fibres import apex_node, node_directions, rule_based_fibres
from ._geometry import BASE, EPI, LV_ENDO, RV_ENDO, Mesh, tet_volumes

__all__ = [
    "ELECTRODE_NAMES",
    "RESOLUTIONS",
    "generate_biventricular",
    "default_electrodes",
    "default_mesh",
    "default_electrodes_table",
    "write_default_files",
]

#: Electrode names of the default 12-lead set, in file order.
ELECTRODE_NAMES = ("RA", "LA", "LL", "RL", "V1", "V2", "V3", "V4", "V5", "V6")

#: Target element size (mm) per resolution: coarse ~5k nodes / 19k tets,
#: medium ~21k nodes / 92k tets, fine ~44k nodes / 205k tets.
RESOLUTIONS = {"coarse": 3.5, "medium": 2.0, "fine": 1.5}

_DATA = "data"
_COARSE_VTU = "biv_coarse.vtu"
_COARSE_CSV = "biv_coarse_electrodes.csv"


@dataclasses.dataclass(frozen=True)
class _BivShape:
    """Proportions of the idealised biventricle, local frame, mm.

    Local frame: the long axis is ``z`` (apex at ``-z``), the base plane is
    ``z = z_base``, the RV lies on the ``-x`` side of the LV. Ellipsoids are
    centred on the ``z`` axis (LV) or at ``(rv_x0, 0, rv_z0)`` (RV).
    """

    lv_r: float = 24.0  # LV endocardial cavity, short semi-axis
    lv_c: float = 65.0  # LV endocardial cavity, long semi-axis (apex at -lv_c)
    lv_wall: float = 10.0  # LV wall (free wall, septum, apex)
    z_base: float = 5.0  # base plane above the equator
    rv_x0: float = -20.0  # RV ellipsoid centre, x
    rv_z0: float = 5.0  # RV ellipsoid centre, z
    rv_ax: float = 34.0  # RV cavity semi-axes (septum -> free wall)
    rv_ay: float = 40.0  # (anterior-posterior)
    rv_az: float = 55.0  # (long axis)
    rv_wall: float = 4.0  # RV free wall

    def perturbed(self, seed: int) -> _BivShape:
        """Proportions scaled by a few percent, deterministically from ``seed`` (0: canonical)."""
        if seed == 0:
            return self
        rng = np.random.default_rng(seed)
        names = [f.name for f in dataclasses.fields(self)]
        scale = 1.0 + np.clip(0.03 * rng.standard_normal(len(names)), -0.06, 0.06)
        return _BivShape(**{k: float(getattr(self, k) * s) for k, s in zip(names, scale)})

    # --- implicit surfaces: (semi-axes, centre) -------------------------------
    def ellipsoids(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Semi-axes and centres of the four ellipsoids, mm."""
        w, t = self.lv_wall, self.rv_wall
        rv_c = np.array([self.rv_x0, 0.0, self.rv_z0])
        return {
            "lv_endo": (np.array([self.lv_r, self.lv_r, self.lv_c]), np.zeros(3)),
            "lv_epi": (np.array([self.lv_r + w, self.lv_r + w, self.lv_c + w]), np.zeros(3)),
            "rv_endo": (np.array([self.rv_ax, self.rv_ay, self.rv_az]), rv_c),
            "rv_epi": (np.array([self.rv_ax + t, self.rv_ay + t, self.rv_az + t]), rv_c),
        }


def _ellipsoid_distance(x: np.ndarray, semi: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Signed first-order distance ``F / |grad F|`` to an ellipsoid, mm (negative inside)."""
    y = (x - centre) / semi
    f = np.sum(y * y, axis=1) - 1.0
    g = 2.0 * (x - centre) / semi**2
    return f / np.maximum(np.linalg.norm(g, axis=1), 1e-12)


def _patient_rotation() -> np.ndarray:
    """Rotation (3, 3) from the local heart frame to the patient frame.

    Columns are the local axes in patient coordinates. The apex direction (local
    ``-z``) points left, anterior and inferior: 45 deg from the sagittal plane,
    30 deg below the horizontal. Local ``-x`` (towards the RV) is right-anterior.
    """
    el, dn = np.deg2rad(30.0), np.deg2rad(45.0)
    apex_dir = np.array([np.cos(el) * np.sin(dn), np.cos(el) * np.cos(dn), -np.sin(el)])
    ez = -apex_dir
    ex = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)  # local +x: left-posterior (LV side)
    ex = ex - (ex @ ez) * ez
    ex /= np.linalg.norm(ex)
    ey = np.cross(ez, ex)
    return np.stack([ex, ey, ez], axis=1)


def _boundary_faces(tets: np.ndarray) -> np.ndarray:
    """Faces belonging to exactly one tet, shape ``(n_faces, 3)`` (vertex indices)."""
    faces = np.concatenate(
        [tets[:, [1, 2, 3]], tets[:, [0, 2, 3]], tets[:, [0, 1, 3]], tets[:, [0, 1, 2]]]
    )
    key = np.sort(faces, axis=1)
    _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    return faces[cnt[inv.ravel()] == 1]


def _label_surfaces(nodes_local: np.ndarray, tets: np.ndarray, shape: _BivShape) -> np.ndarray:
    """Node surface labels from boundary faces, by which analytic surface each face lies on.

    Parameters
    ----------
    nodes_local : (n_nodes, 3) float
        Nodes in the local heart frame, mm.
    tets : (n_tets, 4) int
    shape : _BivShape

    Returns
    -------
    (n_nodes,) int32
        0 interior, 1 LV endo, 2 RV endo, 3 epi, 4 base. Nodes on several surfaces
        take endo over base over epi.
    """
    faces = _boundary_faces(tets)
    c = nodes_local[faces].mean(axis=1)
    ell = shape.ellipsoids()
    d = {k: np.abs(_ellipsoid_distance(c, *v)) for k, v in ell.items()}
    d["base"] = np.abs(c[:, 2] - shape.z_base)
    names = ["lv_endo", "lv_epi", "rv_endo", "rv_epi", "base"]
    which = np.argmin(np.stack([d[k] for k in names]), axis=0)
    inside_rv = _ellipsoid_distance(c, *ell["rv_endo"]) < 0.0
    face_label = np.array([LV_ENDO, EPI, RV_ENDO, EPI, BASE])[which]
    # LV epicardial faces inside the RV cavity are the septal RV endocardium
    face_label = np.where((which == 1) & inside_rv, RV_ENDO, face_label)
    prio = np.array([0, 3, 3, 1, 2])  # by label: interior, LV, RV, epi, base
    node_prio = np.zeros(nodes_local.shape[0], dtype=np.int64)
    np.maximum.at(node_prio, faces.ravel(), np.repeat(prio[face_label], 3))
    node_label = np.zeros(nodes_local.shape[0], dtype=np.int32)
    node_label[node_prio == 1] = EPI
    node_label[node_prio == 2] = BASE
    # endo: LV and RV endocardium never share a node (the septum separates them)
    lv_nodes = np.zeros(nodes_local.shape[0], dtype=bool)
    lv_nodes[faces[face_label == LV_ENDO].ravel()] = True
    node_label[node_prio == 3] = RV_ENDO
    node_label[(node_prio == 3) & lv_nodes] = LV_ENDO
    return node_label


def _gmsh_biv(shape: _BivShape, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Mesh the biventricle with gmsh (OCC); nodes (local frame, mm) and tets."""
    try:
        import gmsh
    except ImportError as err:
        raise CdtBayesError(
            "generating a biventricular mesh needs gmsh: pip install 'cdt_bayes[mesh]'"
        ) from err

    own = not gmsh.isInitialized()
    if own:
        gmsh.initialize(argv=[], readConfigFiles=False, interruptible=False)
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.Verbosity", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        for opt in ("Mesh.MaxNumThreads1D", "Mesh.MaxNumThreads2D", "Mesh.MaxNumThreads3D"):
            gmsh.option.setNumber(opt, 1)
        gmsh.model.add("cdt_bayes_biv")
        occ = gmsh.model.occ
        ell = shape.ellipsoids()
        vols = {}
        for name, (semi, centre) in ell.items():
            tag = occ.addSphere(*centre, 1.0)
            occ.dilate([(3, tag)], *centre, *semi)
            vols[name] = tag
        # RV cavity: the RV ellipsoid outside the LV (the septum is LV wall)
        lv_epi_copy = occ.copy([(3, vols["lv_epi"])])
        rv_cavity, _ = occ.cut([(3, vols["rv_endo"])], lv_epi_copy)
        solid, _ = occ.fuse([(3, vols["lv_epi"])], [(3, vols["rv_epi"])])
        big = 4.0 * float(max(s.max() for s, _ in ell.values()))
        box = occ.addBox(-big, -big, shape.z_base, 2 * big, 2 * big, big)
        solid, _ = occ.cut(solid, [(3, vols["lv_endo"]), *rv_cavity, (3, box)])
        occ.synchronize()
        if len(solid) != 1:
            raise MeshError(f"gmsh: the biventricular solid has {len(solid)} volumes, not 1")
        gmsh.option.setNumber("Mesh.MeshSizeMax", h)
        gmsh.option.setNumber("Mesh.MeshSizeMin", 0.25 * h)
        gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
        gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 1)
        gmsh.option.setNumber("Mesh.Algorithm", 6)
        gmsh.option.setNumber("Mesh.Algorithm3D", 1)
        gmsh.option.setNumber("Mesh.Optimize", 1)
        gmsh.option.setNumber("Mesh.RandomSeed", 1)
        gmsh.model.mesh.generate(3)
        tags, coords, _ = gmsh.model.mesh.getNodes()
        types = gmsh.model.mesh.getElementTypes(3)
        if list(types) != [4]:
            raise MeshError(f"gmsh: unexpected 3-D element types {list(types)}")
        _, tet_nodes = gmsh.model.mesh.getElementsByType(4)
    finally:
        if own:
            gmsh.finalize()
        else:  # leave a caller's gmsh session as it was (apart from options)
            gmsh.model.remove()
    tags = np.asarray(tags, dtype=np.int64)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 3)
    lut = np.full(int(tags.max()) + 1, -1, dtype=np.int64)
    lut[tags] = np.arange(tags.size)
    tets = lut[np.asarray(tet_nodes, dtype=np.int64).reshape(-1, 4)]
    # drop orphan nodes (e.g. geometry points gmsh keeps) and renumber
    used = np.zeros(coords.shape[0], dtype=bool)
    used[tets.ravel()] = True
    new = np.cumsum(used) - 1
    return coords[used], new[tets]


def _orient(nodes: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """Swap two vertices of negatively oriented tets so all signed volumes are > 0."""
    neg = tet_volumes(nodes, tets) < 0.0
    tets = tets.copy()
    tets[neg, 0], tets[neg, 1] = tets[neg, 1], tets[neg, 0].copy()
    return tets


def _mesh_size(resolution: str | float) -> float:
    """Target element size (mm) for a named resolution or a size given in mm."""
    if isinstance(resolution, str):
        if resolution not in RESOLUTIONS:
            raise CdtBayesError(
                f"unknown resolution {resolution!r}; choose one of {', '.join(RESOLUTIONS)}"
            )
        return RESOLUTIONS[resolution]
    h = float(resolution)
    if not 1.0 <= h <= 12.0:
        raise CdtBayesError(f"mesh size {h!r} mm out of range; give 1 to 12 mm")
    return h


def generate_biventricular(
    resolution: str | float = "coarse", seed: int = 0
) -> tuple[Mesh, dict[str, np.ndarray]]:
    """Generate the built-in biventricular mesh with fibres, labels and electrodes.

    Parameters
    ----------
    resolution : {"coarse", "medium", "fine"} or float
        Mesh size: coarse ~5k nodes, ~19k tets (the inference default), medium
        ~21k nodes, ~92k tets, fine ~44k nodes, ~205k tets; or a target element
        size in mm (1 to 12; e.g. 6.0 gives ~1.5k nodes for quick tests).
    seed : int
        0 gives the canonical shape; other seeds scale each proportion by a few
        percent (deterministic in ``seed``).

    Returns
    -------
    mesh : Mesh
        Nodes (n_nodes, 3) in mm in the patient frame (x left, y anterior,
        z superior; heart volume centroid at the origin), positively oriented
        tets, ``surface`` labels, per-tet ``fibres``/``sheets`` and ``node_fibres``
        (helix +60 deg endo to -60 deg epi).
    electrodes : dict of str to (3,) float
        Default 12-lead electrode positions, mm (see :func:`default_electrodes`).

    Raises
    ------
    CdtBayesError
        If gmsh is not installed, ``resolution`` is unknown or ``seed`` is negative.
    MeshError
        If gmsh does not produce a single tetrahedralised volume.

    Notes
    -----
    Canonical proportions (mm): LV cavity 48 wide at the base and 70 long, LV wall
    10; RV cavity a crescent up to 20 wide, RV free wall 4; myocardial volume
    about 143 mL. Long axis 80 mm from the base centre to the apex, pointing
    left, anterior and inferior (about 30 deg below the horizontal, 45-50 deg from
    the sagittal plane). Generation takes about 1 s (coarse), 4 s (medium), 12 s (fine).
    """
    h = _mesh_size(resolution)
    if int(seed) < 0:
        raise CdtBayesError(f"seed must be >= 0, got {seed}")
    shape = _BivShape().perturbed(int(seed))
    local, tets = _gmsh_biv(shape, h)
    surface = _label_surfaces(local, tets, shape)
    rot = _patient_rotation()
    nodes = local @ rot.T
    tets = _orient(nodes, tets)
    vol = tet_volumes(nodes, tets)
    centroid = (nodes[tets].mean(axis=1) * vol[:, None]).sum(axis=0) / vol.sum()
    nodes = nodes - centroid
    mesh = Mesh(nodes=nodes, tets=tets.astype(np.int32), surface=surface)
    mesh = rule_based_fibres(mesh)
    return mesh, default_electrodes(mesh)


def _on_torso(theta: np.ndarray, z: np.ndarray, torso: tuple[float, float, float, float]):
    """Points ``(cx + a cos t, cy + b sin t, z)`` on the elliptic-cylinder torso, mm."""
    cx, cy, a, b = torso
    return np.stack([cx + a * np.cos(theta), cy + b * np.sin(theta), z], axis=-1)


def default_electrodes(
    mesh: Mesh,
    torso_width_mm: float = 320.0,
    torso_depth_mm: float = 220.0,
    chest_gap_mm: float = 30.0,
) -> dict[str, np.ndarray]:
    """Anatomical 12-lead electrode positions on a torso-like surface around a heart.

    The torso is a vertical elliptic cylinder (width ``torso_width_mm`` along x,
    depth ``torso_depth_mm`` along y). Its midline lies 35 mm to the right of
    the heart centre, and its anterior wall is ``chest_gap_mm`` in front of the
    most anterior point of the heart. Precordial electrodes:
    V1/V2 at the right/left sternal border (18 mm from the midline) in the 4th
    intercostal space (25 mm above the apex level); V4 at the midclavicular line
    (90 mm left of the midline) at the apex level (5th ICS); V3 halfway between V2
    and V4; V5 on the anterior axillary line and V6 on the midaxillary line at
    the V4 level. Limb electrodes on the torso (Mason-Likar style): RA/LA at
    the shoulders (220 mm above the heart centre), LL/RL on the lower abdomen
    (280 mm below).

    Parameters
    ----------
    mesh : Mesh
        Heart in the patient frame (x left, y anterior, z superior), mm. Surface
        labels, when present, locate the apex (else the lowest node is used).
    torso_width_mm, torso_depth_mm : float
        Torso ellipse axes, mm.
    chest_gap_mm : float
        Distance (along y) from the most anterior heart point to the chest wall, mm.

    Returns
    -------
    dict of str to (3,) float
        ``RA, LA, LL, RL, V1 ... V6`` positions, mm.
    """
    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    centre = nodes.mean(axis=0)
    a, b = 0.5 * torso_width_mm, 0.5 * torso_depth_mm
    cx = centre[0] - 35.0
    u = np.clip((nodes[:, 0] - cx) / a, -0.999, 0.999)
    cy = float(np.max(nodes[:, 1] + chest_gap_mm - b * np.sqrt(1.0 - u * u)))
    torso = (cx, cy, a, b)
    surf = None if mesh.surface is None else np.asarray(mesh.surface)
    if surf is not None and (surf == EPI).any() and (surf == BASE).any():
        z_apex = float(nodes[apex_node(nodes, surf), 2])
    else:
        z_apex = float(nodes[:, 2].min())
    z5, z4 = z_apex, z_apex + 25.0

    def anterior(x_from_midline: float) -> float:
        return float(np.arccos(np.clip(x_from_midline / a, -1.0, 1.0)))

    th1, th2, th4 = anterior(-18.0), anterior(18.0), anterior(90.0)
    th6 = 0.0
    th5 = 0.5 * (th4 + th6)
    th3 = 0.5 * (th2 + th4)
    pos = {
        "RA": _on_torso(np.array(anterior(-150.0)), np.array(centre[2] + 220.0), torso),
        "LA": _on_torso(np.array(anterior(150.0)), np.array(centre[2] + 220.0), torso),
        "LL": _on_torso(np.array(anterior(90.0)), np.array(centre[2] - 280.0), torso),
        "RL": _on_torso(np.array(anterior(-90.0)), np.array(centre[2] - 280.0), torso),
        "V1": _on_torso(np.array(th1), np.array(z4), torso),
        "V2": _on_torso(np.array(th2), np.array(z4), torso),
        "V3": _on_torso(np.array(th3), np.array(0.5 * (z4 + z5)), torso),
        "V4": _on_torso(np.array(th4), np.array(z5), torso),
        "V5": _on_torso(np.array(th5), np.array(z5), torso),
        "V6": _on_torso(np.array(th6), np.array(z5), torso),
    }
    return {k: np.asarray(pos[k], dtype=np.float64) for k in ELECTRODE_NAMES}


# --- files -------------------------------------------------------------------------


def _data_file(name: str):
    """Return the packaged data file ``cdt_bayes/data/<name>`` (a Traversable)."""
    try:
        return importlib.resources.files("cdt_bayes").joinpath(_DATA, name)
    except (NotADirectoryError, TypeError, ModuleNotFoundError):  # namespace-package layouts
        return Path(__file__).resolve().parent / _DATA / name


def _read_vtu(path) -> Mesh:
    """Read a VTU written by :func:`write_mesh_vtu` (point data fiber/sheet/surface)."""
    import meshio

    m = meshio.read(path)
    tets = np.concatenate([c.data for c in m.cells if c.type == "tetra"]).astype(np.int32)
    nodes = np.asarray(m.points, dtype=np.float64)
    surface = np.asarray(m.point_data["surface"]).astype(np.int32).ravel()
    node_fib = np.asarray(m.point_data["fiber"], dtype=np.float64)
    if "fiber" in m.cell_data and "sheet" in m.cell_data:
        fib = np.concatenate([np.asarray(x) for x in m.cell_data["fiber"]]).astype(np.float64)
        sh = np.concatenate([np.asarray(x) for x in m.cell_data["sheet"]]).astype(np.float64)
        # stored as float32: re-orthonormalise (sheet first, fibre orthogonal to it)
        sh /= np.linalg.norm(sh, axis=1, keepdims=True)
        fib -= np.einsum("ij,ij->i", fib, sh)[:, None] * sh
        fib /= np.linalg.norm(fib, axis=1, keepdims=True)
        return Mesh(
            nodes=nodes, tets=tets, fibres=fib, sheets=sh, surface=surface, node_fibres=node_fib
        )
    mesh = rule_based_fibres(Mesh(nodes=nodes, tets=tets, surface=surface))
    return mesh.replace(node_fibres=node_fib)


def write_mesh_vtu(path: str | Path, mesh: Mesh) -> Path:
    """Write a labelled, fibred mesh as a compressed binary VTU.

    Point data: ``fiber``, ``sheet`` (float64, 3 components, unit, node averages of
    the tet directions, sheet orthogonalised to fibre), ``surface`` (int32).
    Cell data: ``fiber``, ``sheet`` (the per-tet directions, float32 to keep the file small).

    Parameters
    ----------
    path : str or Path
        Output ``.vtu`` file.
    mesh : Mesh
        Mesh with ``fibres``, ``sheets`` and ``surface`` set; nodes in mm.

    Returns
    -------
    Path
        The path written.
    """
    import meshio

    nodes = np.asarray(mesh.nodes, dtype=np.float64)
    tets = np.asarray(mesh.tets)
    fib = np.asarray(mesh.fibres, dtype=np.float64)
    sh = np.asarray(mesh.sheets, dtype=np.float64)
    vol = tet_volumes(nodes, tets)
    nf = (
        np.asarray(mesh.node_fibres, dtype=np.float64)
        if mesh.node_fibres is not None
        else node_directions(nodes.shape[0], tets, fib, vol)
    )
    ns = node_directions(nodes.shape[0], tets, sh, vol)
    ns = ns - np.einsum("ij,ij->i", ns, nf)[:, None] * nf
    nn = np.linalg.norm(ns, axis=1, keepdims=True)
    ns = np.where(nn > 1e-9, ns / np.maximum(nn, 1e-12), np.cross(nf, [0.0, 0.0, 1.0]))
    ns = ns / np.maximum(np.linalg.norm(ns, axis=1, keepdims=True), 1e-12)
    m = meshio.Mesh(
        points=nodes,
        cells=[("tetra", tets.astype(np.int32))],
        point_data={"fiber": nf, "sheet": ns, "surface": np.asarray(mesh.surface, dtype=np.int32)},
        cell_data={"fiber": [fib.astype(np.float32)], "sheet": [sh.astype(np.float32)]},
    )
    path = Path(path)
    meshio.write(path, m, file_format="vtu", binary=True, compression="zlib")
    return path


def write_electrodes_csv(path: str | Path, electrodes: dict[str, np.ndarray]) -> Path:
    """Write electrodes as CSV ``name,x_mm,y_mm,z_mm`` (one row per electrode, mm)."""
    path = Path(path)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "x_mm", "y_mm", "z_mm"])
        for name, p in electrodes.items():
            w.writerow([name, *(f"{float(v):.3f}" for v in np.asarray(p).ravel())])
    return path


def _read_electrodes_csv(fh) -> dict[str, np.ndarray]:
    rows = list(csv.DictReader(fh))
    return {
        r["name"]: np.array([float(r["x_mm"]), float(r["y_mm"]), float(r["z_mm"])]) for r in rows
    }


def default_mesh(resolution: str = "coarse") -> Mesh:
    """Return the built-in biventricular mesh (canonical shape, ``seed=0``).

    Parameters
    ----------
    resolution : {"coarse", "medium", "fine"}
        ``"coarse"`` is loaded from the package data (no gmsh needed); the
        others are generated with gmsh (seconds to a minute).

    Returns
    -------
    Mesh
        Nodes in mm (patient frame), tets, surface labels, fibres and sheets.
    """
    if resolution == "coarse":
        with importlib.resources.as_file(_data_file(_COARSE_VTU)) as p:
            return _read_vtu(p)
    return generate_biventricular(resolution, seed=0)[0]


def default_electrodes_table(
    resolution: str = "coarse", mesh: Mesh | None = None
) -> dict[str, np.ndarray]:
    """Return the default 12-lead electrode positions for the built-in mesh.

    Parameters
    ----------
    resolution : {"coarse", "medium", "fine"}
        ``"coarse"`` reads the shipped CSV; otherwise the electrodes are placed
        around ``mesh`` (or around a freshly generated mesh when ``mesh`` is None).
    mesh : Mesh, optional
        The mesh the electrodes belong to (resolutions other than coarse).

    Returns
    -------
    dict of str to (3,) float
        ``RA, LA, LL, RL, V1 ... V6`` positions, mm.
    """
    if resolution == "coarse":
        with _data_file(_COARSE_CSV).open("r", newline="") as fh:
            return _read_electrodes_csv(fh)
    if mesh is None:
        return generate_biventricular(resolution, seed=0)[1]
    return default_electrodes(mesh)


def write_default_files(
    outdir: str | Path, resolution: str = "coarse", seed: int = 0
) -> tuple[Path, Path]:
    """Generate a built-in mesh and write ``biv_<resolution>.vtu`` and its electrodes CSV.

    Regenerate the shipped coarse files (from the repository root)::

        python -c "from cdt_bayes._meshgen import write_default_files as w; w('cdt_bayes/data')"

    Parameters
    ----------
    outdir : str or Path
        Existing output directory.
    resolution : {"coarse", "medium", "fine"}
    seed : int

    Returns
    -------
    (Path, Path)
        The ``.vtu`` and ``_electrodes.csv`` paths.
    """
    outdir = Path(outdir)
    mesh, el = generate_biventricular(resolution, seed)
    stem = f"biv_{resolution}" if seed == 0 else f"biv_{resolution}_seed{seed}"
    return (
        write_mesh_vtu(outdir / f"{stem}.vtu", mesh),
        write_electrodes_csv(outdir / f"{stem}_electrodes.csv", el),
    )
