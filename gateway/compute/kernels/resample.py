"""Resampling of 3-D volumes to a new voxel spacing, aligned as IBSI 1 prescribes.

IBSI 1 reference manual, "Interpolation" (VTM2): the new grid has ``n_b = ceil(n_a s_a / s_b)`` points per
axis (026Q) and its centre coincides with the centre of the original grid (align grid centres, 3WE3), so in
original voxel indices the new points lie at ``x_b + k s_b / s_a`` with
``x_b = (n_a - 1 - (s_b / s_a) (n_b - 1)) / 2`` (QCY4). Points outside the original grid take the boundary
intensity ("padding with the intensities at the boundary").

Arrays are (z, y, x), spacings (z, y, x) in mm. Images are interpolated trilinearly, by tricubic B-spline (the
"tricubic spline" of IBSI configuration E) or by nearest neighbour; masks by nearest neighbour or as partial
volumes: trilinear interpolation of the 0/1 mask followed by the threshold ``>= 0.5`` (E8H9). A ``window``
(slices of the new grid) asks for part of the new grid only, so a small region of interest in a large scan
costs what the region costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.compute.backend import resolve_backend
from gateway.compute.kernels.arrays import (
    Spacing,
    as_mask,
    as_spacing,
    jit_kernel,
    prange,
    require_finite,
)

ImageInterpolation = Literal["linear", "cubic", "nearest"]
MaskInterpolation = Literal["partial_volume", "nearest"]
Window = tuple[slice, slice, slice]
AxisTable = tuple[np.ndarray, np.ndarray, np.ndarray]  # lower index, upper index, fraction towards upper

# n_a * s_a / s_b is often an integer spoilt by rounding (e.g. 10 * 0.3 / 0.1 = 30.000000000000004); the
# ceiling must not add a grid point for that.
_GRID_SIZE_TOLERANCE = 1e-9
# Interpolated mask fractions that are exactly 0.5 in exact arithmetic may come out as 0.49999999999999994;
# IBSI warns that such voxels get dropped by accident, so fractions this near the threshold count as on it.
_FRACTION_TOLERANCE = 1e-9
# The cubic B-spline interpolant is a recursive filter with pole z = sqrt(3) - 2: every sample influences the
# spline coefficients, with a weight that falls by |z| ~ 0.268 per voxel. Reading this many extra voxels
# around those a window needs makes a window's values those of the whole image to |z|^30 ~ 7e-18 relative.
_SPLINE_MARGIN = 30
# scipy.ndimage's "nearest" spline mode pads this many edge values before prefiltering; the Numba and CuPy
# versions do the same so that every backend computes one definition (IBSI's "padding with the intensities at
# the boundary", to |z|^23 ~ 1e-13).
_SPLINE_PAD = 12
_SPLINE_POLE = math.sqrt(3.0) - 2.0


@dataclass(frozen=True, slots=True)
class ResampledGrid:
    """The points of a resampled grid, expressed in voxel indices of the original grid."""

    shape: tuple[int, int, int]
    spacing: Spacing
    origin: tuple[float, float, float]  # original-grid index of new point 0 along each axis
    step: tuple[float, float, float]  # new spacing in original voxels

    def coordinates(self, axis: int, window: slice = slice(None)) -> np.ndarray:
        start, stop, _ = window.indices(self.shape[axis])
        return self.origin[axis] + self.step[axis] * np.arange(start, stop, dtype=np.float64)

    def window_around(self, low: Sequence[int], high: Sequence[int], original_shape: Sequence[int],
                      margin: Sequence[int] = (0, 0, 0)) -> Window:
        """Slices of this grid whose interpolated values can depend on original voxels ``low..high``.

        A trilinear value depends on original voxels less than one voxel away, so new points strictly within
        ``(low - 1, high + 1)`` are enough; ``margin`` adds that many new points on every side. Where the
        region touches the original border, clamping makes every point beyond it depend on the border, so the
        window then runs to the end of the new grid.
        """
        slices = []
        for axis in range(3):
            origin, step, size = self.origin[axis], self.step[axis], self.shape[axis]
            start = 0 if low[axis] == 0 else math.floor((low[axis] - 1 - origin) / step) + 1
            at_end = high[axis] == original_shape[axis] - 1
            stop = size if at_end else math.ceil((high[axis] + 1 - origin) / step)
            start = max(0, start - margin[axis])
            stop = min(size, max(stop, start + 1) + margin[axis])
            slices.append(slice(start, stop))
        return slices[0], slices[1], slices[2]


def resampled_grid(shape: Sequence[int], spacing: Sequence[float],
                   new_spacing: Sequence[float | None]) -> ResampledGrid:
    """The IBSI grid for resampling an image of ``shape`` and ``spacing`` to ``new_spacing``.

    An entry of None in ``new_spacing`` keeps that axis as it is (e.g. ``(None, 2.0, 2.0)`` resamples
    within slices only, IBSI's 2-D interpolation).
    """
    spacing = as_spacing(spacing)
    if len(new_spacing) != 3:
        raise ValueError(f"new_spacing must have three values (z, y, x), got {len(new_spacing)}")
    target = as_spacing([old if new is None else new for old, new in zip(spacing, new_spacing, strict=True)],
                        name="new_spacing")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ValueError(f"shape must be three positive sizes, got {tuple(shape)}")
    sizes, origins, steps = [], [], []
    for n_a, s_a, s_b in zip(shape, spacing, target, strict=True):
        extent = n_a * s_a / s_b
        n_b = max(1, math.ceil(extent - _GRID_SIZE_TOLERANCE * extent))
        step = s_b / s_a
        sizes.append(n_b)
        steps.append(step)
        origins.append(0.5 * (n_a - 1 - step * (n_b - 1)))
    return ResampledGrid(shape=(sizes[0], sizes[1], sizes[2]), spacing=target,
                         origin=(origins[0], origins[1], origins[2]), step=(steps[0], steps[1], steps[2]))


def resample_image(image: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float | None], *,
                   method: ImageInterpolation = "linear", window: Window | None = None,
                   backend: str | None = None) -> np.ndarray:
    """Resample ``image`` (float64 result) to ``new_spacing``; ``window`` limits the result to part of it.

    Only the part of the image the window depends on is read, converted and checked for NaN.
    """
    volume = _as_3d(image, "image")
    grid = resampled_grid(volume.shape, spacing, new_spacing)
    coordinates = _window_coordinates(grid, window)
    if method == "linear":
        return interpolate_linear(volume, coordinates, backend=backend)
    if method == "cubic":
        return interpolate_cubic(volume, coordinates, backend=backend)
    if method == "nearest":
        return interpolate_nearest(volume, coordinates, backend=backend).astype(np.float64)
    raise ValueError(f"unknown image interpolation {method!r}; choose 'linear', 'cubic' or 'nearest'")


def resample_mask(mask: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float | None], *,
                  method: MaskInterpolation = "partial_volume", threshold: float = 0.5,
                  window: Window | None = None, backend: str | None = None) -> np.ndarray:
    """Resample a 0/1 ``mask`` (bool result) by nearest neighbour or as partial volume with ``threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"partial-volume threshold must lie in (0, 1], got {threshold}")
    binary = _as_3d(mask, "mask")
    grid = resampled_grid(binary.shape, spacing, new_spacing)
    coordinates = _window_coordinates(grid, window)
    if method == "nearest":
        return interpolate_nearest(binary, coordinates, backend=backend, prepare=_mask_block).astype(np.bool_)
    if method == "partial_volume":
        fractions = interpolate_linear(binary, coordinates, backend=backend,
                                       prepare=lambda block: _mask_block(block).astype(np.float64))
        return fractions >= threshold - _FRACTION_TOLERANCE
    raise ValueError(f"unknown mask interpolation {method!r}; choose 'partial_volume' or 'nearest'")


