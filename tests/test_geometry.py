import numpy as np
import pytest
from helpers import box_mesh, box_surface_labels

from cdt_bayes._errors import CdtBayesError, MeshError
from cdt_bayes._geometry import (
    LV_ENDO,
    RV_ENDO,
    Mesh,
    admissible_sites,
    boundary_faces,
    check_points_inside,
    closest_point_on_triangles,
    endo_distance,
    endo_distance_by_side,
    locate_points,
    points_to_triangles,
    refine_mesh,
    tet_volumes,
)


def _box(n=(4, 4, 4), size=(1.0, 1.0, 1.0), surface=None):
    nodes, tets = box_mesh(n, size)
    return Mesh(nodes=nodes, tets=tets, surface=surface)


@pytest.mark.parametrize("n", [(1, 1, 1), (2, 3, 4)])
def test_box_mesh_positive_conforming(n):
    size = (2.0, 3.0, 5.0)
    nodes, tets = box_mesh(n, size)
    vol = tet_volumes(nodes, tets)
    assert tets.shape == (6 * np.prod(n), 4) and nodes.shape == (np.prod(np.add(n, 1)), 3)
    assert (vol > 0).all()
    np.testing.assert_allclose(vol.sum(), np.prod(size))
    # conforming: the boundary is exactly the box surface, 2 triangles per boundary square
    nx, ny, nz = n
    assert len(boundary_faces(tets)) == 4 * (nx * ny + ny * nz + nx * nz)


def test_boundary_faces_outward():
    nodes, tets = box_mesh((3, 2, 2), (3.0, 2.0, 2.0))
    faces, owner = boundary_faces(tets, return_tets=True)
    x = nodes[faces]
    normal = np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
    outward = x.mean(axis=1) - nodes[tets[owner]].mean(axis=1)
    assert (np.einsum("ij,ij->i", normal, outward) > 0).all()
    # every boundary face lies on a box face
    on_face = np.isclose(x, 0.0).all(axis=1) | np.isclose(x, [3.0, 2.0, 2.0]).all(axis=1)
    assert on_face.any(axis=1).all()


def test_closest_point_on_triangle_cases():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    p = np.array(
        [
            [0.2, 0.2, 3.0],
            [-1, -1, 0],
            [2, -1, 1],
            [0.5, 0.5 + 1, 0],
            [-1, 0.5, 0],
            [0.7, 0.7, 0.0],
            [0.5, -2, 0],
        ]
    )
    expect = np.array(
        [[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0.5, 0], [0.5, 0.5, 0], [0.5, 0, 0]]
    )
    np.testing.assert_allclose(closest_point_on_triangles(p, a, b, c), expect, atol=1e-12)


def test_points_to_triangles_bruteforce():
    rng = np.random.default_rng(0)
    tri = rng.normal(size=(60, 3, 3)) * 0.5 + rng.normal(size=(60, 1, 3)) * 3
    p = rng.normal(size=(200, 3)) * 4
    d, j = points_to_triangles(p, tri)
    q = closest_point_on_triangles(p[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2])
    brute = np.linalg.norm(q - p[:, None], axis=-1)
    np.testing.assert_allclose(d, brute.min(axis=1), rtol=1e-12)
    np.testing.assert_allclose(brute[np.arange(200), j], d, rtol=1e-12)
    # sampled triangle points are never closer than the exact distance
    u = rng.random((300, 2))
    u = np.where(u.sum(1, keepdims=True) > 1, 1 - u, u)
    s = (
        tri[:, None, 0]
        + u[None, :, :1] * (tri[:, None, 1] - tri[:, None, 0])
        + u[None, :, 1:] * (tri[:, None, 2] - tri[:, None, 0])
    )
    sampled = np.linalg.norm(s.reshape(-1, 3)[None] - p[:, None], axis=-1).min(axis=1)
    assert (d <= sampled + 1e-12).all()


