"""IBSI 1 morphological features (HCUG).

Surface features use a triangle mesh of the morphological mask from marching cubes (scikit-image, level 0.5,
the mask padded with one empty voxel so that the mesh closes); point-set features use the voxel centres in mm.
Centre-of-mass shift, integrated intensity, Moran's I and Geary's C also use the intensity mask (manual,
"ROI morphological and intensity masks").

Costly parts have NumPy (reference), Numba and CuPy versions: Moran's I and Geary's C (every pair of voxels)
and the maximum 3-D diameter (every pair of convex-hull vertices); the convex hull itself is one Numba
Quickhull (gateway.compute.kernels.hull) for every backend, which spares each process the import of Qhull. The
pair sums of Moran's I and Geary's C also have an exact O(n log n) form: the weight 1/distance depends only on
the displacement between two voxels of the regular grid, so each sum over pairs is a sum over displacements of
the weight times an autocorrelation, computed with FFTs (see _moran_geary_sums_fft). It gives the same values
to rounding error and is what ``moran_method="auto"`` uses wherever it is the cheaper of the two (all but
small regions).

Values the definitions leave undefined for degenerate regions are NaN: elongation, flatness and the
approximate-enclosing-ellipsoid densities of a single voxel (all principal axes 0), Moran's I and Geary's C of
a single voxel or of a constant intensity, and the centre of mass shift when the intensities sum to 0.
The oriented minimum bounding box densities (no IBSI reference value) are not computed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.features.base import FeatureValue
from gateway.compute.kernels.arrays import (
    Spacing,
    as_mask,
    as_spacing,
    as_volume,
    bounding_box,
    cupy_raw_kernel,
    jit_kernel,
    prange,
    require_finite,
    require_nonempty,
    to_device,
    to_host,
)
from gateway.compute.kernels.hull import convex_hull

FAMILY = "Morphological features"
MoranMethod = Literal["auto", "pairwise", "fft"]

FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Volume (mesh)", "RNU0", "morph_vol"),
    ("Volume (voxel counting)", "YEKZ", "morph_approx_vol"),
    ("Surface area (mesh)", "C0JK", "morph_area"),
    ("Surface to volume ratio", "2PR5", "morph_av"),
    ("Compactness 1", "SKGS", "morph_comp_1"),
    ("Compactness 2", "BQWJ", "morph_comp_2"),
    ("Spherical disproportion", "KRCK", "morph_sph_dispr"),
    ("Sphericity", "QCFX", "morph_sphericity"),
    ("Asphericity", "25C7", "morph_asphericity"),
    ("Centre of mass shift", "KLMA", "morph_com"),
    ("Maximum 3D diameter", "L0JK", "morph_diam"),
    ("Major axis length", "TDIC", "morph_pca_major"),
    ("Minor axis length", "P9VJ", "morph_pca_minor"),
    ("Least axis length", "7J51", "morph_pca_least"),
    ("Elongation", "Q3CK", "morph_pca_elongation"),
    ("Flatness", "N17B", "morph_pca_flatness"),
    ("Volume density (axis-aligned bounding box)", "PBX1", "morph_v_dens_aabb"),
    ("Area density (axis-aligned bounding box)", "R59B", "morph_a_dens_aabb"),
    ("Volume density (approximate enclosing ellipsoid)", "6BDE", "morph_v_dens_aee"),
    ("Area density (approximate enclosing ellipsoid)", "RDD2", "morph_a_dens_aee"),
    ("Volume density (convex hull)", "R3ER", "morph_v_dens_conv_hull"),
    ("Area density (convex hull)", "7T7F", "morph_a_dens_conv_hull"),
    ("Integrated intensity", "99N0", "morph_integ_int"),
    ("Moran’s I index", "N365", "morph_moran_i"),
    ("Geary’s C measure", "NPT7", "morph_geary_c"),
)
# No IBSI reference values ("should not be used"); computed only on request.
MVEE_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("Volume density (minimum volume enclosing ellipsoid)", "SWZ1", "morph_v_dens_mvee"),
    ("Area density (minimum volume enclosing ellipsoid)", "BRI8", "morph_a_dens_mvee"),
)

# The ellipsoid surface series of the manual (RDD2) stops after nu = 20.
_ELLIPSOID_SERIES_TERMS = 21
# Khachiyan's algorithm for the MVEE stops at this tolerance (manual, SWZ1).
_MVEE_TOLERANCE = 1e-3
_MVEE_MAX_ITERATIONS = 100_000
# "auto" loops over pairs while n^2 / 2 pair terms cost less than the FFTs, which cost about this many pair
# terms per point of the padded grid times log2 of its size (measured with Numba and pocketfft on CPU).
_FFT_COST_PER_POINT_LOG = 2.0
# Pairs per chunk in the NumPy pair loops: bounds the temporary arrays to some tens of MB.
_PAIR_CHUNK = 2_000_000


@dataclass(frozen=True, slots=True)
class Mesh:
    vertices: np.ndarray  # (n, 3) in mm, (z, y, x)
    faces: np.ndarray  # (m, 3) vertex indices, consistently oriented


def roi_mesh(mask: np.ndarray, spacing: Spacing) -> Mesh:
    """Marching-cubes mesh (level 0.5) of the mask, padded so that the surface closes at the array border."""
    from skimage.measure import marching_cubes

    padded = np.pad(mask, 1).astype(np.float32)
    vertices, faces, _, _ = marching_cubes(padded, level=0.5, spacing=spacing, method="lewiner")
    return Mesh(vertices=vertices.astype(np.float64), faces=faces.astype(np.int64))


def mesh_volume_and_area(mesh: Mesh) -> tuple[float, float]:
    """Volume: |sum of signed tetrahedra (origin, face)| (RNU0); area: sum of triangle areas (C0JK)."""
    a, b, c = (mesh.vertices[mesh.faces[:, k]] for k in range(3))
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum())) / 6.0
    area = float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum()) / 2.0
    return volume, area


def morphological_features(image: Any, morphological_mask: Any, intensity_mask: Any | None,
                           spacing: Sequence[float], *, moran_method: MoranMethod = "auto",
                           include_mvee: bool = False, backend: str | None = None) -> list[FeatureValue]:
    """The IBSI morphological features of the ROI (intensity mask = morphological mask when None)."""
    volume = as_volume(image)
    morph = as_mask(morphological_mask, volume.shape, "morphological mask")
    intensity = morph if intensity_mask is None else as_mask(intensity_mask, volume.shape, "intensity mask")
    require_nonempty(morph, "the morphological mask")
    require_nonempty(intensity, "the intensity mask")
    spacing = as_spacing(spacing)
    backend = resolve_backend(backend)
    low, high = bounding_box(morph | intensity)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(low, high, strict=True))
    require_finite(volume[box][intensity[box]], "the intensities in the region of interest")
    moran, geary = moran_geary(volume, intensity, spacing, method=moran_method, backend=backend)
    results, hull_points = morphology_values(volume, morph, intensity, spacing, (moran, geary), backend=backend)
    features = [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=float(value))
                for (name, code, key), value in zip(FEATURES, results, strict=True)]
    if include_mvee:
        mvee = minimum_volume_enclosing_ellipsoid(hull_points)
        mvee_volume = 4.0 * math.pi * mvee[0] * mvee[1] * mvee[2] / 3.0
        mesh_vol, area = results[0], results[2]
        features += [FeatureValue(family=FAMILY, name=name, ibsi_code=code, key=key, value=float(value))
                     for (name, code, key), value in zip(
                         MVEE_FEATURES, (mesh_vol / mvee_volume, area / ellipsoid_area(*mvee)), strict=True)]
    return features


def morphology_values(volume: np.ndarray, morph: np.ndarray, intensity: np.ndarray, spacing: Spacing,
                      moran_geary_values: tuple[float, float], *, backend: str) -> tuple[list[float], np.ndarray]:
    """The values of FEATURES (Moran's I and Geary's C given) and the convex-hull vertices, for checked input:
    float64 ``volume``, bool masks of its shape (both non-empty), valid spacing, a resolved backend."""
    low, high = bounding_box(morph | intensity)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(low, high, strict=True))
    volume, morph, intensity = volume[box], morph[box], intensity[box]
    values = volume[intensity]
    scale = np.asarray(spacing)

    mesh = roi_mesh(morph, spacing)
    mesh_vol, area = mesh_volume_and_area(mesh)
    voxel_count_volume = float(morph.sum()) * float(np.prod(scale))
    compactness_2 = 36.0 * math.pi * mesh_vol**2 / area**3

    morph_points = np.argwhere(morph) * scale
    intensity_points = np.argwhere(intensity) * scale
    geometric_centre = morph_points.mean(axis=0)
    intensity_sum = float(values.sum())
    com_shift = (float(np.linalg.norm(geometric_centre - (values @ intensity_points) / intensity_sum))
                 if intensity_sum != 0 else math.nan)

    candidates = hull_vertex_candidates(mesh.vertices)
    hull = convex_hull(candidates)
    hull_points = np.ascontiguousarray(candidates[hull.vertices])
    diameter = max_pairwise_distance(hull_points, backend=backend)

    major, minor, least = _principal_semi_axes(morph_points)
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    aabb_area = 2.0 * (extent[0] * extent[1] + extent[1] * extent[2] + extent[0] * extent[2])
    aee_volume = 4.0 * math.pi * major * minor * least / 3.0
    aee_area = ellipsoid_area(major, minor, least)
    moran, geary = moran_geary_values
    results = [
        mesh_vol,
        voxel_count_volume,
        area,
        area / mesh_vol,
        mesh_vol / (math.sqrt(math.pi) * area**1.5),
        compactness_2,
        compactness_2 ** (-1.0 / 3.0),
        compactness_2 ** (1.0 / 3.0),
        compactness_2 ** (-1.0 / 3.0) - 1.0,
        com_shift,
        diameter,
        2.0 * major,
        2.0 * minor,
        2.0 * least,  # axis lengths 2a = 4 sqrt(lambda)
        _axis_ratio(minor, major),
        _axis_ratio(least, major),
        mesh_vol / float(np.prod(extent)),
        area / aabb_area,
        mesh_vol / aee_volume if aee_volume > 0 else math.nan,
        area / aee_area if aee_area > 0 else math.nan,
        mesh_vol / hull.volume,
        area / hull.area,
        mesh_vol * float(values.mean()),
        moran,
        geary,
    ]
    return results, hull_points


def hull_vertex_candidates(points: np.ndarray) -> np.ndarray:
    """The points that can be convex-hull vertices by one cheap test: along each line parallel to an axis, only
    the two end points.

    A point strictly between two others on a line is their convex combination, so it is no hull vertex and
    dropping it changes neither the hull nor its volume, area and vertices. Marching-cubes vertices lie on
    grid edges, so such lines hold many points: this leaves the hull a fraction of the surface to examine.
    """
    keep = np.ones(points.shape[0], dtype=bool)
    for axis in range(3):
        first, second = (other for other in range(3) if other != axis)
        order = np.lexsort((points[:, axis], points[:, second], points[:, first]))
        ordered = points[order]
        same_line = (ordered[1:, first] == ordered[:-1, first]) & (ordered[1:, second] == ordered[:-1, second])
        between = np.zeros(points.shape[0], dtype=bool)
        between[1:-1] = same_line[:-1] & same_line[1:]
        keep[order[between]] = False
    return points[keep]


# --- principal axes and ellipsoids ------------------------------------------------------------------------

def _principal_semi_axes(points: np.ndarray) -> tuple[float, float, float]:
    """Semi-axes ``2 sqrt(lambda)`` of the PCA ellipsoid, largest first (TDIC: sample covariance, n - 1)."""
    if points.shape[0] < 2:
        return 0.0, 0.0, 0.0
    eigenvalues = np.linalg.eigvalsh(np.cov(points, rowvar=False))
    # A flat region has a zero eigenvalue that rounding can make slightly negative.
    major, minor, least = (2.0 * math.sqrt(max(float(v), 0.0)) for v in eigenvalues[::-1])
    return major, minor, least


def _axis_ratio(shorter: float, major: float) -> float:
    """sqrt(lambda_shorter / lambda_major), i.e. the ratio of semi-axes; undefined for a point."""
    return shorter / major if major > 0 else math.nan


def ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of the ellipsoid with semi-axes a >= b >= c by the manual's Legendre series (RDD2).

    This is the series exactly as the manual prints it, which the IBSI reference values follow (the digital
    phantom's area density 1.36 needs it). It is exact for a sphere but not for elongated ellipsoids (for
    semi-axes 3, 2, 2 it gives 59.3 where the true area is 67.7); the feature is defined by the series.

    The terms ``(alpha beta)^nu P_nu((alpha^2 + beta^2) / (2 alpha beta))`` are evaluated with the Legendre
    recurrence multiplied through by ``(alpha beta)^(nu + 1)``, which stays finite where alpha beta = 0 (a
    spheroid or a sphere) instead of dividing by it.
    """
    if a <= 0:
        return 0.0
    alpha_sq, beta_sq = 1.0 - (b / a) ** 2, 1.0 - (c / a) ** 2
    half_sum, product_sq = (alpha_sq + beta_sq) / 2.0, alpha_sq * beta_sq
    previous, current = 1.0, half_sum  # (alpha beta)^nu P_nu(...) for nu = 0 and 1
    series = previous + current / (1.0 - 4.0)
    for nu in range(1, _ELLIPSOID_SERIES_TERMS - 1):
        previous, current = current, ((2 * nu + 1) * half_sum * current - nu * product_sq * previous) / (nu + 1)
        series += current / (1.0 - 4.0 * (nu + 1) ** 2)
    return 4.0 * math.pi * a * b * series