def interpolate_linear(volume: np.ndarray, coordinates: Sequence[np.ndarray], *, backend: str | None = None,
                       prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Trilinear values of ``volume`` on the grid spanned by per-axis ``coordinates`` (original indices).

    Coordinates beyond the volume are clamped to its border (boundary padding). ``prepare`` converts and checks
    the block of the volume that is read (default: float64, no NaN).
    """
    volume = _as_3d(volume, "volume")
    tables = [_linear_axis(np.asarray(c, dtype=np.float64), n) for c, n in zip(coordinates, volume.shape,
                                                                               strict=True)]
    block, tables = _read_block(volume, tables, prepare or _image_block)
    match resolve_backend(backend):
        case "numpy":
            return _linear_numpy(block, tables)
        case "numba":
            return _linear_numba(
                block,
                *tables[0],
                *tables[1],
                *tables[2],
                work=tables[0][0].size * tables[1][0].size * tables[2][0].size,
            )
        case "cupy":
            return _linear_cupy(block, tables)


def interpolate_cubic(volume: np.ndarray, coordinates: Sequence[np.ndarray], *, backend: str | None = None,
                      prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Tricubic B-spline values of ``volume`` on the grid spanned by per-axis ``coordinates`` (original indices).

    The interpolant is the cubic B-spline through every voxel (prefiltered coefficients, so it passes through
    the original intensities), of the volume extended beyond its border by its boundary intensities:
    ``scipy.ndimage.map_coordinates(volume, grid, order=3, mode="nearest")``, which is how the IBSI reference
    values for configuration E were computed. Unlike trilinear values, coordinates beyond the border are not
    clamped: they lie on the spline of the padded volume (within half a voxel of the border on an IBSI grid).
    Only the voxels the coordinates need plus a margin of ``_SPLINE_MARGIN`` are read and prepared.
    """
    volume = _as_3d(volume, "volume")
    axes = [np.asarray(c, dtype=np.float64) for c in coordinates]
    first, last = [], []
    for c, n in zip(axes, volume.shape, strict=True):
        if c.size == 0 or not np.isfinite(c).all():
            raise ValueError("interpolation coordinates must be finite and non-empty")
        first.append(int(min(max(math.floor(c.min()) - 1 - _SPLINE_MARGIN, 0), n - 1)))
        last.append(int(max(min(math.floor(c.max()) + 2 + _SPLINE_MARGIN, n - 1), first[-1])))
    block = np.ascontiguousarray((prepare or _image_block)(volume[first[0]:last[0] + 1, first[1]:last[1] + 1,
                                                                  first[2]:last[2] + 1]))
    shifted = [c - offset for c, offset in zip(axes, first, strict=True)]
    match resolve_backend(backend):
        case "numpy":
            return _cubic_numpy(block, shifted)
        case "numba":
            return _cubic_numba(block, shifted)
        case "cupy":
            return _cubic_cupy(block, shifted)


def interpolate_nearest(volume: np.ndarray, coordinates: Sequence[np.ndarray], *, backend: str | None = None,
                        prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Nearest-neighbour values on the grid spanned by per-axis ``coordinates`` (original indices).

    Halfway points go to the higher index (round half up), the same on every backend. ``prepare`` as for
    interpolate_linear; the result has the dtype it returns.
    """
    volume = _as_3d(volume, "volume")
    indices = [np.clip(np.floor(np.asarray(c, dtype=np.float64) + 0.5), 0, n - 1).astype(np.int64)
               for c, n in zip(coordinates, volume.shape, strict=True)]
    tables = [(index, index, np.zeros(index.size)) for index in indices]
    block, tables = _read_block(volume, tables, prepare or _image_block)
    indices = [table[0] for table in tables]
    match resolve_backend(backend):
        case "numpy":
            return block[np.ix_(*indices)]
        case "numba":
            return _nearest_numba(block, *indices, work=indices[0].size * indices[1].size * indices[2].size)
        case "cupy":
            return _nearest_cupy(block, indices)


def _window_coordinates(grid: ResampledGrid, window: Window | None) -> list[np.ndarray]:
    window = window or (slice(None), slice(None), slice(None))
    if len(window) != 3:
        raise ValueError("window must be three slices (z, y, x)")
    coordinates = [grid.coordinates(axis, window[axis]) for axis in range(3)]
    if any(c.size == 0 for c in coordinates):
        raise ValueError(f"window {window} selects no point of the resampled grid of shape {grid.shape}")
    return coordinates


def _linear_axis(coordinates: np.ndarray, size: int) -> AxisTable:
    clamped = np.clip(coordinates, 0.0, size - 1)
    lower = np.minimum(np.floor(clamped).astype(np.int64), max(size - 2, 0))
    upper = np.minimum(lower + 1, size - 1)
    return lower, upper, clamped - lower


def _read_block(volume: np.ndarray, tables: list[AxisTable],
                prepare: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[AxisTable]]:
    """The part of ``volume`` the tables read, prepared, with the tables re-indexed into it.

    Only this block is converted, checked (and sent to a GPU), so resampling a small region of a large scan
    is cheap, and a NaN far from the region does not matter.
    """
    first = [int(table[0].min()) for table in tables]
    last = [int(table[1].max()) for table in tables]
    block = np.ascontiguousarray(prepare(volume[first[0]:last[0] + 1, first[1]:last[1] + 1,
                                                first[2]:last[2] + 1]))
    shifted = [(lower - offset, upper - offset, fraction)
               for (lower, upper, fraction), offset in zip(tables, first, strict=True)]
    return block, shifted


def _as_3d(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 3 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 3-D (z, y, x) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    return array


def _image_block(block: np.ndarray) -> np.ndarray:
    values = np.asarray(block, dtype=np.float64)
    require_finite(values, "the image region being resampled")
    return values


def _mask_block(block: np.ndarray) -> np.ndarray:
    return as_mask(block, block.shape).view(np.uint8)


def _linear_numpy(volume: np.ndarray, tables: list[AxisTable]) -> np.ndarray:
    """The definition: each new value is the weighted sum of its eight surrounding original voxels."""
    (z0, z1, tz), (y0, y1, ty), (x0, x1, tx) = tables
    result = np.zeros((z0.size, y0.size, x0.size))
    for z_index, z_weight in ((z0, 1.0 - tz), (z1, tz)):
        for y_index, y_weight in ((y0, 1.0 - ty), (y1, ty)):
            for x_index, x_weight in ((x0, 1.0 - tx), (x1, tx)):
                weight = z_weight[:, None, None] * y_weight[None, :, None] * x_weight[None, None, :]
                result += weight * volume[np.ix_(z_index, y_index, x_index)]
    return result


@jit_kernel()
def _lerp(low: float, high: float, fraction: float) -> float:
    return low + fraction * (high - low)


@jit_kernel(parallel=True)
def _linear_numba(volume: np.ndarray, z0: np.ndarray, z1: np.ndarray, tz: np.ndarray, y0: np.ndarray,
                  y1: np.ndarray, ty: np.ndarray, x0: np.ndarray, x1: np.ndarray,
                  tx: np.ndarray) -> np.ndarray:
    result = np.empty((z0.size, y0.size, x0.size))
    for k in prange(z0.size):
        for j in range(y0.size):
            for i in range(x0.size):
                a = _lerp(volume[z0[k], y0[j], x0[i]], volume[z0[k], y0[j], x1[i]], tx[i])
                b = _lerp(volume[z0[k], y1[j], x0[i]], volume[z0[k], y1[j], x1[i]], tx[i])
                c = _lerp(volume[z1[k], y0[j], x0[i]], volume[z1[k], y0[j], x1[i]], tx[i])
                d = _lerp(volume[z1[k], y1[j], x0[i]], volume[z1[k], y1[j], x1[i]], tx[i])
                result[k, j, i] = _lerp(_lerp(a, b, ty[j]), _lerp(c, d, ty[j]), tz[k])
    return result


@jit_kernel(parallel=True)
def _nearest_numba(volume: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    result = np.empty((z.size, y.size, x.size), dtype=volume.dtype)
    for k in prange(z.size):
        for j in range(y.size):
            for i in range(x.size):
                result[k, j, i] = volume[z[k], y[j], x[i]]
    return result


def _linear_cupy(volume: np.ndarray, tables: list[AxisTable]) -> np.ndarray:
    """Trilinear interpolation is separable: three passes of 1-D linear interpolation, one per axis."""
    import cupy

    result = cupy.asarray(volume)
    for axis, (lower, upper, fraction) in enumerate(tables):
        shape = [1, 1, 1]
        shape[axis] = fraction.size
        weight = cupy.asarray(fraction).reshape(shape)
        low_values = cupy.take(result, cupy.asarray(lower), axis=axis)
        high_values = cupy.take(result, cupy.asarray(upper), axis=axis)
        result = low_values + weight * (high_values - low_values)
    return cupy.asnumpy(result)


def _nearest_cupy(volume: np.ndarray, indices: list[np.ndarray]) -> np.ndarray:
    import cupy

    result = cupy.asarray(volume)
    for axis, index in enumerate(indices):
        result = cupy.take(result, cupy.asarray(index), axis=axis)
    return cupy.asnumpy(result)


# --- tricubic B-spline -----------------------------------------------------------------------------------

def _cubic_numpy(block: np.ndarray, coordinates: list[np.ndarray]) -> np.ndarray:
    """The definition: SciPy's cubic spline of the edge-padded block (see interpolate_cubic)."""
    from scipy import ndimage

    grid = np.meshgrid(*coordinates, indexing="ij")
    return ndimage.map_coordinates(block, grid, order=3, mode="nearest", output=np.float64)


def _cubic_axis(coordinates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First of the four coefficients each coordinate needs, and their cubic B-spline weights (n, 4)."""
    base = np.floor(coordinates)
    t = coordinates - base
    weights = np.empty((coordinates.size, 4))
    weights[:, 0] = (1.0 - t) ** 3 / 6.0
    weights[:, 1] = (3.0 * t**3 - 6.0 * t**2 + 4.0) / 6.0
    weights[:, 2] = (-3.0 * t**3 + 3.0 * t**2 + 3.0 * t + 1.0) / 6.0
    weights[:, 3] = t**3 / 6.0
    return base.astype(np.int64) - 1, weights


def _cubic_numba(block: np.ndarray, coordinates: list[np.ndarray]) -> np.ndarray:
    coefficients = np.pad(block, _SPLINE_PAD, mode="edge")
    for axis in range(3):
        # The filter runs along the last axis of a view; moving each axis there in turn filters all three.
        view = np.moveaxis(coefficients, axis, 2)
        _spline_prefilter_numba(view, _SPLINE_POLE, work=coefficients.size * 8)
    tables = [_cubic_axis(c + _SPLINE_PAD) for c in coordinates]
    return _cubic_evaluate_numba(coefficients, *tables[0], *tables[1], *tables[2],
                                 work=64 * tables[0][0].size * tables[1][0].size * tables[2][0].size)


@jit_kernel(parallel=True)
def _spline_prefilter_numba(data: np.ndarray, z: float) -> None:
    """Cubic B-spline coefficients of every line along the last axis, in place (Unser's recursive filter).

    The line is taken as extended by half-sample symmetry beyond its ends, as SciPy does for its "nearest"
    mode; after the edge padding the symmetric extension only repeats the edge values.
    """
    n = data.shape[2]
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    z_n = z**n
    for a in prange(data.shape[0]):
        line = np.empty(n)
        for b in range(data.shape[1]):
            for i in range(n):
                line[i] = data[a, b, i] * gain
            if n > 1:
                # Causal start: the exact infinite sum over the symmetric, 2n-periodic extension.
                first = line[0]
                total = line[0] + z_n * line[n - 1]
                z_i = z
                for i in range(1, n):
                    total += z_i * (line[i] + z_n * line[n - 1 - i])
                    z_i *= z
                line[0] = first + total * z / (1.0 - z_n * z_n)
                for i in range(1, n):
                    line[i] += z * line[i - 1]
                # Anticausal start: the coefficients are symmetric about the end too, c[n] = c[n - 1].
                line[n - 1] *= z / (z - 1.0)
                for i in range(n - 2, -1, -1):
                    line[i] = z * (line[i + 1] - line[i])
            for i in range(n):
                data[a, b, i] = line[i]


@jit_kernel(parallel=True)
def _cubic_evaluate_numba(coefficients: np.ndarray, z0: np.ndarray, wz: np.ndarray, y0: np.ndarray,
                          wy: np.ndarray, x0: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """Each new value is the weighted sum of the 4 x 4 x 4 coefficients around it."""
    result = np.empty((z0.size, y0.size, x0.size))
    for k in prange(z0.size):
        for j in range(y0.size):
            for i in range(x0.size):
                total = 0.0
                for c in range(4):
                    plane = 0.0
                    for b in range(4):
                        row = 0.0
                        for a in range(4):
                            row += wx[i, a] * coefficients[z0[k] + c, y0[j] + b, x0[i] + a]
                        plane += wy[j, b] * row
                    total += wz[k, c] * plane
                result[k, j, i] = total
    return result


def _cubic_cupy(block: np.ndarray, coordinates: list[np.ndarray]) -> np.ndarray:
    """cupyx's port of SciPy's map_coordinates: the same padding, prefilter and evaluation as the definition."""
    import cupy
    from cupyx.scipy import ndimage

    grid = cupy.stack(cupy.meshgrid(*(cupy.asarray(c) for c in coordinates), indexing="ij"))
    result = ndimage.map_coordinates(cupy.asarray(block), grid, order=3, mode="nearest", output=cupy.float64)
    return cupy.asnumpy(result)
