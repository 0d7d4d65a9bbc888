"""The Numba Quickhull against Qhull (scipy.spatial.ConvexHull): random clouds, grids full of coplanar and
collinear points, and the marching-cubes meshes the morphology family feeds it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from gateway.compute.features.morphology import hull_vertex_candidates, max_pairwise_distance, roi_mesh
from gateway.compute.kernels.hull import convex_hull
from tests.compute.test_features_first_order import _random_region


def _assert_same_hull(points: np.ndarray, *, same_vertices: bool) -> None:
    ours, qhull = convex_hull(points), ConvexHull(points)
    # Points less than 1e-11 of the cloud's size outside a face count as on it, which can shave that much
    # times the area off the volume.
    assert ours.volume == pytest.approx(qhull.volume, rel=1e-10)
    assert ours.area == pytest.approx(qhull.area, rel=1e-10)
    if same_vertices:
        np.testing.assert_array_equal(ours.vertices, np.sort(qhull.vertices))
    else:
        # Coplanar points may or may not be kept as vertices; the farthest pair is a pair of true vertices.
        assert max_pairwise_distance(points[ours.vertices], backend="numpy") == pytest.approx(
            max_pairwise_distance(points[qhull.vertices], backend="numpy"), rel=1e-12)
    # Every triangle faces outwards with every point behind it.
    a, b, c = (points[ours.simplices[:, k]] for k in range(3))
    normals = np.cross(b - a, c - a)
    assert (np.einsum("ij,kj->ik", normals, points) - np.einsum("ij,ij->i", normals, a)[:, None]
            <= 1e-9 * np.abs(points).max() * np.linalg.norm(normals, axis=1)[:, None]).all()


@pytest.mark.parametrize("seed", range(8))
def test_random_clouds_match_qhull(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 3000))
    points = rng.normal(size=(n, 3)) * rng.uniform(0.1, 10.0, size=3) + rng.uniform(-500, 500, size=3)
    if seed % 2:  # on an ellipsoid: every point on the hull
        centre = points.mean(axis=0)
        offsets = points - centre
        points = centre + offsets / np.linalg.norm(offsets, axis=1)[:, None] * rng.uniform(0.1, 10.0, size=3)
    _assert_same_hull(points, same_vertices=True)


@pytest.mark.parametrize("seed", range(4))
def test_grids_with_coplanar_points_match_qhull(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(2, 9, size=3))
    grid = np.indices(shape).reshape(3, -1).T.astype(np.float64) * rng.uniform(0.3, 3.0, size=3)
    _assert_same_hull(grid, same_vertices=False)
    hull = convex_hull(grid)
    assert hull.volume == pytest.approx(float(np.prod(grid.max(axis=0) - grid.min(axis=0))), rel=1e-12)
    assert hull.vertices.size == 8  # only the corners: points on edges and faces are not vertices


@pytest.mark.parametrize("seed", range(12))
def test_marching_cubes_meshes_match_qhull(seed: int) -> None:
    _, mask, spacing = _random_region(seed)
    mesh = roi_mesh(mask, spacing)
    _assert_same_hull(hull_vertex_candidates(mesh.vertices), same_vertices=False)


def test_single_voxel_mesh_is_an_octahedron() -> None:
    mask = np.ones((1, 1, 1), dtype=bool)
    hull = convex_hull(roi_mesh(mask, (1.0, 2.0, 3.0)).vertices)
    # Vertices half a voxel from the centre along each axis: volume (4/3) * 0.5 * 1.0 * 1.5.
    assert hull.volume == pytest.approx(4.0 / 3.0 * 0.5 * 1.0 * 1.5)
    assert hull.vertices.size == 6


@pytest.mark.parametrize("points", [
    np.zeros((3, 3)),
    np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]),  # collinear
    np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0.5, 0.2, 0]]),  # coplanar
    np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [np.nan, 0, 1]]),
    np.zeros((5, 2)),
])
def test_degenerate_input_is_refused(points: np.ndarray) -> None:
    with pytest.raises(ValueError):
        convex_hull(points)
