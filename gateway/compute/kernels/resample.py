"""Resampling of 3-D volumes to a new voxel spacing, aligned as IBSI 1 prescribes.

IBSI 1 reference manual, "Interpolation" (VTM2): the new grid has ``n_b = ceil(n_a s_a / s_b)`` points per
axis (026Q) and its centre coincides with the centre of the original grid (align grid centres, 3WE3), so in
original voxel indices the new points lie at ``x_b + k s_b / s_a`` with
``x_b = (n_a - 1 - (s_b / s_a) (n_b - 1)) / 2`` (QCY4). Points outside the original grid take the boundary
intensity ("padding with the intensities at the boundary").

Arrays are (z, y, x), spacings (z, y, x) in mm. Images are interpolated trilinearly (or by nearest neighbour);
masks by nearest neighbour or as partial volumes: trilinear interpolation of the 0/1 mask followed by the
threshold ``>= 0.5`` (E8H9). A ``window`` (slices of the new grid) asks for part of the new grid only, so a
small region of interest in a large scan costs what the region costs.
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

ImageInterpolation = Literal["linear", "nearest"]
MaskInterpolation = Literal["partial_volume", "nearest"]
Window = tuple[slice, slice, slice]
AxisTable = tuple[np.ndarray, np.ndarray, np.ndarray]  # lower index, upper index, fraction towards upper

# n_a * s_a / s_b is often an integer spoilt by rounding (e.g. 10 * 0.3 / 0.1 = 30.000000000000004); the
# ceiling must not add a grid point for that.
_GRID_SIZE_TOLERANCE = 1e-9
# Interpolated mask fractions that are exactly 0.5 in exact arithmetic may come out as 0.49999999999999994;
# IBSI warns that such voxels get dropped by accident, so fractions this near the threshold count as on it.
_FRACTION_TOLERANCE = 1e-9


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
    if method == "nearest":
        return interpolate_nearest(volume, coordinates, backend=backend).astype(np.float64)
    raise ValueError(f"unknown image interpolation {method!r}; choose 'linear' or 'nearest'")


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