def test_endo_distance_analytic_box():
    # LV endo on x = 0: distance = x for every node, exactly
    nodes, tets = box_mesh((6, 3, 3), (3.0, 1.5, 1.5))
    m = Mesh(nodes=nodes, tets=tets, surface=box_surface_labels(nodes, 0, 0.0, LV_ENDO))
    d = endo_distance(m)
    np.testing.assert_allclose(d, nodes[:, 0], atol=1e-12)
    np.testing.assert_allclose(endo_distance(m, side="lv"), nodes[:, 0], atol=1e-12)
    with pytest.raises(MeshError, match="no RV endocardial nodes"):
        endo_distance(m, side="rv")


def test_endo_distance_by_side_two_faces():
    nodes, tets = box_mesh((6, 2, 2), (3.0, 1.0, 1.0))
    surf = box_surface_labels(nodes, 0, 0.0, LV_ENDO)
    surf[np.isclose(nodes[:, 0], 3.0)] = RV_ENDO
    m = Mesh(nodes=nodes, tets=tets, surface=surf)
    d_lv, d_rv = endo_distance_by_side(m)
    np.testing.assert_allclose(d_lv, nodes[:, 0], atol=1e-12)
    np.testing.assert_allclose(d_rv, 3.0 - nodes[:, 0], atol=1e-12)
    np.testing.assert_allclose(endo_distance(m), np.minimum(d_lv, d_rv), atol=1e-12)


def test_endo_distance_is_not_node_distance():
    # coarse endo triangles, fine query points: the exact distance to the plane x = 0 is
    # x even for nodes whose nearest endo *node* is far away
    nodes, tets = box_mesh((8, 1, 1), (4.0, 3.0, 3.0))
    m = Mesh(nodes=nodes, tets=tets, surface=box_surface_labels(nodes, 0, 0.0, LV_ENDO))
    extra = np.array([[0.5, 1.5, 1.5], [2.0, 1.0, 2.0]])
    d, _ = points_to_triangles(
        extra,
        m.nodes[boundary_faces(m.tets)[(m.surface[boundary_faces(m.tets)] == LV_ENDO).all(axis=1)]],
    )
    np.testing.assert_allclose(d, extra[:, 0])


def test_admissible_sites():
    nodes, tets = box_mesh((8, 2, 2), (4.0, 1.0, 1.0))
    m = Mesh(nodes=nodes, tets=tets, surface=box_surface_labels(nodes, 0, 0.0, LV_ENDO))
    sites = admissible_sites(m, depth_mm=1.0)
    np.testing.assert_array_equal(sites, np.nonzero(nodes[:, 0] <= 1.0 + 1e-12)[0])
    assert sites.dtype == np.int64


def test_admissible_sites_no_labels():
    m = _box((2, 2, 2))
    with pytest.raises(
        MeshError,
        match=r"heart\.vtu: the mesh has no endocardial labels; supply "
        r"point data 'surface' .* --endo-lv FILE / --endo-rv FILE",
    ):
        admissible_sites(m, name="heart.vtu")
    m = m.replace(surface=np.full(m.n_nodes, 3))
    with pytest.raises(MeshError, match="no endocardial nodes"):
        admissible_sites(m)


def test_locate_points_known():
    m = _box((4, 4, 4), (2.0, 2.0, 2.0))
    rng = np.random.default_rng(1)
    e = rng.integers(0, m.n_tets, 300)
    b = rng.dirichlet(np.ones(4), 300)
    p = np.einsum("ka,kai->ki", b, m.nodes[m.tets[e]])
    p = np.concatenate([p, m.nodes[:5], [[1.0, 1.0, 1.0]]])  # nodes and an interior vertex
    tet, bary, inside = locate_points(m, p)
    assert inside.all()
    np.testing.assert_array_equal(tet[:300], e)
    np.testing.assert_allclose(bary[:300], b, atol=1e-12)
    np.testing.assert_allclose(np.einsum("ka,kai->ki", bary, m.nodes[m.tets[tet]]), p, atol=1e-12)
    assert (bary >= -1e-9).all()


def test_locate_points_outside():
    m = _box((2, 2, 2))
    p = np.array([[1.5, 0.5, 0.5], [0.5, 0.5, -0.2]])
    tet, bary, inside = locate_points(m, p)
    assert not inside.any()
    np.testing.assert_allclose(bary.sum(axis=1), 1.0)
    assert (bary.min(axis=1) < 0).all()
    assert ((tet >= 0) & (tet < m.n_tets)).all()