def minimum_volume_enclosing_ellipsoid(points: np.ndarray) -> tuple[float, float, float]:
    """Semi-axes (largest first) of the MVEE of ``points`` by Khachiyan's algorithm (SWZ1; no IBSI reference).

    Iterates barycentric weights ``u`` until they change by less than the manual's tolerance 0.001; the
    ellipsoid ``(x - c)^T A (x - c) <= 1`` then has semi-axes ``1 / sqrt(eig(A))``.
    """
    n, dimension = points.shape
    lifted = np.vstack([points.T, np.ones(n)])
    weights = np.full(n, 1.0 / n)
    for _ in range(_MVEE_MAX_ITERATIONS):
        scatter = (lifted * weights) @ lifted.T
        distances = np.einsum("ij,ji->i", lifted.T, np.linalg.solve(scatter, lifted))
        farthest = int(np.argmax(distances))
        step = (distances[farthest] - dimension - 1.0) / ((dimension + 1.0) * (distances[farthest] - 1.0))
        updated = (1.0 - step) * weights
        updated[farthest] += step
        change = float(np.linalg.norm(updated - weights))
        weights = updated
        if change < _MVEE_TOLERANCE:
            break
    centre = points.T @ weights
    shape = np.linalg.inv((points.T * weights) @ points - np.outer(centre, centre)) / dimension
    semi_axes = np.sort(1.0 / np.sqrt(np.linalg.eigvalsh(shape)))[::-1]
    return float(semi_axes[0]), float(semi_axes[1]), float(semi_axes[2])


