"""Resampling kernels: IBSI grid alignment, interpolation, backends against the NumPy reference, bad input.

The IBSI CT-phantom configurations B and C (in-plane and 3-D resampling) and E (tricubic spline) are checked
end to end in test_features_first_order.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.compute.backend import gpu_unavailable_reason
from gateway.compute.kernels.resample import (
    interpolate_cubic,
    interpolate_linear,
    resample_image,
    resample_mask,
    resampled_grid,
)

GPU_SKIP = pytest.mark.skipif(gpu_unavailable_reason() is not None,
                              reason=f"CuPy backend unavailable: {gpu_unavailable_reason()}")
BACKENDS = ["numpy", "numba", pytest.param("cupy", marks=[GPU_SKIP, pytest.mark.gpu])]
ACCELERATED = ["numba", pytest.param("cupy", marks=[GPU_SKIP, pytest.mark.gpu])]


def test_grid_follows_the_ibsi_example() -> None:
    # Manual, "Interpolation grid": a 4 x 4 grid at 3 mm resampled to 2 mm has 6 x 6 points, centres aligned.
    grid = resampled_grid((1, 4, 4), (1.0, 3.0, 3.0), (None, 2.0, 2.0))
    assert grid.shape == (1, 6, 6)
    assert grid.spacing == (1.0, 2.0, 2.0)
    x = grid.coordinates(2)
    assert x[0] == pytest.approx(0.5 * (4 - 1 - (2.0 / 3.0) * 5))
    assert np.diff(x) == pytest.approx(np.full(5, 2.0 / 3.0))
    # Centre of the new grid == centre of the old one (index 1.5).
    assert (x[0] + x[-1]) / 2 == pytest.approx(1.5)


def test_grid_size_is_not_inflated_by_rounding() -> None:
    # 10 * 0.3 / 0.1 is 30.000000000000004 in floating point; the grid must still have 30 points.
    assert resampled_grid((10, 10, 10), (0.3, 0.3, 0.3), (0.1, 0.1, 0.1)).shape == (30, 30, 30)
    assert resampled_grid((3, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0)).shape == (1, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_same_spacing_is_identity(backend: str, method: str) -> None:
    # The cubic spline passes through the samples only when its coefficients are prefiltered correctly.
    image = np.random.default_rng(1).normal(size=(5, 6, 7))
    result = resample_image(image, (2.0, 1.0, 1.5), (2.0, 1.0, 1.5), method=method, backend=backend)  # type: ignore[arg-type]
    np.testing.assert_allclose(result, image, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_trilinear_reproduces_an_affine_image(backend: str) -> None:
    spacing = (3.0, 0.8, 1.1)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip((8, 9, 10), spacing, strict=True)), indexing="ij")
    image = 2.0 * z - 0.5 * y + 3.0 * x + 7.0
    grid = resampled_grid(image.shape, spacing, (2.0, 2.0, 2.0))
    result = resample_image(image, spacing, (2.0, 2.0, 2.0), backend=backend)
    coords = [grid.coordinates(axis) for axis in range(3)]
    # Inside the original grid the interpolation of an affine function is exact; outside, it is clamped.
    clamped = [np.clip(c, 0, n - 1) * s for c, n, s in zip(coords, image.shape, spacing, strict=True)]
    expected = (2.0 * clamped[0][:, None, None] - 0.5 * clamped[1][None, :, None]
                + 3.0 * clamped[2][None, None, :] + 7.0)
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tricubic_reproduces_a_cubic_polynomial_away_from_the_border(backend: str) -> None:
    # Cubic B-splines reproduce polynomials up to degree 3; the boundary padding disturbs the coefficients by
    # a factor |sqrt(3) - 2| ~ 0.268 per voxel, so from 25 voxels in the error is below 0.268^25 of the scale.
    spacing = (1.0, 1.0, 1.0)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (60, 60, 60)), indexing="ij")

    def cubic(z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        return 0.002 * x**3 - 0.05 * x * y + 0.01 * z**2 * y - 0.3 * z + 2.0

    grid = resampled_grid(z.shape, spacing, (0.7, 0.9, 1.3))
    window = grid.window_around((27, 27, 27), (32, 32, 32), z.shape)
    result = resample_image(cubic(z, y, x), spacing, (0.7, 0.9, 1.3), method="cubic", window=window,
                            backend=backend)
    points = [grid.coordinates(axis, window[axis]) for axis in range(3)]
    assert all(((p > 25) & (p < 34)).all() for p in points)
    expected = cubic(*np.meshgrid(*points, indexing="ij"))
    np.testing.assert_allclose(result, expected, rtol=0, atol=1e-9)


def _cubic_spline_of_padded_line(line: np.ndarray, points: np.ndarray, pad: int = 60) -> np.ndarray:
    """An independent 1-D definition: the interpolating cubic B-spline of ``line`` extended by its edge values,
    from the banded interpolation system (c[k-1] + 4 c[k] + c[k+1]) / 6 = s[k] on a long padded line."""
    from scipy.linalg import solve_banded

    samples = np.pad(line, pad, mode="edge")
    n = samples.size
    bands = np.zeros((3, n))
    bands[0, 1:] = bands[2, :-1] = 1.0 / 6.0
    bands[1] = 4.0 / 6.0
    bands[1, 0] = bands[1, -1] = 5.0 / 6.0  # symmetric ends; far enough away not to matter
    coefficients = solve_banded((1, 1), bands, samples)

    def basis(u: np.ndarray) -> np.ndarray:
        u = np.abs(u)
        return np.where(u < 1, 2.0 / 3.0 - u**2 + u**3 / 2, np.where(u < 2, (2 - u) ** 3 / 6, 0.0))

    shifted = points + pad
    base = np.floor(shifted).astype(np.int64)
    return sum(coefficients[base + o] * basis(shifted - (base + o)) for o in range(-1, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tricubic_is_the_spline_of_the_boundary_padded_image(backend: str) -> None:
    rng = np.random.default_rng(4)
    line = rng.normal(size=9) * 50
    # Points up to half a voxel beyond either border (as far as an IBSI grid reaches), and in between.
    points = np.concatenate([[-0.5, -0.31, 0.0], rng.uniform(0, 8, size=20), [8.0, 8.2, 8.5]])
    result = interpolate_cubic(line.reshape(1, 1, -1), [np.zeros(1), np.zeros(1), points], backend=backend)
    np.testing.assert_allclose(result[0, 0], _cubic_spline_of_padded_line(line, points), rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nearest_neighbour_takes_original_values(backend: str) -> None:
    image = np.arange(4 * 4 * 4, dtype=np.float64).reshape(4, 4, 4)
    result = resample_image(image, (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), method="nearest", backend=backend)
    assert result.shape == (8, 8, 8)
    assert set(np.unique(result)) <= set(image.ravel())
    # New point 0 lies at original index -0.25, which rounds to 0; point 1 at 0.25, also 0.
    assert result[0, 0, 0] == result[1, 1, 1] == image[0, 0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_partial_volume_mask_keeps_half_covered_voxels(backend: str) -> None:
    mask = np.zeros((1, 1, 4), dtype=bool)
    mask[0, 0, :2] = True
    # Upsampling x by 2: new points at -0.25, 0.25, ..., 3.25; the point at 1.25 is 75 % inside, 1.75 is 25 %.
    result = resample_mask(mask, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0), backend=backend)
    assert result[0, 0].tolist() == [True, True, True, True, False, False, False, False]
    # 1 mm -> 0.6 mm puts a new point at -0.3 + 3 * 0.6 = 1.5, exactly half way between voxels 1 (in) and 2
    # (out); the fraction 0.5 survives the threshold >= 0.5 even when rounding makes it 0.4999999999999999.
    coords = resampled_grid(mask.shape, (1.0, 1.0, 1.0), (1.0, 1.0, 0.6)).coordinates(2)
    assert coords[3] == pytest.approx(1.5)
    half = resample_mask(mask, (1.0, 1.0, 1.0), (1.0, 1.0, 0.6), backend=backend)
    assert half[0, 0].tolist() == [True, True, True, True, False, False, False]
    nearest = resample_mask(mask, (1.0, 1.0, 2.0), (1.0, 1.0, 1.0), method="nearest", backend=backend)
    assert nearest.dtype == np.bool_ and nearest[0, 0, :4].all() and not nearest[0, 0, 4:].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_window_equals_slice_of_full_result(backend: str, method: str) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(12, 15, 11))
    full = resample_image(image, (2.5, 0.9, 1.3), (1.0, 1.0, 1.0), method=method, backend=backend)  # type: ignore[arg-type]
    window = (slice(3, 17), slice(0, 5), slice(6, 14))
    part = resample_image(image, (2.5, 0.9, 1.3), (1.0, 1.0, 1.0), method=method, window=window,  # type: ignore[arg-type]
                          backend=backend)
    np.testing.assert_allclose(part, full[window], rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cubic_window_in_a_large_image_reads_only_its_neighbourhood(backend: str) -> None:
    # The spline depends on every voxel, but beyond the margin read by interpolate_cubic the dependence is
    # below 0.268^30 of the intensity scale: a NaN far away is ignored and the values equal the full result.
    rng = np.random.default_rng(5)
    image = rng.normal(size=(40, 80, 90)) * 300
    spacing, new = (3.0, 1.0, 1.0), (2.0, 2.0, 2.0)
    window = (slice(20, 24), slice(18, 22), slice(3, 7))
    full = resample_image(image, spacing, new, method="cubic", backend="numpy")
    # Large enough for the parallel builds of the Numba prefilter and evaluation.
    np.testing.assert_allclose(resample_image(image, spacing, new, method="cubic", backend=backend), full,
                               rtol=0, atol=1e-9)
    image[:, 78:, :] = np.nan
    part = resample_image(image, spacing, new, method="cubic", window=window, backend=backend)
    np.testing.assert_allclose(part, full[window], rtol=0, atol=1e-9)


def test_window_around_covers_every_affected_point() -> None:
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[6:9, 4:12, 10:13] = rng.random((3, 8, 3)) > 0.3
    spacing, new = (3.0, 0.7, 1.2), (1.0, 1.0, 1.0)
    grid = resampled_grid(mask.shape, spacing, new)
    low = np.argwhere(mask).min(axis=0)
    high = np.argwhere(mask).max(axis=0)
    window = grid.window_around(low, high, mask.shape)
    full = resample_mask(mask, spacing, new)
    inside = np.zeros_like(full)
    inside[window] = True
    assert full.any() and not (full & ~inside).any()


@pytest.mark.parametrize("backend", ACCELERATED)
@pytest.mark.parametrize("seed", range(6))
def test_backends_match_numpy_on_random_volumes(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 14, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.4, 3.5, size=3))
    new_spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, size=3))
    image = rng.normal(size=shape) * 100
    mask = rng.random(shape) > 0.5
    for method in ("linear", "cubic", "nearest"):
        expected = resample_image(image, spacing, new_spacing, method=method, backend="numpy")
        result = resample_image(image, spacing, new_spacing, method=method, backend=backend)
        np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-9)
    for mask_method in ("partial_volume", "nearest"):
        expected_mask = resample_mask(mask, spacing, new_spacing, method=mask_method, backend="numpy")
        result_mask = resample_mask(mask, spacing, new_spacing, method=mask_method, backend=backend)
        np.testing.assert_array_equal(result_mask, expected_mask)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, math.nan, 1.0), (1.0, 1.0)])
def test_bad_spacing_is_rejected(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="spacing"):
        resample_image(np.zeros((2, 2, 2)), spacing, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        resample_image(np.zeros((2, 2, 2)), (1.0, 1.0, 1.0), spacing)


def test_nan_in_the_region_read_is_rejected_but_far_away_is_not() -> None:
    image = np.ones((10, 10, 10))
    image[9, 9, 9] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        resample_image(image, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    window = (slice(0, 2), slice(0, 2), slice(0, 2))
    assert np.isfinite(resample_image(image, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0), window=window)).all()


def test_bad_masks_and_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        resample_mask(np.full((3, 3, 3), 2), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="3-D"):
        resample_image(np.zeros((3, 3)), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="threshold"):
        resample_mask(np.ones((3, 3, 3), bool), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), threshold=0.0)
    with pytest.raises(ValueError, match="interpolation"):
        resample_image(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), method="quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="selects no point"):
        resample_image(np.zeros((3, 3, 3)), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5),
                       window=(slice(7, 7), slice(None), slice(None)))
    with pytest.raises(ValueError, match="real numbers"):
        interpolate_linear(np.zeros((2, 2, 2), dtype=complex), [np.zeros(1)] * 3)