def test_check_points_inside():
    m = _box((2, 2, 2), (10.0, 10.0, 10.0))
    ok = np.array([[5.0, 5.0, 5.0], [10.2, 5.0, 5.0]])  # second: 0.2 mm outside, tolerated
    tet, bary, inside = check_points_inside(m, ok, "pmj.csv", tol_mm=0.5)
    np.testing.assert_array_equal(inside, [True, False])
    bad = np.array([[5.0, 5.0, 5.0], [13.0, 5.0, 5.0], [5.0, 5.0, -4.0]])
    with pytest.raises(
        CdtBayesError,
        match=r"^pmj\.csv: row 2: point \(13\.000, 5\.000, 5\.000\) mm "
        r"lies outside the mesh \(3 mm away",
    ):
        check_points_inside(m, bad, "pmj.csv")


# --------------------------------------------------------------------------------------
# Uniform refinement
# --------------------------------------------------------------------------------------
def _labelled_box():
    nodes, tets = box_mesh((3, 2, 2), (3.0, 2.0, 2.0))
    surf = box_surface_labels(nodes, 0, 0.0, LV_ENDO) + box_surface_labels(nodes, 0, 3.0, RV_ENDO)
    rng = np.random.default_rng(0)
    fib = rng.normal(size=(len(tets), 3))
    fib /= np.linalg.norm(fib, axis=1, keepdims=True)
    nf = rng.normal(size=(len(nodes), 3))
    nf /= np.linalg.norm(nf, axis=1, keepdims=True)
    return Mesh(nodes=nodes, tets=tets, fibres=fib, surface=surf, node_fibres=nf)


@pytest.mark.parametrize("levels", [1, 2])
def test_refine_mesh_fills_the_same_volume(levels):
    m = _labelled_box()
    r = refine_mesh(m, levels)
    n_edges = len({tuple(sorted(e)) for t in m.tets for e in ((t[0], t[1]), (t[0], t[2]), (t[0], t[3]),
                                                              (t[1], t[2]), (t[1], t[3]), (t[2], t[3]))})
    if levels == 1:
        assert r.n_nodes == m.n_nodes + n_edges
    assert r.n_tets == 8**levels * m.n_tets
    vol = tet_volumes(r.nodes, r.tets)
    assert (vol > 0).all()
    np.testing.assert_allclose(vol.sum(), 12.0)
    # conforming: 4 boundary triangles per old one, and no duplicate nodes
    assert len(boundary_faces(r.tets)) == 4**levels * len(boundary_faces(m.tets))
    assert len(np.unique(np.round(r.nodes, 9), axis=0)) == r.n_nodes
    # children keep their parent's fibre; old nodes keep label, position and point fibre
    np.testing.assert_array_equal(r.fibres, np.repeat(m.fibres, 8**levels, axis=0))
    np.testing.assert_array_equal(r.nodes[: m.n_nodes], m.nodes)
    np.testing.assert_array_equal(r.surface[: m.n_nodes], m.surface)
    np.testing.assert_allclose(np.linalg.norm(r.node_fibres, axis=1), 1.0, rtol=1e-6)


def test_refine_mesh_labels_follow_the_surfaces():
    m = _labelled_box()
    r = refine_mesh(m, 1)
    x = r.nodes[:, 0]
    # every node on the x = 0 face is LV endo, every node on x = 3 RV endo, every other one 0
    np.testing.assert_array_equal(r.surface == LV_ENDO, np.isclose(x, 0.0))
    np.testing.assert_array_equal(r.surface == RV_ENDO, np.isclose(x, 3.0))
    # the endocardial distance of the refined mesh is that of the box: x for the LV side
    np.testing.assert_allclose(endo_distance(r, side="lv"), x, atol=1e-12)


def test_refine_mesh_zero_levels_and_bad_levels():
    m = _labelled_box()
    assert refine_mesh(m, 0) is m
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="levels"):
            refine_mesh(m, bad)