# --- maximum 3-D diameter ---------------------------------------------------------------------------------

def max_pairwise_distance(points: np.ndarray, *, backend: str | None = None) -> float:
    """Largest Euclidean distance between two of the (n, 3) points (L0JK on the convex-hull vertices)."""
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.shape[0] < 2:
        return 0.0
    match resolve_backend(backend):
        case "numpy":
            return _max_distance_array(np, points)
        case "numba":
            return float(_max_distance_numba(points, work=points.shape[0] ** 2))
        case "cupy":
            import cupy

            return _max_distance_array(cupy, to_device(points))


def _max_distance_array(xp: ModuleType, points: Any) -> float:
    rows = max(1, _PAIR_CHUNK // points.shape[0])
    largest = 0.0
    for start in range(0, points.shape[0], rows):
        block = points[start:start + rows]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
        largest = max(largest, float(squared.max()))
    return math.sqrt(largest)


@jit_kernel(parallel=True)
def _max_distance_numba(points: np.ndarray) -> float:
    n = points.shape[0]
    row_max = np.zeros(n)
    for i in prange(n):
        best = 0.0
        for j in range(n):
            d = ((points[i, 0] - points[j, 0]) ** 2 + (points[i, 1] - points[j, 1]) ** 2
                 + (points[i, 2] - points[j, 2]) ** 2)
            best = max(best, d)
        row_max[i] = best
    return math.sqrt(row_max.max())


# --- Moran's I and Geary's C ------------------------------------------------------------------------------

def moran_geary(image: Any, intensity_mask: Any, spacing: Sequence[float], *, method: MoranMethod = "auto",
                backend: str | None = None) -> tuple[float, float]:
    """Moran's I (N365) and Geary's C (NPT7) with weights 1/distance (mm) over the intensity-mask voxels."""
    volume = as_volume(image)
    region = as_mask(intensity_mask, volume.shape, "intensity mask")
    require_nonempty(region, "the intensity mask")
    spacing = as_spacing(spacing)
    values = volume[region]
    require_finite(values, "the intensities in the region of interest")
    n = values.size
    deviations = values - values.mean()
    squares = float((deviations**2).sum())
    if n < 2 or squares == 0.0:
        return math.nan, math.nan
    low, high = bounding_box(region)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(low, high, strict=True))
    if method == "auto":
        method = cheaper_moran_method(n, tuple(int(hi - lo + 1) for lo, hi in zip(low, high, strict=True)))
    backend = resolve_backend(backend)
    if method == "pairwise":
        positions = np.ascontiguousarray(np.argwhere(region) * np.asarray(spacing))
        weight_sum, cross_sum, difference_sum = _pair_sums(positions, deviations, backend)
    elif method == "fft":
        field = np.where(region, volume - values.mean(), 0.0)[box]
        weight_sum, cross_sum, difference_sum = _moran_geary_sums_fft(field, region[box], spacing, backend)
    else:
        raise ValueError(f"unknown Moran/Geary method {method!r}; choose 'auto', 'pairwise' or 'fft'")
    moran = n / weight_sum * cross_sum / squares
    geary = (n - 1) / (2.0 * weight_sum) * difference_sum / squares
    return float(moran), float(geary)


def cheaper_moran_method(n_voxels: int, box_shape: tuple[int, ...]) -> Literal["pairwise", "fft"]:
    """The method "auto" picks for ``n_voxels`` intensity-mask voxels in a bounding box of ``box_shape``."""
    padded_size = math.prod(_even_fast_length(2 * size - 1) for size in box_shape)
    fft_cost = _FFT_COST_PER_POINT_LOG * padded_size * math.log2(padded_size)
    return "pairwise" if n_voxels * n_voxels / 2 <= fft_cost else "fft"


def _pair_sums(positions: np.ndarray, deviations: np.ndarray, backend: str) -> tuple[float, float, float]:
    """Over ordered pairs k1 != k2: sum w, sum w z1 z2 and sum w (z1 - z2)^2, with w = 1 / distance."""
    match backend:
        case "numpy":
            return _pair_sums_numpy(positions, deviations)
        case "numba":
            sums = _pair_sums_numba(positions, deviations, work=deviations.size**2 // 2)
            return float(sums[0]), float(sums[1]), float(sums[2])
        case "cupy":
            return _pair_sums_cupy(positions, deviations)
    raise ValueError(f"unknown backend {backend!r}")


def _pair_sums_numpy(positions: np.ndarray, deviations: np.ndarray) -> tuple[float, float, float]:
    """The definition, a block of rows at a time against all voxels."""
    n = deviations.size
    rows = max(1, _PAIR_CHUNK // n)
    weight_sum = cross_sum = difference_sum = 0.0
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        distance = np.sqrt(((positions[start:stop, None, :] - positions[None, :, :]) ** 2).sum(axis=2))
        distance[np.arange(stop - start), np.arange(start, stop)] = np.inf  # k1 == k2 carries no weight
        weight = 1.0 / distance
        z1, z2 = deviations[start:stop, None], deviations[None, :]
        weight_sum += float(weight.sum())
        cross_sum += float((weight * z1 * z2).sum())
        difference_sum += float((weight * (z1 - z2) ** 2).sum())
    return weight_sum, cross_sum, difference_sum


@jit_kernel()
def _row_pair_sums(positions: np.ndarray, deviations: np.ndarray, i: int) -> tuple[float, float, float]:
    weight_sum = cross_sum = difference_sum = 0.0
    for j in range(i + 1, deviations.size):
        distance = math.sqrt((positions[i, 0] - positions[j, 0]) ** 2 + (positions[i, 1] - positions[j, 1]) ** 2
                             + (positions[i, 2] - positions[j, 2]) ** 2)
        weight = 1.0 / distance
        weight_sum += weight
        cross_sum += weight * deviations[i] * deviations[j]
        difference_sum += weight * (deviations[i] - deviations[j]) ** 2
    return weight_sum, cross_sum, difference_sum


@jit_kernel(parallel=True)
def _pair_sums_numba(positions: np.ndarray, deviations: np.ndarray) -> np.ndarray:
    # Each unordered pair once (j > i), doubled at the end. Row i has n - 1 - i partners, so rows are dealt
    # out in pairs (r, n - 1 - r) of equal total work, which keeps the threads evenly loaded.
    n = deviations.size
    half = (n + 1) // 2
    partial = np.zeros((half, 3))
    for r in prange(half):
        partial[r, 0], partial[r, 1], partial[r, 2] = _row_pair_sums(positions, deviations, r)
        if n - 1 - r != r:
            weight_sum, cross_sum, difference_sum = _row_pair_sums(positions, deviations, n - 1 - r)
            partial[r, 0] += weight_sum
            partial[r, 1] += cross_sum
            partial[r, 2] += difference_sum
    return 2.0 * partial.sum(axis=0)


_PAIR_SUMS_SOURCE = r"""
extern "C" __global__
void moran_geary_rows(const double* positions, const double* deviations, const long long n, double* row_sums)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) {
        return;
    }
    const double zi = positions[3 * i], yi = positions[3 * i + 1], xi = positions[3 * i + 2];
    const double di = deviations[i];
    double weight_sum = 0.0, cross_sum = 0.0, difference_sum = 0.0;
    for (long long j = 0; j < n; ++j) {
        if (j == i) {
            continue;
        }
        const double dz = zi - positions[3 * j], dy = yi - positions[3 * j + 1], dx = xi - positions[3 * j + 2];
        const double weight = 1.0 / sqrt(dz * dz + dy * dy + dx * dx);
        const double dj = deviations[j];
        weight_sum += weight;
        cross_sum += weight * di * dj;
        difference_sum += weight * (di - dj) * (di - dj);
    }
    row_sums[3 * i] = weight_sum;
    row_sums[3 * i + 1] = cross_sum;
    row_sums[3 * i + 2] = difference_sum;
}
"""

_THREADS_PER_BLOCK = 256


def _pair_sums_cupy(positions: np.ndarray, deviations: np.ndarray) -> tuple[float, float, float]:
    """One GPU thread per voxel, each summing over all other voxels (ordered pairs, no reduction races)."""
    import cupy

    n = deviations.size
    row_sums = cupy.empty((n, 3), dtype=cupy.float64)
    blocks = (n + _THREADS_PER_BLOCK - 1) // _THREADS_PER_BLOCK
    cupy_raw_kernel(_PAIR_SUMS_SOURCE, "moran_geary_rows")(
        (blocks,), (_THREADS_PER_BLOCK,), (to_device(positions), to_device(deviations), np.int64(n), row_sums))
    weight_sum, cross_sum, difference_sum = (float(v) for v in to_host(row_sums.sum(axis=0)))
    return weight_sum, cross_sum, difference_sum


def _moran_geary_sums_fft(field: np.ndarray, mask: np.ndarray, spacing: Spacing,
                          backend: str) -> tuple[float, float, float]:
    """The three pair sums as sums over displacements, with FFTs.

    With f = z m (deviation inside the ROI, 0 outside), g = z^2 m and the weight w(d) = 1/|d| (w(0) = 0):
    sum_{k1 != k2} w z1 z2 = sum_d w(d) R_ff(d), sum w = sum_d w(d) R_mm(d) and
    sum w (z1 - z2)^2 = 2 sum_d w(d) R_gm(d) - 2 sum w z1 z2, where R_ab(d) = sum_x a(x) b(x + d). Zero-padding
    to at least 2n - 1 per axis makes the circular correlations linear, and since w is real and even,
    sum_d w(d) R_ab(d) = (1/N) sum_k W_k conj(A_k) B_k, evaluated on the half spectrum of real FFTs.
    """
    xp, rfftn = _fft_functions(backend)
    padded = tuple(_even_fast_length(2 * n - 1) for n in field.shape)
    axes = (0, 1, 2)
    weights = xp.asarray(_inverse_distance_spectrum(padded, spacing))
    field_d = xp.asarray(field)
    f_spectrum = rfftn(field_d, s=padded, axes=axes)
    m_spectrum = rfftn(xp.asarray(mask.astype(np.float64)), s=padded, axes=axes)
    g_spectrum = rfftn(field_d * field_d, s=padded, axes=axes)

    def weighted(a: Any, b: Any) -> float:
        return float(xp.vdot(a, weights * b).real)

    cross_sum = weighted(f_spectrum, f_spectrum)
    return weighted(m_spectrum, m_spectrum), cross_sum, 2.0 * weighted(g_spectrum, m_spectrum) - 2.0 * cross_sum


def _even_fast_length(minimum: int) -> int:
    """The smallest 5-smooth even length >= minimum (fast for pocketfft and cuFFT; even for the DCT below)."""
    import scipy.fft

    length = scipy.fft.next_fast_len(max(minimum, 2), real=True)
    while length % 2:
        length = scipy.fft.next_fast_len(length + 1, real=True)
    return length


@functools.lru_cache(maxsize=8)
def _inverse_distance_spectrum(shape: tuple[int, ...], spacing: Spacing) -> np.ndarray:
    """Half-spectrum weights for _moran_geary_sums_fft: rfftn of w(d) = 1/|d|, times the number of times each
    half-spectrum entry stands for the full spectrum, divided by the transform size.

    w is even along every axis, so its DFT is real and equals a type-1 DCT of one octant (displacements
    0..P/2 per axis): an eighth of the points to fill and transform. The octant spectrum is then mirrored
    (k and P - k agree) to the full first two axes.
    """
    import scipy.fft

    halves = [n // 2 + 1 for n in shape]
    offsets = [np.arange(h) * s for h, s in zip(halves, spacing, strict=True)]
    squared = offsets[0][:, None, None] ** 2 + offsets[1][None, :, None] ** 2 + offsets[2][None, None, :] ** 2
    squared[0, 0, 0] = np.inf  # a voxel is not its own neighbour
    spectrum = scipy.fft.dctn(1.0 / np.sqrt(squared), type=1, workers=-1)
    mirror = [np.minimum(np.arange(n), n - np.arange(n)) for n in shape[:2]]
    full = spectrum[mirror[0]][:, mirror[1]]
    # The rfft half keeps each conjugate pair once, except the first and (even length) the last column.
    multiplicity = np.full(halves[2], 2.0)
    multiplicity[0] = multiplicity[-1] = 1.0
    weights = full * (multiplicity / float(np.prod(shape)))
    # Cached: lesions of similar size share padded shapes, and this costs as much as one of the FFTs.
    weights.flags.writeable = False
    return weights


def _fft_functions(backend: str) -> tuple[ModuleType, Callable[..., Any]]:
    if backend == "cupy":
        import cupy

        return cupy, cupy.fft.rfftn
    import scipy.fft

    return np, functools.partial(scipy.fft.rfftn, workers=-1)
